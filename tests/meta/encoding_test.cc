#include "meta/encoding.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace cachefs {
namespace {

Superblock SampleSuperblock() {
  Superblock sb;
  sb.block_size = 65536;
  sb.slot_count = 123456789;
  sb.store_kind = StoreKind::kPmem;
  sb.store_path = "/dev/dax0.0";
  sb.source = "/mnt/slow";
  sb.source_is_file = true;
  sb.mode = CacheMode::kCow;
  sb.created_unix_ns = 1700000000123456789ull;
  sb.cache_id = std::string("\x00\x01\xff\x7f\x80 sixteen bytes", 16);
  return sb;
}

FileRecord SampleFile() {
  FileRecord f;
  f.file_id = 0x0102030405060708ull;
  f.path = "dir/sub/file name \xc3\xa9";
  f.source_ino = 99;
  f.fingerprint = {1u << 20, -5, 1700000000000000001};
  f.size = 12345;
  f.mtime_ns = -1;  // before 1970: signed times must survive
  f.ctime_ns = INT64_MAX;
  f.flags = FileRecord::kConflict | FileRecord::kPinned;
  return f;
}

// A block of `subs` sub-blocks with a pattern in every field.
BlockRecord SampleBlock(uint32_t subs) {
  BlockRecord b = BlockRecord::Empty(7, 0xfeedface12ull, subs * kSubBlockSize);
  b.slot = 4242;
  b.generation = 0xffffffffffull;
  b.dirty_seq = 77;
  for (uint32_t i = 0; i < subs; ++i) {
    b.SetValid(i, i % 3 != 0);
    b.SetDirty(i, i % 5 == 0);
    b.crc[i] = 0x9e3779b9u * (i + 1);
  }
  return b;
}

// Every proper prefix of `value` is rejected as truncated, and one more byte
// as trailing garbage.
template <typename Decode>
void ExpectStrict(const std::string& value, const Decode& decode) {
  for (size_t n = 0; n < value.size(); ++n) {
    auto r = decode(std::string_view(value).substr(0, n));
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " of " << value.size() << " bytes decoded";
  }
  auto r = decode(value + "x");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("trailing"), std::string::npos) << r.status().message();
}

TEST(Encoding, BlockRecordHelpers) {
  BlockRecord b = BlockRecord::Empty(1, 2, 4u << 20);
  EXPECT_EQ(b.sub_blocks(), 1024u);
  EXPECT_EQ(b.valid.size(), 16u);
  EXPECT_EQ(b.dirty.size(), 16u);
  EXPECT_FALSE(b.AnyDirty());
  b.SetDirty(1023, true);
  b.SetValid(64, true);
  EXPECT_TRUE(b.IsDirty(1023));
  EXPECT_TRUE(b.IsValid(64));
  EXPECT_FALSE(b.IsValid(63));
  EXPECT_TRUE(b.AnyDirty());
  b.SetDirty(1023, false);
  EXPECT_FALSE(b.AnyDirty());
  EXPECT_EQ(BlockRecord::Empty(1, 2, 4096).sub_blocks(), 1u);
}

TEST(Encoding, SuperblockRoundTrip) {
  const Superblock sb = SampleSuperblock();
  const std::string v = EncodeSuperblock(sb);
  ASSERT_EQ(v.compare(0, 8, std::string(kSuperblockMagic, 8)), 0);
  auto r = DecodeSuperblock(v);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value(), sb);
  EXPECT_EQ(DecodeSuperblock(EncodeSuperblock(Superblock{})).value(), Superblock{});
  ExpectStrict(v, DecodeSuperblock);
}

TEST(Encoding, SuperblockWithAnotherMagicIsNotACache) {
  std::string v = EncodeSuperblock(SampleSuperblock());
  v[7] = '2';
  auto r = DecodeSuperblock(v);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "not a cachefs cache");
  EXPECT_EQ(DecodeSuperblock("CACHE").status().message(), "not a cachefs cache");
  EXPECT_EQ(DecodeSuperblock("").status().message(), "not a cachefs cache");
}

