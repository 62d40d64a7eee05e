// The offline check and repair (cache/check.h) of real caches: each test
// builds a cache with the Engine (clean blocks of one file, dirty blocks of
// another), closes it, damages it on purpose, and checks the verdict, the
// problem lines and the exit status; then repairs it and opens it with the
// Engine again, which must serve the right data (a clean block that was
// invalidated is fetched from SOURCE again).
#include "cache/check.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cache/engine.h"
#include "cmd/check_format.h"
#include "common/json.h"
#include "meta/encoding.h"
#include "meta/meta_store.h"

namespace cachefs {
namespace {

constexpr size_t kBlock = size_t{64} << 10;
constexpr uint64_t kSlots = 16;

// Counts reads of SOURCE, so a test sees what was fetched again.
class CountingBacking final : public Backing {
 public:
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    reads++;
    return RealBacking()->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return RealBacking()->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override { return RealBacking()->Sync(fd); }
  Status Stat(int fd, struct stat* st) override { return RealBacking()->Stat(fd, st); }
  std::atomic<int> reads{0};
};

std::string Pattern(size_t n, uint32_t seed) {
  std::string s(n, '\0');
  std::mt19937 rng(seed);
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

std::string ReadPath(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class CheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-check-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    cache_ = base_ + "/cache";
    std::filesystem::create_directories(source_);
    a_data_ = Pattern(3 * kBlock, 1);
    b_data_ = Pattern(2 * kBlock, 2);
    std::ofstream(source_ + "/a", std::ios::binary) << a_data_;
    std::ofstream(source_ + "/b", std::ios::binary) << b_data_;
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  EngineConfig Config() {
    EngineConfig c;
    c.options.cache_dir = cache_;
    c.options.cache_size = SizeOrPercent{false, 0, kSlots * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;  // only Flush() writes back
    c.source = source_;
    c.backing = &backing_;
    return c;
  }
  SourceFdRef Open(const std::string& name) {
    int fd = open((source_ + "/" + name).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    return std::make_shared<SourceFd>(fd);
  }
  static struct stat Stat(const SourceFdRef& fd) {
    struct stat st;
    fstat(fd->get(), &st);
    return st;
  }
  std::string ReadAll(Engine& e, const std::string& name) {
    auto fd = Open(name);
    auto f = e.OpenFile(name, Stat(fd));
    EXPECT_TRUE(f.ok()) << f.status().message();
    if (!f.ok()) return "";
    std::string out(4 * kBlock, '\0');
    auto n = e.Read(*f.value(), fd, 0, out.size(), out.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
    e.WaitForInstalls();
    out.resize(n.ok() ? n.value() : 0);
    return out;
  }

  // A cache with `a` read whole (three clean blocks, slots 0-2) and, unless
  // `clean_only`, two dirty 4 KiB writes into `b`: sub-blocks 1 of block 0
  // and 2 of block 1 (slots 3 and 4). Closed cleanly.
  void Build(bool clean_only = false) {
    auto e = Engine::Open(Config());
    ASSERT_TRUE(e.ok()) << e.status().message();
    EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
    if (!clean_only) {
      auto fd = Open("b");
      auto f = e.value()->OpenFile("b", Stat(fd));
      ASSERT_TRUE(f.ok());
      w1_ = Pattern(4096, 3);
      w2_ = Pattern(4096, 4);
      ASSERT_TRUE(e.value()->Write(*f.value(), fd, 4096, w1_.data(), w1_.size(), false).ok());
      ASSERT_TRUE(
          e.value()->Write(*f.value(), fd, kBlock + 8192, w2_.data(), w2_.size(), false).ok());
    }
  }
  // b as the mount shows it after Build().
  std::string BExpected() const {
    std::string s = b_data_;
    s.replace(4096, w1_.size(), w1_);
    s.replace(kBlock + 8192, w2_.size(), w2_);
    return s;
  }

  std::unique_ptr<MetaStore> Meta() {
    auto m = OpenRocksMetaStore(cache_ + "/meta", false);
    EXPECT_TRUE(m.ok()) << m.status().message();
    return m.ok() ? std::move(m.value()) : nullptr;
  }
  uint64_t FileId(MetaStore& m, const std::string& path) {
    auto id = m.LookupPath(path);
    EXPECT_TRUE(id.ok() && id.value().has_value()) << path;
    return id.ok() && id.value() ? *id.value() : 0;
  }
  BlockRecord Block(MetaStore& m, uint64_t file_id, uint64_t index) {
    auto b = m.GetBlock(file_id, index);
    EXPECT_TRUE(b.ok() && b.value().has_value()) << file_id << "/" << index;
    return b.ok() && b.value() ? *b.value() : BlockRecord{};
  }
  void Commit(MetaStore& m, const MetaBatch& batch) { ASSERT_TRUE(m.Commit(batch, true).ok()); }
  // Flips one byte of the store at `offset` of `slot`.
  void FlipStoreByte(uint64_t slot, uint64_t offset) {
    int fd = open((cache_ + "/store").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c = 0;
    const off_t pos = static_cast<off_t>(slot * kBlock + offset);
    ASSERT_EQ(pread(fd, &c, 1, pos), 1);
    c = static_cast<char>(c ^ 0x5a);
    ASSERT_EQ(pwrite(fd, &c, 1, pos), 1);
    close(fd);
  }

  CheckReport Check(bool repair = false, bool verify = true) {
    CheckOptions o;
    o.repair = repair;
    o.verify_data = verify;
    auto r = CheckCache(cache_, o);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? r.value() : CheckReport{};
  }
  static std::vector<std::string> Codes(const std::vector<CheckProblem>& problems) {
    std::vector<std::string> codes;
    codes.reserve(problems.size());
    for (const CheckProblem& p : problems) codes.push_back(p.code);
    return codes;
  }
  static std::string Lines(const CheckReport& r) {
    std::string out;
    for (const CheckProblem& p : r.problems) out += p.Line() + "\n";
    for (const CheckProblem& p : r.problems_after) out += "after: " + p.Line() + "\n";
    return out;
  }
  static const CheckProblem* Find(const CheckReport& r, const std::string& code) {
    for (const CheckProblem& p : r.problems) {
      if (p.code == code) return &p;
    }
    return nullptr;
  }
  // Repairs and expects the cache clean afterwards, with `exit_code`.
  void RepairExpecting(int exit_code) {
    CheckReport r = Check(true);
    EXPECT_TRUE(r.repaired) << Lines(r);
    EXPECT_EQ(r.repair_error, "");
    ASSERT_TRUE(r.verdict_after.has_value());
    EXPECT_EQ(*r.verdict_after, CheckVerdict::kClean) << Lines(r);
    EXPECT_EQ(CheckExitCode(r), exit_code) << Lines(r);
    CheckReport again = Check();
    EXPECT_EQ(again.verdict, CheckVerdict::kClean) << Lines(again);
    EXPECT_EQ(CheckExitCode(again), kCheckExitClean);
  }

  std::string base_, source_, cache_;
  std::string a_data_, b_data_, w1_, w2_;
  CountingBacking backing_;
};

TEST_F(CheckTest, AHealthyCacheIsClean) {
  Build();
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kClean) << Lines(r);
  EXPECT_TRUE(r.problems.empty());
  EXPECT_EQ(CheckExitCode(r), kCheckExitClean);
  ASSERT_TRUE(r.superblock.has_value());
  EXPECT_EQ(r.superblock->block_size, kBlock);
  EXPECT_TRUE(r.data_verified);
  EXPECT_EQ(r.counts.files, 2u);
  EXPECT_EQ(r.counts.paths, 2u);
  EXPECT_EQ(r.counts.blocks, 5u);
  EXPECT_EQ(r.counts.dirty_blocks, 2u);
  EXPECT_EQ(r.counts.dirty_entries, 2u);
  EXPECT_EQ(r.counts.dirty_bytes, 2u * 4096);
  EXPECT_EQ(r.counts.verified_bytes, r.counts.cached_bytes);
  EXPECT_GE(r.counts.cached_bytes, 3u * kBlock);
  // --repair on a clean cache does nothing and says so.
  CheckReport rep = Check(true);
  EXPECT_FALSE(rep.repaired);
  EXPECT_EQ(CheckExitCode(rep), kCheckExitClean);
  // --no-data reads no data.
  CheckReport meta_only = Check(false, false);
  EXPECT_EQ(meta_only.verdict, CheckVerdict::kClean);
  EXPECT_FALSE(meta_only.data_verified);
  EXPECT_EQ(meta_only.counts.verified_bytes, 0u);
}

TEST_F(CheckTest, CorruptCleanDataIsInvalidatedAndRefetched) {
  Build();
  uint64_t a = 0;
  uint64_t slot = 0;
  {
    auto m = Meta();
    a = FileId(*m, "a");
    slot = Block(*m, a, 1).slot;
  }
  FlipStoreByte(slot, 4096 + 17);  // sub-block 1 of a's block 1
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"bad_clean_data"});
  EXPECT_EQ(r.problems[0].Line(),
            "repairable: block " + std::to_string(a) + "/1 ('a' at 65536, slot " +
                std::to_string(slot) +
                "): clean sub-blocks 1 fail their CRC (repair: invalidate them; they are "
                "refetched from SOURCE when read)");
  EXPECT_EQ(CheckExitCode(r), kCheckExitProblems);
  // Without the data, nothing is seen.
  EXPECT_EQ(Check(false, false).verdict, CheckVerdict::kClean);

  RepairExpecting(kCheckExitRepaired);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok()) << e.status().message();
  const int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
  EXPECT_EQ(backing_.reads, before + 1);  // the one invalidated sub-block, fetched again
  EXPECT_EQ(ReadAll(*e.value(), "b"), BExpected());
}

TEST_F(CheckTest, CorruptDirtyDataIsLossAndRepairKeepsTheRest) {
  Build();
  uint64_t b = 0;
  uint64_t slot = 0;
  {
    auto m = Meta();
    b = FileId(*m, "b");
    slot = Block(*m, b, 0).slot;
  }
  FlipStoreByte(slot, 4096 + 5);  // the dirty sub-block 1 of b's block 0
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken) << Lines(r);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"bad_dirty_data"});
  EXPECT_EQ(r.problems[0].cls, ProblemClass::kDataLoss);
  EXPECT_NE(r.problems[0].what.find("4096 bytes not on SOURCE are lost"), std::string::npos)
      << Lines(r);
  EXPECT_EQ(CheckExitCode(r), kCheckExitBroken);

