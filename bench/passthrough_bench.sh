#!/bin/bash
# passthrough_bench.sh: the foundation benchmark of cachefs.
#
# Measures the same fio workloads, on the same files, through three paths:
#   direct          the SOURCE directory itself (the reference),
#   cachefs         `cachefs -f SRC MNT` with its default options,
#   passthrough_ll  libfuse's example low-level passthrough, built here from
#                   the libfuse3-dev package's source with its default options.
# and prints the median bandwidth and IOPS of each, with the ratios
# cachefs/direct and cachefs/passthrough_ll. passthrough_ll is the yardstick:
# it is what a minimal, unoptimised FUSE passthrough costs, so the ratio to it
# isolates cachefs's own overhead from the cost of FUSE itself.
#
# Usage: bench/passthrough_bench.sh [--runs N] [--size SIZE] [--out FILE]
#            [--runtime SEC] [--dir DIR] [--cachefs PATH]
# Runs as root (dropping the page cache needs it).
set -u
set -o pipefail

usage() {
  cat <<'EOF'
Usage: passthrough_bench.sh [options]
  --runs N        runs of each (path, workload); the median is reported (default 5)
  --size SIZE     size of the test file, fio syntax (default 2G)
  --runtime SEC   duration of each time-based run (random read/write; default 10)
  --out FILE      also write the results as Markdown to FILE
  --dir DIR       where to make the test directory; must be on a local disk
                  (default: $TMPDIR or /var/tmp)
  --cachefs PATH  the cachefs binary (default: build/cmd/cachefs of this tree)
  -h, --help      this text
Workloads (fio, psync engine, 1 job, buffered IO):
  seqread   1 MiB sequential read of the whole file (size-based, cold cache)
  randread  4 KiB random read, time-based, starting from a cold cache
  randwrite 4 KiB random write, time-based, over the existing file (no fsync)
EOF
}

die() {
  echo "passthrough_bench: $*" >&2
  exit 1
}

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(cd "$script_dir/.." && pwd)

runs=5
size=2G
runtime=10
out=""
base_dir=${TMPDIR:-/var/tmp}
cachefs_bin=""

while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --size=*) size=${1#*=}; shift ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    --out) out=${2:?--out needs a value}; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --dir) base_dir=${2:?--dir needs a value}; shift 2 ;;
    --dir=*) base_dir=${1#*=}; shift ;;
    --cachefs) cachefs_bin=${2:?--cachefs needs a value}; shift 2 ;;
    --cachefs=*) cachefs_bin=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$size" =~ ^[1-9][0-9]*[kKmMgGtT]?$ ]] || die "--size must look like 512M or 2G, not '$size'"

# --- prerequisites -----------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "run as root: every read run starts by dropping the page cache" \
  "(echo 3 > /proc/sys/vm/drop_caches)"
missing=()
command -v fio >/dev/null || missing+=("fio (apt-get install fio)")
command -v gcc >/dev/null || missing+=("gcc (apt-get install gcc)")
command -v pkg-config >/dev/null || missing+=("pkg-config (apt-get install pkg-config)")
command -v fusermount3 >/dev/null || missing+=("fusermount3 (apt-get install fuse3)")
if command -v pkg-config >/dev/null && ! pkg-config --exists fuse3; then
  missing+=("the fuse3 development files (apt-get install libfuse3-dev)")
