#!/bin/bash
# Fails when a C++ source of the project does not match .clang-format.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
command -v clang-format >/dev/null || { echo "format_check: clang-format is not installed" >&2; exit 1; }
mapfile -t files < <(cd "$top" && find common cache meta fs cmd tests bench -name '*.h' -o -name '*.cc' 2>/dev/null | sort)
[ ${#files[@]} -gt 0 ] || { echo "format_check: no sources found" >&2; exit 1; }
cd "$top"
if clang-format --dry-run -Werror "${files[@]}"; then
  echo "format_check: ${#files[@]} files formatted"
else
  echo "format_check: run clang-format -i on the files above" >&2
  exit 1
fi
