#include "fs/filesystem.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <vector>

#include "common/log.h"
#include "fs/credentials.h"

namespace cachefs {
namespace {

// An open file: the descriptor of the source file, opened for this handle
// (shared with the cache's readahead of it, which may hold it a little
// longer than the handle lives).
struct FileHandle {
  FileHandle(int f, int open_flags)
      : own(std::make_shared<SourceFd>(f)), src(own), fd(f), flags(open_flags) {}
  SourceFdRef own;  // holds `fd`
  // What the cache reads SOURCE through: `own`, or a readable twin of a
  // write-only handle (a write of part of a sub-block fills the rest from SOURCE).
  SourceFdRef src;
  int fd;
  int flags;                           // of the open (O_SYNC, O_DSYNC for cached writes)
  std::shared_ptr<CachedFile> cached;  // null: served straight from SOURCE
  // The open was told to drop the kernel's pages (keep_cache=0) and has not
  // yet shown it did: Settle at the first request on the handle, or when it
  // goes (released, or its open interrupted). CachedFile::KeepPagesAtOpen.
  std::atomic<bool> unsettled{false};
  void Settle(bool used = true) {
    if (unsettled.exchange(false)) cached->OpenSettled(used);
  }
  ~FileHandle() { Settle(/*used=*/false); }
  FileHandle(const FileHandle&) = delete;
  FileHandle& operator=(const FileHandle&) = delete;
};

// An open directory being listed.
struct DirHandle {
  ~DirHandle() {
    if (dp != nullptr) closedir(dp);
  }
  DIR* dp = nullptr;
  off_t offset = 0;                // position of `entry` (telldir cookie of the next one)
  struct dirent* entry = nullptr;  // read but not yet returned
};

Filesystem& Fs(fuse_req_t req) { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }
Inode* In(fuse_req_t req, fuse_ino_t ino) { return Fs(req).inodes().Get(ino); }
FileHandle* Fh(fuse_file_info* fi) { return reinterpret_cast<FileHandle*>(fi->fh); }
DirHandle* Dh(fuse_file_info* fi) { return reinterpret_cast<DirHandle*>(fi->fh); }

// Replies with an error; `err` 0 (a call that failed without errno) becomes EIO.
void ReplyErr(fuse_req_t req, int err) { fuse_reply_err(req, err == 0 ? EIO : err); }

// --- the block cache ---------------------------------------------------------

// The path of `inode` relative to SOURCE ("" for SOURCE itself), from the
// kernel's name for its descriptor; nullopt when it has none (deleted) or it
// lies elsewhere.
std::optional<std::string> RelPath(const Filesystem& fs, const Inode* inode) {
  char buf[PATH_MAX + 1];
  ssize_t n = readlink(inode->ProcPath().c_str(), buf, PATH_MAX);
  if (n <= 0) return std::nullopt;
  std::string path(buf, static_cast<size_t>(n));
  const std::string& src = fs.source();
  if (path == src) return std::string();
  if (path.size() <= src.size() + 1 || path.compare(0, src.size(), src) != 0 ||
      path[src.size()] != '/' ||
      path.compare(path.size() - std::strlen(" (deleted)"), std::string::npos, " (deleted)") == 0) {
    return std::nullopt;
  }
  return path.substr(src.size() + 1);
}

std::optional<std::string> RelPath(const Filesystem& fs, const Inode* parent, const char* name) {
  auto dir = RelPath(fs, parent);
  if (!dir) return std::nullopt;
  return dir->empty() ? std::string(name) : *dir + "/" + name;
}

void CacheWarning(const char* what, const Status& s) {
  LogWarning(std::string(what) + ": " + s.message() + " (served from SOURCE)");
}

// Binds the unbound regular file `inode` at `path`, whose attributes are
// `st`, to its cache state.
std::shared_ptr<CachedFile> Bind(Filesystem& fs, Inode* inode, const std::string& path,
                                 const struct stat& st) {
  auto cached = fs.engine()->OpenFile(path, st);
  if (!cached.ok()) {
    CacheWarning("open", cached.status());
    return nullptr;
  }
  inode->set_cached(cached.value());
  return cached.value();
}

// Binds the regular file `inode`, opened as `fd`, to its cache state.
std::shared_ptr<CachedFile> BindCache(Filesystem& fs, Inode* inode, int fd) {
  Engine* engine = fs.engine();
  if (engine == nullptr || !S_ISREG(inode->type())) return nullptr;
  struct stat st;
  if (fstat(fd, &st) != 0) return nullptr;
  if (auto cached = inode->cached()) {
    auto changed = engine->Revalidate(*cached, st);
    if (!changed.ok()) CacheWarning("revalidate", changed.status());
    return cached;
  }
  auto path = RelPath(fs, inode);
  return path ? Bind(fs, inode, *path, st) : nullptr;
}

// After SOURCE's data changed through the mount in [off, off + len).
void CacheAfterWrite(Filesystem& fs, const std::shared_ptr<CachedFile>& cached, int fd,
                     uint64_t off, uint64_t len) {
  if (!cached || fs.engine() == nullptr) return;
  struct stat st;
  if (fstat(fd, &st) != 0) return;
  Status s = fs.engine()->AfterWrite(*cached, off, len, st);
  if (!s.ok()) CacheWarning("write", s);
}

// In mode=writeback the file's data may be newer in the cache than in
// SOURCE: operations that work on SOURCE's data (truncate, fallocate,
// copy_file_range, SEEK_DATA/SEEK_HOLE, rename over another file, the last
// unlink of an open file) first write it back. Returns an errno.
int WriteBackFirst(Filesystem& fs, const std::shared_ptr<CachedFile>& cached) {
  // mode=cow: the image changes only by cachefsctl commit; an operation on
  // SOURCE's copy would bypass the layer.
  if (cached && fs.engine() != nullptr && fs.engine()->mode() == CacheMode::kCow) return EOPNOTSUPP;
  if (!cached || fs.engine() == nullptr || fs.engine()->mode() != CacheMode::kWriteback) return 0;
  Status s = fs.engine()->FlushFile(*cached);
  if (s.ok()) return 0;
  LogWarning("writing back before an operation on SOURCE: " + s.message());
  return ErrnoOf(s);
}

bool CachesWrites(const Filesystem& fs, const std::shared_ptr<CachedFile>& cached) {
  return cached && fs.engine() != nullptr &&
         (fs.engine()->mode() == CacheMode::kWriteback || fs.engine()->mode() == CacheMode::kCow);
}

bool ReadOnlyMode(const Filesystem& fs) {
  return fs.engine() != nullptr && fs.engine()->mode() == CacheMode::kReadonly;
}

// --- image mode ---------------------------------------------------------------
// An image is a disk: a loop device, a VM or a filesystem inside it assumes
// its size does not move while it is in use. So the mount refuses to change
// it: truncate and O_TRUNC to another size and a growing fallocate give EPERM;
// a write (or copy_file_range) starting at or past the end gives ENOSPC and
// one that crosses the end is cut short there, as on a block device.

bool ImageMode(const Filesystem& fs) { return !fs.source_is_directory(); }

// Logs a refused size change, at most once a second (a guest retrying must not
// flood the log); the lines left out are counted in the next one.
void LogImageRefusal(const std::string& what) {
  static std::atomic<int64_t> last_ns{0};
  static std::atomic<uint64_t> suppressed{0};
  const int64_t now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  int64_t last = last_ns.load();
  if (last != 0 && now - last < 1'000'000'000) {
    ++suppressed;
    return;
  }
  if (!last_ns.compare_exchange_strong(last, now)) {
    ++suppressed;
    return;
  }
  std::string line = "image mode: refused " + what +
                     " (the size of an image is fixed while it is mounted; unmount to resize it)";
  if (uint64_t n = suppressed.exchange(0); n > 0) {
    line += "; " + std::to_string(n) + " more refusals since the last line";
  }
  LogWarning(line);
}

// The image's size as the mount shows it (data not yet written back
// included). Returns an errno.
int ImageSize(Filesystem& fs, int fd, const std::shared_ptr<CachedFile>& cached, uint64_t* size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return errno;
  if (cached && fs.engine() != nullptr) fs.engine()->Overlay(*cached, &st);
  *size = static_cast<uint64_t>(st.st_size);
  return 0;
}

// How many of `len` bytes at `off` a write may put into the image: `len`
// inside it, what fits before the end when it crosses it. ENOSPC (returned
// as an errno, *allowed untouched) when it starts at or past the end.
int ImageWriteRange(Filesystem& fs, int fd, const std::shared_ptr<CachedFile>& cached,
                    const char* op, uint64_t off, uint64_t len, uint64_t* allowed) {
  uint64_t size = 0;
  if (int err = ImageSize(fs, fd, cached, &size); err != 0) return err;
  if (len == 0 || off + len <= size) {
    *allowed = len;
    return 0;
  }
  if (off >= size) {
    LogImageRefusal(std::string(op) + " of " + std::to_string(len) + " bytes at " +
                    std::to_string(off) + ", at or past the end of the image (" +
                    std::to_string(size) + " bytes): ENOSPC");
    return ENOSPC;
  }
  *allowed = size - off;
  return 0;
}

int StatInode(const Inode* inode, struct stat* st) {
  int res = fstatat(inode->fd(), "", st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
  return res == -1 ? errno : 0;
}

// The cache state of the regular file `inode` for an operation that changes
// SOURCE's copy of it (truncate, an open with O_TRUNC, chmod, utimens,
// link): bound now if the cache knows the file but no open has bound this
// inode (after a remount, or once the kernel forgot the inode), so that the
// operation writes the file's dirty data back first and the cache adopts
// the change, instead of taking it later for an outside change (a
// conflict). Null for a file the cache does not know.
std::shared_ptr<CachedFile> CachedForChange(Filesystem& fs, Inode* inode) {
  if (auto cached = inode->cached()) return cached;
  if (fs.engine() == nullptr || !S_ISREG(inode->type())) return nullptr;
  auto path = RelPath(fs, inode);
  if (!path || !fs.engine()->Knows(*path)) return nullptr;
  struct stat st;
  if (StatInode(inode, &st) != 0) return nullptr;
  return Bind(fs, inode, *path, st);
}

// attr_timeout freshness (contract 5) wherever the kernel takes a bound
// file's attributes (getattr, lookup, readdirplus): a file changed in SOURCE
// loses its cached blocks (the kernel drops its pages itself:
// AUTO_INVAL_DATA), or reads through a handle kept open would go on being
// served the old bytes, or cut at the old size.
void Freshen(Filesystem& fs, CachedFile& cached, const struct stat& st) {
  auto changed = fs.engine()->Revalidate(cached, st);
  if (!changed.ok()) CacheWarning("revalidate", changed.status());
}

// Before a change of SOURCE's data through the mount that the cache adopts
// afterwards (truncate, fallocate, copy_file_range: the engine takes
// SOURCE's look after it for its own): SOURCE's look now, so an outside
// change made before this one is seen as one, not adopted as part of ours
// with the blocks it made stale (until session 9 it was, when no getattr or
// open came between). `fd`: any descriptor of the file (O_PATH will do).
void FreshenBeforeChange(Filesystem& fs, const std::shared_ptr<CachedFile>& cached, int fd) {
  if (!cached || fs.engine() == nullptr) return;
  struct stat st;
  if (fstat(fd, &st) == 0) Freshen(fs, *cached, st);
}

// Looks `name` up in `parent` and fills `e` (counting one lookup). Returns an errno.
int DoLookup(fuse_req_t req, Inode* parent, const char* name, fuse_entry_param* e) {
  Filesystem& fs = Fs(req);
  std::memset(e, 0, sizeof(*e));
  e->attr_timeout = fs.options().attr_timeout;
  e->entry_timeout = fs.options().entry_timeout;
  int fd = openat(parent->fd(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd == -1) return errno;
  if (fstatat(fd, "", &e->attr, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == -1) {
    int err = errno;
    close(fd);
    return err;
  }
  Inode* inode = fs.inodes().Acquire(fd, e->attr);
  if (auto cached = inode->cached(); cached && fs.engine() != nullptr) {
    // (Until session 8 only getattr and open looked.)
    Freshen(fs, *cached, e->attr);
    fs.engine()->Overlay(*cached, &e->attr);  // data not yet written back
  } else if (fs.engine() != nullptr && S_ISREG(e->attr.st_mode) && fs.engine()->HasAnyDirty()) {
    if (auto path = RelPath(fs, parent, name)) fs.engine()->OverlayPath(*path, &e->attr);
  }
  e->ino = fs.inodes().FuseIno(inode);
  e->generation = inode->generation();
  return 0;
}

// Replies to a create-type request (mknod, mkdir, symlink, link) after `res`.
void ReplyMade(fuse_req_t req, Inode* parent, const char* name, int res, int err) {
  if (res == -1) return ReplyErr(req, err);
  fuse_entry_param e;
  int lerr = DoLookup(req, parent, name, &e);
  if (lerr != 0) return ReplyErr(req, lerr);
  fuse_reply_entry(req, &e);
}

// --- lifecycle ------------------------------------------------------------

void OpInit(void* userdata, fuse_conn_info* conn) {
  auto* fs = static_cast<Filesystem*>(userdata);
  // Contract 9: the kernel's writeback cache stays off.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // Locks are left to the kernel (see filesystem.h).
  conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
  // Drop the kernel's pages of a file whose mtime or size changed in SOURCE.
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
  if (conn->capable & FUSE_CAP_SPLICE_READ) conn->want |= FUSE_CAP_SPLICE_READ;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // POSIX ACLs of SOURCE are enforced by the kernel (it reads them through
  // getxattr). Then the umask must not be applied by the kernel but by SOURCE,
  // which skips it under a default ACL: DONT_MASK, with the caller's umask set
  // on the serving thread (ScopedCallerCredentials). Without a private
  // per-thread umask, the kernel keeps applying it.
  // (xattr=off: no ACLs, they are xattrs.)
  if ((conn->capable & FUSE_CAP_POSIX_ACL) && ThreadHasPrivateUmask() && fs->options().xattr) {
    conn->want |= FUSE_CAP_POSIX_ACL;
    if (conn->capable & FUSE_CAP_DONT_MASK) conn->want |= FUSE_CAP_DONT_MASK;
  } else {
    conn->want &= ~FUSE_CAP_DONT_MASK;
  }
  // 1 MiB writes (libfuse's buffer limit). The readahead window is what the
  // kernel offers (the bdi default, 128 KiB): it can only be lowered here.
  conn->max_write = 1u << 20;
}

// --- names ----------------------------------------------------------------

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  fuse_entry_param e;
  int err = DoLookup(req, In(req, parent), name, &e);
  if (err == ENOENT) {
    // A negative entry: the kernel may remember the absence for entry_timeout.
    e.ino = 0;
    e.entry_timeout = Fs(req).options().entry_timeout;
    fuse_reply_entry(req, &e);
    return;
  }
  if (err != 0) return ReplyErr(req, err);
  fuse_reply_entry(req, &e);
}

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Fs(req).inodes().Forget(In(req, ino), nlookup);
  fuse_reply_none(req);
}

void OpForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) {
    Fs(req).inodes().Forget(In(req, forgets[i].ino), forgets[i].nlookup);
  }
  fuse_reply_none(req);
}

// --- attributes -------------------------------------------------------------

// The O_PATH handle names the same object as any open handle of it, so the
// attributes are always read through the inode.
void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  struct stat st;
  Inode* inode = In(req, ino);
  int err = StatInode(inode, &st);
  if (err != 0) return ReplyErr(req, err);
  if (auto cached = inode->cached(); cached && Fs(req).engine() != nullptr) {
    Freshen(Fs(req), *cached, st);
    Fs(req).engine()->Overlay(*cached, &st);  // data not yet written back
  } else if (Fs(req).engine() != nullptr && S_ISREG(st.st_mode) &&
             Fs(req).engine()->HasAnyDirty()) {
    // Not opened since a remount, but with data in the cache.
    if (auto path = RelPath(Fs(req), inode)) Fs(req).engine()->OverlayPath(*path, &st);
  }
  fuse_reply_attr(req, &st, Fs(req).options().attr_timeout);
}

