#include "meta/record_cache.h"

#include <variant>

#include "common/hash.h"

namespace cachefs {

RecordCache::RecordCache(std::unique_ptr<MetaStore> inner, size_t capacity)
    : ForwardingMetaStore(std::move(inner)), per_shard_((capacity + kShards - 1) / kShards) {}

size_t RecordCache::KeyHash::operator()(const Key& k) const {
  return static_cast<size_t>(MixPair(k.first, k.second));
}

size_t RecordCache::ShardIndex(const Key& key) {
  // The top bits: the map of each shard uses the low ones.
  return static_cast<size_t>(KeyHash{}(key) >> 58) % kShards;
}

Result<std::optional<BlockRecord>> RecordCache::GetBlock(uint64_t file_id, uint64_t index) {
  const Key key{file_id, index};
  Shard& shard = shards_[ShardIndex(key)];
  uint64_t changes;
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    // A commit under way has taken the records it touches out already.
    auto it = shard.map.find(key);
    if (it != shard.map.end()) {
      shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
      shard.hits++;
      return std::optional<BlockRecord>(it->second->second);
    }
    changes = shard.changes;
  }
  auto r = inner().GetBlock(file_id, index);
  if (!r.ok() || !r.value() || per_shard_ == 0) return r;
  std::lock_guard<std::mutex> lock(shard.mu);
  // A commit touched the shard since we looked, or still does: what we read
  // may be what it replaces. Another reader may have cached the key meanwhile.
  if (shard.changes != changes || shard.committing != 0 || shard.map.count(key) != 0) return r;
  if (shard.lru.size() >= per_shard_) {
    shard.map.erase(shard.lru.back().first);
    shard.lru.pop_back();
  }
  shard.lru.emplace_front(key, *r.value());
  shard.map.emplace(key, shard.lru.begin());
  return r;
}

Status RecordCache::Commit(const MetaBatch& batch, bool sync) {
  uint64_t shards = 0;  // bit i: the batch touches a record of shards_[i]
  for (const MetaBatch::Op& op : batch.ops()) {
    Key key;
    if (const auto* put = std::get_if<MetaBatch::PutBlock>(&op)) {
      key = {put->block.file_id, put->block.index};
    } else if (const auto* del = std::get_if<MetaBatch::DeleteBlock>(&op)) {
      key = {del->file_id, del->index};
    } else {
      continue;
    }
    const size_t i = ShardIndex(key);
    Shard& shard = shards_[i];
    std::lock_guard<std::mutex> lock(shard.mu);
    if ((shards & (uint64_t{1} << i)) == 0) {
      shards |= uint64_t{1} << i;
      shard.committing++;
      shard.changes++;
    }
    auto it = shard.map.find(key);
    if (it != shard.map.end()) {
      shard.lru.erase(it->second);
      shard.map.erase(it);
    }
  }
  // Until the inner store has the batch (or failed to take it), its records
  // are out of memory and nothing is added to their shards: reads of them
  // go to the inner store.
  Status s = inner().Commit(batch, sync);
  for (size_t i = 0; i < kShards; ++i) {
    if ((shards & (uint64_t{1} << i)) == 0) continue;
    std::lock_guard<std::mutex> lock(shards_[i].mu);
    shards_[i].committing--;
    shards_[i].changes++;
  }
  return s;
}

size_t RecordCache::size() {
  size_t n = 0;
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    n += shard.map.size();
  }
  return n;
}

uint64_t RecordCache::hits() {
  uint64_t n = 0;
  for (Shard& shard : shards_) {
    std::lock_guard<std::mutex> lock(shard.mu);
    n += shard.hits;
  }
  return n;
}

}  // namespace cachefs
