// Write caching (mode=writeback): the engine's write path, the writer
// thread that writes dirty data back to SOURCE, and persist points.
//
// A write lands in the cache as dirty sub-blocks. A sub-block that is valid
// in the block's slot is never overwritten in place (contract 2, and a kill
// -9 between the data and the record must leave the old record's data
// intact): such a write copies the block to a new slot with a new
// generation, and the old slot is quarantined until the next persist, when
// the record that no longer points at it is synced. Sub-blocks not yet
// valid are written in place: no record claims them (nor an earlier version
// the record keeps for a rollback after a power loss). A write is acknowledged
// after its data reached the store (the kernel) and its record the
// metadata's log: it survives kill -9. Sync() makes it survive power loss.
// A block that moves takes its new slot from the append cursor (cache/
// segments.h); a write that finds no slot at all (every one dirty, pinned
// or busy) goes through to SOURCE for that write (WriteBlockThrough).
//
// One block is changed by one actor at a time: a write, a fetch's install
// and the writer all hold the block's entry in `fetches_` while they work
// on its record; readers wait for that entry like for a fetch.
//
// The writer (a pool of threads, cache/engine_writeback.cc, or a flush)
// takes the dirty index oldest first, writes each file's dirty sub-blocks to
// SOURCE (adjacent runs coalesced into one write), in batches, syncs the
// source file after each batch, records SOURCE's new fingerprint (its own change),
// and only then marks the blocks clean, unless they were written again
// meanwhile (their generation moved). A file changed outside while dirty is
// a conflict: never written over, reported.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include "cache/engine.h"
#include "common/crc32c.h"
#include "common/log.h"

namespace cachefs {
namespace {

// How often Write writes a block again that a drop took from under it
// before it gives up (a file changed outside faster than it is written).
constexpr int kMaxWriteRetries = 64;

// The most bytes of adjacent dirty runs the writeback puts in one write.
constexpr size_t kCoalesceBytes = 4u << 20;
// Such a write goes to SOURCE in pieces that take about kWritePieceNs at the
// rate the file's last piece was written at (at least kWritePieceMinBytes),
// so that StopWriteback ends it within that time, not the whole write's
// (4 MiB at 2 MiB/s), while a fast store still gets whole writes (small
// pieces cost a third of a FUSE store's rate: measured, drain_bench).
constexpr size_t kWritePieceMinBytes = 512u << 10;
constexpr uint64_t kWritePieceNs = 200'000'000;

// When this thread's write through began (BeforeWriteThrough), so that its
// latency covers the FUSE layer's write of SOURCE too; 0: none pending.
thread_local uint64_t write_through_start_ns = 0;

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;
Buffer AllocAligned(size_t n) {
  size_t rounded = (n + kSubBlockSize - 1) / kSubBlockSize * kSubBlockSize;
  return Buffer(static_cast<char*>(std::aligned_alloc(kSubBlockSize, rounded)));
}

}  // namespace

std::shared_ptr<Engine::Fetch> Engine::LockBlock(uint64_t file_id, uint64_t index) {
  while (true) {
    std::shared_ptr<Fetch> other;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = fetches_.find({file_id, index});
      if (it == fetches_.end()) {
        auto mine = std::make_shared<Fetch>(index, 0);
        fetches_[{file_id, index}] = mine;
        // Readahead data kept for the block may be about to be stale.
        DropKept(file_id, index, index + 1);
        return mine;
      }
      other = it->second;
    }
    std::unique_lock<std::mutex> lock(other->mu);
    other->cv.wait(lock, [&] { return other->installed; });
  }
}

void Engine::UnlockBlock(uint64_t file_id, const std::shared_ptr<Fetch>& lock) {
  {
    std::lock_guard<std::mutex> l(mu_);
    fetches_.erase({file_id, lock->index});
  }
  {
    std::lock_guard<std::mutex> l(lock->mu);
    lock->done = true;
    lock->installed = true;
  }
  lock->cv.notify_all();
}

void Engine::QuarantineSlot(uint32_t slot) { quarantine_.push_back(slot); }

void Engine::SealVersion(const BlockRecord* before, BlockRecord* out) {
  // Read after the data write: if a persist closes this epoch, its store
  // persist started after the write completed and covers it.
  out->epoch = epoch_;
  last_used_epoch_ = std::max(last_used_epoch_, epoch_);
  out->previous.clear();
  if (before == nullptr) return;
  // After a power loss recovery needs, for whatever epoch turns out durable
  // (at least epoch_ - 2), the newest version of an epoch up to it: the
  // newest of the previous epoch and the newest of an older one. Versions
  // of this same epoch are durable exactly when this one is: not needed.
  // Nothing older than a version of a durable epoch is ever needed.
  std::vector<BlockVersion> older;
  older.push_back(before->Current());
  older.insert(older.end(), before->previous.begin(), before->previous.end());
  bool have_previous_epoch = false;
  for (const BlockVersion& v : older) {
    if (v.epoch >= out->epoch) continue;
    if (v.epoch + 1 == out->epoch) {
      if (have_previous_epoch) continue;
      have_previous_epoch = true;
      out->previous.push_back(v);
      if (v.epoch <= durable_epoch_) break;
      continue;
    }
    out->previous.push_back(v);
    break;
  }
}

void Engine::AddDirty(uint64_t seq, const BlockKey& key) {
  dirty_[seq] = key;
  dirty_per_file_[key.file_id]++;
  // The block's age starts now (its seq is new: a block written again while
  // dirty keeps its seq, so its first write counts).
  const uint64_t now_ms = MonotonicNs() / 1000000;
  if (dirty_ages_.empty() || now_ms - dirty_ages_.back().first_ms >= kAgeBucketMs) {
    dirty_ages_.push_back(DirtyAge{now_ms, seq, now_ms});
  } else {
    dirty_ages_.back().last_seq = std::max(dirty_ages_.back().last_seq, seq);
    dirty_ages_.back().last_ms = now_ms;
  }
}

void Engine::SetDirtySubs(uint32_t slot, uint32_t subs) {
  dirty_subs_total_ = dirty_subs_total_ - dirty_subs_[slot] + subs;
  dirty_subs_[slot] = static_cast<uint16_t>(subs);
}

void Engine::EraseDirty(uint64_t seq) {
  auto it = dirty_.find(seq);
  if (it == dirty_.end()) return;
  auto f = dirty_per_file_.find(it->second.file_id);
  if (f != dirty_per_file_.end() && --f->second == 0) dirty_per_file_.erase(f);
  dirty_.erase(it);
}

bool Engine::HasAnyDirty() {
  std::lock_guard<std::mutex> lock(mu_);
  return !dirty_.empty();
}

bool Engine::HasDirty(uint64_t file_id) {
  std::lock_guard<std::mutex> lock(mu_);
  return dirty_per_file_.count(file_id) != 0;
}

Status Engine::ReadSubBlocks(const BlockRecord& rec, uint32_t first, uint32_t last, char* out) {
  uint32_t i = first;
  while (i < last) {
    if (!rec.IsValid(i)) {
      ++i;
      continue;
    }
    uint32_t n = 1;
    while (i + n < last && rec.IsValid(i + n)) ++n;
    char* dst = out + static_cast<size_t>(i - first) * kSubBlockSize;
    Status s =
        store_->Read(static_cast<uint32_t>(rec.slot), i * kSubBlockSize, n * kSubBlockSize, dst);
    if (!s.ok()) return s;
    for (uint32_t k = 0; k < n; ++k) {
      const char* sub = dst + static_cast<size_t>(k) * kSubBlockSize;
      if (SubBlockCrc(rec.file_id, rec.index, rec.generation, sub, kSubBlockSize) !=
          rec.crc[i + k]) {
        counters_.crc_errors++;
        return Status::Error(EIO, "CRC mismatch in cached block " + std::to_string(rec.index) +
                                      " of file " + std::to_string(rec.file_id));
      }
    }
    i += n;
  }
  return Status::Ok();
}

