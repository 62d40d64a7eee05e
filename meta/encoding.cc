#include "meta/encoding.h"

#include <cerrno>
#include <cstring>
#include <variant>

namespace cachefs {
namespace {

void PutBE64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>(v >> shift));
}

uint64_t GetBE64(std::string_view in) {
  uint64_t v = 0;
  for (size_t i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

Status Corrupt(std::string_view what, const std::string& why) {
  return Status::Error(EUCLEAN, "corrupt " + std::string(what) + " record: " + why);
}

size_t BitmapWords(uint32_t sub_blocks) { return (size_t{sub_blocks} + 63) / 64; }

// The bits of the last bitmap word that lie beyond the last sub-block.
uint64_t SpareBits(uint32_t sub_blocks) {
  const uint32_t used = sub_blocks % 64;
  return used == 0 ? 0 : ~((uint64_t{1} << used) - 1);
}

// Reads and checks the record version byte of a non-superblock value;
// returns it (0 when it failed).
uint8_t CheckVersion(ValueDecoder* d, uint8_t newest = kRecordVersion) {
  const uint8_t v = d->GetU8();
  if (d->failed()) return 0;
  if (v == 0 || v > newest) {
    d->Fail("record version " + std::to_string(v) + " is not known to this cachefs (" +
            std::to_string(newest) + ")");
    return 0;
  }
  return v;
}

bool GetBool(ValueDecoder* d) {
  const uint8_t v = d->GetU8();
  if (v > 1) d->Fail("bad boolean " + std::to_string(v));
  return v == 1;
}

}  // namespace

void ValueEncoder::PutU32(uint32_t v) {
  for (int i = 0; i < 4; ++i) buf_.push_back(static_cast<char>(v >> (8 * i)));
}

void ValueEncoder::PutU64(uint64_t v) {
  for (int i = 0; i < 8; ++i) buf_.push_back(static_cast<char>(v >> (8 * i)));
}

void ValueEncoder::PutString(std::string_view s) {
  PutU32(static_cast<uint32_t>(s.size()));
  buf_.append(s);
}

bool ValueDecoder::Take(size_t n) {
  if (failed_) return false;
  if (in_.size() < n) {
    failed_ = true;
    why_ = "truncated";
    in_ = {};
    return false;
  }
  return true;
}

uint8_t ValueDecoder::GetU8() {
  if (!Take(1)) return 0;
  const auto v = static_cast<uint8_t>(in_[0]);
  in_.remove_prefix(1);
  return v;
}

uint32_t ValueDecoder::GetU32() {
  if (!Take(4)) return 0;
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(in_[i]);
  in_.remove_prefix(4);
  return v;
}

uint64_t ValueDecoder::GetU64() {
  if (!Take(8)) return 0;
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(in_[i]);
  in_.remove_prefix(8);
  return v;
}

std::string_view ValueDecoder::GetBytes(size_t n) {
  if (!Take(n)) return {};
  std::string_view v = in_.substr(0, n);
  in_.remove_prefix(n);
  return v;
}

std::string ValueDecoder::GetString() {
  const uint32_t n = GetU32();
  return std::string(GetBytes(n));
}

void ValueDecoder::Fail(std::string why) {
  if (failed_) return;
  failed_ = true;
  why_ = std::move(why);
  in_ = {};
}

Status ValueDecoder::Finish(std::string_view what) const {
  if (failed_) return Corrupt(what, why_);
  if (!in_.empty()) return Corrupt(what, std::to_string(in_.size()) + " trailing bytes");
  return Status::Ok();
}

// ---- Keys ----

std::string FileKey(uint64_t file_id) {
  std::string k;
  PutBE64(&k, file_id);
  return k;
}

std::string BlockKey(uint64_t file_id, uint64_t index) {
  std::string k;
  k.reserve(16);
  PutBE64(&k, file_id);
  PutBE64(&k, index);
  return k;
}

std::string BlockKeyPrefix(uint64_t file_id) { return FileKey(file_id); }

std::string DirtyKey(uint64_t seq) { return FileKey(seq); }

Result<uint64_t> DecodeFileKey(std::string_view key) {
  if (key.size() != 8) return Corrupt("file", "key of " + std::to_string(key.size()) + " bytes");
  return GetBE64(key);
}

Status DecodeBlockKey(std::string_view key, uint64_t* file_id, uint64_t* index) {
  if (key.size() != 16) return Corrupt("block", "key of " + std::to_string(key.size()) + " bytes");
  *file_id = GetBE64(key);
  *index = GetBE64(key.substr(8));
  return Status::Ok();
}

Result<uint64_t> DecodeDirtyKey(std::string_view key) {
  if (key.size() != 8) return Corrupt("dirty", "key of " + std::to_string(key.size()) + " bytes");
  return GetBE64(key);
}

// ---- Superblock ----

std::string EncodeSuperblock(const Superblock& sb) {
  ValueEncoder e;
  e.PutBytes(std::string_view(kSuperblockMagic, sizeof(kSuperblockMagic)));
  e.PutU32(sb.format_version);
  e.PutU32(sb.block_size);
  e.PutU64(sb.slot_count);
  e.PutU8(static_cast<uint8_t>(sb.store_kind));
  e.PutString(sb.store_path);
  e.PutString(sb.source);
  e.PutU8(sb.source_is_file ? 1 : 0);
  e.PutU8(static_cast<uint8_t>(sb.mode));
  e.PutU64(sb.created_unix_ns);
  e.PutString(sb.cache_id);
  return e.Take();
}

Result<Superblock> DecodeSuperblock(std::string_view value) {
  if (value.size() < sizeof(kSuperblockMagic) ||
      std::memcmp(value.data(), kSuperblockMagic, sizeof(kSuperblockMagic)) != 0) {
    return Status::Invalid("not a cachefs cache");
  }
  ValueDecoder d(value.substr(sizeof(kSuperblockMagic)));
  Superblock sb;
  sb.format_version = d.GetU32();
  if (!d.failed() && sb.format_version > kFormatVersion) {
    return Status::Error(ENOTSUP, "cache format " + std::to_string(sb.format_version) +
                                      " is newer than this cachefs (" +
                                      std::to_string(kFormatVersion) + ")");
  }
  if (!d.failed() && sb.format_version == 0) d.Fail("format version 0");
  sb.block_size = d.GetU32();
  sb.slot_count = d.GetU64();
  const uint8_t kind = d.GetU8();
  if (kind > static_cast<uint8_t>(StoreKind::kPmem))
    d.Fail("bad store kind " + std::to_string(kind));
  sb.store_kind = static_cast<StoreKind>(kind);
  sb.store_path = d.GetString();
  sb.source = d.GetString();
  sb.source_is_file = GetBool(&d);
  const uint8_t mode = d.GetU8();
  if (mode > static_cast<uint8_t>(CacheMode::kCow)) d.Fail("bad mode " + std::to_string(mode));
  sb.mode = static_cast<CacheMode>(mode);
  sb.created_unix_ns = d.GetU64();
  sb.cache_id = d.GetString();
  Status s = d.Finish("superblock");
  if (!s.ok()) return s;
  return sb;
}

// ---- Mount state and counters ----

std::string EncodeMountState(const MountState& s) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU8(s.clean_shutdown ? 1 : 0);
  e.PutU64(s.mount_count);
  e.PutString(s.policy);
  e.PutString(s.policy_hints);
  return e.Take();
}

