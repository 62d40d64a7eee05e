#include "meta/rocks_meta_store.h"

#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/env.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/table_properties_collectors.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <utility>

#include "common/log.h"
#include "meta/encoding.h"

namespace cachefs {
namespace {

// Sized for a metadata database of a few hundred MiB on a small machine
// (2 cores): what RocksDB may hold in RAM is bounded by the block cache plus
// the memtables (db_write_buffer_size), about 100 MiB in all.
constexpr size_t kBlockCacheBytes = 64 << 20;
constexpr size_t kDbWriteBufferBytes = 32 << 20;
constexpr size_t kBlocksWriteBufferBytes = 16 << 20;
constexpr size_t kSmallWriteBufferBytes = 4 << 20;
constexpr uint64_t kMaxTotalWalBytes = 64 << 20;

// RocksDB's warnings and errors go to the cachefs log (stderr or syslog);
// its INFO chatter and the options dump it writes at every open are dropped,
// so the cache directory holds no LOG files.
class ForwardingLogger final : public rocksdb::Logger {
 public:
  explicit ForwardingLogger(std::string dir)
      : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), dir_(std::move(dir)) {}

  void LogHeader(const char* /*format*/, va_list /*ap*/) override {}
  void Logv(const char* /*format*/, va_list /*ap*/) override {}  // level unknown: INFO
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel() || level == rocksdb::InfoLogLevel::HEADER_LEVEL) return;
    char buf[1024];
    std::vsnprintf(buf, sizeof(buf), format, ap);  // NOLINT: RocksDB's printf-style API
    // A failed open is returned to the caller, who reports it once.
    if (std::strstr(buf, "DB::Open() failed") != nullptr) return;
    const std::string line = "rocksdb (" + dir_ + "): " + buf;
    if (level == rocksdb::InfoLogLevel::WARN_LEVEL) {
      LogWarning(line);
    } else {
      LogError(line);
    }
  }

 private:
  const std::string dir_;
};

// The Status of a RocksDB failure, with an errno that says what went wrong
// to the layers above (ENOSPC and EIO matter to the engine).
int ErrnoOfRocks(const rocksdb::Status& s) {
  if (s.IsNoSpace()) return ENOSPC;
  if (s.IsPathNotFound()) return ENOENT;
  if (s.IsIOError()) return EIO;
  if (s.IsCorruption()) return EUCLEAN;
  if (s.IsNotFound()) return ENOENT;
  if (s.IsInvalidArgument()) return EINVAL;
  if (s.IsNotSupported()) return ENOTSUP;
  if (s.IsBusy()) return EBUSY;
  if (s.IsTryAgain()) return EAGAIN;
  if (s.IsTimedOut()) return ETIMEDOUT;
  if (s.IsMemoryLimit()) return ENOMEM;
  return EIO;
}

// RocksDB reports its LOCK file held by another process as "IO error: While
// lock file: DIR/LOCK: Resource temporarily unavailable", and held by this
// process as "IO error: lock hold by current process ...".
bool IsLockError(const rocksdb::Status& s) {
  if (!s.IsIOError()) return false;
  const std::string m = s.ToString();
  return m.find("/LOCK") != std::string::npos ||
         m.find("lock hold by current process") != std::string::npos;
}

rocksdb::BlockBasedTableOptions TableOptions(const std::shared_ptr<rocksdb::Cache>& cache,
                                             bool bloom) {
  rocksdb::BlockBasedTableOptions t;
  t.block_cache = cache;
  // Index and filter blocks live in the shared cache too, so memory stays
  // bounded as the metadata grows; level 0's are pinned because every read
  // consults them.
  t.cache_index_and_filter_blocks = true;
  t.pin_l0_filter_and_index_blocks_in_cache = true;
  if (bloom) {
    // Most GetBlock calls of a cold cache are for blocks that are not there.
    t.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
    t.optimize_filters_for_memory = true;
  }
  return t;
}

