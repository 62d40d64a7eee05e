#include "cache/timeout_backing.h"

#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <list>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace cachefs {

namespace {

enum class Op { kRead, kWrite, kSync, kStat };
using Clock = std::chrono::steady_clock;

struct Job {
  Op op = Op::kRead;
  int fd = -1;  // the caller's
  uint64_t off = 0;
  std::vector<char> buf;  // read into, or the bytes to write
  struct stat st = {};
  Result<size_t> result{size_t{0}};
  bool done = false;
  std::condition_variable cv;  // done (each caller waits for its own job)
};

// A ReadDirect in progress, on its caller's stack.
struct DirectRead {
  Clock::time_point deadline;
  const std::function<void()>* expired = nullptr;
  std::list<DirectRead*>::iterator it;  // in Shared::direct while not expired
  bool is_expired = false;              // taken by the watchdog
  bool expire_done = false;             // `expired` has returned
  std::condition_variable cv;           // expire_done
};

Status ReadTimedOut(std::chrono::milliseconds timeout) {
  return Status::Error(
      EIO, "read from the source timed out after " + std::to_string(timeout.count()) + " ms");
}

}  // namespace

struct TimeoutBacking::Shared {
  Backing* inner = nullptr;
  std::chrono::milliseconds timeout{0};
  unsigned max_workers = 0;
  unsigned max_direct = 0;

  mutable std::mutex mu;
  std::condition_variable work_cv;  // a job was queued, or stop
  std::deque<std::shared_ptr<Job>> queue;
  std::multiset<int> running;  // fds of the jobs being run
  unsigned workers = 0;
  unsigned idle = 0;
  bool stop = false;
  // Direct reads running, oldest (earliest deadline) first; all have the
  // same timeout, so the list is in deadline order.
  std::list<DirectRead*> direct;
  unsigned direct_running = 0;       // including overdue ones
  unsigned overdue = 0;              // expired, still stuck in the store
  bool watching = false;             // the watchdog thread runs
  std::condition_variable watch_cv;  // stop

  // The watchdog never needs a wake-up for a new read: it sleeps at most
  // `timeout` while nothing is registered, and a read registered meanwhile
  // has its deadline after that.
  static void Watch(const std::shared_ptr<Shared>& s) {
    std::unique_lock<std::mutex> lock(s->mu);
    while (!s->stop) {
      if (s->direct.empty()) {
        s->watch_cv.wait_for(lock, s->timeout);
        continue;
      }
      DirectRead* d = s->direct.front();
      if (Clock::now() < d->deadline) {
        s->watch_cv.wait_until(lock, d->deadline);
        continue;
      }
      s->direct.pop_front();
      d->is_expired = true;
      s->overdue++;
      lock.unlock();
      (*d->expired)();
      lock.lock();
      d->expire_done = true;
      d->cv.notify_one();  // under the lock: d lives until its reader sees this
    }
    s->watching = false;
  }

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
      job->cv.notify_one();
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
    if (job->cv.wait_for(lock, timeout, [&] { return job->done; })) return true;
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
                               unsigned max_workers, bool time_writes, unsigned max_direct)
    : shared_(std::make_shared<Shared>()), time_writes_(time_writes) {
  shared_->inner = inner;
  shared_->timeout = timeout;
  shared_->max_workers = max_workers;
  shared_->max_direct = max_direct;
}

TimeoutBacking::~TimeoutBacking() {
  std::lock_guard<std::mutex> lock(shared_->mu);
  shared_->stop = true;
  shared_->work_cv.notify_all();
  shared_->watch_cv.notify_all();
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
  if (!shared_->Submit(shared_, job)) return ReadTimedOut(shared_->timeout);
  if (!job->result.ok()) return job->result.status();
  std::memcpy(buf, job->buf.data(), job->result.value());
  return job->result.value();
}

Result<size_t> TimeoutBacking::ReadDirect(int fd, uint64_t off, size_t len, void* buf,
                                          const std::function<void()>& expired) {
  Shared& s = *shared_;
  DirectRead d;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.stop || s.direct_running >= s.max_direct || s.overdue > 0) {
      // Every direct slot taken, or the store seems hung: a caller's thread
      // must not be the one stuck there.
      d.expired = nullptr;
    } else {
      if (!s.watching) {
        s.watching = true;
        std::thread(Shared::Watch, shared_).detach();
      }
      s.direct_running++;
      d.deadline = Clock::now() + s.timeout;
      d.expired = &expired;
      d.it = s.direct.insert(s.direct.end(), &d);
    }
  }
  if (d.expired == nullptr) return Read(fd, off, len, buf);
  Result<size_t> r = s.inner->Read(fd, off, len, buf);
  std::unique_lock<std::mutex> lock(s.mu);
  s.direct_running--;
  if (!d.is_expired) {
    s.direct.erase(d.it);
    return r;
  }
  // The watchdog has answered for the caller; wait until it is done with d.
  d.cv.wait(lock, [&] { return d.expire_done; });
  s.overdue--;
  return ReadTimedOut(s.timeout);
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