  RepairExpecting(kCheckExitBroken);  // consistent again, but data was lost
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok()) << e.status().message();
  // The lost sub-block shows SOURCE's bytes; the other write is still there
  // and is written back.
  std::string expect = b_data_;
  expect.replace(kBlock + 8192, w2_.size(), w2_);
  EXPECT_EQ(ReadAll(*e.value(), "b"), expect);
  EXPECT_EQ(e.value()->stats().blocks_dirty, 1u);
  ASSERT_TRUE(e.value()->Flush().ok());
  EXPECT_EQ(ReadPath(source_ + "/b"), expect);
}

TEST_F(CheckTest, DirtyBlocksOfAMissingFileRecordAreKeptAside) {
  Build();
  uint64_t b = 0;
  {
    auto m = Meta();
    b = FileId(*m, "b");
    MetaBatch batch;
    batch.RemoveFile(b);
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken) << Lines(r);
  std::vector<std::string> codes = Codes(r.problems);
  std::sort(codes.begin(), codes.end());
  EXPECT_EQ(codes, (std::vector<std::string>{"blocks_without_file", "path_without_file"}));
  const CheckProblem* p = Find(r, "blocks_without_file");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(p->cls, ProblemClass::kDataLoss);
  EXPECT_EQ(p->where, "file " + std::to_string(b));
  EXPECT_EQ(CheckExitCode(r), kCheckExitBroken);

  RepairExpecting(kCheckExitBroken);
  {
    auto m = Meta();
    auto rec = m->GetFile(b);
    ASSERT_TRUE(rec.ok() && rec.value().has_value());
    EXPECT_EQ(rec.value()->flags, FileRecord::kUnmatched | FileRecord::kConflict);
    EXPECT_TRUE(Block(*m, b, 0).AnyDirty());  // the dirty data is kept
  }
  CheckReport after = Check();
  EXPECT_EQ(after.counts.unmatched_files, 1u);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok()) << e.status().message();
  EXPECT_EQ(e.value()->stats().blocks_dirty, 2u);
  // Never written anywhere: b on SOURCE keeps its bytes, and b through the
  // engine is a new file that shows them.
  ASSERT_TRUE(e.value()->Flush().ok());
  EXPECT_EQ(ReadPath(source_ + "/b"), b_data_);
  EXPECT_EQ(ReadAll(*e.value(), "b"), b_data_);
}

