// The engine against a real cache directory (RocksDB + store file) and a
// counting test Backing, so every test can see exactly when SOURCE is read.
#include "cache/engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "tests/cache/fault_backing.h"
#include "tests/cache/gate.h"
#include "tests/cache/hook_meta.h"

namespace cachefs {
namespace {

// Counts reads of SOURCE; can be slowed down or made to fail.
class CountingBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    reads++;
    bytes += len;
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
    if (fail) return Status::Error(EIO, "injected read failure");
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    writes++;
    if (write_delay_ms > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
    }
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }

  std::atomic<int> reads{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<int> writes{0};
  std::atomic<int> write_delay_ms{0};
  std::atomic<int> delay_ms{0};
  std::atomic<bool> fail{false};
};

constexpr uint32_t kBlock = 64 * 1024;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-engine-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    std::filesystem::create_directories(source_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  EngineConfig Config(uint64_t cache_bytes = 16 * kBlock) {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, cache_bytes};
    c.options.block_size = kBlock;
    c.options.readahead = 0;  // on only where a test wants it: counts stay exact
    c.source = source_;
    c.backing = &backing_;
    return c;
  }

  // mode=writeback with a writer that never runs by itself: only Flush()
  // writes back.
  EngineConfig WritebackConfig() {
    EngineConfig c = Config();
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;
    return c;
  }

  std::unique_ptr<Engine> OpenEngine(const EngineConfig& c) {
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }

  // Writes `data` to SOURCE/name and opens it read-only.
  SourceFdRef MakeFile(const std::string& name, const std::string& data) {
    std::ofstream(source_ + "/" + name, std::ios::binary) << data;
    return OpenSourceFile(name);
  }
  static SourceFdRef OpenSource(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    return std::make_shared<SourceFd>(fd);
  }
  SourceFdRef OpenSourceFile(const std::string& name) { return OpenSource(source_ + "/" + name); }
  // MakeFile, but opened for reading and writing (the descriptor the FUSE
  // layer would write a detached file through).
  SourceFdRef MakeFileRw(const std::string& name, const std::string& data) {
    MakeFile(name, data);
    int fd = open((source_ + "/" + name).c_str(), O_RDWR);
    EXPECT_GE(fd, 0);
    return std::make_shared<SourceFd>(fd);
  }
  static struct stat Stat(const SourceFdRef& fd) {
    struct stat st;
    fstat(fd->get(), &st);
    return st;
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
    e.WaitForInstalls();  // so counts and the store are settled for the checks
    out.resize(n.ok() ? n.value() : 0);
    return out;
  }

  // An engine opened with `c` and SOURCE/f (`size` bytes of Pattern(size,
  // seed)) opened in it. `e` or `f` stays null (with a test failure) if
  // either cannot be opened.
  struct OneFile {
    std::unique_ptr<Engine> e;
    std::string data;
    SourceFdRef fd;
    std::shared_ptr<CachedFile> f;
  };
  OneFile OpenOneFile(const EngineConfig& c, uint32_t seed, size_t size = kBlock) {
    OneFile h;
    h.e = OpenEngine(c);
    if (h.e == nullptr) return h;
    h.data = Pattern(size, seed);
    h.fd = MakeFile("f", h.data);
    auto f = h.e->OpenFile("f", Stat(h.fd));
    EXPECT_TRUE(f.ok()) << f.status().message();
    if (f.ok()) h.f = f.value();
    return h;
  }
  // OpenOneFile (one block) with a 100 ms source_timeout, whose SOURCE then
  // takes 600 ms per read.
  OneFile OpenHungSource(uint32_t seed) {
    EngineConfig c = Config();
    c.options.source_timeout = 0.1;
    OneFile h = OpenOneFile(c, seed);
    backing_.delay_ms = 600;
    return h;
  }

  // Opens an engine with `c`, reads SOURCE/name (holding `data`) through it
  // once, so its blocks are cached, and closes the engine.
  void CacheWholeFile(const EngineConfig& c, const std::string& name, const SourceFdRef& fd,
                      const std::string& data) {
    auto e = OpenEngine(c);
    ASSERT_NE(e, nullptr);
    auto f = e->OpenFile(name, Stat(fd));
    ASSERT_TRUE(f.ok()) << f.status().message();
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  }

  // Flips one byte at `offset` inside each of the store file's first 16 slots.
  static void FlipStoreBytes(const EngineConfig& c, uint64_t offset) {
    std::string store = c.options.cache_dir + "/store";
    int sfd = open(store.c_str(), O_RDWR);
    ASSERT_GE(sfd, 0);
    for (uint64_t slot = 0; slot < 16; ++slot) {
      char b;
      const auto at = static_cast<off_t>(slot * kBlock + offset);
      ASSERT_EQ(pread(sfd, &b, 1, at), 1);
      b ^= 0x40;
      ASSERT_EQ(pwrite(sfd, &b, 1, at), 1);
    }
    fsync(sfd);
    close(sfd);
  }

  std::string base_, source_;
  CountingBacking backing_;
};

TEST_F(EngineTest, MissThenHitAndPartialLastBlock) {
  auto e = OpenEngine(Config());
  ASSERT_NE(e, nullptr);
  std::string data = Pattern(3 * kBlock + 1000, 1);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  // One read of SOURCE for the run of four missing blocks (the last one partial).
  EXPECT_EQ(backing_.reads, 1);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, kBlock - 10, 30), data.substr(kBlock - 10, 30));
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, data.size() - 7, 100), data.substr(data.size() - 7));
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, data.size(), 100), "");
  EXPECT_EQ(backing_.reads, 1);
  EngineStats s = e->stats();
  EXPECT_EQ(s.read_misses, 4u);
  EXPECT_GE(s.read_hits, 6u);
  EXPECT_EQ(s.blocks_cached, 4u);
}

// The installer is not woken for each miss while it polls its queue, and
// sleeps once idle: either way every fetched block gets installed, with
// nobody waiting for it (no lost wake-up), and a burst larger than a batch too.
TEST_F(EngineTest, InstallerFindsJobsWhetherPollingOrAsleep) {
  auto e = OpenEngine(Config(128 * kBlock));
  ASSERT_NE(e, nullptr);
  std::string data = Pattern(64 * kBlock, 3);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto read_block = [&](uint64_t index) {
    std::string out(4096, '\0');
    auto n = e->Read(*f.value(), fd, index * kBlock, out.size(), out.data());
    ASSERT_TRUE(n.ok()) << n.status().message();
    EXPECT_EQ(out, data.substr(index * kBlock, 4096));
  };
  auto cached_within = [&](uint64_t want) {
    for (int i = 0; i < 500 && e->stats().blocks_cached < want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return e->stats().blocks_cached;
  };
  read_block(0);  // the installer is asleep: woken
  EXPECT_EQ(cached_within(1), 1u);
  read_block(1);  // just after a job: polling, not woken
  EXPECT_EQ(cached_within(2), 2u);
  // Asleep again after its idle looks (10 x 2 ms).
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  read_block(2);
  EXPECT_EQ(cached_within(3), 3u);
  for (uint64_t b = 3; b < 43; ++b) read_block(b);  // more than a batch at once
  EXPECT_EQ(cached_within(43), 43u);
  const int reads = backing_.reads;
  for (uint64_t b = 0; b < 43; ++b) read_block(b);
  EXPECT_EQ(backing_.reads, reads);  // all hits
}

TEST_F(EngineTest, WarmAfterCleanRestart) {
  std::string data = Pattern(2 * kBlock, 2);
  auto fd = MakeFile("f", data);
  {
    auto e = OpenEngine(Config());
    ASSERT_NE(e, nullptr);
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  }
  int before = backing_.reads;
  auto e = OpenEngine(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_cached, 2u);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, before);
}

// kill -9 right after the reads: what was committed (WAL written before the
// read returned) gives a warm cache at the next open.
TEST_F(EngineTest, WarmAfterKill) {
  std::string data = Pattern(4 * kBlock, 3);
  auto fd = MakeFile("f", data);
  EngineConfig c = Config();
  pid_t pid = fork();
  if (pid == 0) {
    auto e = Engine::Open(c);
    if (!e.ok()) _exit(2);
    auto f = e.value()->OpenFile("f", Stat(fd));
    if (!f.ok()) _exit(3);
    std::string out(data.size(), '\0');
    auto n = e.value()->Read(*f.value(), fd, 0, data.size(), out.data());
    e.value()->WaitForInstalls();          // what a reply promised is in the cache
    _exit(n.ok() && out == data ? 0 : 4);  // no destructor: as good as a crash
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  int before = backing_.reads;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, before);
}

TEST_F(EngineTest, ChangedFingerprintDropsBlocks) {
  auto e = OpenEngine(Config());
  ASSERT_NE(e, nullptr);
  std::string v1 = Pattern(kBlock, 4);
  auto fd = MakeFile("f", v1);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, v1.size()), v1);
  // Changed directly in SOURCE: same size, new content and mtime.
  std::string v2 = Pattern(kBlock, 5);
  std::ofstream(source_ + "/f", std::ios::binary) << v2;
  struct timespec ts[2] = {{0, UTIME_NOW}, {12345, 0}};
  utimensat(AT_FDCWD, (source_ + "/f").c_str(), ts, 0);
  auto changed = e->Revalidate(*f.value(), Stat(fd));
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(changed.value());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, v2.size()), v2);
  EXPECT_EQ(e->stats().invalidations, 1u);
  auto again = e->Revalidate(*f.value(), Stat(fd));
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again.value());
}

TEST_F(EngineTest, ChangeWhileUnmountedIsSeenAtOpen) {
  std::string v1 = Pattern(kBlock, 6);
  auto fd = MakeFile("f", v1);
  {
    auto e = OpenEngine(Config());
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, v1.size()), v1);
  }
  std::string v2 = Pattern(kBlock + 5, 7);  // grown
  std::ofstream(source_ + "/f", std::ios::binary) << v2;
  auto e = OpenEngine(Config());
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, v2.size()), v2);
}

TEST_F(EngineTest, AfterWriteDropsOnlyTouchedBlocks) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(4 * kBlock, 8);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  int wfd = open((source_ + "/f").c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(wfd, "XY", 2, kBlock + 5), 2);
  close(wfd);
  data.replace(kBlock + 5, 2, "XY");
  ASSERT_TRUE(e->AfterWrite(*f.value(), kBlock + 5, 2, Stat(fd)).ok());
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, before + 1);  // only block 1 again
}

TEST_F(EngineTest, TruncateThenGrowReadsZeros) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(2 * kBlock, 9);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  ASSERT_EQ(truncate((source_ + "/f").c_str(), 100), 0);
  ASSERT_TRUE(e->AfterTruncate(*f.value(), Stat(fd)).ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data.substr(0, 100));
  ASSERT_EQ(truncate((source_ + "/f").c_str(), kBlock), 0);
  ASSERT_TRUE(e->AfterTruncate(*f.value(), Stat(fd)).ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, kBlock),
            data.substr(0, 100) + std::string(kBlock - 100, '\0'));
}

TEST_F(EngineTest, EvictionKeepsTheCap) {
  EngineConfig c = Config(4 * kBlock);
  c.options.policy = "lru";
  auto e = OpenEngine(c);
  std::string data = Pattern(10 * kBlock, 10);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  // Block by block, each installed before the next is read, so the order of
  // use is exact.
  for (int round = 0; round < 2; ++round) {
    for (uint64_t b = 0; b < 10; ++b) {
      EXPECT_EQ(ReadAll(*e, *f.value(), fd, b * kBlock, kBlock), data.substr(b * kBlock, kBlock));
    }
  }
  EngineStats s = e->stats();
  EXPECT_LE(s.blocks_cached, 4u);
  EXPECT_GE(s.evictions, 16u);
  // The last four blocks read are the ones kept (LRU).
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 6 * kBlock, 4 * kBlock), data.substr(6 * kBlock));
  EXPECT_EQ(backing_.reads, before);
}

TEST_F(EngineTest, CorruptionIsRefetchedAndCounted) {
  EngineConfig c = Config();
  std::string data = Pattern(kBlock, 11);
  auto fd = MakeFile("f", data);
  CacheWholeFile(c, "f", fd, data);
  // Flip one byte of every slot's first page in the store file.
  FlipStoreBytes(c, 100);
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(e->stats().crc_errors, 1u);
  EXPECT_EQ(backing_.reads, before + 1);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);  // now a clean hit
  EXPECT_EQ(backing_.reads, before + 1);
}

TEST_F(EngineTest, ConcurrentMissesShareOneFetch) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(kBlock, 12);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  backing_.delay_ms = 200;
  std::vector<std::thread> threads;
  std::atomic<int> good{0};
  // Eight readers of the same sub-blocks: one fetch.
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      if (ReadAll(*e, *f.value(), fd, i * 500, 500) == data.substr(i * 500, 500)) good++;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(good, 8);
  EXPECT_EQ(backing_.reads, 1);
  EXPECT_EQ(e->stats().read_misses, 1u);
  EXPECT_GE(e->stats().fetch_waits, 1u);
}

TEST_F(EngineTest, MissFetchesOnlyTheSubBlocksAskedForAndFillsLater) {
  std::string data = Pattern(kBlock, 21);
  auto fd = MakeFile("f", data);
  {
    auto e = OpenEngine(Config());
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 5 * 4096 + 10, 100), data.substr(5 * 4096 + 10, 100));
    EXPECT_EQ(backing_.bytes, 4096u);  // one sub-block, not the 64 KiB block
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 9 * 4096, 8192), data.substr(9 * 4096, 8192));
    EXPECT_EQ(backing_.bytes, 3 * 4096u);
    EXPECT_EQ(e->stats().blocks_cached, 1u);  // both filled into the same slot
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 5 * 4096, 4096), data.substr(5 * 4096, 4096));
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 10 * 4096, 4096), data.substr(10 * 4096, 4096));
    EXPECT_EQ(backing_.reads, 2);
  }
  // The valid sub-blocks are in the metadata: still hits after a restart,
  // and a read over valid and missing sub-blocks fetches the rest.
  auto e = OpenEngine(Config());
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 9 * 4096, 8192), data.substr(9 * 4096, 8192));
  EXPECT_EQ(backing_.reads, 2);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, kBlock), data);
  EXPECT_EQ(backing_.reads, 3);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, kBlock), data);
  EXPECT_EQ(backing_.reads, 3);
  EXPECT_EQ(e->stats().blocks_cached, 1u);
}

