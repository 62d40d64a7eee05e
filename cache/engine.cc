#include "cache/engine.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/statvfs.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>

#include "cache/timeout_backing.h"
#include "common/crc32c.h"
#include "common/log.h"
#include "meta/record_cache.h"

namespace cachefs {
namespace {

constexpr uint64_t kNoEnd = std::numeric_limits<uint64_t>::max();
// Ranges of at most this many blocks are dropped by index lookups, not a scan.
constexpr uint64_t kDropByIndexLimit = 256;
// Reads of SOURCE in flight at most (each a thread while it runs).
constexpr unsigned kSourceReadWorkers = 64;
constexpr long kFuseSuperMagic = 0x65735546;
// How far behind the end of a sequential stream a read may start and still
// be taken for one of its requests arriving out of order.
constexpr uint64_t kLateReadSlack = 1u << 20;
// Readahead reads SOURCE in pieces of this size (or one block, if larger),
// so a reader waiting for the first block of a window does not wait for all
// of it, and several pieces are in flight at once.
constexpr uint64_t kReadaheadRunBytes = uint64_t{256} * 1024;
// Readahead threads: reads of SOURCE in flight ahead of sequential readers.
constexpr int kReadaheadThreads = 4;
// Fetched runs waiting for the installer at most; past it readers install
// their own (the store cannot keep up, so waiting is the right brake).
constexpr size_t kMaxQueuedInstalls = 64;
// Reads of SOURCE this large (readahead, sequential and warming runs, large
// application reads) are installed around the store's page cache
// (StoreWrite::kStream); smaller ones, random misses, through it.
constexpr size_t kStreamFetch = size_t{64} * 1024;
// While it has work, the installer looks at its queue this often instead of
// being woken for each job; readers wake it only when kInstallBatch jobs
// wait, or when it has gone to sleep after kInstallIdlePolls empty looks
// (20 ms: a stream of misses keeps it polling, sparse reads let it sleep
// instead of waking 500 times a second).
constexpr std::chrono::milliseconds kInstallPoll{2};
constexpr size_t kInstallBatch = 16;
constexpr int kInstallIdlePolls = 10;
// Readahead blocks the cache did not take, kept in memory for their readers
// (Engine::Kept), all files together at most: 64 streams' default windows.
constexpr uint64_t kMaxKeptBytes = uint64_t{64} << 20;
// Memory for the block records kept for hits (meta/record_cache.h): 58,254
// records at 64 KiB blocks, more at smaller ones, fewer at larger; a hit
// beyond them reads RocksDB.
constexpr size_t kHotRecordBytes = size_t{32} << 20;

// A buffer aligned for O_DIRECT stores.
struct AlignedBuffer {
  explicit AlignedBuffer(size_t n)
      : data(static_cast<char*>(std::aligned_alloc(kSubBlockSize, RoundUp(n)))), size(RoundUp(n)) {}
  ~AlignedBuffer() { std::free(data); }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  static size_t RoundUp(size_t n) {
    return (n + kSubBlockSize - 1) / kSubBlockSize * kSubBlockSize;
  }
  char* data;
  size_t size;
};

std::string SizeText(uint64_t bytes) {
  static const char* kUnits[] = {"", "K", "M", "G", "T"};
  int u = 0;
  while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return std::to_string(bytes) + kUnits[u];
}

Status Fixed(const std::string& dir, const std::string& what, const std::string& given,
             const std::string& has) {
  return Status::Invalid(what + "=" + given + " differs from cache '" + dir + "' (" + has +
                         ", fixed at format; --reformat starts over)");
}

}  // namespace

Fingerprint FingerprintOf(const struct stat& st) {
  Fingerprint fp;
  fp.size = static_cast<uint64_t>(st.st_size);
  fp.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  fp.ctime_ns = static_cast<int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return fp;
}

Result<std::unique_ptr<Engine>> Engine::Open(const EngineConfig& config) {
  std::unique_ptr<Engine> e(new Engine());
  e->config_ = config;
  e->backing_ = config.backing != nullptr ? config.backing : RealBacking();
  e->wb_backing_ = e->backing_;
  const CacheOptions& o = config.options;
  if (o.source_timeout > 0) {
    auto ms = std::chrono::milliseconds(static_cast<int64_t>(o.source_timeout * 1000));
    e->timeout_backing_ =
        std::make_unique<TimeoutBacking>(e->backing_, ms, kSourceReadWorkers, /*time_writes=*/false,
                                         EngineConfig::kMaxDirectSourceReads);
    e->wb_timeout_backing_ = std::make_unique<TimeoutBacking>(e->backing_, ms, kSourceReadWorkers,
                                                              /*time_writes=*/true);
    e->backing_ = e->timeout_backing_.get();
    e->wb_backing_ = e->wb_timeout_backing_.get();
  }
  e->dir_ = o.cache_dir.empty() ? DefaultCacheDir(config.source) : o.cache_dir;
  const std::string& dir = e->dir_;

  // A daemon of the last mount still writing back after its unmount is
  // asked to stop: this mount writes back the rest.
  auto lock = CacheDirLock::Acquire(dir, /*take_over=*/true);
  if (!lock.ok()) return lock.status();
  e->lock_ = std::move(lock.value());

  if (config.reformat) {
    std::error_code ec;
    std::filesystem::remove_all(dir + "/meta", ec);
    std::filesystem::remove(dir + "/store", ec);
  }
  auto meta = config.open_meta ? config.open_meta(dir + "/meta", true)
                               : OpenRocksMetaStore(dir + "/meta", true);
  if (!meta.ok()) return meta.status();
  e->meta_ = std::move(meta.value());
  auto existing = e->meta_->GetSuperblock();
  if (!existing.ok()) return existing.status().Prefixed("cache '" + dir + "'");

  Superblock& sb = e->sb_;
  bool formatting = !existing.value().has_value();
  uint64_t block_size = o.block_size.value_or(EngineConfig::kDefaultBlockSize);
  // The slot count the options ask for (percent of the cache filesystem).
  auto wanted_slots = [&](uint64_t bs) -> Result<uint64_t> {
    SizeOrPercent size =
        o.cache_size.value_or(SizeOrPercent{true, EngineConfig::kDefaultCachePercent, 0});
    uint64_t bytes = size.bytes;
    if (size.is_percent) {
      struct statvfs sv;
      if (statvfs(dir.c_str(), &sv) != 0) return Status::FromErrno(errno, "cache '" + dir + "'");
      bytes = static_cast<uint64_t>(static_cast<double>(sv.f_blocks) * sv.f_frsize * size.percent /
                                    100.0);
    }
    uint64_t slots = bytes / bs;
    if (slots == 0) return Status::Invalid("cache_size must hold at least one block");
    if (slots >= UINT32_MAX) return Status::Invalid("cache_size holds too many blocks");
    return slots;
  };

  if (formatting) {
    auto slots = wanted_slots(block_size);
    if (!slots.ok()) return slots.status();
    sb.block_size = static_cast<uint32_t>(block_size);
    sb.slot_count = slots.value();
    sb.store_kind = o.store.value_or(StoreKind::kFile);
    sb.store_path = o.store_path.value_or(dir + "/store");
    sb.source = config.source;
    sb.source_is_file = config.source_is_file;
    sb.mode = o.mode.value_or(CacheMode::kWritethrough);
    sb.created_unix_ns =
        static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count());
    char id[16];
    if (getrandom(id, sizeof(id), 0) != sizeof(id)) std::memset(id, 0, sizeof(id));
    sb.cache_id.assign(id, sizeof(id));
  } else {
    sb = *existing.value();
    // Older formats are read as they are and their records upgraded as
    // they are rewritten; the superblock says so first (written below,
    // before any record), so an older cachefs refuses the cache from then on.
    sb.format_version = kFormatVersion;
    if (sb.source != config.source) {
      return Status::Invalid("cache '" + dir + "' belongs to SOURCE '" + sb.source + "', not '" +
                             config.source + "' (--reformat starts over)");
    }
    if (sb.source_is_file != config.source_is_file) {
      return Status::Invalid("cache '" + dir + "' was made for a " +
                             (sb.source_is_file ? "file" : "directory") +
                             " SOURCE (--reformat starts over)");
    }
    if (o.block_size && *o.block_size != sb.block_size) {
      return Fixed(dir, "block_size", SizeText(*o.block_size), SizeText(sb.block_size));
    }
    if (o.cache_size) {
      auto slots = wanted_slots(sb.block_size);
      if (!slots.ok()) return slots.status();
      if (slots.value() != sb.slot_count) {
        return Fixed(dir, "cache_size",
                     o.cache_size->is_percent ? std::to_string(o.cache_size->percent) + "%"
                                              : SizeText(o.cache_size->bytes),
                     SizeText(sb.slot_count * sb.block_size));
      }
    }
    if (o.store && *o.store != sb.store_kind) {
      return Fixed(dir, "store", StoreKindName(*o.store), StoreKindName(sb.store_kind));
    }
    if (o.store_path && *o.store_path != sb.store_path) {
      return Fixed(dir, "store_path", *o.store_path, sb.store_path);
    }
    // A new mode is taken below, once the old one allows it (leaving
    // writeback drains first).
  }
  if ((sb.mode == CacheMode::kCow || o.mode == CacheMode::kCow) && !config.source_is_file) {
    return Status::Invalid("mode=cow needs an image SOURCE (a regular file); '" + config.source +
                           "' is a directory");
  }

  if (o.store_direct_io && sb.store_kind != StoreKind::kFile) {
    return Status::Invalid("store_io=direct needs store=file; cache '" + dir +
                           "' has store=" + StoreKindName(sb.store_kind));
  }
  StoreConfig sc;
  sc.kind = sb.store_kind;
  sc.direct_io = o.store_direct_io;
  sc.path = sb.store_path;
  sc.block_size = sb.block_size;
  sc.slot_count = sb.slot_count;
  auto store = OpenBlockStore(sc, formatting);
  if (!store.ok()) {
    return formatting ? store.status()
                      : store.status().Prefixed("cache '" + dir + "' (--reformat starts over)");
  }
  e->store_ = std::move(store.value());
  if (config.wrap_store) e->store_ = config.wrap_store(std::move(e->store_));

  // The store exists before the superblock that names it is written.
  MetaBatch batch;
  batch.Put(sb);
  Status s = e->meta_->Commit(batch, true);
  if (!s.ok()) return s;
  e->meta_ = std::make_unique<RecordCache>(
      std::move(e->meta_),
      kHotRecordBytes / RecordCache::RecordBytes(sb.block_size / kSubBlockSize));
  if (config.wrap_meta) e->meta_ = config.wrap_meta(std::move(e->meta_));
  e->mode_ = e->sb_.mode;
  e->SetTunables(o);
  s = e->Recover();
  if (!s.ok()) return s;
  // Statistics never stop a mount: unreadable counters start again from 0.
  auto counters = e->meta_->GetCounters();
  if (counters.ok()) {
    e->counters_base_ = counters.value().value_or(PersistentCounters{});
  } else {
    LogWarning("cache '" + dir +
               "': saved counters unreadable, starting from 0: " + counters.status().message());
  }
  e->counters_saved_ = e->counters_base_;

  struct statfs sfs;
  e->compare_ino_ = !(statfs(config.source.c_str(), &sfs) == 0 && sfs.f_type == kFuseSuperMagic);
  e->persist_thread_ = std::thread([raw = e.get()] { raw->PersistLoop(); });
  e->install_thread_ = std::thread([raw = e.get()] { raw->InstallLoop(); });
  e->gc_thread_ = std::thread([raw = e.get()] { raw->GcLoop(); });
  {
    // The writer opens files by their path relative to SOURCE.
    std::string root = config.source;
    if (config.source_is_file) root = std::filesystem::path(root).parent_path().string();
    e->source_root_ = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (e->source_root_ < 0) return Status::FromErrno(errno, "SOURCE '" + root + "'");
  }
  // Dirty data is written back in every mode (readonly too: it was promised).
  // Image mode: every dirty block at mount is one epoch (the epochs of a
  // crashed mount died with it; all of it was acknowledged).
  s = e->SealEpoch(/*all=*/true);
  if (!s.ok()) return s;
  e->StartWriteback();
  if (!formatting && o.mode && *o.mode != sb.mode) {
    if (sb.mode == CacheMode::kCow && e->HasAnyDirty()) {
      return Status::Invalid("cache '" + dir +
                             "' holds an uncommitted cow layer; mount with mode=cow and run "
                             "cachefsctl commit or discard");
    }
    s = e->SetMode(*o.mode);
    if (!s.ok()) return s;
  }
  // Started even with readahead=0: cachefsctl set may turn it on.
  for (int i = 0; i < kReadaheadThreads; ++i) {
    e->ra_threads_.emplace_back([raw = e.get()] { raw->ReadaheadLoop(); });
  }
  return e;
}

