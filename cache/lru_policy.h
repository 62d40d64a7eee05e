// LruPolicy: evicts the least recently used slot.
//
// An intrusive doubly linked list over slot numbers (two uint32_t per slot).
// Not scan-resistant: one pass over more data than the cache flushes it.
#pragma once

#include <vector>

#include "cache/policy.h"

namespace cachefs {

class LruPolicy final : public Policy {
 public:
  explicit LruPolicy(uint32_t slot_count);

  const char* name() const override { return "lru"; }
  void Track(uint32_t slot) override;
  void Touch(uint32_t slot) override;
  void Remove(uint32_t slot) override;
  std::optional<uint32_t> Victim() override;
  bool IsTracked(uint32_t slot) const override;
  PolicyCounters counters() const override { return counters_; }
  size_t MemoryUsed() const override;

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  void Unlink(uint32_t slot);
  void PushFront(uint32_t slot);

  // prev_[s] == kNone && head_ != s means untracked; kept as two arrays so a
  // slot costs 8 bytes.
  std::vector<uint32_t> prev_;
  std::vector<uint32_t> next_;
  std::vector<bool> tracked_;
  uint32_t head_ = kNone;  // most recent
  uint32_t tail_ = kNone;  // least recent
  PolicyCounters counters_;
};

}  // namespace cachefs
