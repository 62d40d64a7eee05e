// Explicit cache control (cachefsctl warm, evict, pin, unpin, conflicts):
// the engine's side of the commands a person gives.
//
// Warm fetches through the same fetch registry as reads (`fetches_`), so a
// block a reader is fetching is waited for, not fetched twice, and a block
// warm is fetching is served to readers from its buffer. Its fetches are
// flagged `warm`: installed whatever the policy's admission says (an
// explicit request is no scan to resist) and counted as warmed, not as read
// misses.
//
// Pinning is a flag of the file record (FileRecord::kPinned), so it lasts
// across remounts; in memory the engine keeps the set of pinned files and a
// bit per slot holding a block of one (`pinned_slot_`, kept in step with
// the index by IndexInsert/IndexErase). A pinned slot is never tracked by
// the policy, and a slot the policy does not track is never a victim: that
// is all it takes to keep pinned blocks. Every place that starts tracking a
// slot (a fetch installed, a write, a writeback that made a block clean,
// recovery, a policy switch) skips pinned slots.
//
// Conflicts are resolved here too: keeping our data (written back over
// SOURCE's change), keeping theirs (ours dropped) or saving ours to a new
// file beside it and keeping theirs.
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <limits>

#include "cache/engine.h"
#include "common/log.h"

