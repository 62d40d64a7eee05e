#include "common/parse.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace cachefs {
namespace {

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

bool AllDigits(const std::string& s) {
  return !s.empty() &&
         std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

}  // namespace

Result<uint64_t> ParseUint(const std::string& text, uint64_t min, uint64_t max) {
  if (!AllDigits(text)) return Status::Invalid("'" + text + "' is not a whole number");
  errno = 0;
  unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno == ERANGE || v < min || v > max) {
    return Status::Invalid("'" + text + "' is out of range (" + std::to_string(min) + " to " +
                           std::to_string(max) + ")");
  }
  return static_cast<uint64_t>(v);
}

Result<uint64_t> ParseSize(const std::string& text) {
  std::string t = Lower(text);
  size_t digits = 0;
  while (digits < t.size() && std::isdigit(static_cast<unsigned char>(t[digits]))) ++digits;
  std::string number = t.substr(0, digits);
  std::string suffix = t.substr(digits);
  if (number.empty())
    return Status::Invalid("'" + text + "' is not a size (examples: 4096, 4K, 64M, 1G)");
  int shift = 0;
  if (!suffix.empty() && suffix != "b") {
    static const std::string kUnits = "kmgt";
    size_t unit = kUnits.find(suffix[0]);
    std::string rest = suffix.substr(1);
    if (unit == std::string::npos || !(rest.empty() || rest == "b" || rest == "ib")) {
      return Status::Invalid("'" + text + "' has an unknown size suffix (use K, M, G or T)");
    }
    shift = 10 * static_cast<int>(unit + 1);
  }
  auto v = ParseUint(number, 0, std::numeric_limits<uint64_t>::max());
  if (!v.ok()) return Status::Invalid("'" + text + "' is too large");
  if (shift > 0 && v.value() > (std::numeric_limits<uint64_t>::max() >> shift)) {
    return Status::Invalid("'" + text + "' is too large");
  }
  return v.value() << shift;
}

Result<SizeOrPercent> ParseSizeOrPercent(const std::string& text) {
  SizeOrPercent out;
  if (!text.empty() && text.back() == '%') {
    std::string num = text.substr(0, text.size() - 1);
    char* end = nullptr;
    errno = 0;
    double p = std::strtod(num.c_str(), &end);
    if (num.empty() || end != num.c_str() + num.size() || errno != 0 || !std::isfinite(p) ||
        p <= 0 || p > 100) {
      return Status::Invalid("'" + text + "' is not a percentage between 0 and 100");
    }
    out.is_percent = true;
    out.percent = p;
    return out;
  }
  auto bytes = ParseSize(text);
  if (!bytes.ok()) return bytes.status();
  out.bytes = bytes.value();
  return out;
}

Result<bool> ParseBool(const std::string& text) {
  std::string t = Lower(text);
  if (t == "on" || t == "yes" || t == "true" || t == "1") return true;
  if (t == "off" || t == "no" || t == "false" || t == "0") return false;
  return Status::Invalid("'" + text + "' is not on or off");
}

Result<double> ParseSeconds(const std::string& text) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size() || errno != 0 || !std::isfinite(v) ||
      v < 0 || !(std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '.')) {
    return Status::Invalid("'" + text + "' is not a number of seconds");
  }
  return v;
}

std::string UnescapeOctal(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && s.size() - i >= 4) {
      int v = 0;
      bool octal = true;
      for (size_t j = 1; j <= 3; ++j) {
        char c = s[i + j];
        if (c < '0' || c > '7') octal = false;
        v = v * 8 + (c - '0');
      }
      if (octal) {
        out += static_cast<char>(v);
        i += 3;
        continue;
      }
    }
    out += s[i];
  }
  return out;
}

}  // namespace cachefs
