// cachefsctl changing a live mount: set (live tunables, the policy), mode
// (switching while writes go on), and the cleaner policy draining dirty data.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
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

// `stats --json`'s "stats" object.
JsonValue StatsOf(const std::string& mnt) {
  JsonValue doc = ParseOut(RunCtl({"stats", "--json", mnt}));
  const JsonValue* s = doc.Find("stats");
  return s != nullptr ? *s : JsonValue::MakeObject();
}

std::string GetOption(const std::string& mnt, const std::string& key) {
  CtlResult r = RunCtl({"get", key, mnt});
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  return r.out;
}

std::string ModeOf(const std::string& mnt) {
  JsonValue doc = ParseOut(RunCtl({"stats", "--json", mnt}));
  const JsonValue* m = doc.Find("mount");
  return m != nullptr ? Str(*m, "mode") : "";
}

// "" when `got` is `want`; else where and how they differ.
std::string FirstDifference(const std::string& got, const std::string& want) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  size_t j = i;
  while (j < got.size() && j < want.size() && got[j] != want[j]) ++j;
  return "sizes " + std::to_string(got.size()) + " and " + std::to_string(want.size()) +
         ", first difference at byte " + std::to_string(i) + " for " + std::to_string(j - i) +
         " bytes: got '" + got.substr(i, 16) + "' want '" + want.substr(i, 16) + "'";
}

