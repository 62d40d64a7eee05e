#!/bin/bash
# Soak run of the crash tests (tests/mount/crash_test.cc, suite CrashTest):
# many more kill -9 iterations than the default 50, through the cleanup
# wrapper, optionally several rounds with a new random seed each.
# Usage: tests/mount/crash_soak.sh BUILD_DIR [ITERATIONS [ROUNDS]]
#   ITERATIONS  kill -9 iterations of the writeback test (default 500; the
#               writethrough test runs a tenth of them)
#   ROUNDS      runs of the suite (default 1); stops at the first failure
# Environment: CACHEFS_CRASH_SEED=N repeats a seed's choices;
# CACHEFS_CRASH_KEEP=DIR keeps SOURCE, cache and daemon log of a failure.
# Prints the suite's own lines and one summary line; exits non-zero on failure.
set -u

prog=crash_soak
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-}
iterations=${2:-500}
rounds=${3:-1}
bin=$build/tests/mount_tests
if [[ -z $build || ! -x $bin ]]; then
  echo "$prog: usage: $0 BUILD_DIR [ITERATIONS [ROUNDS]] (no executable $bin)" >&2
  exit 1
fi
if ! [[ $iterations =~ ^[1-9][0-9]*$ && $rounds =~ ^[1-9][0-9]*$ ]]; then
  echo "$prog: ITERATIONS and ROUNDS must be positive integers" >&2
  exit 1
fi

log=$(mktemp "${TMPDIR:-/tmp}/cachefs-crash-soak.XXXXXX") || exit 1
trap 'rm -f "$log"' EXIT
start=$SECONDS
for ((round = 1; round <= rounds; round++)); do
  echo "$prog: round $round of $rounds, $iterations iterations"
  CACHEFS_CRASH_ITERATIONS=$iterations "$here/run_clean.sh" "$bin" --gtest_filter='CrashTest*' \
    2>&1 | tee "$log" | grep -v '^cachefs: '
  status=${PIPESTATUS[0]}
  if [[ $status -ne 0 ]]; then
    seeds=$(grep -o 'CrashTest [a-z]*: seed [0-9]*' "$log" | awk '{print $2 $4}' | paste -sd' ')
    echo "$prog: FAILED in round $round after $((SECONDS - start)) s (seeds: $seeds;" \
      "repeat with CACHEFS_CRASH_SEED=<seed> CACHEFS_CRASH_ITERATIONS=$iterations)"
    exit 1
  fi
done
echo "$prog: $rounds rounds of $iterations iterations passed in $((SECONDS - start)) s"
