#include "cache/check.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <utility>

#include "cache/block_store.h"
#include "cache/cache_dir.h"
#include "cache/options.h"
#include "common/crc32c.h"
#include "meta/meta_store.h"

namespace cachefs {
namespace {

// Repair commits at most this many changes per (synced) batch.
constexpr size_t kBatchOps = 1024;
constexpr uint32_t kKnownFileFlags = FileRecord::kConflict | FileRecord::kUnlinked |
                                     FileRecord::kUnmatched | FileRecord::kPinned |
                                     FileRecord::kWritingBack;
// What repair sets on a file whose dirty data cannot be written back: kept
// aside (contract 4), and flagged conflict so that the writer, which skips
// conflicts, never writes it to whatever SOURCE has at its path now.
constexpr uint32_t kKeptAside = FileRecord::kUnmatched | FileRecord::kConflict;

struct Key {
  uint64_t file_id = 0;
  uint64_t index = 0;
  bool operator<(const Key& o) const {
    return file_id != o.file_id ? file_id < o.file_id : index < o.index;
  }
};

uint64_t Popcount(const std::vector<uint64_t>& words) {
  uint64_t n = 0;
  for (uint64_t w : words) n += static_cast<uint64_t>(std::popcount(w));
  return n;
}

// "0-3,7": sub-block numbers as ranges.
std::string SubList(const std::vector<uint32_t>& subs) {
  std::string out;
  for (size_t i = 0; i < subs.size();) {
    size_t j = i;
    while (j + 1 < subs.size() && subs[j + 1] == subs[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += std::to_string(subs[i]);
    if (j > i) out += "-" + std::to_string(subs[j]);
    i = j + 1;
  }
  return out;
}

std::string Plural(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

std::string Quoted(const std::string& s) { return "'" + s + "'"; }

std::string ErrnoText(int err) { return std::strerror(err); }

// Where a cache directory can be checked at all: it exists and holds
// metadata. Checked before the lock, which would create what is missing.
Status CheckCacheDir(const std::string& dir) {
  struct stat st {};
  if (stat(dir.c_str(), &st) != 0) return Status::FromErrno(errno, "cache directory '" + dir + "'");
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, "cache directory '" + dir + "' is not a directory");
  }
  const std::string current = dir + "/meta/CURRENT";
  if (stat(current.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return Status::Error(
          ENOENT,
          "'" + dir + "' is not a cachefs cache directory (no metadata in " + dir + "/meta)");
    }
    return Status::FromErrno(errno, "cache metadata '" + current + "'");
  }
  return Status::Ok();
}

// The lock and the metadata of an unmounted cache.
struct OpenedCache {
  std::unique_ptr<CacheDirLock> lock;
  std::unique_ptr<MetaStore> meta;
};

Result<OpenedCache> OpenCache(const std::string& dir) {
  Status s = CheckCacheDir(dir);
  if (!s.ok()) return s;
  auto lock = CacheDirLock::Acquire(dir);
  if (!lock.ok()) return lock.status();
  auto meta = OpenRocksMetaStore(dir + "/meta", false);
  if (!meta.ok()) return meta.status();
  OpenedCache c;
  c.lock = std::move(lock.value());
  c.meta = std::move(meta.value());
  return c;
}

// Commits repair changes in synced batches of at most kBatchOps; a group of
// changes that belong together (EndGroup) is never split.
class Batcher {
 public:
  explicit Batcher(MetaStore* meta) : meta_(meta) {}
  MetaBatch& batch() { return batch_; }
  Status EndGroup() {
    if (batch_.ops().size() < kBatchOps) return Status::Ok();
    return Flush();
  }
  Status Flush() {
    if (batch_.empty()) return Status::Ok();
    Status s = meta_->Commit(batch_, true);
    batch_.Clear();
    return s;
  }

 private:
  MetaStore* meta_;
  MetaBatch batch_;
};

// One pass over a cache: finds the problems and plans their repair.
class Checker {
 public:
  Checker(std::string dir, MetaStore* meta, bool verify)
      : dir_(std::move(dir)), meta_(meta), verify_(verify) {}
  ~Checker() {
    if (fd_ >= 0) close(fd_);
  }
  Checker(const Checker&) = delete;
  Checker& operator=(const Checker&) = delete;

  // Checks everything; the result is in report().
  void Run();
  const CheckReport& report() const { return report_; }
  // Applies the planned repairs. REQUIRES: Run(), no fatal problem.
  Status Repair();

 private:
  struct SlotOwner {
    bool used = false;
    bool dirty = false;
    uint64_t valid = 0;  // valid sub-blocks after this check's fixes
    uint64_t generation = 0;
    Key key;
  };
  struct FileBlocks {
    uint64_t blocks = 0;
    uint64_t dirty = 0;
    uint64_t max_index = 0;
  };

  void Add(ProblemClass cls, std::string code, std::string where, std::string what,
           std::string repair) {
    report_.problems.push_back(
        {cls, std::move(code), std::move(where), std::move(what), std::move(repair)});
  }
  bool CheckSuperblock();
  void CheckStore();
  bool Load();
  bool CheckBlocks();
  void CheckBlock(const BlockRecord& r);
  // Reads slot `slot` into buf_ and marks in `readable` which sub-blocks
  // could be read; `why` says why the others could not.
  void ReadSlot(uint64_t slot, std::vector<bool>* readable, std::string* why);
  void ClaimSlot(const BlockRecord& f);
  void CheckDirtyIndex();
  void CheckFiles();
  std::string BlockWhere(uint64_t file_id, uint64_t index, uint64_t slot) const;
  std::string BlockWhere(const Key& k) const;

  const std::string dir_;
  MetaStore* const meta_;
  const bool verify_;
  CheckReport report_;
  Superblock sb_;
  uint32_t subs_ = 0;

  // The store: read with pread (regular file, block device) or through a
  // BlockStore (a DAX character device, which only maps).
  bool store_readable_ = false;
  int fd_ = -1;
  std::unique_ptr<BlockStore> dax_;
  uint64_t store_bytes_ = 0;
  uint64_t extend_store_to_ = 0;  // repair: a short regular store file grows back
  std::vector<char> buf_;

  std::map<uint64_t, FileRecord> files_;
  std::map<std::string, uint64_t> paths_;
  std::map<uint64_t, std::vector<std::string>> names_;
  std::map<uint64_t, DirtyRecord> entries_;  // the dirty index by seq
  uint64_t max_seq_ = 0;

  std::vector<SlotOwner> slots_;
  // Repairs of blocks: the new record, or nullopt to drop it.
  std::map<Key, std::optional<BlockRecord>> block_fixes_;
  std::map<Key, uint64_t> dirty_found_;      // dirty blocks as found, with their dirty_seq
  std::map<Key, uint64_t> dirty_kept_;       // dirty blocks after the fixes
  std::map<uint64_t, FileBlocks> per_file_;  // blocks kept, by file

  // Repairs of the dirty index, the paths and the files.
  std::vector<uint64_t> remove_entries_;
  std::vector<DirtyRecord> add_entries_;
  std::vector<std::string> remove_paths_;
  std::vector<std::pair<std::string, uint64_t>> add_paths_;
  std::vector<FileRecord> put_files_;
  std::vector<uint64_t> drop_files_;          // record and (clean) blocks
  std::vector<uint64_t> drop_orphan_blocks_;  // clean blocks without a record
};

std::string Checker::BlockWhere(uint64_t file_id, uint64_t index, uint64_t slot) const {
  auto it = files_.find(file_id);
  std::string file = it == files_.end() ? "no file record" : Quoted(it->second.path);
  return "block " + std::to_string(file_id) + "/" + std::to_string(index) + " (" + file + " at " +
         std::to_string(index * sb_.block_size) + ", slot " + std::to_string(slot) + ")";
}

std::string Checker::BlockWhere(const Key& k) const {
  auto it = files_.find(k.file_id);
  std::string file = it == files_.end() ? "no file record" : Quoted(it->second.path);
  return "block " + std::to_string(k.file_id) + "/" + std::to_string(k.index) + " (" + file +
         " at " + std::to_string(k.index * sb_.block_size) + ")";
}

bool Checker::CheckSuperblock() {
  auto sb = meta_->GetSuperblock();
  if (!sb.ok()) {
    const char* code = sb.status().code() == ENOTSUP ? "format_unknown" : "superblock_corrupt";
    Add(ProblemClass::kFatal, code, "superblock", sb.status().message(), "");
    return false;
  }
  if (!sb.value()) {
    Add(ProblemClass::kFatal, "superblock_missing", "superblock",
        "there is none: the cache was never formatted", "");
    return false;
  }
  sb_ = *sb.value();
  std::string bad;
  if (sb_.block_size < CacheOptions::kMinBlockSize ||
      sb_.block_size > CacheOptions::kMaxBlockSize ||
      (sb_.block_size & (sb_.block_size - 1)) != 0) {
    bad = "block size " + std::to_string(sb_.block_size) + " is not a power of two from 4K to 4M";
  } else if (sb_.slot_count == 0 || sb_.slot_count >= UINT32_MAX) {
    bad = "slot count " + std::to_string(sb_.slot_count) + " is out of range";
  } else if (sb_.store_path.empty()) {
    bad = "the store path is empty";
  }
  if (!bad.empty()) {
    Add(ProblemClass::kFatal, "superblock_corrupt", "superblock", bad, "");
    return false;
  }
  report_.superblock = sb_;
  subs_ = sb_.block_size / kSubBlockSize;
  return true;
}

void Checker::CheckStore() {
  const std::string where = "store '" + sb_.store_path + "'";
  const uint64_t need = sb_.slot_count * sb_.block_size;
  struct stat st {};
  if (stat(sb_.store_path.c_str(), &st) != 0) {
    int err = errno;
    Add(ProblemClass::kFatal, err == ENOENT ? "store_missing" : "store_unreadable", where,
        err == ENOENT ? "is missing: the cached data is gone" : ErrnoText(err), "");
    return;
  }
  if (S_ISCHR(st.st_mode)) {
    StoreConfig sc;
    sc.kind = sb_.store_kind;
    sc.path = sb_.store_path;
    sc.block_size = sb_.block_size;
    sc.slot_count = sb_.slot_count;
    auto store = sb_.store_kind == StoreKind::kPmem
                     ? OpenBlockStore(sc, false)
                     : Result<std::unique_ptr<BlockStore>>(
                           Status::Invalid("is a character device, but the cache has store=file"));
    if (!store.ok()) {
      Add(ProblemClass::kFatal, "store_unusable", where, store.status().message(), "");
      return;
    }
    dax_ = std::move(store.value());
    store_bytes_ = need;
    store_readable_ = true;
    return;
  }
  if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
    Add(ProblemClass::kFatal, "store_unusable", where, "is not a regular file or a device", "");
    return;
  }
  fd_ = open(sb_.store_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) {
    Add(ProblemClass::kFatal, "store_unreadable", where, ErrnoText(errno), "");
    return;
  }
  uint64_t have = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode) && ioctl(fd_, BLKGETSIZE64, &have) != 0) {
    Add(ProblemClass::kFatal, "store_unreadable", where, "size: " + ErrnoText(errno), "");
    return;
  }
  store_bytes_ = have;
  store_readable_ = true;
  if (have >= need) return;
  const std::string what = "holds " + std::to_string(have) + " bytes, less than the " +
                           std::to_string(need) + " of " + std::to_string(sb_.slot_count) +
                           " slots of " + std::to_string(sb_.block_size) + " bytes";
  if (S_ISBLK(st.st_mode)) {
    Add(ProblemClass::kFatal, "store_short", where, what, "");
    store_readable_ = false;
    return;
  }
  // The blocks whose data lay past the new end fail below, each in its class.
  Add(ProblemClass::kRepairable, "store_short", where, what,
      "extend it to " + std::to_string(need) + " bytes");
  extend_store_to_ = need;
}

