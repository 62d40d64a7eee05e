// MemMetaStore: a MetaStore in memory, for tests of the layers above.
//
// Same semantics as the RocksDB store (atomic batches, key order in scans,
// the same batch validation) with nothing on disk: Commit's `sync` and
// SyncWal() have nothing to do. Scans work on a copy taken under the lock,
// so `fn` may call back into the store, as it may with RocksDB's snapshot
// iterators.
//
// Thread-safety: all methods may be called concurrently (one mutex).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

#include "common/thread_annotations.h"
#include "meta/meta_store.h"

namespace cachefs {

class MemMetaStore final : public MetaStore {
 public:
  MemMetaStore() = default;

  Result<std::optional<Superblock>> GetSuperblock() override;
  Result<std::optional<MountState>> GetMountState() override;
  Result<std::optional<PersistentCounters>> GetCounters() override;
  Result<std::optional<FileRecord>> GetFile(uint64_t file_id) override;
  Result<std::optional<uint64_t>> LookupPath(const std::string& path) override;
  Result<std::optional<BlockRecord>> GetBlock(uint64_t file_id, uint64_t index) override;
  Result<uint64_t> GetDurableEpoch() override;

  Status ScanFiles(const std::function<bool(const FileRecord&)>& fn) override;
  Status ScanPaths(const std::string& prefix,
                   const std::function<bool(const std::string&, uint64_t)>& fn) override;
  Status ScanBlocks(uint64_t file_id, const std::function<bool(const BlockRecord&)>& fn) override;
  Status ScanAllBlocks(const std::function<bool(const BlockRecord&)>& fn) override;
  Status ScanDirty(const std::function<bool(const DirtyRecord&)>& fn) override;
  Result<uint64_t> MaxFileId() override;
  Result<uint64_t> MaxDirtySeq() override;

  Status Commit(const MetaBatch& batch, bool sync) override;
  Status SyncWal() override { return Status::Ok(); }

 private:
  using BlockKey = std::pair<uint64_t, uint64_t>;  // file id, index: the RocksDB key order

  std::mutex mu_;
  std::optional<Superblock> superblock_ GUARDED_BY(mu_);
  std::optional<MountState> mount_state_ GUARDED_BY(mu_);
  std::optional<PersistentCounters> counters_ GUARDED_BY(mu_);
  std::map<uint64_t, FileRecord> files_ GUARDED_BY(mu_);
  std::map<std::string, uint64_t> paths_ GUARDED_BY(mu_);
  std::map<BlockKey, BlockRecord> blocks_ GUARDED_BY(mu_);
  std::map<uint64_t, DirtyRecord> dirty_ GUARDED_BY(mu_);
  uint64_t durable_epoch_ GUARDED_BY(mu_) = 0;
};

}  // namespace cachefs