Status Engine::Recover() {
  uint32_t slots = static_cast<uint32_t>(sb_.slot_count);
  std::lock_guard<std::mutex> lock(mu_);
  index_ = std::make_unique<BlockIndex>(slots);
  auto policy = MakePolicy(config_.options.policy.value_or("smq"), slots);
  if (!policy.ok()) return policy.status();
  policy_ = std::move(policy.value());
  readers_.assign(slots, 0);
  free_when_unread_.assign(slots, false);
  dirty_slot_.assign(slots, false);
  segments_ =
      std::make_unique<SegmentTable>(slots, SegmentTable::SlotsPerSegment(sb_.block_size, slots));
  gc_low_ = std::max<uint32_t>(1, segments_->segment_count() / 32);
  gc_high_ = std::max<uint32_t>(2, segments_->segment_count() / 16);
  auto durable = meta_->GetDurableEpoch();
  if (!durable.ok()) return durable.status();
  // Versions of epochs up to `trusted` have their data in the store for sure
  // (the persist that closed them completed before its marker was written);
  // later ones may not, after a power loss, and are checked (contract 1c).
  const uint64_t trusted = durable.value();
  uint64_t max_epoch = trusted;
  uint64_t max_seq = 0;
  uint64_t max_block_file_id = 0;  // block records may outlive their file's record
  pinned_slot_.assign(slots, false);
  blocks_pinned_ = 0;
  Status fs = LoadFileFlags();
  if (!fs.ok()) return fs.Prefixed("cache '" + dir_ + "' recovery");
  dirty_subs_.assign(slots, 0);
  uint32_t sub_blocks = sb_.block_size / kSubBlockSize;
  // Records changed by recovery (rolled back, clean sub-blocks dropped, a
  // lost slot conflict), written back in one batch at the end; nullopt:
  // deleted.
  std::map<std::pair<uint64_t, uint64_t>, std::optional<BlockRecord>> fixed;
  std::map<uint64_t, uint64_t> dirty_fix;  // seq -> 0 to delete, 1 to (re)write
  auto fixed_or_stored = [&](const BlockKey& key) -> std::optional<BlockRecord> {
    auto it = fixed.find({key.file_id, key.index});
    if (it != fixed.end()) return it->second;
    auto r = meta_->GetBlock(key.file_id, key.index);
    return r.ok() ? r.value() : std::nullopt;
  };
  auto admit = [&](const BlockRecord& r) {
    uint32_t slot = static_cast<uint32_t>(r.slot);
    IndexInsert({r.file_id, r.index}, slot);
    if (r.AnyDirty()) {
      // Dirty: never a victim; its dirty index entry resumes the writeback.
      dirty_slot_[slot] = true;
      SetDirtySubs(slot, r.DirtyCount());
      AddDirty(r.dirty_seq, BlockKey{r.file_id, r.index});
    } else if (!pinned_slot_[slot]) {  // pinned: never a victim either
      policy_->Track(slot);
    }
  };
  auto evict = [&](const BlockRecord& r) {
    uint32_t slot = static_cast<uint32_t>(r.slot);
    IndexErase(slot);
    if (dirty_slot_[slot]) {
      dirty_slot_[slot] = false;
      SetDirtySubs(slot, 0);
      EraseDirty(r.dirty_seq);
    } else {
      policy_->Remove(slot);
    }
  };
  // Records `chosen` (or the record's removal) in place of `original`, with
  // the dirty index entries that go with it.
  auto fix = [&](const BlockRecord& original, const std::optional<BlockRecord>& chosen) {
    fixed[{original.file_id, original.index}] = chosen;
    if (original.dirty_seq != 0 && (!chosen || chosen->dirty_seq != original.dirty_seq)) {
      dirty_fix[original.dirty_seq] = 0;
    }
    if (chosen && chosen->dirty_seq != 0) dirty_fix[chosen->dirty_seq] = 1;
  };
  auto in_use = [&](uint64_t slot) {
    return slot >= slots || index_->InUse(static_cast<uint32_t>(slot));
  };
  Status s = meta_->ScanAllBlocks([&](const BlockRecord& r) {
    max_block_file_id = std::max(max_block_file_id, r.file_id);
    for (const BlockVersion& v : r.previous) {
      next_generation_ = std::max(next_generation_, v.generation + 1);
      max_epoch = std::max(max_epoch, v.epoch);
      max_seq = std::max(max_seq, v.dirty_seq);
    }
    next_generation_ = std::max(next_generation_, r.generation + 1);
    max_epoch = std::max(max_epoch, r.epoch);
    max_seq = std::max(max_seq, r.dirty_seq);
    if (r.sub_blocks() != sub_blocks) {
      fix(r, std::nullopt);
      return true;
    }
    std::optional<BlockRecord> chosen;
    bool lost = false;
    if (r.slot < slots && index_->InUse(static_cast<uint32_t>(r.slot))) {
      // Two records claim one slot (a slot freed before the removal of its
      // old record was committed, and reused): the one whose data verifies
      // there wins, the other takes another version or goes.
      recovery_.checked++;
      const BlockKey owner_key = index_->Owner(static_cast<uint32_t>(r.slot));
      std::optional<BlockRecord> owner = fixed_or_stored(owner_key);
      BlockVersion mine = r.Current();
      const Verified my_check = VerifyVersion(r.file_id, r.index, &mine);
      if (owner) {
        BlockVersion theirs = owner->Current();
        const Verified their_check = VerifyVersion(owner->file_id, owner->index, &theirs);
        if (my_check.dirty_ok && my_check.Beats(their_check)) {
          evict(*owner);
          BlockRecord winner = r;
          winner.Restore(mine);
          if (winner != r) fix(r, winner);
          admit(winner);
          // The owner tries its other versions (all of them, as stored),
          // in slots still free.
          auto stored = meta_->GetBlock(owner_key.file_id, owner_key.index);
          const BlockRecord loser = stored.ok() && stored.value() ? *stored.value() : *owner;
          bool loser_lost = false;
          std::optional<BlockRecord> other = ChooseVersion(loser, 0, in_use, &loser_lost);
          if (loser_lost && loser.AnyDirty()) recovery_.lost++;
          if (other) {
            recovery_.rolled_back++;
            admit(*other);
          }
          fix(loser, other);
          return true;
        }
      }
      chosen = ChooseVersion(r, 0, in_use, &lost);
    } else if (r.epoch > trusted || r.slot >= slots) {
      recovery_.checked++;
      chosen = ChooseVersion(r, trusted, in_use, &lost);
    } else {
      chosen = r;
    }
    if (!chosen) {
      if (lost && r.AnyDirty()) {
        recovery_.lost++;
        LogError("cache '" + dir_ + "': block " + std::to_string(r.index) + " of file " +
                 std::to_string(r.file_id) +
                 " lost its dirty data at recovery: no version of it survived");
      } else {
        recovery_.rolled_back++;  // to no record: SOURCE's data
      }
      fix(r, std::nullopt);
      return true;
    }
    if (*chosen != r) {
      if (chosen->epoch != r.epoch || chosen->slot != r.slot) recovery_.rolled_back++;
      const bool empty = std::none_of(chosen->valid.begin(), chosen->valid.end(),
                                      [](uint64_t w) { return w != 0; });
      if (empty) {
        fix(r, std::nullopt);
        return true;
      }
      fix(r, chosen);
    }
    admit(*chosen);
    return true;
  });
  if (!s.ok()) return s.Prefixed("cache '" + dir_ + "' recovery");
  for (uint32_t slot = 0; slot < slots; ++slot) {
    if (!index_->InUse(slot)) segments_->Free(slot);
  }
  auto max_id = meta_->MaxFileId();
  if (!max_id.ok()) return max_id.status();
  // Past every id a block record names too: a new file must never find
  // blocks of a file whose record is gone (they would pass their CRCs).
  next_file_id_ = std::max(max_id.value(), max_block_file_id) + 1;
  auto max_dirty = meta_->MaxDirtySeq();
  if (!max_dirty.ok()) return max_dirty.status();
  next_dirty_seq_ = std::max(max_dirty.value(), max_seq) + 1;
  if (!dirty_.empty()) {
    LogInfo("cache '" + dir_ + "': " + std::to_string(dirty_.size()) +
            " dirty blocks to write back");
  }
  if (recovery_.checked > 0) {
    LogInfo("cache '" + dir_ + "': checked " + std::to_string(recovery_.checked) +
            " blocks written after the last persist: " + std::to_string(recovery_.rolled_back) +
            " rolled back, " + std::to_string(recovery_.lost) + " dirty blocks lost");
  }
  MetaBatch batch;
  for (const auto& [key, rec] : fixed) {
    if (rec) {
      batch.Put(*rec);
    } else {
      batch.RemoveBlock(key.first, key.second);
    }
  }
  for (const auto& [seq, keep] : dirty_fix) {
    auto it = dirty_.find(seq);
    if (keep != 0 && it != dirty_.end()) {
      batch.Put(DirtyRecord{seq, it->second.file_id, it->second.index});
    } else if (it == dirty_.end()) {
      batch.RemoveDirty(seq);  // no block kept refers to it
    }
  }
  // Dirty data whose file record is gone (contract 4: cannot be matched to
  // a file) is kept aside, never dropped: a record flagged unmatched and
  // conflict (the writer skips conflicts, so it is never written to
  // whatever SOURCE holds now), listed by cachefsctl conflicts and check.
  for (const auto& [file_id, blocks] : dirty_per_file_) {
    auto rec = meta_->GetFile(file_id);
    if (!rec.ok()) return rec.status();
    if (rec.value()) continue;
    FileRecord kept;
    kept.file_id = file_id;
    kept.flags = FileRecord::kUnmatched | FileRecord::kConflict;
    batch.Put(kept);
    conflict_files_.insert(file_id);
    LogWarning("cache '" + dir_ + "': " + std::to_string(blocks) + " dirty blocks of file " +
               std::to_string(file_id) +
               " whose record is gone: kept aside, not written back (cachefsctl conflicts)");
  }
  auto state = meta_->GetMountState();
  if (!state.ok()) return state.status();
  MountState ms = state.value().value_or(MountState{});
  if (!ms.clean_shutdown && ms.mount_count > 0) {
    LogInfo("cache '" + dir_ + "' was not shut down cleanly; recovered " +
            std::to_string(index_->size()) + " blocks from the metadata");
  }
  if (ms.clean_shutdown && ms.policy == policy_->name() && !ms.policy_hints.empty()) {
    // dm-cache style hints: the policy's state from a clean unmount. After
    // a crash (or with another policy) it starts cold; the blocks stay.
    Status hs = policy_->LoadHints(ms.policy_hints);
    if (!hs.ok()) LogWarning("cache '" + dir_ + "': policy hints not used: " + hs.message());
  }
  ms.policy_hints.clear();  // used once: a crash from here on must not reuse them
  ms.clean_shutdown = false;
  ms.mount_count++;
  batch.Put(ms);
  // Every record kept now points at data read back from the store (or
  // trusted): once the store is persisted, all epochs so far are durable,
  // and this mount's epochs start above every epoch any record holds.
  s = store_->Persist();
  if (!s.ok()) return s.Prefixed("cache '" + dir_ + "' recovery");
  epoch_ = max_epoch + 1;
  durable_epoch_ = max_epoch;
  last_used_epoch_ = max_epoch;
  batch.PutDurable(max_epoch);
  return meta_->Commit(batch, true);
}

std::optional<BlockRecord> Engine::ChooseVersion(const BlockRecord& r, uint64_t durable,
                                                 const std::function<bool(uint64_t)>& taken,
                                                 bool* lost) {
  *lost = false;
  std::vector<BlockVersion> candidates;
  candidates.push_back(r.Current());
  candidates.insert(candidates.end(), r.previous.begin(), r.previous.end());
  for (BlockVersion& v : candidates) {
    if (taken(v.slot)) {
      *lost = true;  // its data may be right, but the slot holds another block's now
      continue;
    }
    if (v.epoch > durable && !VerifyVersion(r.file_id, r.index, &v).dirty_ok) continue;
    BlockRecord chosen = r;
    chosen.Restore(v);
    // Durable from here on (recovery persists the store): nothing older is
    // needed any more.
    chosen.previous.clear();
    if (!chosen.AnyDirty() && chosen.dirty_seq != 0) chosen.dirty_seq = 0;
    *lost = false;
    return chosen;
  }
  // Every version failed its check. The list of versions ends either with
  // one recovery trusts (which does not fail) or with the first version the
  // block ever had since it was last not cached: before it, the block's data
  // was SOURCE's, which is what dropping the record gives back.
  return std::nullopt;
}

