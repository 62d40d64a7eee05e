// Fault layers for power-loss tests (contract 1c): a machine whose power can
// be cut while an engine runs on it, in one process.
//
// The engine runs over three layers that share one PowerSwitch:
//  - FaultStore, a BlockStore decorator that models the device's volatile
//    write cache: it remembers, per 4 KiB page of the store, what the page
//    held at the last completed Persist() before it was first written since
//    (the undo state, kept in a StoreUndo that outlives the store);
//  - FaultFs, a RocksDB FileSystem wrapper that tracks for every file RocksDB
//    writes its length and its synced length (only Sync and Fsync make data
//    durable; RangeSync, Flush and Close do not);
//  - CrashableBacking, the slow store (SOURCE), which is another machine:
//    its writes are not undone, they only stop when the power goes.
//
// A crash is simulated like this: PowerSwitch::Cut() waits for the IO in
// flight through the layers; from then on nothing reaches the disk: the
// store and SOURCE fail every write and sync (EIO), RocksDB's writes, syncs,
// renames and deletions seem to succeed and vanish (see fault_layers.cc for
// why not errors). The test then stops its threads and
// destroys the engine (its clean shutdown fails at its first write, so
// nothing of it reaches the files); finally StoreUndo::PowerLoss and
// FaultFs::PowerLoss change the files on disk into what a power loss at the
// moment of the cut may have left: unsynced store pages reverted (each
// independently: some writes reached the disk, some did not, some tore at
// page granularity), RocksDB files cut back to their synced length plus a
// part of the unsynced tail. The next engine opens the same files without
// faults and recovers. A kill -9 is the same without the PowerLoss step.
//
// Files RocksDB created and never synced are kept (cut like the others, so
// possibly empty), not removed: RocksDB syncs the directory after creating
// the files it depends on (WAL, MANIFEST, CURRENT), and an unsynced table
// file is never referenced. Deletions and renames are durable at once.
//
// Thread-safety: all methods may be called concurrently, except PowerLoss(),
// which requires the engine (and every user of the layers) to be gone.
#pragma once

#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>

#include "cache/backing.h"
#include "cache/block_store.h"
#include "cache/engine.h"
#include "common/status.h"

namespace cachefs {

// The power of the simulated machine. IO through the fault layers holds a
// Guard while it runs, so Cut() happens between two IOs, never inside one.
class PowerSwitch {
 public:
  // Shared hold of the switch for the duration of one IO; on() false once
  // the power is cut.
  class Guard {
   public:
    explicit Guard(PowerSwitch& p) : lock_(p.mu_), on_(!p.cut_) {}
    bool on() const { return on_; }

   private:
    std::shared_lock<std::shared_mutex> lock_;
    const bool on_;
  };
  // Waits for the IO in flight, then fails every later write and sync.
  void Cut() {
    std::unique_lock<std::shared_mutex> lock(mu_);
    cut_ = true;
  }
  bool cut() {
    std::shared_lock<std::shared_mutex> lock(mu_);
    return cut_;
  }

 private:
  std::shared_mutex mu_;
  bool cut_ = false;
};

// The unsynced pages of one store file: page number (byte offset / 4 KiB)
// -> contents at the last completed persist.
class StoreUndo {
 public:
  static constexpr uint32_t kPage = 4096;
  // Pages written since the last completed persist.
  size_t unsynced_pages();
  // Reverts, in the store file at `path`, the unsynced pages `revert`
  // picks (called once per page, in page order), and forgets them all.
  // REQUIRES: the store is closed.
  Status PowerLoss(const std::string& path, const std::function<bool(uint64_t page)>& revert);
  // Each page independently with probability `p`.
  Status PowerLoss(const std::string& path, std::mt19937_64& rng, double p);

 private:
  friend class FaultStore;
  std::mutex mu_;
  std::map<uint64_t, std::string> undo_;        // written since the persist in progress began
  std::map<uint64_t, std::string> persisting_;  // swapped out by a persist not yet complete
};

// A BlockStore over another that keeps the undo state of its writes in a
// StoreUndo (see above).
class FaultStore final : public BlockStore {
 public:
  FaultStore(std::unique_ptr<BlockStore> inner, PowerSwitch* power,
             std::shared_ptr<StoreUndo> undo);
  const char* kind() const override { return inner_->kind(); }
  // Run by Persist() after it began (writes from now on are not covered by
  // it) and before the device persist: lets a test write while a persist is
  // in progress. Runs outside every lock of this layer.
  void SetPersistHook(std::function<void()> hook);

 private:
  Status DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) override;
  Status DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) override;
  Status DoPersist() override;
  Status DoDiscard(uint64_t pos, uint64_t len) override;
  // Saves the pages of [pos, pos + len) not yet saved. REQUIRES undo_->mu_.
  Status SaveUndo(uint64_t pos, uint64_t len);

  const std::unique_ptr<BlockStore> inner_;
  PowerSwitch* const power_;
  const std::shared_ptr<StoreUndo> undo_;
  std::mutex hook_mu_;
  std::function<void()> hook_;  // guarded by hook_mu_
};

// A RocksDB FileSystem that tracks synced lengths (see above).
class FaultFs final : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultFs(PowerSwitch* power);
  const char* Name() const override { return "CachefsFaultFs"; }

  // What a file holds: its length, and how much of it is durable.
  struct FileState {
    uint64_t size = 0;
    uint64_t synced = 0;
  };
  // Cuts every file RocksDB wrote through this layer to the length `keep`
  // returns for it (from `synced` to `size`; clamped to that range).
  // REQUIRES: the database is closed.
  Status PowerLoss(const std::function<uint64_t(const std::string& name, const FileState&)>& keep);
  // Synced length plus a random part of the unsynced tail.
  Status PowerLoss(std::mt19937_64& rng);
  // Unsynced bytes in all files (for test assertions).
  uint64_t unsynced_bytes();

  // rocksdb::FileSystem
  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus NewRandomRWFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* r,
                                    rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus RenameFile(const std::string& from, const std::string& to,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus LinkFile(const std::string& from, const std::string& to,
                             const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override;
  rocksdb::IOStatus Truncate(const std::string& f, size_t size, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override;

 private:
  friend class FaultWritableFile;
  PowerSwitch* const power_;
  std::mutex mu_;
  std::map<std::string, FileState> files_;  // guarded by mu_
};

// The slow store over the real one: writes and syncs fail once the power is
// cut (the machine that makes them is dead); reads go on.
class CrashableBacking final : public Backing {
 public:
  explicit CrashableBacking(PowerSwitch* power) : power_(power) {}
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override;
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override;
  Status Sync(int fd) override;
  Status Stat(int fd, struct stat* st) override;

 private:
  PowerSwitch* const power_;
};

// One simulated machine: the switch, the RocksDB layer and its Env, and the
// store's undo state. Hand Hooks() to EngineConfig. Destroy it (or call
// PowerLoss on its parts) only after the engine that used it is gone.
struct FaultMachine {
  FaultMachine();
  // Sets config->open_meta, wrap_store and backing to go through this machine.
  void Hook(EngineConfig* config);

  PowerSwitch power;
  std::shared_ptr<FaultFs> fs;
  std::unique_ptr<rocksdb::Env> env;
  std::shared_ptr<StoreUndo> undo;
  CrashableBacking backing{&power};
  FaultStore* store = nullptr;  // the engine's store layer while it is open
};

}  // namespace cachefs
