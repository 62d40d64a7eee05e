# shellcheck shell=bash
# bench/lib.sh: helpers shared by the benchmark scripts. Sourced, not run:
#
#   bench_name=my_bench            # prefix of error messages
#   source "$script_dir/lib.sh"
#
# It gives: messages (die, log), checks of prerequisites and of the test
# directory, a registry of the mounts and processes a script makes, with an
# EXIT trap that unmounts and ends all of them and removes the work directory
# on any exit path, page-cache dropping, fio runs, medians and ratios, the
# build of libfuse's passthrough_ll, and the lines that describe the machine.
# Everything here is bash; the caller sets `set -u -o pipefail` as it likes.

bench_name=${bench_name:-$(basename "$0" .sh)}
bench_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bench_repo_dir=$(cd "$bench_lib_dir/.." && pwd)

die() {
  echo "$bench_name: $*" >&2
  exit 1
}

log() { echo "[$(date +%T)] $*" >&2; }

# The options several benchmarks share, as --NAME VALUE or --NAME=VALUE:
#   bench_shared_option "out dir cachefs" "$@" && { shift "$bench_shift"; continue; }
# in the caller's argument loop. The first argument lists the names this
# script takes, of: out (out), dir (base_dir), cachefs (cachefs_bin),
# cachefsctl (cachefsctl_bin), slowfs (slowfs_bin). Sets the variable and
# bench_shift (the arguments used); returns 1 when $2 is none of them.
# shellcheck disable=SC2034  # the variables are the calling script's
bench_shared_option() {
  local names=" $1 " arg=$2 name value
  shift
  case "$arg" in
    --*=*) name=${arg%%=*}; value=${arg#*=}; bench_shift=1 ;;
    --*) name=$arg; value=${2-}; bench_shift=2 ;;
    *) return 1 ;;
  esac
  name=${name#--}
  [[ $names == *" $name "* ]] || return 1
  [[ -n $value ]] || die "--$name needs a value"
  case "$name" in
    out) out=$value ;;
    dir) base_dir=$value ;;
    cachefs) cachefs_bin=$value ;;
    cachefsctl) cachefsctl_bin=$value ;;
    slowfs) slowfs_bin=$value ;;
    *) return 1 ;;
  esac
}

# --- prerequisites -------------------------------------------------------------

