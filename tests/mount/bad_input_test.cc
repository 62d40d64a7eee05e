// Contract 7 (bad input): whatever is wrong with the command line, SOURCE,
// MOUNTPOINT or the machine, cachefs says so in one line on stderr, exits
// non-zero, mounts nothing and leaves no daemon behind. Standard mount options
// are accepted, and daemon mode returns only once the mount is live.
//
// Every case runs the real binary: the checks live in cmd/ and fs/mount.cc
// and only the whole program shows whether they come before the mount and
// before the detach.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::steady_clock;

bool WaitUntil(const std::function<bool()>& cond, milliseconds limit) {
  auto deadline = steady_clock::now() + limit;
  while (steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return cond();
}

// What a command did, with stdout and stderr kept apart: the contract is
// about stderr alone.
struct ProcResult {
  int exit_code = -1;  // 128 + signal when killed
  bool timed_out = false;
  std::string out;
  std::string err;
};

std::string Describe(const std::vector<std::string>& argv, const ProcResult& r) {
  std::string cmd;
  for (const std::string& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  return "command: " + cmd + "\nexit: " + std::to_string(r.exit_code) +
         (r.timed_out ? " (timed out)" : "") + "\nstdout: [" + r.out + "]\nstderr: [" + r.err + "]";
}

// Runs `argv` without a shell (so no shell process carries the paths we later
// look for) and reads its stdout and stderr to the end. A detached daemon that
// kept either pipe open would hold us to the deadline: that counts as a
// timeout, since the command must let go of the terminal once it returns.
ProcResult RunArgv(const std::vector<std::string>& argv, milliseconds limit = seconds(15)) {
  ProcResult r;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return r;
  }
  std::vector<std::string> args = argv;
  // Right after the binary, so that the test's own arguments come later and
  // win (a repeated option takes its last value).
  auto bin = std::find(args.begin(), args.end(), CachefsBinary());
  if (bin != args.end()) {
    std::vector<std::string> extra = TestCacheArgs();
    args.insert(bin + 1, extra.begin(), extra.end());
  }
  std::vector<char*> cargs;
  for (std::string& a : args) cargs.push_back(a.data());
  cargs.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, STDIN_FILENO);
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    execvp(cargs[0], cargs.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  auto deadline = steady_clock::now() + limit;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0) {
      r.timed_out = true;
      break;
    }
    int n = poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) continue;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t got = read(fds[i].fd, buf, sizeof(buf));
      if (got > 0) {
        sinks[i]->append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (pollfd& p : fds) {
    if (p.fd >= 0) close(p.fd);
  }
  int status = 0;
  bool exited = WaitUntil([&] { return waitpid(pid, &status, WNOHANG) == pid; },
                          r.timed_out ? milliseconds(0) : milliseconds(5000));
  if (!exited) {
    r.timed_out = true;
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

// Live cachefs processes (by argv[0]) with an argument containing `needle`.
// Zombies have an empty cmdline and so do not count: they serve nothing.
std::vector<pid_t> CachefsPids(const std::string& needle) {
  std::vector<pid_t> pids;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = entry.path().filename();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
    std::ifstream in(entry.path() / "cmdline", std::ios::binary);
    std::string cmdline((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::vector<std::string> args;
    std::string arg;
    std::istringstream split(cmdline);
    while (std::getline(split, arg, '\0')) args.push_back(arg);
    if (args.empty()) continue;
    const std::string& exe = args[0];
    bool is_cachefs = exe == CachefsBinary() || exe == "cachefs" ||
                      (exe.size() > 8 && exe.compare(exe.size() - 8, 8, "/cachefs") == 0);
    if (!is_cachefs) continue;
    for (size_t i = 1; i < args.size(); ++i) {
      if (args[i].find(needle) != std::string::npos) {
        pids.push_back(static_cast<pid_t>(std::stol(name)));
        break;
      }
    }
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

// FUSE entries of /proc/mounts whose source or mount point lies under
// `scope`. Other people's mounts elsewhere on the machine come and go while
// we run, so only our own tree is compared.
std::vector<std::string> FuseMountsUnder(const std::string& scope) {
  std::vector<std::string> found;
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string fsname, dir, type;
    fields >> fsname >> dir >> type;
    if (type.rfind("fuse", 0) != 0) continue;
    if (fsname.rfind(scope, 0) == 0 || dir.rfind(scope, 0) == 0) {
      found.push_back(fsname + " " + dir + " " + type);
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

// The kernel's mount options of `mnt` as listed in /proc/mounts.
std::string MountOptionsOf(const std::string& mnt) {
  std::ifstream in("/proc/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string fsname, dir, type, opts;
    fields >> fsname >> dir >> type >> opts;
    if (dir == mnt) return opts;
  }
  return "";
}

// Runs a bad command and checks everything contract 7 promises: a non-zero
// exit that is not a crash, exactly one line on stderr starting with
// "cachefs: " and naming the problem (every keyword), nothing on stdout, no
// new mount under `scope`, `mnt` as mounted (or not) as before, and no new
// cachefs process.
void ExpectRejected(const std::vector<std::string>& argv, const std::vector<std::string>& keywords,
                    const std::string& scope, const std::string& mnt) {
  const std::vector<std::string> mounts_before = FuseMountsUnder(scope);
  const bool mnt_mounted_before = IsMountPoint(mnt);
  const std::vector<pid_t> pids_before = CachefsPids(scope);

  ProcResult r = RunArgv(argv);
  const std::string what = Describe(argv, r);
  EXPECT_FALSE(r.timed_out) << what;
  EXPECT_NE(r.exit_code, 0) << what;
  EXPECT_LT(r.exit_code, 126) << "killed or not run\n" << what;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not exactly one line\n" << what;
  EXPECT_FALSE(r.err.empty() || r.err.back() != '\n') << "line not terminated\n" << what;
  EXPECT_EQ(r.err.rfind("cachefs: ", 0), 0u) << what;
  for (const std::string& k : keywords) {
    EXPECT_NE(r.err.find(k), std::string::npos) << "message does not mention '" << k << "'\n"
                                                << what;
  }
  EXPECT_EQ(r.out, "") << what;

  EXPECT_EQ(IsMountPoint(mnt), mnt_mounted_before) << what;
  EXPECT_EQ(FuseMountsUnder(scope), mounts_before) << "a mount appeared or went away\n" << what;
  // Looked at as soon as the command returns: a daemon forked before the
  // failure and not reaped would still be here.
  EXPECT_EQ(CachefsPids(scope), pids_before) << "a cachefs process was left running\n" << what;
}

// The same bad command in foreground mode and in daemon mode (the detach
// happens only after every check, so both must refuse the same way).
void ExpectRejectedBothModes(std::vector<std::string> argv,
                             const std::vector<std::string>& keywords, const std::string& scope,
                             const std::string& mnt) {
  {
    SCOPED_TRACE("daemon mode");
    ExpectRejected(argv, keywords, scope, mnt);
  }
  argv.push_back("-f");
  {
    SCOPED_TRACE("foreground (-f)");
    ExpectRejected(argv, keywords, scope, mnt);
  }
}

// A temporary tree with an empty src and mnt, removed at the end of the test.
class TempTree {
 public:
  // base() is empty (and the test must stop) when the directory cannot be made.
  TempTree() : base_(MakeTempDir("bad")) {
    if (base_.empty()) return;
    mkdir(src().c_str(), 0755);
    mkdir(mnt().c_str(), 0755);
  }
  ~TempTree() {
    if (base_.empty()) return;
    RemoveTree(base_);
  }
  TempTree(const TempTree&) = delete;
  TempTree& operator=(const TempTree&) = delete;
  const std::string& base() const { return base_; }
  std::string src() const { return base_ + "/src"; }
  std::string mnt() const { return base_ + "/mnt"; }

 private:
  std::string base_;
};

// Unmounts a daemon-mode mount on every path out of a test and waits for its
// daemon (found by the unique `needle`, the SOURCE path) to exit; kills it if
// it does not.
class DaemonMountGuard {
 public:
  DaemonMountGuard(std::string mnt, std::string needle)
      : mnt_(std::move(mnt)), needle_(std::move(needle)) {}
  ~DaemonMountGuard() {
    if (IsMountPoint(mnt_)) RunArgv({"fusermount3", "-u", "-z", mnt_});
    if (!WaitUntil([&] { return CachefsPids(needle_).empty(); }, seconds(10))) {
      for (pid_t p : CachefsPids(needle_)) kill(p, SIGKILL);
      ADD_FAILURE() << "cachefs daemon for " << needle_ << " did not exit after unmount";
    }
  }
  DaemonMountGuard(const DaemonMountGuard&) = delete;
  DaemonMountGuard& operator=(const DaemonMountGuard&) = delete;

 private:
  std::string mnt_;
  std::string needle_;
};

// ---------------------------------------------------------------- SOURCE

TEST(BadInputSource, Missing) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string missing = t.base() + "/no-such-source";
  ExpectRejectedBothModes({CachefsBinary(), missing, t.mnt()},
                          {missing, "No such file or directory"}, t.base(), t.mnt());
}

TEST(BadInputSource, UnreadableFailsAtSourceBeforeMounting) {
  ASSERT_EQ(geteuid(), 0u) << "this test needs root (to switch to nobody)";
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  // Root-owned and closed to others: nobody can resolve the directory itself
  // (the parents are searchable) but not read it.
  ASSERT_EQ(chmod(t.src().c_str(), 0700), 0);
  // The message must be about SOURCE: a complaint about the mount point,
  // /dev/fuse or fusermount3 would mean the source was not really checked.
  ExpectRejectedBothModes({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           CachefsBinary(), t.src(), t.mnt()},
                          {"source", t.src(), "Permission denied"}, t.base(), t.mnt());
}

TEST(BadInputSource, Fifo) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string fifo = t.base() + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0644), 0);
  // Opening a fifo for reading would block forever: the check must not.
  ExpectRejectedBothModes({CachefsBinary(), fifo, t.mnt()},
                          {fifo, "neither a directory nor a regular file"}, t.base(), t.mnt());
}

TEST(BadInputSource, CharacterDevice) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  ExpectRejectedBothModes({CachefsBinary(), "/dev/null", t.mnt()},
                          {"/dev/null", "neither a directory nor a regular file"}, t.base(),
                          t.mnt());
}

// ------------------------------------------------------------ MOUNTPOINT

TEST(BadInputMountpoint, Missing) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string missing = t.base() + "/no-such-mnt";
  ExpectRejectedBothModes({CachefsBinary(), t.src(), missing},
                          {"mountpoint", missing, "No such file or directory"}, t.base(), missing);
}

TEST(BadInputMountpoint, RegularFileForDirectorySource) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string file = t.base() + "/file";
  WriteFile(file, "x");
  ExpectRejectedBothModes({CachefsBinary(), t.src(), file}, {"mountpoint", file, "not a directory"},
                          t.base(), file);
}

