#include "cmd/stats_format.h"

#include <gtest/gtest.h>

#include <cstddef>
#include <regex>
#include <set>
#include <sstream>
#include <string>

namespace cachefs {
namespace {

// The number of members of an aggregate: the most initialisers it takes.
struct AnyMember {
  template <typename T>
  operator T() const;  // NOLINT(google-explicit-constructor): only ever unevaluated
};
template <typename T, typename... A>
constexpr size_t CountMembers() {
  if constexpr (requires { T{A{}..., AnyMember{}}; }) {
    return CountMembers<T, A..., AnyMember>();
  } else {
    return sizeof...(A);
  }
}

// A new member of EngineStats must be shown: one line in StatFields().
TEST(StatsFormat, EveryEngineStatsMemberHasAField) {
  size_t members = 0;
  size_t persistent = 0;
  for (const StatField& f : StatFields()) {
    if (f.ratio_hits == nullptr) ++members;
    if (f.total != nullptr) ++persistent;
  }
  // And `totals`, shown through the fields that have a total.
  EXPECT_EQ(members + 1, CountMembers<EngineStats>())
      << "EngineStats gained or lost a member: add or remove its line in cmd/stats_format.cc";
  EXPECT_EQ(persistent, CountMembers<PersistentCounters>())
      << "a persistent counter without its CACHEFS_PERSISTENT line in cmd/stats_format.cc";
}

EngineStats Sample() {
  EngineStats s;
  s.read_hits = 30;
  s.read_misses = 10;
  s.write_hits = 3;
  s.write_misses = 1;
  s.read_hit_latency = LatencySummary{4, 60400, 15100, 25000};
  s.read_miss_latency = LatencySummary{2, 5000000, 2000000, 2500000};
  s.totals.read_hits = 1030;
  s.totals.read_misses = 10;
  s.totals.write_hits = 3;
  s.totals.write_misses = 1;
  s.totals.bytes_from_cache = 5ull << 30;
  s.fetch_waits = 2;
  s.bytes_from_cache = 30ull << 16;
  s.bytes_from_source = 10ull << 16;
  s.crc_errors = 1;
  s.evictions = 4;
  s.invalidations = 5;
  s.blocks_cached = 40;
  s.slots = 1024;
  s.block_size = 65536;
  s.index_memory = 123456;
  return s;
}

TEST(StatsFormat, JsonHasEveryFieldInOrder) {
  JsonValue j = StatsToJson(Sample());
  ASSERT_EQ(j.members().size(), StatFields().size());
  for (size_t i = 0; i < StatFields().size(); ++i) {
    EXPECT_EQ(j.members()[i].first, StatFields()[i].name);
  }
  const EngineStats in = Sample();
  EXPECT_EQ(j.Find("read_hits")->Serialize(), "30");
  EXPECT_EQ(j.Find("read_misses")->Serialize(), "10");
  EXPECT_EQ(j.Find("fetch_waits")->Serialize(), "2");
  EXPECT_EQ(j.Find("bytes_from_cache")->Serialize(), std::to_string(in.bytes_from_cache));
  EXPECT_EQ(j.Find("bytes_from_source")->Serialize(), std::to_string(in.bytes_from_source));
  EXPECT_EQ(j.Find("crc_errors")->Serialize(), "1");
  EXPECT_EQ(j.Find("evictions")->Serialize(), "4");
  EXPECT_EQ(j.Find("invalidations")->Serialize(), "5");
  EXPECT_EQ(j.Find("blocks_cached")->Serialize(), "40");
  EXPECT_EQ(j.Find("slots")->Serialize(), "1024");
  EXPECT_EQ(j.Find("block_size")->Serialize(), "65536");
  EXPECT_EQ(j.Find("index_memory")->Serialize(), "123456");
  EXPECT_EQ(j.Find("read_hit_ratio")->Serialize(), "0.75");
  EXPECT_EQ(j.Find("write_hit_ratio")->Serialize(), "0.75");
  EXPECT_EQ(j.Find("read_hit_latency")->Serialize(),
            R"({"count":4,"sum_us":60.4,"p50_us":15.1,"p99_us":25})");
  // Before the first write: a count of 0 and no percentiles.
  EXPECT_EQ(j.Find("write_latency")->Serialize(),
            R"({"count":0,"sum_us":0,"p50_us":null,"p99_us":null})");
  bool ratios = false;
  for (const auto& [name, value] : j.members()) {
    const bool ratio = name.size() > 6 && name.substr(name.size() - 6) == "_ratio";
    EXPECT_FALSE(ratios && !ratio) << name << ": derived fields come last";
    ratios = ratios || ratio;
  }
}

TEST(StatsFormat, TotalsHaveThePersistentCountersAndTheirRatios) {
  JsonValue t = TotalsToJson(Sample());
  std::vector<std::string> names;
  for (const auto& [name, value] : t.members()) names.push_back(name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"read_hits", "read_misses", "bytes_from_cache",
                                      "bytes_from_source", "write_hits", "write_misses",
                                      "bytes_written_back", "read_hit_ratio", "write_hit_ratio"}));
  EXPECT_EQ(t.Find("read_hits")->Serialize(), "1030");
  EXPECT_EQ(t.Find("bytes_from_cache")->Serialize(), std::to_string(5ull << 30));
  EXPECT_EQ(t.Find("read_hit_ratio")->Serialize(), "0.9903846153846154");
  EXPECT_TRUE(TotalsToJson(EngineStats{}).Find("read_hit_ratio")->is_null());
}

