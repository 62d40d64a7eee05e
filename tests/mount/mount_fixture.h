// Test support for mount tests: a cachefs daemon over a temporary SOURCE.
//
// MountedCachefs starts `cachefs -f SOURCE MOUNTPOINT ...` as a child process
// and waits until the mount is live; its destructor unmounts (lazily, so a
// busy mount cannot keep it up), waits for the daemon and removes the
// temporary tree. tests/mount/run_clean.sh, which runs every mount-test
// binary, clears any mount left behind if a test binary dies before that.
//
// Paths: everything lives under $TMPDIR (or /tmp) in a fresh directory:
//   base/src  SOURCE      base/mnt  MOUNTPOINT      base/ref  a plain twin
// `ref` is a directory on the same filesystem as `src` that tests use to run
// the same operation without cachefs and compare results and errno.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cachefs::testing {

class MountedCachefs {
 public:
  // Mounts base/src on base/mnt with `args` added to the command line.
  // Fails the current test (and returns nullptr) if the mount does not come up.
  static std::unique_ptr<MountedCachefs> Start(const std::vector<std::string>& args = {});
  ~MountedCachefs();

  const std::string& base() const { return base_; }
  std::string src() const { return base_ + "/src"; }
  std::string mnt() const { return base_ + "/mnt"; }
  std::string ref() const { return base_ + "/ref"; }
  pid_t daemon_pid() const { return pid_; }

  // Unmounts now and waits for the daemon; returns its exit status (as waitpid).
  int Unmount();

 private:
  MountedCachefs() = default;
  std::string base_;
  pid_t pid_ = -1;
  bool mounted_ = false;
};

// The path of the cachefs binary under test.
std::string CachefsBinary();
// Cache options every test mount gets unless it passes its own: a cache
// directory of its own under $TMPDIR and a small store, so tests never use
// /var/cache or 10% of the disk.
std::vector<std::string> TestCacheArgs();
// A fresh empty directory under $TMPDIR; removed by the caller (RemoveTree).
std::string MakeTempDir(const std::string& tag);
void RemoveTree(const std::string& path);
// Whether `path` is the mount point of a live mount (per /proc/self/mountinfo).
bool IsMountPoint(const std::string& path);

// Runs `cmd` through /bin/sh; returns its exit code and what it printed on
// stdout and stderr together.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult RunCommand(const std::string& cmd);

// The outcome of a system call: its return value and errno when it failed.
struct Outcome {
  long ret = 0;
  int err = 0;
  bool operator==(const Outcome& o) const { return ret == o.ret && err == o.err; }
};
std::string ToString(const Outcome& o);
// Runs `op` and captures its outcome.
Outcome Capture(const std::function<long()>& op);

// File helpers for tests: whole-file read and write (abort the test on error).
std::string ReadFile(const std::string& path);
void WriteFile(const std::string& path, const std::string& data);

}  // namespace cachefs::testing
