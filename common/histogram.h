// LatencyHistogram: the distribution of request times, for percentiles.
//
// A fixed array of log-linear buckets in the style of HdrHistogram: values
// below 32 ns have a bucket each; above, every power of two [2^k, 2^(k+1))
// is split into 32 equal buckets, so a bucket is at most 1/32 of its lower
// bound wide and a percentile reported as its bucket's midpoint is within
// 1/64 (1.6%) of the true value. Values from 1 ns up to 2^38 ns (about 4.6
// minutes) are told apart; longer ones count in the top bucket. 1088
// buckets of 8 bytes: 8.5 KiB per histogram, allocated once.
//
// Record() is one relaxed atomic increment of a bucket plus one of the sum:
// no lock, no allocation, O(1) (a few ns; tests/common/histogram_test.cc
// measures it). Readers (Summarize, Percentile) walk the buckets without
// stopping writers, so a snapshot taken while requests are recorded may
// mix counts from either side of a record; it never tears a single count.
//
// Thread-safety: every method may be called concurrently.
#pragma once

#include <time.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace cachefs {

// CLOCK_MONOTONIC in nanoseconds: a vDSO call (about 20 ns), for timing
// requests. Never goes back, unlike the wall clock.
inline uint64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}

// What a histogram held at one moment. Percentiles are 0 when count is 0.
struct LatencySummary {
  uint64_t count = 0;   // values recorded
  uint64_t sum_ns = 0;  // their sum (for a mean over an interval: Δsum / Δcount)
  uint64_t p50_ns = 0;
  uint64_t p99_ns = 0;

  bool operator==(const LatencySummary&) const = default;
};

class LatencyHistogram {
 public:
  static constexpr int kSubBucketBits = 5;  // 32 buckets per power of two
  static constexpr uint64_t kSubBuckets = uint64_t{1} << kSubBucketBits;
  static constexpr int kMaxBits = 38;  // values >= 2^38 ns count as 2^38 - 1
  static constexpr uint64_t kMaxValue = (uint64_t{1} << kMaxBits) - 1;
  static constexpr size_t kBuckets = (kMaxBits - kSubBucketBits + 1) * kSubBuckets;

  LatencyHistogram() = default;
  LatencyHistogram(const LatencyHistogram&) = delete;
  LatencyHistogram& operator=(const LatencyHistogram&) = delete;

  // Counts one value (nanoseconds).
  void Record(uint64_t ns) {
    if (ns > kMaxValue) ns = kMaxValue;
    buckets_[BucketOf(ns)].fetch_add(1, std::memory_order_relaxed);
    sum_.fetch_add(ns, std::memory_order_relaxed);
  }

  // Count, sum, p50 and p99, from one pass over the buckets.
  LatencySummary Summarize() const;
  // The value at quantile `q` (0 < q <= 1: 0.5 is the median): the midpoint
  // of the bucket holding the ceil(q * count)-th smallest value; 0 when
  // nothing was recorded.
  uint64_t Percentile(double q) const;
  uint64_t Count() const;

  // The bucket of `ns` (<= kMaxValue), and the range [low, low + width) of
  // values a bucket holds. Public for tests.
  static size_t BucketOf(uint64_t ns) {
    if (ns < kSubBuckets) return static_cast<size_t>(ns);
    const int top = 63 - __builtin_clzll(ns);  // >= kSubBucketBits
    const int shift = top - kSubBucketBits;
    return static_cast<size_t>(shift + 1) * kSubBuckets + ((ns >> shift) - kSubBuckets);
  }
  static uint64_t BucketLow(size_t bucket);
  static uint64_t BucketWidth(size_t bucket);

 private:
  using Counts = std::array<uint64_t, kBuckets>;
  void Load(Counts* counts, uint64_t* total) const;
  static uint64_t ValueAtRank(const Counts& counts, uint64_t rank);

  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> sum_{0};
};

// Records the time from its construction (or `start_ns`) to its end.
class ScopedLatency {
 public:
  explicit ScopedLatency(LatencyHistogram* h, uint64_t start_ns = MonotonicNs())
      : h_(h), start_ns_(start_ns) {}
  ~ScopedLatency() { h_->Record(MonotonicNs() - start_ns_); }
  ScopedLatency(const ScopedLatency&) = delete;
  ScopedLatency& operator=(const ScopedLatency&) = delete;

 private:
  LatencyHistogram* const h_;
  const uint64_t start_ns_;
};

}  // namespace cachefs