namespace cachefs {
namespace {

constexpr uint64_t kNoEnd = std::numeric_limits<uint64_t>::max();
// Warm reads SOURCE in runs of up to this many bytes (or one block).
constexpr uint64_t kWarmRunBytes = uint64_t{1} << 20;
// How often warm looks again at a block that did not stay cached (the file
// changed meanwhile, or a reader's uncached fetch of it was in flight).
constexpr int kWarmRetries = 3;
// How many "-N" suffixes a saved copy tries before giving up.
constexpr int kSaveNameTries = 100;

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// A path relative to SOURCE in canonical form (see engine.h).
Status CheckPath(const std::string& path) {
  if (path.empty()) return Status::Ok();
  if (path.find('\0') != std::string::npos) return Status::Invalid("a path has no NUL bytes");
  if (path[0] == '/') {
    return Status::Invalid("'" + path + "' is not a path relative to SOURCE");
  }
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    const std::string part = path.substr(start, slash - start);
    if (part.empty() || part == "." || part == "..") {
      return Status::Invalid("'" + path +
                             "' is not a canonical path relative to SOURCE (empty, . or .. "
                             "component)");
    }
    start = slash + 1;
  }
  return Status::Ok();
}

// openat2 beneath `dir`, following no symlink at all: the paths are
// canonical (the client resolved them), so a symlink met on the way was put
// there by someone else since, and could lead out of SOURCE.
Result<int> OpenAt2(int dir, const std::string& rel, int flags, mode_t mode) {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_NOFOLLOW | O_CLOEXEC);
  how.mode = (flags & O_CREAT) != 0 ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  const char* name = rel.empty() ? "." : rel.c_str();
  for (int tries = 0;; ++tries) {
    long fd = syscall(SYS_openat2, dir, name, &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    // EAGAIN: a rename raced the lookup; the kernel asks to try again.
    if ((errno == EINTR || errno == EAGAIN) && tries < 8) continue;
    const int err = errno;
    if (err == ELOOP) {
      return Status::Error(ELOOP, "'" + rel + "' goes through a symlink in SOURCE: not followed");
    }
    if (err == EXDEV) return Status::Error(EXDEV, "'" + rel + "' leads out of SOURCE");
    return Status::FromErrno(err, "'" + rel + "'");
  }
}

uint64_t CountBits(const std::vector<uint64_t>& words) {
  uint64_t n = 0;
  for (uint64_t w : words) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

// "YYYYmmdd-HHMMSS", local time.
std::string TimeStamp() {
  time_t now = time(nullptr);
  struct tm tm;
  localtime_r(&now, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y%m%d-%H%M%S", &tm);
  return buf;
}

}  // namespace

// --- pinned slots -------------------------------------------------------------

void Engine::IndexInsert(const BlockKey& key, uint32_t slot) {
  index_->Insert(key, slot);
  segments_->AddLive(slot);
  if (pinned_files_.count(key.file_id) != 0) {
    pinned_slot_[slot] = true;
    ++blocks_pinned_;
  }
}

void Engine::IndexErase(uint32_t slot) {
  if (pinned_slot_[slot]) {
    pinned_slot_[slot] = false;
    --blocks_pinned_;
  }
  if (index_->InUse(slot)) segments_->RemoveLive(slot);
  index_->Erase(slot);
}

Status Engine::LoadFileFlags() {
  return meta_->ScanFiles([&](const FileRecord& f) {
    if ((f.flags & FileRecord::kPinned) != 0) pinned_files_.insert(f.file_id);
    if ((f.flags & FileRecord::kConflict) != 0) conflict_files_.insert(f.file_id);
    return true;
  });
}

// --- paths --------------------------------------------------------------------

Result<int> Engine::OpenBeneath(const std::string& path, int flags, mode_t mode) {
  Status s = CheckPath(path);
  if (!s.ok()) return s;
  if (config_.source_is_file) {
    // The image is the only file; source_root_ is its directory.
    if (!path.empty()) {
      return Status::Invalid("'" + path + "': SOURCE is an image file, the mount is that file");
    }
    const std::string& src = config_.source;
    return OpenAt2(source_root_, src.substr(src.find_last_of('/') + 1), flags, mode);
  }
  return OpenAt2(source_root_, path, flags, mode);
}

Result<std::set<uint64_t>> Engine::FilesUnder(const std::string& path) {
  Status s = CheckPath(path);
  if (!s.ok()) return s;
  std::set<uint64_t> ids;
  if (!path.empty()) {
    auto id = meta_->LookupPath(path);
    if (!id.ok()) return id.status();
    if (id.value()) ids.insert(*id.value());
  }
  s = meta_->ScanPaths(path.empty() ? "" : path + "/", [&](const std::string&, uint64_t id) {
    ids.insert(id);
    return true;
  });
  if (!s.ok()) return s;
  return ids;
}

// --- warm ---------------------------------------------------------------------

Result<Engine::WarmResult> Engine::Warm(const std::string& path, uint64_t offset, uint64_t length) {
  auto opened = OpenBeneath(path, O_RDONLY);
  if (!opened.ok()) return opened.status();
  auto fd = std::make_shared<const SourceFd>(opened.value());
  struct stat st;
  if (fstat(fd->get(), &st) != 0) return Status::FromErrno(errno, "'" + path + "'");
  if (!S_ISREG(st.st_mode)) return Status::Invalid("'" + path + "' is not a regular file");
  auto bound = OpenFile(path, st);
  if (!bound.ok()) return bound.status();
  CachedFile& file = *bound.value();
  const uint64_t id = file.file_id_;
  const uint64_t bs = sb_.block_size;
  WarmResult r;
  uint64_t source_size;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    r.size = file.overlay_ ? file.size_ : file.fingerprint_.size;
    source_size = file.fingerprint_.size;
  }
  const uint64_t end = std::min(source_size, length > kNoEnd - offset ? kNoEnd : offset + length);
  const uint64_t last = (end + bs - 1) / bs;  // exclusive
  const uint64_t max_run = std::max<uint64_t>(1, kWarmRunBytes / bs);
  int retries = 0;
  bool persisted = false;
  uint64_t b = offset / bs;
  while (offset < end && b < last) {
    // A block whose every sub-block (up to SOURCE's end) is valid is done.
    bool cached;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cached = index_->Find({id, b}).has_value();
    }
    if (cached) {
      auto rec = meta_->GetBlock(id, b);
      if (!rec.ok()) return rec.status();
      const uint64_t want = std::min(bs, source_size - b * bs);
      bool whole = rec.value().has_value();
      for (uint32_t i = 0; whole && i < (want + kSubBlockSize - 1) / kSubBlockSize; ++i) {
        whole = rec.value()->IsValid(i);
      }
      if (whole) {
        r.blocks_present++;
        ++b;
        continue;
      }
    }
    std::shared_ptr<Fetch> other;
    std::vector<std::shared_ptr<Fetch>> run;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = fetches_.find({id, b});
      if (it != fetches_.end()) {
        other = it->second;
      } else {
        const uint64_t epoch = file.epoch_.load();
        for (uint64_t k = b; k < last && run.size() < max_run; ++k) {
          const bool present = index_->Find({id, k}).has_value();
          if (k > b && (present || fetches_.count({id, k}) != 0)) break;
          auto f = std::make_shared<Fetch>(k, epoch);
          f->fill = present;  // a partly valid block: its own sub-blocks win
          f->warm = true;
          fetches_[{id, k}] = f;
          run.push_back(std::move(f));
        }
      }
    }
    if (other) {
      // Someone fetches it (a reader, readahead, a writer holding it): look
      // again once that is settled.
      std::unique_lock<std::mutex> lock(other->mu);
      other->cv.wait(lock, [&] { return other->installed; });
      if (++retries > kWarmRetries * 4) {
        return Status::Error(EAGAIN, "'" + path + "' is busy: block " + std::to_string(b) +
                                         " keeps being fetched uncached");
      }
      continue;
    }
    auto fetched = FetchRun(file, fd->get(), run.front()->index * bs, (run.back()->index + 1) * bs,
                            run, /*defer_install=*/false);
    if (!fetched.ok()) return fetched.status().Prefixed("warm of '" + path + "'");
    size_t kept = 0;
    while (kept < run.size() && run[kept]->outcome == InstallOutcome::kCached) {
      r.blocks_fetched++;
      r.bytes_fetched += run[kept]->bytes;
      counters_.warmed++;
      ++kept;
    }
    b = run.front()->index + kept;
    if (kept == run.size()) {
      retries = 0;
      persisted = false;
      continue;
    }
    const Fetch& f = *run[kept];
    if (!f.data || f.bytes == 0) break;  // SOURCE ends sooner than it did: nothing more
    if (f.outcome == InstallOutcome::kNoRoom) {
      if (!persisted) {
        // Slots of replaced data wait for a persist: free them, then again.
        Status s = Persist();
        if (!s.ok()) return s;
        persisted = true;
        continue;
      }
      uint64_t pinned, dirty;
      {
        std::lock_guard<std::mutex> lock(mu_);
        pinned = blocks_pinned_;
        dirty = dirty_.size();
      }
      return Status::Error(ENOSPC, "warm of '" + path + "': the cache is full of pinned or dirty " +
                                       "data (" + std::to_string(pinned) + " pinned and " +
                                       std::to_string(dirty) + " dirty of " +
                                       std::to_string(sb_.slot_count) +
                                       " blocks): unpin or flush first");
    }
    if (++retries > kWarmRetries) {
      return Status::Error(EAGAIN, "warm of '" + path + "': the file keeps changing");
    }
  }
  Status s = CloseFile(file);
  if (!s.ok()) return s;
  return r;
}