// utimensat() on the object itself; symlinks cannot be reached through /proc.
int SetTimes(const Inode* inode, const timespec tv[2]) {
  if (inode->is_symlink()) {
    if (utimensat(inode->fd(), "", tv, AT_EMPTY_PATH) == 0) return 0;
    return errno == EINVAL ? EPERM : errno;
  }
  return utimensat(AT_FDCWD, inode->ProcPath().c_str(), tv, 0) == -1 ? errno : 0;
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int valid, fuse_file_info* fi) {
  Inode* inode = In(req, ino);
  int res = 0;
  // Our own attribute changes move the ctime (and utimens the mtime): the
  // cache adopts them instead of taking them for an outside change.
  Engine* engine = Fs(req).engine();
  std::shared_ptr<CachedFile> cached =
      engine == nullptr ? nullptr
                        : (fi != nullptr ? Fh(fi)->cached : CachedForChange(Fs(req), inode));
  struct stat before;
  bool adopt = cached && (valid & ~FUSE_SET_ATTR_SIZE) != 0 && StatInode(inode, &before) == 0;
  if ((valid & FUSE_SET_ATTR_SIZE) != 0 && ImageMode(Fs(req)) && !ReadOnlyMode(Fs(req))) {
    // Before any other change of the request: it is refused as a whole
    // (mode=readonly refuses it below, with EROFS).
    struct stat st;
    if (int err = StatInode(inode, &st); err != 0) return ReplyErr(req, err);
    if (cached) engine->Overlay(*cached, &st);
    if (st.st_size != attr->st_size) {
      LogImageRefusal("a truncate of the image from " + std::to_string(st.st_size) + " to " +
                      std::to_string(attr->st_size) + " bytes: EPERM");
      return ReplyErr(req, EPERM);
    }
  }
  if (valid & FUSE_SET_ATTR_MODE) {
    res = fchmodat(AT_FDCWD, inode->ProcPath().c_str(), attr->st_mode, 0);
    if (res == -1) return ReplyErr(req, errno);
  }
  if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    uid_t uid = (valid & FUSE_SET_ATTR_UID) ? attr->st_uid : static_cast<uid_t>(-1);
    gid_t gid = (valid & FUSE_SET_ATTR_GID) ? attr->st_gid : static_cast<gid_t>(-1);
    res = fchownat(inode->fd(), "", uid, gid, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW);
    if (res == -1) return ReplyErr(req, errno);
  }
  if (valid & FUSE_SET_ATTR_SIZE) {
    Engine::WriteGuard guard(engine);  // no mode switch until the cache took the new size
    FreshenBeforeChange(Fs(req), cached, inode->fd());
    Engine::SourceChange change(cached);  // no cached write of the file meanwhile
    if (ReadOnlyMode(Fs(req))) return ReplyErr(req, EROFS);
    if (int err = WriteBackFirst(Fs(req), cached); err != 0) return ReplyErr(req, err);
    // The kernel passes a handle only for ftruncate() of a regular file.
    if (fi != nullptr) {
      res = ftruncate(Fh(fi)->fd, attr->st_size);
    } else {
      int fd = open(inode->ProcPath().c_str(), O_WRONLY | O_CLOEXEC);
      if (fd == -1) return ReplyErr(req, errno);
      res = ftruncate(fd, attr->st_size);
      int err = errno;
      close(fd);
      errno = err;
    }
    if (res == -1) return ReplyErr(req, errno);
    struct stat st;
    if (cached && StatInode(inode, &st) == 0) {
      Status s = engine->AfterTruncate(*cached, st);
      if (!s.ok()) CacheWarning("truncate", s);
      before = st;
    }
  }
  if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    timespec tv[2];
    tv[0].tv_sec = tv[1].tv_sec = 0;
    tv[0].tv_nsec = tv[1].tv_nsec = UTIME_OMIT;
    if (valid & FUSE_SET_ATTR_ATIME_NOW) {
      tv[0].tv_nsec = UTIME_NOW;
    } else if (valid & FUSE_SET_ATTR_ATIME) {
      tv[0] = attr->st_atim;
    }
    if (valid & FUSE_SET_ATTR_MTIME_NOW) {
      tv[1].tv_nsec = UTIME_NOW;
    } else if (valid & FUSE_SET_ATTR_MTIME) {
      tv[1] = attr->st_mtim;
    }
    int err = SetTimes(inode, tv);
    if (err != 0) return ReplyErr(req, err);
  }
  struct stat after;
  if (adopt && StatInode(inode, &after) == 0) {
    Status s = engine->Adopt(*cached, before, after);
    if (!s.ok()) CacheWarning("setattr", s);
  }
  OpGetattr(req, ino, fi);
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  std::vector<char> buf(PATH_MAX + 1);
  ssize_t n = readlinkat(In(req, ino)->fd(), "", buf.data(), buf.size());
  if (n == -1) return ReplyErr(req, errno);
  if (static_cast<size_t>(n) == buf.size()) return ReplyErr(req, ENAMETOOLONG);
  buf[n] = '\0';
  fuse_reply_readlink(req, buf.data());
}

