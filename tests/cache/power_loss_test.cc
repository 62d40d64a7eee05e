// Power loss and kill -9 of a writeback engine (contract 1c), in one process,
// with the fault layers of tests/cache/fault_layers.h under RocksDB and the
// store.
//
// The micro-tests drive one rollback case each, deterministically: the
// writes to drop are chosen exactly (every unsynced store page reverted, every
// committed metadata batch kept, which is the worst case: records survive
// that point at data that did not).
//
// PowerLossTest.RandomPowerLoss runs writer threads against the engine (random
// sizes and offsets, the same blocks rewritten often, Sync() now and then,
// the periodic persist and the writer running) and cuts the power at a
// random moment; each unsynced store page is then reverted with some
// probability and each RocksDB file keeps a random part of its unsynced tail.
// After recovery every byte of every file must hold its value at the last
// Sync() that returned before the cut, or a value written after that sync
// began (or in flight at the cut). RandomKill does the same without losing
// anything unsynced: every acknowledged write must be there.
//
// CACHEFS_POWERLOSS_SEED=N replays a run's choices (the seed is printed; the
// threads' interleaving is not replayed), CACHEFS_POWERLOSS_ITERATIONS=N runs
// more rounds (default 10).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/engine.h"
#include "meta/encoding.h"
#include "meta/rocks_meta_store.h"
#include "tests/cache/fault_layers.h"