rocksdb::ColumnFamilyOptions FamilyOptions(const std::shared_ptr<rocksdb::Cache>& cache,
                                           size_t write_buffer, bool bloom, bool compress,
                                           bool queue_like) {
  rocksdb::ColumnFamilyOptions o;
  o.write_buffer_size = write_buffer;
  o.max_write_buffer_number = 2;
  o.level_compaction_dynamic_level_bytes = true;
  o.target_file_size_base = 16 << 20;
  o.max_bytes_for_level_base = 64 << 20;
  o.table_factory.reset(rocksdb::NewBlockBasedTableFactory(TableOptions(cache, bloom)));
  // Paths and file records compress well; block records are mostly CRCs,
  // which do not.
  o.compression = rocksdb::kNoCompression;
  if (compress) {
    const auto supported = rocksdb::GetSupportedCompressions();
    if (std::find(supported.begin(), supported.end(), rocksdb::kLZ4Compression) !=
        supported.end()) {
      o.compression = rocksdb::kLZ4Compression;
    }
  }
  if (queue_like) {
    // The dirty index is a queue and blocks churn with eviction: compact
    // files that fill with tombstones so scans from the front stay cheap.
    o.table_properties_collector_factories.push_back(
        rocksdb::NewCompactOnDeletionCollectorFactory(128, 64));
  }
  return o;
}

}  // namespace

Result<std::unique_ptr<MetaStore>> OpenRocksMetaStore(const std::string& dir, bool create) {
  Result<std::unique_ptr<RocksMetaStore>> r = RocksMetaStore::Open(dir, create);
  if (!r.ok()) return r.status();
  return std::unique_ptr<MetaStore>(std::move(r.value()));
}

Result<std::unique_ptr<RocksMetaStore>> RocksMetaStore::Open(const std::string& dir, bool create,
                                                             rocksdb::Env* env) {
  struct stat st {};
  const bool exists = ::stat((dir + "/CURRENT").c_str(), &st) == 0;
  if (!exists && errno != ENOENT && errno != ENOTDIR) {
    return Status::FromErrno(errno, "cache metadata in " + dir);
  }
  if (!exists && !create) return Status::Error(ENOENT, "no cache metadata in " + dir);
  // Made here rather than by RocksDB so that only the owner may enter it
  // (contract 8) and RocksDB does not log the missing directory as an error.
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "cache metadata directory " + dir);
  }

  rocksdb::DBOptions db_opts;
  if (env != nullptr) db_opts.env = env;
  db_opts.create_if_missing = create;
  db_opts.create_missing_column_families = create;
  db_opts.max_background_jobs = 2;
  db_opts.info_log = std::make_shared<ForwardingLogger>(dir);
  db_opts.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  db_opts.stats_dump_period_sec = 0;
  db_opts.stats_persist_period_sec = 0;
  db_opts.db_write_buffer_size = kDbWriteBufferBytes;
  // With five families, a rarely written one would otherwise keep old WAL
  // files alive forever; this flushes it once the WALs reach the limit.
  db_opts.max_total_wal_size = kMaxTotalWalBytes;
  db_opts.max_manifest_file_size = 16 << 20;
  db_opts.bytes_per_sync = 1 << 20;
  // Point-in-time recovery (the default): after power loss the database is
  // the state after some prefix of the committed batches, never a mix.
  db_opts.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;

  auto cache = rocksdb::NewLRUCache(kBlockCacheBytes);
  auto small = FamilyOptions(cache, kSmallWriteBufferBytes, false, true, false);
  std::vector<rocksdb::ColumnFamilyDescriptor> descs = {
      {rocksdb::kDefaultColumnFamilyName, small},
      {kFilesFamily, small},
      {kPathsFamily, small},
      {kBlocksFamily, FamilyOptions(cache, kBlocksWriteBufferBytes, true, false, true)},
      {kDirtyFamily, FamilyOptions(cache, kSmallWriteBufferBytes, false, false, true)},
  };
  const size_t ours = descs.size();
  if (exists) {
    // Families we do not know (a newer cachefs's) must be opened too or
    // RocksDB refuses the database; the superblock check then says why the
    // cache cannot be used.
    std::vector<std::string> names;
    rocksdb::Status s = rocksdb::DB::ListColumnFamilies(db_opts, dir, &names);
    if (!s.ok()) {
      if (IsLockError(s)) {
        return Status::Error(EBUSY, "cache " + dir + " is in use by another process");
      }
      return Status::Error(ErrnoOfRocks(s), "cache metadata in " + dir + ": " + s.ToString());
    }
    for (const std::string& name : names) {
      const bool known = std::any_of(descs.begin(), descs.begin() + static_cast<ptrdiff_t>(ours),
                                     [&](const auto& d) { return d.name == name; });
      if (!known) descs.emplace_back(name, small);
    }
    if (!create) {
      for (size_t i = 1; i < ours; ++i) {
        if (std::find(names.begin(), names.end(), descs[i].name) == names.end()) {
          return Status::Error(ENOENT, "no cache metadata in " + dir + " (no column family '" +
                                           descs[i].name + "')");
        }
      }
    }
  }

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_opts, dir, descs, &handles, &raw);
  if (!s.ok()) {
    if (IsLockError(s)) {
      return Status::Error(EBUSY, "cache " + dir + " is in use by another process");
    }
    return Status::Error(ErrnoOfRocks(s), "cache metadata in " + dir + ": " + s.ToString());
  }
  return std::unique_ptr<RocksMetaStore>(new RocksMetaStore(dir, raw, std::move(handles)));
}