// The daemon does the same at mount without a check: dirty blocks whose
// file record is gone are kept aside (unmatched, conflict), listed as a
// conflict, never written back and never counted as writeback errors.
TEST_F(CheckTest, EngineKeepsAsideDirtyBlocksOfAMissingFileRecordAtMount) {
  Build();
  uint64_t b = 0;
  {
    auto m = Meta();
    b = FileId(*m, "b");
    MetaBatch batch;
    batch.RemoveFile(b);
    Commit(*m, batch);
  }
  {
    auto e = Engine::Open(Config());
    ASSERT_TRUE(e.ok()) << e.status().message();
    EXPECT_EQ(e.value()->stats().blocks_dirty, 2u);
    auto conflicts = e.value()->Conflicts("");
    ASSERT_TRUE(conflicts.ok()) << conflicts.status().message();
    ASSERT_EQ(conflicts.value().size(), 1u);
    EXPECT_EQ(conflicts.value()[0].path, "");  // no name left: kept aside
    ASSERT_TRUE(e.value()->Flush().ok());
    EXPECT_EQ(e.value()->stats().blocks_dirty, 2u);
    EXPECT_EQ(e.value()->stats().writeback_errors, 0u);
    EXPECT_EQ(ReadPath(source_ + "/b"), b_data_);
  }
  auto m = Meta();
  auto rec = m->GetFile(b);
  ASSERT_TRUE(rec.ok() && rec.value().has_value());
  EXPECT_EQ(rec.value()->flags, FileRecord::kUnmatched | FileRecord::kConflict);
  EXPECT_TRUE(Block(*m, b, 0).AnyDirty());
}

