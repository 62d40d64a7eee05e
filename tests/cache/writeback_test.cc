// The writeback pool (cache/engine_writeback.cc): dirty-age eligibility,
// watermarks, coalescing, batches within migration_threshold, parallel
// files with each file written in order, live tunables; and the slow store's
// faults during writeback (EIO, ENOSPC, a hang, the store vanishing), over
// a fault-injecting Backing (tests/cache/fault_backing.h): nothing is marked
// clean while SOURCE fails, writes and cached reads go on, and once the
// fault ends everything drains and SOURCE holds exactly what was written.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/engine.h"
#include "tests/cache/fault_backing.h"

namespace cachefs {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;
using Fault = FaultBacking::Fault;

constexpr uint64_t kBlock = uint64_t{64} << 10;

// Polls `done` until it holds or `limit` passes; returns whether it held.
bool WaitFor(const std::function<bool()>& done, milliseconds limit = milliseconds(10000)) {
  const auto deadline = steady_clock::now() + limit;
  while (!done()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(5));
  }
  return true;
}

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

class WritebackPoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-writeback-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    std::filesystem::create_directories(source_);
    backing_ = FaultBacking::Leaked();  // hung calls may outlive the test
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  // mode=writeback; the pool writes nothing by age (delay 1 h) unless a
  // test says otherwise.
  EngineConfig Config(uint64_t cache_blocks = 16) {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, cache_blocks * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;
    c.options.writeback_threads = 2;
    c.source = source_;
    c.backing = backing_;
    return c;
  }
  std::unique_ptr<Engine> Open(const EngineConfig& c) {
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }

  // A SOURCE file with `data`, opened read-only, and bound to the engine.
  struct File {
    SourceFdRef fd;
    std::shared_ptr<CachedFile> cached;
    std::string expect;  // what SOURCE must hold once written back
  };
  File Make(Engine& e, const std::string& name, const std::string& data) {
    std::ofstream(source_ + "/" + name, std::ios::binary) << data;
    File f;
    int fd = open((source_ + "/" + name).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    f.fd = std::make_shared<SourceFd>(fd);
    struct stat st;
    fstat(fd, &st);
    auto c = e.OpenFile(name, st);
    EXPECT_TRUE(c.ok()) << c.status().message();
    if (c.ok()) f.cached = c.value();
    f.expect = data;
    return f;
  }
  static void Write(Engine& e, File& f, uint64_t off, const std::string& data) {
    ASSERT_TRUE(e.Write(*f.cached, f.fd, off, data.data(), data.size(), false).ok());
    if (f.expect.size() < off + data.size()) f.expect.resize(off + data.size(), '\0');
    f.expect.replace(off, data.size(), data);
  }
  std::string Source(const std::string& name) const {
    std::ifstream in(source_ + "/" + name, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  static bool Drained(Engine& e) {
    EngineStats s = e.stats();
    return s.blocks_dirty == 0 && s.writeback_in_flight == 0;
  }

  std::string base_, source_;
  FaultBacking* backing_ = nullptr;
};

// --- eligibility and watermarks ----------------------------------------------

TEST_F(WritebackPoolTest, ABlockIsWrittenBackOnceItHasAgedWritebackDelay) {
  EngineConfig c = Config();
  c.options.writeback_delay = 0.3;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(2 * kBlock, 1));
  const auto t0 = steady_clock::now();
  Write(*e, f, 4096, Pattern(4096, 2));
  ASSERT_TRUE(WaitFor([&] { return Drained(*e); }));
  EXPECT_GE(steady_clock::now() - t0, milliseconds(300)) << "written back before its age";
  EXPECT_EQ(Source("f"), f.expect);
}

TEST_F(WritebackPoolTest, AFlushIgnoresTheAge) {
  auto e = Open(Config());  // writeback_delay: 1 h
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(2 * kBlock, 3));
  Write(*e, f, kBlock, Pattern(100, 4));
  const uint64_t mark = e->StartFlush();
  ASSERT_TRUE(WaitFor([&] { return e->FlushProgress(mark).blocks == 0; }));
  EXPECT_EQ(Source("f"), f.expect);
}