TEST(StatsFormat, RatioIsNullBeforeAnyRead) {
  JsonValue j = StatsToJson(EngineStats{});
  ASSERT_NE(j.Find("read_hit_ratio"), nullptr);
  EXPECT_TRUE(j.Find("read_hit_ratio")->is_null());
}

TEST(StatsFormat, PrometheusNamesFollowTheConventions) {
  std::set<std::string> names;
  for (const StatField& f : StatFields()) {
    std::string n = PrometheusName(f);
    EXPECT_TRUE(std::regex_match(n, std::regex("cachefs_[a-z_]+"))) << n;
    EXPECT_EQ(f.kind == StatKind::kCounter, n.size() > 6 && n.substr(n.size() - 6) == "_total")
        << n;
    if (std::string(f.unit) == "bytes") {
      EXPECT_NE(n.find("bytes"), std::string::npos) << n;
    }
    EXPECT_TRUE(names.insert(n).second) << "twice: " << n;
  }
  EXPECT_TRUE(names.count("cachefs_read_hits_total"));
  EXPECT_TRUE(names.count("cachefs_bytes_from_cache_total"));
  EXPECT_TRUE(names.count("cachefs_block_size_bytes"));
  EXPECT_TRUE(names.count("cachefs_read_hit_ratio"));
}

JsonValue Reply(const EngineStats& s, const std::string& mount_point = "/mnt/x",
                bool totals = false) {
  JsonValue mount = JsonValue::MakeObject();
  mount.Set("mount_point", mount_point);
  mount.Set("source", "/slow");
  mount.Set("cache_dir", "/var/cache/cachefs/slow");
  mount.Set("mode", "writethrough");
  mount.Set("block_size", 65536);
  mount.Set("cache_size", 64ull << 20);
  mount.Set("state", "running");
  mount.Set("uptime_seconds", 3725.5);
  JsonValue r = JsonValue::MakeObject();
  r.Set("version", 1);
  r.Set("mount", mount);
  r.Set("stats", StatsToJson(s));
  if (totals) r.Set("totals", TotalsToJson(s));
  return r;
}

