// Image mode (SOURCE is one regular file): writeback in fsync epochs, and
// the cow layer with commit and discard (cache/engine_image.cc).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cache/engine.h"

namespace cachefs {
namespace {

constexpr uint64_t kBlock = uint64_t{64} << 10;
constexpr uint32_t kImageBlocks = 8;
constexpr size_t kImageSize = size_t{kImageBlocks} * kBlock;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Equal bytes; on a difference, where it starts (not megabytes of dump).
::testing::AssertionResult Same(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure()
         << "sizes " << got.size() << " and " << want.size() << ", first difference at byte " << i
         << " (block " << i / kBlock << ")";
}

// The slow store; records the image as it stands at the end of every
// writeback round (a round ends with the image's sync), and can fail writes.
class RecordingBacking final : public Backing {
 public:
  explicit RecordingBacking(std::string image) : image_(std::move(image)) {}
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    if (fail_writes) return Status::Error(EIO, "injected write failure");
    if (kill_at_write >= 0 && writes >= kill_at_write) _exit(0);  // as kill -9
    writes++;
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override {
    if (kill_at_sync == 1) _exit(0);
    Status s = RealBacking()->Sync(fd);
    if (kill_at_sync == 2) _exit(0);
    std::lock_guard<std::mutex> lock(mu);
    round_ends.push_back(ReadFile(image_));
    return s;
  }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }

  std::atomic<int> writes{0};
  std::atomic<bool> fail_writes{false};
  // The process dies (a kill -9) before write number kill_at_write (from
  // 0; -1: never), or before (1) or after (2) a sync.
  std::atomic<int> kill_at_write{-1};
  std::atomic<int> kill_at_sync{0};
  std::mutex mu;
  std::vector<std::string> round_ends;  // guarded by mu

 private:
  const std::string image_;
};

class ImageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-image-XXXXXX";
    base_ = mkdtemp(t);
    image_ = base_ + "/disk.img";
    original_ = Pattern(kImageSize, 1);
    std::ofstream(image_, std::ios::binary) << original_;
    backing_ = std::make_unique<RecordingBacking>(image_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  EngineConfig Config(CacheMode mode, uint64_t slots = 64) {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, slots * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.mode = mode;
    c.options.writeback_delay = 3600;  // only the test's Flush() writes back
    c.source = image_;
    c.source_is_file = true;
    c.backing = backing_.get();
    return c;
  }
  std::unique_ptr<Engine> OpenEngine(const EngineConfig& c) {
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }
  SourceFdRef OpenImage() {
    int fd = open(image_.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    return std::make_shared<SourceFd>(fd);
  }
  std::shared_ptr<CachedFile> Bind(Engine& e, const SourceFdRef& fd) {
    struct stat st;
    EXPECT_EQ(fstat(fd->get(), &st), 0);
    auto f = e.OpenFile("", st);
    EXPECT_TRUE(f.ok()) << f.status().message();
    return f.ok() ? f.value() : nullptr;
  }
  static std::string Pattern(size_t n, uint32_t seed) {
    std::string s(n, '\0');
    std::mt19937 rng(seed);
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  }
  static std::string ReadAll(Engine& e, CachedFile& f, const SourceFdRef& fd) {
    std::string out(kImageSize, '\0');
    auto n = e.Read(f, fd, 0, kImageSize, out.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
    e.WaitForInstalls();
    out.resize(n.ok() ? n.value() : 0);
    return out;
  }
  // Writes `len` bytes of pattern `seed` at `off` through the engine and
  // into `model`.
  static void Put(Engine& e, CachedFile& f, const SourceFdRef& fd, std::string& model, uint64_t off,
                  size_t len, uint32_t seed) {
    std::string w = Pattern(len, seed);
    Status s = e.Write(f, fd, off, w.data(), w.size(), false);
    ASSERT_TRUE(s.ok()) << s.message();
    model.replace(off, len, w);
  }

  std::string base_, image_, original_;
  std::unique_ptr<RecordingBacking> backing_;
};

// --- fsync epochs ---------------------------------------------------------------

TEST_F(ImageTest, WriterWritesTheStateOfTheLastFsyncOnly) {
  auto e = OpenEngine(Config(CacheMode::kWriteback));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  // Nothing synced yet: nothing may reach the image.
  Put(*e, *f, fd, model, 0, 2 * kBlock, 10);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), original_));
  EXPECT_EQ(backing_->writes, 0);
  ASSERT_TRUE(e->Sync(*f).ok());
  const std::string synced = model;
  // After the fsync: an overwrite of valid data (moves the block to a new
  // slot), a write into a not yet valid sub-block of a cached block (in
  // place), and a new block.
  Put(*e, *f, fd, model, 4096, 100, 11);
  Put(*e, *f, fd, model, 2 * kBlock + 8192, 4096, 12);
  Put(*e, *f, fd, model, 5 * kBlock, kBlock, 13);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), synced));
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));  // the mount shows the newest data
  EXPECT_GT(e->stats().blocks_dirty, 0u);
  ASSERT_TRUE(e->Sync(*f).ok());
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), model));
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
}

