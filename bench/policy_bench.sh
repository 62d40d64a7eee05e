#!/bin/bash
# policy_bench.sh: the eviction policies under a hot set and a concurrent scan,
# mounted over a slow store.
#
# One run lays out a hot set (HOT_FILES files, HOT_SIZE in all) and a scan set
# (SCAN_FILES files, SCAN_SIZE in all, several times the cache) in a fresh
# directory on the local disk, mounts bench/slowfs over it as the slow store,
# and measures, in every round:
#   slowfs          the hot-set load on the slow store itself, with the scan
#                   running beside it (the reference for the ratios) and alone
#   POLICY/BYPASS   cachefs over the slowfs mount with a fresh cache of
#                   CACHE_SIZE, for each policy (smq, lru, cleaner) and with the
#                   bypass of long sequential streams on (cachefs's default
#                   sequential_threshold) and off (a threshold of 2^32 blocks)
# A cachefs measurement is: mount with an empty cache; warm-up (read the hot
# set once sequentially, then WARMUP seconds of the hot-set load alone, which
# is also the "no scan" figure); then RUNTIME seconds of the hot-set load with
# the scan beside it (the measured phase). The hot-set load is fio randread of
# HOT_BS (HOT_JOBS jobs, psync, O_DIRECT) over all hot files, each job pausing
# HOT_THINK_US after every read (the policies differ only when the hot set is
# re-read more slowly than the scan cycles the cache; read flat out, even lru
# keeps it); the scan is one fio job reading the scan files one after the
# other in 1 MiB O_DIRECT reads, over and over.
#
# Reported for the measured phase, medians of the rounds: the hot set's hit
# ratio, IOPS, MiB/s and p99 latency, its IOPS against slowfs under the same
# load, the scan's MiB/s, and cachefs's counters (cachefsctl stats deltas:
# evictions, not_admitted, bypassed, hits, misses, bytes_from_source) with
# what the slow store served, and bytes_from_source against the bytes the
# scan read (each byte of SOURCE fetched once: about 1.0x, a little more for
# the hot set's misses, counted in too).
#
# The hot set's hit ratio comes from fio's latency histogram of the hot jobs:
# a miss waits at least LATENCY in slowfs, so a read faster than that was a
# hit (a hit slowed past LATENCY by a busy CPU counts as a miss: a lower
# bound). cachefs's own counters cannot give it: they add up the hot set and
# the scan. Beside it, exact: the share of the hot set's blocks still in the
# cache at the end (`cachefsctl dump` of the unmounted cache).
#
# O_DIRECT on the mounts and the source page-cache dropper: cachefs reads
# SOURCE through the kernel's page cache, and so does fio without O_DIRECT.
# With a machine's RAM far larger than the data, a block cachefs evicted would
# be read again from RAM, not from the slow store, and every policy would look
# the same. So fio reads with O_DIRECT, and a helper drops the slowfs mount's
# pages of the hot files every 20 ms and of the scan files every second
# (posix_fadvise DONTNEED). --keep-source-cache leaves them.
#
# Usage: bench/policy_bench.sh [options]; see --help. Runs as root.
set -u
set -o pipefail

