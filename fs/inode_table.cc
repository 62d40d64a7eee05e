#include "fs/inode_table.h"

#include <unistd.h>

#include <string>

namespace cachefs {

Inode::~Inode() {
  if (fd_ >= 0) close(fd_);
}

std::string Inode::ProcPath() const { return "/proc/self/fd/" + std::to_string(fd_); }

std::shared_ptr<CachedFile> Inode::cached() const {
  std::lock_guard<std::mutex> lock(cached_mu_);
  return cached_;
}

void Inode::set_cached(std::shared_ptr<CachedFile> cached) {
  std::lock_guard<std::mutex> lock(cached_mu_);
  cached_ = std::move(cached);
}

InodeTable::InodeTable(int root_fd, const struct stat& root_st)
    : root_(std::make_unique<Inode>(root_fd, root_st.st_dev, root_st.st_ino,
                                    root_st.st_mode & S_IFMT, 0)) {}

Inode* InodeTable::Get(fuse_ino_t ino) {
  if (ino == FUSE_ROOT_ID) return root_.get();
  return reinterpret_cast<Inode*>(static_cast<uintptr_t>(ino));
}

fuse_ino_t InodeTable::FuseIno(const Inode* inode) const {
  if (inode == root_.get()) return FUSE_ROOT_ID;
  return static_cast<fuse_ino_t>(reinterpret_cast<uintptr_t>(inode));
}

Inode* InodeTable::Acquire(int fd, const struct stat& st) {
  Key key{st.st_dev, st.st_ino};
  if (key == Key{root_->source_dev(), root_->source_ino()}) {
    // A lookup of ".." from a child of the root, or of a name linking back to
    // the root: the root is never forgotten, so no count is kept.
    close(fd);
    return root_.get();
  }
  std::lock_guard<std::mutex> lock(mu_);
  auto it = inodes_.find(key);
  if (it != inodes_.end()) {
    close(fd);
    it->second->nlookup_++;
    return it->second.get();
  }
  auto inode =
      std::make_unique<Inode>(fd, st.st_dev, st.st_ino, st.st_mode & S_IFMT, next_generation_++);
  inode->nlookup_ = 1;
  Inode* raw = inode.get();
  inodes_.emplace(key, std::move(inode));
  return raw;
}

void InodeTable::Forget(Inode* inode, uint64_t n) {
  if (inode == root_.get()) return;
  std::unique_ptr<Inode> doomed;  // destroyed (fd closed) after the lock is dropped
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (n > inode->nlookup_) n = inode->nlookup_;
    inode->nlookup_ -= n;
    if (inode->nlookup_ > 0) return;
    auto it = inodes_.find(Key{inode->source_dev(), inode->source_ino()});
    if (it == inodes_.end() || it->second.get() != inode) return;
    doomed = std::move(it->second);
    inodes_.erase(it);
  }
}

size_t InodeTable::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return inodes_.size() + 1;
}

}  // namespace cachefs
