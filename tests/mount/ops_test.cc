// Operation-by-operation checks of the passthrough. Every call made through
// the mount must leave SOURCE as the same call leaves a plain directory (ref),
// and return the same value and errno: each test builds identical trees under
// base/src and base/ref, runs the same code on base/mnt and base/ref, and
// compares. Error cases are checked the same way, and also against the errno
// expected, so a wrongly built ref cannot hide a difference.
//
// One daemon serves a whole suite (SetUpTestSuite); each test works in its own
// directory named after the test, so tests do not see each other's files.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

constexpr off_t kKiB = 1024;
constexpr off_t kMiB = kKiB * 1024;

// An owned file descriptor; closing keeps errno so a recorded failure survives.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Close(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    Close();
    fd_ = std::exchange(o.fd_, -1);
    return *this;
  }
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  int Close() {
    if (fd_ < 0) return 0;
    int saved = errno;
    int r = close(fd_);
    if (r == 0) errno = saved;
    fd_ = -1;
    return r;
  }

 private:
  int fd_;
};

std::string Join(const std::string& dir, const std::string& name) { return dir + "/" + name; }

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&s[i], &v, std::min<size_t>(8, n - i));
  }
  return s;
}

// Reads a whole file through open()/pread() (std::ifstream hides errno).
std::string Slurp(const std::string& path) {
  // O_NOATIME: reading must not change what the stat comparisons look at.
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOATIME));
  EXPECT_TRUE(fd.ok()) << "open " << path << ": " << std::strerror(errno);
  if (!fd.ok()) return "";
  std::string out;
  char buf[1 << 16];
  while (true) {
    ssize_t n = read(fd.get(), buf, sizeof(buf));
    EXPECT_GE(n, 0) << "read " << path << ": " << std::strerror(errno);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void Spit(const std::string& path, const std::string& data, mode_t mode = 0644) {
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  ASSERT_TRUE(fd.ok()) << "open " << path << ": " << std::strerror(errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
    ASSERT_GT(n, 0) << "write " << path << ": " << std::strerror(errno);
    done += static_cast<size_t>(n);
  }
}

// Compares byte strings without printing megabytes: sizes and the first
// differing offset.
::testing::AssertionResult SameBytes(const std::string& a, const std::string& b) {
  if (a == b) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  return ::testing::AssertionFailure()
         << "sizes " << a.size() << " and " << b.size() << ", first difference at offset " << i;
}

struct stat LStat(const std::string& path) {
  struct stat st;
  std::memset(&st, 0, sizeof(st));
  EXPECT_EQ(lstat(path.c_str(), &st), 0) << "lstat " << path << ": " << std::strerror(errno);
  return st;
}

bool SameTime(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

std::string TimeString(const timespec& t) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%lld.%09ld", static_cast<long long>(t.tv_sec), t.tv_nsec);
  return buf;
}

// Everything the mount must report exactly as SOURCE does (not st_dev).
// atime is left out unless asked for: a read through the mount updates the
// source's atime behind the kernel's attribute cache (relatime).
void ExpectStatEqualsSource(const struct stat& m, const struct stat& s, const std::string& what,
                            bool with_atime = false) {
  EXPECT_EQ(m.st_ino, s.st_ino) << what << ": st_ino";
  EXPECT_EQ(m.st_mode, s.st_mode) << what << ": st_mode";
  EXPECT_EQ(m.st_nlink, s.st_nlink) << what << ": st_nlink";
  EXPECT_EQ(m.st_uid, s.st_uid) << what << ": st_uid";
  EXPECT_EQ(m.st_gid, s.st_gid) << what << ": st_gid";
  EXPECT_EQ(m.st_size, s.st_size) << what << ": st_size";
  EXPECT_EQ(m.st_blocks, s.st_blocks) << what << ": st_blocks";
  EXPECT_EQ(m.st_rdev, s.st_rdev) << what << ": st_rdev";
  EXPECT_TRUE(!with_atime || SameTime(m.st_atim, s.st_atim))
      << what << ": atime " << TimeString(m.st_atim) << " vs " << TimeString(s.st_atim);
  EXPECT_TRUE(SameTime(m.st_mtim, s.st_mtim))
      << what << ": mtime " << TimeString(m.st_mtim) << " vs " << TimeString(s.st_mtim);
  EXPECT_TRUE(SameTime(m.st_ctim, s.st_ctim))
      << what << ": ctime " << TimeString(m.st_ctim) << " vs " << TimeString(s.st_ctim);
}

// What an identical operation on the twin must give too (not inode or ctime).
void ExpectStatLikeRef(const struct stat& m, const struct stat& r, const std::string& what) {
  EXPECT_EQ(m.st_mode, r.st_mode) << what << ": st_mode";
  EXPECT_EQ(m.st_nlink, r.st_nlink) << what << ": st_nlink";
  EXPECT_EQ(m.st_uid, r.st_uid) << what << ": st_uid";
  EXPECT_EQ(m.st_gid, r.st_gid) << what << ": st_gid";
  EXPECT_EQ(m.st_size, r.st_size) << what << ": st_size";
  EXPECT_EQ(m.st_rdev, r.st_rdev) << what << ": st_rdev";
}

// The outcomes of a sequence of calls, each under a label, so that the runs
// through the mount and on ref can be compared step by step.
class Steps {
 public:
  // Records `ret` (and errno when it is negative). Returns `ret`.
  long operator()(const std::string& label, long ret) {
    Outcome o;
    o.ret = ret;
    o.err = ret < 0 ? errno : 0;
    list_.emplace_back(label, o);
    return ret;
  }
  // Records a value that is not a system call's result.
  void Value(const std::string& label, long v) { list_.emplace_back(label, Outcome{v, 0}); }
  Outcome At(const std::string& label) const {
    for (const auto& [l, o] : list_) {
      if (l == label) return o;
    }
    ADD_FAILURE() << "no step " << label;
    return Outcome{-999, -999};
  }
  const std::vector<std::pair<std::string, Outcome>>& list() const { return list_; }

 private:
  std::vector<std::pair<std::string, Outcome>> list_;
};

using DirFn = std::function<void(const std::string& dir)>;
using DirOp = std::function<long(const std::string& dir)>;
using DirSteps = std::function<void(const std::string& dir, Steps& s)>;

// Runs `fn` in a child process (as `uid`/`gid` when uid != -1) and returns the
// numbers it produced. The child must not use gtest assertions.
std::vector<long> InChild(const std::function<std::vector<long>()>& fn, uid_t uid = -1,
                          gid_t gid = -1) {
  int p[2];
  if (pipe(p) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return {};
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    if (uid != static_cast<uid_t>(-1)) {
      if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 ||
          setresuid(uid, uid, uid) != 0) {
        _exit(3);
      }
    }
    std::vector<long> v = fn();
    size_t bytes = v.size() * sizeof(long);
    const char* data = reinterpret_cast<const char*>(v.data());
    while (bytes > 0) {
      ssize_t n = write(p[1], data, bytes);
      if (n <= 0) _exit(4);
      data += n;
      bytes -= static_cast<size_t>(n);
    }
    _exit(0);
  }
  close(p[1]);
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof(buf))) > 0) got.append(buf, static_cast<size_t>(n));
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  std::vector<long> out(got.size() / sizeof(long));
  std::memcpy(out.data(), got.data(), out.size() * sizeof(long));
  return out;
}

// Polls `cond` every 10 ms until it holds or `limit` has passed.
bool Eventually(const std::function<bool()>& cond,
                std::chrono::milliseconds limit = std::chrono::milliseconds(3000)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

// The fixture: a mount shared by the suite and a fresh directory per test,
// the same name under src, ref and (through the mount) mnt.
class OpsFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // allow_other lets the access tests run a child as another user.
    mount_ = MountedCachefs::Start({"-o", "allow_other"});
  }
  static void TearDownTestSuite() { mount_.reset(); }

  void SetUp() override {
    ASSERT_NE(mount_, nullptr) << "the suite's mount did not come up";
    old_umask_ = umask(022);
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    name_ = std::string(info->test_suite_name()) + "." + info->name();
    ASSERT_EQ(mkdir(SrcDir().c_str(), 0755), 0) << std::strerror(errno);
    ASSERT_EQ(mkdir(RefDir().c_str(), 0755), 0) << std::strerror(errno);
  }
  void TearDown() override { umask(old_umask_); }

  std::string MntDir() const { return mount_->mnt() + "/" + name_; }
  std::string SrcDir() const { return mount_->src() + "/" + name_; }
  std::string RefDir() const { return mount_->ref() + "/" + name_; }
  std::string Mnt(const std::string& rel) const { return MntDir() + "/" + rel; }
  std::string Src(const std::string& rel) const { return SrcDir() + "/" + rel; }
  std::string Ref(const std::string& rel) const { return RefDir() + "/" + rel; }

  // Builds the same tree in src and ref (directly, not through the mount).
  void Twin(const DirFn& build) {
    build(SrcDir());
    build(RefDir());
  }

  // Runs `op` on ref and through the mount; expects the same outcome and
  // returns the mount's.
  Outcome Same(const std::string& what, const DirOp& op) {
    Outcome r = Capture([&] { return op(RefDir()); });
    Outcome m = Capture([&] { return op(MntDir()); });
    EXPECT_TRUE(m == r) << what << ": mount " << ToString(m) << ", ref " << ToString(r);
    return m;
  }
  // As Same(), and the outcome must be a failure with `err` (or success for 0).
  Outcome SameErr(const std::string& what, int err, const DirOp& op) {
    Outcome m = Same(what, op);
    if (err == 0) {
      EXPECT_GE(m.ret, 0) << what << ": " << ToString(m);
    } else {
      EXPECT_EQ(m.ret, -1) << what;
      EXPECT_EQ(m.err, err) << what << ": " << ToString(m) << ", expected " << std::strerror(err);
    }
    return m;
  }
  // Runs a sequence on ref and through the mount and compares it step by
  // step; returns the mount's steps.
  Steps SameSteps(const std::string& what, const DirSteps& fn) {
    Steps r, m;
    fn(RefDir(), r);
    fn(MntDir(), m);
    EXPECT_EQ(m.list().size(), r.list().size()) << what << ": different number of steps";
    for (size_t i = 0; i < std::min(m.list().size(), r.list().size()); ++i) {
      const auto& [ml, mo] = m.list()[i];
      const auto& [rl, ro] = r.list()[i];
      EXPECT_TRUE(ml == rl && mo == ro) << what << ": step " << i << " '" << ml << "': mount "
                                        << ToString(mo) << ", ref '" << rl << "' " << ToString(ro);
    }
    return m;
  }

  // lstat of `rel` in the three trees: mount equals SOURCE exactly and
  // resembles ref.
  void CheckEntry(const std::string& rel, bool with_atime = false) {
    struct stat ms, ss, rs;
    Outcome mo = Capture([&] { return lstat(Mnt(rel).c_str(), &ms); });
    Outcome so = Capture([&] { return lstat(Src(rel).c_str(), &ss); });
    Outcome ro = Capture([&] { return lstat(Ref(rel).c_str(), &rs); });
    EXPECT_TRUE(mo == so) << rel << ": mount " << ToString(mo) << ", source " << ToString(so);
    EXPECT_TRUE(so == ro) << rel << ": source " << ToString(so) << ", ref " << ToString(ro);
    if (mo.ret == 0 && so.ret == 0) ExpectStatEqualsSource(ms, ss, rel, with_atime);
    if (so.ret == 0 && ro.ret == 0) ExpectStatLikeRef(ss, rs, rel);
  }

  // Source and ref hold the same bytes at `rel`.
  void CheckContent(const std::string& rel) {
    EXPECT_TRUE(SameBytes(Slurp(Src(rel)), Slurp(Ref(rel)))) << rel << ": source and ref differ";
  }

  static std::unique_ptr<MountedCachefs> mount_;
  std::string name_;
  mode_t old_umask_ = 022;
};
std::unique_ptr<MountedCachefs> OpsFixture::mount_;

// ---------------------------------------------------------------------------
// lookup / stat

using OpsStat = OpsFixture;

TEST_F(OpsStat, AttributesEqualSource) {
  Twin([](const std::string& d) {
    Spit(d + "/f", RandomBytes(1000, 1), 0640);
    ASSERT_EQ(chown((d + "/f").c_str(), 1001, 1002), 0);
    timespec t[2] = {{111, 222333444}, {555, 666777888}};
    ASSERT_EQ(utimensat(AT_FDCWD, (d + "/f").c_str(), t, 0), 0);
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0750), 0);
    ASSERT_EQ(mkdir((d + "/dir/sub").c_str(), 0700), 0);
    ASSERT_EQ(symlink("f", (d + "/l").c_str()), 0);
    ASSERT_EQ(mkfifo((d + "/p").c_str(), 0604), 0);
    Spit(d + "/h1", "linked");
    ASSERT_EQ(link((d + "/h1").c_str(), (d + "/h2").c_str()), 0);
    Fd fd(open((d + "/sparse").c_str(), O_RDWR | O_CREAT, 0600));
    ASSERT_TRUE(fd.ok());
    ASSERT_EQ(pwrite(fd.get(), "x", 1, kMiB), 1);
    ASSERT_EQ(ftruncate(fd.get(), 5 * kMiB), 0);
  });
  for (const char* n : {"f", "dir", "dir/sub", "l", "p", "h1", "h2", "sparse"}) {
    CheckEntry(n, /*with_atime=*/true);
  }
  CheckEntry(".", /*with_atime=*/true);

  // fstatat relative to a directory opened through the mount.
  Fd dir(open(MntDir().c_str(), O_RDONLY | O_DIRECTORY));
  ASSERT_TRUE(dir.ok());
  struct stat viaat, direct;
  ASSERT_EQ(fstatat(dir.get(), "l", &viaat, AT_SYMLINK_NOFOLLOW), 0);
  ASSERT_EQ(lstat(Src("l").c_str(), &direct), 0);
  ExpectStatEqualsSource(viaat, direct, "fstatat l", true);
  EXPECT_TRUE(S_ISLNK(viaat.st_mode));
  EXPECT_EQ(viaat.st_size, 1);
  // Following the symlink gives the target's attributes.
  ASSERT_EQ(fstatat(dir.get(), "l", &viaat, 0), 0);
  ASSERT_EQ(lstat(Src("f").c_str(), &direct), 0);
  ExpectStatEqualsSource(viaat, direct, "stat l -> f");
  // fstat of an open descriptor.
  Fd f(open(Mnt("h2").c_str(), O_RDONLY));
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(fstat(f.get(), &viaat), 0);
  ASSERT_EQ(lstat(Src("h1").c_str(), &direct), 0);
  EXPECT_EQ(viaat.st_ino, direct.st_ino);
  EXPECT_EQ(viaat.st_nlink, 2u);
  // AT_EMPTY_PATH on the descriptor itself.
  ASSERT_EQ(fstatat(f.get(), "", &viaat, AT_EMPTY_PATH), 0);
  EXPECT_EQ(viaat.st_ino, direct.st_ino);
  // The explicit times, nanoseconds included.
  struct stat ms = LStat(Mnt("f"));
  EXPECT_EQ(ms.st_atim.tv_sec, 111);
  EXPECT_EQ(ms.st_atim.tv_nsec, 222333444);
  EXPECT_EQ(ms.st_mtim.tv_sec, 555);
  EXPECT_EQ(ms.st_mtim.tv_nsec, 666777888);
  EXPECT_EQ(ms.st_uid, 1001u);
  EXPECT_EQ(ms.st_gid, 1002u);
}

