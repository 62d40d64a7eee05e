#include "cache/block_index.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

namespace cachefs {
namespace {

TEST(BlockIndex, InsertFindErase) {
  BlockIndex idx(8);
  EXPECT_FALSE(idx.Find({1, 0}).has_value());
  idx.Insert({1, 0}, 3);
  idx.Insert({1, 1}, 5);
  idx.Insert({2, 0}, 0);
  EXPECT_EQ(idx.Find({1, 0}), 3u);
  EXPECT_EQ(idx.Find({1, 1}), 5u);
  EXPECT_EQ(idx.Find({2, 0}), 0u);
  EXPECT_EQ(idx.size(), 3u);
  EXPECT_EQ(idx.Owner(5), (BlockKey{1, 1}));
  idx.Erase(5);
  EXPECT_FALSE(idx.Find({1, 1}).has_value());
  EXPECT_FALSE(idx.InUse(5));
  EXPECT_EQ(idx.Find({1, 0}), 3u);
  idx.Erase(5);  // no-op
  EXPECT_EQ(idx.size(), 2u);
}

// Random inserts and erases against a std::map model, with the table full:
// backward-shift deletion must never lose a key.
TEST(BlockIndex, MatchesModelUnderChurn) {
  constexpr uint32_t kSlots = 1000;
  BlockIndex idx(kSlots);
  std::map<std::pair<uint64_t, uint64_t>, uint32_t> model;
  std::vector<uint32_t> free_slots;
  for (uint32_t s = 0; s < kSlots; ++s) free_slots.push_back(s);
  std::mt19937_64 rng(42);
  for (int step = 0; step < 200000; ++step) {
    bool insert = !free_slots.empty() && (model.empty() || rng() % 2 == 0);
    if (insert) {
      BlockKey k{rng() % 50, rng() % 100};
      if (model.count({k.file_id, k.index})) continue;
      uint32_t s = free_slots.back();
      free_slots.pop_back();
      idx.Insert(k, s);
      model[{k.file_id, k.index}] = s;
    } else {
      auto it = model.begin();
      std::advance(it, rng() % model.size());
      idx.Erase(it->second);
      free_slots.push_back(it->second);
      model.erase(it);
    }
    if (step % 997 == 0) {
      for (const auto& [k, s] : model) ASSERT_EQ(idx.Find({k.first, k.second}), s);
    }
  }
  ASSERT_EQ(idx.size(), model.size());
  for (const auto& [k, s] : model) ASSERT_EQ(idx.Find({k.first, k.second}), s);
}

TEST(BlockIndex, MemoryPerSlotIsSmall) {
  BlockIndex idx(1u << 20);
  double per_slot = static_cast<double>(idx.MemoryUsed()) / (1u << 20);
  EXPECT_LE(per_slot, 25.0);
}

}  // namespace
}  // namespace cachefs
