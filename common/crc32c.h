// CRC32C (Castagnoli), the checksum of cached data (contract 6).
//
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table otherwise;
// both give the same values. Thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace cachefs {

// Extends `crc` (0 to start) with `n` bytes of `data`.
uint32_t Crc32c(uint32_t crc, const void* data, size_t n);

// The checksum of one 4 KiB sub-block of a cached block, seeded with where it
// belongs and which generation of the block it is, so data served from the
// wrong slot, the wrong file or an older generation never verifies.
uint32_t SubBlockCrc(uint64_t file_id, uint64_t block_index, uint64_t generation, const void* data,
                     size_t n);

}  // namespace cachefs
