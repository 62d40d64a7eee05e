#!/bin/bash
# mount(8) and fstab:
#   a) `mount -t fuse.cachefs SOURCE DIR -o ...` through fuse3's mount.fuse3
#      (which runs `cachefs SOURCE DIR -o OPTS` with the options it keeps and
#      adds: rw, dev, suid, allow_other, ...): mount returns with the mount up,
#      the options took effect, and umount leaves no daemon;
#   b) `mount -t cachefs SOURCE DIR -o ...` through our mount.cachefs helper,
#      for a directory and for an image file; its flags (-f -v -s -n), its
#      errors, and a bad option failing the mount with cachefs's own line;
#   c) fstab lines of both types with _netdev, noauto, nofail,
#      x-systemd.automount, allow_other, users and cachefs options, mounted with
#      `mount -T ALTERNATE_FSTAB DIR` (never /etc/fstab) and `mount -a -T`.
# Usage: tests/mount/mount_helper_test.sh CACHEFS CACHEFSCTL MOUNT.CACHEFS
# (the built files). Needs root.
#
# mount(8) looks for helpers only in /sbin and clears PATH for them, and
# mount.fuse3 then finds cachefs on the shell's default PATH. So the test
# runs in a private mount namespace where /usr/local/sbin (first on that
# PATH) shows the built cachefs, and /sbin/mount.cachefs is the built helper:
# bind-mounted over an installed one inside the namespace, or else a symlink
# in /sbin for the duration of the test, removed on exit. Every mount is
# unmounted on every path. Ends with "mount_helper_test: N passed, M failed".
set -u

prog=mount_helper_test
cachefs=${1:-}
cachefsctl=${2:-}
helper=${3:-}
if [[ -z $cachefs || ! -x $cachefs || -z $cachefsctl || ! -x $cachefsctl ||
  -z $helper || ! -x $helper ]]; then
  echo "$prog: usage: $0 /path/to/cachefs /path/to/cachefsctl /path/to/mount.cachefs" >&2
  exit 1
fi
for tool in mount umount unshare fusermount3 mount.fuse3 readlink; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$prog: '$tool' is not installed (packaging/setup.sh installs it); FAILED" >&2
    exit 1
  fi
done
if [[ $(id -u) -ne 0 ]]; then
  echo "$prog: must run as root (mount(8) helpers, a mount namespace); FAILED" >&2
  exit 1
fi
cachefs=$(readlink -f "$cachefs")
cachefsctl=$(readlink -f "$cachefsctl")
helper=$(readlink -f "$helper")

if [[ ${CACHEFS_HELPER_TEST_NS:-} != 1 ]]; then
  CACHEFS_HELPER_TEST_NS=1 exec unshare --mount --propagation private -- "$0" "$cachefs" \
    "$cachefsctl" "$helper"
  echo "$prog: unshare --mount failed; FAILED" >&2
  exit 1
fi

tmp=$(mktemp -d /tmp/cachefs-helper.XXXXXX) || exit 1
chmod 755 "$tmp"
sbin_helper=/sbin/mount.cachefs
made_link=0   # we created the /sbin/mount.cachefs symlink
binds=()      # our bind mounts inside the namespace