TEST(BadInputMountpoint, DirectoryForFileSource) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string image = t.base() + "/image";
  WriteFile(image, std::string(8192, 'i'));
  ExpectRejectedBothModes({CachefsBinary(), image, t.mnt()},
                          {"mountpoint", t.mnt(), "not a regular file"}, t.base(), t.mnt());
}

TEST(BadInputMountpoint, AlreadyALiveMount) {
  auto m = MountedCachefs::Start();
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/kept", "first mount");
  const std::string other_src = m->base() + "/ref";
  ExpectRejectedBothModes({CachefsBinary(), other_src, m->mnt()},
                          {m->mnt(), "already a mount point"}, m->base(), m->mnt());
  // The same SOURCE a second time is refused the same way.
  ExpectRejected({CachefsBinary(), m->src(), m->mnt()}, {"already a mount point"}, m->base(),
                 m->mnt());
  // Through another name for the same directory too.
  const std::string link = m->base() + "/link";
  ASSERT_EQ(symlink(m->mnt().c_str(), link.c_str()), 0);
  ExpectRejected({CachefsBinary(), other_src, link}, {"already a mount point"}, m->base(),
                 m->mnt());
  ExpectRejected({CachefsBinary(), other_src, m->mnt() + "/"}, {"already a mount point"}, m->base(),
                 m->mnt());
  // And the first mount was not disturbed.
  EXPECT_EQ(kill(m->daemon_pid(), 0), 0);
  EXPECT_EQ(ReadFile(m->mnt() + "/kept"), "first mount");
}