TEST_F(ImageTest, PartWrittenBlockAfterFsyncKeepsTheSyncedSubBlocks) {
  auto e = OpenEngine(Config(CacheMode::kWriteback));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  Put(*e, *f, fd, model, kBlock, 4096, 20);
  ASSERT_TRUE(e->Sync(*f).ok());
  const std::string synced = model;
  // In place (sub-blocks not valid before): must not reach the image yet.
  Put(*e, *f, fd, model, kBlock + uint64_t{3} * 4096, size_t{2} * 4096, 21);
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), synced));
  ASSERT_TRUE(e->Sync(*f).ok());
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), model));
}

// Random writes and fsyncs while another thread runs writeback rounds:
// the image at the end of every round is one of the states the writer
// synced, and the last round after the last fsync leaves the newest one.
TEST_F(ImageTest, EveryRoundLeavesASyncedState) {
  auto e = OpenEngine(Config(CacheMode::kWriteback, 48));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  std::set<std::string> synced = {original_};
  std::mutex synced_mu;
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0};
  std::thread writer([&] {
    while (!stop) {
      Status s = e->Flush();
      EXPECT_TRUE(s.ok()) << s.message();
      rounds++;
    }
  });
  std::mt19937 rng(7);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  int fsyncs = 0;
  for (int step = 0; step < 600 && std::chrono::steady_clock::now() < deadline; ++step) {
    const uint64_t off = rng() % (kImageSize - 1);
    const size_t len = 1 + rng() % std::min<uint64_t>(uint64_t{3} * 4096, kImageSize - off);
    Put(*e, *f, fd, model, off, len, 1000 + static_cast<uint32_t>(step));
    if (rng() % 5 == 0) {
      // Recorded before the fsync returns: a round may end with it at once.
      {
        std::lock_guard<std::mutex> lock(synced_mu);
        synced.insert(model);
      }
      ASSERT_TRUE(e->Sync(*f).ok());
      fsyncs++;
    }
  }
  stop = true;
  writer.join();
  EXPECT_GT(fsyncs, 20);
  EXPECT_GT(rounds, 1);
  std::vector<std::string> ends;
  {
    std::lock_guard<std::mutex> lock(backing_->mu);
    ends = backing_->round_ends;
  }
  EXPECT_GT(ends.size(), 5u);
  for (size_t i = 0; i < ends.size(); ++i) {
    EXPECT_TRUE(synced.count(ends[i]) == 1) << "round " << i << " left an image never synced";
  }
  // The last fsync, then one round: exactly its state.
  {
    std::lock_guard<std::mutex> lock(synced_mu);
    synced.insert(model);
  }
  ASSERT_TRUE(e->Sync(*f).ok());
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), model));
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
}

// A kill between rounds: the image holds a synced state; the next mount
// takes everything dirty as one epoch and writes it all.
TEST_F(ImageTest, KillBetweenRoundsThenRemountWritesEverything) {
  const EngineConfig c = Config(CacheMode::kWriteback);
  std::string model = original_;
  std::string synced;
  {
    // The same writes, replayed in the parent for the expected states.
    std::string m = original_;
    auto put = [&](uint64_t off, size_t len, uint32_t seed) {
      m.replace(off, len, Pattern(len, seed));
    };
    put(100, 3 * kBlock, 30);
    put(kBlock + 5, 4096, 31);
    synced = m;
    put(50, 9000, 32);
    put(6 * kBlock, kBlock, 33);
    model = m;
  }
  pid_t pid = fork();
  if (pid == 0) {
    auto e = Engine::Open(c);
    if (!e.ok()) _exit(2);
    auto fd = OpenImage();
    struct stat st;
    fstat(fd->get(), &st);
    auto f = e.value()->OpenFile("", st);
    if (!f.ok()) _exit(3);
    auto put = [&](uint64_t off, size_t len, uint32_t seed) {
      std::string w = Pattern(len, seed);
      if (!e.value()->Write(*f.value(), fd, off, w.data(), w.size(), false).ok()) _exit(4);
    };
    put(100, 3 * kBlock, 30);
    put(kBlock + 5, 4096, 31);
    if (!e.value()->Sync(*f.value()).ok()) _exit(5);
    put(50, 9000, 32);
    put(6 * kBlock, kBlock, 33);
    if (!e.value()->Flush().ok()) _exit(6);  // one round: the synced state
    _exit(0);                                // no destructor, no persist: as kill -9
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_TRUE(Same(ReadFile(image_), synced));
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  EXPECT_GT(e->stats().blocks_dirty, 0u);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
  ASSERT_TRUE(e->Flush().ok());
  EXPECT_TRUE(Same(ReadFile(image_), model));
}

// --- cow ------------------------------------------------------------------------

TEST_F(ImageTest, CowIsRefusedOverADirectory) {
  std::filesystem::create_directories(base_ + "/dir");
  EngineConfig c = Config(CacheMode::kCow);
  c.source = base_ + "/dir";
  c.source_is_file = false;
  auto e = Engine::Open(c);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("mode=cow needs an image SOURCE"), std::string::npos)
      << e.status().message();
  // Nor may a mounted directory cache switch to it.
  c.options.mode = CacheMode::kWritethrough;
  auto d = OpenEngine(c);
  ASSERT_NE(d, nullptr);
  Status s = d->SetMode(CacheMode::kCow);
  EXPECT_EQ(s.code(), EINVAL) << s.message();
  EXPECT_EQ(d->mode(), CacheMode::kWritethrough);
}

