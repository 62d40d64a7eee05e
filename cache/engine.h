// Engine: the block cache between the FUSE layer and SOURCE.
//
// Files are split into blocks of the cache's block_size; a cached block lives
// in one slot of the BlockStore, and the MetaStore records which block is in
// which slot, which 4 KiB sub-blocks of it hold data, and their CRCs. The
// engine keeps an in-memory index of the map (BlockIndex) and the eviction
// state (Policy), both rebuilt from the metadata at open, so a cache is warm
// again after an unmount, a crash or a remount of the slow store.
//
// Reads (contract 6): a hit is read into memory and every sub-block checked
// against its CRC (verify=on) before it is served; a mismatch drops the block
// and refetches it. A miss reads only the sub-blocks the request asked for
// (a run of consecutive missing blocks in one read of SOURCE), once:
// concurrent readers of one block wait for that one fetch and are served
// from its buffer. Sub-blocks fetched later fill the same slot (only sub-blocks
// not yet valid are written, so no valid data is overwritten in place). Data
// is written to the store before the record that points at it is committed.
// On a sequential stream, the following `readahead` bytes of whole blocks are
// fetched by background threads; a reader that reaches them waits for the
// fetch in flight instead of fetching again. A block read ahead that the
// cache does not take (the policy does not admit it, or its stream bypasses
// the cache) is kept in memory (`kept_`, bounded) until its reader takes it,
// so every block is read from SOURCE, and offered to the policy, once.
//
// Writes (mode, in the superblock): writethrough puts what the FUSE layer
// wrote to SOURCE into the cache as clean data; writeback keeps it in the
// cache as dirty data, written back by the writer thread; writearound drops
// the touched blocks (cache/engine_write.cc has the details). With an image
// SOURCE the writer writes back in fsync epochs (only the state as of the
// last fsync), and mode=cow keeps writes in the cache until CommitLayer or
// DiscardLayer (cache/engine_image.cc).
//
// Allocation (cache/segments.h, cache/engine_gc.cc): written blocks take
// their new slots from an append cursor over the store's segments, so
// random writes become sequential store writes; fetched blocks take any
// free slot; a collector thread makes wholly free segments for the cursor.
// A writeback write that finds the cache full of dirty data goes through to
// SOURCE instead of failing (WriteBlockThrough).
//
// Power loss (contract 1c): block records carry the persist epoch of their
// data and earlier versions; recovery rolls a block whose data did not
// survive back to the newest version that did (docs/format.md, "Rollback").
//
// Coherence (contract 5): a file is matched by its path relative to SOURCE,
// its inode number and its fingerprint (size, mtime, ctime). When SOURCE shows
// another fingerprint than the one recorded (at open, or at getattr), the
// file's cached blocks are dropped.
//
// Pinned files (FileRecord::kPinned, cachefsctl pin) keep their blocks: a
// slot of a pinned file is never tracked by the policy, so never a victim
// (cache/engine_warm.cc has warm, evict, pinning and conflict resolution).
//
// Statistics (stats()): counters are relaxed atomics bumped where they
// happen; request times go to lock-free histograms (common/histogram.h). The
// counters that mean something across mounts (PersistentCounters) are loaded
// at open and saved with every persist, so they add up over mounts and a
// crash loses only what was counted since the last persist.
//
// Thread-safety: all public methods may be called concurrently. One mutex
// guards the index, the policy and the segment table (free slots); IO to
// SOURCE, the store and the metadata happens outside it. A block's record is changed only by the
// one fetch that leads it (`fetches_`) or removed by a drop, so record updates
// need no lock of their own.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache/backing.h"
#include "cache/block_index.h"
#include "cache/block_store.h"
#include "cache/cache_dir.h"
#include "cache/options.h"
#include "cache/policy.h"
#include "cache/segments.h"
#include "cache/timeout_backing.h"
#include "common/histogram.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "meta/meta_store.h"

namespace cachefs {

class TimeoutBacking;

struct EngineConfig {
  CacheOptions options;
  std::string source;  // canonical SOURCE path
  bool source_is_file = false;
  // Throw away whatever cache DIR holds and format it anew.
  bool reformat = false;
  // The slow store; RealBacking() unless a test injects another.
  Backing* backing = nullptr;
  // Test seams (tests/cache/fault_layers.h, hook_meta.h), unset in the
  // daemon: opens the metadata store instead of OpenRocksMetaStore(dir,
  // create); wraps the metadata store as the engine sees it (above its
  // record cache: the wrapper sees every call); wraps the block store once
  // it is open.
  std::function<Result<std::unique_ptr<MetaStore>>(const std::string& dir, bool create)> open_meta;
  std::function<std::unique_ptr<MetaStore>(std::unique_ptr<MetaStore>)> wrap_meta;
  std::function<std::unique_ptr<BlockStore>(std::unique_ptr<BlockStore>)> wrap_store;

  // Reads of SOURCE done at most at once on the threads of readers that can
  // answer late (Read's `reply_eio`), without a hand-off to a worker: as
  // many reader threads stay stuck while SOURCE hangs.
  static constexpr unsigned kMaxDirectSourceReads = 4;

  // Defaults of options fixed at format (ARCHITECTURE.md option table).
  static constexpr uint64_t kDefaultBlockSize = 64 * 1024;
  static constexpr double kDefaultCachePercent = 10;
  // readahead= when unset (docs/benchmarks.md: the cold sequential sweep).
  static constexpr uint64_t kDefaultReadahead = 1u << 20;
  // writeback_threads= when unset (docs/benchmarks.md: the drain benchmark).
  static constexpr unsigned kDefaultWritebackThreads = 4;
};

// Counters of one mount (cachefsctl stats shows them; docs/control.md has
// their exact meaning). Counters count since this mount; `totals` adds up
// the persistent ones over every mount of the cache.
struct EngineStats {
  uint64_t read_hits = 0;         // blocks served from the cache (or a fetch already done)
  uint64_t read_misses = 0;       // blocks fetched from SOURCE
  uint64_t fetch_waits = 0;       // readers that waited for another's fetch
  uint64_t readahead_blocks = 0;  // blocks fetched ahead of a sequential reader
  // Of them, not cached (not admitted, or a bypassed stream): let go before
  // a reader took them, and kept in memory for their reader now.
  uint64_t readahead_dropped = 0;
  uint64_t readahead_kept = 0;
  uint64_t bytes_from_cache = 0;
  uint64_t bytes_from_source = 0;
  uint64_t crc_errors = 0;
  uint64_t evictions = 0;
  uint64_t invalidations = 0;  // files whose blocks were dropped for a new fingerprint
  uint64_t write_hits = 0;     // block writes into the cache that found the block cached
  uint64_t write_misses = 0;   // block writes into the cache of a block not cached (dm-cache)
  uint64_t promotions = 0;     // blocks placed in the cache by a read fetch (miss or readahead)
  uint64_t blocks_dirty = 0;
  uint64_t dirty_bytes = 0;          // dirty sub-blocks x 4 KiB
  uint64_t writeback_queue = 0;      // dirty blocks waiting for the writer (not in conflict)
  uint64_t writeback_in_flight = 0;  // dirty blocks the writer is writing back now
  uint64_t bytes_written_back = 0;
  uint64_t writeback_errors = 0;    // failed attempts (retried)
  uint64_t writeback_retries = 0;   // attempts on a file whose last attempt failed
  uint64_t writeback_writes = 0;    // writes to SOURCE by the writeback (after coalescing)
  uint64_t writeback_timeouts = 0;  // writes and syncs of SOURCE that timed out
  uint64_t writeback_failing = 0;   // files whose writeback fails now (backing off)
  uint64_t conflicts = 0;           // files changed outside while dirty
  uint64_t persists = 0;            // store persists + WAL syncs (fsync group commit)
  uint64_t not_admitted = 0;        // read misses served uncached by the policy's choice
  uint64_t bypassed = 0;  // blocks of long sequential streams or big files served uncached
  uint64_t warmed = 0;    // blocks fetched into the cache by Warm (cachefsctl warm)
  // Block writes of mode=writeback that found no slot (the cache full of
  // dirty, pinned or busy blocks) and went to SOURCE directly instead.
  uint64_t write_through_fallbacks = 0;
  // Log-structured allocation (cache/segments.h): times the append cursor
  // wrapped around the store, segments the garbage collector emptied, and
  // the blocks it moved (dirty or pinned) or dropped (clean) doing so.
  uint64_t log_wraps = 0;
  uint64_t segments_cleaned = 0;
  uint64_t gc_moved_blocks = 0;
  uint64_t gc_dropped_blocks = 0;
  uint64_t segments = 0;        // segments of the store
  uint64_t segments_empty = 0;  // wholly free segments ahead of the cursor
  uint64_t blocks_pinned = 0;   // cached blocks of pinned files (never evicted)
  uint64_t blocks_cached = 0;
  uint64_t slots = 0;
  uint64_t cache_used = 0;  // bytes: blocks_cached x block_size (the store's slots in use)
  uint64_t cache_size = 0;  // bytes: slots x block_size
  uint32_t block_size = 0;
  size_t index_memory = 0;  // bytes of RAM for the index and the policy
  // Time of one request into the engine, since mount: a Read served wholly
  // from the cache, a Read that needed SOURCE (or waited for a fetch), a
  // Write (writeback) or a write through (BeforeWriteThrough to the end of
  // WriteThrough, SOURCE's write included).
  LatencySummary read_hit_latency;
  LatencySummary read_miss_latency;
  LatencySummary write_latency;
  // read/write hits and misses and bytes over every mount of the cache:
  // earlier mounts' (saved at each persist and at clean shutdown) + this one's.
  PersistentCounters totals;
};

// What recovery at open found (contract 1c): block records whose data was
// written after the last completed persist (or whose slot another record
// claimed) and so was checked against the store, those rolled back to an
// earlier version, and dirty blocks none of whose versions survived (data
// lost: their records are removed).
struct RecoveryReport {
  uint64_t checked = 0;
  uint64_t rolled_back = 0;
  uint64_t lost = 0;
};

// The cache state of one source file while the FUSE layer knows it. Shared by
// every handle and name (hard link) of the file.
// How SOURCE's attributes `st` look to the cache (contract 4).
Fingerprint FingerprintOf(const struct stat& st);

class CachedFile : public std::enable_shared_from_this<CachedFile> {
 public:
  uint64_t file_id() const { return file_id_; }

