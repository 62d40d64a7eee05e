// The block cache seen from outside: cachefs mounted over slowfs, whose
// counters say how many bytes reached the slow store, so that every test can
// tell whether data came from the cache or from SOURCE.
//
// Layout of each test (under its own temporary directory `base`):
//   base/slow      the slow store's data, a plain directory
//   base/slowmnt   slowfs over base/slow: SOURCE of cachefs
//   base/mnt       cachefs over base/slowmnt
//   base/cache     the cache directory (64M of 64K blocks unless a test says)
//   base/daemon.log  cachefs's stderr (it runs with -f)
// The kernel's pages of a cachefs file are dropped at every open (cachefs
// replies keep_cache=0), so each read below opens the file anew.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/mount/ctl_util.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kBlockSize = 64 << 10;
constexpr uint64_t kCacheSize = 64 << 20;
constexpr size_t kFileSize = 4 << 20;
constexpr size_t kMiB = 1 << 20;

std::string Pattern(size_t size, int seed) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    data[i] = static_cast<char>((i * 131 + static_cast<size_t>(seed) * 7 + i / 4093) & 0xff);
  }
  return data;
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

// Writes `data` at `off` of the existing file `path` (no truncation).
void WritePart(const std::string& path, uint64_t off, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  EXPECT_EQ(pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(data.size()));
  close(fd);
}

// Reads the whole of `path` through a fresh descriptor, with none of its
// pages left in the kernel's cache ("" and a test failure on error).
std::string ReadFresh(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
  if (fd < 0) return "";
  EXPECT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  std::string data;
  char buf[256 << 10];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    EXPECT_GE(n, 0) << path << ": " << std::strerror(errno);
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return data;
}

// Replaces the contents of `path` in place (same inode), as an outside
// writer of the slow store would.
void Rewrite(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  EXPECT_EQ(close(fd), 0);
}

// gtest prints mismatching strings in full; 4 MiB of them help nobody.
::testing::AssertionResult SameData(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  return ::testing::AssertionFailure() << "got " << got.size() << " bytes, want " << want.size()
                                       << "; first difference at byte " << i;
}

size_t CountLines(const std::string& s) { return std::count(s.begin(), s.end(), '\n'); }

