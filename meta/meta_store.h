// MetaStore: the cache's metadata (superblock, files, paths, block map,
// dirty index, counters) with atomic, ordered batches.
//
// Durability (contracts 1 and 2): Commit() writes the batch's log record to
// the kernel before it returns, so a committed batch survives kill -9 of the
// daemon; with sync=true (or after SyncWal()) it also survives power loss.
// A batch is all or nothing, after a crash too.
//
// Thread-safety: all methods may be called concurrently. Reads see every
// batch committed before they started.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "common/status.h"
#include "meta/records.h"

namespace cachefs {

// A list of changes applied atomically by MetaStore::Commit, in order.
class MetaBatch {
 public:
  struct PutSuperblock {
    Superblock sb;
  };
  struct PutMountState {
    MountState state;
  };
  struct PutCounters {
    PersistentCounters counters;
  };
  struct PutFile {
    FileRecord file;
  };
  struct DeleteFile {
    uint64_t file_id;
  };  // its blocks are not touched
  struct PutPath {
    std::string path;
    uint64_t file_id;
  };
  struct DeletePath {
    std::string path;
  };
  struct PutBlock {
    BlockRecord block;
  };
  struct DeleteBlock {
    uint64_t file_id;
    uint64_t index;
  };
  struct PutDirty {
    DirtyRecord dirty;
  };
  struct DeleteDirty {
    uint64_t seq;
  };
  // The persist epoch up to which block data is durable (recovery checks
  // only blocks written in later epochs).
  struct PutDurableEpoch {
    uint64_t epoch;
  };
  using Op =
      std::variant<PutSuperblock, PutMountState, PutCounters, PutFile, DeleteFile, PutPath,
                   DeletePath, PutBlock, DeleteBlock, PutDirty, DeleteDirty, PutDurableEpoch>;

  void Put(Superblock sb) { ops_.emplace_back(PutSuperblock{std::move(sb)}); }
  void Put(MountState s) { ops_.emplace_back(PutMountState{std::move(s)}); }
  void Put(PersistentCounters c) { ops_.emplace_back(PutCounters{c}); }
  void Put(FileRecord f) { ops_.emplace_back(PutFile{std::move(f)}); }
  void RemoveFile(uint64_t file_id) { ops_.emplace_back(DeleteFile{file_id}); }
  void Put(std::string path, uint64_t file_id) {
    ops_.emplace_back(PutPath{std::move(path), file_id});
  }
  void RemovePath(std::string path) { ops_.emplace_back(DeletePath{std::move(path)}); }
  void Put(BlockRecord b) { ops_.emplace_back(PutBlock{std::move(b)}); }
  void RemoveBlock(uint64_t file_id, uint64_t index) {
    ops_.emplace_back(DeleteBlock{file_id, index});
  }
  void Put(DirtyRecord d) { ops_.emplace_back(PutDirty{d}); }
  void RemoveDirty(uint64_t seq) { ops_.emplace_back(DeleteDirty{seq}); }
  void PutDurable(uint64_t epoch) { ops_.emplace_back(PutDurableEpoch{epoch}); }

  const std::vector<Op>& ops() const { return ops_; }
  bool empty() const { return ops_.empty(); }
  void Clear() { ops_.clear(); }

 private:
  std::vector<Op> ops_;
};

class MetaStore {
 public:
  virtual ~MetaStore() = default;

  // Absent (nullopt) in a new, empty store.
  virtual Result<std::optional<Superblock>> GetSuperblock() = 0;
  virtual Result<std::optional<MountState>> GetMountState() = 0;
  virtual Result<std::optional<PersistentCounters>> GetCounters() = 0;
  virtual Result<std::optional<FileRecord>> GetFile(uint64_t file_id) = 0;
  virtual Result<std::optional<uint64_t>> LookupPath(const std::string& path) = 0;
  virtual Result<std::optional<BlockRecord>> GetBlock(uint64_t file_id, uint64_t index) = 0;
  // The last PutDurable value; 0 when none was ever written.
  virtual Result<uint64_t> GetDurableEpoch() = 0;

  // Scans call `fn` in key order until it returns false.
  // Files by id; paths that start with `prefix` ("" for all) in byte order;
  // blocks of one file by index (or of every file, by file then index, with
  // ScanAllBlocks); dirty entries by seq, oldest first.
  virtual Status ScanFiles(const std::function<bool(const FileRecord&)>& fn) = 0;
  virtual Status ScanPaths(const std::string& prefix,
                           const std::function<bool(const std::string&, uint64_t)>& fn) = 0;
  virtual Status ScanBlocks(uint64_t file_id,
                            const std::function<bool(const BlockRecord&)>& fn) = 0;
  virtual Status ScanAllBlocks(const std::function<bool(const BlockRecord&)>& fn) = 0;
  virtual Status ScanDirty(const std::function<bool(const DirtyRecord&)>& fn) = 0;
  // The highest file id and dirty seq in use (0 when none), for allocating new ones.
  virtual Result<uint64_t> MaxFileId() = 0;
  virtual Result<uint64_t> MaxDirtySeq() = 0;

  // Applies `batch` atomically (see the durability note above).
  virtual Status Commit(const MetaBatch& batch, bool sync) = 0;
  // Makes every batch committed so far survive power loss (group commit:
  // concurrent callers may share one sync).
  virtual Status SyncWal() = 0;
};

// The RocksDB store in directory `dir` (created with `create`). Fails when
// the directory holds no store and !create, or when another process has it open.
Result<std::unique_ptr<MetaStore>> OpenRocksMetaStore(const std::string& dir, bool create);

// An in-memory store for tests: same semantics, nothing on disk.
std::unique_ptr<MetaStore> NewMemMetaStore();

}  // namespace cachefs
