#include "common/histogram.h"

#include <cmath>

namespace cachefs {

uint64_t LatencyHistogram::BucketLow(size_t bucket) {
  if (bucket < kSubBuckets) return bucket;
  const uint64_t shift = bucket / kSubBuckets - 1;
  return (kSubBuckets + bucket % kSubBuckets) << shift;
}

uint64_t LatencyHistogram::BucketWidth(size_t bucket) {
  if (bucket < kSubBuckets) return 1;
  return uint64_t{1} << (bucket / kSubBuckets - 1);
}

void LatencyHistogram::Load(Counts* counts, uint64_t* total) const {
  *total = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    (*counts)[i] = buckets_[i].load(std::memory_order_relaxed);
    *total += (*counts)[i];
  }
}

uint64_t LatencyHistogram::ValueAtRank(const Counts& counts, uint64_t rank) {
  uint64_t seen = 0;
  for (size_t i = 0; i < kBuckets; ++i) {
    seen += counts[i];
    if (seen >= rank) return BucketLow(i) + BucketWidth(i) / 2;
  }
  return 0;  // rank beyond the count: only when nothing was recorded
}

namespace {

// The rank (1-based) of quantile q among `total` values.
uint64_t RankOf(double q, uint64_t total) {
  const double r = std::ceil(q * static_cast<double>(total));
  if (r < 1) return 1;
  if (r > static_cast<double>(total)) return total;
  return static_cast<uint64_t>(r);
}

}  // namespace

LatencySummary LatencyHistogram::Summarize() const {
  Counts counts;
  LatencySummary s;
  Load(&counts, &s.count);
  s.sum_ns = sum_.load(std::memory_order_relaxed);
  if (s.count == 0) return s;
  s.p50_ns = ValueAtRank(counts, RankOf(0.5, s.count));
  s.p99_ns = ValueAtRank(counts, RankOf(0.99, s.count));
  return s;
}

uint64_t LatencyHistogram::Percentile(double q) const {
  Counts counts;
  uint64_t total = 0;
  Load(&counts, &total);
  if (total == 0) return 0;
  return ValueAtRank(counts, RankOf(q, total));
}

uint64_t LatencyHistogram::Count() const {
  uint64_t total = 0;
  for (const auto& b : buckets_) total += b.load(std::memory_order_relaxed);
  return total;
}

}  // namespace cachefs
