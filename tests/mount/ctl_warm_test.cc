// cachefsctl warm, evict, pin, unpin and conflicts against a live mount:
// what each does to the cache (through the stats counters and O_DIRECT
// reads that reach the daemon) and to SOURCE, and how bad arguments fail.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "common/json.h"
#include "tests/mount/ctl_util.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kBlock = kCtlBlock;

JsonValue StatsOf(const std::string& mnt) {
  JsonValue doc = ParseOut(RunCtl({"stats", "--json", mnt}));
  const JsonValue* s = doc.Find("stats");
  return s != nullptr ? *s : JsonValue::MakeObject();
}

uint64_t Stat(const std::string& mnt, const char* key) { return Uint(StatsOf(mnt), key); }

// Waits until the daemon of `mnt` answers (after a remount).
bool WaitForControl(const std::string& mnt) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (RunCtl({"stats", "--json", mnt}).exit_code != 0) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// One raw request line to the daemon's socket; its reply line.
std::string RawAsk(const std::string& socket_path, const std::string& line) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return "connect: " + std::string(std::strerror(errno));
  }
  const std::string req = line + "\n";
  EXPECT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string reply;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) reply.append(buf, static_cast<size_t>(n));
  close(fd);
  return reply;
}

std::string Pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + (i * 7 + i / 4096) % 23);
  return s;
}

std::vector<std::string> Names(const std::string& dir) {
  std::vector<std::string> names;
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return names;
  while (dirent* e = readdir(d)) names.emplace_back(e->d_name);
  closedir(d);
  return names;
}