TEST_F(EngineTest, ReadaheadFetchesEachBlockOnceAhead) {
  const size_t blocks = 40;
  std::string data = Pattern(blocks * kBlock, 22);
  auto fd = MakeFile("f", data);
  EngineConfig c = Config(64 * kBlock);
  c.options.readahead = 8 * kBlock;
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  backing_.delay_ms = 2;  // readahead and reader overlap
  // A sequential reader in 128 KiB requests, as the kernel sends them.
  for (uint64_t off = 0; off < data.size(); off += 2 * kBlock) {
    ASSERT_EQ(ReadAll(*e, *f.value(), fd, off, 2 * kBlock), data.substr(off, 2 * kBlock));
  }
  // Every byte came from SOURCE once, most of it fetched ahead of the reader.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (e->stats().blocks_cached < blocks && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(e->stats().blocks_cached, blocks);
  EXPECT_EQ(backing_.bytes, data.size());
  EXPECT_GE(e->stats().readahead_blocks, blocks / 2);
  // A random reader triggers none.
  uint64_t before = e->stats().readahead_blocks;
  auto g = e->OpenFile("g", Stat(MakeFile("g", data)));
  ASSERT_TRUE(g.ok());
  auto gfd = OpenSourceFile("g");
  for (uint64_t b : {30, 3, 17, 9, 25}) {
    ASSERT_EQ(ReadAll(*e, *g.value(), gfd, b * kBlock, 4096), data.substr(b * kBlock, 4096));
  }
  EXPECT_EQ(e->stats().readahead_blocks, before);
}

// How a sequential stream's blocks end up not cached (or evicting others).
enum class NotCached { kLruFull, kSmqRefuses, kSequentialBypass, kFileSizeLimit };

class ReadaheadOnceTest : public EngineTest, public ::testing::WithParamInterface<NotCached> {};

// Whatever becomes of a block read ahead (cached, refused by the policy, of
// a stream that bypasses the cache), the reader gets it without a second
// read of SOURCE, and the policy is asked about it once.
TEST_P(ReadaheadOnceTest, ReadsEachByteOfSourceOnce) {
  const NotCached how = GetParam();
  const size_t blocks = 40;
  EngineConfig c = Config(16 * kBlock);
  c.options.readahead = 8 * kBlock;
  c.options.policy = how == NotCached::kLruFull ? "lru" : "smq";
  if (how == NotCached::kSequentialBypass) c.options.sequential_threshold = 2;
  if (how == NotCached::kFileSizeLimit) c.options.file_size_limit = 20 * kBlock;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  // A working set that fills the cache and is hit often, read out of order
  // (no stream): smq then refuses a block seen once.
  std::string hot = Pattern(16 * kBlock, 40);
  auto hfd = MakeFile("hot", hot);
  auto h = e->OpenFile("hot", Stat(hfd));
  ASSERT_TRUE(h.ok());
  for (int pass = 0; pass < 8; ++pass) {
    for (uint64_t i = 0; i < 16; ++i) {
      const uint64_t off = (i * 7 % 16) * kBlock;
      ASSERT_EQ(ReadAll(*e, *h.value(), hfd, off, 4096), hot.substr(off, 4096));
    }
  }
  ASSERT_EQ(e->stats().blocks_cached, 16u);

  std::string data = Pattern(blocks * kBlock, 41);
  auto fd = MakeFile("scan", data);
  auto f = e->OpenFile("scan", Stat(fd));
  ASSERT_TRUE(f.ok());
  const EngineStats before = e->stats();
  const uint64_t source_before = backing_.bytes;
  backing_.delay_ms = 2;  // readahead and reader overlap
  for (uint64_t off = 0; off < data.size(); off += 2 * kBlock) {
    ASSERT_EQ(ReadAll(*e, *f.value(), fd, off, 2 * kBlock), data.substr(off, 2 * kBlock));
  }
  // The reader may be served from a readahead fetch before the thread that
  // read it installs it: wait until each block was installed, refused or
  // bypassed.
  auto settled = [&](const EngineStats& s) {
    return s.promotions + s.not_admitted + s.bypassed >=
           before.promotions + before.not_admitted + before.bypassed + blocks;
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!settled(e->stats()) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const EngineStats after = e->stats();
  EXPECT_EQ(backing_.bytes - source_before, data.size());
  EXPECT_EQ(after.bytes_from_source - before.bytes_from_source, data.size());
  EXPECT_GE(after.readahead_blocks - before.readahead_blocks, blocks / 2);
  // Each block offered to the policy once (or, bypassed, not at all).
  switch (how) {
    case NotCached::kLruFull:
      EXPECT_EQ(after.promotions - before.promotions, blocks);
      EXPECT_EQ(after.not_admitted, before.not_admitted);
      break;
    case NotCached::kSmqRefuses:
      EXPECT_EQ(after.not_admitted - before.not_admitted, blocks);
      EXPECT_EQ(after.promotions, before.promotions);
      break;
    case NotCached::kSequentialBypass:
    case NotCached::kFileSizeLimit:
      EXPECT_EQ(after.bypassed - before.bypassed, blocks);
      EXPECT_EQ(after.not_admitted, before.not_admitted);
      EXPECT_EQ(after.promotions, before.promotions);
      break;
  }
  // Every block kept for the reader was taken by it.
  EXPECT_EQ(after.readahead_dropped, 0u);
  EXPECT_EQ(after.readahead_kept, 0u);
  // The working set is still cached (hits only), except where lru made room.
  const uint64_t source_mid = backing_.bytes;
  for (uint64_t i = 0; i < 16; ++i) {
    ASSERT_EQ(ReadAll(*e, *h.value(), hfd, i * 7 % 16 * kBlock, 4096),
              hot.substr(i * 7 % 16 * kBlock, 4096));
  }
  if (how != NotCached::kLruFull) {
    EXPECT_EQ(backing_.bytes, source_mid);
  }
}

INSTANTIATE_TEST_SUITE_P(Policies, ReadaheadOnceTest,
                         ::testing::Values(NotCached::kLruFull, NotCached::kSmqRefuses,
                                           NotCached::kSequentialBypass, NotCached::kFileSizeLimit),
                         [](const ::testing::TestParamInfo<NotCached>& info) {
                           switch (info.param) {
                             case NotCached::kLruFull:
                               return std::string("LruFull");
                             case NotCached::kSmqRefuses:
                               return std::string("SmqRefuses");
                             case NotCached::kSequentialBypass:
                               return std::string("SequentialBypass");
                             case NotCached::kFileSizeLimit:
                               return std::string("FileSizeLimit");
                           }
                           return std::string();
                         });

// Polls until `n` blocks read ahead are kept in memory for their reader.
bool WaitKept(Engine& e, uint64_t n) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (e.stats().readahead_kept < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

// Whether the stream whose blocks are read ahead and kept is cached (the
// kept copies are then the cached blocks' bytes) or bypasses the cache.
class ReadaheadKeptTest : public EngineTest, public ::testing::WithParamInterface<bool> {
 protected:
  void Stream(EngineConfig& c) {
    c.options.readahead = 8 * kBlock;
    // Every stream bypasses (read ahead, not cached), or none does.
    c.options.sequential_threshold = GetParam() ? uint64_t{1} << 30 : 1;
  }
};
INSTANTIATE_TEST_SUITE_P(Streams, ReadaheadKeptTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "Cached" : "Bypassed"; });

// Blocks 2..9 of a stream read ahead and kept, then the file changes through
// the mount (a write through, a truncate and regrowth) or outside: the
// reader gets the new bytes, never the kept old ones.
TEST_P(ReadaheadKeptTest, KeptDataIsNotServedAfterAChange) {
  EngineConfig c = Config(64 * kBlock);
  Stream(c);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  enum Change { kWriteThrough, kTruncateAndGrow, kOutside };
  for (Change change : {kWriteThrough, kTruncateAndGrow, kOutside}) {
    SCOPED_TRACE(change);
    const std::string name = "f" + std::to_string(change);
    std::string data = Pattern(12 * kBlock, 50 + change);
    auto fd = MakeFile(name, data);
    auto f = e->OpenFile(name, Stat(fd));
    ASSERT_TRUE(f.ok());
    const uint64_t kept_before = e->stats().readahead_kept;
    ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, 2 * kBlock), data.substr(0, 2 * kBlock));
    ASSERT_TRUE(WaitKept(*e, kept_before + 8));
    const std::string path = source_ + "/" + name;
    int wfd = open(path.c_str(), O_WRONLY);
    ASSERT_GE(wfd, 0);
    if (change == kWriteThrough) {
      // As the FUSE layer does: SOURCE first, then the cache.
      std::string w = Pattern(5000, 60);
      const uint64_t at = 3 * kBlock + 100;
      ASSERT_TRUE(e->BeforeWriteThrough(*f.value(), at, w.size()).ok());
      ASSERT_EQ(pwrite(wfd, w.data(), w.size(), at), static_cast<ssize_t>(w.size()));
      ASSERT_TRUE(e->WriteThrough(*f.value(), fd, at, w.data(), w.size(), Stat(fd)).ok());
      data.replace(at, w.size(), w);
    } else if (change == kTruncateAndGrow) {
      // Cut at block 6 and grown again with other bytes: the kept blocks
      // 6..9 held the old ones.
      ASSERT_EQ(ftruncate(wfd, 6 * kBlock), 0);
      ASSERT_TRUE(e->AfterTruncate(*f.value(), Stat(fd)).ok());
      std::string w = Pattern(6 * kBlock, 61);
      ASSERT_EQ(pwrite(wfd, w.data(), w.size(), 6 * kBlock), static_cast<ssize_t>(w.size()));
      ASSERT_TRUE(e->AfterWrite(*f.value(), 6 * kBlock, w.size(), Stat(fd)).ok());
      data.replace(6 * kBlock, w.size(), w);
    } else {
      // Changed in SOURCE directly: same size, new bytes in block 5 and mtime.
      std::string w = Pattern(kBlock, 62);
      ASSERT_EQ(pwrite(wfd, w.data(), w.size(), 5 * kBlock), static_cast<ssize_t>(w.size()));
      struct timespec ts[2] = {{0, UTIME_NOW}, {12345, 0}};
      ASSERT_EQ(futimens(wfd, ts), 0);
      auto changed = e->Revalidate(*f.value(), Stat(fd));
      ASSERT_TRUE(changed.ok());
      EXPECT_TRUE(changed.value());
      data.replace(5 * kBlock, w.size(), w);
    }
    close(wfd);
    for (uint64_t off = 2 * kBlock; off < data.size(); off += 2 * kBlock) {
      ASSERT_EQ(ReadAll(*e, *f.value(), fd, off, 2 * kBlock), data.substr(off, 2 * kBlock))
          << "at block " << off / kBlock;
    }
    ASSERT_TRUE(e->CloseFile(*f.value()).ok());
  }
  EXPECT_GT(e->stats().readahead_dropped, 0u);
  EXPECT_EQ(e->stats().readahead_kept, 0u);
}

// A BlockStore over another, for tests that watch or stop its calls: every
// call goes to `inner` after the hook of its kind.
class ForwardingStore : public BlockStore {
 public:
  explicit ForwardingStore(std::unique_ptr<BlockStore> inner)
      : BlockStore(inner->block_size(), inner->slot_count()), inner_(std::move(inner)) {}
  const char* kind() const override { return inner_->kind(); }

 protected:
  virtual void BeforeRead(StoreRead /*how*/) {}
  virtual void BeforeWrite(StoreWrite /*how*/) {}

 private:
  Status DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) final {
    BeforeRead(how);
    return inner_->Read(pos / block_size(), static_cast<uint32_t>(pos % block_size()), len, buf,
                        how);
  }
  Status DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) final {
    BeforeWrite(how);
    return inner_->Write(pos / block_size(), static_cast<uint32_t>(pos % block_size()), len, buf,
                         how);
  }
  Status DoPersist() final { return inner_->Persist(); }
  Status DoDiscard(uint64_t pos, uint64_t /*len*/) final {
    return inner_->Discard(pos / block_size());
  }

  const std::unique_ptr<BlockStore> inner_;
};

// Counts the reads and writes made with each StoreRead and StoreWrite hint.
class HintCountingStore final : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> direct_reads{0};
  std::atomic<uint64_t> keep_writes{0};
  std::atomic<uint64_t> stream_writes{0};

 private:
  void BeforeRead(StoreRead how) override {
    reads++;
    if (how == StoreRead::kDirect) direct_reads++;
  }
  void BeforeWrite(StoreWrite how) override {
    (how == StoreWrite::kStream ? stream_writes : keep_writes)++;
  }
};

// Wraps the engine's store in a HintCountingStore (set in *store).
void CountHints(EngineConfig* c, HintCountingStore** store) {
  c->wrap_store = [store](std::unique_ptr<BlockStore> inner) -> std::unique_ptr<BlockStore> {
    auto counting = std::make_unique<HintCountingStore>(std::move(inner));
    *store = counting.get();
    return counting;
  };
}

// Blocks read ahead and cached are written to the store as a stream (around
// its page cache) and served to their reader from memory, not read back
// from the store; a random miss is written to be kept.
TEST_F(EngineTest, ReadaheadBlocksAreStreamedToTheStoreAndServedFromMemory) {
  EngineConfig c = Config(64 * kBlock);
  c.options.readahead = 8 * kBlock;
  HintCountingStore* store = nullptr;
  CountHints(&c, &store);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  ASSERT_NE(store, nullptr);
  std::string data = Pattern(12 * kBlock, 24);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, 2 * kBlock), data.substr(0, 2 * kBlock));
  ASSERT_TRUE(WaitKept(*e, 8));  // blocks 2..9, cached and kept
  e->WaitForInstalls();
  EXPECT_EQ(e->stats().blocks_cached, 10u);
  EXPECT_GE(store->stream_writes.load(), 8u) << "the readahead's installs";
  const uint64_t reads = store->reads.load();
  // To the end of the file: the stream's reads queue readahead of blocks 10
  // and 11 too, kept (or in flight) until read.
  for (uint64_t off = 2 * kBlock; off < 12 * kBlock; off += 2 * kBlock) {
    ASSERT_EQ(ReadAll(*e, *f.value(), fd, off, 2 * kBlock), data.substr(off, 2 * kBlock));
  }
  EXPECT_EQ(store->reads.load(), reads) << "served from the store, not from memory";
  EXPECT_EQ(e->stats().readahead_dropped, 0u);
  EXPECT_EQ(e->stats().readahead_kept, 0u) << "each let go once read to its end";
  // Read again: from the store now.
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 2 * kBlock, kBlock), data.substr(2 * kBlock, kBlock));
  EXPECT_GT(store->reads.load(), reads);
  ASSERT_TRUE(e->CloseFile(*f.value()).ok());
  // A 4 KiB random miss is kept in the store's page cache.
  auto g = e->OpenFile("g", Stat(MakeFile("g", data)));
  ASSERT_TRUE(g.ok());
  const uint64_t keep = store->keep_writes.load();
  ASSERT_EQ(ReadAll(*e, *g.value(), OpenSourceFile("g"), 7 * kBlock, 4096),
            data.substr(7 * kBlock, 4096));
  e->WaitForInstalls();
  EXPECT_EQ(store->keep_writes.load(), keep + 1);
}

