// Runtime control of a mounted cache (cachefsctl): live options and the
// eviction policy. The mode switch lives beside the persist code
// (cache/engine.cc), the write paths in cache/engine_write.cc.
#include <algorithm>

#include "cache/engine.h"
#include "common/log.h"

namespace cachefs {

void Engine::SetTunables(const CacheOptions& o) {
  tunables_.writeback_delay_ms = static_cast<uint64_t>(std::max(0.0, o.writeback_delay) * 1000);
  tunables_.commit_interval_ms = o.commit_interval_ms;
  tunables_.sequential_threshold = o.sequential_threshold;
  tunables_.file_size_limit = o.file_size_limit;
  tunables_.readahead = o.readahead.value_or(EngineConfig::kDefaultReadahead);
  tunables_.verify = o.verify;
  tunables_.writeback_threads =
      o.writeback_threads != 0 ? o.writeback_threads : EngineConfig::kDefaultWritebackThreads;
  tunables_.dirty_high = o.dirty_high;
  tunables_.dirty_low = o.dirty_low;
  tunables_.migration_threshold = o.migration_threshold;
}

std::string Engine::policy_name() const {
  std::lock_guard<std::mutex> lock(mu_);
  return policy_->name();
}

Status Engine::Reconfigure(const CacheOptions& options) {
  const std::string wanted = options.policy.value_or(policy_name());
  if (wanted != policy_name()) {
    const uint32_t slots = static_cast<uint32_t>(sb_.slot_count);
    auto fresh = MakePolicy(wanted, slots);
    if (!fresh.ok()) return fresh.status();
    std::lock_guard<std::mutex> lock(mu_);
    // Every clean cached block stays, tracked by the new policy from cold;
    // dirty (and pinned) blocks stay untracked: never victims.
    for (uint32_t slot = 0; slot < slots; ++slot) {
      if (index_->InUse(slot) && !dirty_slot_[slot] && policy_->IsTracked(slot)) {
        fresh.value()->Track(slot);
      }
    }
    LogInfo("cache '" + dir_ + "': policy " + policy_->name() + " -> " + wanted);
    policy_ = std::move(fresh.value());
  }
  SetTunables(options);
  // The persist and writeback loops read their intervals each round.
  {
    std::lock_guard<std::mutex> lock(persist_mu_);
    persist_reconfigured_++;
  }
  persist_cv_.notify_all();
  ResizeWritebackPool();  // and wakes the workers
  return Status::Ok();
}

}  // namespace cachefs
