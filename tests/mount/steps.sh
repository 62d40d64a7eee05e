# shellcheck shell=bash disable=SC2154  # prog is the sourcing script's
# tests/mount/steps.sh: the step reporting of the shell mount tests. Sourced
# after `prog` is set: each check is one line "PROG: NAME: ok|FAILED (detail)",
# and `finish` prints "PROG: N passed, M failed" and exits non-zero if any failed.

passed=0
failed=0
step() {  # step NAME OK|FAIL [detail]
  if [[ $2 == OK ]]; then
    passed=$((passed + 1))
    echo "$prog: $1: ok${3:+ ($3)}"
  else
    failed=$((failed + 1))
    echo "$prog: $1: FAILED${3:+ ($3)}"
  fi
}
finish() {
  echo "$prog: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
  exit $?
}
