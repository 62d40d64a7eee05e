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

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace cachefs::testing {

class MountedCachefs {
 public:
  // Mounts base/src on base/mnt with `args` added to the command line.
  // Fails the current test (and returns nullptr) if the mount does not come up.
  static std::unique_ptr<MountedCachefs> Start(const std::vector<std::string>& args = {});
  // Mounts the existing `source` on the existing `mnt` with exactly `args`
  // after them (no cache options are added: pass --cache=...). The daemon's
  // stderr is appended to `log` unless it is empty. Neither directory is
  // removed at the end (base() is empty); ref() is meaningless. Fails the
  // current test (and returns nullptr) if the mount does not come up.
  static std::unique_ptr<MountedCachefs> StartAt(const std::string& source, const std::string& mnt,
                                                 const std::vector<std::string>& args,
                                                 const std::string& log = "");
  ~MountedCachefs();

  const std::string& base() const { return base_; }
  const std::string& src() const { return src_; }
  const std::string& mnt() const { return mnt_; }
  std::string ref() const { return base_ + "/ref"; }
  pid_t daemon_pid() const { return pid_; }

  // Unmounts now and waits for the daemon; returns its exit status (as waitpid).
  // Also clears the stale mount of a daemon that was killed.
  int Unmount();

 private:
  MountedCachefs() = default;
  // Runs `argv` (stderr to `log` if set) and waits for mnt_ to be mounted.
  bool Spawn(std::vector<std::string> argv, const std::string& log);
  std::string base_;
  std::string src_;
  std::string mnt_;
  pid_t pid_ = -1;
  bool mounted_ = false;
};

// bench/slowfs, the slow store that counts what reaches it, as a child
// process (`slowfs -f SOURCE MOUNTPOINT ARGS`). The destructor unmounts it,
// waits for it and removes the tree it made (as MountedCachefs does).
class MountedSlowfs {
 public:
  // Over base/src on base/mnt, both fresh. Fails the current test (and
  // returns nullptr) if the mount does not come up.
  static std::unique_ptr<MountedSlowfs> Start(const std::vector<std::string>& args = {});
  // Over the existing `src` on the existing `mnt`, which are left in place.
  static std::unique_ptr<MountedSlowfs> StartAt(const std::string& src, const std::string& mnt,
                                                const std::vector<std::string>& args = {});
  ~MountedSlowfs();
  MountedSlowfs(const MountedSlowfs&) = delete;
  MountedSlowfs& operator=(const MountedSlowfs&) = delete;

  const std::string& src() const { return src_; }
  const std::string& mnt() const { return mnt_; }
  pid_t daemon_pid() const { return pid_; }

  // Unmounts now and waits for slowfs; returns its exit status (as waitpid).
  int Unmount();

 private:
  MountedSlowfs() = default;
  bool Spawn(const std::vector<std::string>& args);
  std::string base_;  // owned tree, or empty
  std::string src_;
  std::string mnt_;
  pid_t pid_ = -1;
  bool mounted_ = false;
};

// The path of the slowfs binary.
std::string SlowfsBinary();
// slowfs's counters (`user.slowfs.stats` of its mount root), by name.
using SlowfsStats = std::map<std::string, uint64_t>;
// The counter names, in the order of the stats line.
extern const std::vector<std::string> kSlowfsStatNames;
// The stats line of the slowfs mounted on `mnt` ("" and a test failure if
// there is none).
std::string SlowfsStatsLine(const std::string& mnt);
// The counters of the slowfs mounted on `mnt`; fails the test unless the
// line has exactly the documented fields, in order.
SlowfsStats ReadSlowfsStats(const std::string& mnt);
// after - before, per counter.
SlowfsStats SlowfsDelta(const SlowfsStats& before, const SlowfsStats& after);

// The path of the cachefs binary under test.
std::string CachefsBinary();
// cachefsctl: $CACHEFSCTL_BIN, or the one built beside CachefsBinary().
std::string CachefsctlBinary();
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