  // The kernel's pages of the file across opens (contract 5, close-to-open;
  // docs/cache-engine.md, "The kernel's pages"). An open may let the kernel
  // keep them (keep_cache) only when nothing changed the file's data since
  // the previous open other than writes through the kernel itself, and that
  // open is known to have dropped what it had to: the pages version
  // (epoch_, bumped before every change and drop, plus drops_, bumped once a
  // drop of cached blocks is done, so a read that found a block before the
  // drop took it is caught too) did not move; no read reply read before a
  // move was delivered after it (ReadReplied); and every open that was told
  // to drop has shown it finished its open (OpenSettled: the kernel drops
  // the pages in the opener's context after the reply, so a concurrent open
  // could still find them). The first open of a bound file says no. Call
  // after Revalidate, once per open; each `false` must be answered by one
  // OpenSettled once a request on that open's handle arrives (or when it is
  // released or its open was interrupted).
  bool KeepPagesAtOpen() {
    // Counted before the version is recorded: an open that finds the version
    // this one records also finds it counted (found by review: counted
    // after, two opens at once could have the second keep the pages).
    unsettled_opens_++;
    const uint64_t now = PagesVersion();
    const bool same = pages_version_.exchange(now) == now;
    if (same && unsettled_opens_.load() == 1) {
      unsettled_opens_--;
      return true;
    }
    return false;
  }
  // `used`: a request on the handle showed its open finished. A handle that
  // goes without one (its open reply failed, or the kernel released it at
  // once) may not have dropped anything: the version is forgotten.
  void OpenSettled(bool used) {
    if (!used) pages_version_.store(kNoPagesVersion);
    unsettled_opens_--;
  }
  // The pages version before a read; ReadReplied(that) once its reply
  // reached the kernel (its pages hold the data then).
  uint64_t PagesVersion() const { return epoch_.load() + drops_.load(); }
  void ReadReplied(uint64_t version_before) {
    if (PagesVersion() != version_before) pages_version_.store(kNoPagesVersion);
  }

 private:
  friend class Engine;
  explicit CachedFile(uint64_t id) : file_id_(id) {}
  const uint64_t file_id_;
  // Set when the file lost its last name or another file took its name: it
  // is then read straight from SOURCE, uncached. Only by Detach.
  std::atomic<bool> detached_{false};
  std::mutex mu_;
  Fingerprint fingerprint_;    // guarded by mu_: SOURCE as last seen or changed by us
  uint64_t source_ino_ = 0;    // guarded by mu_
  bool record_stale_ = false;  // guarded by mu_: fingerprint not yet in the metadata
  // Bumped by every change that makes in-flight fetches of this file stale,
  // always under the engine's files_mu_ (Install checks it, commits and
  // undoes under that lock in one section).
  std::atomic<uint64_t> epoch_{0};
  // Drops of the file's cached blocks done (DropBlocksInto, under
  // files_mu_); with epoch_, the pages version.
  std::atomic<uint64_t> drops_{0};
  // The pages version at the last open (KeepPagesAtOpen), or kNoPagesVersion.
  static constexpr uint64_t kNoPagesVersion = ~uint64_t{0};
  std::atomic<uint64_t> pages_version_{kNoPagesVersion};
  // Opens told to drop the kernel's pages not yet known to have done it.
  std::atomic<int> unsettled_opens_{0};
  // Sequential stream detection for readahead, guarded by mu_: where the
  // last read ended, how many bytes in a row were read sequentially, and the
  // block up to which (exclusive) readahead was queued.
  uint64_t next_offset_ = 0;
  uint64_t sequential_bytes_ = 0;
  uint64_t ahead_until_ = 0;
  // next_offset_, for readahead threads, which skip the blocks the reader
  // has reached already: it fetches those itself.
  std::atomic<uint64_t> stream_end_{0};
  bool advised_ = false;  // POSIX_FADV_SEQUENTIAL given to SOURCE
  bool bypass_ = false;   // the current stream bypasses the cache
  // Writeback mode, guarded by mu_: the file as the mount shows it while
  // some of it is not yet written back (overlay_), and whether the writer is
  // changing SOURCE right now (its own change, not an outside one).
  bool overlay_ = false;
  uint64_t size_ = 0;
  int64_t mtime_ns_ = 0;
  bool writing_back_ = false;
  bool conflict_ = false;
  int writes_ = 0;              // Write() calls in progress (the overlay stays while any is)
  bool source_change_ = false;  // an Engine::SourceChange is held
  std::condition_variable cv_;  // with mu_: writes_ and source_change_ changed
  // FileRecord::kPinned: read misses are cached regardless of admission and
  // of sequential bypass. A copy of the engine's pinned set for the read
  // path, which takes no engine lock to decide on bypass.
  std::atomic<bool> pinned_{false};
};

class Engine {
 public:
  // Opens (or formats) the cache directory, checks that it belongs to SOURCE
  // and agrees with the options fixed at format, opens the store and rebuilds
  // the index from the metadata. Fails with a one-line Status (a cache made
  // for another SOURCE, block size or store; a cache in use by another mount;
  // a missing store file; a full device).
  static Result<std::unique_ptr<Engine>> Open(const EngineConfig& config);
  // Clean shutdown: persists the store and the metadata and records a clean unmount.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  const Superblock& superblock() const { return sb_; }
  const std::string& cache_dir() const { return dir_; }
  uint32_t block_size() const { return sb_.block_size; }

  // Binds the source file at `path` (relative to SOURCE; "" for an image
  // SOURCE), whose current attributes are `st`, to its cache state, making a
  // record for a new file. Blocks cached under another fingerprint or inode
  // are dropped.
  Result<std::shared_ptr<CachedFile>> OpenFile(const std::string& path, const struct stat& st);
  // Compares SOURCE's attributes `st` with the file's fingerprint and drops the
  // cached blocks if they differ. Returns whether they differed.
  Result<bool> Revalidate(CachedFile& file, const struct stat& st) LOCKS_EXCLUDED(files_mu_);
  // Writes the file's fingerprint to the metadata if it changed (last close),
  // and lets go of the blocks read ahead and kept for it (a handle's close).
  Status CloseFile(CachedFile& file);

  // Reads up to `len` bytes at `off` of `file` (SOURCE descriptor `fd`),
  // from the cache where it can; short only at end of file. Readahead
  // started by this read holds `fd` until it is done. Timed as a hit when
  // all of it came from the cache, else as a miss (EngineStats).
  //
  // `reply_eio`, for a caller that can answer its request from another
  // thread (the FUSE layer): SOURCE is then read on the caller's own thread,
  // without a hand-off to a worker (TimeoutBacking::ReadDirect). If such a
  // read is still running after source_timeout, the fetches waiting on it
  // fail with EIO and `reply_eio` runs, on another thread, while the caller
  // is still blocked; Read then fails too once SOURCE answers, and the
  // caller must not answer again.
  Result<size_t> Read(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len, char* buf,
                      const std::function<void()>& reply_eio = nullptr);
  // After SOURCE was changed through the mount in [off, off+len) (a write,
  // fallocate, copy_file_range) or cut at `st.st_size` (truncate): drops the
  // cached blocks touched and adopts `st` as the fingerprint.
  Status AfterWrite(CachedFile& file, uint64_t off, uint64_t len, const struct stat& st);
  Status AfterTruncate(CachedFile& file, const struct stat& st);

  // cachefs itself changed SOURCE's attributes (chmod, chown, utimens, link):
  // if the file still looked like `before`, `after` becomes its fingerprint
  // and the cache stays; otherwise it changed outside too and is dropped.
  Status Adopt(CachedFile& file, const struct stat& before, const struct stat& after);

