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

// An exclusive lock on DIR/lock, held for the life of a mount. The file holds
// the holder's pid, for the message a second mount gets.
class CacheDirLock {
 public:
  // Creates DIR (0700, parents too) if needed and locks it. Fails with EBUSY
  // and "cache DIR is in use by another mount (pid N)" when it is locked.
  static Result<std::unique_ptr<CacheDirLock>> Acquire(const std::string& dir);
  ~CacheDirLock();
  CacheDirLock(const CacheDirLock&) = delete;
  CacheDirLock& operator=(const CacheDirLock&) = delete;

 private:
  explicit CacheDirLock(int fd) : fd_(fd) {}
  int fd_;
};

}  // namespace cachefs
