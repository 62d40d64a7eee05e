// One typed suite over every MetaStore (RocksDB in a temp directory, memory,
// the record cache), then what only the RocksDB store promises: reopen, the
// directory lock, kill -9 survival and group commit.
#include "meta/meta_store.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <barrier>
#include <cerrno>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "meta/encoding.h"
#include "meta/mem_meta_store.h"
#include "meta/record_cache.h"
#include "meta/rocks_meta_store.h"

extern char** environ;  // NOLINT: POSIX

namespace cachefs {
namespace {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "cachefs-meta-XXXXXX").string();
    if (mkdtemp(templ.data()) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    path_ = templ;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct RocksFactory {
  TempDir dir;
  std::unique_ptr<MetaStore> Open() {
    auto r = OpenRocksMetaStore(dir.path() + "/meta", true);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r.value()) : nullptr;
  }
};

struct MemFactory {
  std::unique_ptr<MetaStore> Open() { return NewMemMetaStore(); }
};

// The record cache over memory, small enough that the suite's blocks
// overflow it.
struct RecordCacheFactory {
  std::unique_ptr<MetaStore> Open() {
    return std::make_unique<RecordCache>(NewMemMetaStore(), /*capacity=*/128);
  }
};

template <typename Factory>
class MetaStoreTest : public testing::Test {
 protected:
  void SetUp() override {
    store_ = factory_.Open();
    ASSERT_NE(store_, nullptr);
  }
  void Commit(const MetaBatch& b) {
    Status s = store_->Commit(b, false);
    ASSERT_TRUE(s.ok()) << s.message();
  }
  // Block indexes of `file_id` as ScanBlocks returns them.
  std::vector<uint64_t> BlockIndexes(uint64_t file_id, size_t limit = SIZE_MAX) {
    std::vector<uint64_t> out;
    Status s = store_->ScanBlocks(file_id, [&](const BlockRecord& b) {
      EXPECT_EQ(b.file_id, file_id);
      out.push_back(b.index);
      return out.size() < limit;
    });
    EXPECT_TRUE(s.ok()) << s.message();
    return out;
  }
  std::vector<std::string> Paths(const std::string& prefix) {
    std::vector<std::string> out;
    Status s = store_->ScanPaths(prefix, [&](const std::string& p, uint64_t) {
      out.push_back(p);
      return true;
    });
    EXPECT_TRUE(s.ok()) << s.message();
    return out;
  }

