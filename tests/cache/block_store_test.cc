// One typed suite run against every BlockStore (FileStore, PmemStore), plus
// the tests that only make sense for one of them. The pmem instantiation is
// named "PmemStore" so that meson's second run (--gtest_filter=*Pmem* with
// PMEM2_FORCE_GRANULARITY=CACHE_LINE) takes the DAX code path.
#include "cache/block_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cache/file_store.h"
#include "cache/pmem_store.h"

namespace cachefs {
namespace {

std::string TempDir() {
  const char* t = std::getenv("TMPDIR");
  return t != nullptr && *t != '\0' ? t : "/tmp";
}

std::string UniquePath(const std::string& dir, const std::string& tag) {
  static std::atomic<int> counter{0};
  return dir + "/cachefs_store_test_" + std::to_string(getpid()) + "_" + tag + "_" +
         std::to_string(counter.fetch_add(1)) + ".store";
}

// The byte at `i` of slot `slot` in a write made with `seed`.
uint8_t Pattern(uint64_t slot, uint64_t i, unsigned seed) {
  return static_cast<uint8_t>(slot * 131 + i * 7 + uint64_t{seed} * 31 + (i >> 8));
}

std::vector<uint8_t> Fill(uint64_t slot, size_t len, unsigned seed) {
  std::vector<uint8_t> v(len);
  for (size_t i = 0; i < len; ++i) v[i] = Pattern(slot, i, seed);
  return v;
}

bool Exists(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0;
}

// A tiny tmpfs, unmounted (lazily, so a failed test cannot leave it busy)
// and removed on every path out of the test.
class TmpfsMount {
 public:
  explicit TmpfsMount(const std::string& size) {
    std::string tmpl = TempDir() + "/cachefs_store_test_mnt_XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) {
      error_ = std::string("mkdtemp: ") + std::strerror(errno);
      return;
    }
    dir_ = tmpl;
    std::string opts = "size=" + size + ",mode=0700";
    if (mount("none", dir_.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      error_ = std::string("mount tmpfs: ") + std::strerror(errno);
      return;
    }
    mounted_ = true;
  }
  ~TmpfsMount() {
    if (mounted_) umount2(dir_.c_str(), MNT_DETACH);
    if (!dir_.empty()) rmdir(dir_.c_str());
  }
  TmpfsMount(const TmpfsMount&) = delete;
  TmpfsMount& operator=(const TmpfsMount&) = delete;

  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  // Names in the mount other than . and ..
  int Entries() const {
    DIR* d = opendir(dir_.c_str());
    if (d == nullptr) return -1;
    int n = 0;
    while (dirent* e = readdir(d)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
    }
    closedir(d);
    return n;
  }

 private:
  std::string dir_;
  std::string error_;
  bool mounted_ = false;
};

struct FileKind {
  static constexpr StoreKind kKind = StoreKind::kFile;
  static std::string Dir() { return TempDir(); }
};
// Pmem stores live on /dev/shm: memory, like pmem, and never DAX, so the
// page-granularity path runs unless PMEM2_FORCE_GRANULARITY says otherwise.
struct PmemKind {
  static constexpr StoreKind kKind = StoreKind::kPmem;
  static std::string Dir() { return "/dev/shm"; }
};

class KindNames {
 public:
  template <typename T>
  static std::string GetName(int /*index*/) {
    return T::kKind == StoreKind::kFile ? "FileStore" : "PmemStore";
  }
};

template <typename K>
class BlockStoreTest : public ::testing::Test {
 protected:
  static constexpr uint32_t kBlock = 64 * 1024;
  static constexpr uint64_t kSlots = 16;

  void SetUp() override {
    cfg_.kind = K::kKind;
    cfg_.path = UniquePath(K::Dir(), "typed");
    cfg_.block_size = kBlock;
    cfg_.slot_count = kSlots;
  }
  void TearDown() override {
    store_.reset();
    unlink(cfg_.path.c_str());
  }

  // Opens cfg_ into store_; false (with a test failure) when it cannot.
  bool OpenStore(bool create = true) {
    store_.reset();
    Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(cfg_, create);
    EXPECT_TRUE(r.ok()) << r.status().message();
    if (!r.ok()) return false;
    store_ = std::move(r.value());
    return true;
  }