// --- evict --------------------------------------------------------------------

Result<Engine::EvictResult> Engine::Evict(const std::string& path) {
  auto ids = FilesUnder(path);
  if (!ids.ok()) return ids.status();
  EvictResult r;
  for (uint64_t id : ids.value()) {
    r.files++;
    bool pinned;
    {
      std::lock_guard<std::mutex> lock(mu_);
      pinned = pinned_files_.count(id) != 0;
    }
    if (pinned) {
      // Pinned on purpose: unpin first to let it go.
      r.files_pinned++;
      Status s = meta_->ScanBlocks(id, [&](const BlockRecord&) {
        r.blocks_pinned_kept++;
        return true;
      });
      if (!s.ok()) return s;
      continue;
    }
    std::vector<uint64_t> dirty;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [seq, key] : dirty_) {
        if (key.file_id == id) dirty.push_back(key.index);
      }
    }
    if (!dirty.empty()) {
      std::sort(dirty.begin(), dirty.end());
      Status s;
      {
        std::lock_guard<std::mutex> lock(writeback_mu_);
        s = WriteBackFile(id, dirty, /*background=*/false);
      }
      if (!s.ok()) {
        r.files_failed++;
        if (r.error.empty()) r.error = s.message();
      }
    }
    uint64_t dropped = 0;
    {
      auto live = LiveFile(id);  // (takes files_mu_ itself)
      std::lock_guard<std::mutex> lock(files_mu_);
      // Fetches in flight must not put back what goes now.
      if (live) live->epoch_++;
      Status s = DropBlocks(id, 0, kNoEnd, /*keep_dirty=*/true, &dropped);
      if (!s.ok()) return s;
    }
    r.blocks_dropped += dropped;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = dirty_per_file_.find(id);
    if (it != dirty_per_file_.end()) r.blocks_kept_dirty += it->second;
  }
  return r;
}