  Factory factory_;
  std::unique_ptr<MetaStore> store_;
};

struct StoreNames {
  template <typename T>
  static std::string GetName(int) {
    if (std::is_same_v<T, RocksFactory>) return "Rocks";
    return std::is_same_v<T, MemFactory> ? "Mem" : "RecordCache";
  }
};
using StoreTypes = testing::Types<RocksFactory, MemFactory, RecordCacheFactory>;
TYPED_TEST_SUITE(MetaStoreTest, StoreTypes, StoreNames);

FileRecord File(uint64_t id, std::string path) {
  FileRecord f;
  f.file_id = id;
  f.path = std::move(path);
  f.source_ino = id * 10;
  f.fingerprint = {id * 100, 5, 6};
  f.size = id * 100;
  f.flags = FileRecord::kPinned;
  return f;
}

BlockRecord Block(uint64_t file_id, uint64_t index, uint32_t subs = 16) {
  BlockRecord b = BlockRecord::Empty(file_id, index, subs * kSubBlockSize);
  b.slot = file_id * 1000 + index;
  b.generation = 3;
  b.SetValid(0, true);
  b.SetDirty(subs - 1, true);
  b.crc[0] = 0xabcdef01;
  return b;
}

Superblock Sb() {
  Superblock sb;
  sb.block_size = 65536;
  sb.slot_count = 1000;
  sb.source = "/slow";
  sb.cache_id = "0123456789abcdef";
  return sb;
}

TYPED_TEST(MetaStoreTest, EmptyStoreHasNothing) {
  MetaStore& s = *this->store_;
  EXPECT_FALSE(s.GetSuperblock().value().has_value());
  EXPECT_FALSE(s.GetMountState().value().has_value());
  EXPECT_FALSE(s.GetCounters().value().has_value());
  EXPECT_FALSE(s.GetFile(1).value().has_value());
  EXPECT_FALSE(s.LookupPath("").value().has_value());
  EXPECT_FALSE(s.GetBlock(1, 0).value().has_value());
  int calls = 0;
  auto count = [&](const auto&...) { return ++calls > 0; };
  EXPECT_TRUE(s.ScanFiles(count).ok());
  EXPECT_TRUE(s.ScanPaths("", count).ok());
  EXPECT_TRUE(s.ScanBlocks(1, count).ok());
  EXPECT_TRUE(s.ScanAllBlocks(count).ok());
  EXPECT_TRUE(s.ScanDirty(count).ok());
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(s.MaxFileId().value(), 0u);
  EXPECT_EQ(s.MaxDirtySeq().value(), 0u);
  EXPECT_EQ(s.GetDurableEpoch().value(), 0u);
  EXPECT_TRUE(s.Commit(MetaBatch(), true).ok());
  EXPECT_TRUE(s.SyncWal().ok());
}

TYPED_TEST(MetaStoreTest, PutGetDeleteEveryRecord) {
  MetaStore& s = *this->store_;
  MetaBatch b;
  b.Put(Sb());
  b.Put(MountState{false, 3, "lru"});
  b.Put(PersistentCounters{1, 2, 3, 4, 5, 6, 7});
  b.Put(File(5, "dir/f"));
  b.Put(std::string("dir/f"), 5);
  b.Put(Block(5, 9, 1024));
  b.Put(DirtyRecord{11, 5, 9});
  b.PutDurable(41);
  b.PutDurable(42);  // the last one wins
  this->Commit(b);

  EXPECT_EQ(s.GetDurableEpoch().value(), 42u);
  EXPECT_EQ(s.GetSuperblock().value(), Sb());
  EXPECT_EQ(s.GetMountState().value(), (MountState{false, 3, "lru"}));
  EXPECT_EQ(s.GetCounters().value(), (PersistentCounters{1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(s.GetFile(5).value(), File(5, "dir/f"));
  EXPECT_EQ(s.LookupPath("dir/f").value(), std::optional<uint64_t>(5));
  EXPECT_EQ(s.GetBlock(5, 9).value(), Block(5, 9, 1024));
  EXPECT_FALSE(s.GetBlock(5, 8).value().has_value());
  std::vector<DirtyRecord> dirty;
  ASSERT_TRUE(s.ScanDirty([&](const DirtyRecord& d) {
                 dirty.push_back(d);
                 return true;
               }).ok());
  EXPECT_EQ(dirty, (std::vector<DirtyRecord>{{11, 5, 9}}));

  // Overwrite, then delete each family's record.
  MetaBatch over;
  MountState clean{true, 4, "lru"};
  over.Put(clean);
  FileRecord renamed = File(5, "dir/g");
  over.Put(renamed);
  this->Commit(over);
  EXPECT_EQ(s.GetMountState().value(), clean);
  EXPECT_EQ(s.GetFile(5).value(), renamed);

  MetaBatch del;
  del.RemoveFile(5);
  del.RemovePath("dir/f");
  del.RemoveBlock(5, 9);
  del.RemoveDirty(11);
  this->Commit(del);
  EXPECT_FALSE(s.GetFile(5).value().has_value());
  EXPECT_FALSE(s.LookupPath("dir/f").value().has_value());
  EXPECT_FALSE(s.GetBlock(5, 9).value().has_value());
  EXPECT_EQ(s.MaxDirtySeq().value(), 0u);
  // Deleting what is not there is not an error.
  this->Commit(del);
}

TYPED_TEST(MetaStoreTest, BatchIsAllOrNothing) {
  MetaStore& s = *this->store_;
  // Ops across every family apply in order: the later put wins, a put
  // after a delete in the same batch stays.
  MetaBatch b;
  b.Put(File(1, "a"));
  b.Put(std::string("a"), 1);
  b.Put(Block(1, 0));
  b.Put(DirtyRecord{1, 1, 0});
  b.Put(PersistentCounters{9, 9, 9, 9, 9, 9, 9});
  b.RemoveBlock(1, 0);
  b.Put(Block(1, 0, 64));
  b.Put(File(1, "b"));
  this->Commit(b);
  EXPECT_EQ(s.GetFile(1).value()->path, "b");
  EXPECT_TRUE(s.LookupPath("a").value().has_value());
  EXPECT_EQ(s.GetBlock(1, 0).value(), Block(1, 0, 64));
  EXPECT_EQ(s.MaxDirtySeq().value(), 1u);
  EXPECT_TRUE(s.GetCounters().value().has_value());

  // A batch with one bad record changes nothing.
  MetaBatch bad;
  bad.Put(File(2, "c"));
  BlockRecord broken = Block(2, 0);
  broken.valid.clear();
  bad.Put(broken);
  Status st = s.Commit(bad, false);
  EXPECT_TRUE(st.IsInvalid()) << st.message();
  EXPECT_FALSE(s.GetFile(2).value().has_value());
  MetaBatch seq0;
  seq0.Put(DirtyRecord{0, 1, 0});
  EXPECT_TRUE(s.Commit(seq0, false).IsInvalid());
}

TYPED_TEST(MetaStoreTest, ScansAreInKeyOrderAndStopEarly) {
  MetaStore& s = *this->store_;
  const std::vector<std::pair<uint64_t, uint64_t>> blocks = {
      {2, 1ull << 40}, {1, 300}, {3, 0}, {2, 0}, {2, 256}, {1, 2}, {2, 255}, {2, 1}};
  MetaBatch b;
  for (auto [f, i] : blocks) b.Put(Block(f, i));
  for (uint64_t id : {300u, 7u, 256u}) b.Put(File(id, "f" + std::to_string(id)));
  for (uint64_t seq : {1000u, 3u, 256u, 255u}) b.Put(DirtyRecord{seq, 2, seq});
  this->Commit(b);

  EXPECT_EQ(this->BlockIndexes(2), (std::vector<uint64_t>{0, 1, 255, 256, 1ull << 40}));
  EXPECT_EQ(this->BlockIndexes(2, 2), (std::vector<uint64_t>{0, 1}));
  EXPECT_EQ(this->BlockIndexes(1), (std::vector<uint64_t>{2, 300}));
  EXPECT_TRUE(this->BlockIndexes(4).empty());
  EXPECT_TRUE(this->BlockIndexes(0).empty());

  std::vector<std::pair<uint64_t, uint64_t>> all;
  ASSERT_TRUE(s.ScanAllBlocks([&](const BlockRecord& r) {
                 all.emplace_back(r.file_id, r.index);
                 return true;
               }).ok());
  std::vector<std::pair<uint64_t, uint64_t>> sorted = blocks;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(all, sorted);
  all.clear();
  ASSERT_TRUE(s.ScanAllBlocks([&](const BlockRecord& r) {
                 all.emplace_back(r.file_id, r.index);
                 return all.size() < 3;
               }).ok());
  EXPECT_EQ(all.size(), 3u);

  std::vector<uint64_t> ids;
  ASSERT_TRUE(s.ScanFiles([&](const FileRecord& f) {
                 ids.push_back(f.file_id);
                 EXPECT_EQ(f, File(f.file_id, "f" + std::to_string(f.file_id)));
                 return true;
               }).ok());
  EXPECT_EQ(ids, (std::vector<uint64_t>{7, 256, 300}));

  std::vector<uint64_t> seqs;
  ASSERT_TRUE(s.ScanDirty([&](const DirtyRecord& d) {
                 seqs.push_back(d.seq);
                 EXPECT_EQ(d.index, d.seq);
                 return seqs.size() < 3;
               }).ok());
  EXPECT_EQ(seqs, (std::vector<uint64_t>{3, 255, 256}));
  EXPECT_EQ(s.MaxFileId().value(), 300u);
  EXPECT_EQ(s.MaxDirtySeq().value(), 1000u);

  // A scan callback may use the store (the engine drains the dirty index
  // while scanning it).
  ASSERT_TRUE(s.ScanDirty([&](const DirtyRecord& d) {
                 MetaBatch rm;
                 rm.RemoveDirty(d.seq);
                 EXPECT_TRUE(s.Commit(rm, false).ok());
                 return true;
               }).ok());
  EXPECT_EQ(s.MaxDirtySeq().value(), 0u);
  MetaBatch rm;
  rm.RemoveFile(300);
  this->Commit(rm);
  EXPECT_EQ(s.MaxFileId().value(), 256u);
}

TYPED_TEST(MetaStoreTest, ScanPathsMatchesWholePrefixOnly) {
  MetaBatch b;
  uint64_t id = 1;
  for (const char* p : {"b", "ab", "a/c/d", "a", "a/", "a/b", "a.", "", "a0"})
    b.Put(std::string(p), id++);
  this->Commit(b);
  EXPECT_EQ(this->Paths("a/"), (std::vector<std::string>{"a/", "a/b", "a/c/d"}));
  EXPECT_EQ(this->Paths("a"),
            (std::vector<std::string>{"a", "a.", "a/", "a/b", "a/c/d", "a0", "ab"}));
  EXPECT_EQ(this->Paths("").size(), 9u);
  EXPECT_EQ(this->Paths("").front(), "");
  EXPECT_TRUE(this->Paths("a/c/d/").empty());
  EXPECT_TRUE(this->Paths("zz").empty());
  std::vector<std::string> first;
  ASSERT_TRUE(this->store_
                  ->ScanPaths("a/",
                              [&](const std::string& p, uint64_t file_id) {
                                first.push_back(p);
                                EXPECT_EQ(file_id, 5u);
                                return false;
                              })
                  .ok());
  EXPECT_EQ(first, (std::vector<std::string>{"a/"}));
}

TYPED_TEST(MetaStoreTest, ConcurrentCommitsAllLand) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        MetaBatch b;
        b.Put(Block(t + 1, i));
        b.Put(DirtyRecord{static_cast<uint64_t>(t * kPerThread + i + 1), uint64_t(t) + 1,
                          uint64_t(i)});
        EXPECT_TRUE(this->store_->Commit(b, false).ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(this->store_->MaxDirtySeq().value(), uint64_t{kThreads} * kPerThread);
  for (int t = 0; t < kThreads; ++t)
    EXPECT_EQ(this->BlockIndexes(t + 1).size(), size_t{kPerThread});
}

// ---- RocksDB only ----

// Runs this test binary again as a child process executing
// RocksMetaStoreChild.Run with CACHEFS_META_CHILD=`mode`:`dir`, its output
// discarded. Returns the wait status. A fresh process (not just fork()) so
// that RocksDB's background threads and its in-process lock table start
// clean, as in a real second process.
int RunChild(const std::string& mode, const std::string& dir) {
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
  env_strings.push_back("CACHEFS_META_CHILD=" + mode + ":" + dir);
  std::vector<char*> envp;
  envp.reserve(env_strings.size() + 1);
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string arg0 = "unit_tests";
  std::string arg1 = "--gtest_filter=RocksMetaStoreChild.DISABLED_Run";
  std::string arg2 = "--gtest_also_run_disabled_tests";
  char* argv[] = {arg0.data(), arg1.data(), arg2.data(), nullptr};

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv, envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    ADD_FAILURE() << "posix_spawn: " << std::strerror(rc);
    return -1;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Exit codes of the child.
constexpr int kChildOk = 0;
constexpr int kChildFailed = 3;

// DISABLED_: never part of a normal run; the parent names it explicitly.
TEST(RocksMetaStoreChild, DISABLED_Run) {
  const char* spec = getenv("CACHEFS_META_CHILD");
  ASSERT_NE(spec, nullptr) << "runs only as the child of other RocksMetaStore tests";
  alarm(20);  // never hang the parent
  const std::string s = spec;
  const std::string mode = s.substr(0, s.find(':'));
  const std::string dir = s.substr(s.find(':') + 1);
  if (mode == "commit_and_die") {
    auto store = OpenRocksMetaStore(dir, true);
    if (!store.ok()) _exit(kChildFailed);
    for (uint64_t i = 0; i < 100; ++i) {
      MetaBatch b;
      b.Put(Block(1, i));
      b.Put(DirtyRecord{i + 1, 1, i});
      if (!store.value()->Commit(b, false).ok()) _exit(kChildFailed);
    }
    MetaBatch last;
    last.Put(File(1, "killed"));
    last.Put(std::string("killed"), 1);
    if (!store.value()->Commit(last, false).ok()) _exit(kChildFailed);
    kill(getpid(), SIGKILL);  // kill -9: no close, no flush, no destructors
  } else if (mode == "open_in_use") {
    auto store = OpenRocksMetaStore(dir, false);
    const bool as_expected =
        !store.ok() && store.status().code() == EBUSY &&
        store.status().message() == "cache " + dir + " is in use by another process";
    _exit(as_expected ? kChildOk : kChildFailed);
  }
  _exit(kChildFailed);
}

class RocksMetaStoreTest : public testing::Test {
 protected:
  std::unique_ptr<RocksMetaStore> Open(bool create = true) {
    auto r = RocksMetaStore::Open(dir(), create);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? std::move(r.value()) : nullptr;
  }
  std::string dir() const { return tmp_.path() + "/meta"; }

  TempDir tmp_;
};

TEST_F(RocksMetaStoreTest, ReopenKeepsEverything) {
  {
    auto s = Open();
    ASSERT_NE(s, nullptr);
    MetaBatch b;
    b.Put(Sb());
    b.Put(MountState{true, 1, "lru"});
    b.Put(File(3, "x/y"));
    b.Put(std::string("x/y"), 3);
    for (uint64_t i = 0; i < 50; ++i) b.Put(Block(3, i));
    b.Put(DirtyRecord{8, 3, 7});
    ASSERT_TRUE(s->Commit(b, true).ok());
  }
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->GetSuperblock().value(), Sb());
  EXPECT_EQ(s->GetMountState().value(), (MountState{true, 1, "lru"}));
  EXPECT_EQ(s->GetFile(3).value(), File(3, "x/y"));
  EXPECT_EQ(s->LookupPath("x/y").value(), std::optional<uint64_t>(3));
  EXPECT_EQ(s->GetBlock(3, 49).value(), Block(3, 49));
  EXPECT_EQ(s->MaxDirtySeq().value(), 8u);
  EXPECT_EQ(s->MaxFileId().value(), 3u);
  // No LOG files: RocksDB's chatter goes to the cachefs log, warnings only.
  EXPECT_FALSE(std::filesystem::exists(dir() + "/LOG"));
}

TEST_F(RocksMetaStoreTest, OpenWithoutCreateNeedsAStore) {
  auto missing = RocksMetaStore::Open(dir(), false);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), ENOENT);
  EXPECT_EQ(missing.status().message(), "no cache metadata in " + dir());
  std::filesystem::create_directory(dir());
  auto empty = RocksMetaStore::Open(dir(), false);
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().message(), "no cache metadata in " + dir());
}

TEST_F(RocksMetaStoreTest, SecondOpenIsRefused) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  // From this process...
  auto again = RocksMetaStore::Open(dir(), true);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), EBUSY);
  EXPECT_EQ(again.status().message(), "cache " + dir() + " is in use by another process");
  // ...and from another one.
  int status = RunChild("open_in_use", dir());
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), kChildOk);
  // Still usable, and free again once closed.
  EXPECT_TRUE(s->GetSuperblock().ok());
  s.reset();
  EXPECT_NE(Open(false), nullptr);
}

