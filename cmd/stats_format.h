// The counters of a mount (EngineStats) as the control protocol carries
// them and as cachefsctl shows them: a JSON object, a human table, the
// Prometheus text exposition format.
//
// One table (StatFields() in stats_format.cc) lists every field with its
// name, unit, kind and help text; the JSON member, the table row and the
// Prometheus metric of a field all come from its entry, so a new field of
// EngineStats is one line there. The daemon turns EngineStats into JSON
// (StatsToJson); the client formats what it received, so it needs no
// EngineStats of its own and shows whatever fields it knows of.
//
// A stats reply (docs/control.md, schema version 1) is an object with
// "version", "mount" (MountInfoJson of the daemon: mount_point, source,
// cache_dir, mode, block_size, cache_size, state, ...), "stats" (since
// mount) and "totals" (the persistent counters over every mount of the
// cache; absent from daemons that predate it).
//
// Thread-safety: pure functions over their arguments; the field table is
// immutable.
#pragma once

#include <string>
#include <vector>

#include "cache/engine.h"
#include "common/json.h"

namespace cachefs {

enum class StatKind {
  kCounter,  // only grows while mounted: rates over an interval make sense
  kGauge,    // a level that goes up and down
  // Request times since mount: a JSON object {"count", "sum_us", "p50_us",
  // "p99_us"} (percentiles null before the first request), a Prometheus
  // summary in seconds.
  kLatency,
};

struct StatField {
  const char* name;  // JSON member, table row; the Prometheus name derives from it
  const char* unit;  // "blocks", "bytes", "files", "reads", "syncs", ...; "ratio": 0 to 1
  StatKind kind;
  const char* help;
  JsonValue (*get)(const EngineStats&);
  // For a ratio: the counters it is hits / (hits + misses) of, so that
  // cachefsctl stats --watch can show it over the last interval too.
  const char* ratio_hits = nullptr;
  const char* ratio_misses = nullptr;
  // For a counter kept across mounts: its value over every mount
  // (EngineStats::totals), shown in "totals".
  JsonValue (*total)(const EngineStats&) = nullptr;
};

// Every field, in the order of the JSON object and the table.
const std::vector<StatField>& StatFields();

// {"read_hits": 12, ...}: every field of StatFields(), in order. A ratio
// with nothing to divide yet (no reads) is null.
JsonValue StatsToJson(const EngineStats& stats);
// {"read_hits": 1234, ...}: the fields that have a total, in order, with
// their totals over every mount; then each ratio whose two counters have
// totals, over those.
JsonValue TotalsToJson(const EngineStats& stats);

// The metric name of `field`: cachefs_NAME, plus _bytes for a byte count
// whose name does not say so, plus _total for a counter; cachefs_NAME_seconds
// for a latency.
std::string PrometheusName(const StatField& field);

// The human table of a stats reply: a header from "mount", then one row
// per known field of "stats" with its value and unit (a latency as p50 and
// p99), and, if the reply has "totals", a column with each field's total
// over every mount. With `previous` (an earlier reply of the same mount,
// `interval_s` seconds before), a last column shows each counter's rate per
// second over the interval, each ratio over the interval, and each
// latency's mean over the interval and requests per second.
std::string FormatStatsTable(const JsonValue& reply, const JsonValue* previous = nullptr,
                             double interval_s = 0);

// The Prometheus text exposition format of a stats reply: # HELP and # TYPE
// lines, then one sample per field labelled mount="MOUNT_POINT" (a latency:
// a summary with quantiles 0.5 and 0.99, _sum and _count), a
// cachefs_lifetime_NAME_total counter per total, and a cachefs_info sample
// (value 1) labelled with mount, source, cache_dir and mode.
std::string FormatStatsPrometheus(const JsonValue& reply);

// Bytes in binary units for people: "512 B", "64.0 KiB", "1.5 GiB".
std::string HumanBytes(double bytes);

// Rows as left-aligned columns, two spaces apart, no trailing blanks (the
// tables of cachefsctl).
std::string Columns(const std::vector<std::vector<std::string>>& rows);

}  // namespace cachefs
