#include "cache/block_store.h"

#include <limits>
#include <string>

#include "cache/file_store.h"
#include "cache/options.h"
#include "cache/pmem_store.h"

namespace cachefs {

Status StoreConfig::Validate() const {
  if (path.empty()) return Status::Invalid("store path is empty");
  if (block_size < CacheOptions::kMinBlockSize || block_size > CacheOptions::kMaxBlockSize ||
      (block_size & (block_size - 1)) != 0) {
    return Status::Invalid("store block_size " + std::to_string(block_size) +
                           " is not a power of two from 4K to 4M");
  }
  if (slot_count == 0) return Status::Invalid("store slot_count must be at least 1");
  // Offsets are off_t and mapping lengths size_t: stay below both.
  if (slot_count > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / block_size) {
    return Status::Invalid("store of " + std::to_string(slot_count) + " slots of " +
                           std::to_string(block_size) + " bytes is too large");
  }
  if (direct_io && kind != StoreKind::kFile) {
    return Status::Invalid("direct_io applies to store=file only");
  }
  return Status::Ok();
}

Status BlockStore::CheckRange(uint64_t slot, uint32_t offset, uint32_t len) const {
  if (slot >= slot_count_) {
    return Status::Invalid("slot " + std::to_string(slot) + " is outside the store of " +
                           std::to_string(slot_count_) + " slots");
  }
  if (offset > block_size_ || len > block_size_ - offset) {
    return Status::Invalid("range of " + std::to_string(len) + " bytes at " +
                           std::to_string(offset) + " leaves slot " + std::to_string(slot) +
                           " of " + std::to_string(block_size_) + " bytes");
  }
  return Status::Ok();
}

Status BlockStore::Read(uint64_t slot, uint32_t offset, uint32_t len, void* buf, StoreRead how) {
  if (Status s = CheckRange(slot, offset, len); !s.ok()) return s;
  if (len == 0) return Status::Ok();
  Status s = DoRead(StoreOffset(slot, offset), len, buf, how);
  if (!s.ok()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    return s;
  }
  counters_.reads.fetch_add(1, std::memory_order_relaxed);
  counters_.read_bytes.fetch_add(len, std::memory_order_relaxed);
  return s;
}

Status BlockStore::Write(uint64_t slot, uint32_t offset, uint32_t len, const void* buf,
                         StoreWrite how) {
  if (Status s = CheckRange(slot, offset, len); !s.ok()) return s;
  if (len == 0) return Status::Ok();
  Status s = DoWrite(StoreOffset(slot, offset), len, buf, how);
  if (!s.ok()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    return s;
  }
  counters_.writes.fetch_add(1, std::memory_order_relaxed);
  counters_.write_bytes.fetch_add(len, std::memory_order_relaxed);
  return s;
}

Status BlockStore::Persist() {
  std::lock_guard<std::mutex> lock(persist_mu_);
  if (!persist_error_.ok()) return persist_error_;
  Status s = DoPersist();
  if (!s.ok()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    persist_error_ = s;
    return s;
  }
  counters_.persists.fetch_add(1, std::memory_order_relaxed);
  return s;
}

Status BlockStore::Discard(uint64_t slot) {
  if (Status s = CheckRange(slot, 0, block_size_); !s.ok()) return s;
  Status s = DoDiscard(StoreOffset(slot, 0), block_size_);
  if (!s.ok()) {
    counters_.errors.fetch_add(1, std::memory_order_relaxed);
    return s;
  }
  counters_.discards.fetch_add(1, std::memory_order_relaxed);
  return s;
}

Result<std::unique_ptr<BlockStore>> OpenBlockStore(const StoreConfig& cfg, bool create) {
  if (Status s = cfg.Validate(); !s.ok()) return s;
  if (cfg.kind == StoreKind::kPmem) {
    Result<std::unique_ptr<PmemStore>> r = PmemStore::Open(cfg, create);
    if (!r.ok()) return r.status();
    return std::unique_ptr<BlockStore>(std::move(r.value()));
  }
  Result<std::unique_ptr<FileStore>> r = FileStore::Open(cfg, create);
  if (!r.ok()) return r.status();
  return std::unique_ptr<BlockStore>(std::move(r.value()));
}

}  // namespace cachefs