// The text exposition format, line by line: HELP and TYPE before the first
// sample of a metric, samples as name{labels} value.
TEST(StatsFormat, PrometheusTextParses) {
  const std::string text =
      FormatStatsPrometheus(Reply(Sample(), "/mnt/we\"ird\\ na\nme", /*totals=*/true));
  const std::regex help(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) [^\n]+)");
  const std::regex type(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary))");
  const std::regex label(R"([a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*")");
  const std::regex sample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*",?)+)\} )"
      R"(([-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|NaN|Inf)))");
  std::istringstream in(text);
  std::string line;
  std::set<std::string> helped, typed, sampled, summaries;
  size_t samples = 0;
  while (std::getline(in, line)) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      helped.insert(m[1]);
    } else if (std::regex_match(line, m, type)) {
      EXPECT_TRUE(helped.count(m[1])) << "TYPE before HELP: " << line;
      EXPECT_TRUE(typed.insert(m[1]).second) << "TYPE twice: " << line;
      if (m[2] == "summary") summaries.insert(m[1]);
    } else if (std::regex_match(line, m, sample)) {
      // A summary's samples: NAME{...,quantile="Q"}, NAME_sum, NAME_count.
      std::string family = m[1];
      for (const char* suffix : {"_sum", "_count"}) {
        const std::string sfx = suffix;
        if (family.size() > sfx.size() &&
            family.compare(family.size() - sfx.size(), sfx.size(), sfx) == 0 &&
            summaries.count(family.substr(0, family.size() - sfx.size()))) {
          family.resize(family.size() - sfx.size());
        }
      }
      EXPECT_TRUE(typed.count(family)) << "sample before its TYPE: " << line;
      EXPECT_TRUE(sampled.insert(std::string(m[1]) + "{" + std::string(m[2])).second)
          << "sampled twice: " << line;
      if (summaries.count(m[1])) {
        EXPECT_NE(std::string(m[2]).find(",quantile=\""), std::string::npos) << line;
      }
      std::string labels = m[2];
      EXPECT_EQ(labels.rfind(R"(mount="/mnt/we\"ird\\ na\nme")", 0), 0u) << line;
      ++samples;
    } else {
      ADD_FAILURE() << "not exposition format: " << line;
    }
  }
  size_t want = 1;  // cachefs_info
  for (const StatField& f : StatFields()) {
    want += f.kind == StatKind::kLatency ? 4 : 1;  // quantiles 0.5 and 0.99, _sum, _count
    if (f.total != nullptr) ++want;                // cachefs_lifetime_NAME_total
  }
  EXPECT_EQ(samples, want);
  EXPECT_NE(text.find("cachefs_read_hits_total{mount=\"/mnt/we\\\"ird\\\\ na\\nme\"} 30\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("cachefs_read_hit_ratio{mount=\"/mnt/we\\\"ird\\\\ na\\nme\"} 0.75\n"),
            std::string::npos);
  EXPECT_NE(text.find(",mode=\"writethrough\"} 1\n"), std::string::npos);
  const std::string mount = R"(mount="/mnt/we\"ird\\ na\nme")";
  EXPECT_NE(text.find("# TYPE cachefs_read_hit_latency_seconds summary\n"
                      "cachefs_read_hit_latency_seconds{" +
                      mount +
                      ",quantile=\"0.5\"} 1.51e-05\n"
                      "cachefs_read_hit_latency_seconds{" +
                      mount +
                      ",quantile=\"0.99\"} 2.5e-05\n"
                      "cachefs_read_hit_latency_seconds_sum{" +
                      mount +
                      "} 6.04e-05\n"
                      "cachefs_read_hit_latency_seconds_count{" +
                      mount + "} 4\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("cachefs_write_latency_seconds{" + mount + ",quantile=\"0.99\"} NaN\n"),
            std::string::npos);
  EXPECT_NE(text.find("# TYPE cachefs_lifetime_read_hits_total counter\n"
                      "cachefs_lifetime_read_hits_total{" +
                      mount + "} 1030\n"),
            std::string::npos)
      << text;
  EXPECT_EQ(text.find("lifetime_read_hit_ratio"), std::string::npos) << "only counters";
  // Before any read the ratio has no value: NaN, which the format allows.
  EXPECT_NE(FormatStatsPrometheus(Reply(EngineStats{}))
                .find("cachefs_read_hit_ratio{mount=\"/mnt/x\"} NaN"),
            std::string::npos);
}

TEST(StatsFormat, TableShowsEveryFieldWithItsUnit) {
  const std::string t = FormatStatsTable(Reply(Sample()));
  EXPECT_EQ(t.rfind("/mnt/x: source /slow, cache /var/cache/cachefs/slow\n"
                    "mode writethrough, block size 64.0 KiB, cache size 64.0 MiB, running, "
                    "up 1h2m5s\n",
                    0),
            0u)
      << t;
  for (const StatField& f : StatFields()) {
    EXPECT_NE(t.find(std::string("\n") + f.name + " "), std::string::npos) << f.name << "\n" << t;
  }
  EXPECT_NE(t.find("read_hits           30 blocks\n"), std::string::npos) << t;
  EXPECT_NE(t.find("bytes_from_cache    1.9 MiB (1966080)\n"), std::string::npos) << t;
  EXPECT_NE(t.find("read_hit_ratio      75.0%\n"), std::string::npos) << t;
  EXPECT_NE(FormatStatsTable(Reply(EngineStats{})).find("read_hit_ratio      -\n"),
            std::string::npos);
  EXPECT_NE(t.find("\nread_hit_latency    p50 15.1 us, p99 25.0 us\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\nread_miss_latency   p50 2.00 ms, p99 2.50 ms\n"), std::string::npos) << t;
  EXPECT_NE(t.find("\nwrite_latency       -\n"), std::string::npos) << t;
  EXPECT_EQ(t.find("TOTAL"), std::string::npos) << "no totals in the reply, no column";
}

