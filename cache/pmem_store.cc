#include "cache/pmem_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "cache/file_store.h"

namespace cachefs {
namespace {

// Past this many recorded ranges RecordDirty merges them, so the list stays
// small whatever the write rate between persists.
constexpr size_t kMaxDirtyRanges = 4096;
// Past this many disjoint ranges at Persist() one msync covers them all: each
// msync is a separate fsync of the range (a journal commit and a device cache
// flush on ext4), while clean pages inside a larger range cost next to
// nothing to skip.
constexpr size_t kMaxMsyncCalls = 16;
constexpr uint64_t kCacheLine = 64;

std::string What(const std::string& path) { return "store '" + path + "'"; }

// libpmem2 returns -errno for system call failures and its own codes
// (PMEM2_E_*) otherwise. (pmem2_err_to_errno is declared but not exported by
// libpmem2 1.12.)
int ErrnoOfPmem2(int rc) {
  if (rc < 0 && rc > -4096) return -rc;
  switch (rc) {
    case PMEM2_E_NOSUPP:
    case PMEM2_E_GRANULARITY_NOT_SUPPORTED:
    case PMEM2_E_SOURCE_TYPE_NOT_SUPPORTED:
      return EOPNOTSUPP;
    case PMEM2_E_IO_FAIL:
      return EIO;
    case PMEM2_E_NO_ACCESS:
      return EACCES;
    default:
      return EINVAL;
  }
}

Status Pmem2Error(int rc, const std::string& what) {
  return Status::Error(ErrnoOfPmem2(rc), what + ": " + pmem2_errormsg());
}

struct SourceDeleter {
  void operator()(pmem2_source* s) const { pmem2_source_delete(&s); }
};
struct ConfigDeleter {
  void operator()(pmem2_config* c) const { pmem2_config_delete(&c); }
};

PmemStore::Granularity FromPmem2(pmem2_granularity g) {
  switch (g) {
    case PMEM2_GRANULARITY_BYTE:
      return PmemStore::Granularity::kByte;
    case PMEM2_GRANULARITY_CACHE_LINE:
      return PmemStore::Granularity::kCacheLine;
    case PMEM2_GRANULARITY_PAGE:
      break;
  }
  return PmemStore::Granularity::kPage;
}

}  // namespace

void PmemStore::SortAndMerge(std::vector<Range>* ranges) {
  std::sort(ranges->begin(), ranges->end(),
            [](const Range& a, const Range& b) { return a.begin < b.begin; });
  size_t out = 0;
  for (const Range& r : *ranges) {
    if (out > 0 && r.begin <= (*ranges)[out - 1].end) {
      (*ranges)[out - 1].end = std::max((*ranges)[out - 1].end, r.end);
    } else {
      (*ranges)[out++] = r;
    }
  }
  ranges->resize(out);
}

const char* PmemStore::GranularityName(Granularity g) {
  switch (g) {
    case Granularity::kByte:
      return "byte";
    case Granularity::kCacheLine:
      return "cache-line";
    case Granularity::kPage:
      break;
  }
  return "page";
}

Result<std::unique_ptr<PmemStore>> PmemStore::Open(const StoreConfig& cfg, bool create) {
  const std::string what = What(cfg.path);
  Result<int> fd = OpenStoreFile(cfg, create, 0);
  if (!fd.ok()) return fd.status();
  // The mapping keeps its own reference to the file: the descriptor is
  // closed on every path out of here.
  std::unique_ptr<int, void (*)(const int*)> fd_guard(&fd.value(), [](const int* f) { close(*f); });

  // Fill any holes (a file made with truncate, or punched by someone): a
  // store into the mapping must never need a block allocation, which on a
  // full file system raises SIGBUS instead of returning ENOSPC.
  struct stat st {};
  if (fstat(fd.value(), &st) == 0 && S_ISREG(st.st_mode) &&
      fallocate(fd.value(), 0, 0, static_cast<off_t>(cfg.size_bytes())) != 0 &&
      errno != EOPNOTSUPP) {
    return Status::FromErrno(errno, what + ": allocate the holes of the store file");
  }

  pmem2_source* raw_src = nullptr;
  if (int rc = pmem2_source_from_fd(&raw_src, fd.value()); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_source_from_fd");
  }
  std::unique_ptr<pmem2_source, SourceDeleter> src(raw_src);
  size_t have = 0;
  size_t alignment = 0;
  if (int rc = pmem2_source_size(src.get(), &have); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_source_size");
  }
  if (int rc = pmem2_source_alignment(src.get(), &alignment); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_source_alignment");
  }
  // Device DAX may need mappings in multiples of 2 MiB or 1 GiB; the tail
  // beyond the last slot is mapped and unused.
  const uint64_t want = cfg.size_bytes();
  const uint64_t length = alignment > 1 ? (want + alignment - 1) / alignment * alignment : want;
  if (have < length) {
    return Status::Invalid(what + " holds " + std::to_string(have) + " bytes, less than the " +
                           std::to_string(length) + " its " + std::to_string(cfg.slot_count) +
                           " slots need (mapping alignment " + std::to_string(alignment) + ")");
  }

  pmem2_config* raw_config = nullptr;
  if (int rc = pmem2_config_new(&raw_config); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_config_new");
  }
  std::unique_ptr<pmem2_config, ConfigDeleter> config(raw_config);
  // PAGE is the weakest requirement: any file will do, and libpmem2 picks the
  // finest granularity the mapping really has.
  if (int rc = pmem2_config_set_required_store_granularity(config.get(), PMEM2_GRANULARITY_PAGE);
      rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_config_set_required_store_granularity");
  }
  if (int rc = pmem2_config_set_length(config.get(), length); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_config_set_length");
  }
  pmem2_map* map = nullptr;
  if (int rc = pmem2_map_new(&map, config.get(), src.get()); rc != 0) {
    return Pmem2Error(rc, what + ": pmem2_map_new");
  }
  return std::unique_ptr<PmemStore>(new PmemStore(cfg, map));
}

PmemStore::PmemStore(const StoreConfig& cfg, pmem2_map* map)
    : BlockStore(cfg.block_size, cfg.slot_count),
      path_(cfg.path),
      map_(map),
      base_(static_cast<char*>(pmem2_map_get_address(map))),
      granularity_(FromPmem2(pmem2_map_get_store_granularity(map))),
      align_(granularity_ == Granularity::kPage ? static_cast<uint64_t>(sysconf(_SC_PAGESIZE))
                                                : kCacheLine),
      memcpy_(pmem2_get_memcpy_fn(map)),
      flush_(pmem2_get_flush_fn(map)),
      drain_(pmem2_get_drain_fn(map)) {}

PmemStore::~PmemStore() {
  pmem2_map* map = map_;
  pmem2_map_delete(&map);
}

const char* PmemStore::SlotData(uint64_t slot) const {
  if (slot >= slot_count()) return nullptr;
  return base_ + StoreOffset(slot, 0);
}

Status PmemStore::DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead /*how*/) {
  std::memcpy(buf, base_ + pos, len);
  return Status::Ok();
}