TEST_F(CheckTest, CleanBlocksOfAMissingFileRecordAreDropped) {
  Build();
  uint64_t a = 0;
  {
    auto m = Meta();
    a = FileId(*m, "a");
    MetaBatch batch;
    batch.RemoveFile(a);
    batch.RemovePath("a");
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"blocks_without_file"});
  RepairExpecting(kCheckExitRepaired);
  EXPECT_EQ(Check().counts.blocks, 2u);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
}

TEST_F(CheckTest, DanglingDirtyEntriesAreRemoved) {
  Build();
  {
    auto m = Meta();
    const uint64_t a = FileId(*m, "a");
    MetaBatch batch;
    batch.Put(DirtyRecord{900, a, 0});   // a clean block
    batch.Put(DirtyRecord{901, 77, 5});  // no such block
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems),
            (std::vector<std::string>{"dirty_entry_dangling", "dirty_entry_dangling"}));
  EXPECT_NE(r.problems[0].what.find("which is clean"), std::string::npos) << Lines(r);
  EXPECT_NE(r.problems[1].what.find("which is not cached"), std::string::npos) << Lines(r);
  EXPECT_EQ(r.problems[1].where, "dirty entry 901");
  RepairExpecting(kCheckExitRepaired);
  EXPECT_EQ(Check().counts.dirty_entries, 2u);
}

