#!/bin/bash
# The Debian package, end to end, as root:
#  1. builds cachefs_*.deb from a copy of this tree (packaging/build-deb.sh:
#     debhelper, dpkg-buildpackage -us -uc -b) and says how long that took;
#  2. installs it with apt-get, checks its version and that it holds the
#     binaries, man pages, unit, docs and everything meson installs;
#  3. checks the installed unit and the example units with
#     `systemd-analyze verify`;
#  4. mounts a temporary SOURCE from a line of a temporary fstab
#     (mount -T FSTAB MOUNTPOINT, type fuse.cachefs; /etc/fstab is never
#     touched), reads a file through it, runs `cachefsctl stats`, unmounts;
#  5. purges the package and checks that none of its files is left.
# Whatever happens, the mount is taken down and the package purged (trap).
# It refuses to run, and fails, when a cachefs package it did not install is
# there already: it would replace and then purge somebody's installation.
#
#   tests/pkg/deb_test.sh VERSION      (VERSION: meson's project version)
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
version=${1:?usage: deb_test.sh VERSION}

say() { echo "deb_test: $*"; }
fail() {
  echo "deb_test: FAIL: $*" >&2
  exit 1
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs and purges the cachefs package)"
for tool in dpkg-buildpackage dh apt-get systemd-analyze mount fusermount3; do
  command -v "$tool" >/dev/null ||
    fail "$tool is missing: run 'bash packaging/setup.sh build' (it installs the test's packages)"
done
state=$(dpkg-query -W -f='${db:Status-Status}' cachefs 2>/dev/null)
if [ -n "$state" ] && [ "$state" != not-installed ]; then
  fail "a cachefs package is already on this machine (dpkg state: $state);" \
    "this test installs and purges its own, so it will not run beside it" \
    "(remove it with 'apt-get purge cachefs' first)"
fi

work=$(mktemp -d /tmp/cachefs-debtest.XXXXXX)
installed=0
daemon_pids() { pgrep -f -- "$work/mnt" 2>/dev/null; }
cleanup() {
  if grep -q " $work/mnt " /proc/mounts; then
    umount "$work/mnt" 2>/dev/null || fusermount3 -u -z "$work/mnt" 2>/dev/null ||
      umount -l "$work/mnt" 2>/dev/null
  fi
  local pids
  pids=$(daemon_pids)
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  if [ $installed -eq 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 purge -y -qq cachefs \
      >/dev/null 2>&1 || dpkg -P cachefs >/dev/null 2>&1
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# 1. Build.
start=$(date +%s)
bash "$top/packaging/build-deb.sh" "$work/out" || fail "the package build failed"
say "package build took $(($(date +%s) - start)) s"
deb=$(ls "$work"/out/cachefs_*.deb)
[ "$(dpkg-deb -f "$deb" Version)" = "$version" ] ||
  fail "package version $(dpkg-deb -f "$deb" Version) is not meson's $version" \
    "(update packaging/debian/changelog)"

# 2. Install and look at what is installed.
installed=1
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq \
  --no-install-recommends "$deb" >"$work/install.log" 2>&1 || {
  cat "$work/install.log" >&2
  fail "apt-get install $deb failed"
}
dpkg -L cachefs >"$work/files" || fail "dpkg -L cachefs failed after the install"
for f in /usr/sbin/cachefs /usr/sbin/cachefsctl /usr/share/man/man8/cachefs.8.gz \
  /usr/share/man/man8/cachefsctl.8.gz /lib/systemd/system/cachefs-flush@.service \
  /usr/share/doc/cachefs/systemd.md.gz /usr/share/doc/cachefs/copyright \
  /usr/share/doc/cachefs/examples/fstab /usr/share/doc/cachefs/examples/mnt-projects.mount \
  /usr/share/doc/cachefs/examples/cachefs-projects.service; do
  grep -qx "$f" "$work/files" || fail "the package does not list $f"
  [ -f "$f" ] || fail "$f is listed but not installed"
done
# Everything `meson install` installs is in the package (man pages compressed).
n=0
while read -r line; do
  case $line in "#"*) continue ;; esac
  path=/${line#*/debian/cachefs/}
  grep -qxF "$path" "$work/files" || grep -qxF "$path.gz" "$work/files" ||
    fail "meson installs $path, the package does not hold it"
  n=$((n + 1))
done <"$work/out/meson-install-log.txt"
[ $n -ge 5 ] || fail "meson's install log lists only $n paths"
out=$(/usr/sbin/cachefs --version 2>&1) || fail "cachefs --version: $out"
case $out in *"$version"*) ;; *) fail "cachefs --version says '$out', not $version" ;; esac
# The package's own files (directories such as /usr/sbin, or /lib, a link to
# usr/lib on a merged-/usr system, are shared and stay after the purge).
while read -r path; do
  [ -d "$path" ] || echo "$path"
