// RecordCache: hits from memory, and never a record older than the inner
// store's once a commit touched it (the typed MetaStore suite covers the
// rest of the contract).
#include "meta/record_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cerrno>
#include <memory>
#include <thread>

#include "meta/forwarding_meta_store.h"
#include "meta/mem_meta_store.h"
#include "tests/cache/hook_meta.h"

namespace cachefs {
namespace {

BlockRecord Record(uint64_t file_id, uint64_t index, uint64_t slot) {
  BlockRecord b = BlockRecord::Empty(file_id, index, 16 * kSubBlockSize);
  b.slot = slot;
  b.generation = slot + 100;
  b.SetValid(0, true);
  b.crc[0] = static_cast<uint32_t>(slot * 7919);
  return b;
}

void Put(MetaStore& store, const BlockRecord& b) {
  MetaBatch batch;
  batch.Put(b);
  Status s = store.Commit(batch, false);
  ASSERT_TRUE(s.ok()) << s.message();
}

std::optional<BlockRecord> Get(MetaStore& store, uint64_t file_id, uint64_t index) {
  auto r = store.GetBlock(file_id, index);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? r.value() : std::nullopt;
}

// A cache over a HookMeta over memory: the hook stops the inner store's
// calls where a test needs them stopped.
struct Stack {
  HookMeta* hook = nullptr;
  std::unique_ptr<RecordCache> cache;
  explicit Stack(size_t capacity) {
    auto h = std::make_unique<HookMeta>(NewMemMetaStore());
    hook = h.get();
    cache = std::make_unique<RecordCache>(std::move(h), capacity);
  }
};

TEST(RecordCacheTest, ASecondReadIsAHitAndACommitReplacesIt) {
  Stack s(64);
  Put(*s.cache, Record(1, 0, 5));
  EXPECT_EQ(Get(*s.cache, 1, 0), Record(1, 0, 5));
  EXPECT_EQ(s.cache->hits(), 0u);
  EXPECT_EQ(Get(*s.cache, 1, 0), Record(1, 0, 5));
  EXPECT_EQ(s.cache->hits(), 1u);
  Put(*s.cache, Record(1, 0, 6));
  EXPECT_EQ(Get(*s.cache, 1, 0), Record(1, 0, 6));
  EXPECT_EQ(Get(*s.cache, 1, 0), Record(1, 0, 6));
  EXPECT_EQ(s.cache->hits(), 2u);
  MetaBatch del;
  del.RemoveBlock(1, 0);
  ASSERT_TRUE(s.cache->Commit(del, false).ok());
  EXPECT_EQ(Get(*s.cache, 1, 0), std::nullopt);
  EXPECT_EQ(s.cache->size(), 0u);
  EXPECT_EQ(Get(*s.cache, 1, 1), std::nullopt) << "absent records are not invented";
}

TEST(RecordCacheTest, HoldsAtMostItsCapacityAndNothingWithZero) {
  Stack s(128);
  for (uint64_t i = 0; i < 2000; ++i) Put(*s.cache, Record(2, i, i));
  for (uint64_t i = 0; i < 2000; ++i) ASSERT_EQ(Get(*s.cache, 2, i), Record(2, i, i));
  EXPECT_LE(s.cache->size(), 128u);
  EXPECT_GT(s.cache->size(), 0u);
  // The record read last is kept.
  const uint64_t hits = s.cache->hits();
  EXPECT_EQ(Get(*s.cache, 2, 1999), Record(2, 1999, 1999));
  EXPECT_EQ(s.cache->hits(), hits + 1);

  Stack none(0);
  Put(*none.cache, Record(2, 0, 0));
  EXPECT_EQ(Get(*none.cache, 2, 0), Record(2, 0, 0));
  EXPECT_EQ(Get(*none.cache, 2, 0), Record(2, 0, 0));
  EXPECT_EQ(none.cache->size(), 0u);
  EXPECT_EQ(none.cache->hits(), 0u);
}

// While a commit is applied in the inner store but has not returned, a read
// sees what the inner store has: the new record, as without the cache (the
// engine relies on that: EngineTest.ReadDuringAnOverwriteKeepsTheNewRecord).
TEST(RecordCacheTest, DuringACommitReadsSeeTheInnerStore) {
  Stack s(64);
  Put(*s.cache, Record(3, 0, 1));
  ASSERT_EQ(Get(*s.cache, 3, 0), Record(3, 0, 1));
  ASSERT_EQ(Get(*s.cache, 3, 0), Record(3, 0, 1));  // cached
  s.hook->StopAfter([](const MetaBatch& b) { return HookMeta::PutsBlock(b, 3, 0); });
  std::thread committer([&] { Put(*s.cache, Record(3, 0, 2)); });
  ASSERT_TRUE(s.hook->gate.WaitStopped());
  EXPECT_EQ(Get(*s.cache, 3, 0), Record(3, 0, 2)) << "the cached record of before the commit";
  EXPECT_EQ(Get(*s.cache, 3, 0), Record(3, 0, 2));
  s.hook->gate.Release();
  committer.join();
  EXPECT_EQ(Get(*s.cache, 3, 0), Record(3, 0, 2));
}

// A read of the inner store that a commit overtakes (it read the old
// record, the commit replaced it before the read could cache it) keeps what
// it read to itself: later reads see the commit.
TEST(RecordCacheTest, AReadOvertakenByACommitCachesNothingStale) {
  Stack s(64);
  Put(*s.cache, Record(4, 0, 1));
  s.hook->StopAfterGet(4, 0, /*skip=*/0);
  std::optional<BlockRecord> seen;
  std::thread reader([&] { seen = Get(*s.cache, 4, 0); });
  ASSERT_TRUE(s.hook->get_gate.WaitStopped());
  Put(*s.cache, Record(4, 0, 2));
  s.hook->get_gate.Release();
  reader.join();
  EXPECT_EQ(seen, Record(4, 0, 1)) << "it read before the commit";
  EXPECT_EQ(Get(*s.cache, 4, 0), Record(4, 0, 2)) << "the overtaken read cached the old record";
  EXPECT_EQ(Get(*s.cache, 4, 0), Record(4, 0, 2));
}

// A read that starts while a commit is under way but not yet applied reads
// the old record, and must not cache it: the commit applies it right after.
TEST(RecordCacheTest, AReadBeforeACommitIsAppliedCachesNothing) {
  Stack s(64);
  Put(*s.cache, Record(6, 0, 1));
  s.hook->StopBefore([](const MetaBatch& b) { return HookMeta::PutsBlock(b, 6, 0); });
  std::thread committer([&] { Put(*s.cache, Record(6, 0, 2)); });
  ASSERT_TRUE(s.hook->before_gate.WaitStopped());
  EXPECT_EQ(Get(*s.cache, 6, 0), Record(6, 0, 1)) << "not applied yet";
  s.hook->before_gate.Release();
  committer.join();
  EXPECT_EQ(Get(*s.cache, 6, 0), Record(6, 0, 2))
      << "the read during the commit cached the old one";
}

// An inner store whose commits fail (nothing applied) while `fail` is set.
class FailingCommits final : public ForwardingMetaStore {
 public:
  using ForwardingMetaStore::ForwardingMetaStore;
  bool fail = false;
  Status Commit(const MetaBatch& batch, bool sync) override {
    if (fail) return Status::Error(EIO, "injected: commit failed");
    return ForwardingMetaStore::Commit(batch, sync);
  }
};

// A failed commit changes nothing: reads see the record the inner store
// still holds, and the cache goes on working afterwards.
TEST(RecordCacheTest, AFailedCommitLeavesTheInnerStoresRecord) {
  auto failing = std::make_unique<FailingCommits>(NewMemMetaStore());
  FailingCommits* inner = failing.get();
  RecordCache cache(std::move(failing), 64);
  Put(cache, Record(7, 0, 1));
  ASSERT_EQ(Get(cache, 7, 0), Record(7, 0, 1));
  inner->fail = true;
  MetaBatch batch;
  batch.Put(Record(7, 0, 2));
  batch.RemoveBlock(7, 0);
  batch.Put(Record(7, 1, 3));
  EXPECT_FALSE(cache.Commit(batch, false).ok());
  EXPECT_EQ(Get(cache, 7, 0), Record(7, 0, 1));
  EXPECT_EQ(Get(cache, 7, 1), std::nullopt);
  inner->fail = false;
  Put(cache, Record(7, 0, 4));
  EXPECT_EQ(Get(cache, 7, 0), Record(7, 0, 4));
  const uint64_t hits = cache.hits();
  EXPECT_EQ(Get(cache, 7, 0), Record(7, 0, 4));
  EXPECT_EQ(cache.hits(), hits + 1);
}

// Many readers and writers of a few records: a read that starts after a
// commit returned never sees an older record than that commit's.
TEST(RecordCacheTest, ReadsNeverGoBackBehindACommit) {
  Stack s(8);
  constexpr uint64_t kKeys = 4;
  constexpr uint64_t kRounds = 3000;
  for (uint64_t k = 0; k < kKeys; ++k) Put(*s.cache, Record(5, k, 0));
  std::atomic<uint64_t> committed[kKeys] = {};
  std::atomic<bool> stop{false};
  std::atomic<int> reading{0};
  std::thread readers[2];
  for (auto& t : readers) {
    t = std::thread([&] {
      uint64_t i = 0;
      while (!stop.load()) {
        if (i == 100) reading++;
        const uint64_t k = i++ % kKeys;
        const uint64_t floor = committed[k].load();
        auto r = Get(*s.cache, 5, k);
        ASSERT_TRUE(r.has_value());
        ASSERT_GE(r->slot, floor) << "a read went back behind a returned commit";
      }
    });
  }
  // The commits start once both readers are under way.
  while (reading.load() < 2) std::this_thread::yield();
  for (uint64_t v = 1; v <= kRounds; ++v) {
    const uint64_t k = v % kKeys;
    Put(*s.cache, Record(5, k, v));
    committed[k].store(v);
  }
  stop = true;
  for (auto& t : readers) t.join();
  EXPECT_GT(s.cache->hits(), 0u) << "the readers' first 100 reads, before any commit, hit";
}

}  // namespace
}  // namespace cachefs
