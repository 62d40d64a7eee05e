#include "cache/timeout_backing.h"

#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace cachefs {

namespace {

enum class Op { kRead, kWrite, kSync, kStat };

struct Job {
  Op op = Op::kRead;
  int fd = -1;  // the caller's
  uint64_t off = 0;
  std::vector<char> buf;  // read into, or the bytes to write
  struct stat st = {};
  Result<size_t> result{size_t{0}};
  bool done = false;
};

}  // namespace

struct TimeoutBacking::Shared {
  Backing* inner = nullptr;
  std::chrono::milliseconds timeout{0};
  unsigned max_workers = 0;

  mutable std::mutex mu;
  std::condition_variable work_cv;  // a job was queued, or stop
  std::condition_variable done_cv;  // a job finished
  std::deque<std::shared_ptr<Job>> queue;
  std::multiset<int> running;  // fds of the jobs being run
  unsigned workers = 0;
  unsigned idle = 0;
  bool stop = false;

  static Result<size_t> Run(Backing* inner, Job& job) {
    switch (job.op) {
      case Op::kRead:
        return inner->Read(job.fd, job.off, job.buf.size(), job.buf.data());
      case Op::kWrite: {
        Status s = inner->Write(job.fd, job.off, job.buf.size(), job.buf.data());
        if (!s.ok()) return s;
        return job.buf.size();
      }
      case Op::kSync: {
        Status s = inner->Sync(job.fd);
        if (!s.ok()) return s;
        return size_t{0};
      }
      case Op::kStat: {
        Status s = inner->Stat(job.fd, &job.st);
        if (!s.ok()) return s;
        return size_t{0};
      }
    }
    return size_t{0};
  }

  static void Work(const std::shared_ptr<Shared>& s) {
    std::unique_lock<std::mutex> lock(s->mu);
    while (true) {
      s->idle++;
      s->work_cv.wait(lock, [&] { return s->stop || !s->queue.empty(); });
      s->idle--;
      if (s->queue.empty()) break;  // stopping
      std::shared_ptr<Job> job = s->queue.front();
      s->queue.pop_front();
      auto mine = s->running.insert(job->fd);
      lock.unlock();
      Result<size_t> r = Run(s->inner, *job);
      lock.lock();
      s->running.erase(mine);
      job->result = std::move(r);
      job->done = true;
      s->done_cv.notify_all();
    }
    s->workers--;
  }

  // Queues `job` and waits for it up to the deadline; false: timed out (a
  // job never started is taken off the queue).
  bool Submit(const std::shared_ptr<Shared>& self, const std::shared_ptr<Job>& job) {
    std::unique_lock<std::mutex> lock(mu);
    queue.push_back(job);
    if (idle == 0 && workers < max_workers) {
      workers++;
      std::thread(Work, self).detach();
    }
    work_cv.notify_one();
    if (done_cv.wait_for(lock, timeout, [&] { return job->done; })) return true;
    for (auto it = queue.begin(); it != queue.end(); ++it) {
      if (*it == job) {  // never started
        queue.erase(it);
        break;
      }
    }
    return false;
  }
};

TimeoutBacking::TimeoutBacking(Backing* inner, std::chrono::milliseconds timeout,
                               unsigned max_workers, bool time_writes)
    : shared_(std::make_shared<Shared>()), time_writes_(time_writes) {
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
  if (!shared_->Submit(shared_, job)) {
    return Status::Error(EIO, "read from the source timed out after " +
                                  std::to_string(shared_->timeout.count()) + " ms");
  }
  if (!job->result.ok()) return job->result.status();
  std::memcpy(buf, job->buf.data(), job->result.value());
  return job->result.value();
}

namespace {

Status TimedOut(const char* what, std::chrono::milliseconds timeout) {
  return Status::Error(ETIMEDOUT, std::string(what) + " of the source timed out after " +
                                      std::to_string(timeout.count()) + " ms");
}

}  // namespace

Status TimeoutBacking::Write(int fd, uint64_t off, size_t len, const void* buf) {
  if (!time_writes_) return shared_->inner->Write(fd, off, len, buf);
  auto job = std::make_shared<Job>();
  job->op = Op::kWrite;
  job->fd = fd;
  job->off = off;
  const char* bytes = static_cast<const char*>(buf);
  job->buf.assign(bytes, bytes + len);
  if (!shared_->Submit(shared_, job)) return TimedOut("a write", shared_->timeout);
  return job->result.ok() ? Status::Ok() : job->result.status();
}

Status TimeoutBacking::Sync(int fd) {
  if (!time_writes_) return shared_->inner->Sync(fd);
  auto job = std::make_shared<Job>();
  job->op = Op::kSync;
  job->fd = fd;
  if (!shared_->Submit(shared_, job)) return TimedOut("a sync", shared_->timeout);
  return job->result.ok() ? Status::Ok() : job->result.status();
}

Status TimeoutBacking::Stat(int fd, struct stat* st) {
  if (!time_writes_) return shared_->inner->Stat(fd, st);
  auto job = std::make_shared<Job>();
  job->op = Op::kStat;
  job->fd = fd;
  if (!shared_->Submit(shared_, job)) return TimedOut("a stat", shared_->timeout);
  if (!job->result.ok()) return job->result.status();
  *st = job->st;
  return Status::Ok();
}

bool TimeoutBacking::Busy(int fd) const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  if (shared_->running.count(fd) != 0) return true;
  for (const auto& job : shared_->queue) {
    if (job->fd == fd) return true;
  }
  return false;
}

}  // namespace cachefs
