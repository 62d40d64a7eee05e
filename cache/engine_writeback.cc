// The writeback pool: writeback_threads workers that write dirty blocks back
// to SOURCE. WriteBackBatch (cache/engine_write.cc) writes one batch of one
// file: dirty runs coalesced, SOURCE's file synced, then the blocks marked
// clean.
//
// Which blocks. Normally only blocks first made dirty at least
// writeback_delay ago (their age is kept in memory, coarsely: dirty seqs
// grow with time, so a few buckets of seqs and times say which seqs are old
// enough; blocks dirty at a restart count as made dirty at the mount), and
// by one worker at a time: a trickle, which leaves SOURCE's bandwidth to the
// readers. Every dirty
// block, by every worker, while the cache is under pressure (dirty blocks
// reached dirty_high percent of the slots, until they fall to dirty_low),
// while a flush is waited for (StartFlush marks) and with the cleaner policy.
//
// Order. A worker takes the file of the oldest eligible dirty block that no
// one else is writing back (one writer per file at a time, so a file's writes
// reach SOURCE in order), and writes back that file's eligible blocks in
// block order, in batches: each batch is synced on SOURCE before its blocks
// are marked clean, and holds block_size bytes per block of the
// migration_threshold budget while in flight (a batch waits until it fits,
// or runs alone if it never can).
//
// Faults. A failed attempt leaves the blocks dirty; the file is retried after
// a backoff (kRetryMinMs doubling to kRetryMaxMs, reset by a success) while
// the others go on. Writes, syncs and stats of SOURCE time out after
// source_timeout (wb_backing_): a file whose write timed out keeps its
// descriptor open and is not written again until that write has ended, so a
// late write never lands over newer bytes. Failed attempts, retries and
// timeouts are counted; a failure burst is logged once when the first file
// starts failing and once when the last one recovers.
//
// Modes. mode=cow writes nothing back (CommitLayer does, by Flush). In image
// mode a worker takes the image only when an fsync has sealed an epoch, and
// WriteBackBatch writes that epoch's versions, all of them, as one batch; a
// flush waited for seals the current state when nothing sealed is left
// (engine_image.cc).
//
// Thread-safety: the pool's state is under wb_mu_ (taken before mu_).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <limits>

#include "cache/engine.h"
#include "common/log.h"

namespace cachefs {
namespace {

// A worker's longest wait when idle: new dirty data, pressure and ages are
// noticed within it.
constexpr uint64_t kIdleWaitMs = 100;
// Backoff of a file whose writeback failed.
constexpr uint64_t kRetryMinMs = 100;
constexpr uint64_t kRetryMaxMs = 30000;
// A file the FUSE layer is changing on SOURCE itself is left alone this long.
constexpr uint64_t kSnoozeMs = 10;
// The most bytes of one batch (between two syncs of SOURCE's file).
constexpr uint64_t kMaxBatchBytes = 64ull << 20;

uint64_t NowMs() { return MonotonicNs() / 1000000; }

}  // namespace

void Engine::StartWriteback() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    // Ages are not kept over a restart: what is dirty now counts as made
    // dirty at the mount (as the single writer of before waited
    // writeback_delay for its first round); a flush or pressure takes it at once.
    dirty_ages_.clear();
    if (next_dirty_seq_ > 1) {
      const uint64_t now_ms = NowMs();
      dirty_ages_.push_back(DirtyAge{now_ms, next_dirty_seq_ - 1, now_ms});
    }
  }
  ResizeWritebackPool();
}

void Engine::StopWriteback() {
  // A batch in progress ends after the block it is copying (WriteBackBatch);
  // what it wrote is synced and marked clean, the rest stays dirty.
  wb_abort_.store(true, std::memory_order_relaxed);
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    wb_stopping_ = true;
    threads.swap(wb_threads_);
  }
  wb_cv_.notify_all();
  wb_file_cv_.notify_all();
  for (auto& t : threads) t.join();
  std::lock_guard<std::mutex> lock(wb_mu_);
  // A write that still hangs holds its file itself.
  for (const auto& [file_id, fd] : wb_parked_) close(fd);
  wb_parked_.clear();
}

void Engine::ResizeWritebackPool() {
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    if (wb_stopping_) return;
    // Workers past the tunable stay, idle (WritebackWorker), until the
    // count grows again or the engine closes.
    const unsigned want = tunables_.writeback_threads;
    while (wb_threads_.size() < want) {
      const auto id = static_cast<unsigned>(wb_threads_.size());
      wb_threads_.emplace_back([this, id] { WritebackWorker(id); });
    }
    wb_kicks_++;
  }
  wb_cv_.notify_all();
}

uint64_t Engine::WritebackBatchBlocks() const {
  const uint64_t threads = std::max(1u, tunables_.writeback_threads.load());
  const uint64_t bytes = std::min(kMaxBatchBytes, tunables_.migration_threshold.load() / threads);
  return std::max<uint64_t>(1, bytes / sb_.block_size);
}