  std::vector<uint8_t> ReadSlot(uint64_t slot) {
    std::vector<uint8_t> v(kBlock);
    Status s = store_->Read(slot, 0, kBlock, v.data());
    EXPECT_TRUE(s.ok()) << s.message();
    return v;
  }

  StoreConfig cfg_;
  std::unique_ptr<BlockStore> store_;
};

using StoreKinds = ::testing::Types<FileKind, PmemKind>;
TYPED_TEST_SUITE(BlockStoreTest, StoreKinds, KindNames);

TYPED_TEST(BlockStoreTest, CreatesSizedFileAndReportsKind) {
  ASSERT_TRUE(this->OpenStore());
  EXPECT_STREQ(this->store_->kind(), TypeParam::kKind == StoreKind::kFile ? "file" : "pmem");
  EXPECT_EQ(this->store_->block_size(), this->kBlock);
  EXPECT_EQ(this->store_->slot_count(), this->kSlots);
  struct stat st {};
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), this->kBlock * this->kSlots);
  // Preallocated: every block is backed already.
  EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, this->kBlock * this->kSlots);
}

TYPED_TEST(BlockStoreTest, ReopenKeepsPersistedData) {
  ASSERT_TRUE(this->OpenStore());
  for (uint64_t s = 0; s < this->kSlots; ++s) {
    std::vector<uint8_t> d = Fill(s, this->kBlock, 1);
    ASSERT_TRUE(this->store_->Write(s, 0, this->kBlock, d.data()).ok());
  }
  ASSERT_TRUE(this->store_->Persist().ok());
  this->store_.reset();
  ASSERT_TRUE(this->OpenStore(/*create=*/false));
  for (uint64_t s = 0; s < this->kSlots; ++s) {
    EXPECT_EQ(this->ReadSlot(s), Fill(s, this->kBlock, 1)) << "slot " << s;
  }
}