TEST(Encoding, SuperblockOfANewerFormatIsRefused) {
  Superblock sb = SampleSuperblock();
  sb.format_version = kFormatVersion + 1;
  // A newer format may lay out the rest differently: only magic and version
  // are read.
  std::string v = EncodeSuperblock(sb).substr(0, 12) + "whatever follows";
  auto r = DecodeSuperblock(v);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ENOTSUP);
  EXPECT_EQ(r.status().message(), "cache format " + std::to_string(kFormatVersion + 1) +
                                      " is newer than this cachefs (" +
                                      std::to_string(kFormatVersion) + ")");
  sb.format_version = 0;
  EXPECT_EQ(DecodeSuperblock(EncodeSuperblock(sb)).status().code(), EUCLEAN);
}

TEST(Encoding, SuperblockEnumsAreChecked) {
  std::string v = EncodeSuperblock(SampleSuperblock());
  std::string bad_kind = v;
  bad_kind[8 + 4 + 4 + 8] = 2;  // store_kind after magic, version, block_size, slot_count
  EXPECT_EQ(DecodeSuperblock(bad_kind).status().code(), EUCLEAN);
}

TEST(Encoding, MountStateAndCountersRoundTrip) {
  MountState m{true, 17, "lru", std::string("hint\0s", 6)};
  auto rm = DecodeMountState(EncodeMountState(m));
  ASSERT_TRUE(rm.ok()) << rm.status().message();
  EXPECT_EQ(rm.value(), m);
  // A mount state written before hints were kept ends after the policy
  // name: it decodes, with no hints. Every other prefix is truncated.
  const std::string full = EncodeMountState(m);
  const size_t legacy = full.size() - 4 - m.policy_hints.size();
  MountState old = m;
  old.policy_hints.clear();
  auto ro = DecodeMountState(std::string_view(full).substr(0, legacy));
  ASSERT_TRUE(ro.ok()) << ro.status().message();
  EXPECT_EQ(ro.value(), old);
  for (size_t n = 0; n < full.size(); ++n) {
    if (n == legacy) continue;
    EXPECT_FALSE(DecodeMountState(std::string_view(full).substr(0, n)).ok()) << n;
  }
  EXPECT_FALSE(DecodeMountState(full + "x").ok());

  PersistentCounters c{1, 2, 3, 4, 5, 6, UINT64_MAX};
  auto rc = DecodeCounters(EncodeCounters(c));
  ASSERT_TRUE(rc.ok()) << rc.status().message();
  EXPECT_EQ(rc.value(), c);
  ExpectStrict(EncodeCounters(c), DecodeCounters);
}

TEST(Encoding, FileAndPathRoundTrip) {
  const FileRecord f = SampleFile();
  const std::string key = FileKey(f.file_id);
  ASSERT_EQ(key, std::string("\x01\x02\x03\x04\x05\x06\x07\x08", 8));
  auto r = DecodeFile(key, EncodeFile(f));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value(), f);
  ExpectStrict(EncodeFile(f), [&](std::string_view v) { return DecodeFile(key, v); });
  EXPECT_FALSE(DecodeFile("short", EncodeFile(f)).ok());

  auto p = DecodePathValue(EncodePathValue(42));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p.value(), 42u);
  ExpectStrict(EncodePathValue(42), DecodePathValue);
}

TEST(Encoding, BlockRoundTripAtEverySize) {
  for (uint32_t subs : {1u, 16u, 1024u}) {
    SCOPED_TRACE(subs);
    const BlockRecord b = SampleBlock(subs);
    ASSERT_TRUE(ValidateBlock(b).ok());
    const std::string key = BlockKey(b.file_id, b.index);
    const std::string v = EncodeBlock(b);
    // Version 2: the epoch and the count of rollback versions (none here) follow.
    EXPECT_EQ(v.size(), 1 + 3 * 8 + 4 + 16 * ((subs + 63) / 64) + 4 * subs + 8 + 1);
    auto r = DecodeBlock(key, v);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r.value(), b);
    if (subs <= 16) {
      ExpectStrict(v, [&](std::string_view s) { return DecodeBlock(key, s); });
    }
  }
}

