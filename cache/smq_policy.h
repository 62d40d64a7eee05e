// SmqPolicy: the default policy, frequency-aware and scan-resistant, in the
// spirit of dm-cache's smq and mq.
//
// Eviction: cached slots sit in kLevels queues by hit count. A hit moves a
// slot to level bit_width(hits) (0 hits: level 0; 1; 2-3; 4-7; ...; 64 and
// up: level 7), at the back (newest end) of that queue; the victim is the
// front (oldest) of the lowest non-empty level. A new block enters at the
// level its recent misses earn (level 0 when it was seen once). Hit counts
// age: a clock hand halves them (demoting the slot when its level drops) so
// a block that was hot long ago does not stay forever.
//
// Admission keeps one-time reads out. A ghost table bounded at construction
// counts the misses of every block by its BlockKeyHash: a doorkeeper bloom
// filter takes a block's first miss, a count-min sketch of 4-bit counters
// the rest (as in TinyLFU); the sketch ages with the hit counts, the
// doorkeeper is cleared twice as often. When caching a miss would evict, it
// is cached only if its count beats the would-be victim's (hits + 1). So a
// block read once is served from SOURCE and a scan of any length passes by
// the hot set, while a block that comes back within about one ageing period
// gets in. Until the cache is full, every miss is cached.
//
// RAM per slot: 8 bytes of queue links, 1 hit count, a tracked bit, 2 for
// the sketch (4 counters), 2 for the doorkeeper (16 bits): about 13 bytes.
// Every operation is O(1): ageing does a bounded amount of work per access.
//
// Known weakness (docs/policies.md): working sets of equal frequency that
// take turns faster than the ageing period (the simulator's "alternate"
// trace) are served a few points worse than by lru.
//
// Thread-safety: none (see Policy).
#pragma once

#include <vector>

#include "cache/policy.h"

namespace cachefs {

class SmqPolicy final : public Policy {
 public:
  static constexpr uint32_t kLevels = 8;

  explicit SmqPolicy(uint32_t slot_count);

  const char* name() const override { return "smq"; }
  bool Admit(uint64_t key_hash, bool must_evict) override;
  void Track(uint32_t slot) override;
  void TrackAdmitted(uint32_t slot, uint64_t key_hash) override;
  void Touch(uint32_t slot) override;
  void Remove(uint32_t slot) override;
  std::optional<uint32_t> Victim() override;
  bool IsTracked(uint32_t slot) const override { return tracked_[slot]; }
  std::string SaveHints() const override;
  Status LoadHints(std::string_view hints) override;
  PolicyCounters counters() const override { return counters_; }
  size_t MemoryUsed() const override;

  // The level of a tracked slot (for tests).
  uint32_t LevelOf(uint32_t slot) const { return LevelForHits(hits_[slot]); }
  // The ghost table's count of misses of a key (for tests).
  uint32_t Frequency(uint64_t key_hash) const;

 private:
  static uint32_t LevelForHits(uint8_t hits);
  void Insert(uint32_t slot, uint8_t hits);
  // Moves a tracked slot to the back of the level its new hit count gives.
  void SetHits(uint32_t slot, uint8_t hits);
  uint32_t LowestLevel() const;
  // One access went by: ages a share of the hit counts and of the ghost table.
  void Tick();

  // Adds an access of a key to the ghost table.
  void Count(uint64_t key_hash);
  uint32_t SketchEstimate(uint64_t key_hash) const;
  bool InDoorkeeper(uint64_t key_hash) const;

  uint32_t slot_count_;
  SlotQueues levels_;          // queue i = level i, oldest at the front
  std::vector<uint8_t> hits_;  // saturating, halved by ageing
  std::vector<bool> tracked_;
  uint32_t non_empty_ = 0;  // bit i: level i has slots

  std::vector<uint64_t> sketch_;      // 16 counters of 4 bits a word
  std::vector<uint64_t> doorkeeper_;  // bloom filter bits

  // Ageing: each access adds the size of a table to its budget; every
  // `period_` of budget halves one entry (one slot's hits, one sketch word)
  // or clears one doorkeeper word, so each table ages once per period_
  // accesses (the doorkeeper twice), a bounded amount at a time.
  uint64_t period_;
  uint64_t slot_budget_ = 0;
  uint64_t sketch_budget_ = 0;
  uint64_t doorkeeper_budget_ = 0;
  uint32_t slot_hand_ = 0;
  size_t sketch_hand_ = 0;
  size_t doorkeeper_hand_ = 0;

  PolicyCounters counters_;
};

}  // namespace cachefs