Result<MountState> DecodeMountState(std::string_view value) {
  ValueDecoder d(value);
  CheckVersion(&d);
  MountState s;
  s.clean_shutdown = GetBool(&d);
  s.mount_count = d.GetU64();
  s.policy = d.GetString();
  // Absent in mount states written before hints were kept.
  if (d.remaining() > 0) s.policy_hints = d.GetString();
  Status st = d.Finish("mount state");
  if (!st.ok()) return st;
  return s;
}

std::string EncodeCounters(const PersistentCounters& c) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU64(c.read_hits);
  e.PutU64(c.read_misses);
  e.PutU64(c.write_hits);
  e.PutU64(c.write_misses);
  e.PutU64(c.bytes_from_cache);
  e.PutU64(c.bytes_from_source);
  e.PutU64(c.bytes_written_back);
  return e.Take();
}

Result<PersistentCounters> DecodeCounters(std::string_view value) {
  ValueDecoder d(value);
  CheckVersion(&d);
  PersistentCounters c;
  c.read_hits = d.GetU64();
  c.read_misses = d.GetU64();
  c.write_hits = d.GetU64();
  c.write_misses = d.GetU64();
  c.bytes_from_cache = d.GetU64();
  c.bytes_from_source = d.GetU64();
  c.bytes_written_back = d.GetU64();
  Status s = d.Finish("counters");
  if (!s.ok()) return s;
  return c;
}

std::string EncodeDurableEpoch(uint64_t epoch) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU64(epoch);
  return e.Take();
}

Result<uint64_t> DecodeDurableEpoch(std::string_view value) {
  ValueDecoder d(value);
  CheckVersion(&d);
  const uint64_t epoch = d.GetU64();
  Status s = d.Finish("durable epoch");
  if (!s.ok()) return s;
  return epoch;
}

