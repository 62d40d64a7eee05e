// cachefsctl against live mounts: the control socket's life and
// permissions, list, stats (table, JSON, Prometheus, watch), get, and the
// one-line errors of bad use.
//
// The cachefsctl binary is the one next to the cachefs under test (or
// $CACHEFSCTL_BIN). Every command names its mount by path, as other mounts
// (other tests, other people) may be up at the same time.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <regex>
#include <sstream>
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

TEST_F(CtlTest, SocketIsTheOwnersAndGoesAwayAtUnmount) {
  ASSERT_TRUE(Mount());
  struct stat st;
  ASSERT_EQ(lstat(socket_.c_str(), &st), 0) << socket_;
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, getuid());
  struct stat dir;
  ASSERT_EQ(stat("/run/cachefs", &dir), 0);
  EXPECT_EQ(dir.st_mode & 07777, 0755u);
  int status = cachefs_->Unmount();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_NE(lstat(socket_.c_str(), &st), 0) << socket_ << " outlived the mount";
  EXPECT_EQ(errno, ENOENT);
  ExpectOneLineError(RunCtl({"stats", mnt()}), "is not on a cachefs mount", 1);
}

TEST_F(CtlTest, ListShowsTheMount) {
  ASSERT_TRUE(Mount());
  CtlResult r = RunCtl({"list"});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.err, "");
  EXPECT_EQ(r.out.rfind("MOUNT ", 0), 0u) << r.out;
  std::regex row("\n" + mnt() + " +" + src() + " +" + cachefs_->base() +
                 "/cache +writethrough +64\\.0 KiB +64\\.0 MiB +running\n");
  EXPECT_TRUE(std::regex_search(r.out, row)) << r.out;

  JsonValue doc = ParseOut(RunCtl({"list", "--json"}));
  EXPECT_EQ(Uint(doc, "version"), 1u);
  const JsonValue* mounts = doc.Find("mounts");
  ASSERT_TRUE(mounts != nullptr && mounts->is_array()) << doc.Serialize();
  int found = 0;
  for (const JsonValue& m : mounts->items()) {
    if (Str(m, "mount_point") != mnt()) continue;
    ++found;
    EXPECT_EQ(Str(m, "source"), src());
    EXPECT_EQ(Str(m, "cache_dir"), cachefs_->base() + "/cache");
    EXPECT_EQ(Str(m, "mode"), "writethrough");
    EXPECT_EQ(Str(m, "state"), "running");
    EXPECT_EQ(Uint(m, "block_size"), kBlock);
    EXPECT_EQ(Uint(m, "cache_size"), 64u << 20);
    EXPECT_EQ(Uint(m, "pid"), static_cast<uint64_t>(cachefs_->daemon_pid()));
  }
  EXPECT_EQ(found, 1) << doc.Serialize();
}

