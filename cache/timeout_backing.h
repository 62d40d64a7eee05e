// TimeoutBacking: a Backing whose calls give up after a deadline.
//
// A read of a hung slow store (an NFS server gone, a stalled link) would block
// a FUSE worker, and with enough of them the whole mount, forever. Reads are
// therefore run by a small pool of worker threads while the caller waits up
// to `timeout`; past it the caller gets EIO ("timed out") and the worker is
// left to finish (or hang) on its own, its result thrown away. When every
// worker is stuck, new calls wait for a free one up to the same deadline. A
// stuck worker reads into a buffer of its own, never into the caller's memory.
//
// With `time_writes` (the writeback's wrapper), writes, syncs and stats run
// the same way and fail with ETIMEDOUT past the deadline; a write copies the
// caller's bytes first. A write that timed out may still reach the store
// later: Busy(fd) says whether a call on `fd` is still queued or running, so
// a caller that keeps `fd` open can wait for it before it writes the same
// bytes again (and an old write never lands over a newer one). Without
// `time_writes` they pass straight to the inner Backing.
//
// A hand-off costs two thread wake-ups per read, a good part of what a cold
// read through the cache costs over reading the slow store directly
// (docs/benchmarks.md). ReadDirect avoids it for callers that can answer
// for themselves when late (the FUSE layer can reply from any thread): the
// read runs on the caller's thread, and a watchdog thread calls the
// caller's `expired` at the deadline. Such a caller's thread stays stuck
// while the store hangs, so at most max_direct of them read at once, and
// none while one is overdue: once the store seems hung, reads go through
// the workers again until it answers.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "cache/backing.h"

namespace cachefs {

class TimeoutBacking final : public Backing {
 public:
  // REQUIRES: timeout > 0, max_workers > 0; `inner` outlives this object and
  // every worker (RealBacking() does). max_direct: ReadDirect calls reading
  // on their own thread at once at most (0: none, every read is handed off).
  TimeoutBacking(Backing* inner, std::chrono::milliseconds timeout, unsigned max_workers,
                 bool time_writes = false, unsigned max_direct = 0);
  ~TimeoutBacking() override;
  TimeoutBacking(const TimeoutBacking&) = delete;
  TimeoutBacking& operator=(const TimeoutBacking&) = delete;

  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override;
  // Read, but on the calling thread when a direct slot is free and no direct
  // read is overdue. If that read is still running at the deadline,
  // `expired` runs once, on the watchdog thread, while the caller is still
  // blocked (so it may use the caller's stack); the call then fails with EIO
  // ("timed out") once the read returns, whatever it read. Otherwise it is
  // Read(), and `expired` never runs.
  Result<size_t> ReadDirect(int fd, uint64_t off, size_t len, void* buf,
                            const std::function<void()>& expired);
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override;
  Status Sync(int fd) override;
  Status Stat(int fd, struct stat* st) override;

  // True while a call on `fd` is queued or running (one that timed out
  // included).
  bool Busy(int fd) const;

 private:
  struct Shared;  // outlives this object while workers run
  std::shared_ptr<Shared> shared_;
  const bool time_writes_;
};

}  // namespace cachefs