bool Checker::Load() {
  Status s = meta_->ScanFiles([&](const FileRecord& f) {
    files_[f.file_id] = f;
    return true;
  });
  if (s.ok()) {
    s = meta_->ScanPaths("", [&](const std::string& p, uint64_t id) {
      paths_[p] = id;
      return true;
    });
  }
  if (s.ok()) {
    s = meta_->ScanDirty([&](const DirtyRecord& d) {
      entries_[d.seq] = d;
      max_seq_ = std::max(max_seq_, d.seq);
      return true;
    });
  }
  if (!s.ok()) {
    Add(ProblemClass::kFatal, "metadata_unreadable", "metadata", s.message(), "");
    return false;
  }
  for (const auto& [p, id] : paths_) {
    if (files_.count(id) != 0) names_[id].push_back(p);
  }
  report_.counts.files = files_.size();
  report_.counts.paths = paths_.size();
  report_.counts.dirty_entries = entries_.size();
  for (const auto& [id, f] : files_) {
    if ((f.flags & FileRecord::kConflict) != 0) report_.counts.conflict_files++;
    if ((f.flags & FileRecord::kUnmatched) != 0) report_.counts.unmatched_files++;
  }
  return true;
}

void Checker::ReadSlot(uint64_t slot, std::vector<bool>* readable, std::string* why) {
  readable->assign(subs_, false);
  if (!store_readable_) {
    *why = "the store cannot be read";
    return;
  }
  const uint64_t start = slot * sb_.block_size;
  const uint64_t avail =
      store_bytes_ > start ? std::min<uint64_t>(store_bytes_ - start, sb_.block_size) : 0;
  const uint32_t whole = static_cast<uint32_t>(avail / kSubBlockSize);
  *why = "lie past the end of the store";
  if (whole == 0) return;
  const size_t len = static_cast<size_t>(whole) * kSubBlockSize;
  Status s;
  if (dax_) {
    s = dax_->Read(slot, 0, static_cast<uint32_t>(len), buf_.data());
  } else {
    size_t done = 0;
    while (done < len) {
      ssize_t n = pread(fd_, buf_.data() + done, len - done, static_cast<off_t>(start + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        s = n < 0 ? Status::FromErrno(errno, "read") : Status::Error(EIO, "read: end of file");
        break;
      }
      done += static_cast<size_t>(n);
    }
  }
  if (!s.ok()) {
    *why = "cannot be read (" + s.message() + ")";
    return;
  }
  for (uint32_t i = 0; i < whole; ++i) (*readable)[i] = true;
}

void Checker::CheckBlock(const BlockRecord& r) {
  const Key k{r.file_id, r.index};
  CheckCounts& c = report_.counts;
  c.blocks++;
  const bool was_dirty = r.AnyDirty();
  if (was_dirty) {
    c.dirty_blocks++;
    dirty_found_[k] = r.dirty_seq;
  }
  c.cached_bytes += Popcount(r.valid) * kSubBlockSize;
  c.dirty_bytes += Popcount(r.dirty) * kSubBlockSize;
  max_seq_ = std::max(max_seq_, r.dirty_seq);
  const std::string where = BlockWhere(r.file_id, r.index, r.slot);
  const std::string dirty_bytes = std::to_string(Popcount(r.dirty) * kSubBlockSize);

  auto drop_whole = [&](const char* code, const std::string& what) {
    if (was_dirty) {
      Add(ProblemClass::kDataLoss, code, where, what,
          "drop it: its " + dirty_bytes + " dirty bytes (not on SOURCE) are lost");
    } else {
      Add(ProblemClass::kRepairable, code, where, what,
          "drop it; it is clean, refetched from SOURCE when read");
    }
    block_fixes_[k] = std::nullopt;
  };
  if (r.sub_blocks() != subs_) {
    drop_whole("block_size_mismatch", "has " + std::to_string(r.sub_blocks()) +
                                          " sub-blocks, but the cache's blocks have " +
                                          std::to_string(subs_));
    return;
  }
  if (r.slot >= sb_.slot_count) {
    drop_whole("slot_out_of_range",
               "its slot is outside the store of " + std::to_string(sb_.slot_count) + " slots");
    return;
  }

  BlockRecord f = r;
  if (!was_dirty && r.dirty_seq != 0) {
    Add(ProblemClass::kRepairable, "clean_with_dirty_seq", where,
        "is clean but has dirty seq " + std::to_string(r.dirty_seq), "set it to 0");
    f.dirty_seq = 0;
  }

  // The data: sub-blocks that are valid (when verifying) and dirty ones not
  // marked valid (always: whether they verify decides what repair keeps).
  // Without a readable store only the latter are looked at (and fail).
  const bool verify = verify_ && store_readable_;
  bool want_read = false;
  bool past_end = false;
  for (uint32_t i = 0; i < subs_; ++i) {
    const bool v = r.IsValid(i);
    const bool d = r.IsDirty(i);
    if ((v && verify) || (d && !v)) want_read = true;
    if (store_readable_ && (v || d) &&
        r.slot * sb_.block_size + (uint64_t{i} + 1) * kSubBlockSize > store_bytes_) {
      past_end = true;
    }
  }
  std::vector<bool> readable;
  std::string why;
  if (want_read || past_end) {
    ReadSlot(r.slot, &readable, &why);
  } else {
    readable.assign(subs_, true);
  }
  std::vector<uint32_t> clean_bad, dirty_bad, unmarked_ok, unmarked_bad;
  std::string clean_why, dirty_why;
  for (uint32_t i = 0; i < subs_; ++i) {
    const bool v = r.IsValid(i);
    const bool d = r.IsDirty(i);
    if (!v && !d) continue;
    const bool check = (v && verify) || (d && !v);
    bool ok = readable[i];
    std::string bad_why = why;
    if (ok && check) {
      const char* sub = buf_.data() + static_cast<size_t>(i) * kSubBlockSize;
      ok = SubBlockCrc(r.file_id, r.index, r.generation, sub, kSubBlockSize) == r.crc[i];
      bad_why = "fail their CRC";
      if (v) report_.counts.verified_bytes += kSubBlockSize;
    }
    if (!v) {
      (ok ? unmarked_ok : unmarked_bad).push_back(i);
    } else if (!ok && d) {
      dirty_bad.push_back(i);
      dirty_why = bad_why;
    } else if (!ok) {
      clean_bad.push_back(i);
      clean_why = bad_why;
    }
  }
  if (!clean_bad.empty()) {
    Add(ProblemClass::kRepairable, "bad_clean_data", where,
        "clean sub-blocks " + SubList(clean_bad) + " " + clean_why,
        "invalidate them; they are refetched from SOURCE when read");
    for (uint32_t i : clean_bad) f.SetValid(i, false);
  }
  if (!dirty_bad.empty()) {
    Add(ProblemClass::kDataLoss, "bad_dirty_data", where,
        "dirty sub-blocks " + SubList(dirty_bad) + " " + dirty_why + ": " +
            std::to_string(dirty_bad.size() * kSubBlockSize) + " bytes not on SOURCE are lost",
        "drop them; the file shows SOURCE's older bytes there");
    for (uint32_t i : dirty_bad) {
      f.SetValid(i, false);
      f.SetDirty(i, false);
    }
  }
  if (!unmarked_ok.empty()) {
    Add(ProblemClass::kRepairable, "dirty_not_valid", where,
        "dirty sub-blocks " + SubList(unmarked_ok) + " are not marked valid (their data verifies)",
        "mark them valid");
    for (uint32_t i : unmarked_ok) f.SetValid(i, true);
  }
  if (!unmarked_bad.empty()) {
    Add(ProblemClass::kDataLoss, "dirty_not_valid", where,
        "dirty sub-blocks " + SubList(unmarked_bad) +
            " are not marked valid and their data does not verify: " +
            std::to_string(unmarked_bad.size() * kSubBlockSize) + " bytes not on SOURCE are lost",
        "clear their dirty bits");
    for (uint32_t i : unmarked_bad) f.SetDirty(i, false);
  }
  if (!f.AnyDirty()) f.dirty_seq = 0;
  const bool keep = Popcount(f.valid) > 0;
  if (!keep) {
    block_fixes_[k] = std::nullopt;
    return;
  }
  if (!(f == r)) block_fixes_[k] = f;
  ClaimSlot(f);
}

// A slot holds one block. Of two records on one slot, the one kept is the
// dirty one (dirty data exists nowhere else), else the one with more valid
// sub-blocks left, else the newer generation; the other is dropped.
void Checker::ClaimSlot(const BlockRecord& f) {
  const Key k{f.file_id, f.index};
  SlotOwner mine{true, f.AnyDirty(), Popcount(f.valid), f.generation, k};
  SlotOwner& owner = slots_[f.slot];
  auto keep_mine = [&] {
    FileBlocks& fb = per_file_[k.file_id];
    fb.blocks++;
    if (mine.dirty) {
      fb.dirty++;
      dirty_kept_[k] = f.dirty_seq;
    }
    fb.max_index = std::max(fb.max_index, k.index);
    owner = mine;
  };
  if (!owner.used) {
    keep_mine();
    return;
  }
  auto rank = [](const SlotOwner& o) { return std::make_tuple(o.dirty, o.valid, o.generation); };
  const bool mine_wins = rank(mine) > rank(owner);
  const SlotOwner loser = mine_wins ? owner : mine;
  const SlotOwner winner = mine_wins ? mine : owner;
  const std::string where = BlockWhere(loser.key.file_id, loser.key.index, f.slot);
  const std::string what = "shares its slot with block " + std::to_string(winner.key.file_id) +
                           "/" + std::to_string(winner.key.index);
  if (loser.dirty) {
    Add(ProblemClass::kDataLoss, "slot_shared", where, what,
        "drop it: its dirty data (not on SOURCE) is lost");
  } else {
    Add(ProblemClass::kRepairable, "slot_shared", where, what,
        "drop it; it is clean, refetched from SOURCE when read");
  }
  block_fixes_[loser.key] = std::nullopt;
  if (mine_wins) {
    // Undo what keeping the old owner counted.
    FileBlocks& fb = per_file_[owner.key.file_id];
    fb.blocks--;
    if (owner.dirty) {
      fb.dirty--;
      dirty_kept_.erase(owner.key);
    }
    keep_mine();
  }
}

bool Checker::CheckBlocks() {
  slots_.assign(sb_.slot_count, SlotOwner{});
  buf_.assign(sb_.block_size, 0);
  Status s = meta_->ScanAllBlocks([&](const BlockRecord& r) {
    CheckBlock(r);
    return true;
  });
  if (!s.ok()) {
    Add(ProblemClass::kFatal, "metadata_unreadable", "block map", s.message(), "");
    return false;
  }
  report_.data_verified = verify_ && store_readable_;
  return true;
}

void Checker::CheckDirtyIndex() {
  // Entries that do not point at a dirty block whose dirty seq they are.
  for (const auto& [seq, d] : entries_) {
    const Key k{d.file_id, d.index};
    auto kept = dirty_kept_.find(k);
    if (kept == dirty_kept_.end() || kept->second != seq) remove_entries_.push_back(seq);
    auto found = dirty_found_.find(k);
    if (found != dirty_found_.end() && found->second == seq) continue;  // fine as found
    std::string what;
    if (found != dirty_found_.end()) {
      what = "points at " + BlockWhere(k) + ", whose dirty seq is " + std::to_string(found->second);
    } else {
      auto b = meta_->GetBlock(k.file_id, k.index);
      const bool cached = b.ok() && b.value().has_value();
      what = "points at " + BlockWhere(k) + (cached ? ", which is clean" : ", which is not cached");
    }
    Add(ProblemClass::kRepairable, "dirty_entry_dangling", "dirty entry " + std::to_string(seq),
        what, "remove it");
  }
  // Dirty blocks without their own entry.
  std::set<uint64_t> claimed;
  for (const auto& [k, seq] : dirty_kept_) {
    auto e = entries_.find(seq);
    const bool has_entry = seq != 0 && e != entries_.end() && e->second.file_id == k.file_id &&
                           e->second.index == k.index;
    const bool shared = seq != 0 && claimed.count(seq) != 0;
    if (has_entry && !shared) {
      claimed.insert(seq);
      continue;
    }
    // A seq of its own: the one it names if no entry has it, else a new one.
    uint64_t new_seq = seq;
    if (seq == 0 || shared || e != entries_.end()) new_seq = ++max_seq_;
    claimed.insert(new_seq);
    add_entries_.push_back(DirtyRecord{new_seq, k.file_id, k.index});
    if (new_seq != seq) {
      auto fix = block_fixes_.find(k);
      BlockRecord rec;
      if (fix != block_fixes_.end() && fix->second) {
        rec = *fix->second;
      } else {
        auto b = meta_->GetBlock(k.file_id, k.index);
        if (!b.ok() || !b.value()) continue;  // unreadable now: the re-check says more
        rec = *b.value();
      }
      rec.dirty_seq = new_seq;
      block_fixes_[k] = rec;
    }
    std::string what;
    if (seq == 0) {
      what = "is dirty but has no dirty seq";
    } else if (shared) {
      what = "shares its dirty seq " + std::to_string(seq) + " with another block";
    } else if (e != entries_.end()) {
      what = "has dirty seq " + std::to_string(seq) + ", whose entry points at another block";
    } else {
      what = "has no dirty index entry (seq " + std::to_string(seq) + ")";
    }
    Add(ProblemClass::kRepairable, "dirty_entry_missing", BlockWhere(k), what,
        "add entry " + std::to_string(new_seq) +
            (new_seq != seq ? " and point the block at it" : ""));
  }
}

void Checker::CheckFiles() {
  std::set<std::string> taken;
  for (const auto& [p, id] : paths_) {
    if (files_.count(id) != 0) {
      taken.insert(p);
      continue;
    }
    Add(ProblemClass::kRepairable, "path_without_file", "path " + Quoted(p),
        "names file " + std::to_string(id) + ", which has no record", "remove the name");
    remove_paths_.push_back(p);
  }
  for (const auto& [id, rec] : files_) {
    const std::string where = "file " + std::to_string(id) + " (" + Quoted(rec.path) + ")";
    FileRecord fixed = rec;
    if ((rec.flags & ~kKnownFileFlags) != 0) {
      char hex[16];
      std::snprintf(hex, sizeof(hex), "0x%x", rec.flags & ~kKnownFileFlags);
      Add(ProblemClass::kRepairable, "file_flags_unknown", where,
          std::string("has unknown flag bits ") + hex, "clear them");
      fixed.flags &= kKnownFileFlags;
    }
    const FileBlocks fb = per_file_.count(id) != 0 ? per_file_[id] : FileBlocks{};
    auto named = names_.find(id);
    if (named != names_.end()) {
      const std::vector<std::string>& names = named->second;
      if (std::find(names.begin(), names.end(), rec.path) == names.end()) {
        auto other = paths_.find(rec.path);
        std::string now =
            other == paths_.end() ? "names nothing" : "names file " + std::to_string(other->second);
        Add(ProblemClass::kRepairable, "file_path_stale", where,
            "its path " + now + "; its names are " + Quoted(names.front()) +
                (names.size() > 1 ? " and " + std::to_string(names.size() - 1) + " more" : ""),
            "set its path to " + Quoted(names.front()) + ", where writeback writes");
        fixed.path = names.front();
      }
    } else if ((rec.flags & (FileRecord::kUnmatched | FileRecord::kUnlinked)) == 0) {
      auto other = paths_.find(rec.path);
      if (taken.count(rec.path) == 0) {
        Add(ProblemClass::kRepairable, "file_unnamed", where, "no path names it",
            "name it " + Quoted(rec.path) + " again");
        add_paths_.emplace_back(rec.path, id);
        taken.insert(rec.path);
      } else if (fb.dirty > 0) {
        Add(ProblemClass::kDataLoss, "file_unnamed_dirty", where,
            "no path names it and its path names file " +
                std::to_string(other != paths_.end() ? other->second : 0) + ": its " +
                Plural(fb.dirty, "dirty block", "dirty blocks") + " cannot be written back",
            "keep them aside: flag the file unmatched and conflict (never written back)");
        fixed.flags |= kKeptAside;
      } else {
        Add(ProblemClass::kRepairable, "file_unnamed", where,
            "no path names it and its path names file " +
                std::to_string(other != paths_.end() ? other->second : 0),
            "drop the record and its " + Plural(fb.blocks, "clean block", "clean blocks"));
        drop_files_.push_back(id);
        continue;
      }
    }
    if (!(fixed == rec)) put_files_.push_back(fixed);
  }
  // Blocks of files without a record.
  for (const auto& [id, fb] : per_file_) {
    if (files_.count(id) != 0 || fb.blocks == 0) continue;
    const std::string where = "file " + std::to_string(id);
    if (fb.dirty > 0) {
      Add(ProblemClass::kDataLoss, "blocks_without_file", where,
          "has no record, but " + Plural(fb.blocks, "block", "blocks") + " (" +
              std::to_string(fb.dirty) + " dirty): the file of the dirty data is unknown",
          "keep them aside under a new record flagged unmatched and conflict (never written "
          "back)");
      FileRecord kept;
      kept.file_id = id;
      kept.flags = kKeptAside;
      kept.size = (fb.max_index + 1) * sb_.block_size;
      put_files_.push_back(kept);
    } else {
      Add(ProblemClass::kRepairable, "blocks_without_file", where,
          "has no record, but " + Plural(fb.blocks, "clean block", "clean blocks"),
          "drop the blocks");
      drop_orphan_blocks_.push_back(id);
    }
  }
}

void Checker::Run() {
  report_.cache_dir = dir_;
  bool ok = CheckSuperblock();
  if (ok) {
    CheckStore();
    ok = Load();
  }
  if (ok) ok = CheckBlocks();
  if (ok) {
    CheckDirtyIndex();
    CheckFiles();
  }
  report_.verdict = CheckVerdict::kClean;
  for (const CheckProblem& p : report_.problems) {
    if (p.cls != ProblemClass::kRepairable) {
      report_.verdict = CheckVerdict::kBroken;
      break;
    }
    report_.verdict = CheckVerdict::kRepairable;
  }
}

Status Checker::Repair() {
  if (extend_store_to_ > 0) {
    const std::string what = "store '" + sb_.store_path + "'";
    int fd = open(sb_.store_path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) return Status::FromErrno(errno, what);
    // Allocated, as a new store is: a later write must not fail for space.
    Status s;
    if (ftruncate(fd, static_cast<off_t>(extend_store_to_)) != 0) {
      s = Status::FromErrno(errno, what + ": extend");
    } else if (int err = posix_fallocate(fd, 0, static_cast<off_t>(extend_store_to_)); err != 0) {
      s = Status::FromErrno(err, what + ": allocate");
    } else if (fsync(fd) != 0) {
      s = Status::FromErrno(errno, what + ": fsync");
    }
    close(fd);
    if (!s.ok()) return s;
  }
  Batcher b(meta_);
  Status s;
  for (const auto& [k, fix] : block_fixes_) {
    if (fix) {
      b.batch().Put(*fix);
    } else {
      b.batch().RemoveBlock(k.file_id, k.index);
    }
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (uint64_t seq : remove_entries_) {
    b.batch().RemoveDirty(seq);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (const DirtyRecord& d : add_entries_) {
    b.batch().Put(d);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (const std::string& p : remove_paths_) {
    b.batch().RemovePath(p);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (const auto& [p, id] : add_paths_) {
    b.batch().Put(p, id);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (const FileRecord& f : put_files_) {
    b.batch().Put(f);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  auto drop_blocks = [&](uint64_t id) {
    return meta_->ScanBlocks(id, [&](const BlockRecord& r) {
      b.batch().RemoveBlock(r.file_id, r.index);
      return true;
    });
  };
  for (uint64_t id : drop_files_) {
    if (s = drop_blocks(id); !s.ok()) return s;
    b.batch().RemoveFile(id);
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  for (uint64_t id : drop_orphan_blocks_) {
    if (s = drop_blocks(id); !s.ok()) return s;
    if (s = b.EndGroup(); !s.ok()) return s;
  }
  // The policy's saved per-slot state no longer matches the slots: the
  // next mount starts the policy cold (the blocks stay).
  auto state = meta_->GetMountState();
  if (state.ok() && state.value() && !state.value()->policy_hints.empty()) {
    MountState ms = *state.value();
    ms.policy_hints.clear();
    b.batch().Put(ms);
  }
  return b.Flush();
}

}  // namespace

const char* CheckVerdictName(CheckVerdict v) {
  switch (v) {
    case CheckVerdict::kClean:
      return "clean";
    case CheckVerdict::kRepairable:
      return "repairable";
    case CheckVerdict::kBroken:
      return "broken";
  }
  return "?";
}

const char* ProblemClassName(ProblemClass c) {
  switch (c) {
    case ProblemClass::kRepairable:
      return "repairable";
    case ProblemClass::kDataLoss:
      return "data_loss";
    case ProblemClass::kFatal:
      return "fatal";
  }
  return "?";
}

std::string CheckProblem::Line() const {
  std::string line = std::string(ProblemClassName(cls)) + ": " + where + ": " + what;
  if (!repair.empty()) line += " (repair: " + repair + ")";
  return line;
}

Result<CheckReport> CheckCache(const std::string& dir, const CheckOptions& options) {
  auto cache = OpenCache(dir);
  if (!cache.ok()) return cache.status();
  MetaStore* meta = cache.value().meta.get();
  Checker first(dir, meta, options.verify_data || options.repair);
  first.Run();
  CheckReport report = first.report();
  if (!options.repair || report.verdict == CheckVerdict::kClean) return report;
  const bool fatal =
      std::any_of(report.problems.begin(), report.problems.end(),
                  [](const CheckProblem& p) { return p.cls == ProblemClass::kFatal; });
  if (fatal) {
    report.repair_error = "not attempted: the cache has fatal problems";
    return report;
  }
  Status s = first.Repair();
  report.repaired = true;
  if (!s.ok()) report.repair_error = s.message();
  Checker again(dir, meta, true);
  again.Run();
  report.verdict_after = again.report().verdict;
  report.problems_after = again.report().problems;
  report.counts_after = again.report().counts;
  return report;
}

Result<CacheDump> DumpCache(const std::string& dir, bool with_blocks) {
  auto cache = OpenCache(dir);
  if (!cache.ok()) return cache.status();
  MetaStore* meta = cache.value().meta.get();
  CacheDump dump;
  dump.cache_dir = dir;
  auto sb = meta->GetSuperblock();
  if (!sb.ok()) return sb.status();
  if (!sb.value()) return Status::Error(ENOENT, "cache '" + dir + "' has no superblock");
  dump.superblock = *sb.value();
  auto state = meta->GetMountState();
  if (!state.ok()) return state.status();
  dump.mount_state = state.value();
  auto counters = meta->GetCounters();
  if (!counters.ok()) return counters.status();
  dump.counters = counters.value();

  std::map<uint64_t, DumpedFile> files;
  Status s = meta->ScanFiles([&](const FileRecord& f) {
    files[f.file_id].record = f;
    return true;
  });
  if (s.ok()) {
    s = meta->ScanPaths("", [&](const std::string& p, uint64_t id) {
      auto it = files.find(id);
      if (it != files.end()) it->second.names.push_back(p);
      return true;
    });
  }
  if (s.ok()) {
    s = meta->ScanAllBlocks([&](const BlockRecord& r) {
      auto it = files.find(r.file_id);
      if (it == files.end()) {
        it = files.emplace(r.file_id, DumpedFile{}).first;
        it->second.has_record = false;
        it->second.record.file_id = r.file_id;
      }
      it->second.cached_blocks++;
      dump.blocks++;
      if (r.AnyDirty()) {
        it->second.dirty_blocks++;
        dump.dirty_blocks++;
      }
      if (with_blocks) dump.block_records.push_back(r);
      return true;
    });
  }
  if (s.ok()) {
    s = meta->ScanDirty([&](const DirtyRecord&) {
      dump.dirty_entries++;
      return true;
    });
  }
  if (!s.ok()) return s;
  dump.files.reserve(files.size());
  for (auto& [id, f] : files) dump.files.push_back(std::move(f));
  return dump;
}

}  // namespace cachefs