// ---- Files and paths ----

std::string EncodeFile(const FileRecord& f) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU64(f.source_ino);
  e.PutU64(f.fingerprint.size);
  e.PutI64(f.fingerprint.mtime_ns);
  e.PutI64(f.fingerprint.ctime_ns);
  e.PutU64(f.size);
  e.PutI64(f.mtime_ns);
  e.PutI64(f.ctime_ns);
  e.PutU32(f.flags);
  e.PutString(f.path);
  return e.Take();
}

Result<FileRecord> DecodeFile(std::string_view key, std::string_view value) {
  Result<uint64_t> id = DecodeFileKey(key);
  if (!id.ok()) return id.status();
  ValueDecoder d(value);
  CheckVersion(&d);
  FileRecord f;
  f.file_id = id.value();
  f.source_ino = d.GetU64();
  f.fingerprint.size = d.GetU64();
  f.fingerprint.mtime_ns = d.GetI64();
  f.fingerprint.ctime_ns = d.GetI64();
  f.size = d.GetU64();
  f.mtime_ns = d.GetI64();
  f.ctime_ns = d.GetI64();
  f.flags = d.GetU32();
  f.path = d.GetString();
  Status s = d.Finish("file");
  if (!s.ok()) return s;
  return f;
}

std::string EncodePathValue(uint64_t file_id) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU64(file_id);
  return e.Take();
}

Result<uint64_t> DecodePathValue(std::string_view value) {
  ValueDecoder d(value);
  CheckVersion(&d);
  const uint64_t id = d.GetU64();
  Status s = d.Finish("path");
  if (!s.ok()) return s;
  return id;
}

// ---- Blocks ----

namespace {

// The shape checks shared by a record and its rollback versions.
Status CheckShape(const std::string& where, uint32_t subs, const std::vector<uint64_t>& valid,
                  const std::vector<uint64_t>& dirty) {
  const size_t words = BitmapWords(subs);
  if (valid.size() != words || dirty.size() != words) {
    return Status::Invalid(where + ": bitmaps of " + std::to_string(valid.size()) + " and " +
                           std::to_string(dirty.size()) + " words for " + std::to_string(subs) +
                           " sub-blocks");
  }
  const uint64_t spare = SpareBits(subs);
  if ((valid.back() & spare) != 0 || (dirty.back() & spare) != 0) {
    return Status::Invalid(where + ": bits set beyond the last sub-block");
  }
  return Status::Ok();
}

void PutBitsAndCrcs(ValueEncoder* e, const std::vector<uint64_t>& valid,
                    const std::vector<uint64_t>& dirty, const std::vector<uint32_t>& crc) {
  for (uint64_t w : valid) e->PutU64(w);
  for (uint64_t w : dirty) e->PutU64(w);
  for (uint32_t c : crc) e->PutU32(c);
}

// Reads the bitmaps and CRCs of `subs` sub-blocks. REQUIRES: the decoder
// holds at least that many bytes (checked by the caller, before sizing).
void GetBitsAndCrcs(ValueDecoder* d, uint32_t subs, std::vector<uint64_t>* valid,
                    std::vector<uint64_t>* dirty, std::vector<uint32_t>* crc) {
  const size_t words = BitmapWords(subs);
  valid->resize(words);
  dirty->resize(words);
  crc->resize(subs);
  for (uint64_t& w : *valid) w = d->GetU64();
  for (uint64_t& w : *dirty) w = d->GetU64();
  for (uint32_t& c : *crc) c = d->GetU32();
  const uint64_t spare = SpareBits(subs);
  if ((valid->back() & spare) != 0 || (dirty->back() & spare) != 0) {
    d->Fail("bits set beyond the last sub-block");
  }
}

}  // namespace

