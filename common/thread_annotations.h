// Lock annotations checked by clang's -Wthread-safety; empty under GCC.
#pragma once

#if defined(__clang__)
#define CACHEFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define CACHEFS_THREAD_ANNOTATION(x)
#endif

#define GUARDED_BY(x) CACHEFS_THREAD_ANNOTATION(guarded_by(x))
#define PT_GUARDED_BY(x) CACHEFS_THREAD_ANNOTATION(pt_guarded_by(x))
#define EXCLUSIVE_LOCKS_REQUIRED(...) \
  CACHEFS_THREAD_ANNOTATION(exclusive_locks_required(__VA_ARGS__))
#define LOCKS_EXCLUDED(...) CACHEFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