TEST_F(CheckTest, AMissingDirtyEntryIsAddedBackAndWritebackWorks) {
  Build();
  uint64_t seq = 0;
  {
    auto m = Meta();
    const BlockRecord blk = Block(*m, FileId(*m, "b"), 1);
    seq = blk.dirty_seq;
    ASSERT_NE(seq, 0u);
    MetaBatch batch;
    batch.RemoveDirty(seq);
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"dirty_entry_missing"});
  EXPECT_EQ(r.problems[0].repair, "add entry " + std::to_string(seq));
  RepairExpecting(kCheckExitRepaired);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE(e.value()->Flush().ok());
  EXPECT_EQ(ReadPath(source_ + "/b"), BExpected());
}

TEST_F(CheckTest, TwoBlocksOnOneSlotKeepTheOneWhoseDataVerifies) {
  Build();
  {
    auto m = Meta();
    const uint64_t a = FileId(*m, "a");
    BlockRecord two = Block(*m, a, 2);
    two.slot = Block(*m, a, 1).slot;
    MetaBatch batch;
    batch.Put(two);
    Commit(*m, batch);
  }
  // Metadata only: the newer generation wins, the other is dropped.
  CheckReport meta_only = Check(false, false);
  EXPECT_EQ(meta_only.verdict, CheckVerdict::kRepairable) << Lines(meta_only);
  EXPECT_EQ(Codes(meta_only.problems), std::vector<std::string>{"slot_shared"});
  // With the data, block 2's CRCs fail on block 1's data.
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"bad_clean_data"});
  EXPECT_NE(r.problems[0].where.find("/2 ('a'"), std::string::npos) << Lines(r);
  RepairExpecting(kCheckExitRepaired);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok());
  const int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
  EXPECT_EQ(backing_.reads, before + 1);  // block 2 only
}

TEST_F(CheckTest, ADirtyBlockWinsItsSlotOverACleanOne) {
  Build();
  {
    auto m = Meta();
    BlockRecord a0 = Block(*m, FileId(*m, "a"), 0);
    a0.slot = Block(*m, FileId(*m, "b"), 0).slot;
    a0.generation += 1000;  // newer, and still loses to dirty data
    MetaBatch batch;
    batch.Put(a0);
    Commit(*m, batch);
  }
  CheckReport r = Check(false, false);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"slot_shared"}) << Lines(r);
  EXPECT_NE(r.problems[0].where.find("/0 ('a'"), std::string::npos) << Lines(r);
  RepairExpecting(kCheckExitRepaired);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
  EXPECT_EQ(ReadAll(*e.value(), "b"), BExpected());
}

TEST_F(CheckTest, SlotsOutOfRange) {
  Build();
  {
    auto m = Meta();
    BlockRecord a0 = Block(*m, FileId(*m, "a"), 0);
    a0.slot = kSlots + 5;
    BlockRecord b1 = Block(*m, FileId(*m, "b"), 1);
    b1.slot = kSlots;
    MetaBatch batch;
    batch.Put(a0);
    batch.Put(b1);
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken) << Lines(r);
  EXPECT_EQ(Codes(r.problems),
            (std::vector<std::string>{"slot_out_of_range", "slot_out_of_range"}));
  EXPECT_EQ(r.problems[0].cls, ProblemClass::kRepairable);  // a: clean
  EXPECT_EQ(r.problems[1].cls, ProblemClass::kDataLoss);    // b: dirty
  RepairExpecting(kCheckExitBroken);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
  std::string expect = b_data_;
  expect.replace(4096, w1_.size(), w1_);
  EXPECT_EQ(ReadAll(*e.value(), "b"), expect);
}

