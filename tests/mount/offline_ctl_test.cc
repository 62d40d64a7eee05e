// The offline commands of the real cachefsctl binary, `check` and `dump`,
// against the cache of a real mount: refused while it is mounted, clean after
// the unmount, JSON that parses, and one-line errors for bad use. (The cases
// of a damaged cache are unit tests: tests/cache/check_test.cc.)
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

struct CtlResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs cachefsctl with `args`, its stdout and stderr kept apart in files
// under `tmp`.
CtlResult RunCtl(const std::string& tmp, const std::vector<std::string>& args) {
  std::vector<std::string> argv_s = {CachefsctlBinary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  argv.reserve(argv_s.size() + 1);
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out_path = tmp + "/ctl.out";
  const std::string err_path = tmp + "/ctl.err";
  CtlResult r;
  pid_t pid = fork();
  if (pid == 0) {
    int out = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out < 0 || err < 0) _exit(126);
    dup2(out, STDOUT_FILENO);
    dup2(err, STDERR_FILENO);
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = ReadFile(out_path);
  r.err = ReadFile(err_path);
  return r;
}

std::string Describe(const CtlResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "stderr:\n" + r.err;
}

void ExpectOneLineError(const CtlResult& r, const std::string& says, int exit_code) {
  EXPECT_EQ(r.exit_code, exit_code) << Describe(r);
  EXPECT_EQ(r.out, "") << Describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << Describe(r);
  EXPECT_EQ(r.err.rfind("cachefsctl: ", 0), 0u) << Describe(r);
  EXPECT_NE(r.err.find(says), std::string::npos) << Describe(r);
}

JsonValue ParseOut(const CtlResult& r) {
  auto j = ParseJson(r.out);
  EXPECT_TRUE(j.ok()) << j.status().message() << "\n" << Describe(r);
  return j.ok() ? j.value() : JsonValue();
}

TEST(OfflineCtl, CheckAndDumpARealCache) {
  auto m = MountedCachefs::Start({"--block_size=64K", "--mode=writeback"});
  ASSERT_NE(m, nullptr);
  const std::string cache = m->base() + "/cache";
  const std::string data(3 * 65536 + 100, 'x');
  WriteFile(m->src() + "/f", data);
  EXPECT_EQ(ReadFile(m->mnt() + "/f"), data);
  WriteFile(m->mnt() + "/g", "dirty until written back");

  // Mounted: refused, with one line, and nothing printed on stdout.
  ExpectOneLineError(RunCtl(m->base(), {"check", cache}), "is in use by another mount", 8);
  ExpectOneLineError(RunCtl(m->base(), {"dump", cache}), "is in use by another mount", 1);

  ASSERT_EQ(m->Unmount(), 0);
  CtlResult check = RunCtl(m->base(), {"check", cache});
  EXPECT_EQ(check.exit_code, 0) << Describe(check);
  EXPECT_EQ(check.err, "");
  EXPECT_NE(check.out.find("verdict: clean"), std::string::npos) << Describe(check);

  CtlResult json = RunCtl(m->base(), {"check", "--json", cache});
  EXPECT_EQ(json.exit_code, 0) << Describe(json);
  JsonValue j = ParseOut(json);
  ASSERT_TRUE(j.is_object()) << Describe(json);
  uint64_t n = 0;
  EXPECT_TRUE(j.Find("version")->as_uint64(&n) && n == 1);
  EXPECT_EQ(*j.Find("verdict")->as_string(), "clean");
  EXPECT_TRUE(j.Find("exit_code")->as_uint64(&n) && n == 0);
  EXPECT_TRUE(j.Find("counts")->Find("files")->as_uint64(&n) && n == 2) << json.out;
  EXPECT_TRUE(j.Find("counts")->Find("blocks")->as_uint64(&n) && n >= 4) << json.out;
  EXPECT_TRUE(j.Find("problems")->items().empty());

  CtlResult repair = RunCtl(m->base(), {"check", "--repair", cache});
  EXPECT_EQ(repair.exit_code, 0) << Describe(repair);

  CtlResult dump = RunCtl(m->base(), {"dump", "--json", "--blocks", cache});
  EXPECT_EQ(dump.exit_code, 0) << Describe(dump);
  JsonValue d = ParseOut(dump);
  ASSERT_TRUE(d.is_object()) << Describe(dump);
  EXPECT_EQ(*d.Find("superblock")->Find("source")->as_string(), m->src());
  EXPECT_EQ(*d.Find("superblock")->Find("mode")->as_string(), "writeback");
  EXPECT_TRUE(d.Find("mount_state")->Find("clean_shutdown")->is_bool());
  const JsonValue::Array& files = d.Find("files")->items();
  ASSERT_EQ(files.size(), 2u) << dump.out;
  EXPECT_EQ(*files[0].Find("path")->as_string(), "f");
  EXPECT_TRUE(files[0].Find("cached_blocks")->as_uint64(&n) && n == 4) << dump.out;
  EXPECT_GE(d.Find("blocks")->items().size(), 4u);

  CtlResult text = RunCtl(m->base(), {"dump", cache});
  EXPECT_EQ(text.exit_code, 0) << Describe(text);
  EXPECT_NE(text.out.find("'f'"), std::string::npos) << Describe(text);

  // A flipped byte under f's block 1 (clean): exit 4 with its line, then
  // --repair (exit 1), and the remounted cache serves f right.
  uint64_t f_id = 0;
  ASSERT_TRUE(files[0].Find("file_id")->as_uint64(&f_id));
  uint64_t slot = UINT64_MAX;
  for (const JsonValue& b : d.Find("blocks")->items()) {
    uint64_t id = 0;
    uint64_t index = 0;
    if (b.Find("file_id")->as_uint64(&id) && id == f_id && b.Find("index")->as_uint64(&index) &&
        index == 1) {
      ASSERT_TRUE(b.Find("slot")->as_uint64(&slot));
    }
  }
  ASSERT_NE(slot, UINT64_MAX) << dump.out;
  {
    int fd = open((cache + "/store").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    const off_t pos = static_cast<off_t>(slot * 65536 + 100);
    char c = 0;
    ASSERT_EQ(pread(fd, &c, 1, pos), 1);
    c = static_cast<char>(~c);
    ASSERT_EQ(pwrite(fd, &c, 1, pos), 1);
    close(fd);
  }
  CtlResult damaged = RunCtl(m->base(), {"check", cache});
  EXPECT_EQ(damaged.exit_code, 4) << Describe(damaged);
  EXPECT_NE(
      damaged.out.find("repairable: block " + std::to_string(f_id) + "/1 ('f' at 65536, slot " +
                       std::to_string(slot) + "): clean sub-blocks 0 fail their CRC"),
      std::string::npos)
      << Describe(damaged);
  CtlResult repaired = RunCtl(m->base(), {"check", "--repair", cache});
  EXPECT_EQ(repaired.exit_code, 1) << Describe(repaired);
  EXPECT_NE(repaired.out.find("after repair: clean"), std::string::npos) << Describe(repaired);
  EXPECT_EQ(RunCtl(m->base(), {"check", cache}).exit_code, 0);
  auto again =
      MountedCachefs::StartAt(m->src(), m->mnt(), {"--cache=" + cache, "--block_size=64K"});
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ReadFile(m->mnt() + "/f"), data);
  EXPECT_EQ(again->Unmount(), 0);
}

TEST(OfflineCtl, BadArgumentsGiveOneLine) {
  const std::string tmp = MakeTempDir("offline-ctl");
  ASSERT_FALSE(tmp.empty());
  ExpectOneLineError(RunCtl(tmp, {"check"}), "cache_dir is required", 2);
  ExpectOneLineError(RunCtl(tmp, {"dump"}), "cache_dir is required", 2);
  ExpectOneLineError(RunCtl(tmp, {"check", "--repair", "--no-data", tmp}), "excludes", 2);
  ExpectOneLineError(RunCtl(tmp, {"check", tmp + "/missing"}),
                     "cache directory '" + tmp + "/missing': No such file or directory", 8);
  ExpectOneLineError(RunCtl(tmp, {"dump", tmp + "/missing"}), "No such file or directory", 1);
  ExpectOneLineError(RunCtl(tmp, {"check", tmp}), "is not a cachefs cache directory", 8);
  ExpectOneLineError(RunCtl(tmp, {"dump", tmp}), "is not a cachefs cache directory", 1);
  RemoveTree(tmp);
}

}  // namespace
}  // namespace cachefs::testing
