// LruPolicy: caches every miss and evicts the least recently used slot.
//
// One intrusive queue over slot numbers (8 bytes per slot) plus a tracked bit.
// Not scan-resistant: one pass over more data than the cache flushes it; kept
// as the baseline the simulator compares against and for workloads that are
// purely recency-driven. Hints: each slot's recency rank in 256 buckets.
//
// Thread-safety: none (see Policy).
#pragma once

#include <vector>

#include "cache/policy.h"

namespace cachefs {

class LruPolicy final : public Policy {
 public:
  explicit LruPolicy(uint32_t slot_count);

  const char* name() const override { return "lru"; }
  bool Admit(uint64_t key_hash, bool must_evict) override;
  void Track(uint32_t slot) override;
  void Touch(uint32_t slot) override;
  void Remove(uint32_t slot) override;
  std::optional<uint32_t> Victim() override;
  bool IsTracked(uint32_t slot) const override { return tracked_[slot]; }
  std::string SaveHints() const override;
  Status LoadHints(std::string_view hints) override;
  PolicyCounters counters() const override { return counters_; }
  size_t MemoryUsed() const override;

 private:
  uint32_t slot_count_;
  SlotQueues queue_;  // one queue, least recent at the front
  std::vector<bool> tracked_;
  PolicyCounters counters_;
};

}  // namespace cachefs