  // Namespace changes made through the mount, so paths stay current (contract 4).
  // `is_dir` renames every path below `from` too; for a file, `before` and
  // `after` are its attributes around the rename (which changes its ctime).
  Status Rename(const std::string& from, const std::string& to, bool is_dir,
                const struct stat& before, const struct stat& after);
  // RENAME_EXCHANGE of `a` and `b` (each a file or a directory, with every
  // path below it): the cache swaps their names and keeps everything,
  // dirty data too. `a_before`/`b_before` are the attributes of what was at
  // `a`/`b` before, `a_after`/`b_after` of the same objects after (the
  // exchange changes a file's ctime: adopted as our own change).
  Status Exchange(const std::string& a, const std::string& b, bool a_is_dir, bool b_is_dir,
                  const struct stat& a_before, const struct stat& b_before,
                  const struct stat& a_after, const struct stat& b_after);
  // A name was removed; `last_link` when the file has no name left. A file
  // that keeps other names adopts `after` as its fingerprint if it looked
  // like `before` (the unlink changed its ctime), and its record names
  // one of them if it named `path`.
  Status Unlink(const std::string& path, bool last_link, const struct stat* before = nullptr,
                const struct stat* after = nullptr);
  // A new name for a file: its record names the newest one (`ln a b; rm a`,
  // a maildir delivery, then needs no search for a name left).
  Status Link(const std::string& existing, const std::string& new_path);
  // Whether the cache has a record of the file at `path`.
  bool Knows(const std::string& path);

  // Persists the store, then syncs the metadata (contract 2 order). Group
  // commit: concurrent callers share one persist.
  Status Persist();

  // --- write caching (mode=writeback) ---
  // The cache's mode now (the superblock's `mode` is the one at open).
  CacheMode mode() const { return mode_.load(std::memory_order_acquire); }
  // Switches the cache's mode and records it, while mounted too (cachefsctl
  // mode). Leaving writeback first writes back everything dirty while writes
  // go on, then holds new writes off (WriteGuard) for the rest, and fails,
  // keeping the mode, if something stays dirty (an error, a conflict).
  // mode=cow needs an image SOURCE (EINVAL otherwise); leaving cow needs an
  // empty layer (EBUSY otherwise: CommitLayer or DiscardLayer first).
  Status SetMode(CacheMode mode);
  // Held by the FUSE layer around one operation that changes file data
  // (write, truncate, fallocate, copy_file_range): its choice of path by
  // mode() stays right until it is done, because a mode switch waits for
  // every guard to go and holds new ones off meanwhile.
  class WriteGuard {
   public:
    explicit WriteGuard(Engine* engine);  // nullptr: guards nothing
    ~WriteGuard();
    WriteGuard(const WriteGuard&) = delete;
    WriteGuard& operator=(const WriteGuard&) = delete;
    CacheMode mode() const { return mode_; }

   private:
    Engine* const engine_;
    CacheMode mode_ = CacheMode::kWritearound;
  };
  // Writes `len` bytes at `off` into the cache as dirty data, to be written
  // back later. Survives kill -9 once it returns; `sync` (O_SYNC/O_DSYNC)
  // also persists before returning. Fails without a change (EIO, ENOSPC).
  // `fd` is read (the rest of a partly written sub-block); a file that lost
  // its name meanwhile is written straight to SOURCE's file through
  // `write_fd` (-1: `fd`; a write-only handle's own descriptor, where `fd`
  // is its readable twin).
  Status Write(CachedFile& file, const SourceFdRef& fd, uint64_t off, const char* data, size_t len,
               bool sync, int write_fd = -1);
  // mode=writethrough, before the FUSE layer writes [off, off + len) to
  // SOURCE: the cached copies of those sub-blocks stop being valid (in the
  // metadata), so a crash between the SOURCE write and WriteThrough cannot
  // leave the cache serving the old bytes. Starts the write's timing
  // (write_latency) on this thread; the WriteThrough that follows ends it.
  Status BeforeWriteThrough(CachedFile& file, uint64_t off, size_t len);
  // mode=writethrough: `len` bytes at `off` were written to SOURCE (which
  // now looks like `st`); the cache takes them too, clean. A block that
  // cannot be updated is dropped.
  Status WriteThrough(CachedFile& file, const SourceFdRef& fd, uint64_t off, const char* data,
                      size_t len, const struct stat& st);
  // Held by the FUSE layer around an operation that changes SOURCE's copy
  // of a file itself (truncate, fallocate, copy_file_range into it, open
  // with O_TRUNC) from its write-back-first to its After*() call: cached
  // writes to the file wait meanwhile, so no dirty data appears between the
  // write-back and the change, which a kill -9 in that window would
  // otherwise leave beside a SOURCE that no longer matches the record (a
  // false conflict at the next mount). Null `file`: guards nothing.
  class SourceChange {
   public:
    explicit SourceChange(const std::shared_ptr<CachedFile>& file);
    ~SourceChange();
    SourceChange(const SourceChange&) = delete;
    SourceChange& operator=(const SourceChange&) = delete;

   private:
    const std::shared_ptr<CachedFile> file_;
  };
  // fsync/fdatasync of a file: its acknowledged writes survive power loss.
  Status Sync(CachedFile& file);
  // Shows the file as the mount sees it: size and mtime of data not yet
  // written back replace SOURCE's in `st`.
  void Overlay(CachedFile& file, struct stat* st);
  // The same for a file the FUSE layer has not bound yet (after a remount,
  // before its first open), by its path relative to SOURCE; cheap when
  // nothing is dirty.
  void OverlayPath(const std::string& path, struct stat* st);
  // True while some data is not yet written back.
  bool HasAnyDirty();
  // Writes the file's dirty data back to SOURCE now and syncs it there
  // (before an operation that must see the data on SOURCE: truncate,
  // fallocate, copy_file_range, SEEK_DATA, rename over another file).
  Status FlushFile(CachedFile& file);
  // The same for the file at `path` (relative to SOURCE), if it has dirty
  // data; with `only_if_open`, only while the FUSE layer has it open (an
  // unlinked file's data must stay readable through its handles).
  Status FlushPath(const std::string& path, bool only_if_open);
  // The file at `path` (relative to SOURCE) while the FUSE layer has it
  // open, else null: for a SourceChange around an unlink of the path.
  std::shared_ptr<CachedFile> LivePath(const std::string& path);
  // Writes back everything dirty at the time of the call; returns when it is
  // on SOURCE, or the first error that stops it (a conflict is skipped and
  // reported, not an error).
  Status Flush();
  // Wakes the writer now; returns the dirty index's newest entry (0: none),
  // the mark for FlushProgress.
  uint64_t StartFlush();
  // Dirty blocks from before `mark` still to be written back, and how many
  // of them belong to files in conflict (never written back by themselves).
  struct FlushLeft {
    uint64_t blocks = 0;
    uint64_t conflicted = 0;
  };
  FlushLeft FlushProgress(uint64_t mark);
  // After the unmount (flush_timeout, cmd/cachefs.cc): writes back what is
  // dirty and not in conflict, retrying errors as the writer does, until it
  // is all on SOURCE, `timeout_s` seconds have passed or `stop` (polled
  // every 50 ms) says so; then stops the writer (StopWriteback). While it
  // runs, the cache lock says "flushing", so a new mount of the cache may
  // ask this daemon to stop (CacheDirLock::Acquire). Call once, with nothing
  // else using the engine; only the destructor may follow.
  struct DrainReport {
    bool complete = false;     // nothing but conflicts left dirty
    bool stopped = false;      // `stop` ended it
    uint64_t blocks_left = 0;  // dirty blocks left (conflicts included)
    uint64_t dirty_bytes_left = 0;
    uint64_t bytes_written_back = 0;  // by the drain
  };
  DrainReport DrainForExit(double timeout_s, const std::function<bool()>& stop);
  // Stops the writeback workers: a batch in progress ends after the block it
  // is copying, and the blocks written so far are synced and marked clean.
  // The destructor calls it; afterwards nothing is written back in the
  // background (writes of SOURCE that still hang are abandoned).
  void StopWriteback();
  // Returns once every block fetched so far is installed in the cache (reads
  // reply before their blocks are written to the store).
  void WaitForInstalls();

  EngineStats stats() const;
  RecoveryReport recovery() const { return recovery_; }

  // --- runtime control (cachefsctl; cache/engine_control.cc) ---
  // Takes the options of `options` that may change while mounted
  // (policy, writeback_threads, dirty_high, dirty_low, writeback_delay,
  // migration_threshold, commit_interval, sequential_threshold,
  // file_size_limit, readahead, verify); the others are ignored. A policy
  // change keeps every cached block (the new policy starts cold).
  Status Reconfigure(const CacheOptions& options);
  std::string policy_name() const;

  // --- explicit cache control (cachefsctl warm, evict, pin, unpin,
  // conflicts; cache/engine_warm.cc) ---
  // PATH arguments are relative to SOURCE, in canonical form: no leading or
  // doubled '/', no "." or ".." component ("" is SOURCE itself, or the
  // image of an image SOURCE). Files are opened beneath SOURCE without
  // following any symlink (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so
  // nothing outside SOURCE is reachable (contract 8).

  // Fetches every block of [offset, offset + length) of the regular file at
  // `path` that is not cached (fully valid) yet, admitted whatever the
  // policy says and however sequential (an explicit request), with the same
  // fetch registry as reads: a block being fetched is waited for, never
  // fetched twice. Blocks past SOURCE's end are not fetched. Errors: a bad
  // path, not a regular file, a read error of SOURCE, ENOSPC when no slot is
  // free or evictable (the cache is full of pinned or dirty data).
  struct WarmResult {
    uint64_t size = 0;            // of the file, as the mount shows it
    uint64_t blocks_fetched = 0;  // cached by this call
    uint64_t bytes_fetched = 0;
    uint64_t blocks_present = 0;  // cached already
  };
  Result<WarmResult> Warm(const std::string& path, uint64_t offset, uint64_t length);

