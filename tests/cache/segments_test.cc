// Log-structured allocation, its garbage collection and the full-cache
// fallback of mode=writeback, against a real cache directory (RocksDB + store
// file) and SOURCE in a temporary directory. Every read is checked against a
// model of the file kept beside it.
#include "cache/segments.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "cache/engine.h"

namespace cachefs {
namespace {

constexpr uint32_t kBlock = 64 * 1024;

class SegmentsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-segments-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    std::filesystem::create_directories(source_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  // mode=writeback with a writer that never runs by itself.
  EngineConfig Config(uint64_t cache_bytes, uint32_t block_size = kBlock) {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, cache_bytes};
    c.options.block_size = block_size;
    c.options.readahead = 0;
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;
    c.source = source_;
    return c;
  }
  std::unique_ptr<Engine> OpenEngine(const EngineConfig& c) {
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }
  SourceFdRef MakeFile(const std::string& name, const std::string& data) {
    std::ofstream(source_ + "/" + name, std::ios::binary) << data;
    int fd = open((source_ + "/" + name).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    return std::make_shared<SourceFd>(fd);
  }
  static struct stat Stat(const SourceFdRef& fd) {
    struct stat st;
    fstat(fd->get(), &st);
    return st;
  }
  std::string ReadSource(const std::string& name) {
    std::ifstream in(source_ + "/" + name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  static std::string Pattern(size_t n, uint32_t seed) {
    std::string s(n, '\0');
    std::mt19937 rng(seed);
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  }
  static std::string ReadAll(Engine& e, CachedFile& f, const SourceFdRef& fd, uint64_t off,
                             size_t len) {
    std::string out(len, '\0');
    auto n = e.Read(f, fd, off, len, out.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
    out.resize(n.ok() ? n.value() : 0);
    return out;
  }
  // Writes `w` at `off` through the engine and into `model`.
  static void WriteBoth(Engine& e, CachedFile& f, const SourceFdRef& fd, std::string& model,
                        uint64_t off, const std::string& w) {
    Status s = e.Write(f, fd, off, w.data(), w.size(), false);
    ASSERT_TRUE(s.ok()) << s.message();
    if (model.size() < off + w.size()) model.resize(off + w.size(), '\0');
    model.replace(off, w.size(), w);
  }

  std::string base_, source_;
};

// The append cursor hands out the slots of one segment in order, then the
// next wholly free segment after it, wrapping at the end of the store;
// fetched blocks take partly used segments first.
TEST(SegmentTable, CursorRunsInOrderAndWraps) {
  SegmentTable t(16, SegmentTable::SlotsPerSegment(4096, 16));
  ASSERT_EQ(t.slots_per_segment(), 2u);
  ASSERT_EQ(t.segment_count(), 8u);
  for (uint32_t s = 0; s < 16; ++s) t.Free(s);
  EXPECT_EQ(t.empty_segments(), 8u);
  for (uint32_t s = 0; s < 16; ++s) EXPECT_EQ(t.TakeLog(), s);
  EXPECT_EQ(t.TakeLog(), std::nullopt);
  EXPECT_EQ(t.wraps(), 0u);
  // Slots 4 and 5 (segment 2) and 9 (segment 4) come free.
  for (uint32_t s : {4u, 5u, 9u}) t.Free(s);
  EXPECT_EQ(t.TakeAny(), 9u);  // a partly used segment before a wholly free one
  EXPECT_EQ(t.TakeLog(), 4u);  // past the end: wrapped to segment 2
  EXPECT_EQ(t.wraps(), 1u);
  EXPECT_EQ(t.TakeLog(), 5u);
  EXPECT_EQ(t.TakeAny(), std::nullopt);
  // The victim is the segment with the fewest live blocks.
  for (uint32_t s = 0; s < 16; ++s) {
    if (s != 7) t.AddLive(s);
  }
  EXPECT_EQ(t.Victim(), 3u);
  // Well under a byte per slot in a store of a million 4 KiB slots.
  SegmentTable big(1u << 20, SegmentTable::SlotsPerSegment(4096, 1u << 20));
  for (uint32_t s = 0; s < (1u << 20); ++s) big.Free(s);
  EXPECT_EQ(big.segment_count(), 1024u);
  EXPECT_LT(big.MemoryUsed(), (1u << 20) / 4);
}

// A cache of four slots, all dirty, with the writer held off: writes to new
// blocks and rewrites of cached ones (also unaligned, over dirty sub-blocks)
// go to SOURCE, every one succeeds, and the file reads right throughout.
TEST_F(SegmentsTest, FullCacheWritesGoThroughToSource) {
  std::string model = Pattern(12 * kBlock, 1);
  auto fd = MakeFile("f", model);
  auto e = OpenEngine(Config(4 * kBlock));
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  // Blocks 0-3, dirty, fill the cache; block 1 with unaligned edges.
  for (uint64_t b = 0; b < 4; ++b) {
    WriteBoth(*e, *f.value(), fd, model, b * kBlock + (b == 1 ? 100 : 0),
              Pattern(kBlock - (b == 1 ? 300 : 0), 10 + static_cast<uint32_t>(b)));
  }
  EXPECT_EQ(e->stats().write_through_fallbacks, 0u);
  EXPECT_EQ(e->stats().blocks_dirty, 4u);
  // Rewriting valid dirty sub-blocks needs a new slot: none is left. The
  // edges cut dirty sub-blocks of block 1 in two.
  WriteBoth(*e, *f.value(), fd, model, kBlock + 1000, Pattern(9000, 20));
  EXPECT_EQ(e->stats().write_through_fallbacks, 1u);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, model.size()), model);
  // Blocks that are not cached at all, past SOURCE's end too.
  for (uint64_t b = 4; b < 14; ++b) {
    WriteBoth(*e, *f.value(), fd, model, b * kBlock + 512, Pattern(5000, 30 + b));
  }
  // (The first fallback woke the writer: later writes may find room again.)
  EXPECT_GE(e->stats().write_through_fallbacks, 1u);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, model.size() + 100), model);
  struct stat st = Stat(fd);
  e->Overlay(*f.value(), &st);
  EXPECT_EQ(static_cast<size_t>(st.st_size), model.size());
  // Our own change of SOURCE: not a conflict, and the writer finishes it.
  EXPECT_FALSE(e->Revalidate(*f.value(), Stat(fd)).value());
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(e->stats().conflicts, 0u);
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(ReadSource("f"), model);
  // And after a remount.
  f.value().reset();
  e.reset();
  e = OpenEngine(Config(4 * kBlock));
  ASSERT_NE(e, nullptr);
  int rfd = open((source_ + "/f").c_str(), O_RDONLY);
  ASSERT_GE(rfd, 0);
  auto ref = std::make_shared<SourceFd>(rfd);
  auto f2 = e->OpenFile("f", Stat(ref));
  ASSERT_TRUE(f2.ok());
  EXPECT_EQ(ReadAll(*e, *f2.value(), ref, 0, model.size()), model);
}

// Several writers into a full cache: every write succeeds and lands.
TEST_F(SegmentsTest, FullCacheConcurrentWriters) {
  constexpr int kThreads = 4;
  constexpr uint64_t kRegion = 4 * kBlock;  // each thread's part of the file
  std::string model = Pattern(kThreads * kRegion, 2);
  auto fd = MakeFile("f", model);
  auto e = OpenEngine(Config(4 * kBlock));
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::vector<std::string> parts(kThreads);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    parts[t] = model.substr(t * kRegion, kRegion);
    threads.emplace_back([&, t] {
      std::mt19937 rng(100 + t);
      for (int i = 0; i < 60; ++i) {
        const uint64_t off = rng() % (kRegion - 1);
        const size_t len = std::min<uint64_t>(1 + rng() % 20000, kRegion - off);
        const std::string w = Pattern(len, rng());
        Status s = e->Write(*f.value(), fd, t * kRegion + off, w.data(), w.size(), false);
        if (!s.ok()) {
          failures++;
          ADD_FAILURE() << s.message();
          continue;
        }
        parts[t].replace(off, len, w);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures, 0);
  model.clear();
  for (const auto& p : parts) model += p;
  EXPECT_GT(e->stats().write_through_fallbacks, 0u);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, model.size()), model);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(e->stats().conflicts, 0u);
  EXPECT_EQ(ReadSource("f"), model);
}

// Random writes over a file smaller than the cache, many times its size:
// the append cursor wraps around the store again and again, the collector
// moves the live dirty blocks out of the segments it cleans (and drops the
// clean ones after a writeback), and every read matches the model, across
// a remount too.
TEST_F(SegmentsTest, GcUnderChurnKeepsEveryReadRight) {
  constexpr uint32_t kSmall = 4096;
  constexpr uint64_t kSlots = 64;  // 8 segments of 8 slots
  constexpr uint64_t kFileBlocks = 24;
  std::string model = Pattern(kFileBlocks * kSmall, 3);
  auto fd = MakeFile("f", model);
  EngineConfig c = Config(kSlots * kSmall, kSmall);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().segments, 8u);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::mt19937 rng(4);
  for (int i = 0; i < 3000; ++i) {
    uint64_t off;
    size_t len;
    if (rng() % 4 != 0) {
      off = (rng() % kFileBlocks) * kSmall;
      len = kSmall;
    } else {
      off = rng() % (model.size() - 1);
      len = std::min<size_t>(1 + rng() % 6000, model.size() - off);
    }
    WriteBoth(*e, *f.value(), fd, model, off, Pattern(len, rng()));
    if (HasFailure()) return;
    if (i % 100 == 99) {
      ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, model.size()), model) << "after write " << i;
    } else {
      const uint64_t at = rng() % model.size();
      const size_t n = std::min<size_t>(1 + rng() % 9000, model.size() - at);
      ASSERT_EQ(ReadAll(*e, *f.value(), fd, at, n), model.substr(at, n)) << "after write " << i;
    }
    if (i % 700 == 699) {
      ASSERT_TRUE(e->Flush().ok());  // clean blocks for the collector to drop
    }
    if (i == 1500) {
      EngineStats before = e->stats();
      EXPECT_GE(before.log_wraps, 5u);
      f.value().reset();
      e.reset();
      e = OpenEngine(c);
      ASSERT_NE(e, nullptr);
      f = e->OpenFile("f", Stat(fd));
      ASSERT_TRUE(f.ok());
      ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, model.size()), model) << "after the remount";
    }
  }
  EngineStats s = e->stats();
  EXPECT_GE(s.log_wraps, 5u);
  EXPECT_GT(s.segments_cleaned, 0u);
  EXPECT_GT(s.gc_moved_blocks, 0u);
  EXPECT_EQ(s.write_through_fallbacks, 0u);
  RecordProperty("log_wraps", std::to_string(s.log_wraps));
  RecordProperty("segments_cleaned", std::to_string(s.segments_cleaned));
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource("f"), model);
  EXPECT_EQ(e->stats().conflicts, 0u);
}