TEST_F(ImageTest, CowWritesStayInTheCacheAndReadsMerge) {
  const EngineConfig c = Config(CacheMode::kCow);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  Put(*e, *f, fd, model, 3000, 10000, 40);
  Put(*e, *f, fd, model, 4 * kBlock, kBlock, 41);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
  ASSERT_TRUE(e->Sync(*f).ok());
  ASSERT_TRUE(e->Flush().ok());  // the writer skips the layer
  e->StartFlush();
  EXPECT_TRUE(Same(ReadFile(image_), original_));
  EXPECT_EQ(backing_->writes, 0);
  EXPECT_EQ(e->stats().blocks_dirty, 2u);
  // Leaving cow with a layer is refused, mounted and at the next mount.
  Status s = e->SetMode(CacheMode::kWriteback);
  EXPECT_EQ(s.code(), EBUSY) << s.message();
  EXPECT_EQ(e->mode(), CacheMode::kCow);
  f.reset();
  e.reset();
  auto refused = Engine::Open(Config(CacheMode::kWriteback));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find(
                "holds an uncommitted cow layer; mount with mode=cow and run cachefsctl commit "
                "or discard"),
            std::string::npos)
      << refused.status().message();
  EXPECT_TRUE(Same(ReadFile(image_), original_));
  // Without a mode it stays cow, the layer intact.
  EngineConfig keep = c;
  keep.options.mode.reset();
  e = OpenEngine(keep);
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->mode(), CacheMode::kCow);
  f = Bind(*e, fd);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
}

TEST_F(ImageTest, CowCommitWritesTheWholeLayer) {
  auto e = OpenEngine(Config(CacheMode::kCow));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  Put(*e, *f, fd, model, 0, kBlock + 77, 50);
  Put(*e, *f, fd, model, 7 * kBlock + 4096, 8192, 51);
  Put(*e, *f, fd, model, 10, 20, 52);  // out of place over the layer itself
  auto r = e->CommitLayer();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->blocks, 3u);
  EXPECT_TRUE(Same(ReadFile(image_), model));
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_EQ(e->mode(), CacheMode::kCow);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
  // The layer is empty: leaving cow is allowed now.
  ASSERT_TRUE(e->SetMode(CacheMode::kWriteback).ok());
  // Neither commit nor discard outside cow.
  EXPECT_EQ(e->CommitLayer().status().code(), EINVAL);
  EXPECT_EQ(e->DiscardLayer().status().code(), EINVAL);
}

TEST_F(ImageTest, CowDiscardDropsTheWholeLayer) {
  const EngineConfig c = Config(CacheMode::kCow);
  auto e = OpenEngine(c);
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  Put(*e, *f, fd, model, 5, 3 * kBlock, 60);
  ASSERT_TRUE(e->Sync(*f).ok());
  Put(*e, *f, fd, model, 2 * kBlock, 100, 61);
  auto r = e->DiscardLayer();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->blocks, 4u);
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), original_));
  EXPECT_TRUE(Same(ReadFile(image_), original_));
  EXPECT_EQ(backing_->writes, 0);
  // Nothing comes back after a kill and a remount, and any mode may follow.
  f.reset();
  e.reset();
  e = OpenEngine(Config(CacheMode::kWriteback));
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->stats().blocks_dirty, 0u);
  f = Bind(*e, fd);
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), original_));
}

