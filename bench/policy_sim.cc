// policy_sim: replays block traces through every policy and prints their hit
// ratios beside Belady's optimum, as a Markdown table.
//
//   policy_sim [--cache BLOCKS] [--length ACCESSES] [--seed N]
//              [--traces NAME,NAME...] [--trace FILE]... [--memory]
//
// Each policy comes from MakePolicy() and is driven exactly as the engine
// drives it: a hit is Touch(); a miss asks Admit(hash, no free slot left), and
// when admitted takes a free slot or evicts Victim() (Remove()), then
// TrackAdmitted(). OPT evicts the cached block whose next use
// is farthest away, and does not cache a miss whose next use is farther than
// that of every cached block (or that is never used again).
//
// Built-in traces (sizes are multiples of the cache size C):
//   zipf-S        Zipf(S) over 10 C blocks, S in 0.6, 0.8, 0.99, 1.2
//   loop          sequential passes over 1.5 C blocks
//   hotset-scan   uniform reads over a hot set of 0.75 C blocks, and after
//                 every 4 C of them a full sequential scan of a 2 C file
//   mixed         half Zipf(0.9) over 4 C blocks, half 4 sequential streams
//                 that each read new files of 2 C blocks once
//   shift         Zipf(0.9) over 10 C blocks whose popular blocks move to
//                 other blocks every quarter of the trace
//   alternate     two hot sets of 0.8 C blocks, uniform reads, taking turns
//                 every 2 C reads (smq's known weak spot)
// A trace file has one access a line, "FILE_ID BLOCK_INDEX" (decimal), blank
// lines and '#' comments ignored. Everything is seeded: same flags, same
// table.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <queue>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache/policy.h"

namespace {

using cachefs::MakePolicy;
using cachefs::Policy;
using cachefs::PolicyNames;

constexpr uint32_t kNone = UINT32_MAX;

// splitmix64: small, fast and the same on every platform (the standard
// distributions are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), with a bias below n / 2^64.
  uint64_t Below(uint64_t n) { return Next() % n; }
  // Uniform in [0, 1).
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t state_;
};

// Ranks 0..n-1 with P(rank k) proportional to 1 / (k + 1)^s.
class Zipf {
 public:
  Zipf(uint64_t n, double s) : cdf_(n) {
    double sum = 0;
    for (uint64_t k = 0; k < n; ++k) {
      sum += 1.0 / std::pow(static_cast<double>(k + 1), s);
      cdf_[k] = sum;
    }
    for (double& c : cdf_) c /= sum;
  }
  uint64_t Sample(Rng& rng) const {
    auto it = std::upper_bound(cdf_.begin(), cdf_.end(), rng.Unit());
    return std::min<uint64_t>(it - cdf_.begin(), cdf_.size() - 1);
  }

 private:
  std::vector<double> cdf_;
};

struct Key {
  uint64_t file_id;
  uint64_t index;
};

// A trace with its keys numbered densely, so policies run over flat arrays.
struct Trace {
  std::string name;
  std::vector<uint32_t> ids;     // one per access
  std::vector<uint64_t> hashes;  // BlockKeyHash of each id
};

Trace Densify(std::string name, const std::vector<Key>& keys) {
  Trace t;
  t.name = std::move(name);
  t.ids.reserve(keys.size());
  std::unordered_map<uint64_t, std::unordered_map<uint64_t, uint32_t>> seen;
  for (const Key& k : keys) {
    auto [it, fresh] = seen[k.file_id].try_emplace(k.index, static_cast<uint32_t>(t.hashes.size()));
    if (fresh) t.hashes.push_back(cachefs::BlockKeyHash(k.file_id, k.index));
    t.ids.push_back(it->second);
  }
  return t;
}

// Block k of a region of popularity ranks, scattered over files so the keys
// look like blocks of many files.
Key RankKey(uint64_t base_file, uint64_t rank) { return {base_file + rank % 97, rank / 97}; }