TYPED_TEST(BlockStoreTest, RangesOutsideTheSlotAreRefusedAndWriteNothing) {
  ASSERT_TRUE(this->OpenStore());
  const uint32_t b = this->kBlock;
  const uint64_t last = this->kSlots - 1;
  for (uint64_t s : {uint64_t{5}, uint64_t{6}, last}) {
    std::vector<uint8_t> d = Fill(s, b, 2);
    ASSERT_TRUE(this->store_->Write(s, 0, b, d.data()).ok());
  }
  const uint64_t writes_before = this->store_->counters().writes.load();
  std::vector<uint8_t> junk(size_t{2} * b, 0xEE);
  EXPECT_EQ(this->store_->Write(5, b - 10, 20, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(5, 0, b + 1, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(5, b + 1, 0, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(5, UINT32_MAX, 2, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(last, 1, b, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(this->kSlots, 0, 16, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Write(UINT64_MAX, 0, 16, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Read(this->kSlots, 0, 16, junk.data()).code(), EINVAL);
  EXPECT_EQ(this->store_->Read(5, 1, b, junk.data()).code(), EINVAL);
  Status s = this->store_->Write(5, b - 10, 20, junk.data());
  EXPECT_FALSE(s.message().empty());
  EXPECT_EQ(s.message().find('\n'), std::string::npos);
  // Exactly up to the end, and empty at the end, are fine.
  EXPECT_TRUE(this->store_->Write(5, b - 10, 0, junk.data()).ok());
  EXPECT_TRUE(this->store_->Write(5, b, 0, junk.data()).ok());
  for (uint64_t slot : {uint64_t{5}, uint64_t{6}, last}) {
    EXPECT_EQ(this->ReadSlot(slot), Fill(slot, b, 2)) << "slot " << slot;
  }
  EXPECT_EQ(this->store_->counters().writes.load(), writes_before);
  EXPECT_EQ(this->store_->counters().errors.load(), 0u);
}

TYPED_TEST(BlockStoreTest, PartialWritesAtOddOffsets) {
  ASSERT_TRUE(this->OpenStore());
  const uint32_t b = this->kBlock;
  std::vector<uint8_t> model(b, 0);
  ASSERT_TRUE(this->store_->Write(3, 0, b, model.data()).ok());
  struct Piece {
    uint32_t offset;
    uint32_t len;
  };
  // Single bytes, a write across a 4 KiB sub-block boundary, odd lengths,
  // and the last bytes of the slot.
  const Piece pieces[] = {{1, 1}, {4095, 333}, {8191, 2}, {12345, 6789}, {b - 7, 7}, {0, 1}};
  unsigned seed = 10;
  for (const Piece& p : pieces) {
    std::vector<uint8_t> d = Fill(3, p.len, ++seed);
    ASSERT_TRUE(this->store_->Write(3, p.offset, p.len, d.data()).ok());
    std::memcpy(model.data() + p.offset, d.data(), p.len);
  }
  EXPECT_EQ(this->ReadSlot(3), model);
  std::vector<uint8_t> part(333);
  ASSERT_TRUE(this->store_->Read(3, 4095, 333, part.data()).ok());
  EXPECT_EQ(0, std::memcmp(part.data(), model.data() + 4095, 333));
  // A direct read (a hint) returns the same bytes, aligned or not.
  std::unique_ptr<uint8_t, decltype(&std::free)> direct(
      static_cast<uint8_t*>(std::aligned_alloc(kDirectIoAlignment, b)), &std::free);
  ASSERT_NE(direct, nullptr);
  ASSERT_TRUE(this->store_->Read(3, 0, b, direct.get(), StoreRead::kDirect).ok());
  EXPECT_EQ(0, std::memcmp(direct.get(), model.data(), b));
  ASSERT_TRUE(this->store_->Read(3, 4095, 333, part.data(), StoreRead::kDirect).ok());
  EXPECT_EQ(0, std::memcmp(part.data(), model.data() + 4095, 333));
  // Persisted and reopened, the pieces are still there.
  ASSERT_TRUE(this->store_->Persist().ok());
  ASSERT_TRUE(this->OpenStore(/*create=*/false));
  EXPECT_EQ(this->ReadSlot(3), model);
}

TYPED_TEST(BlockStoreTest, ConcurrentWritersOnDistinctSlots) {
  ASSERT_TRUE(this->OpenStore());
  constexpr int kThreads = 4;
  constexpr uint32_t kChunk = 4096;
  const uint32_t b = this->kBlock;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (uint64_t s = t; s < this->kSlots; s += kThreads) {
        std::vector<uint8_t> d = Fill(s, b, 3);
        // Chunks out of order, with persists from every thread in between.
        for (uint32_t c = 0; c < b / kChunk; ++c) {
          uint32_t off = ((c * 7) % (b / kChunk)) * kChunk;
          if (!this->store_->Write(s, off, kChunk, d.data() + off).ok()) ++failures;
        }
        if (!this->store_->Persist().ok()) ++failures;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  for (uint64_t s = 0; s < this->kSlots; ++s) {
    EXPECT_EQ(this->ReadSlot(s), Fill(s, b, 3)) << "slot " << s;
  }
  EXPECT_EQ(this->store_->counters().writes.load(), this->kSlots * (b / kChunk));
  EXPECT_EQ(this->store_->counters().persists.load(), this->kSlots);
}

TYPED_TEST(BlockStoreTest, CountersCountSuccessfulCalls) {
  ASSERT_TRUE(this->OpenStore());
  const StoreCounters& c = this->store_->counters();
  std::vector<uint8_t> buf(this->kBlock, 0x5A);
  ASSERT_TRUE(this->store_->Write(0, 0, 4096, buf.data()).ok());
  ASSERT_TRUE(this->store_->Write(1, 100, 10, buf.data()).ok());
  ASSERT_TRUE(this->store_->Read(0, 0, 4096, buf.data()).ok());
  ASSERT_TRUE(this->store_->Read(1, 100, 10, buf.data()).ok());
  ASSERT_TRUE(this->store_->Read(1, 0, 1, buf.data()).ok());
  ASSERT_TRUE(this->store_->Persist().ok());
  ASSERT_TRUE(this->store_->Persist().ok());  // nothing new: still a persist
  ASSERT_TRUE(this->store_->Discard(2).ok());
  EXPECT_FALSE(this->store_->Read(this->kSlots, 0, 1, buf.data()).ok());
  EXPECT_EQ(c.writes.load(), 2u);
  EXPECT_EQ(c.write_bytes.load(), 4106u);
  EXPECT_EQ(c.reads.load(), 3u);
  EXPECT_EQ(c.read_bytes.load(), 4107u);
  EXPECT_EQ(c.persists.load(), 2u);
  EXPECT_EQ(c.discards.load(), 1u);
  EXPECT_EQ(c.errors.load(), 0u);
}

TYPED_TEST(BlockStoreTest, DiscardLeavesOtherSlotsAndTheSlotUsable) {
  ASSERT_TRUE(this->OpenStore());
  const uint32_t b = this->kBlock;
  for (uint64_t s : {uint64_t{1}, uint64_t{2}, uint64_t{3}}) {
    std::vector<uint8_t> d = Fill(s, b, 4);
    ASSERT_TRUE(this->store_->Write(s, 0, b, d.data()).ok());
  }
  ASSERT_TRUE(this->store_->Persist().ok());
  struct stat before {};
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &before), 0);
  ASSERT_TRUE(this->store_->Discard(2).ok());
  EXPECT_EQ(this->store_->Discard(this->kSlots).code(), EINVAL);
  EXPECT_EQ(this->ReadSlot(1), Fill(1, b, 4));
  EXPECT_EQ(this->ReadSlot(3), Fill(3, b, 4));
  struct stat after {};
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &after), 0);
  EXPECT_EQ(after.st_size, before.st_size);
  if (TypeParam::kKind == StoreKind::kFile && after.st_blocks < before.st_blocks) {
    // The hole was punched: the slot reads as zeros.
    EXPECT_EQ(this->ReadSlot(2), std::vector<uint8_t>(b, 0));
  }
  std::vector<uint8_t> d = Fill(2, b, 5);
  ASSERT_TRUE(this->store_->Write(2, 0, b, d.data()).ok());
  ASSERT_TRUE(this->store_->Persist().ok());
  EXPECT_EQ(this->ReadSlot(2), d);
}

TYPED_TEST(BlockStoreTest, RefusesTooSmallExistingFile) {
  const off_t small = static_cast<off_t>(this->kBlock * this->kSlots - 4096);
  int fd = open(this->cfg_.path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(ftruncate(fd, small), 0);
  close(fd);
  for (bool create : {false, true}) {
    Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(this->cfg_, create);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), EINVAL);
    EXPECT_NE(r.status().message().find(this->cfg_.path), std::string::npos)
        << r.status().message();
  }
  struct stat st {};
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, small);  // neither grown nor otherwise touched
}

TYPED_TEST(BlockStoreTest, AcceptsLargerExistingFile) {
  int fd = open(this->cfg_.path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(this->kBlock * (this->kSlots + 3))), 0);
  close(fd);
  ASSERT_TRUE(this->OpenStore(/*create=*/false));
  if (TypeParam::kKind == StoreKind::kPmem) {
    // The sparse file's holes were filled: no store into the mapping needs
    // an allocation (SIGBUS on a full file system).
    struct stat st {};
    ASSERT_EQ(stat(this->cfg_.path.c_str(), &st), 0);
    EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, this->kBlock * this->kSlots);
  }
  std::vector<uint8_t> d = Fill(this->kSlots - 1, this->kBlock, 6);
  ASSERT_TRUE(this->store_->Write(this->kSlots - 1, 0, this->kBlock, d.data()).ok());
  EXPECT_EQ(this->ReadSlot(this->kSlots - 1), d);
}

