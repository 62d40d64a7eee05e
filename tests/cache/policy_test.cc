// One typed suite run against every policy, then what sets each apart: smq's
// scan resistance (with lru as the contrast), smq's levels and admission, the
// cleaner's refusal to cache.
#include "cache/policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "cache/cleaner_policy.h"
#include "cache/lru_policy.h"
#include "cache/options.h"
#include "cache/smq_policy.h"

namespace cachefs {
namespace {

// Drives a policy with the engine's protocol over a cache of `slots` slots,
// the first `pinned` of which hold pinned blocks (taken, never tracked).
class Harness {
 public:
  Harness(Policy& policy, uint32_t slots, uint32_t pinned = 0) : policy_(policy), owner_(slots) {
    for (uint32_t s = slots; s-- > pinned;) free_.push_back(s);
    pinned_ = pinned;
  }

  // One read of block `key` of file 1; true on a hit.
  bool Access(uint64_t key) {
    auto it = slot_of_.find(key);
    if (it != slot_of_.end()) {
      policy_.Touch(it->second);
      return true;
    }
    if (!policy_.Admit(BlockKeyHash(1, key), free_.empty())) return false;
    uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      auto victim = policy_.Victim();
      EXPECT_TRUE(victim.has_value()) << "a full cache with tracked slots has a victim";
      if (!victim) return false;
      slot = *victim;
      EXPECT_GE(slot, pinned_) << "a pinned slot was chosen";
      EXPECT_TRUE(policy_.IsTracked(slot));
      EXPECT_TRUE(owner_[slot].has_value()) << "victim " << slot << " holds nothing";
      if (!owner_[slot]) return false;
      policy_.Remove(slot);
      EXPECT_FALSE(policy_.IsTracked(slot));
      slot_of_.erase(*owner_[slot]);
    }
    owner_[slot] = key;
    slot_of_[key] = slot;
    policy_.TrackAdmitted(slot, BlockKeyHash(1, key));
    return false;
  }

  // Drops a cached block (truncate, invalidation); false if not cached.
  bool Drop(uint64_t key) {
    auto it = slot_of_.find(key);
    if (it == slot_of_.end()) return false;
    policy_.Remove(it->second);
    owner_[it->second].reset();
    free_.push_back(it->second);
    slot_of_.erase(it);
    return true;
  }

  size_t cached() const { return slot_of_.size(); }

 private:
  Policy& policy_;
  std::vector<std::optional<uint64_t>> owner_;
  std::map<uint64_t, uint32_t> slot_of_;
  std::vector<uint32_t> free_;
  uint32_t pinned_ = 0;
};

// Victims until none is left, removing each: the order the policy evicts in.
std::vector<uint32_t> Drain(Policy& p) {
  std::vector<uint32_t> order;
  while (auto v = p.Victim()) {
    EXPECT_TRUE(p.IsTracked(*v));
    order.push_back(*v);
    p.Remove(*v);
  }
  return order;
}

template <typename P>
class PolicyTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kSlots = 64;
  P policy_{kSlots};
};

using AllPolicies = ::testing::Types<SmqPolicy, LruPolicy, CleanerPolicy>;
TYPED_TEST_SUITE(PolicyTest, AllPolicies);

TYPED_TEST(PolicyTest, EmptyHasNoVictim) {
  Policy& p = this->policy_;
  EXPECT_FALSE(p.Victim().has_value());
  EXPECT_FALSE(p.IsTracked(0));
  PolicyCounters c = p.counters();
  EXPECT_EQ(c.tracked, 0u);
  EXPECT_EQ(c.victims, 0u);
  // Untracked slots: Touch and Remove are no-ops.
  p.Touch(3);
  p.Remove(3);
  EXPECT_EQ(p.counters().touches, 0u);
  EXPECT_FALSE(p.Victim().has_value());
}

TYPED_TEST(PolicyTest, VictimsAreTrackedAndRemovedSlotsNeverAre) {
  Policy& p = this->policy_;
  for (uint32_t s = 0; s < this->kSlots; s += 2) p.Track(s);  // odd slots: pinned
  for (uint32_t s = 0; s < this->kSlots; s += 6) p.Touch(s);
  for (uint32_t s = 0; s < this->kSlots; s += 8) p.Remove(s);
  // A victim stays tracked until removed: asking twice is allowed.
  auto first = p.Victim();
  ASSERT_TRUE(first.has_value());
  EXPECT_TRUE(p.IsTracked(*first));
  std::vector<uint32_t> order = Drain(p);
  std::set<uint32_t> expected;
  for (uint32_t s = 0; s < this->kSlots; s += 2) {
    if (s % 8 != 0) expected.insert(s);
  }
  EXPECT_EQ(std::set<uint32_t>(order.begin(), order.end()), expected);
  EXPECT_EQ(order.size(), expected.size()) << "a slot was offered twice";
  EXPECT_EQ(p.counters().tracked, 0u);
}