fi
pt_src_dir=/usr/share/doc/libfuse3-dev/examples
if [ ! -f "$pt_src_dir/passthrough_ll.c" ] && [ ! -f "$pt_src_dir/passthrough_ll.c.gz" ]; then
  missing+=("$pt_src_dir/passthrough_ll.c (apt-get install libfuse3-dev)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "passthrough_bench: missing prerequisites; install them first:" >&2
  for m in "${missing[@]}"; do echo "  - $m" >&2; done
  echo "(the project's setup script installs fio)" >&2
  exit 1
fi
[ -w /proc/sys/vm/drop_caches ] || die "cannot write /proc/sys/vm/drop_caches (in a container?)"
[ -c /dev/fuse ] || die "/dev/fuse is missing (modprobe fuse)"

if [ -z "$cachefs_bin" ]; then
  for c in "$repo_dir/build/cmd/cachefs" "$repo_dir"/build*/cmd/cachefs; do
    if [ -x "$c" ]; then cachefs_bin=$c; break; fi
  done
fi
{ [ -n "$cachefs_bin" ] && [ -x "$cachefs_bin" ]; } ||
  die "no cachefs binary found; build it (meson setup build && ninja -C build) or pass --cachefs PATH"
cachefs_bin=$(cd "$(dirname "$cachefs_bin")" && pwd)/$(basename "$cachefs_bin")

[ -d "$base_dir" ] || die "--dir '$base_dir' is not a directory"
fstype=$(findmnt -n -o FSTYPE --target "$base_dir" 2>/dev/null || stat -f -c %T "$base_dir")
case "$fstype" in
  tmpfs | ramfs | fuse* | nfs* | cifs | smb*)
    die "'$base_dir' is on $fstype; pass --dir on a local disk filesystem" ;;
esac

# --- set-up and cleanup ------------------------------------------------------

work=$(mktemp -d "$base_dir/cachefs-bench.XXXXXX") || die "cannot create a directory in $base_dir"
src=$work/src
mnt_cachefs=$work/mnt-cachefs
mnt_ptll=$work/mnt-passthrough_ll
mkdir -p "$src" "$mnt_cachefs" "$mnt_ptll" "$work/bin"
pids=()

