#!/bin/bash
# bench/randwrite_bench.sh: log-structured allocation (issue 6): 4 KiB random
# writes in mode=writeback after the store has wrapped, against 4 KiB
# sequential writes through the same mount and against the slow store itself.
#
# One cachefs mount (mode=writeback) over the slowfs emulator of a slow
# store, with a cache smaller than what is written into it: a test file of
# SIZE, a cache of CACHE; first random writes of WRAP_FACTOR x CACHE (the
# append cursor wraps around the store, counted by `log_wraps` in cachefsctl
# stats), then in each round (fio, psync, buffered, 1 job, RUNTIME s each):
#   randwrite   4k random writes over the file, through cachefs
#   write       4k sequential writes over the file, through cachefs
#   slowfs      4k random writes over the file, on slowfs directly
# Medians of RUNS rounds, as IOPS and ratios randwrite/write (goal >= 0.9,
# dm-writeboost's 259 vs 266 MB/s) and randwrite/slowfs (goal >= 20).
set -u -o pipefail

bench_name=randwrite_bench
script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

usage() {
  cat <<EOF
usage: sudo $0 [options]
  --runs N            rounds (default 3)
  --size SIZE         size of the test file, fio syntax (default 64M)
  --cache SIZE        cache_size (default 128M)
  --block-size SIZE   block_size of the cache (default 4K)
  --wrap-factor N     random writes before measuring, times the cache size (default 3)
  --runtime SEC       duration of each run (default 10)
  --latency-us N      slow store: delay of every request, microseconds (default 500)
  --bandwidth SIZE    slow store: bytes per second of its link (default 200M)
  --cachefs-opt=OPT   one more argument for the cachefs command line (repeatable),
                      e.g. --cachefs-opt=--xattr=off
  --out FILE          also write the report as Markdown to FILE
  --dir DIR           where to make the test directory (a local disk; default \$TMPDIR or /var/tmp)
  --cachefs PATH      the cachefs binary (default: build*/cmd/cachefs of this tree)
  --cachefsctl PATH   the cachefsctl binary (default: build*/cmd/cachefsctl of this tree)
  --slowfs PATH       the slowfs binary (default: build*/bench/slowfs of this tree)
EOF
}

runs=3 size=64M cache=128M block_size=4K wrap_factor=3 runtime=10 latency_us=500
bandwidth=200M out="" base_dir=${TMPDIR:-/var/tmp} cachefs_bin="" cachefsctl_bin="" slowfs_bin=""
cachefs_opts=()
while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs cachefsctl slowfs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --cache) cache=${2:?--cache needs a value}; shift 2 ;;
    --block-size) block_size=${2:?--block-size needs a value}; shift 2 ;;
    --wrap-factor) wrap_factor=${2:?--wrap-factor needs a value}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --latency-us) latency_us=${2:?--latency-us needs a value}; shift 2 ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a value}; shift 2 ;;
    --cachefs-opt=*) cachefs_opts+=("${1#--cachefs-opt=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$wrap_factor" =~ ^[1-9][0-9]*$ ]] || die "--wrap-factor must be a positive integer"
[[ "$latency_us" =~ ^[0-9]+$ ]] || die "--latency-us must be an integer, not '$latency_us'"
for v in "$size" "$cache" "$block_size"; do
  [[ "$v" =~ ^[1-9][0-9]*[kKmMgG]$ ]] || die "sizes must look like 64M, not '$v'"
done

bench_check_prerequisites "python3|apt-get install python3"
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
cachefsctl_bin=$(bench_find_binary "$cachefsctl_bin" cmd/cachefsctl cachefsctl) || exit 1
slowfs_bin=$(bench_find_binary "$slowfs_bin" bench/slowfs slowfs) || exit 1
bench_check_fresh "$cachefs_bin"
bench_check_dir "$base_dir"

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_slow=$work/mnt-slowfs
mnt_cachefs=$work/mnt-cachefs
mkdir -p "$src" "$mnt_slow" "$mnt_cachefs"
bench_install_traps

testfile=bench.dat
log "laying out $size test file in $src"
bench_layout_file "$src/$testfile" "$size"

