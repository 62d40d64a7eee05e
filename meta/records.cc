#include "meta/records.h"

#include <algorithm>
#include <bit>

namespace cachefs {

BlockRecord BlockRecord::Empty(uint64_t file_id, uint64_t index, uint32_t block_size) {
  // Block sizes are powers of two from 4 KiB up, so this divides exactly; a
  // smaller size still gets one sub-block rather than none.
  const uint32_t subs = std::max<uint32_t>(1, block_size / kSubBlockSize);
  const size_t words = (subs + 63) / 64;
  BlockRecord b;
  b.file_id = file_id;
  b.index = index;
  b.valid.assign(words, 0);
  b.dirty.assign(words, 0);
  b.crc.assign(subs, 0);
  return b;
}

void BlockRecord::SetValid(uint32_t sub, bool on) {
  const uint64_t bit = uint64_t{1} << (sub % 64);
  if (on) {
    valid[sub / 64] |= bit;
  } else {
    valid[sub / 64] &= ~bit;
  }
}

void BlockRecord::SetDirty(uint32_t sub, bool on) {
  const uint64_t bit = uint64_t{1} << (sub % 64);
  if (on) {
    dirty[sub / 64] |= bit;
  } else {
    dirty[sub / 64] &= ~bit;
  }
}

bool BlockRecord::AnyDirty() const {
  return std::any_of(dirty.begin(), dirty.end(), [](uint64_t w) { return w != 0; });
}

BlockVersion BlockRecord::Current() const {
  return BlockVersion{slot, generation, dirty_seq, epoch, valid, dirty, crc};
}

void BlockRecord::Restore(const BlockVersion& v) {
  slot = v.slot;
  generation = v.generation;
  dirty_seq = v.dirty_seq;
  epoch = v.epoch;
  valid = v.valid;
  dirty = v.dirty;
  crc = v.crc;
}

uint32_t BlockRecord::DirtyCount() const {
  uint32_t n = 0;
  for (uint64_t w : dirty) n += static_cast<uint32_t>(std::popcount(w));
  return n;
}

}  // namespace cachefs