TEST_F(CheckTest, AShortStoreIsExtendedAndWhatItLostIsRefetched) {
  Build(/*clean_only=*/true);
  // Slots 0-2 hold a; cut the store in the middle of slot 1.
  ASSERT_EQ(truncate((cache_ + "/store").c_str(), kBlock + kBlock / 2), 0);
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems),
            (std::vector<std::string>{"store_short", "bad_clean_data", "bad_clean_data"}));
  EXPECT_NE(r.problems[1].what.find("sub-blocks 8-15 lie past the end of the store"),
            std::string::npos)
      << Lines(r);
  // The engine refuses the short store until then.
  EXPECT_FALSE(Engine::Open(Config()).ok());
  RepairExpecting(kCheckExitRepaired);
  struct stat st;
  ASSERT_EQ(stat((cache_ + "/store").c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kSlots * kBlock);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok()) << e.status().message();
  const int before = backing_.reads;
  EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
  EXPECT_GT(backing_.reads, before);
}

TEST_F(CheckTest, AShortStoreThatCutDirtyDataIsBroken) {
  Build();
  ASSERT_EQ(truncate((cache_ + "/store").c_str(), 0), 0);
  CheckReport r = Check(false, false);  // seen without reading any data
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken) << Lines(r);
  EXPECT_NE(Find(r, "bad_dirty_data"), nullptr) << Lines(r);
  RepairExpecting(kCheckExitBroken);
  auto e = Engine::Open(Config());
  ASSERT_TRUE(e.ok()) << e.status().message();
  EXPECT_EQ(e.value()->stats().blocks_cached, 0u);
  EXPECT_EQ(ReadAll(*e.value(), "b"), b_data_);
}

TEST_F(CheckTest, StalePathsAndLostNamesAreSetRight) {
  {
    // A hard link, then the first name goes (the engine keeps the record's
    // path right itself since session 8: below, the record is set back to
    // the name that went, as older versions left it).
    auto e = Engine::Open(Config());
    ASSERT_TRUE(e.ok());
    EXPECT_EQ(ReadAll(*e.value(), "a"), a_data_);
    EXPECT_EQ(ReadAll(*e.value(), "b"), b_data_);
    ASSERT_EQ(link((source_ + "/a").c_str(), (source_ + "/c").c_str()), 0);
    ASSERT_TRUE(e.value()->Link("a", "c").ok());
    ASSERT_EQ(unlink((source_ + "/a").c_str()), 0);
    ASSERT_TRUE(e.value()->Unlink("a", false).ok());
  }
  uint64_t b = 0;
  {
    auto m = Meta();
    b = FileId(*m, "b");
    MetaBatch batch;
    batch.RemovePath("b");
    auto c = m->GetFile(FileId(*m, "c"));
    ASSERT_TRUE(c.ok() && c.value().has_value());
    EXPECT_EQ(c.value()->path, "c");
    FileRecord stale = *c.value();
    stale.path = "a";
    batch.Put(stale);
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kRepairable) << Lines(r);
  EXPECT_EQ(Codes(r.problems), (std::vector<std::string>{"file_path_stale", "file_unnamed"}));
  EXPECT_EQ(r.problems[0].repair, "set its path to 'c', where writeback writes");
  RepairExpecting(kCheckExitRepaired);
  auto m = Meta();
  auto id = m->LookupPath("b");
  ASSERT_TRUE(id.ok() && id.value().has_value());
  EXPECT_EQ(*id.value(), b);
  auto c = m->GetFile(FileId(*m, "c"));
  ASSERT_TRUE(c.ok() && c.value().has_value());
  EXPECT_EQ(c.value()->path, "c");
}