Status Engine::WriteBlock(CachedFile& file, int fd, uint64_t index, uint32_t begin, uint32_t end,
                          const char* data, bool dirty, uint64_t recorded_size, bool* dropped) {
  const uint64_t id = file.file_id_;
  const uint64_t bs = sb_.block_size;
  const uint32_t first = begin / kSubBlockSize;
  const uint32_t last = (end + kSubBlockSize - 1) / kSubBlockSize;  // exclusive
  HeldBlock held(this, id, index);

  // SOURCE's size as of now, with the block held: a writeback that put
  // this block on SOURCE (and then maybe saw it evicted) recorded SOURCE's
  // new size before it let go of the block.
  uint64_t source_size;
  {
    std::lock_guard<std::mutex> l(file.mu_);
    source_size = file.fingerprint_.size;
  }
  std::optional<uint32_t> old_slot;
  {
    std::lock_guard<std::mutex> l(mu_);
    old_slot = index_->Find({id, index});
    if (old_slot) readers_[*old_slot]++;  // we read from it below
  }
  BlockRecord rec;
  bool have = false;
  if (old_slot) {
    auto r = meta_->GetBlock(id, index);
    have = r.ok() && r.value() && r.value()->slot == *old_slot;
    if (have) rec = *r.value();
  }
  auto release_old = [&] {
    if (!old_slot) return;
    std::lock_guard<std::mutex> l(mu_);
    ReleaseReader(*old_slot);
  };
  // In place only where neither this version nor an older one recovery may
  // roll back to (in the same slot) holds data.
  bool in_place = have;
  for (uint32_t i = first; i < last && in_place; ++i) {
    in_place = !rec.IsValid(i);
    for (const BlockVersion& v : rec.previous) {
      if (v.slot == rec.slot && ((v.valid[i / 64] >> (i % 64)) & 1)) in_place = false;
    }
  }

  // The touched sub-blocks, whole: the new bytes over what was there before
  // (the cache's copy, or SOURCE's, or zeros past its end).
  const size_t span = static_cast<size_t>(last - first) * kSubBlockSize;
  Buffer buf = AllocAligned(span);
  if (!buf) {
    release_old();
    return Status::Error(ENOMEM, "out of memory");
  }
  std::memset(buf.get(), 0, span);
  for (uint32_t sub : {first, last - 1}) {
    uint32_t lo = sub * kSubBlockSize;
    uint32_t hi = lo + kSubBlockSize;
    if (begin <= lo && end >= hi) continue;  // fully overwritten
    char* dst = buf.get() + static_cast<size_t>(sub - first) * kSubBlockSize;
    if (have && rec.IsValid(sub)) {
      Status s = ReadSubBlocks(rec, sub, sub + 1, dst);
      if (!s.ok()) {
        release_old();
        return s;
      }
    } else {
      uint64_t pos = index * bs + lo;
      if (pos < source_size) {
        auto n = backing_->Read(fd, pos, kSubBlockSize, dst);
        if (!n.ok()) {
          release_old();
          return n.status();
        }
      }
    }
  }
  std::memcpy(buf.get() + (begin - first * kSubBlockSize), data, end - begin);

  MetaBatch batch;
  uint32_t slot;
  BlockRecord out;
  if (in_place) {
    slot = *old_slot;
    out = rec;
  } else {
    // A new slot and generation; the block's other valid sub-blocks move
    // along (read and checked under the old generation, re-sealed under the
    // new one).
    std::optional<uint32_t> fresh;
    uint64_t generation;
    Evicted evicted;
    {
      std::lock_guard<std::mutex> l(mu_);
      fresh = AllocateSlot(evicted, nullptr, /*log=*/true);
      generation = next_generation_++;
    }
    // The victim's record first.
    if (Status s = CommitEvicted(evicted); !s.ok()) {
      LogWarning("evicting a cached block failed: " + s.message());
    }
    if (!fresh) {
      release_old();
      return Status::Error(ENOSPC, "no free cache slot (quarantined or dirty)");
    }
    slot = *fresh;
    out = BlockRecord::Empty(id, index, sb_.block_size);
    out.slot = slot;
    out.generation = generation;
    out.dirty_seq = have ? rec.dirty_seq : 0;
    if (have) {
      Buffer whole = AllocAligned(bs);
      Status s = whole ? Status::Ok() : Status::Error(ENOMEM, "out of memory");
      // Carried over a run of valid sub-blocks at a time: one read and one
      // write of the store per run, not per 4 KiB (a 4 KiB overwrite of a
      // 64 KiB block carries up to 15). Each is checked under the old
      // generation and sealed under the new one; a clean sub-block that went
      // bad is simply not carried over (SOURCE has it), a dirty one fails
      // the write.
      auto carried = [&](uint32_t i) { return rec.IsValid(i) && (i < first || i >= last); };
      auto sub_at = [&](uint32_t i) {
        return whole.get() + static_cast<size_t>(i) * kSubBlockSize;
      };
      auto carry = [&](uint32_t from, uint32_t to) -> Status {
        Status r = store_->Read(static_cast<uint32_t>(rec.slot), from * kSubBlockSize,
                                (to - from) * kSubBlockSize, sub_at(from));
        for (uint32_t k = from; r.ok() && k < to;) {
          uint32_t good = k;  // [k, good): sub-blocks that check out
          while (good < to && SubBlockCrc(id, index, rec.generation, sub_at(good), kSubBlockSize) ==
                                  rec.crc[good]) {
            ++good;
          }
          if (good > k) {
            r = store_->Write(slot, k * kSubBlockSize, (good - k) * kSubBlockSize, sub_at(k));
            for (uint32_t j = k; r.ok() && j < good; ++j) {
              out.SetValid(j, true);
              out.SetDirty(j, rec.IsDirty(j));
              out.crc[j] = SubBlockCrc(id, index, generation, sub_at(j), kSubBlockSize);
            }
          }
          if (r.ok() && good < to) {
            counters_.crc_errors++;
            if (rec.IsDirty(good)) {
              r = Status::Error(EIO, "CRC mismatch in cached block " + std::to_string(index) +
                                         " of file " + std::to_string(id));
            }
          }
          k = good + 1;
        }
        return r;
      };
      for (uint32_t i = 0; s.ok() && i < rec.sub_blocks();) {
        if (!carried(i)) {
          ++i;
          continue;
        }
        uint32_t n = 1;
        while (i + n < rec.sub_blocks() && carried(i + n)) ++n;
        s = carry(i, i + n);
        i += n;
      }
      if (!s.ok()) {
        std::lock_guard<std::mutex> l(mu_);
        FreeSlot(slot);
        ReleaseReader(*old_slot);
        return s;
      }
    }
  }
  Status s = store_->Write(slot, first * kSubBlockSize, static_cast<uint32_t>(span), buf.get());
  if (!s.ok()) {
    std::lock_guard<std::mutex> l(mu_);
    if (!in_place) FreeSlot(slot);
    if (old_slot) ReleaseReader(*old_slot);
    return s;
  }
  for (uint32_t i = first; i < last; ++i) {
    out.SetValid(i, true);
    out.SetDirty(i, dirty);
    out.crc[i] =
        SubBlockCrc(id, index, out.generation,
                    buf.get() + static_cast<size_t>(i - first) * kSubBlockSize, kSubBlockSize);
  }
  bool newly_dirty = dirty && out.dirty_seq == 0;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (newly_dirty) out.dirty_seq = next_dirty_seq_++;
    SealVersion(have ? &rec : nullptr, &out);
  }
  if (newly_dirty) batch.Put(DirtyRecord{out.dirty_seq, id, index});
  batch.Put(out);
  // The commit and the index update under files_mu_ (taken with the block
  // held: nobody waits for a block while holding files_mu_), where every
  // drop decides and commits: a drop of this block (an outside change, an
  // unlink, a truncate) came before, and this write commits nothing, or
  // comes after and finds the new record in the index.
  std::unique_lock<std::mutex> files_lock(files_mu_);
  if (DroppedWhileHeld(file, held.fetch())) {
    std::lock_guard<std::mutex> l(mu_);
    if (!in_place) FreeSlot(slot);
    if (old_slot) ReleaseReader(*old_slot);
    if (dropped != nullptr) *dropped = true;
    return Status::Ok();
  }
  // Dirty data past the recorded size: the file's record grows to cover it
  // in this same batch. Were the size committed only after the whole write
  // (as before), a kill in between would leave committed bytes past the size
  // the next mount shows, and a later write that grows the file with a gap
  // would show them in the gap instead of zeros (and the writer would write
  // them back). A read-modify-write of the file record, so under files_mu_.
  const uint64_t data_end = index * bs + end;
  if (dirty && data_end > recorded_size) {
    auto frec = meta_->GetFile(id);
    if (frec.ok() && frec.value() && frec.value()->size < data_end) {
      FileRecord grown = *frec.value();
      grown.size = data_end;
      batch.Put(grown);
    }
  }
  // Data in the store, then the record that points at it, in the log
  // before the reply (contracts 1a and 2).
  s = meta_->Commit(batch, false);
  std::lock_guard<std::mutex> l(mu_);
  if (!s.ok()) {
    if (!in_place) FreeSlot(slot);
    if (old_slot) ReleaseReader(*old_slot);
    return s;
  }
  if (!in_place) {
    if (old_slot && index_->Find({id, index}) == old_slot) {
      IndexErase(*old_slot);
      policy_->Remove(*old_slot);
      dirty_slot_[*old_slot] = false;
      SetDirtySubs(*old_slot, 0);
      QuarantineSlot(*old_slot);
    }
    IndexInsert({id, index}, slot);
  }
  dirty_slot_[slot] = out.AnyDirty();
  SetDirtySubs(slot, out.DirtyCount());
  if (dirty_slot_[slot]) {
    policy_->Remove(slot);  // dirty: never a victim until written back
  } else if (!policy_->IsTracked(slot) && !pinned_slot_[slot]) {
    policy_->Track(slot);
  }
  if (newly_dirty) AddDirty(out.dirty_seq, BlockKey{id, index});
  if (dirty) NoteEpochWrite(BlockKey{id, index});
  if (old_slot) ReleaseReader(*old_slot);
  // dm-cache's sense: a write hit finds the block in the cache.
  (old_slot ? counters_.write_hits : counters_.write_misses)++;
  return Status::Ok();
}

