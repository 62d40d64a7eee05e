#!/bin/bash
# Data integrity through a cachefs mount, checked by fio's own verification:
#   a) sequential 1M writes, read back and checked (crc32c);
#   b) random 4k writes from two jobs on separate files, checked;
#   c) unmount, mount the same SOURCE again, and verify everything again
#      without writing (--verify_only): the data must have reached SOURCE;
#   d) every file compared byte for byte (cmp) between the mount and SOURCE;
#   e) the cache mounted again with mode=readonly: verify_only, writes refused.
# Usage: tests/mount/fio_verify.sh /path/to/cachefs [MODE]  (mode= of cachefs,
# default writethrough)
# Prints one line per step and ends with "fio_verify: N passed, M failed";
# exits non-zero if anything failed. Installs nothing: a missing tool fails.
set -u

prog=fio_verify
cachefs=${1:-}
mode=${2:-writethrough}
if [[ -z $cachefs || ! -x $cachefs ]]; then
  echo "$prog: usage: $0 /path/to/cachefs (got '${cachefs}', not an executable)" >&2
  exit 1
fi
for tool in fio fusermount3 cmp; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    # Not a skip: a check that cannot run must not look like a pass.
    echo "$prog: '$tool' is not installed (the project's setup script installs it); FAILED" >&2
    exit 1
  fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cachefs-fio.XXXXXX") || exit 1
src=$tmp/src
mnt=$tmp/mnt
log=$tmp/log
mkdir "$src" "$mnt" "$log"
daemon_pid=""

is_mounted() {
  awk -v m="$mnt" '$2 == m && $3 ~ /^fuse/ {found = 1} END {exit !found}' /proc/mounts
}

