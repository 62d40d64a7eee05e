// bench/slowfs, the slow store put under cachefs in benchmarks and tests:
// it passes data through, counts what reaches it, and delays it as asked.
//
// The counter tests mount with long attribute and entry timeouts, so that the
// kernel sends no revalidation requests of its own between two readings.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr char kStats[] = "user.slowfs.stats";
constexpr char kReset[] = "user.slowfs.reset";
// Counter tests: the kernel caches attributes and names for the whole test.
const std::vector<std::string> kQuietKernel = {"-o", "attr_timeout=3600,entry_timeout=3600"};

using Stats = SlowfsStats;

std::string Pattern(size_t size, int seed) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i * 31 + seed + i / 4096);
  return data;
}

// Opens `path` for reading with no page of it in the kernel's cache and its
// attributes fresh, so that the next read goes to slowfs and nothing else does.
int OpenUncached(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0) << path << ": " << std::strerror(errno);
  if (fd < 0) return fd;
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
  return fd;
}

TEST(SlowfsMount, PassesDataBothWaysAndExitsCleanly) {
  auto m = MountedSlowfs::Start();
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/hello", "hello world\n");
  EXPECT_EQ(ReadFile(m->mnt() + "/hello"), "hello world\n");
  WriteFile(m->mnt() + "/back", "through the mount");
  EXPECT_EQ(ReadFile(m->src() + "/back"), "through the mount");
  int status = m->Unmount();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "slowfs status " << status;
  EXPECT_FALSE(IsMountPoint(m->mnt()));
}

