// InodeTable: the FUSE inode numbers handed to the kernel and what they mean.
//
// Every object of SOURCE the kernel knows about is one Inode holding an
// O_PATH|O_NOFOLLOW descriptor, so operations name it with *at() calls and
// never by a path that could lead outside SOURCE. Inodes are keyed by the
// source's (st_dev, st_ino): two names of one file (hard links) are one Inode.
// The FUSE inode number is the Inode's address (non-movable), except for the
// root, which is FUSE_ROOT_ID. Each Inode counts the kernel's lookups; when a
// forget brings the count to zero the Inode is dropped and its fd closed
// (two-step forget: the kernel never uses a number after forgetting it).
//
// Thread-safety: all methods may be called concurrently. An Inode* stays valid
// while the kernel holds a lookup on it, which is true for the whole of any
// request that names it.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "common/thread_annotations.h"

namespace cachefs {

class CachedFile;  // cache/engine.h

class Inode {
 public:
  Inode(int fd, dev_t dev, ino_t ino, mode_t type, uint64_t generation)
      : fd_(fd), dev_(dev), ino_(ino), type_(type), generation_(generation) {}
  ~Inode();
  Inode(const Inode&) = delete;
  Inode& operator=(const Inode&) = delete;

  int fd() const { return fd_; }  // O_PATH | O_NOFOLLOW
  dev_t source_dev() const { return dev_; }
  ino_t source_ino() const { return ino_; }
  mode_t type() const { return type_; }  // S_IFMT bits
  uint64_t generation() const { return generation_; }
  bool is_symlink() const { return S_ISLNK(type_); }
  // "/proc/self/fd/N": names this object for calls that have no *at() form
  // or need a real open (the link resolves to this inode, not a path).
  std::string ProcPath() const;

  // The cache state of a regular file, bound at its first open; null while
  // unbound or uncached.
  std::shared_ptr<CachedFile> cached() const;
  void set_cached(std::shared_ptr<CachedFile> cached);

  // Until when (steady clock, ns) SOURCE is known to have no
  // "security.capability" on this file: the kernel asks before every write,
  // and asking a slow store each time costs a round trip per write. 0: not known.
  std::atomic<int64_t> no_capability_until{0};

 private:
  friend class InodeTable;
  const int fd_;
  const dev_t dev_;
  const ino_t ino_;
  const mode_t type_;
  const uint64_t generation_;
  uint64_t nlookup_ = 0;  // guarded by InodeTable::mu_
  mutable std::mutex cached_mu_;
  std::shared_ptr<CachedFile> cached_ GUARDED_BY(cached_mu_);
};

class InodeTable {
 public:
  // Takes ownership of `root_fd`, an O_PATH descriptor of SOURCE.
  InodeTable(int root_fd, const struct stat& root_st);
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  Inode* root() { return root_.get(); }
  // The Inode for a FUSE inode number. REQUIRES: the kernel holds a lookup on it.
  Inode* Get(fuse_ino_t ino);
  fuse_ino_t FuseIno(const Inode* inode) const;

  // Counts one lookup of the object `st` describes, opened as `fd` (O_PATH).
  // If the object is known already, `fd` is closed and the known Inode
  // returned; otherwise a new Inode takes `fd`.
  Inode* Acquire(int fd, const struct stat& st) LOCKS_EXCLUDED(mu_);
  // Drops `n` lookups; the Inode is destroyed when none is left (never the root).
  void Forget(Inode* inode, uint64_t n) LOCKS_EXCLUDED(mu_);

  // Inodes currently known, the root included.
  size_t size() const LOCKS_EXCLUDED(mu_);

 private:
  using Key = std::pair<dev_t, ino_t>;
  std::unique_ptr<Inode> root_;
  mutable std::mutex mu_;
  std::map<Key, std::unique_ptr<Inode>> inodes_ GUARDED_BY(mu_);
  uint64_t next_generation_ GUARDED_BY(mu_) = 1;
};

}  // namespace cachefs