TEST(BadInputMountpoint, InsideSource) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  const std::string inside = t.src() + "/sub";
  ASSERT_EQ(mkdir(inside.c_str(), 0755), 0);
  ExpectRejectedBothModes({CachefsBinary(), t.src(), inside}, {inside, "inside SOURCE"}, t.base(),
                          inside);
  const std::string deeper = t.src() + "/sub/deeper";
  ASSERT_EQ(mkdir(deeper.c_str(), 0755), 0);
  ExpectRejected({CachefsBinary(), t.src(), deeper}, {deeper, "inside SOURCE"}, t.base(), deeper);
}

// -------------------------------------------------------- stale mount

TEST(BadInputStaleMount, ExplainsHowToClearAndMountsOnceCleared) {
  auto m = MountedCachefs::Start();
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/survivor", "still in SOURCE");
  ASSERT_EQ(kill(m->daemon_pid(), SIGKILL), 0);
  const std::string mnt = m->mnt();
  struct stat st;
  int err = 0;
  ASSERT_TRUE(WaitUntil(
      [&] {
        err = stat(mnt.c_str(), &st) == 0 ? 0 : errno;
        return err == ENOTCONN;
      },
      seconds(5)))
      << "stat(mnt) gives " << std::strerror(err) << " instead of ENOTCONN";
  ASSERT_TRUE(IsMountPoint(mnt));

  ExpectRejectedBothModes({CachefsBinary(), m->src(), mnt}, {mnt, "fusermount3 -u -z"}, m->base(),
                          mnt);
  // A dead mount as SOURCE cannot be served either; the line names it.
  const std::string elsewhere = m->base() + "/ref";
  ExpectRejected({CachefsBinary(), mnt, elsewhere}, {"source", mnt}, m->base(), elsewhere);

  // The advice works: once cleared, the same SOURCE mounts again.
  ProcResult cleared = RunArgv({"fusermount3", "-u", "-z", mnt});
  ASSERT_EQ(cleared.exit_code, 0) << Describe({"fusermount3", "-u", "-z", mnt}, cleared);
  ASSERT_FALSE(IsMountPoint(mnt));
  DaemonMountGuard guard(mnt, m->src());
  ProcResult again = RunArgv({CachefsBinary(), m->src(), mnt});
  ASSERT_EQ(again.exit_code, 0) << Describe({CachefsBinary(), m->src(), mnt}, again);
  ASSERT_TRUE(IsMountPoint(mnt));
  EXPECT_EQ(ReadFile(mnt + "/survivor"), "still in SOURCE");
}