usage() {
  cat <<'EOF'
Usage: policy_bench.sh [options]
  --runs N            rounds; each measures every configuration once, in an
                      order rotated from round to round; medians are reported
                      (default 3)
  --runtime SEC       measured phase: hot set + scan (default 10)
  --warmup SEC        hot set alone after it was read once (default 3)
  --cache-size SIZE   cachefs --cache_size (default 128M)
  --block-size SIZE   cachefs --block_size (default: cachefs's own)
  --hot-size SIZE     hot set, all files together (default 64M)
  --hot-files N       files of the hot set (default 16)
  --hot-bs SIZE       read size of the hot-set load (default 4k)
  --hot-jobs N        fio jobs of the hot-set load (default 4)
  --hot-think-us N    each hot-set job pauses N µs after every read, like an
                      application working on what it read; 0 reads flat out
                      (default 1000)
  --scan-size SIZE    scan set, all files together (default 1G)
  --scan-files N      files of the scan set (default 4)
  --policies LIST     comma-separated (default smq,lru,cleaner)
  --bypass LIST       comma-separated on/off: sequential bypass at cachefs's
                      default threshold, and off (default on,off)
  --latency-us N      slow store: delay of every request, microseconds (default 500)
  --bandwidth SIZE    slow store: bytes per second of its one data link,
                      1024-based (default 200M)
  --cachefs-opt OPT   one more argument for every cachefs command line (repeatable)
  --keep-source-cache do not drop the slowfs mount's page cache during the run
  --out FILE          also write the report as Markdown to FILE
  --dir DIR           where to make the test directory; must be on a local disk
                      (default: $TMPDIR or /var/tmp)
  --cachefs PATH      the cachefs binary (default: build*/cmd/cachefs of this tree)
  --cachefsctl PATH   the cachefsctl binary (default: build*/cmd/cachefsctl)
  --slowfs PATH       the slowfs binary (default: build*/bench/slowfs of this tree)
  -h, --help          this text
About 7 minutes with the defaults on a 2-core machine.
EOF
}

script_dir=$(cd "$(dirname "$0")" && pwd)
bench_name=policy_bench
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

runs=3
runtime=10
warmup=3
cache_size=128M
block_size=""
hot_size=64M
hot_files=16
hot_bs=4k
hot_jobs=4
hot_think_us=1000
scan_size=1G
scan_files=4
policies=smq,lru,cleaner
bypass_modes=on,off
latency_us=500
bandwidth=200M
cachefs_opts=()
keep_source_cache=0
out=""
base_dir=${TMPDIR:-/var/tmp}
cachefs_bin=""
cachefsctl_bin=""
slowfs_bin=""

while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs cachefsctl slowfs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    --warmup) warmup=${2:?--warmup needs a value}; shift 2 ;;
    --warmup=*) warmup=${1#*=}; shift ;;
    --cache-size) cache_size=${2:?--cache-size needs a value}; shift 2 ;;
    --cache-size=*) cache_size=${1#*=}; shift ;;
    --block-size) block_size=${2:?--block-size needs a value}; shift 2 ;;
    --block-size=*) block_size=${1#*=}; shift ;;
    --hot-size) hot_size=${2:?--hot-size needs a value}; shift 2 ;;
    --hot-size=*) hot_size=${1#*=}; shift ;;
    --hot-files) hot_files=${2:?--hot-files needs a value}; shift 2 ;;
    --hot-files=*) hot_files=${1#*=}; shift ;;
    --hot-bs) hot_bs=${2:?--hot-bs needs a value}; shift 2 ;;
    --hot-bs=*) hot_bs=${1#*=}; shift ;;
    --hot-jobs) hot_jobs=${2:?--hot-jobs needs a value}; shift 2 ;;
    --hot-jobs=*) hot_jobs=${1#*=}; shift ;;
    --hot-think-us) hot_think_us=${2:?--hot-think-us needs a value}; shift 2 ;;
    --hot-think-us=*) hot_think_us=${1#*=}; shift ;;
    --scan-size) scan_size=${2:?--scan-size needs a value}; shift 2 ;;
    --scan-size=*) scan_size=${1#*=}; shift ;;
    --scan-files) scan_files=${2:?--scan-files needs a value}; shift 2 ;;
    --scan-files=*) scan_files=${1#*=}; shift ;;
    --policies) policies=${2:?--policies needs a value}; shift 2 ;;
    --policies=*) policies=${1#*=}; shift ;;
    --bypass) bypass_modes=${2:?--bypass needs a value}; shift 2 ;;
    --bypass=*) bypass_modes=${1#*=}; shift ;;
    --latency-us) latency_us=${2:?--latency-us needs a value}; shift 2 ;;
    --latency-us=*) latency_us=${1#*=}; shift ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a value}; shift 2 ;;
    --bandwidth=*) bandwidth=${1#*=}; shift ;;
    --cachefs-opt) cachefs_opts+=("${2:?--cachefs-opt needs a value}"); shift 2 ;;
    --cachefs-opt=*) cachefs_opts+=("${1#*=}"); shift ;;
    --keep-source-cache) keep_source_cache=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

