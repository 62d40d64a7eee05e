// The engine's explicit cache control: Warm (admitted whatever the policy
// says, no double fetches), Pin (never a victim, kept across a reopen and a
// policy switch), Unpin and Evict.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "cache/engine.h"

namespace cachefs {
namespace {

constexpr uint64_t kBlock = uint64_t{64} << 10;

class EngineWarmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-warm-XXXXXX";
    base_ = mkdtemp(t);
    std::filesystem::create_directories(base_ + "/src");
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  // 8 slots, smq (which admits a block only once it is missed again).
  std::unique_ptr<Engine> Open(const std::string& policy = "smq") {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, 8 * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.policy = policy;
    c.source = base_ + "/src";
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }
  void Make(const std::string& name, size_t blocks) {
    std::ofstream(base_ + "/src/" + name, std::ios::binary) << std::string(blocks * kBlock, 'x');
  }

  std::string base_;
};

TEST_F(EngineWarmTest, WarmCachesEveryBlockOnceWhateverThePolicySays) {
  auto e = Open();
  ASSERT_NE(e, nullptr);
  Make("f", 3);
  auto r = e->Warm("f", 0, 100 * kBlock);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->size, 3u * kBlock);
  EXPECT_EQ(r->blocks_fetched, 3u);
  EXPECT_EQ(r->bytes_fetched, 3u * kBlock);
  EngineStats s = e->stats();
  EXPECT_EQ(s.blocks_cached, 3u);
  EXPECT_EQ(s.warmed, 3u);
  EXPECT_EQ(s.read_misses, 0u);
  r = e->Warm("f", kBlock, kBlock);  // one block, cached already
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->blocks_fetched, 0u);
  EXPECT_EQ(r->blocks_present, 1u);

  for (const char* bad : {"/f", "../f", "./f", "a//f", "missing"}) {
    EXPECT_FALSE(e->Warm(bad, 0, kBlock).ok()) << bad;
  }
  EXPECT_FALSE(e->Warm("", 0, kBlock).ok()) << "SOURCE itself is no regular file";
}

TEST_F(EngineWarmTest, PinnedBlocksAreNeverVictimsAndStayPinnedAfterReopen) {
  auto e = Open();
  ASSERT_NE(e, nullptr);
  Make("p", 3);
  Make("q", 8);
  auto pin = e->Pin("p");
  ASSERT_TRUE(pin.ok()) << pin.status().message();
  EXPECT_FALSE(pin->was_pinned);
  ASSERT_TRUE(e->Warm("p", 0, 3 * kBlock).ok());
  EXPECT_EQ(e->stats().blocks_pinned, 3u);
  // q, pinned too, wants all 8 slots: 5 are left.
  ASSERT_TRUE(e->Pin("q").ok());
  auto full = e->Warm("q", 0, 8 * kBlock);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), ENOSPC) << full.status().message();
  EXPECT_EQ(e->stats().blocks_pinned, 8u);

  // A policy switch keeps them untracked; so does a reopen.
  CacheOptions o;
  o.policy = "lru";
  ASSERT_TRUE(e->Reconfigure(o).ok());
  EXPECT_EQ(e->Warm("q", 0, 8 * kBlock).status().code(), ENOSPC);
  e.reset();
  e = Open("lru");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_pinned, 8u);
  EXPECT_EQ(e->Warm("q", 0, 8 * kBlock).status().code(), ENOSPC);

  // Evict leaves pinned files alone; unpinned, they are ordinary blocks.
  auto ev = e->Evict("");
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->files_pinned, 2u);
  EXPECT_EQ(ev->blocks_pinned_kept, 8u);
  EXPECT_EQ(e->stats().blocks_cached, 8u);
  auto un = e->Unpin("");
  ASSERT_TRUE(un.ok());
  EXPECT_EQ(un->files, 2u);
  EXPECT_EQ(un->blocks, 8u);
  EXPECT_EQ(e->stats().blocks_pinned, 0u);
  auto r = e->Warm("q", 0, 8 * kBlock);  // p's blocks are victims now
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->blocks_fetched, 3u);
  EXPECT_EQ(e->stats().blocks_cached, 8u);
  ev = e->Evict("q");
  ASSERT_TRUE(ev.ok());
  EXPECT_EQ(ev->blocks_dropped, 8u);
  EXPECT_EQ(e->stats().blocks_cached, 0u);
}

}  // namespace
}  // namespace cachefs
