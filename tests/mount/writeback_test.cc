// mode=writeback and the namespace (contract 5): what the mount shows and
// what SOURCE holds while data is dirty in the cache, across getattr,
// rename, unlink, truncate, fallocate, copy_file_range, SEEK_DATA/SEEK_HOLE,
// O_APPEND, O_TRUNC, an outside change (conflict) and kill -9.
//
// Every mount uses --writeback_delay=3600, so the writer never runs on its
// own during a test: SOURCE changes only through an operation the test makes
// (one that writes back first) or `cachefsctl flush --wait`. Each test checks
// both sides: the mount, and SOURCE directly. Where an operation's result
// depends on the underlying filesystem (fallocate, SEEK_HOLE), the same calls
// on a plain twin file in base/ref are the reference.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "common/json.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;

constexpr size_t kBlock = 64 << 10;

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

// `n` bytes that differ from block to block and from `seed` to seed, so a
// misplaced or stale block does not compare equal.
std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) {
    s[i] = static_cast<char>('a' + (i * 7 + i / 4096 + static_cast<size_t>(seed) * 13) % 26);
  }
  return s;
}

// The counters of `cachefsctl stats --json MNT` (the "stats" object).
JsonValue Stats(const std::string& mnt) {
  CommandResult r =
      RunCommand(CachefsctlBinary() + " stats --json " + Quoted(mnt) + " 2>/dev/null");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto j = ParseJson(r.output);
  EXPECT_TRUE(j.ok()) << r.output;
  if (!j.ok()) return JsonValue();
  const JsonValue* s = j.value().Find("stats");
  EXPECT_NE(s, nullptr) << r.output;
  return s != nullptr ? *s : JsonValue();
}

uint64_t Counter(const std::string& mnt, const char* name) {
  JsonValue s = Stats(mnt);
  const JsonValue* v = s.Find(name);
  uint64_t n = 0;
  EXPECT_TRUE(v != nullptr && v->as_uint64(&n)) << name << " in " << s.Serialize();
  return n;
}

// `cachefsctl flush --wait MNT`, with what it printed on stderr alone. Data
// that can never be written back (a daemon bug) would keep it waiting for
// ever: it is stopped after kFlushLimitSec (exit 124).
constexpr int kFlushLimitSec = 5;
struct FlushResult {
  int exit_code = -1;
  std::string err;
};
FlushResult FlushWait(const std::string& mnt) {
  // The subshell keeps RunCommand's own 2>&1 from undoing the redirection.
  CommandResult r =
      RunCommand("(timeout " + std::to_string(kFlushLimitSec) + " " + CachefsctlBinary() +
                 " flush --wait " + Quoted(mnt) + " 2>&1 >/dev/null)");
  return {r.exit_code, r.output};
}