// A tmpfs mounted for the lifetime of the object (unmounted on every path).
class TmpfsMount {
 public:
  TmpfsMount(const std::string& path, const std::string& options) : path_(path) {
    mkdir(path.c_str(), 0755);
    mounted_ = mount("tmpfs", path.c_str(), "tmpfs", 0, options.c_str()) == 0;
    EXPECT_TRUE(mounted_) << "mount tmpfs on " << path << ": " << std::strerror(errno);
  }
  ~TmpfsMount() {
    if (mounted_) umount2(path_.c_str(), MNT_DETACH);
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::string path_;
  bool mounted_ = false;
};

// slowfs over base/slow and cachefs over slowfs, both unmounted (cachefs
// first) when the test ends, however it ends.
class CacheFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = MakeTempDir("cache");
    ASSERT_FALSE(base_.empty());
    for (const std::string& d : {slow(), slowmnt(), mnt()}) mkdir(d.c_str(), 0755);
    ASSERT_TRUE(MountSlowfs());
  }

  void TearDown() override {
    cachefs_.reset();
    slowfs_.reset();
    if (!base_.empty()) RemoveTree(base_);
  }

  std::string slow() const { return base_ + "/slow"; }
  std::string slowmnt() const { return base_ + "/slowmnt"; }
  std::string mnt() const { return base_ + "/mnt"; }
  std::string cache() const { return base_ + "/cache"; }
  std::string log() const { return base_ + "/daemon.log"; }
  std::string store() const { return cache() + "/store"; }

  // The cache options of every mount of this test's cache.
  std::vector<std::string> CacheArgs() const {
    return {"--cache=" + cache(), "--cache_size=" + std::to_string(cache_size_ >> 10) + "K",
            "--block_size=" + std::to_string(kBlockSize >> 10) + "K"};
  }

  bool MountSlowfs() {
    slowfs_ = MountedSlowfs::StartAt(slow(), slowmnt());
    return slowfs_ != nullptr;
  }

  // Mounts cachefs over slowfs with the test's cache and `extra` options.
  bool MountCachefs(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = CacheArgs();
    args.insert(args.end(), extra.begin(), extra.end());
    cachefs_ = MountedCachefs::StartAt(slowmnt(), mnt(), args, log());
    return cachefs_ != nullptr;
  }

  // Unmounts cachefs and expects the daemon to exit with status 0.
  void UnmountCachefs() {
    ASSERT_NE(cachefs_, nullptr);
    int status = cachefs_->Unmount();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "cachefs status " << status;
    EXPECT_FALSE(IsMountPoint(mnt()));
    cachefs_.reset();
  }

  // Bytes slowfs has served to readers since it was mounted.
  uint64_t SlowReadBytes() { return ReadSlowfsStats(slowmnt())["read_bytes"]; }

  // Reads `name` through cachefs; returns its contents and sets `*slow_bytes`
  // to the bytes that slowfs served meanwhile.
  std::string ReadThroughCache(const std::string& name, uint64_t* slow_bytes) {
    uint64_t before = SlowReadBytes();
    std::string data = ReadFresh(mnt() + "/" + name);
    *slow_bytes = SlowReadBytes() - before;
    return data;
  }

  // Writes a 4 MiB file into the slow store, reads it through cachefs once
  // (filling the cache) and checks that it all came from slowfs.
  std::string WarmUp(const std::string& name) {
    std::string data = Pattern(kFileSize, static_cast<int>(name.size()));
    WriteFile(slow() + "/" + name, data);
    uint64_t slow_bytes = 0;
    EXPECT_TRUE(SameData(ReadThroughCache(name, &slow_bytes), data));
    EXPECT_GE(slow_bytes, kFileSize) << "the first read must come from the slow store";
    return data;
  }

  // Waits until the cache holds `blocks` blocks: installs run after the
  // reply, on other threads (streamed ones wait for the device), so a kill
  // -9 right after a read may find some not yet cached, which loses nothing
  // but those blocks' place in the cache.
  void WaitCached(uint64_t blocks) {
    auto deadline = Clock::now() + std::chrono::seconds(10);
    uint64_t have = 0;
    while (Clock::now() < deadline) {
      CtlResult r = RunCtl({"stats", "--json", mnt()});
      if (r.exit_code == 0) {
        JsonValue out = ParseOut(r);
        if (const JsonValue* stats = out.Find("stats")) have = Uint(*stats, "blocks_cached");
        if (have >= blocks) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "the cache holds " << have << " blocks, not " << blocks;
  }

  std::string DaemonLog() const {
    struct stat st;
    return stat(log().c_str(), &st) == 0 ? ReadFile(log()) : "";
  }

  // Runs cachefs (detaching, as a user would) with `args` over `source` on
  // `mountpoint`, expecting it to fail. Should it mount after all, the mount
  // is taken down again and the test fails.
  CommandResult RunFailingMount(const std::string& source, const std::string& mountpoint,
                                const std::vector<std::string>& args) {
    std::string cmd =
        "timeout 20 " + Quote(CachefsBinary()) + " " + Quote(source) + " " + Quote(mountpoint);
    for (const std::string& a : args) cmd += " " + Quote(a);
    CommandResult r = RunCommand(cmd);
    if (IsMountPoint(mountpoint)) {
      ADD_FAILURE() << "cachefs mounted " << mountpoint << " although it should not: " << cmd;
      RunCommand("fusermount3 -u -z " + Quote(mountpoint));
    }
    return r;
  }

  // A failed mount: non-zero exit, one line naming `mentions`, nothing mounted.
  void ExpectOneLineFailure(const CommandResult& r, const std::string& mountpoint,
                            const std::string& mentions) {
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_EQ(CountLines(r.output), 1u) << r.output;
    EXPECT_EQ(r.output.rfind("cachefs: ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(mentions), std::string::npos)
        << "expected \"" << mentions << "\" in: " << r.output;
    EXPECT_FALSE(IsMountPoint(mountpoint));
  }

  std::string base_;
  uint64_t cache_size_ = kCacheSize;
  std::unique_ptr<MountedSlowfs> slowfs_;
  std::unique_ptr<MountedCachefs> cachefs_;
};

// --- 1. hits ------------------------------------------------------------------

class CacheHits : public CacheFixture {};

TEST_F(CacheHits, SecondReadCostsTheSlowStoreNothing) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  uint64_t slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
  // Reads that do not start at a block boundary are hits too.
  int fd = open((mnt() + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  uint64_t before = SlowReadBytes();
  std::string part(300000, '\0');
  const off_t off = 3 * kBlockSize + 12345;
  EXPECT_EQ(pread(fd, part.data(), part.size(), off), static_cast<ssize_t>(part.size()));
  close(fd);
  EXPECT_TRUE(SameData(part, data.substr(static_cast<size_t>(off), part.size())));
  EXPECT_EQ(SlowReadBytes() - before, 0u);
}

// --- 2-4. the cache stays warm ---------------------------------------------------

class CacheWarm : public CacheFixture {};

TEST_F(CacheWarm, AfterCleanUnmountAndRemount) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  UnmountCachefs();
  ASSERT_TRUE(MountCachefs());
  uint64_t slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
}

TEST_F(CacheWarm, AfterKill9OfTheDaemon) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  WaitCached(kFileSize / kBlockSize);
  ASSERT_EQ(kill(cachefs_->daemon_pid(), SIGKILL), 0);
  // Clears the stale mount (fusermount3 -u -z) and reaps the daemon.
  int status = cachefs_->Unmount();
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
  cachefs_.reset();
  ASSERT_FALSE(IsMountPoint(mnt()));
  ASSERT_TRUE(MountCachefs());
  uint64_t slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
  EXPECT_NE(DaemonLog().find("not shut down cleanly"), std::string::npos) << DaemonLog();
}

TEST_F(CacheWarm, AfterTheSlowStoreIsMountedAgain) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  struct stat first;
  ASSERT_EQ(stat((slowmnt() + "/f").c_str(), &first), 0);
  UnmountCachefs();
  ASSERT_EQ(slowfs_->Unmount(), 0);
  slowfs_.reset();
  {
    // The kernel hands out the lowest free anonymous device number, which
    // would be slowfs's old one: hold it with a tmpfs meanwhile, so that the
    // new mount gets a new st_dev as a remount of NFS or sshfs would.
    TmpfsMount placeholder(base_ + "/placeholder", "size=64K");
    ASSERT_TRUE(placeholder.mounted());
    ASSERT_TRUE(MountSlowfs());
  }
  struct stat second;
  ASSERT_EQ(stat((slowmnt() + "/f").c_str(), &second), 0);
  EXPECT_NE(first.st_dev, second.st_dev) << "a new FUSE mount of the slow store";
  ASSERT_TRUE(MountCachefs());
  uint64_t slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
}

// A rename through the mount keeps the cached blocks under the new name
// (contract 4: the path is kept current), in this mount and the next.
TEST_F(CacheWarm, AfterRenameThroughTheMount) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  ASSERT_EQ(rename((mnt() + "/f").c_str(), (mnt() + "/g").c_str()), 0) << std::strerror(errno);
  uint64_t slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("g", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
  UnmountCachefs();
  ASSERT_TRUE(MountCachefs());
  slow_bytes = 1;
  EXPECT_TRUE(SameData(ReadThroughCache("g", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
}

// --- 5. changes made in the slow store behind cachefs's back -----------------------

class CacheInvalidation : public CacheFixture {
 protected:
  // Re-opens and reads `name` through cachefs until it reads `want`, for at
  // most attr_timeout (1 s) plus a margin for a slow machine; returns
  // whether it did, and in `*reads` how many re-opens that took.
  bool SeesWithinAttrTimeout(const std::string& name, const std::string& want, int* reads) {
    auto deadline = Clock::now() + std::chrono::milliseconds(1500);
    *reads = 0;
    while (true) {
      std::string got = ReadFresh(mnt() + "/" + name);
      ++*reads;
      if (got == want) return true;
      if (Clock::now() > deadline) {
        ADD_FAILURE() << SameData(got, want).message();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
};

TEST_F(CacheInvalidation, ChangeInTheSlowStoresDirectoryIsSeenAtReopen) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  WarmUp("f");
  // Shorter, as long, then longer than the cached file, with other contents each time.
  const size_t sizes[] = {kFileSize - 3 * kBlockSize - 100, kFileSize - 3 * kBlockSize - 100,
                          kFileSize + 5 * kBlockSize + 7};
  for (int round = 0; round < 3; ++round) {
    const size_t size = sizes[round];
    SCOPED_TRACE("round " + std::to_string(round) + ", new size " + std::to_string(size));
    const std::string changed = Pattern(size, 40 + round);
    uint64_t before = SlowReadBytes();
    Rewrite(slow() + "/f", changed);
    int reads = 0;
    EXPECT_TRUE(SeesWithinAttrTimeout("f", changed, &reads));
    EXPECT_EQ(reads, 1) << "close-to-open: the first re-open sees the change";
    EXPECT_GE(SlowReadBytes() - before, size) << "the new contents come from the slow store";
    uint64_t slow_bytes = 1;
    EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), changed));
    EXPECT_EQ(slow_bytes, 0u) << "the new contents are cached in turn";
  }
}

TEST_F(CacheInvalidation, ChangeThroughTheSlowfsMountIsSeenAtReopen) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  WarmUp("f");
  const std::string changed = Pattern(kFileSize / 2 + 999, 77);
  Rewrite(slowmnt() + "/f", changed);
  int reads = 0;
  EXPECT_TRUE(SeesWithinAttrTimeout("f", changed, &reads));
  EXPECT_EQ(reads, 1) << "close-to-open: the first re-open sees the change";
}

// A handle opened before the change sees it once attr_timeout has passed.
TEST_F(CacheInvalidation, ChangeIsSeenThroughAnOpenHandleWithinAttrTimeout) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  const std::string data = WarmUp("f");
  int fd = open((mnt() + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  std::string got(kFileSize, '\0');
  EXPECT_EQ(pread(fd, got.data(), got.size(), 0), static_cast<ssize_t>(got.size()));
  EXPECT_TRUE(SameData(got, data));
  const std::string changed = Pattern(kFileSize - kBlockSize, 55);  // other size, other bytes
  Rewrite(slow() + "/f", changed);
  auto start = Clock::now();
  bool seen = false;
  while (!seen && Clock::now() - start < std::chrono::milliseconds(2500)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    got.assign(kFileSize, '\0');
    ssize_t n = pread(fd, got.data(), got.size(), 0);
    got.resize(static_cast<size_t>(std::max<ssize_t>(n, 0)));
    seen = got == changed;
  }
  close(fd);
  EXPECT_TRUE(seen)
      << "still " << SameData(got, changed).message() << " after "
      << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count()
      << " ms";
}

// An outside change that nothing through the mount has looked at yet (long
// attribute timeouts), then a truncate through the mount: the cache adopts
// SOURCE's look after its own change, so it must look before it too, or the
// changed bytes below the cut stay hidden behind the old cached blocks.
TEST_F(CacheInvalidation, AnOutsideChangeBeforeATruncateThroughTheMountIsSeen) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=60", "-o", "entry_timeout=60"}));
  WarmUp("f");
  const std::string changed = Pattern(kFileSize, 66);  // same size, other bytes
  Rewrite(slow() + "/f", changed);
  ASSERT_EQ(truncate((mnt() + "/f").c_str(), kFileSize / 2), 0) << std::strerror(errno);
  EXPECT_TRUE(SameData(ReadFresh(mnt() + "/f"), changed.substr(0, kFileSize / 2)));
}

TEST_F(CacheInvalidation, ChangeWhileUnmountedIsSeenAtTheNextMount) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  WarmUp("f");
  UnmountCachefs();
  const std::string changed = Pattern(kFileSize + 4096 + 1, 21);
  Rewrite(slow() + "/f", changed);
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  uint64_t slow_bytes = 0;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), changed));
  EXPECT_GE(slow_bytes, changed.size());
}