done <"$work/files" >"$work/own"
say "installed: $(grep -c . "$work/own") files, $n paths from meson's install log"

# 3. The units. systemd-analyze verify works without systemd as PID 1 and also
# reports executables that are missing.
mkdir "$work/units"
ln -s /lib/systemd/system/cachefs-flush@.service "$work/units/cachefs-flush@mnt-projects.service"
cp /usr/share/doc/cachefs/examples/*.service /usr/share/doc/cachefs/examples/*.mount "$work/units/"
for unit in "$work"/units/*; do
  out=$(systemd-analyze verify --man=no "$unit" 2>&1)
  rc=$?
  [ $rc -eq 0 ] && [ -z "$out" ] || fail "systemd-analyze verify $(basename "$unit") (exit $rc): $out"
done
say "units verified: $(ls "$work/units" | tr '\n' ' ')"

# 4. Mount from a temporary fstab, as mount(8) and systemd do at boot.
mkdir "$work/src" "$work/mnt"
head -c 300000 /dev/urandom >"$work/src/data"
cat >"$work/fstab" <<EOF
# cachefs deb_test
$work/src  $work/mnt  fuse.cachefs  cache=$work/cache,cache_size=16M,_netdev,nofail,x-systemd.requires-mounts-for=/tmp  0 0
EOF
out=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin mount -T "$work/fstab" "$work/mnt" 2>&1) ||
  fail "mount -T $work/fstab $work/mnt: $out"
grep -q " $work/mnt fuse.cachefs " /proc/mounts || fail "no fuse.cachefs mount on $work/mnt"
pids=$(daemon_pids)
[ -n "$pids" ] || fail "no daemon serves $work/mnt"
for p in $pids; do
  exe=$(readlink "/proc/$p/exe")
  [ "$exe" = /usr/sbin/cachefs ] || fail "the daemon is $exe, not the package's /usr/sbin/cachefs"
done
cmp "$work/src/data" "$work/mnt/data" || fail "reading through the mount gave other bytes"
stats=$(/usr/sbin/cachefsctl stats --json "$work/mnt" 2>&1) || fail "cachefsctl stats: $stats"
misses=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["read_misses"])' \
  <<<"$stats" 2>/dev/null) || fail "cachefsctl stats --json printed no read_misses: $stats"
[ "$misses" -ge 1 ] 2>/dev/null || fail "read_misses is '$misses' after a read through the mount"
/usr/sbin/cachefsctl stats "$work/mnt" >/dev/null || fail "cachefsctl stats (table) failed"
umount "$work/mnt" || fail "umount $work/mnt failed"
deadline=$(($(date +%s) + 20))
while [ -n "$(daemon_pids)" ]; do
  [ "$(date +%s)" -lt $deadline ] || fail "the daemon did not exit within 20 s of the unmount"
  sleep 0.1
done
say "mounted from fstab, read 300000 bytes ($misses block misses), unmounted"

# 5. Purge: nothing of the package is left.
DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 purge -y -qq cachefs \
  >"$work/purge.log" 2>&1 || {
  cat "$work/purge.log" >&2
  fail "apt-get purge cachefs failed"
}
installed=0
state=$(dpkg-query -W -f='${db:Status-Status}' cachefs 2>/dev/null)
[ -z "$state" ] || [ "$state" = not-installed ] || fail "dpkg state after purge: $state"
while read -r path; do
  if [ -e "$path" ] || [ -L "$path" ]; then fail "$path is left after the purge"; fi
done <"$work/own"
[ ! -e /usr/sbin/cachefs ] && [ ! -e /usr/bin/cachefs ] || fail "a cachefs binary is left after the purge"
say "purged; no file of the package is left"
say "PASS"