RocksMetaStore::RocksMetaStore(std::string dir, rocksdb::DB* db,
                               std::vector<rocksdb::ColumnFamilyHandle*> cfs)
    : dir_(std::move(dir)), db_(db), handles_(std::move(cfs)) {
  // Open() passed our families first, in this order.
  default_ = handles_[0];
  files_ = handles_[1];
  paths_ = handles_[2];
  blocks_ = handles_[3];
  dirty_ = handles_[4];
}

RocksMetaStore::~RocksMetaStore() {
  // Best effort: a clean close also survives power loss. Commits made after
  // the last sync are otherwise only in the kernel's page cache.
  rocksdb::Status s = db_->SyncWAL();
  if (!s.ok()) LogWarning("cache metadata in " + dir_ + ": WAL sync at close: " + s.ToString());
  for (rocksdb::ColumnFamilyHandle* h : handles_) db_->DestroyColumnFamilyHandle(h);
  s = db_->Close();
  if (!s.ok()) LogWarning("cache metadata in " + dir_ + ": close: " + s.ToString());
}

Status RocksMetaStore::Convert(const rocksdb::Status& s) const {
  if (s.ok()) return Status::Ok();
  return Status::Error(ErrnoOfRocks(s), "cache metadata in " + dir_ + ": " + s.ToString());
}

Result<std::optional<std::string>> RocksMetaStore::Get(rocksdb::ColumnFamilyHandle* cf,
                                                       const rocksdb::Slice& key) {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cf, key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  if (!s.ok()) return Convert(s);
  return std::optional<std::string>(std::move(value));
}

namespace {

// One record from the result of Get(): nullopt when absent, the decoder's
// error (in the context of this store) when it does not decode.
template <typename T, typename Decode>
Result<std::optional<T>> DecodeOptional(Result<std::optional<std::string>> raw,
                                        const std::string& context, const Decode& decode) {
  if (!raw.ok()) return raw.status();
  if (!raw.value()) return std::optional<T>();
  Result<T> rec = decode(*raw.value());
  if (!rec.ok()) return rec.status().Prefixed(context);
  return std::optional<T>(std::move(rec.value()));
}

}  // namespace

Result<std::optional<Superblock>> RocksMetaStore::GetSuperblock() {
  // "cache DIR: not a cachefs cache" reads better than a corrupt-metadata message.
  return DecodeOptional<Superblock>(Get(default_, rocksdb::Slice(kSuperblockKey)), "cache " + dir_,
                                    DecodeSuperblock);
}

Result<std::optional<MountState>> RocksMetaStore::GetMountState() {
  return DecodeOptional<MountState>(Get(default_, rocksdb::Slice(kMountStateKey)),
                                    "cache metadata in " + dir_, DecodeMountState);
}

Result<std::optional<PersistentCounters>> RocksMetaStore::GetCounters() {
  return DecodeOptional<PersistentCounters>(Get(default_, rocksdb::Slice(kCountersKey)),
                                            "cache metadata in " + dir_, DecodeCounters);
}

Result<uint64_t> RocksMetaStore::GetDurableEpoch() {
  auto r = DecodeOptional<uint64_t>(Get(default_, rocksdb::Slice(kDurableEpochKey)),
                                    "cache metadata in " + dir_, DecodeDurableEpoch);
  if (!r.ok()) return r.status();
  return r.value().value_or(0);
}

Result<std::optional<FileRecord>> RocksMetaStore::GetFile(uint64_t file_id) {
  const std::string key = FileKey(file_id);
  return DecodeOptional<FileRecord>(Get(files_, key), "cache metadata in " + dir_,
                                    [&](std::string_view v) { return DecodeFile(key, v); });
}

