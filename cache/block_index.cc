#include "cache/block_index.h"

#include "common/hash.h"

namespace cachefs {

BlockIndex::BlockIndex(uint32_t slot_count) : owners_(slot_count), used_(slot_count, false) {
  size_t buckets = 16;
  while (buckets < static_cast<size_t>(slot_count) * 2) buckets <<= 1;
  table_.assign(buckets, kEmpty);
  mask_ = buckets - 1;
}

size_t BlockIndex::Bucket(const BlockKey& key) const {
  return static_cast<size_t>(MixPair(key.file_id, key.index)) & mask_;
}

std::optional<uint32_t> BlockIndex::Find(const BlockKey& key) const {
  for (size_t b = Bucket(key);; b = (b + 1) & mask_) {
    uint32_t s = table_[b];
    if (s == kEmpty) return std::nullopt;
    if (owners_[s] == key) return s;
  }
}

void BlockIndex::Insert(const BlockKey& key, uint32_t slot) {
  owners_[slot] = key;
  used_[slot] = true;
  size_t b = Bucket(key);
  while (table_[b] != kEmpty) b = (b + 1) & mask_;
  table_[b] = slot;
  size_++;
}

void BlockIndex::Erase(uint32_t slot) {
  if (!used_[slot]) return;
  size_t b = Bucket(owners_[slot]);
  while (table_[b] != slot) b = (b + 1) & mask_;
  // Backward-shift deletion: move later members of the probe run into the
  // hole when their home bucket is at or before it.
  size_t hole = b;
  for (size_t j = (hole + 1) & mask_; table_[j] != kEmpty; j = (j + 1) & mask_) {
    size_t home = Bucket(owners_[table_[j]]);
    bool movable = hole <= j ? (home <= hole || home > j) : (home <= hole && home > j);
    if (movable) {
      table_[hole] = table_[j];
      hole = j;
    }
  }
  table_[hole] = kEmpty;
  used_[slot] = false;
  owners_[slot] = BlockKey{};
  size_--;
}

size_t BlockIndex::MemoryUsed() const {
  return owners_.capacity() * sizeof(BlockKey) + table_.capacity() * sizeof(uint32_t) +
         used_.capacity() / 8;
}

}  // namespace cachefs