// --- pin ----------------------------------------------------------------------

Result<Engine::PinResult> Engine::Pin(const std::string& path) {
  auto opened = OpenBeneath(path, O_RDONLY);
  if (!opened.ok()) return opened.status();
  Fd fd(opened.value());
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "'" + path + "'");
  if (!S_ISREG(st.st_mode)) return Status::Invalid("'" + path + "' is not a regular file");
  auto bound = OpenFile(path, st);
  if (!bound.ok()) return bound.status();
  CachedFile& file = *bound.value();
  const uint64_t id = file.file_id_;
  PinResult r;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    auto rec = meta_->GetFile(id);
    if (!rec.ok()) return rec.status();
    if (!rec.value()) return Status::Error(ENOENT, "'" + path + "' lost its record meanwhile");
    r.was_pinned = (rec.value()->flags & FileRecord::kPinned) != 0;
    if (!r.was_pinned) {
      FileRecord f = *rec.value();
      f.flags |= FileRecord::kPinned;
      MetaBatch batch;
      batch.Put(f);
      Status s = meta_->Commit(batch, true);  // a pin is a promise: synced
      if (!s.ok()) return s;
    }
  }
  file.pinned_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pinned_files_.insert(id);
    // Blocks cached from here on are pinned by IndexInsert; these were
    // cached before. A scan of the slots: pinning is rare, the cache large.
    for (uint32_t slot = 0; slot < sb_.slot_count; ++slot) {
      if (!index_->InUse(slot) || index_->Owner(slot).file_id != id) continue;
      if (!pinned_slot_[slot]) {
        pinned_slot_[slot] = true;
        ++blocks_pinned_;
      }
      policy_->Remove(slot);
      r.blocks_cached++;
    }
  }
  Status s = CloseFile(file);
  if (!s.ok()) return s;
  return r;
}

Result<Engine::UnpinResult> Engine::Unpin(const std::string& path) {
  auto ids = FilesUnder(path);
  if (!ids.ok()) return ids.status();
  std::set<uint64_t> unpinned;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    MetaBatch batch;
    for (uint64_t id : ids.value()) {
      auto rec = meta_->GetFile(id);
      if (!rec.ok()) return rec.status();
      if (!rec.value() || (rec.value()->flags & FileRecord::kPinned) == 0) continue;
      FileRecord f = *rec.value();
      f.flags &= ~FileRecord::kPinned;
      batch.Put(f);
      unpinned.insert(id);
    }
    if (!batch.empty()) {
      Status s = meta_->Commit(batch, true);
      if (!s.ok()) return s;
    }
    for (uint64_t id : unpinned) {
      auto it = open_files_.find(id);
      if (it == open_files_.end()) continue;
      if (auto live = it->second.lock()) live->pinned_ = false;
    }
  }
  UnpinResult r;
  r.files = unpinned.size();
  if (unpinned.empty()) return r;
  std::lock_guard<std::mutex> lock(mu_);
  for (uint64_t id : unpinned) pinned_files_.erase(id);
  for (uint32_t slot = 0; slot < sb_.slot_count; ++slot) {
    if (!pinned_slot_[slot] || unpinned.count(index_->Owner(slot).file_id) == 0) continue;
    pinned_slot_[slot] = false;
    --blocks_pinned_;
    r.blocks++;
    // Clean blocks become victims again; dirty ones once written back.
    if (!dirty_slot_[slot] && !policy_->IsTracked(slot)) policy_->Track(slot);
  }
  return r;
}

