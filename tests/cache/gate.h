// Gate: lets a test stop another thread at a chosen point of its work (a
// store write, a SOURCE read, a metadata commit) and let it go on later, to
// play out one interleaving of two threads on purpose.
//
// The code under test calls Pass() at the point; once the test has armed
// the gate, the first Pass() stops there until Release(). The gate is
// one-shot: after Release() every Pass() goes straight on.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace cachefs {

class Gate {
 public:
  void Arm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
  }
  // True once a Pass() has stopped at the gate (false after `limit`).
  bool WaitStopped(std::chrono::milliseconds limit = std::chrono::seconds(10)) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, limit, [this] { return stopped_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  // Stops the caller if the gate is armed, until Release().
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!armed_) return;
    armed_ = false;
    stopped_ = true;
    cv_.notify_all();
    cv_.wait(lock, [this] { return released_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false, stopped_ = false, released_ = false;
};

}  // namespace cachefs