// Above dirty_high percent of the slots dirty, the pool writes back whatever
// its age until dirty_low percent is left; below, nothing unaged moves.
TEST_F(WritebackPoolTest, WatermarksStartAtHighAndStopAtLow) {
  EngineConfig c = Config(16);
  c.options.writeback_threads = 1;  // one file at a time: it stops exactly at low
  c.options.dirty_high = 50;
  c.options.dirty_low = 25;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  std::vector<File> files;
  files.reserve(8);
  for (int i = 0; i < 8; ++i) {
    files.push_back(Make(*e, "f" + std::to_string(i), Pattern(kBlock, 10 + i)));
  }
  for (int i = 0; i < 7; ++i) Write(*e, files[i], 0, Pattern(4096, 20 + i));
  // Seven of 16 (44%): nothing to do for an idle pool, which looks every 100 ms.
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(e->stats().blocks_dirty, 7u);
  EXPECT_EQ(backing_->writes, 0);
  Write(*e, files[7], 0, Pattern(4096, 27));  // 8 of 16: 50%
  ASSERT_TRUE(WaitFor([&] { return e->stats().blocks_dirty <= 4; }));
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(e->stats().blocks_dirty, 4u) << "stops at dirty_low (4 of 16)";
  EXPECT_EQ(backing_->writes, 4);
  // The oldest went first.
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Source("f" + std::to_string(i)), files[i].expect);
}

// --- coalescing, batches, parallel files ---------------------------------------

TEST_F(WritebackPoolTest, AdjacentDirtyRunsGoOutInOneWrite) {
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(8 * kBlock, 30));
  Write(*e, f, 0, Pattern(4 * kBlock, 31));            // blocks 0-3: one run
  Write(*e, f, 5 * kBlock, Pattern(2 * kBlock, 32));   // blocks 5-6: another
  Write(*e, f, 7 * kBlock + 8192, Pattern(4096, 33));  // apart from it
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(Source("f"), f.expect);
  EXPECT_EQ(backing_->writes, 3);
  EXPECT_EQ(backing_->syncs, 1) << "one batch";
  EngineStats s = e->stats();
  EXPECT_EQ(s.writeback_writes, 3u);
  EXPECT_EQ(s.bytes_written_back, 6u * kBlock + 4096);
  EXPECT_EQ(s.blocks_dirty, 0u);
}

// migration_threshold bounds a batch; each batch is synced before its blocks
// are clean.
TEST_F(WritebackPoolTest, MigrationThresholdCutsAFileIntoSyncedBatches) {
  EngineConfig c = Config();
  c.options.writeback_threads = 1;
  c.options.migration_threshold = 2 * kBlock;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(8 * kBlock, 40));
  Write(*e, f, 0, Pattern(8 * kBlock, 41));
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(Source("f"), f.expect);
  EXPECT_EQ(backing_->writes, 4);
  EXPECT_EQ(backing_->syncs, 4);
}

// Several files are written back at once, each by one worker at a time; the
// thread count changes while mounted.
TEST_F(WritebackPoolTest, WorkersShareFilesNeverOneFile) {
  EngineConfig c = Config();
  c.options.writeback_threads = 1;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  std::vector<File> files;
  for (int i = 0; i < 4; ++i) {
    files.push_back(Make(*e, "f" + std::to_string(i), Pattern(6 * kBlock, 50 + i)));
    for (uint64_t b : {0, 2, 4}) Write(*e, files[i], b * kBlock, Pattern(4096, 60 + b + i));
  }
  c.options.writeback_threads = 4;
  ASSERT_TRUE(e->Reconfigure(c.options).ok());
  backing_->write_delay_ms = 50;  // a slow store: writes overlap if they can
  const uint64_t mark = e->StartFlush();
  ASSERT_TRUE(WaitFor([&] { return e->FlushProgress(mark).blocks == 0; }));
  EXPECT_GE(backing_->max_parallel, 2);
  EXPECT_EQ(backing_->same_file_overlaps, 0);
  EXPECT_EQ(backing_->writes, 12);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(Source("f" + std::to_string(i)), files[i].expect);
}

