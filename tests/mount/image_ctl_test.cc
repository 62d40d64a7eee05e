// Image mounts: cachefsctl commit and discard against a live mount in
// mode=cow (writes stay in the cache, discard shows the image again, the
// kernel's pages too, commit writes the layer down, and a cow cache with a
// layer refuses another mode, mounted or at the next mount); and in
// mode=writeback, the slow image only ever shows what an fsync covered.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "common/json.h"
#include "tests/mount/ctl_util.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

constexpr size_t kImage = 1 << 20;

class ImageCtlTest : public CtlTest {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("cow");
    ASSERT_FALSE(dir_.empty());
    img_ = dir_ + "/disk.img";
    mnt_ = dir_ + "/mnt.img";
    image_.resize(kImage);
    for (size_t i = 0; i < image_.size(); ++i) image_[i] = static_cast<char>(i * 13 + 1);
    WriteFile(img_, image_);
    WriteFile(mnt_, "");
  }
  void TearDown() override {
    CtlTest::TearDown();
    RemoveTree(dir_);
  }
  std::vector<std::string> Args(const std::string& mode) const {
    return {"--cache=" + dir_ + "/cache", "--cache_size=16M",
            "--block_size=" + std::to_string(kCtlBlock >> 10) + "K", "--mode=" + mode};
  }
  bool MountImage(const std::string& mode, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = Args(mode);
    args.insert(args.end(), extra.begin(), extra.end());
    cachefs_ = MountedCachefs::StartAt(img_, mnt_, args, dir_ + "/daemon.log");
    return cachefs_ != nullptr && WaitForSocket(mnt_);
  }
  // pwrite (+ fsync) through the mount.
  void WriteSynced(uint64_t off, const std::string& data, bool sync = true) {
    int fd = open(mnt_.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)),
              static_cast<ssize_t>(data.size()));
    if (sync) {
      EXPECT_EQ(fsync(fd), 0);
    }
    close(fd);
  }
  // Polls the slow image until it equals `want` (5 s at most).
  bool SlowImageBecomes(const std::string& want) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (ReadFile(img_) != want) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }
  static std::string PRead(int fd, uint64_t off, size_t len) {
    std::string out(len, '\0');
    ssize_t n = pread(fd, out.data(), len, static_cast<off_t>(off));
    out.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return out;
  }

  std::string dir_, img_, mnt_, image_;
};

TEST_F(ImageCtlTest, DiscardShowsTheImageAgainAndCommitWritesTheLayer) {
  ASSERT_TRUE(MountImage("cow"));
  const std::string layer1(size_t{3} * 4096, 'L');
  WriteSynced(4096, layer1);
  std::string merged = image_;
  merged.replace(4096, layer1.size(), layer1);
  EXPECT_TRUE(ReadFile(mnt_) == merged);
  EXPECT_TRUE(ReadFile(img_) == image_);  // fsync or not, nothing reaches the image

  // No writeback, no other mode while the layer is there.
  ExpectOneLineError(RunCtl({"flush", mnt_}), "mode=cow never writes back", 1);
  ExpectOneLineError(RunCtl({"mode", "writeback", mnt_}), "uncommitted cow layer", 1);
  ExpectOneLineError(RunCtl({"commit", mnt_, "extra"}), "extra", 2);

  // A reader that keeps its descriptor (and the kernel its pages) across
  // the discard sees the image afterwards.
  int keep = open(mnt_.c_str(), O_RDONLY);
  ASSERT_GE(keep, 0);
  EXPECT_EQ(PRead(keep, 4096, 4096), layer1.substr(0, 4096));
  JsonValue d = ParseOut(RunCtl({"discard", "--json", mnt_}));
  EXPECT_EQ(Uint(d, "version"), 1u);
  EXPECT_EQ(Uint(d, "blocks"), 1u);
  EXPECT_EQ(Uint(d, "bytes"), layer1.size());
  EXPECT_EQ(PRead(keep, 4096, 4096), image_.substr(4096, 4096));
  close(keep);
  EXPECT_TRUE(ReadFile(mnt_) == image_);
  EXPECT_TRUE(ReadFile(img_) == image_);

  // A new layer, committed.
  const std::string layer2(kCtlBlock + 100, 'C');
  WriteSynced(5 * kCtlBlock + 10, layer2);
  merged = image_;
  merged.replace(5 * kCtlBlock + 10, layer2.size(), layer2);
  CtlResult c = RunCtl({"commit", mnt_});
  ASSERT_EQ(c.exit_code, 0) << Describe(c);
  EXPECT_EQ(c.out.rfind("commit: the cow layer (2 blocks, ", 0), 0u) << c.out;
  EXPECT_NE(c.out.find("is on the image and synced"), std::string::npos) << c.out;
  EXPECT_TRUE(ReadFile(img_) == merged);
  EXPECT_TRUE(ReadFile(mnt_) == merged);
  // An empty layer: any mode may follow; commit outside cow is refused.
  CtlResult m = RunCtl({"mode", "writeback", mnt_});
  ASSERT_EQ(m.exit_code, 0) << Describe(m);
  ExpectOneLineError(RunCtl({"commit", mnt_}), "not cow", 1);
  ExpectOneLineError(RunCtl({"discard", mnt_}), "not cow", 1);
}