namespace cachefs {
namespace {

constexpr uint64_t kBlock =
    uint64_t{16} * 1024;  // 4 sub-blocks: partial and in-place writes are common
constexpr uint64_t kSlots = 256;
constexpr uint64_t kInFlight = std::numeric_limits<uint64_t>::max();

uint64_t EnvNumber(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::strtoull(v, nullptr, 10) : fallback;
}

std::string Random(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// ---- random workload ------------------------------------------------------

// What was written to one file and when (ticks of one logical clock).
struct FileModel {
  struct Write {
    uint64_t off;
    std::string data;
    uint64_t start, end;  // end: kInFlight when it never returned success
  };
  std::string name;
  std::string initial;
  std::mutex mu;
  std::vector<Write> writes;  // guarded by mu
  // Successful Sync() calls, as (start, end) ticks. Guarded by mu.
  std::vector<std::pair<uint64_t, uint64_t>> syncs;

  // The start of the latest Sync() that returned success before `cut`: the
  // IO of one that returns later may have vanished with the power (the
  // metadata layer acknowledges what it drops once the power is cut).
  uint64_t SyncedFrom(uint64_t cut) {
    std::lock_guard<std::mutex> lock(mu);
    uint64_t from = 0;
    for (const auto& [start, end] : syncs) {
      if (end < cut) from = std::max(from, start);
    }
    return from;
  }
};

// Checks `actual` (the whole file) against the model: every byte must hold
// the value of a write not superseded before `from` (a write is superseded
// at a byte by another that started after it ended and ended before `from`),
// or the initial value if no write ended before `from` there. Returns the
// first violation, or "".
std::string Check(FileModel& m, uint64_t from, const std::string& actual) {
  std::lock_guard<std::mutex> lock(m.mu);
  const size_t size = m.initial.size();
  if (actual.size() != size) {
    return m.name + ": " + std::to_string(actual.size()) + " bytes, expected " +
           std::to_string(size);
  }
  std::vector<uint64_t> newest(size, 0);  // latest start of a write that ended before `from`
  for (const auto& w : m.writes) {
    if (w.end >= from) continue;
    for (size_t i = 0; i < w.data.size(); ++i) {
      newest[w.off + i] = std::max(newest[w.off + i], w.start);
    }
  }
  std::vector<char> ok(size, 0);
  for (size_t b = 0; b < size; ++b) ok[b] = newest[b] == 0 && actual[b] == m.initial[b];
  for (const auto& w : m.writes) {
    for (size_t i = 0; i < w.data.size(); ++i) {
      const size_t b = w.off + i;
      if (!ok[b] && w.end > newest[b] && w.data[i] == actual[b]) ok[b] = 1;
    }
  }
  for (size_t b = 0; b < size; ++b) {
    if (ok[b]) continue;
    std::string why = m.name + ": byte " + std::to_string(b) + " (block " +
                      std::to_string(b / kBlock) + ", sub-block " +
                      std::to_string(b % kBlock / kSubBlockSize) + ") holds " +
                      std::to_string(static_cast<uint8_t>(actual[b])) + "; allowed:";
    if (newest[b] == 0)
      why += " " + std::to_string(static_cast<uint8_t>(m.initial[b])) + "(initial)";
    for (const auto& w : m.writes) {
      if (b >= w.off && b < w.off + w.data.size() && w.end > newest[b]) {
        why += " " + std::to_string(static_cast<uint8_t>(w.data[b - w.off])) + "(write [" +
               std::to_string(w.start) + "," +
               (w.end == kInFlight ? std::string("in flight") : std::to_string(w.end)) + "])";
      }
    }
    why += ", synced from tick " + std::to_string(from) + "; the value is that of:";
    if (m.initial[b] == actual[b]) why += " the initial data";
    for (const auto& w : m.writes) {
      if (b >= w.off && b < w.off + w.data.size() && w.data[b - w.off] == actual[b]) {
        why += " write [" + std::to_string(w.start) + "," +
               (w.end == kInFlight ? std::string("in flight") : std::to_string(w.end)) + "] of " +
               std::to_string(w.data.size()) + " bytes at " + std::to_string(w.off);
      }
    }
    return why;
  }
  return "";
}

class PowerLossTest : public ::testing::Test {
 protected:
  // SOURCE/f (one block) and SOURCE/g (seven), and a cache of eight blocks
  // with one writeback thread: g's seven dirty blocks and f's one fill it.
  EngineConfig FullCacheSetup(std::mt19937_64& rng) {
    MakeSource("f", Random(rng, kBlock));
    MakeSource("g", Random(rng, 7 * kBlock));
    EngineConfig config = Config();
    config.options.cache_size = SizeOrPercent{false, 0, 8 * kBlock};
    config.options.writeback_threads = 1;
    return config;
  }
  // An engine of `config` on the fault layers of `m`, reading and writing
  // SOURCE through `backing` (a layer over m.backing).
  static std::unique_ptr<Engine> OpenOver(FaultMachine& m, EngineConfig config, Backing* backing) {
    m.Hook(&config);
    config.backing = backing;
    return Open(config);
  }
  // The power loss the ordering tests need: every page written to the store
  // survives (kernel writeback got there), RocksDB's files only as far as
  // they were synced.
  void LoseUnsyncedMetadata(FaultMachine& m) {
    ASSERT_TRUE(m.undo->PowerLoss(StorePath(), [](uint64_t) { return false; }).ok());
    ASSERT_TRUE(
        m.fs->PowerLoss([](const std::string&, const FaultFs::FileState& st) { return st.synced; })
            .ok());
  }
  void SetUp() override {
    char t[] = "/tmp/cachefs-powerloss-XXXXXX";
    base_ = mkdtemp(t);
    source_ = base_ + "/src";
    std::filesystem::create_directories(source_);
  }
  void TearDown() override { std::filesystem::remove_all(base_); }

  // Writeback; persists only when asked, no writer thread at work.
  EngineConfig Config() {
    EngineConfig c;
    c.options.cache_dir = base_ + "/cache";
    c.options.cache_size = SizeOrPercent{false, 0, kSlots * kBlock};
    c.options.block_size = kBlock;
    c.options.readahead = 0;
    c.options.mode = CacheMode::kWriteback;
    c.options.writeback_delay = 3600;
    c.options.commit_interval_ms = uint64_t{3600} * 1000;
    c.source = source_;
    return c;
  }
  std::string StorePath() const { return base_ + "/cache/store"; }

  static std::unique_ptr<Engine> Open(const EngineConfig& c) {
    auto e = Engine::Open(c);
    EXPECT_TRUE(e.ok()) << e.status().message();
    return e.ok() ? std::move(e.value()) : nullptr;
  }

  struct Opened {
    SourceFdRef fd;
    std::shared_ptr<CachedFile> file;
  };
  Opened OpenFile(Engine& e, const std::string& name) {
    int fd = open((source_ + "/" + name).c_str(), O_RDONLY);
    EXPECT_GE(fd, 0);
    Opened o;
    o.fd = std::make_shared<SourceFd>(fd);
    struct stat st;
    fstat(fd, &st);
    auto f = e.OpenFile(name, st);
    EXPECT_TRUE(f.ok()) << f.status().message();
    if (f.ok()) o.file = f.value();
    return o;
  }
  void MakeSource(const std::string& name, const std::string& data) {
    std::ofstream(source_ + "/" + name, std::ios::binary) << data;
  }
  static std::string Read(Engine& e, const Opened& o, uint64_t off, size_t len) {
    std::string out(len, '\0');
    auto n = e.Read(*o.file, o.fd, off, len, out.data());
    EXPECT_TRUE(n.ok()) << n.status().message();
    e.WaitForInstalls();
    out.resize(n.ok() ? n.value() : 0);
    return out;
  }
  static void Write(Engine& e, const Opened& o, uint64_t off, const std::string& data) {
    Status s = e.Write(*o.file, o.fd, off, data.data(), data.size(), /*sync=*/false);
    ASSERT_TRUE(s.ok()) << s.message();
  }  // With FullCacheSetup: g's 7 blocks and f's block 0 (`f0`) written, f
  // fsynced: every slot of the cache holds dirty data.
  static void FillWithDirtyAndSync(Engine& e, const Opened& g, const Opened& f,
                                   const std::string& f0, std::mt19937_64& rng) {
    for (uint64_t b = 0; b < 7; ++b) Write(e, g, b * kBlock, Random(rng, kBlock));
    Write(e, f, 0, f0);
    ASSERT_TRUE(e.Sync(*f.file).ok());
  }

  // Cuts the power, lets the engine go (its shutdown fails at its first
  // write) and turns the files into what the power loss left: every store
  // page written since the last completed persist back as it was, every
  // RocksDB file as written (unsynced commits survive: the worst case).
  void PowerLoss(std::unique_ptr<Engine>& e, FaultMachine& m) {
    m.power.Cut();
    e.reset();
    Status s = m.undo->PowerLoss(StorePath(), [](uint64_t) { return true; });
    ASSERT_TRUE(s.ok()) << s.message();
    s = m.fs->PowerLoss([](const std::string&, const FaultFs::FileState& st) { return st.size; });
    ASSERT_TRUE(s.ok()) << s.message();
  }

  // For a failure: the block's record as recovery left it.
  void DumpBlock(const std::string& name, uint64_t index) {
    auto meta = RocksMetaStore::Open(base_ + "/cache/meta", false);
    if (!meta.ok()) return;
    auto id = meta.value()->LookupPath(name);
    if (!id.ok() || !id.value()) return;
    auto rec = meta.value()->GetBlock(*id.value(), index);
    std::string text = "durable epoch " + std::to_string(meta.value()->GetDurableEpoch().value()) +
                       "; record of " + name + " block " + std::to_string(index) + ": ";
    if (!rec.ok() || !rec.value()) {
      text += "none";
    } else {
      std::vector<BlockVersion> all{rec.value()->Current()};
      all.insert(all.end(), rec.value()->previous.begin(), rec.value()->previous.end());
      for (const BlockVersion& v : all) {
        text += "[slot " + std::to_string(v.slot) + " gen " + std::to_string(v.generation) +
                " epoch " + std::to_string(v.epoch) + " valid " + std::to_string(v.valid[0]) +
                " dirty " + std::to_string(v.dirty[0]) + "] ";
      }
    }
    ADD_FAILURE() << text;
  }

  static constexpr int kFiles = 4;
  static constexpr int kThreads = 3;
  static constexpr uint64_t kFileBlocks = 16;

  // One round: run, cut the power, (lose the unsynced), recover, check.
  void Round(uint64_t seed, bool lose_unsynced) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::printf("[ seed     ] %llu (CACHEFS_POWERLOSS_SEED=%llu replays it)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    std::fflush(stdout);
    std::mt19937_64 rng(seed);
    std::filesystem::remove_all(base_ + "/cache");
    std::vector<std::unique_ptr<FileModel>> models;
    for (int i = 0; i < kFiles; ++i) {
      auto m = std::make_unique<FileModel>();
      m->name = "f" + std::to_string(i);
      m->initial = Random(rng, kFileBlocks * kBlock);
      MakeSource(m->name, m->initial);
      models.push_back(std::move(m));
    }
    std::atomic<uint64_t> clock{0};
    uint64_t cut_tick = 0;
    {
      FaultMachine machine;
      EngineConfig config = Config();
      config.options.commit_interval_ms = 5 + rng() % 30;
      config.options.writeback_delay = 0.05;  // the writer cleans blocks meanwhile
      machine.Hook(&config);
      auto e = Open(config);
      ASSERT_NE(e, nullptr);
      std::vector<Opened> files;
      files.reserve(models.size());
      for (auto& m : models) files.push_back(OpenFile(*e, m->name));

      std::atomic<bool> stop{false};
      std::atomic<uint64_t> ops{0};
      std::atomic<int> failures{0};
      std::vector<std::thread> threads;
      threads.reserve(kThreads);
      for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, thread_seed = rng()] {
          std::mt19937_64 r(thread_seed);
          while (!stop) {
            const size_t fi = r() % kFiles;
            FileModel& m = *models[fi];
            const Opened& f = files[fi];
            if (r() % 10 == 0) {
              const uint64_t start = ++clock;
              Status s = e->Sync(*f.file);
              const uint64_t end = ++clock;
              if (s.ok()) {
                std::lock_guard<std::mutex> lock(m.mu);
                m.syncs.emplace_back(start, end);
              } else if (!machine.power.cut()) {
                ADD_FAILURE() << "Sync: " << s.message();
                failures++;
              }
            } else {
              const uint64_t size = m.initial.size();
              size_t len;
              uint64_t off;
              switch (r() % 3) {
                case 0:  // small, anywhere
                  len = 1 + r() % 200;
                  off = r() % (size - len + 1);
                  break;
                case 1:  // whole sub-blocks
                  len = kSubBlockSize * (1 + r() % (3 * kBlock / kSubBlockSize));
                  off = kSubBlockSize * (r() % ((size - len) / kSubBlockSize + 1));
                  break;
                default:  // up to three blocks, unaligned
                  len = 1 + r() % (3 * kBlock);
                  off = r() % (size - len + 1);
                  break;
              }
              // Few hot blocks: the same blocks are rewritten often.
              if (r() % 2 == 0) off = std::min<uint64_t>(off % (2 * kBlock), size - len);
              std::string data = Random(r, len);
              const uint64_t start = ++clock;
              Status s = e->Write(*f.file, f.fd, off, data.data(), len, false);
              const uint64_t end = ++clock;
              if (!s.ok() && !machine.power.cut()) {
                ADD_FAILURE() << "Write: " << s.message();
                failures++;
              }
              std::lock_guard<std::mutex> lock(m.mu);
              m.writes.push_back({off, std::move(data), start, s.ok() ? end : kInFlight});
            }
            ops++;
          }
        });
      }
      // Cut the power after a random number of operations.
      const uint64_t target = 20 + rng() % 400;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (ops < target && failures == 0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      // The tick first: what returned before it did all its IO before the cut.
      cut_tick = ++clock;
      machine.power.Cut();
      stop = true;
      for (auto& t : threads) t.join();
      ASSERT_EQ(failures, 0);
      files.clear();
      e.reset();
      if (lose_unsynced) {
        const double p = std::array<double, 3>{0.5, 0.9, 1.0}[rng() % 3];
        Status s = machine.undo->PowerLoss(StorePath(), rng, p);
        ASSERT_TRUE(s.ok()) << s.message();
        const int wal_mode = static_cast<int>(rng() % 3);
        if (std::getenv("PLDEBUG") != nullptr) std::printf("wal mode %d p %.1f\n", wal_mode, p);
        switch (wal_mode) {
          case 0:
            s = machine.fs->PowerLoss(rng);  // part of the unsynced tail
            break;
          case 1:  // every unsynced commit survives (another sync, a flush)
            s = machine.fs->PowerLoss(
                [](const std::string&, const FaultFs::FileState& st) { return st.size; });
            break;
          default:  // only what was synced
            s = machine.fs->PowerLoss(
                [](const std::string&, const FaultFs::FileState& st) { return st.synced; });
            break;
        }
        ASSERT_TRUE(s.ok()) << s.message();
      }
    }
    auto e = Open(Config());
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->recovery().lost, 0u);
    for (auto& m : models) {
      const uint64_t from = lose_unsynced ? m->SyncedFrom(cut_tick) : cut_tick;
      Opened f = OpenFile(*e, m->name);
      std::string actual = Read(*e, f, 0, m->initial.size());
      const std::string bad = Check(*m, from, actual);
      EXPECT_EQ(bad, "") << "through the cache";
      if (!bad.empty()) {
        e.reset();
        DumpBlock(m->name, std::strtoull(bad.substr(bad.find("(block ") + 7).c_str(), nullptr, 10));
        return;
      }
    }
    // Writing back what recovery kept works, and leaves SOURCE as allowed too.
    Status s = e->Flush();
    EXPECT_TRUE(s.ok()) << s.message();
    EXPECT_FALSE(e->HasAnyDirty());
    for (auto& m : models) {
      const uint64_t from = lose_unsynced ? m->SyncedFrom(cut_tick) : cut_tick;
      std::ifstream in(source_ + "/" + m->name, std::ios::binary);
      std::string on_source((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      EXPECT_EQ(Check(*m, from, on_source), "") << "on SOURCE after writeback";
    }
  }

  std::string base_, source_;
};

// Two rewrites of a dirty block between two persists: the one-back version
// (the first rewrite) is no more durable than the newest; recovery must go
// back to the synced one.
TEST_F(PowerLossTest, DirtyBlockRewrittenTwiceInOneEpoch) {
  std::mt19937_64 rng(1);
  const std::string original = Random(rng, 2 * kBlock);
  MakeSource("f", original);
  const std::string a = Random(rng, kBlock), b = Random(rng, kBlock), c = Random(rng, kBlock);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Write(*e, f, 0, a);
    ASSERT_TRUE(e->Sync(*f.file).ok());
    Write(*e, f, 0, b);
    Write(*e, f, 0, c);
    EXPECT_EQ(Read(*e, f, 0, kBlock), c);
    EXPECT_GT(m.undo->unsynced_pages(), 0u);
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().checked, 1u);
  EXPECT_EQ(e->recovery().rolled_back, 1u);
  EXPECT_EQ(e->recovery().lost, 0u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), a);
  EXPECT_EQ(Read(*e, f, kBlock, kBlock), original.substr(kBlock));
  EXPECT_EQ(e->stats().blocks_dirty, 1u);
  EXPECT_EQ(e->stats().crc_errors, 0u);
  // What recovery kept is durable: a clean restart checks nothing.
  e.reset();
  e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().checked, 0u);
  f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), a);
}

