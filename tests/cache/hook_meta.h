// HookMeta: a MetaStore that forwards everything to a real one and lets a
// test stop a thread right after one of its commits took effect, or right
// before.
//
// Races between two engine threads often hinge on the step between a commit
// and what the committing thread does next under the engine's lock, or
// between a decision and its commit; a test arms a predicate over batches,
// and the first commit matching it stops (its batch applied) at `gate`, or
// (StopBefore) not yet applied at `before_gate`, until the test releases
// it. Every committed batch can be watched too, e.g. for a removal that
// must not happen.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <utility>

#include "meta/forwarding_meta_store.h"
#include "meta/meta_store.h"
#include "tests/cache/gate.h"

namespace cachefs {

class HookMeta final : public ForwardingMetaStore {
 public:
  explicit HookMeta(std::unique_ptr<MetaStore> inner) : ForwardingMetaStore(std::move(inner)) {}

  // The next commit for which `match` is true stops after it is applied, at
  // `gate` (armed here), until gate.Release(). REQUIRES: no stop pending.
  void StopAfter(std::function<bool(const MetaBatch&)> match) {
    std::lock_guard<std::mutex> lock(mu_);
    match_ = std::move(match);
    gate.Arm();
  }
  Gate gate;
  // The next commit for which `match` is true stops before it is applied, at
  // `before_gate` (armed here), until before_gate.Release(). REQUIRES: no
  // such stop pending.
  void StopBefore(std::function<bool(const MetaBatch&)> match) {
    std::lock_guard<std::mutex> lock(mu_);
    before_match_ = std::move(match);
    before_gate.Arm();
  }
  Gate before_gate;
  // The (skip+1)-th GetBlock of block `index` of `file_id` from now stops
  // after its read, at `get_gate` (armed here), until get_gate.Release().
  void StopAfterGet(uint64_t file_id, uint64_t index, int skip) {
    std::lock_guard<std::mutex> lock(mu_);
    get_key_ = {file_id, index};
    get_skip_ = skip;
    get_armed_ = true;
    get_gate.Arm();
  }
  Gate get_gate;
  // The next ScanBlocks of `file_id` stops before it reads anything, at
  // `scan_gate` (armed here), until scan_gate.Release().
  void StopInScan(uint64_t file_id) {
    std::lock_guard<std::mutex> lock(mu_);
    scan_file_ = file_id;
    scan_armed_ = true;
    scan_gate.Arm();
  }
  Gate scan_gate;
  // Called with every batch once it is applied (before a stop), on the
  // committing thread.
  void Watch(std::function<void(const MetaBatch&)> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    watch_ = std::move(fn);
  }

  Status Commit(const MetaBatch& batch, bool sync) override {
    bool stop_before = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (before_match_ && before_match_(batch)) {
        before_match_ = nullptr;
        stop_before = true;
      }
    }
    if (stop_before) before_gate.Pass();
    Status s = inner().Commit(batch, sync);
    bool stop = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (watch_) watch_(batch);
      if (s.ok() && match_ && match_(batch)) {
        match_ = nullptr;
        stop = true;
      }
    }
    if (stop) gate.Pass();
    return s;
  }

  Result<std::optional<BlockRecord>> GetBlock(uint64_t file_id, uint64_t index) override {
    auto r = inner().GetBlock(file_id, index);
    bool stop = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (get_armed_ && get_key_ == std::pair<uint64_t, uint64_t>{file_id, index} &&
          get_skip_-- == 0) {
        get_armed_ = false;
        stop = true;
      }
    }
    if (stop) get_gate.Pass();
    return r;
  }
  Status ScanBlocks(uint64_t file_id, const std::function<bool(const BlockRecord&)>& fn) override {
    bool stop = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (scan_armed_ && scan_file_ == file_id) {
        scan_armed_ = false;
        stop = true;
      }
    }
    if (stop) scan_gate.Pass();
    return inner().ScanBlocks(file_id, fn);
  }

  // Matchers for StopAfter and Watch.
  static bool PutsBlock(const MetaBatch& b, uint64_t file_id, uint64_t index) {
    for (const auto& op : b.ops()) {
      const auto* put = std::get_if<MetaBatch::PutBlock>(&op);
      if (put != nullptr && put->block.file_id == file_id && put->block.index == index) return true;
    }
    return false;
  }
  static bool RemovesBlock(const MetaBatch& b, uint64_t file_id, uint64_t index) {
    for (const auto& op : b.ops()) {
      const auto* del = std::get_if<MetaBatch::DeleteBlock>(&op);
      if (del != nullptr && del->file_id == file_id && del->index == index) return true;
    }
    return false;
  }

 private:
  std::mutex mu_;
  std::function<bool(const MetaBatch&)> match_;
  std::function<bool(const MetaBatch&)> before_match_;
  std::function<void(const MetaBatch&)> watch_;
  std::pair<uint64_t, uint64_t> get_key_;
  int get_skip_ = 0;
  bool get_armed_ = false;
  uint64_t scan_file_ = 0;
  bool scan_armed_ = false;
};

}  // namespace cachefs