// ---------------------------------------------------------------- options

struct BadOption {
  const char* name;                   // test name suffix
  std::vector<std::string> args;      // after SOURCE and MOUNTPOINT
  std::vector<std::string> keywords;  // each must appear in the message
};

void PrintTo(const BadOption& o, std::ostream* os) {
  *os << o.name << ":";
  for (const std::string& a : o.args) *os << " " << a;
}

class BadInputOptionTest : public ::testing::TestWithParam<BadOption> {};

TEST_P(BadInputOptionTest, IsRejected) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  std::vector<std::string> argv = {CachefsBinary(), t.src(), t.mnt()};
  argv.insert(argv.end(), GetParam().args.begin(), GetParam().args.end());
  ExpectRejected(argv, GetParam().keywords, t.base(), t.mnt());
}

INSTANTIATE_TEST_SUITE_P(
    BadInputOptions, BadInputOptionTest,
    ::testing::Values(
        BadOption{"UnknownMountOption", {"-o", "bogus"}, {"unknown option", "bogus"}},
        BadOption{"UnknownAmongGoodOnes", {"-o", "ro,noatime,bogus,_netdev"}, {"bogus"}},
        BadOption{"UnknownLongOption", {"--bogus"}, {"--bogus"}},
        BadOption{"CacheSizeNotASize", {"-o", "cache_size=abc"}, {"cache_size", "abc"}},
        BadOption{"CacheSizeLongForm", {"--cache-size=abc"}, {"cache_size", "abc"}},
        BadOption{"CacheSizeZero", {"-o", "cache_size=0"}, {"cache_size"}},
        BadOption{"CacheSizeOverHundredPercent", {"-o", "cache_size=150%"}, {"cache_size"}},
        BadOption{"BlockSizeNotPowerOfTwo", {"-o", "block_size=3K"}, {"block_size"}},
        BadOption{"BlockSizeTooLarge", {"-o", "block_size=8M"}, {"block_size"}},
        BadOption{"BlockSizeTooSmall", {"-o", "block_size=2K"}, {"block_size"}},
        BadOption{"UnknownMode", {"-o", "mode=fast"}, {"mode", "fast"}},
        BadOption{"VerifyNotOnOrOff", {"-o", "verify=maybe"}, {"verify", "maybe"}},
        BadOption{"XattrNotOnOrOff", {"-o", "xattr=maybe"}, {"xattr", "maybe"}},
        BadOption{"NegativeAttrTimeout", {"-o", "attr_timeout=-1"}, {"attr_timeout", "-1"}},
        BadOption{"NegativeEntryTimeoutLongForm", {"--entry-timeout=-1"}, {"entry_timeout"}},
        BadOption{"DirtyLowAboveDefaultHigh", {"-o", "dirty_low=70"}, {"dirty_low"}},
        BadOption{"DirtyHighBelowDefaultLow", {"-o", "dirty_high=30"}, {"dirty_high"}},
        BadOption{"DirtyHighOverHundred", {"-o", "dirty_high=101"}, {"dirty_high"}},
        BadOption{"ZeroFuseThreads", {"-o", "fuse_threads=0"}, {"fuse_threads"}},
        BadOption{"FuseThreadsNotANumber", {"-o", "fuse_threads=many"}, {"fuse_threads", "many"}},
        BadOption{"UnknownPolicy", {"-o", "policy=fifo"}, {"policy", "fifo"}},
        BadOption{"UnknownStore", {"-o", "store=tape"}, {"store", "tape"}},
        BadOption{"UnknownStoreIo", {"-o", "store_io=fast"}, {"store_io", "fast"}},
        BadOption{"EmptyCacheDir", {"-o", "cache="}, {"'cache'"}},
        BadOption{"ValueOptionWithoutValue", {"-o", "cache_size"}, {"cache_size", "value"}},
        BadOption{"LongOptionWithoutValue", {"--attr-timeout"}, {"attr"}},
        BadOption{"FlagWithValue", {"-o", "ro=yes"}, {"'ro'"}},
        BadOption{"DashOWithoutList", {"-o"}, {"-o"}},
        BadOption{"ExtraPositional", {"extra-arg"}, {"extra-arg"}}),
    [](const ::testing::TestParamInfo<BadOption>& info) { return std::string(info.param.name); });