// --- conflicts ----------------------------------------------------------------

Result<std::vector<Engine::ConflictInfo>> Engine::Conflicts(const std::string& path) {
  Status s = CheckPath(path);
  if (!s.ok()) return s;
  std::set<uint64_t> ids;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ids = conflict_files_;
  }
  std::vector<ConflictInfo> out;
  for (uint64_t id : ids) {
    auto rec = meta_->GetFile(id);
    if (!rec.ok()) return rec.status();
    if (!rec.value() || (rec.value()->flags & FileRecord::kConflict) == 0) continue;
    const FileRecord& f = *rec.value();
    const bool under = path.empty() || f.path == path ||
                       (f.path.size() > path.size() && f.path.compare(0, path.size(), path) == 0 &&
                        f.path[path.size()] == '/');
    if (!under) continue;
    ConflictInfo c;
    c.path = f.path;
    c.size = f.size;
    c.mtime_ns = f.mtime_ns;
    if (auto live = LiveFile(id)) {
      std::lock_guard<std::mutex> lock(live->mu_);
      if (live->overlay_) {
        c.size = live->size_;
        c.mtime_ns = live->mtime_ns_;
      }
    }
    s = meta_->ScanBlocks(id, [&](const BlockRecord& b) {
      if (b.AnyDirty()) {
        c.dirty_blocks++;
        c.dirty_bytes += CountBits(b.dirty) * kSubBlockSize;
      }
      return true;
    });
    if (!s.ok()) return s;
    auto fd = OpenBeneath(f.path, O_PATH);
    struct stat st;
    if (fd.ok()) {
      Fd closer(fd.value());
      if (fstat(closer.get(), &st) == 0 && S_ISREG(st.st_mode)) {
        c.in_source = true;
        c.source_size = static_cast<uint64_t>(st.st_size);
        c.source_mtime_ns = FingerprintOf(st).mtime_ns;
      }
    }
    out.push_back(std::move(c));
  }
  std::sort(out.begin(), out.end(),
            [](const ConflictInfo& a, const ConflictInfo& b) { return a.path < b.path; });
  return out;
}

Result<uint64_t> Engine::DiscardOurs(uint64_t file_id, const struct stat& st) {
  auto live = LiveFile(file_id);
  const Fingerprint fp = FingerprintOf(st);
  uint64_t dropped = 0;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    if (live) {
      std::lock_guard<std::mutex> file_lock(live->mu_);
      live->epoch_++;
      live->overlay_ = false;
      live->conflict_ = false;
      live->fingerprint_ = fp;
      live->source_ino_ = static_cast<uint64_t>(st.st_ino);
      live->size_ = fp.size;
      live->mtime_ns_ = fp.mtime_ns;
      live->record_stale_ = false;  // written below
    }
    MetaBatch batch;
    std::vector<uint32_t> freed;
    Status s = DropBlocksInto(file_id, 0, kNoEnd, batch, freed, /*keep_dirty=*/false);
    dropped = freed.size();
    if (!s.ok()) return s;
    auto rec = meta_->GetFile(file_id);
    if (!rec.ok()) return rec.status();
    if (rec.value()) {
      FileRecord f = *rec.value();
      f.flags &= ~(FileRecord::kConflict | FileRecord::kWritingBack);
      f.source_ino = static_cast<uint64_t>(st.st_ino);
      f.fingerprint = fp;
      f.size = fp.size;
      f.mtime_ns = fp.mtime_ns;
      f.ctime_ns = fp.ctime_ns;
      batch.Put(f);
    }
    s = meta_->Commit(batch, true);
    if (!s.ok()) return s;
    ReleaseDropped(freed);
  }
  std::lock_guard<std::mutex> lock(mu_);
  conflict_files_.erase(file_id);
  DropEpoch(file_id);  // image mode: its versions are gone with the blocks
  return dropped;
}