TEST_F(RocksMetaStoreTest, UnsyncedCommitSurvivesKill9) {
  int status = RunChild("commit_and_die", dir());
  ASSERT_TRUE(WIFSIGNALED(status)) << "child exited with " << WEXITSTATUS(status);
  ASSERT_EQ(WTERMSIG(status), SIGKILL);
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->LookupPath("killed").value(), std::optional<uint64_t>(1));
  EXPECT_EQ(s->GetFile(1).value(), File(1, "killed"));
  EXPECT_EQ(s->MaxDirtySeq().value(), 100u);
  size_t blocks = 0;
  ASSERT_TRUE(s->ScanBlocks(1, [&](const BlockRecord& b) {
                 EXPECT_EQ(b, Block(1, blocks));
                 ++blocks;
                 return true;
               }).ok());
  EXPECT_EQ(blocks, 100u);
}

TEST_F(RocksMetaStoreTest, ConcurrentSyncWalCallsShareSyncs) {
  auto s = Open();
  ASSERT_NE(s, nullptr);
  constexpr int kThreads = 8;
  // Each thread commits, then (once all have committed) syncs: one sync
  // started after every commit covers them all, so the others must wait
  // for it or find their commit already synced.
  std::barrier committed(kThreads);
  std::vector<std::thread> threads;
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      MetaBatch b;
      b.Put(Block(9, t));
      EXPECT_TRUE(s->Commit(b, false).ok());
      committed.arrive_and_wait();
      EXPECT_TRUE(s->SyncWal().ok());
    });
  }
  for (auto& th : threads) th.join();
  const uint64_t syncs = s->wal_syncs();
  EXPECT_GE(syncs, 1u);
  EXPECT_LT(syncs, uint64_t{kThreads});
  // Nothing committed since: nothing to sync.
  EXPECT_TRUE(s->SyncWal().ok());
  EXPECT_EQ(s->wal_syncs(), syncs);

  // Free-running: commit and sync in a loop from every thread. Every call
  // succeeds, and every commit is covered by some sync.
  threads.clear();
  threads.reserve(kThreads);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        MetaBatch b;
        b.Put(Block(10 + t, i));
        EXPECT_TRUE(s->Commit(b, false).ok());
        EXPECT_TRUE(s->SyncWal().ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  const uint64_t after = s->wal_syncs();
  EXPECT_GT(after, syncs);
  EXPECT_TRUE(s->SyncWal().ok());
  EXPECT_EQ(s->wal_syncs(), after);
}

