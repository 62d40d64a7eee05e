#!/bin/bash
# cache_bench.sh: cold and warm reads through the block cache, over a slow store.
#
# One run lays out one test file in a fresh directory on the local disk and
# serves it through these paths:
#   slowfs          bench/slowfs over that directory: the slow store (every
#                   request waits LATENCY, data shares one BANDWIDTH link)
#   cachefs         cachefs over the slowfs mount, with a fresh cache (cold)
#                   and then again with the whole file cached (warm)
#   passthrough_ll  libfuse's example passthrough over the local directory
#                   itself: the FUSE ceiling for a warm cache (built here from
#                   the libfuse3-dev package, never part of the tree)
#   hop             the same passthrough_ll over the slowfs mount: what one
#                   FUSE layer over the slow store costs by itself, without any
#                   cache (the ceiling for a cold cache, for the report only)
#   rclone          `rclone mount --vfs-cache-mode full` over the slowfs mount,
#                   cold and warm like cachefs: the established alternative
# It runs a 1 MiB sequential read of the whole file and a time-based 4 KiB
# random read through each, drops the page cache before every run, and prints
# the medians with the ratios against the project's goals:
#   cachefs warm / passthrough_ll >= 1.0, cachefs cold / slowfs >= 0.95,
#   cachefs warm / rclone warm > 1.0.
# Every cold figure comes from a cache made fresh for it; the warm figures are
# taken on the cache the cold sequential read filled. The slow store's read
# counters are recorded for every run, so a "warm" run that still read the
# slow store shows.
#
# --sweep measures cachefs alone (with slowfs and passthrough_ll for the
# ratios) at several block sizes instead, to choose the default block_size.
#
# Usage: bench/cache_bench.sh [options]; see --help. Runs as root.
set -u
set -o pipefail

usage() {
  cat <<'EOF'
Usage: cache_bench.sh [options]
  --runs N            rounds; each gives every path one run of each workload and
                      cachefs/rclone one fresh cache per cold run; medians are
                      reported (default 3)
  --size SIZE         size of the test file, fio syntax (default 1G)
  --runtime SEC       duration of the random-read runs (default 10)
  --latency-us N      slow store: delay of every request, microseconds (default 500)
  --bandwidth SIZE    slow store: bytes per second of its one data link,
                      1024-based (default 200M)
  --block-size SIZE   cachefs --block_size for the comparison (default: cachefs's own)
  --cachefs-opt OPT   one more argument for every cachefs command line (repeatable),
                      e.g. --cachefs-opt=--source_timeout=0
  --sweep             measure cachefs at each of --sweep-sizes instead of the
                      comparison with rclone
  --sweep-sizes LIST  comma-separated block sizes (default 16K,64K,256K,1M)
  --no-rclone         leave rclone out of the comparison
  --out FILE          also write the report as Markdown to FILE
  --dir DIR           where to make the test directory; must be on a local disk
                      (default: $TMPDIR or /var/tmp)
  --cachefs PATH      the cachefs binary (default: build*/cmd/cachefs of this tree)
  --slowfs PATH       the slowfs binary (default: build*/bench/slowfs of this tree)
  -h, --help          this text
Workloads (fio, psync engine, 1 job, buffered IO, page cache dropped before each run):
  seqread   1 MiB sequential read of the whole file (size-based)
  randread  4 KiB random read over the whole file, time-based
EOF
}

script_dir=$(cd "$(dirname "$0")" && pwd)
bench_name=cache_bench
# shellcheck source=bench/lib.sh
source "$script_dir/lib.sh"

runs=3
size=1G
runtime=10
latency_us=500
bandwidth=200M
block_size=""
cachefs_opts=()
sweep=0
sweep_sizes=16K,64K,256K,1M
use_rclone=1
out=""
base_dir=${TMPDIR:-/var/tmp}
cachefs_bin=""
slowfs_bin=""

while [ $# -gt 0 ]; do
  bench_shared_option "out dir cachefs slowfs" "$@" && { shift "$bench_shift"; continue; }
  case "$1" in
    --runs) runs=${2:?--runs needs a value}; shift 2 ;;
    --runs=*) runs=${1#*=}; shift ;;
    --size) size=${2:?--size needs a value}; shift 2 ;;
    --size=*) size=${1#*=}; shift ;;
    --runtime) runtime=${2:?--runtime needs a value}; shift 2 ;;
    --runtime=*) runtime=${1#*=}; shift ;;
    --latency-us) latency_us=${2:?--latency-us needs a value}; shift 2 ;;
    --latency-us=*) latency_us=${1#*=}; shift ;;
    --bandwidth) bandwidth=${2:?--bandwidth needs a value}; shift 2 ;;
    --bandwidth=*) bandwidth=${1#*=}; shift ;;
    --block-size) block_size=${2:?--block-size needs a value}; shift 2 ;;
    --block-size=*) block_size=${1#*=}; shift ;;
    --cachefs-opt) cachefs_opts+=("${2:?--cachefs-opt needs a value}"); shift 2 ;;
    --cachefs-opt=*) cachefs_opts+=("${1#*=}"); shift ;;
    --sweep) sweep=1; shift ;;
    --sweep-sizes) sweep_sizes=${2:?--sweep-sizes needs a value}; shift 2 ;;
    --sweep-sizes=*) sweep_sizes=${1#*=}; shift ;;
    --no-rclone) use_rclone=0; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$1'" ;;
  esac
