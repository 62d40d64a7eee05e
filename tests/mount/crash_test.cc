// Crash tests for write caching (ARCHITECTURE.md contract 1a): every write
// acknowledged to the application survives kill -9 of the daemon, and once
// the writeback drains, SOURCE holds the same bytes.
//
// Each iteration runs a write workload from kThreads threads on kFiles files
// through the mount, kills the daemon with SIGKILL at a random moment, lazily
// unmounts the dead mount and mounts the same cache (same SOURCE, same cache
// directory) again. Then every file, read through the new mount, must hold
//   - every acknowledged byte (the in-memory shadow copy), except
//   - bytes under a write that was in flight at the kill (started, not
//     acknowledged): those hold either the shadow's byte or that write's,
// and its size must lie between the acknowledged size and the end of the
// furthest write in flight. What the new mount shows then becomes the shadow
// of the next iteration. The daemon must not report a conflict (only cachefs
// writes to SOURCE here). Every kDrainEvery iterations, and after the last,
// the writer must bring SOURCE itself to the shadow, byte for byte, both
// while mounted and after a clean unmount and a new mount. Files that reach
// kMaxFileSize are cut back by ftruncate through the mount between
// iterations, so that writes past the end happen in every iteration.
//
// The same in mode=writethrough (fewer iterations): there SOURCE must hold
// every acknowledged write right after the kill, before any new mount, and
// after the new mount SOURCE and the mount must agree byte for byte.
//
// Writes to one file are serialised by the test (a mutex per file held
// across pwrite and the shadow update), so that the shadow applies them in
// the order the kernel did; the kernel serialises writes to one inode
// anyway, so no concurrency the daemon could see is lost. Writes to
// different files, fsyncs and the daemon's writer thread all run at once.
//
// Reproduction: the seed (CACHEFS_CRASH_SEED, else random) is printed at the
// start and in every failure, with the iteration; it fixes every random
// choice (mount options, kill moment, each thread's writes), though not the
// threads' interleaving. CACHEFS_CRASH_ITERATIONS sets the number of
// iterations (default 50); tests/mount/crash_soak.sh runs many.
// CACHEFS_CRASH_KEEP=DIR keeps a copy of SOURCE, the cache (as the daemon
// left it: killed, not unmounted) and the daemon log of a failed test.
//
// Layout (under a fresh temporary directory `base`):
//   base/src  SOURCE (a plain directory)     base/mnt  the mount point
//   base/cache  the cache directory, kept across all iterations of a test
//   base/daemon.log  the stderr of every daemon of the test
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kFiles = 3;
constexpr int kThreads = 4;
constexpr size_t kMaxWrite = 300 << 10;
// Files grow by appends and by writes past their end up to this size (and
// are then cut back).
constexpr uint64_t kMaxFileSize = 3 << 20;
constexpr uint64_t kBlockSize = 64 << 10;
// Small enough that the dirty and quarantined slots of a few iterations put
// the store under pressure (eviction, and the persist and flush a write does
// when no slot is free): the files take up to 144 of its 256 slots.
constexpr const char* kCacheSize = "16M";
constexpr int kDefaultIterations = 50;
constexpr int kDrainEvery = 10;
constexpr auto kDrainDeadline = std::chrono::seconds(30);

// splitmix64's finaliser: a cheap, well-mixed hash of a 64-bit value.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The bytes of the write numbered `counter` to file `file` at [off, off+len):
// each byte depends on all three and on its own offset, so no two writes
// leave the same bytes and a byte out of place shows.
std::string WriteBytes(int file, uint64_t off, size_t len, uint64_t counter) {
  std::string data(len, '\0');
  const uint64_t key = Mix(counter * kFiles + static_cast<uint64_t>(file));
  size_t i = 0;
  while (i < len) {
    const uint64_t pos = off + i;
    const uint64_t word = Mix(key ^ (pos / 8));
    for (uint64_t k = pos % 8; k < 8 && i < len; ++k, ++i) {
      data[i] = static_cast<char>((word >> (8 * k)) & 0xff);
    }
  }
  return data;
}

std::string Name(int file) { return "file" + std::to_string(file); }

std::string Hex(char c) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02x", static_cast<unsigned char>(c));
  return buf;
}

