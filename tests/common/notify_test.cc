#include "common/notify.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

namespace cachefs {
namespace {

// A datagram socket bound to `address` ("/path" or "@abstract"), standing in
// for systemd's notify socket.
class Listener {
 public:
  explicit Listener(const std::string& address) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, address.data(), address.size());
    if (address[0] == '@') addr.sun_path[0] = '\0';
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    bound_ = fd_ >= 0 && bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0;
  }
  ~Listener() {
    if (fd_ >= 0) close(fd_);
  }
  bool bound() const { return bound_; }
  // The next datagram, or "" after 5 s.
  std::string Receive() {
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 5000) != 1) return "";
    char buf[512];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, n) : "";
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

std::string AbstractName() { return "@cachefs-notify-test-" + std::to_string(getpid()); }

TEST(Notify, SendsToAnAbstractName) {
  Listener l(AbstractName());
  ASSERT_TRUE(l.bound());
  ASSERT_TRUE(NotifySocket(AbstractName(), "READY=1\nSTATUS=x").ok());
  EXPECT_EQ(l.Receive(), "READY=1\nSTATUS=x");
}

TEST(Notify, SendsToAPath) {
  std::string dir = testing::TempDir() + "notify-XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  std::string path = dir + "/notify";
  {
    Listener l(path);
    ASSERT_TRUE(l.bound());
    ASSERT_TRUE(NotifySocket(path, "STOPPING=1").ok());
    EXPECT_EQ(l.Receive(), "STOPPING=1");
  }
  unlink(path.c_str());
  rmdir(dir.c_str());
}

TEST(Notify, UsesNotifySocketFromTheEnvironment) {
  Listener l(AbstractName());
  ASSERT_TRUE(l.bound());
  setenv("NOTIFY_SOCKET", AbstractName().c_str(), 1);
  Status s = NotifyServiceManager("READY=1");
  unsetenv("NOTIFY_SOCKET");
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(l.Receive(), "READY=1");
}

TEST(Notify, WithoutNotifySocketDoesNothing) {
  unsetenv("NOTIFY_SOCKET");
  EXPECT_TRUE(NotifyServiceManager("READY=1").ok());
}

TEST(Notify, RefusesBadAddressesAndReportsMissingListeners) {
  EXPECT_TRUE(NotifySocket("relative/path", "READY=1").IsInvalid());
  EXPECT_TRUE(NotifySocket("@", "READY=1").IsInvalid());
  EXPECT_TRUE(NotifySocket("/" + std::string(200, 'x'), "READY=1").IsInvalid());
  Status s = NotifySocket("@cachefs-notify-test-nobody-" + std::to_string(getpid()), "READY=1");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), ECONNREFUSED) << s.message();
}

}  // namespace
}  // namespace cachefs