done

size_re='^[1-9][0-9]*[kKmMgGtT]?$'
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, not '$runs'"
[[ "$runtime" =~ ^[1-9][0-9]*$ ]] || die "--runtime must be a positive integer, not '$runtime'"
[[ "$latency_us" =~ ^[0-9]+$ ]] || die "--latency-us must be an integer, not '$latency_us'"
[[ "$size" =~ $size_re ]] || die "--size must look like 512M or 1G, not '$size'"
[[ "$bandwidth" =~ $size_re|^0$ ]] || die "--bandwidth must look like 200M, not '$bandwidth'"
[ -z "$block_size" ] || [[ "$block_size" =~ $size_re ]] ||
  die "--block-size must look like 64K, not '$block_size'"
IFS=, read -r -a sweep_list <<<"$sweep_sizes"
for b in "${sweep_list[@]}"; do
  [[ "$b" =~ $size_re ]] || die "--sweep-sizes: '$b' is not a size like 64K"
done
[ ${#sweep_list[@]} -gt 0 ] || die "--sweep-sizes is empty"
[ "$sweep" -eq 1 ] && use_rclone=0

# --- prerequisites -----------------------------------------------------------

bench_check_prerequisites "getfattr|apt-get install attr" "setfattr|apt-get install attr" \
  "numfmt|apt-get install coreutils"
if [ "$use_rclone" -eq 1 ] && ! command -v rclone >/dev/null; then
  log "rclone is missing: installing the Debian package (apt-get install rclone)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y rclone >/dev/null 2>&1 ||
    die "rclone is not installed and 'apt-get install -y rclone' failed;" \
      "install it yourself, or pass --no-rclone to leave it out"
  command -v rclone >/dev/null || die "apt-get installed rclone but it is not on PATH"
fi
cachefs_bin=$(bench_find_binary "$cachefs_bin" cmd/cachefs cachefs) || exit 1
slowfs_bin=$(bench_find_binary "$slowfs_bin" bench/slowfs slowfs) || exit 1
bench_check_fresh "$cachefs_bin"
[ -n "$bench_stale" ] || bench_check_fresh "$slowfs_bin"
bench_check_dir "$base_dir"
size_bytes=$(numfmt --from=iec "${size^^}") || die "cannot read --size '$size'"
# The cache holds the whole file with room to spare, so nothing is evicted.
cache_size="$(((size_bytes * 5 / 4 + 1048575) / 1048576))M"

# --- set-up and cleanup ------------------------------------------------------

bench_make_work "$base_dir"
work=$bench_work
src=$work/src
mnt_slow=$work/mnt-slowfs
mnt_cachefs=$work/mnt-cachefs
mnt_ptll=$work/mnt-passthrough_ll
mnt_hop=$work/mnt-hop
mnt_rclone=$work/mnt-rclone
mkdir -p "$src" "$mnt_slow" "$mnt_cachefs" "$mnt_ptll" "$mnt_hop" "$mnt_rclone" "$work/bin"
# Every exit path, Ctrl-C and failures included, unmounts everything (upper
# mounts first, lazily), ends every daemon and a running fio, and removes
# the work directory (bench/lib.sh).
bench_install_traps

bench_build_passthrough_ll "$work/bin"

testfile=bench.dat
log "laying out $size test file in $src"
bench_layout_file "$src/$testfile" "$size"

# --- mounts --------------------------------------------------------------------

slowfs_cmd=("$slowfs_bin" "$src" "$mnt_slow" -f -o "latency_us=$latency_us,bandwidth=$bandwidth")
ptll_cmd=("$work/bin/passthrough_ll" -f -o "source=$src" "$mnt_ptll")
hop_cmd=("$work/bin/passthrough_ll" -f -o "source=$mnt_slow" "$mnt_hop")
log "mounting slowfs: ${slowfs_cmd[*]}"
bench_start_mount slowfs "$mnt_slow" "$work/slowfs.log" "${slowfs_cmd[@]}"
log "mounting passthrough_ll: ${ptll_cmd[*]}"
bench_start_mount passthrough_ll "$mnt_ptll" "$work/passthrough_ll.log" "${ptll_cmd[@]}"
log "mounting passthrough_ll over slowfs: ${hop_cmd[*]}"
bench_start_mount hop "$mnt_hop" "$work/hop.log" "${hop_cmd[@]}"

slow_stats() { getfattr --only-values -n user.slowfs.stats "$mnt_slow" 2>/dev/null; }
slow_reset() { setfattr -n user.slowfs.reset -v 1 "$mnt_slow"; }
slow_stats | grep -q '^reads=' || die "slowfs gives no counters (getfattr -n user.slowfs.stats)"

# The same bytes through MNT as on the local disk, at OFFSET_MIB (16 MiB).
same_bytes() {
  cmp -s <(dd if="$src/$testfile" bs=1M skip="$2" count=16 status=none) \
    <(dd if="$1/$testfile" bs=1M skip="$2" count=16 status=none)
}

# cachefs and rclone are remounted with an empty cache for every cold run.
# A variant is "cachefs" (its block size from --block-size, or cachefs's
# default) or "cachefs@BS" in the sweep.
cachefs_pid=""
rclone_pid=""
declare -A cmdline  # variant -> its command line, for the report
declare -A ra_kb    # variant -> the kernel readahead of its mount

fresh_cachefs() {
  local bs=$1
  if [ -n "$cachefs_pid" ]; then bench_stop_mount "$mnt_cachefs" "$cachefs_pid"; fi
  is_mounted "$mnt_cachefs" && die "cannot unmount $mnt_cachefs"
  rm -rf "$work/cachefs-cache"
  # The cold sequential read is what fills the cache for the warm runs: the
  # bypass of long sequential streams (sequential_threshold) is switched off.
  local cmd=("$cachefs_bin" "$mnt_slow" "$mnt_cachefs" -f "--cache=$work/cachefs-cache"
    "--cache_size=$cache_size" "--sequential_threshold=4294967296")
  [ -n "$bs" ] && cmd+=("--block_size=$bs")
  cmd+=("${cachefs_opts[@]}")
  bench_start_mount cachefs "$mnt_cachefs" "$work/cachefs.log" "${cmd[@]}"
  cachefs_pid=$bench_last_pid
  cmdline[$2]="${cmd[*]}"
  ra_kb[$2]=$(read_ahead_kb "$mnt_cachefs")
}

fresh_rclone() {
  if [ -n "$rclone_pid" ]; then bench_stop_mount "$mnt_rclone" "$rclone_pid"; fi
  is_mounted "$mnt_rclone" && die "cannot unmount $mnt_rclone"
  rm -rf "$work/rclone-cache"
  # A local remote (a plain path) needs no configuration; an empty file keeps
  # rclone away from root's own. --vfs-fast-fingerprint: without it every open
  # of a cached file hashes the whole file on the remote (MD5 of the slow
  # store's copy), which rclone's documentation advises against for local
  # remotes.
  : >"$work/rclone.conf"
  local cmd=(rclone mount "$mnt_slow" "$mnt_rclone" --config "$work/rclone.conf"
    --vfs-cache-mode full --cache-dir "$work/rclone-cache" --vfs-fast-fingerprint)
  bench_start_mount rclone "$mnt_rclone" "$work/rclone.log" "${cmd[@]}"
  rclone_pid=$bench_last_pid
  cmdline[rclone]="${cmd[*]}"
  ra_kb[rclone]=$(read_ahead_kb "$mnt_rclone")
}

# --- measuring -----------------------------------------------------------------

# "variant phase workload" -> space-separated per-run values: bandwidth (KiB/s),
# IOPS, and the MiB and READ requests the slow store served.
declare -A bw iops slowmib slowreqs

# Runs WORKLOAD through DIR once from a dropped page cache and records it as
# "VARIANT PHASE WORKLOAD", with the MiB the slow store served meanwhile.
measure() {
  local variant=$1 phase=$2 workload=$3 dir=$4
  local args=(--name="$workload" --filename="$dir/$testfile" --size="$size" --ioengine=psync
    --numjobs=1)
  case "$workload" in
    seqread) args+=(--rw=read --bs=1M) ;;
    randread) args+=(--rw=randread --bs=4k --time_based --runtime="$runtime") ;;
  esac
  drop_caches
  slow_reset
  bench_fio "${args[@]}" || die "fio failed ($variant $phase $workload)"
  local b i s n key="$variant $phase $workload"
  read -r b i < <(fio_read_result)
  read -r s n < <(slow_stats | tr ' ' '\n' | awk -F= '$1 == "read_bytes" {mib = $2 / 1048576}
    $1 == "reads" {n = $2} END {printf "%.1f %d\n", mib, n}')
  bw[$key]+="$b "
  iops[$key]+="$i "
  slowmib[$key]+="$s "
  slowreqs[$key]+="$n "
  local fio_mib
  fio_mib=$(awk -F';' '{printf "%.1f", $6 / 1024}' <<<"$bench_fio_line")
  log "$key: $(mib "$b") MiB/s, $i IOPS; fio read $fio_mib MiB, the slow store served $s MiB in $n reads"
  if [ "$phase" = warm ] && awk -v s="$s" -v f="$fio_mib" 'BEGIN {exit !(s > 0.01 * f + 1)}'; then
    log "warning: this warm run read $s MiB from the slow store"
  fi
  is_mounted "$mnt_slow" || die "slowfs is no longer mounted (did it die? see $work/slowfs.log)"
}

# One round of VARIANT: the plain paths read each workload once; a cached
# path reads cold (fresh cache) random, cold (fresh cache) sequential, which
# fills the cache with the whole file, then warm sequential and warm random.
round() {
  local variant=$1 r=$2
  case "$variant" in
    slowfs)
      measure slowfs - seqread "$mnt_slow"
      measure slowfs - randread "$mnt_slow" ;;
    passthrough_ll)
      measure passthrough_ll - seqread "$mnt_ptll"
      measure passthrough_ll - randread "$mnt_ptll" ;;
    hop)
      measure hop - seqread "$mnt_hop"
      measure hop - randread "$mnt_hop" ;;
    cachefs*)
      local bs=$block_size
      [ "$variant" = cachefs ] || bs=${variant#cachefs@}
      fresh_cachefs "$bs" "$variant"
      measure "$variant" cold randread "$mnt_cachefs"
      fresh_cachefs "$bs" "$variant"
      measure "$variant" cold seqread "$mnt_cachefs"
      measure "$variant" warm seqread "$mnt_cachefs"
      measure "$variant" warm randread "$mnt_cachefs"
      if [ "$r" -eq 0 ]; then
        same_bytes "$mnt_cachefs" $((size_bytes / 2097152)) ||
          die "the test file reads differently through cachefs ($variant, warm)"
      fi ;;
    rclone)
      fresh_rclone
      measure rclone cold randread "$mnt_rclone"
      fresh_rclone
      measure rclone cold seqread "$mnt_rclone"
      measure rclone warm seqread "$mnt_rclone"
      measure rclone warm randread "$mnt_rclone"
      if [ "$r" -eq 0 ]; then
        same_bytes "$mnt_rclone" $((size_bytes / 2097152)) ||
          die "the test file reads differently through rclone (warm)"
      fi ;;
  esac
}

