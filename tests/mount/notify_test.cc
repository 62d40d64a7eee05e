// Readiness under systemd: with NOTIFY_SOCKET set, cachefs sends READY=1 only
// once the mount and its control socket are up (the parent, with MAINPID= of
// the serving child, when it detaches), and STOPPING=1 at unmount. The test
// plays systemd: a datagram socket with SO_PASSCRED, so each message comes
// with its sender's pid, which is what NotifyAccess=main checks.
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

struct Message {
  std::string text;  // "" when none came before the deadline
  pid_t sender = -1;
};

// systemd's end of the protocol, on an abstract name.
class FakeSystemd {
 public:
  FakeSystemd() : address_("@cachefs-notify-" + std::to_string(getpid())) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    int one = 1;
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path + 1, address_.data() + 1, address_.size() - 1);
    auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size());
    ok_ = fd_ >= 0 && setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == 0 &&
          bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) == 0;
  }
  ~FakeSystemd() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }
  const std::string& address() const { return address_; }

  // The next message, waiting up to 10 s.
  Message Receive() {
    Message m;
    pollfd p{fd_, POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) return m;
    char buf[1024];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = recvmsg(fd_, &msg, 0);
    if (n <= 0) return m;
    m.text.assign(buf, n);
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred;
        std::memcpy(&cred, CMSG_DATA(c), sizeof(cred));
        m.sender = cred.pid;
      }
    }
    return m;
  }

 private:
  std::string address_;
  int fd_ = -1;
  bool ok_ = false;
};

// The value of VARIABLE= in a notify message, or "" when absent.
std::string Field(const std::string& text, const std::string& name) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    if (line.rfind(name + "=", 0) == 0) return line.substr(name.size() + 1);
    pos = end + 1;
  }
  return "";
}

// Whether `pid` is gone (or a zombie nobody reaped yet).
bool Gone(pid_t pid) {
  if (kill(pid, 0) != 0) return true;
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  size_t paren = stat.rfind(')');
  return paren != std::string::npos && stat.size() > paren + 2 && stat[paren + 2] == 'Z';
}

bool WaitGone(pid_t pid) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!Gone(pid)) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    usleep(10000);
  }
  return true;
}

class NotifyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("notify");
    ASSERT_FALSE(dir_.empty());
    src_ = dir_ + "/src";
    mnt_ = dir_ + "/mnt";
    ASSERT_EQ(mkdir(src_.c_str(), 0755), 0);
    ASSERT_EQ(mkdir(mnt_.c_str(), 0755), 0);
    WriteFile(src_ + "/f", "served");
    ASSERT_TRUE(systemd_.ok());
  }
  void TearDown() override {
    if (IsMountPoint(mnt_)) RunCommand("fusermount3 -u -z '" + mnt_ + "'");
    if (pid_ > 0) {
      int status;
      if (waitpid(pid_, &status, WNOHANG) == 0) kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
    }
    RemoveTree(dir_);
  }

  // Starts cachefs with NOTIFY_SOCKET pointing at the fake systemd.
  void Start(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {CachefsBinary(), src_, mnt_, "--cache=" + dir_ + "/cache",
                                     "--cache_size=16M"};
    args.insert(args.end(), flags.begin(), flags.end());
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      setenv("NOTIFY_SOCKET", systemd_.address().c_str(), 1);
      std::vector<char*> argv;
      for (std::string& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }

  std::string dir_, src_, mnt_;
  FakeSystemd systemd_;
  pid_t pid_ = -1;
};

TEST_F(NotifyTest, DetachedParentReportsReadyAndHandsOverMainPid) {
  Start({});
  Message ready = systemd_.Receive();
  ASSERT_EQ(Field(ready.text, "READY"), "1") << "message: '" << ready.text << "'";
  // By the time systemd hears READY=1 the mount is live and cachefsctl works.
  EXPECT_TRUE(IsMountPoint(mnt_));
  EXPECT_EQ(ReadFile(mnt_ + "/f"), "served");
  CommandResult stats = RunCommand("'" + CachefsctlBinary() + "' stats '" + mnt_ + "'");
  EXPECT_EQ(stats.exit_code, 0) << stats.output;
  // The main PID (the one systemd started) sends it and names its child.
  EXPECT_EQ(ready.sender, pid_);
  pid_t main_pid = std::atoi(Field(ready.text, "MAINPID").c_str());
  ASSERT_GT(main_pid, 0) << ready.text;
  EXPECT_NE(main_pid, pid_);
  EXPECT_FALSE(Gone(main_pid));
  int status;
  ASSERT_EQ(waitpid(pid_, &status, 0), pid_);
  pid_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;

  // Unmount: the new main PID says it is stopping, then exits.
  CommandResult u = RunCommand("fusermount3 -u '" + mnt_ + "'");
  ASSERT_EQ(u.exit_code, 0) << u.output;
  Message stopping = systemd_.Receive();
  EXPECT_EQ(Field(stopping.text, "STOPPING"), "1") << "message: '" << stopping.text << "'";
  EXPECT_EQ(stopping.sender, main_pid);
  EXPECT_TRUE(WaitGone(main_pid));
}

TEST_F(NotifyTest, ForegroundDaemonReportsReadyItself) {
  Start({"-f"});
  Message ready = systemd_.Receive();
  ASSERT_EQ(ready.text, "READY=1");
  EXPECT_EQ(ready.sender, pid_);
  EXPECT_TRUE(IsMountPoint(mnt_));
  CommandResult stats = RunCommand("'" + CachefsctlBinary() + "' stats '" + mnt_ + "'");
  EXPECT_EQ(stats.exit_code, 0) << stats.output;

  // systemctl stop sends SIGTERM.
  ASSERT_EQ(kill(pid_, SIGTERM), 0);
  Message stopping = systemd_.Receive();
  EXPECT_EQ(stopping.text, "STOPPING=1");
  EXPECT_EQ(stopping.sender, pid_);
  int status;
  ASSERT_EQ(waitpid(pid_, &status, 0), pid_);
  pid_ = -1;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(IsMountPoint(mnt_));
}

}  // namespace
}  // namespace cachefs::testing
