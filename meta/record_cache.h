// RecordCache: a MetaStore that keeps the block records read last in memory,
// in front of another MetaStore.
//
// A cache hit needs its block's record (valid bits, generation, CRCs) before
// it can answer; from RocksDB that is a point lookup of a few microseconds,
// several percent of a warm 4 KiB read (docs/benchmarks.md, session 10).
// GetBlock answers from memory for the `capacity` records read most recently
// (least recently read go first); everything else is passed through.
//
// Coherence: every change of a block record goes through Commit. A commit
// takes the records it touches out before the inner store applies it, and
// until the inner store has applied it (or failed to) nothing is added to
// the shards of those records: a GetBlock that read the inner store while a
// commit touched its shard keeps what it read to itself. So GetBlock answers what
// the inner store holds at that moment, cached or not: a reader that sees
// a batch applied before Commit returned sees it in every later call.
//
// Memory: `capacity` records (rounded up to a multiple of the shard count),
// each about RecordBytes(sub-blocks per block); nothing per cached block.
//
// Thread-safety: all methods may be called concurrently; records are kept in
// shards with a lock each.
#pragma once

#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "common/thread_annotations.h"
#include "meta/forwarding_meta_store.h"
#include "meta/meta_store.h"

namespace cachefs {

class RecordCache final : public ForwardingMetaStore {
 public:
  // REQUIRES: inner != nullptr. capacity 0 keeps nothing.
  RecordCache(std::unique_ptr<MetaStore> inner, size_t capacity);

  Result<std::optional<BlockRecord>> GetBlock(uint64_t file_id, uint64_t index) override;
  Status Commit(const MetaBatch& batch, bool sync) override;

  // Memory one record of a block of `sub_blocks` sub-blocks takes here at
  // most (its rollback versions' CRCs included), for sizing `capacity`.
  static size_t RecordBytes(uint32_t sub_blocks) {
    return kRecordOverhead + size_t{sub_blocks} * kBytesPerSubBlock;
  }

  // Records held now, and GetBlock calls answered from them (for tests).
  size_t size();
  uint64_t hits();

 private:
  static constexpr size_t kShards = 64;  // one bit each in Commit's mask
  // The list and map nodes, the record and its vectors' heap blocks; per
  // sub-block a CRC for the record and each of its two rollback versions.
  static constexpr size_t kRecordOverhead = 384;
  static constexpr size_t kBytesPerSubBlock = 12;
  using Key = std::pair<uint64_t, uint64_t>;  // file id, index
  using Entry = std::pair<Key, BlockRecord>;
  struct KeyHash {
    size_t operator()(const Key& k) const;
  };
  struct Shard {
    std::mutex mu;
    // Most recently read first.
    std::list<Entry> lru GUARDED_BY(mu);
    std::unordered_map<Key, std::list<Entry>::iterator, KeyHash> map GUARDED_BY(mu);
    // Bumped at the start and the end of every commit that touches a record
    // of this shard: a read of the inner store that saw it move keeps its
    // record to itself.
    uint64_t changes GUARDED_BY(mu) = 0;
    // Commits touching this shard under way: nothing is added to `lru`.
    uint32_t committing GUARDED_BY(mu) = 0;
    uint64_t hits GUARDED_BY(mu) = 0;
  };
  static size_t ShardIndex(const Key& key);

  const size_t per_shard_;  // records a shard keeps at most
  Shard shards_[kShards];
};

}  // namespace cachefs
