// Mounting: the checks before a mount, the FUSE session and its loop.
//
// Thread-safety: a FuseMount is created, run and destroyed by one thread; the
// loop it runs spawns the FUSE worker threads.
#pragma once

#include <fuse_lowlevel.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "fs/filesystem.h"

namespace cachefs {

// /dev/fuse can be opened (a one-line reason otherwise).
Status CheckDevFuse();

// MOUNTPOINT exists, suits SOURCE (a directory for a directory, a regular file
// for a file), is not a live mount already, is not a stale one left by a
// crashed daemon, and does not lie inside SOURCE. `canonical_source` must be
// a canonical path.
Status CheckMountpoint(const std::string& mountpoint, const std::string& canonical_source,
                       bool source_is_directory);

// The mount point of every mount in /proc/self/mountinfo, with its fs type.
struct MountEntry {
  std::string mount_point;
  std::string fs_type;
};
std::vector<MountEntry> ReadMounts();

class FuseMount {
 public:
  // Creates the session and mounts `fs` on `mountpoint`. Nothing is left
  // mounted when it fails. `ops` (default: Filesystem::Operations()) is the
  // operation table to serve with, copied by libfuse; a tool may pass a table
  // whose entries wrap Filesystem's (bench/slowfs). Userdata is always `fs`.
  static Result<std::unique_ptr<FuseMount>> Mount(Filesystem* fs, const std::string& source,
                                                  const std::string& mountpoint, bool debug,
                                                  const fuse_lowlevel_ops* ops = nullptr);
  // Unmounts (if still mounted) and destroys the session.
  ~FuseMount();
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;

  // Serves requests until the filesystem is unmounted or SIGINT, SIGTERM or
  // SIGHUP arrives; then unmounts.
  Status Run();
  // After Run(): the signal that ended it, 0 when the filesystem was
  // unmounted (libfuse 3.10 and later report it).
  int exit_signal() const { return exit_signal_; }

 private:
  FuseMount(fuse_session* se, Filesystem* fs) : se_(se), fs_(fs) {}
  fuse_session* se_;
  Filesystem* fs_;
  bool mounted_ = true;
  int exit_signal_ = 0;
};

}  // namespace cachefs
