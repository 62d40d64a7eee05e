#!/bin/bash
# Image mode under real use: cachefs over one image file, in every mode
# (writethrough, writeback, writearound, and readonly for the read-only parts).
#   a) losetup on the mounted image, mkfs.ext4, a tree of random files copied in,
#      fsck.ext4 -f -n clean; after a remount of cachefs the files are the same;
#      then (in writeback after cachefsctl flush --wait) cachefs is unmounted and
#      the SLOW image, loop-mounted directly, holds the same files.
#   b) dd writes at several block sizes, with and without oflag=direct, all
#      conv=notrunc, read back (iflag=direct and not) and compared with cmp, on
#      the mount and then on the slow image.
#   c) qemu: a qcow2 image (preallocation=metadata) as SOURCE, written with
#      qemu-io through the mount (cached and O_DIRECT), checked with qemu-img
#      check, qemu-img compare against a raw reference and qemu-io read -P; the
#      slow qcow2 checked again after unmount. A qcow2 without preallocation
#      cannot grow through the mount: its first write fails with ENOSPC.
#   d) PR_SET_IO_FLUSHER: set on every thread of an image-mode daemon when it
#      holds CAP_SYS_RESOURCE; without it (dropped from the bounding set here)
#      the daemon logs one line and serves on.
#   e) size changes are refused with a log line: truncate/ftruncate and O_TRUNC
#      to another size and a growing fallocate give EPERM; writes, appends and
#      copy_file_range at or past the end give ENOSPC; a write across the end
#      is cut short there; writes inside the image work.
#   f) mode=cow: an ext4 image on the slow store, changed through the mount and
#      loop (fsck clean, the slow image untouched); cachefsctl discard: the
#      mount shows the old ext4 again, files equal; changed again and
#      cachefsctl commit: the SLOW image, loop-mounted directly after the
#      unmount, is fsck clean and holds the change.
# Usage: tests/mount/image_test.sh /path/to/cachefs /path/to/cachefsctl
# Needs root (losetup, mount). Prints one line per step and ends with
# "image_test: N passed, M failed"; exits non-zero if anything failed. A
# missing tool or an impossible losetup fails: nothing is skipped.
set -u

prog=image_test
cachefs=${1:-}
cachefsctl=${2:-}
if [[ -z $cachefs || ! -x $cachefs || -z $cachefsctl || ! -x $cachefsctl ]]; then
  echo "$prog: usage: $0 /path/to/cachefs /path/to/cachefsctl" >&2
  exit 1
fi
for tool in losetup mkfs.ext4 fsck.ext4 mount umount qemu-img qemu-io fusermount3 cmp diff \
  python3 setpriv fallocate truncate dd; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$prog: '$tool' is not installed (packaging/setup.sh installs it); FAILED" >&2
    exit 1
  fi
done
if [[ $(id -u) -ne 0 ]]; then
  echo "$prog: must run as root (losetup and mount); FAILED" >&2
  exit 1
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/cachefs-image.XXXXXX") || exit 1
chmod 755 "$tmp"
slow=$tmp/slow
mkdir "$slow" "$tmp/log" "$tmp/ext"

loops=()    # loop devices we attached
daemons=()  # pids of the cachefs daemons we started

is_mounted() {  # is_mounted PATH
  awk -v m="$1" '$2 == m {found = 1} END {exit !found}' /proc/mounts
}

