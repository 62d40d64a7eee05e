#!/bin/bash
# bench/write_bench.sh: cachefs write caching against the slow store itself
# and against rclone's full VFS cache (issue 5's benchmark).
#
# Paths, each over the same slowfs emulator of a slow store:
#   slowfs           the slow store itself (the reference)
#   cachefs          cachefs -o mode=writeback over slowfs
#   rclone           rclone mount --vfs-cache-mode full over slowfs
# Workloads (fio, psync, buffered, 1 job unless said, RUNTIME seconds each):
#   randwrite 4k            no fsync
#   randwrite 4k fsync/64   an fsync every 64 writes
#   fsync latency, 1 and 8 writers (cachefs only, then slowfs): 4k random
#   writes each followed by an fsync; p50 and p99 of the fsync latency.
# Medians of RUNS rounds; ratios cachefs/slowfs and cachefs/rclone.
set -u -o pipefail

bench_name=write_bench
script_dir=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

usage() {
  cat <<EOF
usage: sudo $0 [options]
  --runs N            rounds (default 1)
  --size SIZE         size of the test file, fio syntax (default 256M)
  --runtime SEC       duration of each run (default 10)
  --latency-us N      slow store: delay of every request, microseconds (default 500)
  --bandwidth SIZE    slow store: bytes per second of its link (default 200M)
  --no-rclone         leave rclone out
  --out FILE          also write the report as Markdown to FILE
  --dir DIR           where to make the test directory (a local disk; default \$TMPDIR or /var/tmp)
  --cachefs PATH      the cachefs binary (default: build*/cmd/cachefs of this tree)
  --slowfs PATH       the slowfs binary (default: build*/bench/slowfs of this tree)
EOF
}

runs=1 size=256M runtime=10 latency_us=500 bandwidth=200M use_rclone=1 out=""
base_dir=${TMPDIR:-/var/tmp} cachefs_bin="" slowfs_bin=""
while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs slowfs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --latency-us) latency_us=${2:?--latency-us needs a value}; shift 2 ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a value}; shift 2 ;;
    --no-rclone) use_rclone=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$latency_us" =~ ^[0-9]+$ ]] || die "--latency-us must be an integer, not '$latency_us'"
[[ "$size" =~ ^[1-9][0-9]*[kKmMgG]$ ]] || die "--size must look like 256M, not '$size'"

bench_check_prerequisites "python3|apt-get install python3"
if [ "$use_rclone" -eq 1 ] && ! command -v rclone >/dev/null; then
  log "rclone is missing: installing the Debian package (apt-get install rclone)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y rclone >/dev/null 2>&1 ||
    die "rclone is not installed and 'apt-get install -y rclone' failed; pass --no-rclone"
fi
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
slowfs_bin=$(bench_find_binary "$slowfs_bin" bench/slowfs slowfs) || exit 1
bench_check_fresh "$cachefs_bin"
bench_check_dir "$base_dir"

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_slow=$work/mnt-slowfs
mnt_cachefs=$work/mnt-cachefs
mnt_rclone=$work/mnt-rclone
mkdir -p "$src" "$mnt_slow" "$mnt_cachefs" "$mnt_rclone"
bench_install_traps

testfile=bench.dat
log "laying out $size test file in $src"
bench_layout_file "$src/$testfile" "$size"

slowfs_cmd=("$slowfs_bin" "$src" "$mnt_slow" -f -o "latency_us=$latency_us,bandwidth=$bandwidth")
bench_start_mount slowfs "$mnt_slow" "$work/slowfs.log" "${slowfs_cmd[@]}"

cachefs_pid="" rclone_pid=""
cachefs_cmd=()
fresh_cachefs() {
  if [ -n "$cachefs_pid" ]; then bench_stop_mount "$mnt_cachefs" "$cachefs_pid" 300; fi
  rm -rf "$work/cachefs-cache"
  cachefs_cmd=("$cachefs_bin" "$mnt_slow" "$mnt_cachefs" -f --cache="$work/cachefs-cache"
    --cache_size=$((2 * $(numfmt --from=iec "${size^^}") / 1048576))M --mode=writeback)
  bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" "${cachefs_cmd[@]}"
  cachefs_pid=$bench_last_pid
}
fresh_rclone() {
  if [ -n "$rclone_pid" ]; then bench_stop_mount "$mnt_rclone" "$rclone_pid" 300; fi
  rm -rf "$work/rclone-cache"
  bench_start_mount rclone "$mnt_rclone" "$work/rclone.log" rclone mount "$mnt_slow" "$mnt_rclone" \
    --vfs-cache-mode full --cache-dir "$work/rclone-cache" --vfs-fast-fingerprint
  rclone_pid=$bench_last_pid
}

