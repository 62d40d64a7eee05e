#include "tests/mount/mount_fixture.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
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

}  // namespace

std::string CachefsBinary() {
  const char* b = std::getenv("CACHEFS_BIN");
  return b != nullptr ? b : CACHEFS_BIN_DEFAULT;
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
  std::vector<std::string> argv_s = {
      CachefsBinary(),   "-f", m->src(), m->mnt(), "--cache=" + m->base_ + "/cache",
      "--cache_size=64M"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  m->pid_ = pid;
  std::string mnt = m->mnt();
  bool up = WaitFor(
      [&] {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
          m->pid_ = -1;
          return true;  // died: stop waiting
        }
        return IsMountPoint(mnt);
      },
      std::chrono::seconds(10));
  if (!up || m->pid_ < 0) {
    ADD_FAILURE() << "cachefs did not mount " << mnt;
    return nullptr;
  }
  m->mounted_ = true;
  return m;
}

int MountedCachefs::Unmount() {
  int status = -1;
  if (mounted_) {
    std::string cmd = "fusermount3 -u -z '" + mnt() + "' 2>/dev/null";
    if (std::system(cmd.c_str()) != 0) umount2(mnt().c_str(), MNT_DETACH);
    mounted_ = false;
  }
  if (pid_ > 0) {
    bool gone =
        WaitFor([&] { return waitpid(pid_, &status, WNOHANG) == pid_; }, std::chrono::seconds(10));
    if (!gone) {
      kill(pid_, SIGKILL);
      waitpid(pid_, &status, 0);
      ADD_FAILURE() << "cachefs did not exit after unmount";
    }
    pid_ = -1;
  }
  return status;
}

MountedCachefs::~MountedCachefs() {
  Unmount();
  if (!base_.empty()) RemoveTree(base_);
}

}  // namespace cachefs::testing
