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

script_dir=$(cd "$(dirname "$0")" && pwd)
bench_name=passthrough_bench
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

runs=5
size=2G
runtime=10
out=""
base_dir=${TMPDIR:-/var/tmp}
cachefs_bin=""

while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --size=*) size=${1#*=}; shift ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$size" =~ ^[1-9][0-9]*[kKmMgGtT]?$ ]] || die "--size must look like 512M or 2G, not '$size'"

# --- prerequisites -----------------------------------------------------------

bench_check_prerequisites
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
bench_check_fresh "$cachefs_bin"

bench_check_dir "$base_dir"
fstype=$bench_fstype

# --- set-up and cleanup ------------------------------------------------------

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_cachefs=$work/mnt-cachefs
mnt_ptll=$work/mnt-passthrough_ll
mkdir -p "$src" "$mnt_cachefs" "$mnt_ptll" "$work/bin"
# Every exit path unmounts both mounts, ends both daemons (and a running fio)
# and removes the work directory (bench/lib.sh).
bench_install_traps

# --- build passthrough_ll ----------------------------------------------------

bench_build_passthrough_ll "$work/bin"

# --- the test file -----------------------------------------------------------

# One file, laid out on SOURCE before anything is measured, used by every
# workload through every path. fio writes it with non-zero data.
testfile=bench.dat
log "laying out $size test file in $src"
bench_layout_file "$src/$testfile" "$size"

# --- mounts --------------------------------------------------------------------

# The cache lives in the work directory, sized to hold the whole test file,
# so the figures include the block cache (the store is on the same disk).
cachefs_cmd=("$cachefs_bin" -f "$src" "$mnt_cachefs" "--cache=$work/cache" "--cache_size=$size")
ptll_cmd=("$work/bin/passthrough_ll" -f -o "source=$src" "$mnt_ptll")

log "mounting cachefs: ${cachefs_cmd[*]}"
bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" "${cachefs_cmd[@]}"
log "mounting passthrough_ll: ${ptll_cmd[*]}"
bench_start_mount passthrough_ll "$mnt_ptll" "$work/passthrough_ll.log" "${ptll_cmd[@]}"

cmp -s <(head -c 1048576 "$src/$testfile") <(head -c 1048576 "$mnt_cachefs/$testfile") ||
  die "the test file reads differently through cachefs"
cmp -s <(head -c 1048576 "$src/$testfile") <(head -c 1048576 "$mnt_ptll/$testfile") ||
  die "the test file reads differently through passthrough_ll"

# The kernel's readahead window of each FUSE mount sets the size of the READ
# requests of a sequential reader, so it is reported with the figures.
ra_cachefs=$(read_ahead_kb "$mnt_cachefs")
ra_ptll=$(read_ahead_kb "$mnt_ptll")

# --- measuring -----------------------------------------------------------------

paths=(direct cachefs passthrough_ll)
workloads=(seqread randread randwrite)
declare -A dir_of=([direct]=$src [cachefs]=$mnt_cachefs [passthrough_ll]=$mnt_ptll)
declare -A bw iops  # "path workload" -> space-separated per-run values

# Runs one fio job; sets result to "BW_KiB IOPS".
run_fio() {
  local path=$1 workload=$2
  local args=(--name="$workload" --filename="${dir_of[$path]}/$testfile" --size="$size"
    --ioengine=psync --numjobs=1)
  case "$workload" in
    seqread) args+=(--rw=read --bs=1M) ;;
    randread) args+=(--rw=randread --bs=4k --time_based --runtime="$runtime") ;;
    randwrite) args+=(--rw=randwrite --bs=4k --time_based --runtime="$runtime") ;;
  esac
  bench_fio "${args[@]}" || return 1
  if [ "$workload" = randwrite ]; then
    result=$(fio_write_result)
  else
    result=$(fio_read_result)
  fi
}

load_before=$(bench_load)
bench_warn_load
start=$SECONDS
for workload in "${workloads[@]}"; do
  for ((r = 0; r < runs; r++)); do
    # Rotate the order of the paths from run to run so no path always runs
    # first (or right after the one that left most dirty pages behind).
    for ((k = 0; k < ${#paths[@]}; k++)); do
      path=${paths[$(((r + k) % ${#paths[@]}))]}
      drop_caches
      run_fio "$path" "$workload" || die "fio failed ($path, $workload)"
      read -r b i <<<"$result"
      bw["$path $workload"]+="$b "
      iops["$path $workload"]+="$i "
      log "$workload run $((r + 1))/$runs $path: $(awk -v b="$b" 'BEGIN{printf "%.1f", b/1024}') MiB/s, $i IOPS"
    done
  done
done
elapsed=$((SECONDS - start))
load_after=$(bench_load)

for m in "$mnt_cachefs" "$mnt_ptll"; do
  is_mounted "$m" || die "$m is no longer mounted after the runs (did a daemon die?)"
done

# --- report --------------------------------------------------------------------

declare -A med_bw med_iops
for path in "${paths[@]}"; do
  for workload in "${workloads[@]}"; do
    med_bw["$path $workload"]=$(median <<<"${bw["$path $workload"]}")
    med_iops["$path $workload"]=$(median <<<"${iops["$path $workload"]}")
  done
done

declare -A label=([seqread]="seq read 1 MiB" [randread]="rand read 4 KiB" [randwrite]="rand write 4 KiB")

bench_describe_machine "$base_dir"
cpu=$bench_cpu mem=$bench_mem dev=$bench_dev commit=$bench_commit

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