uint64_t Engine::EligibleThrough(uint64_t now_ms) {
  const uint64_t delay = tunables_.writeback_delay_ms;
  while (!dirty_ages_.empty() && dirty_ages_.front().last_ms + delay <= now_ms) {
    eligible_through_ = std::max(eligible_through_, dirty_ages_.front().last_seq);
    dirty_ages_.pop_front();
  }
  return eligible_through_;
}

void Engine::AcquireWritebackFile(uint64_t file_id) {
  std::unique_lock<std::mutex> lock(wb_mu_);
  wb_file_cv_.wait(lock, [&] { return wb_busy_.count(file_id) == 0; });
  wb_busy_.insert(file_id);
}

void Engine::ReleaseWritebackFile(uint64_t file_id) {
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    wb_busy_.erase(file_id);
  }
  wb_file_cv_.notify_all();
}

Status Engine::CheckParked(uint64_t file_id) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    auto it = wb_parked_.find(file_id);
    if (it == wb_parked_.end()) return Status::Ok();
    fd = it->second;
    if (wb_timeout_backing_ && wb_timeout_backing_->Busy(fd)) {
      return Status::Error(
          EBUSY, "an earlier write of file " + std::to_string(file_id) + " to SOURCE still hangs");
    }
    wb_parked_.erase(it);
  }
  close(fd);
  return Status::Ok();
}

void Engine::Park(uint64_t file_id, int fd) {
  int old = -1;
  {
    std::lock_guard<std::mutex> lock(wb_mu_);
    auto [it, fresh] = wb_parked_.emplace(file_id, fd);
    if (!fresh) {
      old = it->second;
      it->second = fd;
    }
  }
  if (old >= 0) close(old);
}

Status Engine::WriteBackFile(uint64_t file_id, const std::vector<uint64_t>& indices,
                             bool background) {
  AcquireWritebackFile(file_id);
  Status s = WriteBackBatches(file_id, indices, background);
  ReleaseWritebackFile(file_id);
  return s;
}