Engine::Verified Engine::VerifyVersion(uint64_t file_id, uint64_t index, BlockVersion* v) {
  Verified out;
  const uint32_t subs = static_cast<uint32_t>(v->crc.size());
  thread_local std::unique_ptr<AlignedBuffer> tmp;
  if (!tmp || tmp->size < sb_.block_size) tmp = std::make_unique<AlignedBuffer>(sb_.block_size);
  auto valid = [&](uint32_t i) { return (v->valid[i / 64] >> (i % 64)) & 1; };
  auto clear = [&](std::vector<uint64_t>& bits, uint32_t i) {
    bits[i / 64] &= ~(uint64_t{1} << (i % 64));
  };
  for (uint32_t i = 0; i < subs;) {
    if (!valid(i)) {
      ++i;
      continue;
    }
    uint32_t n = 1;
    while (i + n < subs && valid(i + n)) ++n;
    Status s = store_->Read(v->slot, i * kSubBlockSize, n * kSubBlockSize, tmp->data);
    for (uint32_t k = i; k < i + n; ++k) {
      const char* sub = tmp->data + static_cast<size_t>(k - i) * kSubBlockSize;
      if (s.ok() && SubBlockCrc(file_id, index, v->generation, sub, kSubBlockSize) == v->crc[k]) {
        out.good++;
        if ((v->dirty[k / 64] >> (k % 64)) & 1) out.dirty_good++;
        continue;
      }
      if ((v->dirty[k / 64] >> (k % 64)) & 1) {
        out.dirty_ok = false;
      } else {
        clear(v->valid, k);  // clean: fetched again from SOURCE
      }
    }
    i += n;
  }
  return out;
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> lock(gc_wake_mu_);
    gc_stopping_ = true;
  }
  gc_cv_.notify_all();
  if (gc_thread_.joinable()) gc_thread_.join();
  {
    std::lock_guard<std::mutex> lock(ra_mu_);
    ra_stopping_ = true;
    ra_queue_.clear();
  }
  ra_cv_.notify_all();
  for (auto& t : ra_threads_) t.join();
  StopWriteback();
  {
    std::lock_guard<std::mutex> lock(ra_mu_);
    install_stopping_ = true;
  }
  install_cv_.notify_all();
  if (install_thread_.joinable()) install_thread_.join();
  {
    std::lock_guard<std::mutex> lock(persist_mu_);
    stopping_ = true;
  }
  persist_cv_.notify_all();
  if (persist_thread_.joinable()) persist_thread_.join();
  if (source_root_ >= 0) close(source_root_);
  if (!meta_ || !store_) return;
  std::vector<std::shared_ptr<CachedFile>> live;
  {
    std::lock_guard<std::mutex> lock(files_mu_);
    for (auto& [id, weak] : open_files_) {
      if (auto f = weak.lock()) live.push_back(f);
    }
  }
  for (auto& f : live) {
    Status s = CloseFile(*f);
    if (!s.ok()) LogWarning("cache '" + dir_ + "': " + s.message());
  }
  Status s = Persist();
  if (s.ok()) {
    auto state = meta_->GetMountState();
    MountState ms = state.ok() ? state.value().value_or(MountState{}) : MountState{};
    ms.clean_shutdown = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ms.policy = policy_ ? policy_->name() : "";
      ms.policy_hints = policy_ ? policy_->SaveHints() : "";
    }
    MetaBatch batch;
    batch.Put(ms);
    s = meta_->Commit(batch, true);
  }
  if (!s.ok()) LogError("cache '" + dir_ + "': clean shutdown failed: " + s.message());
}

void Engine::PersistLoop() {
  std::unique_lock<std::mutex> lock(persist_mu_);
  while (!stopping_) {
    // Read each round: cachefsctl set may change it (and wakes us).
    auto interval = std::chrono::milliseconds(tunables_.commit_interval_ms.load());
    const uint64_t seen = persist_reconfigured_;
    persist_cv_.wait_for(lock, interval,
                         [&] { return stopping_ || persist_reconfigured_ != seen; });
    if (persist_reconfigured_ != seen) continue;  // a new interval: start it anew
    if (stopping_) break;
    lock.unlock();
    Status s = Persist();
    if (!s.ok()) LogWarning("periodic persist failed: " + s.message());
    lock.lock();
  }
}

Status Engine::SetMode(CacheMode mode) {
  if (mode == CacheMode::kCow && !config_.source_is_file) {
    return Status::Invalid("mode=cow needs an image SOURCE (a regular file); '" + config_.source +
                           "' is a directory");
  }
  std::lock_guard<std::mutex> switching(mode_switch_mu_);
  const CacheMode from = this->mode();
  if (mode == from) return Status::Ok();
  // Leaving writeback: everything dirty goes to SOURCE first, so no later
  // write through SOURCE can be overwritten by older cached data. The bulk
  // is written back while writes go on; the rest with writes held off.
  Status s = from == CacheMode::kWriteback ? FlushAll() : Status::Ok();
  {
    std::unique_lock<std::mutex> lock(gate_mu_);
    gate_closed_ = true;
    gate_cv_.wait(lock, [this] { return gate_writers_ == 0; });
  }
  if (s.ok() && from == CacheMode::kCow && HasAnyDirty()) {
    // Leaving cow would write the layer back (writeback) or drop it from
    // view (the others): only commit and discard may end it.
    s = Status::Error(EBUSY, std::string("cache '") + dir_ + "' holds an uncommitted cow layer: " +
                                 "run cachefsctl commit or discard first");
  }
  if (s.ok() && from == CacheMode::kWriteback) {
    s = FlushAll();
    if (s.ok() && HasAnyDirty()) {
      s = Status::Error(EBUSY, "data of files in conflict is still dirty (cachefsctl conflicts)");
    }
    if (s.ok()) {
      // Everything is on SOURCE: the files look as SOURCE shows them. (A
      // file whose last writes went through to SOURCE, the cache being
      // full, had nothing dirty left for the flush, which is what drops
      // the overlay otherwise; the other modes never update it, so a stale
      // one would hide what they write.)
      std::vector<std::shared_ptr<CachedFile>> live;
      {
        std::lock_guard<std::mutex> lock(files_mu_);
        for (auto& [id, weak] : open_files_) {
          if (auto f = weak.lock()) live.push_back(f);
        }
      }
      for (auto& f : live) {
        std::lock_guard<std::mutex> lock(f->mu_);
        f->overlay_ = false;
      }
    }
    if (!s.ok()) {
      s = Status::Error(s.code(), std::string("cache '") + dir_ +
                                      "': cannot leave mode=writeback: " + s.message());
    }
  }
  const bool caches_writes = mode == CacheMode::kWriteback || mode == CacheMode::kCow;
  const bool cached_writes = from == CacheMode::kWriteback || from == CacheMode::kCow;
  if (s.ok() && caches_writes && !cached_writes && from != CacheMode::kReadonly) {
    // From now on an fsync syncs the cache, not SOURCE: what the other mode
    // wrote to SOURCE (unsynced) must be durable there first, or an fsync
    // after the switch would promise it without (until session 8).
    // (The image itself, or SOURCE's whole filesystem: syncfs.)
    const int fd = open(config_.source.c_str(), O_RDONLY | O_CLOEXEC);
    const int res = fd < 0 ? -1 : (config_.source_is_file ? fsync(fd) : syncfs(fd));
    const int err = errno;
    if (fd >= 0) close(fd);
    if (res != 0) s = Status::FromErrno(err, "SOURCE '" + config_.source + "': sync");
  }
  if (s.ok()) {
    Superblock sb = sb_;
    sb.mode = mode;
    MetaBatch batch;
    batch.Put(sb);
    s = meta_->Commit(batch, true);
  }
  if (s.ok()) mode_.store(mode, std::memory_order_release);
  {
    std::lock_guard<std::mutex> lock(gate_mu_);
    gate_closed_ = false;
  }
  gate_cv_.notify_all();
  if (s.ok()) {
    LogInfo(std::string("cache '") + dir_ + "': mode " + CacheModeName(from) + " -> " +
            CacheModeName(mode));
  }
  return s;
}

Engine::WriteGuard::WriteGuard(Engine* engine) : engine_(engine) {
  if (engine_ == nullptr) return;
  std::unique_lock<std::mutex> lock(engine_->gate_mu_);
  engine_->gate_cv_.wait(lock, [this] { return !engine_->gate_closed_; });
  engine_->gate_writers_++;
  mode_ = engine_->mode();
}

Engine::WriteGuard::~WriteGuard() {
  if (engine_ == nullptr) return;
  bool last;
  {
    std::lock_guard<std::mutex> lock(engine_->gate_mu_);
    last = --engine_->gate_writers_ == 0 && engine_->gate_closed_;
  }
  if (last) engine_->gate_cv_.notify_all();
}

Status Engine::Persist() {
  const uint64_t ticket = ++sync_tickets_;
  std::lock_guard<std::mutex> lock(sync_mu_);
  if (sync_done_ >= ticket) return Status::Ok();  // a persist that began after us covered us
  const uint64_t covers = sync_tickets_.load();
  std::vector<uint32_t> released;
  std::vector<uint32_t> cleaned;  // clean records this persist syncs
  uint64_t closing;               // the epoch whose data this persist makes durable
  bool mark;
  {
    std::lock_guard<std::mutex> l(mu_);
    released.swap(quarantine_);
    cleaned.swap(clean_pending_);
    // Data tagged with `closing` was written before this point, so the
    // store persist below covers it; data written from now on gets the next
    // epoch. After a failed store persist nothing becomes durable again
    // (the failure is sticky), so the epochs stop: the durable ones stay
    // those up to epoch_ - 2.
    closing = epoch_;
    if (!store_persist_failed_) epoch_++;
    // A marker only when some record has an epoch it does not cover yet:
    // an idle persist then costs no WAL sync.
    mark = last_used_epoch_ > durable_epoch_;
  }
  Status s = store_->Persist();
  if (!s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    store_persist_failed_ = true;
  }
  if (s.ok() && mark) {
    // After the store persist, in the WAL before the sync: whenever this
    // marker survives, the data of every epoch up to `closing` is durable.
    MetaBatch batch;
    batch.PutDurable(closing);
    s = meta_->Commit(batch, false);
  }
  if (s.ok()) {
    SaveCounters();
    s = meta_->SyncWal();
  }
  counters_.persists++;
  std::lock_guard<std::mutex> l(mu_);
  if (!s.ok()) {
    quarantine_.insert(quarantine_.end(), released.begin(), released.end());
    clean_pending_.insert(clean_pending_.end(), cleaned.begin(), cleaned.end());
    return s;
  }
  // Clean in the synced metadata now: victims like any clean block (if the
  // slot still holds a clean block nobody else tracks or pins).
  for (uint32_t slot : cleaned) {
    if (index_->InUse(slot) && !dirty_slot_[slot] && !pinned_slot_[slot] &&
        !policy_->IsTracked(slot)) {
      policy_->Track(slot);
    }
  }
  sync_done_ = covers;
  if (mark) durable_epoch_ = std::max(durable_epoch_, closing);
  // The records that stopped pointing at these slots are synced now, and so
  // is a marker that covers the epochs of the records that replaced them:
  // recovery never rolls back past those (docs/format.md, "Rollback").
  for (uint32_t slot : released) {
    if (readers_[slot] > 0) {
      free_when_unread_[slot] = true;
    } else {
      FreeSlot(slot);
    }
  }
  return Status::Ok();
}

PersistentCounters Engine::Totals() const {
  PersistentCounters t = counters_base_;
  t.read_hits += counters_.read_hits;
  t.read_misses += counters_.read_misses;
  t.write_hits += counters_.write_hits;
  t.write_misses += counters_.write_misses;
  t.bytes_from_cache += counters_.bytes_from_cache;
  t.bytes_from_source += counters_.bytes_from_source;
  t.bytes_written_back += counters_.bytes_written_back;
  return t;
}

void Engine::SaveCounters() {
  // One small record per persist (every commit_interval, every fsync), and
  // none while idle. Counts since the last persist die with a crash.
  PersistentCounters now = Totals();
  if (now == counters_saved_) return;
  MetaBatch batch;
  batch.Put(now);
  Status s = meta_->Commit(batch, false);
  if (s.ok()) {
    counters_saved_ = now;
  } else {
    LogWarning("cache '" + dir_ + "': saving the counters failed: " + s.message());
  }
}

// --- files ------------------------------------------------------------------

Status Engine::FileRecordInto(CachedFile& file, MetaBatch& batch) {
  if (file.detached_) return Status::Ok();
  auto existing = meta_->GetFile(file.file_id_);
  if (!existing.ok()) return existing.status();
  if (!existing.value()) return Status::Ok();  // removed meanwhile
  FileRecord rec = *existing.value();
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    if (!file.record_stale_) return Status::Ok();
    rec.source_ino = file.source_ino_;
    rec.fingerprint = file.fingerprint_;
    rec.size = file.overlay_ ? file.size_ : file.fingerprint_.size;
    rec.mtime_ns = file.overlay_ ? file.mtime_ns_ : file.fingerprint_.mtime_ns;
    rec.ctime_ns = file.fingerprint_.ctime_ns;
    file.record_stale_ = false;
  }
  batch.Put(rec);
  return Status::Ok();
}

Status Engine::WriteFileRecord(CachedFile& file) {
  MetaBatch batch;
  Status s = FileRecordInto(file, batch);
  if (!s.ok() || batch.empty()) return s;
  return meta_->Commit(batch, false);
}

