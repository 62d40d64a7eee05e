// The byte layout of the cache metadata: RocksDB keys and values for every
// record of meta/records.h (docs/format.md describes it byte by byte).
//
// Keys are big-endian so that RocksDB's bytewise order is numeric order: a
// file's blocks are contiguous and sorted by index, the dirty index is sorted
// by seq. Values start with a record version byte (the superblock with its
// magic and the format version instead), followed by fixed-width
// little-endian integers and u32-length-prefixed strings. Fields that are in
// the key (file id, block index, dirty seq, path) are not repeated in the
// value, so the decoders of those records take the key as well.
//
// Decoders never read outside their input: a truncated value, trailing bytes,
// an unknown record version or an impossible field give a Status (EUCLEAN,
// "corrupt ... record: ..."), never a crash.
//
// Thread-safety: everything here is a pure function or a value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "meta/meta_store.h"
#include "meta/records.h"

namespace cachefs {

// Version byte written in front of every value but the superblock's. A
// decoder accepts versions 1 to its own and refuses newer ones.
inline constexpr uint8_t kRecordVersion = 1;
// Block records have their own version: 2 added the persist epoch and the
// rollback versions (version 1 records still decode, with neither).
inline constexpr uint8_t kBlockRecordVersion = 2;

// Column families of the RocksDB store.
inline constexpr char kFilesFamily[] = "files";
inline constexpr char kPathsFamily[] = "paths";
inline constexpr char kBlocksFamily[] = "blocks";
inline constexpr char kDirtyFamily[] = "dirty";
// Fixed keys in the default column family.
inline constexpr std::string_view kSuperblockKey = "superblock";
inline constexpr std::string_view kMountStateKey = "mount_state";
inline constexpr std::string_view kCountersKey = "counters";
inline constexpr std::string_view kDurableEpochKey = "durable_epoch";

// Appends fixed-width little-endian integers and length-prefixed strings.
class ValueEncoder {
 public:
  void PutU8(uint8_t v) { buf_.push_back(static_cast<char>(v)); }
  void PutU32(uint32_t v);
  void PutU64(uint64_t v);
  void PutI64(int64_t v) { PutU64(static_cast<uint64_t>(v)); }
  void PutBytes(std::string_view bytes) { buf_.append(bytes); }
  // u32 length, then the bytes. REQUIRES: s.size() < 4 GiB.
  void PutString(std::string_view s);

  std::string& buffer() { return buf_; }
  std::string Take() { return std::move(buf_); }

 private:
  std::string buf_;
};

// Reads what ValueEncoder wrote. A read past the end returns 0 (or "") and
// marks the decoder failed; Finish() then reports "truncated", or "trailing
// bytes" when input is left over, so callers check once at the end.
class ValueDecoder {
 public:
  explicit ValueDecoder(std::string_view in) : in_(in) {}

  uint8_t GetU8();
  uint32_t GetU32();
  uint64_t GetU64();
  int64_t GetI64() { return static_cast<int64_t>(GetU64()); }
  std::string_view GetBytes(size_t n);
  std::string GetString();
  // Marks the input bad for a reason other than its length.
  void Fail(std::string why);

  bool failed() const { return failed_; }
  size_t remaining() const { return in_.size(); }
  // OK when nothing failed and the input was used up exactly; else EUCLEAN
  // "corrupt <what> record: <why>".
  Status Finish(std::string_view what) const;

 private:
  bool Take(size_t n);  // false (and failed) when fewer than n bytes are left
  std::string_view in_;
  bool failed_ = false;
  std::string why_;
};

// Keys.
std::string FileKey(uint64_t file_id);
std::string BlockKey(uint64_t file_id, uint64_t index);
// The first 8 bytes of every BlockKey of `file_id`.
std::string BlockKeyPrefix(uint64_t file_id);
std::string DirtyKey(uint64_t seq);
Result<uint64_t> DecodeFileKey(std::string_view key);
Status DecodeBlockKey(std::string_view key, uint64_t* file_id, uint64_t* index);
Result<uint64_t> DecodeDirtyKey(std::string_view key);
// The paths family's key is the path itself.

// Values.
std::string EncodeSuperblock(const Superblock& sb);
// Fails with EINVAL "not a cachefs cache" for another magic and ENOTSUP
// "cache format N is newer than this cachefs (M)" for a newer format.
Result<Superblock> DecodeSuperblock(std::string_view value);

std::string EncodeMountState(const MountState& s);
Result<MountState> DecodeMountState(std::string_view value);

std::string EncodeCounters(const PersistentCounters& c);
Result<PersistentCounters> DecodeCounters(std::string_view value);

// The persist epoch whose data is known durable (MetaStore::GetDurableEpoch).
std::string EncodeDurableEpoch(uint64_t epoch);
Result<uint64_t> DecodeDurableEpoch(std::string_view value);

// Key: FileKey(file.file_id).
std::string EncodeFile(const FileRecord& file);
Result<FileRecord> DecodeFile(std::string_view key, std::string_view value);

// Key: the path.
std::string EncodePathValue(uint64_t file_id);
Result<uint64_t> DecodePathValue(std::string_view value);

// Key: BlockKey(block.file_id, block.index). REQUIRES: ValidateBlock(block).
std::string EncodeBlock(const BlockRecord& block);
Result<BlockRecord> DecodeBlock(std::string_view key, std::string_view value);

// Key: DirtyKey(d.seq).
std::string EncodeDirty(const DirtyRecord& d);
Result<DirtyRecord> DecodeDirty(std::string_view key, std::string_view value);

// EINVAL unless `block` has at least one sub-block, ceil(sub_blocks / 64)
// valid and dirty words and no bit set beyond its last sub-block, and at
// most BlockRecord::kMaxPrevious rollback versions of the same shape.
Status ValidateBlock(const BlockRecord& block);
// What every store checks before it applies a batch: each block passes
// ValidateBlock and no dirty entry has seq 0 (0 means "clean" in a block).
Status ValidateBatch(const MetaBatch& batch);

}  // namespace cachefs
