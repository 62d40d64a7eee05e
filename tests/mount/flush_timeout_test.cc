// flush_timeout: the writeback after an unmount (cmd/cachefs.cc,
// Engine::DrainForExit) and a new mount of a cache whose old daemon is still
// in it (CacheDirLock::Acquire's take-over).
//
// cachefs runs in mode=writeback with writeback_delay=3600, so nothing is
// written back while mounted: whatever reaches SOURCE came from the
// after-unmount writeback. SOURCE is bench/slowfs with a bandwidth limit, so
// writing back a few MiB takes seconds and the daemon can be watched while it
// does. Each test starts the daemon itself (not MountedCachefs) to see it
// outlive its mount; every path kills and reaps what it started.
//
// Layout (under a fresh temporary directory `base`):
//   base/slow  slowfs's directory, the bytes SOURCE really holds
//   base/slowmnt  slowfs's mount: cachefs's SOURCE
//   base/mnt  cachefs's mount point     base/cache  the cache
//   base/daemon.log  the stderr of every cachefs of the test
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr size_t kMiB = 1 << 20;

std::string Pattern(size_t size, int seed) {
  std::string data(size, '\0');
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(i * 131 + seed + i / 4096);
  return data;
}

// Polls `cond` every 10 ms until it holds or `limit` passes.
bool PollFor(const std::function<bool()>& cond, milliseconds limit) {
  auto deadline = Clock::now() + limit;
  while (Clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return cond();
}

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// One cachefs daemon (`cachefs -f`), which may outlive its mount.
class Daemon {
 public:
  Daemon() = default;
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() {
    if (IsMountPoint(mnt_)) umount2(mnt_.c_str(), MNT_DETACH);
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }

  // Starts `binary -f source mnt args` (cachefs or slowfs; stderr appended
  // to `log`) and waits up to 10 s for the mount.
  bool Start(const std::string& binary, const std::string& source, const std::string& mnt,
             const std::vector<std::string>& args, const std::string& log) {
    mnt_ = mnt;
    std::vector<std::string> argv_s = {binary, "-f", source, mnt};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    argv.reserve(argv_s.size() + 1);
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) dup2(fd, STDERR_FILENO);
      execv(argv[0], argv.data());
      _exit(127);
    }
    return PollFor([&] { return IsMountPoint(mnt) || !Running(); }, milliseconds(10000)) &&
           IsMountPoint(mnt);
  }

  // Unmounts (not lazily: nothing holds the mount) and returns at once.
  bool Unmount() {
    return RunCommand("fusermount3 -u '" + mnt_ + "'").exit_code == 0 && !IsMountPoint(mnt_);
  }

  // Whether the daemon has not exited yet (reaps it when it has).
  bool Running() {
    if (pid_ <= 0) return false;
    if (waitpid(pid_, &status_, WNOHANG) == pid_) pid_ = -1;
    return pid_ > 0;
  }

  // Waits up to `limit` for the daemon to exit; true when it exited with
  // `code`.
  bool WaitExit(milliseconds limit, int code = 0) {
    PollFor([&] { return !Running(); }, limit);
    return pid_ <= 0 && WIFEXITED(status_) && WEXITSTATUS(status_) == code;
  }

  pid_t pid() const { return pid_; }

 private:
  std::string mnt_;
  pid_t pid_ = -1;
  int status_ = -1;
};

class FlushTimeoutTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = MakeTempDir("flush");
    ASSERT_FALSE(base_.empty());
    for (const std::string& d : {slow(), slowmnt(), mnt()}) mkdir(d.c_str(), 0755);
  }

  void TearDown() override {
    // A stopped slowfs would hold a killed cachefs that waits for its answer.
    if (stoppable_slowfs_ && stoppable_slowfs_->pid() > 0) {
      kill(stoppable_slowfs_->pid(), SIGCONT);
    }
    daemons_.clear();  // cachefs first, then the slowfs under it
    slowfs_.reset();
    stoppable_slowfs_.reset();
    if (::testing::Test::HasFailure()) std::fprintf(stderr, "daemon log:\n%s", Log().c_str());
    if (!base_.empty()) RemoveTree(base_);
  }

  std::string slow() const { return base_ + "/slow"; }
  std::string slowmnt() const { return base_ + "/slowmnt"; }
  std::string mnt() const { return base_ + "/mnt"; }
  std::string cache() const { return base_ + "/cache"; }
  std::string Log() const { return Slurp(base_ + "/daemon.log"); }
  // What the cache's lock file says of its holder ("PID" or "PID flushing").
  std::string LockText() const { return Slurp(cache() + "/lock"); }

  // slowfs over base/slow limited to `bandwidth` (bytes per second, "2M").
  bool StartSlowfs(const std::string& bandwidth) {
    slowfs_ = MountedSlowfs::StartAt(slow(), slowmnt(), {"-o", "bandwidth=" + bandwidth});
    return slowfs_ != nullptr;
  }

  // A new cachefs over slowfs with `flush_timeout` (seconds); nullptr (and a
  // test failure) when it does not mount.
  Daemon* StartCachefs(const std::string& flush_timeout) {
    daemons_.push_back(std::make_unique<Daemon>());
    std::vector<std::string> args = {"--cache=" + cache(),     "--cache_size=64M",
                                     "--block_size=64K",       "--mode=writeback",
                                     "--writeback_delay=3600", "--flush_timeout=" + flush_timeout};
    if (!daemons_.back()->Start(CachefsBinary(), slowmnt(), mnt(), args, base_ + "/daemon.log")) {
      ADD_FAILURE() << "cachefs did not mount " << mnt();
      return nullptr;
    }
    return daemons_.back().get();
  }

  // Writes `data` to mnt/name, dirty in the cache: SOURCE has none of it yet.
  void WriteDirty(const std::string& name, const std::string& data) {
    WriteFile(mnt() + "/" + name, data);
    EXPECT_NE(Slurp(slow() + "/" + name), data) << "written back while mounted";
  }

  std::string base_;
  std::unique_ptr<MountedSlowfs> slowfs_;
  std::unique_ptr<Daemon> stoppable_slowfs_;  // a slowfs whose pid the test has
  std::vector<std::unique_ptr<Daemon>> daemons_;
};