Result<std::shared_ptr<CachedFile>> Engine::OpenFile(const std::string& path,
                                                     const struct stat& st) {
  std::lock_guard<std::mutex> lock(files_mu_);
  Fingerprint now = FingerprintOf(st);
  auto id = meta_->LookupPath(path);
  if (!id.ok()) return id.status();
  if (id.value()) {
    uint64_t file_id = *id.value();
    auto it = open_files_.find(file_id);
    if (it != open_files_.end()) {
      if (auto live = it->second.lock()) {
        bool same = !compare_ino_ || live->source_ino_ == static_cast<uint64_t>(st.st_ino);
        if (same && !live->detached_) {
          auto changed = RevalidateLocked(*live, st);
          if (!changed.ok()) return changed.status();
          return live;
        }
        Detach(*live);  // another file now has this name
      }
    }
    auto rec = meta_->GetFile(file_id);
    if (!rec.ok()) return rec.status();
    auto file = std::shared_ptr<CachedFile>(new CachedFile(file_id));
    file->source_ino_ = static_cast<uint64_t>(st.st_ino);
    file->fingerprint_ = now;
    file->pinned_ = rec.value() && (rec.value()->flags & FileRecord::kPinned) != 0;
    if (!rec.value()) {
      // A name without its record (a crash between two batches): start afresh.
      FileRecord fresh;
      fresh.file_id = file_id;
      fresh.path = path;
      MetaBatch batch;
      batch.Put(fresh);
      Status s = meta_->Commit(batch, false);
      if (!s.ok()) return s;
    }
    bool matches = rec.value() && rec.value()->fingerprint == now &&
                   (!compare_ino_ || rec.value()->source_ino == file->source_ino_);
    if (rec.value() && HasDirty(file_id)) {
      // Data not yet written back: the file is what the record says, and
      // SOURCE must still look as we left it.
      file->overlay_ = true;
      file->size_ = rec.value()->size;
      file->mtime_ns_ = rec.value()->mtime_ns;
      file->fingerprint_ = rec.value()->fingerprint;
      file->conflict_ = (rec.value()->flags & FileRecord::kConflict) != 0;
      // Our own writeback, cut short, changed the same file; another file at
      // the name is not ours to write into.
      const bool same_file = SameSourceFile(rec.value()->source_ino, file->source_ino_);
      if (!matches && same_file && (rec.value()->flags & FileRecord::kWritingBack) != 0) {
        // Our own writeback, cut short: SOURCE holds part of our data, the
        // blocks stay dirty and the writer writes them again.
        file->fingerprint_ = now;
      } else if (!matches && !file->conflict_) {
        Status s = MarkConflict(file_id, file.get());
        if (!s.ok()) return s;
      }
    } else if (!matches) {
      file->epoch_++;
      Status s = DropBlocks(file_id, 0, kNoEnd);
      if (!s.ok()) return s;
      counters_.invalidations++;
      file->record_stale_ = true;
      s = WriteFileRecord(*file);
      if (!s.ok()) return s;
    }
    open_files_[file_id] = file;
    return file;
  }
  uint64_t file_id = next_file_id_++;
  auto file = std::shared_ptr<CachedFile>(new CachedFile(file_id));
  file->source_ino_ = static_cast<uint64_t>(st.st_ino);
  file->fingerprint_ = now;
  FileRecord rec;
  rec.file_id = file_id;
  rec.path = path;
  rec.source_ino = file->source_ino_;
  rec.fingerprint = now;
  rec.size = now.size;
  rec.mtime_ns = now.mtime_ns;
  rec.ctime_ns = now.ctime_ns;
  MetaBatch batch;
  batch.Put(rec);
  batch.Put(path, file_id);
  Status s = meta_->Commit(batch, false);
  if (!s.ok()) return s;
  open_files_[file_id] = file;
  return file;
}

Result<bool> Engine::Revalidate(CachedFile& file, const struct stat& st) {
  {
    // The common case, unchanged, without the engine-wide files_mu_.
    std::lock_guard<std::mutex> lock(file.mu_);
    bool same_ino = !compare_ino_ || file.source_ino_ == static_cast<uint64_t>(st.st_ino);
    if (file.fingerprint_ == FingerprintOf(st) && same_ino) return false;
  }
  std::lock_guard<std::mutex> lock(files_mu_);
  return RevalidateLocked(file, st);
}

Result<bool> Engine::RevalidateLocked(CachedFile& file, const struct stat& st) {
  Fingerprint now = FingerprintOf(st);
  bool conflict = false;
  bool same_ino;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    same_ino = !compare_ino_ || file.source_ino_ == static_cast<uint64_t>(st.st_ino);
    if (file.fingerprint_ == now && same_ino) return false;
    // The writer's own change, or one the FUSE layer is making: adopted
    // when it is done.
    if (file.writing_back_ || file.source_change_) return false;
    conflict = file.overlay_ && !file.conflict_;
  }
  if (conflict || HasDirty(file.file_id_)) {
    // Our own writeback under way since before this file was opened (the
    // round's own live file is `writing_back_`): SOURCE holds part of our
    // data and the record says so. Adopted; the round records the end
    // result. Only while the round runs: a round that failed gave the open
    // file SOURCE's look as it left it, so a change after that is an
    // outside one. (Until session 8 a look at such a file flagged a
    // conflict.)
    bool in_round;
    {
      std::lock_guard<std::mutex> lock(wb_mu_);
      in_round = wb_busy_.count(file.file_id_) != 0;
    }
    auto rec = meta_->GetFile(file.file_id_);
    if (!rec.ok()) return rec.status();
    if (same_ino && in_round && rec.value() &&
        (rec.value()->flags & FileRecord::kWritingBack) != 0) {
      std::lock_guard<std::mutex> lock(file.mu_);
      file.fingerprint_ = now;
      file.source_ino_ = static_cast<uint64_t>(st.st_ino);
      file.record_stale_ = true;
      return false;
    }
    // Changed outside while we hold data for it: never written over; the
    // clean blocks go, the dirty ones stay for cachefsctl conflicts. Fetches
    // that read SOURCE before this change are stale (MarkConflict bumps the
    // epoch too, but only when the conflict is new).
    file.epoch_++;
    Status s = conflict ? MarkConflict(file.file_id_, &file) : Status::Ok();
    if (!s.ok()) return s;
    s = DropBlocks(file.file_id_, 0, kNoEnd, /*keep_dirty=*/true);
    if (!s.ok()) return s;
    return true;
  }
  file.epoch_++;  // fetches that read SOURCE before are stale
  counters_.invalidations++;
  Status s = DropBlocks(file.file_id_, 0, kNoEnd);
  if (!s.ok()) return s;  // the old fingerprint stays: the next look drops again
  // The new fingerprint only once the old blocks are gone: until then a
  // concurrent Revalidate (an open) does not take its fast path but waits
  // here for files_mu_, so an open that starts after the change was seen
  // reads none of the old blocks (contract 5; until session 9 it could).
  std::lock_guard<std::mutex> lock(file.mu_);
  file.fingerprint_ = now;
  file.source_ino_ = static_cast<uint64_t>(st.st_ino);
  file.record_stale_ = true;
  return true;
}

Status Engine::MarkConflict(uint64_t file_id, CachedFile* live) {
  if (live != nullptr) {
    std::lock_guard<std::mutex> lock(live->mu_);
    live->conflict_ = true;
    live->epoch_++;
  }
  counters_.conflicts++;
  auto rec = meta_->GetFile(file_id);
  if (!rec.ok()) return rec.status();
  if (!rec.value()) return Status::Ok();
  FileRecord r = *rec.value();
  LogError("conflict: '" + r.path +
           "' changed in SOURCE while it had data not yet written back; the cached data is kept "
           "and not written back (cachefsctl conflicts)");
  r.flags |= FileRecord::kConflict;
  {
    std::lock_guard<std::mutex> lock(mu_);
    conflict_files_.insert(file_id);
  }
  MetaBatch batch;
  batch.Put(r);
  return meta_->Commit(batch, false);
}

Status Engine::CloseFile(CachedFile& file) {
  if (kept_blocks_.load(std::memory_order_relaxed) > 0) {
    // The handle whose stream it was read ahead for is most likely this
    // one (the engine does not count handles: another handle's stream
    // reads those blocks again).
    std::lock_guard<std::mutex> lock(mu_);
    DropKept(file.file_id_, 0, kNoEnd);
  }
  std::lock_guard<std::mutex> lock(files_mu_);
  return WriteFileRecord(file);
}

// Our own changes of SOURCE (contract 5): the new fingerprint and the blocks
// the change made stale go to the metadata in one batch, so a crash right
// after cannot make the next mount take our change for an outside one.
Status Engine::CommitOwnChange(CachedFile& file, const struct stat& st, uint64_t from_index,
                               uint64_t to_index, const std::pair<uint64_t, uint64_t>* wrote) {
  std::lock_guard<std::mutex> lock(files_mu_);
  {
    std::lock_guard<std::mutex> file_lock(file.mu_);
    if (wrote != nullptr) {
      const uint64_t was = file.fingerprint_.size;
      const uint64_t now = static_cast<uint64_t>(st.st_size);
      if (now < was || now > std::max(was, wrote->first + wrote->second)) {
        from_index = 0;
        to_index = kNoEnd;
        counters_.invalidations++;
      }
    }
    file.fingerprint_ = FingerprintOf(st);
    file.source_ino_ = static_cast<uint64_t>(st.st_ino);
    file.record_stale_ = true;
    file.epoch_++;
  }
  MetaBatch batch;
  std::vector<uint32_t> dropped;
  Status s = from_index < to_index
                 ? DropBlocksInto(file.file_id_, from_index, to_index, batch, dropped)
                 : Status::Ok();
  if (!s.ok()) return s;
  s = FileRecordInto(file, batch);
  if (!s.ok() || batch.empty()) return s;
  s = meta_->Commit(batch, false);
  // After a failed commit the records still point at the slots: they stay
  // out of use until the next mount rather than be reused under them.
  if (s.ok()) ReleaseDropped(dropped);
  return s;
}

Status Engine::AfterWrite(CachedFile& file, uint64_t off, uint64_t len, const struct stat& st) {
  uint64_t bs = sb_.block_size;
  uint64_t end = off + len < off ? kNoEnd : (off + len + bs - 1) / bs;
  const std::pair<uint64_t, uint64_t> wrote{off, off + len < off ? kNoEnd - off : len};
  return CommitOwnChange(file, st, off / bs, len == 0 ? 0 : end, &wrote);
}

Status Engine::AfterTruncate(CachedFile& file, const struct stat& st) {
  uint64_t old_size;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    old_size = file.fingerprint_.size;
  }
  uint64_t cut = std::min(old_size, static_cast<uint64_t>(st.st_size));
  return CommitOwnChange(file, st, cut / sb_.block_size, kNoEnd);
}

Status Engine::Adopt(CachedFile& file, const struct stat& before, const struct stat& after) {
  bool unchanged;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    const Fingerprint was = FingerprintOf(before);
    unchanged = file.fingerprint_ == was;
    // A time set through the mount (utimens) is the file's mtime as the
    // mount shows it, over dirty data too: the writer puts it on SOURCE
    // with the data. (Until session 8 the time of the last write won.)
    const int64_t set = FingerprintOf(after).mtime_ns;
    if (unchanged && file.overlay_ && set != was.mtime_ns) file.mtime_ns_ = set;
  }
  if (unchanged) return CommitOwnChange(file, after, 0, 0);
  auto changed = Revalidate(file, after);
  return changed.ok() ? Status::Ok() : changed.status();
}

Status Engine::Rename(const std::string& from, const std::string& to, bool is_dir,
                      const struct stat& before, const struct stat& after) {
  std::lock_guard<std::mutex> lock(files_mu_);
  MetaBatch batch;
  std::vector<std::pair<std::string, uint64_t>> moving;
  Status s = PathsAt(from, is_dir, &moving);
  if (!s.ok()) return s;
  std::optional<uint64_t> replaced;
  if (!is_dir) {
    auto target = meta_->LookupPath(to);
    if (!target.ok()) return target.status();
    const std::optional<uint64_t> source =
        moving.empty() ? std::nullopt : std::optional<uint64_t>(moving.front().second);
    if (target.value() && target.value() != source) replaced = target.value();
    if (!source && target.value()) batch.RemovePath(to);
  }
  for (const auto& [p, id] : moving) batch.RemovePath(p);
  std::map<uint64_t, FileRecord> records;
  s = MoveNamesInto(moving, from, to, is_dir, FingerprintOf(before), FingerprintOf(after), batch,
                    records);
  if (!s.ok()) return s;
  for (const auto& [id, r] : records) batch.Put(r);
  if (replaced) {
    auto it = open_files_.find(*replaced);
    if (it != open_files_.end()) {
      if (auto live = it->second.lock()) Detach(*live);
    }
    s = DropBlocks(*replaced, 0, kNoEnd);
    if (!s.ok()) return s;
    batch.RemoveFile(*replaced);
  }
  return meta_->Commit(batch, false);
}