// --- namespace ------------------------------------------------------------

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Inode* dir = In(req, parent);
  int res, err;
  {
    ScopedCallerCredentials creds(req);
    if (!creds.status().ok()) return ReplyErr(req, ErrnoOf(creds.status()));
    res = mknodat(dir->fd(), name, mode, rdev);
    err = errno;
  }
  ReplyMade(req, dir, name, res, err);
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Inode* dir = In(req, parent);
  int res, err;
  {
    ScopedCallerCredentials creds(req);
    if (!creds.status().ok()) return ReplyErr(req, ErrnoOf(creds.status()));
    res = mkdirat(dir->fd(), name, mode);
    err = errno;
  }
  ReplyMade(req, dir, name, res, err);
}

void OpSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Inode* dir = In(req, parent);
  int res, err;
  {
    ScopedCallerCredentials creds(req);
    if (!creds.status().ok()) return ReplyErr(req, ErrnoOf(creds.status()));
    res = symlinkat(link, dir->fd(), name);
    err = errno;
  }
  ReplyMade(req, dir, name, res, err);
}

void OpLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  Inode* inode = In(req, ino);
  Inode* dir = In(req, newparent);
  // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; the /proc link works for anyone
  // and resolves to the inode itself (even a symlink's).
  struct stat before;
  auto cached = CachedForChange(Fs(req), inode);
  bool adopt = cached && Fs(req).engine() != nullptr && StatInode(inode, &before) == 0;
  int res = linkat(inode->fd(), "", dir->fd(), newname, AT_EMPTY_PATH);
  if (res == -1 && errno == ENOENT) {
    res = linkat(AT_FDCWD, inode->ProcPath().c_str(), dir->fd(), newname, AT_SYMLINK_FOLLOW);
  }
  int err = errno;
  Filesystem& fs = Fs(req);
  if (res == 0 && fs.engine() != nullptr && S_ISREG(inode->type())) {
    auto from = RelPath(fs, inode);
    auto to = RelPath(fs, dir, newname);
    if (from && to) {
      Status s = fs.engine()->Link(*from, *to);
      if (!s.ok()) CacheWarning("link", s);
    }
    struct stat after;
    if (adopt && StatInode(inode, &after) == 0) {
      Status s = fs.engine()->Adopt(*cached, before, after);
      if (!s.ok()) CacheWarning("link", s);
    }
  }
  ReplyMade(req, dir, newname, res, err);
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Filesystem& fs = Fs(req);
  Inode* dir = In(req, parent);
  struct stat st;
  bool cached = fs.engine() != nullptr && fstatat(dir->fd(), name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
                S_ISREG(st.st_mode);
  std::optional<std::string> path = cached ? RelPath(fs, dir, name) : std::nullopt;
  std::optional<Engine::SourceChange> change;
  if (path && st.st_nlink <= 1 && fs.engine()->mode() == CacheMode::kWriteback) {
    // Still open somewhere: its handles read SOURCE once the name is gone,
    // so its dirty data goes there first. No cached write of it from the
    // flush to the drop (they wait, then see it detached and write to
    // SOURCE's file): a write in between would be dropped with the name.
    change.emplace(fs.engine()->LivePath(*path));
    Status s = fs.engine()->FlushPath(*path, /*only_if_open=*/true);
    if (!s.ok()) return ReplyErr(req, ErrnoOf(s));
  }
  // A file that keeps other names: its ctime moves with the unlink, our own
  // change (else the next look takes it for an outside one: a conflict).
  int keep =
      path && st.st_nlink > 1 ? openat(dir->fd(), name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : -1;
  int res = unlinkat(dir->fd(), name, 0);
  int err = errno;
  if (res == 0 && path) {
    struct stat after;
    const bool adopt = keep >= 0 && fstat(keep, &after) == 0;
    Status s = fs.engine()->Unlink(*path, st.st_nlink <= 1, adopt ? &st : nullptr,
                                   adopt ? &after : nullptr);
    if (!s.ok()) CacheWarning("unlink", s);
  }
  if (keep >= 0) close(keep);
  fuse_reply_err(req, res == -1 ? err : 0);
}

void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  int res = unlinkat(In(req, parent)->fd(), name, AT_REMOVEDIR);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
  Filesystem& fs = Fs(req);
  Inode* from_dir = In(req, parent);
  Inode* to_dir = In(req, newparent);
  std::optional<std::string> from, to;
  std::optional<Engine::SourceChange> change;
  struct stat st;
  struct stat target;
  bool is_dir = false;
  const bool exchange = (flags & RENAME_EXCHANGE) != 0;
  bool exchange_known = false;  // both sides stat'ed: the cache swaps their names
  if (fs.engine() != nullptr && fstatat(from_dir->fd(), name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    is_dir = S_ISDIR(st.st_mode);
    from = RelPath(fs, from_dir, name);
    to = RelPath(fs, to_dir, newname);
    // The target's attributes only where they are needed (one request to
    // the slow store): an exchange, or a file renamed over in writeback.
    const bool look = exchange || (!is_dir && fs.engine()->mode() == CacheMode::kWriteback);
    const bool has_target =
        look && fstatat(to_dir->fd(), newname, &target, AT_SYMLINK_NOFOLLOW) == 0;
    exchange_known = exchange && has_target;
    if (from && !is_dir && !exchange && has_target &&
        fs.engine()->mode() == CacheMode::kWriteback) {
      // Over an existing file: the slow store must never show the name
      // with less than was promised (contract 5).
      Status s = fs.engine()->FlushPath(*from, /*only_if_open=*/false);
      if (!s.ok()) return ReplyErr(req, ErrnoOf(s));
      if (to && S_ISREG(target.st_mode)) {
        // The file that loses its name: the cache forgets it, so its dirty
        // data goes to SOURCE first when something can still read it: its
        // open handles (which then read SOURCE's file, as after an unlink)
        // or its other names (a hard link: the file lives on); its writes
        // held off until it is forgotten.
        change.emplace(fs.engine()->LivePath(*to));
        s = fs.engine()->FlushPath(*to, /*only_if_open=*/target.st_nlink <= 1);
        if (!s.ok()) return ReplyErr(req, ErrnoOf(s));
      }
    }
  }
  int res = renameat2(from_dir->fd(), name, to_dir->fd(), newname, flags);
  int err = errno;
  struct stat after;
  if (res == 0 && from && to) {
    Status s;
    if (exchange) {
      // Two names trade places (files or directories, with all below them):
      // the cache swaps them and keeps everything, dirty data too. (Until
      // session 8 it forgot both, after writing files back: a directory's
      // paths below were left stale, and a file exchanged with a directory
      // lost its dirty data.)
      struct stat from_after, to_after;  // what was at `from`, now at `to`, and the other
      if (exchange_known && fstatat(to_dir->fd(), newname, &from_after, AT_SYMLINK_NOFOLLOW) == 0 &&
          fstatat(from_dir->fd(), name, &to_after, AT_SYMLINK_NOFOLLOW) == 0) {
        s = fs.engine()->Exchange(*from, *to, is_dir, S_ISDIR(target.st_mode), st, target,
                                  from_after, to_after);
      }
    } else if (fstatat(to_dir->fd(), newname, &after, AT_SYMLINK_NOFOLLOW) == 0) {
      s = fs.engine()->Rename(*from, *to, is_dir, st, after);
    }
    if (!s.ok()) CacheWarning("rename", s);
  }
  fuse_reply_err(req, res == -1 ? err : 0);
}

// --- files ----------------------------------------------------------------

// Flags for opening the source file on behalf of a FUSE open: O_NOFOLLOW is
// meaningless through /proc, O_CREAT/O_EXCL were handled by the kernel or
// create(), and O_DIRECT is dropped because FUSE requests carry no alignment
// guarantee for the source (the kernel still bypasses its own page cache).
int SourceOpenFlags(int flags) {
  return (flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL | O_NOCTTY | O_DIRECT)) | O_CLOEXEC;
}