Status ValidateBlock(const BlockRecord& b) {
  const std::string where = "block record (file " + std::to_string(b.file_id) + ", block " +
                            std::to_string(b.index) + ")";
  if (b.crc.empty() || b.crc.size() > UINT32_MAX) {
    return Status::Invalid(where + ": " + std::to_string(b.crc.size()) + " sub-blocks");
  }
  Status s = CheckShape(where, b.sub_blocks(), b.valid, b.dirty);
  if (!s.ok()) return s;
  if (b.previous.size() > BlockRecord::kMaxPrevious) {
    return Status::Invalid(where + ": " + std::to_string(b.previous.size()) + " rollback versions");
  }
  for (const BlockVersion& v : b.previous) {
    if (v.crc.size() != b.crc.size()) {
      return Status::Invalid(where + ": a rollback version of " + std::to_string(v.crc.size()) +
                             " sub-blocks");
    }
    s = CheckShape(where + " rollback version", b.sub_blocks(), v.valid, v.dirty);
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

std::string EncodeBlock(const BlockRecord& b) {
  ValueEncoder e;
  const size_t per_version = 16 * b.valid.size() + 4 * b.crc.size();
  e.buffer().reserve(1 + 8 * 3 + 4 + per_version + 9 + b.previous.size() * (32 + per_version));
  e.PutU8(kBlockRecordVersion);
  e.PutU64(b.slot);
  e.PutU64(b.generation);
  e.PutU64(b.dirty_seq);
  e.PutU32(b.sub_blocks());
  PutBitsAndCrcs(&e, b.valid, b.dirty, b.crc);
  // Version 2: the epoch and the rollback versions.
  e.PutU64(b.epoch);
  e.PutU8(static_cast<uint8_t>(b.previous.size()));
  for (const BlockVersion& v : b.previous) {
    e.PutU64(v.slot);
    e.PutU64(v.generation);
    e.PutU64(v.dirty_seq);
    e.PutU64(v.epoch);
    PutBitsAndCrcs(&e, v.valid, v.dirty, v.crc);
  }
  return e.Take();
}

Result<BlockRecord> DecodeBlock(std::string_view key, std::string_view value) {
  BlockRecord b;
  Status s = DecodeBlockKey(key, &b.file_id, &b.index);
  if (!s.ok()) return s;
  ValueDecoder d(value);
  const uint8_t version = CheckVersion(&d, kBlockRecordVersion);
  b.slot = d.GetU64();
  b.generation = d.GetU64();
  b.dirty_seq = d.GetU64();
  const uint32_t subs = d.GetU32();
  if (!d.failed() && subs == 0) d.Fail("no sub-blocks");
  // Check the length before sizing vectors so that a corrupt count cannot
  // make us allocate gigabytes.
  const size_t per_version = 16 * BitmapWords(subs) + 4 * size_t{subs};
  if (!d.failed() && d.remaining() < per_version) d.Fail("truncated");
  if (!d.failed() && version == 1 && d.remaining() > per_version) {
    d.Fail(std::to_string(d.remaining() - per_version) + " trailing bytes");
  }
  if (d.failed()) return d.Finish("block");
  GetBitsAndCrcs(&d, subs, &b.valid, &b.dirty, &b.crc);
  if (version >= 2) {
    b.epoch = d.GetU64();
    const uint8_t count = d.GetU8();
    if (!d.failed() && count > BlockRecord::kMaxPrevious) {
      d.Fail(std::to_string(count) + " rollback versions");
    }
    const size_t need = count * (32 + per_version);
    if (!d.failed() && d.remaining() < need) d.Fail("truncated");
    if (!d.failed() && d.remaining() > need) {
      d.Fail(std::to_string(d.remaining() - need) + " trailing bytes");
    }
    if (!d.failed()) b.previous.resize(count);
    for (BlockVersion& v : b.previous) {
      v.slot = d.GetU64();
      v.generation = d.GetU64();
      v.dirty_seq = d.GetU64();
      v.epoch = d.GetU64();
      GetBitsAndCrcs(&d, subs, &v.valid, &v.dirty, &v.crc);
    }
  }
  s = d.Finish("block");
  if (!s.ok()) return s;
  return b;
}

// ---- Dirty index ----

std::string EncodeDirty(const DirtyRecord& r) {
  ValueEncoder e;
  e.PutU8(kRecordVersion);
  e.PutU64(r.file_id);
  e.PutU64(r.index);
  return e.Take();
}

Result<DirtyRecord> DecodeDirty(std::string_view key, std::string_view value) {
  Result<uint64_t> seq = DecodeDirtyKey(key);
  if (!seq.ok()) return seq.status();
  ValueDecoder d(value);
  CheckVersion(&d);
  DirtyRecord r;
  r.seq = seq.value();
  r.file_id = d.GetU64();
  r.index = d.GetU64();
  Status s = d.Finish("dirty");
  if (!s.ok()) return s;
  return r;
}

Status ValidateBatch(const MetaBatch& batch) {
  for (const MetaBatch::Op& op : batch.ops()) {
    if (const auto* put = std::get_if<MetaBatch::PutBlock>(&op)) {
      Status s = ValidateBlock(put->block);
      if (!s.ok()) return s;
    } else if (const auto* dirty = std::get_if<MetaBatch::PutDirty>(&op)) {
      if (dirty->dirty.seq == 0) return Status::Invalid("dirty record with seq 0");
    }
  }
  return Status::Ok();
}

}  // namespace cachefs