TEST_F(RocksMetaStoreTest, UndecodableRecordsAreReported) {
  {
    auto s = Open();
    ASSERT_NE(s, nullptr);
  }
  // Write garbage with RocksDB directly, plus a family from "the future".
  {
    rocksdb::Options o;
    o.create_missing_column_families = true;
    std::vector<rocksdb::ColumnFamilyDescriptor> descs;
    for (const char* n : {"default", "files", "paths", "blocks", "dirty", "future"}) {
      descs.emplace_back(n, rocksdb::ColumnFamilyOptions());
    }
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(o, dir(), descs, &h, &db).ok());
    ASSERT_TRUE(db->Put({}, h[0], "superblock", "NOTACACHE-at-all").ok());
    ASSERT_TRUE(db->Put({}, h[3], BlockKey(1, 2), "\x01short").ok());
    ASSERT_TRUE(db->Put({}, h[4], "odd", "x").ok());
    for (auto* x : h) db->DestroyColumnFamilyHandle(x);
    delete db;
  }
  auto s = Open(false);
  ASSERT_NE(s, nullptr);
  auto sb = s->GetSuperblock();
  ASSERT_FALSE(sb.ok());
  EXPECT_EQ(sb.status().message(), "cache " + dir() + ": not a cachefs cache");
  auto b = s->GetBlock(1, 2);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), EUCLEAN);
  EXPECT_NE(b.status().message().find("corrupt block record"), std::string::npos);
  Status scan = s->ScanAllBlocks([](const BlockRecord&) { return true; });
  EXPECT_EQ(scan.code(), EUCLEAN);
  EXPECT_EQ(s->MaxDirtySeq().status().code(), EUCLEAN);
}

}  // namespace
}  // namespace cachefs
