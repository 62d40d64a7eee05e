// Filesystem: the FUSE low-level operations over SOURCE.
//
// Every operation a POSIX user expects is passed through to SOURCE with
// *at() calls relative to O_PATH handles (see InodeTable), so the results and
// error codes are those of the source filesystem and nothing outside SOURCE
// can be reached: source-side symlinks are never followed. Objects are created
// with the caller's credentials (ScopedCallerCredentials). File data goes
// straight to SOURCE for now; the block cache plugs in below read/write.
//
// POSIX and flock locks are left to the kernel (FUSE does them locally when
// the filesystem does not implement them): they are exact among users of the
// mount but are not taken on SOURCE itself.
//
// Thread-safety: the operations run on many FUSE worker threads at once; all
// shared state is in the InodeTable. One reply is sent per request on every path.
#pragma once

#include <fuse_lowlevel.h>

#include <memory>
#include <string>

#include "common/status.h"
#include "fs/inode_table.h"
#include "fs/options.h"

namespace cachefs {

class Filesystem {
 public:
  // Opens SOURCE. Fails with a one-line Status when it is missing, unreadable
  // or neither a directory nor a regular file.
  static Result<std::unique_ptr<Filesystem>> Open(const std::string& source, const FsOptions& opts);

  // The operation table for fuse_session_new(); userdata is this Filesystem.
  static const fuse_lowlevel_ops& Operations();

  const FsOptions& options() const { return opts_; }
  InodeTable& inodes() { return *inodes_; }
  bool source_is_directory() const { return S_ISDIR(inodes_->root()->type()); }

  // The session serving this filesystem, for notifications to the kernel.
  // Set once by FuseMount before the first request.
  void set_session(fuse_session* se) { se_ = se; }
  fuse_session* session() const { return se_; }

 private:
  Filesystem(std::unique_ptr<InodeTable> inodes, const FsOptions& opts)
      : inodes_(std::move(inodes)), opts_(opts) {}

  std::unique_ptr<InodeTable> inodes_;
  FsOptions opts_;
  fuse_session* se_ = nullptr;
};

}  // namespace cachefs