// --- 5b. the kernel's pages across opens -------------------------------------------

class KernelPages : public CacheInvalidation {
 protected:
  // Reads the whole of `path` through a fresh descriptor, leaving the
  // kernel's pages as the open left them.
  static std::string ReadAsIs(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
    if (fd < 0) return "";
    std::string data;
    char buf[256 << 10];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) data.append(buf, static_cast<size_t>(n));
    EXPECT_EQ(n, 0) << path << ": " << std::strerror(errno);
    close(fd);
    return data;
  }

  // Pages of `path` in the kernel's cache right after an open of it.
  static size_t ResidentAfterOpen(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
    if (fd < 0) return 0;
    struct stat st;
    EXPECT_EQ(fstat(fd, &st), 0);
    const size_t len = static_cast<size_t>(st.st_size);
    void* map = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    EXPECT_NE(map, MAP_FAILED) << std::strerror(errno);
    if (map == MAP_FAILED) return 0;
    const long page = sysconf(_SC_PAGESIZE);
    std::vector<unsigned char> in((len + page - 1) / page);
    EXPECT_EQ(mincore(map, len, in.data()), 0) << std::strerror(errno);
    munmap(map, len);
    return static_cast<size_t>(
        std::count_if(in.begin(), in.end(), [](unsigned char c) { return c & 1; }));
  }
};