  // Drops the cached blocks of the file `path` and of every file below it
  // ("" for all): dirty data is written back first (FlushFile) and dropped
  // once clean. Pinned files keep their blocks, and files in conflict their
  // dirty ones (counted). A file that fails to write back is counted, its
  // first error returned in `error`; the others are still evicted.
  struct EvictResult {
    uint64_t files = 0;               // known files looked at
    uint64_t blocks_dropped = 0;      // clean blocks dropped
    uint64_t blocks_kept_dirty = 0;   // dirty blocks that stay (conflict, write-back error)
    uint64_t files_pinned = 0;        // left alone
    uint64_t blocks_pinned_kept = 0;  // their cached blocks
    uint64_t files_failed = 0;        // write-back errors
    std::string error;                // the first of them
  };
  Result<EvictResult> Evict(const std::string& path);

  // Sets FileRecord::kPinned on the regular file `path` (making its record
  // if the cache did not know it) in a synced batch. Its cached blocks, and
  // every block of it cached later, stay untracked by the policy (never
  // victims) and count against the cache size; its read misses are cached
  // regardless of admission and sequential bypass. Pinning fetches nothing
  // (Warm does).
  struct PinResult {
    bool was_pinned = false;
    uint64_t blocks_cached = 0;  // of the file, now pinned
  };
  Result<PinResult> Pin(const std::string& path);
  // Clears kPinned of the file `path` and of every file below it; their
  // clean blocks are tracked by the policy again.
  struct UnpinResult {
    uint64_t files = 0;   // that were pinned
    uint64_t blocks = 0;  // their cached blocks
  };
  Result<UnpinResult> Unpin(const std::string& path);

  // Files in conflict (FileRecord::kConflict: SOURCE changed outside while
  // they had dirty data, contract 5) at `path` or below it ("" for all).
  struct ConflictInfo {
    std::string path;
    uint64_t dirty_blocks = 0;
    uint64_t dirty_bytes = 0;  // dirty 4 KiB sub-blocks x 4 KiB
    uint64_t size = 0;         // ours: the file as the mount shows it
    int64_t mtime_ns = 0;      // ours: the last write through the mount
    bool in_source = false;    // SOURCE still has a regular file there
    uint64_t source_size = 0;  // theirs
    int64_t source_mtime_ns = 0;
  };
  Result<std::vector<ConflictInfo>> Conflicts(const std::string& path);
  // How ResolveConflict settles a conflict:
  //  kKeepOurs   SOURCE's current version is adopted as the base, the flag
  //              cleared and our dirty sub-blocks written back over it now
  //              (and SOURCE cut or grown to our size).
  //  kKeepTheirs our dirty and clean blocks are dropped, the flag cleared,
  //              SOURCE's version adopted.
  //  kSaveOurs   the file as ours (SOURCE's bytes overlaid with our dirty
  //              sub-blocks, at our size) is written to a new file beside it
  //              in SOURCE, NAME.cachefs-ours-YYYYmmdd-HHMMSS (a -N suffix if
  //              that exists: nothing is overwritten), synced; then kKeepTheirs.
  enum class Resolution { kKeepOurs, kKeepTheirs, kSaveOurs };
  struct Resolved {
    uint64_t bytes = 0;    // dirty bytes written back, dropped or saved
    std::string saved_as;  // kSaveOurs: the new file, relative to SOURCE
  };
  Result<Resolved> ResolveConflict(const std::string& path, Resolution how);

  // --- the cow layer (mode=cow, image SOURCE only; cache/engine_image.cc) ---
  // In mode=cow writes stay in the cache as dirty data (the layer) and the
  // writer never writes them back; reads merge the layer and the image.
  struct LayerResult {
    uint64_t blocks = 0;  // dirty blocks written down or dropped
    uint64_t bytes = 0;   // their dirty 4 KiB sub-blocks x 4 KiB
  };
  // Writes the whole layer down to the image and syncs it there (an fsync
  // epoch of its own), while writes go on, then with writes held off for
  // the rest; the mount stays in mode=cow with an empty layer. Errors: not
  // in mode=cow (EINVAL), the image changed outside the mount (EBUSY, a
  // conflict: nothing is written over it), SOURCE's write errors. A failed
  // or interrupted commit leaves the layer whole (what reached the image
  // stays dirty in it) and only a commit may follow (DiscardLayer refuses).
  Result<LayerResult> CommitLayer();
  // Drops every block of the layer in one synced metadata batch, so the
  // image shows through again; clean cached blocks of the image go too.
  // The caller drops the kernel's pages of the image. Errors: not in
  // mode=cow (EINVAL), a commit was cut short (EBUSY: commit again).
  Result<LayerResult> DiscardLayer();

 private:
  // What Install did with a fetched block.
  enum class InstallOutcome : uint8_t {
    kCached,   // the block holds the data now
    kNoRoom,   // an admitted block found no free or evictable slot
    kSkipped,  // not admitted, stale (the file changed meanwhile), or a store error
  };
  // One in-flight fetch of a block, or a writer holding the block (no data).
  struct Fetch {
    Fetch(uint64_t i, uint64_t e) : index(i), epoch(e) {}
    const uint64_t index;  // the block
    const uint64_t epoch;  // the file's epoch when the fetch began
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    Status status;
    // What was read of the block: bytes [from, from + bytes) of it, at
    // data.get() + data_off (the buffer of the whole run).
    uint32_t from = 0;
    uint32_t bytes = 0;
    std::shared_ptr<char> data;
    size_t data_off = 0;
    bool installed = false;  // and unregistered: the cache holds what it will of it
    // Fills in a block already cached, whose own sub-blocks (maybe dirty) win
    // over what SOURCE says: its buffer is not served; the cache is, once
    // the fill is installed.
    bool fill = false;
    bool no_install = false;  // read for a stream that bypasses the cache: served, not kept
    // Fetched by readahead: when the cache does not take it, kept in memory
    // for the reader (Kept). `served`: a reader was served from this fetch;
    // `served_to_end`: up to the end of its data, so it need not be kept.
    bool readahead = false;
    bool served = false;         // guarded by mu
    bool served_to_end = false;  // guarded by mu
    // Fetched by Warm: cached whatever the policy's admission says, counted
    // as warmed rather than as a read miss.
    bool warm = false;
    // Part of a large read of SOURCE (kStreamFetch or more): installed with
    // StoreWrite::kStream, around the store's page cache.
    bool stream = false;
    InstallOutcome outcome = InstallOutcome::kSkipped;  // set by InstallRun
    // Guarded by the engine's mu_: a drop (DropBlocksInto) took the block
    // while this holder had it. A writer then commits nothing (WriteBlock),
    // and no holder puts the block's record back (DroppedWhileHeld).
    bool dropped = false;
  };
  // Blocks taken out of the cache (evicted for room, or dropped by the
  // collector) whose records' removal is decided under mu_ but committed
  // after it: each is held (a Fetch in `fetches_`) from the decision until
  // the commit (CommitEvicted). Without the hold, a writer of the block in
  // between found it in no slot, committed a new record with its data, and
  // the removal committed after took that record with it: the write was
  // lost from the metadata, and after a restart reads served SOURCE's bytes.
  struct Evicted {
    MetaBatch batch;
    std::vector<std::pair<uint64_t, std::shared_ptr<Fetch>>> held;  // (file id, hold)
  };
  // A block fetched by readahead: its data, kept for the sequential reader
  // it was fetched for, who is served from it like from a fetch in flight
  // instead of reading SOURCE (and asking the policy) a second time, or,
  // when the fetch made a new cached block of it (`cached`), instead of
  // reading it back from the store (a streamed fill went around the store's
  // page cache: docs/benchmarks.md). It serves only the CachedFile it was
  // fetched for (`owner`: a file closed and opened again starts over at
  // epoch 0) at the epoch it was fetched in, and, unless `cached`, only
  // while the block is not cached (a cached block's own sub-blocks win: they
  // may be dirty). Every change of the block's data lets it go first: a
  // writer locking the block (LockBlock), a drop of the block (truncate,
  // invalidation); so does a close of a handle of the file. Bounded: twice
  // the readahead window per file (the window plus late requests of the
  // stream), kMaxKeptBytes in all, the lowest block or the oldest going first.
  struct Kept {
    std::weak_ptr<CachedFile> owner;
    uint64_t epoch = 0;
    std::shared_ptr<char> data;  // the buffer of the fetch's whole run
    size_t data_off = 0;         // bytes [from, from + bytes) of the block are at data + data_off
    uint32_t from = 0;
    uint32_t bytes = 0;
    uint64_t seq = 0;     // age, for the global bound
    bool used = false;    // a reader was served from it (or from its fetch)
    bool cached = false;  // its fetch made the block's cached copy: the same bytes
  };
  struct ReadaheadJob {
    std::shared_ptr<CachedFile> file;
    SourceFdRef fd;
    uint64_t from_index = 0;
    uint64_t to_index = 0;  // exclusive
    bool bypass = false;    // the stream bypasses the cache: fetched, not installed
  };
  struct InstallJob {
    std::shared_ptr<CachedFile> file;
    std::vector<std::shared_ptr<Fetch>> run;
  };
  Engine() = default;