TEST_F(CtlTest, SetChangesLiveTunablesAndRefusesTheOthers) {
  ASSERT_TRUE(Mount());
  CtlResult r = RunCtl({"set", "readahead", "256K", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "readahead 256K\n");
  EXPECT_EQ(GetOption(mnt(), "readahead"), "readahead 256K\n");
  r = RunCtl({"set", "commit_interval", "250", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(GetOption(mnt(), "commit_interval"), "commit_interval 250\n");
  r = RunCtl({"set", "verify", "off", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(GetOption(mnt(), "verify"), "verify off\n");

  ExpectOneLineError(RunCtl({"set", "block_size", "1M", mnt()}),
                     "option 'block_size' cannot change while mounted", 1);
  ExpectOneLineError(RunCtl({"set", "readahead", "lots", mnt()}), "option 'readahead'", 1);
  ExpectOneLineError(RunCtl({"set", "policy", "fifo", mnt()}), "fifo", 1);
  ExpectOneLineError(RunCtl({"set", "frobs", "1", mnt()}), "unknown option 'frobs'", 1);
  ExpectOneLineError(RunCtl({"set", "readahead"}), "args", 2);
  // A refused change leaves the value as it was.
  EXPECT_EQ(GetOption(mnt(), "readahead"), "readahead 256K\n");
}

TEST_F(CtlTest, PolicySwitchKeepsTheCachedBlocks) {
  ASSERT_TRUE(Mount({"--readahead=0"}));
  constexpr size_t kBlocks = 8;
  WriteFile(src() + "/f", std::string(kBlocks * kBlock, 'p'));
  ReadDirect(mnt() + "/f", kBlocks * kBlock);
  ReadDirect(mnt() + "/f", kBlocks * kBlock);  // smq admits on the second miss at most
  JsonValue before = StatsOf(mnt());
  ASSERT_EQ(Uint(before, "blocks_cached"), kBlocks) << before.Serialize();

  for (const char* policy : {"lru", "cleaner", "smq"}) {
    CtlResult r = RunCtl({"set", "policy", policy, mnt()});
    ASSERT_EQ(r.exit_code, 0) << Describe(r);
    EXPECT_EQ(GetOption(mnt(), "policy"), std::string("policy ") + policy + "\n");
    JsonValue s0 = StatsOf(mnt());
    ReadDirect(mnt() + "/f", kBlocks * kBlock);
    JsonValue s1 = StatsOf(mnt());
    EXPECT_EQ(Uint(s1, "blocks_cached"), kBlocks) << policy << ": " << s1.Serialize();
    EXPECT_EQ(Uint(s1, "read_hits") - Uint(s0, "read_hits"), kBlocks) << policy;
    EXPECT_EQ(Uint(s1, "read_misses"), Uint(s0, "read_misses")) << policy;
  }
}

TEST_F(CtlTest, CleanerPolicyDrainsDirtyData) {
  // The writer would wait an hour; the cleaner policy does not.
  ASSERT_TRUE(Mount({"--mode=writeback", "--writeback_delay=3600"}));
  const std::string data(5 * kBlock + 77, 'c');
  WriteFile(mnt() + "/f", data);
  EXPECT_EQ(Uint(StatsOf(mnt()), "blocks_dirty"), 6u);
  CtlResult r = RunCtl({"set", "policy", "cleaner", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  auto deadline = Clock::now() + std::chrono::seconds(20);
  while (Uint(StatsOf(mnt()), "blocks_dirty") != 0 && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(Uint(StatsOf(mnt()), "blocks_dirty"), 0u);
  EXPECT_EQ(ReadFile(src() + "/f"), data);
}

TEST_F(CtlTest, ModeSwitchesAtRuntimeAndPersists) {
  ASSERT_TRUE(Mount({"--writeback_delay=3600"}));
  EXPECT_EQ(ModeOf(mnt()), "writethrough");
  CtlResult r = RunCtl({"mode", "writeback", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_EQ(r.out, "mode: writethrough -> writeback\n");
  EXPECT_EQ(ModeOf(mnt()), "writeback");
  const std::string data(3 * kBlock, 'm');
  WriteFile(mnt() + "/f", data);
  EXPECT_EQ(ReadFile(src() + "/f"), "") << "writeback: not on SOURCE yet";
  EXPECT_EQ(Uint(StatsOf(mnt()), "blocks_dirty"), 3u);

  // Leaving writeback writes everything back first.
  r = RunCtl({"mode", "writethrough", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  EXPECT_NE(r.out.find("mode: writeback -> writethrough\n"), std::string::npos) << r.out;
  EXPECT_EQ(ReadFile(src() + "/f"), data);
  EXPECT_EQ(Uint(StatsOf(mnt()), "blocks_dirty"), 0u);
  WriteFile(mnt() + "/g", "through");
  EXPECT_EQ(ReadFile(src() + "/g"), "through") << "writethrough: on SOURCE at once";

  r = RunCtl({"mode", "readonly", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  int fd = open((mnt() + "/g").c_str(), O_WRONLY);
  EXPECT_TRUE(fd < 0 || write(fd, "x", 1) < 0);
  EXPECT_EQ(errno, EROFS);
  if (fd >= 0) close(fd);

  ExpectOneLineError(RunCtl({"mode", "sideways", mnt()}), "sideways", 1);
  ExpectOneLineError(RunCtl({"mode", "cow", mnt()}), "cow", 1);

  // The mode is the cache's: a later mount without mode= keeps it.
  r = RunCtl({"mode", "writearound", mnt()});
  ASSERT_EQ(r.exit_code, 0) << Describe(r);
  const std::string base = cachefs_->base();
  ASSERT_EQ(cachefs_->Unmount(), 0);
  auto again =
      MountedCachefs::StartAt(base + "/src", base + "/mnt", {"-f", "--cache=" + base + "/cache"});
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ModeOf(base + "/mnt"), "writearound");
  again->Unmount();
}

// Writers append numbered records (unaligned: they straddle sub-blocks and
// blocks, and the kernel splits some at page boundaries) while cachefsctl
// runs `actions` (a mode to switch to, or "flush"): no record is lost or
// doubled, and SOURCE holds all of them once the last action (a mode other
// than writeback) has written everything back.
void AppendWhile(const std::string& mnt, const std::string& src,
                 const std::vector<std::string>& actions) {
  constexpr int kWriters = 3;
  constexpr int kMaxRecords = 4000;
  constexpr size_t kRecord = 6000;
  auto record = [](int i) {
    std::string rec(kRecord, static_cast<char>('a' + (i % 26)));
    rec.replace(0, 8, std::to_string(10000000 + i));
    return rec;
  };
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  std::vector<int> written(kWriters, 0);
  std::vector<std::string> errors(kWriters);
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      const std::string path = mnt + "/w" + std::to_string(w);
      int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd < 0) {
        errors[w] = std::strerror(errno);
        return;
      }
      for (int i = 0; i < kMaxRecords && (!stop || i < 50); ++i) {
        const std::string rec = record(i);
        if (pwrite(fd, rec.data(), rec.size(), static_cast<off_t>(i * kRecord)) !=
            static_cast<ssize_t>(rec.size())) {
          errors[w] = "record " + std::to_string(i) + ": " + std::strerror(errno);
          break;
        }
        written[w] = i + 1;
      }
      close(fd);
    });
  }
  for (const std::string& action : actions) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    CtlResult r =
        action == "flush" ? RunCtl({"flush", "--wait", mnt}) : RunCtl({"mode", action, mnt});
    EXPECT_EQ(r.exit_code, 0) << action << ": " << Describe(r);
  }
  stop = true;
  for (auto& th : writers) th.join();
  EXPECT_EQ(ModeOf(mnt), actions.back());
  for (int w = 0; w < kWriters; ++w) {
    EXPECT_EQ(errors[w], "") << "writer " << w;
    std::string expect;
    for (int i = 0; i < written[w]; ++i) expect += record(i);
    const std::string name = "/w" + std::to_string(w);
    EXPECT_EQ(FirstDifference(ReadFile(mnt + name), expect), "") << "through the mount: " << name;
    EXPECT_EQ(FirstDifference(ReadFile(src + name), expect), "") << "on SOURCE: " << name;
  }
}

TEST_F(CtlTest, ModeSwitchWhileWritingLosesNothing) {
  ASSERT_TRUE(Mount({"--writeback_delay=3600"}));
  AppendWhile(
      mnt(), src(),
      {"writeback", "writethrough", "writeback", "writearound", "writeback", "writethrough"});
}

// The writer puts a file on SOURCE while it grows: a write of part of a
// sub-block whose block was just written back (and maybe evicted) must take
// the rest from SOURCE, not zeros.
TEST_F(CtlTest, FlushesWhileAppendingLoseNothing) {
  ASSERT_TRUE(Mount({"--mode=writeback", "--writeback_delay=3600"}));
  AppendWhile(mnt(), src(), {"flush", "flush", "flush", "flush", "flush", "flush", "writethrough"});
}

// The same with a cache far smaller than what is written and the writer
// held off: writes that find the cache full go through to SOURCE (counted),
// none fails, and leaving writeback shows every record.
TEST_F(CtlTest, FullCacheWhileAppendingLosesNothing) {
  ASSERT_TRUE(Mount({"--mode=writeback", "--writeback_delay=3600", "--cache_size=2M"}));
  AppendWhile(mnt(), src(), {"writeback", "flush", "writeback", "writethrough"});
  JsonValue doc = ParseOut(RunCtl({"stats", "--json", mnt()}));
  const JsonValue* stats = doc.Find("stats");
  ASSERT_NE(stats, nullptr);
  EXPECT_GT(Uint(*stats, "write_through_fallbacks"), 0u);
}

}  // namespace
}  // namespace cachefs::testing