Status Engine::MoveNamesInto(const std::vector<std::pair<std::string, uint64_t>>& entries,
                             const std::string& from, const std::string& to, bool is_dir,
                             const Fingerprint& before, const Fingerprint& after, MetaBatch& batch,
                             std::map<uint64_t, FileRecord>& records) {
  for (const auto& [p, id] : entries) {
    const std::string moved = to + p.substr(from.size());
    batch.Put(moved, id);
    auto it = records.find(id);
    if (it == records.end()) {
      auto rec = meta_->GetFile(id);
      if (!rec.ok()) return rec.status();
      if (rec.value()) it = records.emplace(id, *rec.value()).first;
    }
    FileRecord* r = it == records.end() ? nullptr : &it->second;
    // The record keeps its name unless it was this one (another hard link).
    if (r != nullptr && r->path == p) r->path = moved;
    // The move changed the file's ctime: our own change, not an outside one.
    if (!is_dir) AdoptOwnAttributeChange(id, before, after, r);
  }
  return Status::Ok();
}

Status Engine::PathsAt(const std::string& path, bool is_dir,
                       std::vector<std::pair<std::string, uint64_t>>* out) {
  if (is_dir) {
    return meta_->ScanPaths(path + "/", [&](const std::string& p, uint64_t id) {
      out->emplace_back(p, id);
      return true;
    });
  }
  auto id = meta_->LookupPath(path);
  if (!id.ok()) return id.status();
  if (id.value()) out->emplace_back(path, *id.value());
  return Status::Ok();
}

Status Engine::Exchange(const std::string& a, const std::string& b, bool a_is_dir, bool b_is_dir,
                        const struct stat& a_before, const struct stat& b_before,
                        const struct stat& a_after, const struct stat& b_after) {
  std::lock_guard<std::mutex> lock(files_mu_);
  std::vector<std::pair<std::string, uint64_t>> at_a, at_b;
  Status s = PathsAt(a, a_is_dir, &at_a);
  if (s.ok()) s = PathsAt(b, b_is_dir, &at_b);
  if (!s.ok()) return s;
  // Every old name goes before any new one is put: the two sets of names
  // overlap (a file at `a` takes `b`, the one at `b` takes `a`).
  MetaBatch batch;
  for (const auto& [p, id] : at_a) batch.RemovePath(p);
  for (const auto& [p, id] : at_b) batch.RemovePath(p);
  std::map<uint64_t, FileRecord> records;  // each put once, however many names move
  s = MoveNamesInto(at_a, a, b, a_is_dir, FingerprintOf(a_before), FingerprintOf(a_after), batch,
                    records);
  if (s.ok()) {
    s = MoveNamesInto(at_b, b, a, b_is_dir, FingerprintOf(b_before), FingerprintOf(b_after), batch,
                      records);
  }
  if (!s.ok()) return s;
  for (const auto& [id, r] : records) batch.Put(r);
  if (batch.empty()) return Status::Ok();
  return meta_->Commit(batch, false);
}

Status Engine::Unlink(const std::string& path, bool last_link, const struct stat* before,
                      const struct stat* after) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto id = meta_->LookupPath(path);
  if (!id.ok() || !id.value()) return id.status();
  MetaBatch batch;
  batch.RemovePath(path);
  if (!last_link) {
    const uint64_t file_id = *id.value();
    auto rec = meta_->GetFile(file_id);
    if (!rec.ok()) return rec.status();
    if (rec.value()) {
      FileRecord r = *rec.value();
      if (r.path == path) {
        // The writer opens the file by its record's name: another one. A
        // search of every name, but only when the name removed is the one
        // the record keeps (Link keeps the newest).
        std::string other;
        Status s = meta_->ScanPaths("", [&](const std::string& p, uint64_t pid) {
          if (pid != file_id || p == path) return true;
          other = p;
          return false;
        });
        if (!s.ok()) return s;
        // No other name known (a link made outside the mount): the record
        // keeps the old one; the writer fails on it until the file is opened
        // by another name (OpenFile) or `cachefsctl check` sets it right.
        if (!other.empty()) r.path = other;
      }
      if (before != nullptr && after != nullptr) {
        AdoptOwnAttributeChange(file_id, FingerprintOf(*before), FingerprintOf(*after), &r);
      }
      batch.Put(r);
    }
  }
  if (last_link) {
    uint64_t file_id = *id.value();
    auto it = open_files_.find(file_id);
    if (it != open_files_.end()) {
      if (auto live = it->second.lock()) Detach(*live);
    }
    Status s = DropBlocks(file_id, 0, kNoEnd);
    if (!s.ok()) return s;
    batch.RemoveFile(file_id);
  }
  return meta_->Commit(batch, false);
}

Status Engine::Link(const std::string& existing, const std::string& new_path) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto id = meta_->LookupPath(existing);
  if (!id.ok() || !id.value()) return id.status();
  MetaBatch batch;
  batch.Put(new_path, *id.value());
  auto rec = meta_->GetFile(*id.value());
  if (!rec.ok()) return rec.status();
  if (rec.value()) {
    FileRecord r = *rec.value();
    r.path = new_path;
    batch.Put(r);
  }
  return meta_->Commit(batch, false);
}

bool Engine::Knows(const std::string& path) {
  auto id = meta_->LookupPath(path);
  return id.ok() && id.value().has_value();
}

void Engine::AdoptOwnAttributeChange(uint64_t file_id, const Fingerprint& before,
                                     const Fingerprint& after, FileRecord* r) {
  if (r != nullptr && r->fingerprint == before) {
    r->fingerprint = after;
    r->ctime_ns = after.ctime_ns;
    // Size and mtime are the file's as the mount shows it: SOURCE's only
    // while nothing is dirty (until session 8 a rename of a file nobody had
    // open set them to SOURCE's, hiding dirty data past SOURCE's end).
    if (!HasDirty(file_id)) {
      r->size = after.size;
      r->mtime_ns = after.mtime_ns;
    }
  }
  auto it = open_files_.find(file_id);
  if (it != open_files_.end()) {
    if (auto live = it->second.lock()) {
      std::lock_guard<std::mutex> file_lock(live->mu_);
      if (live->fingerprint_ == before) live->fingerprint_ = after;
    }
  }
}

// --- blocks -------------------------------------------------------------------

void Engine::FreeSlot(uint32_t slot) { segments_->Free(slot); }

void Engine::ReleaseReader(uint32_t slot) {
  if (--readers_[slot] == 0 && free_when_unread_[slot]) {
    free_when_unread_[slot] = false;
    FreeSlot(slot);
  }
}

std::optional<uint32_t> Engine::AllocateSlot(Evicted& evicted, const BlockKey* admit, bool log) {
  // A read miss is cached only if the policy admits it (scan resistance);
  // dirty data always is.
  if (admit != nullptr &&
      !policy_->Admit(BlockKeyHash(admit->file_id, admit->index), segments_->free_slots() == 0)) {
    counters_.not_admitted++;
    return std::nullopt;
  }
  if (log) {
    bool opened = false;
    auto slot = segments_->TakeLog(&opened);
    if (!slot || (opened && segments_->empty_segments() < gc_low_)) WakeGc();
    if (slot) return slot;
    // No wholly free segment yet: any free slot (or a victim) rather than
    // fail while clean space can be had.
  }
  if (auto slot = segments_->TakeAny()) return slot;
  for (int tries = 0; tries < 64; ++tries) {
    auto victim = policy_->Victim();
    if (!victim) return std::nullopt;
    uint32_t v = *victim;
    const BlockKey owner = index_->Owner(v);
    if (readers_[v] > 0 || fetches_.count({owner.file_id, owner.index}) != 0) {
      policy_->Touch(v);  // being read or held: try the next one
      continue;
    }
    IndexErase(v);
    policy_->Remove(v);
    Evict(owner, evicted);
    counters_.evictions++;
    return v;
  }
  return std::nullopt;
}

void Engine::Evict(const BlockKey& key, Evicted& evicted) {
  evicted.batch.RemoveBlock(key.file_id, key.index);
  auto hold = std::make_shared<Fetch>(key.index, 0);
  fetches_[{key.file_id, key.index}] = hold;
  evicted.held.emplace_back(key.file_id, std::move(hold));
}

Status Engine::CommitEvicted(Evicted& evicted) {
  Status s = evicted.batch.empty() ? Status::Ok() : meta_->Commit(evicted.batch, false);
  for (const auto& [file_id, hold] : evicted.held) UnlockBlock(file_id, hold);
  evicted.batch.Clear();
  evicted.held.clear();
  return s;
}