  // Options that may change while mounted (Reconfigure); read without a lock.
  struct Tunables {
    std::atomic<uint64_t> writeback_delay_ms{5000};
    std::atomic<uint64_t> commit_interval_ms{1000};
    std::atomic<uint64_t> sequential_threshold{512};
    std::atomic<uint64_t> file_size_limit{0};
    std::atomic<uint64_t> readahead{0};  // bytes; 0: off
    std::atomic<bool> verify{true};
    std::atomic<unsigned> writeback_threads{1};  // resolved: never 0
    std::atomic<unsigned> dirty_high{60};
    std::atomic<unsigned> dirty_low{40};
    std::atomic<uint64_t> migration_threshold{64ull << 20};
  };
  void SetTunables(const CacheOptions& options);

  Status Recover();
  // Recovery of one block record after an unclean shutdown: the newest of
  // its versions whose dirty data verifies in the store (versions of epochs
  // up to `durable` are trusted unread), with clean sub-blocks that do not
  // verify marked invalid; versions whose slot `taken` says is used are
  // skipped. nullopt when no version qualifies: the record goes, and `lost`
  // says whether that loses data (a version was skipped) or gives back what
  // the block held before its first version (SOURCE's data).
  std::optional<BlockRecord> ChooseVersion(const BlockRecord& r, uint64_t durable,
                                           const std::function<bool(uint64_t)>& taken, bool* lost)
      EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // How many of the valid sub-blocks of version `v` of block (file, index)
  // match their CRCs in the store, and whether all dirty ones do; clears the
  // valid bits of clean ones that do not in `v`.
  struct Verified {
    uint32_t good = 0;
    uint32_t dirty_good = 0;
    bool dirty_ok = true;
    // Which of two claims on one slot keeps it: sound dirty data first (a
    // stale clean record must not win over dirty data written since), then
    // more sub-blocks that verify.
    bool Beats(const Verified& o) const {
      if (dirty_ok != o.dirty_ok) return dirty_ok;
      if (dirty_good != o.dirty_good) return dirty_good > o.dirty_good;
      return good > o.good;
    }
  };
  Verified VerifyVersion(uint64_t file_id, uint64_t index, BlockVersion* v);
  // Read() untimed; sets `*missed` when any of it came from SOURCE or
  // waited for a fetch.
  Result<size_t> ReadRange(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len,
                           char* buf, bool* missed, const std::function<void()>& reply_eio);
  // Serves the part of [pos, pos + want) that lies in pos's block, or more
  // when a run of missing blocks was fetched; 0 at end of file. Sets
  // `*missed` (if given) unless all of it was served from the cache at once.
  // With `reply_eio`, SOURCE is read on this thread (see Read). Hits read
  // the store as `hit_read` says.
  Result<size_t> ReadAt(CachedFile& file, int fd, uint64_t pos, size_t want, char* out, bool bypass,
                        StoreRead hit_read, bool* missed, const std::function<void()>& reply_eio);
  // Serves [begin, end) of block `index` sub-block by sub-block: the
  // cache's valid sub-blocks (dirty ones included), SOURCE's bytes for the
  // others, zeros past SOURCE's end where the mount shows the file longer.
  Result<size_t> ReadMixed(CachedFile& file, int fd, uint64_t index, uint32_t begin, uint32_t end,
                           char* out);
  // Tries the cache; true when `out` was filled from it. A block without
  // every sub-block of the range is a miss (the fetch fills it in).
  Result<bool> TryHit(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end, char* out,
                      StoreRead how = StoreRead::kCached);
  // Reads bytes [from, to) of `file` from SOURCE for the fetches `run` (of
  // consecutive blocks, the first holding `from`), completes the fetches and
  // installs what was read in the cache (InstallRun), by the installer
  // thread if `defer_install`. Returns the buffer (holding `from` at offset
  // 0) and the bytes read, or the read's error. With `reply_eio`, reads on
  // this thread (see Read).
  Result<std::pair<std::shared_ptr<char>, size_t>> FetchRun(
      CachedFile& file, int fd, uint64_t from, uint64_t to,
      const std::vector<std::shared_ptr<Fetch>>& run, bool defer_install,
      const std::function<void()>& reply_eio = nullptr);
  // Installs the completed fetches `run` and unregisters them.
  void InstallRun(CachedFile& file, const std::vector<std::shared_ptr<Fetch>>& run);
  void InstallLoop();
  // Puts `bytes` of fetched data (sub-block aligned, zero-padded to whole
  // sub-blocks) into the cache at sub-block `first_sub` of block `index`:
  // a new slot, or the not yet valid sub-blocks of the block's slot.
  // With `force`, the block is cached whatever the policy's admission says;
  // `how` is passed to the store's writes.
  InstallOutcome Install(CachedFile& file, uint64_t index, uint64_t epoch, const char* data,
                         uint32_t first_sub, size_t bytes, bool force, StoreWrite how);
  // Sequential stream detection for a read of [off, off + len): queues
  // readahead past it, and returns whether the read bypasses the cache (a
  // stream longer than sequential_threshold blocks, or a file larger than
  // file_size_limit): its misses are then served but not cached. Sets
  // `*continues` when the read continues the file's previous one (or is a
  // late request of its stream).
  bool FollowStream(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len,
                    uint64_t file_size, bool* continues);
  void ReadaheadLoop();
  void RunReadahead(const ReadaheadJob& job);
  // Kept readahead blocks (Kept). KeepFetched keeps the completed readahead
  // fetch `f` of `file` (its buffer, not a copy) unless it is stale or the
  // block is cached by another than `f` itself (f.outcome kCached of a new
  // block); `used`: a reader was served from it already.
  void KeepFetched(CachedFile& file, const Fetch& f, bool used) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Copies the kept block `index` of `file` to `*out` when it holds
  // [begin, end) and may serve it; lets it go once served to its end, and
  // at once when it may no longer serve.
  bool TakeKept(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end, Kept* out)
      EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // TakeKept under mu_, then the copy to `out` outside it (ServeFromKept).
  bool ServeKept(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end, char* out)
      LOCKS_EXCLUDED(mu_);
  void ServeFromKept(const Kept& kept, uint32_t begin, uint32_t end, char* out);
  // Lets go of the kept blocks from_index <= index < to_index of `file_id`.
  void DropKept(uint64_t file_id, uint64_t from_index, uint64_t to_index)
      EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseKept(std::map<std::pair<uint64_t, uint64_t>, Kept>::iterator it)
      EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool IsKept(uint64_t file_id, uint64_t index) const EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return kept_.count({file_id, index}) != 0;
  }

  // Write caching (cache/engine_write.cc).
  // Registers the caller as the only one changing block `index` of `file`
  // (readers and fetches of it wait); Unlock ends it.
  std::shared_ptr<Fetch> LockBlock(uint64_t file_id, uint64_t index);
  void UnlockBlock(uint64_t file_id, const std::shared_ptr<Fetch>& lock);
  // LockBlock for a scope: the block is held until the HeldBlock goes.
  class HeldBlock {
   public:
    HeldBlock(Engine* e, uint64_t file_id, uint64_t index)
        : e_(e), file_id_(file_id), lock_(e->LockBlock(file_id, index)) {}
    ~HeldBlock() { e_->UnlockBlock(file_id_, lock_); }
    Fetch& fetch() const { return *lock_; }
    HeldBlock(const HeldBlock&) = delete;
    HeldBlock& operator=(const HeldBlock&) = delete;