TYPED_TEST(PolicyTest, CountersFollowTheCalls) {
  Policy& p = this->policy_;
  for (uint32_t s = 0; s < 10; ++s) p.Track(s);
  p.Track(3);  // already tracked: no-op
  p.Touch(1);
  p.Touch(1);
  p.Touch(2);
  p.Touch(40);  // untracked: not a hit
  p.Remove(4);
  p.Remove(4);
  ASSERT_TRUE(p.Victim().has_value());
  ASSERT_TRUE(p.Victim().has_value());
  for (uint64_t k = 0; k < 7; ++k) p.Admit(BlockKeyHash(2, k), k % 2 == 0);
  PolicyCounters c = p.counters();
  EXPECT_EQ(c.tracked, 9u);
  EXPECT_EQ(c.touches, 3u);
  EXPECT_EQ(c.victims, 2u);
  EXPECT_EQ(c.admitted + c.rejected, 7u);
}

TYPED_TEST(PolicyTest, EngineProtocolNeverExceedsTheCacheNorPicksPinned) {
  constexpr uint32_t kPinned = 5;
  Policy& p = this->policy_;
  Harness h(p, this->kSlots, kPinned);
  std::mt19937_64 rng(7);
  uint64_t admits_before = p.counters().admitted + p.counters().rejected;
  uint64_t misses = 0;
  for (int i = 0; i < 20000; ++i) {
    uint64_t key = rng() % 3 == 0 ? rng() % 40 : rng() % 400;
    if (rng() % 50 == 0) {
      h.Drop(key);
      continue;
    }
    if (!h.Access(key)) misses++;
    ASSERT_LE(p.counters().tracked, this->kSlots - kPinned);
    ASSERT_EQ(p.counters().tracked, h.cached());
  }
  EXPECT_EQ(p.counters().admitted + p.counters().rejected - admits_before, misses);
  uint32_t tracked = 0;
  for (uint32_t s = 0; s < this->kSlots; ++s) tracked += p.IsTracked(s) ? 1 : 0;
  EXPECT_EQ(tracked, p.counters().tracked);
  for (uint32_t s = 0; s < kPinned; ++s) EXPECT_FALSE(p.IsTracked(s));
}

TYPED_TEST(PolicyTest, HintsRoundTrip) {
  Policy& a = this->policy_;
  std::mt19937_64 rng(3);
  for (uint32_t s = 0; s < this->kSlots; ++s) {
    if (s % 5 != 0) a.Track(s);
  }
  for (int i = 0; i < 300; ++i) a.Touch(static_cast<uint32_t>(rng() % this->kSlots));
  std::string hints = a.SaveHints();
  EXPECT_LE(hints.size(), 64 + 2 * this->kSlots) << "two bytes a slot at most";

  // A new policy over the same slots, re-Tracked in slot order as the engine
  // does at mount, plus one slot that was not cached before (no hint).
  TypeParam b(this->kSlots);
  for (uint32_t s = 0; s < this->kSlots; ++s) {
    if (s % 5 != 0 || s == 10) b.Track(s);
  }
  ASSERT_TRUE(b.LoadHints(hints).ok());
  b.Remove(10);
  EXPECT_EQ(b.SaveHints(), hints);
  EXPECT_EQ(b.counters().tracked, a.counters().tracked);
  if (std::string(a.name()) == "lru") {
    // 51 slots fit in 256 recency buckets: the order comes back exactly.
    EXPECT_EQ(Drain(b), Drain(a));
  }
}