TEST_F(OpsStat, RootReportsSourceInode) {
  struct stat m, s;
  ASSERT_EQ(stat(mount_->mnt().c_str(), &m), 0);
  ASSERT_EQ(stat(mount_->src().c_str(), &s), 0);
  EXPECT_EQ(m.st_ino, s.st_ino);
  EXPECT_EQ(m.st_mode, s.st_mode);
  EXPECT_EQ(m.st_uid, s.st_uid);
}

TEST_F(OpsStat, Errors) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "x");
    ASSERT_EQ(symlink("missing", (d + "/dangling").c_str()), 0);
    ASSERT_EQ(symlink("loop2", (d + "/loop1").c_str()), 0);
    ASSERT_EQ(symlink("loop1", (d + "/loop2").c_str()), 0);
  });
  struct stat st;
  SameErr("lstat missing", ENOENT,
          [&](const std::string& d) { return lstat((d + "/missing").c_str(), &st); });
  SameErr("lstat in missing dir", ENOENT,
          [&](const std::string& d) { return lstat((d + "/nodir/x").c_str(), &st); });
  SameErr("lstat under a file", ENOTDIR,
          [&](const std::string& d) { return lstat((d + "/f/x").c_str(), &st); });
  SameErr("lstat file/", ENOTDIR,
          [&](const std::string& d) { return lstat((d + "/f/").c_str(), &st); });
  SameErr("lstat name of 256 bytes", ENAMETOOLONG, [&](const std::string& d) {
    return lstat((d + "/" + std::string(256, 'n')).c_str(), &st);
  });
  SameErr("stat dangling symlink", ENOENT,
          [&](const std::string& d) { return stat((d + "/dangling").c_str(), &st); });
  SameErr("lstat dangling symlink", 0,
          [&](const std::string& d) { return lstat((d + "/dangling").c_str(), &st); });
  SameErr("stat symlink loop", ELOOP,
          [&](const std::string& d) { return stat((d + "/loop1").c_str(), &st); });
  SameErr("lstat existing", 0,
          [&](const std::string& d) { return lstat((d + "/f").c_str(), &st); });
}

// ---------------------------------------------------------------------------
// setattr

using OpsSetattr = OpsFixture;

TEST_F(OpsSetattr, Chmod) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "data");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
  });
  for (mode_t mode : {0000, 0777, 0604, 04755, 02755, 06711, 01644}) {
    std::string what = "chmod file " + std::to_string(mode);
    SameErr(what, 0, [&](const std::string& d) { return chmod((d + "/f").c_str(), mode); });
    EXPECT_EQ(LStat(Src("f")).st_mode & 07777, mode) << what;
    CheckEntry("f");
  }
  for (mode_t mode : {01777, 0700, 02750}) {
    std::string what = "chmod dir " + std::to_string(mode);
    SameErr(what, 0, [&](const std::string& d) { return chmod((d + "/dir").c_str(), mode); });
    EXPECT_EQ(LStat(Src("dir")).st_mode & 07777, mode) << what;
    CheckEntry("dir");
  }
  SameErr("fchmod", 0, [](const std::string& d) {
    Fd fd(open((d + "/f").c_str(), O_RDONLY));
    return fchmod(fd.get(), 0640);
  });
  EXPECT_EQ(LStat(Src("f")).st_mode & 07777, 0640u);
  SameErr("chmod missing", ENOENT,
          [](const std::string& d) { return chmod((d + "/missing").c_str(), 0644); });
}

TEST_F(OpsSetattr, Chown) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "data");
    Spit(d + "/suid", "data");
    ASSERT_EQ(chmod((d + "/suid").c_str(), 06755), 0);
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
    ASSERT_EQ(symlink("f", (d + "/l").c_str()), 0);
  });
  SameErr("chown 1234:5678", 0,
          [](const std::string& d) { return chown((d + "/f").c_str(), 1234, 5678); });
  EXPECT_EQ(LStat(Src("f")).st_uid, 1234u);
  EXPECT_EQ(LStat(Src("f")).st_gid, 5678u);
  CheckEntry("f");
  SameErr("chown -1:42", 0, [](const std::string& d) { return chown((d + "/f").c_str(), -1, 42); });
  EXPECT_EQ(LStat(Src("f")).st_uid, 1234u);
  EXPECT_EQ(LStat(Src("f")).st_gid, 42u);
  SameErr("chown 77:-1", 0, [](const std::string& d) { return chown((d + "/f").c_str(), 77, -1); });
  EXPECT_EQ(LStat(Src("f")).st_uid, 77u);
  EXPECT_EQ(LStat(Src("f")).st_gid, 42u);
  CheckEntry("f");
  SameErr("fchown", 0, [](const std::string& d) {
    Fd fd(open((d + "/f").c_str(), O_RDONLY));
    return fchown(fd.get(), 65534, 65534);
  });
  EXPECT_EQ(LStat(Src("f")).st_uid, 65534u);
  SameErr("chown dir", 0,
          [](const std::string& d) { return chown((d + "/dir").c_str(), 300, 301); });
  CheckEntry("dir");
  // lchown changes the link, not its target.
  SameErr("lchown symlink", 0,
          [](const std::string& d) { return lchown((d + "/l").c_str(), 4321, 4322); });
  EXPECT_EQ(LStat(Src("l")).st_uid, 4321u);
  EXPECT_EQ(LStat(Src("f")).st_uid, 65534u);
  CheckEntry("l");
  // chown of a set-id file drops the set-id bits, even for root.
  SameErr("chown suid", 0, [](const std::string& d) { return chown((d + "/suid").c_str(), 1, 1); });
  CheckEntry("suid");
  SameErr("chown missing", ENOENT,
          [](const std::string& d) { return chown((d + "/missing").c_str(), 1, 1); });
}

TEST_F(OpsSetattr, TruncateGrowAndShrink) {
  const std::string data = RandomBytes(10000, 2);
  Twin([&](const std::string& d) {
    Spit(d + "/f", data);
    Spit(d + "/g", data);
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
  });
  SameErr("truncate shrink", 0,
          [](const std::string& d) { return truncate((d + "/f").c_str(), 100); });
  EXPECT_TRUE(SameBytes(Slurp(Src("f")), data.substr(0, 100)));
  CheckEntry("f");
  SameErr("truncate grow", 0,
          [](const std::string& d) { return truncate((d + "/f").c_str(), 3 * kMiB + 5); });
  EXPECT_TRUE(
      SameBytes(Slurp(Src("f")), data.substr(0, 100) + std::string(3 * kMiB + 5 - 100, '\0')));
  CheckEntry("f");
  EXPECT_TRUE(SameBytes(Slurp(Mnt("f")), Slurp(Src("f"))));
  SameErr("truncate to 0", 0, [](const std::string& d) { return truncate((d + "/f").c_str(), 0); });
  CheckEntry("f");

  SameErr("ftruncate shrink", 0, [](const std::string& d) {
    Fd fd(open((d + "/g").c_str(), O_RDWR));
    return ftruncate(fd.get(), 4097);
  });
  EXPECT_TRUE(SameBytes(Slurp(Src("g")), data.substr(0, 4097)));
  SameErr("ftruncate grow then write", 0, [](const std::string& d) {
    Fd fd(open((d + "/g").c_str(), O_RDWR));
    if (ftruncate(fd.get(), 20000) != 0) return -1L;
    return static_cast<long>(pwrite(fd.get(), "end", 3, 20000));
  });
  EXPECT_TRUE(
      SameBytes(Slurp(Src("g")), data.substr(0, 4097) + std::string(20000 - 4097, '\0') + "end"));
  CheckEntry("g");
  CheckContent("g");
  EXPECT_TRUE(SameBytes(Slurp(Mnt("g")), Slurp(Src("g"))));

  SameErr("truncate dir", EISDIR,
          [](const std::string& d) { return truncate((d + "/dir").c_str(), 0); });
  SameErr("truncate negative", EINVAL,
          [](const std::string& d) { return truncate((d + "/g").c_str(), -1); });
  SameErr("truncate missing", ENOENT,
          [](const std::string& d) { return truncate((d + "/missing").c_str(), 0); });
  SameErr("ftruncate read-only fd", EINVAL, [](const std::string& d) {
    Fd fd(open((d + "/g").c_str(), O_RDONLY));
    return ftruncate(fd.get(), 0);
  });
  CheckEntry("g");
}

TEST_F(OpsSetattr, Utimensat) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "data");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
  });
  auto set = [&](const std::string& what, const std::string& rel, timespec a, timespec m) {
    timespec t[2] = {a, m};
    return SameErr(what, 0, [&](const std::string& d) {
      return utimensat(AT_FDCWD, (d + "/" + rel).c_str(), t, 0);
    });
  };
  set("explicit", "f", {1000000000, 123456789}, {1500000000, 987654321});
  struct stat s = LStat(Src("f"));
  EXPECT_EQ(s.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(s.st_atim.tv_nsec, 123456789);
  EXPECT_EQ(s.st_mtim.tv_sec, 1500000000);
  EXPECT_EQ(s.st_mtim.tv_nsec, 987654321);
  CheckEntry("f");

  // UTIME_OMIT leaves that field alone; the other one changes.
  set("omit atime", "f", {0, UTIME_OMIT}, {1600000000, 1});
  s = LStat(Src("f"));
  EXPECT_EQ(s.st_atim.tv_sec, 1000000000);
  EXPECT_EQ(s.st_atim.tv_nsec, 123456789);
  EXPECT_EQ(s.st_mtim.tv_sec, 1600000000);
  EXPECT_EQ(s.st_mtim.tv_nsec, 1);
  CheckEntry("f");
  set("omit mtime", "f", {1700000000, 999999999}, {0, UTIME_OMIT});
  s = LStat(Src("f"));
  EXPECT_EQ(s.st_atim.tv_sec, 1700000000);
  EXPECT_EQ(s.st_atim.tv_nsec, 999999999);
  EXPECT_EQ(s.st_mtim.tv_sec, 1600000000);
  EXPECT_EQ(s.st_mtim.tv_nsec, 1);
  CheckEntry("f");

  // UTIME_NOW: that field becomes the current time, the other stays.
  timespec before, after;
  clock_gettime(CLOCK_REALTIME, &before);
  set("now mtime", "f", {0, UTIME_OMIT}, {0, UTIME_NOW});
  clock_gettime(CLOCK_REALTIME, &after);
  s = LStat(Src("f"));
  EXPECT_EQ(s.st_atim.tv_sec, 1700000000);
  EXPECT_EQ(s.st_atim.tv_nsec, 999999999);
  EXPECT_GE(s.st_mtim.tv_sec, before.tv_sec - 1);
  EXPECT_LE(s.st_mtim.tv_sec, after.tv_sec);
  CheckEntry("f");
  set("now atime", "f", {0, UTIME_NOW}, {1200000000, 5});
  s = LStat(Src("f"));
  EXPECT_GE(s.st_atim.tv_sec, before.tv_sec - 1);
  EXPECT_EQ(s.st_mtim.tv_sec, 1200000000);
  EXPECT_EQ(s.st_mtim.tv_nsec, 5);
  CheckEntry("f");
  SameErr("both now (NULL)", 0,
          [](const std::string& d) { return utimensat(AT_FDCWD, (d + "/f").c_str(), nullptr, 0); });
  s = LStat(Src("f"));
  EXPECT_GE(s.st_mtim.tv_sec, before.tv_sec - 1);
  EXPECT_GE(s.st_atim.tv_sec, before.tv_sec - 1);

  set("dir explicit", "dir", {42, 42}, {43, 43});
  s = LStat(Src("dir"));
  EXPECT_EQ(s.st_atim.tv_sec, 42);
  EXPECT_EQ(s.st_atim.tv_nsec, 42);
  EXPECT_EQ(s.st_mtim.tv_sec, 43);
  EXPECT_EQ(s.st_mtim.tv_nsec, 43);
  CheckEntry("dir");

  timespec fut[2] = {{2000000000, 2}, {2100000000, 3}};
  SameErr("futimens", 0, [&](const std::string& d) {
    Fd fd(open((d + "/f").c_str(), O_WRONLY));
    return futimens(fd.get(), fut);
  });
  s = LStat(Src("f"));
  EXPECT_EQ(s.st_atim.tv_sec, 2000000000);
  EXPECT_EQ(s.st_atim.tv_nsec, 2);
  EXPECT_EQ(s.st_mtim.tv_sec, 2100000000);
  EXPECT_EQ(s.st_mtim.tv_nsec, 3);
  CheckEntry("f");

  timespec bad[2] = {{1, 1000000000}, {1, 0}};
  SameErr("nsec out of range", EINVAL,
          [&](const std::string& d) { return utimensat(AT_FDCWD, (d + "/f").c_str(), bad, 0); });
  SameErr("missing", ENOENT, [&](const std::string& d) {
    return utimensat(AT_FDCWD, (d + "/missing").c_str(), fut, 0);
  });
  CheckEntry("f");
}

// ---------------------------------------------------------------------------
// mknod, mkdir, unlink, rmdir

using OpsNamespace = OpsFixture;