// A short hit that does not continue the file's previous read (a random
// read) reads the store around its page cache; a read that continues the
// previous one, and a large one, read through it (the store's readahead
// serves a stream).
TEST_F(EngineTest, RandomHitsReadTheStoreDirectAndStreamsThroughItsPageCache) {
  EngineConfig c = Config(64 * kBlock);
  c.options.readahead = 0;
  HintCountingStore* store = nullptr;
  CountHints(&c, &store);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  ASSERT_NE(store, nullptr);
  const std::string data = Pattern(40 * kBlock, 29);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  CachedFile& file = *f.value();
  for (uint64_t b = 0; b < 40; ++b) {
    ASSERT_EQ(ReadAll(*e, file, fd, b * kBlock, kBlock), data.substr(b * kBlock, kBlock));
  }
  ASSERT_EQ(e->stats().blocks_cached, 40u);
  EXPECT_EQ(store->direct_reads.load(), 0u) << "misses read nothing from the store";
  // Random 4 KiB hits: direct. (A read less than 1 MiB behind the last one
  // would be a late request of its stream.)
  const uint64_t random[] = {3 * kBlock + 8192, 30 * kBlock, 12 * kBlock + 4096,
                             36 * kBlock + 61440};
  uint64_t reads = store->reads.load();
  for (uint64_t off : random) {
    ASSERT_EQ(ReadAll(*e, file, fd, off, 4096), data.substr(off, 4096));
  }
  EXPECT_EQ(store->reads.load(), reads + 4) << "all hits";
  EXPECT_EQ(store->direct_reads.load(), 4u);
  // The next 4 KiB continues the last one: through the page cache.
  ASSERT_EQ(ReadAll(*e, file, fd, 37 * kBlock, 4096), data.substr(37 * kBlock, 4096));
  EXPECT_EQ(store->reads.load(), reads + 5);
  EXPECT_EQ(store->direct_reads.load(), 4u);
  // 64 KiB somewhere else: through the page cache too.
  ASSERT_EQ(ReadAll(*e, file, fd, 1 * kBlock, kBlock), data.substr(kBlock, kBlock));
  EXPECT_EQ(store->reads.load(), reads + 6);
  EXPECT_EQ(store->direct_reads.load(), 4u);
}

// A random hit of dirty data (written through the mount, likely still in
// the store's page cache and maybe not written out) reads through the page
// cache: a direct read would first wait for the kernel to write it out.
TEST_F(EngineTest, RandomHitsOfDirtyDataReadThroughThePageCache) {
  EngineConfig c = WritebackConfig();
  c.options.cache_size = SizeOrPercent{false, 0, 64 * kBlock};
  HintCountingStore* store = nullptr;
  CountHints(&c, &store);
  OneFile one = OpenOneFile(c, 31, 40 * kBlock);
  ASSERT_NE(one.f, nullptr);
  ASSERT_NE(store, nullptr);
  Engine& e = *one.e;
  for (uint64_t b = 0; b < 40; ++b) {
    ASSERT_EQ(ReadAll(e, *one.f, one.fd, b * kBlock, kBlock), one.data.substr(b * kBlock, kBlock));
  }
  ASSERT_EQ(e.stats().blocks_cached, 40u);
  const std::string w = Pattern(4096, 32);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 30 * kBlock + 8192, w.data(), w.size(), false).ok());
  const uint64_t reads = store->reads.load();
  const uint64_t direct = store->direct_reads.load();
  ASSERT_EQ(ReadAll(e, *one.f, one.fd, 3 * kBlock, 4096), one.data.substr(3 * kBlock, 4096));
  EXPECT_EQ(store->direct_reads.load(), direct + 1) << "a clean random hit";
  ASSERT_EQ(ReadAll(e, *one.f, one.fd, 30 * kBlock + 8192, 4096), w);
  EXPECT_EQ(store->reads.load(), reads + 2);
  EXPECT_EQ(store->direct_reads.load(), direct + 1) << "the dirty hit read direct";
}

// Kept readahead blocks go once the stream has moved on, and at the last
// close, counted as dropped unread; each block is still read once.
TEST_F(EngineTest, ReadaheadKeptBlocksGoWhenTheStreamMovesOn) {
  EngineConfig c = Config(64 * kBlock);
  c.options.readahead = 8 * kBlock;
  c.options.sequential_threshold = 1;  // every stream bypasses: read ahead, not cached
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  const size_t blocks = 48;
  std::string data = Pattern(blocks * kBlock, 80);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, 2 * kBlock), data.substr(0, 2 * kBlock));
  ASSERT_TRUE(WaitKept(*e, 8));  // blocks 2..9
  EXPECT_EQ(e->stats().readahead_dropped, 0u);
  // A jump more than 1 MiB past them lets them go; then a new stream from
  // there, with its own readahead (blocks 42..47, to the end of the file).
  const uint64_t jump = 40 * kBlock;
  ASSERT_EQ(ReadAll(*e, *f.value(), fd, jump, kBlock), data.substr(jump, kBlock));
  EXPECT_EQ(e->stats().readahead_kept, 0u);
  EXPECT_EQ(e->stats().readahead_dropped, 8u);
  ASSERT_EQ(ReadAll(*e, *f.value(), fd, jump + kBlock, kBlock), data.substr(jump + kBlock, kBlock));
  ASSERT_TRUE(WaitKept(*e, 6));
  EXPECT_EQ(e->stats().readahead_kept, 6u);
  ASSERT_TRUE(e->CloseFile(*f.value()).ok());
  EXPECT_EQ(e->stats().readahead_kept, 0u);
  EXPECT_EQ(e->stats().readahead_dropped, 14u);
  // 2 + 8 + 1 + 1 + 6 blocks, each read once.
  EXPECT_EQ(backing_.bytes, uint64_t{18} * kBlock);
}

// mode=writeback: a cached write into a block being read ahead (the writer
// waits for the fetch, then lets its kept data go) or kept already.
TEST_P(ReadaheadKeptTest, KeptDataIsNotServedAfterACachedWrite) {
  EngineConfig c = WritebackConfig();
  Stream(c);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  for (bool wait_kept : {false, true}) {
    SCOPED_TRACE(wait_kept);
    const std::string name = wait_kept ? "kept" : "in-flight";
    std::string data = Pattern(12 * kBlock, 70 + wait_kept);
    auto fd = MakeFile(name, data);
    auto f = e->OpenFile(name, Stat(fd));
    ASSERT_TRUE(f.ok());
    backing_.delay_ms = wait_kept ? 0 : 50;  // the readahead is still reading at the write
    ASSERT_EQ(ReadAll(*e, *f.value(), fd, 0, 2 * kBlock), data.substr(0, 2 * kBlock));
    if (wait_kept) {
      ASSERT_TRUE(WaitKept(*e, 8));
    }
    std::string w = Pattern(3 * kBlock, 72);
    const uint64_t at = 3 * kBlock + 4096 + 100;
    ASSERT_TRUE(e->Write(*f.value(), fd, at, w.data(), w.size(), false).ok());
    data.replace(at, w.size(), w);
    for (uint64_t off = 2 * kBlock; off < data.size(); off += 2 * kBlock) {
      ASSERT_EQ(ReadAll(*e, *f.value(), fd, off, 2 * kBlock), data.substr(off, 2 * kBlock))
          << "at block " << off / kBlock;
    }
    backing_.delay_ms = 0;
  }
}

TEST_F(EngineTest, ReadErrorOfSourceIsReported) {
  auto e = OpenEngine(Config());
  auto fd = MakeFile("f", Pattern(kBlock, 13));
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  backing_.fail = true;
  std::string out(100, '\0');
  auto n = e->Read(*f.value(), fd, 0, 100, out.data());
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), EIO);
  EXPECT_EQ(e->stats().blocks_cached, 0u);
}

TEST_F(EngineTest, HungSourceReadFailsAfterTheTimeout) {
  OneFile h = OpenHungSource(17);
  ASSERT_NE(h.f, nullptr);
  auto& [e, data, fd, f] = h;
  std::string out(100, '\0');
  auto n = e->Read(*f, fd, 0, 100, out.data());
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), EIO);
  backing_.delay_ms = 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(700));  // the stuck read ends
  EXPECT_EQ(ReadAll(*e, *f, fd, 0, data.size()), data);
}

// Overwrites the start of SOURCE's file `path` with `w` in place and puts
// its mtime back: only the ctime tells (the kernel's AUTO_INVAL_DATA
// compares size and mtime).
void OverwriteKeepingSizeAndMtime(const std::string& path, const std::string& w) {
  struct stat before;
  ASSERT_EQ(stat(path.c_str(), &before), 0);
  int wfd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(wfd, 0);
  ASSERT_EQ(pwrite(wfd, w.data(), w.size(), 0), static_cast<ssize_t>(w.size()));
  const struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(futimens(wfd, times), 0);
  close(wfd);
}

// The kernel may keep its pages of a file at an open only while nothing
// changed the file's data since the previous open: not at the first open,
// not after an outside change (even one that keeps size and mtime), a
// truncate, or a read whose data was read before such a change.
TEST_F(EngineTest, KeepPagesAtOpenOnlyWhileNothingChanged) {
  OneFile one = OpenOneFile(Config(), 25, 2 * kBlock);
  ASSERT_NE(one.f, nullptr);
  Engine* e = one.e.get();
  const std::string& data = one.data;
  const SourceFdRef& fd = one.fd;
  CachedFile& file = *one.f;
  // An open told to drop, which then shows it finished (a request on its handle).
  auto drops = [&](const char* why) {
    EXPECT_FALSE(file.KeepPagesAtOpen()) << why;
    file.OpenSettled(true);
  };
  drops("first open");
  EXPECT_TRUE(file.KeepPagesAtOpen());
  EXPECT_EQ(ReadAll(*e, file, fd, 0, data.size()), data);
  EXPECT_TRUE(file.KeepPagesAtOpen()) << "reads change nothing";
  const std::string path = source_ + "/f";
  ASSERT_NO_FATAL_FAILURE(OverwriteKeepingSizeAndMtime(path, Pattern(4096, 26)));
  auto changed = e->Revalidate(file, Stat(fd));
  ASSERT_TRUE(changed.ok());
  EXPECT_TRUE(changed.value());
  drops("after an outside change");
  EXPECT_TRUE(file.KeepPagesAtOpen());
  // A read that began before a truncate and replied after an open that
  // came after the truncate: its page holds the old version.
  const uint64_t version = file.PagesVersion();
  ASSERT_EQ(truncate(path.c_str(), kBlock), 0);
  ASSERT_TRUE(e->AfterTruncate(file, Stat(fd)).ok());
  drops("an open after the truncate");
  file.ReadReplied(version);
  drops("the open after the late reply");
  file.ReadReplied(file.PagesVersion());
  EXPECT_TRUE(file.KeepPagesAtOpen()) << "a read of the current version";
  // Two opens after a change: the second may not keep the pages before the
  // first, told to drop them, has shown it did.
  ASSERT_EQ(truncate(path.c_str(), kBlock / 2), 0);
  ASSERT_TRUE(e->AfterTruncate(file, Stat(fd)).ok());
  EXPECT_FALSE(file.KeepPagesAtOpen()) << "the first open after the change";
  EXPECT_FALSE(file.KeepPagesAtOpen()) << "a second one before the first settled";
  file.OpenSettled(true);
  EXPECT_FALSE(file.KeepPagesAtOpen()) << "one still unsettled";
  file.OpenSettled(true);
  file.OpenSettled(true);
  EXPECT_TRUE(file.KeepPagesAtOpen()) << "all settled";
  // A handle that went without a request (its open reply failed) may not
  // have dropped anything.
  ASSERT_EQ(truncate(path.c_str(), kBlock / 4), 0);
  ASSERT_TRUE(e->AfterTruncate(file, Stat(fd)).ok());
  EXPECT_FALSE(file.KeepPagesAtOpen());
  file.OpenSettled(/*used=*/false);
  drops("after an open that went unused");
  EXPECT_TRUE(file.KeepPagesAtOpen());
}

// Many opens at once right after a change: none keeps the pages before one
// told to drop them has settled (until review, counting an open only after
// recording the version let a second open keep them: 3-22 rounds in 200000).
TEST_F(EngineTest, ConcurrentOpensAfterAChangeAllDrop) {
  OneFile one = OpenOneFile(Config(), 29);
  ASSERT_NE(one.f, nullptr);
  Engine* e = one.e.get();
  const SourceFdRef& fd = one.fd;
  CachedFile& file = *one.f;
  // Two openers meet at each round's start (after its change), open, meet
  // again, then settle their opens told to drop, and meet a third time.
  constexpr int kRounds = 200000;
  std::atomic<int> arrived{0};
  std::atomic<int> kept{0};
  auto meet = [&](int arrivals) {
    arrived++;
    while (arrived.load() < arrivals) {
    }
  };
  auto open_in_round = [&](int round) {
    meet(6 * round + 2);
    const bool keep = file.KeepPagesAtOpen();
    if (keep) kept++;
    meet(6 * round + 4);
    if (!keep) file.OpenSettled(true);
    meet(6 * round + 6);
  };
  std::thread other([&] {
    for (int round = 0; round < kRounds; ++round) open_in_round(round);
  });
  for (int round = 0; round < kRounds; ++round) {
    EXPECT_TRUE(e->AfterWrite(file, 0, 0, Stat(fd)).ok());  // moves the epoch
    open_in_round(round);
  }
  other.join();
  EXPECT_EQ(kept.load(), 0);
}

TEST_F(EngineTest, DirectReadServesAndCaches) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(2 * kBlock, 23);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  int answers = 0;
  std::string out(kBlock, '\0');  // the end of block 0, the start of block 1
  auto n = e->Read(*f.value(), fd, kBlock - 4096, out.size(), out.data(), [&] { answers++; });
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(n.value(), out.size());
  EXPECT_TRUE(out == data.substr(kBlock - 4096, out.size()));
  EXPECT_EQ(answers, 0);
  e->WaitForInstalls();
  EXPECT_EQ(e->stats().blocks_cached, 2u);
  EXPECT_EQ(backing_.reads, 1);
  EXPECT_TRUE(ReadAll(*e, *f.value(), fd, kBlock - 4096, out.size()) == out);
  EXPECT_EQ(backing_.reads, 1);
}