// Rewritten after a completed persist: the version that persist covered is
// the one to go back to, not the older synced one.
TEST_F(PowerLossTest, RewrittenAcrossAPersist) {
  std::mt19937_64 rng(2);
  MakeSource("f", Random(rng, kBlock));
  const std::string a = Random(rng, kBlock), b = Random(rng, kBlock), c = Random(rng, kBlock);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Write(*e, f, 0, a);
    ASSERT_TRUE(e->Sync(*f.file).ok());
    Write(*e, f, 0, b);
    ASSERT_TRUE(e->Persist().ok());
    Write(*e, f, 0, c);
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().rolled_back, 1u);
  EXPECT_EQ(e->recovery().lost, 0u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), b);
}

// A write lands while a persist is in progress (after it began, so not
// covered by it), and the power goes before that persist completes: the
// newest version and the one of the epoch that persist was closing are both
// lost; the synced one before them is there.
TEST_F(PowerLossTest, CrashDuringAPersistRollsBackTwoVersions) {
  std::mt19937_64 rng(3);
  MakeSource("f", Random(rng, kBlock));
  const std::string a = Random(rng, kBlock), b = Random(rng, kBlock), c = Random(rng, kBlock);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Write(*e, f, 0, a);
    ASSERT_TRUE(e->Sync(*f.file).ok());
    Write(*e, f, 0, b);
    m.store->SetPersistHook([&] {
      Write(*e, f, 0, c);
      m.power.Cut();
    });
    EXPECT_FALSE(e->Persist().ok());
    m.store->SetPersistHook(nullptr);
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().rolled_back, 1u);
  EXPECT_EQ(e->recovery().lost, 0u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), a);
}