// (a) The daemon outlives its mount until everything is on SOURCE.
TEST_F(FlushTimeoutTest, UnmountWritesBackBeforeTheDaemonExits) {
  ASSERT_TRUE(StartSlowfs("4M"));
  Daemon* d = StartCachefs("30");
  ASSERT_NE(d, nullptr);
  const std::string data = Pattern(4 * kMiB, 1);  // about 1 s at 4 MiB/s
  WriteDirty("a", data);
  WriteDirty("b", Pattern(kMiB / 2, 2));
  auto unmounted = Clock::now();
  ASSERT_TRUE(d->Unmount());
  EXPECT_TRUE(d->Running()) << "the daemon exited with the unmount";
  ASSERT_TRUE(d->WaitExit(milliseconds(20000))) << "no clean exit";
  double took = SecondsSince(unmounted);
  EXPECT_GT(took, 0.5) << "too fast for 4.5 MiB at 4 MiB/s: was it written back?";
  EXPECT_EQ(Slurp(slow() + "/a"), data) << "SOURCE lacks the data after the daemon exited";
  EXPECT_EQ(Slurp(slow() + "/b"), Pattern(kMiB / 2, 2));
  std::string log = Log();
  EXPECT_NE(log.find("unmounted with 4.5 MiB (72 blocks) dirty: writing it back for up to 30.0 s"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("written back after the unmount: 4.5 MiB in"), std::string::npos) << log;
}

// (b) flush_timeout=1 with more than a second of writeback: the daemon exits
// after about a second; the next mount shows everything and drains the rest.
TEST_F(FlushTimeoutTest, TimeoutLeavesTheRestDirtyForTheNextMount) {
  ASSERT_TRUE(StartSlowfs("2M"));
  Daemon* d = StartCachefs("1");
  ASSERT_NE(d, nullptr);
  const std::string data = Pattern(6 * kMiB, 3);  // about 3 s at 2 MiB/s
  WriteDirty("big", data);
  auto unmounted = Clock::now();
  ASSERT_TRUE(d->Unmount());
  ASSERT_TRUE(d->WaitExit(milliseconds(10000))) << "no clean exit";
  double took = SecondsSince(unmounted);
  EXPECT_GT(took, 0.9);
  EXPECT_LT(took, 2.0) << "the daemon overstayed flush_timeout=1";
  EXPECT_NE(Slurp(slow() + "/big"), data) << "all written back: the test proves nothing";
  EXPECT_NE(Log().find("flush_timeout reached after 1."), std::string::npos) << Log();

  Daemon* again = StartCachefs("30");
  ASSERT_NE(again, nullptr);
  EXPECT_NE(Log().find("dirty blocks to write back"), std::string::npos) << Log();
  EXPECT_EQ(ReadFile(mnt() + "/big"), data) << "the new mount does not show what was written";
  ASSERT_TRUE(again->Unmount());
  ASSERT_TRUE(again->WaitExit(milliseconds(20000))) << "no clean exit";
  EXPECT_EQ(Slurp(slow() + "/big"), data) << "the rest was not written back";
}

// (c) A mount of the cache right after the unmount, while the old daemon
// writes back, stops that daemon (SIGTERM: clean shutdown) and mounts within
// a few seconds; it shows everything and writes back the rest.
TEST_F(FlushTimeoutTest, RemountTakesOverFromTheFlushingDaemon) {
  ASSERT_TRUE(StartSlowfs("2M"));
  Daemon* old = StartCachefs("60");
  ASSERT_NE(old, nullptr);
  const std::string data = Pattern(6 * kMiB, 4);
  WriteDirty("c", data);
  // `umount; mount` at once: the new mount waits for the old daemon to mark
  // itself flushing (CacheDirLock::kUnmountGraceMs), then stops it.
  ASSERT_TRUE(old->Unmount());
  ASSERT_TRUE(old->Running());
  auto start = Clock::now();
  Daemon* next = StartCachefs("60");
  ASSERT_NE(next, nullptr);
  const double takeover = SecondsSince(start);
  RecordProperty("takeover_seconds", std::to_string(takeover));
  EXPECT_LT(takeover, 5.0) << "the take-over was slow";
  EXPECT_TRUE(old->WaitExit(milliseconds(1000))) << "the old daemon did not exit cleanly";
  std::string log = Log();
  EXPECT_NE(log.find("is still writing back after its unmount: stopping it"), std::string::npos)
      << log;
  EXPECT_NE(log.find("writeback after the unmount stopped by a signal"), std::string::npos) << log;
  EXPECT_NE(Slurp(slow() + "/c"), data) << "all written back: the test proves nothing";
  EXPECT_EQ(ReadFile(mnt() + "/c"), data);
  ASSERT_TRUE(next->Unmount());
  ASSERT_TRUE(next->WaitExit(milliseconds(20000))) << "no clean exit";
  EXPECT_EQ(Slurp(slow() + "/c"), data) << "the rest was not written back";
}

// (d) SIGTERM during the writeback after the unmount ends it at once: a
// clean exit, the rest dirty in the cache (and shown by the next mount).
TEST_F(FlushTimeoutTest, SigtermEndsTheWritebackEarly) {
  ASSERT_TRUE(StartSlowfs("2M"));
  Daemon* d = StartCachefs("60");
  ASSERT_NE(d, nullptr);
  const std::string data = Pattern(6 * kMiB, 5);
  WriteDirty("d", data);
  ASSERT_TRUE(d->Unmount());
  ASSERT_TRUE(PollFor([&] { return LockText().find(" flushing") != std::string::npos; },
                      milliseconds(5000)))
      << "lock file: " << LockText();
  auto signalled = Clock::now();
  ASSERT_EQ(kill(d->pid(), SIGTERM), 0);
  ASSERT_TRUE(d->WaitExit(milliseconds(5000))) << "no clean exit after SIGTERM";
  const double exit_s = SecondsSince(signalled);
  RecordProperty("sigterm_to_exit_seconds", std::to_string(exit_s));
  EXPECT_LT(exit_s, 1.0) << "SIGTERM did not end the writeback at once";
  EXPECT_NE(Log().find("writeback after the unmount stopped by a signal"), std::string::npos)
      << Log();
  EXPECT_NE(Slurp(slow() + "/d"), data) << "all written back: the test proves nothing";
  Daemon* again = StartCachefs("0");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ReadFile(mnt() + "/d"), data);
}

