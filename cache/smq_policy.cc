#include "cache/smq_policy.h"

#include <algorithm>
#include <bit>

namespace cachefs {
namespace {

// Sizes and rates, chosen with bench/policy_sim (docs/policies.md). Behind
// the doorkeeper the sketch is lightly loaded: 8 counters a slot or 2 give
// the same hit ratios as 4. A longer ageing period gains a point on Zipf
// traces and loses more when the hot set moves.
constexpr uint64_t kSketchCountersPerSlot = 4;
constexpr uint64_t kDoorkeeperBitsPerSlot = 16;
constexpr uint64_t kAgeingPeriodPerSlot = 8;  // accesses per halving, per slot
// The doorkeeper is cleared twice per ageing period: it fills with every block
// read once, and when fuller its false positives let one-time reads in.
constexpr uint64_t kDoorkeeperPeriodPerSlot = 4;
constexpr uint32_t kAdmitMargin = 1;  // admit when count > victim hits + margin
constexpr uint32_t kMaxCount = 15;    // a 4-bit counter

// The i-th of a key's probes: 32 bits by double hashing over its halves.
uint32_t Probe(uint64_t key_hash, uint32_t i) {
  return static_cast<uint32_t>(key_hash) + i * (static_cast<uint32_t>(key_hash >> 32) | 1u);
}

// A word of a table of `words` words (any size) for a probe, from its high
// bits; its low bits pick the entry within the word.
size_t WordOf(uint32_t probe, size_t words) {
  return static_cast<size_t>((uint64_t{probe} * words) >> 32);
}

}  // namespace

SmqPolicy::SmqPolicy(uint32_t slot_count)
    : slot_count_(slot_count),
      levels_(slot_count, kLevels),
      hits_(slot_count, 0),
      tracked_(slot_count, false),
      sketch_(std::max<uint64_t>(4, slot_count * kSketchCountersPerSlot / 16), 0),
      doorkeeper_(std::max<uint64_t>(1, slot_count * kDoorkeeperBitsPerSlot / 64), 0),
      period_(std::max<uint64_t>(1, slot_count * kAgeingPeriodPerSlot)) {}

uint32_t SmqPolicy::LevelForHits(uint8_t hits) {
  return std::min<uint32_t>(kLevels - 1, static_cast<uint32_t>(std::bit_width(hits)));
}

uint32_t SmqPolicy::LowestLevel() const {
  return static_cast<uint32_t>(std::countr_zero(non_empty_));
}

void SmqPolicy::Insert(uint32_t slot, uint8_t hits) {
  tracked_[slot] = true;
  hits_[slot] = hits;
  uint32_t level = LevelForHits(hits);
  levels_.PushBack(level, slot);
  non_empty_ |= 1u << level;
  counters_.tracked++;
}

void SmqPolicy::SetHits(uint32_t slot, uint8_t hits) {
  uint32_t from = LevelForHits(hits_[slot]);
  uint32_t to = LevelForHits(hits);
  hits_[slot] = hits;
  if (from == to) {
    levels_.MoveToBack(to, slot);
    return;
  }
  levels_.Unlink(from, slot);
  if (levels_.size(from) == 0) non_empty_ &= ~(1u << from);
  levels_.PushBack(to, slot);
  non_empty_ |= 1u << to;
  if (to > from) {
    counters_.promotions++;
  } else {
    counters_.demotions++;
  }
}

void SmqPolicy::Tick() {
  slot_budget_ += slot_count_;
  while (slot_budget_ >= period_) {
    slot_budget_ -= period_;
    uint32_t s = slot_hand_;
    slot_hand_ = slot_hand_ + 1 == slot_count_ ? 0 : slot_hand_ + 1;
    if (!tracked_[s] || hits_[s] == 0) continue;
    auto halved = static_cast<uint8_t>(hits_[s] / 2);
    if (LevelForHits(halved) != LevelForHits(hits_[s])) {
      SetHits(s, halved);  // demoted: to the back of the lower level
    } else {
      hits_[s] = halved;  // keeps its place
    }
  }
  sketch_budget_ += sketch_.size();
  while (sketch_budget_ >= period_) {
    sketch_budget_ -= period_;
    // Halves the 16 counters of a word at once: shift, then drop the bit each
    // counter took from its neighbour.
    sketch_[sketch_hand_] = (sketch_[sketch_hand_] >> 1) & 0x7777777777777777ULL;
    sketch_hand_ = sketch_hand_ + 1 == sketch_.size() ? 0 : sketch_hand_ + 1;
  }
  doorkeeper_budget_ += doorkeeper_.size() * (kAgeingPeriodPerSlot / kDoorkeeperPeriodPerSlot);
  while (doorkeeper_budget_ >= period_) {
    doorkeeper_budget_ -= period_;
    doorkeeper_[doorkeeper_hand_] = 0;
    doorkeeper_hand_ = doorkeeper_hand_ + 1 == doorkeeper_.size() ? 0 : doorkeeper_hand_ + 1;
  }
}

bool SmqPolicy::InDoorkeeper(uint64_t key_hash) const {
  for (uint32_t i = 0; i < 2; ++i) {
    uint32_t p = Probe(key_hash, i);
    if (((doorkeeper_[WordOf(p, doorkeeper_.size())] >> (p & 63)) & 1) == 0) return false;
  }
  return true;
}

uint32_t SmqPolicy::SketchEstimate(uint64_t key_hash) const {
  uint32_t m = kMaxCount;
  for (uint32_t i = 2; i < 6; ++i) {
    uint32_t p = Probe(key_hash, i);
    m = std::min<uint32_t>(m, (sketch_[WordOf(p, sketch_.size())] >> ((p & 15) * 4)) & 0xf);
  }
  return m;
}

uint32_t SmqPolicy::Frequency(uint64_t key_hash) const {
  return SketchEstimate(key_hash) + (InDoorkeeper(key_hash) ? 1 : 0);
}

void SmqPolicy::Count(uint64_t key_hash) {
  if (!InDoorkeeper(key_hash)) {
    // The first access only sets the doorkeeper, so the many blocks read once
    // per period do not crowd the sketch.
    for (uint32_t i = 0; i < 2; ++i) {
      uint32_t p = Probe(key_hash, i);
      doorkeeper_[WordOf(p, doorkeeper_.size())] |= uint64_t{1} << (p & 63);
    }
    return;
  }
  // Conservative update: only counters at the current estimate grow, which
  // keeps the overestimate from collisions small.
  uint32_t target = std::min(kMaxCount, SketchEstimate(key_hash) + 1);
  for (uint32_t i = 2; i < 6; ++i) {
    uint32_t p = Probe(key_hash, i);
    uint64_t& word = sketch_[WordOf(p, sketch_.size())];
    uint32_t shift = (p & 15) * 4;
    if (((word >> shift) & 0xf) < target) {
      word = (word & ~(uint64_t{0xf} << shift)) | (uint64_t{target} << shift);
    }
  }
}

bool SmqPolicy::Admit(uint64_t key_hash, bool must_evict) {
  Tick();
  Count(key_hash);
  bool admit = true;
  if (must_evict && non_empty_ != 0) {
    uint32_t victim = levels_.Front(LowestLevel());
    admit = Frequency(key_hash) > uint32_t{hits_[victim]} + kAdmitMargin;
  }
  if (admit) {
    counters_.admitted++;
  } else {
    counters_.rejected++;
  }
  return admit;
}

void SmqPolicy::Track(uint32_t slot) {
  if (!tracked_[slot]) Insert(slot, 0);
}

void SmqPolicy::TrackAdmitted(uint32_t slot, uint64_t key_hash) {
  if (tracked_[slot]) return;
  // Its accesses before this miss count as hits, so a block that had to miss
  // several times to get in is not the next victim.
  uint32_t earlier = std::max<uint32_t>(Frequency(key_hash), 1) - 1;
  Insert(slot, static_cast<uint8_t>(earlier));
}

void SmqPolicy::Touch(uint32_t slot) {
  if (!tracked_[slot]) return;
  Tick();
  counters_.touches++;
  SetHits(slot, hits_[slot] == UINT8_MAX ? UINT8_MAX : static_cast<uint8_t>(hits_[slot] + 1));
}

void SmqPolicy::Remove(uint32_t slot) {
  if (!tracked_[slot]) return;
  uint32_t level = LevelForHits(hits_[slot]);
  levels_.Unlink(level, slot);
  if (levels_.size(level) == 0) non_empty_ &= ~(1u << level);
  tracked_[slot] = false;
  hits_[slot] = 0;
  counters_.tracked--;
}

std::optional<uint32_t> SmqPolicy::Victim() {
  if (non_empty_ == 0) return std::nullopt;
  counters_.victims++;
  return levels_.Front(LowestLevel());
}

std::string SmqPolicy::SaveHints() const {
  std::vector<std::pair<uint32_t, uint8_t>> entries;
  entries.reserve(counters_.tracked);
  for (uint32_t s = 0; s < slot_count_; ++s) {
    if (tracked_[s]) entries.emplace_back(s, hits_[s]);
  }
  return EncodeHints(name(), slot_count_, entries);
}

Status SmqPolicy::LoadHints(std::string_view hints) {
  auto entries = DecodeHints(hints, name(), slot_count_);
  if (!entries.ok()) return entries.status();
  PolicyCounters before = counters_;
  for (const auto& [slot, hits] : entries.value()) {
    if (tracked_[slot]) SetHits(slot, hits);
  }
  // Restored state, not promotions.
  counters_.promotions = before.promotions;
  counters_.demotions = before.demotions;
  return Status::Ok();
}

size_t SmqPolicy::MemoryUsed() const {
  return sizeof(*this) + levels_.MemoryUsed() + hits_.capacity() + tracked_.capacity() / 8 +
         (sketch_.capacity() + doorkeeper_.capacity()) * sizeof(uint64_t);
}

}  // namespace cachefs