void SetOpenReply(fuse_file_info* fi, int fd, std::shared_ptr<CachedFile> cached) {
  auto* fh = new FileHandle(fd, fi->flags);
  if (cached && (fi->flags & O_ACCMODE) == O_WRONLY) {
    // The daemon's own read descriptor: the kernel checked the caller's right
    // to write, and what is read only completes the caller's own writes.
    int rfd = open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd >= 0) fh->src = std::make_shared<SourceFd>(rfd);
  }
  // Close-to-open coherence (contract 5): the kernel drops its pages of the
  // file at open unless the cache knows they are still right (a re-read
  // then costs no FUSE request at all).
  const bool keep = cached && cached->KeepPagesAtOpen();
  fi->keep_cache = keep ? 1 : 0;
  fh->unsettled = cached && !keep;
  fh->cached = std::move(cached);
  fi->fh = reinterpret_cast<uint64_t>(fh);
  fi->direct_io = 0;
}

constexpr char kCapabilityXattr[] = "security.capability";

// xattr=off: the kernel cannot see file capabilities, so it cannot drop them
// when the file is written; a file opened for writing loses them at the open
// instead (stricter: even if it is not written). Errors are left alone: most
// files have none, and SOURCE may not support xattrs at all.
void DropCapabilitiesForWrite(const Filesystem& fs, int fd, int open_flags) {
  if (fs.options().xattr || (open_flags & O_ACCMODE) == O_RDONLY) return;
  (void)fremovexattr(fd, kCapabilityXattr);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Inode* inode = In(req, ino);
  std::optional<Engine::WriteGuard> guard;
  std::optional<Engine::SourceChange> change;
  std::shared_ptr<CachedFile> cached;
  if ((fi->flags & O_TRUNC) != 0) {
    guard.emplace(Fs(req).engine());
    cached = CachedForChange(Fs(req), inode);
    change.emplace(cached);
    if (ReadOnlyMode(Fs(req))) return ReplyErr(req, EROFS);
    if (ImageMode(Fs(req))) {
      struct stat st;
      if (int err = StatInode(inode, &st); err != 0) return ReplyErr(req, err);
      if (cached && Fs(req).engine() != nullptr) Fs(req).engine()->Overlay(*cached, &st);
      if (st.st_size != 0) {
        LogImageRefusal("an open with O_TRUNC of the image (" + std::to_string(st.st_size) +
                        " bytes): EPERM");
        return ReplyErr(req, EPERM);
      }
    }
    if (int err = WriteBackFirst(Fs(req), cached); err != 0) return ReplyErr(req, err);
  }
  int fd = open(inode->ProcPath().c_str(), SourceOpenFlags(fi->flags));
  if (fd == -1) return ReplyErr(req, errno);
  DropCapabilitiesForWrite(Fs(req), fd, fi->flags);
  if (cached && Fs(req).engine() != nullptr) {
    // This open cut SOURCE: the cache adopts that now, as after a truncate,
    // while cached writes of the file are still held off (SourceChange
    // also keeps Revalidate from taking it for an outside change).
    struct stat st;
    if (fstat(fd, &st) == 0) {
      Status s = Fs(req).engine()->AfterTruncate(*cached, st);
      if (!s.ok()) CacheWarning("open", s);
    }
  }
  // Close-to-open (contract 5): keep_cache=0 drops the kernel's pages
  // (unless they are known to be right: SetOpenReply), and this drops its
  // attributes, so a file grown in SOURCE is not cut at the size the kernel
  // remembered (and AUTO_INVAL_DATA compares size and mtime at the next
  // read). Offset -1 touches attributes only and takes no inode lock, so it
  // is safe inside open.
  if (Fs(req).session() != nullptr) {
    fuse_lowlevel_notify_inval_inode(Fs(req).session(), ino, -1, 0);
  }
  SetOpenReply(fi, fd, BindCache(Fs(req), inode, fd));
  if (fuse_reply_open(req, fi) == -ENOENT) {
    // The opener was interrupted: nobody will release this handle.
    delete Fh(fi);
  }
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Inode* dir = In(req, parent);
  int fd, err;
  {
    ScopedCallerCredentials creds(req);
    if (!creds.status().ok()) return ReplyErr(req, ErrnoOf(creds.status()));
    int flags = (fi->flags & ~(O_NOFOLLOW | O_DIRECT | O_NOCTTY)) | O_CREAT | O_CLOEXEC;
    fd = openat(dir->fd(), name, flags | O_NOFOLLOW, mode);
    err = errno;
  }
  if (fd == -1) return ReplyErr(req, err);
  DropCapabilitiesForWrite(Fs(req), fd, fi->flags);
  fuse_entry_param e;
  err = DoLookup(req, dir, name, &e);
  if (err != 0) {
    close(fd);
    return ReplyErr(req, err);
  }
  SetOpenReply(fi, fd, BindCache(Fs(req), In(req, e.ino), fd));
  if (fuse_reply_create(req, &e, fi) == -ENOENT) {
    delete Fh(fi);
    Fs(req).inodes().Forget(In(req, e.ino), 1);
  }
}