Status Engine::WriteOurVersion(uint64_t file_id, int src_fd, int out_fd, uint64_t size) {
  const uint64_t bs = sb_.block_size;
  Buffer buf(static_cast<char*>(std::aligned_alloc(kSubBlockSize, bs)));
  if (!buf) return Status::Error(ENOMEM, "out of memory");
  for (uint64_t index = 0; index * bs < size; ++index) {
    const uint64_t pos = index * bs;
    const size_t n = static_cast<size_t>(std::min(bs, size - pos));
    std::memset(buf.get(), 0, bs);
    if (src_fd >= 0) {
      auto got = backing_->Read(src_fd, pos, n, buf.get());  // short past SOURCE's end: zeros
      if (!got.ok()) return got.status();
    }
    auto lock = LockBlock(file_id, index);
    auto rec = meta_->GetBlock(file_id, index);
    Status s = rec.ok() ? Status::Ok() : rec.status();
    if (s.ok() && rec.value() && rec.value()->AnyDirty()) {
      const BlockRecord& r = *rec.value();
      for (uint32_t i = 0; s.ok() && i < r.sub_blocks(); ++i) {
        if (r.IsDirty(i)) {
          s = ReadSubBlocks(r, i, i + 1, buf.get() + static_cast<size_t>(i) * kSubBlockSize);
        }
      }
    }
    UnlockBlock(file_id, lock);
    if (!s.ok()) return s;
    s = backing_->Write(out_fd, pos, n, buf.get());
    if (!s.ok()) return s;
  }
  return backing_->Sync(out_fd);
}

