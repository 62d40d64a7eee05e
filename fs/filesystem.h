// Filesystem: the FUSE low-level operations over SOURCE.
//
// Every operation a POSIX user expects is passed through to SOURCE with
// *at() calls relative to O_PATH handles (see InodeTable), so the results and
// error codes are those of the source filesystem and nothing outside SOURCE
// can be reached: source-side symlinks are never followed. Objects are created
// with the caller's credentials (ScopedCallerCredentials).
//
// With an Engine (set_engine), regular files are read through the block
// cache; writes, truncates, fallocate and copy_file_range go to SOURCE and
// then tell the engine, and renames, links and unlinks keep its paths current.
// A file the engine cannot take (an error, a deleted file) is served straight
// from SOURCE.
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

#include "cache/engine.h"
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
  // The canonical SOURCE path Open() was given.
  const std::string& source() const { return source_; }
  // The block cache; null for a plain passthrough. Set before mounting.
  void set_engine(Engine* engine) { engine_ = engine; }
  Engine* engine() const { return engine_; }
  InodeTable& inodes() { return *inodes_; }
  bool source_is_directory() const { return S_ISDIR(inodes_->root()->type()); }

  // The session serving this filesystem, for notifications to the kernel.
  // Set once by FuseMount before the first request.
  void set_session(fuse_session* se) { se_ = se; }
  fuse_session* session() const { return se_; }

 private:
  Filesystem(std::unique_ptr<InodeTable> inodes, const FsOptions& opts, std::string source)
      : inodes_(std::move(inodes)), opts_(opts), source_(std::move(source)) {}

  std::unique_ptr<InodeTable> inodes_;
  FsOptions opts_;
  std::string source_;
  Engine* engine_ = nullptr;
  fuse_session* se_ = nullptr;
};

}  // namespace cachefs
