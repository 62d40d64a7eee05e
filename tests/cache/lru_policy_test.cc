#include "cache/lru_policy.h"

#include <gtest/gtest.h>

namespace cachefs {
namespace {

TEST(LruPolicy, EvictsLeastRecentlyUsed) {
  LruPolicy p(4);
  EXPECT_FALSE(p.Victim().has_value());
  p.Track(0);
  p.Track(1);
  p.Track(2);
  EXPECT_EQ(p.Victim(), 0u);
  p.Touch(0);
  EXPECT_EQ(p.Victim(), 1u);
  p.Remove(1);
  EXPECT_EQ(p.Victim(), 2u);
  p.Remove(2);
  p.Remove(2);  // no-op
  EXPECT_EQ(p.Victim(), 0u);
  EXPECT_EQ(p.counters().tracked, 1u);
  p.Remove(0);
  EXPECT_FALSE(p.Victim().has_value());
  EXPECT_FALSE(p.IsTracked(0));
}

TEST(LruPolicy, MakePolicyByName) {
  EXPECT_TRUE(MakePolicy("lru", 8).ok());
  EXPECT_FALSE(MakePolicy("fifo", 8).ok());
  EXPECT_LE(LruPolicy(1u << 20).MemoryUsed(), (1u << 20) * 9u);
}

}  // namespace
}  // namespace cachefs
