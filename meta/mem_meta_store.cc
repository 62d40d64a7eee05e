#include "meta/mem_meta_store.h"

#include <type_traits>
#include <variant>
#include <vector>

#include "meta/encoding.h"

namespace cachefs {

std::unique_ptr<MetaStore> NewMemMetaStore() { return std::make_unique<MemMetaStore>(); }

Result<std::optional<Superblock>> MemMetaStore::GetSuperblock() {
  std::lock_guard<std::mutex> lock(mu_);
  return superblock_;
}

Result<std::optional<MountState>> MemMetaStore::GetMountState() {
  std::lock_guard<std::mutex> lock(mu_);
  return mount_state_;
}

Result<std::optional<PersistentCounters>> MemMetaStore::GetCounters() {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

Result<std::optional<FileRecord>> MemMetaStore::GetFile(uint64_t file_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = files_.find(file_id);
  if (it == files_.end()) return std::optional<FileRecord>();
  return std::optional<FileRecord>(it->second);
}

Result<std::optional<uint64_t>> MemMetaStore::LookupPath(const std::string& path) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = paths_.find(path);
  if (it == paths_.end()) return std::optional<uint64_t>();
  return std::optional<uint64_t>(it->second);
}

Result<std::optional<BlockRecord>> MemMetaStore::GetBlock(uint64_t file_id, uint64_t index) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = blocks_.find({file_id, index});
  if (it == blocks_.end()) return std::optional<BlockRecord>();
  return std::optional<BlockRecord>(it->second);
}

Result<uint64_t> MemMetaStore::GetDurableEpoch() {
  std::lock_guard<std::mutex> lock(mu_);
  return durable_epoch_;
}

namespace {

// Calls `fn` on each element of a snapshot until it returns false.
template <typename T, typename Fn>
Status Visit(const std::vector<T>& snapshot, const Fn& fn) {
  for (const T& rec : snapshot) {
    if (!fn(rec)) break;
  }
  return Status::Ok();
}

}  // namespace

Status MemMetaStore::ScanFiles(const std::function<bool(const FileRecord&)>& fn) {
  std::vector<FileRecord> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot.reserve(files_.size());
    for (const auto& [id, f] : files_) snapshot.push_back(f);
  }
  return Visit(snapshot, fn);
}

Status MemMetaStore::ScanPaths(const std::string& prefix,
                               const std::function<bool(const std::string&, uint64_t)>& fn) {
  std::vector<std::pair<std::string, uint64_t>> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = paths_.lower_bound(prefix);
         it != paths_.end() && std::string_view(it->first).starts_with(prefix); ++it) {
      snapshot.emplace_back(*it);
    }
  }
  for (const auto& [path, id] : snapshot) {
    if (!fn(path, id)) break;
  }
  return Status::Ok();
}

Status MemMetaStore::ScanBlocks(uint64_t file_id,
                                const std::function<bool(const BlockRecord&)>& fn) {
  std::vector<BlockRecord> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = blocks_.lower_bound({file_id, 0});
         it != blocks_.end() && it->first.first == file_id; ++it) {
      snapshot.push_back(it->second);
    }
  }
  return Visit(snapshot, fn);
}

Status MemMetaStore::ScanAllBlocks(const std::function<bool(const BlockRecord&)>& fn) {
  std::vector<BlockRecord> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot.reserve(blocks_.size());
    for (const auto& [key, b] : blocks_) snapshot.push_back(b);
  }
  return Visit(snapshot, fn);
}

Status MemMetaStore::ScanDirty(const std::function<bool(const DirtyRecord&)>& fn) {
  std::vector<DirtyRecord> snapshot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    snapshot.reserve(dirty_.size());
    for (const auto& [seq, d] : dirty_) snapshot.push_back(d);
  }
  return Visit(snapshot, fn);
}

Result<uint64_t> MemMetaStore::MaxFileId() {
  std::lock_guard<std::mutex> lock(mu_);
  return files_.empty() ? uint64_t{0} : files_.rbegin()->first;
}

Result<uint64_t> MemMetaStore::MaxDirtySeq() {
  std::lock_guard<std::mutex> lock(mu_);
  return dirty_.empty() ? uint64_t{0} : dirty_.rbegin()->first;
}

Status MemMetaStore::Commit(const MetaBatch& batch, bool /*sync*/) {
  // Validation first, so that a refused batch changes nothing.
  Status valid = ValidateBatch(batch);
  if (!valid.ok()) return valid;
  std::lock_guard<std::mutex> lock(mu_);
  for (const MetaBatch::Op& op : batch.ops()) {
    std::visit(
        [&](const auto& o) {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, MetaBatch::PutSuperblock>) {
            superblock_ = o.sb;
          } else if constexpr (std::is_same_v<T, MetaBatch::PutMountState>) {
            mount_state_ = o.state;
          } else if constexpr (std::is_same_v<T, MetaBatch::PutCounters>) {
            counters_ = o.counters;
          } else if constexpr (std::is_same_v<T, MetaBatch::PutFile>) {
            files_[o.file.file_id] = o.file;
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteFile>) {
            files_.erase(o.file_id);
          } else if constexpr (std::is_same_v<T, MetaBatch::PutPath>) {
            paths_[o.path] = o.file_id;
          } else if constexpr (std::is_same_v<T, MetaBatch::DeletePath>) {
            paths_.erase(o.path);
          } else if constexpr (std::is_same_v<T, MetaBatch::PutBlock>) {
            blocks_[{o.block.file_id, o.block.index}] = o.block;
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteBlock>) {
            blocks_.erase({o.file_id, o.index});
          } else if constexpr (std::is_same_v<T, MetaBatch::PutDirty>) {
            dirty_[o.dirty.seq] = o.dirty;
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteDirty>) {
            dirty_.erase(o.seq);
          } else {
            static_assert(std::is_same_v<T, MetaBatch::PutDurableEpoch>);
            durable_epoch_ = o.epoch;
          }
        },
        op);
  }
  return Status::Ok();
}

}  // namespace cachefs