// A one-buffer vector naming `size` bytes of `fd` at `pos` (FUSE_BUFVEC_INIT
// is a C compound literal).
fuse_bufvec FdBufvec(int fd, size_t size, off_t pos) {
  fuse_bufvec v;
  std::memset(&v, 0, sizeof(v));
  v.count = 1;
  v.buf[0].size = size;
  v.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  v.buf[0].fd = fd;
  v.buf[0].pos = pos;
  return v;
}

// The FUSE worker threads of the mount (fs/mount.cc runs this many).
unsigned FuseThreads(const Filesystem& fs) {
  unsigned n = fs.options().fuse_threads;
  return n == 0 ? FsOptions::kDefaultFuseThreads : n;
}

void OpRead(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* fi) {
  FileHandle* fh = Fh(fi);
  if (fh->cached && Fs(req).engine() != nullptr) {
    // Hits are checked against their CRC in memory (contract 6), so cached
    // reads are copied, not spliced.
    thread_local std::vector<char> buf;
    if (buf.size() < size) buf.resize(size);
    // SOURCE is read on this thread, without a hand-off, when enough FUSE
    // threads stay free if it hangs (at most kMaxDirectSourceReads get
    // stuck): past source_timeout, the engine's watchdog answers EIO for us.
    std::atomic<bool> answered{false};
    std::function<void()> reply_eio;
    if (FuseThreads(Fs(req)) >= 2 * EngineConfig::kMaxDirectSourceReads) {
      reply_eio = [req, &answered] {
        if (!answered.exchange(true)) ReplyErr(req, EIO);
      };
    }
    fh->Settle();  // the open that made this handle is done
    // Its own reference: once replied to, the handle may be released.
    const std::shared_ptr<CachedFile> cached = fh->cached;
    const uint64_t version = cached->PagesVersion();
    auto n = Fs(req).engine()->Read(*cached, fh->src, static_cast<uint64_t>(off), size, buf.data(),
                                    reply_eio);
    if (answered.exchange(true)) return;  // answered with EIO at the deadline
    if (!n.ok()) return ReplyErr(req, ErrnoOf(n.status()));
    fuse_reply_buf(req, buf.data(), n.value());
    cached->ReadReplied(version);
    return;
  }
  fuse_bufvec buf = FdBufvec(fh->fd, size, off);
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

void OpWriteBuf(fuse_req_t req, fuse_ino_t /*ino*/, fuse_bufvec* in, off_t off,
                fuse_file_info* fi) {
  FileHandle* fh = Fh(fi);
  fh->Settle();
  Engine* engine = Fs(req).engine();
  Engine::WriteGuard guard(engine);  // the mode stays until the write is done
  const CacheMode mode = engine != nullptr ? guard.mode() : CacheMode::kWritearound;
  if (mode == CacheMode::kReadonly) return ReplyErr(req, EROFS);
  size_t size = fuse_buf_size(in);
  if (ImageMode(Fs(req))) {
    uint64_t allowed = 0;
    if (int err = ImageWriteRange(Fs(req), fh->fd, fh->cached, "a write",
                                  static_cast<uint64_t>(off), size, &allowed);
        err != 0) {
      return ReplyErr(req, err);
    }
    size = static_cast<size_t>(allowed);
  }
  if (fh->cached && (mode == CacheMode::kWriteback || mode == CacheMode::kWritethrough ||
                     mode == CacheMode::kCow)) {
    // The cache takes the bytes: they are needed in memory.
    thread_local std::vector<char> buf;
    if (buf.size() < size) buf.resize(size);
    fuse_bufvec mem;
    std::memset(&mem, 0, sizeof(mem));
    mem.count = 1;
    mem.buf[0].size = size;
    mem.buf[0].mem = buf.data();
    ssize_t got = fuse_buf_copy(&mem, in, static_cast<fuse_buf_copy_flags>(0));
    if (got < 0) return ReplyErr(req, static_cast<int>(-got));
    const size_t n = static_cast<size_t>(got);
    if (mode == CacheMode::kWritethrough) {
      // SOURCE first, then the cache; acknowledged after both. The cached
      // copy of the range stops being valid first, so a crash in between
      // cannot leave it serving the old bytes.
      Status before = engine->BeforeWriteThrough(*fh->cached, static_cast<uint64_t>(off), n);
      if (!before.ok()) return ReplyErr(req, ErrnoOf(before));
      ssize_t res = pwrite(fh->fd, buf.data(), n, off);
      if (res < 0) return ReplyErr(req, errno);
      struct stat st;
      if (fstat(fh->fd, &st) == 0) {
        // With O_APPEND the source put the bytes at its own end.
        uint64_t at = (fh->flags & O_APPEND) != 0 ? static_cast<uint64_t>(st.st_size - res)
                                                  : static_cast<uint64_t>(off);
        Status s = engine->WriteThrough(*fh->cached, fh->src, at, buf.data(),
                                        static_cast<size_t>(res), st);
        if (!s.ok()) CacheWarning("write", s);
      }
      fuse_reply_write(req, static_cast<size_t>(res));
      return;
    }
    // mode=writeback: into the cache, written back later (mode=cow: at
    // cachefsctl commit).
    uint64_t pos = static_cast<uint64_t>(off);
    if ((fh->flags & O_APPEND) != 0) {
      struct stat st;
      if (fstat(fh->fd, &st) != 0) return ReplyErr(req, errno);
      engine->Overlay(*fh->cached, &st);
      pos = static_cast<uint64_t>(st.st_size);
    }
    bool sync = (fh->flags & (O_SYNC | O_DSYNC)) != 0;
    Status s = engine->Write(*fh->cached, fh->src, pos, buf.data(), n, sync, fh->fd);
    if (!s.ok()) return ReplyErr(req, ErrnoOf(s));
    fuse_reply_write(req, n);
    return;
  }
  // writearound, or a file the cache does not hold: SOURCE only (spliced),
  // and the cached copy of what was written is dropped.
  fuse_bufvec out = FdBufvec(Fh(fi)->fd, size, off);
  ssize_t res = fuse_buf_copy(&out, in, static_cast<fuse_buf_copy_flags>(0));
  if (res < 0) return ReplyErr(req, static_cast<int>(-res));
  CacheAfterWrite(Fs(req), Fh(fi)->cached, Fh(fi)->fd, static_cast<uint64_t>(off),
                  static_cast<uint64_t>(res));
  fuse_reply_write(req, static_cast<size_t>(res));
}

void OpFlush(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  // close() of a duplicate gives the source its close-time behaviour (NFS
  // flushes and reports write errors here) without closing our handle.
  Fh(fi)->Settle();
  int fd = dup(Fh(fi)->fd);
  int res = fd == -1 ? -1 : close(fd);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

void OpRelease(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  FileHandle* fh = Fh(fi);
  if (fh->cached && Fs(req).engine() != nullptr) {
    Status s = Fs(req).engine()->CloseFile(*fh->cached);
    if (!s.ok()) CacheWarning("close", s);
  }
  delete fh;
  fuse_reply_err(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t /*ino*/, int datasync, fuse_file_info* fi) {
  if (CachesWrites(Fs(req), Fh(fi)->cached)) {
    // The cache holds the data: persisting it there is what fsync promises.
    Status s = Fs(req).engine()->Sync(*Fh(fi)->cached);
    fuse_reply_err(req, s.ok() ? 0 : ErrnoOf(s));
    return;
  }
  int res = datasync ? fdatasync(Fh(fi)->fd) : fsync(Fh(fi)->fd);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

void OpFallocate(fuse_req_t req, fuse_ino_t /*ino*/, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  Engine::WriteGuard guard(Fs(req).engine());
  FreshenBeforeChange(Fs(req), Fh(fi)->cached, Fh(fi)->fd);
  Engine::SourceChange change(Fh(fi)->cached);
  if (ReadOnlyMode(Fs(req))) return ReplyErr(req, EROFS);
  if (ImageMode(Fs(req)) && (mode & FALLOC_FL_KEEP_SIZE) == 0) {
    uint64_t size = 0;
    if (int err = ImageSize(Fs(req), Fh(fi)->fd, Fh(fi)->cached, &size); err != 0) {
      return ReplyErr(req, err);
    }
    if (static_cast<uint64_t>(offset) + static_cast<uint64_t>(length) > size) {
      LogImageRefusal("a fallocate to " + std::to_string(offset + length) +
                      " bytes, past the end of the image (" + std::to_string(size) +
                      " bytes): EPERM");
      return ReplyErr(req, EPERM);
    }
  }
  if (int err = WriteBackFirst(Fs(req), Fh(fi)->cached); err != 0) return ReplyErr(req, err);
  int res = fallocate(Fh(fi)->fd, mode, offset, length);
  int err = errno;
  if (res == 0) {
    CacheAfterWrite(Fs(req), Fh(fi)->cached, Fh(fi)->fd, static_cast<uint64_t>(offset),
                    static_cast<uint64_t>(length));
  }
  fuse_reply_err(req, res == -1 ? err : 0);
}

void OpLseek(fuse_req_t req, fuse_ino_t /*ino*/, off_t off, int whence, fuse_file_info* fi) {
  if (Fh(fi)->cached && Fs(req).engine() != nullptr &&
      Fs(req).engine()->mode() == CacheMode::kCow && (whence == SEEK_DATA || whence == SEEK_HOLE)) {
    // The layer may hold data where the image has a hole: all of the
    // image counts as data (allowed: a hole is only a hint).
    uint64_t size = 0;
    if (int err = ImageSize(Fs(req), Fh(fi)->fd, Fh(fi)->cached, &size); err != 0) {
      return ReplyErr(req, err);
    }
    if (off < 0 || static_cast<uint64_t>(off) >= size) return ReplyErr(req, ENXIO);
    fuse_reply_lseek(req, whence == SEEK_DATA ? off : static_cast<off_t>(size));
    return;
  }
  if (int err = WriteBackFirst(Fs(req), Fh(fi)->cached); err != 0) return ReplyErr(req, err);
  off_t res = lseek(Fh(fi)->fd, off, whence);
  if (res == -1) return ReplyErr(req, errno);
  fuse_reply_lseek(req, res);
}

void OpCopyFileRange(fuse_req_t req, fuse_ino_t /*ino_in*/, off_t off_in, fuse_file_info* fi_in,
                     fuse_ino_t /*ino_out*/, off_t off_out, fuse_file_info* fi_out, size_t len,
                     int flags) {
  Engine::WriteGuard guard(Fs(req).engine());
  FreshenBeforeChange(Fs(req), Fh(fi_out)->cached, Fh(fi_out)->fd);
  Engine::SourceChange change(Fh(fi_out)->cached);
  if (ReadOnlyMode(Fs(req))) return ReplyErr(req, EROFS);
  if (int err = WriteBackFirst(Fs(req), Fh(fi_in)->cached); err != 0) return ReplyErr(req, err);
  if (int err = WriteBackFirst(Fs(req), Fh(fi_out)->cached); err != 0) return ReplyErr(req, err);
  if (ImageMode(Fs(req))) {
    uint64_t allowed = 0;
    if (int err = ImageWriteRange(Fs(req), Fh(fi_out)->fd, Fh(fi_out)->cached, "a copy_file_range",
                                  static_cast<uint64_t>(off_out), len, &allowed);
        err != 0) {
      return ReplyErr(req, err);
    }
    len = static_cast<size_t>(allowed);
  }
  loff_t in = off_in;
  loff_t out = off_out;
  ssize_t res =
      copy_file_range(Fh(fi_in)->fd, &in, Fh(fi_out)->fd, &out, len, static_cast<unsigned>(flags));
  if (res == -1) return ReplyErr(req, errno);
  CacheAfterWrite(Fs(req), Fh(fi_out)->cached, Fh(fi_out)->fd, static_cast<uint64_t>(off_out),
                  static_cast<uint64_t>(res));
  fuse_reply_write(req, static_cast<size_t>(res));
}

// --- directories ------------------------------------------------------------

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  int fd = openat(In(req, ino)->fd(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1) return ReplyErr(req, errno);
  auto dh = std::make_unique<DirHandle>();
  dh->dp = fdopendir(fd);
  if (dh->dp == nullptr) {
    int err = errno;
    close(fd);
    return ReplyErr(req, err);
  }
  DirHandle* raw = dh.release();
  fi->fh = reinterpret_cast<uint64_t>(raw);
  fi->keep_cache = 0;
  fi->cache_readdir = 0;
  if (fuse_reply_open(req, fi) == -ENOENT) delete raw;  // the opener was interrupted
}

bool IsDotOrDotDot(const char* name) {
  return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

void DoReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi,
               bool plus) {
  DirHandle* d = Dh(fi);
  Inode* dir = In(req, ino);
  std::vector<char> buf(size);
  size_t used = 0;
  int err = 0;
  if (offset != d->offset) {
    seekdir(d->dp, offset);
    d->entry = nullptr;
    d->offset = offset;
  }
  while (true) {
    if (d->entry == nullptr) {
      errno = 0;
      d->entry = readdir(d->dp);
      if (d->entry == nullptr) {
        err = errno;  // 0 at the end of the directory
        break;
      }
    }
    off_t next = d->entry->d_off;
    const char* name = d->entry->d_name;
    size_t entsize;
    if (plus) {
      fuse_entry_param e;
      bool counted = false;
      if (IsDotOrDotDot(name)) {
        std::memset(&e, 0, sizeof(e));
        e.attr.st_ino = d->entry->d_ino;
        e.attr.st_mode = static_cast<mode_t>(d->entry->d_type) << 12;
      } else {
        err = DoLookup(req, dir, name, &e);
        if (err == ENOENT) {  // removed since readdir saw it
          err = 0;
          d->entry = nullptr;
          d->offset = next;
          continue;
        }
        if (err != 0) break;
        counted = true;
      }
      entsize = fuse_add_direntry_plus(req, buf.data() + used, size - used, name, &e, next);
      if (entsize > size - used) {
        if (counted) Fs(req).inodes().Forget(In(req, e.ino), 1);
        break;
      }
    } else {
      struct stat st;
      std::memset(&st, 0, sizeof(st));
      st.st_ino = d->entry->d_ino;
      st.st_mode = static_cast<mode_t>(d->entry->d_type) << 12;
      entsize = fuse_add_direntry(req, buf.data() + used, size - used, name, &st, next);
      if (entsize > size - used) break;
    }
    used += entsize;
    d->entry = nullptr;
    d->offset = next;
  }
  // An error after some entries were added is reported by the next call.
  if (err != 0 && used == 0) return ReplyErr(req, err);
  fuse_reply_buf(req, buf.data(), used);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  DoReaddir(req, ino, size, off, fi, false);
}

void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  DoReaddir(req, ino, size, off, fi, true);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t /*ino*/, fuse_file_info* fi) {
  delete Dh(fi);
  fuse_reply_err(req, 0);
}

void OpFsyncdir(fuse_req_t req, fuse_ino_t /*ino*/, int datasync, fuse_file_info* fi) {
  int fd = dirfd(Dh(fi)->dp);
  int res = datasync ? fdatasync(fd) : fsync(fd);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

// --- whole filesystem -----------------------------------------------------

void OpStatfs(fuse_req_t req, fuse_ino_t ino) {
  struct statvfs sv;
  if (fstatvfs(In(req, ino)->fd(), &sv) == -1) return ReplyErr(req, errno);
  fuse_reply_statfs(req, &sv);
}

void OpAccess(fuse_req_t req, fuse_ino_t ino, int mask) {
  // Only sent without default_permissions. AT_EACCESS checks with this
  // thread's filesystem ids, which are the caller's while `creds` lives.
  int res, err;
  {
    ScopedCallerCredentials creds(req);
    if (!creds.status().ok()) return ReplyErr(req, ErrnoOf(creds.status()));
    res = faccessat(In(req, ino)->fd(), "", mask, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_EACCESS);
    err = errno;
  }
  fuse_reply_err(req, res == -1 ? err : 0);
}

// --- extended attributes ----------------------------------------------------
// There is no *xattr call on an O_PATH descriptor, so the object is named by
// its /proc link. That magic link resolves to the inode itself and is not
// followed any further, even for a symlink, so no call here can reach an
// object outside SOURCE (the same holds for chmod and truncate above).

int64_t SteadyNowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// xattr=off: ENOSYS, which the kernel remembers for the mount (it sends no
// more requests of that kind and fails the calls with EOPNOTSUPP).
bool XattrOff(fuse_req_t req) {
  if (Fs(req).options().xattr) return false;
  ReplyErr(req, ENOSYS);
  return true;
}

void OpSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                int flags) {
  if (XattrOff(req)) return;
  Inode* inode = In(req, ino);
  inode->no_capability_until = 0;
  int res = setxattr(inode->ProcPath().c_str(), name, value, size, flags);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

void OpGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (XattrOff(req)) return;
  Inode* inode = In(req, ino);
  // The kernel asks for file capabilities before every write (to drop them);
  // an absence seen on SOURCE is trusted for attr_timeout, like any
  // attribute (contract 5), instead of a slow-store round trip per write.
  const bool capability = std::strcmp(name, kCapabilityXattr) == 0;
  if (capability && inode->no_capability_until.load() > SteadyNowNs()) {
    return ReplyErr(req, ENODATA);
  }
  std::vector<char> buf(size);
  ssize_t n = getxattr(inode->ProcPath().c_str(), name, size ? buf.data() : nullptr, size);
  if (n == -1 && errno == ENODATA && capability) {
    inode->no_capability_until =
        SteadyNowNs() + static_cast<int64_t>(Fs(req).options().attr_timeout * 1e9);
  }
  if (n == -1) return ReplyErr(req, errno);
  if (size == 0) return static_cast<void>(fuse_reply_xattr(req, static_cast<size_t>(n)));
  fuse_reply_buf(req, buf.data(), static_cast<size_t>(n));
}

void OpListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  if (XattrOff(req)) return;
  Inode* inode = In(req, ino);
  std::vector<char> buf(size);
  ssize_t n = listxattr(inode->ProcPath().c_str(), size ? buf.data() : nullptr, size);
  if (n == -1) return ReplyErr(req, errno);
  if (size == 0) return static_cast<void>(fuse_reply_xattr(req, static_cast<size_t>(n)));
  fuse_reply_buf(req, buf.data(), static_cast<size_t>(n));
}

void OpRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  if (XattrOff(req)) return;
  Inode* inode = In(req, ino);
  inode->no_capability_until = 0;
  int res = removexattr(inode->ProcPath().c_str(), name);
  fuse_reply_err(req, res == -1 ? errno : 0);
}

fuse_lowlevel_ops MakeOperations() {
  fuse_lowlevel_ops ops;
  std::memset(&ops, 0, sizeof(ops));
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.forget_multi = OpForgetMulti;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.readlink = OpReadlink;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.symlink = OpSymlink;
  ops.link = OpLink;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.rename = OpRename;
  ops.open = OpOpen;
  ops.create = OpCreate;
  ops.read = OpRead;
  ops.write_buf = OpWriteBuf;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.fallocate = OpFallocate;
  ops.lseek = OpLseek;
  ops.copy_file_range = OpCopyFileRange;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.releasedir = OpReleasedir;
  ops.fsyncdir = OpFsyncdir;
  ops.statfs = OpStatfs;
  ops.access = OpAccess;
  ops.setxattr = OpSetxattr;
  ops.getxattr = OpGetxattr;
  ops.listxattr = OpListxattr;
  ops.removexattr = OpRemovexattr;
  return ops;
}

}  // namespace

const fuse_lowlevel_ops& Filesystem::Operations() {
  static const fuse_lowlevel_ops ops = MakeOperations();
  return ops;
}

Result<std::unique_ptr<Filesystem>> Filesystem::Open(const std::string& source,
                                                     const FsOptions& opts) {
  int fd = open(source.c_str(), O_PATH | O_CLOEXEC);
  if (fd == -1) return Status::FromErrno(errno, "source '" + source + "'");
  struct stat st;
  if (fstat(fd, &st) == -1) {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "source '" + source + "'");
  }
  if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
    close(fd);
    return Status::Invalid("source '" + source + "' is neither a directory nor a regular file");
  }
  // Check that SOURCE can actually be read, so a bad source fails the mount
  // rather than the first request.
  int probe = open(("/proc/self/fd/" + std::to_string(fd)).c_str(),
                   (S_ISDIR(st.st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (probe == -1) {
    int err = errno;
    close(fd);
    return Status::FromErrno(err, "source '" + source + "'");
  }
  close(probe);
  auto table = std::make_unique<InodeTable>(fd, st);
  return std::unique_ptr<Filesystem>(new Filesystem(std::move(table), opts, source));
}

}  // namespace cachefs
