// SegmentTable: the store's slots grouped into segments, for log-structured
// allocation of written blocks (dm-writeboost, LFS).
//
// A segment is a run of consecutive slots (4 MiB worth, fewer in a small
// store so that it has at least kMinSegments of them; the last one may be
// shorter). The table knows which slots are free and how many slots of each
// segment hold an indexed block ("live"); the engine says so as it frees,
// takes, indexes and unindexes slots.
//
// Written blocks (TakeLog) come from an append cursor: the slots of one
// open segment in ascending order, then the next wholly free segment
// (circularly, so the cursor wraps around the store), which turns random
// writes into sequential store writes. Fetched blocks (TakeAny) take free
// slots of partly used segments first and leave wholly free segments to the
// log as long as they can. The garbage collector (Engine::CollectGarbage,
// cache/engine_gc.cc) makes wholly free segments out of the segment with the
// fewest live blocks (Victim): blocks overwritten, written back and dropped
// or evicted left it with free or dead slots.
//
// Memory: one bit per slot plus a few words per segment, so well under a
// byte per block.
//
// Thread-safety: none; the engine holds its lock around every call.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <vector>

namespace cachefs {

class SegmentTable {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;
  static constexpr uint64_t kSegmentBytes = uint64_t{4} << 20;
  static constexpr uint32_t kMinSegments = 8;

  // Slots per segment for a store of `slot_count` slots of `block_size`:
  // kSegmentBytes worth, at most slot_count / kMinSegments, at least 1.
  static uint32_t SlotsPerSegment(uint32_t block_size, uint32_t slot_count);

  // Every slot starts taken (not free) and not live.
  SegmentTable(uint32_t slot_count, uint32_t slots_per_segment);

  uint32_t slot_count() const { return slot_count_; }
  uint32_t slots_per_segment() const { return per_segment_; }
  uint32_t segment_count() const { return static_cast<uint32_t>(free_.size()); }
  uint32_t SegmentOf(uint32_t slot) const { return slot / per_segment_; }
  uint32_t FirstSlot(uint32_t segment) const { return segment * per_segment_; }
  // One past the last slot of `segment`.
  uint32_t EndSlot(uint32_t segment) const;

  bool IsFree(uint32_t slot) const { return (bits_[slot / 64] >> (slot % 64)) & 1; }
  uint64_t free_slots() const { return free_total_; }
  bool IsEmpty(uint32_t segment) const {
    return free_[segment] == EndSlot(segment) - FirstSlot(segment);
  }
  // Wholly free segments, the open one and the one being cleaned not counted.
  uint32_t empty_segments() const { return static_cast<uint32_t>(empty_.size()); }

  // REQUIRES: `slot` taken. It becomes free.
  void Free(uint32_t slot);
  // The next free slot at the append cursor, opening the next wholly free
  // segment when the open one is used up; nullopt when there is none.
  // `*opened` (if given) is set when a segment was opened.
  std::optional<uint32_t> TakeLog(bool* opened = nullptr);
  // A free slot for a fetched block: one of a partly used segment, else of
  // a wholly free one; never of the open segment or the one being cleaned.
  std::optional<uint32_t> TakeAny();

  // A slot starts or stops holding an indexed block.
  void AddLive(uint32_t slot) { live_[SegmentOf(slot)]++; }
  void RemoveLive(uint32_t slot) { live_[SegmentOf(slot)]--; }
  uint32_t live(uint32_t segment) const { return live_[segment]; }

  // The segment with the fewest live blocks among those that are not
  // wholly free, open or being cleaned (greedy cleaning); kNone when none.
  uint32_t Victim() const;
  // Marks `segment` as being cleaned (kNone: none): TakeAny and TakeLog
  // leave it alone, so blocks moved out of it do not land in it.
  void SetCleaning(uint32_t segment);

  // Times the append cursor passed the end of the store, and segments it
  // opened.
  uint64_t wraps() const { return wraps_; }
  uint64_t segments_opened() const { return opened_; }
  size_t MemoryUsed() const;

 private:
  // Moves `segment` into the set that fits its free count (none while it is
  // open or being cleaned).
  void Classify(uint32_t segment, uint32_t free_before);
  // A free slot of `segment` at or after `from`, kNone if none.
  uint32_t FindFree(uint32_t segment, uint32_t from) const;
  void Take(uint32_t slot);
  bool Special(uint32_t segment) const { return segment == open_ || segment == cleaning_; }

  const uint32_t slot_count_;
  const uint32_t per_segment_;
  std::vector<uint64_t> bits_;  // 1: free
  std::vector<uint32_t> free_;  // free slots of each segment
  std::vector<uint32_t> live_;  // indexed blocks of each segment
  std::set<uint32_t> empty_;    // wholly free segments (not open, not cleaning)
  std::set<uint32_t> partial_;  // segments with some free slots (not open, not cleaning)
  uint64_t free_total_ = 0;
  uint32_t open_ = kNone;  // the segment the cursor is in
  uint32_t cursor_ = 0;    // the next slot to look at in it
  uint32_t cleaning_ = kNone;
  uint32_t last_opened_ = kNone;  // where the cursor was last opened
  uint64_t wraps_ = 0;
  uint64_t opened_ = 0;
};

}  // namespace cachefs
