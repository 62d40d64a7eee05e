// Hashing of integer keys for the in-memory tables (the block index, the
// record cache).
#pragma once

#include <cstdint>

namespace cachefs {

// A 64-bit mix (the splitmix64 finaliser) of both halves of a two-part key,
// e.g. (file id, block index): every input bit moves the low and high bits.
inline uint64_t MixPair(uint64_t a, uint64_t b) {
  uint64_t h = a * 0x9E3779B97F4A7C15ull ^ b;
  h ^= h >> 30;
  h *= 0xBF58476D1CE4E5B9ull;
  h ^= h >> 27;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 31;
  return h;
}

}  // namespace cachefs