// The writer runs every 50 ms; it writes back an fsync's state, never a
// write made after the last fsync.
TEST_F(ImageCtlTest, WritebackPutsOnlyFsyncedStatesOnTheSlowImage) {
  ASSERT_TRUE(MountImage("writeback", {"--writeback_delay=0"}));
  std::string synced = image_;
  const std::string a(size_t{2} * 4096, 'A');
  WriteSynced(kCtlBlock, a);
  synced.replace(kCtlBlock, a.size(), a);
  ASSERT_TRUE(SlowImageBecomes(synced));
  // Unsynced: an overwrite of the same block and a new one.
  const std::string b(4096, 'B');
  WriteSynced(kCtlBlock, b, /*sync=*/false);
  WriteSynced(3 * kCtlBlock, b, /*sync=*/false);
  std::string now = synced;
  now.replace(kCtlBlock, b.size(), b);
  now.replace(3 * kCtlBlock, b.size(), b);
  EXPECT_TRUE(ReadFile(mnt_) == now);
  // Nothing to poll for: the image must stay as it is. Six writer rounds.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(ReadFile(img_) == synced) << "a write after the last fsync reached the image";
  // A later fsync's state, on another block, reaches the image; the
  // unsynced writes before it come with it, as that fsync covers them.
  const std::string c(4096, 'C');
  WriteSynced(6 * kCtlBlock, c);
  now.replace(6 * kCtlBlock, c.size(), c);
  ASSERT_TRUE(SlowImageBecomes(now));
  JsonValue stats = ParseOut(RunCtl({"stats", "--json", mnt_}));
  const JsonValue* s = stats.Find("stats");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(Uint(*s, "blocks_dirty"), 0u);
}

TEST_F(ImageCtlTest, ALayerRefusesAnotherModeAtMount) {
  ASSERT_TRUE(MountImage("cow"));
  WriteSynced(0, std::string(4096, 'X'));
  ASSERT_EQ(cachefs_->Unmount(), 0);
  cachefs_.reset();
  std::string cmd = "'" + CachefsBinary() + "' '" + img_ + "' '" + mnt_ + "'";
  for (const std::string& a : Args("writeback")) cmd += " '" + a + "'";
  CommandResult r = RunCommand(cmd);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("holds an uncommitted cow layer; mount with mode=cow and run "
                          "cachefsctl commit or discard"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(IsMountPoint(mnt_));
  // As cow it mounts, the layer intact; discarded, writeback may follow.
  ASSERT_TRUE(MountImage("cow"));
  EXPECT_EQ(ReadFile(mnt_).substr(0, 4096), std::string(4096, 'X'));
  CtlResult d = RunCtl({"discard", mnt_});
  ASSERT_EQ(d.exit_code, 0) << Describe(d);
  EXPECT_EQ(d.out,
            "discard: the cow layer (1 block, 4.0 KiB) is dropped; the mount shows the "
            "image again\n");
  ASSERT_EQ(cachefs_->Unmount(), 0);
  cachefs_.reset();
  ASSERT_TRUE(MountImage("writeback"));
  EXPECT_TRUE(ReadFile(mnt_) == image_);
}

}  // namespace
}  // namespace cachefs::testing