// A cache full of clean blocks (a file read through it): dirty writes take
// their room from them, never fail and never go through to SOURCE.
TEST_F(SegmentsTest, WritesNeverFailWhileCleanSpaceCanBeReclaimed) {
  constexpr uint32_t kSmall = 4096;
  constexpr uint64_t kSlots = 64;
  EngineConfig c = Config(kSlots * kSmall, kSmall);
  c.options.policy = "lru";  // admits every miss: the cache fills up
  const std::string a = Pattern(kSlots * kSmall, 5);
  auto afd = MakeFile("a", a);
  std::string model = Pattern(40 * kSmall, 6);
  auto bfd = MakeFile("b", model);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto fa = e->OpenFile("a", Stat(afd));
  auto fb = e->OpenFile("b", Stat(bfd));
  ASSERT_TRUE(fa.ok() && fb.ok());
  for (uint64_t b = 0; b < kSlots; ++b) {
    ASSERT_EQ(ReadAll(*e, *fa.value(), afd, b * kSmall, kSmall), a.substr(b * kSmall, kSmall));
  }
  e->WaitForInstalls();
  EXPECT_EQ(e->stats().blocks_cached, kSlots);
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  std::mt19937 rng(7);
  for (int i = 0; i < 400; ++i) {
    const uint64_t off = (rng() % 40) * kSmall + (i % 3 == 0 ? rng() % 3000 : 0);
    const size_t len = std::min<size_t>(i % 3 == 0 ? 1 + rng() % 5000 : kSmall, model.size() - off);
    WriteBoth(*e, *fb.value(), bfd, model, off, Pattern(len, rng()));
    if (HasFailure()) return;
  }
  EngineStats s = e->stats();
  EXPECT_EQ(s.write_through_fallbacks, 0u);
  EXPECT_GT(s.evictions + s.gc_dropped_blocks, 0u);
  EXPECT_EQ(ReadAll(*e, *fb.value(), bfd, 0, model.size()), model);
  EXPECT_EQ(ReadAll(*e, *fa.value(), afd, 0, a.size()), a);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource("b"), model);
}

}  // namespace
}  // namespace cachefs
