#include "cache/lru_policy.h"

namespace cachefs {

LruPolicy::LruPolicy(uint32_t slot_count)
    : prev_(slot_count, kNone), next_(slot_count, kNone), tracked_(slot_count, false) {}

void LruPolicy::Unlink(uint32_t slot) {
  uint32_t p = prev_[slot];
  uint32_t n = next_[slot];
  if (p != kNone) {
    next_[p] = n;
  } else {
    head_ = n;
  }
  if (n != kNone) {
    prev_[n] = p;
  } else {
    tail_ = p;
  }
  prev_[slot] = next_[slot] = kNone;
}

void LruPolicy::PushFront(uint32_t slot) {
  prev_[slot] = kNone;
  next_[slot] = head_;
  if (head_ != kNone) prev_[head_] = slot;
  head_ = slot;
  if (tail_ == kNone) tail_ = slot;
}

void LruPolicy::Track(uint32_t slot) {
  if (tracked_[slot]) return;
  tracked_[slot] = true;
  PushFront(slot);
  counters_.tracked++;
}

void LruPolicy::Touch(uint32_t slot) {
  if (!tracked_[slot]) return;
  counters_.touches++;
  if (head_ == slot) return;
  Unlink(slot);
  PushFront(slot);
}

void LruPolicy::Remove(uint32_t slot) {
  if (!tracked_[slot]) return;
  Unlink(slot);
  tracked_[slot] = false;
  counters_.tracked--;
}

std::optional<uint32_t> LruPolicy::Victim() {
  if (tail_ == kNone) return std::nullopt;
  counters_.victims++;
  return tail_;
}

bool LruPolicy::IsTracked(uint32_t slot) const { return tracked_[slot]; }

size_t LruPolicy::MemoryUsed() const {
  return (prev_.capacity() + next_.capacity()) * sizeof(uint32_t) + tracked_.capacity() / 8;
}

Result<std::unique_ptr<Policy>> MakePolicy(const std::string& name, uint32_t slot_count) {
  if (name.empty() || name == "lru" || name == "smq") {
    return std::unique_ptr<Policy>(new LruPolicy(slot_count));
  }
  return Status::Invalid("policy '" + name + "' is not available yet");
}

}  // namespace cachefs
