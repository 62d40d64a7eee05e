// CleanerPolicy: empties the cache (dm-cache's cleaner).
//
// It admits nothing, so misses are served from SOURCE and never cached, and it
// hands out the tracked slots as victims in the order they were tracked
// (hits do not reorder them). Its other job, draining every dirty block to
// SOURCE, belongs to the writeback code, which asks DrainsDirty(). Used to
// retire a cache or to switch modes without leaving data behind. One queue
// over slot numbers (8 bytes per slot) plus a tracked bit; no hints.
//
// Thread-safety: none (see Policy).
#pragma once

#include <vector>

#include "cache/policy.h"

namespace cachefs {

class CleanerPolicy final : public Policy {
 public:
  explicit CleanerPolicy(uint32_t slot_count);

  const char* name() const override { return "cleaner"; }
  bool Admit(uint64_t key_hash, bool must_evict) override;
  void Track(uint32_t slot) override;
  void Touch(uint32_t slot) override;
  void Remove(uint32_t slot) override;
  std::optional<uint32_t> Victim() override;
  bool IsTracked(uint32_t slot) const override { return tracked_[slot]; }
  bool DrainsDirty() const override { return true; }
  std::string SaveHints() const override;
  Status LoadHints(std::string_view hints) override;
  PolicyCounters counters() const override { return counters_; }
  size_t MemoryUsed() const override;

 private:
  uint32_t slot_count_;
  SlotQueues queue_;  // one queue, first tracked at the front
  std::vector<bool> tracked_;
  PolicyCounters counters_;
};

}  // namespace cachefs
