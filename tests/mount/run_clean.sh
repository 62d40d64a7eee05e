#!/bin/bash
# Runs one mount-test binary in a private TMPDIR and, whatever happens to it,
# leaves no mount and no daemon behind: every FUSE mount under that TMPDIR is
# lazily unmounted and every cachefs started on it is killed.
set -u
tmp=$(mktemp -d /tmp/cachefs-test.XXXXXX)
chmod 755 "$tmp"
cleanup() {
  awk -v t="$tmp/" '$3 ~ /^fuse/ && index($2, t) == 1 {print $2}' /proc/mounts |
    while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
  pkill -KILL -f -- "$tmp/" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM
TMPDIR=$tmp "$@"