// Waits until the control socket of `mnt` answers (the daemon makes it just
// after the mount appears).
bool WaitForControl(const std::string& mnt) {
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (RunCommand(CachefsctlBinary() + " stats --json " + Quoted(mnt) + " >/dev/null 2>&1")
             .exit_code != 0) {
    if (Clock::now() > deadline) {
      ADD_FAILURE() << "no control socket for " << mnt;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

std::vector<std::string> WritebackArgs() {
  return {"--mode=writeback", "--writeback_delay=3600", "--block_size=64K"};
}

struct stat StatOf(const std::string& path) {
  struct stat st;
  std::memset(&st, 0, sizeof(st));
  EXPECT_EQ(stat(path.c_str(), &st), 0) << path << ": " << std::strerror(errno);
  return st;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

void PwriteAll(int fd, const std::string& data, off_t off) {
  ASSERT_EQ(pwrite(fd, data.data(), data.size(), off), static_cast<ssize_t>(data.size()))
      << std::strerror(errno);
}

std::string PreadAll(int fd, size_t n, off_t off) {
  std::string s(n, '\0');
  ssize_t got = pread(fd, s.data(), n, off);
  EXPECT_GE(got, 0) << std::strerror(errno);
  s.resize(got < 0 ? 0 : static_cast<size_t>(got));
  return s;
}

class WritebackNamespaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cachefs_ = MountedCachefs::Start(WritebackArgs());
    ASSERT_NE(cachefs_, nullptr);
    ASSERT_TRUE(WaitForControl(mnt()));
  }
  void TearDown() override { cachefs_.reset(); }

  std::string M(const std::string& name) const { return cachefs_->mnt() + "/" + name; }
  std::string S(const std::string& name) const { return cachefs_->src() + "/" + name; }
  std::string R(const std::string& name) const { return cachefs_->ref() + "/" + name; }
  const std::string& mnt() const { return cachefs_->mnt(); }

  // The kernel forgets the mount's inodes it can (as under memory
  // pressure): the daemon then holds no file that is not open.
  static void ForgetInodes() {
    sync();
    std::ofstream("/proc/sys/vm/drop_caches") << "2";
  }

  // Flushes, expects success and nothing left dirty.
  void FlushAll() {
    FlushResult f = FlushWait(mnt());
    EXPECT_EQ(f.exit_code, 0) << f.err;
    EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 0u);
  }

  std::unique_ptr<MountedCachefs> cachefs_;
};

// 1. Getattr shows the dirty size and mtime; the flush puts both in SOURCE.
TEST_F(WritebackNamespaceTest, GetattrShowsDirtySizeAndMtimeUntilFlush) {
  WriteFile(S("f"), "old");
  const timespec old_times[2] = {{946684800, 0}, {946684800, 0}};  // 2000-01-01
  ASSERT_EQ(utimensat(AT_FDCWD, S("f").c_str(), old_times, 0), 0);
  const std::string data = Pattern(2 * kBlock + 777, 1);
  // Over the old bytes without O_TRUNC (which writes back first).
  int fd = open(M("f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  PwriteAll(fd, data, 0);
  ASSERT_EQ(close(fd), 0);

  struct stat src_st = StatOf(S("f"));
  EXPECT_EQ(src_st.st_size, 3) << "written back before any flush";
  EXPECT_EQ(src_st.st_mtim.tv_sec, 946684800);
  EXPECT_EQ(ReadFile(S("f")), "old");
  struct stat mnt_st = StatOf(M("f"));
  EXPECT_EQ(static_cast<size_t>(mnt_st.st_size), data.size());
  EXPECT_GT(mnt_st.st_mtim.tv_sec, 946684800) << "the mount shows the mtime of the write";
  EXPECT_EQ(ReadFile(M("f")), data);
  EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 3u);

  FlushAll();
  src_st = StatOf(S("f"));
  EXPECT_EQ(ReadFile(S("f")), data);
  EXPECT_EQ(src_st.st_mtim.tv_sec, mnt_st.st_mtim.tv_sec);
  EXPECT_EQ(src_st.st_mtim.tv_nsec, mnt_st.st_mtim.tv_nsec);
  // And the mount still shows the same after the write-back.
  struct stat again = StatOf(M("f"));
  EXPECT_EQ(again.st_size, mnt_st.st_size);
  EXPECT_EQ(again.st_mtim.tv_sec, mnt_st.st_mtim.tv_sec);
  EXPECT_EQ(again.st_mtim.tv_nsec, mnt_st.st_mtim.tv_nsec);
}

// 2. A rename keeps the dirty data under the new name.
TEST_F(WritebackNamespaceTest, RenameKeepsDirtyData) {
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  const std::string data = Pattern(kBlock + 100, 2);
  WriteFile(M("a"), data);
  ASSERT_EQ(rename(M("a").c_str(), M("d/b").c_str()), 0) << std::strerror(errno);
  EXPECT_FALSE(Exists(M("a")));
  EXPECT_FALSE(Exists(S("a")));
  EXPECT_EQ(ReadFile(M("d/b")), data);
  EXPECT_EQ(StatOf(S("d/b")).st_size, 0) << "a plain rename needs no write-back";
  EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 2u);

  FlushAll();
  EXPECT_EQ(ReadFile(S("d/b")), data);
  EXPECT_FALSE(Exists(S("a")));
}

// 3. Rename over an existing file writes the renamed file back first.
TEST_F(WritebackNamespaceTest, RenameOverExistingFileWritesBackFirst) {
  WriteFile(S("target"), "the old target");
  const std::string data = Pattern(3 * kBlock + 5, 3);
  WriteFile(M("new"), data);
  EXPECT_EQ(StatOf(S("new")).st_size, 0);
  ASSERT_EQ(rename(M("new").c_str(), M("target").c_str()), 0) << std::strerror(errno);
  // Right after the rename: SOURCE's target name already holds all of it.
  EXPECT_EQ(ReadFile(S("target")), data);
  EXPECT_FALSE(Exists(S("new")));
  EXPECT_EQ(ReadFile(M("target")), data);
  EXPECT_FALSE(Exists(M("new")));
  FlushAll();
  EXPECT_EQ(ReadFile(S("target")), data);
}

// 3b. Rename over a file that is open somewhere: like an unlink, the handle
// of the replaced file still reads what was written through it.
TEST_F(WritebackNamespaceTest, RenameOverAnOpenFileKeepsItsDataForTheHandle) {
  const std::string data = Pattern(kBlock + 4096, 8);
  int fd = open(M("victim").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  PwriteAll(fd, data, 0);
  WriteFile(M("other"), "the other file");
  ASSERT_EQ(rename(M("other").c_str(), M("victim").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(ReadFile(M("victim")), "the other file");
  EXPECT_EQ(PreadAll(fd, data.size() + 10, 0), data) << "read through the replaced file's handle";
  ASSERT_EQ(close(fd), 0);
  FlushAll();
  EXPECT_EQ(ReadFile(S("victim")), "the other file");
}

// 1b. A time set on a file with dirty data (cp -p, tar, rsync -t) is the
// mtime the mount shows, and the one SOURCE gets with the data.
TEST_F(WritebackNamespaceTest, UtimensOnADirtyFileSticks) {
  const std::string data = Pattern(kBlock + 9, 18);
  WriteFile(M("f"), data);
  const timespec times[2] = {{946684800, 0}, {946684800, 0}};  // 2000-01-01
  ASSERT_EQ(utimensat(AT_FDCWD, M("f").c_str(), times, 0), 0) << std::strerror(errno);
  EXPECT_EQ(StatOf(M("f")).st_mtim.tv_sec, 946684800);
  FlushAll();
  EXPECT_EQ(StatOf(S("f")).st_mtim.tv_sec, 946684800) << "the flush put the write's time back";
  EXPECT_EQ(StatOf(M("f")).st_mtim.tv_sec, 946684800);
  EXPECT_TRUE(ReadFile(S("f")) == data);
  EXPECT_EQ(Counter(mnt(), "conflicts"), 0u);
}

// 3c. Two files with dirty data trade names (RENAME_EXCHANGE): each name
// then shows the other file's data, none of it lost.
TEST_F(WritebackNamespaceTest, ExchangeKeepsTheDirtyDataOfBoth) {
  const std::string a = Pattern(kBlock + 10, 9), b = Pattern(2 * kBlock + 20, 10);
  WriteFile(M("a"), a);
  WriteFile(M("b"), b);
  ASSERT_EQ(renameat2(AT_FDCWD, M("a").c_str(), AT_FDCWD, M("b").c_str(), RENAME_EXCHANGE), 0)
      << std::strerror(errno);
  EXPECT_TRUE(ReadFile(M("a")) == b) << "the file that came to name a lost its data";
  EXPECT_TRUE(ReadFile(M("b")) == a) << "the file that came to name b lost its data";
  FlushAll();
  EXPECT_TRUE(ReadFile(S("a")) == b);
  EXPECT_TRUE(ReadFile(S("b")) == a);
}

// 3c'. RENAME_EXCHANGE with directories: a dirty file and a directory trade
// names, and two directories holding dirty files do (an atomic swap of a
// release directory). Every file keeps its data under its new path, also
// once the kernel forgot the inodes, and SOURCE gets it there; no conflict.
TEST_F(WritebackNamespaceTest, ExchangeWithDirectoriesKeepsTheDirtyData) {
  const std::string f = Pattern(kBlock + 7, 15), x = Pattern(2 * kBlock + 3, 16),
                    y = Pattern(kBlock / 2, 17);
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  WriteFile(M("d/in"), "in the directory");
  WriteFile(M("f"), f);
  ASSERT_EQ(renameat2(AT_FDCWD, M("d").c_str(), AT_FDCWD, M("f").c_str(), RENAME_EXCHANGE), 0)
      << std::strerror(errno);
  ASSERT_EQ(mkdir(M("x").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("y").c_str(), 0755), 0);
  WriteFile(M("x/file"), x);
  WriteFile(M("y/file"), y);
  ASSERT_EQ(renameat2(AT_FDCWD, M("x").c_str(), AT_FDCWD, M("y").c_str(), RENAME_EXCHANGE), 0)
      << std::strerror(errno);
  ForgetInodes();
  EXPECT_TRUE(ReadFile(M("d")) == f) << "the file that came to name d lost its data";
  EXPECT_EQ(ReadFile(M("f/in")), "in the directory");
  EXPECT_TRUE(ReadFile(M("y/file")) == x) << "y/file does not hold x's file";
  EXPECT_TRUE(ReadFile(M("x/file")) == y) << "x/file does not hold y's file";
  FlushAll();
  EXPECT_EQ(Counter(mnt(), "conflicts"), 0u);
  EXPECT_TRUE(ReadFile(S("d")) == f);
  EXPECT_EQ(ReadFile(S("f/in")), "in the directory");
  EXPECT_TRUE(ReadFile(S("y/file")) == x);
  EXPECT_TRUE(ReadFile(S("x/file")) == y);
}

// 3d. A rename over one name of a file that has another (a hard link): the
// file lives on under that name, dirty data and all, though nothing has it
// open.
TEST_F(WritebackNamespaceTest, RenameOverOneOfTwoLinksKeepsTheDirtyData) {
  const std::string data = Pattern(kBlock + 10, 11);
  WriteFile(M("linked"), data);
  ASSERT_EQ(link(M("linked").c_str(), M("other").c_str()), 0) << std::strerror(errno);
  WriteFile(M("new"), "the new file");
  ForgetInodes();
  ASSERT_EQ(rename(M("new").c_str(), M("linked").c_str()), 0) << std::strerror(errno);
  EXPECT_TRUE(ReadFile(M("other")) == data) << "the other name lost the dirty data";
  EXPECT_EQ(ReadFile(M("linked")), "the new file");
  FlushAll();
  EXPECT_TRUE(ReadFile(S("other")) == data);
  EXPECT_EQ(ReadFile(S("linked")), "the new file");
}

// 3e. Changes through the mount to files with dirty data that no open has
// bound since the kernel forgot them (as after a remount): a truncate by
// path, an open with O_TRUNC, a chmod. Each is our own change: written back
// first where it needs SOURCE's data, adopted after, never a conflict.
TEST_F(WritebackNamespaceTest, ChangesToAFileTheKernelForgotAreOursNotConflicts) {
  const std::string data = Pattern(2 * kBlock + 5, 12);
  WriteFile(M("cut"), data);
  WriteFile(M("trunc"), data);
  WriteFile(M("mode"), data);
  ForgetInodes();
  ASSERT_EQ(truncate(M("cut").c_str(), 10), 0) << std::strerror(errno);
  EXPECT_EQ(StatOf(M("cut")).st_size, 10);
  EXPECT_TRUE(ReadFile(M("cut")) == data.substr(0, 10));
  int fd = open(M("trunc").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  PwriteAll(fd, "new", 0);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ReadFile(M("trunc")), "new");
  ASSERT_EQ(chmod(M("mode").c_str(), 0600), 0) << std::strerror(errno);
  EXPECT_TRUE(ReadFile(M("mode")) == data);
  FlushAll();
  EXPECT_EQ(Counter(mnt(), "conflicts"), 0u);
  EXPECT_TRUE(ReadFile(S("cut")) == data.substr(0, 10));
  EXPECT_EQ(ReadFile(S("trunc")), "new");
  EXPECT_TRUE(ReadFile(S("mode")) == data);
  EXPECT_EQ(StatOf(S("mode")).st_mode & 07777, 0600u);
}

// 3f. `ln a b; rm a` with dirty data (a maildir delivery), and a rename of
// a dirty file the kernel forgot: the data follows the name, with its size,
// and reaches SOURCE under it; no conflict.
TEST_F(WritebackNamespaceTest, LinkThenUnlinkAndRenameOfAForgottenFileKeepTheData) {
  const std::string data = Pattern(2 * kBlock + 5, 13);
  WriteFile(M("tmp"), data);
  ASSERT_EQ(link(M("tmp").c_str(), M("new").c_str()), 0) << std::strerror(errno);
  ASSERT_EQ(unlink(M("tmp").c_str()), 0) << std::strerror(errno);
  EXPECT_TRUE(ReadFile(M("new")) == data);
  WriteFile(M("moved"), data);
  ForgetInodes();
  ASSERT_EQ(rename(M("moved").c_str(), M("there").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(StatOf(M("there")).st_size, static_cast<off_t>(data.size()));
  EXPECT_TRUE(ReadFile(M("there")) == data);
  FlushAll();
  EXPECT_EQ(Counter(mnt(), "conflicts"), 0u);
  EXPECT_TRUE(ReadFile(S("new")) == data);
  EXPECT_TRUE(ReadFile(S("there")) == data);
}

// 4. Unlink: the dirty data of a closed file is dropped; an open handle
// still reads what was written.
TEST_F(WritebackNamespaceTest, UnlinkDropsDirtyDataButOpenHandleReadsIt) {
  WriteFile(M("closed"), Pattern(2 * kBlock, 4));
  EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 2u);
  ASSERT_EQ(unlink(M("closed").c_str()), 0) << std::strerror(errno);
  EXPECT_FALSE(Exists(M("closed")));
  EXPECT_FALSE(Exists(S("closed")));
  FlushAll();
  EXPECT_FALSE(Exists(S("closed"))) << "the flush brought the unlinked file back";

  const std::string data = Pattern(kBlock + 4096, 5);
  int fd = open(M("open").c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  PwriteAll(fd, data, 0);
  ASSERT_EQ(unlink(M("open").c_str()), 0) << std::strerror(errno);
  EXPECT_FALSE(Exists(M("open")));
  EXPECT_FALSE(Exists(S("open")));
  EXPECT_EQ(PreadAll(fd, data.size() + 10, 0), data) << "read through the open handle";
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), data.size());
  // Still writable and readable while open.
  PwriteAll(fd, "tail", static_cast<off_t>(data.size()));
  EXPECT_EQ(PreadAll(fd, 4, static_cast<off_t>(data.size())), "tail");
  ASSERT_EQ(close(fd), 0);
  FlushAll();
  EXPECT_FALSE(Exists(S("open")));
}

// 4b. A write-only handle of a file unlinked through the mount goes on
// writing (to SOURCE's file, which the cache no longer knows).
TEST_F(WritebackNamespaceTest, AWriteOnlyHandleWritesOnAfterTheUnlink) {
  WriteFile(M("f"), "start");
  int fd = open(M("f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(unlink(M("f").c_str()), 0) << std::strerror(errno);
  EXPECT_EQ(pwrite(fd, "more", 4, 5), 4) << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 9);
  ASSERT_EQ(close(fd), 0);
}

// 5. Truncate of a file with dirty data, shrinking and growing.
TEST_F(WritebackNamespaceTest, TruncateDirtyFileShrinkAndGrow) {
  const std::string data = Pattern(3 * kBlock + 300, 6);
  WriteFile(M("f"), data);
  const off_t shrunk = kBlock + 1000;
  ASSERT_EQ(truncate(M("f").c_str(), shrunk), 0) << std::strerror(errno);
  std::string expect = data.substr(0, shrunk);
  EXPECT_EQ(ReadFile(M("f")), expect);
  EXPECT_EQ(StatOf(M("f")).st_size, shrunk);

  // Dirty again, then grow by ftruncate: the new bytes are zeros.
  int fd = open(M("f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  const std::string patch = Pattern(5000, 7);
  PwriteAll(fd, patch, 2000);
  expect.replace(2000, patch.size(), patch);
  EXPECT_GE(Counter(mnt(), "blocks_dirty"), 1u);
  const off_t grown = 2 * kBlock + 4321;
  ASSERT_EQ(ftruncate(fd, grown), 0) << std::strerror(errno);
  expect.resize(grown, '\0');
  EXPECT_EQ(PreadAll(fd, grown + 100, 0), expect);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ReadFile(M("f")), expect);
  EXPECT_EQ(StatOf(M("f")).st_size, grown);

  // Shrink into the dirty range of a freshly dirtied file (by path).
  WriteFile(M("g"), data);
  ASSERT_EQ(truncate(M("g").c_str(), 10), 0);
  ASSERT_EQ(truncate(M("g").c_str(), 5000), 0);
  std::string expect_g = data.substr(0, 10);
  expect_g.resize(5000, '\0');
  EXPECT_EQ(ReadFile(M("g")), expect_g);

  FlushAll();
  EXPECT_EQ(ReadFile(S("f")), expect);
  EXPECT_EQ(ReadFile(S("g")), expect_g);
  EXPECT_EQ(ReadFile(M("f")), expect);
}

// 6. fallocate, copy_file_range and SEEK_DATA/SEEK_HOLE see dirty data: the
// mount answers as a plain twin file with the same history does.
TEST_F(WritebackNamespaceTest, FallocateCopyRangeAndSeekSeeDirtyData) {
  const std::string data = Pattern(kBlock + 2345, 8);
  for (const std::string& path : {M("fa"), R("fa")}) {
    SCOPED_TRACE(path);
    int fd = open(path.c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    PwriteAll(fd, data, 0);
    ASSERT_EQ(fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4 * kBlock), 0) << std::strerror(errno);
    struct stat st;
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), data.size()) << "KEEP_SIZE kept the size";
    EXPECT_EQ(PreadAll(fd, 4 * kBlock, 0), data);
    ASSERT_EQ(fallocate(fd, 0, kBlock, 2 * kBlock), 0) << std::strerror(errno);
    ASSERT_EQ(fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(3 * kBlock));
    ASSERT_EQ(close(fd), 0);
  }
  EXPECT_EQ(ReadFile(M("fa")), ReadFile(R("fa")));
  std::string expect_fa = data;
  expect_fa.resize(3 * kBlock, '\0');
  EXPECT_EQ(ReadFile(M("fa")), expect_fa);

  // copy_file_range out of a dirty file into another file of the mount.
  const std::string src_data = Pattern(2 * kBlock + 99, 9);
  for (const std::string& dir : {mnt(), cachefs_->ref()}) {
    SCOPED_TRACE(dir);
    WriteFile(dir + "/cin", src_data);
    WriteFile(dir + "/cout", "0123456789");
    int in = open((dir + "/cin").c_str(), O_RDONLY);
    int out = open((dir + "/cout").c_str(), O_RDWR);
    ASSERT_GE(in, 0);
    ASSERT_GE(out, 0);
    loff_t off_in = 100;
    loff_t off_out = 5;
    const size_t len = kBlock + 50;
    EXPECT_EQ(copy_file_range(in, &off_in, out, &off_out, len, 0), static_cast<ssize_t>(len))
        << std::strerror(errno);
    close(in);
    close(out);
  }
  const std::string expect_cout = "01234" + src_data.substr(100, kBlock + 50);
  EXPECT_EQ(ReadFile(R("cout")), expect_cout);
  EXPECT_EQ(ReadFile(M("cout")), expect_cout);

  // SEEK_DATA/SEEK_HOLE on a sparse file whose only data is dirty.
  off_t data_at[2];
  off_t hole_at[2];
  off_t hole_at0[2];
  int i = 0;
  for (const std::string& path : {M("sparse"), R("sparse")}) {
    SCOPED_TRACE(path);
    int fd = open(path.c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(fd, 0);
    PwriteAll(fd, Pattern(8192, 10), 16 * kBlock);
    data_at[i] = lseek(fd, 0, SEEK_DATA);
    hole_at[i] = lseek(fd, 16 * kBlock, SEEK_HOLE);
    hole_at0[i] = lseek(fd, 0, SEEK_HOLE);
    close(fd);
    ++i;
  }
  EXPECT_EQ(data_at[0], data_at[1]) << "SEEK_DATA";
  EXPECT_EQ(hole_at[0], hole_at[1]) << "SEEK_HOLE from the data";
  EXPECT_EQ(hole_at0[0], hole_at0[1]) << "SEEK_HOLE from 0";
  EXPECT_GE(data_at[0], 0) << "SEEK_DATA found nothing: the dirty data was not seen";
  EXPECT_LE(data_at[0], static_cast<off_t>(16 * kBlock));
  EXPECT_EQ(hole_at[0], static_cast<off_t>(16 * kBlock + 8192));

  FlushAll();
  for (const char* name : {"fa", "cin", "cout", "sparse"}) {
    EXPECT_EQ(ReadFile(S(name)), ReadFile(R(name))) << name;
  }
}

// 7. O_APPEND appends at the size the mount shows; O_TRUNC drops dirty data.
TEST_F(WritebackNamespaceTest, AppendAndOpenTruncOfDirtyFile) {
  const std::string first = Pattern(kBlock + 10, 11);
  WriteFile(M("log"), first);
  int fd = open(M("log").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(write(fd, "def", 3), 3);
  ASSERT_EQ(write(fd, "ghi", 3), 3);
  ASSERT_EQ(close(fd), 0);
  const std::string expect = first + "defghi";
  EXPECT_EQ(ReadFile(M("log")), expect);
  EXPECT_EQ(StatOf(S("log")).st_size, 0) << "written back before any flush";

  const std::string dirty = Pattern(2 * kBlock, 12);
  WriteFile(M("t"), dirty);
  fd = open(M("t").c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_EQ(StatOf(M("t")).st_size, 0);
  ASSERT_EQ(write(fd, "new", 3), 3);
  ASSERT_EQ(close(fd), 0);
  EXPECT_EQ(ReadFile(M("t")), "new");

  FlushAll();
  EXPECT_EQ(ReadFile(S("log")), expect);
  EXPECT_EQ(ReadFile(S("t")), "new");
  EXPECT_EQ(ReadFile(M("t")), "new");
}

// A write-only handle on a file SOURCE already holds: a write of part of a
// sub-block completes it from SOURCE through a descriptor of the daemon's own.
TEST_F(WritebackNamespaceTest, WriteOnlyHandleOnExistingFileWritesPartialSubBlocks) {
  const std::string old = Pattern(kBlock + 5000, 13);
  WriteFile(S("w"), old);
  int fd = open(M("w").c_str(), O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(write(fd, "tail", 4), 4) << std::strerror(errno);
  ASSERT_EQ(close(fd), 0);
  fd = open(M("w").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(pwrite(fd, "mid", 3, 100), 3) << std::strerror(errno);
  ASSERT_EQ(close(fd), 0);
  std::string expect = old + "tail";
  expect.replace(100, 3, "mid");
  EXPECT_EQ(ReadFile(M("w")), expect);
  FlushAll();
  EXPECT_EQ(ReadFile(S("w")), expect);
}

// 8. A file changed in SOURCE while it has dirty data is a conflict: SOURCE
// keeps the outside change.
TEST_F(WritebackNamespaceTest, OutsideChangeOfDirtyFileIsAConflict) {
  WriteFile(M("f"), Pattern(kBlock, 13));
  EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 1u);
  const std::string outside = "changed outside, and longer than nothing\n";
  WriteFile(S("f"), outside);

  FlushResult f = FlushWait(mnt());
  EXPECT_EQ(f.exit_code, 1) << f.err;
  EXPECT_EQ(std::count(f.err.begin(), f.err.end(), '\n'), 1) << f.err;
  EXPECT_NE(f.err.find("conflict"), std::string::npos) << f.err;
  EXPECT_EQ(ReadFile(S("f")), outside) << "written over the outside change";
  EXPECT_GE(Counter(mnt(), "conflicts"), 1u);
  EXPECT_EQ(Counter(mnt(), "blocks_dirty"), 1u) << "the dirty data is kept";
  // A second attempt changes nothing.
  f = FlushWait(mnt());
  EXPECT_EQ(f.exit_code, 1) << f.err;
  EXPECT_EQ(ReadFile(S("f")), outside);
}

// 9. Data fsynced in writeback survives kill -9 and is written back after
// the remount.
TEST_F(WritebackNamespaceTest, FsyncedDataSurvivesKillAndRemount) {
  cachefs_.reset();  // this test makes its own mounts over its own dirs
  const std::string base = MakeTempDir("wbns");
  ASSERT_FALSE(base.empty());
  const std::string src = base + "/src";
  const std::string mnt_dir = base + "/mnt";
  ASSERT_EQ(mkdir(src.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(mnt_dir.c_str(), 0755), 0);
  std::vector<std::string> args = {"--cache=" + base + "/cache", "--cache_size=64M"};
  for (const auto& a : WritebackArgs()) args.push_back(a);
  const std::string data = Pattern(3 * kBlock + 1234, 14);
  {
    auto m = MountedCachefs::StartAt(src, mnt_dir, args);
    ASSERT_NE(m, nullptr);
    ASSERT_TRUE(WaitForControl(mnt_dir));
    int fd = open((mnt_dir + "/f").c_str(), O_RDWR | O_CREAT, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    PwriteAll(fd, data, 0);
    ASSERT_EQ(fsync(fd), 0) << std::strerror(errno);
    ASSERT_EQ(close(fd), 0);
    ASSERT_EQ(kill(m->daemon_pid(), SIGKILL), 0);
    m->Unmount();  // reaps it and clears the stale mount
    EXPECT_EQ(StatOf(src + "/f").st_size, 0) << "written back before the kill";
  }
  {
    auto m = MountedCachefs::StartAt(src, mnt_dir, args);
    ASSERT_NE(m, nullptr);
    ASSERT_TRUE(WaitForControl(mnt_dir));
    EXPECT_EQ(StatOf(mnt_dir + "/f").st_size, static_cast<off_t>(data.size()));
    EXPECT_EQ(ReadFile(mnt_dir + "/f"), data);
    EXPECT_EQ(Counter(mnt_dir, "blocks_dirty"), 4u);
    FlushResult f = FlushWait(mnt_dir);
    EXPECT_EQ(f.exit_code, 0) << f.err;
    EXPECT_EQ(ReadFile(src + "/f"), data);
    EXPECT_EQ(m->Unmount(), 0);
  }
  RemoveTree(base);
}

}  // namespace
}  // namespace cachefs::testing
