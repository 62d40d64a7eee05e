#!/bin/bash
# bench/drain_bench.sh: how fast cachefs drains dirty data to the slow store,
# against the slow store's own write bandwidth (issue 6's benchmark).
#
# Over one slowfs emulator of a slow store (latency_us, bandwidth):
#   reference  SIZE bytes in FILES files written straight to slowfs with dd
#              (1 MiB writes, conv=fsync), one file after the other: the
#              store's own write rate for one stream; with FILES > 1 also
#              all files at once (FILES streams), the store's best rate
#   cachefs    the same bytes written into cachefs -o mode=writeback over
#              slowfs (writeback_delay=3600, so nothing drains meanwhile),
#              then `cachefsctl flush` and the time until blocks_dirty is 0
#              (polled every 20 ms; `flush --wait` polls once a second)
# for each writeback_threads of --threads. Medians of RUNS rounds, MiB/s of
# both and the ratio cachefs/reference (the goal: at least 0.9).
set -u -o pipefail

bench_name=drain_bench
script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

usage() {
  cat <<EOF
usage: sudo $0 [options]
  --runs N            rounds (default 3)
  --size SIZE         dirty bytes in all, e.g. 256M (default 256M)
  --files N           files they are spread over (default 4)
  --threads "N ..."   writeback_threads values to measure (default "1 4")
  --latency-us N      slow store: delay of every request, microseconds (default 500)
  --bandwidth SIZE    slow store: bytes per second of its link (default 100M)
  --opt NAME=VALUE    an extra cachefs option (may be repeated)
  --out FILE          also write the report as Markdown to FILE
  --dir DIR           where to make the test directory (a local disk; default \$TMPDIR or /var/tmp)
  --cachefs PATH      the cachefs binary (default: build*/cmd/cachefs of this tree)
  --cachefsctl PATH   the cachefsctl binary (default: build*/cmd/cachefsctl of this tree)
  --slowfs PATH       the slowfs binary (default: build*/bench/slowfs of this tree)
EOF
}

runs=3 size=256M files=4 threads="1 4" latency_us=500 bandwidth=100M out="" extra=()
base_dir=${TMPDIR:-/var/tmp} cachefs_bin="" cachefsctl_bin="" slowfs_bin=""
while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs cachefsctl slowfs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --files) files=${2:?--files needs a value}; shift 2 ;;
    --threads) threads=${2:?--threads needs a value}; shift 2 ;;
    --latency-us) latency_us=${2:?--latency-us needs a value}; shift 2 ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a value}; shift 2 ;;
    --opt) extra+=("--${2:?--opt needs a value}"); shift 2 ;;
    --opt=*) extra+=("--${1#--opt=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$files" =~ ^[1-9][0-9]*$ ]] || die "--files must be a positive integer, not '$files'"
[[ "$latency_us" =~ ^[0-9]+$ ]] || die "--latency-us must be an integer, not '$latency_us'"
[[ "$size" =~ ^[1-9][0-9]*[mMgG]$ ]] || die "--size must look like 256M, not '$size'"
for t in $threads; do
  [[ "$t" =~ ^[1-9][0-9]*$ ]] || die "--threads must list positive integers, not '$threads'"
done
size_mib=$(($(numfmt --from=iec "${size^^}") / 1048576))
per_file_mib=$((size_mib / files))
[ "$per_file_mib" -ge 1 ] || die "--size must give each of the $files files at least 1 MiB"
total_mib=$((per_file_mib * files))

bench_check_prerequisites
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
cachefsctl_bin=$(bench_find_binary "$cachefsctl_bin" cmd/cachefsctl cachefsctl) || exit 1
slowfs_bin=$(bench_find_binary "$slowfs_bin" bench/slowfs slowfs) || exit 1
bench_check_fresh "$cachefs_bin"
bench_check_dir "$base_dir"
bench_warn_load

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_slow=$work/mnt-slowfs
mnt_cachefs=$work/mnt-cachefs
mkdir -p "$src" "$mnt_slow" "$mnt_cachefs"
bench_install_traps

# The bytes to write, on the local disk: random, so nothing compresses.
log "making $per_file_mib MiB of data"
head -c "$((per_file_mib * 1048576))" /dev/urandom >"$work/data" || die "cannot make the data file"

bench_start_mount slowfs "$mnt_slow" "$work/slowfs.log" \
  "$slowfs_bin" "$src" "$mnt_slow" -f -o "latency_us=$latency_us,bandwidth=$bandwidth"

now() { date +%s.%N; }
rate() { awk -v m="$1" -v a="$2" -v b="$3" 'BEGIN {printf "%.1f", m / (b - a)}'; }
# Files are removed through slowfs, never behind its back in SOURCE: its
# kernel dentries would still name the old inodes for entry_timeout.
clear_files() { rm -f "$mnt_slow"/d*; }