Status Engine::WriteBlockWithRoom(CachedFile& file, int fd, uint64_t index, uint32_t begin,
                                  uint32_t end, const char* data, bool dirty,
                                  uint64_t recorded_size, bool* dropped) {
  Status s = WriteBlock(file, fd, index, begin, end, data, dirty, recorded_size, dropped);
  if (s.code() != ENOSPC) return s;
  // No free slot: the slots of replaced data wait for a persist.
  s = Persist();
  if (s.ok()) s = WriteBlock(file, fd, index, begin, end, data, dirty, recorded_size, dropped);
  // A clean copy (writethrough) that finds no room is dropped by the caller.
  if (s.code() != ENOSPC || !dirty) return s;
  // Full of dirty, pinned or busy blocks. Waiting for the writer to drain it
  // all would stall this write for as long as SOURCE takes to absorb the
  // whole cache; this one write goes to SOURCE instead (as writethrough
  // would), and the writer is woken to make room for the next ones.
  // mode=cow may never write to SOURCE: full is full there.
  if (!WritebackAllowed()) {
    return Status::Error(ENOSPC,
                         "mode=cow: the layer fills the cache (cachefsctl commit or discard)");
  }
  if (config_.source_is_file) {
    // An image is written back in order: whatever was written before this
    // write reaches it first, so SOURCE never shows this write without them.
    // The cache is full of data written since the last fsync. Failing the
    // guest's writes would break its disk; writing back what it has not
    // synced yet only weakens the epoch promise (docs/cache-engine.md), so
    // the current state becomes an epoch.
    Status full = s;
    LogWarning(
        "image mode: the cache is full of data written since the last fsync; "
        "writing it back unsynced");
    s = SealEpoch(/*all=*/true);
    if (s.ok()) s = Flush();
    if (!s.ok()) return s;
    // A Flush cut short by StopWriteback (the daemon exiting) wrote back
    // only part of it.
    if (wb_abort_.load(std::memory_order_relaxed)) return full;
  }
  {
    // With the file's writeback held off: it must not write an older copy
    // of these sub-blocks over ours. A batch that just finished may have
    // made room.
    AcquireWritebackFile(file.file_id_);
    s = WriteBlock(file, fd, index, begin, end, data, dirty, recorded_size, dropped);
    if (s.code() == ENOSPC && file.detached_) {
      // SOURCE's path names another file now (or none): the caller writes
      // to the file's own descriptor instead.
      if (dropped != nullptr) *dropped = true;
      s = Status::Ok();
    } else if (s.code() == ENOSPC) {
      s = WriteBlockThrough(file, index, begin, end, data);
    }
    ReleaseWritebackFile(file.file_id_);
  }
  StartFlush();
  return s;
}