TEST_F(EngineTest, HungDirectReadIsAnsweredAtTheDeadline) {
  OneFile h = OpenHungSource(22);
  ASSERT_NE(h.f, nullptr);
  auto& [e, data, fd, f] = h;
  const auto start = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::steady_clock::now() - start; };
  std::atomic<int> answers{0};
  std::atomic<int64_t> answered_ms{-1};
  // A second reader of the block waits for the first one's fetch: it fails
  // when the fetch is given up, not when SOURCE answers.
  int waiter_code = 0;
  std::chrono::steady_clock::duration waiter_took{};
  std::thread waiter([&] {
    while (backing_.reads == 0 && since() < std::chrono::seconds(3)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::string out(100, '\0');
    auto n = e->Read(*f, fd, 0, 100, out.data());
    waiter_code = n.ok() ? 0 : n.status().code();
    waiter_took = since();
  });
  std::string out(100, '\0');
  auto n = e->Read(*f, fd, 0, 100, out.data(), [&] {
    answers++;
    answered_ms = std::chrono::duration_cast<std::chrono::milliseconds>(since()).count();
  });
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), EIO);
  // SOURCE was read on this thread (it returned only when SOURCE did); the
  // answer went out at the deadline.
  EXPECT_GE(since(), std::chrono::milliseconds(500));
  EXPECT_EQ(answers, 1);
  EXPECT_GE(answered_ms, 90);
  EXPECT_LT(answered_ms, 400);
  waiter.join();
  EXPECT_EQ(waiter_code, EIO);
  EXPECT_LT(waiter_took, std::chrono::milliseconds(450));
  backing_.delay_ms = 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // a stuck worker read ends
  EXPECT_EQ(ReadAll(*e, *f, fd, 0, data.size()), data);
}

TEST_F(EngineTest, RenameKeepsTheCacheUnlinkDropsIt) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(kBlock, 14);
  auto fd = MakeFile("a", data);
  auto f = e->OpenFile("a", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  f.value().reset();
  struct stat st_before = Stat(fd);
  std::filesystem::rename(source_ + "/a", source_ + "/b");
  ASSERT_TRUE(e->Rename("a", "b", false, st_before, Stat(fd)).ok());
  auto g = e->OpenFile("b", Stat(fd));
  ASSERT_TRUE(g.ok());
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *g.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, before);
  g.value().reset();
  std::filesystem::remove(source_ + "/b");
  ASSERT_TRUE(e->Unlink("b", true).ok());
  EXPECT_EQ(e->stats().blocks_cached, 0u);
}

TEST_F(EngineTest, DirectoryRenameMovesEveryPath) {
  std::filesystem::create_directories(source_ + "/d/sub");
  std::string data = Pattern(kBlock, 15);
  auto fd = MakeFile("d/sub/f", data);
  {
    auto e = OpenEngine(Config());
    auto f = e->OpenFile("d/sub/f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
    f.value().reset();
    struct stat dir_before;
    stat((source_ + "/d").c_str(), &dir_before);
    std::filesystem::rename(source_ + "/d", source_ + "/e");
    struct stat dir_after;
    stat((source_ + "/e").c_str(), &dir_after);
    ASSERT_TRUE(e->Rename("d", "e", true, dir_before, dir_after).ok());
  }
  auto e = OpenEngine(Config());
  auto f = e->OpenFile("e/sub/f", Stat(fd));
  ASSERT_TRUE(f.ok());
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, before);
}

TEST_F(EngineTest, OwnAttributeChangesKeepTheCache) {
  auto e = OpenEngine(Config());
  std::string data = Pattern(kBlock, 16);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  struct stat before = Stat(fd);
  ASSERT_EQ(chmod((source_ + "/f").c_str(), 0600), 0);
  ASSERT_TRUE(e->Adopt(*f.value(), before, Stat(fd)).ok());
  auto changed = e->Revalidate(*f.value(), Stat(fd));
  ASSERT_TRUE(changed.ok());
  EXPECT_FALSE(changed.value());
  int reads = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  EXPECT_EQ(backing_.reads, reads);
  // An attribute change on top of an outside change still drops the cache.
  std::ofstream(source_ + "/f", std::ios::binary | std::ios::app) << "more";
  before = Stat(fd);
  ASSERT_EQ(chmod((source_ + "/f").c_str(), 0644), 0);
  ASSERT_TRUE(e->Adopt(*f.value(), before, Stat(fd)).ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size() + 4), data + "more");
}

TEST_F(EngineTest, BadReopenIsRefusedInOneLine) {
  { ASSERT_NE(OpenEngine(Config()), nullptr); }
  EngineConfig other = Config();
  other.source = base_ + "/elsewhere";
  auto r = Engine::Open(other);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("belongs to SOURCE"), std::string::npos);
  EngineConfig bs = Config();
  bs.options.block_size = 2 * kBlock;
  r = Engine::Open(bs);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("block_size"), std::string::npos);
  EngineConfig size = Config(32 * kBlock);
  r = Engine::Open(size);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cache_size"), std::string::npos);
  // Omitting fixed options takes the superblock's.
  EngineConfig bare = Config();
  bare.options.block_size.reset();
  bare.options.cache_size.reset();
  auto ok = Engine::Open(bare);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok.value()->block_size(), kBlock);
  // A second open of the same directory while the first holds it.
  auto second = Engine::Open(Config());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), EBUSY);
  EXPECT_NE(second.status().message().find("in use"), std::string::npos);
  ok.value().reset();
  EngineConfig reformat = bs;
  reformat.reformat = true;
  auto fresh = Engine::Open(reformat);
  ASSERT_TRUE(fresh.ok()) << fresh.status().message();
  EXPECT_EQ(fresh.value()->block_size(), 2 * kBlock);
}

// --- write caching (mode=writeback) -------------------------------------------

std::string ReadSource(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A 4 KiB overwrite of a cached block moves it to a new slot, carrying its
// other valid sub-blocks over a run at a time; a clean sub-block that fails
// its CRC on the way is left behind (and read from SOURCE again), the rest of
// its run is still carried.
TEST_F(EngineTest, OverwriteCarriesValidSubBlocksButNotACorruptOne) {
  EngineConfig c = WritebackConfig();
  std::string data = Pattern(kBlock, 13);
  auto fd = MakeFile("f", data);
  CacheWholeFile(c, "f", fd, data);
  // Flip a byte of sub-block 5 in every slot of the store file.
  FlipStoreBytes(c, 5 * 4096 + 100);
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::string w = Pattern(4096, 14);
  ASSERT_TRUE(e->Write(*f.value(), fd, 2 * 4096, w.data(), w.size(), false).ok());
  EXPECT_EQ(e->stats().crc_errors, 1u);
  std::string expect = data;
  expect.replace(2 * 4096, w.size(), w);
  int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), expect);
  EXPECT_EQ(backing_.reads, before + 1);  // sub-block 5 only
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), expect);
}

// An engine whose metadata goes through a HookMeta (set in *hook).
EngineConfig HookedConfig(EngineConfig c, HookMeta** hook) {
  c.wrap_meta = [hook](std::unique_ptr<MetaStore> inner) -> std::unique_ptr<MetaStore> {
    auto h = std::make_unique<HookMeta>(std::move(inner));
    *hook = h.get();
    return h;
  };
  return c;
}

