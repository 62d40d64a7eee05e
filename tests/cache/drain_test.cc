// Engine::DrainForExit and StopWriteback: the writeback after the unmount
// (flush_timeout), over a SOURCE whose writes can be slowed down.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "cache/engine.h"

namespace cachefs {
namespace {

using Clock = std::chrono::steady_clock;

// SOURCE's writes, each delayed by `write_delay_ms`.
class SlowWriteBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    if (write_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }

  std::atomic<int> write_delay_ms{0};
};

constexpr uint32_t kBlock = 64 * 1024;
constexpr uint64_t kBlocks = 32;

class DrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-drain-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    std::filesystem::create_directories(source_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  // mode=writeback with a writer that never runs by itself.
  std::unique_ptr<Engine> Open() {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, 2 * kBlocks * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;
    // One block per batch (and so per write: the pool coalesces only within
    // a batch): a drain can stop between blocks, each synced and clean.
    c.options.migration_threshold = kBlock;
    c.source = source_;
    c.backing = &backing_;
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }

  static std::string Pattern(size_t n, uint32_t seed) {
    std::string s(n, '\0');
    std::mt19937 rng(seed);
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  }

  std::string Source(const std::string& name) const {
    std::ifstream in(source_ + "/" + name, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Creates SOURCE/name (empty) and writes `data` over it through `e`: all
  // of it dirty. The file is closed again, as after an unmount.
  void WriteDirty(Engine& e, const std::string& name, const std::string& data) {
    std::ofstream(source_ + "/" + name, std::ios::binary).flush();
    int raw = open((source_ + "/" + name).c_str(), O_RDONLY);
    ASSERT_GE(raw, 0);
    auto fd = std::make_shared<SourceFd>(raw);
    struct stat st;
    ASSERT_EQ(fstat(raw, &st), 0);
    auto f = e.OpenFile(name, st);
    ASSERT_TRUE(f.ok()) << f.status().message();
    for (size_t off = 0; off < data.size(); off += kBlock) {
      size_t n = std::min<size_t>(kBlock, data.size() - off);
      ASSERT_TRUE(e.Write(*f.value(), fd, off, data.data() + off, n, false).ok());
    }
    ASSERT_TRUE(e.CloseFile(*f.value()).ok());
  }

  std::string base_, source_;
  SlowWriteBacking backing_;
};

TEST_F(DrainTest, WritesEverythingBack) {
  auto e = Open();
  ASSERT_NE(e, nullptr);
  const std::string data = Pattern(kBlocks * kBlock, 1);
  WriteDirty(*e, "f", data);
  EXPECT_EQ(e->stats().blocks_dirty, kBlocks);
  Engine::DrainReport r = e->DrainForExit(30, nullptr);
  EXPECT_TRUE(r.complete);
  EXPECT_FALSE(r.stopped);
  EXPECT_EQ(r.blocks_left, 0u);
  EXPECT_EQ(r.dirty_bytes_left, 0u);
  EXPECT_EQ(r.bytes_written_back, data.size());
  EXPECT_EQ(Source("f"), data);
}

// The timeout ends the drain in the middle of a file: the blocks written so
// far are clean, the rest stays dirty, and the next open writes it back.
TEST_F(DrainTest, TimeoutStopsInTheMiddleOfAFile) {
  const std::string data = Pattern(kBlocks * kBlock, 2);
  uint64_t left = 0;
  {
    auto e = Open();
    ASSERT_NE(e, nullptr);
    WriteDirty(*e, "f", data);
    backing_.write_delay_ms = 40;  // 32 blocks: about 1.3 s
    auto start = Clock::now();
    Engine::DrainReport r = e->DrainForExit(0.3, nullptr);
    EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(800))
        << "the drain did not stop at the timeout";
    EXPECT_FALSE(r.complete);
    EXPECT_FALSE(r.stopped);
    EXPECT_GT(r.blocks_left, 0u);
    EXPECT_LT(r.blocks_left, kBlocks) << "nothing was written back in 0.3 s";
    EXPECT_EQ(r.dirty_bytes_left, r.blocks_left * kBlock);
    EXPECT_EQ(r.bytes_written_back, (kBlocks - r.blocks_left) * kBlock);
    left = r.blocks_left;
    const std::string on_source = Source("f");
    EXPECT_EQ(on_source.size(), (kBlocks - left) * kBlock) << "SOURCE keeps its size";
    EXPECT_EQ(on_source, data.substr(0, on_source.size()));
  }
  backing_.write_delay_ms = 0;
  auto e = Open();
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_dirty, left);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(Source("f"), data);
}

TEST_F(DrainTest, StopEndsItAtOnce) {
  auto e = Open();
  ASSERT_NE(e, nullptr);
  WriteDirty(*e, "f", Pattern(kBlocks * kBlock, 3));
  backing_.write_delay_ms = 40;
  std::atomic<int> polls{0};
  auto start = Clock::now();
  Engine::DrainReport r = e->DrainForExit(30, [&] { return ++polls >= 3; });
  EXPECT_LT(Clock::now() - start, std::chrono::milliseconds(800));
  EXPECT_TRUE(r.stopped);
  EXPECT_FALSE(r.complete);
  EXPECT_GT(r.blocks_left, 0u);
}

TEST_F(DrainTest, NothingDirtyIsCompleteAtOnce) {
  auto e = Open();
  ASSERT_NE(e, nullptr);
  Engine::DrainReport r = e->DrainForExit(0, nullptr);
  EXPECT_TRUE(r.complete);
  EXPECT_EQ(r.blocks_left, 0u);
}

}  // namespace
}  // namespace cachefs
