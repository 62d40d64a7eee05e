#include "tests/mount/ctl_util.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace cachefs::testing {

using Clock = std::chrono::steady_clock;

// Runs cachefsctl with `args`, as `uid` (and gid) when it is not 0.
CtlResult RunCtl(const std::vector<std::string>& args, uid_t uid) {
  std::vector<std::string> argv_s = {CachefsctlBinary()};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out[2];
  int err[2];
  CtlResult r;
  if (pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return r;
  }
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], STDOUT_FILENO);
    dup2(err[1], STDERR_FILENO);
    if (uid != 0 && (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0)) {
      _exit(126);
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  close(err[1]);
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  std::string* sinks[2] = {&r.out, &r.err};
  int open_fds = 2;
  while (open_fds > 0 && poll(fds, 2, 30000) > 0) {
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      ssize_t n = read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds) {
    if (f.fd >= 0) close(f.fd);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string Describe(const CtlResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "stderr:\n" + r.err;
}

// A failure as the brief of every cachefs tool wants it: nothing on
// stdout, one line on stderr that says `says`, a non-zero exit.
void ExpectOneLineError(const CtlResult& r, const std::string& says, int exit_code) {
  EXPECT_EQ(r.exit_code, exit_code) << Describe(r);
  EXPECT_EQ(r.out, "") << Describe(r);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << Describe(r);
  EXPECT_EQ(r.err.rfind("cachefsctl: ", 0), 0u) << Describe(r);
  EXPECT_NE(r.err.find(says), std::string::npos) << Describe(r);
}

JsonValue ParseOut(const CtlResult& r) {
  EXPECT_EQ(r.exit_code, 0) << Describe(r);
  auto j = ParseJson(r.out);
  EXPECT_TRUE(j.ok()) << j.status().message() << "\n" << Describe(r);
  return j.ok() ? j.value() : JsonValue();
}

uint64_t Uint(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  uint64_t n = 0;
  EXPECT_TRUE(v != nullptr && v->as_uint64(&n)) << key << " in " << obj.Serialize();
  return n;
}

std::string Str(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  EXPECT_TRUE(v != nullptr && v->is_string()) << key << " in " << obj.Serialize();
  return v != nullptr && v->is_string() ? *v->as_string() : "";
}

// Reads all of `path` in block-sized O_DIRECT reads: each read reaches the
// daemon as one request for one whole block, whatever the kernel cached.
void ReadDirect(const std::string& path, size_t size) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  void* buf = nullptr;
  ASSERT_EQ(posix_memalign(&buf, 4096, kCtlBlock), 0);
  for (size_t off = 0; off < size; off += kCtlBlock) {
    EXPECT_EQ(pread(fd, buf, kCtlBlock, static_cast<off_t>(off)), static_cast<ssize_t>(kCtlBlock))
        << "at " << off << ": " << std::strerror(errno);
  }
  free(buf);
  close(fd);
}

bool CtlTest::Mount(const std::vector<std::string>& extra) {
  std::vector<std::string> args = {"--block_size=" + std::to_string(kCtlBlock >> 10) + "K"};
  args.insert(args.end(), extra.begin(), extra.end());
  cachefs_ = MountedCachefs::Start(args);
  if (cachefs_ == nullptr) return false;
  return WaitForSocket(mnt());
}

bool CtlTest::WaitForSocket(const std::string& mnt) {
  struct stat st;
  if (stat(mnt.c_str(), &st) != 0) {
    ADD_FAILURE() << mnt << ": " << std::strerror(errno);
    return false;
  }
  socket_ = "/run/cachefs/" + std::to_string(major(st.st_dev)) + ":" +
            std::to_string(minor(st.st_dev)) + ".sock";
  // The daemon makes the socket right after the mount appears.
  auto deadline = Clock::now() + std::chrono::seconds(5);
  while (!Connectable(socket_)) {
    if (Clock::now() > deadline) {
      ADD_FAILURE() << "no control socket " << socket_;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

bool CtlTest::Connectable(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace cachefs::testing