// An outside change seen by a getattr bumps the epoch before its drop takes
// the blocks. An open in between waits for the drop (its revalidation does
// not find the new fingerprint before the old blocks are gone), so it reads
// the new version; an open that records the pages version in between
// anyway (one whose revalidation has nothing to wait for) and a read through
// a handle opened before, served a block of the old version, do not leave
// that page kept: the drop's end moves the pages version (docs/cache-engine.md,
// "The kernel's pages"; both found by review).
TEST_F(EngineTest, AnOpenDuringTheDropOfAChangeSeesTheNewVersion) {
  HookMeta* hook = nullptr;
  auto e = OpenEngine(HookedConfig(Config(512 * kBlock), &hook));
  ASSERT_NE(hook, nullptr);
  const size_t blocks = 300;  // more than a drop looks up in the index: it scans
  std::string data = Pattern(blocks * kBlock, 27);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  CachedFile& file = *f.value();
  ASSERT_EQ(ReadAll(*e, file, fd, 0, data.size()), data);
  e->WaitForInstalls();
  EXPECT_FALSE(file.KeepPagesAtOpen());
  file.OpenSettled(true);
  ASSERT_TRUE(file.KeepPagesAtOpen());
  const std::string w = Pattern(4096, 28);
  ASSERT_NO_FATAL_FAILURE(OverwriteKeepingSizeAndMtime(source_ + "/f", w));
  hook->StopInScan(file.file_id());
  std::thread getattr([&] { EXPECT_TRUE(e->Revalidate(file, Stat(fd)).ok()); });
  ASSERT_TRUE(hook->scan_gate.WaitStopped());
  // An open's revalidation waits for the drop.
  std::atomic<bool> revalidated{false};
  std::thread opener([&] {
    EXPECT_TRUE(e->Revalidate(file, Stat(fd)).ok());
    revalidated = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_FALSE(revalidated.load()) << "an open went on while the old blocks were still cached";
  // The pages version recorded in the window, and a read served there.
  EXPECT_FALSE(file.KeepPagesAtOpen()) << "the epoch moved";
  file.OpenSettled(true);
  const uint64_t version = file.PagesVersion();
  EXPECT_EQ(ReadAll(*e, file, fd, 0, 4096), data.substr(0, 4096))
      << "the old version, from a block the drop has not taken yet (the window of this test)";
  file.ReadReplied(version);
  hook->scan_gate.Release();
  getattr.join();
  opener.join();
  EXPECT_TRUE(revalidated.load());
  EXPECT_FALSE(file.KeepPagesAtOpen()) << "the read may have left a page of the old version";
  file.OpenSettled(true);
  EXPECT_EQ(ReadAll(*e, file, fd, 0, 4096), w);
}

// A reader that finds a clean block in its old slot while an overwrite has
// committed the block's record at its new slot, but not yet moved the index,
// sees a record that no longer matches the slot it found. It must not take
// that record for a stale one and remove it: the write (acknowledged once
// Write returns) would be gone from the metadata, its dirty entry dangling,
// reads served from SOURCE. It waits for the writer instead.
TEST_F(EngineTest, ReadDuringAnOverwriteKeepsTheNewRecord) {
  HookMeta* hook = nullptr;
  OneFile one = OpenOneFile(HookedConfig(WritebackConfig(), &hook), 41);
  ASSERT_NE(one.f, nullptr);
  Engine* e = one.e.get();
  CachedFile& file = *one.f;
  const std::string& data = one.data;
  const SourceFdRef& fd = one.fd;
  EXPECT_EQ(ReadAll(*e, file, fd, 0, data.size()), data);  // cached, clean
  const uint64_t id = file.file_id();
  std::atomic<bool> removed{false};
  hook->Watch([&](const MetaBatch& b) {
    if (HookMeta::RemovesBlock(b, id, 0)) removed = true;
  });
  hook->StopAfter([&](const MetaBatch& b) { return HookMeta::PutsBlock(b, id, 0); });

  std::string w = Pattern(4096, 42);
  std::thread writer([&] { EXPECT_TRUE(e->Write(file, fd, 0, w.data(), w.size(), false).ok()); });
  ASSERT_TRUE(hook->gate.WaitStopped());
  // The writer's record is committed; its index move is not done.
  const uint64_t waits = e->stats().fetch_waits;
  std::string got(4096, '\0');
  std::thread reader([&] {
    auto n = e->Read(file, fd, 0, got.size(), got.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
  });
  // Either the reader waits for the writer (right) or it removes the record.
  for (int i = 0; i < 1000 && !removed && e->stats().fetch_waits == waits; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  hook->gate.Release();
  writer.join();
  reader.join();
  EXPECT_FALSE(removed) << "the reader removed the overwrite's record";
  EXPECT_TRUE(got == w) << "the reader did not see the overwrite";

  std::string expect = data;
  expect.replace(0, w.size(), w);
  EXPECT_TRUE(ReadAll(*e, file, fd, 0, data.size()) == expect);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect);
}

// A read of a file the engine then lets go of (another file took its name in
// SOURCE, or it was unlinked) must not cache what it fetched: its install
// comes after the drop that made room for the new file, under the same file
// id. Before, the new file's reads were served the old file's bytes (or an
// unlinked file left records behind).
class DetachedReadTest : public EngineTest {
 protected:
  // An engine over SOURCE/f (one block, Pattern(kBlock, seed)) with a read
  // of its block 0 started and hanging in SOURCE.
  void StartHungRead(uint32_t seed) {
    EngineConfig c = Config();
    c.backing = fb_;
    one_ = OpenOneFile(c, seed);
    ASSERT_NE(one_.f, nullptr);
    HangRead(0, &got_);
  }
  // Starts a read of one_.f from `off` into *out (its size) on reader_,
  // and waits until it hangs in SOURCE.
  void HangRead(uint64_t off, std::string* out) {
    fb_->Set(FaultBacking::Fault::kHang);
    reader_ = std::thread([this, off, out] {
      auto n = one_.e->Read(*one_.f, one_.fd, off, out->size(), out->data());
      EXPECT_TRUE(n.ok()) << n.status().message();
    });
    for (int i = 0; i < 1000 && fb_->hung() == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_EQ(fb_->hung(), 1);
  }
  // Lets the read go on; waits for it and its install. It must have read
  // the file it was reading.
  void FinishRead() {
    fb_->Set(FaultBacking::Fault::kNone);
    reader_.join();
    one_.e->WaitForInstalls();
    EXPECT_TRUE(got_ == one_.data.substr(0, got_.size()));
  }
  void TearDown() override {
    if (reader_.joinable()) FinishRead();
    one_ = OneFile{};  // the engine closes before its directory goes
    EngineTest::TearDown();
  }

  FaultBacking* const fb_ = FaultBacking::Leaked();
  OneFile one_;
  std::thread reader_;
  std::string got_ = std::string(4096, '\0');
};

TEST_F(DetachedReadTest, AReplacedFilesFetchIsNotCachedForItsSuccessor) {
  ASSERT_NO_FATAL_FAILURE(StartHungRead(43));
  // Another file takes the name: written aside and renamed over it.
  std::string b = Pattern(kBlock, 44);
  std::ofstream(source_ + "/f.new", std::ios::binary) << b;
  ASSERT_EQ(rename((source_ + "/f.new").c_str(), (source_ + "/f").c_str()), 0);
  auto fd_b = OpenSourceFile("f");
  auto new_file = one_.e->OpenFile("f", Stat(fd_b));
  ASSERT_TRUE(new_file.ok()) << new_file.status().message();
  ASSERT_NE(new_file.value().get(), one_.f.get());
  FinishRead();
  EXPECT_TRUE(ReadAll(*one_.e, *new_file.value(), fd_b, 0, b.size()) == b)
      << "the new file was served the old file's bytes";
}

// The same for a fetch that a read already under way starts only after the
// file was detached: a read of two blocks whose first hangs in SOURCE while
// another file takes the name (dropping the second block, cached before),
// then fetches the second block through its old handle. Its epoch is the
// bumped one; it must not be cached under the id the new file now has.
TEST_F(DetachedReadTest, AFetchStartedAfterTheDetachIsNotCachedForTheSuccessor) {
  EngineConfig c = Config();
  c.backing = fb_;
  one_ = OpenOneFile(c, 67, 2 * kBlock);
  ASSERT_NE(one_.f, nullptr);
  Engine& e = *one_.e;
  ASSERT_TRUE(ReadAll(e, *one_.f, one_.fd, kBlock, kBlock) == one_.data.substr(kBlock));
  std::string got(2 * kBlock, '\0');
  ASSERT_NO_FATAL_FAILURE(HangRead(0, &got));
  std::string b = Pattern(2 * kBlock, 68);
  std::ofstream(source_ + "/f.new", std::ios::binary) << b;
  ASSERT_EQ(rename((source_ + "/f.new").c_str(), (source_ + "/f").c_str()), 0);
  auto fd_b = OpenSourceFile("f");
  auto new_file = e.OpenFile("f", Stat(fd_b));
  ASSERT_TRUE(new_file.ok()) << new_file.status().message();
  ASSERT_NE(new_file.value().get(), one_.f.get());
  fb_->Set(FaultBacking::Fault::kNone);
  reader_.join();
  e.WaitForInstalls();
  EXPECT_TRUE(got == one_.data) << "the old handle did not read the old file";
  EXPECT_TRUE(ReadAll(e, *new_file.value(), fd_b, kBlock, kBlock) == b.substr(kBlock))
      << "the new file was served the old file's bytes";
}

// And for a write through the old handle that got hold of its block only
// after the detach (it waited behind a fetch of that block): it must not
// put a dirty block under the id the new file has (the writeback would
// write the old file's bytes into the new one); it goes to the old file.
TEST_F(DetachedReadTest, AWriteThatWaitedThroughTheDetachGoesToTheOldFile) {
  EngineConfig c = WritebackConfig();
  c.backing = fb_;
  Engine* e = nullptr;
  one_.e = OpenEngine(c);
  ASSERT_NE(one_.e, nullptr);
  e = one_.e.get();
  one_.data = Pattern(kBlock, 69);
  one_.fd = MakeFileRw("f", one_.data);
  auto old_file = e->OpenFile("f", Stat(one_.fd));
  ASSERT_TRUE(old_file.ok()) << old_file.status().message();
  one_.f = old_file.value();
  ASSERT_NO_FATAL_FAILURE(HangRead(0, &got_));
  const std::string w = Pattern(4096, 70);  // one whole sub-block: no read of SOURCE
  std::thread writer([&] {
    Status s = e->Write(*one_.f, one_.fd, 0, w.data(), w.size(), false);
    EXPECT_TRUE(s.ok()) << s.message();
  });
  // The writer waits for the fetch of its block (a pause: nothing to watch).
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::string b = Pattern(kBlock, 71);
  std::ofstream(source_ + "/f.new", std::ios::binary) << b;
  ASSERT_EQ(rename((source_ + "/f.new").c_str(), (source_ + "/f").c_str()), 0);
  auto fd_b = OpenSourceFile("f");
  auto new_file = e->OpenFile("f", Stat(fd_b));
  ASSERT_TRUE(new_file.ok()) << new_file.status().message();
  ASSERT_NE(new_file.value().get(), one_.f.get());
  FinishRead();
  writer.join();
  EXPECT_EQ(e->stats().blocks_dirty, 0u) << "a dirty block under the new file's id";
  EXPECT_TRUE(ReadAll(*e, *new_file.value(), fd_b, 0, b.size()) == b)
      << "the new file shows the old file's write";
  std::string old(4096, '\0');
  ASSERT_EQ(pread(one_.fd->get(), old.data(), old.size(), 0), 4096);
  EXPECT_TRUE(old == w) << "the old file does not have the write";
}

TEST_F(DetachedReadTest, AnUnlinkedFilesFetchIsNotCached) {
  ASSERT_NO_FATAL_FAILURE(StartHungRead(45));
  ASSERT_EQ(unlink((source_ + "/f").c_str()), 0);
  ASSERT_TRUE(one_.e->Unlink("f", /*last_link=*/true).ok());
  FinishRead();
  EXPECT_EQ(one_.e->stats().blocks_cached, 0u) << "an unlinked file's block was cached";
}

// The writeback marks a block clean by reading its record and putting it
// back changed. An unlink of the file in between drops the block (its record
// and dirty entry in one batch): the record must not come back, pointing at
// a slot the drop let go, for a file that is gone.
TEST_F(EngineTest, AnUnlinkWhileTheWritebackMarksABlockCleanKeepsItGone) {
  HookMeta* hook = nullptr;
  OneFile one = OpenOneFile(HookedConfig(WritebackConfig(), &hook), 57);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  std::string w = Pattern(4096, 58);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  const uint64_t id = one.f->file_id();
  // The writeback reads the record twice: for the data, then to mark it clean.
  hook->StopAfterGet(id, 0, /*skip=*/1);
  std::thread flusher([&] { (void)e.Flush(); });
  ASSERT_TRUE(hook->get_gate.WaitStopped());
  ASSERT_EQ(unlink((source_ + "/f").c_str()), 0);
  ASSERT_TRUE(e.Unlink("f", /*last_link=*/true).ok());
  hook->get_gate.Release();
  flusher.join();
  auto rec = hook->GetBlock(id, 0);
  ASSERT_TRUE(rec.ok()) << rec.status().message();
  EXPECT_FALSE(rec.value().has_value()) << "the unlinked file's block record came back";
  EXPECT_EQ(e.stats().blocks_cached, 0u);
  EXPECT_EQ(e.stats().blocks_dirty, 0u);
}

// An eviction decides on its victim under the engine's lock and commits the
// removal of the victim's record after. A write of the victim block in
// between finds it gone from the index and puts a new record (dirty, with
// the write's data): the eviction's removal, committed later, must not take
// that record with it. Before, it did: the acknowledged write was lost from
// the metadata (its dirty entry dangling, reads after a restart served
// SOURCE's bytes), which is how CrashTest lost a sub-block once in a while.
TEST_F(EngineTest, AnEvictionCommittedLateKeepsAWriteOfItsVictim) {
  HookMeta* hook = nullptr;
  EngineConfig c = Config(4 * kBlock);
  c.options.policy = "lru";  // admits every miss; the oldest block is the victim
  c.options.mode = CacheMode::kWriteback;
  c.options.writeback_delay = 3600;
  OneFile one = OpenOneFile(HookedConfig(c, &hook), 61, 5 * kBlock);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  CachedFile& file = *one.f;
  for (uint64_t b = 0; b < 4; ++b) {  // the cache full of clean blocks, block 0 oldest
    ASSERT_TRUE(ReadAll(e, file, one.fd, b * kBlock, kBlock) ==
                one.data.substr(b * kBlock, kBlock));
  }
  const uint64_t id = file.file_id();
  // A miss of block 4 evicts block 0, and stops before committing that.
  hook->StopBefore([&](const MetaBatch& b) { return HookMeta::RemovesBlock(b, id, 0); });
  std::string miss(kBlock, '\0');
  std::thread reader([&] {
    auto n = e.Read(file, one.fd, 4 * kBlock, kBlock, miss.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
  });
  ASSERT_TRUE(hook->before_gate.WaitStopped());
  const std::string w = Pattern(4096, 62);
  auto write = std::async(std::launch::async, [&] {
    Status s = e.Write(file, one.fd, 0, w.data(), w.size(), false);
    EXPECT_TRUE(s.ok()) << s.message();
  });
  // Either the write waits for the eviction (right), or it commits first and
  // the eviction's removal lands on its record.
  (void)write.wait_for(std::chrono::milliseconds(300));
  hook->before_gate.Release();
  reader.join();
  write.get();
  e.WaitForInstalls();
  EXPECT_TRUE(miss == one.data.substr(4 * kBlock, kBlock));

  auto rec = hook->GetBlock(id, 0);
  ASSERT_TRUE(rec.ok()) << rec.status().message();
  ASSERT_TRUE(rec.value().has_value()) << "the eviction removed the write's record";
  EXPECT_TRUE(rec.value()->IsDirty(0));
  std::string expect = one.data;
  expect.replace(0, w.size(), w);
  EXPECT_TRUE(ReadAll(e, file, one.fd, 0, kBlock) == expect.substr(0, kBlock));
  ASSERT_TRUE(e.Flush().ok());
  EXPECT_EQ(e.stats().blocks_dirty, 0u);
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect) << "the write did not reach SOURCE";
}

// The same for the segment collector, which drops a cleaned segment's clean
// blocks under the engine's lock and commits their removal after: a write
// of one of them in between must keep its record.
TEST_F(EngineTest, ACollectorDropCommittedLateKeepsAWriteOfItsBlock) {
  HookMeta* hook = nullptr;
  constexpr uint64_t kSlots = 64;  // 8 segments of 8 slots
  EngineConfig c = Config(kSlots * kBlock);
  c.options.policy = "lru";  // admits every miss: the cache fills up
  c.options.mode = CacheMode::kWriteback;
  c.options.writeback_delay = 3600;
  OneFile one = OpenOneFile(HookedConfig(c, &hook), 63, kSlots * kBlock);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  CachedFile& file = *one.f;
  for (uint64_t b = 0; b < kSlots; ++b) {  // every segment full of clean blocks
    ASSERT_TRUE(ReadAll(e, file, one.fd, b * kBlock, kBlock) ==
                one.data.substr(b * kBlock, kBlock));
  }
  ASSERT_EQ(e.stats().blocks_cached, kSlots);
  const uint64_t id = file.file_id();
  // The collector's drop of a segment's clean blocks (the only batch that
  // removes more than one) stops before its commit.
  std::mutex mu;
  std::vector<uint64_t> doomed;
  hook->StopBefore([&](const MetaBatch& b) {
    std::vector<uint64_t> removed;
    for (const auto& op : b.ops()) {
      const auto* del = std::get_if<MetaBatch::DeleteBlock>(&op);
      if (del != nullptr && del->file_id == id) removed.push_back(del->index);
    }
    if (removed.size() < 2) return false;
    std::lock_guard<std::mutex> lock(mu);
    doomed = removed;
    return true;
  });
  // A written block finds no wholly free segment: the collector wakes.
  auto g = MakeFileRw("g", Pattern(kBlock, 64));
  auto gf = e.OpenFile("g", Stat(g));
  ASSERT_TRUE(gf.ok()) << gf.status().message();
  const std::string first = Pattern(4096, 65);
  ASSERT_TRUE(e.Write(*gf.value(), g, 0, first.data(), first.size(), false).ok());
  ASSERT_TRUE(hook->before_gate.WaitStopped());
  uint64_t victim;
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_FALSE(doomed.empty());
    victim = doomed.front();
  }
  const std::string w = Pattern(4096, 66);
  auto write = std::async(std::launch::async, [&] {
    Status s = e.Write(file, one.fd, victim * kBlock, w.data(), w.size(), false);
    EXPECT_TRUE(s.ok()) << s.message();
  });
  (void)write.wait_for(std::chrono::milliseconds(300));
  hook->before_gate.Release();
  write.get();

  auto rec = hook->GetBlock(id, victim);
  ASSERT_TRUE(rec.ok()) << rec.status().message();
  ASSERT_TRUE(rec.value().has_value()) << "the collector removed the write's record";
  EXPECT_TRUE(rec.value()->IsDirty(0));
  std::string expect = one.data;
  expect.replace(victim * kBlock, w.size(), w);
  EXPECT_TRUE(ReadAll(e, file, one.fd, victim * kBlock, kBlock) ==
              expect.substr(victim * kBlock, kBlock));
  ASSERT_TRUE(e.Flush().ok());
  EXPECT_EQ(e.stats().blocks_dirty, 0u);
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect) << "the write did not reach SOURCE";
}

// The writeback flags a file changed outside while it had dirty data as in
// conflict by reading its record and putting it back with the flag. A rename
// committed in between (or a write that grew the recorded size) must not be
// undone by that stale copy: the record would name the old path.
TEST_F(EngineTest, AConflictFlagDoesNotUndoARenameCommittedMeanwhile) {
  HookMeta* hook = nullptr;
  OneFile one = OpenOneFile(HookedConfig(WritebackConfig(), &hook), 72);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  const std::string w = Pattern(4096, 73);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  std::ofstream(source_ + "/f", std::ios::binary | std::ios::app) << "changed outside";
  const uint64_t id = one.f->file_id();
  hook->StopBefore([id](const MetaBatch& b) {
    for (const auto& op : b.ops()) {
      const auto* put = std::get_if<MetaBatch::PutFile>(&op);
      if (put != nullptr && put->file.file_id == id &&
          (put->file.flags & FileRecord::kConflict) != 0) {
        return true;
      }
    }
    return false;
  });
  std::thread flusher([&] { (void)e.Flush(); });  // finds the conflict
  ASSERT_TRUE(hook->before_gate.WaitStopped());
  auto renamed = std::async(std::launch::async, [&] {
    const struct stat before = Stat(one.fd);
    EXPECT_EQ(rename((source_ + "/f").c_str(), (source_ + "/g").c_str()), 0);
    Status s = e.Rename("f", "g", /*is_dir=*/false, before, Stat(one.fd));
    EXPECT_TRUE(s.ok()) << s.message();
  });
  (void)renamed.wait_for(std::chrono::milliseconds(300));
  hook->before_gate.Release();
  flusher.join();
  renamed.get();
  auto rec = hook->GetFile(id);
  ASSERT_TRUE(rec.ok() && rec.value().has_value());
  EXPECT_EQ(rec.value()->path, "g") << "the conflict flag put the old path back";
  EXPECT_NE(rec.value()->flags & FileRecord::kConflict, 0u);
  EXPECT_EQ(e.stats().conflicts, 1u);
}

// A Backing whose next Stat, once armed, waits at `gate` (the writeback's
// first look at SOURCE's file in a round).
class StatGateBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override {
    gate.Pass();
    return RealBacking()->Stat(fd, st);
  }
  Gate gate;
};

// A writeback round that starts while nothing has the file open takes its
// size from the file's record. An append that lands meanwhile, in place in
// sub-blocks of a dirty block the round then copies, lies past that size:
// the round does not write it to SOURCE, so it must stay dirty. Before, the
// round saw no live file, took the size for unmoved, and cleared the
// append's dirty and valid bits: the mount read zeros there and SOURCE
// never got it.
TEST_F(EngineTest, AnAppendDuringARoundThatFoundTheFileClosedStaysDirty) {
  StatGateBacking backing;
  EngineConfig c = WritebackConfig();
  c.backing = &backing;
  OneFile one = OpenOneFile(c, 74, kBlock / 2);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  const std::string w = Pattern(4096, 75);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  ASSERT_TRUE(e.CloseFile(*one.f).ok());
  one.f.reset();  // nothing has it open
  // The round stops at its look at SOURCE (its size taken, no lock held).
  backing.gate.Arm();
  std::thread flusher([&] { EXPECT_TRUE(e.Flush().ok()); });
  ASSERT_TRUE(backing.gate.WaitStopped());
  auto f = e.OpenFile("f", Stat(one.fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  const std::string tail = Pattern(4096, 76);
  ASSERT_TRUE(e.Write(*f.value(), one.fd, kBlock / 2, tail.data(), tail.size(), false).ok());
  backing.gate.Release();
  flusher.join();

  std::string expect = one.data;
  expect.replace(0, w.size(), w);
  expect += tail;
  EXPECT_TRUE(ReadAll(e, *f.value(), one.fd, 0, expect.size()) == expect)
      << "the append does not read back";
  ASSERT_TRUE(e.Flush().ok());
  EXPECT_EQ(e.stats().blocks_dirty, 0u);
  EXPECT_EQ(e.stats().conflicts, 0u);
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect) << "the append did not reach SOURCE";
}

// A Backing whose next Sync, once armed, fails with EIO.
class FailSyncBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override {
    if (fail_next.exchange(false)) return Status::Error(EIO, "injected sync error");
    return RealBacking()->Sync(fd);
  }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }
  std::atomic<bool> fail_next{false};
};