// A write that was not (or only partly) acknowledged: its data at `off`.
struct Unacknowledged {
  uint64_t off = 0;
  std::string data;
  uint64_t end() const { return off + data.size(); }
};

// What the test knows about one file.
struct FileModel {
  // Held across a write to the file and the shadow update that follows it.
  std::mutex mu;
  // The file's contents as acknowledged writes left them.
  std::string shadow;
  // Writes in flight at the last kill; empty after the check that follows it.
  std::vector<Unacknowledged> in_flight;
  // The same, kept until the next kill to explain a later failure.
  std::vector<Unacknowledged> last_in_flight;
};

// Whether byte `pos` was under a write in flight at the last kill, in words.
std::string InFlightAt(const FileModel& m, uint64_t pos) {
  for (const Unacknowledged& w : m.last_in_flight) {
    if (pos >= w.off && pos < w.end()) {
      return "byte " + std::to_string(pos) + " was under the write [" + std::to_string(w.off) +
             ", " + std::to_string(w.end()) + ") in flight at the last kill, whose byte is " +
             Hex(w.data[pos - w.off]);
    }
  }
  return "byte " + std::to_string(pos) + " was under no write in flight at the last kill";
}

// Why `got` cannot be the file `m` describes after a crash; "" if it can.
// Sets `*at` (if given) to the first offending byte, or to npos when the size
// is what is wrong.
std::string Explain(const std::string& got, const FileModel& m, size_t* at = nullptr) {
  if (at != nullptr) *at = std::string::npos;
  const std::string& want = m.shadow;
  uint64_t max_end = want.size();
  std::ostringstream flight;
  for (const Unacknowledged& w : m.in_flight) {
    max_end = std::max(max_end, w.end());
    flight << " [" << w.off << ", " << w.end() << ")";
  }
  const std::string in_flight =
      m.in_flight.empty() ? "; no write was in flight" : "; in flight:" + flight.str();
  std::ostringstream out;
  if (got.size() < want.size()) {
    out << "size " << got.size() << " is less than the acknowledged " << want.size() << in_flight;
    return out.str();
  }
  if (got.size() > max_end) {
    out << "size " << got.size() << " is past the end of every write (" << max_end << ")"
        << in_flight;
    return out.str();
  }
  size_t pos = 0;
  while (pos < got.size()) {
    // The next byte that differs from the shadow (zeros past its end: a hole
    // left by a write in flight past the acknowledged end).
    if (pos < want.size()) {
      auto diff = std::mismatch(got.begin() + static_cast<std::ptrdiff_t>(pos),
                                got.begin() + static_cast<std::ptrdiff_t>(want.size()),
                                want.begin() + static_cast<std::ptrdiff_t>(pos));
      pos = static_cast<size_t>(diff.first - got.begin());
      if (pos == want.size()) continue;
    } else {
      pos = got.find_first_not_of('\0', pos);
      if (pos == std::string::npos) break;
    }
    const char expected = pos < want.size() ? want[pos] : '\0';
    bool from_flight = false;
    for (const Unacknowledged& w : m.in_flight) {
      if (pos >= w.off && pos < w.end() && w.data[pos - w.off] == got[pos]) from_flight = true;
    }
    if (!from_flight) {
      if (at != nullptr) *at = pos;
      out << "first difference at byte " << pos << " (block " << pos / kBlockSize << ", sub-block "
          << (pos % kBlockSize) / 4096 << "): " << Hex(got[pos]) << ", acknowledged "
          << Hex(expected) << "; size " << got.size() << ", acknowledged " << want.size()
          << in_flight;
      return out.str();
    }
    ++pos;
  }
  return "";
}

// The whole of `path` read through a fresh descriptor; sets `*error` to a
// description of what failed ("" if nothing), including a size that fstat
// and read do not agree on.
std::string ReadWhole(const std::string& path, std::string* error) {
  error->clear();
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = "open " + path + ": " + std::strerror(errno);
    return "";
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    *error = "fstat " + path + ": " + std::strerror(errno);
    close(fd);
    return "";
  }
  std::string data(static_cast<size_t>(st.st_size) + 1, '\0');
  size_t got = 0;
  while (true) {
    if (got == data.size()) data.resize(data.size() * 2);
    ssize_t n = pread(fd, data.data() + got, data.size() - got, static_cast<off_t>(got));
    if (n < 0) {
      *error = "read " + path + " at " + std::to_string(got) + ": " + std::strerror(errno);
      break;
    }
    if (n == 0) break;
    got += static_cast<size_t>(n);
  }
  close(fd);
  data.resize(got);
  if (error->empty() && got != static_cast<size_t>(st.st_size)) {
    *error = path + ": fstat says " + std::to_string(st.st_size) + " bytes, read gave " +
             std::to_string(got);
  }
  return data;
}