cleanup() {
  is_mounted "$tmp/ext" && umount -l "$tmp/ext"
  for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
  awk -v t="$tmp/" '$3 ~ /^fuse/ && index($2, t) == 1 {print $2}' /proc/mounts |
    while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  for p in "${daemons[@]}"; do
    kill -0 "$p" 2>/dev/null || continue
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tests/mount/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
check() {  # check NAME COMMAND...: one step from the command's status
  local name=$1
  shift
  if "$@"; then step "$name" OK; else step "$name" FAIL; fi
}
fail() {  # fail MESSAGE: prints it to stderr, returns 1
  echo "$prog: $*" >&2
  return 1
}

# --- cachefs ----------------------------------------------------------------

daemon_pid=""
# mount_image SOURCE MOUNTPOINT CACHE MODE [cachefs args...]: starts
# `cachefs -f` in the background (its log in $tmp/log/NAME) and waits, with a
# deadline, for the mount; fails if the daemon dies first.
mount_image() {
  local src=$1 mnt=$2 cache=$3 mode=$4
  shift 4
  local log
  log=$tmp/log/$(basename "$mnt")
  [[ -e $mnt ]] || : >"$mnt"
  "$@" "$cachefs" -f "$src" "$mnt" --cache="$cache" --cache_size=64M --mode="$mode" \
    --writeback_delay=0.2 </dev/null >>"$log" 2>&1 &
  daemon_pid=$!
  daemons+=("$daemon_pid")
  for _ in $(seq 200); do
    is_mounted "$mnt" && return 0
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.05
  done
  fail "cachefs did not mount $mnt; its output:"
  cat "$log" >&2
  return 1
}

# unmount_image MOUNTPOINT: unmounts and checks that the daemon exits with 0.
unmount_image() {
  fusermount3 -u "$1" || return 1
  local status=0
  wait "$daemon_pid" || status=$?
  daemon_pid=""
  [[ $status -eq 0 ]] || fail "cachefs exited with status $status after unmounting $1" || return 1
  ! is_mounted "$1"
}

# flush_and_unmount MOUNTPOINT MODE: in writeback, waits until everything is
# on the slow image first (dirty data otherwise stays in the cache).
flush_and_unmount() {
  if [[ $2 == writeback ]]; then
    "$cachefsctl" flush --wait "$1" >/dev/null || fail "cachefsctl flush --wait $1 failed" ||
      return 1
  fi
  unmount_image "$1"
}

# --- loop devices ---------------------------------------------------------

dev=""
# attach FILE [losetup args...]: sets $dev to the loop device (not run in
# $(...): the list of devices to detach lives in this shell).
attach() {
  local file=$1
  shift
  dev=$(losetup --find --show "$@" "$file") || {
    fail "losetup --find --show $* $file failed: loop devices are needed for this test"
    return 1
  }
  loops+=("$dev")
}

detach() {  # detach DEVICE
  losetup -d "$1" || return 1
  local kept=()
  for l in "${loops[@]}"; do [[ $l == "$1" ]] || kept+=("$l"); done
  loops=("${kept[@]}")
}

fsck_clean() {  # fsck_clean DEVICE
  local out
  out=$(fsck.ext4 -f -n "$1" 2>&1) || {
    fail "fsck.ext4 -f -n $1 is not clean:"
    echo "$out" >&2
    return 1
  }
}

# compare_ext DEVICE [mount options]: mounts the ext4 on DEVICE and compares
# its tree (content, names, symlinks) with the reference tree.
compare_ext() {
  local dev=$1 opts=${2:-ro}
  mount -o "$opts" "$dev" "$tmp/ext" || return 1
  local rc=0
  diff -r --no-dereference "$tmp/ref" "$tmp/ext/tree" >&2 || rc=1
  umount "$tmp/ext" || rc=1
  [[ $rc -eq 0 ]] || fail "the files on $dev differ from the reference"
  return $rc
}

# The reference tree: nested directories of random files (about 4 MiB), an
# empty file and a symlink.
make_ref_tree() {
  mkdir -p "$tmp/ref/a/b/c" "$tmp/ref/d" "$tmp/ref/e/f"
  local i=0 dir size
  for dir in "" a a/b a/b/c d e e/f; do
    for n in 1 2 3 4; do
      i=$((i + 1))
      size=$(((i * 37 % 11) * 13000 + i * 4099 + 1))
      head -c "$size" /dev/urandom >"$tmp/ref/$dir/file$n"
    done
  done
  head -c 1500000 /dev/urandom >"$tmp/ref/a/big"
  : >"$tmp/ref/d/empty"
  ln -s ../a/big "$tmp/ref/d/link"
}

# --- a) losetup + ext4 -----------------------------------------------------

# a_loop MODE: a fresh image, an ext4 made on it through the mount and loop.
a_loop() {
  local mode=$1 img=$slow/ext-$1.img mnt=$tmp/ext-$1.img cache=$tmp/cache-ext-$1
  local lo_args=()
  # One mode runs the loop device with direct IO (O_DIRECT on the FUSE file).
  [[ $mode == writeback ]] && lo_args=(--direct-io=on)
  truncate -s 64M "$img"
  if ! mount_image "$img" "$mnt" "$cache" "$mode"; then
    step "a) $mode: mount the image" FAIL
    return
  fi
  if attach "$mnt" "${lo_args[@]}" && mkfs.ext4 -q -F "$dev" &&
    mount "$dev" "$tmp/ext" && cp -a "$tmp/ref" "$tmp/ext/tree" && umount "$tmp/ext" &&
    fsck_clean "$dev" && detach "$dev"; then
    step "a) $mode: losetup ${lo_args[*]} + mkfs.ext4 + copy a tree + fsck -f -n" OK
  else
    step "a) $mode: losetup ${lo_args[*]} + mkfs.ext4 + copy a tree + fsck -f -n" FAIL
  fi
  if unmount_image "$mnt" && mount_image "$img" "$mnt" "$cache" "$mode" &&
    attach "$mnt" "${lo_args[@]}" && fsck_clean "$dev" && compare_ext "$dev" rw &&
    fsck_clean "$dev" && detach "$dev"; then
    step "a) $mode: cachefs remounted, loop again: fsck clean, the files compare equal" OK
  else
    step "a) $mode: cachefs remounted, loop again: fsck clean, the files compare equal" FAIL
  fi
  if flush_and_unmount "$mnt" "$mode" && attach "$img" -r && fsck_clean "$dev" &&
    compare_ext "$dev" ro,noload && detach "$dev"; then
    step "a) $mode: cachefs unmounted, the SLOW image loop-mounted: the same files" OK
  else
    step "a) $mode: cachefs unmounted, the SLOW image loop-mounted: the same files" FAIL
  fi
}

# a_loop_readonly: an ext4 image made directly on the slow store, used
# read-only through a mode=readonly mount.
a_loop_readonly() {
  local img=$slow/ext-ro.img mnt=$tmp/ext-ro.img cache=$tmp/cache-ext-ro
  mkfs.ext4 -q -F -d "$tmp/ref.d" "$img" 64M >/dev/null || {
    step "a) readonly: mkfs.ext4 -d on the slow image" FAIL
    return
  }
  if mount_image "$img" "$mnt" "$cache" readonly && attach "$mnt" -r &&
    fsck_clean "$dev" && compare_ext "$dev" ro,noload && compare_ext "$dev" ro,noload &&
    detach "$dev"; then
    step "a) readonly: losetup -r, fsck -f -n clean, the files compare equal (twice: cold, warm)" OK
  else
    step "a) readonly: losetup -r, fsck -f -n clean, the files compare equal (twice: cold, warm)" FAIL
  fi
  local out
  if out=$(dd if=/dev/zero of="$mnt" bs=4k count=1 conv=notrunc 2>&1); then
    step "a) readonly: a write through the mount is refused" FAIL "dd succeeded"
  elif [[ $out == *"Read-only file system"* ]] && cmp -s "$mnt" "$img"; then
    step "a) readonly: a write through the mount is refused (EROFS), the image unchanged" OK
  else
    step "a) readonly: a write through the mount is refused" FAIL "$out"
  fi
  check "a) readonly: unmount" unmount_image "$mnt"
}

# --- b) dd + e) size changes ------------------------------------------------

# The writes of b): bs count seek [dd flags]; seek in units of bs.
dd_writes=(
  "512 8 3"
  "4096 16 100 oflag=direct"
  "65536 4 7"
  "1M 2 5 oflag=direct"
  "1M 1 3 oflag=dsync"
  "3000 5 11"
  "128K 3 33 oflag=direct,sync"
  "1M 16 0"
)

# dd_apply TARGET FLAGS...: the writes of b) into TARGET, from $tmp/chunk,
# each from a different offset of it.
dd_apply() {
  local target=$1 direct=$2 w bs count seek flags skip=0
  for w in "${dd_writes[@]}"; do
    read -r bs count seek flags <<<"$w"
    [[ $direct == nodirect ]] && flags=""
    skip=$((skip + 1))
    dd if="$tmp/chunk" of="$target" bs="$bs" count="$count" seek="$seek" skip="$skip" \
      conv=notrunc ${flags:+"$flags"} status=none || return 1
  done
}

# read_back MOUNTPOINT REF [REF...]: the image read with several block sizes,
# cached and O_DIRECT, equals REF (once per REF given: cold, then warm).
read_back() {
  local mnt=$1 ref rc=0 args
  shift
  for ref in "$@"; do
    for args in "bs=4k" "bs=1M iflag=direct" "bs=64k iflag=direct" "bs=3000"; do
      # shellcheck disable=SC2086
      if ! dd if="$mnt" $args status=none | cmp - "$ref" >&2; then
        fail "dd $args of $mnt differs from the reference"
        rc=1
      fi
    done
  done
  return $rc
}

# size_changes MOUNTPOINT: e) through the system calls, checked by errno.
size_changes() {
  python3 - "$1" <<'PY'
import errno, os, sys
path = sys.argv[1]
size = os.stat(path).st_size
bad = []

def expect(name, err, fn):
    try:
        r = fn()
    except OSError as e:
        if e.errno != err:
            bad.append(f"{name}: {errno.errorcode.get(e.errno)} instead of {errno.errorcode[err]}")
        return
    bad.append(f"{name}: succeeded ({r!r}) instead of {errno.errorcode[err]}")

fd = os.open(path, os.O_RDWR)
expect("truncate(size + 1M)", errno.EPERM, lambda: os.truncate(path, size + (1 << 20)))
expect("ftruncate(size - 4096)", errno.EPERM, lambda: os.ftruncate(fd, size - 4096))
expect("ftruncate(0)", errno.EPERM, lambda: os.ftruncate(fd, 0))
expect("open(O_TRUNC)", errno.EPERM, lambda: os.open(path, os.O_WRONLY | os.O_TRUNC))
expect("posix_fallocate past the end", errno.EPERM,
       lambda: os.posix_fallocate(fd, size - 4096, 1 << 20))
expect("pwrite at the end", errno.ENOSPC, lambda: os.pwrite(fd, b"x" * 4096, size))
expect("pwrite past the end", errno.ENOSPC, lambda: os.pwrite(fd, b"x", size + (1 << 20)))
afd = os.open(path, os.O_WRONLY | os.O_APPEND)
expect("append", errno.ENOSPC, lambda: os.write(afd, b"appended"))
os.close(afd)
expect("copy_file_range to the end", errno.ENOSPC,
       lambda: os.copy_file_range(fd, fd, 4096, 0, size))
# Allowed: the same size, a fallocate inside, a write across the end (cut short).
os.ftruncate(fd, size)
os.posix_fallocate(fd, 0, 1 << 20)
n = os.pwrite(fd, b"E" * 8192, size - 4096)
if n != 4096:
    bad.append(f"a write across the end wrote {n} bytes instead of 4096")
if os.pread(fd, 4096, size - 4096) != b"E" * 4096:
    bad.append("the part of a write across the end inside the image was not written")
n = os.pwrite(fd, b"inside", 12345)
if n != 6 or os.pread(fd, 6, 12345) != b"inside":
    bad.append("a write inside the image did not work")
os.fsync(fd)
os.close(fd)
if os.stat(path).st_size != size:
    bad.append(f"the size changed: {os.stat(path).st_size} instead of {size}")
for b in bad:
    print("size_changes: " + b, file=sys.stderr)
sys.exit(1 if bad else 0)
PY
}

b_dd() {
  local mode=$1 img=$slow/dd-$1.img mnt=$tmp/dd-$1.img cache=$tmp/cache-dd-$1
  local ref=$tmp/dd-$1.ref size
  head -c 24M /dev/urandom >"$img"
  cp "$img" "$ref"
  size=$(stat -c %s "$img")
  if ! mount_image "$img" "$mnt" "$cache" "$mode"; then
    step "b) $mode: mount the image" FAIL
    return
  fi
  read_back "$mnt" "$ref" >/dev/null  # warm part of the cache: writes must update it
  if dd_apply "$mnt" direct && dd_apply "$ref" nodirect && read_back "$mnt" "$ref"; then
    step "b) $mode: dd writes (bs 512..1M, oflag=direct/dsync/none, conv=notrunc), read back equal" OK
  else
    step "b) $mode: dd writes (bs 512..1M, oflag=direct/dsync/none, conv=notrunc), read back equal" FAIL
  fi
  local out
  out=$(dd if="$tmp/chunk" of="$mnt" bs=1M count=1 status=none 2>&1)
  if [[ $? -ne 0 && $out == *"Operation not permitted"* ]] && cmp -s "$mnt" "$ref"; then
    step "e) $mode: dd without conv=notrunc (O_TRUNC) refused with EPERM, image unchanged" OK
  else
    step "e) $mode: dd without conv=notrunc (O_TRUNC) refused with EPERM, image unchanged" FAIL "$out"
  fi
  # Two 1M blocks from the last MiB: the first fits, the second does not.
  out=$(dd if="$tmp/chunk" of="$mnt" bs=1M count=2 seek=$((size / 1048576 - 1)) \
    conv=notrunc status=none 2>&1)
  dd if="$tmp/chunk" of="$ref" bs=1M count=1 seek=$((size / 1048576 - 1)) conv=notrunc \
    status=none
  if [[ $out == *"No space left on device"* ]] && [[ $(stat -c %s "$mnt") -eq $size ]] &&
    cmp "$mnt" "$ref" >&2; then
    step "e) $mode: dd across the end: the part inside written, then ENOSPC, size kept" OK
  else
    step "e) $mode: dd across the end: the part inside written, then ENOSPC, size kept" FAIL "$out"
  fi
  if size_changes "$mnt"; then
    step "e) $mode: truncate/ftruncate/O_TRUNC/fallocate EPERM, writes/append/copy_file_range past the end ENOSPC, inside ok" OK
  else
    step "e) $mode: truncate/ftruncate/O_TRUNC/fallocate EPERM, writes/append/copy_file_range past the end ENOSPC, inside ok" FAIL
  fi
  # What size_changes wrote, into the reference.
  printf 'inside' | dd of="$ref" bs=1 seek=12345 conv=notrunc status=none
  head -c 4096 /dev/zero | tr '\0' 'E' | dd of="$ref" bs=4096 seek=$((size / 4096 - 1)) \
    conv=notrunc status=none
  if out=$(qemu-img resize -f raw "$mnt" 32M 2>&1); then
    step "e) $mode: qemu-img resize refused" FAIL "it succeeded"
  elif [[ $out == *"Operation not permitted"* ]]; then
    step "e) $mode: qemu-img resize refused (EPERM)" OK
  else
    step "e) $mode: qemu-img resize refused (EPERM)" FAIL "$out"
  fi
  if grep -q "image mode: refused" "$tmp/log/$(basename "$mnt")"; then
    step "e) $mode: the refusals are logged" OK
  else
    step "e) $mode: the refusals are logged" FAIL "no 'image mode: refused' line in the log"
  fi
  if read_back "$mnt" "$ref" && flush_and_unmount "$mnt" "$mode" && cmp "$img" "$ref" >&2; then
    step "b) $mode: after unmount the slow image holds every write" OK
  else
    step "b) $mode: after unmount the slow image holds every write" FAIL
  fi
}

b_dd_readonly() {
  local img=$slow/dd-ro.img mnt=$tmp/dd-ro.img cache=$tmp/cache-dd-ro out
  head -c 8M /dev/urandom >"$img"
  if ! mount_image "$img" "$mnt" "$cache" readonly; then
    step "b) readonly: mount the image" FAIL
    return
  fi
  check "b) readonly: dd reads (bs 4k..1M, iflag=direct and not) equal the slow image, twice" \
    read_back "$mnt" "$img" "$img"
  out=$(dd if="$tmp/chunk" of="$mnt" bs=4k count=1 conv=notrunc oflag=direct status=none 2>&1)
  if [[ $? -ne 0 && $out == *"Read-only file system"* ]] && cmp -s "$mnt" "$img"; then
    step "b) readonly: dd oflag=direct write refused (EROFS)" OK
  else
    step "b) readonly: dd oflag=direct write refused (EROFS)" FAIL "$out"
  fi
  out=$(truncate -s 1M "$mnt" 2>&1)
  if [[ $? -ne 0 && $out == *"Read-only file system"* ]] && cmp -s "$mnt" "$img"; then
    step "b) readonly: truncate refused with EROFS (not EPERM: the mode decides first)" OK
  else
    step "b) readonly: truncate refused with EROFS (not EPERM: the mode decides first)" FAIL "$out"
  fi
  check "b) readonly: unmount" unmount_image "$mnt"
}

# --- c) qemu ------------------------------------------------------------------

# The writes of c): qemu-io commands, each once through the mount and once
# into a raw reference.
qemu_writes=(
  "write -P 0xab 0 1M"
  "write -P 0xcd 4M 64k"
  "write -P 0x11 1M 512"
  "write -P 0x22 12345k 3k"
  "write -z 2M 256k"
)

c_qemu() {
  local mode=$1 img=$slow/vm-$1.qcow2 mnt=$tmp/vm-$1.qcow2 cache=$tmp/cache-vm-$1
  local ref=$tmp/vm-$1.raw args=() w out
  qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 32M
  qemu-img create -q -f raw "$ref" 32M
  for w in "${qemu_writes[@]}"; do args+=(-c "$w"); done
  if ! mount_image "$img" "$mnt" "$cache" "$mode"; then
    step "c) $mode: mount the qcow2 image" FAIL
    return
  fi
  if qemu-io -f qcow2 "${args[@]}" "$mnt" >/dev/null &&
    qemu-io -f qcow2 -t none -c "write -P 0x5a 8M 1M" "$mnt" >/dev/null &&
    qemu-io -f raw "${args[@]}" -c "write -P 0x5a 8M 1M" "$ref" >/dev/null; then
    step "c) $mode: qemu-io writes through the mount (cache=writeback and cache=none)" OK
  else
    step "c) $mode: qemu-io writes through the mount (cache=writeback and cache=none)" FAIL
  fi
  verify_qcow2 "$mode" "$mnt" "$ref" "the mount"
  if flush_and_unmount "$mnt" "$mode"; then
    verify_qcow2 "$mode" "$img" "$ref" "the slow qcow2 after unmount"
  else
    step "c) $mode: unmount" FAIL
  fi
  # Without preallocation a qcow2 grows with every new cluster: refused.
  local grow=$slow/grow-$1.qcow2 gmnt=$tmp/grow-$1.qcow2 before
  qemu-img create -q -f qcow2 "$grow" 32M
  before=$(stat -c %s "$grow")
  if ! mount_image "$grow" "$gmnt" "$tmp/cache-grow-$1" "$mode"; then
    step "c) $mode: mount a growing qcow2" FAIL
    return
  fi
  out=$(qemu-io -f qcow2 -c "write -P 0xab 0 1M" "$gmnt" 2>&1)
  local rc=$?
  if [[ $rc -ne 0 && $out == *"No space left on device"* ]] && flush_and_unmount "$gmnt" "$mode" &&
    [[ $(stat -c %s "$grow") -eq $before ]]; then
    step "c) $mode: a qcow2 without preallocation cannot grow: ENOSPC, size kept" OK
  else
    step "c) $mode: a qcow2 without preallocation cannot grow: ENOSPC, size kept" FAIL \
      "qemu-io status $rc: $out"
  fi
}

# verify_qcow2 MODE IMAGE REF WHAT
verify_qcow2() {
  local mode=$1 img=$2 ref=$3 what=$4 out
  if out=$(qemu-img check -f qcow2 "$img" 2>&1) && [[ $out == *"No errors were found"* ]] &&
    out=$(qemu-img compare -f qcow2 -F raw "$img" "$ref" 2>&1) &&
    out=$(qemu-io -r -f qcow2 -c "read -P 0xab 0 512k" -c "read -P 0x11 1M 512" \
      -c "read -P 0xcd 4M 64k" -c "read -P 0 2M 256k" -c "read -P 0x5a 8M 1M" "$img" 2>&1) &&
    [[ $out != *"failed"* ]]; then
    step "c) $mode: $what: qemu-img check, qemu-img compare with the raw reference, qemu-io read -P" OK
  else
    step "c) $mode: $what: qemu-img check, qemu-img compare with the raw reference, qemu-io read -P" \
      FAIL "$out"
  fi
}

c_qemu_readonly() {
  local img=$slow/vm-ro.qcow2 mnt=$tmp/vm-ro.qcow2 ref=$tmp/vm-ro.raw args=() w
  qemu-img create -q -f qcow2 -o preallocation=metadata "$img" 32M
  qemu-img create -q -f raw "$ref" 32M
  for w in "${qemu_writes[@]}"; do args+=(-c "$w"); done
  args+=(-c "write -P 0x5a 8M 1M")
  qemu-io -f qcow2 "${args[@]}" "$img" >/dev/null && qemu-io -f raw "${args[@]}" "$ref" >/dev/null
  if ! mount_image "$img" "$mnt" "$tmp/cache-vm-ro" readonly; then
    step "c) readonly: mount the qcow2 image" FAIL
    return
  fi
  verify_qcow2 readonly "$mnt" "$ref" "the mount"
  check "c) readonly: unmount" unmount_image "$mnt"
}

# --- d) PR_SET_IO_FLUSHER -------------------------------------------------------

# PF_MEMALLOC_NOIO | PF_LOCAL_THROTTLE in the task flags (/proc/PID/task/*/stat
# field 9) is what PR_SET_IO_FLUSHER sets.
io_flusher_on_every_thread() {
  local pid=$1 t flags n=0
  for t in /proc/"$pid"/task/*; do
    flags=$(awk '{print $9}' "$t/stat")
    (((flags & 0x180000) == 0x180000)) || fail "thread ${t##*/} of $pid: flags $flags" || return 1
    n=$((n + 1))
  done
  [[ $n -gt 1 ]] || fail "daemon $pid has only $n threads"
}