Status Engine::DropBlocksInto(uint64_t file_id, uint64_t from_index, uint64_t to_index,
                              MetaBatch& batch, std::vector<uint32_t>& freed, bool keep_dirty) {
  std::vector<uint64_t> doomed;
  if (to_index - from_index <= kDropByIndexLimit) {
    // A write's few blocks: the index knows every record (recovery loads
    // them all), so no scan of the file's records is needed.
    std::lock_guard<std::mutex> lock(mu_);
    for (uint64_t index = from_index; index < to_index; ++index) {
      if (index_->Find({file_id, index})) doomed.push_back(index);
    }
  } else {
    Status s = meta_->ScanBlocks(file_id, [&](const BlockRecord& r) {
      if (r.index >= to_index) return false;
      if (r.index >= from_index) doomed.push_back(r.index);
      return true;
    });
    if (!s.ok()) return s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  // Kept readahead data of these blocks goes too: whatever made them stale
  // (an outside change, a truncate) makes it stale as well.
  DropKept(file_id, from_index, to_index);
  // A block somebody holds (a writer between reading the index and its
  // commit, a fetch) is dropped too, present in the index or not: its
  // holder must not commit a record after this drop.
  for (auto it = fetches_.lower_bound({file_id, from_index});
       it != fetches_.end() && it->first.first == file_id && it->first.second < to_index; ++it) {
    auto slot = index_->Find({file_id, it->first.second});
    if (keep_dirty && slot && dirty_slot_[*slot]) continue;
    it->second->dropped = true;
  }
  std::map<uint64_t, uint64_t> dirty_seq;  // index -> seq, of this file's dirty blocks
  for (const auto& [seq, key] : dirty_) {
    if (key.file_id == file_id) dirty_seq[key.index] = seq;
  }
  for (uint64_t index : doomed) {
    auto slot = index_->Find({file_id, index});
    if (slot && dirty_slot_[*slot]) {
      if (keep_dirty) continue;
      // Dropping dirty data (truncated away, or its file is gone).
      auto it = dirty_seq.find(index);
      if (it != dirty_seq.end()) {
        batch.RemoveDirty(it->second);
        EraseDirty(it->second);
      }
      dirty_slot_[*slot] = false;
      SetDirtySubs(*slot, 0);
    }
    batch.RemoveBlock(file_id, index);
    if (!slot) continue;
    IndexErase(*slot);
    policy_->Remove(*slot);
    // The record stays in the metadata until the caller commits `batch`,
    // and may come back after a power loss until that is synced: the slot
    // is quarantined once the batch is committed (ReleaseDropped), never
    // before, or a persist in between could free it for reuse while the
    // record still points at it.
    freed.push_back(*slot);
  }
  // Readers find none of these blocks from now on: a read that found one
  // before may have served bytes older than the epoch it saw, so the
  // kernel's pages are not to be trusted past this (CachedFile::PagesVersion).
  if (auto it = open_files_.find(file_id); it != open_files_.end()) {
    if (auto live = it->second.lock()) live->drops_++;
  }
  return Status::Ok();
}

void Engine::ReleaseDropped(const std::vector<uint32_t>& freed) {
  std::lock_guard<std::mutex> lock(mu_);
  for (uint32_t slot : freed) QuarantineSlot(slot);
}

Status Engine::DropBlocks(uint64_t file_id, uint64_t from_index, uint64_t to_index, bool keep_dirty,
                          uint64_t* dropped) {
  MetaBatch batch;
  std::vector<uint32_t> freed;
  Status s = DropBlocksInto(file_id, from_index, to_index, batch, freed, keep_dirty);
  if (dropped != nullptr) *dropped = freed.size();
  if (!s.ok() || batch.empty()) return s;
  s = meta_->Commit(batch, false);
  if (s.ok()) ReleaseDropped(freed);  // (see CommitOwnChange)
  return s;
}

Result<bool> Engine::TryHit(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end,
                            char* out, StoreRead how) {
  BlockKey key{file.file_id_, index};
  uint32_t slot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto found = index_->Find(key);
    if (!found) return false;
    slot = *found;
    readers_[slot]++;
  }
  uint32_t first = begin / kSubBlockSize;
  uint32_t last = (end + kSubBlockSize - 1) / kSubBlockSize;  // exclusive
  bool usable = false;
  bool partial = false;  // a sound block without all of the range: the fetch fills it in
  bool corrupt = false;
  auto rec = meta_->GetBlock(key.file_id, index);
  if (rec.ok() && rec.value() && rec.value()->slot == slot) {
    const BlockRecord& r = *rec.value();
    usable = true;
    bool dirty = false;
    for (uint32_t i = first; i < last && usable; ++i) {
      usable = r.IsValid(i);
      dirty = dirty || r.IsDirty(i);
    }
    partial = !usable;
    // Data written through the mount is likely still in the store's page
    // cache, maybe not yet written out: a direct read would wait for that.
    if (dirty) how = StoreRead::kCached;
    if (usable) {
      uint32_t off = first * kSubBlockSize;
      uint32_t len = (last - first) * kSubBlockSize;
      // One buffer per thread, kept: a hit allocates nothing.
      thread_local std::unique_ptr<AlignedBuffer> tmp;
      if (!tmp || tmp->size < len) tmp = std::make_unique<AlignedBuffer>(len);
      Status s = store_->Read(slot, off, len, tmp->data, how);
      if (!s.ok()) {
        LogWarning("cache store read failed, reading SOURCE instead: " + s.message());
        usable = false;
      } else if (tunables_.verify.load(std::memory_order_relaxed)) {
        for (uint32_t i = first; i < last; ++i) {
          const char* sub = tmp->data + static_cast<size_t>(i - first) * kSubBlockSize;
          if (SubBlockCrc(key.file_id, index, r.generation, sub, kSubBlockSize) != r.crc[i]) {
            corrupt = true;
            usable = false;
            break;
          }
        }
      }
      if (usable) std::memcpy(out, tmp->data + (begin - off), end - begin);
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (usable) {
    if (index_->Find(key) == slot) policy_->Touch(slot);
    ReleaseReader(slot);
    counters_.read_hits++;
    counters_.bytes_from_cache += end - begin;
    return true;
  }
  if (corrupt && dirty_slot_[slot]) {
    // Not yet on SOURCE: there is nothing correct to serve (contract 6).
    counters_.crc_errors++;
    ReleaseReader(slot);
    LogError("CRC mismatch in dirty cached block " + std::to_string(index) + " of file " +
             std::to_string(file.file_id_) + ": read fails with EIO");
    return Status::Error(EIO, "CRC mismatch in dirty cached data");
  }
  if (corrupt) {
    counters_.crc_errors++;
    LogWarning("CRC mismatch in cached block " + std::to_string(index) + " of file " +
               std::to_string(file.file_id_) + ": dropped and fetched again from SOURCE");
  }
  // Corrupt, unreadable, or its record gone: drop it so the miss path
  // fetches it anew. The record goes in the same critical section, so it
  // cannot remove a newer record of a fetch that follows. Not while the
  // block is held (a writer or a fetch): a record that no longer names the
  // slot we found may be the holder's, committed just before it moves the
  // index; the reader waits for the holder instead (ReadAt) and looks again.
  if (!partial && index_->Find(key) == slot && !dirty_slot_[slot] &&
      fetches_.count({key.file_id, index}) == 0) {
    IndexErase(slot);
    policy_->Remove(slot);
    free_when_unread_[slot] = true;
    MetaBatch drop;
    drop.RemoveBlock(key.file_id, index);
    Status s = meta_->Commit(drop, false);
    if (!s.ok()) LogWarning("dropping a cached block failed: " + s.message());
  }
  ReleaseReader(slot);
  return false;
}

Engine::InstallOutcome Engine::Install(CachedFile& file, uint64_t index, uint64_t epoch,
                                       const char* data, uint32_t first_sub, size_t bytes,
                                       bool force, StoreWrite how) {
  const BlockKey key{file.file_id_, index};
  const uint32_t subs = static_cast<uint32_t>((bytes + kSubBlockSize - 1) / kSubBlockSize);
  Evicted evicted;
  std::optional<uint32_t> slot;
  bool fill = false;
  uint64_t generation = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (file.epoch_.load() != epoch) return InstallOutcome::kSkipped;  // stale before it started
    if (auto found = index_->Find(key)) {
      slot = *found;
      readers_[*slot]++;  // not evicted or reused while we fill it
      fill = true;
    } else {
      // Warm and pinned files are cached whatever admission says.
      force = force || pinned_files_.count(key.file_id) != 0;
      slot = AllocateSlot(evicted, force ? nullptr : &key);
      if (!slot) return force ? InstallOutcome::kNoRoom : InstallOutcome::kSkipped;
      generation = next_generation_++;
    }
  }
  // The victim's record goes before its slot is written: a crash in between
  // must not leave a record pointing at another block's data.
  if (Status s = CommitEvicted(evicted); !s.ok()) {
    LogWarning("evicting a cached block failed: " + s.message());
  }
  BlockRecord rec;
  BlockRecord before;
  bool ok = true;
  if (fill) {
    auto r = meta_->GetBlock(key.file_id, index);
    ok = r.ok() && r.value() && r.value()->slot == *slot;
    if (ok) rec = before = *r.value();
  } else {
    rec = BlockRecord::Empty(key.file_id, index, sb_.block_size);
    rec.slot = *slot;
    rec.generation = generation;
  }
  // Only sub-blocks not yet valid are written: valid data is never
  // overwritten in place (contract 2).
  bool added = false;
  // Nor data an older version in this slot holds, which recovery may roll
  // back to.
  auto held = [&](uint32_t sub) {
    if (rec.IsValid(sub)) return true;
    for (const BlockVersion& v : rec.previous) {
      if (v.slot == rec.slot && ((v.valid[sub / 64] >> (sub % 64)) & 1)) return true;
    }
    return false;
  };
  for (uint32_t i = 0; ok && i < subs;) {
    uint32_t sub = first_sub + i;
    if (sub >= rec.sub_blocks() || held(sub)) {
      ++i;
      continue;
    }
    uint32_t n = 1;
    while (i + n < subs && sub + n < rec.sub_blocks() && !held(sub + n)) ++n;
    const char* src = data + static_cast<size_t>(i) * kSubBlockSize;
    Status s = store_->Write(*slot, sub * kSubBlockSize, n * kSubBlockSize, src, how);
    if (!s.ok()) {
      LogWarning("caching a block failed (served from SOURCE): " + s.message());
      ok = false;
      break;
    }
    for (uint32_t k = 0; k < n; ++k) {
      rec.SetValid(sub + k, true);
      rec.crc[sub + k] = SubBlockCrc(key.file_id, index, rec.generation,
                                     src + static_cast<size_t>(k) * kSubBlockSize, kSubBlockSize);
    }
    added = true;
    i += n;
  }
  bool committed = false;
  // The epoch check and the commit are one step against CommitOwnChange
  // (which bumps the epoch and drops blocks under files_mu_): a truncate
  // either finds this record and drops it, or this fetch sees the new
  // epoch and puts nothing. (Putting it and taking it back after, as
  // below for other changes, leaves a window in which a kill -9 keeps the
  // record of a block truncated away.) A detached file (Detach, under
  // files_mu_ too) caches nothing: its id may be another file's now, and
  // a fetch a read started after the detach has the bumped epoch.
  std::unique_lock<std::mutex> files_lock(files_mu_);
  const bool attached = !file.detached_;
  if (ok && added && attached && file.epoch_.load() == epoch) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      SealVersion(fill ? &before : nullptr, &rec);
    }
    MetaBatch batch;
    batch.Put(rec);
    Status s = meta_->Commit(batch, false);
    committed = s.ok();
    if (!s.ok()) LogWarning("caching a block failed (served from SOURCE): " + s.message());
  }
  bool undo = false;
  bool restore = false;  // undo a fill by putting back the record as it was before
  bool cached = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    bool current = attached && file.epoch_.load() == epoch;
    if (fill) {
      if (committed && !current && index_->Find(key) == slot && !dirty_slot_[*slot]) {
        // The file changed while we fetched: the block may mix old and new
        // data, so it goes.
        IndexErase(*slot);
        policy_->Remove(*slot);
        free_when_unread_[*slot] = true;
      }
      undo = committed && !(current && index_->Find(key) == slot);
      // Still indexed after that: a block with dirty data, which stays; only
      // the fill is taken back.
      restore = undo && index_->Find(key) == slot;
      cached = ok && current && index_->Find(key) == slot;
      ReleaseReader(*slot);
    } else if (committed && current && !index_->Find(key)) {
      IndexInsert(key, *slot);
      if (!pinned_slot_[*slot]) policy_->TrackAdmitted(*slot, BlockKeyHash(key.file_id, key.index));
      cached = true;
      counters_.promotions++;
    } else {
      FreeSlot(*slot);
      undo = committed;
    }
  }
  // Only this fetch's leader puts records of this block, and drops wait for
  // files_mu_, so the undo cannot hit a newer record. A fill never removes
  // the record of a block with dirty data (until session 8 it did, when an
  // epoch bump outside files_mu_ came between the commit and the look at
  // the epoch above): it puts back the record from before the fill.
  if (undo) {
    MetaBatch batch;
    if (restore) {
      batch.Put(before);
    } else {
      batch.RemoveBlock(key.file_id, index);
    }
    Status s = meta_->Commit(batch, false);
    if (!s.ok()) LogWarning("dropping a cached block failed: " + s.message());
  }
  files_lock.unlock();
  return cached ? InstallOutcome::kCached : InstallOutcome::kSkipped;
}

Result<std::pair<std::shared_ptr<char>, size_t>> Engine::FetchRun(
    CachedFile& file, int fd, uint64_t from, uint64_t to,
    const std::vector<std::shared_ptr<Fetch>>& run, bool defer_install,
    const std::function<void()>& reply_eio) {
  const uint64_t bs = sb_.block_size;
  const size_t len = static_cast<size_t>(to - from);
  std::shared_ptr<char> buf(static_cast<char*>(std::aligned_alloc(kSubBlockSize, len)), std::free);
  Result<size_t> n = Status::Error(ENOMEM, "out of memory");
  bool expired = false;  // the deadline passed: the run is failed and unregistered already
  if (buf && reply_eio && timeout_backing_) {
    // On this thread, no hand-off (docs/benchmarks.md: two thread wake-ups
    // per miss); the watchdog answers for us if SOURCE hangs.
    const std::function<void()> on_expired = [&] {
      expired = true;
      const Status timed_out = Status::Error(
          EIO, "read from the source timed out after " +
                   std::to_string(static_cast<int64_t>(config_.options.source_timeout * 1000)) +
                   " ms");
      for (const auto& f : run) {
        {
          std::lock_guard<std::mutex> lock(f->mu);
          f->status = timed_out;
          f->done = true;
        }
        f->cv.notify_all();  // waiters fail now, not when SOURCE answers
      }
      InstallRun(file, run);  // unregisters, installs nothing
      reply_eio();
    };
    n = timeout_backing_->ReadDirect(fd, from, len, buf.get(), on_expired);
  } else if (buf) {
    n = backing_->Read(fd, from, len, buf.get());
  }
  if (expired) return n.status();
  Status status = n.ok() ? Status::Ok() : n.status();
  size_t got = n.ok() ? n.value() : 0;
  if (got > 0) {
    counters_.bytes_from_source += got;
    std::memset(buf.get() + got, 0, AlignedBuffer::RoundUp(got) - got);  // the tail of EOF
  }
  for (const auto& f : run) {
    uint64_t start = f->index * bs;
    uint64_t lo = std::max(start, from);
    uint64_t hi = std::min(start + bs, from + got);
    {
      std::lock_guard<std::mutex> lock(f->mu);
      f->status = status;
      if (status.ok() && hi > lo) {
        f->stream = len >= kStreamFetch;
        f->from = static_cast<uint32_t>(lo - start);
        f->bytes = static_cast<uint32_t>(hi - lo);
        f->data = buf;
        f->data_off = lo - from;
        if (!f->warm) counters_.read_misses++;  // Warm counts what it cached
      }
      f->done = true;
    }
    // Waiters are served from the buffer now; the fetch stays registered
    // until the block is installed, so nobody fetches it again meanwhile.
    f->cv.notify_all();
  }
  bool deferred = false;
  bool wake = false;
  if (defer_install && status.ok()) {
    // The reader need not wait for the store write and the commit: the
    // installer thread does them after the reply. A crash before then loses
    // nothing but the chance to cache this data.
    std::lock_guard<std::mutex> lock(ra_mu_);
    if (!ra_stopping_ && install_queue_.size() < kMaxQueuedInstalls) {
      install_queue_.push_back(InstallJob{file.shared_from_this(), run});
      deferred = true;
      // A busy installer polls the queue: waking it for every miss would
      // cost the reader a futex call and a thread switch before its reply
      // (docs/benchmarks.md, "What was tried").
      wake = installer_asleep_ || install_queue_.size() >= kInstallBatch;
    }
  }
  if (wake) install_cv_.notify_all();
  if (!deferred) InstallRun(file, run);
  if (!status.ok()) return status;
  return std::make_pair(std::move(buf), got);
}

