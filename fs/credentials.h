// ScopedCallerCredentials: act as the caller of a FUSE request.
//
// While an object lives, the calling thread's filesystem uid and gid and its
// supplementary groups are those of the request's caller, so objects the
// daemon creates in SOURCE belong to the caller (and setgid directories,
// quotas and the source's own permission checks see the caller). The change
// is made with raw system calls, which affect only the calling thread.
// Nothing is changed when the daemon is not root (it could not) or when the
// caller already matches the daemon.
//
// The caller's umask is applied too, on a thread-private umask
// (ThreadHasPrivateUmask()), so that SOURCE applies either the umask or the
// parent directory's default ACL, exactly as for a direct call.
//
// Thread-safety: per thread; construct and destroy on the same thread.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/types.h>

#include "common/status.h"

namespace cachefs {

// Gives the calling thread its own umask (unshare(CLONE_FS)) the first time it
// is called on a thread; false if that is impossible.
bool ThreadHasPrivateUmask();

class ScopedCallerCredentials {
 public:
  explicit ScopedCallerCredentials(fuse_req_t req);
  ~ScopedCallerCredentials();
  ScopedCallerCredentials(const ScopedCallerCredentials&) = delete;
  ScopedCallerCredentials& operator=(const ScopedCallerCredentials&) = delete;

  // Non-OK when the switch failed; the operation must then not proceed.
  const Status& status() const { return status_; }

 private:
  bool switched_ = false;
  bool umask_set_ = false;
  mode_t old_umask_ = 0;
  Status status_;
};

}  // namespace cachefs
