// Image mode (SOURCE is one regular file, a disk image): writeback in fsync
// epochs, and the cow layer (mode=cow).
//
// Epochs. A guest (a filesystem on a loop device, a VM) orders its writes
// with flushes: what it wrote before an fsync must be on the disk before
// anything it writes after it. So the slow image must only ever show a state
// the guest synced. The writer does not need every epoch: it writes the
// state as of the latest completed fsync, then syncs the image. An fsync
// (SealEpoch) records, for each block written since the last one, its
// current version: slot, generation, CRCs and dirty sub-blocks. A later
// write into such a block either fills sub-blocks that were not valid, in
// place (the version's dirty sub-blocks do not change: the writer writes
// only those), or moves the block to a new slot (copy on write): the old
// slot stays held by the version (readers_) until the writer has written it
// back, instead of being freed at the next persist. A round takes the
// epoch as it stands (TakeEpoch), writes every version of it and syncs the
// image; each version then leaves the epoch unless a newer seal replaced
// it. Between rounds the image therefore equals the state of the last fsync
// a round covered. The epoch lives in memory only: after a crash every
// dirty block at mount forms one epoch (it is all acknowledged data).
//
// cow. Writes stay in the cache as dirty data and are never written back
// (WritebackAllowed) until CommitLayer; DiscardLayer drops them in one
// synced batch. Reads merge the layer with the image like any dirty data.
#include <fcntl.h>
#include <sys/stat.h>

#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cache/engine.h"
#include "common/log.h"

namespace cachefs {
namespace {

using Key = std::pair<uint64_t, uint64_t>;  // (file id, block index)

}  // namespace

bool Engine::WritebackAllowed() const { return mode() != CacheMode::kCow || committing_.load(); }

void Engine::NoteEpochWrite(const BlockKey& key) {
  // mode=cow keeps no epochs: its commit seals the whole layer at once.
  if (ImageEpochs() && WritebackAllowed()) epoch_touched_.insert({key.file_id, key.index});
}

Status Engine::SealEpoch(bool all) {
  if (!ImageEpochs() || !WritebackAllowed()) return Status::Ok();
  // One seal at a time, and none while the writer takes the epoch: a round
  // never sees half of a seal.
  std::lock_guard<std::mutex> sealing(epoch_mu_);
  std::vector<Key> keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (all) {
      for (const auto& [seq, key] : dirty_) epoch_touched_.insert({key.file_id, key.index});
    }
    keys.assign(epoch_touched_.begin(), epoch_touched_.end());
    epoch_touched_.clear();
  }
  Status first;
  for (const Key& key : keys) {
    // With the block held, nobody changes its record or its slot.
    auto lock = LockBlock(key.first, key.second);
    auto r = meta_->GetBlock(key.first, key.second);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!r.ok()) {
        epoch_touched_.insert(key);  // sealed by the next fsync
        if (first.ok()) first = r.status();
      } else {
        const bool dirty = r.value() && r.value()->AnyDirty() &&
                           index_->Find({key.first, key.second}) == r.value()->slot;
        auto it = epoch_blocks_.find(key);
        if (it != epoch_blocks_.end()) {
          ReleaseReader(static_cast<uint32_t>(it->second.slot));
          epoch_blocks_.erase(it);
        }
        if (dirty) {
          BlockRecord version = *r.value();
          version.previous.clear();  // only for recovery
          readers_[version.slot]++;
          epoch_blocks_.emplace(key, std::move(version));
        }
      }
    }
    UnlockBlock(key.first, lock);
  }
  return first;
}

Status Engine::FlushAll() {
  Status s = SealEpoch(/*all=*/true);
  if (!s.ok()) return s;
  return Flush();
}

Engine::EpochVersions Engine::TakeEpoch(uint64_t file_id) {
  std::lock_guard<std::mutex> sealing(epoch_mu_);
  std::lock_guard<std::mutex> lock(mu_);
  EpochVersions taken;
  for (auto it = epoch_blocks_.lower_bound({file_id, 0});
       it != epoch_blocks_.end() && it->first.first == file_id; ++it) {
    readers_[it->second.slot]++;  // the round's own hold: a seal may replace the version
    taken.emplace(it->first.second, it->second);
  }
  return taken;
}

void Engine::ReleaseEpoch(const EpochVersions& taken) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [index, version] : taken) ReleaseReader(static_cast<uint32_t>(version.slot));
}

void Engine::EpochBlockDone(const BlockKey& key, uint64_t generation,
                            const std::vector<uint64_t>& written) {
  auto it = epoch_blocks_.find({key.file_id, key.index});
  if (it == epoch_blocks_.end() || it->second.generation != generation) return;
  // A seal during the round may have added sub-blocks written in place
  // since (same slot and generation): those are still to be written.
  std::vector<uint64_t>& dirty = it->second.dirty;
  for (size_t w = 0; w < dirty.size() && w < written.size(); ++w) dirty[w] &= ~written[w];
  if (it->second.AnyDirty()) return;
  ReleaseReader(static_cast<uint32_t>(it->second.slot));
  epoch_blocks_.erase(it);
}