TEST_F(OpsNamespace, MknodFifoSocketDevice) {
  SameErr("mkfifo", 0, [](const std::string& d) { return mkfifo((d + "/fifo").c_str(), 0640); });
  SameErr("mknod socket", 0,
          [](const std::string& d) { return mknod((d + "/sock").c_str(), S_IFSOCK | 0600, 0); });
  SameErr("mknod char device", 0, [](const std::string& d) {
    return mknod((d + "/null").c_str(), S_IFCHR | 0666, makedev(1, 3));
  });
  SameErr("mknod block device", 0, [](const std::string& d) {
    return mknod((d + "/blk").c_str(), S_IFBLK | 0600, makedev(7, 200));
  });
  SameErr("mknod regular", 0,
          [](const std::string& d) { return mknod((d + "/reg").c_str(), S_IFREG | 0604, 0); });
  EXPECT_TRUE(S_ISFIFO(LStat(Src("fifo")).st_mode));
  EXPECT_TRUE(S_ISSOCK(LStat(Src("sock")).st_mode));
  EXPECT_TRUE(S_ISCHR(LStat(Src("null")).st_mode));
  EXPECT_EQ(LStat(Src("null")).st_rdev, makedev(1, 3));
  EXPECT_TRUE(S_ISBLK(LStat(Src("blk")).st_mode));
  EXPECT_EQ(LStat(Src("blk")).st_rdev, makedev(7, 200));
  EXPECT_TRUE(S_ISREG(LStat(Src("reg")).st_mode));
  for (const char* n : {"fifo", "sock", "null", "blk", "reg"}) CheckEntry(n);

  SameErr("mknod existing", EEXIST,
          [](const std::string& d) { return mkfifo((d + "/fifo").c_str(), 0600); });
  SameErr("mknod in missing dir", ENOENT,
          [](const std::string& d) { return mkfifo((d + "/nodir/fifo").c_str(), 0600); });
  SameErr("mknod under a file", ENOTDIR,
          [](const std::string& d) { return mkfifo((d + "/reg/fifo").c_str(), 0600); });
  SameErr("mknod bad type", EINVAL,
          [](const std::string& d) { return mknod((d + "/bad").c_str(), 0170000 | 0600, 0); });

  // The fifo made through the mount works as a fifo.
  Fd fifo(open(Mnt("fifo").c_str(), O_RDWR | O_NONBLOCK));
  ASSERT_TRUE(fifo.ok()) << std::strerror(errno);
  ASSERT_EQ(write(fifo.get(), "pipe", 4), 4);
  char buf[8];
  ASSERT_EQ(read(fifo.get(), buf, sizeof(buf)), 4);
  EXPECT_EQ(std::string(buf, 4), "pipe");

  // bind() creates a socket node through the mount; connect() reaches it.
  Steps s = SameSteps("unix socket", [](const std::string& d, Steps& s) {
    Fd srv(socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr;
    std::memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    // sun_path is short: bind relative to the directory.
    std::strncpy(addr.sun_path, "bound", sizeof(addr.sun_path) - 1);
    std::string cwd(PATH_MAX, '\0');
    if (getcwd(cwd.data(), cwd.size()) == nullptr) cwd = "/";
    cwd.resize(std::strlen(cwd.c_str()));
    if (chdir(d.c_str()) != 0) return;
    s("bind", bind(srv.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
    s("listen", listen(srv.get(), 1));
    Fd cli(socket(AF_UNIX, SOCK_STREAM, 0));
    s("connect", connect(cli.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
    s("bind again", bind(Fd(socket(AF_UNIX, SOCK_STREAM, 0)).get(),
                         reinterpret_cast<sockaddr*>(&addr), sizeof(addr)));
    if (chdir(cwd.c_str()) != 0) s("chdir back", -1);
  });
  EXPECT_EQ(s.At("connect").ret, 0);
  EXPECT_TRUE(S_ISSOCK(LStat(Src("bound")).st_mode));
  CheckEntry("bound");
}

TEST_F(OpsNamespace, MkdirUnlinkRmdir) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "x");
    ASSERT_EQ(mkdir((d + "/full").c_str(), 0755), 0);
    Spit(d + "/full/inside", "x");
    ASSERT_EQ(mkdir((d + "/empty").c_str(), 0755), 0);
    ASSERT_EQ(symlink("empty", (d + "/ldir").c_str()), 0);
  });
  SameErr("mkdir", 0, [](const std::string& d) { return mkdir((d + "/new").c_str(), 0751); });
  EXPECT_TRUE(S_ISDIR(LStat(Src("new")).st_mode));
  EXPECT_EQ(LStat(Src("new")).st_mode & 07777, 0751u & ~022u);
  CheckEntry("new");
  CheckEntry(".");  // the parent's nlink grew
  SameErr("mkdir nested", 0,
          [](const std::string& d) { return mkdir((d + "/new/deeper").c_str(), 0700); });
  CheckEntry("new");
  CheckEntry("new/deeper");
  SameErr("mkdir existing dir", EEXIST,
          [](const std::string& d) { return mkdir((d + "/new").c_str(), 0755); });
  SameErr("mkdir over a file", EEXIST,
          [](const std::string& d) { return mkdir((d + "/f").c_str(), 0755); });
  SameErr("mkdir in missing dir", ENOENT,
          [](const std::string& d) { return mkdir((d + "/nodir/x").c_str(), 0755); });
  SameErr("mkdir under a file", ENOTDIR,
          [](const std::string& d) { return mkdir((d + "/f/x").c_str(), 0755); });
  SameErr("mkdir name too long", ENAMETOOLONG, [](const std::string& d) {
    return mkdir((d + "/" + std::string(256, 'd')).c_str(), 0755);
  });

  SameErr("rmdir non-empty", ENOTEMPTY,
          [](const std::string& d) { return rmdir((d + "/full").c_str()); });
  EXPECT_EQ(Slurp(Src("full/inside")), "x");
  SameErr("rmdir a file", ENOTDIR, [](const std::string& d) { return rmdir((d + "/f").c_str()); });
  SameErr("rmdir a symlink to a dir", ENOTDIR,
          [](const std::string& d) { return rmdir((d + "/ldir").c_str()); });
  SameErr("rmdir .", EINVAL, [](const std::string& d) { return rmdir((d + "/empty/.").c_str()); });
  SameErr("rmdir missing", ENOENT,
          [](const std::string& d) { return rmdir((d + "/missing").c_str()); });
  SameErr("rmdir empty", 0, [](const std::string& d) { return rmdir((d + "/empty").c_str()); });
  CheckEntry("empty");
  CheckEntry(".");

  SameErr("unlink a dir", EISDIR,
          [](const std::string& d) { return unlink((d + "/new").c_str()); });
  SameErr("unlink missing", ENOENT,
          [](const std::string& d) { return unlink((d + "/missing").c_str()); });
  SameErr("unlink under a file", ENOTDIR,
          [](const std::string& d) { return unlink((d + "/f/x").c_str()); });
  SameErr("unlink file", 0, [](const std::string& d) { return unlink((d + "/f").c_str()); });
  CheckEntry("f");
  SameErr("unlink dangling symlink", 0,
          [](const std::string& d) { return unlink((d + "/ldir").c_str()); });
  CheckEntry("ldir");
  SameErr("unlink inside, then rmdir", 0, [](const std::string& d) {
    if (unlink((d + "/full/inside").c_str()) != 0) return -1;
    return rmdir((d + "/full").c_str());
  });
  CheckEntry("full");

  // An open file survives its unlink through the mount.
  Spit(Mnt("open"), "still here");
  Fd fd(open(Mnt("open").c_str(), O_RDWR));
  ASSERT_TRUE(fd.ok());
  ASSERT_EQ(unlink(Mnt("open").c_str()), 0);
  struct stat st;
  EXPECT_EQ(lstat(Src("open").c_str(), &st), -1);
  char buf[16];
  ASSERT_EQ(pread(fd.get(), buf, sizeof(buf), 0), 10);
  EXPECT_EQ(std::string(buf, 10), "still here");
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_nlink, 0u);
}

// ---------------------------------------------------------------------------
// symlink and readlink

using OpsSymlink = OpsFixture;

TEST_F(OpsSymlink, CreateAndReadlink) {
  Twin([](const std::string& d) { Spit(d + "/f", "target data"); });
  const std::string long_target(4000, 't');
  SameErr("symlink relative", 0,
          [](const std::string& d) { return symlink("f", (d + "/rel").c_str()); });
  SameErr("symlink long target", 0, [&](const std::string& d) {
    return symlink(long_target.c_str(), (d + "/long").c_str());
  });
  SameErr("symlink to missing", 0,
          [](const std::string& d) { return symlink("no/such", (d + "/dangling").c_str()); });
  SameErr("symlink existing", EEXIST,
          [](const std::string& d) { return symlink("x", (d + "/f").c_str()); });
  SameErr("symlink in missing dir", ENOENT,
          [](const std::string& d) { return symlink("x", (d + "/nodir/l").c_str()); });
  SameErr("symlink empty target", ENOENT,
          [](const std::string& d) { return symlink("", (d + "/empty").c_str()); });
  for (const char* n : {"rel", "long", "dangling"}) CheckEntry(n);

  char buf[8192];
  ssize_t n = readlink(Mnt("rel").c_str(), buf, sizeof(buf));
  ASSERT_EQ(n, 1);
  EXPECT_EQ(std::string(buf, 1), "f");
  n = readlink(Mnt("long").c_str(), buf, sizeof(buf));
  ASSERT_EQ(n, static_cast<ssize_t>(long_target.size()));
  EXPECT_EQ(std::string(buf, n), long_target);
  EXPECT_EQ(LStat(Src("long")).st_size, static_cast<off_t>(long_target.size()));
  SameErr("readlink short buffer", 0,
          [&](const std::string& d) { return readlink((d + "/dangling").c_str(), buf, 3); });
  SameErr("readlink a file", EINVAL,
          [&](const std::string& d) { return readlink((d + "/f").c_str(), buf, sizeof(buf)); });
  SameErr("readlink missing", ENOENT, [&](const std::string& d) {
    return readlink((d + "/missing").c_str(), buf, sizeof(buf));
  });
  EXPECT_EQ(Slurp(Mnt("rel")), "target data");
  SameErr("open dangling", ENOENT,
          [](const std::string& d) { return Fd(open((d + "/dangling").c_str(), O_RDONLY)).get(); });
}

TEST_F(OpsSymlink, OutsideTargetIsNotFollowedInSource) {
  // A file outside SOURCE that the links point at; nothing done through the
  // mount to a link may reach it.
  std::string outside = mount_->base() + "/outside-" + name_;
  Spit(outside, "outside data", 0644);
  timespec t[2] = {{100, 1}, {200, 2}};
  ASSERT_EQ(utimensat(AT_FDCWD, outside.c_str(), t, 0), 0);
  struct stat outside_before = LStat(outside);

  SameErr("symlink to /etc", 0,
          [](const std::string& d) { return symlink("/etc", (d + "/etc").c_str()); });
  SameErr("symlink to outside file", 0,
          [&](const std::string& d) { return symlink(outside.c_str(), (d + "/out").c_str()); });
  SameErr("relative symlink leaving SOURCE", 0,
          [](const std::string& d) { return symlink("../../..", (d + "/up").c_str()); });
  for (const char* n : {"etc", "out", "up"}) {
    struct stat st = LStat(Mnt(n));
    EXPECT_TRUE(S_ISLNK(st.st_mode)) << n << " is not a symlink through the mount";
    CheckEntry(n);
  }
  char buf[PATH_MAX];
  ssize_t n = readlink(Mnt("etc").c_str(), buf, sizeof(buf));
  ASSERT_EQ(n, 4);
  EXPECT_EQ(std::string(buf, n), "/etc");
  n = readlink(Mnt("out").c_str(), buf, sizeof(buf));
  EXPECT_EQ(std::string(buf, std::max<ssize_t>(n, 0)), outside);

  SameErr("O_NOFOLLOW on symlink to /etc", ELOOP, [](const std::string& d) {
    return Fd(open((d + "/etc").c_str(), O_RDONLY | O_NOFOLLOW)).get();
  });
  SameErr("O_NOFOLLOW|O_DIRECTORY", ENOTDIR, [](const std::string& d) {
    return Fd(open((d + "/etc").c_str(), O_RDONLY | O_NOFOLLOW | O_DIRECTORY)).get();
  });
  SameErr("O_NOFOLLOW on symlink to a file", ELOOP, [](const std::string& d) {
    return Fd(open((d + "/out").c_str(), O_RDWR | O_NOFOLLOW)).get();
  });
  SameErr("O_CREAT|O_EXCL on a symlink", EEXIST, [](const std::string& d) {
    return Fd(open((d + "/out").c_str(), O_RDWR | O_CREAT | O_EXCL, 0644)).get();
  });
  struct stat st;
  SameErr("O_PATH|O_NOFOLLOW opens the link", 0, [&](const std::string& d) {
    Fd fd(open((d + "/out").c_str(), O_PATH | O_NOFOLLOW));
    if (!fd.ok()) return -1;
    if (fstat(fd.get(), &st) != 0) return -1;
    return S_ISLNK(st.st_mode) ? 0 : -2;
  });

  // Attribute changes on the link itself stay on the link.
  SameErr("lchown outside link", 0,
          [](const std::string& d) { return lchown((d + "/out").c_str(), 999, 998); });
  EXPECT_EQ(LStat(Src("out")).st_uid, 999u);
  timespec lt[2] = {{300, 3}, {400, 4}};
  SameErr("utimensat NOFOLLOW on link", 0, [&](const std::string& d) {
    return utimensat(AT_FDCWD, (d + "/out").c_str(), lt, AT_SYMLINK_NOFOLLOW);
  });
  EXPECT_EQ(LStat(Src("out")).st_mtim.tv_sec, 400);
  EXPECT_EQ(LStat(Src("out")).st_mtim.tv_nsec, 4);
  CheckEntry("out");
  SameErr("lsetxattr trusted on link", 0, [](const std::string& d) {
    return lsetxattr((d + "/out").c_str(), "trusted.cachefs", "v", 1, 0);
  });
  char v[8];
  EXPECT_EQ(lgetxattr(Src("out").c_str(), "trusted.cachefs", v, sizeof(v)), 1);
  EXPECT_EQ(lgetxattr(outside.c_str(), "trusted.cachefs", v, sizeof(v)), -1);
  SameErr("lremovexattr trusted on link", 0, [](const std::string& d) {
    return lremovexattr((d + "/out").c_str(), "trusted.cachefs");
  });
  // chmod of a symlink itself (fchmodat2 with AT_SYMLINK_NOFOLLOW).
  constexpr long kSysFchmodat2 = 452;
  SameErr("fchmodat2 NOFOLLOW on link", EOPNOTSUPP, [&](const std::string& d) {
    return syscall(kSysFchmodat2, AT_FDCWD, (d + "/out").c_str(), 0600, AT_SYMLINK_NOFOLLOW);
  });

  struct stat outside_after = LStat(outside);
  EXPECT_EQ(outside_after.st_uid, outside_before.st_uid);
  EXPECT_EQ(outside_after.st_mode, outside_before.st_mode);
  EXPECT_TRUE(SameTime(outside_after.st_mtim, outside_before.st_mtim));
  EXPECT_TRUE(SameTime(outside_after.st_ctim, outside_before.st_ctim));
  EXPECT_EQ(Slurp(outside), "outside data");
  unlink(outside.c_str());
}