cleanup() {
  if is_mounted; then
    fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null
  fi
  if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$daemon_pid" 2>/dev/null
    wait "$daemon_pid" 2>/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tests/mount/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"

# Starts `cachefs -f SOURCE MOUNTPOINT` in the background and waits (with a
# deadline) for the mount to appear; fails if the daemon dies first.
mount_cachefs() {
  "$cachefs" -f "$src" "$mnt" --cache="$tmp/cache" --cache_size=256M --mode="$mode" \
    --writeback_delay=0.2 </dev/null >>"$log/daemon" 2>&1 &
  daemon_pid=$!
  for _ in $(seq 200); do
    is_mounted && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.05
  done
  echo "$prog: cachefs did not mount $mnt; its output:" >&2
  cat "$log/daemon" >&2
  return 1
}

# Unmounts and checks that the daemon exits cleanly (status 0).
unmount_cachefs() {
  fusermount3 -u "$mnt" || return 1
  local status=0
  wait "$daemon_pid" || status=$?
  daemon_pid=""
  if [[ $status -ne 0 ]]; then
    echo "$prog: cachefs exited with status $status after unmount" >&2
    return 1
  fi
  ! is_mounted
}

engine=psync
if fio --enghelp 2>/dev/null | grep -qw libaio; then engine=libaio; fi

# Common fio settings: fail on the first bad block, and fail on any I/O error.
common=(--ioengine="$engine" --verify=crc32c --verify_fatal=1 --do_verify=1
  --directory="$mnt" --group_reporting=1 --end_fsync=1 --verify_state_save=0)
seq_job=(--name=seq --rw=write --bs=1M --size=64M)
rand_job=(--name=rand --rw=randwrite --bs=4k --size=32M --iodepth=4 --numjobs=2
  --randrepeat=1)

# Runs fio with the given arguments, keeping its output; a non-zero status or
# any job with err != 0 is a failure.
run_fio() {
  local out=$1
  shift
  # From $log: fio may drop files in its working directory.
  if ! (cd "$log" && timeout 60 fio "$@") >"$log/$out" 2>&1; then
    cat "$log/$out" >&2
    return 1
  fi
  if grep -Eq 'err= *[1-9]|verify: bad|bad magic|crc32c: verify failed' "$log/$out"; then
    cat "$log/$out" >&2
    return 1
  fi
}

if ! mount_cachefs; then
  step "mount $src on $mnt" FAIL
  finish
fi

# a) sequential write, then read back and check.
if run_fio seq "${common[@]}" "${seq_job[@]}"; then
  step "a) sequential write 64M bs=1M + crc32c verify" OK
else
  step "a) sequential write 64M bs=1M + crc32c verify" FAIL
fi

# b) random writes, two jobs on separate files, then check.
if run_fio rand "${common[@]}" "${rand_job[@]}"; then
  step "b) random write 2x32M bs=4k iodepth=4 $engine + crc32c verify" OK
else
  step "b) random write 2x32M bs=4k iodepth=4 $engine + crc32c verify" FAIL
fi

# c) a new daemon on the same SOURCE sees the same data: nothing of it lived
# only in the old daemon or the old mount's page cache.
if unmount_cachefs && mount_cachefs &&
  run_fio seq_verify "${common[@]}" --verify_only "${seq_job[@]}" &&
  run_fio rand_verify "${common[@]}" --verify_only "${rand_job[@]}"; then
  step "c) unmount, remount, verify_only of both workloads" OK
else
  step "c) unmount, remount, verify_only of both workloads" FAIL
fi

# c2) the same after kill -9 of the daemon: every acknowledged write (and in
# writeback mode they live in the cache, not yet in SOURCE) is there after a
# new daemon recovers the cache.
if run_fio seq2 "${common[@]}" "${seq_job[@]}" && run_fio rand2 "${common[@]}" "${rand_job[@]}" &&
  kill -9 "$daemon_pid" && { wait "$daemon_pid" 2>/dev/null; true; } &&
  fusermount3 -u -z "$mnt" && mount_cachefs &&
  run_fio seq_verify2 "${common[@]}" --verify_only "${seq_job[@]}" &&
  run_fio rand_verify2 "${common[@]}" --verify_only "${rand_job[@]}"; then
  step "c2) write again, kill -9, remount, verify_only of both workloads" OK
else
  step "c2) write again, kill -9, remount, verify_only of both workloads" FAIL
fi

# d) byte-for-byte: every file fio made, through the mount and in SOURCE (in
# writeback mode once the writer has caught up: it runs every 0.2 s here).
files=$(cd "$src" && find . -type f | sort)
for _ in $(seq 300); do
  same=1
  for f in $files; do cmp -s "$mnt/$f" "$src/$f" || same=0; done
  [[ $same -eq 1 ]] && break
  sleep 0.1
done
mnt_files=$(cd "$mnt" 2>/dev/null && find . -type f | sort)
count=$(printf '%s\n' "$files" | grep -c .)
cmp_ok=1
if [[ $count -ne 3 ]]; then
  echo "$prog: expected 3 files in SOURCE (seq + 2 rand), found $count:" $files >&2
  cmp_ok=0
fi
if [[ $files != "$mnt_files" ]]; then
  echo "$prog: the mount lists other files than SOURCE" >&2
  cmp_ok=0
fi
for f in $files; do
  if ! cmp "$mnt/$f" "$src/$f" >&2; then cmp_ok=0; fi
done
if [[ $cmp_ok -eq 1 ]]; then
  step "d) cmp of $count files between mount and SOURCE" OK
else
  step "d) cmp of $count files between mount and SOURCE" FAIL
fi

# e) the same cache mounted readonly (the mode is the cache's: this switch
# writes back whatever is dirty first): both workloads verify through it,
# twice (cold and from the cache), and a write is refused with EROFS.
written_mode=$mode
mode=readonly
if unmount_cachefs && mount_cachefs &&
  run_fio seq_verify3 "${common[@]}" --verify_only "${seq_job[@]}" &&
  run_fio rand_verify3 "${common[@]}" --verify_only "${rand_job[@]}" &&
  run_fio seq_verify4 "${common[@]}" --verify_only "${seq_job[@]}"; then
  if err=$( (echo x >>"$mnt/seq.0.0") 2>&1); then
    step "e) mode=readonly: verify_only of both workloads, a write refused" FAIL "the write succeeded"
  elif [[ $err == *"Read-only file system"* ]]; then
    step "e) mode=readonly: verify_only of both workloads, a write refused" OK
  else
    step "e) mode=readonly: verify_only of both workloads, a write refused" FAIL "$err"
  fi
else
  step "e) mode=readonly: verify_only of both workloads, a write refused" FAIL
fi
mode=$written_mode

if ! unmount_cachefs; then step "final unmount" FAIL; fi
finish