Result<Engine::Resolved> Engine::ResolveConflict(const std::string& path, Resolution how) {
  Status s = CheckPath(path);
  if (!s.ok()) return s;
  auto id_found = meta_->LookupPath(path);
  if (!id_found.ok()) return id_found.status();
  if (!id_found.value()) {
    return Status::Invalid("'" + path + "' is not in conflict (not known to the cache)");
  }
  const uint64_t id = *id_found.value();
  auto rec = meta_->GetFile(id);
  if (!rec.ok()) return rec.status();
  if (!rec.value() || (rec.value()->flags & FileRecord::kConflict) == 0) {
    return Status::Invalid("'" + path + "' is not in conflict");
  }
  Resolved r;
  s = meta_->ScanBlocks(id, [&](const BlockRecord& b) {
    r.bytes += CountBits(b.dirty) * kSubBlockSize;
    return true;
  });
  if (!s.ok()) return s;
  auto opened = OpenBeneath(path, O_RDONLY);
  if (!opened.ok() && opened.status().code() != ENOENT) return opened.status();
  const bool gone = !opened.ok();
  Fd fd(gone ? -1 : opened.value());
  struct stat st {};
  if (!gone && fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "'" + path + "'");
  if (!gone && !S_ISREG(st.st_mode)) {
    return Status::Invalid("'" + path + "' is no regular file in SOURCE any more");
  }

  if (how == Resolution::kKeepOurs) {
    if (gone) {
      return Status::Error(ENOENT,
                           "'" + path + "' is gone from SOURCE: save ours to a new file instead");
    }
    auto live = LiveFile(id);
    {
      std::lock_guard<std::mutex> lock(files_mu_);
      auto now = meta_->GetFile(id);
      if (!now.ok()) return now.status();
      if (!now.value()) return Status::Error(ENOENT, "'" + path + "' lost its record meanwhile");
      FileRecord f = *now.value();
      f.flags &= ~FileRecord::kConflict;
      f.fingerprint = FingerprintOf(st);
      f.source_ino = static_cast<uint64_t>(st.st_ino);
      MetaBatch batch;
      batch.Put(f);
      s = meta_->Commit(batch, true);
      if (!s.ok()) return s;
      if (live) {
        std::lock_guard<std::mutex> file_lock(live->mu_);
        live->fingerprint_ = f.fingerprint;
        live->source_ino_ = f.source_ino;
        live->conflict_ = false;
        live->epoch_++;  // fetches that read SOURCE before are stale
      }
      // SOURCE's look is adopted: clean blocks cached from before its change
      // go (ours stay), or they would be served (and fill in a later partial
      // write, which the writer would put over the change) under a
      // fingerprint that matches (until session 8).
      s = DropBlocks(id, 0, kNoEnd, /*keep_dirty=*/true);
      if (!s.ok()) return s;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      conflict_files_.erase(id);
    }
    // mode=cow: the image changes only by cachefsctl commit, which now takes
    // ours (until session 8 the command failed here, after it took effect).
    if (!WritebackAllowed()) return r;
    // Written back now, not by the writer later: the caller learns the outcome.
    std::vector<uint64_t> dirty;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [seq, key] : dirty_) {
        if (key.file_id == id) dirty.push_back(key.index);
      }
    }
    std::sort(dirty.begin(), dirty.end());
    std::lock_guard<std::mutex> lock(writeback_mu_);
    s = WriteBackFile(id, dirty, /*background=*/false);
    if (!s.ok()) return s;
    auto after = meta_->GetFile(id);
    if (after.ok() && after.value() && (after.value()->flags & FileRecord::kConflict) != 0) {
      return Status::Error(
          EAGAIN, "'" + path + "' changed in SOURCE again meanwhile: still " + "in conflict");
    }
    return r;
  }

  if (how == Resolution::kSaveOurs) {
    uint64_t size = rec.value()->size;
    if (auto live = LiveFile(id)) {
      std::lock_guard<std::mutex> lock(live->mu_);
      if (live->overlay_) size = live->size_;
    }
    // Beside the file, relative to SOURCE's directory (or the image's).
    std::string name = path;
    if (config_.source_is_file) {
      name = config_.source.substr(config_.source.find_last_of('/') + 1);
    }
    const std::string stem = name + ".cachefs-ours-" + TimeStamp();
    Result<int> out = Status::Error(EEXIST, stem);
    std::string chosen;
    for (int n = 0; n < kSaveNameTries; ++n) {
      chosen = n == 0 ? stem : stem + "-" + std::to_string(n);
      out = OpenAt2(source_root_, chosen, O_WRONLY | O_CREAT | O_EXCL, 0600);
      if (out.ok() || out.status().code() != EEXIST) break;
    }
    if (!out.ok()) return out.status().Prefixed("saving ours");
    Fd out_fd(out.value());
    if (!gone) {
      // As the original: its owner and permissions (best effort).
      if (fchown(out_fd.get(), st.st_uid, st.st_gid) != 0 && errno != EPERM) {
        LogWarning("saving ours: chown of '" + chosen + "': " + std::strerror(errno));
      }
      (void)fchmod(out_fd.get(), st.st_mode & 07777);
    }
    s = WriteOurVersion(id, fd.get(), out_fd.get(), size);
    if (!s.ok()) {
      unlinkat(source_root_, chosen.c_str(), 0);  // ours is still in the cache
      return s.Prefixed("saving ours to '" + chosen + "'");
    }
    r.saved_as = chosen;
  }

  // Keep theirs (after saving ours, too).
  if (gone) {
    Status u = Unlink(path, /*last_link=*/true);
    if (!u.ok()) return u;
    std::lock_guard<std::mutex> lock(mu_);
    conflict_files_.erase(id);
    return r;
  }
  auto dropped = DiscardOurs(id, st);
  if (!dropped.ok()) return dropped.status();
  LogInfo("conflict of '" + path + "' resolved: " +
          (how == Resolution::kSaveOurs ? "ours saved as '" + r.saved_as + "', " : "") +
          "SOURCE's version kept");
  return r;
}

}  // namespace cachefs