// A block with two rollback versions, as the engine keeps after rewrites.
BlockRecord SampleBlockWithHistory(uint32_t subs) {
  BlockRecord b = SampleBlock(subs);
  b.epoch = 12;
  for (uint64_t k = 1; k <= BlockRecord::kMaxPrevious; ++k) {
    BlockRecord old = SampleBlock(subs);
    old.slot = 100 + k;
    old.generation = b.generation - k;
    old.dirty_seq = 70 - k;
    old.epoch = b.epoch - k;
    old.SetValid(0, k % 2 == 0);
    old.crc[0] = static_cast<uint32_t>(k);
    b.previous.push_back(old.Current());
  }
  return b;
}

TEST(Encoding, BlockWithRollbackVersionsRoundTrips) {
  for (uint32_t subs : {1u, 16u, 1024u}) {
    SCOPED_TRACE(subs);
    const BlockRecord b = SampleBlockWithHistory(subs);
    ASSERT_TRUE(ValidateBlock(b).ok());
    const std::string key = BlockKey(b.file_id, b.index);
    const std::string v = EncodeBlock(b);
    const size_t per_version = 16 * ((subs + 63) / 64) + 4 * subs;
    EXPECT_EQ(v.size(), 1 + 3 * 8 + 4 + per_version + 8 + 1 + 2 * (size_t{32} + per_version));
    auto r = DecodeBlock(key, v);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r.value(), b);
    if (subs <= 16) {
      ExpectStrict(v, [&](std::string_view s) { return DecodeBlock(key, s); });
    }
  }
}

// Records written by format 1 (record version 1: no epoch, no rollback
// versions) still decode, as durable (epoch 0) versions without history.
TEST(Encoding, VersionOneBlockRecordsStillDecode) {
  const BlockRecord b = SampleBlock(16);
  std::string v = EncodeBlock(b);
  v.resize(v.size() - 9);  // the version 1 layout is the version 2 one without its tail
  v[0] = 1;
  const std::string key = BlockKey(b.file_id, b.index);
  auto r = DecodeBlock(key, v);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value(), b);
  EXPECT_EQ(r.value().epoch, 0u);
  EXPECT_TRUE(r.value().previous.empty());
  ExpectStrict(v, [&](std::string_view s) { return DecodeBlock(key, s); });
  v[0] = static_cast<char>(kBlockRecordVersion + 1);
  EXPECT_FALSE(DecodeBlock(key, v).ok());
}

TEST(Encoding, BadRollbackVersionsAreRejected) {
  BlockRecord b = SampleBlockWithHistory(16);
  const std::string key = BlockKey(b.file_id, b.index);
  std::string v = EncodeBlock(b);
  const size_t count_at = 1 + 3 * 8 + 4 + 16 + 64 + 8;
  ASSERT_EQ(static_cast<uint8_t>(v[count_at]), 2);
  v[count_at] = 3;  // more than a record keeps
  auto r = DecodeBlock(key, v);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EUCLEAN);
  v[count_at] = static_cast<char>(255);  // and more than the bytes that follow
  EXPECT_FALSE(DecodeBlock(key, v).ok());

  BlockRecord too_many = b;
  too_many.previous.push_back(b.previous[0]);
  EXPECT_TRUE(ValidateBlock(too_many).IsInvalid());
  BlockRecord wrong_shape = b;
  wrong_shape.previous[1].crc.pop_back();
  EXPECT_TRUE(ValidateBlock(wrong_shape).IsInvalid());
  BlockRecord spare = b;
  spare.previous[0].dirty[0] |= uint64_t{1} << 40;
  EXPECT_TRUE(ValidateBlock(spare).IsInvalid());
}

TEST(Encoding, DurableEpochRoundTrip) {
  auto r = DecodeDurableEpoch(EncodeDurableEpoch(0x123456789abcull));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value(), 0x123456789abcull);
  ExpectStrict(EncodeDurableEpoch(5), DecodeDurableEpoch);
}

TEST(Encoding, CorruptBlocksAreRejected) {
  const BlockRecord b = SampleBlock(16);
  const std::string key = BlockKey(b.file_id, b.index);
  std::string v = EncodeBlock(b);
  // A sub-block count that does not match the bytes that follow; a huge one
  // must not allocate.
  for (uint32_t subs : {0u, 15u, 17u, 0xffffffffu}) {
    std::string bad = v;
    std::memcpy(&bad[25], &subs, 4);  // little-endian host
    auto r = DecodeBlock(key, bad);
    ASSERT_FALSE(r.ok()) << subs;
    EXPECT_EQ(r.status().code(), EUCLEAN);
  }
  // A valid bit beyond the 16th sub-block.
  std::string spare = v;
  spare[29 + 2] = 1;
  EXPECT_FALSE(DecodeBlock(key, spare).ok());
  EXPECT_FALSE(DecodeBlock(key.substr(0, 15), v).ok());
}

