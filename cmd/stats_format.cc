#include "cmd/stats_format.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string_view>

namespace cachefs {
namespace {

JsonValue Ratio(uint64_t hits, uint64_t misses) {
  if (hits + misses == 0) return JsonValue();
  return static_cast<double>(hits) / static_cast<double>(hits + misses);
}

double Micros(uint64_t ns) { return static_cast<double>(ns) / 1000.0; }

JsonValue Latency(const LatencySummary& l) {
  JsonValue out = JsonValue::MakeObject();
  out.Set("count", l.count);
  out.Set("sum_us", Micros(l.sum_ns));
  out.Set("p50_us", l.count > 0 ? JsonValue(Micros(l.p50_ns)) : JsonValue());
  out.Set("p99_us", l.count > 0 ? JsonValue(Micros(l.p99_ns)) : JsonValue());
  return out;
}

}  // namespace

// clang-format off
// One line per field: CACHEFS_STAT(member of EngineStats, unit, kind, help).
#define CACHEFS_STAT(field, unit, kind, help) \
  StatField{#field, unit, StatKind::kind, help, \
            [](const EngineStats& s) { return JsonValue(s.field); }}
// A counter that is also a member of PersistentCounters (EngineStats::totals).
#define CACHEFS_PERSISTENT(field, unit, help) \
  StatField{#field, unit, StatKind::kCounter, help, \
            [](const EngineStats& s) { return JsonValue(s.field); }, nullptr, nullptr, \
            [](const EngineStats& s) { return JsonValue(s.totals.field); }}
// A LatencySummary member.
#define CACHEFS_LATENCY(field, help) \
  StatField{#field, "us", StatKind::kLatency, help, \
            [](const EngineStats& s) { return Latency(s.field); }}
// A ratio hits / (hits + misses) of two counter members.
#define CACHEFS_RATIO(name, hits, misses, help) \
  StatField{#name, "ratio", StatKind::kGauge, help, \
            [](const EngineStats& s) { return Ratio(s.hits, s.misses); }, #hits, #misses}

const std::vector<StatField>& StatFields() {
  static const std::vector<StatField> fields = {
      CACHEFS_PERSISTENT(read_hits, "blocks", "Blocks read from the cache"),
      CACHEFS_PERSISTENT(read_misses, "blocks", "Blocks fetched from SOURCE on a read"),
      CACHEFS_STAT(fetch_waits, "reads", kCounter, "Reads that waited for another's fetch"),
      CACHEFS_STAT(readahead_blocks, "blocks", kCounter, "Blocks fetched ahead of a sequential reader"),
      CACHEFS_STAT(readahead_dropped, "blocks", kCounter,
                   "Blocks fetched ahead, not cached, and let go before a reader took them"),
      CACHEFS_STAT(readahead_kept, "blocks", kGauge,
                   "Blocks fetched ahead, not cached, held in memory for their reader"),
      CACHEFS_STAT(promotions, "blocks", kCounter, "Blocks placed in the cache by a read miss or readahead"),
      CACHEFS_PERSISTENT(bytes_from_cache, "bytes", "Bytes read from the cache"),
      CACHEFS_PERSISTENT(bytes_from_source, "bytes", "Bytes fetched from SOURCE"),
      CACHEFS_STAT(crc_errors, "blocks", kCounter, "Cached blocks that failed their CRC check"),
      CACHEFS_STAT(evictions, "blocks", kCounter, "Blocks evicted to make room"),
      CACHEFS_STAT(invalidations, "files", kCounter, "Files whose blocks were dropped for a change in SOURCE"),
      CACHEFS_PERSISTENT(write_hits, "blocks", "Block writes into the cache that found the block cached"),
      CACHEFS_PERSISTENT(write_misses, "blocks", "Block writes into the cache of a block not cached"),
      CACHEFS_STAT(blocks_dirty, "blocks", kGauge, "Blocks not yet written back to SOURCE"),
      CACHEFS_STAT(dirty_bytes, "bytes", kGauge, "Dirty sub-blocks times 4 KiB"),
      CACHEFS_STAT(writeback_queue, "blocks", kGauge, "Dirty blocks waiting to be written back"),
      CACHEFS_STAT(writeback_in_flight, "blocks", kGauge, "Dirty blocks being written back now"),
      CACHEFS_PERSISTENT(bytes_written_back, "bytes", "Bytes written back to SOURCE"),
      CACHEFS_STAT(writeback_errors, "attempts", kCounter, "Failed writeback attempts (retried)"),
      CACHEFS_STAT(writeback_retries, "attempts", kCounter, "Writeback attempts on a file whose last attempt failed"),
      CACHEFS_STAT(writeback_writes, "writes", kCounter, "Writes to SOURCE by the writeback (adjacent dirty runs coalesced)"),
      CACHEFS_STAT(writeback_timeouts, "calls", kCounter, "Writeback writes and syncs of SOURCE that timed out"),
      CACHEFS_STAT(writeback_failing, "files", kGauge, "Files whose writeback fails now (retried with backoff)"),
      CACHEFS_STAT(conflicts, "files", kCounter, "Files changed outside while they had dirty data"),
      CACHEFS_STAT(persists, "syncs", kCounter, "Persists of the store and syncs of the metadata"),
      CACHEFS_STAT(not_admitted, "blocks", kCounter,
                   "Read misses served uncached because the policy did not admit them"),
      CACHEFS_STAT(bypassed, "blocks", kCounter,
                   "Blocks of long sequential streams or big files served uncached"),
      CACHEFS_STAT(warmed, "blocks", kCounter, "Blocks fetched into the cache by cachefsctl warm"),
      CACHEFS_STAT(write_through_fallbacks, "blocks", kCounter,
                   "Block writes (writeback) that found the cache full and went to SOURCE"),
      CACHEFS_STAT(log_wraps, "wraps", kCounter, "Times the append cursor wrapped around the store"),
      CACHEFS_STAT(segments_cleaned, "segments", kCounter, "Segments emptied by the garbage collector"),
      CACHEFS_STAT(gc_moved_blocks, "blocks", kCounter, "Dirty or pinned blocks the garbage collector moved"),
      CACHEFS_STAT(gc_dropped_blocks, "blocks", kCounter, "Clean blocks the garbage collector dropped"),
      CACHEFS_STAT(segments, "segments", kGauge, "Segments of the store"),
      CACHEFS_STAT(segments_empty, "segments", kGauge, "Wholly free segments left for the append cursor"),
      CACHEFS_STAT(blocks_cached, "blocks", kGauge, "Blocks in the cache"),
      CACHEFS_STAT(blocks_pinned, "blocks", kGauge, "Cached blocks of pinned files (never evicted)"),
      CACHEFS_STAT(slots, "blocks", kGauge, "Blocks the cache can hold"),
      CACHEFS_STAT(cache_used, "bytes", kGauge, "Store space of the cached blocks (blocks_cached x block_size)"),
      CACHEFS_STAT(cache_size, "bytes", kGauge, "Store space for cached blocks (slots x block_size)"),
      CACHEFS_STAT(block_size, "bytes", kGauge, "Size of a cache block"),
      CACHEFS_STAT(index_memory, "bytes", kGauge, "RAM of the block index and the policy"),
      CACHEFS_LATENCY(read_hit_latency, "Time of reads served wholly from the cache, since mount"),
      CACHEFS_LATENCY(read_miss_latency, "Time of reads that needed SOURCE, since mount"),
      CACHEFS_LATENCY(write_latency, "Time of writes into the cache (write through: SOURCE's write too), since mount"),
      CACHEFS_RATIO(read_hit_ratio, read_hits, read_misses, "read_hits / (read_hits + read_misses) since mount"),
      CACHEFS_RATIO(write_hit_ratio, write_hits, write_misses, "write_hits / (write_hits + write_misses) since mount"),
  };
  return fields;
}
// clang-format on

#undef CACHEFS_STAT
#undef CACHEFS_PERSISTENT
#undef CACHEFS_LATENCY
#undef CACHEFS_RATIO

JsonValue StatsToJson(const EngineStats& stats) {
  JsonValue out = JsonValue::MakeObject();
  for (const StatField& f : StatFields()) out.Set(f.name, f.get(stats));
  return out;
}

JsonValue TotalsToJson(const EngineStats& stats) {
  JsonValue out = JsonValue::MakeObject();
  for (const StatField& f : StatFields()) {
    if (f.total != nullptr) out.Set(f.name, f.total(stats));
  }
  for (const StatField& f : StatFields()) {
    if (f.ratio_hits == nullptr) continue;
    uint64_t hits = 0;
    uint64_t misses = 0;
    const JsonValue* h = out.Find(f.ratio_hits);
    const JsonValue* m = out.Find(f.ratio_misses);
    if (h != nullptr && m != nullptr && h->as_uint64(&hits) && m->as_uint64(&misses)) {
      out.Set(f.name, Ratio(hits, misses));
    }
  }
  return out;
}

std::string PrometheusName(const StatField& field) {
  std::string name = std::string("cachefs_") + field.name;
  if (field.kind == StatKind::kLatency) return name + "_seconds";
  if (std::string_view(field.unit) == "bytes" && name.find("bytes") == std::string::npos) {
    name += "_bytes";
  }
  if (field.kind == StatKind::kCounter) name += "_total";
  return name;
}

std::string HumanBytes(double bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  size_t u = 0;
  double v = bytes;
  while (std::fabs(v) >= 1024 && u + 1 < std::size(kUnits)) {
    v /= 1024;
    ++u;
  }
  char buf[64];
  if (u == 0) {
    std::snprintf(buf, sizeof(buf), "%.0f B", v);
  } else {
    std::snprintf(buf, sizeof(buf), "%.1f %s", v, kUnits[u]);
  }
  return buf;
}

namespace {

std::string Fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", decimals, v);
  return buf;
}

std::string Percent(double ratio) { return Fixed(ratio * 100, 1) + "%"; }

const std::string* StringMember(const JsonValue& obj, std::string_view key) {
  const JsonValue* v = obj.Find(key);
  return v != nullptr ? v->as_string() : nullptr;
}

std::string Text(const JsonValue& obj, std::string_view key) {
  const std::string* s = StringMember(obj, key);
  return s != nullptr ? *s : "?";
}

bool Number(const JsonValue& obj, std::string_view key, double* out) {
  const JsonValue* v = obj.Find(key);
  return v != nullptr && v->as_double(out);
}

// A time for people: microseconds below 1 ms, then ms, then s.
std::string ShowMicros(double us) {
  if (us < 1000) return Fixed(us, 1) + " us";
  if (us < 1e6) return Fixed(us / 1e3, 2) + " ms";
  return Fixed(us / 1e6, 2) + " s";
}

// A latency object's p50 and p99 ("-" before the first request).
std::string ShowLatency(const JsonValue& v) {
  double p50 = 0;
  double p99 = 0;
  if (!Number(v, "p50_us", &p50) || !Number(v, "p99_us", &p99)) return "-";
  return "p50 " + ShowMicros(p50) + ", p99 " + ShowMicros(p99);
}

// A value with its unit, for people.
std::string ShowValue(const JsonValue& v, std::string_view unit) {
  if (v.is_null()) return "-";
  if (v.is_object()) return ShowLatency(v);
  if (unit == "ratio") {
    double d = 0;
    return v.as_double(&d) ? Percent(d) : v.Serialize();
  }
  if (unit == "bytes") {
    uint64_t n = 0;
    if (v.as_uint64(&n) && n >= 1024)
      return HumanBytes(static_cast<double>(n)) + " (" + std::to_string(n) + ")";
    double d = 0;
    return v.as_double(&d) ? HumanBytes(d) : v.Serialize();
  }
  return v.Serialize() + " " + std::string(unit);
}

// The change of a counter per second, for people.
std::string ShowRate(double per_second, std::string_view unit) {
  if (unit == "bytes") return HumanBytes(per_second) + "/s";
  return Fixed(per_second, 1) + "/s";
}

std::string PadRight(std::string s, size_t width) {
  if (s.size() < width) s.append(width - s.size(), ' ');
  return s;
}

std::string Duration(double seconds) {
  auto total = static_cast<uint64_t>(seconds);
  uint64_t d = total / 86400;
  uint64_t h = total / 3600 % 24;
  uint64_t m = total / 60 % 60;
  uint64_t s = total % 60;
  std::string out;
  if (d > 0) out += std::to_string(d) + "d";
  if (d > 0 || h > 0) out += std::to_string(h) + "h";
  if (d > 0 || h > 0 || m > 0) out += std::to_string(m) + "m";
  return out + std::to_string(s) + "s";
}

// The interval column of one row, or "" when it has none.
std::string IntervalCell(const StatField& f, const JsonValue& now, const JsonValue& before,
                         double interval_s) {
  if (f.kind == StatKind::kLatency) {
    const JsonValue* a = now.Find(f.name);
    const JsonValue* b = before.Find(f.name);
    double c1 = 0, c0 = 0, s1 = 0, s0 = 0;
    if (a == nullptr || b == nullptr || !Number(*a, "count", &c1) || !Number(*b, "count", &c0) ||
        !Number(*a, "sum_us", &s1) || !Number(*b, "sum_us", &s0)) {
      return "";
    }
    if (c1 <= c0) return "-";
    std::string cell = "mean " + ShowMicros((s1 - s0) / (c1 - c0));
    if (interval_s > 0) cell += ", " + ShowRate((c1 - c0) / interval_s, "requests");
    return cell;
  }
  if (f.kind == StatKind::kCounter && interval_s > 0) {
    double a = 0;
    double b = 0;
    if (!Number(now, f.name, &a) || !Number(before, f.name, &b)) return "";
    return ShowRate((a - b) / interval_s, f.unit);
  }
  if (f.ratio_hits != nullptr) {
    double h1 = 0, h0 = 0, m1 = 0, m0 = 0;
    if (!Number(now, f.ratio_hits, &h1) || !Number(before, f.ratio_hits, &h0) ||
        !Number(now, f.ratio_misses, &m1) || !Number(before, f.ratio_misses, &m0)) {
      return "";
    }
    double total = (h1 - h0) + (m1 - m0);
    return total > 0 ? Percent((h1 - h0) / total) : "-";
  }
  return "";
}

// A Prometheus label value: backslash, double quote and newline escaped.
std::string LabelValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// A Prometheus sample value: integers exactly, NaN for null.
std::string SampleValue(const JsonValue& v) {
  uint64_t u = 0;
  if (v.as_uint64(&u)) return std::to_string(u);
  double d = 0;
  if (!v.as_double(&d)) return "NaN";
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "+Inf" : "-Inf";
  return v.Serialize();
}

const JsonValue& MemberOrEmpty(const JsonValue& obj, std::string_view key) {
  static const JsonValue kEmpty = JsonValue::MakeObject();
  const JsonValue* v = obj.Find(key);
  return v != nullptr && v->is_object() ? *v : kEmpty;
}

}  // namespace

std::string FormatStatsTable(const JsonValue& reply, const JsonValue* previous, double interval_s) {
  const JsonValue& mount = MemberOrEmpty(reply, "mount");
  const JsonValue& stats = MemberOrEmpty(reply, "stats");
  const JsonValue* totals_member = reply.Find("totals");
  const bool totals = totals_member != nullptr && totals_member->is_object();
  std::string out = Text(mount, "mount_point") + ": source " + Text(mount, "source") + ", cache " +
                    Text(mount, "cache_dir") + "\n";
  out += "mode " + Text(mount, "mode");
  double n = 0;
  if (Number(mount, "block_size", &n)) out += ", block size " + HumanBytes(n);
  if (Number(mount, "cache_size", &n)) out += ", cache size " + HumanBytes(n);
  out += ", " + Text(mount, "state");
  if (Number(mount, "uptime_seconds", &n)) out += ", up " + Duration(n);
  out += "\n\n";
  const bool rates = previous != nullptr;
  const JsonValue& before = rates ? MemberOrEmpty(*previous, "stats") : stats;
  constexpr size_t kNameWidth = 20;
  constexpr size_t kValueWidth = 30;
  // Cells left to right; trailing blanks go.
  auto row = [&](const std::string& name, const std::string& value, const std::string& total,
                 const std::string& last) {
    // A name longer than the column still gets a blank after it.
    std::string line = PadRight(name + " ", kNameWidth) + PadRight(value, kValueWidth);
    if (totals) line += PadRight(total, kValueWidth);
    if (rates) line += last;
    while (!line.empty() && line.back() == ' ') line.pop_back();
    return line + "\n";
  };
  out += row("FIELD", "VALUE", "TOTAL", "LAST " + Fixed(interval_s, 1) + " s");
  for (const StatField& f : StatFields()) {
    const JsonValue* v = stats.Find(f.name);
    if (v == nullptr) continue;  // a daemon that does not know the field yet
    const JsonValue* t = totals ? totals_member->Find(f.name) : nullptr;
    out += row(f.name, ShowValue(*v, f.unit), t != nullptr ? ShowValue(*t, f.unit) : "",
               rates ? IntervalCell(f, stats, before, interval_s) : "");
  }
  return out;
}

std::string FormatStatsPrometheus(const JsonValue& reply) {
  const JsonValue& mount = MemberOrEmpty(reply, "mount");
  const JsonValue& stats = MemberOrEmpty(reply, "stats");
  const JsonValue& totals = MemberOrEmpty(reply, "totals");
  const std::string label = "mount=\"" + LabelValue(Text(mount, "mount_point")) + "\"";
  std::string out;
  auto header = [&out](const std::string& name, const std::string& help, const char* type) {
    out.append("# HELP ").append(name).append(" ").append(help).append(".\n");
    out.append("# TYPE ").append(name).append(" ").append(type).append("\n");
  };
  auto sample = [&out](const std::string& name, const std::string& labels,
                       const std::string& value) {
    out.append(name).append("{").append(labels).append("} ").append(value).append("\n");
  };
  header("cachefs_info", "The mount and its cache; the value is always 1", "gauge");
  sample("cachefs_info",
         label + ",source=\"" + LabelValue(Text(mount, "source")) + "\",cache_dir=\"" +
             LabelValue(Text(mount, "cache_dir")) + "\",mode=\"" + LabelValue(Text(mount, "mode")) +
             "\"",
         "1");
  for (const StatField& f : StatFields()) {
    const JsonValue* v = stats.Find(f.name);
    if (v == nullptr) continue;
    const std::string name = PrometheusName(f);
    if (f.kind == StatKind::kLatency) {
      // A summary in seconds, the exposition format's base unit.
      header(name, f.help, "summary");
      auto seconds = [v](const char* member) {
        double us = 0;
        return Number(*v, member, &us) ? SampleValue(JsonValue(us / 1e6)) : "NaN";
      };
      sample(name, label + ",quantile=\"0.5\"", seconds("p50_us"));
      sample(name, label + ",quantile=\"0.99\"", seconds("p99_us"));
      sample(name + "_sum", label, seconds("sum_us"));
      const JsonValue* count = v->Find("count");
      sample(name + "_count", label, count != nullptr ? SampleValue(*count) : "NaN");
      continue;
    }
    header(name, f.help, f.kind == StatKind::kCounter ? "counter" : "gauge");
    sample(name, label, SampleValue(*v));
  }
  // The persistent counters: over every mount of the cache, so they do not
  // restart at a remount (only after a crash they may lose the last second).
  for (const StatField& f : StatFields()) {
    const JsonValue* v = totals.Find(f.name);
    if (v == nullptr || f.kind != StatKind::kCounter) continue;
    std::string name = PrometheusName(f);
    name.insert(std::string("cachefs_").size(), "lifetime_");
    header(name, std::string(f.help) + ", over every mount of the cache", "counter");
    sample(name, label, SampleValue(*v));
  }
  return out;
}

std::string Columns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
}

}  // namespace cachefs