is_mounted() {
  awk -v m="$1" '$2 == m {found = 1} END {exit !found}' /proc/mounts
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for m in "$mnt_cachefs" "$mnt_ptll"; do
    if is_mounted "$m"; then
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    fi
  done
  local p
  for p in "${pids[@]}"; do
    if kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$p" 2>/dev/null
    fi
    wait "$p" 2>/dev/null
  done
  # Only once nothing is mounted on it may the tree go.
  if ! is_mounted "$mnt_cachefs" && ! is_mounted "$mnt_ptll"; then
    rm -rf "$work"
  else
    echo "passthrough_bench: a mount under $work is still there; not removing it" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until MOUNTPOINT is a FUSE mount, or PID died, or 10 s passed.
wait_mounted() {
  local mnt=$1 pid=$2 name=$3
  local deadline=$((SECONDS + 10))
  while ! is_mounted "$mnt"; do
    kill -0 "$pid" 2>/dev/null || die "$name exited before mounting (see $work/$name.log above)"
    [ $SECONDS -lt $deadline ] || die "$name did not mount $mnt within 10 s"
    sleep 0.05
  done
}

log() { echo "[$(date +%T)] $*" >&2; }

# --- build passthrough_ll ----------------------------------------------------

log "building passthrough_ll from $pt_src_dir"
if [ -f "$pt_src_dir/passthrough_ll.c" ]; then
  cp "$pt_src_dir/passthrough_ll.c" "$work/bin/"
else
  zcat "$pt_src_dir/passthrough_ll.c.gz" >"$work/bin/passthrough_ll.c"
fi
[ -f "$pt_src_dir/passthrough_helpers.h" ] && cp "$pt_src_dir/passthrough_helpers.h" "$work/bin/"
# shellcheck disable=SC2046  # pkg-config's output is meant to be split
(cd "$work/bin" && gcc -Wall passthrough_ll.c $(pkg-config --cflags --libs fuse3) \
  -o "$work/bin/passthrough_ll") >"$work/gcc.log" 2>&1 ||
  { cat "$work/gcc.log" >&2; die "cannot build passthrough_ll"; }

# --- the test file -----------------------------------------------------------

# One file, laid out on SOURCE before anything is measured, used by every
# workload through every path. fio writes it with non-zero data.
testfile=bench.dat
log "laying out $size test file in $src"
fio --name=layout --filename="$src/$testfile" --size="$size" --rw=write --bs=1M \
  --ioengine=psync --end_fsync=1 --output-format=terse >/dev/null ||
  die "fio could not lay out the test file"
sync

# --- mounts --------------------------------------------------------------------

# The cache lives in the work directory, sized to hold the whole test file,
# so the figures include the block cache (the store is on the same disk).
cachefs_cmd=("$cachefs_bin" -f "$src" "$mnt_cachefs" "--cache=$work/cache" "--cache_size=$size")
ptll_cmd=("$work/bin/passthrough_ll" -f -o "source=$src" "$mnt_ptll")

log "mounting cachefs: ${cachefs_cmd[*]}"
"${cachefs_cmd[@]}" >"$work/cachefs.log" 2>&1 &
pids+=($!)
wait_mounted "$mnt_cachefs" $! cachefs
log "mounting passthrough_ll: ${ptll_cmd[*]}"
"${ptll_cmd[@]}" >"$work/passthrough_ll.log" 2>&1 &
pids+=($!)
wait_mounted "$mnt_ptll" $! passthrough_ll

cmp -s <(head -c 1048576 "$src/$testfile") <(head -c 1048576 "$mnt_cachefs/$testfile") ||
  die "the test file reads differently through cachefs"
cmp -s <(head -c 1048576 "$src/$testfile") <(head -c 1048576 "$mnt_ptll/$testfile") ||
  die "the test file reads differently through passthrough_ll"

# The kernel's readahead window of each FUSE mount (max_readahead of the
# daemon's INIT reply): it sets the size of the READ requests of a
# sequential reader, so it is reported with the figures.
read_ahead_kb() {
  local devno
  devno=$(mountpoint -d "$1" 2>/dev/null) && cat "/sys/class/bdi/$devno/read_ahead_kb" 2>/dev/null ||
    echo "?"
}
ra_cachefs=$(read_ahead_kb "$mnt_cachefs")
ra_ptll=$(read_ahead_kb "$mnt_ptll")

# --- measuring -----------------------------------------------------------------

paths=(direct cachefs passthrough_ll)
workloads=(seqread randread randwrite)
declare -A dir_of=([direct]=$src [cachefs]=$mnt_cachefs [passthrough_ll]=$mnt_ptll)
declare -A bw iops  # "path workload" -> space-separated per-run values

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# Runs one fio job; prints "BW_KiB IOPS".
run_fio() {
  local path=$1 workload=$2
  local args=(--name="$workload" --filename="${dir_of[$path]}/$testfile" --size="$size"
    --ioengine=psync --numjobs=1 --output-format=terse --terse-version=3)
  case "$workload" in
    seqread) args+=(--rw=read --bs=1M) ;;
    randread) args+=(--rw=randread --bs=4k --time_based --runtime="$runtime") ;;
    randwrite) args+=(--rw=randwrite --bs=4k --time_based --runtime="$runtime") ;;
  esac
  local line
  line=$(fio "${args[@]}" 2>"$work/fio.err") || { cat "$work/fio.err" >&2; return 1; }
  # terse v3: field 7/8 are read bandwidth (KiB/s) and IOPS, 48/49 the write ones.
  if [ "$workload" = randwrite ]; then
    awk -F';' '{print $48, $49}' <<<"$line"
  else
    awk -F';' '{print $7, $8}' <<<"$line"
  fi
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_before%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n / 2)}'; then
  log "warning: load average ${load_before%% *} on $(nproc) CPUs; other work will add noise"