std::vector<Key> ZipfTrace(uint64_t cache, uint64_t length, double s, Rng& rng) {
  Zipf zipf(10 * cache, s);
  std::vector<Key> keys;
  keys.reserve(length);
  for (uint64_t i = 0; i < length; ++i) keys.push_back(RankKey(1000, zipf.Sample(rng)));
  return keys;
}

std::vector<Key> LoopTrace(uint64_t cache, uint64_t length) {
  uint64_t n = cache * 3 / 2;
  std::vector<Key> keys;
  keys.reserve(length);
  for (uint64_t i = 0; i < length; ++i) keys.push_back({1, i % n});
  return keys;
}

std::vector<Key> HotsetScanTrace(uint64_t cache, uint64_t length, Rng& rng) {
  uint64_t hot = cache * 3 / 4;
  std::vector<Key> keys;
  keys.reserve(length + 4 * cache);
  while (keys.size() < length) {
    for (uint64_t i = 0; i < 4 * cache; ++i) keys.push_back({1, rng.Below(hot)});
    for (uint64_t i = 0; i < 2 * cache; ++i) keys.push_back({2, i});
  }
  keys.resize(length);
  return keys;
}

std::vector<Key> MixedTrace(uint64_t cache, uint64_t length, Rng& rng) {
  Zipf zipf(4 * cache, 0.9);
  constexpr int kStreams = 4;
  uint64_t file_len = 2 * cache;
  std::vector<uint64_t> file(kStreams), pos(kStreams, 0);
  uint64_t next_file = 10;
  for (auto& f : file) f = next_file++;
  std::vector<Key> keys;
  keys.reserve(length);
  for (uint64_t i = 0; i < length; ++i) {
    if (rng.Below(2) == 0) {
      keys.push_back(RankKey(1000, zipf.Sample(rng)));
      continue;
    }
    auto s = static_cast<size_t>(rng.Below(kStreams));
    keys.push_back({file[s], pos[s]++});
    if (pos[s] == file_len) {
      file[s] = next_file++;
      pos[s] = 0;
    }
  }
  return keys;
}

std::vector<Key> ShiftTrace(uint64_t cache, uint64_t length, Rng& rng) {
  uint64_t n = 10 * cache;
  Zipf zipf(n, 0.9);
  std::vector<uint64_t> perm(n);
  for (uint64_t i = 0; i < n; ++i) perm[i] = i;
  std::vector<Key> keys;
  keys.reserve(length);
  uint64_t phase = std::max<uint64_t>(1, length / 4);
  for (uint64_t i = 0; i < length; ++i) {
    if (i % phase == 0) {
      for (uint64_t k = n - 1; k > 0; --k) std::swap(perm[k], perm[rng.Below(k + 1)]);
    }
    keys.push_back(RankKey(1000, perm[zipf.Sample(rng)]));
  }
  return keys;
}

std::vector<Key> AlternateTrace(uint64_t cache, uint64_t length, Rng& rng) {
  uint64_t set = std::max<uint64_t>(1, cache * 4 / 5);
  uint64_t phase = 2 * cache;
  std::vector<Key> keys;
  keys.reserve(length);
  for (uint64_t i = 0; i < length; ++i) keys.push_back({1 + (i / phase) % 2, rng.Below(set)});
  return keys;
}

std::optional<std::vector<Key>> ReadTraceFile(const std::string& path, std::string* error) {
  std::ifstream in(path);
  if (!in) {
    *error = "cannot open trace '" + path + "'";
    return std::nullopt;
  }
  std::vector<Key> keys;
  std::string line;
  for (uint64_t no = 1; std::getline(in, line); ++no) {
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    std::istringstream fields(line);
    std::string a, b, extra;
    if (!(fields >> a)) continue;
    char* end_a = nullptr;
    char* end_b = nullptr;
    uint64_t file_id = 0, index = 0;
    bool good = (fields >> b) && !(fields >> extra);
    if (good) {
      file_id = std::strtoull(a.c_str(), &end_a, 10);
      index = std::strtoull(b.c_str(), &end_b, 10);
      good = *end_a == '\0' && *end_b == '\0' && a[0] != '-' && b[0] != '-';
    }
    if (!good) {
      *error = path + ":" + std::to_string(no) + ": expected \"FILE_ID BLOCK_INDEX\"";
      return std::nullopt;
    }
    keys.push_back({file_id, index});
  }
  if (keys.empty()) {
    *error = "trace '" + path + "' has no accesses";
    return std::nullopt;
  }
  return keys;
}

