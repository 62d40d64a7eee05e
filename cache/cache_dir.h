// The cache directory: where it is, and one mount at a time in it.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"

namespace cachefs {

// systemd-escape --path: "/srv/nfs data" -> "srv-nfs\x20data".
std::string SystemdEscapePath(const std::string& path);
// /var/cache/cachefs/ plus the escaped canonical SOURCE path.
std::string DefaultCacheDir(const std::string& canonical_source);

// An exclusive lock on DIR/lock, held for the life of a mount and of the
// daemon's writeback after its unmount (flush_timeout). The file holds the
// holder's pid, for the message a second mount gets, followed by " flushing"
// once the holder is unmounted and only writing back before it exits.
//
// Thread-safety: one thread uses a lock at a time.
class CacheDirLock {
 public:
  // How long Acquire waits for a flushing holder it asked to stop: its clean
  // shutdown ends the block it is writing back and persists (well under this).
  static constexpr int kTakeOverSeconds = 10;
  // How long Acquire with `take_over` waits for a holder that is neither
  // flushing nor gone, in case its mount has just been unmounted.
  static constexpr int kUnmountGraceMs = 1000;

  // Creates DIR (0700, parents too) if needed and locks it. Fails with EBUSY
  // and "cache DIR is in use by another mount (pid N)" when it is locked.
  // With `take_over`, a holder marked flushing (MarkFlushing) that runs as
  // our effective uid is sent SIGTERM, which ends its writeback (what is
  // still dirty stays in the cache, for this mount to write back), and the
  // lock is taken once it exits, within kTakeOverSeconds; any other holder
  // gets kUnmountGraceMs to exit or mark itself flushing first.
  static Result<std::unique_ptr<CacheDirLock>> Acquire(const std::string& dir,
                                                       bool take_over = false);
  ~CacheDirLock();
  CacheDirLock(const CacheDirLock&) = delete;
  CacheDirLock& operator=(const CacheDirLock&) = delete;

  // Records in the lock file that the holder is unmounted and writing back
  // before it exits: a new mount of the cache may ask it to stop.
  Status MarkFlushing();

 private:
  explicit CacheDirLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace cachefs
