#include "tests/cache/fault_layers.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

#include "meta/rocks_meta_store.h"

namespace cachefs {
namespace {

Status PowerOff() { return Status::Error(EIO, "power cut (simulated)"); }
// What RocksDB is told of its IO once the power is cut: success, while
// nothing reaches the disk any more. Errors would be more natural, but
// librocksdb 7.8 as Debian builds it asserts when a file that failed once is
// written or synced again (WritableFileWriter: "sync_without_flush_called_"),
// and a machine without power reports nothing anyway.
rocksdb::IOStatus Vanished() { return rocksdb::IOStatus::OK(); }

// A file created after the power was cut: everything written to it is lost.
class VanishedFile final : public rocksdb::FSWritableFile {
 public:
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions&,
                           rocksdb::IODebugContext*) override {
    size_ += data.size();
    return Vanished();
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions&,
                           const rocksdb::DataVerificationInfo&,
                           rocksdb::IODebugContext*) override {
    size_ += data.size();
    return Vanished();
  }
  rocksdb::IOStatus Close(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return Vanished();
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return Vanished();
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return Vanished();
  }
  uint64_t GetFileSize(const rocksdb::IOOptions&, rocksdb::IODebugContext*) override {
    return size_;
  }

 private:
  uint64_t size_ = 0;
};

}  // namespace

// ---- StoreUndo -----------------------------------------------------------

size_t StoreUndo::unsynced_pages() {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = undo_.size();
  for (const auto& [page, data] : persisting_) n += undo_.count(page) == 0 ? 1 : 0;
  return n;
}

Status StoreUndo::PowerLoss(const std::string& path,
                            const std::function<bool(uint64_t page)>& revert) {
  std::lock_guard<std::mutex> lock(mu_);
  // A persist that had begun but not completed made nothing durable: its
  // pages' contents before are the older ones.
  std::map<uint64_t, std::string> pages = std::move(persisting_);
  for (auto& [page, data] : undo_) pages.emplace(page, std::move(data));
  undo_.clear();
  persisting_.clear();
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "power loss: open " + path);
  Status s;
  for (const auto& [page, data] : pages) {
    if (!revert(page)) continue;
    if (pwrite(fd, data.data(), data.size(), static_cast<off_t>(page * kPage)) !=
        static_cast<ssize_t>(data.size())) {
      s = Status::FromErrno(errno, "power loss: revert page of " + path);
      break;
    }
  }
  close(fd);
  return s;
}

Status StoreUndo::PowerLoss(const std::string& path, std::mt19937_64& rng, double p) {
  std::bernoulli_distribution lost(p);
  return PowerLoss(path, [&](uint64_t) { return lost(rng); });
}

// ---- FaultStore ----------------------------------------------------------

FaultStore::FaultStore(std::unique_ptr<BlockStore> inner, PowerSwitch* power,
                       std::shared_ptr<StoreUndo> undo)
    : BlockStore(inner->block_size(), inner->slot_count()),
      inner_(std::move(inner)),
      power_(power),
      undo_(std::move(undo)) {}

void FaultStore::SetPersistHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(hook_mu_);
  hook_ = std::move(hook);
}

Status FaultStore::DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  return inner_->Read(pos / block_size(), static_cast<uint32_t>(pos % block_size()), len, buf, how);
}

Status FaultStore::SaveUndo(uint64_t pos, uint64_t len) {
  constexpr uint32_t kPage = StoreUndo::kPage;
  for (uint64_t page = pos / kPage; page * kPage < pos + len; ++page) {
    if (undo_->undo_.count(page) != 0) continue;  // the older contents are kept already
    std::string old(kPage, '\0');
    const uint64_t at = page * kPage;
    Status s = inner_->Read(at / block_size(), static_cast<uint32_t>(at % block_size()), kPage,
                            old.data());
    if (!s.ok()) return s;
    undo_->undo_.emplace(page, std::move(old));
  }
  return Status::Ok();
}

Status FaultStore::DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  // One lock for the saving and the write: a persist that swaps the undo
  // state sees each write either whole before it or whole after it.
  std::lock_guard<std::mutex> lock(undo_->mu_);
  Status s = SaveUndo(pos, len);
  if (!s.ok()) return s;
  return inner_->Write(pos / block_size(), static_cast<uint32_t>(pos % block_size()), len, buf,
                       how);
}

Status FaultStore::DoPersist() {
  {
    PowerSwitch::Guard power(*power_);
    if (!power.on()) return PowerOff();
    std::lock_guard<std::mutex> lock(undo_->mu_);
    // Writes completed before this point are what the device persist covers.
    for (auto& [page, data] : undo_->undo_) undo_->persisting_.emplace(page, std::move(data));
    undo_->undo_.clear();
  }
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(hook_mu_);
    hook = hook_;
  }
  if (hook) hook();
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  Status s = inner_->Persist();
  std::lock_guard<std::mutex> lock(undo_->mu_);
  if (!s.ok()) {
    // Nothing became durable: the older contents stay the ones to restore.
    for (auto& [page, data] : undo_->persisting_) undo_->undo_[page] = std::move(data);
  }
  undo_->persisting_.clear();
  return s;
}