size_re='^[1-9][0-9]*[kKmMgGtT]?$'
count_re='^[1-9][0-9]*$'
[[ "$runs" =~ $count_re ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ $count_re ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$warmup" =~ $count_re ]] || die "--warmup must be a positive integer, not '$warmup'"
[[ "$hot_files" =~ $count_re ]] || die "--hot-files must be a positive integer, not '$hot_files'"
[[ "$hot_jobs" =~ $count_re ]] || die "--hot-jobs must be a positive integer, not '$hot_jobs'"
[[ "$scan_files" =~ $count_re ]] || die "--scan-files must be a positive integer, not '$scan_files'"
[[ "$latency_us" =~ ^[0-9]+$ ]] || die "--latency-us must be an integer, not '$latency_us'"
[[ "$hot_think_us" =~ ^[0-9]+$ ]] || die "--hot-think-us must be an integer, not '$hot_think_us'"
for v in cache_size hot_size hot_bs scan_size; do
  [[ "${!v}" =~ $size_re ]] || die "--${v//_/-} must look like 64M or 1G, not '${!v}'"
done
[[ "$bandwidth" =~ $size_re|^0$ ]] || die "--bandwidth must look like 200M, not '$bandwidth'"
[ -z "$block_size" ] || [[ "$block_size" =~ $size_re ]] ||
  die "--block-size must look like 64K, not '$block_size'"
IFS=, read -r -a policy_list <<<"$policies"
[ ${#policy_list[@]} -gt 0 ] || die "--policies is empty"
for p in "${policy_list[@]}"; do
  [[ "$p" =~ ^(smq|lru|cleaner)$ ]] || die "--policies: '$p' is not smq, lru or cleaner"
done
IFS=, read -r -a bypass_list <<<"$bypass_modes"
[ ${#bypass_list[@]} -gt 0 ] || die "--bypass is empty"
for b in "${bypass_list[@]}"; do
  [[ "$b" =~ ^(on|off)$ ]] || die "--bypass: '$b' is neither on nor off"
done
# A miss waits at least the latency, so the histogram tells hits from misses
# only when the latency is well above a hit's time (~0.1 ms).
[ "$latency_us" -ge 250 ] ||
  die "--latency-us must be at least 250: the hit ratio is read from fio's latency histogram"

# --- prerequisites -----------------------------------------------------------

bench_check_prerequisites "getfattr|apt-get install attr" "setfattr|apt-get install attr" \
  "numfmt|apt-get install coreutils" "python3|apt-get install python3"
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
cachefsctl_bin=$(bench_find_binary "$cachefsctl_bin" cmd/cachefsctl cachefsctl) || exit 1
slowfs_bin=$(bench_find_binary "$slowfs_bin" bench/slowfs slowfs) || exit 1
bench_check_fresh "$cachefs_bin"
[ -n "$bench_stale" ] || bench_check_fresh "$slowfs_bin"
bench_check_dir "$base_dir"

bytes_of() { numfmt --from=iec "${1^^}" 2>/dev/null || die "cannot read the size '$1'"; }
mib_of() { awk -v b="$1" 'BEGIN {printf "%g", b / 1048576}'; }
hot_bytes=$(bytes_of "$hot_size")
scan_bytes=$(bytes_of "$scan_size")
cache_bytes=$(bytes_of "$cache_size")
hot_bs_bytes=$(bytes_of "$hot_bs")
hot_file_bytes=$((hot_bytes / hot_files / 1048576 * 1048576))
scan_file_bytes=$((scan_bytes / scan_files / 1048576 * 1048576))
[ "$hot_file_bytes" -gt 0 ] || die "--hot-size / --hot-files must be at least 1 MiB per file"
[ "$scan_file_bytes" -gt 0 ] || die "--scan-size / --scan-files must be at least 1 MiB per file"
{ [ $((hot_bs_bytes % 4096)) -eq 0 ] && [ "$hot_bs_bytes" -le "$hot_file_bytes" ]; } ||
  die "--hot-bs must be a multiple of 4k and at most one hot file"
hot_bytes=$((hot_file_bytes * hot_files))
scan_bytes=$((scan_file_bytes * scan_files))
[ "$hot_bytes" -lt "$cache_bytes" ] ||
  log "warning: the hot set ($hot_size) does not fit in the cache ($cache_size)"
[ "$scan_bytes" -gt "$cache_bytes" ] ||
  log "warning: the scan ($scan_size) fits in the cache ($cache_size); it is no scan"

# The largest bucket of fio's latency histogram (its upper bounds, in µs) at
# or below the slow store's latency: reads in the buckets up to it were hits.
hit_limit_us=$(awk -v l="$latency_us" 'BEGIN {
  n = split("2 4 10 20 50 100 250 500 750 1000 2000 4000 10000 20000 50000 100000 250000 500000 750000 1000000 2000000", b, " ")
  for (i = 1; i <= n; i++) if (b[i] <= l) best = b[i]
  print best}')

# --- set-up and cleanup ------------------------------------------------------

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_slow=$work/mnt-slowfs
mnt_cachefs=$work/mnt-cachefs
mkdir -p "$src/hot" "$src/scan" "$mnt_slow" "$mnt_cachefs"
# Every exit path, Ctrl-C and failures included, unmounts everything (upper
# mounts first, lazily), ends every daemon, the dropper and a running fio, and
# removes the work directory (bench/lib.sh).
bench_install_traps

hot_names=()
scan_names=()
for ((i = 0; i < hot_files; i++)); do hot_names+=("hot/h$(printf %03d "$i")"); done
for ((i = 0; i < scan_files; i++)); do scan_names+=("scan/s$(printf %03d "$i")"); done
log "laying out the hot set ($hot_files x $(mib_of "$hot_file_bytes") MiB) and the scan set" \
  "($scan_files x $(mib_of "$scan_file_bytes") MiB) in $src"
for f in "${hot_names[@]}"; do bench_layout_file "$src/$f" "$hot_file_bytes"; done
for f in "${scan_names[@]}"; do bench_layout_file "$src/$f" "$scan_file_bytes"; done

slowfs_cmd=("$slowfs_bin" "$src" "$mnt_slow" -f -o "latency_us=$latency_us,bandwidth=$bandwidth")
log "mounting slowfs: ${slowfs_cmd[*]}"
bench_start_mount slowfs "$mnt_slow" "$work/slowfs.log" "${slowfs_cmd[@]}"

slow_stats() { getfattr --only-values -n user.slowfs.stats "$mnt_slow" 2>/dev/null; }
slow_reset() { setfattr -n user.slowfs.reset -v 1 "$mnt_slow"; }
slow_stats | grep -q '^reads=' || die "slowfs gives no counters (getfattr -n user.slowfs.stats)"

# Keeps the slowfs mount's page cache from serving cachefs's misses (see the
# top of the file): one open descriptor per file, posix_fadvise(DONTNEED) on
# the hot files every 20 ms and on the scan files every second (a scan pass
# takes several seconds, and dropping more often would throw away the
# kernel's readahead for the scan before it is used).
dropper_py='
import os, sys, time
hot_count = int(sys.argv[1])
fds = [os.open(p, os.O_RDONLY) for p in sys.argv[2:]]
last_scan = 0.0
while True:
    now = time.monotonic()
    scan_too = now - last_scan >= 1.0
    if scan_too:
        last_scan = now
    for i, fd in enumerate(fds):
        if i < hot_count or scan_too:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    time.sleep(0.02)
'
if [ "$keep_source_cache" -eq 0 ]; then
  python3 -c "$dropper_py" "$hot_files" "${hot_names[@]/#/$mnt_slow/}" "${scan_names[@]/#/$mnt_slow/}" \
    >"$work/dropper.log" 2>&1 &
  dropper_pid=$!
  bench_pids+=("$dropper_pid")
fi

# Dies when the dropper is gone (it exits at once if it cannot open a file).
check_dropper() {
  [ "$keep_source_cache" -eq 1 ] || kill -0 "$dropper_pid" 2>/dev/null || {
    cat "$work/dropper.log" >&2
    die "the page-cache dropper has exited (its output is above)"
  }
}

# --- cachefs ---------------------------------------------------------------------

cachefs_pid=""
cachefs_block_size=""
cachefs_cmdline=""
default_threshold=""
bypass_off_threshold=4294967296

ctl_stats() { "$cachefsctl_bin" stats "$mnt_cachefs" --json 2>/dev/null; }

start_cachefs() {
  local policy=$1 bypass=$2
  rm -rf "$work/cachefs-cache"
  local cmd=("$cachefs_bin" "$mnt_slow" "$mnt_cachefs" -f "--cache=$work/cachefs-cache"
    "--cache_size=$cache_size" "--policy=$policy")
  [ "$bypass" = off ] && cmd+=("--sequential_threshold=$bypass_off_threshold")
  [ -n "$block_size" ] && cmd+=("--block_size=$block_size")
  cmd+=("${cachefs_opts[@]}")
  bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" "${cmd[@]}"
  cachefs_pid=$bench_last_pid
  # With -f the mount point can appear a moment before the control socket.
  local deadline=$((SECONDS + 10))
  until ctl_stats >/dev/null; do
    [ $SECONDS -lt $deadline ] || die "cachefsctl cannot reach cachefs on $mnt_cachefs"
    sleep 0.05
  done
  cachefs_cmdline="${cmd[*]}"
  cachefs_cmdline=${cachefs_cmdline/--policy=$policy/--policy=POLICY}
  cachefs_cmdline=${cachefs_cmdline/ --sequential_threshold=$bypass_off_threshold/}
  if [ -z "$default_threshold" ] && [ "$bypass" = on ]; then
    default_threshold=$("$cachefsctl_bin" get sequential_threshold "$mnt_cachefs" 2>/dev/null |
      awk '{print $NF}')
  fi
  local got
  got=$(ctl_stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["mount"]["policy"])')
  [ "$got" = "$policy" ] || die "cachefs runs policy '$got', not '$policy'"
  cachefs_block_size=$(ctl_stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["mount"]["block_size"])')
}

# The share of the hot set's blocks (any of their sub-blocks valid) in the
# cache of the unmounted cachefs: from the block records `cachefsctl dump`
# reads, so it is exact.
hot_resident() {
  "$cachefsctl_bin" dump "$work/cachefs-cache" --json 2>"$work/dump.err" |
    python3 -c '
import json, sys
d = json.load(sys.stdin)
hot_blocks = int(sys.argv[1]) // int(sys.argv[2])
n = sum(f["cached_blocks"] for f in d["files"] if (f["path"] or "").lstrip("/").startswith("hot/"))
print("%.3f" % (n / hot_blocks))' "$hot_bytes" "$cachefs_block_size"
}

# The counters of cachefs (read_hits read_misses not_admitted bypassed
# evictions bytes_from_source) on one line.
ctl_counters() {
  ctl_stats | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
print(*(s[k] for k in ("read_hits", "read_misses", "not_admitted", "bypassed", "evictions",
                      "bytes_from_source")))'
}

# --- fio -------------------------------------------------------------------------

# Writes the job file of the hot-set load over DIR (and, when SCAN is 1, the
# scan beside it) for SEC seconds to $work/job.fio.
write_job() {
  local dir=$1 scan=$2 sec=$3
  local hot_list scan_list
  hot_list=$(printf '%s:' "${hot_names[@]/#/$dir/}")
  scan_list=$(printf '%s:' "${scan_names[@]/#/$dir/}")
  {
    echo "[global]"
    echo "ioengine=psync"
    echo "direct=1"
    echo "time_based"
    echo "runtime=$sec"
    echo "group_reporting"
    echo "[hot]"
    echo "filename=${hot_list%:}"
    echo "file_service_type=random"
    echo "rw=randread"
    echo "bs=$hot_bs"
    echo "numjobs=$hot_jobs"
    if [ "$hot_think_us" -gt 0 ]; then echo "thinktime=$hot_think_us"; fi
    if [ "$scan" -eq 1 ]; then
      echo "[scan]"
      echo "new_group"
      echo "filename=${scan_list%:}"
      echo "file_service_type=sequential"
      echo "rw=read"
      echo "bs=1M"
      echo "numjobs=1"
    fi
  } >"$work/job.fio"
}

# Runs $work/job.fio in the background (a signal ends it through the
# cleanup) and sets fio_line to "hot_iops hot_kib_s hot_ios hot_fast p50_us
# p99_us scan_kib_s scan_bytes": hot_fast is the share of hot reads faster
# than the slow store's latency.
run_job() {
  fio --output-format=json "$work/job.fio" >"$work/fio.json" 2>"$work/fio.err" &
  local pid=$!
  bench_pids+=("$pid")
  wait "$pid"
  local rc=$?
  unset 'bench_pids[-1]'
  [ $rc -eq 0 ] || { cat "$work/fio.err" >&2; return 1; }
  fio_line=$(python3 - "$work/fio.json" "$hit_limit_us" <<'EOF'
import json, sys
jobs = {j["jobname"]: j for j in json.load(open(sys.argv[1]))["jobs"]}
limit = int(sys.argv[2])
hot = jobs["hot"]
r = hot["read"]
# Percentages of the hot reads per latency bucket (upper bounds: ns, us, ms).
fast = sum(hot.get("latency_ns", {}).values())
fast += sum(v for k, v in hot["latency_us"].items() if int(k) <= limit)
fast += sum(v for k, v in hot["latency_ms"].items() if not k.startswith(">") and int(k) * 1000 <= limit)
pct = r["clat_ns"].get("percentile", {})
p50 = pct.get("50.000000", 0) / 1000
p99 = pct.get("99.000000", 0) / 1000
scan = jobs.get("scan", {"read": {"bw": 0, "io_bytes": 0}})["read"]
print("%.1f %d %d %.4f %.0f %.0f %d %d" % (r["iops"], r["bw"], r["total_ios"], fast / 100, p50, p99,
                                         scan["bw"], scan["io_bytes"]))
EOF
  ) || die "cannot read fio's report $work/fio.json"
}

# --- measuring -------------------------------------------------------------------

# "VARIANT FIELD" -> space-separated per-run values.
declare -A res
add() { res["$1 $2"]+="$3 "; }

# The slow store's counters since the last reset: "reads read_bytes".
slow_reads() {
  slow_stats | tr ' ' '\n' | awk -F= '$1 == "reads" {n = $2} $1 == "read_bytes" {b = $2}
    END {print n + 0, b + 0}'
}

# Records the measured phase of VARIANT from fio_line and the slow store.
record_phase() {
  local v=$1 iops kib ios fast p50 p99 sbw sbytes reads rbytes
  read -r iops kib ios fast p50 p99 sbw sbytes <<<"$fio_line"
  read -r reads rbytes < <(slow_reads)
  add "$v" iops "$iops"
  add "$v" kib "$kib"
  add "$v" hit "$fast"
  add "$v" p50 "$p50"
  add "$v" p99 "$p99"
  add "$v" scan "$sbw"
  add "$v" scanbytes "$sbytes"
  add "$v" slowmib "$(awk -v b="$rbytes" 'BEGIN {printf "%.0f", b / 1048576}')"
  add "$v" slowreqs "$reads"
  log "$v: hot $(printf '%.0f' "$iops") IOPS ($ios reads), $(mib "$kib") MiB/s, hit ratio" \
    "$fast, p99 ${p99} µs; scan $(mib "$sbw") MiB/s; slow store $reads READs," \
    "$(awk -v b="$rbytes" 'BEGIN {printf "%.0f", b / 1048576}') MiB"
  is_mounted "$mnt_slow" || die "slowfs is no longer mounted (did it die? see $work/slowfs.log)"
  check_dropper
}

# How often anyone dropped the page cache (echo N > drop_caches) so far:
# another benchmark doing it during a measurement empties cachefs's store
# from RAM, and its hits then read the disk.
page_cache_drops() { awk '$1 == "drop_pagecache" {n = $2} END {print n + 0}' /proc/vmstat 2>/dev/null || echo 0; }

# Records for VARIANT the page-cache drops since count D0, with a warning.
note_drops() {
  local n=$(($(page_cache_drops) - $2))
  add "$1" drops "$n"
  [ "$n" -eq 0 ] || log "warning: the page cache was dropped $n times during $1 (not by this script)"
}

measure_slowfs() {
  local v=$1 scan=$2 l0 d0
  l0=$(bench_load)
  d0=$(page_cache_drops)
  write_job "$mnt_slow" "$scan" "$runtime"
  slow_reset
  run_job || die "fio failed ($v)"
  record_phase "$v"
  add "$v" load0 "${l0%% *}"
  add "$v" load1 "$(bench_load | cut -d' ' -f1)"
  note_drops "$v" "$d0"
}

measure_cachefs() {
  local policy=$1 bypass=$2 v="$1/$2" l0 d0 f
  l0=$(bench_load)
  d0=$(page_cache_drops)
  start_cachefs "$policy" "$bypass"
  # Warm-up: the hot set once, sequentially (this fills an empty cache with
  # it, except under cleaner), then the hot-set load alone: the "no scan"
  # figure.
  for f in "${hot_names[@]}"; do
    dd if="$mnt_cachefs/$f" of=/dev/null bs=1M status=none || die "cannot read $f through cachefs"
  done
  write_job "$mnt_cachefs" 0 "$warmup"
  run_job || die "fio failed ($v warm-up)"
  local iops _k _i fast _rest
  read -r iops _k _i fast _rest <<<"$fio_line"
  add "$v" iops0 "$iops"
  add "$v" hit0 "$fast"
  log "$v: warm-up without the scan: $(printf '%.0f' "$iops") IOPS, hit ratio $fast;" \
    "$(ctl_stats | python3 -c 'import json, sys; print(json.load(sys.stdin)["stats"]["blocks_cached"])')" \
    "blocks cached"
  # The measured phase: the hot set with the scan beside it.
  local c0 c1
  c0=$(ctl_counters) || die "cachefsctl stats failed"
  write_job "$mnt_cachefs" 1 "$runtime"
  slow_reset
  run_job || die "fio failed ($v)"
  c1=$(ctl_counters) || die "cachefsctl stats failed"
  record_phase "$v"
  local names=(hits misses notadm bypassed evictions srcbytes) a b k sbytes
  read -r -a a <<<"$c0"
  read -r -a b <<<"$c1"
  for k in 0 1 2 3 4 5; do add "$v" "${names[$k]}" $((b[k] - a[k])); done
  sbytes=$(awk '{print $8}' <<<"$fio_line")
  # SOURCE bytes fetched per byte the scan read.
  add "$v" srcratio "$(awk -v s=$((b[5] - a[5])) -v r="$sbytes" 'BEGIN {printf "%.3f", (r > 0 ? s / r : 0)}')"
  log "$v: cachefs counters over the measured phase: hits $((b[0] - a[0])), misses" \
    "$((b[1] - a[1])), not admitted $((b[2] - a[2])), bypassed $((b[3] - a[3])), evictions" \
    "$((b[4] - a[4])), bytes_from_source $((b[5] - a[5])) ($(mib_of $((b[5] - a[5]))) MiB," \
    "the scan read $(mib_of "$sbytes") MiB)"
  bench_stop_mount "$mnt_cachefs" "$cachefs_pid"
  cachefs_pid=""
  is_mounted "$mnt_cachefs" && die "cannot unmount $mnt_cachefs"
  local resident
  resident=$(hot_resident) || die "cachefsctl dump $work/cachefs-cache failed"
  add "$v" resident "$resident"
  log "$v: $resident of the hot set's blocks were cached at the end"
  rm -rf "$work/cachefs-cache"
  add "$v" load0 "${l0%% *}"
  add "$v" load1 "$(bench_load | cut -d' ' -f1)"
  note_drops "$v" "$d0"
}

variants=("slowfs+scan" "slowfs")
for p in "${policy_list[@]}"; do
  for b in "${bypass_list[@]}"; do variants+=("$p/$b"); done
done

load_before=$(bench_load)
bench_warn_load
start=$SECONDS
for ((r = 0; r < runs; r++)); do
  for ((k = 0; k < ${#variants[@]}; k++)); do
    v=${variants[$(((r + k) % ${#variants[@]}))]}
    case "$v" in
      slowfs+scan) measure_slowfs "$v" 1 ;;
      slowfs) measure_slowfs "$v" 0 ;;
      *) measure_cachefs "${v%/*}" "${v#*/}" ;;
    esac
  done
  log "round $((r + 1))/$runs done after $((SECONDS - start)) s (load $(bench_load))"
done
elapsed=$((SECONDS - start))
load_after=$(bench_load)

# --- report --------------------------------------------------------------------

med() { median <<<"${res["$1 $2"]:-}"; }
medf() { med "$1" "$2" | awk -v f="$3" '{printf f, $1}'; }
medmib() { med "$1" "$2" | awk '{printf "%.1f", $1 / 1024}'; }

bench_describe_machine "$base_dir"

report_header() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) CPUs ($bench_cpu), $bench_mem RAM, kernel $(uname -r)"
  echo "- test dir: $base_dir ($bench_fstype on ${bench_dev:-?})"
  echo "- $(fio --version), libfuse $(pkg-config --modversion fuse3), cachefs and slowfs" \
    "at commit $bench_commit"
  echo "- slow store: \`slowfs SRC SLOW -f -o latency_us=$latency_us,bandwidth=$bandwidth\`" \
    "(every request waits $latency_us µs, in parallel; data shares one ${bandwidth}iB/s link),"
  if [ "$keep_source_cache" -eq 0 ]; then
    echo "  with its page cache dropped (fadvise DONTNEED: hot files every 20 ms, scan files every 1 s)"
  else
    echo "  with its page cache left alone (--keep-source-cache)"
  fi
  echo "- cachefs: \`${cachefs_cmdline//$work/W}\` (a fresh cache for every measurement);" \
    "bypass on = sequential_threshold ${default_threshold:-?} (default), off =" \
    "--sequential_threshold=$bypass_off_threshold"
  echo "- hot set: $hot_files files, $(mib_of "$hot_bytes") MiB; fio randread $hot_bs," \
    "$hot_jobs jobs, psync, O_DIRECT, over all of them; each job pauses $hot_think_us µs" \
    "after every read (fio thinktime)"
  echo "- scan: $scan_files files, $(mib_of "$scan_bytes") MiB (cache $cache_size); one fio job," \
    "1 MiB O_DIRECT reads, the files one after the other, over and over"
  echo "- per measurement: fresh mount; warm-up = the hot set read once with dd, then ${warmup} s" \
    "of the hot-set load alone (\"no scan\"); measured = ${runtime} s of hot set + scan"
  echo "- hit ratio = share of hot reads faster than ${hit_limit_us} µs in fio's latency" \
    "histogram (a miss waits at least $latency_us µs in slowfs; a lower bound: a hit slowed" \
    "past it by a busy CPU counts as a miss); hot blocks cached at the end: the hot set's" \
    "blocks with any valid sub-block in the cache after the measured phase" \
    "(\`cachefsctl dump\` of the unmounted cache)"
  echo "- $runs rounds, configurations rotated from round to round; figures are medians;" \
    "measuring took ${elapsed} s; load average (1/5/15 min) ${load_before} before," \
    "${load_after} after"
}

report_main() {
  local ref_iops ref0_iops v
  ref_iops=$(med "slowfs+scan" iops)
  ref0_iops=$(med slowfs iops)
  echo "| cache | bypass | hot hit ratio | hot blocks cached at the end | hot IOPS | hot MiB/s" \
    "| hot IOPS / slowfs | hot p99 µs | scan MiB/s | evictions | hot IOPS, no scan" \
    "| hit ratio, no scan |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '| slowfs (no cache) | - | %s | - | %s | %s | 1.00 | %s | %s | - | %s | - |\n' \
    "$(medf "slowfs+scan" hit %.2f)" "$(medf "slowfs+scan" iops %.0f)" "$(medmib "slowfs+scan" kib)" \
    "$(medf "slowfs+scan" p99 %.0f)" "$(medmib "slowfs+scan" scan)" "$(medf slowfs iops %.0f)"
  for v in "${variants[@]}"; do
    case "$v" in slowfs*) continue ;; esac
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${v%/*}" "${v#*/}" \
      "$(medf "$v" hit %.2f)" "$(medf "$v" resident %.2f)" "$(medf "$v" iops %.0f)" \
      "$(medmib "$v" kib)" "$(ratio "$(med "$v" iops)" "$ref_iops")" "$(medf "$v" p99 %.0f)" \
      "$(medmib "$v" scan)" "$(medf "$v" evictions %.0f)" "$(medf "$v" iops0 %.0f)" \
      "$(medf "$v" hit0 %.2f)"
  done
  echo
  echo "slowfs's hot-set load alone (no scan): $(medf slowfs iops %.0f) IOPS" \
    "(hit ratio $(medf slowfs hit %.2f), p99 $(medf slowfs p99 %.0f) µs);" \
    "\"hot IOPS / slowfs\" is against slowfs with the same scan beside the hot set" \
    "($(medf "slowfs+scan" iops %.0f) IOPS); against slowfs alone:" \
    "$(for v in "${variants[@]}"; do
      case "$v" in slowfs*) continue ;; esac
      printf '%s %s, ' "$v" "$(ratio "$(med "$v" iops)" "$ref0_iops")"
    done | sed 's/, $//')."
}

report_counters() {
  echo "cachefs's counters over the measured phase (cachefsctl stats deltas, hot set and scan" \
    "together, in blocks; SOURCE MiB = bytes_from_source), the MiB the scan read, SOURCE MiB" \
    "per scan MiB (the hot set's misses are in SOURCE MiB too), and what the slow store" \
    "served meanwhile:"
  echo
  echo "| cache | bypass | read_hits | read_misses | not_admitted | bypassed | evictions" \
    "| SOURCE MiB | scan MiB | SOURCE / scan | slow-store MiB | slow-store READs |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  local v
  for v in "${variants[@]}"; do
    case "$v" in
      slowfs*)
        printf '| %s | - | | | | | | | %s | | %s | %s |\n' "$v" \
          "$(medf "$v" scanbytes %.0f | awk '{printf "%.0f", $1 / 1048576}')" \
          "$(medf "$v" slowmib %.0f)" "$(medf "$v" slowreqs %.0f)" ;;
      *)
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${v%/*}" "${v#*/}" \
          "$(medf "$v" hits %.0f)" "$(medf "$v" misses %.0f)" "$(medf "$v" notadm %.0f)" \
          "$(medf "$v" bypassed %.0f)" "$(medf "$v" evictions %.0f)" \
          "$(medf "$v" srcbytes %.0f | awk '{printf "%.0f", $1 / 1048576}')" \
          "$(medf "$v" scanbytes %.0f | awk '{printf "%.0f", $1 / 1048576}')" \
          "$(medf "$v" srcratio %.2f)" "$(medf "$v" slowmib %.0f)" "$(medf "$v" slowreqs %.0f)" ;;
    esac
  done
}

report_runs() {
  echo "Every run, in round order (load = 1-minute load average before and after it;" \
    "drops = how often the page cache was dropped (/proc/vmstat drop_pagecache) during it," \
    "not by this script: cachefs's store is then read from disk):"
  echo
  echo "| configuration | hot IOPS | hot hit ratio | hot blocks cached | scan MiB/s | evictions" \
    "| load before | load after | drops |"
  echo "|---|---|---|---|---|---|---|---|---|"
  local v
  for v in "${variants[@]}"; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$v" \
      "$(awk '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i}' <<<"${res["$v iops"]}")" \
      "${res["$v hit"]% }" "${res["$v resident"]:--}" \
      "$(awk '{for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? " " : ""), $i / 1024}' <<<"${res["$v scan"]}")" \
      "${res["$v evictions"]:--}" "${res["$v load0"]% }" "${res["$v load1"]% }" \
      "${res["$v drops"]% }"
  done
}

report() {
  echo "## cachefs policies: hot set under a concurrent scan"
  echo
  report_header
  echo
  report_main
  echo
  report_counters
  echo
  report_runs
}

report
if [ -n "$out" ]; then
  report >"$out" || die "cannot write $out"
  log "wrote $out"
fi
