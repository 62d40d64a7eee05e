#!/bin/bash
# Builds the cachefs Debian package from this tree with Debian's own tooling
# (debhelper, `dpkg-buildpackage -us -uc -b`) and puts cachefs_*.deb in
# OUTDIR (default: the current directory), with meson's list of installed
# files beside it (meson-install-log.txt; tests/pkg/deb_test.sh checks that
# the package holds each one).
#
#   bash packaging/build-deb.sh [OUTDIR]
#
# dpkg-buildpackage wants debian/ at the top of the source tree and writes
# its results into the tree's parent, so the build runs on a copy in a
# temporary directory (without .git and meson build directories), which is
# removed afterwards; the source tree is left as it was. The project's tests
# do not run in the package build (debian/rules). Needs the packages of
# Build-Depends in packaging/debian/control and dpkg-dev (packaging/setup.sh
# installs them all).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(mkdir -p "${1:-.}" && cd "${1:-.}" && pwd)
die() { echo "build-deb: $*" >&2; exit 1; }
command -v dpkg-buildpackage >/dev/null || die "dpkg-buildpackage is missing (apt-get install dpkg-dev)"

tmp=$(mktemp -d /tmp/cachefs-deb.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
src=$tmp/cachefs
mkdir "$src"
# Everything at the top of the tree but .git and build directories (any
# directory meson has set up, whatever its name).
for entry in "$here"/* "$here"/.[!.]*; do
  [ -e "$entry" ] || continue
  name=$(basename "$entry")
  [ "$name" = .git ] && continue
  [ -d "$entry/meson-private" ] && continue
  cp -a "$entry" "$src/"
done
rm -rf "$src/debian"
cp -a "$here/packaging/debian" "$src/debian"

echo "build-deb: building in $src (log: $out/build-deb.log)"
if ! (cd "$src" && dpkg-buildpackage -us -uc -b -Jauto) >"$out/build-deb.log" 2>&1; then
  tail -n 40 "$out/build-deb.log" >&2
  die "dpkg-buildpackage failed (full log: $out/build-deb.log)"
fi
shopt -s nullglob
debs=("$tmp"/cachefs_*.deb)
[ ${#debs[@]} -eq 1 ] || die "expected one cachefs_*.deb in $tmp, found ${#debs[@]}"
cp "${debs[0]}" "$out/"
logs=("$src"/obj-*/meson-logs/install-log.txt)
[ ${#logs[@]} -eq 1 ] || die "no meson install log in the package build"
cp "${logs[0]}" "$out/meson-install-log.txt"
echo "build-deb: $out/$(basename "${debs[0]}")"