Status PmemStore::DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite /*how*/) {
  // No page cache in between: a stream is written like anything else.
  // At page granularity libpmem2's memcpy msyncs the range on every call
  // unless told not to flush; Persist() msyncs the recorded ranges instead.
  const unsigned flags =
      granularity_ == Granularity::kPage ? PMEM2_F_MEM_NOFLUSH : PMEM2_F_MEM_NODRAIN;
  memcpy_(base_ + pos, buf, len, flags);
  RecordDirty(pos, len);
  return Status::Ok();
}

void PmemStore::RecordDirty(uint64_t pos, uint64_t len) {
  Range r{pos / align_ * align_, (pos + len + align_ - 1) / align_ * align_};
  std::lock_guard<std::mutex> lock(dirty_mu_);
  // Sequential writes extend the last range instead of adding one.
  if (!dirty_.empty() && r.begin <= dirty_.back().end && r.end >= dirty_.back().begin) {
    dirty_.back().begin = std::min(dirty_.back().begin, r.begin);
    dirty_.back().end = std::max(dirty_.back().end, r.end);
    return;
  }
  dirty_.push_back(r);
  if (dirty_.size() > kMaxDirtyRanges) {
    SortAndMerge(&dirty_);
    // Scattered writes: one span over all of them is a superset, and a
    // larger msync or flush is still correct.
    if (dirty_.size() > kMaxDirtyRanges / 2) {
      Range all{dirty_.front().begin, dirty_.back().end};
      dirty_.assign(1, all);
    }
  }
}

Status PmemStore::DoPersist() {
  // BlockStore serialises persists: every range taken here is durable before
  // the next Persist() can start, so none of them returns early.
  std::vector<Range> ranges;
  {
    std::lock_guard<std::mutex> lock(dirty_mu_);
    ranges.swap(dirty_);
  }
  if (ranges.empty()) {
    return Status::Ok();
  }
  SortAndMerge(&ranges);
  if (granularity_ != Granularity::kPage) {
    for (const Range& r : ranges) flush_(base_ + r.begin, r.end - r.begin);
    drain_();
    return Status::Ok();
  }
  if (ranges.size() > kMaxMsyncCalls) {
    Range all{ranges.front().begin, ranges.back().end};
    ranges.assign(1, all);
  }
  // msync directly rather than through pmem2_get_persist_fn: for this
  // granularity libpmem2's persist and flush are msync too, but they abort()
  // the process when msync fails (libpmem2 1.12), and a failed writeback must
  // come back as a Status (EIO) that BlockStore keeps.
  for (const Range& r : ranges) {
    if (msync(base_ + r.begin, r.end - r.begin, MS_SYNC) != 0) {
      return Status::FromErrno(errno, What(path_) + ": msync of " +
                                          std::to_string(r.end - r.begin) + " bytes at " +
                                          std::to_string(r.begin));
    }
  }
  return Status::Ok();
}

Status PmemStore::DoDiscard(uint64_t /*pos*/, uint64_t /*len*/) { return Status::Ok(); }

}  // namespace cachefs