Result<int> Engine::OpenSourceForWrite(uint64_t file_id) {
  if (config_.source_is_file) {
    int fd = open(config_.source.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, "SOURCE '" + config_.source + "'");
    return fd;
  }
  auto rec = meta_->GetFile(file_id);
  if (!rec.ok()) return rec.status();
  if (!rec.value()) {
    return Status::Error(ENOENT, "file " + std::to_string(file_id) + " has no record");
  }
  const std::string& path = rec.value()->path;
  int fd = openat(source_root_, path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Status::FromErrno(errno, "'" + path + "': open for writing");
  return fd;
}

Status Engine::WriteBlockThrough(CachedFile& file, uint64_t index, uint32_t begin, uint32_t end,
                                 const char* data) {
  const uint64_t id = file.file_id_;
  const uint64_t bs = sb_.block_size;
  const uint32_t first = begin / kSubBlockSize;
  const uint32_t last = (end + kSubBlockSize - 1) / kSubBlockSize;  // exclusive
  auto opened = OpenSourceForWrite(id);
  if (!opened.ok()) return opened.status();
  const int wfd = opened.value();
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{wfd};
  HeldBlock held(this, id, index);
  uint64_t size;  // of the file as the mount shows it
  {
    std::lock_guard<std::mutex> l(file.mu_);
    size = file.overlay_ ? file.size_ : file.fingerprint_.size;
  }
  std::optional<uint32_t> slot;
  {
    std::lock_guard<std::mutex> l(mu_);
    slot = index_->Find({id, index});
    if (slot) readers_[*slot]++;  // not reused while we read and change it
  }
  struct Release {
    Engine* e;
    std::optional<uint32_t> slot;
    ~Release() {
      if (!slot) return;
      std::lock_guard<std::mutex> l(e->mu_);
      e->ReleaseReader(*slot);
    }
  } release{this, slot};
  BlockRecord rec;
  bool have = false;
  if (slot) {
    auto r = meta_->GetBlock(id, index);
    have = r.ok() && r.value() && r.value()->slot == *slot;
    if (have) rec = *r.value();
  }
  const size_t span = static_cast<size_t>(last - first) * kSubBlockSize;
  Buffer buf = AllocAligned(span);
  if (!buf) return Status::Error(ENOMEM, "out of memory");
  // An edge sub-block the write covers in part and whose cached copy is
  // dirty: SOURCE lacks the rest of it, so it goes along whole (up to the
  // file's end). Clean or uncached ones: SOURCE has the rest already.
  uint64_t lo = begin;
  uint64_t hi = end;
  if (have && begin % kSubBlockSize != 0 && rec.IsDirty(first)) {
    Status s = ReadSubBlocks(rec, first, first + 1, buf.get());
    if (!s.ok()) return s;
    lo = uint64_t{first} * kSubBlockSize;
  }
  if (have && end % kSubBlockSize != 0 && rec.IsDirty(last - 1)) {
    Status s = ReadSubBlocks(rec, last - 1, last,
                             buf.get() + static_cast<size_t>(last - 1 - first) * kSubBlockSize);
    if (!s.ok()) return s;
    const uint64_t in_file = size > index * bs ? size - index * bs : 0;
    hi = std::max<uint64_t>(end, std::min<uint64_t>(uint64_t{last} * kSubBlockSize, in_file));
  }
  std::memcpy(buf.get() + (begin - first * kSubBlockSize), data, end - begin);
  if (HasDirty(id)) {
    // The intent first (synced), as the writer's: a crash after SOURCE
    // changed must not make the next mount take our change for an outside
    // one while the file holds dirty data.
    Status s = MarkWritingBack(id);
    if (!s.ok()) return s;
  }
  // Our own change, like the writer's: a getattr that sees SOURCE changed
  // before the new fingerprint is recorded must not take it for an outside
  // change (a conflict).
  {
    std::lock_guard<std::mutex> l(file.mu_);
    file.writing_back_ = true;
  }
  struct Done {
    CachedFile& f;
    ~Done() {
      std::lock_guard<std::mutex> l(f.mu_);
      f.writing_back_ = false;
    }
  } done{file};
  Status s = backing_->Write(wfd, index * bs + lo, static_cast<size_t>(hi - lo),
                             buf.get() + (lo - uint64_t{first} * kSubBlockSize));
  // Synced before the cache lets go of the sub-blocks: once the record says
  // SOURCE has them, an fsync (which syncs the cache, not SOURCE) must find
  // them durable there (until session 8 a power loss could lose them).
  if (s.ok()) s = backing_->Sync(wfd);
  if (!s.ok()) return s;
  struct stat st;
  if (fstat(wfd, &st) != 0) return Status::FromErrno(errno, "write through: fstat");

  // The touched sub-blocks are SOURCE's now: the cached copy stops holding
  // them (a dirty one written back later would undo this write; valid data
  // is never overwritten in place). In the batch that records SOURCE's new
  // look, so a crash cannot keep one without the other.
  MetaBatch batch;
  BlockRecord out = rec;
  bool changed = false;
  for (uint32_t i = first; have && i < last; ++i) {
    if (!out.IsValid(i)) continue;
    out.SetValid(i, false);
    out.SetDirty(i, false);
    changed = true;
  }
  const bool drop = changed && std::none_of(out.valid.begin(), out.valid.end(),
                                            [](uint64_t w) { return w != 0; });
  const bool now_clean = changed && rec.AnyDirty() && !out.AnyDirty();
  const uint64_t seq = rec.dirty_seq;
  if (drop) {
    batch.RemoveBlock(id, index);
    if (seq != 0) batch.RemoveDirty(seq);
  } else if (changed) {
    if (now_clean) {
      batch.RemoveDirty(seq);
      out.dirty_seq = 0;
    }
    // The version before keeps its claim on the slot until a persist: the
    // synced record may be it, so the bits cleared here must not take an
    // in-place write meanwhile (until session 8 one could land over data
    // an fsync had promised, read as EIO after a power loss).
    std::lock_guard<std::mutex> l(mu_);
    SealVersion(&rec, &out);
    batch.Put(out);
  }
  {
    std::lock_guard<std::mutex> l(files_mu_);
    if (DroppedWhileHeld(file, held.fetch())) {
      // The block went meanwhile (its record with it): nothing to change.
      batch.Clear();
      changed = false;
    }
    auto r = meta_->GetFile(id);
    if (!r.ok()) return r.status();
    FileRecord f;
    {
      std::lock_guard<std::mutex> fl(file.mu_);
      file.fingerprint_ = FingerprintOf(st);
      file.source_ino_ = static_cast<uint64_t>(st.st_ino);
      file.epoch_++;  // fetches that read SOURCE before this write are stale
      if (r.value()) {
        f = *r.value();
        f.source_ino = file.source_ino_;
        f.fingerprint = file.fingerprint_;
        f.size = file.overlay_ ? file.size_ : file.fingerprint_.size;
        f.mtime_ns = file.overlay_ ? file.mtime_ns_ : file.fingerprint_.mtime_ns;
        f.ctime_ns = file.fingerprint_.ctime_ns;
        f.flags &= ~FileRecord::kWritingBack;
        file.record_stale_ = false;
      }
    }
    if (r.value()) batch.Put(f);
    if (!batch.empty()) s = meta_->Commit(batch, false);
  }
  if (!s.ok()) return s;
  counters_.write_through_fallbacks++;
  if (!changed) return Status::Ok();
  std::lock_guard<std::mutex> l(mu_);
  if (index_->Find({id, index}) != slot) return Status::Ok();
  if (drop) {
    if (seq != 0) EraseDirty(seq);
    dirty_slot_[*slot] = false;
    SetDirtySubs(*slot, 0);
    IndexErase(*slot);
    policy_->Remove(*slot);
    QuarantineSlot(*slot);  // its removal is committed, not yet synced
    return Status::Ok();
  }
  SetDirtySubs(*slot, out.DirtyCount());
  if (now_clean) {
    EraseDirty(seq);
    dirty_slot_[*slot] = false;
    clean_pending_.push_back(*slot);  // a victim once the clean record is synced
  }
  return Status::Ok();
}

Status Engine::Write(CachedFile& file, const SourceFdRef& fd, uint64_t off, const char* data,
                     size_t len, bool sync, int write_fd) {
  if (len == 0) return Status::Ok();
  const int out_fd = write_fd >= 0 ? write_fd : fd->get();  // SOURCE's file, once detached
  ScopedLatency timed(&write_latency_);
  const uint64_t bs = sb_.block_size;
  bool grows;
  uint64_t size_before = 0;
  {
    std::unique_lock<std::mutex> lock(file.mu_);
    // Not while the FUSE layer changes SOURCE's copy itself (SourceChange,
    // held by an unlink too, from its flush to its drop).
    file.cv_.wait(lock, [&] { return !file.source_change_; });
    if (file.detached_) {
      // Its last name is gone (or another file took it): no record to hang
      // dirty data on. Its open handles read SOURCE's file: write there.
      lock.unlock();
      Status s = backing_->Write(out_fd, off, len, data);
      if (s.ok() && sync) s = backing_->Sync(out_fd);
      return s;
    }
    grows = !file.overlay_ || off + len > file.size_;
    if (!file.overlay_) {
      file.overlay_ = true;
      file.size_ = file.fingerprint_.size;
    }
    size_before = file.size_;
    file.size_ = std::max<uint64_t>(file.size_, off + len);
    file.mtime_ns_ = NowNs();
    file.record_stale_ = true;  // the mtime at least: written at close
    file.writes_++;
  }
  struct WriteDone {
    CachedFile& f;
    ~WriteDone() {
      bool last;
      {
        std::lock_guard<std::mutex> lock(f.mu_);
        last = --f.writes_ == 0;
      }
      if (last) f.cv_.notify_all();
    }
  } write_done{file};
  // The size the file's record holds (what a crash would leave): blocks
  // whose data ends past it grow it with their own record (WriteBlock).
  // Read once per write, after the write counts in writes_: from then on
  // it only grows (a truncate waits for the writes in progress), so a
  // stale value costs a look-up, never a missed update.
  uint64_t recorded_size = 0;
  {
    auto frec = meta_->GetFile(file.file_id_);
    if (frec.ok() && frec.value()) recorded_size = frec.value()->size;
  }
  size_t done = 0;
  // A write that fails part-way grows the file only as far as it got
  // (until session 8 the size the mount showed kept the whole write's end,
  // and an append after it left a hole).
  auto failed = [&](const Status& s) {
    std::lock_guard<std::mutex> lock(file.mu_);
    if (file.size_ == std::max<uint64_t>(size_before, off + len)) {
      file.size_ = std::max<uint64_t>(size_before, off + done);
    }
    return s;
  };
  int drops = 0;
  while (done < len) {
    uint64_t pos = off + done;
    uint64_t index = pos / bs;
    uint32_t begin = static_cast<uint32_t>(pos % bs);
    uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(bs, begin + (len - done)));
    bool dropped = false;
    Status s = WriteBlockWithRoom(file, fd->get(), index, begin, end, data + done, /*dirty=*/true,
                                  recorded_size, &dropped);
    if (!s.ok()) return failed(s);
    if (dropped) {
      // A drop of the block came first (an outside change, an unlink):
      // this block again, into the cache as it is now, or to SOURCE's
      // file if the file lost its name meanwhile.
      if (file.detached_) {
        s = backing_->Write(out_fd, pos, len - done, data + done);
        if (s.ok() && sync) s = backing_->Sync(out_fd);
        return s;
      }
      if (++drops > kMaxWriteRetries) {
        return failed(Status::Error(EAGAIN, "block " + std::to_string(index) +
                                                " was dropped under every attempt to write it"));
      }
      continue;
    }
    done += end - begin;
  }
  if (grows) {
    // The size the mount shows (and the mtime): the blocks have grown the
    // recorded size with their data already, up to this write's end. Under
    // files_mu_, like every read-modify-write of a file record (the
    // writer's flags too).
    std::lock_guard<std::mutex> lock(files_mu_);
    Status s = WriteFileRecord(file);
    if (!s.ok()) return s;
  }
  if (!sync) return Status::Ok();
  Status s = Persist();
  if (s.ok()) s = SealEpoch(/*all=*/false);  // an O_SYNC write is an fsync of the image
  return s;
}