# Writes the data FILES times into DIR (names d0, d1, ...), each file synced.
fill() {
  local i
  for ((i = 0; i < files; i++)); do
    dd if="$work/data" of="$1/d$i" bs=1M conv=fsync status=none || die "dd into $1 failed"
  done
}

# The same, all files at once.
fill_parallel() {
  local i pids=()
  for ((i = 0; i < files; i++)); do
    dd if="$work/data" of="$1/d$i" bs=1M conv=fsync status=none &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || die "dd into $1 failed"; done
}

# The slow store's own rate, MiB/s, in round_rate. (Rounds run in this
# shell, not in $(...): the mounts they make must be registered here for
# the cleanup.)
reference_round() {
  clear_files
  drop_caches
  local t0 t1
  t0=$(now)
  fill "$mnt_slow"
  t1=$(now)
  clear_files
  round_rate=$(rate "$total_mib" "$t0" "$t1")
  if [ "$files" -gt 1 ]; then
    drop_caches
    t0=$(now)
    fill_parallel "$mnt_slow"
    t1=$(now)
    clear_files
    round_par_rate=$(rate "$total_mib" "$t0" "$t1")
  fi
}

# cachefs with THREADS writeback threads: fills, then times the drain;
# MiB/s in round_rate.
drain_round() {
  local threads=$1 pid t0 t1 deadline
  clear_files
  rm -rf "$work/cache"
  bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" \
    "$cachefs_bin" "$mnt_slow" "$mnt_cachefs" -f --cache="$work/cache" \
    --cache_size=$((2 * total_mib + 64))M --mode=writeback --writeback_delay=3600 \
    --writeback_threads="$threads" "${extra[@]}"
  pid=$bench_last_pid
  fill "$mnt_cachefs"
  "$cachefsctl_bin" stats --json "$mnt_cachefs" | grep -Eq '"blocks_dirty": *0,' &&
    die "nothing dirty after the fill: is the cache in writeback mode?"
  drop_caches
  t0=$(now)
  "$cachefsctl_bin" flush "$mnt_cachefs" >/dev/null || die "cachefsctl flush failed"
  deadline=$((SECONDS + 600))
  until "$cachefsctl_bin" stats --json "$mnt_cachefs" | grep -Eq '"blocks_dirty": *0,'; do
    [ $SECONDS -lt $deadline ] || die "the drain took more than 10 minutes (see $work/cachefs.log)"
    sleep 0.02
  done
  t1=$(now)
  bench_stop_mount "$mnt_cachefs" "$pid" 300
  local i
  for ((i = 0; i < files; i++)); do
    cmp -s "$work/data" "$src/d$i" || die "d$i on the slow store differs from what was written"
  done
  clear_files
  round_rate=$(rate "$total_mib" "$t0" "$t1")
}

declare -A res
for ((r = 1; r <= runs; r++)); do
  log "round $r/$runs: reference"
  reference_round
  res[ref]+=" $round_rate"
  [ "$files" -gt 1 ] && res[par]+=" $round_par_rate"
  for t in $threads; do
    log "round $r/$runs: cachefs, writeback_threads=$t"
    drain_round "$t"
    res[$t]+=" $round_rate"
  done
done

bench_describe_machine "$base_dir"
ref=$(median <<<"${res[ref]}")
report() {
  echo "## drain_bench: $total_mib MiB in $files files over slowfs (latency_us=$latency_us, bandwidth=$bandwidth)"
  echo
  echo "Commit $bench_commit; $bench_cpu, $(nproc) CPUs, $bench_mem; load $(bench_load);" \
    "median of $runs rounds (MiB/s); extra cachefs options: ${extra[*]:-none}."
  echo
  local par="" par_col="" par_sep="" m
  if [ "$files" -gt 1 ]; then
    par=$(median <<<"${res[par]}")
    par_col=" ratio to the store, $files streams |"
    par_sep="---|"
  fi
  echo "| path | MiB/s | rounds | ratio to the store, 1 stream |$par_col"
  echo "|---|---|---|---|$par_sep"
  echo "| slow store itself (dd, 1 MiB writes, fsync; one file at a time) | $ref | ${res[ref]# } | 1.00 |${par:+ $(ratio "$ref" "$par") |}"
  if [ -n "$par" ]; then
    echo "| slow store itself, the $files files at once | $par | ${res[par]# } | $(ratio "$par" "$ref") | 1.00 |"
  fi
  for t in $threads; do
    m=$(median <<<"${res[$t]}")
    echo "| cachefs drain, writeback_threads=$t | $m | ${res[$t]# } | $(ratio "$m" "$ref") |${par:+ $(ratio "$m" "$par") |}"
  done
}
report
if [ -n "$out" ]; then report >"$out"; fi
