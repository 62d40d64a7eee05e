#include "cache/segments.h"

#include <algorithm>

namespace cachefs {

uint32_t SegmentTable::SlotsPerSegment(uint32_t block_size, uint32_t slot_count) {
  const uint64_t by_bytes = std::max<uint64_t>(1, kSegmentBytes / block_size);
  const uint64_t by_count = std::max<uint64_t>(1, slot_count / kMinSegments);
  return static_cast<uint32_t>(std::min(by_bytes, by_count));
}

SegmentTable::SegmentTable(uint32_t slot_count, uint32_t slots_per_segment)
    : slot_count_(slot_count),
      per_segment_(std::max<uint32_t>(1, slots_per_segment)),
      bits_((slot_count + 63) / 64, 0),
      free_((slot_count + per_segment_ - 1) / per_segment_, 0),
      live_(free_.size(), 0) {}

uint32_t SegmentTable::EndSlot(uint32_t segment) const {
  return static_cast<uint32_t>(
      std::min<uint64_t>(slot_count_, (uint64_t{segment} + 1) * per_segment_));
}

void SegmentTable::Classify(uint32_t segment, uint32_t free_before) {
  if (Special(segment)) return;
  const uint32_t size = EndSlot(segment) - FirstSlot(segment);
  const uint32_t now = free_[segment];
  if (free_before == size) empty_.erase(segment);
  if (free_before > 0 && free_before < size) partial_.erase(segment);
  if (now == size) {
    empty_.insert(segment);
  } else if (now > 0) {
    partial_.insert(segment);
  }
}

void SegmentTable::Free(uint32_t slot) {
  bits_[slot / 64] |= uint64_t{1} << (slot % 64);
  const uint32_t seg = SegmentOf(slot);
  free_total_++;
  free_[seg]++;
  Classify(seg, free_[seg] - 1);
}

void SegmentTable::Take(uint32_t slot) {
  bits_[slot / 64] &= ~(uint64_t{1} << (slot % 64));
  const uint32_t seg = SegmentOf(slot);
  free_total_--;
  free_[seg]--;
  Classify(seg, free_[seg] + 1);
}

uint32_t SegmentTable::FindFree(uint32_t segment, uint32_t from) const {
  const uint32_t end = EndSlot(segment);
  uint32_t slot = std::max(from, FirstSlot(segment));
  while (slot < end) {
    uint64_t word = bits_[slot / 64] >> (slot % 64);
    if (word != 0) {
      slot += static_cast<uint32_t>(__builtin_ctzll(word));
      return slot < end ? slot : kNone;
    }
    slot = (slot / 64 + 1) * 64;
  }
  return kNone;
}

std::optional<uint32_t> SegmentTable::TakeLog(bool* opened) {
  if (open_ != kNone) {
    uint32_t slot = FindFree(open_, cursor_);
    if (slot != kNone) {
      Take(slot);
      cursor_ = slot + 1;
      return slot;
    }
    // Used up (slots freed behind the cursor are left to TakeAny).
    const uint32_t closed = open_;
    open_ = kNone;
    Classify(closed, kNone);
  }
  if (empty_.empty()) return std::nullopt;
  auto it = last_opened_ == kNone ? empty_.begin() : empty_.upper_bound(last_opened_);
  if (it == empty_.end()) {
    it = empty_.begin();
    if (last_opened_ != kNone) wraps_++;
  }
  open_ = *it;
  last_opened_ = open_;
  empty_.erase(it);
  opened_++;
  if (opened != nullptr) *opened = true;
  uint32_t slot = FindFree(open_, FirstSlot(open_));
  Take(slot);
  cursor_ = slot + 1;
  return slot;
}

std::optional<uint32_t> SegmentTable::TakeAny() {
  uint32_t seg = kNone;
  if (!partial_.empty()) {
    seg = *partial_.begin();
  } else if (!empty_.empty()) {
    seg = *empty_.begin();
  }
  if (seg == kNone) return std::nullopt;
  uint32_t slot = FindFree(seg, FirstSlot(seg));
  Take(slot);
  return slot;
}

uint32_t SegmentTable::Victim() const {
  uint32_t best = kNone;
  for (uint32_t seg = 0; seg < segment_count(); ++seg) {
    if (Special(seg) || free_[seg] == EndSlot(seg) - FirstSlot(seg)) continue;
    if (best == kNone || live_[seg] < live_[best]) best = seg;
    if (live_[best] == 0) break;
  }
  return best;
}

void SegmentTable::SetCleaning(uint32_t segment) {
  const uint32_t before = cleaning_;
  if (segment != kNone && segment != open_) {
    // Out of the sets while it is cleaned.
    const uint32_t size = EndSlot(segment) - FirstSlot(segment);
    empty_.erase(segment);
    if (free_[segment] < size) partial_.erase(segment);
  }
  cleaning_ = segment;
  if (before != kNone && before != segment) Classify(before, kNone);
}

size_t SegmentTable::MemoryUsed() const {
  // A std::set node: three pointers, a colour and the key, about 40 bytes.
  constexpr size_t kSetNode = 40;
  return bits_.capacity() * sizeof(uint64_t) + free_.capacity() * sizeof(uint32_t) +
         live_.capacity() * sizeof(uint32_t) + (empty_.size() + partial_.size()) * kSetNode;
}

}  // namespace cachefs
