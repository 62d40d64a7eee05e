// FaultBacking: a slow store (SOURCE) that fails on demand, for the tests of
// the writeback under faults of the slow store (tests/cache/writeback_test.cc).
//
// Faults (Set):
//  - kEio: writes and syncs fail with EIO (a disk error, a stale NFS write);
//  - kEnospc: writes fail with ENOSPC (SOURCE is full); syncs pass;
//  - kHang: every call blocks until the fault is changed or `hang_for` has
//    passed, then runs (a stalled link, an NFS server away);
//  - kHangWrites: the same for writes and syncs only (a server that still
//    answers lookups and reads but stalls on its full disk);
//  - kVanished: every call, reads included, fails with ENOTCONN (the store's
//    mount is gone) until the fault is changed;
//  - kNone: everything passes to the real store.
// Reads fail only under kVanished and wait under kHang. It also counts calls
// and keeps, per SOURCE inode, whether two writes or syncs of one file ever
// ran at once (the writeback must write a file from one thread at a time).
//
// A call that hangs may outlive the test that started it (the engine's
// timeout wrapper leaves it behind): make the object with Leaked(), never
// destroyed.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

#include "cache/backing.h"

namespace cachefs {

class FaultBacking final : public Backing {
 public:
  enum class Fault { kNone, kEio, kEnospc, kHang, kHangWrites, kVanished };

  static FaultBacking* Leaked() { return new FaultBacking(); }

  void Set(Fault fault, std::chrono::milliseconds hang_for = std::chrono::seconds(30)) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      fault_ = fault;
      hang_until_ = std::chrono::steady_clock::now() + hang_for;
    }
    cv_.notify_all();
  }
  // Calls blocked by kHang now.
  int hung() {
    std::lock_guard<std::mutex> lock(mu_);
    return hung_;
  }

  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    Fault f = Enter(/*writing=*/false);
    if (f == Fault::kVanished) return Gone();
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    writes++;
    write_bytes += len;
    Fault f = Enter(/*writing=*/true);
    if (f == Fault::kVanished) return Gone();
    if (f == Fault::kEio) return Status::Error(EIO, "injected write error");
    if (f == Fault::kEnospc) return Status::Error(ENOSPC, "injected: SOURCE full");
    Busy busy(this, fd);
    if (write_delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(write_delay_ms));
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override {
    syncs++;
    Fault f = Enter(/*writing=*/true);
    if (f == Fault::kVanished) return Gone();
    if (f == Fault::kEio) return Status::Error(EIO, "injected sync error");
    Busy busy(this, fd);
    return RealBacking()->Sync(fd);
  }
  Status Stat(int fd, struct stat* st) override {
    Fault f = Enter(/*writing=*/false);
    if (f == Fault::kVanished) return Gone();
    return RealBacking()->Stat(fd, st);
  }

  std::atomic<int> writes{0};
  std::atomic<uint64_t> write_bytes{0};
  std::atomic<int> syncs{0};
  std::atomic<int> write_delay_ms{0};      // each write that passes takes this long
  std::atomic<int> max_parallel{0};        // most writes and syncs running at once, of any files
  std::atomic<int> same_file_overlaps{0};  // of one file

 private:
  FaultBacking() = default;

  static Status Gone() { return Status::Error(ENOTCONN, "injected: SOURCE vanished"); }

  // The fault for this call (a write or sync if `writing`), after waiting
  // out a hang.
  Fault Enter(bool writing) {
    std::unique_lock<std::mutex> lock(mu_);
    const Fault hang = fault_;
    if (hang == Fault::kHang || (hang == Fault::kHangWrites && writing)) {
      hung_++;
      cv_.wait_until(lock, hang_until_, [&] { return fault_ != hang; });
      hung_--;
      return Fault::kNone;
    }
    return fault_ == Fault::kHangWrites ? Fault::kNone : fault_;
  }

  // Marks a write or sync of one SOURCE file as running.
  class Busy {
   public:
    Busy(FaultBacking* b, int fd) : b_(b) {
      struct stat st;
      ino_ = fstat(fd, &st) == 0 ? st.st_ino : 0;
      std::lock_guard<std::mutex> lock(b_->mu_);
      if (b_->running_.count(ino_) != 0) b_->same_file_overlaps++;
      b_->running_.insert(ino_);
      b_->max_parallel = std::max<int>(b_->max_parallel, static_cast<int>(b_->running_.size()));
    }
    ~Busy() {
      std::lock_guard<std::mutex> lock(b_->mu_);
      b_->running_.erase(b_->running_.find(ino_));
    }
    Busy(const Busy&) = delete;
    Busy& operator=(const Busy&) = delete;

   private:
    FaultBacking* const b_;
    ino_t ino_ = 0;
  };

  std::mutex mu_;
  std::condition_variable cv_;
  Fault fault_ = Fault::kNone;                        // guarded by mu_
  std::chrono::steady_clock::time_point hang_until_;  // guarded by mu_
  int hung_ = 0;                                      // guarded by mu_
  std::multiset<ino_t> running_;                      // guarded by mu_
};

}  // namespace cachefs
