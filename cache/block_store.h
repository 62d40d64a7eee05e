// BlockStore: the fast device that holds cached blocks, as numbered slots.
//
// A store is a fixed array of `slot_count` slots of `block_size` bytes (a
// power of two, 4 KiB to 4 MiB) laid out from offset 0 of a file or DAX
// device: slot s occupies bytes [s * block_size, (s + 1) * block_size). The
// store knows nothing of files or blocks; the metadata says which block is in
// which slot (meta/).
//
// Durability: Write() makes data visible to later Reads at once (kill -9 of
// the daemon keeps it: it is in the kernel or in the mapping) but only
// Persist() makes every write completed before it survive power loss.
// Ordering (contract 2) is the caller's: persist the store before syncing the
// metadata that points at the new data.
//
// A failed Persist() is sticky: every later Persist() fails with the same
// Status. The kernel reports a writeback error once and may already have
// dropped the pages, so a later success would claim durability for data that
// is gone (the PostgreSQL "fsyncgate" lesson).
//
// Implementations: FileStore (cache/file_store.h, pread/pwrite on a file or
// block device) and PmemStore (cache/pmem_store.h, a libpmem2 mapping).
//
// Non-virtual interface: the public methods check arguments and count; the
// subclasses do raw IO. Thread-safety: all methods may be called concurrently;
// concurrent writes to overlapping ranges of one slot are the caller's to
// avoid. Persist() calls are serialised: one that starts while another runs
// waits for it, so each returns only once everything written before it is
// durable.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/status.h"
#include "common/thread_annotations.h"
#include "meta/records.h"

namespace cachefs {

struct StoreConfig {
  StoreKind kind = StoreKind::kFile;
  // The store file or DAX device. A missing file is created (and sized) when
  // `create` is passed to OpenBlockStore.
  std::string path;
  // Slot size; REQUIRES a power of two from 4 KiB to 4 MiB.
  uint32_t block_size = 0;
  // Number of slots; the store is slot_count * block_size bytes.
  uint64_t slot_count = 0;
  // FileStore only: open with O_DIRECT, bypassing the page cache. Every Read
  // and Write must then use an offset, a length and a buffer address that are
  // multiples of 4 KiB (kDirectIoAlignment); others fail with EINVAL.
  // Default: off.
  bool direct_io = false;

  // EINVAL with one line when a field is out of range (see each field), the
  // size overflows, or direct_io is asked of a pmem store.
  Status Validate() const;
  uint64_t size_bytes() const { return slot_count * block_size; }
};

// Alignment of offsets, lengths and buffers with StoreConfig::direct_io.
inline constexpr uint32_t kDirectIoAlignment = 4096;

// How a Write's data is expected to be used next; a hint, never a change in
// what Write promises.
enum class StoreWrite : uint8_t {
  // Kept where the store keeps recent data (a FileStore: its page cache).
  kKeep,
  // A stream of fills nobody is expected to read again soon from RAM (a
  // large read of SOURCE): a FileStore writes it around the page cache
  // (O_DIRECT) when the range and buffer are 4 KiB-aligned and the file
  // system allows it, so a streamed file is not held in RAM twice and not
  // copied once more (docs/benchmarks.md, "Fills written around the page
  // cache"). Visible and durable exactly as kKeep.
  kStream,
};

// How a Read's data was asked for; a hint, never a change in what Read returns.
enum class StoreRead : uint8_t {
  // Through where the store keeps recent data (a FileStore: its page cache,
  // with the kernel's readahead over neighbouring slots).
  kCached,
  // A short read that nothing near is expected to follow (a random hit): a
  // FileStore reads it around the page cache (O_DIRECT) when the range and
  // buffer are whole pages and the file system allows it. The kernel's
  // pages of the file hold what was read already; a second copy in the
  // store's pages would only cost a page-cache insertion per read
  // (docs/benchmarks.md, session 10). Sees every completed Write as kCached
  // does: the kernel writes the range's dirty pages out first.
  kDirect,
};

// Successful calls and their bytes; `errors` counts calls that passed the
// argument checks and then failed in the device (a rejected range is the
// caller's bug and is not counted).
struct StoreCounters {
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> read_bytes{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> write_bytes{0};
  std::atomic<uint64_t> persists{0};
  std::atomic<uint64_t> discards{0};
  std::atomic<uint64_t> errors{0};
};

class BlockStore {
 public:
  virtual ~BlockStore() = default;
  BlockStore(const BlockStore&) = delete;
  BlockStore& operator=(const BlockStore&) = delete;

  uint32_t block_size() const { return block_size_; }
  uint64_t slot_count() const { return slot_count_; }
  const StoreCounters& counters() const { return counters_; }
  virtual const char* kind() const = 0;  // "file" or "pmem"

  // Reads `len` bytes at `offset` inside `slot`. Fails with EINVAL when the
  // range leaves the slot or the store, EIO when the device fails.
  Status Read(uint64_t slot, uint32_t offset, uint32_t len, void* buf,
              StoreRead how = StoreRead::kCached);
  // Writes `len` bytes at `offset` inside `slot`; visible at once, durable
  // after the next Persist(). Same failures as Read, plus ENOSPC from the device.
  Status Write(uint64_t slot, uint32_t offset, uint32_t len, const void* buf,
               StoreWrite how = StoreWrite::kKeep);
  // Makes every Write that completed before the call durable. Fails with the
  // device's error (EIO), and from then on always (see above).
  Status Persist();
  // Tells the device that `slot` holds nothing worth keeping (hole punch or
  // nothing); its content is undefined afterwards.
  Status Discard(uint64_t slot);

 protected:
  BlockStore(uint32_t block_size, uint64_t slot_count)
      : block_size_(block_size), slot_count_(slot_count) {}
  // Byte offset of `offset` inside `slot` from the start of the store.
  uint64_t StoreOffset(uint64_t slot, uint32_t offset) const { return slot * block_size_ + offset; }

  virtual Status DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) = 0;
  virtual Status DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) = 0;
  virtual Status DoPersist() = 0;
  virtual Status DoDiscard(uint64_t pos, uint64_t len) = 0;

 private:
  Status CheckRange(uint64_t slot, uint32_t offset, uint32_t len) const;
  const uint32_t block_size_;
  const uint64_t slot_count_;
  StoreCounters counters_;
  // Serialises Persist() and keeps its first failure.
  std::mutex persist_mu_;
  Status persist_error_ GUARDED_BY(persist_mu_);
};

// Opens (or with `create`, creates and sizes) the store `cfg` describes.
// A new file gets mode 0600 and all its blocks allocated up front, so a full
// device fails here (ENOSPC, nothing left behind) rather than on a later
// write. Fails when cfg is invalid (EINVAL), the file is missing and !create
// (ENOENT), it is smaller than the configured size (EINVAL), or the device
// cannot be mapped (pmem).
Result<std::unique_ptr<BlockStore>> OpenBlockStore(const StoreConfig& cfg, bool create);

}  // namespace cachefs