// An unchanged file keeps the kernel's pages across a close and an open: a
// re-read costs no FUSE request (without it, every open dropped them).
TEST_F(KernelPages, AnUnchangedFileKeepsThemAcrossOpens) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  const std::string data = WarmUp("f");
  EXPECT_TRUE(SameData(ReadAsIs(mnt() + "/f"), data));
  const size_t pages = kFileSize / static_cast<size_t>(sysconf(_SC_PAGESIZE));
  EXPECT_EQ(ResidentAfterOpen(mnt() + "/f"), pages);
  EXPECT_TRUE(SameData(ReadAsIs(mnt() + "/f"), data));
}

// A change in SOURCE that keeps the size and the mtime (only the ctime
// tells) escapes the kernel's own check (AUTO_INVAL_DATA compares size and
// mtime): the cache's fingerprint sees it, and the next open drops the
// pages, whether the open or a stat before it noticed the change.
TEST_F(KernelPages, AChangeKeepingSizeAndMtimeDropsThemAtTheNextOpen) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  const std::string data = WarmUp("f");
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "noticed by the open" : "noticed by a stat before the open");
    const std::string old = round == 0 ? data : Pattern(kFileSize, 90);
    EXPECT_TRUE(SameData(ReadAsIs(mnt() + "/f"), old));  // the pages hold `old`
    struct stat before;
    ASSERT_EQ(stat((slow() + "/f").c_str(), &before), 0);
    const std::string changed = Pattern(kFileSize, round == 0 ? 90 : 91);
    Rewrite(slow() + "/f", changed);
    const struct timespec times[2] = {before.st_atim, before.st_mtim};
    ASSERT_EQ(utimensat(AT_FDCWD, (slow() + "/f").c_str(), times, 0), 0) << std::strerror(errno);
    if (round == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // attr_timeout
      struct stat st;
      ASSERT_EQ(stat((mnt() + "/f").c_str(), &st), 0);
    }
    EXPECT_TRUE(SameData(ReadAsIs(mnt() + "/f"), changed));
  }
}

