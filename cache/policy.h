// Policy: which missed blocks to cache (admission) and which cached block to
// evict next (eviction).
//
// A policy sees slot numbers and, where it needs one, a 64-bit hash of a
// block's key (BlockKeyHash). The engine's protocol, all under its lock:
//   - hit on slot s:          Touch(s)
//   - miss on key k:          if (!Admit(BlockKeyHash(k), !have_free_slot)) serve uncached;
//                             else take a free slot, or v = Victim() and
//                             Remove(v); fill; TrackAdmitted(slot, BlockKeyHash(k))
//   - block dropped (truncate, invalidate, corrupt): Remove(s)
//   - mount: Track every cached slot, then LoadHints(blob saved by the last
//     clean unmount with the same policy name); unmount: SaveHints()
// Pinned blocks are simply never tracked, so a victim is always a tracked slot.
// A victim stays tracked until Remove(): the engine may pass over it (Touch)
// when it is busy and ask again.
//
// Policies keep O(1) state per slot in flat arrays sized at construction plus
// bounded tables, so their RAM per cached block is small and fixed
// (MemoryUsed()), and every operation is O(1) (amortised at worst).
//
// Thread-safety: none; the engine calls a policy under its own lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace cachefs {

struct PolicyCounters {
  uint64_t tracked = 0;     // slots currently tracked
  uint64_t touches = 0;     // hits reported with Touch()
  uint64_t victims = 0;     // victims handed out by Victim()
  uint64_t admitted = 0;    // misses Admit() said yes to
  uint64_t rejected = 0;    // misses Admit() said no to (served uncached)
  uint64_t promotions = 0;  // moves to a higher level (policies with levels)
  uint64_t demotions = 0;   // moves to a lower level by ageing
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;

  // Whether a missed block with key hash `key_hash` should be cached. A miss
  // is reported here exactly once, whatever the answer, so policies may count
  // it. `must_evict`: no free slot is left, so caching it costs Victim().
  virtual bool Admit(uint64_t key_hash, bool must_evict) = 0;
  // Starts tracking a slot with no history (as at mount).
  // REQUIRES: slot < slot_count and not tracked.
  virtual void Track(uint32_t slot) = 0;
  // Track() for a slot just filled with a missed block that Admit(key_hash)
  // accepted, so the policy can start it from what it knows of the key (a
  // block missed often enters higher). Taking the key here, not remembering
  // it from Admit(), keeps this right when fills of several misses overlap.
  virtual void TrackAdmitted(uint32_t slot, uint64_t key_hash) {
    (void)key_hash;
    Track(slot);
  }
  // A hit. A no-op when not tracked.
  virtual void Touch(uint32_t slot) = 0;
  // Stops tracking; a no-op when not tracked.
  virtual void Remove(uint32_t slot) = 0;
  // The slot to evict next, which stays tracked until Remove(); nullopt when
  // nothing is tracked.
  virtual std::optional<uint32_t> Victim() = 0;
  virtual bool IsTracked(uint32_t slot) const = 0;

  // True for a policy whose job is to empty the cache: the writeback code
  // drains all dirty data under it, not only above dirty_high.
  virtual bool DrainsDirty() const { return false; }

  // Cheap per-slot state of the tracked slots (hit counts, recency), to be
  // given back to LoadHints() of the same policy at the next mount.
  virtual std::string SaveHints() const = 0;
  // Applies SaveHints() output after the engine has re-Tracked the cached
  // slots. Hints for slots that are not tracked now are ignored. A corrupt
  // blob, or one from another policy or slot count, returns an error and
  // leaves every tracked slot tracked, in its cold state.
  virtual Status LoadHints(std::string_view hints) = 0;

  virtual PolicyCounters counters() const = 0;
  // Bytes of RAM the policy holds.
  virtual size_t MemoryUsed() const = 0;
};

// A policy by name (the policy= option) for a store of `slot_count` slots:
// "smq" (the default, also for an empty name), "lru" or "cleaner".
Result<std::unique_ptr<Policy>> MakePolicy(const std::string& name, uint32_t slot_count);

// The names MakePolicy() knows, the default first.
const std::vector<std::string>& PolicyNames();

// The hash of the key (file_id, block index) of a block, as Admit() and
// TrackAdmitted() want it. Well mixed: policies may take any bits of it.
uint64_t BlockKeyHash(uint64_t file_id, uint64_t index);

// --- building blocks of the policies ------------------------------------------

// SlotQueues: `queue_count` intrusive doubly linked queues over slot numbers
// that share two uint32_t arrays, so a slot costs 8 bytes whichever queue it
// is in. A slot is in at most one queue, which the caller keeps track of.
// Thread-safety: none.
class SlotQueues {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  SlotQueues(uint32_t slot_count, uint32_t queue_count);

  // Appends at the back (the newest end). REQUIRES: slot in no queue.
  void PushBack(uint32_t queue, uint32_t slot);
  // REQUIRES: slot is in `queue`.
  void Unlink(uint32_t queue, uint32_t slot);
  // REQUIRES: slot is in `queue`.
  void MoveToBack(uint32_t queue, uint32_t slot);
  // The oldest slot of `queue`, kNone when it is empty.
  uint32_t Front(uint32_t queue) const { return head_[queue]; }
  // The slot after `slot` (towards the back), kNone at the back.
  uint32_t Next(uint32_t slot) const { return next_[slot]; }
  uint32_t size(uint32_t queue) const { return size_[queue]; }
  size_t MemoryUsed() const;

 private:
  std::vector<uint32_t> prev_;
  std::vector<uint32_t> next_;
  std::vector<uint32_t> head_;
  std::vector<uint32_t> tail_;
  std::vector<uint32_t> size_;
};

// The hint blob every policy writes: a header naming the policy and the slot
// count, (slot, value) pairs for tracked slots in increasing slot order, and a
// CRC32C of it all. Two bytes per slot for a dense cache.
std::string EncodeHints(std::string_view policy, uint32_t slot_count,
                        const std::vector<std::pair<uint32_t, uint8_t>>& entries);
// The pairs of `blob`, or an error when it is corrupt or was written by another
// policy or for another slot count.
Result<std::vector<std::pair<uint32_t, uint8_t>>> DecodeHints(std::string_view blob,
                                                              std::string_view policy,
                                                              uint32_t slot_count);

}  // namespace cachefs
