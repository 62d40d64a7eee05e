// BlockIndex: which slot holds block (file_id, index), in RAM.
//
// The metadata (meta/) is the truth; this is its in-memory index, rebuilt
// from the block map at mount. It is sized for the store at construction and
// never allocates afterwards: per slot it keeps the owner (16 bytes) and the
// hash table keeps slot numbers (4 bytes a bucket, two buckets a slot), so a
// cached block costs 24 bytes here.
//
// Open addressing with linear probing over slot numbers; keys are read from
// the owner array, and deletion shifts entries back (no tombstones), so
// lookups stay short however long the cache runs.
//
// Thread-safety: none; the engine holds its lock around every call.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace cachefs {

struct BlockKey {
  uint64_t file_id = 0;
  uint64_t index = 0;
  bool operator==(const BlockKey&) const = default;
};

class BlockIndex {
 public:
  // REQUIRES: slot_count < UINT32_MAX.
  explicit BlockIndex(uint32_t slot_count);

  std::optional<uint32_t> Find(const BlockKey& key) const;
  // REQUIRES: `key` absent and `slot` unused.
  void Insert(const BlockKey& key, uint32_t slot);
  // Forgets whatever `slot` holds; a no-op for an unused slot.
  void Erase(uint32_t slot);
  bool InUse(uint32_t slot) const { return used_[slot]; }
  const BlockKey& Owner(uint32_t slot) const { return owners_[slot]; }
  uint32_t size() const { return size_; }
  size_t MemoryUsed() const;

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  size_t Bucket(const BlockKey& key) const;

  std::vector<BlockKey> owners_;
  std::vector<bool> used_;
  std::vector<uint32_t> table_;  // power-of-two size, at least 2x slot_count
  size_t mask_ = 0;
  uint32_t size_ = 0;
};

}  // namespace cachefs