// ---------------------------------------------------------------------------
// rename and link

using OpsRename = OpsFixture;

long Rename2(const std::string& a, const std::string& b, unsigned flags) {
  return syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), flags);
}

TEST_F(OpsRename, PlainAndOverExisting) {
  Twin([](const std::string& d) {
    Spit(d + "/a", "content of a");
    Spit(d + "/b", "content of b");
    Spit(d + "/c", "content of c");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
    ASSERT_EQ(mkdir((d + "/dir2").c_str(), 0755), 0);
    Spit(d + "/dir2/x", "x");
  });
  ino_t a_ino = LStat(Src("a")).st_ino;
  LStat(Mnt("a"));  // known to the kernel before the rename
  SameErr("rename plain", 0,
          [](const std::string& d) { return rename((d + "/a").c_str(), (d + "/a2").c_str()); });
  EXPECT_EQ(Slurp(Src("a2")), "content of a");
  EXPECT_EQ(LStat(Src("a2")).st_ino, a_ino);
  EXPECT_EQ(LStat(Mnt("a2")).st_ino, a_ino);
  CheckEntry("a");
  CheckEntry("a2");

  ino_t b_ino = LStat(Src("b")).st_ino;
  LStat(Mnt("c"));
  SameErr("rename over existing", 0,
          [](const std::string& d) { return rename((d + "/b").c_str(), (d + "/c").c_str()); });
  EXPECT_EQ(Slurp(Src("c")), "content of b");
  EXPECT_EQ(LStat(Mnt("c")).st_ino, b_ino);
  EXPECT_EQ(Slurp(Mnt("c")), "content of b");
  CheckEntry("b");
  CheckEntry("c");

  SameErr("rename into a subdirectory", 0,
          [](const std::string& d) { return rename((d + "/c").c_str(), (d + "/dir/c").c_str()); });
  EXPECT_EQ(Slurp(Src("dir/c")), "content of b");
  CheckEntry("dir/c");
  SameErr("rename dir", 0,
          [](const std::string& d) { return rename((d + "/dir").c_str(), (d + "/dir3").c_str()); });
  CheckEntry("dir3/c");
  SameErr("rename dir over empty dir", 0, [](const std::string& d) {
    if (mkdir((d + "/emptydir").c_str(), 0755) != 0) return -1;
    return rename((d + "/dir3").c_str(), (d + "/emptydir").c_str());
  });
  CheckEntry("emptydir/c");
  SameErr("rename to itself", 0,
          [](const std::string& d) { return rename((d + "/a2").c_str(), (d + "/a2").c_str()); });

  SameErr("rename missing", ENOENT,
          [](const std::string& d) { return rename((d + "/nope").c_str(), (d + "/x").c_str()); });
  SameErr("rename dir over non-empty dir", ENOTEMPTY, [](const std::string& d) {
    return rename((d + "/emptydir").c_str(), (d + "/dir2").c_str());
  });
  SameErr("rename file over dir", EISDIR, [](const std::string& d) {
    return rename((d + "/a2").c_str(), (d + "/emptydir").c_str());
  });
  SameErr("rename dir over file", ENOTDIR, [](const std::string& d) {
    return rename((d + "/emptydir").c_str(), (d + "/a2").c_str());
  });
  SameErr("rename dir into itself", EINVAL, [](const std::string& d) {
    return rename((d + "/dir2").c_str(), (d + "/dir2/sub").c_str());
  });
  SameErr("rename into missing dir", ENOENT, [](const std::string& d) {
    return rename((d + "/a2").c_str(), (d + "/nodir/a").c_str());
  });
  for (const char* n : {"a2", "emptydir", "dir2", "dir2/x"}) CheckEntry(n);
}

TEST_F(OpsRename, NoreplaceAndExchange) {
  Twin([](const std::string& d) {
    Spit(d + "/x", "xxxxxx");
    Spit(d + "/y", "yy");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
    Spit(d + "/dir/inside", "in");
  });
  SameErr("NOREPLACE over existing", EEXIST,
          [](const std::string& d) { return Rename2(d + "/x", d + "/y", RENAME_NOREPLACE); });
  EXPECT_EQ(Slurp(Src("x")), "xxxxxx");
  EXPECT_EQ(Slurp(Src("y")), "yy");
  SameErr("NOREPLACE to a new name", 0,
          [](const std::string& d) { return Rename2(d + "/x", d + "/x2", RENAME_NOREPLACE); });
  CheckEntry("x");
  CheckEntry("x2");

  ino_t x_ino = LStat(Src("x2")).st_ino;
  ino_t y_ino = LStat(Src("y")).st_ino;
  LStat(Mnt("x2"));
  LStat(Mnt("y"));
  SameErr("EXCHANGE", 0,
          [](const std::string& d) { return Rename2(d + "/x2", d + "/y", RENAME_EXCHANGE); });
  EXPECT_EQ(Slurp(Src("x2")), "yy");
  EXPECT_EQ(Slurp(Src("y")), "xxxxxx");
  EXPECT_EQ(Slurp(Mnt("x2")), "yy");
  EXPECT_EQ(Slurp(Mnt("y")), "xxxxxx");
  EXPECT_EQ(LStat(Mnt("x2")).st_ino, y_ino);
  EXPECT_EQ(LStat(Mnt("y")).st_ino, x_ino);
  CheckEntry("x2");
  CheckEntry("y");
  SameErr("EXCHANGE file and dir", 0,
          [](const std::string& d) { return Rename2(d + "/y", d + "/dir", RENAME_EXCHANGE); });
  EXPECT_EQ(Slurp(Src("dir")), "xxxxxx");
  EXPECT_EQ(Slurp(Src("y/inside")), "in");
  CheckEntry("y");
  CheckEntry("dir");
  SameErr("EXCHANGE with missing", ENOENT,
          [](const std::string& d) { return Rename2(d + "/x2", d + "/nope", RENAME_EXCHANGE); });
  SameErr("EXCHANGE|NOREPLACE", EINVAL, [](const std::string& d) {
    return Rename2(d + "/x2", d + "/dir", RENAME_EXCHANGE | RENAME_NOREPLACE);
  });
  SameErr("unknown flag", EINVAL,
          [](const std::string& d) { return Rename2(d + "/x2", d + "/z", 1u << 20); });
  CheckEntry("x2");
}

using OpsLink = OpsFixture;

TEST_F(OpsLink, SharesInodeAndCountsLinks) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "shared");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
    ASSERT_EQ(symlink("f", (d + "/sl").c_str()), 0);
  });
  LStat(Mnt("f"));
  SameErr("link", 0,
          [](const std::string& d) { return link((d + "/f").c_str(), (d + "/g").c_str()); });
  struct stat f = LStat(Mnt("f"));
  struct stat g = LStat(Mnt("g"));
  EXPECT_EQ(f.st_nlink, 2u);
  EXPECT_EQ(g.st_nlink, 2u);
  EXPECT_EQ(f.st_ino, g.st_ino);
  EXPECT_EQ(f.st_ino, LStat(Src("f")).st_ino);
  EXPECT_EQ(LStat(Src("g")).st_ino, LStat(Src("f")).st_ino);
  CheckEntry("f");
  CheckEntry("g");
  SameErr("link into subdir", 0,
          [](const std::string& d) { return link((d + "/g").c_str(), (d + "/dir/h").c_str()); });
  EXPECT_EQ(LStat(Mnt("f")).st_nlink, 3u);
  CheckEntry("dir/h");
  // Writes through one name are seen through the other.
  Spit(Mnt("dir/h"), "rewritten");
  Spit(Ref("dir/h"), "rewritten");
  EXPECT_EQ(Slurp(Mnt("f")), "rewritten");
  EXPECT_EQ(Slurp(Src("g")), "rewritten");

  // linkat() on a symlink without AT_SYMLINK_FOLLOW links the symlink itself.
  SameErr("link a symlink", 0, [](const std::string& d) {
    return linkat(AT_FDCWD, (d + "/sl").c_str(), AT_FDCWD, (d + "/sl2").c_str(), 0);
  });
  EXPECT_TRUE(S_ISLNK(LStat(Src("sl2")).st_mode));
  CheckEntry("sl2");

  SameErr("link to existing", EEXIST,
          [](const std::string& d) { return link((d + "/f").c_str(), (d + "/g").c_str()); });
  SameErr("link a directory", EPERM,
          [](const std::string& d) { return link((d + "/dir").c_str(), (d + "/dir2").c_str()); });
  SameErr("link missing", ENOENT,
          [](const std::string& d) { return link((d + "/nope").c_str(), (d + "/x").c_str()); });
  SameErr("link into missing dir", ENOENT,
          [](const std::string& d) { return link((d + "/f").c_str(), (d + "/nodir/x").c_str()); });

  SameErr("unlink one name", 0, [](const std::string& d) { return unlink((d + "/f").c_str()); });
  EXPECT_EQ(LStat(Mnt("g")).st_nlink, 2u);
  CheckEntry("g");
  CheckEntry("f");
}

// ---------------------------------------------------------------------------
// open and create

using OpsOpen = OpsFixture;

TEST_F(OpsOpen, TruncExclAndErrors) {
  Twin([](const std::string& d) {
    Spit(d + "/f", RandomBytes(50000, 3));
    Spit(d + "/g", "keep");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
  });
  SameErr("O_TRUNC", 0, [](const std::string& d) {
    return Fd(open((d + "/f").c_str(), O_WRONLY | O_TRUNC)).ok() ? 0 : -1;
  });
  EXPECT_EQ(LStat(Src("f")).st_size, 0);
  CheckEntry("f");
  Spit(Mnt("f"), "short");
  SameErr("O_RDWR|O_CREAT|O_TRUNC existing", 0, [](const std::string& d) {
    Fd fd(open((d + "/f").c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600));
    return fd.ok() ? static_cast<long>(write(fd.get(), "ab", 2)) : -1L;
  });
  EXPECT_EQ(Slurp(Src("f")), "ab");
  EXPECT_EQ(LStat(Src("f")).st_mode & 07777, 0644u);  // mode of an existing file unchanged
  SameErr("O_EXCL existing", EEXIST, [](const std::string& d) {
    return Fd(open((d + "/g").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600)).get();
  });
  EXPECT_EQ(Slurp(Src("g")), "keep");
  SameErr("O_EXCL new", 0, [](const std::string& d) {
    return Fd(open((d + "/new").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600)).ok() ? 0 : -1;
  });
  CheckEntry("new");
  SameErr("open missing", ENOENT,
          [](const std::string& d) { return Fd(open((d + "/missing").c_str(), O_RDONLY)).get(); });
  SameErr("O_CREAT in missing dir", ENOENT, [](const std::string& d) {
    return Fd(open((d + "/nodir/x").c_str(), O_WRONLY | O_CREAT, 0644)).get();
  });
  SameErr("O_DIRECTORY on a file", ENOTDIR, [](const std::string& d) {
    return Fd(open((d + "/g").c_str(), O_RDONLY | O_DIRECTORY)).get();
  });
  SameErr("write-open a dir", EISDIR,
          [](const std::string& d) { return Fd(open((d + "/dir").c_str(), O_WRONLY)).get(); });
  SameErr("O_CREAT on a dir", EISDIR, [](const std::string& d) {
    return Fd(open((d + "/dir").c_str(), O_RDWR | O_CREAT, 0644)).get();
  });
  SameErr("O_CREAT|O_DIRECTORY", EINVAL, [](const std::string& d) {
    return Fd(open((d + "/nd").c_str(), O_RDWR | O_CREAT | O_DIRECTORY, 0644)).get();
  });
  SameErr("file/ as a path", ENOTDIR,
          [](const std::string& d) { return Fd(open((d + "/g/").c_str(), O_RDONLY)).get(); });
  SameErr("name too long", ENAMETOOLONG, [](const std::string& d) {
    return Fd(open((d + "/" + std::string(300, 'x')).c_str(), O_RDWR | O_CREAT, 0644)).get();
  });
  SameErr("read from O_WRONLY", EBADF, [](const std::string& d) {
    Fd fd(open((d + "/g").c_str(), O_WRONLY));
    char c;
    return static_cast<long>(read(fd.get(), &c, 1));
  });
  SameErr("write to O_RDONLY", EBADF, [](const std::string& d) {
    Fd fd(open((d + "/g").c_str(), O_RDONLY));
    return static_cast<long>(write(fd.get(), "x", 1));
  });
  SameErr("O_RDONLY|O_TRUNC", 0, [](const std::string& d) {
    return Fd(open((d + "/g").c_str(), O_RDONLY | O_TRUNC)).ok() ? 0 : -1;
  });
  CheckEntry("g");
  SameErr("open a dir O_RDONLY", 0, [](const std::string& d) {
    return Fd(open((d + "/dir").c_str(), O_RDONLY | O_DIRECTORY)).ok() ? 0 : -1;
  });
}

TEST_F(OpsOpen, CreateModeHonoursUmask) {
  const std::vector<std::pair<mode_t, mode_t>> cases = {
      {022, 0666}, {022, 0777}, {0, 0777}, {077, 0666}, {027, 0751}, {0, 01777}, {0, 04755}};
  int i = 0;
  for (const auto& c : cases) {
    const mode_t mask = c.first;
    const mode_t mode = c.second;
    std::string n = "c" + std::to_string(i);
    std::string dn = "d" + std::to_string(i);
    std::string fn = "m" + std::to_string(i);
    ++i;
    umask(mask);
    std::string what = "umask " + std::to_string(mask) + " mode " + std::to_string(mode);
    SameErr("create, " + what, 0, [&](const std::string& d) {
      return Fd(open(Join(d, n).c_str(), O_WRONLY | O_CREAT | O_EXCL, mode)).ok() ? 0 : -1;
    });
    SameErr("mkdir, " + what, 0,
            [&](const std::string& d) { return mkdir(Join(d, dn).c_str(), mode); });
    SameErr("mkfifo, " + what, 0,
            [&](const std::string& d) { return mkfifo(Join(d, fn).c_str(), mode); });
    EXPECT_EQ(LStat(Src(n)).st_mode & 07777, mode & ~mask & 07777) << what;
    CheckEntry(n);
    CheckEntry(dn);
    CheckEntry(fn);
  }
  umask(022);
}