// A writeback round that fails after it wrote to SOURCE (here its sync)
// leaves SOURCE changed by our own data, the file's record flagged as being
// written back. A look at the open file meanwhile must take that for our
// own change, as an open does, not for an outside one: a conflict would
// keep the data from ever being written back.
TEST_F(EngineTest, AFailedRoundIsNotTakenForAnOutsideChange) {
  FailSyncBacking backing;
  EngineConfig c = WritebackConfig();
  c.backing = &backing;
  OneFile one = OpenOneFile(c, 77);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  const std::string w = Pattern(4096, 78);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  backing.fail_next = true;
  EXPECT_FALSE(e.Flush().ok());
  std::string expect = one.data;
  expect.replace(0, w.size(), w);
  ASSERT_TRUE(ReadSource(source_ + "/f") == expect);  // written, not synced
  auto changed = e.Revalidate(*one.f, Stat(one.fd));
  ASSERT_TRUE(changed.ok()) << changed.status().message();
  EXPECT_EQ(e.stats().conflicts, 0u) << "our own unfinished round taken for an outside change";
  ASSERT_TRUE(e.Flush().ok());
  EXPECT_EQ(e.stats().blocks_dirty, 0u);
  EXPECT_TRUE(ReadAll(e, *one.f, one.fd, 0, expect.size()) == expect);
}

// A write that fails (here: the rest of its sub-block cannot be read from
// SOURCE) must not leave the file grown to the write's end: an append after
// it would land past a hole of zeros.
TEST_F(EngineTest, AFailedWriteDoesNotGrowTheFile) {
  FaultBacking* fb = FaultBacking::Leaked();
  EngineConfig c = WritebackConfig();
  c.backing = fb;
  OneFile one = OpenOneFile(c, 79, 5);
  ASSERT_NE(one.f, nullptr);
  fb->Set(FaultBacking::Fault::kVanished);
  EXPECT_FALSE(one.e->Write(*one.f, one.fd, 5, "XYZ", 3, false).ok());
  fb->Set(FaultBacking::Fault::kNone);
  struct stat st = Stat(one.fd);
  one.e->Overlay(*one.f, &st);
  EXPECT_EQ(st.st_size, 5) << "the failed write grew the file";
  ASSERT_TRUE(one.e->Write(*one.f, one.fd, 5, "XYZ", 3, false).ok());
  ASSERT_TRUE(one.e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), one.data + "XYZ");
}

// A round that failed after writing leaves the record flagged (kWritingBack):
// the next round takes a changed SOURCE for its own unfinished write and
// writes again. But if the name now holds another file (replaced outside, or
// renamed over while the round looked it up), that file is not ours: it must
// not get our data written into it, only be reported as a conflict.
// But a change made outside after the failed round is an outside change:
// a conflict, the clean blocks dropped, not absorbed as ours (the record's
// flag stays set until a round succeeds).
TEST_F(EngineTest, AnOutsideChangeAfterAFailedRoundIsAConflict) {
  FailSyncBacking backing;
  EngineConfig c = WritebackConfig();
  c.backing = &backing;
  OneFile one = OpenOneFile(c, 84, 2 * kBlock);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  ASSERT_TRUE(ReadAll(e, *one.f, one.fd, kBlock, kBlock) == one.data.substr(kBlock));
  const std::string w = Pattern(4096, 85);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  backing.fail_next = true;
  EXPECT_FALSE(e.Flush().ok());
  ASSERT_TRUE(e.Revalidate(*one.f, Stat(one.fd)).ok());
  EXPECT_EQ(e.stats().conflicts, 0u);  // our own partial round
  const std::string theirs(4096, 'T');
  {
    int fd = open((source_ + "/f").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, theirs.data(), theirs.size(), kBlock), 4096);
    close(fd);
  }
  ASSERT_TRUE(e.Revalidate(*one.f, Stat(one.fd)).ok());
  EXPECT_EQ(e.stats().conflicts, 1u) << "the outside change was taken for ours";
  std::string got(4096, '\0');
  auto n = e.Read(*one.f, one.fd, kBlock, got.size(), got.data());
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_TRUE(got == theirs) << "the old cached bytes were served";
}

class AnotherFileAtTheNameTest : public EngineTest, public ::testing::WithParamInterface<bool> {};

TEST_P(AnotherFileAtTheNameTest, ARoundNeverWritesIntoIt) {
  const bool reopened = GetParam();  // the name opened again after the change
  FailSyncBacking backing;
  EngineConfig c = WritebackConfig();
  c.backing = &backing;
  OneFile one = OpenOneFile(c, 80);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  const std::string w = Pattern(4096, 81);
  ASSERT_TRUE(e.Write(*one.f, one.fd, 0, w.data(), w.size(), false).ok());
  backing.fail_next = true;
  EXPECT_FALSE(e.Flush().ok());  // written, not synced: flagged
  const std::string other = "another file took the name";
  std::ofstream(source_ + "/f.new", std::ios::binary) << other;
  ASSERT_EQ(rename((source_ + "/f.new").c_str(), (source_ + "/f").c_str()), 0);
  if (reopened) {
    auto fd = OpenSourceFile("f");
    auto f = e.OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok()) << f.status().message();
  }
  (void)e.Flush();
  EXPECT_EQ(ReadSource(source_ + "/f"), other) << "our data went into another file";
  EXPECT_EQ(e.stats().conflicts, 1u);
}

INSTANTIATE_TEST_SUITE_P(Writeback, AnotherFileAtTheNameTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) {
                           return std::string(i.param ? "Reopened" : "NotReopened");
                         });

// keep-ours takes SOURCE's changed version as the base under our dirty data:
// clean blocks cached from before the change must go. Before, they were
// served on (under a fingerprint that matched SOURCE again), and a later
// partial write filled its sub-block from them: the writer then put the old
// bytes back over the change.
TEST_F(EngineTest, KeepOursDropsTheCleanBlocksOfTheOldVersion) {
  OneFile one = OpenOneFile(WritebackConfig(), 82, 2 * kBlock);
  ASSERT_NE(one.f, nullptr);
  Engine& e = *one.e;
  ASSERT_TRUE(ReadAll(e, *one.f, one.fd, 0, 2 * kBlock) == one.data);  // both cached, clean
  const std::string ours = Pattern(4096, 83);
  ASSERT_TRUE(e.Write(*one.f, one.fd, kBlock, ours.data(), ours.size(), false).ok());
  const std::string theirs(4096, 'T');
  {
    int fd = open((source_ + "/f").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(pwrite(fd, theirs.data(), theirs.size(), 0), 4096);
    close(fd);
  }
  (void)e.Flush();
  ASSERT_EQ(e.stats().conflicts, 1u);
  auto r = e.ResolveConflict("f", Engine::Resolution::kKeepOurs);
  ASSERT_TRUE(r.ok()) << r.status().message();
  std::string expect = one.data;
  expect.replace(0, theirs.size(), theirs);
  expect.replace(kBlock, ours.size(), ours);
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect);
  EXPECT_TRUE(ReadAll(e, *one.f, one.fd, 0, 2 * kBlock) == expect)
      << "the mount serves the version before the change";
  ASSERT_TRUE(e.Write(*one.f, one.fd, 1000, "u", 1, false).ok());
  ASSERT_TRUE(e.Flush().ok());
  expect[1000] = 'u';
  EXPECT_TRUE(ReadSource(source_ + "/f") == expect) << "their change was written over";
}

// An unlink through the mount holds the file's cached writes off from its
// flush to its drop (SourceChange). A write that waited meanwhile must see
// the file detached and go to SOURCE's file, which its handles read: into
// the cache it would be a dirty block of a file that is gone.
TEST_F(EngineTest, AWriteHeldOffByAnUnlinkGoesToTheOpenFile) {
  auto e = OpenEngine(WritebackConfig());
  ASSERT_NE(e, nullptr);
  auto fd = MakeFileRw("f", Pattern(kBlock, 59));
  const int raw = fd->get();
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  ASSERT_EQ(e->LivePath("f"), f.value());
  std::string w = Pattern(4096, 60);
  std::thread writer;
  {
    Engine::SourceChange change(e->LivePath("f"));
    writer = std::thread(
        [&] { EXPECT_TRUE(e->Write(*f.value(), fd, 0, w.data(), w.size(), false).ok()); });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // waiting for the change
    ASSERT_EQ(unlink((source_ + "/f").c_str()), 0);
    ASSERT_TRUE(e->Unlink("f", /*last_link=*/true).ok());
  }
  writer.join();
  EXPECT_EQ(e->stats().blocks_dirty, 0u) << "a dirty block of an unlinked file";
  std::string got(4096, '\0');
  ASSERT_EQ(pread(raw, got.data(), got.size(), 0), 4096);
  EXPECT_TRUE(got == w) << "the open file does not have the write";
  EXPECT_EQ(e->LivePath("f"), nullptr);
}

// A BlockStore over another whose next write, once armed, waits until the
// test releases it: a writer stopped with its block held, before its commit.
class GateStore final : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  Gate gate;  // passed by every write

 private:
  void BeforeWrite(StoreWrite /*how*/) override { gate.Pass(); }
};

// A drop of a block a writer holds (between its look at the index and its
// commit) wins over the write: the writer commits nothing and writes the
// block again, into the cache as it now is or, for a file that lost its
// name, to SOURCE's file. Before, its commit came after the drop's: a record
// put back at a slot the drop had let go (an in-place write), or a dirty
// record of a file already gone.
class DropWhileWritingTest : public EngineTest {
 protected:
  // A writeback engine whose store writes go through `gate_`, over SOURCE/f
  // (one block of Pattern(kBlock, seed)), opened for reading and writing.
  void OpenGated(uint32_t seed) {
    EngineConfig c = WritebackConfig();
    c.wrap_store = [this](std::unique_ptr<BlockStore> inner) -> std::unique_ptr<BlockStore> {
      auto g = std::make_unique<GateStore>(std::move(inner));
      gate_ = &g->gate;
      return g;
    };
    e_ = OpenEngine(c);
    ASSERT_NE(e_, nullptr);
    data_ = Pattern(kBlock, seed);
    fd_ = MakeFileRw("f", data_);
    auto f = e_->OpenFile("f", Stat(fd_));
    ASSERT_TRUE(f.ok()) << f.status().message();
    file_ = f.value();
  }
  void TearDown() override {
    file_.reset();
    e_.reset();
    EngineTest::TearDown();
  }

  std::unique_ptr<Engine> e_;
  Gate* gate_ = nullptr;
  std::string data_;
  SourceFdRef fd_;
  std::shared_ptr<CachedFile> file_;
};

TEST_F(DropWhileWritingTest, AnOutsideChangeDuringAnInPlaceWriteKeepsTheWrite) {
  ASSERT_NO_FATAL_FAILURE(OpenGated(46));
  Engine& e = *e_;
  EXPECT_TRUE(ReadAll(e, *file_, fd_, 0, 4096) == data_.substr(0, 4096));  // sub-block 0 only
  ASSERT_EQ(e.stats().blocks_cached, 1u);

  std::string w = Pattern(4096, 47);
  gate_->Arm();  // sub-block 2 is not valid: written in place, and stopped there
  std::thread writer(
      [&] { EXPECT_TRUE(e.Write(*file_, fd_, 2 * 4096, w.data(), w.size(), false).ok()); });
  ASSERT_TRUE(gate_->WaitStopped());
  // Changed outside meanwhile: another size, another mtime.
  std::string changed = Pattern(kBlock + 100, 48);
  std::ofstream(source_ + "/f", std::ios::binary | std::ios::trunc) << changed;
  auto fd2 = OpenSourceFile("f");
  auto revalidated = e.Revalidate(*file_, Stat(fd2));
  ASSERT_TRUE(revalidated.ok()) << revalidated.status().message();
  EXPECT_TRUE(revalidated.value());
  gate_->Release();
  writer.join();

  EXPECT_TRUE(ReadAll(e, *file_, fd2, 2 * 4096, 4096) == w) << "the write is not seen";
  ASSERT_TRUE(e.Persist().ok());  // frees the slots the drop let go
  EXPECT_TRUE(ReadAll(e, *file_, fd2, 2 * 4096, 4096) == w) << "the write is lost after a persist";
  EXPECT_EQ(e.stats().blocks_dirty, 1u);
}