same_bytes "$mnt_slow" 0 || die "the test file reads differently through slowfs"
same_bytes "$mnt_ptll" 0 || die "the test file reads differently through passthrough_ll"
same_bytes "$mnt_hop" 0 || die "the test file reads differently through passthrough_ll over slowfs"
ra_kb[slowfs]=$(read_ahead_kb "$mnt_slow")
ra_kb[passthrough_ll]=$(read_ahead_kb "$mnt_ptll")

if [ "$sweep" -eq 1 ]; then
  variants=(slowfs passthrough_ll)
  for b in "${sweep_list[@]}"; do variants+=("cachefs@$b"); done
else
  variants=(slowfs passthrough_ll hop cachefs)
  [ "$use_rclone" -eq 1 ] && variants+=(rclone)
fi

load_before=$(bench_load)
bench_warn_load
start=$SECONDS
for ((r = 0; r < runs; r++)); do
  # Rotate the order of the paths from round to round so none always runs
  # first or right after the same other one.
  for ((k = 0; k < ${#variants[@]}; k++)); do
    round "${variants[$(((r + k) % ${#variants[@]}))]}" "$r"
  done
  log "round $((r + 1))/$runs done after $((SECONDS - start)) s"
done
elapsed=$((SECONDS - start))
load_after=$(bench_load)
[ -n "$cachefs_pid" ] && bench_stop_mount "$mnt_cachefs" "$cachefs_pid"
[ -n "$rclone_pid" ] && bench_stop_mount "$mnt_rclone" "$rclone_pid"

# --- report --------------------------------------------------------------------

declare -A label=([seqread]="seq read 1 MiB" [randread]="rand read 4 KiB")
# The figure of a workload: MiB/s for the sequential read, IOPS for the random one.
med() {
  local key=$1
  case "$key" in
    *seqread) median <<<"${bw[$key]}" | awk '{printf "%.1f", $1 / 1024}' ;;
    *) median <<<"${iops[$key]}" | awk '{printf "%.0f", $1}' ;;
  esac
}
unit() { case "$1" in seqread) echo "MiB/s" ;; *) echo "IOPS" ;; esac; }
# Per-run figures of KEY in run order, in the workload's unit.
per_run() {
  case "$1" in
    *seqread) awk '{for (i = 1; i <= NF; i++) printf "%s%.1f", (i > 1 ? " " : ""), $i / 1024}' \
      <<<"${bw[$1]}" ;;
    *) awk '{for (i = 1; i <= NF; i++) printf "%s%.0f", (i > 1 ? " " : ""), $i}' <<<"${iops[$1]}" ;;
  esac
}
# "yes"/"no": does ratio R meet goal OP LIMIT (OP is >= or >)?
meets() {
  awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
    if (r == "n/a") {print "n/a"; exit}
    ok = (op == ">=") ? (r + 0 >= l + 0) : (r + 0 > l + 0); print ok ? "yes" : "no"}'
}

