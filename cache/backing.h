// Backing: the slow store, as the engine sees it.
//
// Every read or write of SOURCE file data by the cache goes through this
// seam, so tests can count accesses and inject faults (a hang, EIO) without
// a slow filesystem. Files are named by descriptors the FUSE layer opened
// (relative to SOURCE, see fs/).
//
// Thread-safety: implementations must allow concurrent calls.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/status.h"

namespace cachefs {

// A descriptor of an open SOURCE file, shared by the FUSE handle that opened
// it and the cache's background reads of it (readahead), and closed when the
// last of them lets go: a background read never reads through a number the
// handle closed and something else reused.
class SourceFd {
 public:
  // Takes ownership of `fd`.
  explicit SourceFd(int fd) : fd_(fd) {}
  ~SourceFd() {
    if (fd_ >= 0) close(fd_);
  }
  SourceFd(const SourceFd&) = delete;
  SourceFd& operator=(const SourceFd&) = delete;
  int get() const { return fd_; }

 private:
  const int fd_;
};
using SourceFdRef = std::shared_ptr<const SourceFd>;

class Backing {
 public:
  virtual ~Backing() = default;
  // Reads up to `len` bytes at `off`; fewer only at end of file. Retries short
  // reads and EINTR. The real backing also tells the kernel it may drop its
  // page-cache copy of the bytes read (the cache keeps them itself).
  virtual Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) = 0;
  // Writes all `len` bytes at `off`.
  virtual Status Write(int fd, uint64_t off, size_t len, const void* buf) = 0;
  virtual Status Sync(int fd) = 0;
  virtual Status Stat(int fd, struct stat* st) = 0;
};

// The real slow store: pread (then POSIX_FADV_DONTNEED of what was read),
// pwrite, fdatasync, fstat.
Backing* RealBacking();

}  // namespace cachefs