Status Engine::WriteBackBatches(uint64_t file_id, const std::vector<uint64_t>& indices,
                                bool background) {
  const uint64_t per_batch = WritebackBatchBlocks();
  for (size_t at = 0; at < indices.size(); at += per_batch) {
    Status s = CheckParked(file_id);
    if (!s.ok()) return s;
    const size_t end = std::min<size_t>(indices.size(), at + per_batch);
    const uint64_t bytes = (end - at) * sb_.block_size;
    {
      std::unique_lock<std::mutex> lock(wb_mu_);
      wb_file_cv_.wait(lock, [&] {
        return wb_stopping_ || wb_budget_used_ == 0 ||
               wb_budget_used_ + bytes <= tunables_.migration_threshold;
      });
      // Closing: the rest stays dirty for the next mount.
      if (wb_stopping_) return Status::Ok();
      wb_budget_used_ += bytes;
    }
    s = WriteBackBatch(file_id,
                       std::vector<uint64_t>(indices.begin() + static_cast<std::ptrdiff_t>(at),
                                             indices.begin() + static_cast<std::ptrdiff_t>(end)),
                       background, /*last=*/end == indices.size());
    {
      std::lock_guard<std::mutex> lock(wb_mu_);
      wb_budget_used_ -= bytes;
    }
    wb_file_cv_.notify_all();
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

Engine::WritebackPick Engine::PickWriteback(unsigned /*worker*/) {
  WritebackPick pick;
  pick.wait_ms = kIdleWaitMs;
  const uint64_t now_ms = NowMs();
  bool drain;
  {
    std::lock_guard<std::mutex> lock(mu_);
    EligibleThrough(now_ms);  // keeps the age buckets few in every mode
    // mode=cow: the layer reaches the image only by CommitLayer.
    if (dirty_.empty() || !WritebackAllowed()) {
      wb_pressure_ = false;
      flush_goal_ = 0;
      return pick;
    }
    const uint64_t dirty = dirty_.size() * 100;
    const uint64_t slots = sb_.slot_count;
    if (dirty >= tunables_.dirty_high * slots) {
      wb_pressure_ = true;
    } else if (dirty <= tunables_.dirty_low * slots) {
      wb_pressure_ = false;
    }
    drain = wb_pressure_ || policy_->DrainsDirty();
  }
  bool flush = false;
  if (!drain && flush_goal_ > 0) {
    FlushLeft left = FlushProgress(flush_goal_);
    drain = flush = left.blocks > left.conflicted;
    if (!drain) flush_goal_ = 0;
  }
  if (!drain && wb_active_ > 0) return pick;  // a trickle: one worker
  for (auto it = wb_snoozed_.begin(); it != wb_snoozed_.end();) {
    it = it->second <= now_ms ? wb_snoozed_.erase(it) : std::next(it);
  }
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t cutoff = drain ? std::numeric_limits<uint64_t>::max() : eligible_through_;
  for (const auto& [seq, key] : dirty_) {
    if (seq > cutoff) break;
    const uint64_t f = key.file_id;
    if (wb_busy_.count(f) != 0 || conflict_files_.count(f) != 0 || wb_snoozed_.count(f) != 0) {
      continue;
    }
    // Image mode: only the versions of a sealed epoch go back (TakeEpoch);
    // blocks written since the last fsync wait for the next one.
    if (ImageEpochs()) {
      auto e = epoch_blocks_.lower_bound({f, 0});
      if (e == epoch_blocks_.end() || e->first.first != f) continue;
    }
    auto b = wb_backoff_.find(f);
    if (b != wb_backoff_.end() && b->second.next_ms > now_ms) {
      pick.wait_ms = std::min(pick.wait_ms, b->second.next_ms - now_ms);
      continue;
    }
    pick.found = true;
    pick.file_id = f;
    break;
  }
  if (!pick.found) {
    // A flush waited for covers blocks written again since it sealed its
    // epoch (StartFlush): they make a new one.
    pick.seal = flush && ImageEpochs() && wb_active_ == 0;
    return pick;
  }
  for (const auto& [seq, key] : dirty_) {
    if (seq > cutoff) break;
    if (key.file_id == pick.file_id) pick.indices.push_back(key.index);
  }
  std::sort(pick.indices.begin(), pick.indices.end());
  return pick;
}

void Engine::NoteWriteback(uint64_t file_id, const Status& s) {
  auto it = wb_backoff_.find(file_id);
  if (it != wb_backoff_.end()) counters_.writeback_retries++;  // an attempt after a failure
  if (s.ok()) {
    if (it == wb_backoff_.end()) return;
    wb_backoff_.erase(it);
    wb_failing_ = wb_backoff_.size();
    if (wb_backoff_.empty()) {
      LogInfo("cache '" + dir_ + "': writeback works again (after " +
              std::to_string(wb_burst_failures_) + " failed attempts)");
      wb_burst_failures_ = 0;
    }
    return;
  }
  counters_.writeback_errors++;
  wb_burst_failures_++;
  if (wb_backoff_.empty()) {
    LogWarning("cache '" + dir_ + "': writeback: " + s.message() +
               " (dirty data kept, retried with backoff; logged again when it works)");
  }
  Backoff& b = wb_backoff_[file_id];
  b.failures++;
  b.delay_ms = b.delay_ms == 0 ? kRetryMinMs : std::min(2 * b.delay_ms, kRetryMaxMs);
  b.next_ms = NowMs() + b.delay_ms;
  wb_failing_ = wb_backoff_.size();
}

void Engine::WritebackWorker(unsigned id) {
  std::unique_lock<std::mutex> lock(wb_mu_);
  bool just_sealed = false;
  while (!wb_stopping_) {
    WritebackPick pick;
    pick.wait_ms = kIdleWaitMs;
    // Read each round: cachefsctl set may change every tunable (and wakes us).
    if (id < tunables_.writeback_threads) pick = PickWriteback(id);
    // At most one seal between two waits: what it sealed may be out of
    // reach for now (a file in backoff).
    if (pick.seal && !just_sealed) {
      lock.unlock();
      Status s = SealEpoch(/*all=*/true);
      lock.lock();
      just_sealed = true;
      if (s.ok()) continue;
      counters_.writeback_errors++;
      LogWarning("cache '" + dir_ + "': writeback: " + s.message() + " (retried)");
    }
    just_sealed = false;
    if (!pick.found) {
      const uint64_t seen = wb_kicks_;
      wb_cv_.wait_for(lock, std::chrono::milliseconds(std::max<uint64_t>(1, pick.wait_ms)),
                      [&] { return wb_stopping_ || wb_kicks_ != seen; });
      continue;
    }
    wb_busy_.insert(pick.file_id);
    wb_active_++;
    lock.unlock();
    auto dirty_blocks = [&] {
      std::lock_guard<std::mutex> l(mu_);
      auto it = dirty_per_file_.find(pick.file_id);
      return it == dirty_per_file_.end() ? uint64_t{0} : it->second;
    };
    const uint64_t before = dirty_blocks();
    Status s = WriteBackBatches(pick.file_id, pick.indices, /*background=*/true);
    const bool stuck = s.ok() && dirty_blocks() >= before;
    lock.lock();
    wb_active_--;
    wb_busy_.erase(pick.file_id);
    NoteWriteback(pick.file_id, s);
    // Nothing written and no error: the FUSE layer holds the file
    // (SourceChange); a later round writes it back.
    if (stuck && !wb_stopping_) wb_snoozed_[pick.file_id] = NowMs() + kSnoozeMs;
    wb_file_cv_.notify_all();
  }
}

}  // namespace cachefs