TYPED_TEST(BlockStoreTest, MissingFileWithoutCreateIsRefused) {
  Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(this->cfg_, /*create=*/false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ENOENT);
  EXPECT_NE(r.status().message().find(this->cfg_.path), std::string::npos);
  EXPECT_FALSE(Exists(this->cfg_.path));
}

TYPED_TEST(BlockStoreTest, FilesAreOpenOnlyToTheirOwner) {
  mode_t old_umask = umask(0);  // the mode must not depend on the umask
  bool opened = this->OpenStore();
  umask(old_umask);
  ASSERT_TRUE(opened);
  struct stat st {};
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // An existing store file that others may read is closed to them.
  this->store_.reset();
  ASSERT_EQ(chmod(this->cfg_.path.c_str(), 0644), 0);
  ASSERT_TRUE(this->OpenStore(/*create=*/false));
  ASSERT_EQ(stat(this->cfg_.path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TYPED_TEST(BlockStoreTest, FullDeviceGivesEnospcAndLeavesNothing) {
  TmpfsMount fs("1M");
  if (!fs.mounted()) GTEST_SKIP() << "needs root to mount a tmpfs: " << fs.error();
  StoreConfig cfg = this->cfg_;
  cfg.path = fs.dir() + "/store";
  cfg.slot_count = 64;  // 4 MiB on a 1 MiB file system
  Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(cfg, /*create=*/true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ENOSPC) << r.status().message();
  EXPECT_NE(r.status().message().find("cannot allocate 4.0 MiB"), std::string::npos)
      << r.status().message();
  EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
  EXPECT_EQ(fs.Entries(), 0);
  // What fits is created.
  cfg.slot_count = 8;
  Result<std::unique_ptr<BlockStore>> small = OpenBlockStore(cfg, /*create=*/true);
  EXPECT_TRUE(small.ok()) << small.status().message();
}

TEST(StoreConfigTest, ValidateRefusesBadFields) {
  StoreConfig good;
  good.path = "/tmp/x";
  good.block_size = 4096;
  good.slot_count = 1;
  EXPECT_TRUE(good.Validate().ok());
  StoreConfig c = good;
  c.path.clear();
  EXPECT_TRUE(c.Validate().IsInvalid());
  for (uint32_t bs : {0u, 2048u, 4097u, 12288u, 8u << 20}) {
    c = good;
    c.block_size = bs;
    EXPECT_TRUE(c.Validate().IsInvalid()) << bs;
  }
  c = good;
  c.block_size = 4u << 20;
  EXPECT_TRUE(c.Validate().ok());
  c.slot_count = 0;
  EXPECT_TRUE(c.Validate().IsInvalid());
  c.slot_count = UINT64_MAX / 2;
  EXPECT_TRUE(c.Validate().IsInvalid());
  c = good;
  c.kind = StoreKind::kPmem;
  c.direct_io = true;
  EXPECT_TRUE(c.Validate().IsInvalid());
  // OpenBlockStore validates first.
  Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(c, true);
  EXPECT_TRUE(r.status().IsInvalid());
}

// A store whose device fails on demand: the base class's counting and its
// sticky persist error.
class FailingStore final : public BlockStore {
 public:
  FailingStore() : BlockStore(4096, 4) {}
  const char* kind() const override { return "failing"; }
  bool fail = false;
  int persist_calls = 0;

 private:
  Status DoRead(uint64_t, uint32_t, void*, StoreRead) override { return Outcome(); }
  Status DoWrite(uint64_t, uint32_t, const void*, StoreWrite) override { return Outcome(); }
  Status DoPersist() override {
    ++persist_calls;
    return Outcome();
  }
  Status DoDiscard(uint64_t, uint64_t) override { return Outcome(); }
  Status Outcome() const { return fail ? Status::Error(EIO, "device: I/O error") : Status::Ok(); }
};

TEST(BlockStoreBaseTest, DeviceErrorsAreCountedAndPersistFailureSticks) {
  FailingStore store;
  char buf[16] = {};
  EXPECT_TRUE(store.Persist().ok());
  store.fail = true;
  EXPECT_EQ(store.Write(0, 0, 16, buf).code(), EIO);
  EXPECT_EQ(store.Read(0, 0, 16, buf).code(), EIO);
  EXPECT_EQ(store.Persist().code(), EIO);
  EXPECT_EQ(store.counters().errors.load(), 3u);
  EXPECT_EQ(store.counters().writes.load(), 0u);
  // The device recovers, but the lost writeback is not forgotten.
  store.fail = false;
  EXPECT_TRUE(store.Write(0, 0, 16, buf).ok());
  Status s = store.Persist();
  EXPECT_EQ(s.code(), EIO);
  EXPECT_EQ(s.message(), "device: I/O error");
  EXPECT_EQ(store.persist_calls, 2);
  EXPECT_EQ(store.counters().persists.load(), 1u);
}

TEST(FileStoreTest, RefusesCharacterDevice) {
  StoreConfig cfg;
  cfg.path = "/dev/null";
  cfg.block_size = 4096;
  cfg.slot_count = 1;
  Result<std::unique_ptr<BlockStore>> r = OpenBlockStore(cfg, /*create=*/false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EINVAL) << r.status().message();
}

TEST(FileStoreTest, DirectIoNeedsAlignedOffsetsLengthsAndBuffers) {
  StoreConfig cfg;
  cfg.path = UniquePath(TempDir(), "direct");
  cfg.block_size = 16384;
  cfg.slot_count = 4;
  cfg.direct_io = true;
  Result<std::unique_ptr<FileStore>> r = FileStore::Open(cfg, /*create=*/true);
  if (!r.ok() && r.status().message().find("O_DIRECT") != std::string::npos) {
    unlink(cfg.path.c_str());
    GTEST_SKIP() << r.status().message();
  }
  ASSERT_TRUE(r.ok()) << r.status().message();
  FileStore& store = *r.value();
  EXPECT_TRUE(store.direct_io());
  EXPECT_NE(fcntl(store.fd(), F_GETFL) & O_DIRECT, 0);

  constexpr size_t kAlign = kDirectIoAlignment;
  std::unique_ptr<uint8_t, decltype(&std::free)> mem(
      static_cast<uint8_t*>(std::aligned_alloc(kAlign, 4 * kAlign)), &std::free);
  ASSERT_NE(mem, nullptr);
  uint8_t* buf = mem.get();
  std::vector<uint8_t> d = Fill(1, 2 * kAlign, 7);
  std::memcpy(buf, d.data(), d.size());
  ASSERT_TRUE(store.Write(1, 4096, 8192, buf).ok());
  ASSERT_TRUE(store.Persist().ok());
  std::memset(buf, 0, 4 * kAlign);
  ASSERT_TRUE(store.Read(1, 4096, 8192, buf).ok());
  EXPECT_EQ(0, std::memcmp(buf, d.data(), d.size()));

  EXPECT_EQ(store.Write(1, 512, 4096, buf).code(), EINVAL);      // offset
  EXPECT_EQ(store.Write(1, 0, 100, buf).code(), EINVAL);         // length
  EXPECT_EQ(store.Write(1, 0, 4096, buf + 1).code(), EINVAL);    // buffer
  EXPECT_EQ(store.Read(1, 4096 + 1, 4096, buf).code(), EINVAL);  // offset
  EXPECT_EQ(store.Read(1, 0, 4096, buf + 512).code(), EINVAL);   // buffer
  // Nothing of the refused writes landed.
  ASSERT_TRUE(store.Read(1, 4096, 8192, buf).ok());
  EXPECT_EQ(0, std::memcmp(buf, d.data(), d.size()));
  r.value().reset();
  unlink(cfg.path.c_str());
}

// Pages of [off, off + len) of the file `path` in the page cache.
size_t ResidentPages(const std::string& path, uint64_t off, size_t len) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << std::strerror(errno);
  if (fd < 0) return 0;
  void* map = mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(off));
  close(fd);
  EXPECT_NE(map, MAP_FAILED) << std::strerror(errno);
  if (map == MAP_FAILED) return 0;
  std::vector<unsigned char> in(len / 4096);
  EXPECT_EQ(mincore(map, len, in.data()), 0) << std::strerror(errno);
  munmap(map, len);
  size_t n = 0;
  for (unsigned char c : in) n += c & 1;
  return n;
}

// StoreWrite::kStream goes around the page cache (a second, O_DIRECT
// descriptor) and stays coherent with the buffered one: a streamed write
// over pages the page cache holds replaces them, reads see it at once, and
// an unaligned stream is written through the page cache.
// A file store of 4 slots of 64 KiB with its O_DIRECT descriptor (the test
// is skipped where the file system has none), and a 4 KiB-aligned buffer of
// a slot and a page.
class FileStoreDirectTest : public ::testing::Test {
 protected:
  static constexpr size_t kLen = 65536;
  void SetUp() override {
    cfg_.path = UniquePath(TempDir(), "direct");
    cfg_.block_size = kLen;
    cfg_.slot_count = 4;
    Result<std::unique_ptr<FileStore>> r = FileStore::Open(cfg_, /*create=*/true);
    ASSERT_TRUE(r.ok()) << r.status().message();
    store_ = std::move(r.value());
    if (!store_->streams_direct()) GTEST_SKIP() << TempDir() << " does not support O_DIRECT";
    mem_.reset(static_cast<uint8_t*>(std::aligned_alloc(kDirectIoAlignment, kLen + 4096)));
    ASSERT_NE(mem_, nullptr);
  }
  void TearDown() override {
    store_.reset();
    unlink(cfg_.path.c_str());
  }
  StoreConfig cfg_;
  std::unique_ptr<FileStore> store_;
  std::unique_ptr<uint8_t, decltype(&std::free)> mem_{nullptr, &std::free};
};

TEST_F(FileStoreDirectTest, StreamedWritesGoAroundThePageCache) {
  FileStore& store = *store_;
  const StoreConfig& cfg = cfg_;
  uint8_t* const mem = mem_.get();
  std::vector<uint8_t> got(kLen);
  // Kept: in the page cache.
  std::vector<uint8_t> kept = Fill(0, kLen, 1);
  std::memcpy(mem, kept.data(), kLen);
  ASSERT_TRUE(store.Write(0, 0, kLen, mem, StoreWrite::kKeep).ok());
  EXPECT_EQ(ResidentPages(cfg.path, 0, kLen), kLen / 4096);
  // Streamed into another slot: not in the page cache, read back right.
  std::vector<uint8_t> streamed = Fill(1, kLen, 2);
  std::memcpy(mem, streamed.data(), kLen);
  ASSERT_TRUE(store.Write(1, 0, kLen, mem, StoreWrite::kStream).ok());
  EXPECT_EQ(ResidentPages(cfg.path, kLen, kLen), 0u);
  ASSERT_TRUE(store.Read(1, 0, kLen, got.data()).ok());
  EXPECT_TRUE(got == streamed);
  // Streamed over the kept (dirty, cached) pages of slot 0: the new bytes win.
  std::vector<uint8_t> over = Fill(0, kLen, 3);
  std::memcpy(mem, over.data(), kLen);
  ASSERT_TRUE(store.Write(0, 0, kLen, mem, StoreWrite::kStream).ok());
  ASSERT_TRUE(store.Read(0, 0, kLen, got.data()).ok());
  EXPECT_TRUE(got == over);
  // Unaligned buffer: written through the page cache, as correct.
  std::vector<uint8_t> odd = Fill(2, 8192, 4);
  std::memcpy(mem + 1, odd.data(), odd.size());
  ASSERT_TRUE(store.Write(2, 4096, 8192, mem + 1, StoreWrite::kStream).ok());
  ASSERT_TRUE(store.Read(2, 4096, 8192, got.data()).ok());
  EXPECT_EQ(0, std::memcmp(got.data(), odd.data(), odd.size()));
  // Durable like any write: persisted, reopened, still there.
  ASSERT_TRUE(store.Persist().ok());
  store_.reset();
  Result<std::unique_ptr<FileStore>> r = FileStore::Open(cfg, /*create=*/false);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ASSERT_TRUE(r.value()->Read(1, 0, kLen, got.data()).ok());
  EXPECT_TRUE(got == streamed);
  ASSERT_TRUE(r.value()->Read(0, 0, kLen, got.data()).ok());
  EXPECT_TRUE(got == over);
}

// StoreRead::kDirect reads around the page cache and still sees every
// completed write: one kept in the page cache and not yet written out (the
// kernel writes it first), and one streamed. It leaves no pages behind; an
// unaligned direct read goes through the page cache, as correct.
TEST_F(FileStoreDirectTest, DirectReadsSeeEveryWriteAndLeaveNoPages) {
  FileStore& store = *store_;
  const StoreConfig& cfg = cfg_;
  uint8_t* const mem = mem_.get();
  // Kept, dirty in the page cache: a direct read of a part of it.
  std::vector<uint8_t> kept = Fill(0, kLen, 5);
  ASSERT_TRUE(store.Write(0, 0, kLen, kept.data(), StoreWrite::kKeep).ok());
  ASSERT_TRUE(store.Read(0, 8192, 4096, mem, StoreRead::kDirect).ok());
  EXPECT_EQ(0, std::memcmp(mem, kept.data() + 8192, 4096));
  // Streamed: read direct, nothing of the slot comes into the page cache.
  std::vector<uint8_t> streamed = Fill(1, kLen, 6);
  std::memcpy(mem, streamed.data(), kLen);
  ASSERT_TRUE(store.Write(1, 0, kLen, mem, StoreWrite::kStream).ok());
  std::memset(mem, 0, kLen);
  ASSERT_TRUE(store.Read(1, 4096, 4096, mem, StoreRead::kDirect).ok());
  EXPECT_EQ(0, std::memcmp(mem, streamed.data() + 4096, 4096));
  EXPECT_EQ(ResidentPages(cfg.path, kLen, kLen), 0u);
  // The same read through the page cache brings its page in: the check
  // above can see a page that is there.
  ASSERT_TRUE(store.Read(1, 4096, 4096, mem, StoreRead::kCached).ok());
  EXPECT_GE(ResidentPages(cfg.path, kLen, kLen), 1u);
  // An unaligned buffer: through the page cache, the same bytes.
  ASSERT_TRUE(store.Read(1, 0, 8192, mem + 1, StoreRead::kDirect).ok());
  EXPECT_EQ(0, std::memcmp(mem + 1, streamed.data(), 8192));
}

class PmemStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    cfg_.kind = StoreKind::kPmem;
    cfg_.path = UniquePath("/dev/shm", "pmem");
    cfg_.block_size = 4096;
    cfg_.slot_count = 8;
  }
  void TearDown() override { unlink(cfg_.path.c_str()); }
  StoreConfig cfg_;
};

