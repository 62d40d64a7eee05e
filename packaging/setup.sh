#!/bin/bash
# cachefs set-up for a Debian 12 machine, as root. Installs whatever is
# missing, builds, and then mounts or tests.
#
#   bash packaging/setup.sh mount SOURCE MOUNTPOINT [cachefs options...]
#   bash packaging/setup.sh test
#   bash packaging/setup.sh build          (install and build only)
#
# The build goes to ./build (BUILD_DIR overrides). Binaries: build/cmd/cachefs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$here/build}

# Everything the build, the daemon and the tests use, by Debian 12 package name.
packages=(
  g++ meson ninja-build pkg-config python3
  libfuse3-dev fuse3 librocksdb-dev libpmem2-dev libcli11-dev libgtest-dev libgmock-dev
  fio attr acl procps util-linux mount e2fsprogs qemu-utils clang-format clang-tidy groff-base
  debhelper dpkg-dev build-essential systemd
)

die() { echo "setup: $*" >&2; exit 1; }

install_missing() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing packages (${missing[*]}): run as root to install them"
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_all() {
  if [ ! -f "$build/build.ninja" ]; then
    meson setup "$build" "$here" >/dev/null
  fi
  ninja -C "$build"
}

# Prints "tests: N passed, N failed" from meson's JUnit log (gtest cases and
# script tests counted one by one).
summarize() {
  python3 - "$build/meson-logs/testlog.junit.xml" <<'PY'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print(f"tests: 0 passed, 1 failed (no test log: {e})"); sys.exit(0)
passed = failed = skipped = 0
for case in root.iter("testcase"):
    if case.find("failure") is not None or case.find("error") is not None:
        failed += 1
    elif case.find("skipped") is not None:
        skipped += 1
    else:
        passed += 1
line = f"tests: {passed} passed, {failed} failed"
print(line + (f", {skipped} skipped" if skipped else ""))
PY
}

cmd=${1:-}
case "$cmd" in
  build)
    install_missing
    build_all
    ;;
  mount)
    [ $# -ge 3 ] || die "usage: $0 mount SOURCE MOUNTPOINT [cachefs options...]"
    install_missing
    build_all
    shift
    exec "$build/cmd/cachefs" "$@"
    ;;
  test)
    install_missing
    build_all
    rc=0
    meson test -C "$build" --print-errorlogs --num-processes 1 || rc=$?
    summarize
    exit $rc
    ;;
  *)
    die "usage: $0 build | mount SOURCE MOUNTPOINT [options...] | test"
    ;;
esac