Status Engine::BeforeWriteThrough(CachedFile& file, uint64_t off, size_t len) {
  write_through_start_ns = MonotonicNs();
  if (len == 0) return Status::Ok();
  const uint64_t bs = sb_.block_size;
  const uint64_t id = file.file_id_;
  {
    // Fetches that read SOURCE before the write are stale. Under files_mu_,
    // like every bump: Install looks at the epoch, commits and undoes in
    // one section under it.
    std::lock_guard<std::mutex> lock(files_mu_);
    file.epoch_++;
  }
  for (uint64_t index = off / bs; index <= (off + len - 1) / bs; ++index) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!index_->Find({id, index})) continue;
    }
    auto block = LockBlock(id, index);
    auto r = meta_->GetBlock(id, index);
    Status s = r.ok() ? Status::Ok() : r.status();
    if (s.ok() && r.value()) {
      BlockRecord rec = *r.value();
      const uint64_t start = index * bs;
      const uint32_t begin = static_cast<uint32_t>(std::max(off, start) - start);
      const uint32_t end = static_cast<uint32_t>(std::min(off + len, start + bs) - start);
      bool changed = false;
      for (uint32_t i = begin / kSubBlockSize; i < (end + kSubBlockSize - 1) / kSubBlockSize; ++i) {
        if (rec.IsValid(i) && !rec.IsDirty(i)) {
          rec.SetValid(i, false);
          changed = true;
        }
      }
      std::lock_guard<std::mutex> files_lock(files_mu_);
      if (changed && !DroppedWhileHeld(file, *block)) {
        MetaBatch batch;
        batch.Put(rec);
        s = meta_->Commit(batch, false);
      }
    }
    UnlockBlock(id, block);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

Status Engine::WriteThrough(CachedFile& file, const SourceFdRef& fd, uint64_t off, const char* data,
                            size_t len, const struct stat& st) {
  const uint64_t started = write_through_start_ns;
  write_through_start_ns = 0;
  ScopedLatency timed(&write_latency_, started != 0 ? started : MonotonicNs());
  const uint64_t bs = sb_.block_size;
  // SOURCE has the data: its new look is ours (and fetches that read it
  // before are stale).
  const std::pair<uint64_t, uint64_t> wrote{off, len};
  Status s = CommitOwnChange(file, st, 0, 0, &wrote);
  if (!s.ok()) return s;
  size_t done = 0;
  while (done < len) {
    uint64_t pos = off + done;
    uint64_t index = pos / bs;
    uint32_t begin = static_cast<uint32_t>(pos % bs);
    uint32_t end = static_cast<uint32_t>(std::min<uint64_t>(bs, begin + (len - done)));
    // A drop that came first leaves this block uncached: SOURCE has it.
    bool dropped = false;
    s = WriteBlockWithRoom(file, fd->get(), index, begin, end, data + done, /*dirty=*/false,
                           std::numeric_limits<uint64_t>::max(), &dropped);
    if (!s.ok()) {
      // The cached copy must not stay behind SOURCE: it goes.
      LogWarning("caching a written block failed (dropped): " + s.message());
      std::lock_guard<std::mutex> lock(files_mu_);
      s = DropBlocks(file.file_id_, index, index + 1);
      if (!s.ok()) return s;
    }
    done += end - begin;
  }
  return Status::Ok();
}

Status Engine::Sync(CachedFile& /*file*/) {
  Status s = Persist();
  // Image mode: what was written so far is the state the writer may put
  // on the image next.
  if (s.ok()) s = SealEpoch(/*all=*/false);
  return s;
}

void Engine::OverlayPath(const std::string& path, struct stat* st) {
  if (!HasAnyDirty()) return;
  auto id = meta_->LookupPath(path);
  if (!id.ok() || !id.value() || !HasDirty(*id.value())) return;
  if (auto live = LiveFile(*id.value())) return Overlay(*live, st);
  auto rec = meta_->GetFile(*id.value());
  if (!rec.ok() || !rec.value()) return;
  st->st_size = static_cast<off_t>(rec.value()->size);
  st->st_mtim.tv_sec = static_cast<time_t>(rec.value()->mtime_ns / 1000000000);
  st->st_mtim.tv_nsec = static_cast<long>(rec.value()->mtime_ns % 1000000000);
}

void Engine::Overlay(CachedFile& file, struct stat* st) {
  std::lock_guard<std::mutex> lock(file.mu_);
  if (!file.overlay_) return;
  st->st_size = static_cast<off_t>(file.size_);
  st->st_blocks =
      std::max<blkcnt_t>(st->st_blocks, static_cast<blkcnt_t>((file.size_ + 511) / 512));
  st->st_mtim.tv_sec = static_cast<time_t>(file.mtime_ns_ / 1000000000);
  st->st_mtim.tv_nsec = static_cast<long>(file.mtime_ns_ % 1000000000);
  if (st->st_ctim.tv_sec < st->st_mtim.tv_sec ||
      (st->st_ctim.tv_sec == st->st_mtim.tv_sec && st->st_ctim.tv_nsec < st->st_mtim.tv_nsec)) {
    st->st_ctim = st->st_mtim;
  }
}

std::shared_ptr<CachedFile> Engine::LiveFile(uint64_t file_id) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto it = open_files_.find(file_id);
  return it == open_files_.end() ? nullptr : it->second.lock();
}

Status Engine::MarkWritingBack(uint64_t file_id) {
  std::lock_guard<std::mutex> lock(files_mu_);
  auto r = meta_->GetFile(file_id);
  if (!r.ok()) return r.status();
  if (!r.value() || (r.value()->flags & FileRecord::kWritingBack) != 0) return Status::Ok();
  FileRecord f = *r.value();
  f.flags |= FileRecord::kWritingBack;
  MetaBatch batch;
  batch.Put(f);
  return meta_->Commit(batch, true);
}

