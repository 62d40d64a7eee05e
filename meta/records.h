// The records of the cache metadata (docs/format.md has the byte layout).
//
// These are plain values; meta/encoding.* turns them into RocksDB keys and
// values and back. The format is versioned by Superblock::format_version and
// every value starts with its own record version byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace cachefs {

// Persisted in the superblock; parsed and named in cache/options.h.
enum class CacheMode : uint8_t { kWritethrough, kWriteback, kWritearound, kReadonly, kCow };
enum class StoreKind : uint8_t { kFile, kPmem };

inline constexpr char kSuperblockMagic[8] = {'C', 'A', 'C', 'H', 'E', 'F', 'S', '1'};
// 2: block records carry a persist epoch and rollback versions (docs/format.md).
inline constexpr uint32_t kFormatVersion = 2;
// Checksums, valid and dirty bits are kept per sub-block of this size.
inline constexpr uint32_t kSubBlockSize = 4096;

// What a cache is for and how it is laid out; written at format. Everything
// here but `mode` is fixed for the life of the cache.
struct Superblock {
  uint32_t format_version = kFormatVersion;
  uint32_t block_size = 0;
  uint64_t slot_count = 0;
  StoreKind store_kind = StoreKind::kFile;
  std::string store_path;
  std::string source;           // canonical path of SOURCE (contract 4)
  bool source_is_file = false;  // image mode
  CacheMode mode = CacheMode::kWritethrough;
  uint64_t created_unix_ns = 0;
  std::string cache_id;  // 16 random bytes, names this cache in reports

  bool operator==(const Superblock&) const = default;
};

// State that changes at mount and unmount.
struct MountState {
  bool clean_shutdown = false;  // the last mount ended with a clean unmount
  uint64_t mount_count = 0;
  std::string policy;  // policy whose hints were saved at the last clean unmount
  // The policy's cheap per-slot state (Policy::SaveHints) from that unmount;
  // empty when none.
  std::string policy_hints;

  bool operator==(const MountState&) const = default;
};

// How a source file looked when cachefs last saw or changed it: a change of
// any field made outside cachefs invalidates the clean cached data (contract 5).
struct Fingerprint {
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;

  bool operator==(const Fingerprint&) const = default;
};

// One source file known to the cache (contract 4: path + inode + fingerprint).
struct FileRecord {
  enum Flags : uint32_t {
    kConflict = 1u << 0,   // changed outside while it had dirty data
    kUnlinked = 1u << 1,   // last name gone; data kept until the last handle closes
    kUnmatched = 1u << 2,  // could not be matched at recovery: kept aside, reported
    kPinned = 1u << 3,     // never evicted
    // The writer is changing SOURCE's copy: a fingerprint that differs is
    // then its own unfinished change, not a conflict (cleared when done).
    kWritingBack = 1u << 4,
  };
  uint64_t file_id = 0;
  std::string path;  // relative to SOURCE, no leading '/'; "" for the image itself
  uint64_t source_ino = 0;
  Fingerprint fingerprint;  // of the source file
  // The file as the mount shows it, which differs from the source while
  // data or attribute changes are still to be written back.
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint32_t flags = 0;

  bool operator==(const FileRecord&) const = default;
};

// An earlier placement of a block's data that recovery may roll back to
// after a power loss (contract 1c): the fields of BlockRecord that describe
// the data, and the persist epoch in which that data was written.
struct BlockVersion {
  uint64_t slot = 0;
  uint64_t generation = 0;
  uint64_t dirty_seq = 0;
  uint64_t epoch = 0;
  std::vector<uint64_t> valid;
  std::vector<uint64_t> dirty;
  std::vector<uint32_t> crc;

  bool operator==(const BlockVersion&) const = default;
};

// One cached block of one file, living in one store slot.
struct BlockRecord {
  // Rollback versions a record keeps at most (docs/format.md, "Rollback").
  static constexpr size_t kMaxPrevious = 2;

  uint64_t file_id = 0;
  uint64_t index = 0;  // block number in the file: byte offset / block_size
  uint64_t slot = 0;
  // Bumped whenever the block's data is placed anew; seeds the CRCs.
  uint64_t generation = 0;
  // One bit per sub-block (bit i of word i / 64): holds data / newer than SOURCE.
  std::vector<uint64_t> valid;
  std::vector<uint64_t> dirty;
  // One CRC32C per sub-block (SubBlockCrc); meaningful where valid.
  std::vector<uint32_t> crc;
  // Key of this block's entry in the dirty index; 0 when clean.
  uint64_t dirty_seq = 0;
  // The persist epoch in which this version's data was last written to the
  // store (Engine::Persist): durable once a persist of a later epoch
  // completed. 0 in records written before epochs existed (durable).
  uint64_t epoch = 0;
  // Earlier versions recovery may roll back to, newest first (at most
  // kMaxPrevious), when this one's data did not survive a power loss.
  std::vector<BlockVersion> previous;

  // An empty record sized for `block_size` (all bits clear).
  static BlockRecord Empty(uint64_t file_id, uint64_t index, uint32_t block_size);
  uint32_t sub_blocks() const { return static_cast<uint32_t>(crc.size()); }
  bool IsValid(uint32_t sub) const { return (valid[sub / 64] >> (sub % 64)) & 1; }
  bool IsDirty(uint32_t sub) const { return (dirty[sub / 64] >> (sub % 64)) & 1; }
  void SetValid(uint32_t sub, bool on);
  void SetDirty(uint32_t sub, bool on);
  bool AnyDirty() const;
  // This record's own version (without `previous`), and the record made
  // current again from `v` (file, index and `previous` unchanged).
  BlockVersion Current() const;
  void Restore(const BlockVersion& v);
  uint32_t DirtyCount() const;  // dirty sub-blocks

  bool operator==(const BlockRecord&) const = default;
};

// An entry of the dirty index, ordered by `seq` (oldest first) for writeback.
struct DirtyRecord {
  uint64_t seq = 0;
  uint64_t file_id = 0;
  uint64_t index = 0;

  bool operator==(const DirtyRecord&) const = default;
};

// Counters that mean something across remounts (dm-cache keeps them too).
struct PersistentCounters {
  uint64_t read_hits = 0;
  uint64_t read_misses = 0;
  uint64_t write_hits = 0;
  uint64_t write_misses = 0;
  uint64_t bytes_from_cache = 0;
  uint64_t bytes_from_source = 0;
  uint64_t bytes_written_back = 0;

  bool operator==(const PersistentCounters&) const = default;
};

}  // namespace cachefs