TEST_F(CtlTest, StatsCountTheBlocksOfAFileReadTwice) {
  // Without readahead, each block is fetched by the read that asks for it.
  ASSERT_TRUE(Mount({"--readahead=0"}));
  constexpr size_t kBlocks = 8;
  WriteFile(src() + "/f", std::string(kBlocks * kBlock, 'x'));

  JsonValue before = ParseOut(RunCtl({"stats", "--json", mnt()}));
  EXPECT_EQ(Uint(before, "version"), 1u);
  EXPECT_EQ(before.Find("ok"), nullptr) << "the envelope is not part of the output";
  const JsonValue* mount = before.Find("mount");
  ASSERT_NE(mount, nullptr);
  EXPECT_EQ(Str(*mount, "mount_point"), mnt());
  EXPECT_EQ(Str(*mount, "source"), src());
  EXPECT_EQ(Uint(*mount, "block_size"), kBlock);
  const JsonValue* s0 = before.Find("stats");
  ASSERT_NE(s0, nullptr);
  EXPECT_EQ(Uint(*s0, "read_hits"), 0u);
  EXPECT_EQ(Uint(*s0, "read_misses"), 0u);
  EXPECT_EQ(Uint(*s0, "slots"), (64u << 20) / kBlock);
  EXPECT_TRUE(s0->Find("read_hit_ratio") != nullptr && s0->Find("read_hit_ratio")->is_null());

  ReadDirect(mnt() + "/f", kBlocks * kBlock);
  ReadDirect(mnt() + "/f", kBlocks * kBlock);

  // Any path inside the mount finds it.
  JsonValue after = ParseOut(RunCtl({"stats", "--json", mnt() + "/f"}));
  const JsonValue* s = after.Find("stats");
  ASSERT_NE(s, nullptr) << after.Serialize();
  EXPECT_EQ(Uint(*s, "read_misses"), kBlocks) << s->Serialize();
  EXPECT_EQ(Uint(*s, "read_hits"), kBlocks) << s->Serialize();
  EXPECT_EQ(Uint(*s, "bytes_from_source"), kBlocks * kBlock);
  EXPECT_EQ(Uint(*s, "bytes_from_cache"), kBlocks * kBlock);
  EXPECT_EQ(Uint(*s, "blocks_cached"), kBlocks);
  EXPECT_EQ(Uint(*s, "crc_errors"), 0u);
  EXPECT_EQ(Uint(*s, "evictions"), 0u);
  EXPECT_GT(Uint(*s, "index_memory"), 0u);
  double ratio = 0;
  ASSERT_TRUE(s->Find("read_hit_ratio")->as_double(&ratio));
  EXPECT_DOUBLE_EQ(ratio, 0.5);

  // Every read request was timed, as a hit or as a miss (the kernel may
  // split a request, never merge two O_DIRECT ones).
  for (const char* name : {"read_hit_latency", "read_miss_latency"}) {
    const JsonValue* l = s->Find(name);
    ASSERT_TRUE(l != nullptr && l->is_object()) << name << ": " << s->Serialize();
    EXPECT_GE(Uint(*l, "count"), kBlocks) << name;
    double p50 = 0, p99 = 0;
    ASSERT_TRUE(l->Find("p50_us")->as_double(&p50) && l->Find("p99_us")->as_double(&p99));
    EXPECT_GT(p50, 0) << name;
    EXPECT_LE(p50, p99) << name;
  }
  EXPECT_EQ(Uint(*s->Find("write_latency"), "count"), 0u);
  EXPECT_TRUE(s->Find("write_latency")->Find("p50_us")->is_null());

  // The same numbers in the table; a new cache's totals are this mount's.
  CtlResult table = RunCtl({"stats", mnt()});
  ASSERT_EQ(table.exit_code, 0) << Describe(table);
  EXPECT_TRUE(std::regex_search(table.out, std::regex("\nFIELD +VALUE +TOTAL\n"))) << table.out;
  EXPECT_TRUE(std::regex_search(table.out, std::regex("\nread_hits +8 blocks +8 blocks\n")))
      << table.out;
  EXPECT_TRUE(std::regex_search(table.out, std::regex("\nread_misses +8 blocks +8 blocks\n")))
      << table.out;
  EXPECT_TRUE(std::regex_search(table.out, std::regex("\nread_hit_ratio +50\\.0% +50\\.0%\n")))
      << table.out;
  EXPECT_TRUE(std::regex_search(
      table.out, std::regex("\nread_hit_latency +p50 [0-9.]+ [mu]?s, p99 [0-9.]+ [mu]?s\n")))
      << table.out;
}