slowfs_cmd=("$slowfs_bin" "$src" "$mnt_slow" -f -o "latency_us=$latency_us,bandwidth=$bandwidth")
bench_start_mount slowfs "$mnt_slow" "$work/slowfs.log" "${slowfs_cmd[@]}"
cachefs_cmd=("$cachefs_bin" "$mnt_slow" "$mnt_cachefs" -f --cache="$work/cachefs-cache"
  --cache_size="$cache" --block_size="$block_size" --mode=writeback "${cachefs_opts[@]}")
bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" "${cachefs_cmd[@]}"

# Members of cachefsctl stats --json, space separated: stat NAME...
stat() {
  "$cachefsctl_bin" stats --json "$mnt_cachefs" | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
print(" ".join(str(s[k]) for k in sys.argv[1:]))' "$@"
}

# fio writing 4k blocks over the file in DIR with RW (randwrite, write);
# prints the IOPS. Extra arguments go to fio.
run_fio() {
  local dir=$1 rw=$2
  shift 2
  drop_caches
  bench_fio --name=w --directory="$dir" --filename="$testfile" --size="$size" --ioengine=psync \
    --rw="$rw" --bs=4k --randrepeat=0 --group_reporting "$@" || die "fio failed in $dir"
  fio_write_result | awk '{printf "%.0f\n", $2}'
}

cache_bytes=$(numfmt --from=iec "${cache^^}")
wrap_bytes=$((wrap_factor * cache_bytes))
log "wrapping the store: $((wrap_bytes >> 20)) MiB of 4k random writes through cachefs"
run_fio "$mnt_cachefs" randwrite --io_size="$wrap_bytes" >/dev/null
read -r wraps_before segments <<<"$(stat log_wraps segments)"
log "log_wraps $wraps_before (of $segments segments)"
[ "$wraps_before" -ge 2 ] || die "the store wrapped $wraps_before times, not 2: raise --wrap-factor"

declare -A res
bench_warn_load
load_before=$(bench_load)
start=$SECONDS
for ((r = 1; r <= runs; r++)); do
  for p in randwrite write slowfs; do
    case "$p" in
      randwrite) line=$(run_fio "$mnt_cachefs" randwrite --time_based --runtime="$runtime") ;;
      write) line=$(run_fio "$mnt_cachefs" write --time_based --runtime="$runtime") ;;
      slowfs) line=$(run_fio "$mnt_slow" randwrite --time_based --runtime="$runtime") ;;
    esac
    res[$p]+="$line "
    log "round $r $p: $line IOPS"
  done
done
elapsed=$((SECONDS - start))
read -r wraps_after cleaned moved dropped fallbacks evictions <<<"$(stat log_wraps \
  segments_cleaned gc_moved_blocks gc_dropped_blocks write_through_fallbacks evictions)"

rand=$(median <<<"${res[randwrite]}")
seq=$(median <<<"${res[write]}")
slow=$(median <<<"${res[slowfs]}")
bench_describe_machine "$base_dir"
{
  echo "## cachefs log-structured writes: 4 KiB random vs sequential after the store wrapped"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M') UTC; $runs round(s), $runtime s per run, measuring took $elapsed s"
  echo "- machine: $(nproc) CPUs ($bench_cpu), $bench_mem RAM, kernel $(uname -r)"
  echo "- test dir: $base_dir ($bench_dev), one file of $size; cachefs at commit $bench_commit"
  echo "- slow store: \`slowfs -o latency_us=$latency_us,bandwidth=$bandwidth\`"
  echo "- cachefs: \`${cachefs_cmd[*]/#$work/W}\`, $segments segments"
  echo "- before measuring: $((wrap_bytes >> 20)) MiB of 4k random writes, log_wraps $wraps_before;" \
    "after: log_wraps $wraps_after, segments_cleaned $cleaned, gc_moved_blocks $moved," \
    "gc_dropped_blocks $dropped, evictions $evictions, write_through_fallbacks $fallbacks"
  echo "- fio: psync, 4 KiB writes over the file, buffered, page cache dropped before each run"
  echo "- load average $load_before before, $(bench_load) after"
  echo
  echo "| cachefs randwrite IOPS | cachefs write (sequential) IOPS | slowfs randwrite IOPS | randwrite / write | randwrite / slowfs |"
  echo "|---:|---:|---:|---:|---:|"
  echo "| $rand | $seq | $slow | $(ratio "$rand" "$seq") | $(ratio "$rand" "$slow") |"
} | tee "${out:-/dev/null}"
