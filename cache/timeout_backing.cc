#include "cache/timeout_backing.h"

#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace cachefs {

namespace {

struct Job {
  int fd = -1;  // the caller's
  uint64_t off = 0;
  std::vector<char> buf;
  Result<size_t> result{size_t{0}};
  bool done = false;
};

}  // namespace

struct TimeoutBacking::Shared {
  Backing* inner = nullptr;
  std::chrono::milliseconds timeout{0};
  unsigned max_workers = 0;

  std::mutex mu;
  std::condition_variable work_cv;  // a job was queued, or stop
  std::condition_variable done_cv;  // a job finished
  std::deque<std::shared_ptr<Job>> queue;
  unsigned workers = 0;
  unsigned idle = 0;
  bool stop = false;

  static void Work(const std::shared_ptr<Shared>& s) {
    std::unique_lock<std::mutex> lock(s->mu);
    while (true) {
      s->idle++;
      s->work_cv.wait(lock, [&] { return s->stop || !s->queue.empty(); });
      s->idle--;
      if (s->queue.empty()) break;  // stopping
      std::shared_ptr<Job> job = s->queue.front();
      s->queue.pop_front();
      lock.unlock();
      Result<size_t> r = s->inner->Read(job->fd, job->off, job->buf.size(), job->buf.data());
      lock.lock();
      job->result = std::move(r);
      job->done = true;
      s->done_cv.notify_all();
    }
    s->workers--;
  }
};

TimeoutBacking::TimeoutBacking(Backing* inner, std::chrono::milliseconds timeout,
                               unsigned max_workers)
    : shared_(std::make_shared<Shared>()) {
  shared_->inner = inner;
  shared_->timeout = timeout;
  shared_->max_workers = max_workers;
}

TimeoutBacking::~TimeoutBacking() {
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->stop = true;
  shared_->work_cv.notify_all();
}

Result<size_t> TimeoutBacking::Read(int fd, uint64_t off, size_t len, void* buf) {
  auto job = std::make_shared<Job>();
  // The caller's descriptor itself: a dup would cost a FLUSH round trip to a
  // FUSE or network source at its close. A read already running holds its
  // file; one not yet started when the caller gave up is taken off the queue;
  // in the narrow race between the two, a read of whatever file reuses the
  // number is thrown away unseen.
  job->fd = fd;
  job->off = off;
  job->buf.resize(len);
  Shared& s = *shared_;
  std::unique_lock<std::mutex> lock(s.mu);
  s.queue.push_back(job);
  if (s.idle == 0 && s.workers < s.max_workers) {
    s.workers++;
    std::thread(Shared::Work, shared_).detach();
  }
  s.work_cv.notify_one();
  bool finished = s.done_cv.wait_for(lock, s.timeout, [&] { return job->done; });
  if (!finished) {
    for (auto it = s.queue.begin(); it != s.queue.end(); ++it) {
      if (*it == job) {  // never started
        s.queue.erase(it);
        break;
      }
    }
    return Status::Error(
        EIO, "read from the source timed out after " + std::to_string(s.timeout.count()) + " ms");
  }
  if (!job->result.ok()) return job->result.status();
  std::memcpy(buf, job->buf.data(), job->result.value());
  return job->result.value();
}

Status TimeoutBacking::Write(int fd, uint64_t off, size_t len, const void* buf) {
  return shared_->inner->Write(fd, off, len, buf);
}

Status TimeoutBacking::Sync(int fd) { return shared_->inner->Sync(fd); }

Status TimeoutBacking::Stat(int fd, struct stat* st) { return shared_->inner->Stat(fd, st); }

}  // namespace cachefs
