#include "cache/timeout_backing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
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
    calls++;
    std::this_thread::sleep_for(milliseconds(delay_ms.load()));
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }
  std::atomic<int> delay_ms{0};
  std::atomic<int> calls{0};
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

}  // namespace
}  // namespace cachefs