TYPED_TEST(PolicyTest, CorruptHintsAreRejectedAndLeaveThePolicyCold) {
  Policy& a = this->policy_;
  for (uint32_t s = 0; s < 20; ++s) a.Track(s);
  for (uint32_t s = 0; s < 20; ++s) {
    for (uint32_t t = 0; t < s; ++t) a.Touch(s);
  }
  const std::string good = a.SaveHints();

  TypeParam cold(this->kSlots);
  for (uint32_t s = 0; s < 20; ++s) cold.Track(s);
  const std::string cold_hints = cold.SaveHints();

  std::vector<std::string> bad = {"", "CFPH", good.substr(0, good.size() - 1), good + "x"};
  for (size_t i = 0; i < good.size(); ++i) {
    std::string flipped = good;
    flipped[i] = static_cast<char>(flipped[i] ^ 0x20);
    bad.push_back(flipped);
  }
  TypeParam other_size(this->kSlots + 1);
  bad.push_back(other_size.SaveHints());
  for (const std::string& other : PolicyNames()) {
    auto p = MakePolicy(other, this->kSlots);
    ASSERT_TRUE(p.ok());
    if (other != a.name()) bad.push_back(p.value()->SaveHints());
  }
  for (size_t i = 0; i < bad.size(); ++i) {
    TypeParam b(this->kSlots);
    for (uint32_t s = 0; s < 20; ++s) b.Track(s);
    Status s = b.LoadHints(bad[i]);
    EXPECT_FALSE(s.ok()) << "blob " << i << " accepted";
    EXPECT_TRUE(s.IsInvalid()) << s.message();
    EXPECT_EQ(b.SaveHints(), cold_hints) << "blob " << i << " changed the state";
    EXPECT_EQ(Drain(b).size(), 20u);
  }
}

TYPED_TEST(PolicyTest, RamPerSlotIsSmall) {
  const uint32_t slots = 1u << 20;
  TypeParam big(slots);
  EXPECT_LE(big.MemoryUsed(), size_t{slots} * 16);
  EXPECT_GE(big.MemoryUsed(), size_t{slots} * 8) << "MemoryUsed() misses the per-slot arrays";
}

TYPED_TEST(PolicyTest, MadeByName) {
  auto p = MakePolicy(this->policy_.name(), 16);
  ASSERT_TRUE(p.ok());
  EXPECT_STREQ(p.value()->name(), this->policy_.name());
  EXPECT_TRUE(IsKnownPolicy(this->policy_.name()));
}

TEST(MakePolicy, DefaultAndUnknown) {
  auto p = MakePolicy("", 16);
  ASSERT_TRUE(p.ok());
  EXPECT_STREQ(p.value()->name(), "smq");
  EXPECT_EQ(PolicyNames().front(), "smq");
  EXPECT_FALSE(MakePolicy("fifo", 16).ok());
  EXPECT_FALSE(IsKnownPolicy("fifo"));
  for (const auto& name : PolicyNames()) EXPECT_TRUE(IsKnownPolicy(name)) << name;
  EXPECT_NE(BlockKeyHash(1, 2), BlockKeyHash(2, 1));
  EXPECT_NE(BlockKeyHash(1, 2), BlockKeyHash(1, 3));
}

// --- what sets the policies apart ---------------------------------------------

// A hot set of half the cache is read until it is cached, then a scan of ten
// times the cache passes once; the share of the hot set that still hits.
double HotSetHitsAfterScan(Policy& p, uint32_t slots) {
  Harness h(p, slots);
  std::mt19937_64 rng(11);
  const uint64_t hot = slots / 2;
  for (uint64_t i = 0; i < 20 * hot; ++i) h.Access(rng() % hot);
  for (uint64_t k = 0; k < 10 * uint64_t{slots}; ++k) h.Access(1000000 + k);
  uint64_t hits = 0;
  for (uint64_t k = 0; k < hot; ++k) hits += h.Access(k) ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(hot);
}

TEST(SmqPolicy, HotSetSurvivesAScanThatFlushesLru) {
  constexpr uint32_t kSlots = 1000;
  SmqPolicy smq(kSlots);
  LruPolicy lru(kSlots);
  double smq_hits = HotSetHitsAfterScan(smq, kSlots);
  double lru_hits = HotSetHitsAfterScan(lru, kSlots);
  EXPECT_GE(smq_hits, 0.9);
  EXPECT_LE(lru_hits, 0.05);
  EXPECT_GT(smq.counters().rejected, 9u * kSlots) << "the scan was admitted";
}

TEST(SmqPolicy, HitsPromoteAndVictimsComeFromTheLowestLevel) {
  SmqPolicy p(8);
  for (uint32_t s = 0; s < 4; ++s) p.Track(s);
  EXPECT_EQ(p.LevelOf(0), 0u);
  p.Touch(0);
  EXPECT_EQ(p.LevelOf(0), 1u);
  p.Touch(0);
  p.Touch(0);
  EXPECT_EQ(p.LevelOf(0), 2u);  // 3 hits
  p.Touch(1);
  EXPECT_EQ(p.counters().promotions, 3u);
  // Level 0 holds 2 and 3, oldest first; then 1 (level 1); then 0.
  EXPECT_EQ(Drain(p), (std::vector<uint32_t>{2, 3, 1, 0}));
}

