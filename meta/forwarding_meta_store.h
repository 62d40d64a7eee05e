// ForwardingMetaStore: a MetaStore that passes every call to another one; the
// base of layers that change or watch a few calls (RecordCache, tests'
// HookMeta) and leave the rest alone.
//
// Thread-safety: as the inner store.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "meta/meta_store.h"

namespace cachefs {

class ForwardingMetaStore : public MetaStore {
 public:
  // REQUIRES: inner != nullptr.
  explicit ForwardingMetaStore(std::unique_ptr<MetaStore> inner) : inner_(std::move(inner)) {}

  Result<std::optional<Superblock>> GetSuperblock() override { return inner_->GetSuperblock(); }
  Result<std::optional<MountState>> GetMountState() override { return inner_->GetMountState(); }
  Result<std::optional<PersistentCounters>> GetCounters() override { return inner_->GetCounters(); }
  Result<std::optional<FileRecord>> GetFile(uint64_t file_id) override {
    return inner_->GetFile(file_id);
  }
  Result<std::optional<uint64_t>> LookupPath(const std::string& path) override {
    return inner_->LookupPath(path);
  }
  Result<std::optional<BlockRecord>> GetBlock(uint64_t file_id, uint64_t index) override {
    return inner_->GetBlock(file_id, index);
  }
  Result<uint64_t> GetDurableEpoch() override { return inner_->GetDurableEpoch(); }
  Status ScanFiles(const std::function<bool(const FileRecord&)>& fn) override {
    return inner_->ScanFiles(fn);
  }
  Status ScanPaths(const std::string& prefix,
                   const std::function<bool(const std::string&, uint64_t)>& fn) override {
    return inner_->ScanPaths(prefix, fn);
  }
  Status ScanBlocks(uint64_t file_id, const std::function<bool(const BlockRecord&)>& fn) override {
    return inner_->ScanBlocks(file_id, fn);
  }
  Status ScanAllBlocks(const std::function<bool(const BlockRecord&)>& fn) override {
    return inner_->ScanAllBlocks(fn);
  }
  Status ScanDirty(const std::function<bool(const DirtyRecord&)>& fn) override {
    return inner_->ScanDirty(fn);
  }
  Result<uint64_t> MaxFileId() override { return inner_->MaxFileId(); }
  Result<uint64_t> MaxDirtySeq() override { return inner_->MaxDirtySeq(); }
  Status Commit(const MetaBatch& batch, bool sync) override { return inner_->Commit(batch, sync); }
  Status SyncWal() override { return inner_->SyncWal(); }

 protected:
  MetaStore& inner() { return *inner_; }

 private:
  const std::unique_ptr<MetaStore> inner_;
};

}  // namespace cachefs
