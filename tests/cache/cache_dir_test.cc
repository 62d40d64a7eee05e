// CacheDirLock: one holder at a time, and the take-over of a holder that is
// only writing back after its unmount (flush_timeout). The other holder is a
// forked child, as a real daemon is another process: the take-over sends it
// SIGTERM.
#include "cache/cache_dir.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <string>

namespace cachefs {
namespace {

std::string TempDir() {
  const char* t = std::getenv("TMPDIR");
  std::string templ = std::string(t != nullptr && *t != '\0' ? t : "/tmp") + "/cachedir-XXXXXX";
  if (mkdtemp(templ.data()) == nullptr) return "";
  return templ;
}

// A child process that holds the lock of `dir` (marked flushing if asked)
// until it is killed; the default SIGTERM action ends it.
class Holder {
 public:
  Holder(const std::string& dir, bool flushing) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      close(fds[0]);
      auto lock = CacheDirLock::Acquire(dir);
      bool ok = lock.ok() && (!flushing || lock.value()->MarkFlushing().ok());
      char c = ok ? 1 : 0;
      (void)!write(fds[1], &c, 1);
      while (true) pause();
    }
    close(fds[1]);
    char c = 0;
    ready_ = read(fds[0], &c, 1) == 1 && c == 1;
    close(fds[0]);
  }
  ~Holder() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  Holder(const Holder&) = delete;
  Holder& operator=(const Holder&) = delete;

  bool ready() const { return ready_; }
  pid_t pid() const { return pid_; }
  // Whether the child was ended by `sig` (reaps it; false if it still runs).
  bool EndedBy(int sig) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) != pid_) return false;
    reaped_ = true;
    return WIFSIGNALED(status) && WTERMSIG(status) == sig;
  }

 private:
  pid_t pid_ = -1;
  bool ready_ = false;
  bool reaped_ = false;
};

class CacheDirLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir();
    ASSERT_FALSE(dir_.empty());
  }
  void TearDown() override {
    unlink((dir_ + "/lock").c_str());
    rmdir(dir_.c_str());
  }
  std::string dir_;
};

TEST_F(CacheDirLockTest, SecondHolderFailsNamingTheFirst) {
  Holder h(dir_, /*flushing=*/false);
  ASSERT_TRUE(h.ready());
  for (bool take_over : {false, true}) {
    auto r = CacheDirLock::Acquire(dir_, take_over);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), EBUSY);
    EXPECT_EQ(r.status().message(), "cache '" + dir_ + "' is in use by another mount (pid " +
                                        std::to_string(h.pid()) + ")");
  }
  EXPECT_FALSE(h.EndedBy(SIGTERM)) << "a mounted holder must never be stopped";
}

TEST_F(CacheDirLockTest, FlushingHolderIsNamedWithoutTakeOver) {
  Holder h(dir_, /*flushing=*/true);
  ASSERT_TRUE(h.ready());
  auto r = CacheDirLock::Acquire(dir_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EBUSY);
  EXPECT_EQ(r.status().message(), "cache '" + dir_ + "' is in use by another mount (pid " +
                                      std::to_string(h.pid()) +
                                      ", writing back after its unmount)");
  EXPECT_FALSE(h.EndedBy(SIGTERM));
}

TEST_F(CacheDirLockTest, TakeOverStopsAFlushingHolder) {
  Holder h(dir_, /*flushing=*/true);
  ASSERT_TRUE(h.ready());
  auto start = std::chrono::steady_clock::now();
  auto r = CacheDirLock::Acquire(dir_, /*take_over=*/true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
  EXPECT_TRUE(h.EndedBy(SIGTERM));
  // The new holder's lock says it is mounted, not flushing.
  auto again = CacheDirLock::Acquire(dir_, /*take_over=*/true);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().message(), "cache '" + dir_ + "' is in use by another mount (pid " +
                                          std::to_string(getpid()) + ")");
}

}  // namespace
}  // namespace cachefs