# Checks root, /dev/fuse, drop_caches, fio, gcc, pkg-config, fusermount3, the
# fuse3 development files and the passthrough_ll example, plus each extra
# "COMMAND|HOW TO GET IT" argument; names everything missing at once.
# shellcheck disable=SC2120  # the extra arguments are optional
bench_check_prerequisites() {
  [ "$(id -u)" -eq 0 ] || die "run as root: every run starts by dropping the page cache" \
    "(echo 3 > /proc/sys/vm/drop_caches)"
  local missing=() extra
  command -v fio >/dev/null || missing+=("fio (apt-get install fio)")
  command -v gcc >/dev/null || missing+=("gcc (apt-get install gcc)")
  command -v pkg-config >/dev/null || missing+=("pkg-config (apt-get install pkg-config)")
  command -v fusermount3 >/dev/null || missing+=("fusermount3 (apt-get install fuse3)")
  if command -v pkg-config >/dev/null && ! pkg-config --exists fuse3; then
    missing+=("the fuse3 development files (apt-get install libfuse3-dev)")
  fi
  if [ ! -f "$bench_ptll_src_dir/passthrough_ll.c" ] &&
    [ ! -f "$bench_ptll_src_dir/passthrough_ll.c.gz" ]; then
    missing+=("$bench_ptll_src_dir/passthrough_ll.c (apt-get install libfuse3-dev)")
  fi
  for extra in "$@"; do
    command -v "${extra%%|*}" >/dev/null || missing+=("${extra%%|*} (${extra#*|})")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "$bench_name: missing prerequisites; install them first:" >&2
    local m
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    echo "(the project's setup script installs fio)" >&2
    exit 1
  fi
  [ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches (in a container?)"
  [ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"
}

# Prints the absolute path of the binary `given` or, when empty, of the
# first build*/REL of this tree (build/ first); dies naming WHAT otherwise.
bench_find_binary() {
  local given=$1 rel=$2 what=$3 c
  if [ -z "$given" ]; then
    for c in "$bench_repo_dir/build/$rel" "$bench_repo_dir"/build*/"$rel"; do
      if [ -x "$c" ]; then given=$c; break; fi
    done
  fi
  { [ -n "$given" ] && [ -x "$given" ]; } ||
    die "no $what binary found; build it (meson setup build && ninja -C build) or pass its path"
  echo "$(cd "$(dirname "$given")" && pwd)/$(basename "$given")"
}

# Warns when a source file the binaries are built from is newer than BINARY:
# the figures would be reported against a commit the binary does not hold.
# Sets bench_stale to "yes" or "".
bench_check_fresh() {
  local newer
  newer=$(cd "$bench_repo_dir" && find cache cmd common fs meta bench/slowfs.cc \
    \( -name '*.cc' -o -name '*.h' -o -name meson.build \) -newer "$1" -print -quit 2>/dev/null)
  bench_stale=""
  if [ -n "$newer" ]; then
    bench_stale=yes
    log "warning: $newer is newer than $1; rebuild, or the report names the wrong commit"
  fi
}

# Dies unless DIR is a directory on a local disk filesystem; sets
# bench_fstype.
bench_check_dir() {
  [ -d "$1" ] || die "--dir '$1' is not a directory"
  bench_fstype=$(findmnt -n -o FSTYPE --target "$1" 2>/dev/null || stat -f -c %T "$1")
  case "$bench_fstype" in
    tmpfs | ramfs | fuse* | nfs* | cifs | smb*)
      die "'$1' is on $bench_fstype; pass --dir on a local disk filesystem" ;;
  esac
}

# --- mounts, processes and cleanup ---------------------------------------------

bench_work=""    # the work directory, removed at exit when nothing is mounted in it
bench_mounts=()  # mount points made, unmounted at exit (last first)
bench_pids=()    # processes started, ended at exit

is_mounted() {
  awk -v m="$1" '$2 == m {found = 1} END {exit !found}' /proc/mounts
}

# Whether anything is mounted at or below DIR.
bench_mounted_below() {
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 {found = 1} END {exit !found}' /proc/mounts
}

# Makes the work directory under BASE and sets bench_work.
bench_make_work() {
  bench_work=$(mktemp -d "$1/cachefs-bench.XXXXXX") || die "cannot create a directory in $1"
}

# Only a process this shell started and that is still its child is ever
# signalled: a recycled pid belongs to someone else.
bench_is_child() {
  [ "$(ps -o ppid= -p "$1" 2>/dev/null | tr -d ' ')" = "$$" ]
}

# Waits up to SEC seconds for child PID to exit; false if it is still there.
bench_wait_exit() {
  local pid=$1 deadline=$((SECONDS + $2))
  while bench_is_child "$pid"; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.1
  done
  wait "$pid" 2>/dev/null
  return 0
}

# Ends child PID: SIGTERM, then SIGKILL after 5 s.
bench_kill() {
  local pid=$1
  bench_is_child "$pid" || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  bench_wait_exit "$pid" 5 && return 0
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
}

# Lazily unmounts MNT if it is mounted (a busy or hung mount is detached
# at once and goes when its last user does).
bench_unmount() {
  if is_mounted "$1"; then
    fusermount3 -u -z "$1" 2>/dev/null || umount -l "$1" 2>/dev/null
  fi
}

# Unmounts MNT and waits up to SEC seconds (default 60) for its daemon PID
# to finish its own shutdown (cachefs persists its cache on the way out);
# then makes sure it is gone.
bench_stop_mount() {
  local mnt=$1 pid=$2 sec=${3:-60}
  bench_unmount "$mnt"
  bench_wait_exit "$pid" "$sec" || log "warning: $pid did not exit $sec s after unmounting $mnt"
  bench_kill "$pid"
}

# Starts a FUSE daemon in the background: bench_start_mount NAME MNT LOG
# CMD...; it must stay in the foreground. Registers both, waits until MNT is
# mounted (dies if the daemon exits first or after 20 s) and sets
# bench_last_pid.
bench_start_mount() {
  local name=$1 mnt=$2 logfile=$3
  shift 3
  "$@" >"$logfile" 2>&1 &
  bench_last_pid=$!
  bench_pids+=("$bench_last_pid")
  bench_mounts+=("$mnt")
  local deadline=$((SECONDS + 20))
  while ! is_mounted "$mnt"; do
    if ! kill -0 "$bench_last_pid" 2>/dev/null; then
      cat "$logfile" >&2
      die "$name exited before mounting $mnt (its log is above)"
    fi
    [ $SECONDS -lt $deadline ] || die "$name did not mount $mnt within 20 s"
    sleep 0.05
  done
}

bench_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local i
  for ((i = ${#bench_mounts[@]} - 1; i >= 0; i--)); do bench_unmount "${bench_mounts[$i]}"; done
  for i in "${bench_pids[@]}"; do bench_kill "$i"; done
  if [ -n "$bench_work" ] && [ -d "$bench_work" ]; then
    # Only once nothing is mounted in it may the tree go.
    if bench_mounted_below "$bench_work"; then
      echo "$bench_name: a mount under $bench_work is still there; not removing it" >&2
    else
      rm -rf "$bench_work"
    fi
  fi
  exit "$rc"
}

# Installs the traps: cleanup on every exit, Ctrl-C and SIGTERM included.
bench_install_traps() {
  trap bench_cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# --- measuring -------------------------------------------------------------------

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# Runs fio with ARGS (a terse v3 report is asked for) in the background, so
# that a signal ends the script at once and the cleanup ends fio; sets
# bench_fio_line to its terse line. False (its stderr shown) if fio failed.
bench_fio() {
  fio "$@" --output-format=terse --terse-version=3 >"$bench_work/fio.out" 2>"$bench_work/fio.err" &
  local pid=$!
  bench_pids+=("$pid")
  wait "$pid"
  local rc=$?
  unset 'bench_pids[-1]'
  bench_fio_line=$(tail -n 1 "$bench_work/fio.out")
  [ $rc -eq 0 ] || { cat "$bench_work/fio.err" >&2; return 1; }
}

# Fields of bench_fio_line: "BW_KiB IOPS" of the reads (7, 8) or writes (48, 49).
fio_read_result() { awk -F';' '{print $7, $8}' <<<"$bench_fio_line"; }
fio_write_result() { awk -F';' '{print $48, $49}' <<<"$bench_fio_line"; }

# Lays out a test file of SIZE (fio syntax) at PATH with non-zero data, fsynced.
bench_layout_file() {
  fio --name=layout --filename="$1" --size="$2" --rw=write --bs=1M \
    --ioengine=psync --end_fsync=1 --output-format=terse >/dev/null ||
    die "fio could not lay out the test file $1"
  sync
}

# Median of the numbers on stdin (separated by blanks or newlines).
median() {
  tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1}
    END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2];
         else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

mib() { awk -v v="$1" 'BEGIN{printf "%.1f", v / 1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }

# The kernel's readahead window of a FUSE mount (max_readahead of the
# daemon's INIT reply), in KiB.
read_ahead_kb() {
  local devno
  devno=$(mountpoint -d "$1" 2>/dev/null) && cat "/sys/class/bdi/$devno/read_ahead_kb" 2>/dev/null ||
    echo "?"
}

# --- passthrough_ll ------------------------------------------------------------------

bench_ptll_src_dir=/usr/share/doc/libfuse3-dev/examples

# Builds libfuse's example passthrough_ll from the libfuse3-dev package into
# DIR/passthrough_ll (never into the tree).
bench_build_passthrough_ll() {
  local dir=$1
  log "building passthrough_ll from $bench_ptll_src_dir"
  if [ -f "$bench_ptll_src_dir/passthrough_ll.c" ]; then
    cp "$bench_ptll_src_dir/passthrough_ll.c" "$dir/"
  else
    zcat "$bench_ptll_src_dir/passthrough_ll.c.gz" >"$dir/passthrough_ll.c"
  fi
  [ -f "$bench_ptll_src_dir/passthrough_helpers.h" ] && cp "$bench_ptll_src_dir/passthrough_helpers.h" "$dir/"
  # shellcheck disable=SC2046  # pkg-config's output is meant to be split
  (cd "$dir" && gcc -Wall passthrough_ll.c $(pkg-config --cflags --libs fuse3) \
    -o "$dir/passthrough_ll") >"$dir/gcc.log" 2>&1 ||
    { cat "$dir/gcc.log" >&2; die "cannot build passthrough_ll"; }
}

# --- the report ----------------------------------------------------------------------

# Sets bench_cpu, bench_mem, bench_dev (device of DIR) and bench_commit.
# shellcheck disable=SC2034  # for the caller's report
bench_describe_machine() {
  bench_cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  bench_mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  bench_dev=$(findmnt -n -o SOURCE --target "$1" 2>/dev/null)
  bench_commit=$(git -C "$bench_repo_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)
  [ -n "${bench_stale:-}" ] && bench_commit+=" (binaries older than the sources)"
  # Others may be editing the tree: only changes to what the binaries are
  # built from are flagged.
  if [ -n "$(git -C "$bench_repo_dir" status --porcelain --untracked-files=no -- \
    cache cmd common fs meta bench/slowfs.cc 2>/dev/null)" ]; then
    bench_commit+=" (with uncommitted changes)"
  fi
}

bench_load() { cut -d' ' -f1-3 /proc/loadavg; }

# Warns when the machine is busy: other work adds noise to every figure.
bench_warn_load() {
  local l
  l=$(cut -d' ' -f1 /proc/loadavg)
  if awk -v l="$l" -v n="$(nproc)" 'BEGIN {exit !(l > n / 2)}'; then
    log "warning: load average $l on $(nproc) CPUs; other work will add noise"
  fi
}