d_io_flusher() {
  local img=$slow/flusher.img mnt=$tmp/flusher.img log=$tmp/log/flusher.img
  truncate -s 8M "$img"
  local cap_eff
  cap_eff=$(awk '/^CapEff/ {print $2}' /proc/self/status)
  if (((0x$cap_eff >> 24) & 1)); then  # CAP_SYS_RESOURCE
    if mount_image "$img" "$mnt" "$tmp/cache-flusher" writethrough &&
      io_flusher_on_every_thread "$daemon_pid" && ! grep -q PR_SET_IO_FLUSHER "$log" &&
      unmount_image "$mnt"; then
      step "d) PR_SET_IO_FLUSHER set on every daemon thread" OK
    else
      step "d) PR_SET_IO_FLUSHER set on every daemon thread" FAIL
    fi
  else
    echo "$prog: (CAP_SYS_RESOURCE is not held here: only the fallback of d) is checked)"
  fi
  : >"$log"
  if mount_image "$img" "$mnt" "$tmp/cache-flusher" writethrough \
    setpriv --bounding-set=-sys_resource --inh-caps=-sys_resource &&
    [[ $(grep -c "cannot set PR_SET_IO_FLUSHER" "$log") -eq 1 ]] &&
    dd if=/dev/zero of="$mnt" bs=64k count=2 conv=notrunc status=none && unmount_image "$mnt"; then
    step "d) without CAP_SYS_RESOURCE: one log line, the mount works" OK
  else
    step "d) without CAP_SYS_RESOURCE: one log line, the mount works" FAIL "log: $(cat "$log")"
  fi
}