// Random 4 KiB hits read the store around its page cache: the mount's own
// pages hold what was read, and the store keeps no second copy (nor
// readahead around it). Each read here goes to the daemon (the mount's pages
// dropped, FADV_RANDOM: no readahead), starts past the previous one's end
// (not a stream) and is a hit (slowfs serves nothing).
TEST_F(KernelPages, RandomHitsLeaveNoPagesOfTheStore) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1"}));
  const std::string data = WarmUp("f");
  WaitCached(kFileSize / kBlockSize);
  const auto drop = [](const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
    EXPECT_EQ(fdatasync(fd), 0) << std::strerror(errno);
    EXPECT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    close(fd);
  };
  drop(store());
  drop(mnt() + "/f");
  const size_t before = ResidentAfterOpen(store());
  int fd = open((mnt() + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);
  const uint64_t slow_before = SlowReadBytes();
  size_t reads = 0;
  std::string got(4096, '\0');
  for (size_t off = 0; off + 4096 <= kFileSize; off += kBlockSize + 8192) {
    ASSERT_EQ(pread(fd, got.data(), got.size(), static_cast<off_t>(off)), 4096)
        << std::strerror(errno);
    EXPECT_TRUE(SameData(got, data.substr(off, 4096))) << "at " << off;
    reads++;
  }
  close(fd);
  EXPECT_EQ(SlowReadBytes(), slow_before) << "not all hits";
  ASSERT_GE(reads, 32u);
  const size_t after = ResidentAfterOpen(store());
  EXPECT_LT(after, before + reads / 4)
      << reads << " random hits brought " << after - before << " pages of the store in";
}

// --- 6. writes through cachefs ------------------------------------------------------

class CacheWrites : public CacheFixture {};