void Engine::InstallRun(CachedFile& file, const std::vector<std::shared_ptr<Fetch>>& run) {
  for (const auto& f : run) {
    if (f->no_install) {
      counters_.bypassed++;
    } else if (f->status.ok() && f->data) {
      f->outcome =
          Install(file, f->index, f->epoch, f->data.get() + f->data_off, f->from / kSubBlockSize,
                  f->bytes, f->warm, f->stream ? StoreWrite::kStream : StoreWrite::kKeep);
    }
    {
      // Read ahead: kept for the reader, or it would read the block again
      // (from SOURCE, offering it to the policy again, or from the store).
      // Not a fill: the cached block's own sub-blocks win there. The
      // fetch's lock, then the engine's: a reader served from the fetch
      // meanwhile either set its flags before (nothing or a used block
      // kept) or finds the kept block after (ReadAt).
      const bool keep = f->readahead && f->status.ok() && f->data && f->bytes > 0 &&
                        (f->outcome != InstallOutcome::kCached || !f->fill);
      std::unique_lock<std::mutex> fetch_lock(f->mu, std::defer_lock);
      if (keep) fetch_lock.lock();
      std::lock_guard<std::mutex> lock(mu_);
      fetches_.erase({file.file_id_, f->index});
      // In the same step as the unregistering: a writer's LockBlock that
      // waited for this fetch finds the kept data and lets it go.
      if (keep && !f->served_to_end) KeepFetched(file, *f, f->served);
    }
    {
      std::lock_guard<std::mutex> lock(f->mu);
      f->installed = true;
    }
    f->cv.notify_all();
  }
}

void Engine::InstallLoop() {
  std::unique_lock<std::mutex> lock(ra_mu_);
  const auto ready = [this] { return install_stopping_ || !install_queue_.empty(); };
  int idle_polls = kInstallIdlePolls;  // asleep until the first job
  while (true) {
    if (!ready()) {
      if (idle_polls >= kInstallIdlePolls) {
        // Idle for a while: asleep until a reader queues a job and wakes us.
        installer_asleep_ = true;
        install_cv_.wait(lock, ready);
        installer_asleep_ = false;
      } else if (!install_cv_.wait_for(lock, kInstallPoll, ready)) {
        idle_polls++;
        continue;
      }
    }
    if (install_queue_.empty()) return;  // stopping, and everything is installed
    idle_polls = 0;
    InstallJob job = std::move(install_queue_.front());
    install_queue_.pop_front();
    installs_running_++;
    lock.unlock();
    InstallRun(*job.file, job.run);
    job = InstallJob{};
    lock.lock();
    installs_running_--;
    install_cv_.notify_all();
  }
}

void Engine::WaitForInstalls() {
  std::unique_lock<std::mutex> lock(ra_mu_);
  install_cv_.wait(lock, [this] { return install_queue_.empty() && installs_running_ == 0; });
}

Result<size_t> Engine::ReadAt(CachedFile& file, int fd, uint64_t pos, size_t want, char* out,
                              bool bypass, StoreRead hit_read, bool* missed,
                              const std::function<void()>& reply_eio) {
  bool ignored = false;
  if (missed == nullptr) missed = &ignored;
  const uint64_t bs = sb_.block_size;
  const uint64_t id = file.file_id_;
  const uint64_t index = pos / bs;
  const uint32_t begin = static_cast<uint32_t>(pos % bs);
  const uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(bs, begin + want));
  for (int attempt = 0; attempt < 3; ++attempt) {
    if (kept_blocks_.load(std::memory_order_relaxed) > 0 &&
        ServeKept(file, index, begin, end, out)) {
      return size_t{end - begin};
    }
    auto hit = TryHit(file, index, begin, end, out, hit_read);
    if (!hit.ok()) return hit.status();
    if (hit.value()) return size_t{end - begin};

    std::shared_ptr<Fetch> other;
    std::vector<std::shared_ptr<Fetch>> run;
    Kept kept;
    bool from_kept = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = fetches_.find({id, index});
      if (it != fetches_.end()) {
        other = it->second;
      } else if (kept_blocks_.load(std::memory_order_relaxed) > 0 &&
                 TakeKept(file, index, begin, end, &kept)) {
        from_kept = true;
      } else {
        // Lead this block and the following missing blocks of the request:
        // one read of SOURCE for the run.
        uint64_t epoch = file.epoch_.load();
        uint64_t last = (pos + want - 1) / bs;
        for (uint64_t b = index; b <= last; ++b) {
          if (b > index &&
              (fetches_.count({id, b}) != 0 || index_->Find({id, b}) || IsKept(id, b))) {
            break;
          }
          auto f = std::make_shared<Fetch>(b, epoch);
          f->fill = index_->Find({id, b}).has_value();
          f->no_install = bypass && !f->fill;
          fetches_[{id, b}] = f;
          run.push_back(std::move(f));
        }
      }
    }
    if (from_kept) {
      ServeFromKept(kept, begin, end, out);
      return size_t{end - begin};
    }
    if (other) {
      std::unique_lock<std::mutex> lock(other->mu);
      // Fetched already, waiting only to be installed: in memory, a hit.
      const bool waited = !other->done;
      if (waited) {
        counters_.fetch_waits++;
        *missed = true;
      }
      other->cv.wait(lock, [&] { return other->done; });
      if (!other->status.ok()) return other->status;
      if (!other->fill && other->epoch == file.epoch_.load() && other->data &&
          other->from <= begin && other->from + other->bytes >= end) {
        std::memcpy(out, other->data.get() + other->data_off + (begin - other->from), end - begin);
        other->served = true;
        const bool to_end = end >= other->from + other->bytes;
        if (to_end) other->served_to_end = true;
        const bool readahead = other->readahead;
        const char* buffer = other->data.get();
        lock.unlock();
        if (!waited) {
          counters_.read_hits++;
          counters_.bytes_from_cache += end - begin;
        }
        if (readahead && kept_blocks_.load(std::memory_order_relaxed) > 0) {
          // Kept before this reader set the flags (InstallRun): it was read.
          std::lock_guard<std::mutex> l(mu_);
          auto it = kept_.find({id, index});
          if (it != kept_.end() && it->second.data.get() == buffer) {
            it->second.used = true;
            if (to_end) EraseKept(it);
          }
        }
        return size_t{end - begin};
      }
      // Stale, or not the part we need: look again once it is installed.
      *missed = true;
      other->cv.wait(lock, [&] { return other->installed; });
      continue;
    }
    // Only the sub-blocks asked for (docs/benchmarks.md: whole blocks cost
    // random reads more than they give back).
    const uint64_t from = index * bs + uint64_t{begin / kSubBlockSize} * kSubBlockSize;
    const uint64_t stop = std::min(pos + want, (index + run.size()) * bs);
    const uint64_t to = AlignedBuffer::RoundUp(stop);
    const bool fill = run.front()->fill;
    *missed = true;
    auto fetched = FetchRun(file, fd, from, to, run, /*defer_install=*/!fill, reply_eio);
    if (!fetched.ok()) return fetched.status();
    if (fill) {
      // The block's own sub-blocks win over SOURCE's bytes. Sub-blocks the
      // fill could not provide (past SOURCE's end) come from the mix.
      auto hit = TryHit(file, index, begin, end, out);
      if (!hit.ok()) return hit.status();
      if (hit.value()) return size_t{end - begin};
      return ReadMixed(file, fd, index, begin, end, out);
    }
    const auto& [data, got] = fetched.value();
    if (from + got <= pos) return size_t{0};  // end of file
    size_t served = static_cast<size_t>(std::min<uint64_t>(from + got, stop) - pos);
    std::memcpy(out, data.get() + (pos - from), served);
    return served;
  }
  // Three rounds lost to invalidations: sub-block by sub-block, the cache's
  // where it has them (they may be dirty), SOURCE's elsewhere.
  *missed = true;
  return ReadMixed(file, fd, index, begin, end, out);
}

Result<size_t> Engine::ReadMixed(CachedFile& file, int fd, uint64_t index, uint32_t begin,
                                 uint32_t end, char* out) {
  const uint64_t id = file.file_id_;
  const uint64_t bs = sb_.block_size;
  bool overlay;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    overlay = file.overlay_;
  }
  auto block_lock = LockBlock(id, index);
  std::optional<uint32_t> slot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot = index_->Find({id, index});
    if (slot) readers_[*slot]++;
  }
  std::optional<BlockRecord> rec;
  if (slot) {
    auto r = meta_->GetBlock(id, index);
    if (r.ok() && r.value() && r.value()->slot == *slot) rec = *r.value();
  }
  const uint32_t first = begin / kSubBlockSize;
  const uint32_t last = (end + kSubBlockSize - 1) / kSubBlockSize;
  const size_t span = static_cast<size_t>(last - first) * kSubBlockSize;
  thread_local std::unique_ptr<AlignedBuffer> tmp;
  if (!tmp || tmp->size < span) tmp = std::make_unique<AlignedBuffer>(span);
  Status status;
  size_t have = span;  // bytes of tmp that hold the file (less at SOURCE's end)
  for (uint32_t i = first; i < last && status.ok();) {
    char* dst = tmp->data + static_cast<size_t>(i - first) * kSubBlockSize;
    if (rec && rec->IsValid(i)) {
      Status s = ReadSubBlocks(*rec, i, i + 1, dst);
      if (s.ok() || rec->IsDirty(i)) {
        status = s;  // a bad dirty sub-block has nothing correct to serve
        ++i;
        continue;
      }
    }
    uint32_t n = 1;
    while (i + n < last && !(rec && rec->IsValid(i + n))) ++n;
    const size_t want = static_cast<size_t>(n) * kSubBlockSize;
    auto got = backing_->Read(fd, index * bs + uint64_t{i} * kSubBlockSize, want, dst);
    if (!got.ok()) {
      status = got.status();
      break;
    }
    if (got.value() < want) {
      if (overlay) {
        // Past SOURCE's end inside the file as the mount shows it: zeros
        // until written back.
        std::memset(dst + got.value(), 0, want - got.value());
      } else {
        have = static_cast<size_t>(i - first) * kSubBlockSize + got.value();
        break;
      }
    }
    i += n;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (slot) ReleaseReader(*slot);
  }
  UnlockBlock(id, block_lock);
  if (!status.ok()) return status;
  const size_t skip = begin - first * kSubBlockSize;
  if (have <= skip) return size_t{0};
  const size_t served = std::min<size_t>(end - begin, have - skip);
  std::memcpy(out, tmp->data + skip, served);
  return served;
}

Result<size_t> Engine::Read(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len,
                            char* buf, const std::function<void()>& reply_eio) {
  const uint64_t start = MonotonicNs();
  bool missed = false;
  auto n = ReadRange(file, fd, off, len, buf, &missed, reply_eio);
  // Reads at or past the end of the file return at once: not timed.
  if (n.ok() && n.value() > 0) {
    (missed ? read_miss_latency_ : read_hit_latency_).Record(MonotonicNs() - start);
  }
  return n;
}

Result<size_t> Engine::ReadRange(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len,
                                 char* buf, bool* missed, const std::function<void()>& reply_eio) {
  if (file.detached_) {
    *missed = true;
    return backing_->Read(fd->get(), off, len, buf);
  }
  uint64_t size;
  bool overlay;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    overlay = file.overlay_;
    size = overlay ? file.size_ : file.fingerprint_.size;
  }
  if (off >= size || len == 0) return size_t{0};
  len = static_cast<size_t>(std::min<uint64_t>(len, size - off));
  bool continues = false;
  const bool bypass = FollowStream(file, fd, off, len, size, &continues);
  // A short read that does not follow the previous one: its hits read the
  // store around the page cache (StoreRead::kDirect). Streams keep the
  // store's readahead.
  const StoreRead hit_read =
      !continues && len < kStreamFetch ? StoreRead::kDirect : StoreRead::kCached;
  if (kept_blocks_.load(std::memory_order_relaxed) > 0 && off > kLateReadSlack) {
    // The stream has moved past them (allowing for its late requests).
    std::lock_guard<std::mutex> lock(mu_);
    DropKept(file.file_id_, 0, (off - kLateReadSlack) / sb_.block_size);
  }
  size_t done = 0;
  while (done < len) {
    auto n = ReadAt(file, fd->get(), off + done, len - done, buf + done, bypass, hit_read, missed,
                    reply_eio);
    if (!n.ok()) return n.status();
    if (n.value() == 0 && overlay) {
      // Past SOURCE's end but inside the file as written through the mount:
      // its cached sub-blocks, zeros between them until written back.
      const uint64_t pos = off + done;
      const uint32_t begin = static_cast<uint32_t>(pos % sb_.block_size);
      const uint32_t end =
          static_cast<uint32_t>(std::min<uint64_t>(sb_.block_size, begin + (len - done)));
      *missed = true;
      n = ReadMixed(file, fd->get(), pos / sb_.block_size, begin, end, buf + done);
      if (!n.ok()) return n.status();
    }
    if (n.value() == 0) break;  // SOURCE is shorter than we knew: end of file
    done += n.value();
  }
  return done;
}

// --- readahead ----------------------------------------------------------------