TEST(BadInputArguments, NoArgumentsAtAll) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  ExpectRejected({CachefsBinary()}, {"source", "required"}, t.base(), t.mnt());
}

TEST(BadInputArguments, MissingMountpoint) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  ExpectRejectedBothModes({CachefsBinary(), t.src()}, {"mountpoint", "required"}, t.base(),
                          t.mnt());
}

// ---------------------------------------------------------------- machine

TEST(BadInputMachine, NoDevFuse) {
  ASSERT_EQ(geteuid(), 0u) << "this test needs root (for a private mount namespace)";
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  // A private mount namespace with an empty /dev: the shell execs cachefs so
  // its exit code and stderr are cachefs's own.
  ExpectRejectedBothModes({"unshare", "-m", "sh", "-c", "mount -t tmpfs none /dev && exec \"$@\"",
                           "sh", CachefsBinary(), t.src(), t.mnt()},
                          {"/dev/fuse"}, t.base(), t.mnt());
}

// A failure inside the mount itself (libfuse, fusermount3) is bad input too:
// one line, not libfuse's message followed by a pointer to it. As an
// unprivileged user, with SOURCE and MOUNTPOINT of its own, cachefs either
// mounts (through fusermount3) or says in one line why it cannot.
TEST(BadInputMachine, UnprivilegedMountMountsOrFailsInOneLine) {
  ASSERT_EQ(geteuid(), 0u) << "this test needs root (to switch to nobody)";
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  ASSERT_EQ(chown(t.src().c_str(), 65534, 65534), 0);
  ASSERT_EQ(chown(t.mnt().c_str(), 65534, 65534), 0);
  DaemonMountGuard guard(t.mnt(), t.src());
  const std::vector<std::string> argv = {"setpriv",        "--reuid=65534", "--regid=65534",
                                         "--clear-groups", CachefsBinary(), t.src(),
                                         t.mnt()};
  ProcResult r = RunArgv(argv);
  const std::string what = Describe(argv, r);
  ASSERT_FALSE(r.timed_out) << what;
  if (r.exit_code == 0) {
    EXPECT_TRUE(IsMountPoint(t.mnt())) << what;
    return;
  }
  EXPECT_LT(r.exit_code, 126) << what;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << "not exactly one line\n" << what;
  EXPECT_FALSE(IsMountPoint(t.mnt())) << what;
  EXPECT_EQ(FuseMountsUnder(t.base()), std::vector<std::string>()) << what;
  EXPECT_EQ(CachefsPids(t.base()), std::vector<pid_t>()) << what;
}