TEST_F(CacheWrites, WriteIntoACachedFileIsReadBackAndReachesTheSlowStore) {
  ASSERT_TRUE(MountCachefs());
  std::string data = WarmUp("f");
  // 10000 bytes across the boundary of blocks 1 and 2.
  const std::string patch = Pattern(10000, 99);
  const size_t off = 2 * kBlockSize - 3000;
  int fd = open((mnt() + "/f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(pwrite(fd, patch.data(), patch.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(patch.size()));
  EXPECT_EQ(close(fd), 0);
  data.replace(off, patch.size(), patch);
  EXPECT_TRUE(SameData(ReadFile(slow() + "/f"), data)) << "the slow store holds the write";
  uint64_t slow_bytes = 0;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  // Only the blocks the write touched are fetched again (plus the slow
  // store's own readahead at most), not the whole file.
  EXPECT_LE(slow_bytes, 2 * kBlockSize + (128 << 10));
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
  // cachefs's own write is not mistaken for an outside change at the next
  // mount: the file stays warm.
  UnmountCachefs();
  ASSERT_TRUE(MountCachefs());
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
}

// Contract 3 (a crash gives back every clean block) and 5 (cachefs's own
// writes refresh the fingerprint in the same batch): after a write through
// the mount and a kill -9, only the blocks the write touched are gone.
TEST_F(CacheWrites, OwnWriteKeepsTheRestOfTheFileWarmAcrossKill9) {
  ASSERT_TRUE(MountCachefs());
  std::string data = WarmUp("f");
  WaitCached(kFileSize / kBlockSize);
  const std::string patch = Pattern(5000, 98);
  const size_t off = 7 * kBlockSize + 100;
  int fd = open((mnt() + "/f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(pwrite(fd, patch.data(), patch.size(), static_cast<off_t>(off)),
            static_cast<ssize_t>(patch.size()));
  data.replace(off, patch.size(), patch);
  // The daemon dies with the file still open: the write was acknowledged,
  // so everything it changed in the cache must already be recorded.
  ASSERT_EQ(kill(cachefs_->daemon_pid(), SIGKILL), 0);
  cachefs_->Unmount();
  cachefs_.reset();
  close(fd);
  EXPECT_TRUE(SameData(ReadFile(slow() + "/f"), data));
  ASSERT_TRUE(MountCachefs());
  uint64_t slow_bytes = 0;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_LE(slow_bytes, kBlockSize + (128 << 10))
      << "the whole file was fetched again, not just the block the write touched";
}

// --- 7. corruption of the store ---------------------------------------------------

class CacheCorruption : public CacheFixture {};

TEST_F(CacheCorruption, FlippedStoreBytesAreDetectedAndRefetched) {
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  UnmountCachefs();
  // Flip a byte in the first sub-block of every slot.
  int fd = open(store().c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << store() << ": " << std::strerror(errno);
  for (uint64_t slot = 0; slot < kCacheSize / kBlockSize; ++slot) {
    off_t at = static_cast<off_t>(slot * kBlockSize + 100);
    unsigned char c;
    ASSERT_EQ(pread(fd, &c, 1, at), 1);
    c ^= 0xff;
    ASSERT_EQ(pwrite(fd, &c, 1, at), 1);
  }
  close(fd);
  ASSERT_TRUE(MountCachefs());
  uint64_t slow_bytes = 0;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_GE(slow_bytes, kFileSize) << "every block was corrupt and must be refetched";
  EXPECT_NE(DaemonLog().find("CRC mismatch"), std::string::npos) << DaemonLog();
  // The refetched blocks are good hits again.
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  EXPECT_EQ(slow_bytes, 0u);
}

// --- 8. bad input for the cache ------------------------------------------------------

class CacheBadInput : public CacheFixture {};

TEST_F(CacheBadInput, SecondMountOfTheSameCacheIsRefused) {
  ASSERT_TRUE(MountCachefs());
  const std::string mnt2 = base_ + "/mnt2";
  mkdir(mnt2.c_str(), 0755);
  CommandResult r = RunFailingMount(slowmnt(), mnt2, CacheArgs());
  ExpectOneLineFailure(r, mnt2, "in use");
  // The first mount is unharmed.
  WriteFile(slow() + "/f", "still here");
  EXPECT_EQ(ReadFile(mnt() + "/f"), "still here");
}

TEST_F(CacheBadInput, OptionsFixedAtFormatMustMatch) {
  ASSERT_TRUE(MountCachefs());
  UnmountCachefs();
  struct Case {
    std::string option;
    std::string names;
  };
  for (const Case& c :
       {Case{"--block_size=128K", "block_size"}, Case{"--cache_size=32M", "cache_size"}}) {
    std::vector<std::string> args = {"--cache=" + cache(), c.option};
    CommandResult r = RunFailingMount(slowmnt(), mnt(), args);
    ExpectOneLineFailure(r, mnt(), c.names);
  }
  // The cache itself is unharmed by the refusals.
  ASSERT_TRUE(MountCachefs());
}

TEST_F(CacheBadInput, CacheOfAnotherSourceIsRefusedUntilReformat) {
  ASSERT_TRUE(MountCachefs());
  UnmountCachefs();
  const std::string other = base_ + "/other";
  mkdir(other.c_str(), 0755);
  WriteFile(other + "/g", "other source");
  CommandResult r = RunFailingMount(other, mnt(), CacheArgs());
  ExpectOneLineFailure(r, mnt(), "belongs to SOURCE");
  std::vector<std::string> args = CacheArgs();
  args.push_back("--reformat");
  cachefs_ = MountedCachefs::StartAt(other, mnt(), args, log());
  ASSERT_NE(cachefs_, nullptr);
  EXPECT_EQ(ReadFile(mnt() + "/g"), "other source");
  UnmountCachefs();
  // Now the cache is the other source's: slowfs's is the stranger.
  r = RunFailingMount(slowmnt(), mnt(), CacheArgs());
  ExpectOneLineFailure(r, mnt(), "belongs to SOURCE");
}

TEST_F(CacheBadInput, MissingStoreFileIsRefused) {
  ASSERT_TRUE(MountCachefs());
  UnmountCachefs();
  ASSERT_EQ(unlink(store().c_str()), 0) << std::strerror(errno);
  CommandResult r = RunFailingMount(slowmnt(), mnt(), CacheArgs());
  ExpectOneLineFailure(r, mnt(), "--reformat");
}

TEST_F(CacheBadInput, CacheLargerThanItsDeviceIsRefused) {
  TmpfsMount small(base_ + "/small", "size=8M,mode=0755");
  ASSERT_TRUE(small.mounted());
  const std::vector<std::string> args = {"--cache=" + base_ + "/small/cache", "--cache_size=64M",
                                         "--block_size=64K"};
  CommandResult r = RunFailingMount(slowmnt(), mnt(), args);
  ExpectOneLineFailure(r, mnt(), "No space");
  // Nothing half-made is left in the way: a cache that fits formats there.
  cachefs_ = MountedCachefs::StartAt(
      slowmnt(), mnt(),
      {"--cache=" + base_ + "/small/cache", "--cache_size=1M", "--block_size=64K"}, log());
  ASSERT_NE(cachefs_, nullptr);
  WriteFile(slow() + "/f", "fits");
  EXPECT_EQ(ReadFile(mnt() + "/f"), "fits");
  UnmountCachefs();  // before the tmpfs under it goes
}

// --- 9. eviction ---------------------------------------------------------------------

class CacheEviction : public CacheFixture {};

TEST_F(CacheEviction, StoreStaysAtCacheSize) {
  cache_size_ = kMiB;  // 16 blocks for a file of 64
  ASSERT_TRUE(MountCachefs());
  const std::string data = WarmUp("f");
  uint64_t slow_bytes = 0;
  EXPECT_TRUE(SameData(ReadThroughCache("f", &slow_bytes), data));
  // At most the 16 blocks the cache holds can be hits.
  EXPECT_GE(slow_bytes, kFileSize - kMiB);
  struct stat st;
  ASSERT_EQ(stat(store().c_str(), &st), 0) << std::strerror(errno);
  EXPECT_EQ(st.st_size, static_cast<off_t>(kMiB));
  EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512, kMiB + (64 << 10));
}

// --- 10. a slow store that hangs (source_timeout) ---------------------------------

class CacheHungSource : public CacheFixture {};

// Reads `len` bytes at `off` of the open `fd`; the errno, or 0 and the bytes.
int ReadAt(int fd, off_t off, size_t len, std::string* out) {
  out->assign(len, '\0');
  ssize_t n = pread(fd, out->data(), len, off);
  if (n < 0) return errno;
  out->resize(static_cast<size_t>(n));
  return 0;
}

// Whether every thread of process `pid` is stopped (SIGSTOP taken).
bool AllThreadsStopped(pid_t pid) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = opendir(tasks.c_str());
  if (dir == nullptr) return false;
  bool all = true;
  int seen = 0;
  while (dirent* e = readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    ++seen;
    // "TID (comm) STATE ...": the state follows the last ')'.
    const std::string stat = ReadFile(tasks + "/" + e->d_name + "/stat");
    const size_t paren = stat.rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat.size() ||
        (stat[paren + 2] != 'T' && stat[paren + 2] != 't')) {
      all = false;
    }
  }
  closedir(dir);
  return all && seen > 0;
}

TEST_F(CacheHungSource, ColdReadFailsWithEioAtTheDeadlineAndHitsGoOn) {
  // Long attribute timeouts: nothing but the reads below reaches the stopped store.
  ASSERT_TRUE(MountCachefs({"--source_timeout=0.3", "--attr_timeout=60", "--entry_timeout=60"}));
  const std::string data = Pattern(kFileSize, 9);
  WriteFile(slow() + "/f", data);
  int fd = open((mnt() + "/f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM), 0);  // reads of exactly what is asked
  std::string got;
  ASSERT_EQ(ReadAt(fd, 0, 4096, &got), 0);  // block 0 is cached now
  EXPECT_EQ(got, data.substr(0, 4096));
  // The slow store stops answering (as a server gone away would) until the end of the test.
  const pid_t slowfs_pid = slowfs_->daemon_pid();
  ASSERT_GT(slowfs_pid, 0);
  ASSERT_EQ(kill(slowfs_pid, SIGSTOP), 0);
  struct Continue {
    pid_t pid;
    ~Continue() { kill(pid, SIGCONT); }
  } resume{slowfs_pid};
  // kill returns before the threads stop, and one of them may still take a
  // request meanwhile.
  const auto stop_deadline = Clock::now() + std::chrono::seconds(5);
  while (!AllThreadsStopped(slowfs_pid) && Clock::now() < stop_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_TRUE(AllThreadsStopped(slowfs_pid));
  // A cold read is answered EIO at the deadline, though the daemon's read of
  // the store is still stuck; so is the next one (handed off to a worker,
  // now that the store looks hung).
  for (off_t off : {off_t{20 * kBlockSize}, off_t{40 * kBlockSize + 8192}}) {
    const auto start = Clock::now();
    EXPECT_EQ(ReadAt(fd, off, 4096, &got), EIO) << "at " << off;
    const auto took = Clock::now() - start;
    EXPECT_GE(took, std::chrono::milliseconds(250)) << "at " << off;
    EXPECT_LT(took, std::chrono::seconds(3)) << "at " << off;
  }
  // Cached data is still served (by cachefs: the kernel's copy is dropped).
  ASSERT_EQ(posix_fadvise(fd, 0, 4096, POSIX_FADV_DONTNEED), 0);
  ASSERT_EQ(ReadAt(fd, 0, 4096, &got), 0);
  EXPECT_EQ(got, data.substr(0, 4096));
  // The store answers again: so does the mount, from the store.
  ASSERT_EQ(kill(slowfs_pid, SIGCONT), 0);
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  int err = EIO;
  while (err != 0 && Clock::now() < deadline) {
    err = ReadAt(fd, 20 * kBlockSize, 4096, &got);
    if (err != 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(err, 0) << std::strerror(err);
  EXPECT_EQ(got, data.substr(20 * kBlockSize, 4096));
  close(fd);
  UnmountCachefs();
}

// A change of SOURCE outside the mount while a handle stays open, then a
// stat by path once the kernel's entry expired: the kernel takes the
// attributes of that LOOKUP (READDIRPLUS alike) as it would a getattr's and
// drops its pages, so the cache must drop the changed file's blocks too.
// Before session 8 only getattr and open looked: reads through the handle
// went on serving the old bytes, and a file grown outside read short.
class CoherenceByLookup : public CacheFixture, public ::testing::WithParamInterface<const char*> {
 protected:
  // Mounts with attr_timeout=1, caches `f`, opens it and reads its first
  // block through the handle returned.
  int OpenWarm(const std::string& mode) {
    EXPECT_TRUE(MountCachefs({"-o", "attr_timeout=1", "-o", "mode=" + mode}));
    WarmUp("f");
    int fd = open((mnt() + "/f").c_str(), O_RDONLY);
    EXPECT_GE(fd, 0) << std::strerror(errno);
    char buf[4096];
    EXPECT_EQ(pread(fd, buf, sizeof(buf), 0), 4096);
    return fd;
  }
  // Past attr_timeout, then a stat by path (a LOOKUP, no getattr).
  struct stat StatAfterTimeout() {
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    struct stat st;
    EXPECT_EQ(stat((mnt() + "/f").c_str(), &st), 0);
    return st;
  }
};

TEST_P(CoherenceByLookup, AChangeSeenByLookupIsServed) {
  int fd = OpenWarm(GetParam());
  ASSERT_GE(fd, 0);
  WritePart(slow() + "/f", 0, std::string(4096, 'X'));
  for (int round = 0; round < 2; ++round) {
    StatAfterTimeout();
    char buf[4096];
    ASSERT_EQ(pread(fd, buf, sizeof(buf), 0), 4096);
    EXPECT_EQ(buf[0], 'X') << "round " << round << " read the old bytes";
  }
  close(fd);
}

TEST_P(CoherenceByLookup, AFileGrownOutsideReadsToItsNewEnd) {
  int fd = OpenWarm(GetParam());
  ASSERT_GE(fd, 0);
  WritePart(slow() + "/f", kFileSize, std::string(8192, 'Z'));
  EXPECT_EQ(StatAfterTimeout().st_size, static_cast<off_t>(kFileSize + 8192));
  char buf[4096];
  EXPECT_EQ(pread(fd, buf, sizeof(buf), kFileSize), 4096) << "the new tail read short";
  EXPECT_EQ(buf[0], 'Z');
  close(fd);
}

// SOURCE cut outside while a handle is open, then a write through the mount
// past the cut (no getattr in between): the gap reads as zeros, not as the
// bytes truncated away, which the write's adoption of SOURCE's new look hid
// for good before session 8.
TEST_P(CoherenceByLookup, AnOutsideCutBeforeAWriteIsNotHidden) {
  ASSERT_TRUE(MountCachefs({"-o", "attr_timeout=1", "-o", std::string("mode=") + GetParam()}));
  WarmUp("f");
  int fd = open((mnt() + "/f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(truncate((slow() + "/f").c_str(), 0), 0);
  ASSERT_EQ(pwrite(fd, "Y", 1, 3 * kBlockSize), 1);
  close(fd);
  std::string want(3 * kBlockSize, '\0');
  want += "Y";
  EXPECT_TRUE(SameData(ReadFresh(mnt() + "/f"), want));
  EXPECT_EQ(ReadFile(slow() + "/f").size(), want.size());
}

INSTANTIATE_TEST_SUITE_P(Modes, CoherenceByLookup,
                         ::testing::Values("writethrough", "writearound"));

}  // namespace
}  // namespace cachefs::testing
