// Options of the block cache (ARCHITECTURE.md, option table).
//
// Values "fixed at format" are std::optional: unset means "use what the
// cache's superblock says, or the format default for a new cache". The
// others carry their default in-class.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/parse.h"
#include "common/status.h"
#include "meta/records.h"

namespace cachefs {

Result<CacheMode> ParseCacheMode(const std::string& text);
const char* CacheModeName(CacheMode mode);
Result<StoreKind> ParseStoreKind(const std::string& text);
const char* StoreKindName(StoreKind kind);
// store_io=: "buffered" (false) or "direct" (true).
Result<bool> ParseStoreIo(const std::string& text);

struct CacheOptions {
  // Cache directory (store, metadata, lock). Empty: /var/cache/cachefs/ plus
  // the systemd-escaped canonical SOURCE path.
  std::string cache_dir;
  // Store data bytes, or a percentage of the cache filesystem. Fixed at
  // format. Default: 10%.
  std::optional<SizeOrPercent> cache_size;
  // Power of two, 4 KiB to 4 MiB. Fixed at format.
  std::optional<uint64_t> block_size;
  // Store kind and location. Fixed at format. Default: file, DIR/store.
  std::optional<StoreKind> store;
  std::optional<std::string> store_path;
  // store_io=direct: every read and write of a file store with O_DIRECT
  // (StoreConfig::direct_io); buffered (false): through the page cache.
  // Per mount. Default: buffered.
  bool store_direct_io = false;
  // Caching mode; persisted per cache. Default: writethrough.
  std::optional<CacheMode> mode;
  // Eviction policy name. Default: the scan-resistant one.
  std::optional<std::string> policy;
  // Background writeback threads; 0 picks the default.
  unsigned writeback_threads = 0;
  // Dirty watermarks in percent of the cache. Default: 60 / 40.
  unsigned dirty_high = 60;
  unsigned dirty_low = 40;
  // Seconds a dirty block ages before it is written back. Default: 5.
  double writeback_delay = 5;
  // Writeback bytes in flight. Default: 64 MiB.
  uint64_t migration_threshold = 64ull << 20;
  // Milliseconds between periodic persists of store and metadata. Default: 1000.
  uint64_t commit_interval_ms = 1000;
  // Contiguous blocks before a stream bypasses the cache. Default: 512.
  uint64_t sequential_threshold = 512;
  // Files larger than this are not cached on read (served from SOURCE);
  // 0: no limit. Default: 0.
  uint64_t file_size_limit = 0;
  // Prefetch on sequential streams; unset picks the measured default.
  std::optional<uint64_t> readahead;
  // Check the CRC of every hit. Default: on.
  bool verify = true;
  // Seconds of writeback after unmount before the daemon exits. Default: 60.
  double flush_timeout = 60;
  // Seconds a read of SOURCE may take before it fails with EIO instead of
  // hanging the reader; 0 waits forever. Default: 60.
  double source_timeout = 60;

  static constexpr uint64_t kMinBlockSize = 4096;
  static constexpr uint64_t kMaxBlockSize = 4u << 20;

  Status Validate() const;
};

// The names accepted by policy=.
bool IsKnownPolicy(const std::string& name);

}  // namespace cachefs