bench_describe_machine "$base_dir"
cachefs_variant=cachefs
[ "$sweep" -eq 1 ] && cachefs_variant="cachefs@${sweep_list[0]}"

report_header() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "- machine: $(nproc) CPUs ($bench_cpu), $bench_mem RAM, kernel $(uname -r)"
  echo "- test dir: $base_dir ($bench_fstype on ${bench_dev:-?}), one file of $size"
  echo "- $(fio --version), libfuse $(pkg-config --modversion fuse3), cachefs and slowfs" \
    "at commit $bench_commit"
  echo "- slow store: \`slowfs SRC SLOW -f -o latency_us=$latency_us,bandwidth=$bandwidth\`:" \
    "every request waits $latency_us µs (requests in parallel), and read data moves" \
    "over one link of ${bandwidth}iB/s; kernel readahead ${ra_kb[slowfs]} KiB"
  echo "- cachefs: \`${cmdline[$cachefs_variant]//$work/W}\` (a fresh cache directory" \
    "for every cold run; cache larger than the file); kernel readahead ${ra_kb[$cachefs_variant]} KiB"
  [ "$sweep" -eq 1 ] && echo "  (block sizes ${sweep_sizes//,/, } in turn)"
  echo "- passthrough_ll: \`passthrough_ll -f -o source=SRC MNT\` over the local copy" \
    "(defaults; built from $bench_ptll_src_dir); kernel readahead ${ra_kb[passthrough_ll]} KiB"
  [ "$sweep" -eq 1 ] || echo "- hop: the same passthrough_ll over the slowfs mount" \
    "(\`-o source=SLOW\`): one FUSE layer over the slow store, no cache"
  if [ "$use_rclone" -eq 1 ]; then
    echo "- rclone: $(rclone version 2>/dev/null | head -n 1),"
    echo "  \`${cmdline[rclone]//$work/W}\` (a fresh --cache-dir for every cold run;" \
      "other options at their defaults); kernel readahead ${ra_kb[rclone]} KiB"
  fi
  echo "- fio: psync engine, 1 job, buffered IO; seq read = the whole file once," \
    "rand read = ${runtime} s time-based; page cache dropped before every run"
  echo "- $runs rounds, paths rotated from round to round; cold = the first read after" \
    "a fresh cache, warm = the same cache after the cold sequential read filled it;" \
    "figures are medians; measuring took ${elapsed} s; load average (1/5/15 min)" \
    "${load_before} before, ${load_after} after"
}