   private:
    Engine* e_;
    uint64_t file_id_;
    std::shared_ptr<Fetch> lock_;
  };
  // Writes [begin, end) of block `index` into the cache, dirty or (for
  // writethrough, SOURCE having it already) clean. The rest of a partly
  // written sub-block comes from the cache, else from SOURCE (`fd`) up to
  // the file's fingerprint size, else zeros. Dirty data that ends past
  // `recorded_size` (the file record's size when the write began) grows
  // the record's size to its end in the same batch as the block's record,
  // so that no committed byte lies past the size a crash leaves.
  // A drop of the block while it is written (an outside change, an unlink,
  // a truncate) wins: nothing is committed, the slot is let go, `*dropped`
  // is set and OK returned; the caller writes again or elsewhere (Write).
  Status WriteBlock(CachedFile& file, int fd, uint64_t index, uint32_t begin, uint32_t end,
                    const char* data, bool dirty,
                    uint64_t recorded_size = std::numeric_limits<uint64_t>::max(),
                    bool* dropped = nullptr);
  // WriteBlock, and when no slot is free: after a persist (releasing
  // quarantined slots); then dirty data (mode=writeback) goes to SOURCE for
  // this write (WriteBlockThrough) rather than fail; in image mode only
  // after everything dirty before it was written back (order of the image).
  Status WriteBlockWithRoom(CachedFile& file, int fd, uint64_t index, uint32_t begin, uint32_t end,
                            const char* data, bool dirty,
                            uint64_t recorded_size = std::numeric_limits<uint64_t>::max(),
                            bool* dropped = nullptr);
  // The full-cache fallback: writes [begin, end) of block `index` to SOURCE
  // (widened to whole sub-blocks where the cached copy of an edge
  // sub-block is dirty, so the bytes around the write come along), then
  // drops the touched sub-blocks from the cached block (they are SOURCE's
  // now; a dirty copy written back later would undo this write) and
  // records SOURCE's new fingerprint as our own change. REQUIRES: the
  // file's writeback held (AcquireWritebackFile: the writer must not write
  // an older copy of these sub-blocks over ours, nor record an older
  // fingerprint after ours).
  Status WriteBlockThrough(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end,
                           const char* data);
  // SOURCE's file `file_id` opened for writing, by its recorded path (as
  // the writer opens it), or the image.
  Result<int> OpenSourceForWrite(uint64_t file_id);
  // Reads the valid sub-blocks [first, last) of `rec` from the store into
  // `out`, checking their CRCs.
  Status ReadSubBlocks(const BlockRecord& rec, uint32_t first, uint32_t last, char* out);
  // Writes back the dirty blocks `indices` (in order) of one file, in
  // batches of at most WritebackBatchBlocks(), each synced on SOURCE before
  // its blocks are marked clean, within the migration_threshold budget.
  // Waits while another writer has the file (one at a time per file, so its
  // writes stay ordered). `background`: for Flush() (the pool, cachefsctl
  // flush), which leaves alone a file the FUSE layer is changing on SOURCE
  // itself (SourceChange); FlushFile and FlushPath, called by the FUSE
  // layer, do not.
  Status WriteBackFile(uint64_t file_id, const std::vector<uint64_t>& indices, bool background);
  // WriteBackFile for a caller that has the file already (wb_busy_).
  Status WriteBackBatches(uint64_t file_id, const std::vector<uint64_t>& indices, bool background);
  // One batch of WriteBackFile. REQUIRES: the caller has the file (wb_busy_).
  // Only the `last` batch grows SOURCE's file to the mount's size (earlier
  // ones extend it as far as they write): a drain cut short between batches
  // leaves no hole where dirty data was not written yet.
  Status WriteBackBatch(uint64_t file_id, const std::vector<uint64_t>& indices, bool background,
                        bool last);