// One failed system call of a workload thread.
struct Failure {
  std::string op;
  int err = 0;  // 0: a short write
  Clock::time_point when;
};

// One workload thread's part: its descriptors (one per file, on the mount),
// the write it has in flight, its counts and its failures.
struct Worker {
  std::vector<int> fds;
  std::optional<std::pair<int, Unacknowledged>> pending;  // file, write
  uint64_t writes = 0;
  uint64_t bytes = 0;
  uint64_t fsyncs = 0;
  std::vector<Failure> failures;
};

// Figures over all iterations of a test, printed at its end.
struct Totals {
  uint64_t writes = 0;
  uint64_t bytes = 0;
  uint64_t fsyncs = 0;
  uint64_t truncates = 0;
  int kills_mid_write = 0;
  std::map<int, int> errnos_after_kill;
  int drains = 0;
  double max_drain_s = 0;
};

uint64_t SeedFromEnv() {
  const char* s = std::getenv("CACHEFS_CRASH_SEED");
  if (s != nullptr && *s != '\0') return std::strtoull(s, nullptr, 0);
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

int IterationsFromEnv() {
  const char* s = std::getenv("CACHEFS_CRASH_ITERATIONS");
  if (s != nullptr && *s != '\0') return std::max(1, std::atoi(s));
  return kDefaultIterations;
}

class CrashTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = MakeTempDir("crash");
    ASSERT_FALSE(base_.empty());
    ASSERT_EQ(mkdir(src().c_str(), 0755), 0);
    ASSERT_EQ(mkdir(mnt().c_str(), 0755), 0);
    seed_ = SeedFromEnv();
    iterations_ = IterationsFromEnv();
    RecordProperty("seed", std::to_string(seed_));
  }

  void TearDown() override {
    mount_.reset();
    if (HasFailure()) PrintLogTail();
    if (!base_.empty()) RemoveTree(base_);
  }

  std::string src() const { return base_ + "/src"; }
  std::string mnt() const { return base_ + "/mnt"; }
  std::string cache() const { return base_ + "/cache"; }
  std::string log() const { return base_ + "/daemon.log"; }

  // Where a failure happened, to reproduce it.
  std::string Where(int iteration, int file = -1) const {
    std::string s =
        mode_ + ", seed " + std::to_string(seed_) + ", iteration " + std::to_string(iteration);
    if (file >= 0) s += ", " + Name(file);
    return s;
  }

  void PrintLogTail() const {
    std::string error;
    std::string text = ReadWhole(log(), &error);
    size_t from = text.size();
    for (int lines = 0; lines < 30 && from > 0; ++lines) {
      from = text.rfind('\n', from - 1);
      if (from == std::string::npos) {
        from = 0;
        break;
      }
    }
    std::printf("--- last lines of %s ---\n%s\n", log().c_str(), text.substr(from).c_str());
  }

  // With CACHEFS_CRASH_KEEP=DIR, copies SOURCE, the cache and the log to a
  // fresh directory under DIR for a post-mortem (the test's own tree goes).
  void KeepForDiagnosis() {
    const char* keep = std::getenv("CACHEFS_CRASH_KEEP");
    if (keep == nullptr || *keep == '\0') return;
    if (mount_ != nullptr) {
      // Frozen as it is: a clean unmount would write back and change it.
      kill(mount_->daemon_pid(), SIGKILL);
      mount_->Unmount();
      mount_.reset();
    }
    std::string dest = std::string(keep) + "/crash-" + std::to_string(seed_);
    CommandResult r = RunCommand("mkdir -p '" + dest + "' && cp -a '" + src() + "' '" + cache() +
                                 "' '" + log() + "' '" + dest + "/'");
    std::printf("kept SOURCE, cache and log in %s%s\n", dest.c_str(),
                r.exit_code == 0 ? "" : (": " + r.output).c_str());
  }

  // What the daemons have logged since the last call.
  std::string NewLogText() {
    std::string error;
    std::string text = ReadWhole(log(), &error);
    std::string fresh = log_seen_ < text.size() ? text.substr(log_seen_) : "";
    log_seen_ = text.size();
    return fresh;
  }

  // The daemon log's lines that contain `word`, as the tail of a message.
  std::string LogMentions(const std::string& word) const {
    std::string error;
    std::istringstream in(ReadWhole(log(), &error));
    std::string out;
    std::string line;
    while (std::getline(in, line)) {
      if (line.find(word) != std::string::npos) out += "\n  log: " + line;
    }
    return out;
  }

  // The files as they stand in SOURCE before the first mount: one larger
  // than a few blocks and not block-aligned, one empty, one short.
  void CreateFiles() {
    const uint64_t sizes[kFiles] = {(1 << 20) + 1234, 0, 100000};
    for (int f = 0; f < kFiles; ++f) {
      files_[f].shadow = WriteBytes(f, 0, sizes[f], Mix(seed_) + static_cast<uint64_t>(f));
      WriteFile(src() + "/" + Name(f), files_[f].shadow);
    }
  }

  // Mounts the test's cache over SOURCE with a random writeback delay and
  // commit interval.
  bool Mount() {
    char delay[32];
    std::snprintf(delay, sizeof(delay), "%.2f",
                  std::uniform_real_distribution<double>(0.05, 1.0)(rng_));
    const int commit_ms = std::uniform_int_distribution<int>(50, 1000)(rng_);
    std::vector<std::string> args = {"--cache=" + cache(),
                                     std::string("--cache_size=") + kCacheSize,
                                     "--block_size=" + std::to_string(kBlockSize >> 10) + "K",
                                     "--mode=" + mode_,
                                     std::string("--writeback_delay=") + delay,
                                     "--commit_interval=" + std::to_string(commit_ms)};
    mount_ = MountedCachefs::StartAt(src(), mnt(), args, log());
    return mount_ != nullptr;
  }

  // One workload thread: random writes until `stop`, an fsync every 8 to 12
  // writes. Stops at the first failure (the daemon is dead by then, or the
  // failure fails the test).
  void Work(int iteration, int t, Worker& w, const std::atomic<bool>& stop) {
    std::mt19937_64 rng(Mix(seed_ ^ Mix(static_cast<uint64_t>(iteration) * kThreads + t + salt_)));
    uint64_t counter = (static_cast<uint64_t>(iteration) * kThreads + t + 1) << 32;
    int until_fsync = std::uniform_int_distribution<int>(8, 12)(rng);
    while (!stop.load()) {
      const int f = static_cast<int>(rng() % kFiles);
      FileModel& m = files_[f];
      const int kind = static_cast<int>(rng() % 4);
      const bool aligned = kind == 1;
      size_t len;
      if (kind == 0) {
        len = 1 + rng() % 512;  // tiny, within one sub-block or across two
      } else if (aligned) {
        len = 4096 * (1 + rng() % (kMaxWrite / 4096));
      } else {
        len = 1 + rng() % kMaxWrite;
      }
      {
        std::lock_guard<std::mutex> lock(m.mu);
        if (stop.load()) break;
        const uint64_t size = m.shadow.size();
        uint64_t off;
        switch (rng() % 4) {
          case 0:  // append, sometimes leaving a hole
            off = size + (rng() % 2 == 0 ? 0 : rng() % (2 * kBlockSize));
            break;
          default:  // anywhere up to the end
            off = rng() % (size + 1);
        }
        if (aligned) off -= off % 4096;
        if (off + len > kMaxFileSize) off = kMaxFileSize - len;
        if (aligned) off -= off % 4096;
        w.pending.emplace(f, Unacknowledged{off, WriteBytes(f, off, len, counter++)});
        const std::string& data = w.pending->second.data;
        ssize_t n = pwrite(w.fds[f], data.data(), len, static_cast<off_t>(off));
        const int err = errno;
        if (n > 0) {
          // Acknowledged, at least in part: the shadow takes it now, before
          // any other write to the file can start.
          const size_t done = static_cast<size_t>(n);
          if (off + done > m.shadow.size()) m.shadow.resize(off + done, '\0');
          m.shadow.replace(off, done, data, 0, done);
          w.bytes += done;
        }
        if (n == static_cast<ssize_t>(len)) {
          w.pending.reset();
          w.writes++;
        } else {
          // What the kernel did not acknowledge stays in flight.
          if (n > 0) {
            w.pending->second.off += static_cast<uint64_t>(n);
            w.pending->second.data.erase(0, static_cast<size_t>(n));
          }
          w.failures.push_back(Failure{"pwrite " + Name(f) + " [" + std::to_string(off) + ", " +
                                           std::to_string(off + len) + ") returned " +
                                           std::to_string(n),
                                       n < 0 ? err : 0, Clock::now()});
          break;
        }
      }
      if (--until_fsync == 0) {
        until_fsync = std::uniform_int_distribution<int>(8, 12)(rng);
        if (stop.load()) break;
        if (fsync(w.fds[f]) != 0) {
          w.failures.push_back(Failure{"fsync " + Name(f), errno, Clock::now()});
          break;
        }
        w.fsyncs++;
      }
    }
  }

  // Checks every file through the mount against the model (a crash may have
  // left writes in flight) and adopts what it finds as the new shadow.
  // Returns false (and fails the test) on the first file that is wrong.
  bool CheckMountAndAdopt(int iteration) {
    for (int f = 0; f < kFiles; ++f) {
      std::string error;
      std::string got = ReadWhole(mnt() + "/" + Name(f), &error);
      if (!error.empty()) {
        ADD_FAILURE() << Where(iteration, f) << ": " << error;
        return false;
      }
      size_t at = std::string::npos;
      std::string why = Explain(got, files_[f], &at);
      if (!why.empty()) {
        std::string source = ReadWhole(src() + "/" + Name(f), &error);
        std::string there;
        if (at != std::string::npos) {
          there = at < source.size() ? ", " + Hex(source[at]) + " at that byte" : ", none there";
        }
        ADD_FAILURE() << Where(iteration, f)
                      << ", through the mount after kill -9 and remount: " << why << ". SOURCE has "
                      << source.size() << " bytes" << there << LogMentions("conflict");
        KeepForDiagnosis();
        return false;
      }
      files_[f].shadow = std::move(got);
      files_[f].last_in_flight = std::move(files_[f].in_flight);
      files_[f].in_flight.clear();
    }
    return true;
  }

  // Checks every file in SOURCE against the model (writes in flight allowed),
  // without adopting anything. Returns false (and fails the test) if one is wrong.
  bool CheckSource(int iteration, const char* when) {
    for (int f = 0; f < kFiles; ++f) {
      std::string error;
      std::string got = ReadWhole(src() + "/" + Name(f), &error);
      std::string why = error.empty() ? Explain(got, files_[f]) : error;
      if (!why.empty()) {
        ADD_FAILURE() << Where(iteration, f) << ", in SOURCE " << when << ": " << why;
        return false;
      }
    }
    return true;
  }

  // Polls until SOURCE holds exactly the shadow (the writeback drained), for
  // at most kDrainDeadline. Returns false (and fails the test) if it does not.
  bool WaitForSource(int iteration, const char* when) {
    const auto start = Clock::now();
    const auto deadline = start + kDrainDeadline;
    while (true) {
      int wrong = -1;
      std::string why;
      for (int f = 0; f < kFiles && wrong < 0; ++f) {
        std::string error;
        std::string got = ReadWhole(src() + "/" + Name(f), &error);
        if (!error.empty()) {
          why = error;
          wrong = f;
        } else if (got != files_[f].shadow) {
          size_t at = std::string::npos;
          why = Explain(got, files_[f], &at);
          if (why.empty()) why = "differs";  // cannot happen: no write is in flight
          if (at != std::string::npos) why += "; " + InFlightAt(files_[f], at);
          wrong = f;
        }
      }
      if (wrong < 0) {
        const double s = std::chrono::duration<double>(Clock::now() - start).count();
        totals_.drains++;
        totals_.max_drain_s = std::max(totals_.max_drain_s, s);
        return true;
      }
      if (Clock::now() > deadline) {
        ADD_FAILURE() << Where(iteration, wrong) << ": SOURCE " << when << " still differs after "
                      << kDrainDeadline.count() << " s: " << why << LogMentions("conflict");
        KeepForDiagnosis();
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // Step 5: the writer brings SOURCE to the shadow while mounted; then a
  // clean unmount (exit status 0) and a new mount, after which SOURCE and the
  // mount both hold exactly the shadow.
  bool Drain(int iteration) {
    if (!WaitForSource(iteration, "while mounted")) return false;
    int status = mount_->Unmount();
    mount_.reset();
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      ADD_FAILURE() << Where(iteration) << ": clean unmount, daemon status " << status;
      return false;
    }
    if (!Mount()) return false;
    if (!WaitForSource(iteration, "after a clean unmount and a new mount")) return false;
    return CheckMountAndAdopt(iteration);
  }

  // Files that have grown to about kMaxFileSize are cut back (ftruncate
  // through the mount, acknowledged like a write), so that writes keep
  // growing files in every iteration, not only in the first few.
  bool ShrinkFullFiles(int iteration) {
    for (int f = 0; f < kFiles; ++f) {
      FileModel& m = files_[f];
      if (m.shadow.size() + kMaxWrite < kMaxFileSize) continue;
      const uint64_t size = rng_() % (kMaxFileSize / 2);
      int fd = open((mnt() + "/" + Name(f)).c_str(), O_RDWR | O_CLOEXEC);
      const int res = fd < 0 ? -1 : ftruncate(fd, static_cast<off_t>(size));
      const int err = errno;
      if (fd >= 0) close(fd);
      if (res != 0) {
        ADD_FAILURE() << Where(iteration, f) << ": ftruncate to " << size << ": "
                      << std::strerror(err);
        return false;
      }
      m.shadow.resize(size);
      totals_.truncates++;
    }
    return true;
  }

  // One iteration on the live mount: workload, kill -9, lazy unmount, new
  // mount, check (and in writethrough mode, SOURCE before the new mount).
  // Returns false once the test has failed.
  bool Iterate(int iteration) {
    if (!ShrinkFullFiles(iteration)) return false;
    std::vector<Worker> workers(kThreads);
    for (Worker& w : workers) {
      for (int f = 0; f < kFiles; ++f) {
        int fd = open((mnt() + "/" + Name(f)).c_str(), O_RDWR | O_CLOEXEC);
        if (fd < 0) {
          ADD_FAILURE() << Where(iteration, f) << ": open: " << std::strerror(errno);
          for (Worker& x : workers) {
            for (int d : x.fds) close(d);
          }
          return false;
        }
        w.fds.push_back(fd);
      }
    }
    const auto kill_after =
        std::chrono::milliseconds(std::uniform_int_distribution<int>(10, 300)(rng_));
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    threads.reserve(kThreads);
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back(
          [this, iteration, t, &workers, &stop] { Work(iteration, t, workers[t], stop); });
    }
    // The random moment of the crash: a sleep is the point here, not a wait.
    std::this_thread::sleep_for(kill_after);
    stop.store(true);
    const auto kill_time = Clock::now();
    const int kill_err = kill(mount_->daemon_pid(), SIGKILL) == 0 ? 0 : errno;
    // Lazily unmounts the dead mount and reaps the daemon; the connection is
    // aborted when the daemon dies, so every write in flight returns.
    const int status = mount_->Unmount();
    mount_.reset();
    for (std::thread& th : threads) th.join();
    for (Worker& w : workers) {
      for (int d : w.fds) close(d);
    }
    EXPECT_EQ(kill_err, 0) << Where(iteration) << ": kill: " << std::strerror(kill_err);
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << Where(iteration) << ": the daemon ended with status " << status
        << " before it was killed";
    bool mid_write = false;
    for (Worker& w : workers) {
      totals_.writes += w.writes;
      totals_.bytes += w.bytes;
      totals_.fsyncs += w.fsyncs;
      for (const Failure& fail : w.failures) {
        const bool after_kill = fail.when >= kill_time;
        // ECONNABORTED: aborted with the connection when the daemon died;
        // ENOTCONN: sent after that; EIO: the kernel's answer when the
        // daemon dies while it copies the request in.
        const bool expected =
            fail.err == 0 || fail.err == ENOTCONN || fail.err == ECONNABORTED || fail.err == EIO;
        if (after_kill) totals_.errnos_after_kill[fail.err]++;
        EXPECT_TRUE(after_kill && expected)
            << Where(iteration) << ": " << fail.op << ", errno " << fail.err << " ("
            << std::strerror(fail.err) << ") " << (after_kill ? "after" : "before") << " the kill";
      }
      if (w.pending) {
        mid_write = true;
        files_[w.pending->first].in_flight.push_back(std::move(w.pending->second));
      }
    }
    if (mid_write) totals_.kills_mid_write++;
    if (HasFailure()) return false;
    // Writethrough: an acknowledged write is in SOURCE before the reply,
    // whatever became of the daemon.
    if (mode_ == "writethrough" && !CheckSource(iteration, "right after kill -9")) return false;
    if (!Mount()) return false;
    if (!CheckMountAndAdopt(iteration)) return false;
    // Nobody changes SOURCE behind the daemon's back here: a conflict can
    // only be the daemon mistaking its own writes (cut short by the kill)
    // for an outside change, and its dirty data would never be written back.
    if (NewLogText().find("conflict") != std::string::npos) {
      ADD_FAILURE() << Where(iteration) << ": the daemon reported a conflict after kill -9 and "
                    << "remount, though nothing but cachefs writes to SOURCE"
                    << LogMentions("conflict");
      KeepForDiagnosis();
      return false;
    }
    // Writethrough: the cache holds no data SOURCE lacks, not even of a
    // write cut short by the kill.
    if (mode_ == "writethrough" && !WaitForSource(iteration, "after the new mount")) return false;
    const bool last = iteration + 1 == iterations_;
    if ((iteration + 1) % kDrainEvery == 0 || last) return Drain(iteration);
    return true;
  }

  // The whole test in `mode` with `iterations` iterations.
  void Run(const std::string& mode, int iterations, uint64_t salt) {
    mode_ = mode;
    iterations_ = iterations;
    salt_ = salt;
    rng_.seed(Mix(seed_ ^ salt));
    std::printf("CrashTest %s: seed %" PRIu64 " (CACHEFS_CRASH_SEED=%" PRIu64
                " repeats its choices), %d iterations\n",
                mode_.c_str(), seed_, seed_, iterations_);
    std::fflush(stdout);
    const auto start = Clock::now();
    CreateFiles();
    ASSERT_TRUE(Mount());
    int done = 0;
    while (done < iterations_ && Iterate(done)) ++done;
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    std::ostringstream errnos;
    for (const auto& [err, count] : totals_.errnos_after_kill) {
      errnos << " " << (err == 0 ? "short" : strerrorname_np(err)) << "=" << count;
    }
    std::ostringstream line;
    line << "CrashTest " << mode << ": " << done << " of " << iterations_ << " iterations in "
         << static_cast<int>(s * 10) / 10.0 << " s; " << totals_.writes << " acknowledged writes ("
         << totals_.bytes / (1 << 20) << " MiB), " << totals_.fsyncs << " fsyncs, "
         << totals_.truncates << " truncates; killed mid-write " << totals_.kills_mid_write
         << " times; failures after the kill:" << errnos.str() << "; " << totals_.drains
         << " drains, longest " << static_cast<int>(totals_.max_drain_s * 100) / 100.0 << " s";
    std::printf("%s\n", line.str().c_str());
    std::fflush(stdout);
    EXPECT_GT(totals_.writes, 0u) << "the workload wrote nothing";
  }

  std::string base_;
  uint64_t seed_ = 0;
  uint64_t salt_ = 0;
  int iterations_ = kDefaultIterations;
  std::string mode_;
  size_t log_seen_ = 0;
  std::mt19937_64 rng_;
  FileModel files_[kFiles];
  Totals totals_;
  std::unique_ptr<MountedCachefs> mount_;
};

TEST_F(CrashTest, WritebackKeepsEveryAcknowledgedWriteAcrossKill9) {
  Run("writeback", iterations_, 1);
}

// Writethrough: the data is in SOURCE as soon as the write returns. A few
// iterations: its daemon holds nothing SOURCE does not.
TEST_F(CrashTest, WritethroughHasEveryAcknowledgedWriteInSource) {
  Run("writethrough", std::max(3, iterations_ / 10), 2);
}

}  // namespace
}  // namespace cachefs::testing
