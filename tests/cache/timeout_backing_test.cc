#include "cache/timeout_backing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace cachefs {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// Sleeps `delay` before each read. Static lifetime: a stuck worker may call
// it after the test has moved on.
class SlowBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    {
      std::lock_guard<std::mutex> lock(mu);
      last_reader = std::this_thread::get_id();
    }
    calls++;
    std::this_thread::sleep_for(milliseconds(delay_ms.load()));
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }
  std::thread::id LastReader() {
    std::lock_guard<std::mutex> lock(mu);
    return last_reader;
  }
  std::atomic<int> delay_ms{0};
  std::atomic<int> calls{0};
  std::mutex mu;
  std::thread::id last_reader;  // guarded by mu: the thread of the last read begun
};

SlowBacking& Slow() {
  static SlowBacking* b = new SlowBacking();  // never destroyed: see above
  return *b;
}

int TempFile(const std::string& data) {
  char name[] = "/tmp/cachefs-timeout-XXXXXX";
  int fd = mkstemp(name);
  unlink(name);
  EXPECT_EQ(write(fd, data.data(), data.size()), static_cast<ssize_t>(data.size()));
  return fd;
}

TEST(TimeoutBacking, PassesReadsThrough) {
  Slow().delay_ms = 0;
  TimeoutBacking b(&Slow(), milliseconds(2000), 4);
  int fd = TempFile("hello world");
  char buf[16] = {0};
  auto n = b.Read(fd, 6, 16, buf);
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(n.value(), 5u);
  EXPECT_EQ(std::string(buf, 5), "world");
  close(fd);
}

TEST(TimeoutBacking, HungReadFailsWithEioInTime) {
  Slow().delay_ms = 1500;
  auto b = std::make_unique<TimeoutBacking>(&Slow(), milliseconds(100), 2);
  int fd = TempFile("data");
  char buf[4];
  auto start = steady_clock::now();
  auto n = b->Read(fd, 0, 4, buf);
  auto took = steady_clock::now() - start;
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), EIO);
  EXPECT_NE(n.status().message().find("timed out"), std::string::npos);
  EXPECT_LT(took, milliseconds(1000));
  close(fd);
  // Both workers stuck: the next reads wait for a free one, then give up too.
  int fd2 = TempFile("more");
  EXPECT_FALSE(b->Read(fd2, 0, 4, buf).ok());
  EXPECT_FALSE(b->Read(fd2, 0, 4, buf).ok());
  // Once the store answers again, reads work.
  Slow().delay_ms = 0;
  std::this_thread::sleep_for(milliseconds(1600));
  auto ok = b->Read(fd2, 0, 4, buf);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(std::string(buf, 4), "more");
  close(fd2);
}

TEST(TimeoutBacking, ReadDirectReadsOnTheCallersThread) {
  Slow().delay_ms = 0;
  int fd = TempFile("hello world");
  char buf[16] = {0};
  bool expired = false;
  TimeoutBacking direct(&Slow(), milliseconds(2000), 2, /*time_writes=*/false, 1);
  auto n = direct.ReadDirect(fd, 0, 5, buf, [&] { expired = true; });
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(std::string(buf, n.value()), "hello");
  EXPECT_EQ(Slow().LastReader(), std::this_thread::get_id());
  EXPECT_FALSE(expired);
  // No direct slots: handed off to a worker like Read.
  TimeoutBacking handed_off(&Slow(), milliseconds(2000), 2, /*time_writes=*/false, 0);
  n = handed_off.ReadDirect(fd, 6, 5, buf, [&] { expired = true; });
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(std::string(buf, n.value()), "world");
  EXPECT_NE(Slow().LastReader(), std::this_thread::get_id());
  EXPECT_FALSE(expired);
  close(fd);
}

TEST(TimeoutBacking, HungDirectReadIsAnsweredByTheWatchdog) {
  Slow().delay_ms = 800;
  auto b = std::make_unique<TimeoutBacking>(&Slow(), milliseconds(100), 2,
                                            /*time_writes=*/false, 1);
  int fd = TempFile("data");
  const auto start = steady_clock::now();
  std::atomic<bool> expired{false};
  std::atomic<std::thread::id> expired_on{};
  steady_clock::duration expired_after{};
  Result<size_t> stuck = size_t{0};
  steady_clock::duration stuck_took{};
  std::thread reader([&] {
    char rbuf[4];
    stuck = b->ReadDirect(fd, 0, 4, rbuf, [&] {
      expired_after = steady_clock::now() - start;
      expired_on = std::this_thread::get_id();
      expired = true;
    });
    stuck_took = steady_clock::now() - start;
  });
  const auto deadline = start + milliseconds(3000);
  while (!expired && steady_clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
  ASSERT_TRUE(expired) << "the watchdog never answered for the hung direct read";
  EXPECT_LT(expired_after, milliseconds(500));
  EXPECT_NE(expired_on.load(), reader.get_id());
  // While it is overdue, the store looks hung: the next read is handed off
  // (this thread is not the one stuck) and times out by itself.
  bool second_expired = false;
  char buf[4];
  const auto t2 = steady_clock::now();
  auto n = b->ReadDirect(fd, 0, 4, buf, [&] { second_expired = true; });
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), EIO);
  EXPECT_LT(steady_clock::now() - t2, milliseconds(600));
  EXPECT_FALSE(second_expired);
  reader.join();
  // The stuck read itself fails too, once the store answers.
  ASSERT_FALSE(stuck.ok());
  EXPECT_EQ(stuck.status().code(), EIO);
  EXPECT_NE(stuck.status().message().find("timed out"), std::string::npos);
  EXPECT_GE(stuck_took, milliseconds(700));
  // It returned: direct reads are back.
  Slow().delay_ms = 0;
  n = b->ReadDirect(fd, 0, 4, buf, [] {});
  ASSERT_TRUE(n.ok()) << n.status().message();
  EXPECT_EQ(std::string(buf, 4), "data");
  EXPECT_EQ(Slow().LastReader(), std::this_thread::get_id());
  close(fd);
}

}  // namespace
}  // namespace cachefs