TEST(StatsFormat, TableShowsTotalsInTheirOwnColumn) {
  const std::string t = FormatStatsTable(Reply(Sample(), "/mnt/x", /*totals=*/true));
  EXPECT_NE(t.find("\nFIELD               VALUE                         TOTAL\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("\nread_hits           30 blocks                     1030 blocks\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("\nbytes_from_cache    1.9 MiB (1966080)             5.0 GiB (5368709120)\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("\nread_hit_ratio      75.0%                         99.0%\n"),
            std::string::npos)
      << t;
  EXPECT_NE(t.find("\nblocks_cached       40 blocks\n"), std::string::npos) << "no total: " << t;
  // With --watch, the interval comes last.
  JsonValue prev = Reply(Sample(), "/mnt/x", true);
  const std::string w = FormatStatsTable(prev, &prev, 1.0);
  EXPECT_NE(w.find("\nFIELD               VALUE                         TOTAL                  "
                   "       LAST 1.0 s\n"),
            std::string::npos)
      << w;
  EXPECT_TRUE(std::regex_search(w, std::regex(R"(\nread_hits +30 blocks +1030 blocks +0\.0/s\n)")))
      << w;
  EXPECT_TRUE(std::regex_search(w, std::regex(R"(\nevictions +4 blocks +0\.0/s\n)"))) << w;
}

TEST(StatsFormat, TableWithAnEarlierReplyShowsRatesOverTheInterval) {
  EngineStats before = Sample();
  EngineStats after = before;
  after.read_hits += 20;   // 10/s over 2 s
  after.read_misses += 0;  // all hits in the interval
  after.bytes_from_cache += 2ull << 20;
  after.blocks_cached += 7;           // a gauge: no rate
  after.read_hit_latency.count += 4;  // 2 requests/s, 80 us in all: 20 us each
  after.read_hit_latency.sum_ns += 80000;
  JsonValue prev = Reply(before);
  const std::string t = FormatStatsTable(Reply(after), &prev, 2.0);
  EXPECT_NE(t.find("LAST 2.0 s\n"), std::string::npos) << t;
  std::regex row_hits(R"(\nread_hits +50 blocks +10\.0/s\n)");
  std::regex row_bytes(R"(\nbytes_from_cache +[0-9.]+ MiB \([0-9]+\) +1\.0 MiB/s\n)");
  std::regex row_ratio(R"(\nread_hit_ratio +83\.3% +100\.0%\n)");
  std::regex row_gauge(R"(\nblocks_cached +47 blocks\n)");
  EXPECT_TRUE(std::regex_search(t, row_hits)) << t;
  EXPECT_TRUE(std::regex_search(t, row_bytes)) << t;
  EXPECT_TRUE(std::regex_search(t, row_ratio)) << t;
  EXPECT_TRUE(std::regex_search(t, row_gauge)) << t;
  std::regex row_latency(
      R"(\nread_hit_latency +p50 15\.1 us, p99 25\.0 us +mean 20\.0 us, 2\.0/s\n)");
  EXPECT_TRUE(std::regex_search(t, row_latency)) << t;
  // No reads at all in the interval: the interval ratio and mean are "-".
  const std::string idle = FormatStatsTable(prev, &prev, 1.0);
  EXPECT_TRUE(std::regex_search(idle, std::regex(R"(\nread_hit_ratio +75\.0% +-\n)"))) << idle;
  EXPECT_TRUE(std::regex_search(idle, std::regex(R"(\nread_hit_latency +p50 [^\n]+us +-\n)")))
      << idle;
}

TEST(StatsFormat, FieldsTheDaemonDoesNotSendAreLeftOut) {
  JsonValue r = Reply(Sample());
  JsonValue partial = JsonValue::MakeObject();
  partial.Set("read_hits", 1);
  r.Set("stats", partial);
  const std::string t = FormatStatsTable(r);
  EXPECT_NE(t.find("read_hits"), std::string::npos);
  EXPECT_EQ(t.find("read_misses"), std::string::npos);
  EXPECT_EQ(FormatStatsPrometheus(r).find("read_misses"), std::string::npos);
}

TEST(StatsFormat, HumanBytes) {
  EXPECT_EQ(HumanBytes(0), "0 B");
  EXPECT_EQ(HumanBytes(1023), "1023 B");
  EXPECT_EQ(HumanBytes(1024), "1.0 KiB");
  EXPECT_EQ(HumanBytes(1536), "1.5 KiB");
  EXPECT_EQ(HumanBytes(64 << 20), "64.0 MiB");
  EXPECT_EQ(HumanBytes(3.0 * (1ull << 40)), "3.0 TiB");
}

}  // namespace
}  // namespace cachefs
