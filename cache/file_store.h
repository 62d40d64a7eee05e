// FileStore: a BlockStore in a preallocated file or block device on an SSD,
// read and written with pread/pwrite.
//
// A new store file is created with mode 0600 and all of its slot_count *
// block_size bytes allocated (fallocate), so running out of space shows up at
// creation (ENOSPC) and never as a failed write of cached data. An existing
// file must be at least that large; a larger one is used from offset 0.
//
// Durability: Write() is a pwrite into the page cache (or, with direct_io,
// to the device); Persist() is one fdatasync of the whole file, which covers
// every write completed before it. Discard() punches a hole so the SSD can
// reclaim the slot; a later Write to that slot may then need the file system
// to allocate again and can fail with ENOSPC if the device filled up since.
//
// direct_io (StoreConfig): the file is opened O_DIRECT, bypassing the page
// cache (no double caching of data the engine keeps anyway; reads and writes
// reach the device at once). Every Read and Write must then have an offset in
// the store, a length and a buffer address that are multiples of
// kDirectIoAlignment (4 KiB, which covers 512-byte and 4K-sector devices);
// anything else fails with EINVAL before reaching the kernel. Persist() is
// still needed: the device's volatile write cache and the file system's
// metadata are flushed only by fdatasync.
//
// StoreWrite::kStream without direct_io: the write goes through a second
// descriptor of the same file opened O_DIRECT (the kernel keeps the two
// views coherent: a direct write flushes and drops the page-cache pages of
// its range), so a streamed fill neither takes page-cache memory nor costs a
// copy into it. Without O_DIRECT support in the file system (tmpfs before
// Linux 6.6), or for an unaligned range, it is an ordinary pwrite.
// StoreRead::kDirect reads through the same descriptor, on the same
// conditions; other reads go through the page cache. A direct read of a
// range with pages not yet written out makes the kernel write them first,
// so it sees every completed Write.
//
// Thread-safety: as BlockStore; pread/pwrite at explicit offsets need no
// lock.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "cache/block_store.h"
#include "common/status.h"

namespace cachefs {

class FileStore final : public BlockStore {
 public:
  // Opens (or creates and sizes) the store cfg describes; see
  // OpenBlockStore(). REQUIRES: cfg.Validate() is OK and cfg.kind is kFile.
  static Result<std::unique_ptr<FileStore>> Open(const StoreConfig& cfg, bool create);
  ~FileStore() override;

  const char* kind() const override { return "file"; }
  bool direct_io() const { return direct_io_; }
  // Whether StoreWrite::kStream and StoreRead::kDirect go around the page
  // cache here.
  bool streams_direct() const { return direct_fd_ >= 0; }
  // The open store file, for zero-copy paths (splice). Owned by this object:
  // valid until it is destroyed; do not close it or change its offset-free
  // state (flags, size).
  int fd() const { return fd_; }

 private:
  FileStore(const StoreConfig& cfg, int fd, int direct_fd);
  Status DoRead(uint64_t pos, uint32_t len, void* buf, StoreRead how) override;
  Status DoWrite(uint64_t pos, uint32_t len, const void* buf, StoreWrite how) override;
  Status DoPersist() override;
  Status DoDiscard(uint64_t pos, uint64_t len) override;
  // EINVAL unless pos, len and buf suit O_DIRECT (only checked with direct_io).
  Status CheckAligned(uint64_t pos, uint32_t len, const void* buf) const;
  // Whether a hinted read or write of [pos, pos + len) from `buf` may use
  // direct_fd_: whole pages and an aligned buffer.
  bool DirectFits(uint64_t pos, uint32_t len, const void* buf) const;
  // pread of all of [pos, pos + len) from `fd`, falling back to fd_ when
  // the kernel refuses the direct descriptor (EINVAL).
  Status ReadFrom(int fd, uint64_t pos, uint32_t len, void* buf);

  const std::string path_;
  const bool direct_io_;
  const int fd_;
  // The store opened O_DIRECT for StoreWrite::kStream and
  // StoreRead::kDirect (fd_ itself with direct_io), or -1 where the file
  // system refuses O_DIRECT.
  const int direct_fd_;
};

// Opens the store file or device cfg.path read-write with O_CLOEXEC and
// `extra_flags` (O_DIRECT), for FileStore and PmemStore alike, and returns the
// descriptor (the caller closes it).
//
// When the file is missing and `create` is set, it is created with mode 0600,
// cfg.size_bytes() are allocated (fallocate, or posix_fallocate where the file
// system lacks it) and made durable with the directory entry; on any failure
// (ENOSPC on a full device: one line naming the store, the size and the free
// space) the half-made file is removed. An existing regular file must hold at
// least cfg.size_bytes() (else EINVAL, file untouched) and loses any group or
// other permission bits (contract 8). A block device must be as large; a
// character device (device DAX) is returned unchecked for the caller to size.
Result<int> OpenStoreFile(const StoreConfig& cfg, bool create, int extra_flags);

}  // namespace cachefs