Status FaultStore::DoDiscard(uint64_t pos, uint64_t len) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  std::lock_guard<std::mutex> lock(undo_->mu_);
  Status s = SaveUndo(pos, len);  // a hole reads as zeros: a write like any other
  if (!s.ok()) return s;
  return inner_->Discard(pos / block_size());
}

// ---- FaultFs ---------------------------------------------------------------

// A writable file of FaultFs: counts what is appended and what is synced.
class FaultWritableFile final : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(FaultFs* fs, std::string name, std::unique_ptr<rocksdb::FSWritableFile> f)
      : rocksdb::FSWritableFileOwnerWrapper(std::move(f)), fs_(fs), name_(std::move(name)) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    rocksdb::IOStatus s = target()->Append(data, o, dbg);
    if (s.ok()) Grow(data.size(), std::nullopt);
    return s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& info,
                           rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    rocksdb::IOStatus s = target()->Append(data, o, info, dbg);
    if (s.ok()) Grow(data.size(), std::nullopt);
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    rocksdb::IOStatus s = target()->PositionedAppend(data, offset, o, dbg);
    if (s.ok()) Grow(data.size(), offset);
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                     const rocksdb::IOOptions& o,
                                     const rocksdb::DataVerificationInfo& info,
                                     rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    rocksdb::IOStatus s = target()->PositionedAppend(data, offset, o, info, dbg);
    if (s.ok()) Grow(data.size(), offset);
    return s;
  }
  rocksdb::IOStatus Truncate(uint64_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    rocksdb::IOStatus s = target()->Truncate(size, o, dbg);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      FaultFs::FileState& st = fs_->files_[name_];
      st.size = size;
      st.synced = std::min(st.synced, size);
    }
    return s;
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    return Durable([&] { return target()->Sync(o, dbg); });
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    return Durable([&] { return target()->Fsync(o, dbg); });
  }
  rocksdb::IOStatus RangeSync(uint64_t offset, uint64_t nbytes, const rocksdb::IOOptions& o,
                              rocksdb::IODebugContext* dbg) override {
    // sync_file_range: starts writeback, promises nothing.
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    return target()->RangeSync(offset, nbytes, o, dbg);
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    return target()->Flush(o, dbg);
  }

 private:
  void Grow(size_t n, std::optional<uint64_t> offset) {
    std::lock_guard<std::mutex> lock(fs_->mu_);
    FaultFs::FileState& st = fs_->files_[name_];
    st.size = offset ? std::max(st.size, *offset + n) : st.size + n;
  }
  // Sync and Fsync: what was appended before the call is durable after it.
  template <typename Fn>
  rocksdb::IOStatus Durable(const Fn& sync) {
    PowerSwitch::Guard power(*fs_->power_);
    if (!power.on()) return Vanished();
    uint64_t size;
    {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      size = fs_->files_[name_].size;
    }
    rocksdb::IOStatus s = sync();
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(fs_->mu_);
      FaultFs::FileState& st = fs_->files_[name_];
      st.synced = std::max(st.synced, std::min(size, st.size));
    }
    return s;
  }

  FaultFs* const fs_;
  const std::string name_;
};

FaultFs::FaultFs(PowerSwitch* power)
    : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()), power_(power) {}

rocksdb::IOStatus FaultFs::NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                           std::unique_ptr<rocksdb::FSWritableFile>* r,
                                           rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) {
    *r = std::make_unique<VanishedFile>();
    return Vanished();
  }
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus s = target()->NewWritableFile(f, o, &file, dbg);
  if (!s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    files_[f] = FileState{};  // created or truncated: empty
  }
  *r = std::make_unique<FaultWritableFile>(this, f, std::move(file));
  return s;
}

rocksdb::IOStatus FaultFs::ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                              std::unique_ptr<rocksdb::FSWritableFile>* r,
                                              rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) {
    *r = std::make_unique<VanishedFile>();
    return Vanished();
  }
  std::unique_ptr<rocksdb::FSWritableFile> file;
  rocksdb::IOStatus s = target()->ReopenWritableFile(f, o, &file, dbg);
  if (!s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (files_.count(f) == 0) {
      // From before this layer: durable as it is.
      uint64_t size = 0;
      (void)target()->GetFileSize(f, rocksdb::IOOptions(), &size, dbg);
      files_[f] = FileState{size, size};
    }
  }
  *r = std::make_unique<FaultWritableFile>(this, f, std::move(file));
  return s;
}

