#!/bin/bash
# Runs clang-tidy (.clang-tidy at the top) over the project's sources with the
# compile commands of build dir $1; any finding fails.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:?usage: tidy_check.sh BUILD_DIR}
command -v clang-tidy >/dev/null || { echo "tidy_check: clang-tidy is not installed" >&2; exit 1; }
cd "$top"
mapfile -t files < <(find common cache meta fs cmd bench -name '*.cc' 2>/dev/null | sort)
fail=0
for f in "${files[@]}"; do
  clang-tidy -p "$build" --quiet "$f" 2>/dev/null | grep -E "(error|warning):" && fail=1
done
[ $fail -eq 0 ] && echo "tidy_check: ${#files[@]} files clean" || { echo "tidy_check: findings above" >&2; exit 1; }