# fio with a JSON report; prints "IOPS FSYNC_P50_US FSYNC_P99_US".
run_fio() {
  local dir=$1
  shift
  drop_caches
  fio --name=w --directory="$dir" --filename="$testfile" --size="$size" --ioengine=psync \
    --rw=randwrite --bs=4k --time_based --runtime="$runtime" --randrepeat=0 --group_reporting \
    --output-format=json "$@" >"$work/fio.json" 2>"$work/fio.err" ||
    { cat "$work/fio.err" >&2; die "fio failed in $dir"; }
  python3 - "$work/fio.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
iops = j["write"]["iops"]
pct = j.get("sync", {}).get("lat_ns", {}).get("percentile", {})
p50 = pct.get("50.000000", 0) / 1000
p99 = pct.get("99.000000", 0) / 1000
print(f"{iops:.0f} {p50:.0f} {p99:.0f}")
EOF
}

declare -A res
workloads=("randwrite 4k" "randwrite 4k fsync/64" "fsync 1 writer" "fsync 8 writers")
fio_args() {
  case "$1" in
    "randwrite 4k") ;;
    "randwrite 4k fsync/64") echo "--fsync=64" ;;
    "fsync 1 writer") echo "--fsync=1" ;;
    "fsync 8 writers") echo "--fsync=1 --numjobs=8" ;;
  esac
}
paths=(slowfs cachefs)
[ "$use_rclone" -eq 1 ] && paths+=(rclone)
bench_warn_load
load_before=$(bench_load)
start=$SECONDS
for ((r = 1; r <= runs; r++)); do
  for w in "${workloads[@]}"; do
    for p in "${paths[@]}"; do
      [[ $w == fsync* && $p == rclone ]] && continue
      case "$p" in
        slowfs) dir=$mnt_slow ;;
        cachefs) fresh_cachefs; dir=$mnt_cachefs ;;
        rclone) fresh_rclone; dir=$mnt_rclone ;;
      esac
      # shellcheck disable=SC2046  # fio_args is meant to be split
      line=$(run_fio "$dir" $(fio_args "$w"))
      res["$p|$w"]+="$line;"
      log "$p $w: IOPS, fsync p50 us, p99 us = $line"
    done
  done
done
elapsed=$((SECONDS - start))

field() {  # field PATH WORKLOAD N: median of field N over the rounds
  tr ';' '\n' <<<"${res[$1|$2]:-}" | awk -v n="$3" 'NF {print $n}' | median
}
bench_describe_machine "$base_dir"
{
  echo "## cachefs write caching: 4 KiB random writes"
  echo
  echo "- date: $(date -u '+%Y-%m-%d %H:%M') UTC; $runs round(s), $runtime s per run, measuring took $elapsed s"
  echo "- machine: $(nproc) CPUs ($bench_cpu), $bench_mem RAM, kernel $(uname -r)"
  echo "- test dir: $base_dir ($bench_dev), one file of $size; cachefs at commit $bench_commit"
  echo "- slow store: \`slowfs -o latency_us=$latency_us,bandwidth=$bandwidth\`"
  echo "- cachefs: \`${cachefs_cmd[*]/#$work/W}\` (a fresh cache for every run)"
  [ "$use_rclone" -eq 1 ] && echo "- rclone: \`rclone mount SLOW MNT --vfs-cache-mode full --vfs-fast-fingerprint\` ($(rclone version 2>/dev/null | head -1))"
  echo "- fio: psync, 4 KiB random writes over the file, buffered, page cache dropped before each run"
  echo "- load average $load_before before, $(bench_load) after"
  echo
  echo "| workload | slowfs IOPS | cachefs IOPS | rclone IOPS | cachefs/slowfs | cachefs/rclone |"
  echo "|---|---:|---:|---:|---:|---:|"
  for w in "randwrite 4k" "randwrite 4k fsync/64"; do
    s=$(field slowfs "$w" 1) c=$(field cachefs "$w" 1) rc=n/a rr=n/a
    if [ "$use_rclone" -eq 1 ]; then rc=$(field rclone "$w" 1) rr=$(ratio "$c" "$rc"); fi
    echo "| $w | $s | $c | $rc | $(ratio "$c" "$s") | $rr |"
  done
  echo
  echo "| fsync after every 4 KiB write | slowfs p50 µs | slowfs p99 µs | cachefs p50 µs | cachefs p99 µs | cachefs IOPS | slowfs IOPS |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for w in "fsync 1 writer" "fsync 8 writers"; do
    echo "| $w | $(field slowfs "$w" 2) | $(field slowfs "$w" 3) | $(field cachefs "$w" 2) | $(field cachefs "$w" 3) | $(field cachefs "$w" 1) | $(field slowfs "$w" 1) |"
  done
} | tee "${out:-/dev/null}"