bool Engine::FollowStream(CachedFile& file, const SourceFdRef& fd, uint64_t off, size_t len,
                          uint64_t file_size, bool* continues) {
  const uint64_t bs = sb_.block_size;
  const uint64_t limit = tunables_.file_size_limit.load(std::memory_order_relaxed);
  const uint64_t readahead = tunables_.readahead.load(std::memory_order_relaxed);
  const bool too_big = limit > 0 && file_size > limit;
  const uint64_t window = std::max<uint64_t>(1, readahead / bs);
  const uint64_t file_blocks = (file_size + bs - 1) / bs;
  uint64_t from, to;
  bool advise;
  bool bypass;
  {
    std::lock_guard<std::mutex> lock(file.mu_);
    // Sequential: this read starts where the last one ended, or overlaps
    // its end. A read just behind it is one of the stream's requests that
    // arrived late (the kernel has several in flight): no news.
    const uint64_t next_offset = file.next_offset_;
    if (off <= next_offset && off + len > next_offset) {
      file.sequential_bytes_ += len;
      *continues = true;
    } else if (off + len <= next_offset && next_offset - off <= kLateReadSlack) {
      *continues = true;
      return too_big || file.bypass_;
    } else {
      file.sequential_bytes_ = 0;
      file.ahead_until_ = 0;
    }
    file.next_offset_ = off + len;
    file.stream_end_.store(off + len);
    // A long stream (a backup, a scan) bypasses the cache: its misses are
    // served, not kept, so it cannot evict the working set (admission).
    // A pinned file is always cached: pinning asks for exactly that.
    bypass = !file.pinned_ &&
             (too_big || file.sequential_bytes_ >=
                             tunables_.sequential_threshold.load(std::memory_order_relaxed) * bs);
    file.bypass_ = bypass;
    if (readahead == 0) return bypass;
    // One block's worth in a row (a stream from offset 0 qualifies at once).
    if (file.sequential_bytes_ < std::min<uint64_t>(bs, uint64_t{128} * 1024)) return bypass;
    const uint64_t next = (off + len + bs - 1) / bs;  // the first block after this read
    // Refill when less than half the window is left ahead of the reader.
    if (file.ahead_until_ >= next + window / 2 + 1) return bypass;
    from = std::max(file.ahead_until_, next);
    to = std::min(file_blocks, next + window);
    if (from >= to) return bypass;
    file.ahead_until_ = to;
    advise = !file.advised_;
    file.advised_ = true;
  }
  if (advise) {
    // The stream is sequential: let SOURCE's own readahead for this
    // descriptor grow too (as fio and cp do), so each of our reads costs the
    // slow store fewer round trips.
    (void)posix_fadvise(fd->get(), 0, 0, POSIX_FADV_SEQUENTIAL);
  }
  // One job per run, so the readahead threads fetch runs in parallel: with a
  // slow store's latency, one read at a time cannot fill its link.
  const uint64_t max_run = std::max<uint64_t>(1, kReadaheadRunBytes / bs);
  auto shared = file.shared_from_this();
  {
    std::lock_guard<std::mutex> lock(ra_mu_);
    if (ra_stopping_) return bypass;
    for (uint64_t b = from; b < to; b += max_run) {
      ra_queue_.push_back(ReadaheadJob{shared, fd, b, std::min(to, b + max_run), bypass});
    }
  }
  ra_cv_.notify_all();
  return bypass;
}

void Engine::ReadaheadLoop() {
  std::unique_lock<std::mutex> lock(ra_mu_);
  while (true) {
    ra_cv_.wait(lock, [this] { return ra_stopping_ || !ra_queue_.empty(); });
    if (ra_stopping_) return;
    ReadaheadJob job = std::move(ra_queue_.front());
    ra_queue_.pop_front();
    lock.unlock();
    RunReadahead(job);
    job = ReadaheadJob{};  // lets go of the descriptor outside the lock
    lock.lock();
  }
}

void Engine::RunReadahead(const ReadaheadJob& job) {
  CachedFile& file = *job.file;
  const uint64_t bs = sb_.block_size;
  const uint64_t id = file.file_id_;
  const uint64_t max_run = std::max<uint64_t>(1, kReadaheadRunBytes / bs);
  uint64_t b = job.from_index;
  while (b < job.to_index && !file.detached_ && !ra_stopping_) {
    std::vector<std::shared_ptr<Fetch>> run;
    {
      std::lock_guard<std::mutex> lock(mu_);
      uint64_t epoch = file.epoch_.load();
      // Skip what is cached or on its way; partly valid blocks are left to readers.
      // Blocks the reader has reached it reads itself (it registered them
      // under mu_ after it moved stream_end_, so a block it fetched and let
      // go is not fetched again here).
      const uint64_t reader = file.stream_end_.load();
      auto present = [&](uint64_t i) {
        return i * bs < reader || fetches_.count({id, i}) != 0 || index_->Find({id, i}) ||
               IsKept(id, i);
      };
      while (b < job.to_index && present(b)) ++b;
      while (b < job.to_index && run.size() < max_run && !present(b)) {
        auto f = std::make_shared<Fetch>(b, epoch);
        f->no_install = job.bypass;
        f->readahead = true;
        fetches_[{id, b}] = f;
        run.push_back(std::move(f));
        ++b;
      }
    }
    if (run.empty()) break;
    counters_.readahead_blocks += run.size();
    auto fetched = FetchRun(file, job.fd->get(), run.front()->index * bs,
                            (run.back()->index + 1) * bs, run, /*defer_install=*/false);
    if (!fetched.ok() || fetched.value().second < run.size() * bs) break;  // error or end of file
  }
}

// --- kept readahead blocks -----------------------------------------------------

void Engine::KeepFetched(CachedFile& file, const Fetch& f, bool used) {
  const uint64_t id = file.file_id_;
  // Stale (the file changed while it was read), or cached by another fetch
  // or a writer after all (LockBlock waited for this fetch, so only after
  // this keep: it drops it).
  const bool cached = f.outcome == InstallOutcome::kCached && !f.fill;
  if (f.epoch != file.epoch_.load() || (!cached && index_->Find({id, f.index}))) return;
  // A cached block the reader has read past: it found the block in the
  // cache between the install and this keep, and needs no copy.
  if (cached && (f.index + 1) * sb_.block_size <= file.stream_end_.load()) return;
  auto old = kept_.find({id, f.index});
  if (old != kept_.end()) EraseKept(old);
  Kept k;
  k.owner = file.weak_from_this();
  k.epoch = f.epoch;
  k.data = f.data;
  k.data_off = f.data_off;
  k.from = f.from;
  k.bytes = f.bytes;
  k.seq = next_kept_seq_++;
  k.used = used;
  k.cached = cached;
  kept_.emplace(std::make_pair(id, f.index), std::move(k));
  kept_by_age_[next_kept_seq_ - 1] = {id, f.index};
  kept_file_bytes_[id] += f.bytes;
  kept_bytes_ += f.bytes;
  kept_blocks_.store(kept_.size(), std::memory_order_relaxed);
  // The window ahead of the reader, and as much again for the stream's
  // requests arriving late; past that the block the reader is least likely
  // to come back for (the lowest) goes.
  const uint64_t bs = sb_.block_size;
  const uint64_t per_file =
      2 * std::max<uint64_t>(tunables_.readahead.load(std::memory_order_relaxed), bs);
  for (auto fb = kept_file_bytes_.find(id); fb != kept_file_bytes_.end() && fb->second > per_file;
       fb = kept_file_bytes_.find(id)) {
    EraseKept(kept_.lower_bound({id, 0}));
  }
  while (kept_bytes_ > kMaxKeptBytes) EraseKept(kept_.find(kept_by_age_.begin()->second));
}

bool Engine::TakeKept(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end, Kept* out) {
  auto it = kept_.find({file.file_id_, index});
  if (it == kept_.end()) return false;
  Kept& k = it->second;
  // The block cached meanwhile has sub-blocks of its own that win (maybe
  // dirty; a kept copy of what this very fetch cached is those bytes); the
  // file changed; or the file as the mount shows it is longer than SOURCE was.
  const bool usable = k.owner.lock().get() == &file && k.epoch == file.epoch_.load() &&
                      (k.cached || !index_->Find({file.file_id_, index})) && k.from <= begin &&
                      k.from + k.bytes >= end;
  if (!usable) {
    EraseKept(it);
    return false;
  }
  k.used = true;
  *out = k;
  if (end >= k.from + k.bytes) EraseKept(it);  // taken to its end
  return true;
}

bool Engine::ServeKept(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end, char* out) {
  Kept kept;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!TakeKept(file, index, begin, end, &kept)) return false;
  }
  ServeFromKept(kept, begin, end, out);
  return true;
}

void Engine::ServeFromKept(const Kept& kept, uint32_t begin, uint32_t end, char* out) {
  // Read ahead before: in memory, a hit (as a fetch done).
  std::memcpy(out, kept.data.get() + kept.data_off + (begin - kept.from), end - begin);
  counters_.read_hits++;
  counters_.bytes_from_cache += end - begin;
}

void Engine::DropKept(uint64_t file_id, uint64_t from_index, uint64_t to_index) {
  if (kept_.empty()) return;
  auto it = kept_.lower_bound({file_id, from_index});
  while (it != kept_.end() && it->first.first == file_id && it->first.second < to_index) {
    EraseKept(it++);
  }
}

void Engine::EraseKept(std::map<std::pair<uint64_t, uint64_t>, Kept>::iterator it) {
  const Kept& k = it->second;
  if (!k.used) counters_.readahead_dropped++;
  auto bytes = kept_file_bytes_.find(it->first.first);
  bytes->second -= k.bytes;
  if (bytes->second == 0) kept_file_bytes_.erase(bytes);
  kept_bytes_ -= k.bytes;
  kept_by_age_.erase(k.seq);
  kept_.erase(it);
  kept_blocks_.store(kept_.size(), std::memory_order_relaxed);
}

EngineStats Engine::stats() const {
  EngineStats s;
  s.read_hits = counters_.read_hits;
  s.read_misses = counters_.read_misses;
  s.fetch_waits = counters_.fetch_waits;
  s.readahead_blocks = counters_.readahead_blocks;
  s.readahead_dropped = counters_.readahead_dropped;
  s.write_hits = counters_.write_hits;
  s.write_misses = counters_.write_misses;
  s.promotions = counters_.promotions;
  s.bytes_written_back = counters_.bytes_written_back;
  s.writeback_errors = counters_.writeback_errors;
  s.writeback_retries = counters_.writeback_retries;
  s.writeback_writes = counters_.writeback_writes;
  s.writeback_timeouts = counters_.writeback_timeouts;
  s.writeback_failing = wb_failing_;
  s.writeback_in_flight = writeback_in_flight_;
  s.conflicts = counters_.conflicts;
  s.persists = counters_.persists;
  s.not_admitted = counters_.not_admitted;
  s.bypassed = counters_.bypassed;
  s.warmed = counters_.warmed;
  s.write_through_fallbacks = counters_.write_through_fallbacks;
  s.segments_cleaned = counters_.segments_cleaned;
  s.gc_moved_blocks = counters_.gc_moved_blocks;
  s.gc_dropped_blocks = counters_.gc_dropped_blocks;
  s.bytes_from_cache = counters_.bytes_from_cache;
  s.bytes_from_source = counters_.bytes_from_source;
  s.crc_errors = counters_.crc_errors;
  s.evictions = counters_.evictions;
  s.invalidations = counters_.invalidations;
  s.slots = sb_.slot_count;
  s.block_size = sb_.block_size;
  s.cache_size = sb_.slot_count * sb_.block_size;
  s.read_hit_latency = read_hit_latency_.Summarize();
  s.read_miss_latency = read_miss_latency_.Summarize();
  s.write_latency = write_latency_.Summarize();
  s.totals = Totals();
  std::lock_guard<std::mutex> lock(mu_);
  s.blocks_cached = index_->size();
  s.cache_used = s.blocks_cached * sb_.block_size;
  s.blocks_dirty = dirty_.size();
  s.blocks_pinned = blocks_pinned_;
  s.readahead_kept = kept_.size();
  s.dirty_bytes = dirty_subs_total_ * kSubBlockSize;
  // Waiting: dirty, not being written now, and not of a file in conflict
  // (never written back until resolved).
  uint64_t conflicted = 0;
  for (uint64_t file_id : conflict_files_) {
    auto it = dirty_per_file_.find(file_id);
    if (it != dirty_per_file_.end()) conflicted += it->second;
  }
  const uint64_t busy = conflicted + s.writeback_in_flight;
  s.writeback_queue = s.blocks_dirty > busy ? s.blocks_dirty - busy : 0;
  s.index_memory = index_->MemoryUsed() + policy_->MemoryUsed() +
                   (readers_.capacity() + dirty_subs_.capacity()) * sizeof(uint16_t) +
                   segments_->MemoryUsed() + free_when_unread_.capacity() / 8;
  s.log_wraps = segments_->wraps();
  s.segments = segments_->segment_count();
  s.segments_empty = segments_->empty_segments();
  return s;
}

}  // namespace cachefs