cleanup() {
  awk -v t="$tmp/" '$3 ~ /^fuse/ && index($2, t) == 1 {print $2}' /proc/mounts |
    while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  local lock p
  for lock in "$tmp"/cache-*/lock; do
    [[ -f $lock ]] || continue
    p=$(cat "$lock" 2>/dev/null)
    [[ $p =~ ^[0-9]+$ ]] || continue
    [[ $(readlink -f "/proc/$p/exe" 2>/dev/null) == "$cachefs" ]] || continue
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [[ $made_link -eq 1 && -L $sbin_helper && $(readlink "$sbin_helper") == "$helper" ]]; then
    rm -f "$sbin_helper"
  fi
  local b
  for b in "${binds[@]}"; do umount -l "$b" 2>/dev/null; done
  # Nothing is mounted below $tmp any more; --one-file-system all the same.
  rm -rf --one-file-system "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# shellcheck source=tests/mount/steps.sh
source "$(dirname "${BASH_SOURCE[0]}")/steps.sh"
fail() {  # fail MESSAGE: to stderr, returns 1
  echo "$prog: $*" >&2
  return 1
}

# --- the namespace's /usr/local/sbin and /sbin/mount.cachefs ----------------

mkdir "$tmp/localsbin"
ln -s "$cachefs" "$tmp/localsbin/cachefs"
if ! mount --bind "$tmp/localsbin" /usr/local/sbin; then
  echo "$prog: cannot bind $tmp/localsbin on /usr/local/sbin in the namespace; FAILED" >&2
  exit 1
fi
binds+=(/usr/local/sbin)
if [[ -L $sbin_helper && $(readlink "$sbin_helper") == "$helper" ]]; then
  made_link=1  # left by an interrupted run of this test: ours to remove
elif [[ -e $sbin_helper ]]; then
  # An installed helper: ours over it, in this namespace only; and the
  # installed cachefs next to it is replaced too, since the helper runs that.
  mount --bind "$helper" "$sbin_helper" || {
    echo "$prog: cannot bind $helper over $sbin_helper; FAILED" >&2
    exit 1
  }
  binds+=("$sbin_helper")
  if [[ -e /sbin/cachefs ]]; then
    mount --bind "$cachefs" /sbin/cachefs && binds+=(/sbin/cachefs)
  fi
elif [[ -L $sbin_helper ]]; then
  echo "$prog: $sbin_helper is a dangling symlink to $(readlink "$sbin_helper"); remove it; FAILED" >&2
  exit 1
else
  ln -s "$helper" "$sbin_helper" || {
    echo "$prog: cannot create $sbin_helper; FAILED" >&2
    exit 1
  }
  made_link=1
fi

# --- helpers -------------------------------------------------------------------

# mount_line DIR: the /proc/mounts line of DIR (empty when not mounted).
mount_line() { awk -v m="$1" '$2 == m' /proc/mounts; }

# daemon_gone CACHE PID: the daemon of that cache exits within 10 s.
daemon_gone() {
  local pid=$2
  for _ in $(seq 200); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.05
  done
  fail "the daemon $pid of $1 still runs 10 s after umount"
}

# daemon_of CACHE: the pid in the cache's lock file.
daemon_of() { cat "$1/lock" 2>/dev/null; }

# served DIR SRC: the mount shows SOURCE's files and writes reach SOURCE
# (directory mode), or shows the image's bytes (image mode).
served() {
  local mnt=$1 src=$2
  if [[ -d $src ]]; then
    [[ $(cat "$mnt/hello" 2>/dev/null) == "hello from $src" ]] ||
      fail "$mnt does not show $src/hello" || return 1
  else
    cmp "$mnt" "$src" >&2 || fail "$mnt does not show the bytes of $src" || return 1
  fi
}

# mode_is DIR MODE: cachefsctl reports that mode for the mount.
mode_is() {
  local out
  out=$("$cachefsctl" stats "$1" 2>&1) || fail "cachefsctl stats $1: $out" || return 1
  [[ $out == *"mode $2,"* ]] || fail "cachefsctl stats $1 does not say mode $2: $out"
}

# get_is DIR KEY VALUE: a live tunable as cachefsctl get reports it.
get_is() {
  local out
  out=$("$cachefsctl" get "$2" "$1" 2>&1)
  [[ $out == "$2 $3" ]] || fail "cachefsctl get $2 $1 says '$out', expected '$2 $3'"
}

# has_opt DIR OPT: the kernel's mount options of DIR include OPT.
has_opt() {
  local opts
  opts=$(mount_line "$1" | awk '{print $4}')
  [[ ,$opts, == *",$2,"* ]] || fail "$1 is mounted with '$opts', without $2"
}

# unmount_clean DIR CACHE PID: umount(8) works and the daemon exits.
unmount_clean() {
  umount "$1" || fail "umount $1 failed" || return 1
  [[ -z $(mount_line "$1") ]] || fail "$1 is still mounted after umount" || return 1
  daemon_gone "$2" "$3"
}

make_source() {  # make_source NAME: a directory SOURCE with one file
  mkdir -p "$tmp/$1" "$tmp/mnt-$1"
  echo "hello from $tmp/$1" >"$tmp/$1/hello"
}

make_image() {  # make_image NAME: an image SOURCE and its mountpoint file
  head -c 4M /dev/urandom >"$tmp/$1.img"
  : >"$tmp/mnt-$1.img"
}

common=cache_size=32M

# --- a) mount -t fuse.cachefs ------------------------------------------------

make_source a
out=$(mount -t fuse.cachefs "$tmp/a" "$tmp/mnt-a" \
  -o "cache=$tmp/cache-a,$common,mode=writeback,attr_timeout=3,allow_other" 2>&1)
rc=$?
line=$(mount_line "$tmp/mnt-a")
pid=$(daemon_of "$tmp/cache-a")
if [[ $rc -eq 0 && $line == *" fuse.cachefs "* ]] && served "$tmp/mnt-a" "$tmp/a" &&
  mode_is "$tmp/mnt-a" writeback && get_is "$tmp/mnt-a" attr_timeout 3 &&
  has_opt "$tmp/mnt-a" allow_other; then
  step "a) mount -t fuse.cachefs (mount.fuse3): mounted, serves SOURCE, mode/attr_timeout/allow_other in effect" OK
else
  step "a) mount -t fuse.cachefs (mount.fuse3): mounted, serves SOURCE, mode/attr_timeout/allow_other in effect" \
    FAIL "mount status $rc: $out"
fi
if [[ -n $pid ]] && unmount_clean "$tmp/mnt-a" "$tmp/cache-a" "$pid"; then
  step "a) umount: unmounted, no daemon left" OK
else
  step "a) umount: unmounted, no daemon left" FAIL
fi

# mount.fuse3 adds dev,suid; "ro" and kernel flags pass through.
out=$(mount -t fuse.cachefs "$tmp/a" "$tmp/mnt-a" -o "cache=$tmp/cache-a,ro,noexec,noatime" 2>&1)
rc=$?
pid=$(daemon_of "$tmp/cache-a")
if [[ $rc -eq 0 ]] && has_opt "$tmp/mnt-a" ro && has_opt "$tmp/mnt-a" noexec &&
  has_opt "$tmp/mnt-a" noatime && served "$tmp/mnt-a" "$tmp/a" &&
  ! (echo x >"$tmp/mnt-a/new") 2>/dev/null && mode_is "$tmp/mnt-a" writeback &&
  unmount_clean "$tmp/mnt-a" "$tmp/cache-a" "$pid"; then
  step "a) mount -t fuse.cachefs -o ro,noexec,noatime (+ dev,suid from mount.fuse3), mode kept by the cache" OK
else
  step "a) mount -t fuse.cachefs -o ro,noexec,noatime (+ dev,suid from mount.fuse3), mode kept by the cache" \
    FAIL "mount status $rc: $out"
fi

# --- b) mount -t cachefs (mount.cachefs) ---------------------------------------

make_source b
out=$(mount -t cachefs "$tmp/b" "$tmp/mnt-b" -o "cache=$tmp/cache-b,$common,mode=writearound" 2>&1)
rc=$?
pid=$(daemon_of "$tmp/cache-b")
if [[ $rc -eq 0 && $(mount_line "$tmp/mnt-b") == *" fuse.cachefs "* ]] &&
  served "$tmp/mnt-b" "$tmp/b" && mode_is "$tmp/mnt-b" writearound &&
  echo written >"$tmp/mnt-b/new" && [[ $(cat "$tmp/b/new") == written ]] &&
  unmount_clean "$tmp/mnt-b" "$tmp/cache-b" "$pid"; then
  step "b) mount -t cachefs (mount.cachefs), directory: serves SOURCE, mode in effect, umount leaves no daemon" OK
else
  step "b) mount -t cachefs (mount.cachefs), directory: serves SOURCE, mode in effect, umount leaves no daemon" \
    FAIL "mount status $rc: $out"
fi

make_image img
out=$(mount -t cachefs "$tmp/img.img" "$tmp/mnt-img.img" \
  -o "cache=$tmp/cache-img,$common,mode=writeback" 2>&1)
rc=$?
pid=$(daemon_of "$tmp/cache-img")
if [[ $rc -eq 0 ]] && served "$tmp/mnt-img.img" "$tmp/img.img" &&
  mode_is "$tmp/mnt-img.img" writeback &&
  printf 'patched' | dd of="$tmp/mnt-img.img" bs=1 seek=4096 conv=notrunc status=none &&
  "$cachefsctl" flush --wait "$tmp/mnt-img.img" >/dev/null &&
  [[ $(dd if="$tmp/img.img" bs=1 skip=4096 count=7 status=none) == patched ]] &&
  unmount_clean "$tmp/mnt-img.img" "$tmp/cache-img" "$pid"; then
  step "b) mount -t cachefs, image file: serves it, writeback reaches the slow image, umount leaves no daemon" OK
else
  step "b) mount -t cachefs, image file: serves it, writeback reaches the slow image, umount leaves no daemon" \
    FAIL "mount status $rc: $out"
fi

# -f (fake) with -v: says what it would run, mounts nothing.
out=$(mount -f -v -t cachefs "$tmp/b" "$tmp/mnt-b" -o "cache=$tmp/cache-b" 2>&1)
rc=$?
out2=$("$sbin_helper" "$tmp/b" "$tmp/mnt-b" -sfnv -o "cache=$tmp/cache-b" -o ro 2>&1)
rc2=$?
if [[ $rc -eq 0 && $rc2 -eq 0 && -z $(mount_line "$tmp/mnt-b") &&
  $out2 == *"/cachefs $tmp/b $tmp/mnt-b -o cache=$tmp/cache-b,ro" ]]; then
  step "b) mount -f -v and mount.cachefs -sfnv: nothing mounted, the command shown" OK
else
  step "b) mount -f -v and mount.cachefs -sfnv: nothing mounted, the command shown" FAIL \
    "status $rc/$rc2: $out / $out2"
fi

# Errors: a bad option fails mount(8) with cachefs's line; bad helper usage.
out=$(mount -t cachefs "$tmp/b" "$tmp/mnt-b" -o "cache=$tmp/cache-b,bogus_option" 2>&1)
rc=$?
if [[ $rc -ne 0 && $out == *"unknown option 'bogus_option'"* && -z $(mount_line "$tmp/mnt-b") ]]; then
  step "b) a bad option: mount fails with cachefs's one line, nothing mounted" OK
else
  step "b) a bad option: mount fails with cachefs's one line, nothing mounted" FAIL "status $rc: $out"
fi
out=$(mount -t cachefs "$tmp/missing" "$tmp/mnt-b" -o "cache=$tmp/cache-b" 2>&1)
rc=$?
if [[ $rc -ne 0 && $out == *"$tmp/missing"* && -z $(mount_line "$tmp/mnt-b") ]]; then
  step "b) a missing SOURCE: mount fails naming it, nothing mounted" OK
else
  step "b) a missing SOURCE: mount fails naming it, nothing mounted" FAIL "status $rc: $out"
fi
bad=0
"$sbin_helper" "$tmp/b" >/dev/null 2>&1 && bad=1
"$sbin_helper" "$tmp/b" "$tmp/mnt-b" -x >/dev/null 2>&1 && bad=1
"$sbin_helper" "$tmp/b" "$tmp/mnt-b" -N 1 >/dev/null 2>&1 && bad=1
"$sbin_helper" "$tmp/b" "$tmp/mnt-b" -t ext4 >/dev/null 2>&1 && bad=1
"$sbin_helper" "$tmp/b" "$tmp/mnt-b" extra >/dev/null 2>&1 && bad=1
if [[ $bad -eq 0 && -z $(mount_line "$tmp/mnt-b") ]]; then
  step "b) mount.cachefs refuses bad usage (missing DIR, -x, -N, -t ext4, extra argument)" OK
else
  step "b) mount.cachefs refuses bad usage (missing DIR, -x, -N, -t ext4, extra argument)" FAIL
fi

# --- c) fstab ----------------------------------------------------------------------

make_source c1
make_source c2
make_source c3
make_image c4
fstab=$tmp/fstab
{
  echo "# cachefs test fstab (mount -T); never /etc/fstab"
  echo "$tmp/c1 $tmp/mnt-c1 fuse.cachefs cache=$tmp/cache-c1,$common,mode=writeback,_netdev,nofail,noauto,allow_other,x-systemd.automount 0 0"
  echo "$tmp/c2 $tmp/mnt-c2 cachefs cache=$tmp/cache-c2,$common,mode=writethrough,attr_timeout=5,_netdev,nofail,noauto,users,x-systemd.automount,x-systemd.idle-timeout=60 0 0"
  echo "$tmp/c3 $tmp/mnt-c3 cachefs cache=$tmp/cache-c3,$common,mode=writeback,readahead=0,_netdev,nofail 0 0"
  echo "$tmp/c4.img $tmp/mnt-c4.img cachefs cache=$tmp/cache-c4,$common,mode=writeback,_netdev,noauto 0 0"
} >"$fstab"

# fstab_case NAME DIR CACHE MODE SOURCE [check...]: mount -T fstab DIR, then the
# checks, then umount.
fstab_case() {
  local name=$1 mnt=$2 cache=$3 mode=$4 src=$5
  shift 5
  local out rc pid ok=1
  out=$(mount -T "$fstab" "$mnt" 2>&1)
  rc=$?
  pid=$(daemon_of "$cache")
  if [[ $rc -ne 0 ]]; then
    fail "mount -T $fstab $mnt: status $rc: $out"
    ok=0
  fi
  [[ $ok -eq 1 ]] && { served "$mnt" "$src" && mode_is "$mnt" "$mode" || ok=0; }
  local c
  for c in "$@"; do
    [[ $ok -eq 1 ]] || break
    eval "$c" || ok=0
  done
  if [[ -n $pid ]]; then unmount_clean "$mnt" "$cache" "$pid" || ok=0; else ok=0; fi
  if [[ $ok -eq 1 ]]; then step "c) $name" OK; else step "c) $name" FAIL; fi
}

# The checks are evaluated by fstab_case: single quotes on purpose.
# shellcheck disable=SC2016
fstab_case "fstab fuse.cachefs with _netdev,nofail,noauto,allow_other,x-systemd.automount" \
  "$tmp/mnt-c1" "$tmp/cache-c1" writeback "$tmp/c1" 'has_opt "$tmp/mnt-c1" allow_other'
# shellcheck disable=SC2016
fstab_case "fstab cachefs with users,attr_timeout=5,x-systemd.*: nosuid,nodev,noexec, attr_timeout 5" \
  "$tmp/mnt-c2" "$tmp/cache-c2" writethrough "$tmp/c2" 'get_is "$tmp/mnt-c2" attr_timeout 5' \
  'has_opt "$tmp/mnt-c2" nosuid' 'has_opt "$tmp/mnt-c2" nodev' 'has_opt "$tmp/mnt-c2" noexec'
fstab_case "fstab cachefs image file, mode=writeback" \
  "$tmp/mnt-c4.img" "$tmp/cache-c4" writeback "$tmp/c4.img"

# mount -a -T: only the line without noauto.
out=$(mount -a -T "$fstab" 2>&1)
rc=$?
pid=$(daemon_of "$tmp/cache-c3")
if [[ $rc -eq 0 && -n $(mount_line "$tmp/mnt-c3") && -z $(mount_line "$tmp/mnt-c1") &&
  -z $(mount_line "$tmp/mnt-c2") && -z $(mount_line "$tmp/mnt-c4.img") ]] &&
  served "$tmp/mnt-c3" "$tmp/c3" && get_is "$tmp/mnt-c3" readahead 0 &&
  unmount_clean "$tmp/mnt-c3" "$tmp/cache-c3" "$pid"; then
  step "c) mount -a -T: mounts the line without noauto only, readahead=0 in effect" OK
else
  step "c) mount -a -T: mounts the line without noauto only, readahead=0 in effect" FAIL \
    "status $rc: $out"
fi

if [[ -z $(awk -v t="$tmp/" '$3 ~ /^fuse/ && index($2, t) == 1' /proc/mounts) ]]; then
  step "no mount left" OK
else
  step "no mount left" FAIL
fi
finish
