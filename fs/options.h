// Options of the FUSE layer: kernel caching, threads, access control.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace cachefs {

struct FsOptions {
  // Seconds the kernel may cache attributes / names (and negative lookups).
  // Changes made directly in SOURCE become visible after at most this long.
  // Default: 1.
  double attr_timeout = 1.0;
  double entry_timeout = 1.0;
  // Upper bound of FUSE worker threads; 0 picks the default (kDefaultFuseThreads).
  unsigned fuse_threads = 0;
  // Let users other than the mount's owner in. Turns on kernel permission
  // checks (default_permissions) and creation with the caller's credentials.
  // Default: off.
  bool allow_other = false;
  // Mount read-only. Default: off.
  bool read_only = false;
  // Pass extended attributes through to SOURCE. Off, every xattr request
  // is answered ENOSYS, after which the kernel stops sending them: xattr
  // calls fail with EOPNOTSUPP, and a write no longer costs a second FUSE
  // round trip (the kernel's GETXATTR of security.capability before each
  // write). A file opened for writing then loses its file capabilities on
  // SOURCE at the open, as a write would drop them. Default: on.
  bool xattr = true;
  // Mount options handed to the kernel as they are (nosuid, nodev, noexec,
  // noatime, sync, dirsync, ...).
  std::vector<std::string> kernel_options;

  static constexpr unsigned kDefaultFuseThreads = 16;
  static constexpr double kMaxTimeout = 86400.0 * 365;

  Status Validate() const;
};

}  // namespace cachefs
