// Parsers for option values. Each returns a Status naming the bad text, so
// the caller only has to prefix the option's name.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace cachefs {

// "4096", "4K", "64M", "1G", "2T" (K/M/G/T are powers of 1024, case-insensitive,
// an optional trailing "B" or "iB" is allowed). Overflow and garbage are errors.
Result<uint64_t> ParseSize(const std::string& text);

// A size that may instead be a percentage of something measured later ("10%").
struct SizeOrPercent {
  bool is_percent = false;
  double percent = 0;  // 0 < percent <= 100 when is_percent
  uint64_t bytes = 0;  // when !is_percent
};
Result<SizeOrPercent> ParseSizeOrPercent(const std::string& text);

// "on/off", "yes/no", "true/false", "1/0".
Result<bool> ParseBool(const std::string& text);

// A non-negative decimal number of seconds, fractions allowed ("0.5").
Result<double> ParseSeconds(const std::string& text);

// A decimal integer in [min, max].
Result<uint64_t> ParseUint(const std::string& text, uint64_t min, uint64_t max);

// Undoes the octal escapes (\040 for a space, \012, \134, ...) that
// /proc/self/mountinfo and /proc/mounts use in their fields.
std::string UnescapeOctal(const std::string& s);

}  // namespace cachefs