# --- f) mode=cow: discard and commit under a real guest ------------------------

f_cow() {
  local img=$slow/ext-cow.img mnt=$tmp/ext-cow.img cache=$tmp/cache-ext-cow
  mkfs.ext4 -q -F -d "$tmp/ref.d" "$img" 64M >/dev/null || {
    step "f) cow: mkfs.ext4 -d on the slow image" FAIL
    return
  }
  cp "$img" "$tmp/ext-cow.orig"
  if mount_image "$img" "$mnt" "$cache" cow && attach "$mnt" && mount "$dev" "$tmp/ext" &&
    rm -r "$tmp/ext/tree/a" && cp "$tmp/chunk" "$tmp/ext/tree/new" && umount "$tmp/ext" &&
    fsck_clean "$dev" && detach "$dev" && cmp -s "$img" "$tmp/ext-cow.orig"; then
    step "f) cow: the ext4 changed through loop, fsck clean, the slow image untouched" OK
  else
    step "f) cow: the ext4 changed through loop, fsck clean, the slow image untouched" FAIL
  fi
  if "$cachefsctl" discard "$mnt" >/dev/null && cmp -s "$mnt" "$tmp/ext-cow.orig" &&
    attach "$mnt" && fsck_clean "$dev" && compare_ext "$dev" ro,noload && detach "$dev"; then
    step "f) cow: cachefsctl discard: the mount shows the old ext4, the files compare equal" OK
  else
    step "f) cow: cachefsctl discard: the mount shows the old ext4, the files compare equal" FAIL
  fi
  if attach "$mnt" && mount "$dev" "$tmp/ext" && cp "$tmp/chunk" "$tmp/ext/tree/new" &&
    umount "$tmp/ext" && detach "$dev" && "$cachefsctl" commit "$mnt" >/dev/null &&
    cmp -s "$mnt" "$img" && unmount_image "$mnt" && attach "$img" -r && fsck_clean "$dev" &&
    mount -o ro,noload "$dev" "$tmp/ext" && cmp -s "$tmp/chunk" "$tmp/ext/tree/new" &&
    umount "$tmp/ext" && detach "$dev"; then
    step "f) cow: changed again, cachefsctl commit: the SLOW image is fsck clean and has it" OK
  else
    step "f) cow: changed again, cachefsctl commit: the SLOW image is fsck clean and has it" FAIL
  fi
}

# --- run -------------------------------------------------------------------------

head -c 8M /dev/urandom >"$tmp/chunk"
make_ref_tree
mkdir "$tmp/ref.d"
cp -a "$tmp/ref" "$tmp/ref.d/tree"

d_io_flusher
for mode in writethrough writeback writearound; do
  a_loop "$mode"
  b_dd "$mode"
  c_qemu "$mode"
done
a_loop_readonly
b_dd_readonly
c_qemu_readonly
f_cow
finish