  // The writeback pool (cache/engine_writeback.cc).
  void StartWriteback();  // at open, after recovery
  // Starts workers up to the writeback_threads tunable (extra ones idle).
  void ResizeWritebackPool();
  void WritebackWorker(unsigned id);
  // What a worker does next: a file and its dirty blocks to write back, or
  // nothing and how long to wait.
  struct WritebackPick {
    bool found = false;
    uint64_t file_id = 0;
    std::vector<uint64_t> indices;
    uint64_t wait_ms = 0;
    bool seal = false;  // image mode: nothing sealed left, a flush waits: seal an epoch
  };
  WritebackPick PickWriteback(unsigned worker) EXCLUSIVE_LOCKS_REQUIRED(wb_mu_);
  // Counts an attempt at `file_id`'s writeback and its outcome (backoff, log).
  void NoteWriteback(uint64_t file_id, const Status& s) EXCLUSIVE_LOCKS_REQUIRED(wb_mu_);
  uint64_t WritebackBatchBlocks() const;
  // Waits for, and takes, / gives back the right to write back `file_id`.
  void AcquireWritebackFile(uint64_t file_id) LOCKS_EXCLUDED(wb_mu_);
  void ReleaseWritebackFile(uint64_t file_id) LOCKS_EXCLUDED(wb_mu_);
  // The dirty-age clock: dirty seqs up to the returned one were first made
  // dirty at least writeback_delay ago.
  uint64_t EligibleThrough(uint64_t now_ms) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before a batch of `file_id`: fails while a write or sync of an earlier
  // attempt that timed out still runs (so it can never land over newer
  // bytes), and closes its parked descriptor once it is done.
  Status CheckParked(uint64_t file_id) LOCKS_EXCLUDED(wb_mu_);
  // Keeps `fd` of `file_id` open after one of its calls timed out.
  void Park(uint64_t file_id, int fd) LOCKS_EXCLUDED(wb_mu_);
  std::shared_ptr<CachedFile> LiveFile(uint64_t file_id);
  // Slots no longer used by a record whose change is not yet synced; freed
  // at the next persist (contract 2: a slot synced metadata may point at is
  // not reused before then).
  void QuarantineSlot(uint32_t slot) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void AddDirty(uint64_t seq, const BlockKey& key) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records that `slot`'s block has `subs` dirty sub-blocks now (dirty_bytes).
  void SetDirtySubs(uint32_t slot, uint32_t subs) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EraseDirty(uint64_t seq) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool HasDirty(uint64_t file_id);
  // Marks `file` detached (its name is gone or another file's) and makes its
  // fetches in flight stale, so none of them caches what it read after the
  // caller dropped the file's blocks: the file id may serve another file.
  // Holders that took a block after this see `detached_` (Install, and
  // DroppedWhileHeld(file, ...)) and commit nothing.
  // REQUIRES: files_mu_ held (Install checks the epoch under it).
  static void Detach(CachedFile& file) {
    file.detached_ = true;
    file.epoch_++;
  }
  // Whether a drop took the block `held` (LockBlock's) while it was held: a
  // holder that read the block's record must not put it back then.
  // REQUIRES: files_mu_ held from this check through the holder's commit.
  bool DroppedWhileHeld(const Fetch& held) EXCLUSIVE_LOCKS_REQUIRED(files_mu_) LOCKS_EXCLUDED(mu_) {
    std::lock_guard<std::mutex> lock(mu_);
    return held.dropped;
  }
  // The same for a holder working for `file`, which also must not commit
  // once the file is detached (Detach runs under files_mu_): its id may be
  // another file's now, and a holder that took the block after the detach
  // was never marked.
  bool DroppedWhileHeld(const CachedFile& file, const Fetch& held)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_) LOCKS_EXCLUDED(mu_) {
    return file.detached_ || DroppedWhileHeld(held);
  }
  // Whether SOURCE's file with inode `seen` is the one last known as
  // `known` (0: not known; inodes not compared over a FUSE SOURCE).
  bool SameSourceFile(uint64_t known, uint64_t seen) const {
    return !compare_ino_ || known == 0 || known == seen;
  }
  // Revalidate with files_mu_ held (OpenFile).
  Result<bool> RevalidateLocked(CachedFile& file, const struct stat& st)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // Drops the cached blocks of `file_id` with from_index <= index < to_index
  // from the index at once and from the metadata with `batch`
  // (DropBlocksInto) or with a commit of its own (DropBlocks).
  // Dirty blocks go too, unless `keep_dirty`. DropBlocksInto adds the slots
  // it freed to `freed`, for ReleaseDropped once `batch` is committed;
  // DropBlocks sets `*dropped` to the number of blocks dropped if given.
  // Every drop runs under files_mu_ from its decision to its commit, so a
  // writer (which commits under files_mu_ after checking Fetch::dropped)
  // either sees the mark or commits before the drop looks at the block.
  // Blocks held meanwhile (fetches_) are marked dropped, but for dirty ones
  // kept with `keep_dirty`.
  Status DropBlocksInto(uint64_t file_id, uint64_t from_index, uint64_t to_index, MetaBatch& batch,
                        std::vector<uint32_t>& freed, bool keep_dirty = false)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // Quarantines the slots of blocks whose removal is now committed: free
  // at the next persist, when that removal is synced.
  void ReleaseDropped(const std::vector<uint32_t>& freed) LOCKS_EXCLUDED(mu_);
  Status DropBlocks(uint64_t file_id, uint64_t from_index, uint64_t to_index,
                    bool keep_dirty = false, uint64_t* dropped = nullptr)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // The block index, keeping the pinned-slot bits and count in step.
  void IndexInsert(const BlockKey& key, uint32_t slot) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IndexErase(uint32_t slot) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Pinned and conflicting files from their records, before the blocks are
  // indexed (recovery).
  Status LoadFileFlags() EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens `path` (relative to SOURCE, canonical) beneath SOURCE with
  // `flags` (O_NOFOLLOW and O_CLOEXEC added), following no symlink.
  Result<int> OpenBeneath(const std::string& path, int flags, mode_t mode = 0);
  // The file ids at `path` and below it, by the metadata's paths.
  Result<std::set<uint64_t>> FilesUnder(const std::string& path);
  // Drops every block of `file_id` and adopts SOURCE's `st` (kKeepTheirs).
  Result<uint64_t> DiscardOurs(uint64_t file_id, const struct stat& st);
  // Writes the file `file_id` as the mount shows it (SOURCE's bytes through
  // `src_fd`, our dirty sub-blocks over them, `size` bytes) to `out_fd`.
  Status WriteOurVersion(uint64_t file_id, int src_fd, int out_fd, uint64_t size);
  // A change cachefs made to SOURCE: adopt `st`, drop blocks [from, to), one batch.
  // `wrote` (a write, fallocate or copy into [first, first + second), which
  // never shrinks the file): a size `st` cannot have after that alone means
  // SOURCE also changed outside (cut or grown) since the cache last looked,
  // and every block goes (until session 8 adopting `st` hid that change for
  // good: bytes truncated away outside were served again).
  Status CommitOwnChange(CachedFile& file, const struct stat& st, uint64_t from_index,
                         uint64_t to_index, const std::pair<uint64_t, uint64_t>* wrote = nullptr)
      LOCKS_EXCLUDED(files_mu_);
  // Finds a slot for a new block, evicting if needed: the evicted block's
  // removal goes to `evicted`, for CommitEvicted right after. REQUIRES mu_
  // held. A block somebody holds (a writer before its look at the index)
  // is never the victim.
  // With `admit` (a read miss of that block), only if the policy admits it.
  // With `log` (a written block), from the append cursor while it has a
  // wholly free segment to go on with (and the garbage collector is woken
  // when few are left), else like a fetched block.
  std::optional<uint32_t> AllocateSlot(Evicted& evicted, const BlockKey* admit = nullptr,
                                       bool log = false) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes block `key` (in no slot any more, or about to be in none) into
  // `evicted`: its record's removal, and a hold on it until CommitEvicted.
  void Evict(const BlockKey& key, Evicted& evicted) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Commits the removals in `evicted`, then lets go of the blocks.
  Status CommitEvicted(Evicted& evicted) LOCKS_EXCLUDED(mu_);
  // Garbage collection of segments (cache/engine_gc.cc). Cleans the
  // segment with the fewest live blocks, one at a time, until `want`
  // segments are wholly free or none can be cleaned: clean blocks are
  // dropped (SOURCE has them), dirty and pinned ones moved to free slots
  // outside it (the cursor's first), busy ones (read, fetched, written)
  // left for the next round. Each segment's slots are freed by the persist
  // that ends its round (contract 2: the records that no longer point at
  // them are synced first). One collection at a time.
  Status CollectGarbage(uint32_t want) LOCKS_EXCLUDED(mu_);
  // Moves block `key` out of `slot` (in the segment being cleaned) into a
  // free slot elsewhere, keeping its generation (the data is the same); sets
  // `*gone` when `slot` no longer holds it (moved, or dropped meanwhile).
  Status MoveBlock(const BlockKey& key, uint32_t slot, bool* gone) LOCKS_EXCLUDED(mu_);
  void GcLoop();
  void WakeGc();
  void ReleaseReader(uint32_t slot) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FreeSlot(uint32_t slot) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PersistLoop();

  // Image mode: writeback in fsync epochs (cache/engine_image.cc). The
  // newest sealed epoch is, per dirty block of the image, the version (slot,
  // generation, CRCs, dirty sub-blocks) it had at the last fsync; each
  // version holds its slot (readers_) so that a write after the fsync,
  // which moves the block to a new slot, does not free the old one before
  // the writer wrote it back. The writer writes only these versions.
  bool ImageEpochs() const { return config_.source_is_file; }
  // May the writer write back now? Not in mode=cow, unless committing.
  bool WritebackAllowed() const;
  // A write put dirty data into block `key` (it joins the next epoch).
  void NoteEpochWrite(const BlockKey& key) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Seals an epoch: the blocks written since the last seal (`all`: every
  // dirty block) get their current version recorded. Called at fsync, and
  // before a writeback that must cover everything (flush, mode switch).
  Status SealEpoch(bool all) LOCKS_EXCLUDED(mu_);
  // SealEpoch(true) in image mode, then Flush().
  Status FlushAll();
  // The versions of `file_id` one writeback round may write (by block
  // index), each slot held for the round; ReleaseEpoch ends the hold.
  using EpochVersions = std::map<uint64_t, BlockRecord>;
  EpochVersions TakeEpoch(uint64_t file_id) LOCKS_EXCLUDED(mu_);
  void ReleaseEpoch(const EpochVersions& taken) LOCKS_EXCLUDED(mu_);
  // Sub-blocks `written` of version `generation` of `key` are on the image
  // and synced (or the block is gone): the epoch forgets them, and the
  // version once none of its dirty sub-blocks is left, unless a later seal
  // replaced it.
  void EpochBlockDone(const BlockKey& key, uint64_t generation,
                      const std::vector<uint64_t>& written) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Forgets every version of `file_id` (its blocks were dropped: a discard
  // of the cow layer, a conflict resolved as keep-theirs).
  void DropEpoch(uint64_t file_id) EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::mutex epoch_mu_;  // serialises seals and the writer taking an epoch
  std::map<std::pair<uint64_t, uint64_t>, BlockRecord> epoch_blocks_ GUARDED_BY(mu_);
  std::set<std::pair<uint64_t, uint64_t>> epoch_touched_ GUARDED_BY(mu_);
  std::atomic<bool> committing_{false};  // CommitLayer runs: cow may write back

  // The persistent counters over every mount: earlier mounts' + this one's.
  PersistentCounters Totals() const;
  // Puts Totals() in the metadata's log if they changed since the last save;
  // the WAL sync of the persist that calls it makes them durable.
  // REQUIRES: sync_mu_ held.
  void SaveCounters();
  // Puts the file's record with its current fingerprint into `batch` (or
  // commits it: WriteFileRecord) if the fingerprint changed since.
  Status FileRecordInto(CachedFile& file, MetaBatch& batch) EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  Status WriteFileRecord(CachedFile& file) EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // Flags `file_id`'s record kWritingBack (synced) before cachefs changes
  // SOURCE's copy, so that a crash in the middle is not taken for an outside
  // change at the next mount; a no-op if flagged already or gone.
  Status MarkWritingBack(uint64_t file_id) LOCKS_EXCLUDED(files_mu_);
  // The path records at `path`: the file's, or with `is_dir` every one
  // below the directory.
  Status PathsAt(const std::string& path, bool is_dir,
                 std::vector<std::pair<std::string, uint64_t>>* out)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // Puts the names `entries` (`from` itself, or the paths below it) at the
  // same places under `to` into `batch`, and their files' records, read once
  // into `records` (the caller puts them), naming the new place where they
  // named the old; a moved file (not a directory's content) adopts `after`
  // where it looked like `before`. Removing the old names is the caller's.
  Status MoveNamesInto(const std::vector<std::pair<std::string, uint64_t>>& entries,
                       const std::string& from, const std::string& to, bool is_dir,
                       const Fingerprint& before, const Fingerprint& after, MetaBatch& batch,
                       std::map<uint64_t, FileRecord>& records) EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // A change cachefs made to SOURCE's attributes of `file_id` (a rename, an
  // unlink of another name): `after` becomes the fingerprint of its record
  // `r` (if not null) and of its live file where they looked like `before`.
  void AdoptOwnAttributeChange(uint64_t file_id, const Fingerprint& before,
                               const Fingerprint& after, FileRecord* r)
      EXCLUSIVE_LOCKS_REQUIRED(files_mu_);
  // SOURCE changed outside while the file had dirty data (contract 5). A
  // read-modify-write of the file record, so under files_mu_ (until session
  // 8 the writer's call was not: its stale copy could undo a rename, or the
  // size a write had grown the record to).
  Status MarkConflict(uint64_t file_id, CachedFile* live) EXCLUSIVE_LOCKS_REQUIRED(files_mu_);

  EngineConfig config_;
  std::unique_ptr<TimeoutBacking> timeout_backing_;  // wraps the slow store when source_timeout > 0
  Backing* backing_ = nullptr;
  // The writeback's view of the slow store: its writes, syncs and stats
  // time out after source_timeout too (when it is > 0).
  std::unique_ptr<TimeoutBacking> wb_timeout_backing_;
  Backing* wb_backing_ = nullptr;
  std::string dir_;
  Superblock sb_;
  std::unique_ptr<CacheDirLock> lock_;
  std::unique_ptr<MetaStore> meta_;
  std::unique_ptr<BlockStore> store_;

  mutable std::mutex mu_;
  std::unique_ptr<BlockIndex> index_ GUARDED_BY(mu_);
  std::unique_ptr<Policy> policy_ GUARDED_BY(mu_);
  std::unique_ptr<SegmentTable> segments_ GUARDED_BY(mu_);  // free slots, the append cursor
  // Wholly free segments below which a written block wakes the collector,
  // and how many it then makes.
  uint32_t gc_low_ = 1;
  uint32_t gc_high_ = 2;
  std::mutex gc_mu_;  // one collection at a time
  std::mutex gc_wake_mu_;
  std::condition_variable gc_cv_;
  bool gc_kick_ = false;      // guarded by gc_wake_mu_
  bool gc_stopping_ = false;  // guarded by gc_wake_mu_
  std::thread gc_thread_;
  std::vector<uint16_t> readers_ GUARDED_BY(mu_);       // readers of each slot in progress
  std::vector<bool> free_when_unread_ GUARDED_BY(mu_);  // dropped while being read
  std::vector<bool> dirty_slot_ GUARDED_BY(mu_);        // holds dirty data: never a victim
  std::vector<uint32_t> quarantine_ GUARDED_BY(mu_);    // freed at the next persist
  // Blocks made clean (written back, or written through) since the last
  // persist: victims only once it synced their clean record. Until then the
  // synced record may still say dirty, and a slot reused meanwhile would
  // make recovery trust it: EIO for data SOURCE has (until session 8).
  std::vector<uint32_t> clean_pending_ GUARDED_BY(mu_);
  std::map<uint64_t, BlockKey> dirty_ GUARDED_BY(mu_);  // the dirty index, by seq
  // When dirty seqs were handed out (monotonic ms), in buckets of up to
  // kAgeBucketMs: the seqs up to `last_seq` were all made dirty by
  // `last_ms`. Buckets older than writeback_delay are folded into
  // `eligible_through_`; so at most delay / kAgeBucketMs buckets are kept.
  struct DirtyAge {
    uint64_t first_ms = 0;
    uint64_t last_seq = 0;
    uint64_t last_ms = 0;
  };
  static constexpr uint64_t kAgeBucketMs = 10;
  std::deque<DirtyAge> dirty_ages_ GUARDED_BY(mu_);
  uint64_t eligible_through_ GUARDED_BY(mu_) = 0;
  std::unordered_map<uint64_t, uint64_t> dirty_per_file_ GUARDED_BY(mu_);  // dirty blocks
  std::set<uint64_t> conflict_files_ GUARDED_BY(mu_);  // files flagged kConflict
  std::set<uint64_t> pinned_files_ GUARDED_BY(mu_);    // files flagged kPinned
  std::vector<bool> pinned_slot_ GUARDED_BY(mu_);      // holds a block of a pinned file
  uint64_t blocks_pinned_ GUARDED_BY(mu_) = 0;         // slots with pinned_slot_ set
  uint64_t next_dirty_seq_ GUARDED_BY(mu_) = 1;
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<Fetch>> fetches_ GUARDED_BY(mu_);
  // Kept readahead blocks by (file, index); by age (seq); bytes per file and in all.
  std::map<std::pair<uint64_t, uint64_t>, Kept> kept_ GUARDED_BY(mu_);
  std::map<uint64_t, std::pair<uint64_t, uint64_t>> kept_by_age_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint64_t> kept_file_bytes_ GUARDED_BY(mu_);
  uint64_t kept_bytes_ GUARDED_BY(mu_) = 0;
  uint64_t next_kept_seq_ GUARDED_BY(mu_) = 0;
  // kept_.size(), read without mu_ so that reads skip the lock when nothing is kept.
  std::atomic<uint64_t> kept_blocks_{0};
  uint64_t next_generation_ GUARDED_BY(mu_) = 1;
  // Persist epochs (contract 1c, docs/format.md "Rollback"). Data written to
  // the store is tagged, after the write, with the current epoch; Persist()
  // moves to the next one before it persists the store, so data of epoch
  // e is durable once the persist that closed e completed. With persists
  // serialised, epochs up to epoch_ - 2 are always durable.
  uint64_t epoch_ GUARDED_BY(mu_) = 1;
  uint64_t last_used_epoch_ GUARDED_BY(mu_) = 0;  // newest epoch a record was given
  // The newest durable-epoch marker synced to the metadata: recovery trusts
  // versions up to it without reading the store.
  uint64_t durable_epoch_ GUARDED_BY(mu_) = 0;
  bool store_persist_failed_ GUARDED_BY(mu_) = false;  // epochs stop moving (sticky)
  // Tags a record whose data was just written with the current epoch and
  // keeps the versions of `before` recovery may have to roll back to.
  void SealVersion(const BlockRecord* before, BlockRecord* out) EXCLUSIVE_LOCKS_REQUIRED(mu_);

  bool compare_ino_ = true;    // false for FUSE sources, whose inode numbers are made up
  std::mutex files_mu_;        // serialises file record changes and path changes
  uint64_t next_file_id_ = 1;  // guarded by files_mu_
  std::unordered_map<uint64_t, std::weak_ptr<CachedFile>> open_files_;  // guarded by files_mu_

  struct Counters {
    std::atomic<uint64_t> read_hits{0}, read_misses{0}, fetch_waits{0}, readahead_blocks{0},
        bytes_from_cache{0}, bytes_from_source{0}, crc_errors{0}, evictions{0}, invalidations{0},
        write_hits{0}, write_misses{0}, promotions{0}, bytes_written_back{0}, writeback_errors{0},
        writeback_retries{0}, conflicts{0}, persists{0}, not_admitted{0}, bypassed{0}, warmed{0},
        writeback_writes{0}, writeback_timeouts{0}, write_through_fallbacks{0}, segments_cleaned{0},
        gc_moved_blocks{0}, gc_dropped_blocks{0};
    std::atomic<uint64_t> readahead_dropped{0};
  };
  mutable Counters counters_;
  RecoveryReport recovery_;  // written by Recover() only, before any other thread starts
  LatencyHistogram read_hit_latency_;
  LatencyHistogram read_miss_latency_;
  LatencyHistogram write_latency_;
  std::atomic<uint64_t> writeback_in_flight_{0};  // blocks taken by the writer, not yet clean
  // Dirty sub-blocks of each slot's block, and their sum (for dirty_bytes).
  std::vector<uint16_t> dirty_subs_ GUARDED_BY(mu_);
  uint64_t dirty_subs_total_ GUARDED_BY(mu_) = 0;
  // Persistent counters: earlier mounts' totals (read at open, then
  // constant), this mount's added (Totals()), and what was last saved.
  PersistentCounters counters_base_;
  PersistentCounters counters_saved_;  // guarded by sync_mu_

  Tunables tunables_;
  std::atomic<CacheMode> mode_{CacheMode::kWritethrough};
  std::mutex mode_switch_mu_;  // one mode switch at a time
  // WriteGuards: how many are held, and whether a mode switch holds new ones off.
  std::mutex gate_mu_;
  std::condition_variable gate_cv_;
  int gate_writers_ = 0;      // guarded by gate_mu_
  bool gate_closed_ = false;  // guarded by gate_mu_
  std::mutex ra_mu_;
  std::condition_variable ra_cv_;
  std::deque<ReadaheadJob> ra_queue_;     // guarded by ra_mu_
  std::atomic<bool> ra_stopping_{false};  // set under ra_mu_
  std::vector<std::thread> ra_threads_;
  std::condition_variable install_cv_;
  std::deque<InstallJob> install_queue_;  // guarded by ra_mu_
  bool install_stopping_ = false;         // guarded by ra_mu_
  bool installer_asleep_ = false;         // waits for a wake-up, not polling; guarded by ra_mu_
  int installs_running_ = 0;              // guarded by ra_mu_
  std::thread install_thread_;

  int source_root_ = -1;     // SOURCE (a directory, or the image file's directory)
  std::mutex writeback_mu_;  // one writer of SOURCE at a time (the thread or a flush)
  // The writeback pool. Lock order: wb_mu_ before mu_.
  std::mutex wb_mu_;
  std::condition_variable wb_cv_;               // work may have appeared, or stop
  std::condition_variable wb_file_cv_;          // a file left wb_busy_, or budget was freed
  uint64_t wb_kicks_ GUARDED_BY(wb_mu_) = 0;    // bumped by StartFlush and Reconfigure
  uint64_t flush_goal_ GUARDED_BY(wb_mu_) = 0;  // the newest StartFlush mark not yet reached
  bool wb_stopping_ GUARDED_BY(wb_mu_) = false;
  bool wb_pressure_ GUARDED_BY(wb_mu_) = false;     // above dirty_high, until below dirty_low
  unsigned wb_active_ GUARDED_BY(wb_mu_) = 0;       // workers writing back now
  std::set<uint64_t> wb_busy_ GUARDED_BY(wb_mu_);   // files being written back
  uint64_t wb_budget_used_ GUARDED_BY(wb_mu_) = 0;  // bytes of batches in flight
  // Files whose last writeback attempt failed: retried with exponential
  // backoff (kRetryMinMs doubling to kRetryMaxMs), reset by a success.
  struct Backoff {
    uint64_t next_ms = 0;  // monotonic: not before
    uint64_t delay_ms = 0;
    uint64_t failures = 0;
  };
  std::map<uint64_t, Backoff> wb_backoff_ GUARDED_BY(wb_mu_);
  std::atomic<uint64_t> wb_failing_{0};                   // wb_backoff_.size()
  uint64_t wb_burst_failures_ GUARDED_BY(wb_mu_) = 0;     // since the failing set was last empty
  std::map<uint64_t, int> wb_parked_ GUARDED_BY(wb_mu_);  // file -> descriptor (CheckParked)
  // Files a worker found nothing to do for (the FUSE layer changes them on
  // SOURCE itself): not picked again before the time given (monotonic ms).
  std::map<uint64_t, uint64_t> wb_snoozed_ GUARDED_BY(wb_mu_);
  std::vector<std::thread> wb_threads_ GUARDED_BY(wb_mu_);
  // Set by StopWriteback: a writer ends after the block in progress.
  std::atomic<bool> wb_abort_{false};
  // Group commit: each Persist() call takes a ticket; one persist covers
  // every ticket taken before it started.
  std::mutex sync_mu_;  // serialises persists
  std::atomic<uint64_t> sync_tickets_{0};
  uint64_t sync_done_ = 0;  // guarded by sync_mu_: tickets covered by a finished persist

  std::mutex persist_mu_;
  std::condition_variable persist_cv_;
  bool stopping_ = false;              // guarded by persist_mu_
  uint64_t persist_reconfigured_ = 0;  // guarded by persist_mu_: bumped by Reconfigure
  std::thread persist_thread_;
};

}  // namespace cachefs
