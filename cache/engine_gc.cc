// Garbage collection of the store's segments (cache/segments.h has the
// layout and the append cursor).
//
// Written blocks go to the append cursor, one wholly free segment after the
// other; blocks written again, written back and evicted leave free and dead
// slots behind them all over the store. When a written block opens a
// segment and fewer than gc_low_ wholly free ones are left, the collector
// thread cleans segments until gc_high_ are: the one with the fewest live
// blocks first (greedy), dropping its clean blocks (SOURCE has them) and
// moving its dirty and pinned ones to free slots outside it. Nothing waits
// for it: a write that finds no wholly free segment takes any free slot (or
// evicts a clean block) as a fetch does.
//
// Crash points: a moved block's data is in its new slot before the record
// that points there is committed, and that record keeps the old slot as an
// earlier version (power loss, contract 1c). Dropped and vacated slots are
// quarantined like any replaced slot: free only after the persist that
// ends the round has synced the records that stopped pointing at them
// (contract 2). A block busy with a reader, a fetch, a write or the writer
// is left where it is for a later round; a dropped block is held from the
// decision until its removal is committed (Engine::Evicted), so a write of
// it waits rather than commit a record the removal would then take.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "cache/engine.h"
#include "common/crc32c.h"
#include "common/log.h"

namespace cachefs {
namespace {

struct FreeDeleter {
  void operator()(char* p) const { std::free(p); }
};

}  // namespace

void Engine::WakeGc() {
  {
    std::lock_guard<std::mutex> lock(gc_wake_mu_);
    gc_kick_ = true;
  }
  gc_cv_.notify_one();
}

void Engine::GcLoop() {
  std::unique_lock<std::mutex> lock(gc_wake_mu_);
  while (true) {
    gc_cv_.wait(lock, [this] { return gc_stopping_ || gc_kick_; });
    if (gc_stopping_) return;
    gc_kick_ = false;
    lock.unlock();
    Status s = CollectGarbage(gc_high_);
    if (!s.ok()) LogWarning("segment cleaning: " + s.message());
    lock.lock();
  }
}

Status Engine::CollectGarbage(uint32_t want) {
  std::lock_guard<std::mutex> collecting(gc_mu_);
  uint32_t rounds;
  {
    std::lock_guard<std::mutex> lock(mu_);
    rounds = segments_->segment_count();
  }
  for (uint32_t round = 0; round < rounds; ++round) {
    {
      std::lock_guard<std::mutex> stop(gc_wake_mu_);
      if (gc_stopping_) break;
    }
    uint32_t segment;
    std::vector<std::pair<BlockKey, uint32_t>> moves;
    Evicted drops;  // held until their removal is committed
    std::vector<uint32_t> dropped;
    bool busy = false;
    bool dead_only = false;  // nothing live: it waits only for a persist
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (segments_->empty_segments() >= want) break;
      segment = segments_->Victim();
      if (segment == SegmentTable::kNone) break;
      segments_->SetCleaning(segment);
      dead_only = segments_->live(segment) == 0;
      for (uint32_t slot = segments_->FirstSlot(segment); slot < segments_->EndSlot(segment);
           ++slot) {
        if (!index_->InUse(slot)) continue;
        const BlockKey key = index_->Owner(slot);
        if (readers_[slot] > 0 || fetches_.count({key.file_id, key.index}) != 0) {
          busy = true;
          continue;
        }
        if (dirty_slot_[slot] || pinned_slot_[slot]) {
          moves.emplace_back(key, slot);
          continue;
        }
        // Clean: dropped as an eviction would, without asking the policy.
        IndexErase(slot);
        policy_->Remove(slot);
        Evict(key, drops);
        dropped.push_back(slot);
      }
      // No free slot anywhere (every block dirty): no point locking the
      // blocks to find that out one by one.
      if (segments_->free_slots() == 0) moves.clear();
    }
    Status s;
    if (!dropped.empty()) {
      s = CommitEvicted(drops);
      // After a failed commit the records still point at the slots: they
      // stay out of use until the next mount rather than be reused.
      if (s.ok()) {
        ReleaseDropped(dropped);
        counters_.gc_dropped_blocks += dropped.size();
      }
    }
    bool stuck = !s.ok();
    bool moved = false;
    for (const auto& [key, slot] : moves) {
      if (!s.ok()) break;
      bool gone = false;
      s = MoveBlock(key, slot, &gone);
      if (gone) {
        moved = true;
      } else {
        stuck = true;
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      segments_->SetCleaning(SegmentTable::kNone);
    }
    if (!s.ok()) return s;
    // Nothing to free (every block dirty and no room to move one): no
    // persist for nothing; the writer makes room, and the next segment the
    // cursor opens wakes us again.
    if (dropped.empty() && !moved && !dead_only) break;
    // Frees what this round quarantined (and whatever else waits for it).
    s = Persist();
    if (!s.ok()) return s;
    bool emptied;
    {
      std::lock_guard<std::mutex> lock(mu_);
      emptied = segments_->IsEmpty(segment);
    }
    // Another round would pick the same segment again at once: later.
    if (busy || stuck || !emptied) break;
    counters_.segments_cleaned++;
  }
  return Status::Ok();
}

Status Engine::MoveBlock(const BlockKey& key, uint32_t slot, bool* gone) {
  *gone = false;
  const uint64_t bs = sb_.block_size;
  auto lock = LockBlock(key.file_id, key.index);
  struct Unlock {
    Engine* e;
    uint64_t id;
    const std::shared_ptr<Fetch>& l;
    ~Unlock() { e->UnlockBlock(id, l); }
  } unlock{this, key.file_id, lock};
  uint32_t fresh;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (index_->Find(key) != slot) {
      *gone = true;  // written, dropped or moved meanwhile: not here any more
      return Status::Ok();
    }
    // The cursor first; no block is evicted to make room for a move.
    auto taken = segments_->TakeLog();
    if (!taken) taken = segments_->TakeAny();
    if (!taken) return Status::Ok();
    fresh = *taken;
    readers_[slot]++;
  }
  auto undo = [&](const Status& s) {
    std::lock_guard<std::mutex> l(mu_);
    FreeSlot(fresh);
    ReleaseReader(slot);
    return s;
  };
  auto r = meta_->GetBlock(key.file_id, key.index);
  if (!r.ok()) return undo(r.status());
  if (!r.value() || r.value()->slot != slot) return undo(Status::Ok());
  const BlockRecord rec = *r.value();
  std::unique_ptr<char, FreeDeleter> whole(
      static_cast<char*>(std::aligned_alloc(kSubBlockSize, bs)));
  if (!whole) return undo(Status::Error(ENOMEM, "out of memory"));
  std::memset(whole.get(), 0, bs);
  BlockRecord out = BlockRecord::Empty(key.file_id, key.index, sb_.block_size);
  out.slot = fresh;
  // The same data, so the same generation (and CRCs): the writer, which
  // marks a block clean only if its generation did not move while it wrote
  // it back, need not write a moved block again.
  out.generation = rec.generation;
  out.dirty_seq = rec.dirty_seq;
  for (uint32_t i = 0; i < rec.sub_blocks(); ++i) {
    if (!rec.IsValid(i)) continue;
    char* sub = whole.get() + static_cast<size_t>(i) * kSubBlockSize;
    Status s = ReadSubBlocks(rec, i, i + 1, sub);
    if (!s.ok()) {
      if (rec.IsDirty(i)) return undo(s);  // stays where it is, reported by reads
      continue;                            // a clean sub-block gone bad is not carried over
    }
    out.SetValid(i, true);
    out.SetDirty(i, rec.IsDirty(i));
    out.crc[i] = rec.crc[i];
  }
  // One sequential write of the whole block (the invalid sub-blocks are
  // written too, as zeros: nothing points at them).
  Status s = store_->Write(fresh, 0, static_cast<uint32_t>(bs), whole.get());
  if (!s.ok()) return undo(s);
  // Committed under mu_, against the index: a drop (truncate, unlink) takes
  // no block lock, so it either unindexed the block before (and its removal
  // is on its way: nothing to put back) or finds it in its new slot after.
  std::lock_guard<std::mutex> l(mu_);
  if (index_->Find(key) != slot) {
    FreeSlot(fresh);
    ReleaseReader(slot);
    *gone = true;
    return Status::Ok();
  }
  SealVersion(&rec, &out);
  MetaBatch batch;
  batch.Put(out);
  s = meta_->Commit(batch, false);
  if (!s.ok()) {
    FreeSlot(fresh);
    ReleaseReader(slot);
    return s;
  }
  IndexErase(slot);
  policy_->Remove(slot);
  dirty_slot_[slot] = false;
  SetDirtySubs(slot, 0);
  QuarantineSlot(slot);
  IndexInsert(key, fresh);
  dirty_slot_[fresh] = out.AnyDirty();
  SetDirtySubs(fresh, out.DirtyCount());
  if (!dirty_slot_[fresh] && !pinned_slot_[fresh]) policy_->Track(fresh);
  counters_.gc_moved_blocks++;
  ReleaseReader(slot);
  *gone = true;
  return Status::Ok();
}

}  // namespace cachefs