report_comparison() {
  local w
  if [ "$use_rclone" -eq 1 ]; then
    echo "| workload | slowfs | hop | cachefs cold | cachefs warm | passthrough_ll | rclone cold | rclone warm |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  else
    echo "| workload | slowfs | hop | cachefs cold | cachefs warm | passthrough_ll |"
    echo "|---|---:|---:|---:|---:|---:|"
  fi
  for w in seqread randread; do
    printf '| %s (%s) | %s | %s | %s | %s | %s |' "${label[$w]}" "$(unit $w)" \
      "$(med "slowfs - $w")" "$(med "hop - $w")" "$(med "cachefs cold $w")" \
      "$(med "cachefs warm $w")" "$(med "passthrough_ll - $w")"
    [ "$use_rclone" -eq 1 ] && printf ' %s | %s |' "$(med "rclone cold $w")" "$(med "rclone warm $w")"
    echo
  done
  echo
  echo "| ratio | goal | seq read 1 MiB | met | rand read 4 KiB | met |"
  echo "|---|---|---:|---|---:|---|"
  local spec a b goal op limit rs rr
  local specs=("cachefs warm / passthrough_ll|cachefs warm|passthrough_ll -|>=|1.00"
    "cachefs cold / slowfs|cachefs cold|slowfs -|>=|0.95"
    "(hop / slowfs)|hop -|slowfs -||"
    "(cachefs cold / hop)|cachefs cold|hop -||")
  [ "$use_rclone" -eq 1 ] && specs+=("cachefs warm / rclone warm|cachefs warm|rclone warm|>|1.00"
    "(rclone cold / slowfs)|rclone cold|slowfs -||"
    "(rclone warm / passthrough_ll)|rclone warm|passthrough_ll -||")
  for spec in "${specs[@]}"; do
    IFS='|' read -r name a b op limit <<<"$spec"
    rs=$(ratio "$(median <<<"${bw["$a seqread"]}")" "$(median <<<"${bw["$b seqread"]}")")
    rr=$(ratio "$(median <<<"${bw["$a randread"]}")" "$(median <<<"${bw["$b randread"]}")")
    if [ -n "$op" ]; then
      goal="$op $limit"
      printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$goal" "$rs" "$(meets "$rs" "$op" "$limit")" \
        "$rr" "$(meets "$rr" "$op" "$limit")"
    else
      printf '| %s | - | %s | | %s | |\n' "$name" "$rs" "$rr"
    fi
  done
}