// --------------------------------------------------------------- accepted

TEST(BadInputAccepted, StandardMountOptionsMount) {
  auto m = MountedCachefs::Start({"-o",
                                  "defaults,rw,_netdev,nofail,noauto,user,users,"
                                  "x-systemd.automount"});
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/in", "from SOURCE");
  EXPECT_EQ(ReadFile(m->mnt() + "/in"), "from SOURCE");
  WriteFile(m->mnt() + "/out", "through the mount");
  EXPECT_EQ(ReadFile(m->src() + "/out"), "through the mount");
}

TEST(BadInputAccepted, ReadOnlyRefusesWritesWithErofs) {
  auto m = MountedCachefs::Start({"-o", "ro"});
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/file", "read me");
  EXPECT_EQ(ReadFile(m->mnt() + "/file"), "read me");
  const std::string opts = "," + MountOptionsOf(m->mnt()) + ",";
  EXPECT_NE(opts.find(",ro,"), std::string::npos) << opts;

  const std::string file = m->mnt() + "/file";
  const std::string fresh = m->mnt() + "/fresh";
  EXPECT_EQ(ToString(Capture([&] { return open(file.c_str(), O_WRONLY | O_CLOEXEC); })),
            ToString({-1, EROFS}));
  EXPECT_EQ(ToString(Capture([&] { return open(file.c_str(), O_RDWR | O_TRUNC | O_CLOEXEC); })),
            ToString({-1, EROFS}));
  EXPECT_EQ(
      ToString(Capture([&] { return open(fresh.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644); })),
      ToString({-1, EROFS}));
  EXPECT_EQ(ToString(Capture([&] { return mkdir(fresh.c_str(), 0755); })), ToString({-1, EROFS}));
  EXPECT_EQ(ToString(Capture([&] { return unlink(file.c_str()); })), ToString({-1, EROFS}));
  EXPECT_EQ(ToString(Capture([&] { return chmod(file.c_str(), 0600); })), ToString({-1, EROFS}));
  EXPECT_EQ(ToString(Capture([&] { return truncate(file.c_str(), 0); })), ToString({-1, EROFS}));
  // Nothing reached SOURCE.
  EXPECT_EQ(ReadFile(m->src() + "/file"), "read me");
  EXPECT_NE(access((m->src() + "/fresh").c_str(), F_OK), 0);
}