Status Engine::WriteBackBatch(uint64_t file_id, const std::vector<uint64_t>& indices,
                              bool background, bool last) {
  const uint64_t bs = sb_.block_size;
  auto frec = meta_->GetFile(file_id);
  if (!frec.ok()) return frec.status();
  if (!frec.value()) {
    return Status::Error(ENOENT, "dirty data of file " + std::to_string(file_id) +
                                     " has no file record: kept aside");
  }
  FileRecord file_rec = *frec.value();
  if (file_rec.flags & FileRecord::kConflict) {  // reported already
    std::lock_guard<std::mutex> lock(mu_);
    conflict_files_.insert(file_id);
    return Status::Ok();
  }
  if (!WritebackAllowed()) {
    return Status::Error(EROFS, "mode=cow: the layer reaches the image only by cachefsctl commit");
  }
  // The indices were taken before writeback_mu_: another flush may have
  // written them back meanwhile, and SOURCE may since have been changed
  // through the mount (truncate), its new look not yet adopted.
  if (!HasDirty(file_id)) return Status::Ok();
  // Image mode: only the versions of the newest sealed epoch, whatever the
  // caller asked for (docs/cache-engine.md, "Image mode").
  std::vector<uint64_t> wanted = indices;
  EpochVersions epoch;
  if (ImageEpochs()) {
    epoch = TakeEpoch(file_id);
    wanted.clear();
    for (const auto& [index, version] : epoch) wanted.push_back(index);
  }
  struct EpochHold {
    Engine* e;
    const EpochVersions& taken;
    ~EpochHold() { e->ReleaseEpoch(taken); }
  } epoch_hold{this, epoch};
  if (ImageEpochs() && wanted.empty()) return Status::Ok();
  auto live = LiveFile(file_id);
  if (live && background) {
    std::lock_guard<std::mutex> lock(live->mu_);
    // The FUSE layer is changing SOURCE's copy itself (SourceChange): its
    // change is adopted when it is done; a later round writes back. (Its
    // own write-back first, FlushFile, is not background.)
    if (live->source_change_) return Status::Ok();
  }
  int fd = config_.source_is_file
               ? open(config_.source.c_str(), O_WRONLY | O_CLOEXEC)
               : openat(source_root_, file_rec.path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    return Status::FromErrno(errno, "writeback of '" + file_rec.path + "': open");
  }
  struct Closer {
    int fd;
    ~Closer() {
      if (fd >= 0) close(fd);
    }
  } closer{fd};
  // A write, sync or stat that timed out may still be running: the
  // descriptor stays open (parked) until it is done, and the file is not
  // written back again before (CheckParked).
  bool source_touched = false;  // a write or truncate of SOURCE's file was started
  auto failed = [&](const Status& s) {
    if (s.code() == ETIMEDOUT && closer.fd >= 0) {
      counters_.writeback_timeouts++;
      Park(file_id, closer.fd);
      closer.fd = -1;
    } else if (source_touched && live && closer.fd >= 0) {
      // Our own partial change: the open file adopts SOURCE's look now, so
      // a look at it before the next round takes it for ours, while a later
      // outside change still shows (the record's kWritingBack covers a
      // crash; Revalidate trusts that flag only while a round runs).
      struct stat now_st;
      if (wb_backing_->Stat(closer.fd, &now_st).ok()) {
        std::lock_guard<std::mutex> lock(live->mu_);
        live->fingerprint_ = FingerprintOf(now_st);
      }
    }
    return s.Prefixed("writeback of '" + file_rec.path + "'");
  };
  struct stat st;
  Status stat_status = wb_backing_->Stat(fd, &st);
  if (!stat_status.ok()) return failed(stat_status);
  Fingerprint expected = file_rec.fingerprint;
  uint64_t expected_ino = file_rec.source_ino;
  uint64_t size = file_rec.size;
  int64_t mtime_ns = file_rec.mtime_ns;
  if (live) {
    // The live file knows better than its record, which may lag behind
    // writes in progress: without an overlay the mount shows SOURCE's size.
    std::lock_guard<std::mutex> lock(live->mu_);
    expected = live->fingerprint_;
    expected_ino = live->source_ino_;
    size = live->overlay_ ? live->size_ : live->fingerprint_.size;
    mtime_ns = live->overlay_ ? live->mtime_ns_ : live->fingerprint_.mtime_ns;
    live->writing_back_ = true;
  }
  struct Done {
    std::shared_ptr<CachedFile> f;
    ~Done() {
      if (f) {
        std::lock_guard<std::mutex> lock(f->mu_);
        f->writing_back_ = false;
      }
    }
  } done{live};
  if (FingerprintOf(st) != expected) {
    // Our own round cut short shows as a change of the same file; another
    // file at the name (replaced outside, or renamed over since the record
    // was read) is never written into (until session 8 it was, when the
    // record was flagged).
    const bool same_file = SameSourceFile(expected_ino, static_cast<uint64_t>(st.st_ino));
    if ((file_rec.flags & FileRecord::kWritingBack) == 0 || !same_file) {
      // Changed outside while we held dirty data (contract 5): not ours to
      // overwrite. Kept, flagged, reported.
      std::lock_guard<std::mutex> lock(files_mu_);
      return MarkConflict(file_id, live.get());
    }
    // Our own writeback, cut short by a crash: SOURCE holds some of our
    // data. The blocks are still dirty: written again in full below.
  }
  {
    // The intent goes first (synced: after a power loss too), so a crash
    // after SOURCE changed is not taken for an outside change.
    Status s = MarkWritingBack(file_id);
    if (!s.ok()) return s;
  }

  // Copy out what is dirty now, remembering each block's generation.
  struct Taken {
    uint64_t index;
    uint64_t generation;
    std::vector<uint64_t> dirty;
    std::vector<uint64_t> clipped;  // dirty sub-blocks not (all) written: past `size`
    uint64_t write_seq = 0;         // the number of the last write holding its data
  };
  std::vector<Taken> taken;
  // The taken blocks count as in flight (stats) until each is marked
  // clean, or this round ends.
  struct InFlight {
    std::atomic<uint64_t>& total;
    uint64_t mine = 0;
    ~InFlight() { total -= mine; }
  } in_flight{writeback_in_flight_};
  Buffer block = AllocAligned(bs);
  if (!block) return Status::Error(ENOMEM, "out of memory");
  uint64_t written = 0;
  bool aborted = false;
  // Dirty runs that continue one another (across blocks too) go to SOURCE
  // in one write of up to kCoalesceBytes. One write is in flight (on a
  // thread of its own) while the next is copied out of the cache, so the
  // copying and CRC checks overlap SOURCE's time; the next write starts
  // only after it ends, so a file's writes stay in order.
  const size_t co_cap = std::max<size_t>(kCoalesceBytes, bs);
  Buffer co_bufs[2] = {AllocAligned(co_cap), AllocAligned(co_cap)};
  if (!co_bufs[0] || !co_bufs[1]) return Status::Error(ENOMEM, "out of memory");
  int co_cur = 0;
  uint64_t co_pos = 0;
  size_t co_len = 0;
  uint64_t co_seq = 0;  // the number the buffer being filled will have as a write
  // The next piece's size: set by the write in flight, read by the next one
  // after it ended (future::get orders them).
  size_t piece = kWritePieceMinBytes;
  uint64_t writes_done = 0;  // writes finished (in order: one is in flight at a time)
  // Waited for on every way out, before the descriptor closes (it is
  // destroyed before `closer`); a write that timed out parks it.
  struct InFlightWrite {
    std::future<Status> f;
    size_t len = 0;
    std::function<void(const Status&)> timed_out;
    Status Wait() {
      if (!f.valid()) return Status::Ok();
      Status w = f.get();
      if (w.code() == ETIMEDOUT) timed_out(w);
      return w;
    }
    ~InFlightWrite() { (void)Wait(); }
  } in_flight_write;
  in_flight_write.timed_out = [&](const Status& w) { (void)failed(w); };
  // A write StopWriteback cut short ends the batch as if it stopped before
  // that write (`aborted`): not an error.
  auto wait_write = [&]() -> Status {
    const bool any = in_flight_write.f.valid();
    Status w = in_flight_write.Wait();
    if (any && w.code() == ECANCELED) {
      aborted = true;
      return Status::Ok();
    }
    if (any && w.ok()) {
      counters_.writeback_writes++;
      writes_done++;
      written += in_flight_write.len;
    }
    return w;
  };
  auto write_out = [&]() -> Status {
    if (co_len == 0) return Status::Ok();
    Status w = wait_write();
    if (!w.ok()) return w;
    if (aborted) {
      co_len = 0;  // never written: those blocks stay dirty
      return Status::Ok();
    }
    const char* data = co_bufs[co_cur].get();
    const uint64_t pos = co_pos;
    const size_t len = co_len;
    Backing* backing = wb_backing_;
    const std::atomic<bool>* abort = background ? &wb_abort_ : nullptr;
    size_t* next_piece = &piece;
    source_touched = true;
    in_flight_write.f = std::async(
        std::launch::async, [backing, abort, next_piece, fd, pos, len, data]() -> Status {
          for (size_t done = 0; done < len;) {
            if (abort && abort->load(std::memory_order_relaxed)) {
              return Status::Error(ECANCELED, "writeback stopped");
            }
            const size_t n = std::min(*next_piece, len - done);
            const uint64_t t0 = MonotonicNs();
            Status s = backing->Write(fd, pos + done, n, data + done);
            if (!s.ok()) return s;
            const uint64_t ns = std::max<uint64_t>(1, MonotonicNs() - t0);
            const double fit = static_cast<double>(n) * kWritePieceNs / static_cast<double>(ns);
            *next_piece = fit >= static_cast<double>(kCoalesceBytes)
                              ? kCoalesceBytes
                              : std::max(kWritePieceMinBytes, static_cast<size_t>(fit));
            done += n;
          }
          return Status::Ok();
        });
    in_flight_write.len = len;
    co_cur ^= 1;
    co_len = 0;
    co_seq++;
    return Status::Ok();
  };
  for (uint64_t index : wanted) {
    // Shutting down: what was written so far is synced and marked clean
    // below, the rest stays dirty (as if written again meanwhile).
    if (background && wb_abort_.load(std::memory_order_relaxed)) {
      aborted = true;
      break;
    }
    auto lock = LockBlock(file_id, index);
    auto r = meta_->GetBlock(file_id, index);
    Status s = r.ok() ? Status::Ok() : r.status();
    BlockRecord rec;
    bool have = s.ok() && r.value() && r.value()->AnyDirty();
    if (have) rec = *r.value();
    if (s.ok() && ImageEpochs()) {
      // The version sealed at the last fsync (its slot is held), not the
      // current one; none once the block is clean or gone.
      auto v = epoch.find(index);
      if (!have) {
        std::lock_guard<std::mutex> l(mu_);
        EpochBlockDone(BlockKey{file_id, index}, v->second.generation, v->second.dirty);
      }
      have = have && v->second.AnyDirty();
      if (have) rec = v->second;
    }
    if (have) {
      // Each run of dirty sub-blocks in one read of the store.
      for (uint32_t i = 0; s.ok() && i < rec.sub_blocks();) {
        if (!rec.IsDirty(i)) {
          ++i;
          continue;
        }
        uint32_t n = 1;
        while (i + n < rec.sub_blocks() && rec.IsDirty(i + n)) ++n;
        s = ReadSubBlocks(rec, i, i + n, block.get() + static_cast<size_t>(i) * kSubBlockSize);
        i += n;
      }
    }
    UnlockBlock(file_id, lock);
    if (!s.ok()) return s;
    if (!have) continue;
    in_flight.total++;
    in_flight.mine++;
    std::vector<uint64_t> clipped(rec.dirty.size(), 0);
    // Dirty runs to SOURCE, clipped at the file's size.
    for (uint32_t i = 0; i < rec.sub_blocks();) {
      if (!rec.IsDirty(i)) {
        ++i;
        continue;
      }
      uint32_t n = 1;
      while (i + n < rec.sub_blocks() && rec.IsDirty(i + n)) ++n;
      uint64_t pos = index * bs + static_cast<uint64_t>(i) * kSubBlockSize;
      uint64_t len = static_cast<uint64_t>(n) * kSubBlockSize;
      for (uint32_t k = 0; k < n; ++k) {
        if (pos + (uint64_t{k} + 1) * kSubBlockSize > size) {
          clipped[(i + k) / 64] |= uint64_t{1} << ((i + k) % 64);
        }
      }
      if (pos < size) {
        len = std::min<uint64_t>(len, size - pos);
        if (co_len > 0 && (co_pos + co_len != pos || co_len + len > co_cap)) {
          s = write_out();
          if (!s.ok()) return failed(s);
        }
        if (co_len == 0) co_pos = pos;
        std::memcpy(co_bufs[co_cur].get() + co_len,
                    block.get() + static_cast<size_t>(i) * kSubBlockSize, static_cast<size_t>(len));
        co_len += static_cast<size_t>(len);
      }
      i += n;
    }
    taken.push_back(Taken{index, rec.generation, rec.dirty, std::move(clipped), co_seq});
  }
  {
    Status w = aborted ? Status::Ok() : write_out();
    if (w.ok()) w = wait_write();
    if (!w.ok()) return failed(w);
  }
  if (aborted) {
    // Only blocks whose every write finished are synced and marked clean;
    // the others stay dirty (the next mount writes them again).
    taken.erase(std::remove_if(taken.begin(), taken.end(),
                               [&](const Taken& t) { return t.write_seq >= writes_done; }),
                taken.end());
  }
  // Cut short, or more batches to come, SOURCE does not grow to the mount's
  // size yet: the blocks not written stay dirty and the size with them.
  const bool grow = size > static_cast<uint64_t>(st.st_size);
  if (static_cast<uint64_t>(st.st_size) != size && (!grow || (last && !aborted))) {
    source_touched = true;
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) {
      return Status::FromErrno(errno, "writeback of '" + file_rec.path + "': truncate");
    }
  }
  // On SOURCE for good before any block is called clean.
  Status s = wb_backing_->Sync(fd);
  if (!s.ok()) return failed(s);
  struct timespec times[2];
  times[0].tv_nsec = UTIME_OMIT;
  times[0].tv_sec = 0;
  times[1].tv_sec = static_cast<time_t>(mtime_ns / 1000000000);
  times[1].tv_nsec = static_cast<long>(mtime_ns % 1000000000);
  if (mtime_ns > 0) (void)futimens(fd, times);
  s = wb_backing_->Stat(fd, &st);
  if (!s.ok()) return failed(s);
  counters_.bytes_written_back += written;

  // SOURCE's new look is ours: recorded before the blocks turn clean, so a
  // crash in between rewrites the same data rather than seeing a conflict.
  Fingerprint now = FingerprintOf(st);
  // Whether the file's size moved away from `size` since the round took it:
  // then the sub-blocks clipped at `size` hold data SOURCE has not got yet.
  bool size_moved = false;
  {
    // A fresh read: writes meanwhile may have grown the file's record.
    std::lock_guard<std::mutex> lock(files_mu_);
    auto r = meta_->GetFile(file_id);
    if (!r.ok()) return r.status();
    const uint64_t recorded = r.value() ? r.value()->size : size;
    if (r.value()) {
      FileRecord f = *r.value();
      f.fingerprint = now;
      f.flags &= ~FileRecord::kWritingBack;
      MetaBatch batch;
      batch.Put(f);
      s = meta_->Commit(batch, false);
      if (!s.ok()) return s;
    }
    // Opened since the round began (nothing had it open then): it is the
    // live file now, which must learn SOURCE's new look and whose size
    // counts (until session 8 the round looked only at the file it had
    // found, and an append meanwhile lost its dirty bits below).
    if (!live) {
      auto it = open_files_.find(file_id);
      if (it != open_files_.end()) live = it->second.lock();
    }
    if (live) {
      std::lock_guard<std::mutex> l(live->mu_);
      live->fingerprint_ = now;
      size_moved = (live->overlay_ ? live->size_ : recorded) != size;
    } else {
      size_moved = recorded != size;
    }
  }
  bool all_clean = true;
  for (const Taken& t : taken) {
    auto lock = LockBlock(file_id, t.index);
    auto r = meta_->GetBlock(file_id, t.index);
    if (r.ok() && r.value()) {
      BlockRecord rec = *r.value();
      MetaBatch batch;
      if (rec.generation == t.generation) {
        // Written again in place meanwhile? Only sub-blocks that were not
        // valid can have been: those stay dirty. So do sub-blocks past the
        // size we wrote up to, if the file grew since: not on SOURCE yet.
        // Sub-blocks clipped at a size that did not move hold bytes past
        // the file's end (the tail of a write a crash cut short before its
        // size was recorded): not SOURCE's, so not valid either, or a
        // later write that grows the file would show them.
        const BlockRecord before = rec;
        bool cut = false;
        for (size_t w = 0; w < rec.dirty.size(); ++w) {
          uint64_t written = t.dirty[w] & ~(size_moved ? t.clipped[w] : 0);
          rec.dirty[w] &= ~written;
          if (!size_moved) {
            cut = cut || (rec.valid[w] & t.clipped[w]) != 0;
            rec.valid[w] &= ~t.clipped[w];
          }
        }
        if (cut) {
          // The version before keeps its claim on those sub-blocks until a
          // persist (a synced record may name them): no in-place write over
          // them meanwhile, as after a write-through.
          std::lock_guard<std::mutex> l(mu_);
          SealVersion(&before, &rec);
        }
      }
      uint64_t seq = rec.dirty_seq;
      bool clean = !rec.AnyDirty();
      if (clean) {
        batch.RemoveDirty(seq);
        rec.dirty_seq = 0;
      }
      batch.Put(rec);
      std::unique_lock<std::mutex> files_lock(files_mu_);
      // Dropped meanwhile (an unlink, a truncate): its record is gone and
      // must not come back.
      const bool gone = DroppedWhileHeld(*lock);
      if (!gone) s = meta_->Commit(batch, false);
      files_lock.unlock();
      if (s.ok()) {
        std::lock_guard<std::mutex> l(mu_);
        // This version is on the image, synced: its epoch is done with it.
        if (ImageEpochs()) EpochBlockDone(BlockKey{file_id, t.index}, t.generation, t.dirty);
      }
      if (s.ok() && !gone) {
        std::lock_guard<std::mutex> l(mu_);
        if (index_->Find({file_id, t.index}) == rec.slot) {
          SetDirtySubs(static_cast<uint32_t>(rec.slot), rec.DirtyCount());
        }
        if (clean) {
          EraseDirty(seq);
          if (index_->Find({file_id, t.index}) == rec.slot) {
            uint32_t slot = static_cast<uint32_t>(rec.slot);
            dirty_slot_[slot] = false;
            clean_pending_.push_back(slot);  // a victim once the clean record is synced
          }
        }
      }
      all_clean = all_clean && clean;
    }
    UnlockBlock(file_id, lock);
    in_flight.total--;
    in_flight.mine--;
    if (!s.ok()) return s;
  }
  if (all_clean && live && !HasDirty(file_id)) {
    std::lock_guard<std::mutex> lock(live->mu_);
    // Not while a write is between growing size_ and registering its
    // dirty blocks: its data is not on SOURCE yet.
    if (live->size_ == now.size && live->writes_ == 0) live->overlay_ = false;
  }
  return Status::Ok();
}