rocksdb::IOStatus FaultFs::ReuseWritableFile(const std::string& f, const std::string& old,
                                             const rocksdb::FileOptions& o,
                                             std::unique_ptr<rocksdb::FSWritableFile>* r,
                                             rocksdb::IODebugContext* dbg) {
  // Recycled WAL files (recycle_log_file_num) would need the old contents
  // modelled; the metadata store does not use them.
  (void)f;
  (void)old;
  (void)o;
  (void)r;
  (void)dbg;
  return rocksdb::IOStatus::NotSupported("FaultFs: ReuseWritableFile");
}

rocksdb::IOStatus FaultFs::NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                           std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                           rocksdb::IODebugContext* dbg) {
  (void)f;
  (void)o;
  (void)r;
  (void)dbg;
  return rocksdb::IOStatus::NotSupported("FaultFs: NewRandomRWFile");
}

rocksdb::IOStatus FaultFs::DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                                      rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return Vanished();
  rocksdb::IOStatus s = target()->DeleteFile(f, o, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    files_.erase(f);
  }
  return s;
}

rocksdb::IOStatus FaultFs::RenameFile(const std::string& from, const std::string& to,
                                      const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return Vanished();
  rocksdb::IOStatus s = target()->RenameFile(from, to, o, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(from);
    if (it != files_.end()) {
      files_[to] = it->second;
      files_.erase(from);
    } else {
      files_.erase(to);
    }
  }
  return s;
}

rocksdb::IOStatus FaultFs::LinkFile(const std::string& from, const std::string& to,
                                    const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return Vanished();
  rocksdb::IOStatus s = target()->LinkFile(from, to, o, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(from);
    if (it != files_.end()) files_[to] = it->second;
  }
  return s;
}

rocksdb::IOStatus FaultFs::Truncate(const std::string& f, size_t size, const rocksdb::IOOptions& o,
                                    rocksdb::IODebugContext* dbg) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return Vanished();
  rocksdb::IOStatus s = target()->Truncate(f, size, o, dbg);
  if (s.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(f);
    if (it != files_.end()) {
      it->second.size = size;
      it->second.synced = std::min<uint64_t>(it->second.synced, size);
    }
  }
  return s;
}

uint64_t FaultFs::unsynced_bytes() {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& [name, st] : files_) n += st.size - std::min(st.synced, st.size);
  return n;
}

Status FaultFs::PowerLoss(
    const std::function<uint64_t(const std::string& name, const FileState&)>& keep) {
  std::lock_guard<std::mutex> lock(mu_);
  Status s;
  for (const auto& [name, st] : files_) {
    const uint64_t synced = std::min(st.synced, st.size);
    const uint64_t len = std::clamp(keep(name, st), synced, st.size);
    if (::truncate(name.c_str(), static_cast<off_t>(len)) != 0 && errno != ENOENT && s.ok()) {
      s = Status::FromErrno(errno, "power loss: truncate " + name);
    }
  }
  files_.clear();
  return s;
}

Status FaultFs::PowerLoss(std::mt19937_64& rng) {
  return PowerLoss([&](const std::string&, const FileState& st) {
    const uint64_t synced = std::min(st.synced, st.size);
    return std::uniform_int_distribution<uint64_t>(synced, st.size)(rng);
  });
}

// ---- CrashableBacking ------------------------------------------------------

Result<size_t> CrashableBacking::Read(int fd, uint64_t off, size_t len, void* buf) {
  return RealBacking()->Read(fd, off, len, buf);
}

Status CrashableBacking::Write(int fd, uint64_t off, size_t len, const void* buf) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  return RealBacking()->Write(fd, off, len, buf);
}

Status CrashableBacking::Sync(int fd) {
  PowerSwitch::Guard power(*power_);
  if (!power.on()) return PowerOff();
  return RealBacking()->Sync(fd);
}

Status CrashableBacking::Stat(int fd, struct stat* st) { return RealBacking()->Stat(fd, st); }

// ---- FaultMachine ----------------------------------------------------------

FaultMachine::FaultMachine()
    : fs(std::make_shared<FaultFs>(&power)),
      env(rocksdb::NewCompositeEnv(fs)),
      undo(std::make_shared<StoreUndo>()) {}

void FaultMachine::Hook(EngineConfig* config) {
  config->backing = &backing;
  config->open_meta = [this](const std::string& dir,
                             bool create) -> Result<std::unique_ptr<MetaStore>> {
    auto r = RocksMetaStore::Open(dir, create, env.get());
    if (!r.ok()) return r.status();
    return std::unique_ptr<MetaStore>(std::move(r.value()));
  };
  config->wrap_store = [this](std::unique_ptr<BlockStore> inner) -> std::unique_ptr<BlockStore> {
    auto f = std::make_unique<FaultStore>(std::move(inner), &power, undo);
    store = f.get();
    return f;
  };
}

}  // namespace cachefs