// A sub-block written in place (not valid before) whose data is lost goes
// back to "not valid": SOURCE's bytes show through, the rest of the block
// keeps its synced data.
TEST_F(PowerLossTest, InPlaceSubBlockRollsBackToNotValid) {
  std::mt19937_64 rng(4);
  const std::string original = Random(rng, kBlock);
  MakeSource("f", original);
  const std::string a = Random(rng, kSubBlockSize), b = Random(rng, kSubBlockSize);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Write(*e, f, 0, a);
    ASSERT_TRUE(e->Sync(*f.file).ok());
    Write(*e, f, kSubBlockSize, b);  // in place: sub-block 1 held nothing
    EXPECT_EQ(Read(*e, f, 0, size_t{2} * kSubBlockSize), a + b);
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().rolled_back, 1u);
  EXPECT_EQ(e->recovery().lost, 0u);
  EXPECT_EQ(e->stats().blocks_dirty, 1u);
  e.reset();
  {
    // Sub-block 1 neither valid nor dirty in the record.
    auto meta = RocksMetaStore::Open(base_ + "/cache/meta", false);
    ASSERT_TRUE(meta.ok()) << meta.status().message();
    auto rec = meta.value()->GetBlock(1, 0);
    ASSERT_TRUE(rec.ok() && rec.value());
    EXPECT_TRUE(rec.value()->IsValid(0) && rec.value()->IsDirty(0));
    EXPECT_FALSE(rec.value()->IsValid(1) || rec.value()->IsDirty(1));
  }
  e = Open(Config());
  ASSERT_NE(e, nullptr);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), a + original.substr(kSubBlockSize));
}