TEST_F(WritebackPoolTest, WatermarksChangeWhileMounted) {
  auto e = Open(Config(16));
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(4 * kBlock, 70));
  Write(*e, f, 0, Pattern(3 * kBlock, 71));  // 3 of 16 dirty: below 60%
  std::this_thread::sleep_for(milliseconds(200));
  EXPECT_EQ(e->stats().blocks_dirty, 3u);
  CacheOptions o = Config().options;
  o.dirty_high = 10;
  o.dirty_low = 5;
  ASSERT_TRUE(e->Reconfigure(o).ok());
  ASSERT_TRUE(WaitFor([&] { return Drained(*e); }));
  EXPECT_EQ(Source("f"), f.expect);
}

// --- faults of the slow store ---------------------------------------------------

struct FaultCase {
  const char* name;
  Fault fault;
};

class WritebackFaultTest : public WritebackPoolTest,
                           public ::testing::WithParamInterface<FaultCase> {};

TEST_P(WritebackFaultTest, NothingIsLostAndAllDrainsOnceTheFaultEnds) {
  const Fault fault = GetParam().fault;
  EngineConfig c = Config();
  c.options.writeback_delay = 0;  // every block eligible at once
  c.options.source_timeout = 0.3;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  File a = Make(*e, "a", Pattern(3 * kBlock, 80));
  File b = Make(*e, "b", Pattern(2 * kBlock, 81));
  File cold = Make(*e, "cold", Pattern(kBlock, 82));
  const std::string a_before = a.expect;
  const std::string b_before = b.expect;

  backing_->Set(fault);
  // Writes keep going into the cache.
  Write(*e, a, 0, Pattern(kBlock, 83));
  // Whole 4 KiB sub-blocks: a part of one not cached would need SOURCE's bytes.
  Write(*e, a, 2 * kBlock + 4096, Pattern(8192, 84));
  Write(*e, b, kBlock + 4096, Pattern(8192, 85));
  e->StartFlush();
  // Attempts fail, are counted and retried with backoff; nothing turns clean.
  ASSERT_TRUE(WaitFor([&] {
    EngineStats s = e->stats();
    return s.writeback_errors >= 4 && s.writeback_retries >= 2 && s.writeback_failing == 2;
  })) << e->stats().writeback_errors;
  EXPECT_EQ(e->stats().blocks_dirty, 3u);
  // Written again while failing: the newest bytes are the ones that must land.
  Write(*e, a, 1000, Pattern(3000, 86));
  // Cached data is served; a miss needs SOURCE.
  std::string got(kBlock, '\0');
  auto n = e->Read(*a.cached, a.fd, 0, kBlock, got.data());
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(got, a.expect.substr(0, kBlock));
  const auto t0 = steady_clock::now();
  n = e->Read(*cold.cached, cold.fd, 0, kBlock, got.data());
  if (fault == Fault::kHang) {
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), EIO);
    EXPECT_GE(steady_clock::now() - t0, milliseconds(290)) << "after source_timeout";
  } else if (fault == Fault::kVanished) {
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), ENOTCONN) << "SOURCE's own error";
  } else {
    ASSERT_TRUE(n.ok()) << n.status().message();
    EXPECT_EQ(got, cold.expect);
  }
  EXPECT_EQ(Source("a"), a_before);
  EXPECT_EQ(Source("b"), b_before);
  EXPECT_EQ(e->stats().blocks_dirty, 3u);
  if (fault == Fault::kHang || fault == Fault::kHangWrites) {
    EXPECT_GE(e->stats().writeback_timeouts, 1u);
  }

  backing_->Set(Fault::kNone);
  ASSERT_TRUE(WaitFor([&] { return Drained(*e) && e->stats().writeback_failing == 0; }))
      << e->stats().blocks_dirty;
  EXPECT_EQ(Source("a"), a.expect);
  EXPECT_EQ(Source("b"), b.expect);
  EXPECT_EQ(Source("cold"), cold.expect);
}

