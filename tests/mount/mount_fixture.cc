#include "tests/mount/mount_fixture.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <utility>

#include "fs/mount.h"

namespace cachefs::testing {
namespace {

std::string TmpRoot() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return cond();
}

// Starts the daemon `argv` (stderr appended to `log` unless empty) and waits
// up to 10 s for `mnt` to become a mount point. `pid` is the daemon's while it
// runs (-1 once reaped), so the caller's Unmount can clean up a daemon that
// did not mount. Returns whether the mount came up (fails the test if not).
bool SpawnMount(std::vector<std::string> argv_s, const std::string& mnt, const std::string& log,
                const char* what, pid_t& pid_out) {
  std::vector<char*> argv;
  argv.reserve(argv_s.size() + 1);
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    if (!log.empty()) {
      int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) dup2(fd, STDERR_FILENO);  // dup2 clears O_CLOEXEC on the copy
    }
    execv(argv[0], argv.data());
    _exit(127);
  }
  pid_out = pid;
  bool died = false;
  WaitFor(
      [&] {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
          died = true;
          return true;
        }
        return IsMountPoint(mnt);
      },
      std::chrono::seconds(10));
  if (died) pid_out = -1;
  if (died || !IsMountPoint(mnt)) {
    ADD_FAILURE() << what << " did not mount " << mnt;
    return false;
  }
  return true;
}

// Lazily unmounts `mnt` (if `mounted`, or if the daemon still has it up)
// and waits for daemon `pid` to exit, killing it after 10 s. Returns its
// waitpid status; clears `mounted` and `pid`.
int UnmountAndReap(const std::string& mnt, bool& mounted, pid_t& pid, const char* what) {
  int status = -1;
  if (mounted || (pid > 0 && IsMountPoint(mnt))) {
    std::string cmd = "fusermount3 -u -z '" + mnt + "' 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) umount2(mnt.c_str(), MNT_DETACH);
    mounted = false;
  }
  if (pid > 0) {
    bool gone =
        WaitFor([&] { return waitpid(pid, &status, WNOHANG) == pid; }, std::chrono::seconds(10));
    if (!gone) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      ADD_FAILURE() << what << " did not exit after unmount";
    }
    pid = -1;
  }
  return status;
}

}  // namespace

std::string CachefsBinary() {
  const char* b = std::getenv("CACHEFS_BIN");
  return b != nullptr ? b : CACHEFS_BIN_DEFAULT;
}

std::string CachefsctlBinary() {
  const char* b = std::getenv("CACHEFSCTL_BIN");
  if (b != nullptr) return b;
  std::string cachefs = CachefsBinary();
  return cachefs.substr(0, cachefs.rfind('/') + 1) + "cachefsctl";
}

std::vector<std::string> TestCacheArgs() {
  static int counter = 0;
  std::string dir =
      TmpRoot() + "/cachefs-cache-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  return {"--cache=" + dir, "--cache_size=64M"};
}