Status Engine::FlushFile(CachedFile& file) {
  std::vector<uint64_t> indices;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [seq, key] : dirty_) {
      if (key.file_id == file.file_id_) indices.push_back(key.index);
    }
  }
  if (indices.empty()) return Status::Ok();
  std::sort(indices.begin(), indices.end());
  // Image mode: the caller needs all of it on SOURCE: now is an epoch.
  Status s = SealEpoch(/*all=*/true);
  if (!s.ok()) return s;
  return WriteBackFile(file.file_id_, indices, /*background=*/false);
}

std::shared_ptr<CachedFile> Engine::LivePath(const std::string& path) {
  auto id = meta_->LookupPath(path);
  if (!id.ok() || !id.value()) return nullptr;
  return LiveFile(*id.value());
}

Status Engine::FlushPath(const std::string& path, bool only_if_open) {
  auto id = meta_->LookupPath(path);
  if (!id.ok() || !id.value()) return id.status();
  if (!HasDirty(*id.value())) return Status::Ok();
  auto live = LiveFile(*id.value());
  if (live) return FlushFile(*live);
  if (only_if_open) return Status::Ok();
  std::vector<uint64_t> indices;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [seq, key] : dirty_) {
      if (key.file_id == *id.value()) indices.push_back(key.index);
    }
  }
  std::sort(indices.begin(), indices.end());
  Status s = SealEpoch(/*all=*/true);
  if (!s.ok()) return s;
  return WriteBackFile(*id.value(), indices, /*background=*/false);
}