// A clean block (a read miss installed) whose data did not reach the store
// is dropped at recovery and read from SOURCE again, no CRC error served.
TEST_F(PowerLossTest, CleanBlockIsDropped) {
  std::mt19937_64 rng(5);
  const std::string original = Random(rng, 2 * kBlock);
  MakeSource("f", original);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    EXPECT_EQ(Read(*e, f, 0, 2 * kBlock), original);
    EXPECT_EQ(e->stats().blocks_cached, 2u);
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().checked, 2u);
  EXPECT_EQ(e->recovery().lost, 0u);
  EXPECT_EQ(e->stats().blocks_cached, 0u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, 2 * kBlock), original);
  EXPECT_EQ(e->stats().crc_errors, 0u);
}

// A clean cached block written dirty and lost: back to the clean version,
// and out of the dirty index (nothing left to write back).
TEST_F(PowerLossTest, DirtyOverCleanRollsBackToClean) {
  std::mt19937_64 rng(6);
  const std::string original = Random(rng, kBlock);
  MakeSource("f", original);
  {
    FaultMachine m;
    EngineConfig config = Config();
    m.Hook(&config);
    auto e = Open(config);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    EXPECT_EQ(Read(*e, f, 0, kBlock), original);
    ASSERT_TRUE(e->Persist().ok());
    Write(*e, f, 100, Random(rng, 5000));
    EXPECT_TRUE(e->HasAnyDirty());
    PowerLoss(e, m);
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->recovery().rolled_back, 1u);
  EXPECT_FALSE(e->HasAnyDirty());
  EXPECT_EQ(e->stats().blocks_cached, 1u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, kBlock), original);
  EXPECT_EQ(e->stats().read_misses, 0u);  // served by the clean version
  e.reset();
  auto meta = RocksMetaStore::Open(base_ + "/cache/meta", false);
  ASSERT_TRUE(meta.ok()) << meta.status().message();
  int dirty_entries = 0;
  ASSERT_TRUE(meta.value()
                  ->ScanDirty([&](const DirtyRecord&) {
                    ++dirty_entries;
                    return true;
                  })
                  .ok());
  EXPECT_EQ(dirty_entries, 0);
}