void Engine::DropEpoch(uint64_t file_id) {
  auto it = epoch_blocks_.lower_bound({file_id, 0});
  while (it != epoch_blocks_.end() && it->first.first == file_id) {
    ReleaseReader(static_cast<uint32_t>(it->second.slot));
    it = epoch_blocks_.erase(it);
  }
  auto t = epoch_touched_.lower_bound({file_id, 0});
  while (t != epoch_touched_.end() && t->first == file_id) t = epoch_touched_.erase(t);
}

namespace {

// Holds a mounted engine's writes off (WriteGuard) while it lives.
class GateCloser {
 public:
  GateCloser(std::mutex& mu, std::condition_variable& cv, bool& closed, int& writers)
      : mu_(mu), cv_(cv), closed_(closed) {
    std::unique_lock<std::mutex> lock(mu_);
    closed_ = true;
    cv_.wait(lock, [&] { return writers == 0; });
  }
  ~GateCloser() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      closed_ = false;
    }
    cv_.notify_all();
  }
  GateCloser(const GateCloser&) = delete;
  GateCloser& operator=(const GateCloser&) = delete;

 private:
  std::mutex& mu_;
  std::condition_variable& cv_;
  bool& closed_;
};

}  // namespace

Result<Engine::LayerResult> Engine::CommitLayer() {
  std::lock_guard<std::mutex> switching(mode_switch_mu_);
  if (mode() != CacheMode::kCow) {
    return Status::Invalid(std::string("commit: the cache is in mode=") + CacheModeName(mode()) +
                           ", not cow: there is no layer to commit");
  }
  LayerResult layer;
  {
    std::lock_guard<std::mutex> lock(mu_);
    layer.blocks = dirty_.size();
    layer.bytes = dirty_subs_total_ * kSubBlockSize;
  }
  committing_ = true;
  struct Done {
    std::atomic<bool>& flag;
    ~Done() { flag = false; }
  } done{committing_};
  // The bulk while writes go on, the rest with writes held off. Each pass
  // is an epoch of its own: the image is synced after it.
  Status s = FlushAll();
  bool left = false;
  {
    GateCloser gate(gate_mu_, gate_cv_, gate_closed_, gate_writers_);
    if (s.ok()) s = FlushAll();
    left = HasAnyDirty();
  }
  if (s.ok() && left) {
    s = Status::Error(EBUSY,
                      "the image changed outside the mount while the layer was not committed "
                      "(a conflict: cachefsctl conflicts); the layer is kept");
  }
  if (!s.ok()) return s.Prefixed("commit");
  LogInfo("cache '" + dir_ + "': cow layer committed (" + std::to_string(layer.blocks) +
          " blocks, " + std::to_string(layer.bytes) + " bytes)");
  return layer;
}

Result<Engine::LayerResult> Engine::DiscardLayer() {
  std::lock_guard<std::mutex> switching(mode_switch_mu_);
  if (mode() != CacheMode::kCow) {
    return Status::Invalid(std::string("discard: the cache is in mode=") + CacheModeName(mode()) +
                           ", not cow: there is no layer to discard");
  }
  GateCloser gate(gate_mu_, gate_cv_, gate_closed_, gate_writers_);
  LayerResult layer;
  std::set<uint64_t> files;
  {
    std::lock_guard<std::mutex> lock(mu_);
    layer.blocks = dirty_.size();
    layer.bytes = dirty_subs_total_ * kSubBlockSize;
    for (const auto& [file_id, blocks] : dirty_per_file_) files.insert(file_id);
  }
  for (uint64_t file_id : files) {
    auto rec = meta_->GetFile(file_id);
    if (!rec.ok()) return rec.status().Prefixed("discard");
    if (rec.value() && (rec.value()->flags & FileRecord::kWritingBack) != 0) {
      // The image holds part of the layer: dropping the rest would mix them.
      return Status::Error(EBUSY,
                           "discard: a commit was cut short and the image holds part of the "
                           "layer; run cachefsctl commit to finish it");
    }
  }
  struct stat st;
  if (stat(config_.source.c_str(), &st) != 0) {
    return Status::FromErrno(errno, "discard: SOURCE '" + config_.source + "'");
  }
  for (uint64_t file_id : files) {
    // Every block of the file, dirty or not, goes in one synced batch: a
    // crash leaves the whole layer or none of it.
    auto dropped = DiscardOurs(file_id, st);
    if (!dropped.ok()) return dropped.status().Prefixed("discard");
  }
  LogInfo("cache '" + dir_ + "': cow layer discarded (" + std::to_string(layer.blocks) +
          " blocks, " + std::to_string(layer.bytes) + " bytes)");
  return layer;
}

}  // namespace cachefs
