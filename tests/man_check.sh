#!/bin/bash
# Lints the man pages docs/man/cachefs.8 and docs/man/cachefsctl.8:
#  - groff renders each without a single warning (-ww), at the widths of a
#    narrow, an 80-column and a wide terminal;
#  - each has its required sections, a NAME line that whatis/apropos can
#    parse, and the project's version (argument 1) in its .TH line;
#  - cachefs.8 names every option and flag of cmd/cli.cc, and every option it
#    documents exists there; cachefsctl.8 names every command, flag and
#    tunable of cmd/cachefsctl.cc and cmd/control_protocol.cc, and its
#    synopsis lists no command that does not exist.
# Any finding fails. Needs groff (Debian package groff-base).
#
#   tests/man_check.sh VERSION
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
version=${1:?usage: man_check.sh VERSION}
command -v groff >/dev/null || {
  echo "man_check: groff is not installed (apt-get install groff-base)" >&2
  exit 1
}
cd "$top" || exit 1
fail=0
problem() {
  echo "man_check: $*" >&2
  fail=1
}

# The page's text with font, dash, quote and break escapes taken out, so that
# names can be searched for as they read.
plain() { sed -e 's/\\f[BIRP]//g' -e 's/\\-/-/g' -e 's/\\(dq/"/g' -e 's/\\[:&c%]//g' "$1"; }

# Fails unless page $1 mentions every name given after it as a whole word.
expect_names() {
  local page=$1 what=$2
  shift 2
  [ $# -gt 0 ] || problem "no $what found in the sources (did they move? fix this test)"
  local text
  text=$(plain "$page")
  local name
  for name in "$@"; do
    local re=${name//./\\.}
    grep -qE "(^|[^A-Za-z0-9_-])${re}([^A-Za-z0-9_-]|$)" <<<"$text" ||
      problem "$page does not mention $what '$name'"
  done
}

declare -A sections=(
  [docs/man/cachefs.8]="NAME|SYNOPSIS|DESCRIPTION|OPTIONS|MODES|FILES|EXIT STATUS|EXAMPLES|SEE ALSO"
  [docs/man/cachefsctl.8]="NAME|SYNOPSIS|DESCRIPTION|COMMANDS|OPTIONS|EXIT STATUS|FILES|EXAMPLES|SEE ALSO"
)

for page in docs/man/cachefs.8 docs/man/cachefsctl.8; do
  [ -f "$page" ] || {
    problem "$page is missing"
    continue
  }
  name=$(basename "$page" .8)
  for width in 60n 78n 100n; do
    out=$(groff -man -Tutf8 -ww -z -rLL="$width" "$page" 2>&1)
    rc=$?
    if [ $rc -ne 0 ] || [ -n "$out" ]; then
      problem "$page at line length $width (groff exit $rc):"
      printf '%s\n' "$out" >&2
    fi
  done
  lines=$(groff -man -Tutf8 -rLL=78n "$page" 2>/dev/null | grep -c '[a-z]')
  [ "$lines" -ge 40 ] || problem "$page renders to only $lines lines of text"
  IFS='|' read -r -a wanted <<<"${sections[$page]}"
  for s in "${wanted[@]}"; do
    grep -qxE "\.SH (\"$s\"|$s)" "$page" || problem "$page has no section $s"
  done
  grep -A1 -x '\.SH NAME' "$page" | tail -n 1 | grep -qE "^$name \\\\- [^ ].*[^ ]$" ||
    problem "$page: the line after .SH NAME is not '$name \\- description'"
  grep -qE "^\.TH [A-Z]+ 8 [0-9-]+ \"cachefs $version\" " "$page" ||
    problem "$page: .TH does not name cachefs $version"
done

# cachefs(8) and cmd/cli.cc.
mapfile -t options < <(grep -oE '^ *\{"[a-z_]+", "' cmd/cli.cc | grep -oE '[a-z_]+')
expect_names docs/man/cachefs.8 "option" "${options[@]}"
mapfile -t flags < <(grep -oE '(add_flag|set_version_flag|add_option)\("-[^"]*"' cmd/cli.cc |
  grep -oE '\-[-a-zA-Z]+')
expect_names docs/man/cachefs.8 "flag" "${flags[@]}" -h --help
mapfile -t mount_options < <(sed -n '/kIgnored = {/,/};/p; /kKernel = {/,/};/p' cmd/cli.cc |
  grep -oE '"[a-z_]+"' | tr -d '"')
expect_names docs/man/cachefs.8 "standard mount option" "${mount_options[@]}"
# Every NAME= that an option entry (.TP tag) of cachefs.8 documents exists.
mapfile -t documented < <(awk '/^\.SH OPTIONS/ { on = 1; next } /^\.SH/ { on = 0 }
  on && tag { print } { tag = on && /^\.TP/ }' docs/man/cachefs.8 |
  grep -oE '(^\.B[IR]? |" )[a-z_]+=' | grep -oE '[a-z_]+')
[ ${#documented[@]} -gt 0 ] || problem "no option entries found in docs/man/cachefs.8"
for o in "${documented[@]}"; do
  printf '%s\n' "${options[@]}" | grep -qx "$o" ||
    problem "docs/man/cachefs.8 documents '$o=', which cmd/cli.cc does not have"
done

# cachefsctl(8) and cmd/cachefsctl.cc, cmd/control_protocol.cc.
mapfile -t commands < <(sed -n '/kCommands = {/,/};/p' cmd/cachefsctl.cc | grep -oE '"[a-z_]+"' |
  tr -d '"')
expect_names docs/man/cachefsctl.8 "command" "${commands[@]}"
mapfile -t ctl_flags < <(grep -oE '(add_flag|add_option|set_version_flag)\(\s*"-[^"]*"' \
  cmd/cachefsctl.cc | grep -oE '\-[-a-zA-Z]+' | sort -u)
expect_names docs/man/cachefsctl.8 "flag" "${ctl_flags[@]}" -h --help
mapfile -t tunables < <(sed -n '/LiveOptionNames() {/,/return names;/p' cmd/control_protocol.cc |
  grep -oE '"[a-z_]+"' | tr -d '"')
expect_names docs/man/cachefsctl.8 "tunable" "${tunables[@]}"
# The synopsis lists only commands that exist (planned ones are not available).
mapfile -t listed < <(awk '/^\.SH SYNOPSIS/ { on = 1; next } /^\.SH/ { on = 0 } on' \
  docs/man/cachefsctl.8 | grep -oE '^\.B cachefsctl [a-z]+' | awk '{ print $3 }')
[ ${#listed[@]} -gt 0 ] || problem "no commands found in the synopsis of docs/man/cachefsctl.8"
for c in "${listed[@]}"; do
  printf '%s\n' "${commands[@]}" | grep -qx "$c" ||
    problem "docs/man/cachefsctl.8 lists command '$c', which cmd/cachefsctl.cc does not have"
done

if [ $fail -eq 0 ]; then
  echo "man_check: cachefs.8 and cachefsctl.8 clean (${#options[@]} options," \
    "${#commands[@]} commands, ${#tunables[@]} tunables)"
else
  exit 1
fi