TEST_F(OpsOpen, AppendInterleaves) {
  Twin([](const std::string& d) { Spit(d + "/log", "head\n"); });
  Steps s = SameSteps("two O_APPEND writers", [](const std::string& d, Steps& s) {
    Fd a(open((d + "/log").c_str(), O_WRONLY | O_APPEND));
    Fd b(open((d + "/log").c_str(), O_WRONLY | O_APPEND));
    std::string ab(100, 'A'), bb(200, 'B'), cb(50, 'C');
    s("write a", write(a.get(), ab.data(), ab.size()));
    s("write b", write(b.get(), bb.data(), bb.size()));
    s("write a again", write(a.get(), cb.data(), cb.size()));
    s("offset a", lseek(a.get(), 0, SEEK_CUR));
    s("offset b", lseek(b.get(), 0, SEEK_CUR));
    // pwrite on an O_APPEND descriptor appends too (Linux).
    s("pwrite at 0", pwrite(b.get(), "P", 1, 0));
    s("size", lseek(b.get(), 0, SEEK_END));
  });
  EXPECT_EQ(s.At("size").ret, 5 + 100 + 200 + 50 + 1);
  EXPECT_EQ(Slurp(Src("log")),
            "head\n" + std::string(100, 'A') + std::string(200, 'B') + std::string(50, 'C') + "P");
  CheckContent("log");
  CheckEntry("log");

  // Many small appends from two descriptors: nothing overwritten.
  Spit(Mnt("many"), "");
  {
    Fd a(open(Mnt("many").c_str(), O_WRONLY | O_APPEND));
    Fd b(open(Mnt("many").c_str(), O_WRONLY | O_APPEND));
    ASSERT_TRUE(a.ok() && b.ok());
    std::thread ta([&] {
      for (int i = 0; i < 500; ++i) ASSERT_EQ(write(a.get(), "aaaaaaa\n", 8), 8);
    });
    std::thread tb([&] {
      for (int i = 0; i < 500; ++i) ASSERT_EQ(write(b.get(), "bbbbbbb\n", 8), 8);
    });
    ta.join();
    tb.join();
  }
  std::string all = Slurp(Src("many"));
  ASSERT_EQ(all.size(), 8000u);
  EXPECT_EQ(std::count(all.begin(), all.end(), 'a'), 3500);
  EXPECT_EQ(std::count(all.begin(), all.end(), 'b'), 3500);
  for (size_t i = 0; i < all.size(); i += 8) {
    std::string rec = all.substr(i, 8);
    ASSERT_TRUE(rec == "aaaaaaa\n" || rec == "bbbbbbb\n") << "torn record at " << i << ": " << rec;
  }
}

// ---------------------------------------------------------------------------
// read and write

using OpsIo = OpsFixture;

TEST_F(OpsIo, OffsetsAndPositions) {
  Twin([](const std::string& d) { Spit(d + "/f", ""); });
  Steps s = SameSteps("read/write at offsets", [](const std::string& d, Steps& s) {
    Fd fd(open((d + "/f").c_str(), O_RDWR));
    s("pwrite 100", pwrite(fd.get(), "hello", 5, 100));
    s("pwrite 5000", pwrite(fd.get(), "world", 5, 5000));
    s("pwrite 2", pwrite(fd.get(), "xy", 2, 2));
    s("offset after pwrite", lseek(fd.get(), 0, SEEK_CUR));
    s("write at 0", write(fd.get(), "0123456789", 10));
    s("offset", lseek(fd.get(), 0, SEEK_CUR));
    s("seek 4998", lseek(fd.get(), 4998, SEEK_SET));
    char buf[64];
    s("read over EOF", read(fd.get(), buf, sizeof(buf)));
    s("read at EOF", read(fd.get(), buf, sizeof(buf)));
    s("pread 100", pread(fd.get(), buf, 5, 100));
    s("pread bytes", std::string(buf, 5) == "hello");
    s("pread past EOF", pread(fd.get(), buf, 5, 100000));
    s("pread hole", pread(fd.get(), buf, 10, 200));
    s("hole is zero", std::string(buf, 10) == std::string(10, '\0'));
    s("pread negative", pread(fd.get(), buf, 5, -1));
    s("pwrite negative", pwrite(fd.get(), buf, 5, -1));
    s("seek end", lseek(fd.get(), 0, SEEK_END));
    s("seek -10 from end", lseek(fd.get(), -10, SEEK_END));
    s("seek before 0", lseek(fd.get(), -10, SEEK_SET));
    s("write empty", write(fd.get(), buf, 0));
    s("size", lseek(fd.get(), 0, SEEK_END));
    Fd dir(open(d.c_str(), O_RDONLY | O_DIRECTORY));
    s("read a dir", read(dir.get(), buf, sizeof(buf)));
  });
  EXPECT_EQ(s.At("size").ret, 5005);
  EXPECT_EQ(s.At("pread bytes").ret, 1);
  EXPECT_EQ(s.At("hole is zero").ret, 1);
  EXPECT_EQ(s.At("read a dir").err, EISDIR);
  CheckContent("f");
  CheckEntry("f");
  std::string c = Slurp(Src("f"));
  ASSERT_EQ(c.size(), 5005u);
  EXPECT_EQ(c.substr(0, 10), "0123456789");
  EXPECT_EQ(c.substr(100, 5), "hello");
  EXPECT_EQ(c.substr(5000, 5), "world");
}

TEST_F(OpsIo, LargeSequentialWriteAndRead) {
  const std::string data = RandomBytes(8 * kMiB, 4);
  {
    Fd fd(open(Mnt("big").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644));
    ASSERT_TRUE(fd.ok()) << std::strerror(errno);
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = write(fd.get(), data.data() + done, data.size() - done);
      ASSERT_GT(n, 0) << std::strerror(errno);
      done += static_cast<size_t>(n);
    }
    EXPECT_EQ(fd.Close(), 0);
  }
  std::string in_source = Slurp(Src("big"));
  ASSERT_EQ(in_source.size(), data.size());
  EXPECT_TRUE(in_source == data) << "source differs from what was written";
  std::string through = Slurp(Mnt("big"));
  ASSERT_EQ(through.size(), data.size());
  EXPECT_TRUE(through == data) << "read through the mount differs";
  // Odd-sized reads at odd offsets.
  Fd fd(open(Mnt("big").c_str(), O_RDONLY));
  ASSERT_TRUE(fd.ok());
  std::string buf(300001, '\0');
  for (off_t off : {off_t{1}, off_t{4095}, 3 * kMiB + 7, 8 * kMiB - 300001}) {
    ASSERT_EQ(pread(fd.get(), buf.data(), buf.size(), off), static_cast<ssize_t>(buf.size()));
    EXPECT_TRUE(buf == data.substr(off, buf.size())) << "at " << off;
  }
  EXPECT_EQ(LStat(Mnt("big")).st_size, 8 * kMiB);
}

TEST_F(OpsIo, SparseWritesPastEof) {
  Twin([](const std::string& d) { Spit(d + "/s", "start"); });
  SameSteps("sparse", [](const std::string& d, Steps& s) {
    Fd fd(open((d + "/s").c_str(), O_RDWR));
    s("pwrite 10 MiB", pwrite(fd.get(), "end", 3, 10 * kMiB));
    s("pwrite 1 MiB+1", pwrite(fd.get(), "mid", 3, kMiB + 1));
    struct stat st;
    fstat(fd.get(), &st);
    s("size", st.st_size);
    s("blocks small", st.st_blocks < 1024);
    char buf[4096];
    s("read hole", pread(fd.get(), buf, sizeof(buf), 2 * kMiB));
    s("hole zeros", std::all_of(buf, buf + sizeof(buf), [](char c) { return c == 0; }));
  });
  CheckContent("s");
  CheckEntry("s");
  EXPECT_EQ(LStat(Src("s")).st_size, 10 * kMiB + 3);
  std::string c = Slurp(Mnt("s"));
  ASSERT_EQ(c.size(), static_cast<size_t>(10 * kMiB + 3));
  EXPECT_EQ(c.substr(0, 5), "start");
  EXPECT_EQ(c.substr(kMiB + 1, 3), "mid");
  EXPECT_EQ(c.substr(10 * kMiB, 3), "end");
  EXPECT_EQ(c.find_first_not_of('\0', 5), static_cast<size_t>(kMiB + 1));
}

// ---------------------------------------------------------------------------
// flush, fsync

using OpsSync = OpsFixture;

TEST_F(OpsSync, FsyncFdatasyncFsyncdir) {
  Twin([](const std::string& d) { ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0); });
  Steps s = SameSteps("syncs", [](const std::string& d, Steps& s) {
    Fd fd(open((d + "/f").c_str(), O_RDWR | O_CREAT, 0644));
    s("write", write(fd.get(), "data", 4));
    s("fsync", fsync(fd.get()));
    s("write 2", write(fd.get(), "more", 4));
    s("fdatasync", fdatasync(fd.get()));
    s("sync_file_range", sync_file_range(fd.get(), 0, 0, SYNC_FILE_RANGE_WRITE));
    s("syncfs", syncfs(fd.get()));
    s("close", fd.Close());
    Fd ro(open((d + "/f").c_str(), O_RDONLY));
    s("fsync read-only", fsync(ro.get()));
    Fd dir(open((d + "/dir").c_str(), O_RDONLY | O_DIRECTORY));
    s("fsync dir", fsync(dir.get()));
    s("fdatasync dir", fdatasync(dir.get()));
    Fd top(open(d.c_str(), O_RDONLY | O_DIRECTORY));
    s("fsync top dir", fsync(top.get()));
    Fd opath(open((d + "/f").c_str(), O_PATH));
    s("fsync O_PATH", fsync(opath.get()));
    // A duplicate's close flushes without closing the file.
    Fd w(open((d + "/f").c_str(), O_WRONLY | O_APPEND));
    Fd dup_fd(dup(w.get()));
    s("close dup", dup_fd.Close());
    s("write after dup close", write(w.get(), "!", 1));
    s("close", w.Close());
  });
  EXPECT_EQ(s.At("fsync").ret, 0);
  EXPECT_EQ(s.At("fdatasync").ret, 0);
  EXPECT_EQ(s.At("fsync dir").ret, 0);
  EXPECT_EQ(s.At("fsync O_PATH").err, EBADF);
  EXPECT_EQ(Slurp(Src("f")), "datamore!");
  CheckContent("f");
}

// ---------------------------------------------------------------------------
// readdir

using OpsReaddir = OpsFixture;

std::vector<std::string> ListAll(DIR* dp, size_t limit = SIZE_MAX) {
  std::vector<std::string> names;
  while (names.size() < limit) {
    errno = 0;
    dirent* e = readdir(dp);
    if (e == nullptr) {
      EXPECT_EQ(errno, 0) << "readdir: " << std::strerror(errno);
      break;
    }
    names.emplace_back(e->d_name);
  }
  return names;
}

std::string EntryName(int i) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "e%04d", i);
  return buf;
}

void ExpectEachOnce(const std::vector<std::string>& names, const std::set<std::string>& must,
                    const std::set<std::string>& may, const std::string& what) {
  std::map<std::string, int> seen;
  for (const auto& n : names) seen[n]++;
  for (const auto& [n, count] : seen) {
    EXPECT_EQ(count, 1) << what << ": " << n << " returned " << count << " times";
    EXPECT_TRUE(must.count(n) || may.count(n)) << what << ": unexpected entry " << n;
  }
  size_t missing = 0;
  for (const auto& n : must) {
    if (!seen.count(n)) {
      if (++missing <= 5) ADD_FAILURE() << what << ": entry " << n << " not returned";
    }
  }
  EXPECT_EQ(missing, 0u) << what;
}

constexpr int kEntries = 2000;

TEST_F(OpsReaddir, ManyEntriesEachOnce) {
  Twin([](const std::string& d) {
    ASSERT_EQ(mkdir((d + "/big").c_str(), 0755), 0);
    for (int i = 0; i < kEntries; ++i) Spit(d + "/big/" + EntryName(i), "");
  });
  std::set<std::string> all = {".", ".."};
  for (int i = 0; i < kEntries; ++i) all.insert(EntryName(i));

  DIR* dp = opendir(Mnt("big").c_str());
  ASSERT_NE(dp, nullptr) << std::strerror(errno);
  std::vector<std::string> names = ListAll(dp);
  EXPECT_EQ(names.size(), all.size());
  ExpectEachOnce(names, all, {}, "full listing");

  // rewinddir, then telldir/seekdir in the middle.
  rewinddir(dp);
  std::vector<std::string> first = ListAll(dp, 1000);
  ASSERT_EQ(first.size(), 1000u);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), names.begin())) << "rewinddir order";
  long pos = telldir(dp);
  ASSERT_NE(pos, -1);
  std::vector<std::string> next = ListAll(dp, 50);
  ASSERT_EQ(next.size(), 50u);
  seekdir(dp, pos);
  std::vector<std::string> again = ListAll(dp, 50);
  EXPECT_EQ(again, next) << "seekdir back to telldir";
  // A position from far back, then read to the end.
  rewinddir(dp);
  ListAll(dp, 10);
  long early = telldir(dp);
  ListAll(dp);
  seekdir(dp, early);
  std::vector<std::string> rest = ListAll(dp);
  EXPECT_EQ(rest.size(), names.size() - 10);
  EXPECT_TRUE(std::equal(rest.begin(), rest.end(), names.begin() + 10)) << "seekdir to 10";
  closedir(dp);

  // The listing through the mount has exactly the names of SOURCE's.
  DIR* sp = opendir(Src("big").c_str());
  ASSERT_NE(sp, nullptr);
  std::vector<std::string> src_names = ListAll(sp);
  closedir(sp);
  std::sort(src_names.begin(), src_names.end());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, src_names);
}

TEST_F(OpsReaddir, ConcurrentUnlink) {
  Twin([](const std::string& d) {
    ASSERT_EQ(mkdir((d + "/big").c_str(), 0755), 0);
    for (int i = 0; i < kEntries; ++i) Spit(d + "/big/" + EntryName(i), "");
  });
  for (bool through_mount : {true, false}) {
    std::string what = through_mount ? "unlink through the mount" : "unlink in SOURCE";
    int base = through_mount ? 0 : 1;  // each pass removes its own entries
    DIR* dp = opendir(Mnt("big").c_str());
    ASSERT_NE(dp, nullptr);
    std::vector<std::string> names = ListAll(dp, 700);
    ASSERT_EQ(names.size(), 700u);
    // Remove every 4th entry (shifted per pass), whether already listed or not.
    std::set<std::string> removed;
    for (int i = base; i < kEntries; i += 4) {
      std::string n = EntryName(i);
      std::string path = (through_mount ? Mnt("big/") : Src("big/")) + n;
      if (access(Src("big/" + n).c_str(), F_OK) != 0) continue;
      ASSERT_EQ(unlink(path.c_str()), 0) << path << ": " << std::strerror(errno);
      removed.insert(n);
    }
    std::vector<std::string> more = ListAll(dp);
    closedir(dp);
    names.insert(names.end(), more.begin(), more.end());
    std::set<std::string> must = {".", ".."};
    std::set<std::string> may;
    for (int i = 0; i < kEntries; ++i) {
      std::string n = EntryName(i);
      if (removed.count(n)) {
        may.insert(n);
      } else if (access(Src("big/" + n).c_str(), F_OK) == 0) {
        must.insert(n);
      }
    }
    ExpectEachOnce(names, must, may, what);
    // A fresh listing has exactly the survivors.
    dp = opendir(Mnt("big").c_str());
    ASSERT_NE(dp, nullptr);
    std::vector<std::string> fresh = ListAll(dp);
    closedir(dp);
    ExpectEachOnce(fresh, must, {}, what + ", fresh listing");
    EXPECT_EQ(fresh.size(), must.size()) << what;
  }
}