// Under PMEM2_FORCE_GRANULARITY=CACHE_LINE (meson's pmem_cacheline test)
// the store must take the DAX path; without it /dev/shm maps by page.
TEST_F(PmemStoreTest, ReportsTheGranularityPmem2Chose) {
  Result<std::unique_ptr<PmemStore>> r = PmemStore::Open(cfg_, /*create=*/true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  const char* forced = std::getenv("PMEM2_FORCE_GRANULARITY");
  if (forced == nullptr) {
    EXPECT_EQ(r.value()->granularity(), PmemStore::Granularity::kPage);
  } else if (std::string(forced) == "CACHE_LINE") {
    EXPECT_EQ(r.value()->granularity(), PmemStore::Granularity::kCacheLine);
    EXPECT_STREQ(PmemStore::GranularityName(r.value()->granularity()), "cache-line");
  } else {
    GTEST_SKIP() << "PMEM2_FORCE_GRANULARITY=" << forced;
  }
}

TEST_F(PmemStoreTest, SlotDataPointsAtTheSlotsBytes) {
  Result<std::unique_ptr<PmemStore>> r = PmemStore::Open(cfg_, /*create=*/true);
  ASSERT_TRUE(r.ok()) << r.status().message();
  PmemStore& store = *r.value();
  std::vector<uint8_t> d = Fill(5, 4096, 8);
  ASSERT_TRUE(store.Write(5, 0, 4096, d.data()).ok());
  ASSERT_NE(store.SlotData(5), nullptr);
  EXPECT_EQ(store.SlotData(5), store.base() + ptrdiff_t{5} * 4096);
  EXPECT_EQ(0, std::memcmp(store.SlotData(5), d.data(), d.size()));
  EXPECT_EQ(store.SlotData(8), nullptr);
}

TEST_F(PmemStoreTest, RefusesWhatPmem2CannotMap) {
  // A copy: TearDown unlinks cfg_.path, and must never unlink /dev/null.
  StoreConfig cfg = cfg_;
  cfg.path = "/dev/null";
  Result<std::unique_ptr<PmemStore>> r = PmemStore::Open(cfg, /*create=*/false);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("store '/dev/null'"), std::string::npos)
      << r.status().message();
}

}  // namespace
}  // namespace cachefs