Result<std::optional<uint64_t>> RocksMetaStore::LookupPath(const std::string& path) {
  return DecodeOptional<uint64_t>(Get(paths_, path), "cache metadata in " + dir_, DecodePathValue);
}

Result<std::optional<BlockRecord>> RocksMetaStore::GetBlock(uint64_t file_id, uint64_t index) {
  const std::string key = BlockKey(file_id, index);
  return DecodeOptional<BlockRecord>(Get(blocks_, key), "cache metadata in " + dir_,
                                     [&](std::string_view v) { return DecodeBlock(key, v); });
}

namespace {

std::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

// Iterates `it` from where it stands while `visit` returns true. `visit`
// returns false to stop, setting *err first when a record does not decode.
template <typename Visit>
Status Walk(rocksdb::Iterator* it, const std::string& dir, Visit visit) {
  Status decode_error;
  for (; it->Valid(); it->Next()) {
    if (!visit(View(it->key()), View(it->value()), &decode_error)) break;
  }
  if (!decode_error.ok()) return decode_error.Prefixed("cache metadata in " + dir);
  rocksdb::Status s = it->status();
  if (!s.ok())
    return Status::Error(ErrnoOfRocks(s), "cache metadata in " + dir + ": " + s.ToString());
  return Status::Ok();
}

}  // namespace

Status RocksMetaStore::ScanFiles(const std::function<bool(const FileRecord&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), files_));
  it->SeekToFirst();
  return Walk(it.get(), dir_, [&](std::string_view k, std::string_view v, Status* err) {
    Result<FileRecord> f = DecodeFile(k, v);
    if (!f.ok()) {
      *err = f.status();
      return false;
    }
    return fn(f.value());
  });
}

Status RocksMetaStore::ScanPaths(const std::string& prefix,
                                 const std::function<bool(const std::string&, uint64_t)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), paths_));
  it->Seek(prefix);
  return Walk(it.get(), dir_, [&](std::string_view k, std::string_view v, Status* err) {
    if (!k.starts_with(prefix)) return false;
    Result<uint64_t> id = DecodePathValue(v);
    if (!id.ok()) {
      *err = id.status().Prefixed("path '" + std::string(k) + "'");
      return false;
    }
    return fn(std::string(k), id.value());
  });
}

Status RocksMetaStore::ScanBlocks(uint64_t file_id,
                                  const std::function<bool(const BlockRecord&)>& fn) {
  // An upper bound lets RocksDB stop at the end of this file's blocks
  // without stepping over the next file's (or their tombstones).
  rocksdb::ReadOptions ro;
  const std::string upper = file_id == UINT64_MAX ? std::string() : BlockKeyPrefix(file_id + 1);
  rocksdb::Slice upper_slice(upper);
  if (!upper.empty()) ro.iterate_upper_bound = &upper_slice;
  const std::string prefix = BlockKeyPrefix(file_id);
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, blocks_));
  it->Seek(prefix);
  return Walk(it.get(), dir_, [&](std::string_view k, std::string_view v, Status* err) {
    if (!k.starts_with(prefix)) return false;
    Result<BlockRecord> b = DecodeBlock(k, v);
    if (!b.ok()) {
      *err = b.status();
      return false;
    }
    return fn(b.value());
  });
}

Status RocksMetaStore::ScanAllBlocks(const std::function<bool(const BlockRecord&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), blocks_));
  it->SeekToFirst();
  return Walk(it.get(), dir_, [&](std::string_view k, std::string_view v, Status* err) {
    Result<BlockRecord> b = DecodeBlock(k, v);
    if (!b.ok()) {
      *err = b.status();
      return false;
    }
    return fn(b.value());
  });
}

Status RocksMetaStore::ScanDirty(const std::function<bool(const DirtyRecord&)>& fn) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), dirty_));
  it->SeekToFirst();
  return Walk(it.get(), dir_, [&](std::string_view k, std::string_view v, Status* err) {
    Result<DirtyRecord> d = DecodeDirty(k, v);
    if (!d.ok()) {
      *err = d.status();
      return false;
    }
    return fn(d.value());
  });
}

Result<uint64_t> RocksMetaStore::MaxKey(rocksdb::ColumnFamilyHandle* cf) {
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
  it->SeekToLast();
  if (!it->Valid()) {
    Status s = Convert(it->status());
    if (!s.ok()) return s;
    return uint64_t{0};
  }
  Result<uint64_t> id = DecodeFileKey(View(it->key()));  // both families: 8-byte BE keys
  if (!id.ok()) return id.status().Prefixed("cache metadata in " + dir_);
  return id;
}