TEST_F(OpsReaddir, DirentTypes) {
  Twin([](const std::string& d) {
    Spit(d + "/reg", "x");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
    ASSERT_EQ(symlink("reg", (d + "/lnk").c_str()), 0);
    ASSERT_EQ(mkfifo((d + "/fifo").c_str(), 0644), 0);
    ASSERT_EQ(mknod((d + "/sock").c_str(), S_IFSOCK | 0644, 0), 0);
    ASSERT_EQ(mknod((d + "/chr").c_str(), S_IFCHR | 0644, makedev(1, 3)), 0);
    ASSERT_EQ(mknod((d + "/blk").c_str(), S_IFBLK | 0644, makedev(7, 0)), 0);
  });
  auto types = [](const std::string& dir) {
    std::map<std::string, std::pair<int, ino_t>> out;
    DIR* dp = opendir(dir.c_str());
    EXPECT_NE(dp, nullptr);
    if (dp == nullptr) return out;
    while (dirent* e = readdir(dp)) out[e->d_name] = {e->d_type, e->d_ino};
    closedir(dp);
    return out;
  };
  auto m = types(MntDir());
  auto r = types(RefDir());
  auto s = types(SrcDir());
  const std::map<std::string, int> want = {{"reg", DT_REG},   {"dir", DT_DIR},   {"lnk", DT_LNK},
                                           {"fifo", DT_FIFO}, {"sock", DT_SOCK}, {"chr", DT_CHR},
                                           {"blk", DT_BLK},   {".", DT_DIR},     {"..", DT_DIR}};
  EXPECT_EQ(m.size(), want.size());
  for (const auto& [n, t] : want) {
    ASSERT_TRUE(m.count(n)) << n;
    EXPECT_EQ(m[n].first, t) << n;
    EXPECT_EQ(m[n].first, r[n].first) << n << " d_type differs from ref";
    if (n != "..") {
      EXPECT_EQ(m[n].second, s[n].second) << n << ": d_ino differs from SOURCE";
    }
  }
}

// ---------------------------------------------------------------------------
// statfs

using OpsStatfs = OpsFixture;

TEST_F(OpsStatfs, MatchesSource) {
  Twin([](const std::string& d) { Spit(d + "/f", "x"); });
  struct statvfs m, s;
  ASSERT_EQ(statvfs(Mnt("f").c_str(), &m), 0) << std::strerror(errno);
  ASSERT_EQ(statvfs(Src("f").c_str(), &s), 0);
  EXPECT_EQ(m.f_bsize, s.f_bsize);
  EXPECT_EQ(m.f_frsize, s.f_frsize);
  EXPECT_EQ(m.f_blocks, s.f_blocks);
  EXPECT_EQ(m.f_files, s.f_files);
  EXPECT_EQ(m.f_namemax, s.f_namemax);
  // Free counts move with other activity on the disk: close, not equal.
  EXPECT_LE(std::max(m.f_bfree, s.f_bfree) - std::min(m.f_bfree, s.f_bfree), 65536u);
  EXPECT_LE(std::max(m.f_bavail, s.f_bavail) - std::min(m.f_bavail, s.f_bavail), 65536u);
  Fd fd(open(Mnt("f").c_str(), O_RDONLY));
  ASSERT_EQ(fstatvfs(fd.get(), &m), 0);
  EXPECT_EQ(m.f_blocks, s.f_blocks);
  struct statvfs x;
  SameErr("statvfs missing", ENOENT,
          [&](const std::string& d) { return statvfs((d + "/missing").c_str(), &x); });
}

// ---------------------------------------------------------------------------
// extended attributes

using OpsXattr = OpsFixture;

