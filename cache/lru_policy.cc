#include "cache/lru_policy.h"

namespace cachefs {

LruPolicy::LruPolicy(uint32_t slot_count)
    : slot_count_(slot_count), queue_(slot_count, 1), tracked_(slot_count, false) {}

bool LruPolicy::Admit(uint64_t /*key_hash*/, bool /*must_evict*/) {
  counters_.admitted++;
  return true;
}

void LruPolicy::Track(uint32_t slot) {
  if (tracked_[slot]) return;
  tracked_[slot] = true;
  queue_.PushBack(0, slot);
  counters_.tracked++;
}

void LruPolicy::Touch(uint32_t slot) {
  if (!tracked_[slot]) return;
  counters_.touches++;
  queue_.MoveToBack(0, slot);
}

void LruPolicy::Remove(uint32_t slot) {
  if (!tracked_[slot]) return;
  queue_.Unlink(0, slot);
  tracked_[slot] = false;
  counters_.tracked--;
}

std::optional<uint32_t> LruPolicy::Victim() {
  uint32_t front = queue_.Front(0);
  if (front == SlotQueues::kNone) return std::nullopt;
  counters_.victims++;
  return front;
}

std::string LruPolicy::SaveHints() const {
  // Recency rank scaled to 0..255 (255 = most recent): the order comes back
  // to within 1/256 of the cache, for two bytes a slot.
  std::vector<uint8_t> rank(slot_count_, 0);
  uint64_t n = counters_.tracked;
  uint64_t i = 0;
  for (uint32_t s = queue_.Front(0); s != SlotQueues::kNone; s = queue_.Next(s), ++i) {
    rank[s] = static_cast<uint8_t>(i * 256 / n);
  }
  std::vector<std::pair<uint32_t, uint8_t>> entries;
  entries.reserve(n);
  for (uint32_t s = 0; s < slot_count_; ++s) {
    if (tracked_[s]) entries.emplace_back(s, rank[s]);
  }
  return EncodeHints(name(), slot_count_, entries);
}

Status LruPolicy::LoadHints(std::string_view hints) {
  auto entries = DecodeHints(hints, name(), slot_count_);
  if (!entries.ok()) return entries.status();
  // Counting sort by rank, then oldest first to the back: slots without a
  // hint stay at the front, as the least recent.
  std::vector<uint32_t> start(257, 0);
  for (const auto& [slot, rank] : entries.value()) {
    if (tracked_[slot]) start[rank + 1]++;
  }
  for (int r = 0; r < 256; ++r) start[r + 1] += start[r];
  std::vector<uint32_t> order(start[256]);
  for (const auto& [slot, rank] : entries.value()) {
    if (tracked_[slot]) order[start[rank]++] = slot;
  }
  for (uint32_t slot : order) queue_.MoveToBack(0, slot);
  return Status::Ok();
}

size_t LruPolicy::MemoryUsed() const {
  return sizeof(*this) + queue_.MemoryUsed() + tracked_.capacity() / 8;
}

}  // namespace cachefs