INSTANTIATE_TEST_SUITE_P(Faults, WritebackFaultTest,
                         ::testing::Values(FaultCase{"Eio", Fault::kEio},
                                           FaultCase{"Enospc", Fault::kEnospc},
                                           FaultCase{"Hang", Fault::kHang},
                                           FaultCase{"HangWrites", Fault::kHangWrites},
                                           FaultCase{"Vanished", Fault::kVanished}),
                         [](const ::testing::TestParamInfo<FaultCase>& i) { return i.param.name; });

// A write that timed out may still land later: the file is not written again
// before it has, so the old bytes never end up over newer ones.
TEST_F(WritebackPoolTest, AHungWriteNeverLandsOverNewerData) {
  EngineConfig c = Config();
  c.options.writeback_threads = 1;
  c.options.writeback_delay = 0;
  c.options.source_timeout = 0.2;
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  File f = Make(*e, "f", Pattern(kBlock, 90));
  backing_->Set(Fault::kHangWrites);
  Write(*e, f, 0, Pattern(4096, 91));  // v1: its write hangs
  ASSERT_TRUE(WaitFor([&] { return e->stats().writeback_timeouts >= 1; }));
  Write(*e, f, 0, Pattern(4096, 92));  // v2
  // Retries find the hung write still running: they fail without writing.
  ASSERT_TRUE(WaitFor([&] { return e->stats().writeback_errors >= 3; }));
  EXPECT_EQ(backing_->hung(), 1) << "only the first write reached the store";
  backing_->Set(Fault::kNone);  // v1 lands now; then v2
  ASSERT_TRUE(WaitFor([&] { return Drained(*e) && e->stats().writeback_failing == 0; }));
  EXPECT_EQ(Source("f"), f.expect);
}

// A slow store's link: each write takes its size over `bytes_per_s`.
class BandwidthBacking final : public Backing {
 public:
  explicit BandwidthBacking(uint64_t bytes_per_s) : bytes_per_s_(bytes_per_s) {}
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    std::this_thread::sleep_for(std::chrono::microseconds(len * 1000000 / bytes_per_s_));
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }

 private:
  const uint64_t bytes_per_s_;
};

// A coalesced write (3 MiB: 1.5 s at 2 MiB/s) goes out in pieces, so the end
// of the writeback after an unmount (DrainForExit, StopWriteback) waits for
// one piece, not the whole write; the blocks of the cut write stay dirty.
TEST_F(WritebackPoolTest, StopEndsALongCoalescedWriteWithinAPiece) {
  BandwidthBacking slow(2u << 20);
  EngineConfig c = Config(64);
  c.options.writeback_threads = 1;
  c.backing = &slow;
  const std::string data = Pattern(48 * kBlock, 95);
  {
    auto e = Open(c);
    ASSERT_NE(e, nullptr);
    File f = Make(*e, "f", "");
    Write(*e, f, 0, data);
    ASSERT_TRUE(e->CloseFile(*f.cached).ok());
    const auto start = steady_clock::now();
    Engine::DrainReport r = e->DrainForExit(0.3, nullptr);
    EXPECT_LT(steady_clock::now() - start, milliseconds(900)) << "waited for the whole write";
    EXPECT_FALSE(r.complete);
    EXPECT_EQ(r.blocks_left, 48u) << "blocks of a write cut short turned clean";
    const std::string on_source = Source("f");
    EXPECT_LT(on_source.size(), data.size());
    EXPECT_EQ(on_source, data.substr(0, on_source.size()));
  }
  c.backing = RealBacking();
  auto e = Open(c);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_dirty, 48u);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(Source("f"), data);
}

}  // namespace
}  // namespace cachefs
