#include "cache/options.h"

#include <array>
#include <utility>

namespace cachefs {
namespace {

constexpr std::array<std::pair<const char*, CacheMode>, 5> kModes = {{
    {"writethrough", CacheMode::kWritethrough},
    {"writeback", CacheMode::kWriteback},
    {"writearound", CacheMode::kWritearound},
    {"readonly", CacheMode::kReadonly},
    {"cow", CacheMode::kCow},
}};

constexpr std::array<const char*, 3> kPolicies = {"smq", "lru", "cleaner"};

}  // namespace

Result<CacheMode> ParseCacheMode(const std::string& text) {
  for (const auto& [name, mode] : kModes) {
    if (text == name) return mode;
  }
  return Status::Invalid("'" + text + "' is not a mode (writethrough, writeback, writearound, " +
                         "readonly, cow)");
}

const char* CacheModeName(CacheMode mode) {
  for (const auto& [name, m] : kModes) {
    if (m == mode) return name;
  }
  return "?";
}

Result<StoreKind> ParseStoreKind(const std::string& text) {
  if (text == "file") return StoreKind::kFile;
  if (text == "pmem") return StoreKind::kPmem;
  return Status::Invalid("'" + text + "' is not a store kind (file, pmem)");
}

const char* StoreKindName(StoreKind kind) { return kind == StoreKind::kFile ? "file" : "pmem"; }

Result<bool> ParseStoreIo(const std::string& text) {
  if (text == "buffered") return false;
  if (text == "direct") return true;
  return Status::Invalid("'" + text + "' is not a store IO kind (buffered, direct)");
}

bool IsKnownPolicy(const std::string& name) {
  for (const char* p : kPolicies) {
    if (name == p) return true;
  }
  return false;
}

Status CacheOptions::Validate() const {
  if (block_size) {
    uint64_t b = *block_size;
    if (b < kMinBlockSize || b > kMaxBlockSize || (b & (b - 1)) != 0) {
      return Status::Invalid("block_size must be a power of two from 4K to 4M");
    }
  }
  if (cache_size && !cache_size->is_percent && block_size && cache_size->bytes < *block_size) {
    return Status::Invalid("cache_size must hold at least one block");
  }
  if (cache_size && !cache_size->is_percent && cache_size->bytes < kMinBlockSize) {
    return Status::Invalid("cache_size must be at least 4K");
  }
  if (store_path && store_path->empty()) return Status::Invalid("store_path must not be empty");
  if (policy && !IsKnownPolicy(*policy)) {
    return Status::Invalid("policy '" + *policy + "' is not known (smq, lru, cleaner)");
  }
  if (dirty_high > 100 || dirty_low > 100) {
    return Status::Invalid("dirty_high and dirty_low are percentages from 0 to 100");
  }
  if (dirty_low >= dirty_high) return Status::Invalid("dirty_low must be below dirty_high");
  if (writeback_threads > 256) return Status::Invalid("writeback_threads must be 1 to 256");
  if (migration_threshold == 0) return Status::Invalid("migration_threshold must be above 0");
  if (commit_interval_ms == 0) return Status::Invalid("commit_interval must be above 0");
  if (sequential_threshold == 0) return Status::Invalid("sequential_threshold must be above 0");
  return Status::Ok();
}

}  // namespace cachefs