TEST(Encoding, UnknownRecordVersionIsRejected) {
  std::string v = EncodeDirty({1, 2, 3});
  v[0] = static_cast<char>(kRecordVersion + 1);
  auto r = DecodeDirty(DirtyKey(1), v);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EUCLEAN);
  EXPECT_NE(r.status().message().find("record version"), std::string::npos);
  v[0] = 0;
  EXPECT_FALSE(DecodeDirty(DirtyKey(1), v).ok());
}

TEST(Encoding, DirtyRoundTrip) {
  DirtyRecord d{0x8000000000000001ull, 5, 6};
  const std::string key = DirtyKey(d.seq);
  auto r = DecodeDirty(key, EncodeDirty(d));
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r.value(), d);
  ExpectStrict(EncodeDirty(d), [&](std::string_view v) { return DecodeDirty(key, v); });
}

TEST(Encoding, ValidateBlockChecksShape) {
  BlockRecord b = SampleBlock(16);
  EXPECT_TRUE(ValidateBlock(b).ok());
  BlockRecord no_subs = b;
  no_subs.crc.clear();
  EXPECT_TRUE(ValidateBlock(no_subs).IsInvalid());
  BlockRecord short_bits = b;
  short_bits.dirty.clear();
  EXPECT_TRUE(ValidateBlock(short_bits).IsInvalid());
  BlockRecord spare = b;
  spare.valid[0] |= uint64_t{1} << 20;
  EXPECT_TRUE(ValidateBlock(spare).IsInvalid());
  BlockRecord full = SampleBlock(64);
  full.valid[0] = ~uint64_t{0};
  EXPECT_TRUE(ValidateBlock(full).ok());
}

TEST(Encoding, KeysSortNumerically) {
  // Bytewise order (RocksDB's) of block keys is (file, index) order: a
  // file's blocks are contiguous and by index, file 1's before file 2's.
  const std::vector<std::pair<uint64_t, uint64_t>> order = {
      {1, 0},          {1, 1}, {1, 255}, {1, 256}, {1, 1ull << 40},
      {1, UINT64_MAX}, {2, 0}, {2, 1},   {256, 0}};
  for (size_t i = 1; i < order.size(); ++i) {
    EXPECT_LT(BlockKey(order[i - 1].first, order[i - 1].second),
              BlockKey(order[i].first, order[i].second))
        << i;
  }
  EXPECT_EQ(BlockKey(3, 9).substr(0, 8), BlockKeyPrefix(3));
  EXPECT_LT(DirtyKey(255), DirtyKey(256));
  EXPECT_LT(FileKey(1), FileKey(1ull << 56));
  uint64_t file = 0;
  uint64_t index = 0;
  ASSERT_TRUE(DecodeBlockKey(BlockKey(1ull << 63, 12345), &file, &index).ok());
  EXPECT_EQ(file, 1ull << 63);
  EXPECT_EQ(index, 12345u);
  EXPECT_EQ(DecodeFileKey(FileKey(UINT64_MAX)).value(), UINT64_MAX);
  EXPECT_FALSE(DecodeDirtyKey("1234567").ok());
}

TEST(Encoding, DecoderNeverReadsPastTheEnd) {
  ValueEncoder e;
  e.PutU32(3);
  e.PutBytes("ab");  // the string claims 3 bytes, 2 follow
  ValueDecoder d(e.buffer());
  EXPECT_EQ(d.GetString(), "");
  EXPECT_TRUE(d.failed());
  EXPECT_EQ(d.GetU64(), 0u);
  Status s = d.Finish("test");
  EXPECT_EQ(s.code(), EUCLEAN);
  EXPECT_EQ(s.message(), "corrupt test record: truncated");
}

}  // namespace
}  // namespace cachefs
