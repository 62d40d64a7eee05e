// RocksMetaStore: the MetaStore on RocksDB, the one used by the daemon.
//
// One RocksDB database per cache directory, with the column families
// "default" (superblock, mount state, counters under fixed keys), "files",
// "paths", "blocks" and "dirty"; keys and values are those of
// meta/encoding.h (docs/format.md).
//
// Durability: the WAL is always on and written by every Commit (a write()
// into the kernel before Commit returns, so kill -9 loses nothing);
// Commit(sync=true) and SyncWal() fsync it. SyncWal() is a group commit: a
// caller whose commits are already covered by a sync that started after them
// waits for that sync instead of starting its own, so N concurrent fsyncs
// cost about two WAL syncs, not N.
//
// RocksDB's own LOCK file refuses a second open of the directory, from this
// process or another; that is reported as "cache DIR is in use by another
// process" (EBUSY).
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <rocksdb/db.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/thread_annotations.h"
#include "meta/meta_store.h"

namespace cachefs {

class RocksMetaStore final : public MetaStore {
 public:
  // See OpenRocksMetaStore() in meta/meta_store.h. `env` replaces RocksDB's
  // default Env (all of the database's file IO goes through it): tests
  // inject faults there (tests/cache/fault_layers.h). It must outlive the
  // store. Default: nullptr, rocksdb::Env::Default().
  static Result<std::unique_ptr<RocksMetaStore>> Open(const std::string& dir, bool create,
                                                      rocksdb::Env* env = nullptr);
  ~RocksMetaStore() override;
  RocksMetaStore(const RocksMetaStore&) = delete;
  RocksMetaStore& operator=(const RocksMetaStore&) = delete;

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
  Status SyncWal() override;

  // WAL syncs actually made by SyncWal() (not the calls that shared one).
  uint64_t wal_syncs() const { return wal_syncs_.load(std::memory_order_relaxed); }

 private:
  RocksMetaStore(std::string dir, rocksdb::DB* db, std::vector<rocksdb::ColumnFamilyHandle*> cfs);

  // Status of a RocksDB call as a cachefs Status with an errno-ish code.
  Status Convert(const rocksdb::Status& s) const;
  // Reads one key; nullopt when absent.
  Result<std::optional<std::string>> Get(rocksdb::ColumnFamilyHandle* cf,
                                         const rocksdb::Slice& key);
  // The highest 8-byte big-endian key of `cf`, 0 when empty.
  Result<uint64_t> MaxKey(rocksdb::ColumnFamilyHandle* cf);

  const std::string dir_;
  std::unique_ptr<rocksdb::DB> db_;
  // Every family the database has (ours and any unknown, newer ones); closed
  // before db_.
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  rocksdb::ColumnFamilyHandle* default_ = nullptr;
  rocksdb::ColumnFamilyHandle* files_ = nullptr;
  rocksdb::ColumnFamilyHandle* paths_ = nullptr;
  rocksdb::ColumnFamilyHandle* blocks_ = nullptr;
  rocksdb::ColumnFamilyHandle* dirty_ = nullptr;

  // Group commit. Every completed Commit bumps commits_; a sync covers every
  // commit counted before it started.
  std::atomic<uint64_t> commits_{0};
  std::atomic<uint64_t> wal_syncs_{0};
  std::mutex sync_mu_;
  std::condition_variable sync_cv_;
  bool sync_running_ GUARDED_BY(sync_mu_) = false;
  uint64_t synced_through_ GUARDED_BY(sync_mu_) = 0;  // commits_ value covered by a finished sync
};

}  // namespace cachefs
