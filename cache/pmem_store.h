// PmemStore: a BlockStore in persistent memory, or in any file, mapped with
// libpmem2.
//
// The store file (on a DAX file system or not) or device DAX is mapped
// shared, read-write, from offset 0 for slot_count * block_size bytes. Reads
// copy out of the mapping; writes copy into it with libpmem2's memcpy and are
// visible to every later Read at once, and survive kill -9 (the mapping is
// the kernel's page cache or the pmem itself).
//
// Durability depends on the store granularity libpmem2 chose for the mapping
// (granularity()):
//  - kPage (ordinary files, and DAX without MAP_SYNC): data reaches the device
//    only by msync. Writes skip libpmem2's per-write flush (which for this
//    granularity is an msync per call) and record the page ranges they
//    touched; Persist() msyncs just those, merged (into one span when there
//    are many: each msync is a journal commit and device flush of its own).
//    It calls msync itself because libpmem2's persist function abort()s the
//    process when msync fails; a writeback error must be a Status.
//  - kCacheLine (pmem with ADR) and kByte (eADR): writes flush their cache
//    lines (or use non-temporal stores) without a drain
//    (PMEM2_F_MEM_NODRAIN) and record their ranges; Persist() flushes the
//    recorded ranges again from its own CPU and drains once. A drain (SFENCE)
//    orders only the flushes of the CPU that runs it, so the second flush
//    (cheap on lines already written back) is what covers writes made by
//    other threads; their non-temporal stores left the write-combining
//    buffers at the locked instruction that recorded the range.
//    PMEM2_FORCE_GRANULARITY=CACHE_LINE forces this path on ordinary files
//    (tests; no real durability then).
//
// Discard() does nothing: punching a hole in a mapped file would make a later
// store into that slot need a block allocation, which on a full file system
// kills the daemon with SIGBUS instead of returning ENOSPC. For the same
// reason Open() allocates any holes an existing store file has.
//
// Failure modes the Status cannot report: a media error in pmem, or the store
// file truncated by someone else, raises SIGBUS on access.
//
// Thread-safety: as BlockStore. The ranges to persist are kept under a mutex
// taken once per write (lock order: BlockStore's persist lock, then dirty_mu_).
#pragma once

#include <libpmem2.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cache/block_store.h"
#include "common/status.h"
#include "common/thread_annotations.h"

namespace cachefs {

class PmemStore final : public BlockStore {
 public:
  // The smallest unit whose durability the mapping guarantees on its own,
  // from most to least demanding of Persist().
  enum class Granularity { kByte, kCacheLine, kPage };
  static const char* GranularityName(Granularity g);

  // Opens (or creates and sizes) the store cfg describes and maps it; see
  // OpenBlockStore(). libpmem2 failures are reported with pmem2_errormsg().
  // REQUIRES: cfg.Validate() is OK and cfg.kind is kPmem.
  static Result<std::unique_ptr<PmemStore>> Open(const StoreConfig& cfg, bool create);
  ~PmemStore() override;

  const char* kind() const override { return "pmem"; }
  Granularity granularity() const { return granularity_; }

  // The start of the mapping: slot s is at base() + s * block_size().
  // Lifetime: valid until this store is destroyed; the mapping is removed
  // then, and any later access through the pointer faults.
  const char* base() const { return base_; }
  // The block_size() bytes of `slot`, for reading without a copy (an iovec
  // into the mapping); nullptr when slot >= slot_count(). Lifetime as base().
  // The bytes are live: a concurrent Write to the slot changes them under the
  // reader, so the caller must keep the slot from being rewritten (it is the
  // engine's to pin) until it is done, and check its CRC after copying out,
  // not before.
  const char* SlotData(uint64_t slot) const;

 private:
  struct Range {
    uint64_t begin;
    uint64_t end;
  };

  PmemStore(const StoreConfig& cfg, pmem2_map* map);
  Status DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) override;
  Status DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) override;
  Status DoPersist() override;
  Status DoDiscard(uint64_t pos, uint64_t len) override;
  // Sorts `ranges` and merges the overlapping and touching ones.
  static void SortAndMerge(std::vector<Range>* ranges);
  // Remembers [pos, pos + len) for the next Persist().
  void RecordDirty(uint64_t pos, uint64_t len) LOCKS_EXCLUDED(dirty_mu_);

  const std::string path_;
  pmem2_map* const map_;
  char* const base_;
  const Granularity granularity_;
  // Dirty ranges are widened to multiples of this (page or cache line).
  const uint64_t align_;
  const pmem2_memcpy_fn memcpy_;
  const pmem2_flush_fn flush_;
  const pmem2_drain_fn drain_;

  std::mutex dirty_mu_;
  // Written since the last Persist(), in write order, possibly overlapping;
  // bounded by merging when it grows (see RecordDirty).
  std::vector<Range> dirty_ GUARDED_BY(dirty_mu_);
};

}  // namespace cachefs