TEST_F(ImageTest, CowCommitCutShortRefusesDiscardUntilCommitted) {
  auto e = OpenEngine(Config(CacheMode::kCow));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string model = original_;
  Put(*e, *f, fd, model, 0, 4 * kBlock, 70);
  backing_->fail_writes = true;
  auto r = e->CommitLayer();
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(e->stats().blocks_dirty, 4u);  // the layer is whole
  EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
  // The image may hold part of the layer now: dropping the rest would mix.
  auto d = e->DiscardLayer();
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), EBUSY) << d.status().message();
  backing_->fail_writes = false;
  r = e->CommitLayer();
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(Same(ReadFile(image_), model));
}

// A commit killed anywhere: the mount still shows the whole layer over the
// image, discard is refused (the image may hold part of it), and a commit
// finishes the job.
TEST_F(ImageTest, CowCommitKilledAnywhereKeepsTheLayerWhole) {
  struct Point {
    int write;  // kill before this write of the commit (-1: none)
    int sync;   // kill before (1) or after (2) the image's sync
  };
  for (const Point p : {Point{0, 0}, Point{2, 0}, Point{-1, 1}, Point{-1, 2}}) {
    SCOPED_TRACE("kill before write " + std::to_string(p.write) + ", sync point " +
                 std::to_string(p.sync));
    std::filesystem::remove_all(base_ + "/cache");
    std::ofstream(image_, std::ios::binary | std::ios::trunc) << original_;
    std::string model = original_;
    const std::vector<std::pair<uint64_t, size_t>> writes = {
        {0, 5000}, {2 * kBlock + 4096, kBlock}, {6 * kBlock + 100, 300}};
    for (size_t i = 0; i < writes.size(); ++i) {
      model.replace(writes[i].first, writes[i].second,
                    Pattern(writes[i].second, 90 + static_cast<uint32_t>(i)));
    }
    const EngineConfig c = Config(CacheMode::kCow);
    pid_t pid = fork();
    if (pid == 0) {
      auto e = Engine::Open(c);
      if (!e.ok()) _exit(2);
      auto fd = OpenImage();
      struct stat st;
      fstat(fd->get(), &st);
      auto f = e.value()->OpenFile("", st);
      if (!f.ok()) _exit(3);
      for (size_t i = 0; i < writes.size(); ++i) {
        std::string w = Pattern(writes[i].second, 90 + static_cast<uint32_t>(i));
        if (!e.value()->Write(*f.value(), fd, writes[i].first, w.data(), w.size(), false).ok()) {
          _exit(4);
        }
      }
      backing_->kill_at_write = p.write;
      backing_->kill_at_sync = p.sync;
      (void)e.value()->CommitLayer();
      _exit(5);  // not killed: the test is wrong
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    auto e = OpenEngine(c);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->mode(), CacheMode::kCow);
    EXPECT_EQ(e->stats().blocks_dirty, 4u);
    auto fd = OpenImage();
    auto f = Bind(*e, fd);
    ASSERT_NE(f, nullptr);
    EXPECT_TRUE(Same(ReadAll(*e, *f, fd), model));
    auto d = e->DiscardLayer();
    EXPECT_EQ(d.status().code(), EBUSY) << d.status().message();
    auto r = e->CommitLayer();
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_TRUE(Same(ReadFile(image_), model));
    EXPECT_EQ(e->stats().blocks_dirty, 0u);
  }
}

TEST_F(ImageTest, CowLayerFillingTheCacheGivesENOSPC) {
  auto e = OpenEngine(Config(CacheMode::kCow, 4));
  ASSERT_NE(e, nullptr);
  auto fd = OpenImage();
  auto f = Bind(*e, fd);
  ASSERT_NE(f, nullptr);
  std::string w = Pattern(kBlock, 80);
  for (uint64_t b = 0; b < 4; ++b) {
    ASSERT_TRUE(e->Write(*f, fd, b * kBlock, w.data(), w.size(), false).ok()) << b;
  }
  Status s = e->Write(*f, fd, 4 * kBlock, w.data(), w.size(), false);
  EXPECT_EQ(s.code(), ENOSPC) << s.message();
  EXPECT_NE(s.message().find("cow"), std::string::npos) << s.message();
  EXPECT_TRUE(Same(ReadFile(image_), original_));
  // Committed, the cache has room again.
  ASSERT_TRUE(e->CommitLayer().ok());
  EXPECT_TRUE(e->Write(*f, fd, 4 * kBlock, w.data(), w.size(), false).ok());
}

}  // namespace
}  // namespace cachefs