Status Engine::Flush() {
  // mode=cow: the layer stays (CommitLayer writes it down).
  if (!WritebackAllowed()) return Status::Ok();
  // Everything dirty now, by file, each file's blocks in order.
  std::map<uint64_t, std::set<uint64_t>> by_file;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [seq, key] : dirty_) by_file[key.file_id].insert(key.index);
  }
  // One file failing (SOURCE refuses it, its record is gone) does not hold
  // the others back; the first error is returned.
  Status first;
  for (const auto& [file_id, set] : by_file) {
    if (wb_abort_.load(std::memory_order_relaxed)) break;  // StopWriteback
    Status s = WriteBackFile(file_id, std::vector<uint64_t>(set.begin(), set.end()),
                             /*background=*/true);
    if (!s.ok() && first.ok()) first = s;
  }
  return first;
}

uint64_t Engine::StartFlush() {
  if (!WritebackAllowed()) return 0;  // mode=cow: nothing is written back
  // Image mode: a flush asked for makes the current state an epoch.
  Status sealed = SealEpoch(/*all=*/true);
  if (!sealed.ok()) LogWarning("flush: " + sealed.message());
  uint64_t mark;
  {
    std::lock_guard<std::mutex> lock(mu_);
    mark = dirty_.empty() ? 0 : dirty_.rbegin()->first;
  }
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    wb_kicks_++;
    flush_goal_ = std::max(flush_goal_, mark);
  }
  wb_cv_.notify_all();
  return mark;
}

Engine::FlushLeft Engine::FlushProgress(uint64_t mark) {
  FlushLeft left;
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = dirty_.begin(); it != dirty_.end() && it->first <= mark; ++it) {
    left.blocks++;
    if (conflict_files_.count(it->second.file_id) != 0) left.conflicted++;
  }
  return left;
}

Engine::DrainReport Engine::DrainForExit(double timeout_s, const std::function<bool()>& stop) {
  DrainReport report;
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(std::max(0.0, timeout_s) * 1000));
  const uint64_t written_before = counters_.bytes_written_back.load();
  Status marked = lock_ ? lock_->MarkFlushing() : Status::Ok();
  if (!marked.ok()) LogWarning("cache '" + dir_ + "': " + marked.message());
  // Everything is dirty from before the mark: nothing writes after the unmount.
  const uint64_t mark = StartFlush();
  while (true) {
    FlushLeft left = FlushProgress(mark);
    if (left.blocks <= left.conflicted) {
      report.complete = true;
      break;
    }
    if (stop && stop()) {
      report.stopped = true;
      break;
    }
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  StopWriteback();
  {
    std::lock_guard<std::mutex> lock(mu_);
    report.blocks_left = dirty_.size();
    report.dirty_bytes_left = dirty_subs_total_ * kSubBlockSize;
  }
  report.bytes_written_back = counters_.bytes_written_back.load() - written_before;
  return report;
}

}  // namespace cachefs

namespace cachefs {

Engine::SourceChange::SourceChange(const std::shared_ptr<CachedFile>& file) : file_(file) {
  if (!file_) return;
  std::unique_lock<std::mutex> lock(file_->mu_);
  file_->cv_.wait(lock, [this] { return !file_->source_change_; });
  file_->source_change_ = true;
  file_->cv_.wait(lock, [this] { return file_->writes_ == 0; });
}

Engine::SourceChange::~SourceChange() {
  if (!file_) return;
  {
    std::lock_guard<std::mutex> lock(file_->mu_);
    file_->source_change_ = false;
  }
  file_->cv_.notify_all();
}

}  // namespace cachefs