Result<uint64_t> RocksMetaStore::MaxFileId() { return MaxKey(files_); }

Result<uint64_t> RocksMetaStore::MaxDirtySeq() { return MaxKey(dirty_); }

Status RocksMetaStore::Commit(const MetaBatch& batch, bool sync) {
  if (batch.empty()) return sync ? SyncWal() : Status::Ok();
  Status valid = ValidateBatch(batch);
  if (!valid.ok()) return valid;

  rocksdb::WriteBatch wb;
  rocksdb::Status s;
  for (const MetaBatch::Op& op : batch.ops()) {
    s = std::visit(
        [&](const auto& o) -> rocksdb::Status {
          using T = std::decay_t<decltype(o)>;
          if constexpr (std::is_same_v<T, MetaBatch::PutSuperblock>) {
            return wb.Put(default_, rocksdb::Slice(kSuperblockKey), EncodeSuperblock(o.sb));
          } else if constexpr (std::is_same_v<T, MetaBatch::PutMountState>) {
            return wb.Put(default_, rocksdb::Slice(kMountStateKey), EncodeMountState(o.state));
          } else if constexpr (std::is_same_v<T, MetaBatch::PutCounters>) {
            return wb.Put(default_, rocksdb::Slice(kCountersKey), EncodeCounters(o.counters));
          } else if constexpr (std::is_same_v<T, MetaBatch::PutFile>) {
            return wb.Put(files_, FileKey(o.file.file_id), EncodeFile(o.file));
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteFile>) {
            return wb.Delete(files_, FileKey(o.file_id));
          } else if constexpr (std::is_same_v<T, MetaBatch::PutPath>) {
            return wb.Put(paths_, o.path, EncodePathValue(o.file_id));
          } else if constexpr (std::is_same_v<T, MetaBatch::DeletePath>) {
            return wb.Delete(paths_, o.path);
          } else if constexpr (std::is_same_v<T, MetaBatch::PutBlock>) {
            return wb.Put(blocks_, BlockKey(o.block.file_id, o.block.index), EncodeBlock(o.block));
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteBlock>) {
            return wb.Delete(blocks_, BlockKey(o.file_id, o.index));
          } else if constexpr (std::is_same_v<T, MetaBatch::PutDirty>) {
            return wb.Put(dirty_, DirtyKey(o.dirty.seq), EncodeDirty(o.dirty));
          } else if constexpr (std::is_same_v<T, MetaBatch::DeleteDirty>) {
            return wb.Delete(dirty_, DirtyKey(o.seq));
          } else {
            static_assert(std::is_same_v<T, MetaBatch::PutDurableEpoch>);
            return wb.Put(default_, rocksdb::Slice(kDurableEpochKey), EncodeDurableEpoch(o.epoch));
          }
        },
        op);
    if (!s.ok()) return Convert(s);
  }

  rocksdb::WriteOptions wo;
  wo.sync = sync;
  wo.disableWAL = false;  // the WAL write is what makes a commit survive kill -9
  s = db_->Write(wo, &wb);
  if (!s.ok()) return Convert(s);
  commits_.fetch_add(1, std::memory_order_acq_rel);
  return Status::Ok();
}

Status RocksMetaStore::SyncWal() {
  // Every commit counted so far has had its WAL record written; a sync that
  // starts after the count reached `target` covers them all.
  const uint64_t target = commits_.load(std::memory_order_acquire);
  std::unique_lock<std::mutex> lock(sync_mu_);
  while (true) {
    if (synced_through_ >= target) return Status::Ok();
    if (!sync_running_) break;
    sync_cv_.wait(lock);
  }
  sync_running_ = true;
  const uint64_t covers = commits_.load(std::memory_order_acquire);
  lock.unlock();
  rocksdb::Status s = db_->SyncWAL();
  wal_syncs_.fetch_add(1, std::memory_order_relaxed);
  lock.lock();
  sync_running_ = false;
  if (s.ok()) synced_through_ = std::max(synced_through_, covers);
  sync_cv_.notify_all();
  // Waiters not covered (this sync failed, or they committed after it
  // started) loop and start the next one.
  return Convert(s);
}

}  // namespace cachefs