struct Outcome {
  uint64_t hits = 0;
  uint64_t accesses = 0;
  double ratio() const { return accesses ? static_cast<double>(hits) / accesses : 0; }
};

// Drives `policy` with the engine's protocol over `trace` and a cache of
// `cache` slots. Aborts when the policy breaks its contract.
Outcome RunPolicy(Policy& policy, const Trace& trace, uint32_t cache) {
  std::vector<uint32_t> slot_of(trace.hashes.size(), kNone);
  std::vector<uint32_t> owner(cache, kNone);
  std::vector<uint32_t> free_slots;
  for (uint32_t s = cache; s-- > 0;) free_slots.push_back(s);
  Outcome out;
  for (uint32_t id : trace.ids) {
    out.accesses++;
    if (slot_of[id] != kNone) {
      policy.Touch(slot_of[id]);
      out.hits++;
      continue;
    }
    if (!policy.Admit(trace.hashes[id], free_slots.empty())) continue;
    uint32_t slot;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
    } else {
      auto victim = policy.Victim();
      if (!victim) continue;
      slot = *victim;
      if (slot >= cache || owner[slot] == kNone || !policy.IsTracked(slot)) {
        std::fprintf(stderr, "policy_sim: %s gave an untracked victim %u\n", policy.name(), slot);
        std::abort();
      }
      policy.Remove(slot);
      slot_of[owner[slot]] = kNone;
    }
    owner[slot] = id;
    slot_of[id] = slot;
    policy.TrackAdmitted(slot, trace.hashes[id]);
  }
  if (policy.counters().tracked > cache) {
    std::fprintf(stderr, "policy_sim: %s tracks more than the cache\n", policy.name());
    std::abort();
  }
  return out;
}

// Belady's OPT with bypass.
Outcome RunOpt(const Trace& trace, uint32_t cache) {
  const uint64_t n = trace.ids.size();
  const uint64_t never = UINT64_MAX;
  std::vector<uint64_t> next_use(n);
  std::vector<uint64_t> last(trace.hashes.size(), never);
  for (uint64_t i = n; i-- > 0;) {
    next_use[i] = last[trace.ids[i]];
    last[trace.ids[i]] = i;
  }
  std::vector<uint64_t> cached_next(trace.hashes.size(), never);  // never: not cached
  std::priority_queue<std::pair<uint64_t, uint32_t>> farthest;    // lazily pruned
  uint64_t used = 0;
  Outcome out;
  for (uint64_t i = 0; i < n; ++i) {
    uint32_t id = trace.ids[i];
    uint64_t next = next_use[i];
    out.accesses++;
    if (cached_next[id] != never) {
      out.hits++;
      if (next == never) {  // never again: free its slot now
        cached_next[id] = never;
        used--;
      } else {
        cached_next[id] = next;
        farthest.emplace(next, id);
      }
      continue;
    }
    if (next == never) continue;
    if (used == cache) {
      while (cached_next[farthest.top().second] != farthest.top().first) farthest.pop();
      if (farthest.top().first < next) continue;  // bypass
      cached_next[farthest.top().second] = never;
      farthest.pop();
      used--;
    }
    cached_next[id] = next;
    farthest.emplace(next, id);
    used++;
  }
  return out;
}