// The persistent counters add up across a clean remount; "stats" counts
// since the mount.
TEST_F(CtlTest, TotalsAddUpAcrossARemount) {
  ASSERT_TRUE(Mount({"--readahead=0"}));
  constexpr size_t kBlocks = 4;
  WriteFile(src() + "/f", std::string(kBlocks * kBlock, 'x'));
  ReadDirect(mnt() + "/f", kBlocks * kBlock);
  ReadDirect(mnt() + "/f", kBlocks * kBlock);
  JsonValue first = ParseOut(RunCtl({"stats", "--json", mnt()}));
  const JsonValue* t = first.Find("totals");
  ASSERT_TRUE(t != nullptr && t->is_object()) << first.Serialize();
  EXPECT_EQ(Uint(*t, "read_hits"), kBlocks) << t->Serialize();
  EXPECT_EQ(Uint(*t, "read_misses"), kBlocks);

  const std::string base = cachefs_->base();
  ASSERT_EQ(cachefs_->Unmount(), 0);
  auto again =
      MountedCachefs::StartAt(base + "/src", base + "/mnt",
                              {"--cache=" + base + "/cache", "--block_size=64K", "--readahead=0"});
  ASSERT_NE(again, nullptr);
  ASSERT_TRUE(WaitForSocket(base + "/mnt"));
  JsonValue fresh = ParseOut(RunCtl({"stats", "--json", base + "/mnt"}));
  ASSERT_NE(fresh.Find("stats"), nullptr) << fresh.Serialize();
  EXPECT_EQ(Uint(*fresh.Find("stats"), "read_hits"), 0u) << "since mount";
  EXPECT_EQ(Uint(*fresh.Find("totals"), "read_hits"), kBlocks);

  ReadDirect(base + "/mnt/f", kBlocks * kBlock);  // all hits: the cache kept the blocks
  JsonValue after = ParseOut(RunCtl({"stats", "--json", base + "/mnt"}));
  const JsonValue* s = after.Find("stats");
  t = after.Find("totals");
  ASSERT_TRUE(s != nullptr && t != nullptr) << after.Serialize();
  EXPECT_EQ(Uint(*s, "read_hits"), kBlocks);
  EXPECT_EQ(Uint(*s, "read_misses"), 0u);
  // The first mount's kBlocks misses and kBlocks hits, and these kBlocks hits.
  EXPECT_EQ(Uint(*t, "read_hits"), 2 * kBlocks) << t->Serialize();
  EXPECT_EQ(Uint(*t, "read_misses"), kBlocks);
  EXPECT_EQ(Uint(*t, "bytes_from_cache"), 2 * kBlocks * kBlock);
  EXPECT_EQ(Uint(*t, "bytes_from_source"), kBlocks * kBlock);
  double ratio = 0;
  ASSERT_TRUE(t->Find("read_hit_ratio")->as_double(&ratio));
  EXPECT_DOUBLE_EQ(ratio, 2.0 / 3);
  EXPECT_EQ(again->Unmount(), 0);
}

TEST_F(CtlTest, PrometheusLinesParse) {
  ASSERT_TRUE(Mount());
  WriteFile(src() + "/f", std::string(2 * kBlock, 'y'));
  ReadDirect(mnt() + "/f", 2 * kBlock);
  CtlResult r = RunCtl({"stats", "--prometheus", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.err, "");
  const std::regex comment(R"(# (HELP [a-z_]+ .+|TYPE [a-z_]+ (counter|gauge|summary)))");
  const std::regex sample(
      R"re(([a-z_]+)\{mount="([^"\\]*)"(,[a-z_]+="[^"\\]*")*\} ([0-9.eE+-]+|NaN))re");
  std::istringstream in(r.out);
  std::string line;
  int samples = 0;
  bool misses = false;
  bool lifetime = false;
  int quantiles = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, comment)) continue;
    ASSERT_TRUE(std::regex_match(line, m, sample)) << "not exposition format: " << line;
    EXPECT_EQ(m[1].str().rfind("cachefs_", 0), 0u) << line;
    EXPECT_EQ(m[2].str(), mnt()) << line;
    ++samples;
    if (m[1] == "cachefs_read_misses_total") {
      misses = true;
      EXPECT_EQ(m[4].str(), "2") << line;
    }
    if (m[1] == "cachefs_lifetime_read_misses_total") {
      lifetime = true;
      EXPECT_EQ(m[4].str(), "2") << line;
    }
    if (m[1] == "cachefs_read_miss_latency_seconds") {
      ++quantiles;
      EXPECT_NE(m[4].str(), "NaN") << "two misses were timed: " << line;
    }
  }
  EXPECT_TRUE(lifetime) << r.out;
  EXPECT_EQ(quantiles, 2) << r.out;
  EXPECT_GE(samples, 13) << r.out;
  EXPECT_TRUE(misses) << r.out;
}

