// Offline check, repair and dump of a cache directory (cachefsctl check and
// cachefsctl dump).
//
// CheckCache opens a cache that no mount is using (it takes the cache
// directory's lock, so a cache in use is refused with one line), reads the
// whole metadata and, unless told not to, the data of every valid sub-block,
// and reports what is inconsistent: the superblock and the store file, every
// block record (slot in range and used once, sub-block count, dirty bits only
// where valid, dirty_seq set exactly when dirty, its file record present,
// CRCs against the store's data), the dirty index against the dirty blocks,
// and the file records against the paths. Each problem has a class:
//
//   repairable  repair fixes it and loses nothing that is not on SOURCE (a
//               clean sub-block that fails its CRC is invalidated and
//               refetched later; a wrong dirty index entry is rewritten);
//   data loss   dirty data, which is not on SOURCE, is lost (a dirty
//               sub-block whose CRC fails) or cannot be written back (dirty
//               blocks whose file is unknown: repair keeps them aside under
//               a file record flagged unmatched and conflict, so the writer
//               never writes them anywhere; contract 4);
//   fatal       the cache cannot be used or checked further (no superblock,
//               a newer format, a missing store); repair leaves it alone.
//
// The verdict is clean (no problem), repairable (only repairable ones) or
// broken (any data loss or fatal problem). With `repair`, the fixes are
// committed in synced metadata batches (a crash in between leaves a cache
// that the next check repairs further), then the cache is checked again.
// Repair never drops dirty data whose CRCs verify.
//
// DumpCache reads the same metadata and returns it whole, for people and
// scripts; it changes nothing (it takes the lock too, so a mounted cache
// is refused the same way).
//
// Thread-safety: the functions may be called from any thread; the cache
// directory's lock makes one caller per cache (and no mount) at a time.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "meta/records.h"

namespace cachefs {

enum class CheckVerdict { kClean, kRepairable, kBroken };
// "clean", "repairable", "broken".
const char* CheckVerdictName(CheckVerdict v);

// How bad one problem is (see above).
enum class ProblemClass { kRepairable, kDataLoss, kFatal };
// "repairable", "data_loss", "fatal".
const char* ProblemClassName(ProblemClass c);

struct CheckProblem {
  ProblemClass cls = ProblemClass::kRepairable;
  // A stable identifier of the kind of problem (docs/control.md lists them).
  std::string code;
  // The object: "superblock", "store '/c/store'", "block 3/17 ('a/b' at
  // 1114112, slot 9)", "file 3 ('a/b')", "path 'a/b'", "dirty entry 12".
  std::string where;
  std::string what;    // what is wrong
  std::string repair;  // what repair does about it ("" for fatal ones)

  // "CLASS: WHERE: WHAT (repair: REPAIR)", one line.
  std::string Line() const;
};

struct CheckOptions {
  // Read the data of every valid sub-block and compare it with its CRC.
  // Default: on. Repair always reads the data (it must know what verifies).
  bool verify_data = true;
  // Fix what can be fixed, then check again. Default: off.
  bool repair = false;
};

// What the cache holds, as the check found it.
struct CheckCounts {
  uint64_t files = 0;            // file records
  uint64_t paths = 0;            // names (paths family)
  uint64_t blocks = 0;           // block records
  uint64_t dirty_blocks = 0;     // block records with a dirty sub-block
  uint64_t dirty_entries = 0;    // dirty index entries
  uint64_t cached_bytes = 0;     // valid sub-blocks x 4 KiB
  uint64_t dirty_bytes = 0;      // dirty sub-blocks x 4 KiB
  uint64_t verified_bytes = 0;   // valid bytes read and compared with their CRC
  uint64_t conflict_files = 0;   // files flagged conflict (changed outside while dirty)
  uint64_t unmatched_files = 0;  // files kept aside (flagged unmatched)
};

struct CheckReport {
  std::string cache_dir;
  std::optional<Superblock> superblock;  // absent when it is missing or corrupt
  bool data_verified = false;            // the CRCs were compared with the store's data
  CheckCounts counts;
  std::vector<CheckProblem> problems;
  CheckVerdict verdict = CheckVerdict::kClean;
  // With repair (only when there was something to repair): the repair ran,
  // and what the check after it found.
  bool repaired = false;
  // Why the repair stopped or was not attempted ("" when it ran through).
  std::string repair_error;
  std::optional<CheckVerdict> verdict_after;
  std::vector<CheckProblem> problems_after;
  CheckCounts counts_after;
};

// Checks (and with options.repair, repairs) the cache in `dir`. Fails, with
// one line and nothing changed, when the check cannot start: `dir` is
// missing or is not a cache directory (ENOENT, ENOTDIR), the cache is in
// use by a mount (EBUSY), its metadata cannot be opened. Everything found
// after that is in the report.
Result<CheckReport> CheckCache(const std::string& dir, const CheckOptions& options);

// One file of the cache with what it has cached.
struct DumpedFile {
  // False for blocks whose file has no record: only record.file_id is set.
  bool has_record = true;
  FileRecord record;
  std::vector<std::string> names;  // paths naming it, in byte order
  uint64_t cached_blocks = 0;
  uint64_t dirty_blocks = 0;
};

struct CacheDump {
  std::string cache_dir;
  Superblock superblock;
  std::optional<MountState> mount_state;
  std::optional<PersistentCounters> counters;
  // By file id; ids that only blocks name (no file record) too.
  std::vector<DumpedFile> files;
  uint64_t blocks = 0;
  uint64_t dirty_blocks = 0;
  uint64_t dirty_entries = 0;
  std::vector<BlockRecord> block_records;  // with `with_blocks`, by file and index
};

// Reads the whole metadata of the cache in `dir`. Fails with one line when
// the cache cannot be opened (as CheckCache) or its metadata does not read
// (no superblock, a corrupt record: cachefsctl check says more).
Result<CacheDump> DumpCache(const std::string& dir, bool with_blocks);

}  // namespace cachefs