TEST_F(DropWhileWritingTest, AnUnlinkDuringAWriteSendsTheWriteToTheOpenFile) {
  ASSERT_NO_FATAL_FAILURE(OpenGated(49));
  Engine& e = *e_;
  EXPECT_TRUE(ReadAll(e, *file_, fd_, 0, data_.size()) == data_);  // cached, clean

  std::string w = Pattern(4096, 50);
  gate_->Arm();  // the overwrite moves the block: stopped carrying the rest
  std::thread writer([&] { EXPECT_TRUE(e.Write(*file_, fd_, 0, w.data(), w.size(), false).ok()); });
  ASSERT_TRUE(gate_->WaitStopped());
  ASSERT_EQ(unlink((source_ + "/f").c_str()), 0);
  ASSERT_TRUE(e.Unlink("f", /*last_link=*/true).ok());
  gate_->Release();
  writer.join();

  EXPECT_EQ(e.stats().blocks_dirty, 0u) << "a dirty block of an unlinked file";
  EXPECT_EQ(e.stats().blocks_cached, 0u);
  std::string got(4096, '\0');
  ASSERT_EQ(pread(fd_->get(), got.data(), got.size(), 0), 4096);
  EXPECT_TRUE(got == w) << "the open file does not have the write";
}

// A Backing whose reads, once armed, read SOURCE and then wait for the
// test before they return: a fetch that has SOURCE's old bytes in hand when
// the file changes.
class ReadThenWaitBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    auto n = RealBacking()->Read(fd, off, len, buf);
    gate.Pass();
    return n;
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }
  Gate gate;  // passed by every read, after it read
};

// A file in conflict (changed outside while it had dirty data) that changes
// outside again: its clean blocks go, and so must a fetch that read SOURCE
// before this change; it must not cache the old bytes after the drop.
TEST_F(EngineTest, AFetchFromBeforeASecondOutsideChangeIsNotCached) {
  ReadThenWaitBacking backing;
  EngineConfig c = WritebackConfig();
  c.backing = &backing;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  std::string data = Pattern(2 * kBlock, 51);
  auto fd = MakeFile("f", data);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  CachedFile& file = *f.value();
  std::string w = Pattern(4096, 52);
  ASSERT_TRUE(e->Write(file, fd, kBlock, w.data(), w.size(), false).ok());  // dirty, block 1
  // Changed outside (in place, so the descriptor sees it): a conflict.
  auto change = [&](uint32_t seed) {
    std::string now = Pattern(2 * kBlock, seed);
    int raw = open((source_ + "/f").c_str(), O_WRONLY);
    EXPECT_EQ(pwrite(raw, now.data(), now.size(), 0), static_cast<ssize_t>(now.size()));
    struct timespec times[2] = {{0, UTIME_OMIT}, {static_cast<time_t>(seed) * 1000, 0}};
    EXPECT_EQ(futimens(raw, times), 0);  // another mtime for sure
    close(raw);
    return now;
  };
  change(53);
  ASSERT_TRUE(e->Revalidate(file, Stat(fd)).ok());
  ASSERT_EQ(e->stats().conflicts, 1u);

  backing.gate.Arm();
  std::string got(4096, '\0');
  std::thread reader([&] {
    auto n = e->Read(file, fd, 0, got.size(), got.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
  });
  ASSERT_TRUE(backing.gate.WaitStopped());  // block 0 read, not yet cached
  std::string second = change(54);
  ASSERT_TRUE(e->Revalidate(file, Stat(fd)).ok());
  backing.gate.Release();
  reader.join();
  e->WaitForInstalls();
  EXPECT_TRUE(ReadAll(*e, file, fd, 0, 4096) == second.substr(0, 4096))
      << "block 0 was cached from before the second change";
}

// Blocks whose file record is gone (whatever left them: a crash between two
// batches, an older version) must never be served to a new file: the id of
// a new file is past every id a block record names, not only past the
// file records'.
TEST_F(EngineTest, ANewFileNeverGetsTheIdOfOrphanedBlocks) {
  EngineConfig c = Config();
  std::string old_data = Pattern(kBlock, 55);
  auto fd = MakeFile("f", old_data);
  CacheWholeFile(c, "f", fd, old_data);
  {
    // The file's records go, its block record stays.
    auto meta = OpenRocksMetaStore(c.options.cache_dir + "/meta", false);
    ASSERT_TRUE(meta.ok()) << meta.status().message();
    auto id = meta.value()->LookupPath("f");
    ASSERT_TRUE(id.ok() && id.value());
    MetaBatch batch;
    batch.RemovePath("f");
    batch.RemoveFile(*id.value());
    ASSERT_TRUE(meta.value()->Commit(batch, true).ok());
  }
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  std::string new_data = Pattern(kBlock, 56);
  auto fd_g = MakeFile("g", new_data);
  auto g = e->OpenFile("g", Stat(fd_g));
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_TRUE(ReadAll(*e, *g.value(), fd_g, 0, new_data.size()) == new_data)
      << "the new file was served an orphaned block";
}

// store_io=direct: every store IO of the engine is O_DIRECT-aligned (misses,
// fills, unaligned writes carried into a block, flush, a warm restart), and
// the store really is open with O_DIRECT. Refused with a pmem store.
TEST_F(EngineTest, StoreIoDirectServesEveryPath) {
  std::string data = Pattern(3 * kBlock + 777, 40);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  c.options.store_direct_io = true;
  std::string expect = data;
  {
    auto e = OpenEngine(c);
    ASSERT_NE(e, nullptr);
    bool direct = false;
    for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) {
      std::error_code ec;
      if (std::filesystem::read_symlink(entry.path(), ec) != c.options.cache_dir + "/store")
        continue;
      direct = (fcntl(std::stoi(entry.path().filename()), F_GETFL) & O_DIRECT) != 0;
    }
    EXPECT_TRUE(direct) << "the store is not open with O_DIRECT";
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 10, 5000), data.substr(10, 5000));  // a miss
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);             // fills
    std::string w = Pattern(5000, 41);  // unaligned, into a cached block
    ASSERT_TRUE(e->Write(*f.value(), fd, kBlock + 100, w.data(), w.size(), false).ok());
    expect.replace(kBlock + 100, w.size(), w);
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect);
    ASSERT_TRUE(e->Flush().ok());
    EXPECT_EQ(ReadSource(source_ + "/f"), expect);
  }
  fd = OpenSourceFile("f");
  const int before = backing_.reads;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect);
  EXPECT_EQ(backing_.reads, before);  // warm after the restart
  EXPECT_EQ(e->stats().crc_errors, 0u);
}

TEST_F(EngineTest, StoreIoDirectIsRefusedWithPmem) {
  EngineConfig c = Config();
  c.options.store = StoreKind::kPmem;
  c.options.store_path = "/dev/shm/cachefs-engine-test-pmem-" + std::to_string(getpid());
  c.options.store_direct_io = true;
  auto e = Engine::Open(c);
  unlink(c.options.store_path->c_str());
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), EINVAL);
  EXPECT_NE(e.status().message().find("store_io=direct needs store=file"), std::string::npos)
      << e.status().message();
}

TEST_F(EngineTest, WritebackWritesLandInTheCacheAndReachSourceOnFlush) {
  std::string data = Pattern(3 * kBlock, 30);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  int reads_before = backing_.reads;
  // An aligned 4 KiB write into an uncached block reads nothing from SOURCE.
  std::string w1 = Pattern(4096, 31);
  ASSERT_TRUE(e->Write(*f.value(), fd, kBlock + 8192, w1.data(), w1.size(), false).ok());
  EXPECT_EQ(backing_.reads, reads_before);
  // An unaligned one reads just its two partial sub-blocks.
  std::string w2 = Pattern(5000, 32);
  ASSERT_TRUE(e->Write(*f.value(), fd, 100, w2.data(), w2.size(), false).ok());
  // Growing the file past SOURCE's end.
  std::string w3 = Pattern(7000, 33);
  ASSERT_TRUE(e->Write(*f.value(), fd, data.size() + 3000, w3.data(), w3.size(), false).ok());
  std::string expect = data;
  expect.replace(kBlock + 8192, w1.size(), w1);
  expect.replace(100, w2.size(), w2);
  expect.resize(data.size() + 3000, '\0');
  expect += w3;
  EXPECT_EQ(ReadSource(source_ + "/f"), data);  // nothing on SOURCE yet
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size() + 100), expect);
  struct stat st = Stat(fd);
  e->Overlay(*f.value(), &st);
  EXPECT_EQ(static_cast<size_t>(st.st_size), expect.size());
  EXPECT_GE(e->stats().blocks_dirty, 3u);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), expect);
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(e->stats().conflicts, 0u);
  // Written back: the file looks like SOURCE again, and stays cached.
  st = Stat(OpenSourceFile("f"));
  EXPECT_FALSE(e->Revalidate(*f.value(), st).value());
  int reads = backing_.reads;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, kBlock, 4 * 4096), expect.substr(kBlock, 4 * 4096));
  EXPECT_EQ(backing_.reads, reads);
}

TEST_F(EngineTest, WritebackDirtyDataSurvivesKillAndIsWrittenBackAfter) {
  std::string data = Pattern(2 * kBlock, 40);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  std::string w = Pattern(3 * 4096 + 11, 41);
  pid_t pid = fork();
  if (pid == 0) {
    auto e = Engine::Open(c);
    if (!e.ok()) _exit(2);
    auto f = e.value()->OpenFile("f", Stat(fd));
    if (!f.ok()) _exit(3);
    // Twice over the same bytes: the second write goes out of place.
    for (int i = 0; i < 2; ++i) {
      if (!e.value()->Write(*f.value(), fd, kBlock - 4096, w.data(), w.size(), false).ok()) {
        _exit(4);
      }
    }
    _exit(0);  // no destructor, no persist: as good as kill -9
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  std::string expect = data;
  expect.replace(kBlock - 4096, w.size(), w);
  EXPECT_EQ(ReadSource(source_ + "/f"), data);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_dirty, 2u);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), expect);
}

// A BlockStore over another that ends the process (as kill -9) at its
// `kill_at`-th write, counted from when the test arms it.
class KillingStore final : public ForwardingStore {
 public:
  KillingStore(std::unique_ptr<BlockStore> inner, std::atomic<int>* kill_at)
      : ForwardingStore(std::move(inner)), kill_at_(kill_at) {}

 private:
  void BeforeWrite(StoreWrite /*how*/) override {
    if (kill_at_->load() > 0 && kill_at_->fetch_sub(1) == 1) _exit(0);
  }

  std::atomic<int>* const kill_at_;
};

// A kill -9 in the middle of a write that grows the file, after its first
// block reached the cache: whatever size the next mount shows, no byte of
// that write lies past it. Otherwise a later write that grows the file
// with a gap shows those bytes in the gap instead of zeros (found by
// CrashTest: the tail of the cut write reappeared under a hole).
TEST_F(EngineTest, WritebackKillInGrowingWriteLeavesNothingPastTheSize) {
  std::string data = Pattern(kBlock, 42);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  std::atomic<int> kill_at{0};
  c.wrap_store = [&](std::unique_ptr<BlockStore> inner) -> std::unique_ptr<BlockStore> {
    return std::make_unique<KillingStore>(std::move(inner), &kill_at);
  };
  // An append of two whole blocks: one store write each (new slots).
  std::string w = Pattern(2 * kBlock, 43);
  pid_t pid = fork();
  if (pid == 0) {
    auto e = Engine::Open(c);
    if (!e.ok()) _exit(2);
    auto f = e.value()->OpenFile("f", Stat(fd));
    if (!f.ok()) _exit(3);
    kill_at = 2;  // dies before the second block's data, the first one committed
    (void)e.value()->Write(*f.value(), fd, kBlock, w.data(), w.size(), false);
    _exit(4);  // not killed: the test is wrong
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  c.wrap_store = nullptr;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok()) << f.status().message();
  struct stat st = Stat(fd);
  e->Overlay(*f.value(), &st);
  const auto shown = static_cast<uint64_t>(st.st_size);
  // Between the old size and the end of the first block of the write (the
  // part that reached the cache): either is a state the write may leave.
  ASSERT_GE(shown, kBlock);
  ASSERT_LE(shown, 2 * kBlock);
  // Where two byte strings first differ, in words (the data is too big to print).
  auto diff = [](const std::string& got, const std::string& want) -> std::string {
    if (got == want) return "";
    size_t at = 0;
    while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
    return "sizes " + std::to_string(got.size()) + " and " + std::to_string(want.size()) +
           ", first difference at byte " + std::to_string(at);
  };
  std::string expect = data + w.substr(0, shown - kBlock);
  EXPECT_EQ(diff(ReadAll(*e, *f.value(), fd, 0, shown), expect), "");
  // A write that grows the file with a gap: the gap reads as zeros.
  const uint64_t at = 3 * kBlock + 100;
  const std::string tail = "after the gap";
  ASSERT_TRUE(e->Write(*f.value(), fd, at, tail.data(), tail.size(), false).ok());
  expect.resize(at, '\0');
  expect += tail;
  EXPECT_EQ(diff(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect), "")
      << "the mount showed " << shown << " bytes after the kill";
  // And SOURCE gets the same once written back.
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(diff(ReadSource(source_ + "/f"), expect), "");
}

TEST_F(EngineTest, WritebackConflictIsNeverWrittenOver) {
  std::string data = Pattern(kBlock, 50);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::string w = Pattern(4096, 51);
  ASSERT_TRUE(e->Write(*f.value(), fd, 0, w.data(), w.size(), false).ok());
  // Someone changes SOURCE behind our back.
  std::string outside = Pattern(kBlock / 2, 52);
  std::ofstream(source_ + "/f", std::ios::binary | std::ios::trunc) << outside;
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), outside);
  EXPECT_EQ(e->stats().conflicts, 1u);
  EXPECT_EQ(e->stats().blocks_dirty, 1u);  // kept for cachefsctl conflicts
}