TEST_F(CtlTest, WatchRedrawsWithRatesOverTheInterval) {
  ASSERT_TRUE(Mount());
  auto start = Clock::now();
  CtlResult r = RunCtl({"stats", "--watch", "0.2", "--count", "3", mnt()});
  auto took = Clock::now() - start;
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  // The first table has totals only, each later one a column for the interval.
  size_t tables = 0;
  for (size_t at = 0; (at = r.out.find(mnt() + ": source ", at)) != std::string::npos; ++at) {
    ++tables;
  }
  EXPECT_EQ(tables, 3u) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(LAST 0\.[1-9] s\n)"))) << r.out;
  EXPECT_TRUE(std::regex_search(r.out, std::regex(R"(\nread_hits +0 blocks +0 blocks +0\.0/s\n)")))
      << r.out;
  EXPECT_GE(took, std::chrono::milliseconds(400));
  EXPECT_LT(took, std::chrono::seconds(5));
}

TEST_F(CtlTest, GetShowsTheLiveOptions) {
  ASSERT_TRUE(Mount({"--verify=off", "-o", "attr_timeout=2.5,policy=lru"}));
  CtlResult r = RunCtl({"get", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  std::istringstream in(r.out);
  std::string line;
  std::vector<std::string> keys;
  while (std::getline(in, line)) {
    ASSERT_TRUE(std::regex_match(line, std::regex(R"([a-z_]+ [^ ]+)"))) << line;
    keys.push_back(line.substr(0, line.find(' ')));
  }
  EXPECT_EQ(keys, (std::vector<std::string>{
                      "policy", "writeback_threads", "dirty_high", "dirty_low", "writeback_delay",
                      "migration_threshold", "commit_interval", "sequential_threshold",
                      "file_size_limit", "readahead", "verify", "attr_timeout", "entry_timeout",
                      "flush_timeout", "source_timeout"}));
  EXPECT_NE(r.out.find("\nverify off\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("\nattr_timeout 2.5\n"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.rfind("policy lru\n", 0), 0u) << r.out;

  CtlResult one = RunCtl({"get", "verify", mnt()});
  EXPECT_EQ(one.exit_code, 0) << Describe(one);
  EXPECT_EQ(one.out, "verify off\n");
  JsonValue doc = ParseOut(RunCtl({"get", "--json", "attr_timeout", mnt()}));
  EXPECT_EQ(doc.Serialize(), "{\"version\":1,\"mount_point\":\"" + mnt() +
                                 "\",\"options\":{\"attr_timeout\":\"2.5\"}}");
  ExpectOneLineError(RunCtl({"get", "bogus", mnt()}), "'bogus' is not a tunable", 2);
}

TEST_F(CtlTest, OtherUsersAreRefused) {
  ASSERT_TRUE(Mount());
  // Without allow_other the mount itself turns uid 65534 away; the socket
  // (0600) does too.
  CtlResult r = RunCtl({"stats", mnt()}, 65534);
  ExpectOneLineError(r, "permission denied", 1);
  EXPECT_NE(r.err.find(mnt()), std::string::npos) << r.err;
  CtlResult l = RunCtl({"list"}, 65534);
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  EXPECT_TRUE(std::regex_search(l.out, std::regex("\n" + mnt() + " .* permission denied\n")))
      << l.out;
}

TEST_F(CtlTest, OtherUsersAreRefusedWithAllowOther) {
  ASSERT_TRUE(Mount({"-o", "allow_other"}));
  // uid 65534 can reach the path, but not the daemon.
  CtlResult r = RunCtl({"stats", "--json", mnt()}, 65534);
  ExpectOneLineError(r, "permission denied: only the mount's owner (uid 0) or root", 1);
}

TEST_F(CtlTest, DeadDaemonShowsAsNotResponding) {
  ASSERT_TRUE(Mount());
  ASSERT_EQ(kill(cachefs_->daemon_pid(), SIGKILL), 0);
  // The mount stays until cleared (ENOTCONN); so does the socket file.
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (Connectable(socket_) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CtlResult l = RunCtl({"list"});
  EXPECT_EQ(l.exit_code, 0) << Describe(l);
  EXPECT_TRUE(std::regex_search(l.out, std::regex("\n" + mnt() + " .* not responding\n"))) << l.out;
  ExpectOneLineError(RunCtl({"stats", mnt()}), "not responding", 1);
  // The dead daemon's socket: removed while the stale mount still holds
  // the device number, so that it cannot be a new mount's socket yet.
  unlink(socket_.c_str());
  cachefs_->Unmount();
}

TEST(CtlUsage, BadUseGivesOneLine) {
  std::string dir = MakeTempDir("ctl");
  ASSERT_FALSE(dir.empty());
  ExpectOneLineError(RunCtl({"stats", dir}), dir + " is not on a cachefs mount", 1);
  ExpectOneLineError(RunCtl({"stats", dir + "/missing"}), "No such file or directory", 1);
  ExpectOneLineError(RunCtl({"frobnicate"}), "unknown command 'frobnicate'", 2);
  ExpectOneLineError(RunCtl({"stats", "--bogus", dir}), "--bogus", 2);
  ExpectOneLineError(RunCtl({"stats", "--json", "--prometheus", dir}), "excludes", 2);
  ExpectOneLineError(RunCtl({"stats", "--watch", "0", dir}), "--watch", 2);
  ExpectOneLineError(RunCtl({"stats", "--count", "2", dir}), "--count requires --watch", 2);
  ExpectOneLineError(RunCtl({}), "subcommand is required", 2);
  CtlResult help = RunCtl({"--help"});
  EXPECT_EQ(help.exit_code, 0);
  for (const char* word : {"list", "stats", "get", "PATH"}) {
    EXPECT_NE(help.out.find(word), std::string::npos) << help.out;
  }
  RemoveTree(dir);
}

TEST_F(CtlTest, FlushWaitPutsWritebackDataOnTheSlowStore) {
  // The writer would not run on its own for an hour: only the flush does it.
  ASSERT_TRUE(Mount({"--mode=writeback", "--writeback_delay=3600"}));
  const std::string data(3 * kBlock + 123, 'w');
  WriteFile(mnt() + "/f", data);
  struct stat st;
  ASSERT_EQ(stat((src() + "/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 0) << "written back before any flush";
  ASSERT_EQ(stat((mnt() + "/f").c_str(), &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), data.size()) << "the mount shows the cached size";
  JsonValue stats = ParseOut(RunCtl({"stats", "--json", mnt()}));
  const JsonValue* s = stats.Find("stats");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(Uint(*s, "blocks_dirty"), 4u);
  CtlResult r = RunCtl({"flush", "--wait", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("on the slow store"), std::string::npos) << r.out;
  EXPECT_EQ(ReadFile(src() + "/f"), data);
  stats = ParseOut(RunCtl({"stats", "--json", mnt()}));
  EXPECT_EQ(Uint(*stats.Find("stats"), "blocks_dirty"), 0u);
  // Nothing dirty: returns at once.
  r = RunCtl({"flush", "--wait", mnt()});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
}

}  // namespace
}  // namespace cachefs::testing