TEST_F(CheckTest, ABadSuperblockIsFatal) {
  Build();
  {
    auto m = Meta();
    auto sb = m->GetSuperblock();
    ASSERT_TRUE(sb.ok() && sb.value().has_value());
    Superblock newer = *sb.value();
    newer.format_version = kFormatVersion + 1;
    MetaBatch batch;
    batch.Put(newer);
    Commit(*m, batch);
  }
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"format_unknown"});
  EXPECT_FALSE(r.superblock.has_value());
  CheckReport rep = Check(true);
  EXPECT_FALSE(rep.repaired);
  EXPECT_EQ(rep.repair_error, "not attempted: the cache has fatal problems");
  EXPECT_EQ(CheckExitCode(rep), kCheckExitBroken);

  // Garbage in place of the superblock, written with RocksDB directly.
  {
    rocksdb::Options o;
    std::vector<rocksdb::ColumnFamilyDescriptor> descs;
    for (const char* n : {"default", "files", "paths", "blocks", "dirty"}) {
      descs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, cache_ + "/meta", descs, &h, &db).ok());
    ASSERT_TRUE(db->Put({}, h[0], "superblock", "CACHEFS1\x01").ok());
    for (auto* x : h) db->DestroyColumnFamilyHandle(x);
    delete db;
  }
  r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken);
  EXPECT_EQ(Codes(r.problems), std::vector<std::string>{"superblock_corrupt"});
  EXPECT_NE(r.problems[0].Line().find("fatal: superblock: "), std::string::npos) << Lines(r);
  EXPECT_NE(r.problems[0].what.find("corrupt superblock record"), std::string::npos) << Lines(r);
}

TEST_F(CheckTest, AMissingStoreIsFatal) {
  Build();
  ASSERT_EQ(unlink((cache_ + "/store").c_str()), 0);
  CheckReport r = Check();
  EXPECT_EQ(r.verdict, CheckVerdict::kBroken) << Lines(r);
  ASSERT_NE(Find(r, "store_missing"), nullptr) << Lines(r);
  EXPECT_EQ(CheckExitCode(Check(true)), kCheckExitBroken);
}

TEST_F(CheckTest, ACacheInUseOrNoCacheAtAllIsRefused) {
  Build();
  {
    auto e = Engine::Open(Config());
    ASSERT_TRUE(e.ok());
    auto r = CheckCache(cache_, CheckOptions{});
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), EBUSY);
    EXPECT_NE(r.status().message().find("is in use by another mount"), std::string::npos)
        << r.status().message();
    auto d = DumpCache(cache_, false);
    ASSERT_FALSE(d.ok());
    EXPECT_EQ(d.status().code(), EBUSY);
  }
  auto missing = CheckCache(base_ + "/nothing", CheckOptions{});
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ENOENT);
  EXPECT_FALSE(std::filesystem::exists(base_ + "/nothing"));  // not made by the lock
  auto not_cache = CheckCache(source_, CheckOptions{});
  ASSERT_FALSE(not_cache.ok());
  EXPECT_EQ(
      not_cache.status().message(),
      "'" + source_ + "' is not a cachefs cache directory (no metadata in " + source_ + "/meta)");
  EXPECT_FALSE(std::filesystem::exists(source_ + "/lock"));
}