TEST(SlowfsStats, ReadOfOneMiBCountsOneMiB) {
  auto m = MountedSlowfs::Start(kQuietKernel);
  ASSERT_NE(m, nullptr);
  const std::string data = Pattern(1 << 20, 5);
  WriteFile(m->src() + "/big", data);
  Stats before = ReadSlowfsStats(m->mnt());
  int fd = OpenUncached(m->mnt() + "/big");
  ASSERT_GE(fd, 0);
  std::string got(data.size(), '\0');
  size_t done = 0;
  while (done < got.size()) {
    ssize_t n = pread(fd, got.data() + done, got.size() - done, static_cast<off_t>(done));
    ASSERT_GT(n, 0) << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
  close(fd);
  EXPECT_TRUE(got == data);
  Stats d = SlowfsDelta(before, ReadSlowfsStats(m->mnt()));
  EXPECT_GE(d["reads"], 1u);
  EXPECT_GE(d["read_bytes"], 1u << 20);
  EXPECT_LE(d["read_bytes"], (1u << 20) + (128u << 10));  // a stray readahead at most
  EXPECT_EQ(d["opens"], 1u);
  EXPECT_EQ(d["lookups"], 1u);
  EXPECT_EQ(d["writes"], 0u);
  EXPECT_EQ(d["write_bytes"], 0u);
}

TEST(SlowfsStats, WritesAndFsyncsAreCounted) {
  auto m = MountedSlowfs::Start(kQuietKernel);
  ASSERT_NE(m, nullptr);
  int fd = open((m->mnt() + "/new").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const std::string data = Pattern(256 << 10, 9);
  Stats before = ReadSlowfsStats(m->mnt());
  EXPECT_EQ(pwrite(fd, data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  EXPECT_EQ(fsync(fd), 0);
  Stats d = SlowfsDelta(before, ReadSlowfsStats(m->mnt()));
  close(fd);
  EXPECT_GE(d["writes"], 1u);
  EXPECT_EQ(d["write_bytes"], data.size());
  EXPECT_EQ(d["fsyncs"], 1u);
  EXPECT_EQ(d["reads"], 0u);
  EXPECT_TRUE(ReadFile(m->src() + "/new") == data);
}

TEST(SlowfsStats, ResetZeroesEveryCounter) {
  auto m = MountedSlowfs::Start(kQuietKernel);
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/f", Pattern(64 << 10, 1));
  EXPECT_EQ(ReadFile(m->mnt() + "/f").size(), 64u << 10);
  struct stat st;
  ASSERT_EQ(stat(m->mnt().c_str(), &st), 0);  // root attributes cached from now on
  Stats s = ReadSlowfsStats(m->mnt());
  EXPECT_GT(s["reads"], 0u);
  EXPECT_GT(s["read_bytes"], 0u);
  EXPECT_GT(s["lookups"], 0u);
  EXPECT_GT(s["opens"], 0u);
  ASSERT_EQ(setxattr(m->mnt().c_str(), kReset, "1", 1, 0), 0) << std::strerror(errno);
  for (const auto& [name, value] : ReadSlowfsStats(m->mnt())) EXPECT_EQ(value, 0u) << name;
  // The documented command line gives the same single line. (Its stat of
  // the root may cost a getattr: the setxattr changed the root's ctime.)
  CommandResult r =
      RunCommand("getfattr --absolute-names --only-values -n user.slowfs.stats '" + m->mnt() + "'");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, SlowfsStatsLine(m->mnt()));
  EXPECT_EQ(r.output.rfind("reads=0 read_bytes=0 writes=0 write_bytes=0 lookups=0 getattrs=", 0),
            0u)
      << r.output;
}

TEST(SlowfsStats, OtherXattrsPassThrough) {
  auto m = MountedSlowfs::Start(kQuietKernel);
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(setxattr(m->src().c_str(), "user.color", "blue", 4, 0), 0) << std::strerror(errno);
  WriteFile(m->src() + "/f", "x");
  char buf[512];
  ssize_t n = getxattr(m->mnt().c_str(), "user.color", buf, sizeof(buf));
  EXPECT_EQ(std::string(buf, static_cast<size_t>(std::max<ssize_t>(n, 0))), "blue");
  // The stats name exists on the root only, and never in SOURCE.
  errno = 0;
  EXPECT_EQ(getxattr((m->mnt() + "/f").c_str(), kStats, buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(getxattr(m->src().c_str(), kStats, buf, sizeof(buf)), -1);
  // A size query announces enough room for the value.
  ssize_t announced = getxattr(m->mnt().c_str(), kStats, nullptr, 0);
  ssize_t actual = getxattr(m->mnt().c_str(), kStats, buf, sizeof(buf));
  EXPECT_GT(actual, 0);
  EXPECT_GE(announced, actual);
  // The root lists SOURCE's names and the stats name.
  n = listxattr(m->mnt().c_str(), buf, sizeof(buf));
  ASSERT_GT(n, 0) << std::strerror(errno);
  std::vector<std::string> names;
  for (const char* p = buf; p < buf + n; p += std::strlen(p) + 1) names.emplace_back(p);
  EXPECT_NE(std::find(names.begin(), names.end(), "user.color"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), kStats), names.end());
  EXPECT_EQ(listxattr(m->mnt().c_str(), nullptr, 0), n);
}

TEST(SlowfsDelay, LatencyDelaysASingleRead) {
  std::vector<std::string> args = kQuietKernel;
  args.insert(args.end(), {"-o", "latency_us=20000"});
  auto m = MountedSlowfs::Start(args);
  ASSERT_NE(m, nullptr);
  const std::string data = Pattern(4096, 3);
  WriteFile(m->src() + "/small", data);
  int fd = OpenUncached(m->mnt() + "/small");
  ASSERT_GE(fd, 0);
  Stats before = ReadSlowfsStats(m->mnt());
  std::string got(4096, '\0');
  auto start = Clock::now();
  ssize_t n = pread(fd, got.data(), got.size(), 0);
  auto elapsed = Clock::now() - start;
  close(fd);
  EXPECT_EQ(n, 4096);
  EXPECT_TRUE(got == data);
  EXPECT_GE(elapsed, milliseconds(20));
  // ...and the time went to the one read request, nothing else.
  Stats d = SlowfsDelta(before, ReadSlowfsStats(m->mnt()));
  EXPECT_EQ(d["reads"], 1u);
  EXPECT_EQ(d["getattrs"], 0u);
  EXPECT_EQ(d["lookups"], 0u);
}

// Two readers at once share one 1 MiB/s link: 2 x 128 KiB take 250 ms, where
// two independent links would take 125 ms.
TEST(SlowfsDelay, BandwidthIsOneSharedLink) {
  std::vector<std::string> args = kQuietKernel;
  args.insert(args.end(), {"-o", "bandwidth=1M"});
  auto m = MountedSlowfs::Start(args);
  ASSERT_NE(m, nullptr);
  const std::string a = Pattern(128 << 10, 1);
  const std::string b = Pattern(128 << 10, 2);
  WriteFile(m->src() + "/a", a);
  WriteFile(m->src() + "/b", b);
  int fa = OpenUncached(m->mnt() + "/a");
  int fb = OpenUncached(m->mnt() + "/b");
  ASSERT_GE(fa, 0);
  ASSERT_GE(fb, 0);
  Stats before = ReadSlowfsStats(m->mnt());
  std::string got_a(a.size(), '\0');
  std::string got_b(b.size(), '\0');
  ssize_t na = 0;
  ssize_t nb = 0;
  auto start = Clock::now();
  std::thread ta([&] { na = pread(fa, got_a.data(), got_a.size(), 0); });
  std::thread tb([&] { nb = pread(fb, got_b.data(), got_b.size(), 0); });
  ta.join();
  tb.join();
  auto elapsed = Clock::now() - start;
  close(fa);
  close(fb);
  EXPECT_EQ(na, static_cast<ssize_t>(a.size()));
  EXPECT_EQ(nb, static_cast<ssize_t>(b.size()));
  EXPECT_TRUE(got_a == a);
  EXPECT_TRUE(got_b == b);
  EXPECT_EQ(SlowfsDelta(before, ReadSlowfsStats(m->mnt()))["read_bytes"], 256u << 10);
  EXPECT_GE(elapsed, milliseconds(250));
}

TEST(SlowfsCli, BadArgumentsFailInOneLineAndMountNothing) {
  std::string dir = MakeTempDir("slowfs-cli");
  ASSERT_FALSE(dir.empty());
  mkdir((dir + "/src").c_str(), 0755);
  mkdir((dir + "/mnt").c_str(), 0755);
  // Should slowfs mount after all, timeout ends it (and the test fails).
  const std::string bin = "timeout 10 '" + SlowfsBinary() + "'";
  const std::string src = " '" + dir + "/src'";
  const std::string mnt = " '" + dir + "/mnt'";
  const std::string paths = src + mnt;
  struct Case {
    std::string args;
    int exit_code;
    std::string mentions;
  };
  const std::vector<Case> cases = {
      {paths + " -o bogus=1", 2, "bogus"},
      {paths + " -o latency_us=abc", 2, "latency_us"},
      {paths + " -o bandwidth=12Q", 2, "bandwidth"},
      {paths + " -o ro=1", 2, "ro"},
      {src, 2, "MOUNTPOINT"},
      {" '" + dir + "/missing'" + mnt, 1, "missing"},
  };
  for (const Case& c : cases) {
    CommandResult r = RunCommand(bin + c.args);
    EXPECT_EQ(r.exit_code, c.exit_code) << c.args << ": " << r.output;
    EXPECT_EQ(r.output.rfind("slowfs: ", 0), 0u) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_NE(r.output.find(c.mentions), std::string::npos) << r.output;
    EXPECT_FALSE(IsMountPoint(dir + "/mnt"));
  }
  RemoveTree(dir);
}

}  // namespace
}  // namespace cachefs::testing
