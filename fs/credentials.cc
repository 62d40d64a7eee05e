#include "fs/credentials.h"

#include <sched.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

namespace cachefs {
namespace {

// Per-thread variants: glibc's setgroups() would change every thread.
int ThreadSetGroups(size_t n, const gid_t* list) { return syscall(SYS_setgroups, n, list); }
int ThreadSetFsuid(uid_t uid) { return syscall(SYS_setfsuid, uid); }
int ThreadSetFsgid(gid_t gid) { return syscall(SYS_setfsgid, gid); }

}  // namespace

bool ThreadHasPrivateUmask() {
  // 0: not tried yet on this thread, 1: done, -1: failed.
  thread_local int state = 0;
  if (state == 0) state = unshare(CLONE_FS) == 0 ? 1 : -1;
  return state == 1;
}

ScopedCallerCredentials::ScopedCallerCredentials(fuse_req_t req) {
  if (ThreadHasPrivateUmask()) {
    old_umask_ = umask(fuse_req_ctx(req)->umask);
    umask_set_ = true;
  }
  if (geteuid() != 0) return;
  const fuse_ctx* ctx = fuse_req_ctx(req);
  if (ctx->uid == 0 && ctx->gid == getegid()) return;
  int saved = errno;
  gid_t groups[256];
  int n = fuse_req_getgroups(req, 256, groups);
  if (n < 0) n = 0;  // caller gone or /proc unreadable: primary group only
  if (n > 256) n = 256;
  switched_ = true;
  if (ThreadSetGroups(static_cast<size_t>(n), groups) != 0) {
    status_ = Status::FromErrno(errno, "setgroups");
  }
  ThreadSetFsgid(ctx->gid);
  ThreadSetFsuid(ctx->uid);
  if (static_cast<uid_t>(ThreadSetFsuid(static_cast<uid_t>(-1))) != ctx->uid) {
    status_ = Status::Error(EPERM, "setfsuid failed");
  }
  errno = saved;
}

ScopedCallerCredentials::~ScopedCallerCredentials() {
  if (umask_set_) umask(old_umask_);
  if (!switched_) return;
  int saved = errno;
  ThreadSetFsuid(geteuid());
  ThreadSetFsgid(getegid());
  // The daemon keeps no supplementary groups of its own while serving.
  ThreadSetGroups(0, nullptr);
  errno = saved;
}

}  // namespace cachefs