report_sweep() {
  local b v w
  echo "| block size | cold rand IOPS | warm rand IOPS | cold seq MiB/s | warm seq MiB/s" \
    "| cold rand / slowfs | cold seq / slowfs | warm rand / passthrough_ll" \
    "| warm seq / passthrough_ll | slow-store MiB per cold rand run |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  printf '| slowfs | %s | | %s | | | | | | |\n' "$(med "slowfs - randread")" "$(med "slowfs - seqread")"
  printf '| passthrough_ll | | %s | | %s | | | | | |\n' "$(med "passthrough_ll - randread")" \
    "$(med "passthrough_ll - seqread")"
  for b in "${sweep_list[@]}"; do
    v="cachefs@$b"
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$b" \
      "$(med "$v cold randread")" "$(med "$v warm randread")" \
      "$(med "$v cold seqread")" "$(med "$v warm seqread")" \
      "$(ratio "$(median <<<"${bw["$v cold randread"]}")" "$(median <<<"${bw["slowfs - randread"]}")")" \
      "$(ratio "$(median <<<"${bw["$v cold seqread"]}")" "$(median <<<"${bw["slowfs - seqread"]}")")" \
      "$(ratio "$(median <<<"${bw["$v warm randread"]}")" \
        "$(median <<<"${bw["passthrough_ll - randread"]}")")" \
      "$(ratio "$(median <<<"${bw["$v warm seqread"]}")" \
        "$(median <<<"${bw["passthrough_ll - seqread"]}")")" \
      "$(median <<<"${slowmib["$v cold randread"]}")"
  done
}

report_runs() {
  echo "Every run, in run order (MiB/s for seq read, IOPS for rand read), and the MiB and"
  echo "READ requests the slow store served during each:"
  echo
  echo "| path | phase | workload | runs | slow-store MiB | slow-store READs |"
  echo "|---|---|---|---|---|---|"
  local v p w key
  for v in "${variants[@]}"; do
    for p in - cold warm; do
      for w in seqread randread; do
        key="$v $p $w"
        [ -n "${bw[$key]:-}" ] || continue
        printf '| %s | %s | %s | %s | %s | %s |\n' "$v" "$p" "${label[$w]}" "$(per_run "$key")" \
          "${slowmib[$key]% }" "${slowreqs[$key]% }"
      done
    done
  done
}

report() {
  if [ "$sweep" -eq 1 ]; then
    echo "## cachefs block-size sweep"
  else
    echo "## cachefs block cache: cold and warm reads"
  fi
  echo
  report_header
  echo
  if [ "$sweep" -eq 1 ]; then report_sweep; else report_comparison; fi
  echo
  echo "Ratios are of the median bandwidths; W is the benchmark's work directory."
  echo
  report_runs
}

report
if [ -n "$out" ]; then
  report >"$out" || die "cannot write $out"
  log "wrote $out"
fi