// The best a policy can do that knows how often each block is read but not
// when: the C most read blocks of the trace stay cached (after their first
// read). Under independent reads (Zipf) no online policy beats it by much, so
// it shows how much of the gap to OPT is reachable at all.
Outcome RunTopC(const Trace& trace, uint32_t cache) {
  std::vector<uint64_t> count(trace.hashes.size(), 0);
  for (uint32_t id : trace.ids) count[id]++;
  std::vector<uint32_t> order(count.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  size_t keep = std::min<size_t>(cache, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(),
                    [&](uint32_t a, uint32_t b) { return count[a] > count[b]; });
  Outcome out;
  out.accesses = trace.ids.size();
  for (size_t i = 0; i < keep; ++i) out.hits += count[order[i]] - 1;
  return out;
}

// Prints the usage, to stderr after an error `why`, else to stdout.
int Usage(const char* why) {
  if (why) std::fprintf(stderr, "policy_sim: %s\n", why);
  std::fprintf(why ? stderr : stdout,
               "usage: policy_sim [--cache BLOCKS] [--length ACCESSES] [--seed N]\n"
               "                  [--traces NAME,NAME...] [--trace FILE]... [--memory]\n"
               "built-in traces: zipf-0.6 zipf-0.8 zipf-0.99 zipf-1.2 loop hotset-scan mixed "
               "shift alternate\n");
  return 2;
}

// A hash of a trace's name, so each trace has its own random stream (FNV-1a:
// std::hash differs between standard libraries).
uint64_t Fnv1a(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (char ch : text) h = (h ^ static_cast<uint8_t>(ch)) * 0x100000001b3ULL;
  return h;
}

bool ParseCount(const std::string& text, uint64_t* out) {
  char* end = nullptr;
  *out = std::strtoull(text.c_str(), &end, 10);
  return !text.empty() && text[0] != '-' && *end == '\0' && *out > 0;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t cache = 8192;
  uint64_t length = 2000000;
  uint64_t seed = 1;
  bool memory = false;
  std::vector<std::string> files;
  std::vector<std::string> wanted = {"zipf-0.6",    "zipf-0.8", "zipf-0.99", "zipf-1.2", "loop",
                                     "hotset-scan", "mixed",    "shift",     "alternate"};
  bool traces_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      Usage(nullptr);
      return 0;
    }
    if (arg == "--memory") {
      memory = true;
      continue;
    }
    if (i + 1 >= argc) return Usage(("missing value for " + arg).c_str());
    std::string value = argv[++i];
    if (arg == "--cache") {
      if (!ParseCount(value, &cache) || cache > UINT32_MAX / 2) return Usage("bad --cache");
    } else if (arg == "--length") {
      if (!ParseCount(value, &length) || length > UINT32_MAX) return Usage("bad --length");
    } else if (arg == "--seed") {
      if (!ParseCount(value, &seed)) return Usage("bad --seed");
    } else if (arg == "--traces") {
      traces_given = true;
      wanted.clear();
      std::stringstream list(value);
      for (std::string name; std::getline(list, name, ',');) {
        if (!name.empty()) wanted.push_back(name);
      }
    } else if (arg == "--trace") {
      files.push_back(value);
    } else {
      return Usage(("unknown argument '" + arg + "'").c_str());
    }
  }
  if (!files.empty() && !traces_given) wanted.clear();

  auto c = static_cast<uint32_t>(cache);
  std::vector<std::function<std::optional<Trace>()>> makers;
  for (const std::string& name : wanted) {
    Rng rng(seed * 0x2545f4914f6cdd1dULL + Fnv1a(name));
    std::function<std::vector<Key>()> gen;
    if (name.rfind("zipf-", 0) == 0) {
      char* end = nullptr;
      double s = std::strtod(name.c_str() + 5, &end);
      if (*end != '\0' || !(s > 0 && s < 5)) return Usage(("unknown trace '" + name + "'").c_str());
      gen = [=]() mutable { return ZipfTrace(cache, length, s, rng); };
    } else if (name == "loop") {
      gen = [=] { return LoopTrace(cache, length); };
    } else if (name == "hotset-scan") {
      gen = [=]() mutable { return HotsetScanTrace(cache, length, rng); };
    } else if (name == "mixed") {
      gen = [=]() mutable { return MixedTrace(cache, length, rng); };
    } else if (name == "shift") {
      gen = [=]() mutable { return ShiftTrace(cache, length, rng); };
    } else if (name == "alternate") {
      gen = [=]() mutable { return AlternateTrace(cache, length, rng); };
    } else {
      return Usage(("unknown trace '" + name + "'").c_str());
    }
    makers.emplace_back([name, gen] { return std::optional<Trace>(Densify(name, gen())); });
  }
  for (const std::string& path : files) {
    std::string error;
    auto keys = ReadTraceFile(path, &error);
    if (!keys) {
      std::fprintf(stderr, "policy_sim: %s\n", error.c_str());
      return 1;
    }
    auto slash = path.find_last_of('/');
    std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    makers.emplace_back(
        [name, k = std::move(*keys)] { return std::optional<Trace>(Densify(name, k)); });
  }

  auto start = std::chrono::steady_clock::now();
  const auto& names = PolicyNames();
  std::printf("Hit ratios, cache of %u blocks", c);
  if (!wanted.empty()) {
    std::printf(", %llu accesses per built-in trace, seed %llu",
                static_cast<unsigned long long>(length), static_cast<unsigned long long>(seed));
  }
  std::printf(".\n\n");
  std::printf("| trace | blocks | OPT | top-C |");
  for (const auto& n : names) std::printf(" %s |", n.c_str());
  std::printf(" smq/OPT | smq vs lru |\n|---|--:|--:|--:|");
  for (size_t i = 0; i < names.size(); ++i) std::printf("--:|");
  std::printf("--:|--:|\n");
  auto column = [&](const char* name) {
    return static_cast<size_t>(std::find(names.begin(), names.end(), name) - names.begin());
  };
  const size_t smq_col = column("smq");
  const size_t lru_col = column("lru");
  std::vector<double> seconds(names.size(), 0);
  uint64_t accesses = 0;
  for (auto& make : makers) {
    auto trace = make();
    Outcome opt = RunOpt(*trace, c);
    Outcome top = RunTopC(*trace, c);
    std::vector<double> ratio;
    for (const auto& n : names) {
      auto policy = MakePolicy(n, c);
      if (!policy.ok()) {
        std::fprintf(stderr, "policy_sim: %s\n", policy.status().message().c_str());
        return 1;
      }
      auto begin = std::chrono::steady_clock::now();
      ratio.push_back(RunPolicy(*policy.value(), *trace, c).ratio());
      seconds[ratio.size() - 1] +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
    }
    accesses += trace->ids.size();
    double smq = ratio[smq_col];
    double lru = ratio[lru_col];
    std::printf("| %s | %zu | %.3f | %.3f |", trace->name.c_str(), trace->hashes.size(),
                opt.ratio(), top.ratio());
    for (double r : ratio) std::printf(" %.3f |", r);
    std::printf(" %.2f | %+.1f pts |\n", opt.ratio() > 0 ? smq / opt.ratio() : 0.0,
                100 * (smq - lru));
    std::fflush(stdout);
  }
  std::printf("\n%.1f s in all; ns per access (the simulator's own work included):",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  for (size_t i = 0; i < names.size(); ++i) {
    std::printf(" %s %.0f%s", names[i].c_str(), 1e9 * seconds[i] / static_cast<double>(accesses),
                i + 1 < names.size() ? "," : "\n");
  }
  if (memory) {
    const uint32_t big = 1u << 20;
    std::printf(
        "\nRAM per slot (MemoryUsed() / slots, %u slots):\n\n| policy | bytes/slot |\n"
        "|---|--:|\n",
        big);
    for (const auto& n : names) {
      auto policy = MakePolicy(n, big);
      std::printf("| %s | %.2f |\n", n.c_str(),
                  static_cast<double>(policy.value()->MemoryUsed()) / big);
    }
  }
  return 0;
}