// ------------------------------------------------------------ daemon mode

TEST(BadInputDaemonMode, ReturnsOnceMountedAndExitsOnUnmount) {
  TempTree t;
  ASSERT_FALSE(t.base().empty());
  WriteFile(t.src() + "/hello", "hello\n");
  DaemonMountGuard guard(t.mnt(), t.src());
  const std::vector<std::string> argv = {CachefsBinary(), t.src(), t.mnt()};
  ProcResult r = RunArgv(argv);
  ASSERT_EQ(r.exit_code, 0) << Describe(argv, r);
  EXPECT_FALSE(r.timed_out) << "the daemon kept the command's stdout or stderr\n"
                            << Describe(argv, r);
  // Checked straight away, before anything else: the command must not return
  // before the mount is up.
  EXPECT_TRUE(IsMountPoint(t.mnt())) << Describe(argv, r);
  EXPECT_EQ(r.out, "");
  EXPECT_EQ(r.err, "");

  std::vector<pid_t> pids = CachefsPids(t.src());
  ASSERT_EQ(pids.size(), 1u) << "expected one detached daemon";
  // Detached: not our child, and in a session of its own.
  std::ifstream stat_file("/proc/" + std::to_string(pids[0]) + "/stat");
  std::string stat_line((std::istreambuf_iterator<char>(stat_file)),
                        std::istreambuf_iterator<char>());
  std::istringstream fields(stat_line.substr(stat_line.rfind(')') + 2));
  char state = 0;
  pid_t ppid = 0, pgrp = 0, session = 0;
  fields >> state >> ppid >> pgrp >> session;
  EXPECT_NE(ppid, getpid());
  EXPECT_EQ(session, pids[0]);
  EXPECT_EQ(ReadFile(t.mnt() + "/hello"), "hello\n");

  const std::vector<std::string> umount = {"fusermount3", "-u", t.mnt()};
  ProcResult u = RunArgv(umount);
  ASSERT_EQ(u.exit_code, 0) << Describe(umount, u);
  EXPECT_TRUE(WaitUntil([&] { return CachefsPids(t.src()).empty(); }, seconds(10)))
      << "the daemon did not exit after fusermount3 -u";
  EXPECT_FALSE(IsMountPoint(t.mnt()));
}

TEST(BadInputDaemonMode, HelpAndVersionPrintToStdout) {
  for (const char* flag : {"--help", "-h", "--version", "-V"}) {
    SCOPED_TRACE(flag);
    const std::vector<std::string> argv = {CachefsBinary(), flag};
    ProcResult r = RunArgv(argv);
    EXPECT_EQ(r.exit_code, 0) << Describe(argv, r);
    EXPECT_EQ(r.err, "") << Describe(argv, r);
    EXPECT_FALSE(r.out.empty());
    if (flag[1] == 'V' || std::string(flag) == "--version") {
      EXPECT_EQ(r.out.rfind("cachefs ", 0), 0u) << r.out;
      EXPECT_EQ(std::count(r.out.begin(), r.out.end(), '\n'), 1) << r.out;
    } else {
      EXPECT_NE(r.out.find("Usage"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("mountpoint"), std::string::npos) << r.out;
      EXPECT_NE(r.out.find("cache_size"), std::string::npos) << r.out;
    }
  }
}

}  // namespace
}  // namespace cachefs::testing