TEST_F(CheckTest, DumpShowsFilesBlocksAndBitmaps) {
  Build();
  auto d = DumpCache(cache_, true);
  ASSERT_TRUE(d.ok()) << d.status().message();
  EXPECT_EQ(d->superblock.source, source_);
  ASSERT_TRUE(d->mount_state.has_value());
  EXPECT_TRUE(d->mount_state->clean_shutdown);
  ASSERT_EQ(d->files.size(), 2u);
  EXPECT_EQ(d->files[0].record.path, "a");
  EXPECT_EQ(d->files[0].names, std::vector<std::string>{"a"});
  EXPECT_EQ(d->files[0].cached_blocks, 3u);
  EXPECT_EQ(d->files[0].dirty_blocks, 0u);
  EXPECT_EQ(d->files[1].record.path, "b");
  EXPECT_EQ(d->files[1].dirty_blocks, 2u);
  EXPECT_EQ(d->blocks, 5u);
  EXPECT_EQ(d->dirty_entries, 2u);
  ASSERT_EQ(d->block_records.size(), 5u);

  JsonValue j = CacheDumpJson(d.value(), true);
  auto parsed = ParseJson(j.Serialize(2));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed.value(), j);
  uint64_t v = 0;
  ASSERT_TRUE(j.Find("version")->as_uint64(&v));
  EXPECT_EQ(v, 1u);
  const JsonValue& blocks = *j.Find("blocks");
  ASSERT_EQ(blocks.items().size(), 5u);
  // a's blocks are whole; b's block 0 holds (and has dirty) sub-block 1 only.
  EXPECT_EQ(*blocks.items()[0].Find("valid")->as_string(), "ffff");
  EXPECT_EQ(*blocks.items()[0].Find("dirty")->as_string(), "0000");
  EXPECT_EQ(*blocks.items()[3].Find("dirty")->as_string(), "0002");
  EXPECT_EQ(*blocks.items()[4].Find("dirty")->as_string(), "0004");
  const JsonValue& files = *j.Find("files");
  EXPECT_EQ(*files.items()[1].Find("path")->as_string(), "b");
  ASSERT_TRUE(files.items()[1].Find("dirty_blocks")->as_uint64(&v));
  EXPECT_EQ(v, 2u);
  EXPECT_TRUE(files.items()[1].Find("flags")->items().empty());
  EXPECT_FALSE(CacheDumpJson(d.value(), false).Find("blocks") != nullptr);

  std::string text = FormatCacheDump(d.value(), true);
  EXPECT_NE(text.find("mode          writeback"), std::string::npos) << text;
  EXPECT_NE(text.find("FILE  INDEX  SLOT"), std::string::npos) << text;
}

TEST_F(CheckTest, ReportJsonAndText) {
  Build();
  {
    auto m = Meta();
    MetaBatch batch;
    batch.Put(DirtyRecord{900, 77, 5});
    Commit(*m, batch);
  }
  CheckReport r = Check();
  JsonValue j = CheckReportJson(r, false);
  ASSERT_TRUE(ParseJson(j.Serialize()).ok());
  EXPECT_EQ(*j.Find("verdict")->as_string(), "repairable");
  uint64_t code = 0;
  ASSERT_TRUE(j.Find("exit_code")->as_uint64(&code));
  EXPECT_EQ(code, 4u);
  EXPECT_EQ(j.Find("repair"), nullptr);
  const JsonValue& p = j.Find("problems")->items().at(0);
  EXPECT_EQ(*p.Find("class")->as_string(), "repairable");
  EXPECT_EQ(*p.Find("code")->as_string(), "dirty_entry_dangling");
  EXPECT_EQ(*p.Find("where")->as_string(), "dirty entry 900");
  std::string text = FormatCheckReport(r, false);
  EXPECT_NE(text.find("repairable: dirty entry 900: points at block 77/5"), std::string::npos)
      << text;
  EXPECT_NE(text.find("verdict: repairable: 1 problems, none loses data (cachefsctl check "
                      "--repair fixes them)"),
            std::string::npos)
      << text;

  CheckReport rep = Check(true);
  j = CheckReportJson(rep, true);
  ASSERT_NE(j.Find("repair"), nullptr);
  EXPECT_EQ(*j.Find("repair")->Find("verdict")->as_string(), "clean");
  EXPECT_TRUE(j.Find("repair")->Find("error")->is_null());
  ASSERT_TRUE(j.Find("exit_code")->as_uint64(&code));
  EXPECT_EQ(code, 1u);
  EXPECT_NE(FormatCheckReport(rep, true).find("after repair: clean"), std::string::npos);
}

TEST(CheckFormatTest, BitmapHex) {
  EXPECT_EQ(BitmapHex({0xffff}, 16), "ffff");
  EXPECT_EQ(BitmapHex({0x1}, 1), "1");
  EXPECT_EQ(BitmapHex({0x5}, 5), "05");
  EXPECT_EQ(BitmapHex({0x1, 0x8000000000000000ull}, 128),
            "8000000000000000"
            "0000000000000001");
  EXPECT_EQ(FileFlagNames(FileRecord::kConflict | FileRecord::kUnmatched | 0x100),
            (std::vector<std::string>{"conflict", "unmatched", "0x100"}));
}

}  // namespace
}  // namespace cachefs