TEST_F(CtlTest, WarmMakesLaterReadsHits) {
  ASSERT_TRUE(Mount({"--readahead=0"}));
  constexpr size_t kBlocks = 8;
  WriteFile(src() + "/f", Pattern(kBlocks * kBlock, 'a'));
  CtlResult r = RunCtl({"warm", mnt() + "/f"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("warm: 1 file, 512.0 KiB: 512.0 KiB fetched, 0 blocks already cached"),
            std::string::npos)
      << r.out;
  JsonValue s0 = StatsOf(mnt());
  EXPECT_EQ(Uint(s0, "warmed"), kBlocks) << s0.Serialize();
  EXPECT_EQ(Uint(s0, "blocks_cached"), kBlocks);
  EXPECT_EQ(Uint(s0, "read_misses"), 0u) << "warm is no read miss";

  ReadDirect(mnt() + "/f", kBlocks * kBlock);
  JsonValue s1 = StatsOf(mnt());
  EXPECT_EQ(Uint(s1, "read_misses"), 0u) << s1.Serialize();
  EXPECT_EQ(Uint(s1, "read_hits"), kBlocks);
  EXPECT_EQ(ReadFile(mnt() + "/f"), Pattern(kBlocks * kBlock, 'a'));

  // Again: everything is there, nothing is fetched.
  r = RunCtl({"warm", mnt() + "/f"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("0 B fetched, 8 blocks already cached"), std::string::npos) << r.out;
  EXPECT_EQ(Stat(mnt(), "warmed"), kBlocks);
}

TEST_F(CtlTest, WarmOfATreeThenEvict) {
  ASSERT_TRUE(Mount({"--readahead=0"}));
  ASSERT_EQ(mkdir((src() + "/d").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((src() + "/d/sub").c_str(), 0755), 0);
  WriteFile(src() + "/d/a", Pattern(3 * kBlock, 'b'));
  WriteFile(src() + "/d/sub/b", Pattern(2 * kBlock, 'c'));
  WriteFile(src() + "/outside", Pattern(5 * kBlock, 'd'));
  ASSERT_EQ(symlink("../outside", (src() + "/d/link").c_str()), 0);
  ASSERT_EQ(mkfifo((src() + "/d/fifo").c_str(), 0644), 0);

  CtlResult r = RunCtl({"warm", mnt() + "/d"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("warm: 2 files, 320.0 KiB"), std::string::npos) << r.out;
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 5u) << "the symlink and the fifo are skipped";

  // The mount root warms everything, the cached blocks are skipped.
  r = RunCtl({"warm", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("warm: 3 files, 640.0 KiB: 320.0 KiB fetched, 5 blocks already cached"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 10u);

  r = RunCtl({"evict", mnt() + "/d/sub"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "evict: 2 blocks (128.0 KiB) dropped from 1 file\n");
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 8u);
  JsonValue s0 = StatsOf(mnt());
  ReadDirect(mnt() + "/d/sub/b", 2 * kBlock);
  ReadDirect(mnt() + "/d/a", 3 * kBlock);
  JsonValue s1 = StatsOf(mnt());
  EXPECT_EQ(Uint(s1, "read_misses") - Uint(s0, "read_misses"), 2u) << "b is fetched again";
  EXPECT_EQ(Uint(s1, "read_hits") - Uint(s0, "read_hits"), 3u) << "a stays cached";

  r = RunCtl({"evict", "--all", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 0u);
  EXPECT_EQ(ReadFile(mnt() + "/d/a"), Pattern(3 * kBlock, 'b'));
}

TEST_F(CtlTest, WarmEvictPinRefuseBadArguments) {
  ASSERT_TRUE(Mount());
  WriteFile(src() + "/f", "data");
  ExpectOneLineError(RunCtl({"warm"}), "paths", 2);
  ExpectOneLineError(RunCtl({"pin"}), "paths", 2);
  ExpectOneLineError(RunCtl({"evict"}), "evict needs PATH", 2);
  ExpectOneLineError(RunCtl({"evict", "--all", mnt(), mnt()}), "at most one PATH", 2);
  ExpectOneLineError(RunCtl({"warm", mnt() + "/missing"}), "No such file", 1);
  // Outside the mount: SOURCE itself, and a symlink in the mount leading out.
  ExpectOneLineError(RunCtl({"warm", src() + "/f"}), "is not on a cachefs mount", 1);
  ASSERT_EQ(symlink(src().c_str(), (src() + "/out").c_str()), 0);
  ExpectOneLineError(RunCtl({"warm", mnt() + "/out"}), "is not on a cachefs mount", 1);
  ExpectOneLineError(RunCtl({"pin", src() + "/f"}), "is not on a cachefs mount", 1);
  ExpectOneLineError(
      RunCtl({"conflicts", "--keep-ours", mnt() + "/f", "--keep-theirs", mnt() + "/f"}), "excludes",
      2);
  ExpectOneLineError(RunCtl({"conflicts", "--keep-ours", mnt() + "/f"}), "is not in conflict", 1);
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 0u);

  // The daemon itself takes only canonical paths relative to SOURCE and
  // follows no symlink, whoever asks.
  ASSERT_EQ(symlink("/etc/passwd", (src() + "/pw").c_str()), 0);
  EXPECT_NE(RawAsk(socket_, R"({"cmd":"warm","path":"/etc/passwd"})")
                .find("is not a path relative to SOURCE"),
            std::string::npos);
  EXPECT_NE(RawAsk(socket_, R"({"cmd":"warm","path":"../etc/passwd"})").find("canonical"),
            std::string::npos);
  EXPECT_NE(RawAsk(socket_, R"({"cmd":"pin","path":"pw"})").find("symlink"), std::string::npos);
  EXPECT_NE(RawAsk(socket_, R"({"cmd":"warm","path":"out/f"})").find("symlink"), std::string::npos);
  EXPECT_NE(RawAsk(socket_, R"({"cmd":"resolve","path":"f","action":"merge"})").find("action"),
            std::string::npos);
  EXPECT_EQ(Stat(mnt(), "blocks_cached"), 0u);
}

TEST_F(CtlTest, PinnedBlocksSurviveScansAndRemounts) {
  // 16 slots, LRU (no admission filter), no readahead: counts are exact.
  const std::vector<std::string> opts = {"--cache_size=1M", "--policy=lru", "--readahead=0"};
  ASSERT_TRUE(Mount(opts));
  WriteFile(src() + "/p", Pattern(4 * kBlock, 'p'));
  WriteFile(src() + "/q", Pattern(4 * kBlock, 'q'));
  WriteFile(src() + "/big", Pattern(32 * kBlock, 'g'));
  CtlResult r = RunCtl({"pin", "--warm", mnt() + "/p"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("pin: 1 file pinned (0 already were), 0 blocks of them cached\n"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(Stat(mnt(), "blocks_pinned"), 4u);
  ReadDirect(mnt() + "/q", 4 * kBlock);  // cached, not pinned

  // A scan twice the cache's size: q goes, p stays.
  ReadDirect(mnt() + "/big", 32 * kBlock);
  JsonValue s0 = StatsOf(mnt());
  ReadDirect(mnt() + "/p", 4 * kBlock);
  ReadDirect(mnt() + "/q", 4 * kBlock);
  JsonValue s1 = StatsOf(mnt());
  EXPECT_EQ(Uint(s1, "read_misses") - Uint(s0, "read_misses"), 4u) << "q only";
  EXPECT_EQ(Uint(s1, "blocks_pinned"), 4u);
  // Evict leaves a pinned file alone.
  r = RunCtl({"evict", mnt() + "/p"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("1 pinned file kept (4 blocks; unpin first)"), std::string::npos) << r.out;

  // The pin is in the metadata: a remount keeps it, recovery does not let
  // the policy track the pinned blocks.
  const std::string base = cachefs_->base();
  ASSERT_EQ(cachefs_->Unmount(), 0);
  std::vector<std::string> args = {"-f", "--cache=" + base + "/cache"};
  args.insert(args.end(), opts.begin(), opts.end());
  auto again = MountedCachefs::StartAt(base + "/src", base + "/mnt", args);
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(WaitForControl(base + "/mnt"));
  const std::string m = base + "/mnt";
  EXPECT_EQ(Stat(m, "blocks_pinned"), 4u);
  ReadDirect(m + "/big", 32 * kBlock);
  s0 = StatsOf(m);
  ReadDirect(m + "/p", 4 * kBlock);
  s1 = StatsOf(m);
  EXPECT_EQ(Uint(s1, "read_misses"), Uint(s0, "read_misses")) << "p survived the scan";

  // Unpinned, p is an ordinary file again: the next scan evicts it.
  r = RunCtl({"unpin", m});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "unpin: 1 file unpinned, 4 cached blocks of them may be evicted again\n");
  EXPECT_EQ(Stat(m, "blocks_pinned"), 0u);
  ReadDirect(m + "/big", 32 * kBlock);
  s0 = StatsOf(m);
  ReadDirect(m + "/p", 4 * kBlock);
  s1 = StatsOf(m);
  EXPECT_EQ(Uint(s1, "read_misses") - Uint(s0, "read_misses"), 4u);
  EXPECT_EQ(again->Unmount(), 0);
}

TEST_F(CtlTest, WarmStopsWhenTheCacheIsFullOfPinnedData) {
  ASSERT_TRUE(Mount({"--cache_size=1M", "--readahead=0"}));
  WriteFile(src() + "/huge", Pattern(20 * kBlock, 'h'));
  ASSERT_EQ(RunCtl({"pin", mnt() + "/huge"}).exit_code, 0);
  ExpectOneLineError(RunCtl({"warm", mnt() + "/huge"}), "the cache is full of pinned or dirty data",
                     1);
  EXPECT_EQ(Stat(mnt(), "blocks_pinned"), 16u);
  EXPECT_EQ(ReadFile(mnt() + "/huge"), Pattern(20 * kBlock, 'h')) << "the rest is read uncached";
}

// Three files in conflict: written through a writeback mount, then changed
// in SOURCE, then a flush finds the change.
class CtlConflictTest : public CtlTest {
 protected:
  void SetUp() override {
    ASSERT_TRUE(Mount({"--mode=writeback", "--writeback_delay=3600"}));
    for (const char* name : {"f", "g", "h"}) {
      WriteFile(mnt() + "/" + name, ours_);
      WriteFile(src() + "/" + name, theirs_);
    }
    CtlResult r = RunCtl({"flush", "--wait", mnt()});
    ASSERT_EQ(r.exit_code, 1) << Describe(r);
    ASSERT_NE(r.err.find("conflict"), std::string::npos) << Describe(r);
  }

  const std::string ours_ = Pattern(kBlock + 5000, 'o');
  const std::string theirs_ = "changed in SOURCE meanwhile\n";
};

TEST_F(CtlConflictTest, ListAndResolveEachWay) {
  JsonValue doc = ParseOut(RunCtl({"conflicts", "--json", mnt()}));
  const JsonValue* list = doc.Find("conflicts");
  ASSERT_TRUE(list != nullptr && list->is_array()) << doc.Serialize();
  ASSERT_EQ(list->items().size(), 3u) << doc.Serialize();
  const JsonValue& f = list->items()[0];
  EXPECT_EQ(Str(f, "path"), "f");
  EXPECT_EQ(Uint(f, "dirty_blocks"), 2u);
  EXPECT_EQ(Uint(f, "dirty_bytes"), 18u * 4096) << "every sub-block written, from offset 0";
  EXPECT_EQ(Uint(f, "size"), ours_.size());
  EXPECT_EQ(Uint(f, "source_size"), theirs_.size());
  CtlResult r = RunCtl({"conflicts", mnt() + "/g"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find(mnt() + "/g "), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(mnt() + "/f "), std::string::npos) << "only at or below PATH: " << r.out;

  r = RunCtl({"conflicts", "--keep-ours", mnt() + "/f"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "conflicts: " + mnt() + "/f: kept ours (72.0 KiB of our data written over " +
                       "SOURCE's change)\n");
  EXPECT_EQ(ReadFile(src() + "/f"), ours_);

  r = RunCtl({"conflicts", "--keep-theirs", mnt() + "/g"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(ReadFile(src() + "/g"), theirs_);
  EXPECT_EQ(ReadFile(mnt() + "/g"), theirs_);

  r = RunCtl({"conflicts", "--save-ours", mnt() + "/h"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(ReadFile(src() + "/h"), theirs_);
  std::string saved;
  for (const std::string& n : Names(src())) {
    if (n.rfind("h.cachefs-ours-", 0) == 0) saved = n;
  }
  ASSERT_FALSE(saved.empty()) << r.out;
  EXPECT_NE(r.out.find("ours saved in SOURCE as " + saved), std::string::npos) << r.out;
  EXPECT_EQ(ReadFile(src() + "/" + saved), ours_);
  EXPECT_EQ(ReadFile(mnt() + "/h"), theirs_);

  r = RunCtl({"conflicts", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "no files in conflict\n");
  EXPECT_EQ(Stat(mnt(), "blocks_dirty"), 0u);
  // Resolved means settled: a flush has nothing left to refuse.
  r = RunCtl({"flush", "--wait", mnt()});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(ReadFile(src() + "/f"), ours_);
  EXPECT_EQ(ReadFile(src() + "/g"), theirs_);
}

}  // namespace
}  // namespace cachefs::testing