std::vector<std::string> SplitNames(const char* buf, ssize_t n) {
  std::vector<std::string> out;
  for (ssize_t i = 0; i < n;) {
    std::string name(buf + i);
    i += static_cast<ssize_t>(name.size()) + 1;
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// xattr=off: every xattr call fails with EOPNOTSUPP (the kernel stops
// asking after the first ENOSYS, so a write is one FUSE round trip, not two),
// and a file opened for writing loses its file capabilities on SOURCE at the
// open, as a write would have dropped them.
TEST(OpsXattrOff, CallsFailAndWriteOpensDropCapabilities) {
  auto m = MountedCachefs::Start({"-o", "xattr=off"});
  ASSERT_NE(m, nullptr);
  const std::string src = m->src() + "/f";
  const std::string mnt = m->mnt() + "/f";
  {
    Fd fd(open(src.c_str(), O_CREAT | O_WRONLY, 0755));
    ASSERT_GE(fd.get(), 0);
    ASSERT_EQ(write(fd.get(), "0123456789", 10), 10);
  }
  // A v2 file capability: cap_net_raw, effective.
  const uint32_t cap[5] = {0x02000001u, 1u << 13, 0, 0, 0};
  ASSERT_EQ(setxattr(src.c_str(), "security.capability", cap, sizeof(cap), 0), 0)
      << std::strerror(errno);
  char buf[64];
  errno = 0;
  EXPECT_EQ(getxattr(mnt.c_str(), "user.a", buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  errno = 0;
  EXPECT_EQ(setxattr(mnt.c_str(), "user.a", "v", 1, 0), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  errno = 0;
  EXPECT_EQ(listxattr(mnt.c_str(), buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  errno = 0;
  EXPECT_EQ(removexattr(mnt.c_str(), "user.a"), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  {
    Fd fd(open(mnt.c_str(), O_RDONLY));  // reading keeps them
    ASSERT_GE(fd.get(), 0);
  }
  EXPECT_EQ(getxattr(src.c_str(), "security.capability", buf, sizeof(buf)),
            static_cast<ssize_t>(sizeof(cap)));
  {
    Fd fd(open(mnt.c_str(), O_WRONLY));
    ASSERT_GE(fd.get(), 0);
    EXPECT_EQ(pwrite(fd.get(), "ab", 2, 3), 2);
  }
  errno = 0;
  EXPECT_EQ(getxattr(src.c_str(), "security.capability", buf, sizeof(buf)), -1);
  EXPECT_EQ(errno, ENODATA);
  EXPECT_EQ(ReadFile(mnt), "012ab56789");
}

TEST_F(OpsXattr, FileAndDirectory) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "x");
    ASSERT_EQ(mkdir((d + "/dir").c_str(), 0755), 0);
  });
  for (const char* target : {"f", "dir"}) {
    std::string what = std::string("xattrs on ") + target;
    Steps s = SameSteps(what, [&](const std::string& d, Steps& s) {
      std::string p = d + "/" + target;
      const char* path = p.c_str();
      char buf[256];
      s("set a", setxattr(path, "user.a", "v1", 2, 0));
      s("create a", setxattr(path, "user.a", "v2", 2, XATTR_CREATE));
      s("replace b", setxattr(path, "user.b", "v2", 2, XATTR_REPLACE));
      s("replace a", setxattr(path, "user.a", "value-two", 9, XATTR_REPLACE));
      s("create b", setxattr(path, "user.b", "bee", 3, XATTR_CREATE));
      s("set empty", setxattr(path, "user.empty", "", 0, 0));
      s("size of a", getxattr(path, "user.a", nullptr, 0));
      s("get a small", getxattr(path, "user.a", buf, 3));
      s("get a", getxattr(path, "user.a", buf, sizeof(buf)));
      s("a value", std::string(buf, 9) == "value-two");
      s("get empty", getxattr(path, "user.empty", buf, sizeof(buf)));
      s("get missing", getxattr(path, "user.missing", buf, sizeof(buf)));
      s("size of missing", getxattr(path, "user.missing", nullptr, 0));
      ssize_t n = s("list size", listxattr(path, nullptr, 0));
      s("list small", listxattr(path, buf, n > 0 ? n - 1 : 0));
      n = s("list", listxattr(path, buf, sizeof(buf)));
      std::vector<std::string> names = SplitNames(buf, n);
      s("listed", names == std::vector<std::string>{"user.a", "user.b", "user.empty"});
      s("remove a", removexattr(path, "user.a"));
      s("remove a again", removexattr(path, "user.a"));
      s("get removed", getxattr(path, "user.a", buf, sizeof(buf)));
      s("bad namespace", setxattr(path, "bogus.x", "v", 1, 0));
      s("empty name", setxattr(path, "", "v", 1, 0));
      s("name too long", setxattr(path, ("user." + std::string(300, 'n')).c_str(), "v", 1, 0));
      std::string huge(70000, 'h');
      s("value too large", setxattr(path, "user.huge", huge.data(), huge.size(), 0));
      std::string big(3000, 'g');
      s("set 3000 bytes", setxattr(path, "user.big", big.data(), big.size(), 0));
      std::string back(4000, '\0');
      n = s("get 3000 bytes", getxattr(path, "user.big", back.data(), back.size()));
      s("3000 bytes equal", n == 3000 && back.compare(0, 3000, big) == 0);
      s("set trusted", setxattr(path, "trusted.t", "tv", 2, 0));
      s("get trusted", getxattr(path, "trusted.t", buf, sizeof(buf)));
      Fd fd(open(p.c_str(), O_RDONLY));
      s("fsetxattr", fsetxattr(fd.get(), "user.f", "fv", 2, 0));
      s("fgetxattr", fgetxattr(fd.get(), "user.f", buf, sizeof(buf)));
      s("flistxattr", flistxattr(fd.get(), nullptr, 0));
      s("fremovexattr", fremovexattr(fd.get(), "user.f"));
    });
    EXPECT_EQ(s.At("create a").err, EEXIST) << what;
    EXPECT_EQ(s.At("replace b").err, ENODATA) << what;
    EXPECT_EQ(s.At("size of a").ret, 9) << what;
    EXPECT_EQ(s.At("get a small").err, ERANGE) << what;
    EXPECT_EQ(s.At("a value").ret, 1) << what;
    EXPECT_EQ(s.At("get missing").err, ENODATA) << what;
    EXPECT_EQ(s.At("list small").err, ERANGE) << what;
    EXPECT_EQ(s.At("listed").ret, 1) << what;
    EXPECT_EQ(s.At("remove a again").err, ENODATA) << what;
    EXPECT_EQ(s.At("3000 bytes equal").ret, 1) << what;
    // The values are in SOURCE.
    char buf[16];
    std::string p = Src(target);
    EXPECT_EQ(getxattr(p.c_str(), "user.b", buf, sizeof(buf)), 3) << what;
    EXPECT_EQ(std::string(buf, 3), "bee");
    EXPECT_EQ(getxattr(p.c_str(), "trusted.t", buf, sizeof(buf)), 2) << what;
    EXPECT_EQ(getxattr(p.c_str(), "user.a", buf, sizeof(buf)), -1) << what;
    EXPECT_EQ(errno, ENODATA);
  }
  // Set in SOURCE, read through the mount.
  ASSERT_EQ(setxattr(Src("f").c_str(), "user.outside", "o", 1, 0), 0);
  char buf[8];
  EXPECT_EQ(getxattr(Mnt("f").c_str(), "user.outside", buf, sizeof(buf)), 1);
}

TEST_F(OpsXattr, Symlink) {
  Twin([](const std::string& d) {
    Spit(d + "/f", "x");
    ASSERT_EQ(setxattr((d + "/f").c_str(), "user.on_target", "t", 1, 0), 0);
    ASSERT_EQ(symlink("f", (d + "/l").c_str()), 0);
  });
  Steps s = SameSteps("xattrs on a symlink", [](const std::string& d, Steps& s) {
    std::string l = d + "/l";
    char buf[256];
    s("lsetxattr user", lsetxattr(l.c_str(), "user.x", "v", 1, 0));
    s("lgetxattr user", lgetxattr(l.c_str(), "user.x", buf, sizeof(buf)));
    s("lgetxattr target's", lgetxattr(l.c_str(), "user.on_target", buf, sizeof(buf)));
    s("getxattr follows", getxattr(l.c_str(), "user.on_target", buf, sizeof(buf)));
    s("llistxattr", llistxattr(l.c_str(), buf, sizeof(buf)));
    s("lremovexattr user", lremovexattr(l.c_str(), "user.x"));
    s("setxattr follows", setxattr(l.c_str(), "user.via_link", "v", 1, 0));
  });
  EXPECT_EQ(s.At("lsetxattr user").err, EPERM);
  EXPECT_EQ(s.At("getxattr follows").ret, 1);
  char buf[8];
  EXPECT_EQ(getxattr(Src("f").c_str(), "user.via_link", buf, sizeof(buf)), 1);
  EXPECT_EQ(lgetxattr(Src("l").c_str(), "user.x", buf, sizeof(buf)), -1);
}

// ---------------------------------------------------------------------------
// access

using OpsAccess = OpsFixture;

TEST_F(OpsAccess, RootAndOtherUser) {
  Twin([](const std::string& d) {
    for (mode_t mode : {0000, 0644, 0100, 0010, 0001, 0755, 0600, 0604, 0666}) {
      std::string n = d + "/m" + std::to_string(mode);
      Spit(n, "x");
      ASSERT_EQ(chmod(n.c_str(), mode), 0);
    }
    ASSERT_EQ(mkdir((d + "/d0").c_str(), 0), 0);
    ASSERT_EQ(mkdir((d + "/d711").c_str(), 0711), 0);
    Spit(d + "/owned", "x");
    ASSERT_EQ(chown((d + "/owned").c_str(), 65534, 65534), 0);
    ASSERT_EQ(chmod((d + "/owned").c_str(), 0500), 0);
    Spit(d + "/group", "x");
    ASSERT_EQ(chown((d + "/group").c_str(), 0, 65534), 0);
    ASSERT_EQ(chmod((d + "/group").c_str(), 0070), 0);
    ASSERT_EQ(symlink("m0", (d + "/lnk").c_str()), 0);
  });
  const std::vector<std::string> names = {"m0",   "m420",  "m64",   "m8",   "m1",
                                          "m493", "m384",  "m388",  "m438", "d0",
                                          "d711", "owned", "group", "lnk",  "missing"};
  const std::vector<int> masks = {
      F_OK, R_OK, W_OK, X_OK, R_OK | W_OK, R_OK | X_OK, R_OK | W_OK | X_OK};
  auto probe = [&](const std::string& dir) {
    std::vector<long> out;
    for (const auto& n : names) {
      std::string p = Join(dir, n);
      for (int mask : masks) {
        long r = access(p.c_str(), mask);
        out.push_back(r == 0 ? 0 : errno);
        r = faccessat(AT_FDCWD, p.c_str(), mask, AT_EACCESS | AT_SYMLINK_NOFOLLOW);
        out.push_back(r == 0 ? 0 : errno);
      }
    }
    return out;
  };
  auto compare = [&](const std::vector<long>& m, const std::vector<long>& r,
                     const std::string& who) {
    ASSERT_EQ(m.size(), names.size() * masks.size() * 2) << who;
    ASSERT_EQ(r.size(), m.size()) << who;
    for (size_t i = 0; i < m.size(); ++i) {
      size_t ni = i / (masks.size() * 2);
      size_t mi = (i / 2) % masks.size();
      EXPECT_EQ(m[i], r[i]) << who << ": " << names[ni] << " mask " << masks[mi]
                            << (i % 2 ? " faccessat" : " access") << ": mount "
                            << std::strerror(static_cast<int>(m[i])) << ", ref "
                            << std::strerror(static_cast<int>(r[i]));
    }
  };
  // Root: X_OK needs an x bit somewhere (for files), all else is allowed.
  std::vector<long> root_m = probe(MntDir());
  std::vector<long> root_r = probe(RefDir());
  compare(root_m, root_r, "root");
  // m0 with X_OK as root must fail: the check is not a no-op.
  EXPECT_EQ(root_m[6], EACCES) << "root X_OK on mode 0";  // name 0, mask 3, access()
  // Another user, through allow_other.
  std::vector<long> other_m = InChild([&] { return probe(MntDir()); }, 65534, 65534);
  std::vector<long> other_r = InChild([&] { return probe(RefDir()); }, 65534, 65534);
  compare(other_m, other_r, "uid 65534");
  if (!other_m.empty()) {
    EXPECT_EQ(other_m[2], EACCES) << "uid 65534 R_OK on mode 0";  // name 0, mask 1, access()
  }
}

// ---------------------------------------------------------------------------
// fallocate

using OpsFallocate = OpsFixture;

TEST_F(OpsFallocate, Modes) {
  const std::string data = RandomBytes(kMiB, 5);
  Twin([&](const std::string& d) { Spit(d + "/f", data); });
  auto step = [&](const std::string& what, int mode, off_t off, off_t len, int err) {
    SameErr(what, err, [&](const std::string& d) {
      Fd fd(open((d + "/f").c_str(), O_RDWR));
      fsync(fd.get());
      return fallocate(fd.get(), mode, off, len);
    });
    CheckContent("f");
    CheckEntry("f");
  };
  step("mode 0 grows", 0, kMiB, kMiB, 0);
  EXPECT_EQ(LStat(Src("f")).st_size, 2 * kMiB);
  blkcnt_t blocks = LStat(Src("f")).st_blocks;
  step("KEEP_SIZE past EOF", FALLOC_FL_KEEP_SIZE, 2 * kMiB, kMiB, 0);
  EXPECT_EQ(LStat(Src("f")).st_size, 2 * kMiB);
  EXPECT_GT(LStat(Src("f")).st_blocks, blocks);
  blocks = LStat(Src("f")).st_blocks;
  step("PUNCH_HOLE|KEEP_SIZE", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 * kKiB, 128 * kKiB,
       0);
  EXPECT_LT(LStat(Src("f")).st_blocks, blocks);
  EXPECT_LT(LStat(Mnt("f")).st_blocks, blocks);
  std::string c = Slurp(Mnt("f"));
  ASSERT_EQ(c.size(), static_cast<size_t>(2 * kMiB));
  EXPECT_TRUE(SameBytes(c.substr(64 * kKiB, 128 * kKiB), std::string(128 * kKiB, '\0')));
  EXPECT_TRUE(SameBytes(c.substr(0, 64 * kKiB), data.substr(0, 64 * kKiB)));
  EXPECT_TRUE(SameBytes(c.substr(192 * kKiB, 10), data.substr(192 * kKiB, 10)));
  step("PUNCH_HOLE unaligned", FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 300001, 5000, 0);
  step("PUNCH_HOLE without KEEP_SIZE", FALLOC_FL_PUNCH_HOLE, 0, 4096, EOPNOTSUPP);
  step("ZERO_RANGE", FALLOC_FL_ZERO_RANGE, 400000, 100000, 0);
  c = Slurp(Src("f"));
  EXPECT_TRUE(SameBytes(c.substr(400000, 100000), std::string(100000, '\0')));
  EXPECT_TRUE(SameBytes(c.substr(500000, 100), data.substr(500000, 100)));
  step("ZERO_RANGE past EOF", FALLOC_FL_ZERO_RANGE, 2 * kMiB, 4096, 0);
  EXPECT_EQ(LStat(Src("f")).st_size, 2 * kMiB + 4096);
  step("ZERO_RANGE|KEEP_SIZE past EOF", FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 3 * kMiB, 4096,
       0);
  EXPECT_EQ(LStat(Src("f")).st_size, 2 * kMiB + 4096);
  step("length 0", 0, 0, 0, EINVAL);
  step("negative offset", 0, -1, 10, EINVAL);
  step("unknown mode", 0x4000, 0, 10, EOPNOTSUPP);
  SameErr("read-only fd", EBADF, [](const std::string& d) {
    Fd fd(open((d + "/f").c_str(), O_RDONLY));
    return fallocate(fd.get(), 0, 0, 10);
  });
  CheckContent("f");
}

// COLLAPSE_RANGE and INSERT_RANGE shift data. ext4 has them, but the
// kernel's FUSE client refuses every mode other than KEEP_SIZE, PUNCH_HOLE and
// ZERO_RANGE with EOPNOTSUPP before any request reaches the daemon
// (fs/fuse/file.c, fuse_file_fallocate), so through the mount each call must
// either do what it does on ref or fail with EOPNOTSUPP and change nothing.
TEST_F(OpsFallocate, CollapseAndInsertRange) {
  const std::string data = RandomBytes(kMiB, 6);
  struct Case {
    const char* what;
    int mode;
    off_t off, len;
  };
  const std::vector<Case> cases = {
      {"COLLAPSE_RANGE", FALLOC_FL_COLLAPSE_RANGE, 256 * kKiB, 64 * kKiB},
      {"INSERT_RANGE", FALLOC_FL_INSERT_RANGE, 128 * kKiB, 64 * kKiB},
      {"COLLAPSE_RANGE unaligned", FALLOC_FL_COLLAPSE_RANGE, 1000, 4096},
      {"COLLAPSE_RANGE to EOF", FALLOC_FL_COLLAPSE_RANGE, 0, 2 * kMiB},
      {"INSERT_RANGE past EOF", FALLOC_FL_INSERT_RANGE, 4 * kMiB, 4096},
  };
  int i = 0;
  for (const Case& c : cases) {
    std::string name = "f" + std::to_string(i++);
    Twin([&](const std::string& d) { Spit(Join(d, name), data); });
    struct stat before = LStat(Src(name));
    auto op = [&](const std::string& d) {
      Fd fd(open(Join(d, name).c_str(), O_RDWR));
      return fallocate(fd.get(), c.mode, c.off, c.len);
    };
    Outcome r = Capture([&] { return op(RefDir()); });
    Outcome m = Capture([&] { return op(MntDir()); });
    if (m == r) {
      CheckContent(name);
      CheckEntry(name);
    } else {
      EXPECT_EQ(m.ret, -1) << c.what << ": mount " << ToString(m) << ", ref " << ToString(r);
      EXPECT_EQ(m.err, EOPNOTSUPP)
          << c.what << ": mount " << ToString(m) << ", ref " << ToString(r);
      EXPECT_TRUE(SameBytes(Slurp(Src(name)), data)) << c.what << ": source changed";
      EXPECT_EQ(LStat(Src(name)).st_size, before.st_size) << c.what;
    }
    if (i == 1) {
      EXPECT_EQ(r.ret, 0) << "ref (ext4) refuses COLLAPSE_RANGE: " << ToString(r);
    }
  }
}

// ---------------------------------------------------------------------------
// lseek SEEK_DATA / SEEK_HOLE

using OpsSeek = OpsFixture;

TEST_F(OpsSeek, DataAndHole) {
  Twin([](const std::string& d) {
    Fd fd(open((d + "/s").c_str(), O_RDWR | O_CREAT, 0644));
    std::string chunk(64 * kKiB, 'd');
    ASSERT_EQ(pwrite(fd.get(), chunk.data(), chunk.size(), 0), 64 * kKiB);
    ASSERT_EQ(pwrite(fd.get(), chunk.data(), chunk.size(), kMiB), 64 * kKiB);
    ASSERT_EQ(pwrite(fd.get(), chunk.data(), 4096, 3 * kMiB), 4096);
    ASSERT_EQ(ftruncate(fd.get(), 4 * kMiB), 0);
    ASSERT_EQ(fsync(fd.get()), 0);
  });
  const std::vector<off_t> offsets = {
      0,        100,          64 * kKiB - 1, 64 * kKiB, 500000,   kMiB, kMiB + 10, kMiB + 64 * kKiB,
      2 * kMiB, 3 * kMiB + 1, 4 * kMiB - 1,  4 * kMiB,  5 * kMiB, -1};
  Steps s = SameSteps("SEEK_DATA/SEEK_HOLE", [&](const std::string& d, Steps& s) {
    Fd fd(open((d + "/s").c_str(), O_RDONLY));
    for (off_t off : offsets) {
      s("data " + std::to_string(off), lseek(fd.get(), off, SEEK_DATA));
      s("hole " + std::to_string(off), lseek(fd.get(), off, SEEK_HOLE));
    }
    s("bad whence", lseek(fd.get(), 0, 42));
    // A write through this descriptor fills a hole.
    Fd w(open((d + "/s").c_str(), O_WRONLY));
    s("fill", pwrite(w.get(), "x", 1, 2 * kMiB));
    s("data after fill", lseek(fd.get(), kMiB + 64 * kKiB, SEEK_DATA));
  });
  EXPECT_EQ(s.At("data 100").ret, 100);
  EXPECT_EQ(s.At("hole 0").ret, 64 * kKiB);
  EXPECT_EQ(s.At("data 500000").ret, kMiB);
  EXPECT_EQ(s.At("data 4194304").err, ENXIO);
  EXPECT_EQ(s.At("data after fill").ret, 2 * kMiB);
  CheckContent("s");
}

// ---------------------------------------------------------------------------
// copy_file_range

using OpsCopyFileRange = OpsFixture;

TEST_F(OpsCopyFileRange, DataAndReturnValue) {
  const std::string in = RandomBytes(300000, 7);
  Twin([&](const std::string& d) {
    Spit(d + "/in", in);
    Spit(d + "/out", std::string(10000, 'o'));
  });
  Steps s = SameSteps("copy_file_range", [](const std::string& d, Steps& s) {
    Fd a(open((d + "/in").c_str(), O_RDONLY));
    Fd b(open((d + "/out").c_str(), O_RDWR));
    loff_t off_in = 1000, off_out = 5000;
    s("copy", copy_file_range(a.get(), &off_in, b.get(), &off_out, 200000, 0));
    s("off_in", off_in);
    s("off_out", off_out);
    off_in = 290000;
    off_out = 0;
    s("copy past EOF", copy_file_range(a.get(), &off_in, b.get(), &off_out, 50000, 0));
    s("off_in 2", off_in);
    off_in = 400000;
    s("copy at EOF", copy_file_range(a.get(), &off_in, b.get(), &off_out, 10, 0));
    // Without offsets the file positions move.
    s("seek in", lseek(a.get(), 100, SEEK_SET));
    s("seek out", lseek(b.get(), 250000, SEEK_SET));
    s("copy at positions", copy_file_range(a.get(), nullptr, b.get(), nullptr, 777, 0));
    s("pos in", lseek(a.get(), 0, SEEK_CUR));
    s("pos out", lseek(b.get(), 0, SEEK_CUR));
    s("bad flags", copy_file_range(a.get(), nullptr, b.get(), nullptr, 10, 1));
    s("to read-only fd", copy_file_range(b.get(), nullptr, a.get(), nullptr, 10, 0));
    Fd w(open((d + "/in").c_str(), O_WRONLY));
    s("from write-only fd", copy_file_range(w.get(), nullptr, b.get(), nullptr, 10, 0));
    Fd same(open((d + "/out").c_str(), O_RDWR));
    off_in = 0;
    off_out = 100;
    s("overlap in one file", copy_file_range(b.get(), &off_in, same.get(), &off_out, 1000, 0));
    off_in = 0;
    off_out = 200000;
    s("no overlap in one file", copy_file_range(b.get(), &off_in, same.get(), &off_out, 1000, 0));
    s("size out", lseek(b.get(), 0, SEEK_END));
  });
  EXPECT_EQ(s.At("copy").ret, 200000);
  EXPECT_EQ(s.At("copy past EOF").ret, 10000);
  EXPECT_EQ(s.At("copy at EOF").ret, 0);
  EXPECT_EQ(s.At("copy at positions").ret, 777);
  EXPECT_EQ(s.At("pos in").ret, 877);
  EXPECT_EQ(s.At("bad flags").err, EINVAL);
  EXPECT_EQ(s.At("overlap in one file").err, EINVAL);
  EXPECT_EQ(s.At("no overlap in one file").ret, 1000);
  CheckContent("out");
  CheckEntry("out");
  std::string out = Slurp(Src("out"));
  ASSERT_EQ(out.size(), 250777u);
  EXPECT_TRUE(SameBytes(out.substr(0, 10000), in.substr(290000, 10000)));
  EXPECT_TRUE(SameBytes(out.substr(10000, 190000), in.substr(1000 + 5000, 190000)));
  EXPECT_TRUE(SameBytes(out.substr(200000, 1000), in.substr(290000, 1000)));
  EXPECT_TRUE(SameBytes(out.substr(201000, 4000), in.substr(1000 + 196000, 4000)));
  EXPECT_TRUE(SameBytes(out.substr(205000, 45000), std::string(45000, '\0')));
  EXPECT_TRUE(SameBytes(out.substr(250000, 777), in.substr(100, 777)));
}

// ---------------------------------------------------------------------------
// locks (done by the kernel for the mount)

using OpsLocks = OpsFixture;

TEST_F(OpsLocks, Flock) {
  Twin([](const std::string& d) { Spit(d + "/f", "lock me"); });
  Steps s = SameSteps("flock", [](const std::string& d, Steps& s) {
    std::string p = d + "/f";
    Fd a(open(p.c_str(), O_RDWR));
    Fd b(open(p.c_str(), O_RDWR));
    s("ex a", flock(a.get(), LOCK_EX | LOCK_NB));
    s("ex b", flock(b.get(), LOCK_EX | LOCK_NB));
    s("sh b", flock(b.get(), LOCK_SH | LOCK_NB));
    s("ex a again", flock(a.get(), LOCK_EX | LOCK_NB));
    s("close a", a.Close());
    s("ex b after close", flock(b.get(), LOCK_EX | LOCK_NB));
    s("un b", flock(b.get(), LOCK_UN));
    Fd c(open(p.c_str(), O_RDONLY));
    s("sh b", flock(b.get(), LOCK_SH | LOCK_NB));
    s("sh c", flock(c.get(), LOCK_SH | LOCK_NB));
    s("ex c while b shares", flock(c.get(), LOCK_EX | LOCK_NB));
    // A duplicate shares the open file description and so the lock.
    Fd b2(dup(b.get()));
    s("ex dup of b", flock(b2.get(), LOCK_EX | LOCK_NB));
    s("bad op", flock(c.get(), 0));
  });
  EXPECT_EQ(s.At("ex a").ret, 0);
  EXPECT_EQ(s.At("ex b").err, EWOULDBLOCK);
  EXPECT_EQ(s.At("sh b").err, EWOULDBLOCK);
  EXPECT_EQ(s.At("ex b after close").ret, 0);
  EXPECT_EQ(s.At("ex c while b shares").err, EWOULDBLOCK);

  // Another process is locked out too.
  Fd a(open(Mnt("f").c_str(), O_RDWR));
  ASSERT_EQ(flock(a.get(), LOCK_EX), 0);
  std::string path = Mnt("f");
  std::vector<long> child = InChild([&] {
    Fd b(open(path.c_str(), O_RDWR));
    long r = flock(b.get(), LOCK_EX | LOCK_NB);
    return std::vector<long>{r, r == 0 ? 0 : errno};
  });
  ASSERT_EQ(child.size(), 2u);
  EXPECT_EQ(child[0], -1);
  EXPECT_EQ(child[1], EWOULDBLOCK);
}

// F_SETLK from another process conflicts; F_GETLK names the holder.
TEST_F(OpsLocks, PosixLocksAcrossProcesses) {
  Twin([](const std::string& d) { Spit(d + "/f", std::string(1000, 'p')); });
  auto child_probe = [](const std::string& p) {
    Fd fd(open(p.c_str(), O_RDWR));
    std::vector<long> out;
    struct flock fl;
    std::memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 50;
    fl.l_len = 10;
    long r = fcntl(fd.get(), F_SETLK, &fl);
    out.push_back(r);
    out.push_back(r == 0 ? 0 : errno);
    std::memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 500;
    r = fcntl(fd.get(), F_GETLK, &fl);
    out.push_back(r);
    out.push_back(fl.l_type);
    out.push_back(fl.l_pid);
    out.push_back(fl.l_start);
    out.push_back(fl.l_len);
    std::memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 200;
    fl.l_len = 10;
    out.push_back(fcntl(fd.get(), F_SETLK, &fl));  // free range
    fl.l_type = F_RDLCK;
    fl.l_start = 0;
    fl.l_len = 10;
    r = fcntl(fd.get(), F_SETLK, &fl);  // read lock under the write lock
    out.push_back(r);
    out.push_back(r == 0 ? 0 : errno);
    return out;
  };
  auto run = [&](const std::string& dir) {
    std::string p = dir + "/f";
    Fd fd(open(p.c_str(), O_RDWR));
    struct flock fl;
    std::memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 100;
    EXPECT_EQ(fcntl(fd.get(), F_SETLK, &fl), 0) << dir << ": " << std::strerror(errno);
    std::vector<long> held = InChild([&] { return child_probe(p); });
    // Closing any descriptor of the file drops the process's POSIX locks.
    { Fd other(open(p.c_str(), O_RDONLY)); }
    std::vector<long> released = InChild([&] { return child_probe(p); });
    return std::make_pair(held, released);
  };
  auto [m_held, m_released] = run(MntDir());
  auto [r_held, r_released] = run(RefDir());
  EXPECT_EQ(m_held, r_held) << "while held";
  EXPECT_EQ(m_released, r_released) << "after release";
  ASSERT_EQ(m_held.size(), 10u);
  EXPECT_EQ(m_held[0], -1);
  EXPECT_TRUE(m_held[1] == EAGAIN || m_held[1] == EACCES) << m_held[1];
  EXPECT_EQ(m_held[3], F_WRLCK);
  EXPECT_EQ(m_held[4], getpid()) << "F_GETLK names the holder";
  EXPECT_EQ(m_held[5], 0);
  EXPECT_EQ(m_held[6], 100);
  EXPECT_EQ(m_held[7], 0);
  EXPECT_EQ(m_held[8], -1);
  ASSERT_EQ(m_released.size(), 10u);
  EXPECT_EQ(m_released[0], 0);
  EXPECT_EQ(m_released[3], F_UNLCK);
}

TEST_F(OpsLocks, OpenFileDescriptionLocks) {
  Twin([](const std::string& d) { Spit(d + "/f", std::string(1000, 'o')); });
  Steps s = SameSteps("OFD locks", [](const std::string& d, Steps& s) {
    std::string p = d + "/f";
    Fd a(open(p.c_str(), O_RDWR));
    Fd b(open(p.c_str(), O_RDWR));
    struct flock fl;
    std::memset(&fl, 0, sizeof(fl));
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 100;
    s("a lock", fcntl(a.get(), F_OFD_SETLK, &fl));
    s("b lock", fcntl(b.get(), F_OFD_SETLK, &fl));
    struct flock q = fl;
    s("b getlk", fcntl(b.get(), F_OFD_GETLK, &q));
    s("type", q.l_type);
    s("pid", q.l_pid);
    s("start", q.l_start);
    s("len", q.l_len);
    fl.l_start = 100;
    s("b lock next range", fcntl(b.get(), F_OFD_SETLK, &fl));
    fl.l_pid = 1;
    s("nonzero l_pid", fcntl(b.get(), F_OFD_SETLK, &fl));
    fl.l_pid = 0;
    s("close a", a.Close());
    fl.l_start = 0;
    s("b lock after close", fcntl(b.get(), F_OFD_SETLK, &fl));
  });
  EXPECT_EQ(s.At("a lock").ret, 0);
  EXPECT_EQ(s.At("b lock").err, EAGAIN);
  EXPECT_EQ(s.At("type").ret, F_WRLCK);
  EXPECT_EQ(s.At("pid").ret, -1);
  EXPECT_EQ(s.At("b lock after close").ret, 0);
}

// ---------------------------------------------------------------------------
// coherence with changes made directly in SOURCE

class OpsCoherence : public OpsFixture {
 protected:
  static void SetUpTestSuite() {
    mount_ = MountedCachefs::Start({"-o", "attr_timeout=1,entry_timeout=1"});
  }
};

TEST_F(OpsCoherence, CreatedInSourceAppears) {
  struct stat st;
  ASSERT_EQ(lstat(Mnt("new").c_str(), &st), -1);  // a negative entry is now cached
  ASSERT_EQ(errno, ENOENT);
  DIR* dp = opendir(MntDir().c_str());
  ASSERT_NE(dp, nullptr);
  EXPECT_EQ(ListAll(dp).size(), 2u);
  closedir(dp);
  Spit(Src("new"), "made in source");
  ASSERT_EQ(mkdir(Src("newdir").c_str(), 0755), 0);
  EXPECT_TRUE(Eventually([&] { return lstat(Mnt("new").c_str(), &st) == 0; }))
      << "a file created in SOURCE is not visible through the mount";
  EXPECT_EQ(Slurp(Mnt("new")), "made in source");
  EXPECT_EQ(LStat(Mnt("new")).st_ino, LStat(Src("new")).st_ino);
  EXPECT_TRUE(S_ISDIR(LStat(Mnt("newdir")).st_mode));
  dp = opendir(MntDir().c_str());
  ASSERT_NE(dp, nullptr);
  EXPECT_EQ(ListAll(dp).size(), 4u);
  closedir(dp);
}

TEST_F(OpsCoherence, ChangedInSourceIsSeen) {
  Spit(Src("grow"), "v1");
  Spit(Src("same"), "AAAA");
  Spit(Src("shrink"), "a rather long first version");
  Spit(Src("mode"), "m");
  // Read everything through the mount so the kernel caches pages and attributes.
  Fd grow(open(Mnt("grow").c_str(), O_RDONLY));
  Fd same(open(Mnt("same").c_str(), O_RDONLY));
  Fd shrink(open(Mnt("shrink").c_str(), O_RDONLY));
  ASSERT_TRUE(grow.ok() && same.ok() && shrink.ok());
  EXPECT_EQ(Slurp(Mnt("grow")), "v1");
  char buf[64];
  ASSERT_EQ(pread(same.get(), buf, sizeof(buf), 0), 4);
  ASSERT_EQ(pread(grow.get(), buf, sizeof(buf), 0), 2);
  ASSERT_EQ(pread(shrink.get(), buf, sizeof(buf), 0), 27);
  EXPECT_EQ(LStat(Mnt("mode")).st_mode & 07777, 0644u);
  struct stat same_before = LStat(Src("same"));

  Spit(Src("grow"), "version two, longer");
  Spit(Src("same"), "BBBB");
  Spit(Src("shrink"), "short");
  ASSERT_EQ(chmod(Src("mode").c_str(), 0600), 0);
  ASSERT_EQ(chown(Src("mode").c_str(), 123, 456), 0);
  struct stat same_after = LStat(Src("same"));
  ASSERT_FALSE(SameTime(same_before.st_mtim, same_after.st_mtim) &&
               SameTime(same_before.st_ctim, same_after.st_ctim))
      << "the outside write did not change mtime or ctime: nothing could notice it";

  auto content = [&](const Fd& fd) {
    ssize_t n = pread(fd.get(), buf, sizeof(buf), 0);
    return std::string(buf, std::max<ssize_t>(n, 0));
  };
  EXPECT_TRUE(Eventually([&] { return LStat(Mnt("grow")).st_size == 19; }))
      << "size " << LStat(Mnt("grow")).st_size;
  EXPECT_TRUE(Eventually([&] { return content(grow) == "version two, longer"; }))
      << "open descriptor reads '" << content(grow) << "'";
  EXPECT_TRUE(Eventually([&] { return content(same) == "BBBB"; }))
      << "same-size change: open descriptor reads '" << content(same) << "'";
  EXPECT_TRUE(Eventually([&] { return content(shrink) == "short"; }))
      << "open descriptor reads '" << content(shrink) << "'";
  EXPECT_EQ(Slurp(Mnt("grow")), "version two, longer");
  EXPECT_TRUE(Eventually([&] {
    struct stat st = LStat(Mnt("mode"));
    return (st.st_mode & 07777) == 0600 && st.st_uid == 123 && st.st_gid == 456;
  })) << "mode/owner change in SOURCE not seen";
}

TEST_F(OpsCoherence, RenamedAndDeletedInSource) {
  Spit(Src("a"), "a");
  Spit(Src("gone"), "gone");
  ASSERT_EQ(mkdir(Src("dir").c_str(), 0755), 0);
  Spit(Src("dir/inner"), "inner");
  ino_t a_ino = LStat(Mnt("a")).st_ino;
  LStat(Mnt("gone"));
  EXPECT_EQ(Slurp(Mnt("gone")), "gone");
  EXPECT_EQ(Slurp(Mnt("dir/inner")), "inner");
  struct stat st;
  ASSERT_EQ(lstat(Mnt("b").c_str(), &st), -1);

  ASSERT_EQ(rename(Src("a").c_str(), Src("b").c_str()), 0);
  ASSERT_EQ(unlink(Src("gone").c_str()), 0);
  ASSERT_EQ(rename(Src("dir").c_str(), Src("dir2").c_str()), 0);

  EXPECT_TRUE(Eventually([&] { return lstat(Mnt("a").c_str(), &st) == -1 && errno == ENOENT; }))
      << "renamed-away name still visible";
  EXPECT_TRUE(Eventually([&] { return lstat(Mnt("b").c_str(), &st) == 0; }))
      << "renamed-to name not visible";
  EXPECT_EQ(LStat(Mnt("b")).st_ino, a_ino);
  EXPECT_TRUE(Eventually([&] { return lstat(Mnt("gone").c_str(), &st) == -1 && errno == ENOENT; }))
      << "deleted file still visible";
  EXPECT_TRUE(Eventually([&] {
    return lstat(Mnt("dir/inner").c_str(), &st) == -1 && lstat(Mnt("dir2/inner").c_str(), &st) == 0;
  })) << "renamed directory not seen";
  EXPECT_EQ(Slurp(Mnt("dir2/inner")), "inner");
  // Operations through the mount work on the new names.
  Spit(Mnt("b"), "rewritten");
  EXPECT_EQ(Slurp(Src("b")), "rewritten");
}

// With the default timeouts, a re-open after an outside change sees the new
// content at once (close-to-open), without waiting for any timeout.
class OpsCloseToOpen : public OpsFixture {
 protected:
  static void SetUpTestSuite() { mount_ = MountedCachefs::Start(); }
};

TEST_F(OpsCloseToOpen, ReopenSeesOutsideChange) {
  Spit(Src("same"), "aaaa");
  Spit(Src("grow"), "short");
  Spit(Src("grow2"), "short");
  Spit(Src("shrink"), "a long first version");
  for (const char* n : {"same", "grow", "grow2", "shrink"}) {
    Slurp(Mnt(n));  // the kernel now caches pages and attributes
  }
  EXPECT_EQ(Slurp(Mnt("same")), "aaaa");
  Spit(Src("same"), "bbbb");
  Spit(Src("grow"), "a much longer second version");
  Spit(Src("grow2"), "a much longer second version");
  Spit(Src("shrink"), "tiny");
  EXPECT_EQ(Slurp(Mnt("same")), "bbbb") << "same-size change";
  EXPECT_EQ(Slurp(Mnt("shrink")), "tiny") << "file shrunk in SOURCE";
  EXPECT_EQ(Slurp(Mnt("grow")), "a much longer second version") << "file grown in SOURCE";
  Fd fd(open(Mnt("grow2").c_str(), O_RDONLY));
  ASSERT_TRUE(fd.ok());
  struct stat st;
  ASSERT_EQ(fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 28) << "fstat right after open of a file grown in SOURCE";
}

}  // namespace
}  // namespace cachefs::testing