// Two surviving records claim one slot (a stale clean record whose removal
// was lost, sorted first): the one whose data verifies there keeps it.
TEST_F(PowerLossTest, TwoRecordsClaimingOneSlot) {
  std::mt19937_64 rng(7);
  const std::string original = Random(rng, 2 * kBlock);
  MakeSource("f", original);
  const std::string a = Random(rng, kBlock);
  {
    auto e = Open(Config());
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Write(*e, f, kBlock, a);  // block 1, dirty
  }
  {
    auto meta = RocksMetaStore::Open(base_ + "/cache/meta", false);
    ASSERT_TRUE(meta.ok()) << meta.status().message();
    auto dirty = meta.value()->GetBlock(1, 1);
    ASSERT_TRUE(dirty.ok() && dirty.value());
    BlockRecord stale = BlockRecord::Empty(1, 0, kBlock);
    stale.slot = dirty.value()->slot;
    stale.generation = dirty.value()->generation + 100;
    for (uint32_t i = 0; i < stale.sub_blocks(); ++i) {
      stale.SetValid(i, true);
      stale.crc[i] = 12345 + i;
    }
    MetaBatch batch;
    batch.Put(stale);
    ASSERT_TRUE(meta.value()->Commit(batch, true).ok());
  }
  auto e = Open(Config());
  ASSERT_NE(e, nullptr);
  EXPECT_GE(e->recovery().checked, 1u);
  EXPECT_EQ(e->recovery().lost, 0u);
  EXPECT_EQ(e->stats().blocks_cached, 1u);
  EXPECT_EQ(e->stats().blocks_dirty, 1u);
  Opened f = OpenFile(*e, "f");
  EXPECT_EQ(Read(*e, f, 0, 2 * kBlock), original.substr(0, kBlock) + a);
}