// A SOURCE that stops answering (slowfs stopped with SIGSTOP) while the
// daemon writes back after the unmount cannot hold it: 5 s after a SIGTERM
// it gives up its clean shutdown and exits 1; the next mount has everything.
TEST_F(FlushTimeoutTest, HungSourceCannotHoldTheDaemon) {
  stoppable_slowfs_ = std::make_unique<Daemon>();
  ASSERT_TRUE(stoppable_slowfs_->Start(SlowfsBinary(), slow(), slowmnt(), {"-o", "bandwidth=2M"},
                                       base_ + "/slowfs.log"));
  Daemon* d = StartCachefs("60");
  ASSERT_NE(d, nullptr);
  const std::string data = Pattern(4 * kMiB, 7);
  WriteDirty("h", data);
  ASSERT_TRUE(d->Unmount());
  ASSERT_TRUE(PollFor([&] { return LockText().find(" flushing") != std::string::npos; },
                      milliseconds(5000)))
      << "lock file: " << LockText();
  ASSERT_EQ(kill(stoppable_slowfs_->pid(), SIGSTOP), 0);
  auto signalled = Clock::now();
  ASSERT_EQ(kill(d->pid(), SIGTERM), 0);
  // The daemon's last thread may wait for slowfs's answer to a request it
  // had taken: the log line tells when it gave up.
  EXPECT_TRUE(PollFor([&] { return Log().find("exiting without it") != std::string::npos; },
                      milliseconds(8000)))
      << Log();
  double took = SecondsSince(signalled);
  EXPECT_GT(took, 4.5);
  EXPECT_LT(took, 7.0);
  ASSERT_EQ(kill(stoppable_slowfs_->pid(), SIGCONT), 0);
  EXPECT_TRUE(d->WaitExit(milliseconds(5000), 1)) << "not exit status 1";

  Daemon* again = StartCachefs("60");
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(ReadFile(mnt() + "/h"), data);
  ASSERT_TRUE(again->Unmount());
  ASSERT_TRUE(again->WaitExit(milliseconds(20000))) << "no clean exit";
  EXPECT_EQ(Slurp(slow() + "/h"), data) << "the rest was not written back";
}

// flush_timeout=0, and an unmount by a signal: the daemon exits at once.
TEST_F(FlushTimeoutTest, ZeroTimeoutAndSignalExitAtOnce) {
  ASSERT_TRUE(StartSlowfs("2M"));
  Daemon* d = StartCachefs("0");
  ASSERT_NE(d, nullptr);
  const std::string data = Pattern(4 * kMiB, 6);
  WriteDirty("e", data);
  auto t = Clock::now();
  ASSERT_TRUE(d->Unmount());
  ASSERT_TRUE(d->WaitExit(milliseconds(5000))) << "no clean exit";
  EXPECT_LT(SecondsSince(t), 1.0);
  EXPECT_NE(Log().find("flush_timeout=0: 4.0 MiB (64 blocks) stays dirty"), std::string::npos)
      << Log();

  // SIGTERM to a mounted daemon unmounts it and skips the writeback.
  Daemon* again = StartCachefs("60");
  ASSERT_NE(again, nullptr);
  t = Clock::now();
  ASSERT_EQ(kill(again->pid(), SIGTERM), 0);
  ASSERT_TRUE(again->WaitExit(milliseconds(5000))) << "no clean exit";
  EXPECT_LT(SecondsSince(t), 1.0);
  EXPECT_FALSE(IsMountPoint(mnt()));
  EXPECT_NE(Log().find("stopped by a signal: 4.0 MiB (64 blocks) stays dirty"), std::string::npos)
      << Log();
  EXPECT_NE(Slurp(slow() + "/e"), data);
}

}  // namespace
}  // namespace cachefs::testing