TEST(SmqPolicy, AdmitsWhenFreeAndRepeatedMissesWhenFull) {
  SmqPolicy p(4);
  EXPECT_TRUE(p.Admit(BlockKeyHash(1, 1), /*must_evict=*/false));
  for (uint32_t s = 0; s < 4; ++s) p.Track(s);
  // Full, with a victim that was never hit: a first miss stays out, the
  // second one of the same block gets in.
  EXPECT_FALSE(p.Admit(BlockKeyHash(1, 2), true));
  EXPECT_TRUE(p.Admit(BlockKeyHash(1, 2), true));
  // Against a victim with hits, one earlier miss is not enough.
  for (uint32_t s = 0; s < 4; ++s) {
    for (int i = 0; i < 4; ++i) p.Touch(s);
  }
  EXPECT_FALSE(p.Admit(BlockKeyHash(1, 3), true));
  EXPECT_FALSE(p.Admit(BlockKeyHash(1, 3), true));
}

TEST(SmqPolicy, BlocksMissedOftenEnterHigher) {
  SmqPolicy p(64);
  const uint64_t once = BlockKeyHash(1, 100);
  const uint64_t often = BlockKeyHash(1, 200);
  ASSERT_TRUE(p.Admit(once, false));
  p.TrackAdmitted(0, once);
  EXPECT_EQ(p.LevelOf(0), 0u) << "seen once: enters low";
  for (uint32_t s = 1; s < 4; ++s) p.Track(s);
  // Full: `often` misses until it gets in, then enters at the level its
  // earlier misses earn, above the blocks never hit.
  int misses = 1;
  while (!p.Admit(often, true)) ++misses;
  EXPECT_EQ(misses, 2) << "a second miss beats a victim never hit";
  for (int i = 0; i < 5; ++i) p.Admit(often, true);
  EXPECT_EQ(p.Frequency(often), 7u);
  p.TrackAdmitted(4, often);
  EXPECT_EQ(p.LevelOf(4), 3u) << "six earlier misses";
  EXPECT_EQ(p.Victim(), 0u);
}

TEST(SmqPolicy, HitCountsAge) {
  constexpr uint32_t kSlots = 16;
  SmqPolicy p(kSlots);
  for (uint32_t s = 0; s < kSlots; ++s) p.Track(s);
  for (int i = 0; i < 7; ++i) p.Touch(0);
  EXPECT_EQ(p.LevelOf(0), 3u);
  // Misses elsewhere and hits on slot 1 only: slot 0 is halved back down.
  for (int i = 0; i < 100 * static_cast<int>(kSlots); ++i) {
    p.Admit(BlockKeyHash(5, static_cast<uint64_t>(i)), true);
  }
  EXPECT_EQ(p.LevelOf(0), 0u);
  EXPECT_GE(p.counters().demotions, 3u);
}

TEST(CleanerPolicy, AdmitsNothingAndDrainsDirty) {
  CleanerPolicy p(8);
  EXPECT_TRUE(p.DrainsDirty());
  EXPECT_FALSE(p.Admit(BlockKeyHash(1, 1), false));
  EXPECT_FALSE(p.Admit(BlockKeyHash(1, 1), true));
  EXPECT_EQ(p.counters().rejected, 2u);
  EXPECT_FALSE(SmqPolicy(8).DrainsDirty());
  EXPECT_FALSE(LruPolicy(8).DrainsDirty());
  // Misses through the engine's protocol cache nothing.
  Harness h(p, 8);
  for (uint64_t k = 0; k < 100; ++k) EXPECT_FALSE(h.Access(k % 4));
  EXPECT_EQ(h.cached(), 0u);
  // Blocks tracked at mount are still evicted when asked, hit or not.
  p.Track(2);
  p.Track(5);
  p.Touch(2);
  EXPECT_EQ(Drain(p), (std::vector<uint32_t>{2, 5}));
}

TEST(LruPolicy, EvictsLeastRecentlyUsed) {
  LruPolicy p(4);
  p.Track(0);
  p.Track(1);
  p.Track(2);
  EXPECT_EQ(p.Victim(), 0u);
  p.Touch(0);
  EXPECT_EQ(p.Victim(), 1u);
  p.Remove(1);
  EXPECT_EQ(p.Victim(), 2u);
  EXPECT_TRUE(p.Admit(BlockKeyHash(1, 1), true));
}

}  // namespace
}  // namespace cachefs