// SOURCE that holds the writer: Stat from any thread but the test's waits
// while `hold` (the writer's round starts with a Stat); counts Syncs.
class HoldWriterBacking final : public Backing {
 public:
  explicit HoldWriterBacking(Backing* inner) : inner_(inner), test_(std::this_thread::get_id()) {}
  Result<size_t> Read(int fd, uint64_t off, size_t len, void* buf) override {
    return inner_->Read(fd, off, len, buf);
  }
  Status Write(int fd, uint64_t off, size_t len, const void* buf) override {
    return inner_->Write(fd, off, len, buf);
  }
  Status Sync(int fd) override {
    syncs++;
    return inner_->Sync(fd);
  }
  Status Stat(int fd, struct stat* st) override {
    if (std::this_thread::get_id() != test_) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !hold_; });
    }
    return inner_->Stat(fd, st);
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      hold_ = false;
    }
    cv_.notify_all();
  }
  std::atomic<int> syncs{0};

 private:
  Backing* inner_;
  std::thread::id test_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool hold_ = true;
};

// A dirty block fsynced, then written back (marked clean, not yet synced),
// then wanted as a victim by a read miss. Its slot must not take other data
// before the clean record is synced: after a power loss the synced record
// says dirty, recovery trusts it, and the block would read as EIO (until
// session 8 it did, and the file's writeback was stuck on it).
TEST_F(PowerLossTest, AFsyncedBlockWrittenBackAndEvictedSurvivesPowerLoss) {
  std::mt19937_64 rng(11);
  MakeSource("f", Random(rng, kBlock));
  MakeSource("g", Random(rng, 8 * kBlock));
  const std::string a = Random(rng, kBlock);
  EngineConfig config = Config();
  config.options.cache_size = SizeOrPercent{false, 0, 8 * kBlock};
  config.options.policy = "lru";
  {
    FaultMachine m;
    EngineConfig c = config;
    m.Hook(&c);
    auto e = Open(c);
    ASSERT_NE(e, nullptr);
    Opened f = OpenFile(*e, "f");
    Opened g = OpenFile(*e, "g");
    Write(*e, f, 0, a);
    ASSERT_TRUE(e->Sync(*f.file).ok());
    ASSERT_TRUE(e->Flush().ok());  // on SOURCE, synced there; marked clean (not synced)
    EXPECT_FALSE(e->HasAnyDirty());
    Read(*e, g, 0, 8 * kBlock);  // the 8th block wants f's slot (LRU)
    m.power.Cut();
    e.reset();
    ASSERT_NO_FATAL_FAILURE(LoseUnsyncedMetadata(m));
  }
  auto e = Open(config);
  ASSERT_NE(e, nullptr);
  Opened f = OpenFile(*e, "f");
  EXPECT_TRUE(Read(*e, f, 0, kBlock) == a);
  Status s = e->Flush();
  EXPECT_TRUE(s.ok()) << s.message();
}

