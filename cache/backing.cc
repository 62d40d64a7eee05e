#include "cache/backing.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace cachefs {
namespace {

class PosixBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    size_t done = 0;
    auto* p = static_cast<char*>(buf);
    while (done < len) {
      ssize_t n = pread(fd, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "read from the source");
      }
      if (n == 0) break;
      done += static_cast<size_t>(n);
    }
    // What the cache reads from SOURCE it keeps itself (in the store, or in
    // the kernel's pages of the mount), so SOURCE's own page-cache copy of
    // those bytes is a second copy nobody reads again: let the kernel drop it
    // now, and reuse the memory for the next read. Only the bytes read are
    // dropped; SOURCE's readahead beyond them stays. Advice: a failure
    // changes nothing but memory use.
    if (done > 0) {
      (void)posix_fadvise(fd, static_cast<off_t>(off), static_cast<off_t>(done),
                          POSIX_FADV_DONTNEED);
    }
    return done;
  }

  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    size_t done = 0;
    const auto* p = static_cast<const char*>(buf);
    while (done < len) {
      ssize_t n = pwrite(fd, p + done, len - done, static_cast<off_t>(off + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        return Status::FromErrno(errno, "write to the source");
      }
      done += static_cast<size_t>(n);
    }
    return Status::Ok();
  }

  Status Sync(int fd) override {
    if (fdatasync(fd) != 0) return Status::FromErrno(errno, "sync of the source");
    return Status::Ok();
  }

  Status Stat(int fd, struct stat* st) override {
    if (fstat(fd, st) != 0) return Status::FromErrno(errno, "stat of the source");
    return Status::Ok();
  }
};

}  // namespace

Backing* RealBacking() {
  static PosixBacking backing;
  return &backing;
}

}  // namespace cachefs