std::string MakeTempDir(const std::string& tag) {
  std::string templ = TmpRoot() + "/cachefs-" + tag + "-XXXXXX";
  std::vector<char> buf(templ.begin(), templ.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << templ << ": " << std::strerror(errno);
    return "";
  }
  chmod(buf.data(), 0755);  // other users (permission tests) must get through
  return buf.data();
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

bool IsMountPoint(const std::string& path) {
  for (const MountEntry& m : ReadMounts()) {
    if (m.mount_point == path) return true;
  }
  return false;
}

CommandResult RunCommand(const std::string& cmd) {
  CommandResult r;
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

std::string ToString(const Outcome& o) {
  return "{ret=" + std::to_string(o.ret) + ", errno=" + std::to_string(o.err) +
         (o.err ? std::string(" ") + std::strerror(o.err) : "") + "}";
}

Outcome Capture(const std::function<long()>& op) {
  errno = 0;
  Outcome o;
  o.ret = op();
  o.err = o.ret < 0 ? errno : 0;
  return o;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  EXPECT_TRUE(out.good()) << "cannot write " << path;
  out << data;
}

std::unique_ptr<MountedCachefs> MountedCachefs::Start(const std::vector<std::string>& args) {
  std::unique_ptr<MountedCachefs> m(new MountedCachefs());
  m->base_ = MakeTempDir("mount");
  if (m->base_.empty()) return nullptr;
  for (const char* d : {"/src", "/mnt", "/ref"}) mkdir((m->base_ + d).c_str(), 0755);
  m->src_ = m->base_ + "/src";
  m->mnt_ = m->base_ + "/mnt";
  std::vector<std::string> argv_s = {
      CachefsBinary(),   "-f", m->src(), m->mnt(), "--cache=" + m->base_ + "/cache",
      "--cache_size=64M"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  if (!m->Spawn(argv_s, "")) return nullptr;
  return m;
}

std::unique_ptr<MountedCachefs> MountedCachefs::StartAt(const std::string& source,
                                                        const std::string& mnt,
                                                        const std::vector<std::string>& args,
                                                        const std::string& log) {
  std::unique_ptr<MountedCachefs> m(new MountedCachefs());
  m->src_ = source;
  m->mnt_ = mnt;
  std::vector<std::string> argv_s = {CachefsBinary(), "-f", source, mnt};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  if (!m->Spawn(argv_s, log)) return nullptr;
  return m;
}

bool MountedCachefs::Spawn(std::vector<std::string> argv_s, const std::string& log) {
  mounted_ = SpawnMount(std::move(argv_s), mnt_, log, "cachefs", pid_);
  return mounted_;
}

int MountedCachefs::Unmount() { return UnmountAndReap(mnt(), mounted_, pid_, "cachefs"); }

MountedCachefs::~MountedCachefs() {
  Unmount();
  if (!base_.empty()) RemoveTree(base_);
}

std::string SlowfsBinary() {
  const char* b = std::getenv("SLOWFS_BIN");
  return b != nullptr ? b : SLOWFS_BIN_DEFAULT;
}

std::unique_ptr<MountedSlowfs> MountedSlowfs::Start(const std::vector<std::string>& args) {
  std::unique_ptr<MountedSlowfs> m(new MountedSlowfs());
  m->base_ = MakeTempDir("slowfs");
  if (m->base_.empty()) return nullptr;
  m->src_ = m->base_ + "/src";
  m->mnt_ = m->base_ + "/mnt";
  mkdir(m->src_.c_str(), 0755);
  mkdir(m->mnt_.c_str(), 0755);
  if (!m->Spawn(args)) return nullptr;  // the destructor cleans up
  return m;
}

std::unique_ptr<MountedSlowfs> MountedSlowfs::StartAt(const std::string& src,
                                                      const std::string& mnt,
                                                      const std::vector<std::string>& args) {
  std::unique_ptr<MountedSlowfs> m(new MountedSlowfs());
  m->src_ = src;
  m->mnt_ = mnt;
  if (!m->Spawn(args)) return nullptr;
  return m;
}

bool MountedSlowfs::Spawn(const std::vector<std::string>& args) {
  std::vector<std::string> argv_s = {SlowfsBinary(), "-f", src_, mnt_};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  mounted_ = SpawnMount(std::move(argv_s), mnt_, "", "slowfs", pid_);
  return mounted_;
}

MountedSlowfs::~MountedSlowfs() {
  Unmount();
  if (!base_.empty()) RemoveTree(base_);
}

int MountedSlowfs::Unmount() { return UnmountAndReap(mnt_, mounted_, pid_, "slowfs"); }

const std::vector<std::string> kSlowfsStatNames = {"reads",   "read_bytes", "writes", "write_bytes",
                                                   "lookups", "getattrs",   "opens",  "fsyncs"};

std::string SlowfsStatsLine(const std::string& mnt) {
  char buf[512];
  ssize_t n = getxattr(mnt.c_str(), "user.slowfs.stats", buf, sizeof(buf));
  EXPECT_GT(n, 0) << "getxattr user.slowfs.stats of " << mnt << ": " << std::strerror(errno);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

SlowfsStats ReadSlowfsStats(const std::string& mnt) {
  std::string line = SlowfsStatsLine(mnt);
  SlowfsStats stats;
  std::istringstream in(line);
  std::vector<std::string> names;
  std::string field;
  while (in >> field) {
    size_t eq = field.find('=');
    EXPECT_NE(eq, std::string::npos) << field;
    if (eq == std::string::npos) continue;
    names.push_back(field.substr(0, eq));
    stats[names.back()] = std::stoull(field.substr(eq + 1));
  }
  EXPECT_EQ(names, kSlowfsStatNames) << line;
  return stats;
}

SlowfsStats SlowfsDelta(const SlowfsStats& before, const SlowfsStats& after) {
  SlowfsStats d;
  for (const std::string& name : kSlowfsStatNames) {
    auto b = before.find(name);
    auto a = after.find(name);
    d[name] = (a == after.end() ? 0 : a->second) - (b == before.end() ? 0 : b->second);
  }
  return d;
}

}  // namespace cachefs::testing