// A write that finds the cache full of dirty blocks goes through to SOURCE
// (WriteBlockThrough) and the cache lets go of those sub-blocks: SOURCE's
// copy must be synced before that, or an fsync (which syncs the cache's
// records, saying SOURCE has them) would not make the write durable.
TEST_F(PowerLossTest, AWriteThroughFallbackIsSyncedOnSource) {
  std::mt19937_64 rng(12);
  const EngineConfig config = FullCacheSetup(rng);
  FaultMachine m;
  HoldWriterBacking hold(&m.backing);  // the writer makes no room meanwhile
  auto e = OpenOver(m, config, &hold);
  ASSERT_NE(e, nullptr);
  Opened g = OpenFile(*e, "g");
  Opened f = OpenFile(*e, "f");
  ASSERT_NO_FATAL_FAILURE(FillWithDirtyAndSync(*e, g, f, Random(rng, kBlock), rng));
  const int syncs_before = hold.syncs.load();
  Write(*e, f, 0, Random(rng, kSubBlockSize));  // no slot: through to SOURCE
  EXPECT_EQ(e->stats().write_through_fallbacks, 1u);
  EXPECT_GT(hold.syncs.load(), syncs_before) << "the write went through to SOURCE unsynced";
  hold.Release();
}

// A full cache of dirty blocks: a rewrite of an fsynced dirty sub-block goes
// through to SOURCE (the cache lets go of the sub-block), and the next write
// of that sub-block must not go in place over the fsynced data, which the
// synced record may still claim. Power loss: the store keeps what was
// written, the WAL what was synced; the sub-block must read as one of the
// writes, not fail its CRC (until session 8 it did).
TEST_F(PowerLossTest, AWriteAfterAWriteThroughNeverLandsOverSyncedData) {
  std::mt19937_64 rng(12);
  const EngineConfig config = FullCacheSetup(rng);
  const std::string x = Random(rng, kBlock);
  const std::string y = Random(rng, kSubBlockSize), z = Random(rng, kSubBlockSize);
  {
    FaultMachine m;
    HoldWriterBacking hold(&m.backing);
    auto e = OpenOver(m, config, &hold);
    ASSERT_NE(e, nullptr);
    Opened g = OpenFile(*e, "g");
    Opened f = OpenFile(*e, "f");
    ASSERT_NO_FATAL_FAILURE(FillWithDirtyAndSync(*e, g, f, x, rng));
    Write(*e, f, 0, y);  // no slot: through to SOURCE
    EXPECT_EQ(e->stats().write_through_fallbacks, 1u);
    Write(*e, f, 0, z);  // not in place over x: a new slot, or through to SOURCE again
    m.power.Cut();
    hold.Release();
    e.reset();
    ASSERT_NO_FATAL_FAILURE(LoseUnsyncedMetadata(m));  // the WAL as of the fsync after x
  }
  auto e = Open(config);
  ASSERT_NE(e, nullptr);
  Opened f = OpenFile(*e, "f");
  const std::string out = Read(*e, f, 0, kSubBlockSize);
  EXPECT_TRUE(out == x.substr(0, kSubBlockSize) || out == y || out == z);
}

TEST_F(PowerLossTest, RandomPowerLoss) {
  const uint64_t seed = EnvNumber("CACHEFS_POWERLOSS_SEED", std::random_device()());
  const uint64_t rounds = EnvNumber("CACHEFS_POWERLOSS_ITERATIONS", 10);
  for (uint64_t i = 0; i < rounds && !HasFailure(); ++i) Round(seed + i, /*lose_unsynced=*/true);
}

TEST_F(PowerLossTest, RandomKill) {
  const uint64_t seed = EnvNumber("CACHEFS_POWERLOSS_SEED", std::random_device()());
  const uint64_t rounds = std::max<uint64_t>(1, EnvNumber("CACHEFS_POWERLOSS_ITERATIONS", 10) / 3);
  for (uint64_t i = 0; i < rounds && !HasFailure(); ++i) Round(seed + i, /*lose_unsynced=*/false);
}

}  // namespace
}  // namespace cachefs
