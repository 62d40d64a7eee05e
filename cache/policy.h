// Policy: which cached block to evict next.
//
// A policy sees only slot numbers: the engine tells it when a slot is filled
// (Track), hit (Touch) or emptied (Remove), and asks it for the next victim.
// Pinned blocks are simply never tracked, so they are never chosen. Policies
// keep O(1) state per slot in flat arrays sized at construction, so their RAM
// per cached block is small and bounded (MemoryUsed()).
//
// Thread-safety: none; the engine calls a policy under its own lock.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"

namespace cachefs {

struct PolicyCounters {
  uint64_t tracked = 0;  // slots currently tracked
  uint64_t touches = 0;
  uint64_t victims = 0;  // victims handed out
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual const char* name() const = 0;

  // REQUIRES: slot < slot_count and not tracked.
  virtual void Track(uint32_t slot) = 0;
  // A hit. REQUIRES: tracked.
  virtual void Touch(uint32_t slot) = 0;
  // Stops tracking; a no-op when not tracked.
  virtual void Remove(uint32_t slot) = 0;
  // The slot to evict next, which stays tracked until Remove(); nullopt when
  // nothing is tracked.
  virtual std::optional<uint32_t> Victim() = 0;
  virtual bool IsTracked(uint32_t slot) const = 0;

  virtual PolicyCounters counters() const = 0;
  // Bytes of RAM the policy holds.
  virtual size_t MemoryUsed() const = 0;
};

// A policy by name (policy= option) for a store of `slot_count` slots.
// Today: "lru" (also used for the default name until the scan-resistant
// policy lands).
Result<std::unique_ptr<Policy>> MakePolicy(const std::string& name, uint32_t slot_count);

}  // namespace cachefs
