#include "cache/file_store.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

namespace cachefs {
namespace {

std::string What(const std::string& path) { return "store '" + path + "'"; }

// "64.0 MiB": sizes in messages for people.
std::string HumanBytes(uint64_t n) {
  static const char* const kUnits[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(n);
  size_t u = 0;
  while (v >= 1024 && u + 1 < sizeof(kUnits) / sizeof(kUnits[0])) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  if (u == 0) {
    std::snprintf(buf, sizeof(buf), "%llu bytes", static_cast<unsigned long long>(n));
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

std::string ParentDir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Allocates `size` bytes of the new, empty file `fd`. 0 or an errno.
int Allocate(int fd, uint64_t size) {
  if (fallocate(fd, 0, 0, static_cast<off_t>(size)) == 0) return 0;
  int err = errno;
  if (err != EOPNOTSUPP) return err;
  // posix_fallocate returns the error instead of setting errno; glibc
  // emulates it by writing a byte per block where the file system cannot.
  return posix_fallocate(fd, 0, static_cast<off_t>(size));
}

// Creates cfg.path with all of its blocks allocated and durable, or leaves
// nothing behind. EEXIST when someone else created it first.
Status CreateStoreFile(const StoreConfig& cfg) {
  const std::string what = What(cfg.path);
  int fd = open(cfg.path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, what + ": create");
  Status s;
  // The umask can only take bits away from 0600; fchmod makes it exact.
  if (fchmod(fd, 0600) != 0) {
    s = Status::FromErrno(errno, what + ": chmod 0600");
  } else if (int err = Allocate(fd, cfg.size_bytes()); err != 0) {
    if (err == ENOSPC || err == EDQUOT) {
      std::string free_text;
      struct statvfs sv {};
      if (fstatvfs(fd, &sv) == 0) {
        free_text = ", " + HumanBytes(static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize) + " free";
      }
      s = Status::Error(err, what + ": cannot allocate " + HumanBytes(cfg.size_bytes()) + " for " +
                                 std::to_string(cfg.slot_count) + " slots (" + std::strerror(err) +
                                 free_text + ")");
    } else {
      s = Status::FromErrno(err, what + ": allocate " + HumanBytes(cfg.size_bytes()));
    }
  } else if (fsync(fd) != 0) {
    // The size and extents must be durable before any metadata says the
    // cache is formatted.
    s = Status::FromErrno(errno, what + ": fsync");
  }
  close(fd);
  if (s.ok()) {
    std::string dir = ParentDir(cfg.path);
    int dfd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) s = Status::FromErrno(errno, "directory '" + dir + "': fsync");
    if (dfd >= 0) close(dfd);
  }
  if (!s.ok()) unlink(cfg.path.c_str());
  return s;
}

// Size checks and permission tightening of an opened store file.
Status CheckOpened(const StoreConfig& cfg, int fd) {
  const std::string what = What(cfg.path);
  struct stat st {};
  if (fstat(fd, &st) != 0) return Status::FromErrno(errno, what + ": stat");
  uint64_t have = 0;
  if (S_ISREG(st.st_mode)) {
    have = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &have) != 0) return Status::FromErrno(errno, what + ": size");
  } else if (S_ISCHR(st.st_mode)) {
    return Status::Ok();  // device DAX: the pmem store sizes it through libpmem2
  } else {
    return Status::Invalid(what + " is not a regular file or device");
  }
  if (have < cfg.size_bytes()) {
    return Status::Invalid(what + " holds " + HumanBytes(have) + ", less than the " +
                           HumanBytes(cfg.size_bytes()) + " of " + std::to_string(cfg.slot_count) +
                           " slots of " + std::to_string(cfg.block_size) + " bytes");
  }
  if (S_ISREG(st.st_mode) && (st.st_mode & 077) != 0 && fchmod(fd, st.st_mode & 0700) != 0) {
    return Status::FromErrno(errno, what + ": restrict mode to its owner");
  }
  return Status::Ok();
}

}  // namespace

Result<int> OpenStoreFile(const StoreConfig& cfg, bool create, int extra_flags) {
  const std::string what = What(cfg.path);
  const int flags = O_RDWR | O_CLOEXEC | extra_flags;
  int fd = open(cfg.path.c_str(), flags);
  bool created = false;
  if (fd < 0 && errno == ENOENT && create) {
    // Created without extra_flags: O_DIRECT would be refused only after the
    // file exists, leaving an empty file behind.
    Status s = CreateStoreFile(cfg);
    if (!s.ok() && s.code() != EEXIST) return s;
    created = s.ok();
    fd = open(cfg.path.c_str(), flags);
  }
  Status s;
  if (fd < 0) {
    int err = errno;
    if (err == EINVAL && (extra_flags & O_DIRECT) != 0) {
      s = Status::Invalid(what + ": the file system does not support O_DIRECT (store_io=direct)");
    } else {
      s = Status::FromErrno(err, what);
    }
  } else {
    s = CheckOpened(cfg, fd);
    if (!s.ok()) close(fd);
  }
  if (!s.ok()) {
    if (created) unlink(cfg.path.c_str());  // a store we cannot use is not kept
    return s;
  }
  return fd;
}

Result<std::unique_ptr<FileStore>> FileStore::Open(const StoreConfig& cfg, bool create) {
  Result<int> fd = OpenStoreFile(cfg, create, cfg.direct_io ? O_DIRECT : 0);
  if (!fd.ok()) return fd.status();
  struct stat st {};
  if (fstat(fd.value(), &st) == 0 && S_ISCHR(st.st_mode)) {
    close(fd.value());
    return Status::Invalid(What(cfg.path) + " is a character device (DAX?): use store=pmem");
  }
  // Streamed fills and random hits: the same file once more (through
  // /proc, so it is the same inode whatever happens to the path), O_DIRECT;
  // where the file system refuses (EINVAL), they go through the page cache.
  const std::string again = "/proc/self/fd/" + std::to_string(fd.value());
  int direct_fd = cfg.direct_io ? fd.value() : open(again.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
  return std::unique_ptr<FileStore>(new FileStore(cfg, fd.value(), direct_fd));
}

FileStore::FileStore(const StoreConfig& cfg, int fd, int direct_fd)
    : BlockStore(cfg.block_size, cfg.slot_count),
      path_(cfg.path),
      direct_io_(cfg.direct_io),
      fd_(fd),
      direct_fd_(direct_fd) {}

FileStore::~FileStore() {
  if (direct_fd_ >= 0 && direct_fd_ != fd_) close(direct_fd_);
  close(fd_);
}

Status FileStore::CheckAligned(uint64_t pos, uint32_t len, const void* buf) const {
  if (!direct_io_) return Status::Ok();
  if (pos % kDirectIoAlignment != 0 || len % kDirectIoAlignment != 0 ||
      reinterpret_cast<uintptr_t>(buf) % kDirectIoAlignment != 0) {
    return Status::Invalid(What(path_) + ": direct_io needs 4 KiB-aligned offset, length and " +
                           "buffer (offset " + std::to_string(pos) + ", length " +
                           std::to_string(len) + ")");
  }
  return Status::Ok();
}

// Whole pages only: a direct read or write shares no page with a buffered
// write of a neighbouring slot (pages are larger than 4 KiB on some machines).
bool FileStore::DirectFits(uint64_t pos, uint32_t len, const void* buf) const {
  static const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  return direct_fd_ >= 0 && pos % page == 0 && len % page == 0 &&
         reinterpret_cast<uintptr_t>(buf) % kDirectIoAlignment == 0;
}

Status FileStore::DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) {
  if (Status s = CheckAligned(pos, len, buf); !s.ok()) return s;
  const int fd = how == StoreRead::kDirect && DirectFits(pos, len, buf) ? direct_fd_ : fd_;
  return ReadFrom(fd, pos, len, buf);
}

Status FileStore::ReadFrom(int fd, uint64_t pos, uint32_t len, void* buf) {
  auto* p = static_cast<char*>(buf);
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, p + done, len - done, static_cast<off_t>(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && fd != fd_) {  // a device with larger sectors: the page cache then
        fd = fd_;
        continue;
      }
      return Status::FromErrno(errno, What(path_) + ": read at " + std::to_string(pos + done));
    }
    if (n == 0) {
      return Status::Error(EIO, What(path_) + ": end of file at " + std::to_string(pos + done) +
                                    " (truncated behind our back?)");
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status FileStore::DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) {
  if (Status s = CheckAligned(pos, len, buf); !s.ok()) return s;
  int fd = how == StoreWrite::kStream && DirectFits(pos, len, buf) ? direct_fd_ : fd_;
  const auto* p = static_cast<const char*>(buf);
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, p + done, len - done, static_cast<off_t>(pos + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EINVAL && fd != fd_) {  // a device with larger sectors: the page cache then
        fd = fd_;
        continue;
      }
      return Status::FromErrno(errno, What(path_) + ": write at " + std::to_string(pos + done));
    }
    if (n == 0) {
      return Status::Error(
          EIO, What(path_) + ": write at " + std::to_string(pos + done) + " made no progress");
    }
    done += static_cast<uint64_t>(n);
  }
  return Status::Ok();
}

Status FileStore::DoPersist() {
  if (fdatasync(fd_) != 0) return Status::FromErrno(errno, What(path_) + ": fdatasync");
  return Status::Ok();
}

Status FileStore::DoDiscard(uint64_t pos, uint64_t len) {
  if (fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(pos),
                static_cast<off_t>(len)) != 0) {
    // A hint only: file systems and devices without hole punching keep the
    // data, which is as good.
    if (errno == EOPNOTSUPP) return Status::Ok();
    return Status::FromErrno(errno, What(path_) + ": discard at " + std::to_string(pos));
  }
  return Status::Ok();
}

}  // namespace cachefs