fi
start=$SECONDS
for workload in "${workloads[@]}"; do
  for ((r = 0; r < runs; r++)); do
    # Rotate the order of the paths from run to run so no path always runs
    # first (or right after the one that left most dirty pages behind).
    for ((k = 0; k < ${#paths[@]}; k++)); do
      path=${paths[$(((r + k) % ${#paths[@]}))]}
      drop_caches
      result=$(run_fio "$path" "$workload") || die "fio failed ($path, $workload)"
      read -r b i <<<"$result"
      bw["$path $workload"]+="$b "
      iops["$path $workload"]+="$i "
      log "$workload run $((r + 1))/$runs $path: $(awk -v b="$b" 'BEGIN{printf "%.1f", b/1024}') MiB/s, $i IOPS"
    done
  done
done
elapsed=$((SECONDS - start))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

for m in "$mnt_cachefs" "$mnt_ptll"; do
  is_mounted "$m" || die "$m is no longer mounted after the runs (did a daemon die?)"
done

# --- report --------------------------------------------------------------------

median() {
  tr ' ' '\n' | awk 'NF' | sort -g | awk '{v[NR] = $1}
    END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

declare -A med_bw med_iops
for path in "${paths[@]}"; do
  for workload in "${workloads[@]}"; do
    med_bw["$path $workload"]=$(median <<<"${bw["$path $workload"]}")
    med_iops["$path $workload"]=$(median <<<"${iops["$path $workload"]}")
  done
done

declare -A label=([seqread]="seq read 1 MiB" [randread]="rand read 4 KiB" [randwrite]="rand write 4 KiB")

mib() { awk -v v="$1" 'BEGIN{printf "%.1f", v / 1024}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }

cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
dev=$(findmnt -n -o SOURCE --target "$base_dir" 2>/dev/null)
commit=$(git -C "$repo_dir" rev-parse --short HEAD 2>/dev/null || echo unknown)

report() {
  echo "## cachefs passthrough benchmark"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) CPUs ($cpu), $mem RAM, kernel $(uname -r)"
  echo "- test dir: $base_dir ($fstype on ${dev:-?}), file of $size"
  echo "- $(fio --version), libfuse $(pkg-config --modversion fuse3), cachefs at commit $commit"
  echo "- cachefs: \`cachefs -f SRC MNT\` (default options); kernel readahead ${ra_cachefs} KiB"
  echo "- passthrough_ll: \`passthrough_ll -f -o source=SRC MNT\` (defaults: cache=auto," \
    "timeout=1.0, no writeback, no xattr, multi-threaded); kernel readahead ${ra_ptll} KiB;" \
    "built with" \
    "\`gcc -Wall passthrough_ll.c \$(pkg-config --cflags --libs fuse3)\`"
  echo "- fio: psync engine, 1 job, buffered IO; seq read = whole file once (size-based)," \
    "rand read/write = ${runtime} s time-based; page cache dropped before every run"
  echo "- $runs runs of each (path, workload), paths interleaved; figures are medians;" \
    "measuring took ${elapsed} s;" \
    "load average (1/5/15 min) ${load_before} before, ${load_after} after"
  echo
  echo "| workload | direct MiB/s | direct IOPS | cachefs MiB/s | cachefs IOPS" \
    "| passthrough_ll MiB/s | passthrough_ll IOPS | cachefs/direct | cachefs/passthrough_ll |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  local w
  for w in "${workloads[@]}"; do
    printf '| %s | %s | %.0f | %s | %.0f | %s | %.0f | %s | %s |\n' "${label[$w]}" \
      "$(mib "${med_bw["direct $w"]}")" "${med_iops["direct $w"]}" \
      "$(mib "${med_bw["cachefs $w"]}")" "${med_iops["cachefs $w"]}" \
      "$(mib "${med_bw["passthrough_ll $w"]}")" "${med_iops["passthrough_ll $w"]}" \
      "$(ratio "${med_bw["cachefs $w"]}" "${med_bw["direct $w"]}")" \
      "$(ratio "${med_bw["cachefs $w"]}" "${med_bw["passthrough_ll $w"]}")"
  done
  echo
  echo "Ratios are of the median bandwidths (for a fixed block size the IOPS ratio is the same)."
  echo
  echo "Per-run bandwidth, MiB/s, in run order:"
  echo
  echo "| workload | path | runs |"
  echo "|---|---|---|"
  local p
  for w in "${workloads[@]}"; do
    for p in "${paths[@]}"; do
      printf '| %s | %s | %s |\n' "${label[$w]}" "$p" \
        "$(awk '{for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? " " : ""), $i / 1024}' \
          <<<"${bw["$p $w"]}")"
    done
  done
}

report
if [ -n "$out" ]; then
  report >"$out" || die "cannot write $out"
  log "wrote $out"
fi