TEST_F(EngineTest, WritebackBlockWrittenDuringItsWritebackStaysDirty) {
  std::string data = Pattern(kBlock, 60);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::string w1 = Pattern(4096, 61);
  std::string w2 = Pattern(4096, 62);
  ASSERT_TRUE(e->Write(*f.value(), fd, 0, w1.data(), w1.size(), false).ok());
  backing_.write_delay_ms = 300;  // the writeback is slow: write again meanwhile
  std::thread flusher([&] { EXPECT_TRUE(e->Flush().ok()); });
  while (backing_.writes == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(e->Write(*f.value(), fd, 0, w2.data(), w2.size(), false).ok());
  flusher.join();
  backing_.write_delay_ms = 0;
  EXPECT_EQ(e->stats().blocks_dirty, 1u);  // the second write is not on SOURCE yet
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(ReadSource(source_ + "/f").substr(0, 4096), w2);
}

TEST_F(EngineTest, LeavingWritebackDrainsFirst) {
  std::string data = Pattern(kBlock, 80);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  std::string w = Pattern(4096, 81);
  {
    auto e = OpenEngine(c);
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE(e->Write(*f.value(), fd, 4096, w.data(), w.size(), false).ok());
  }
  std::string expect = data;
  expect.replace(4096, w.size(), w);
  EXPECT_EQ(ReadSource(source_ + "/f"), data);  // still dirty after the unmount
  c.options.mode = CacheMode::kWritethrough;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->mode(), CacheMode::kWritethrough);
  EXPECT_EQ(ReadSource(source_ + "/f"), expect);  // drained before the mount
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  e.reset();
  c.options.mode.reset();
  e = OpenEngine(c);
  EXPECT_EQ(e->mode(), CacheMode::kWritethrough);  // the new mode was recorded
}

TEST_F(EngineTest, LeavingWritebackWithAConflictIsRefused) {
  auto fd = MakeFile("f", Pattern(kBlock, 90));
  EngineConfig c = WritebackConfig();
  {
    auto e = OpenEngine(c);
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    std::string w = Pattern(4096, 91);
    ASSERT_TRUE(e->Write(*f.value(), fd, 0, w.data(), w.size(), false).ok());
  }
  std::string outside = Pattern(100, 92);
  std::ofstream(source_ + "/f", std::ios::binary | std::ios::trunc) << outside;
  c.options.mode = CacheMode::kWritethrough;
  auto e = Engine::Open(c);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("cannot leave mode=writeback"), std::string::npos)
      << e.status().message();
  EXPECT_EQ(ReadSource(source_ + "/f"), outside);  // never written over
}

TEST_F(EngineTest, WritethroughUpdatesTheCachedBlocks) {
  std::string data = Pattern(2 * kBlock, 100);
  auto fd = MakeFile("f", data);
  auto e = OpenEngine(Config());
  ASSERT_EQ(e->mode(), CacheMode::kWritethrough);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);
  int reads = backing_.reads;
  // As the FUSE layer does: SOURCE first, then the cache.
  std::string w = Pattern(10000, 101);
  int wfd = open((source_ + "/f").c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(wfd, w.data(), w.size(), kBlock - 5000), static_cast<ssize_t>(w.size()));
  close(wfd);
  ASSERT_TRUE(e->WriteThrough(*f.value(), fd, kBlock - 5000, w.data(), w.size(), Stat(fd)).ok());
  std::string expect = data;
  expect.replace(kBlock - 5000, w.size(), w);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect);
  EXPECT_EQ(backing_.reads, reads);  // both blocks updated in the cache, not dropped
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(e->stats().blocks_cached, 2u);
}

TEST_F(EngineTest, WritebackReadsDirtyDataInTheBlockHoldingSourcesEnd) {
  // Found by the crash test: the block holding SOURCE's end has sub-blocks
  // past it that no fetch can fill; reading it must still serve the dirty
  // sub-blocks, not SOURCE's old bytes.
  std::string data = Pattern(100000, 110);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  auto e = OpenEngine(c);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  const std::string a(100, 'A');
  const std::string b(100, 'B');
  ASSERT_TRUE(e->Write(*f.value(), fd, 70000, a.data(), a.size(), false).ok());
  ASSERT_TRUE(e->Write(*f.value(), fd, 130000, b.data(), b.size(), false).ok());
  std::string expect = data;
  expect.replace(70000, a.size(), a);
  expect.resize(130000, '\0');
  expect += b;
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, expect.size()), expect);
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 69000, 2000), expect.substr(69000, 2000));
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_EQ(ReadSource(source_ + "/f"), expect);
}

TEST_F(EngineTest, GroupCommitSharesPersists) {
  EngineConfig c = Config();
  c.options.mode = CacheMode::kWriteback;
  auto e = OpenEngine(c);
  auto fd = MakeFile("f", Pattern(kBlock, 70));
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::string w = Pattern(4096, 71 + t);
      for (int i = 0; i < 20; ++i) {
        if (e->Write(*f.value(), fd, static_cast<uint64_t>(t) * 4096, w.data(), w.size(), true)
                .ok()) {
          ok++;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok, 160);
  EXPECT_LT(e->stats().persists, 160u);  // concurrent syncs shared persists
  EXPECT_GT(e->stats().persists, 0u);
}

void ExpectTimed(const LatencySummary& l, uint64_t count, const char* what) {
  EXPECT_EQ(l.count, count) << what;
  if (count == 0) return;
  EXPECT_GT(l.p50_ns, 0u) << what;
  EXPECT_LE(l.p50_ns, l.p99_ns) << what;
  EXPECT_GE(l.sum_ns, l.count * 100) << what << ": every request takes some time";
}

// The persistent counters add up over mounts: saved at each persist and at
// clean shutdown, loaded at open; a kill loses what came after the last
// persist, nothing before it.
TEST_F(EngineTest, CountersPersistAcrossReopen) {
  std::string data = Pattern(4 * kBlock, 90);
  auto fd = MakeFile("f", data);
  EngineConfig c = WritebackConfig();
  c.options.commit_interval_ms = 3600 * 1000;  // persists only when the test says
  {
    auto e = OpenEngine(c);
    ASSERT_NE(e, nullptr);
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);  // one request, 4 misses
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, data.size()), data);  // one request, 4 hits
    const std::string w1 = Pattern(100, 91);
    ASSERT_TRUE(e->Write(*f.value(), fd, 10, w1.data(), w1.size(), false).ok());  // cached
    const std::string w2 = Pattern(4096, 92);
    ASSERT_TRUE(e->Write(*f.value(), fd, 4 * kBlock, w2.data(), w2.size(), false).ok());  // new
    EngineStats s = e->stats();
    EXPECT_EQ(s.read_misses, 4u);
    EXPECT_EQ(s.read_hits, 4u);
    EXPECT_EQ(s.bytes_from_source, 4u * kBlock);
    EXPECT_EQ(s.bytes_from_cache, 4u * kBlock);
    EXPECT_EQ(s.write_hits, 1u);
    EXPECT_EQ(s.write_misses, 1u);
    EXPECT_EQ(s.promotions, 4u);
    EXPECT_EQ(s.blocks_dirty, 2u);
    EXPECT_EQ(s.dirty_bytes, 2u * 4096);  // one sub-block each
    EXPECT_EQ(s.writeback_queue, 2u);
    EXPECT_EQ(s.writeback_in_flight, 0u);
    EXPECT_EQ(s.cache_used, 5u * kBlock);
    EXPECT_EQ(s.cache_size, 16u * kBlock);
    ExpectTimed(s.read_miss_latency, 1, "miss");
    ExpectTimed(s.read_hit_latency, 1, "hit");
    ExpectTimed(s.write_latency, 2, "write");
    EXPECT_EQ(s.totals, (PersistentCounters{4, 4, 1, 1, 4 * kBlock, 4 * kBlock, 0}))
        << "a new cache: the totals are this mount's";
    ASSERT_TRUE(e->Flush().ok());
    s = e->stats();
    EXPECT_EQ(s.bytes_written_back, 2u * 4096);
    EXPECT_EQ(s.blocks_dirty, 0u);
    EXPECT_EQ(s.dirty_bytes, 0u);
    EXPECT_EQ(s.writeback_queue, 0u);
    EXPECT_EQ(s.writeback_in_flight, 0u);
    EXPECT_EQ(s.writeback_retries, 0u);
  }  // clean shutdown
  PersistentCounters want{4, 4, 1, 1, 4 * kBlock, 4 * kBlock, 2 * 4096};
  const size_t size = data.size() + 4096;
  {
    auto e = OpenEngine(c);
    ASSERT_NE(e, nullptr);
    EngineStats s = e->stats();
    EXPECT_EQ(s.read_hits + s.read_misses + s.write_hits + s.bytes_from_cache, 0u) << "since mount";
    ExpectTimed(s.read_hit_latency, 0, "hit");
    EXPECT_EQ(s.totals, want);
    auto f = e->OpenFile("f", Stat(fd));
    ASSERT_TRUE(f.ok());
    EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, size).size(), size);  // 5 hits
    want.read_hits += 5;
    want.bytes_from_cache += size;
    EXPECT_EQ(e->stats().totals, want);
  }
  pid_t pid = fork();
  if (pid == 0) {
    auto e = Engine::Open(c);
    if (!e.ok()) _exit(2);
    auto f = e.value()->OpenFile("f", Stat(fd));
    if (!f.ok()) _exit(3);
    std::string out(size, '\0');
    if (!e.value()->Read(*f.value(), fd, 0, size, out.data()).ok()) _exit(4);
    if (!e.value()->Persist().ok()) _exit(5);
    if (!e.value()->Read(*f.value(), fd, 0, size, out.data()).ok()) _exit(6);
    _exit(0);  // no destructor: as good as a crash
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  want.read_hits += 5;  // the read before the persist; the one after it is lost
  want.bytes_from_cache += size;
  EXPECT_EQ(e->stats().totals, want);
}

// A write through is timed from BeforeWriteThrough to the end of
// WriteThrough: SOURCE's write, which the FUSE layer makes in between, counts.
TEST_F(EngineTest, WriteThroughLatencyIncludesTheSourceWrite) {
  std::string data = Pattern(2 * kBlock, 95);
  auto fd = MakeFile("f", data);
  auto e = OpenEngine(Config());
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(ReadAll(*e, *f.value(), fd, 0, kBlock), data.substr(0, kBlock));  // block 0 cached
  const std::string w = Pattern(2 * 4096, 96);
  ASSERT_TRUE(e->BeforeWriteThrough(*f.value(), kBlock - 4096, w.size()).ok());
  int wfd = open((source_ + "/f").c_str(), O_WRONLY);
  ASSERT_EQ(pwrite(wfd, w.data(), w.size(), kBlock - 4096), static_cast<ssize_t>(w.size()));
  close(wfd);
  constexpr auto kSlowSource = std::chrono::milliseconds(20);
  std::this_thread::sleep_for(kSlowSource);  // a slow SOURCE's write
  ASSERT_TRUE(e->WriteThrough(*f.value(), fd, kBlock - 4096, w.data(), w.size(), Stat(fd)).ok());
  EngineStats s = e->stats();
  ExpectTimed(s.write_latency, 1, "write through");
  EXPECT_GE(s.write_latency.p50_ns, 20000000u * 63 / 64) << "within the histogram's precision";
  EXPECT_EQ(s.write_hits, 1u);    // block 0 was cached
  EXPECT_EQ(s.write_misses, 1u);  // block 1 was not
  EXPECT_EQ(s.dirty_bytes, 0u);   // clean: SOURCE has it
  // A write through without its BeforeWriteThrough times itself alone.
  ASSERT_TRUE(e->WriteThrough(*f.value(), fd, 0, w.data(), 4096, Stat(fd)).ok());
  s = e->stats();
  EXPECT_EQ(s.write_latency.count, 2u);
  EXPECT_LT(s.write_latency.sum_ns, 2 * 20000000u) << "the second is not 20 ms";
}

// While the writer works, the blocks it took are in flight, the rest wait.
TEST_F(EngineTest, WritebackQueueAndInFlight) {
  auto fd = MakeFile("f", Pattern(4 * kBlock, 97));
  auto e = OpenEngine(WritebackConfig());
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  const std::string w = Pattern(4096, 98);
  for (uint64_t b = 0; b < 4; ++b) {
    ASSERT_TRUE(e->Write(*f.value(), fd, b * kBlock, w.data(), w.size(), false).ok());
  }
  EngineStats s = e->stats();
  EXPECT_EQ(s.write_misses, 4u);
  EXPECT_EQ(s.blocks_dirty, 4u);
  EXPECT_EQ(s.writeback_queue, 4u);
  EXPECT_EQ(s.writeback_in_flight, 0u);
  EXPECT_EQ(s.dirty_bytes, 4u * 4096);
  backing_.write_delay_ms = 50;  // a slow SOURCE: each block's write takes a while
  std::atomic<bool> flushed{false};
  std::thread flusher([&] { flushed = e->Flush().ok(); });
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    s = e->stats();
    if (s.writeback_in_flight > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_GE(s.writeback_in_flight, 1u);
  EXPECT_LT(s.writeback_queue, 4u);
  EXPECT_EQ(s.writeback_queue + s.writeback_in_flight, 4u) << "nothing is clean before the sync";
  flusher.join();
  EXPECT_TRUE(flushed);
  s = e->stats();
  EXPECT_EQ(s.writeback_in_flight, 0u);
  EXPECT_EQ(s.writeback_queue, 0u);
  EXPECT_EQ(s.dirty_bytes, 0u);
  EXPECT_EQ(s.bytes_written_back, 4u * 4096);
}

// A writer round that fails is counted, and so is each round that tries again.
TEST_F(EngineTest, WritebackRetriesAreCounted) {
  auto fd = MakeFile("f", Pattern(kBlock, 99));
  auto e = OpenEngine(WritebackConfig());
  ASSERT_NE(e, nullptr);
  auto f = e->OpenFile("f", Stat(fd));
  ASSERT_TRUE(f.ok());
  const std::string w = Pattern(4096, 100);
  ASSERT_TRUE(e->Write(*f.value(), fd, 0, w.data(), w.size(), false).ok());
  // The writer cannot open the file by its path any more.
  std::filesystem::rename(source_ + "/f", source_ + "/gone");
  e->StartFlush();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (e->stats().writeback_retries == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EngineStats s = e->stats();
  EXPECT_GE(s.writeback_retries, 1u);
  EXPECT_GE(s.writeback_errors, s.writeback_retries);
  EXPECT_EQ(s.blocks_dirty, 1u) << "kept dirty";
  EXPECT_EQ(s.dirty_bytes, 4096u);
}

TEST_F(EngineTest, MemoryPerBlockIsBounded) {
  // RAM of the index, the policy and the slot bookkeeping per slot; it is
  // linear in the slot count, so 64 Ki slots of 4 KiB (a 256 MiB store) tell.
  EngineConfig c = Config();
  c.options.block_size = 4096;
  c.options.cache_size = SizeOrPercent{false, 0, (1ull << 16) * 4096};
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  double per_block = static_cast<double>(e->stats().index_memory) / (1u << 16);
  RecordProperty("bytes_per_block", std::to_string(per_block));
  EXPECT_LT(per_block, 64.0);
}

}  // namespace
}  // namespace cachefs
