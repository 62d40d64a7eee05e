#include "common/json.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>

namespace cachefs {

JsonValue::JsonValue(long long v) : type_(Type::kNumber) {
  if (v >= 0) {
    num_kind_ = NumKind::kUint;
    uint_ = static_cast<uint64_t>(v);
  } else {
    num_kind_ = NumKind::kInt;
    int_ = v;
  }
}

JsonValue::JsonValue(unsigned long long v)
    : type_(Type::kNumber), num_kind_(NumKind::kUint), uint_(v) {}

JsonValue::JsonValue(double v) : type_(Type::kNumber), num_kind_(NumKind::kDouble), double_(v) {}

bool JsonValue::as_bool(bool* out) const {
  if (!is_bool()) return false;
  *out = bool_;
  return true;
}

bool JsonValue::as_uint64(uint64_t* out) const {
  if (!is_number() || num_kind_ != NumKind::kUint) return false;
  *out = uint_;
  return true;
}

bool JsonValue::as_int64(int64_t* out) const {
  if (!is_number()) return false;
  if (num_kind_ == NumKind::kInt) {
    *out = int_;
    return true;
  }
  if (num_kind_ == NumKind::kUint && uint_ <= uint64_t{std::numeric_limits<int64_t>::max()}) {
    *out = static_cast<int64_t>(uint_);
    return true;
  }
  return false;
}

bool JsonValue::as_double(double* out) const {
  if (!is_number()) return false;
  switch (num_kind_) {
    case NumKind::kInt:
      *out = static_cast<double>(int_);
      break;
    case NumKind::kUint:
      *out = static_cast<double>(uint_);
      break;
    case NumKind::kDouble:
      *out = double_;
      break;
  }
  return true;
}

void JsonValue::Append(JsonValue v) {
  if (is_null()) type_ = Type::kArray;
  array_.push_back(std::move(v));
}

void JsonValue::Set(const std::string& key, JsonValue v) {
  if (is_null()) type_ = Type::kObject;
  for (Member& m : object_) {
    if (m.first == key) {
      m.second = std::move(v);
      return;
    }
  }
  object_.emplace_back(key, std::move(v));
}

const JsonValue* JsonValue::Find(std::string_view key) const {
  if (!is_object()) return nullptr;
  for (const Member& m : object_) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

bool JsonValue::operator==(const JsonValue& other) const {
  if (type_ != other.type_) return false;
  switch (type_) {
    case Type::kNull:
      return true;
    case Type::kBool:
      return bool_ == other.bool_;
    case Type::kNumber:
      if (is_integer() && other.is_integer()) {
        return num_kind_ == other.num_kind_ && int_ == other.int_ && uint_ == other.uint_;
      } else {
        double a = 0;
        double b = 0;
        as_double(&a);
        other.as_double(&b);
        return a == b;
      }
    case Type::kString:
      return string_ == other.string_;
    case Type::kArray:
      return array_ == other.array_;
    case Type::kObject:
      return object_ == other.object_;
  }
  return false;
}

std::string JsonQuote(std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += "\\u00";
          out += kHex[(c >> 4) & 0xf];
          out += kHex[c & 0xf];
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

namespace {

void NewLine(std::string& out, int indent, int depth) {
  out += '\n';
  out.append(static_cast<size_t>(indent) * static_cast<size_t>(depth), ' ');
}

void AppendDouble(std::string& out, double v) {
  if (!std::isfinite(v)) {
    out += "null";
    return;
  }
  char buf[64];
  // Shortest text that reads back as the same double.
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  out.append(buf, r.ptr);
}

}  // namespace

void JsonValue::SerializeTo(std::string& out, int indent, int depth) const {
  switch (type_) {
    case Type::kNull:
      out += "null";
      return;
    case Type::kBool:
      out += bool_ ? "true" : "false";
      return;
    case Type::kNumber:
      if (num_kind_ == NumKind::kInt) {
        out += std::to_string(int_);
      } else if (num_kind_ == NumKind::kUint) {
        out += std::to_string(uint_);
      } else {
        AppendDouble(out, double_);
      }
      return;
    case Type::kString:
      out += JsonQuote(string_);
      return;
    case Type::kArray: {
      out += '[';
      bool first = true;
      for (const JsonValue& v : array_) {
        if (!first) out += ',';
        first = false;
        if (indent >= 0) NewLine(out, indent, depth + 1);
        v.SerializeTo(out, indent, depth + 1);
      }
      if (indent >= 0 && !array_.empty()) NewLine(out, indent, depth);
      out += ']';
      return;
    }
    case Type::kObject: {
      out += '{';
      bool first = true;
      for (const Member& m : object_) {
        if (!first) out += ',';
        first = false;
        if (indent >= 0) NewLine(out, indent, depth + 1);
        out += JsonQuote(m.first);
        out += indent >= 0 ? ": " : ":";
        m.second.SerializeTo(out, indent, depth + 1);
      }
      if (indent >= 0 && !object_.empty()) NewLine(out, indent, depth);
      out += '}';
      return;
    }
  }
}

std::string JsonValue::Serialize(int indent) const {
  std::string out;
  SerializeTo(out, indent, 0);
  return out;
}

namespace {

// Recursive descent over `text`; `pos_` is the next unread byte.
class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  Result<JsonValue> ParseDocument() {
    JsonValue v;
    Status s = ParseValue(v, 0);
    if (!s.ok()) return s;
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the value");
    return v;
  }

 private:
  Status Error(const std::string& what) const {
    return Status::Invalid("JSON: " + what + " at offset " + std::to_string(pos_));
  }

  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }

  bool Consume(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  Status ParseValue(JsonValue& out, int depth) {
    if (depth > JsonValue::kMaxDepth) return Error("nesting deeper than 64");
    SkipSpace();
    if (pos_ >= text_.size()) return Error("unexpected end of input");
    char c = text_[pos_];
    if (c == '{') return ParseObject(out, depth);
    if (c == '[') return ParseArray(out, depth);
    if (c == '"') {
      std::string s;
      Status st = ParseString(s);
      if (st.ok()) out = JsonValue(std::move(s));
      return st;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return ParseNumber(out);
    if (Consume("true")) {
      out = JsonValue(true);
      return Status::Ok();
    }
    if (Consume("false")) {
      out = JsonValue(false);
      return Status::Ok();
    }
    if (Consume("null")) {
      out = JsonValue();
      return Status::Ok();
    }
    return Error("unexpected character");
  }

  Status ParseObject(JsonValue& out, int depth) {
    ++pos_;  // '{'
    out = JsonValue::MakeObject();
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return Status::Ok();
    }
    while (true) {
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"') return Error("expected a member name");
      std::string key;
      Status s = ParseString(key);
      if (!s.ok()) return s;
      SkipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':') return Error("expected ':'");
      ++pos_;
      JsonValue v;
      s = ParseValue(v, depth + 1);
      if (!s.ok()) return s;
      out.Set(key, std::move(v));  // a repeated name: the last one wins
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return Status::Ok();
      }
      return Error("expected ',' or '}'");
    }
  }

  Status ParseArray(JsonValue& out, int depth) {
    ++pos_;  // '['
    out = JsonValue::MakeArray();
    SkipSpace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return Status::Ok();
    }
    while (true) {
      JsonValue v;
      Status s = ParseValue(v, depth + 1);
      if (!s.ok()) return s;
      out.Append(std::move(v));
      SkipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return Status::Ok();
      }
      return Error("expected ',' or ']'");
    }
  }

  bool Hex4(uint32_t* out) {
    if (text_.size() - pos_ < 4) return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char c = text_[pos_ + static_cast<size_t>(i)];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<uint32_t>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<uint32_t>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<uint32_t>(c - 'A' + 10);
      } else {
        return false;
      }
    }
    pos_ += 4;
    *out = v;
    return true;
  }

  static void AppendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  // A \u escape, after the "\u"; joins a surrogate pair.
  Status ParseUnicodeEscape(std::string& out) {
    uint32_t cp = 0;
    if (!Hex4(&cp)) return Error("bad \\u escape");
    if (cp >= 0xdc00 && cp <= 0xdfff) return Error("lone low surrogate");
    if (cp >= 0xd800 && cp <= 0xdbff) {
      uint32_t low = 0;
      if (!Consume("\\u") || !Hex4(&low) || low < 0xdc00 || low > 0xdfff) {
        return Error("high surrogate without a low one");
      }
      cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
    }
    AppendUtf8(out, cp);
    return Status::Ok();
  }

  Status ParseString(std::string& out) {
    ++pos_;  // '"'
    while (true) {
      if (pos_ >= text_.size()) return Error("unterminated string");
      char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return Status::Ok();
      }
      if (static_cast<unsigned char>(c) < 0x20) return Error("control character in string");
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= text_.size()) return Error("unterminated string");
      char e = text_[pos_++];
      switch (e) {
        case '"':
        case '\\':
        case '/':
          out += e;
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          Status s = ParseUnicodeEscape(out);
          if (!s.ok()) return s;
          break;
        }
        default:
          --pos_;
          return Error("bad escape");
      }
    }
  }

  static bool IsDigit(char c) { return c >= '0' && c <= '9'; }

  Status ParseNumber(JsonValue& out) {
    const size_t start = pos_;
    bool negative = false;
    bool integral = true;
    if (text_[pos_] == '-') {
      negative = true;
      ++pos_;
    }
    if (pos_ >= text_.size() || !IsDigit(text_[pos_])) return Error("bad number");
    if (text_[pos_] == '0') {
      ++pos_;
      if (pos_ < text_.size() && IsDigit(text_[pos_])) return Error("leading zero in number");
    } else {
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      integral = false;
      ++pos_;
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) return Error("bad fraction");
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      integral = false;
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (pos_ >= text_.size() || !IsDigit(text_[pos_])) return Error("bad exponent");
      while (pos_ < text_.size() && IsDigit(text_[pos_])) ++pos_;
    }
    const char* first = text_.data() + start;
    const char* last = text_.data() + pos_;
    if (integral) {
      // Exact when it fits; a larger integer falls back to double.
      if (negative) {
        long long v = 0;
        auto r = std::from_chars(first, last, v);
        if (r.ec == std::errc() && r.ptr == last) {
          out = JsonValue(v);
          return Status::Ok();
        }
      } else {
        unsigned long long v = 0;
        auto r = std::from_chars(first, last, v);
        if (r.ec == std::errc() && r.ptr == last) {
          out = JsonValue(v);
          return Status::Ok();
        }
      }
    }
    double d = 0;
    auto r = std::from_chars(first, last, d);
    if (r.ptr != last) return Error("bad number");
    // Out of range: from_chars leaves `d` alone. strtod (the "C" locale:
    // nothing here sets another) gives 0 for an underflow and infinity for
    // an overflow, which JSON cannot carry: the largest finite value stands in.
    if (r.ec == std::errc::result_out_of_range) {
      d = std::strtod(std::string(first, last).c_str(), nullptr);
      if (std::isinf(d)) d = std::copysign(std::numeric_limits<double>::max(), d);
    }
    out = JsonValue(d);
    return Status::Ok();
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

Result<JsonValue> ParseJson(std::string_view text) { return Parser(text).ParseDocument(); }

}  // namespace cachefs
