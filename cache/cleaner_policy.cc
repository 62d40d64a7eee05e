#include "cache/cleaner_policy.h"

namespace cachefs {

CleanerPolicy::CleanerPolicy(uint32_t slot_count)
    : slot_count_(slot_count), queue_(slot_count, 1), tracked_(slot_count, false) {}

bool CleanerPolicy::Admit(uint64_t /*key_hash*/, bool /*must_evict*/) {
  counters_.rejected++;
  return false;
}

void CleanerPolicy::Track(uint32_t slot) {
  if (tracked_[slot]) return;
  tracked_[slot] = true;
  queue_.PushBack(0, slot);
  counters_.tracked++;
}

void CleanerPolicy::Touch(uint32_t slot) {
  if (tracked_[slot]) counters_.touches++;
}

void CleanerPolicy::Remove(uint32_t slot) {
  if (!tracked_[slot]) return;
  queue_.Unlink(0, slot);
  tracked_[slot] = false;
  counters_.tracked--;
}

std::optional<uint32_t> CleanerPolicy::Victim() {
  uint32_t front = queue_.Front(0);
  if (front == SlotQueues::kNone) return std::nullopt;
  // The engine passes over a busy victim with Touch() and asks again, so the
  // front goes to the back here, or it would be offered forever.
  queue_.MoveToBack(0, front);
  counters_.victims++;
  return front;
}

std::string CleanerPolicy::SaveHints() const { return EncodeHints(name(), slot_count_, {}); }

Status CleanerPolicy::LoadHints(std::string_view hints) {
  auto entries = DecodeHints(hints, name(), slot_count_);
  return entries.ok() ? Status::Ok() : entries.status();
}

size_t CleanerPolicy::MemoryUsed() const {
  return sizeof(*this) + queue_.MemoryUsed() + tracked_.capacity() / 8;
}

}  // namespace cachefs
