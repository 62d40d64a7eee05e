// JsonValue: a small JSON document model, writer and parser.
//
// Enough JSON for the control protocol (cmd/control_protocol.h) and for the
// machine-readable output of cachefsctl, without a package dependency. A
// value is null, a boolean, a number, a string, an array or an object.
// Objects keep their members in insertion order, so output is stable and
// follows the order the producer chose (the documented schema order).
//
// Numbers: an integer that fits in int64 or uint64 is kept exactly (64-bit
// counters survive a round trip); any other number is a double. Serialize()
// writes integers as integers and doubles with enough digits to round-trip;
// NaN and infinities, which JSON cannot express, are written as null.
//
// The parser is strict RFC 8259: one value, no trailing commas or comments,
// no control characters inside strings, \u escapes (with surrogate pairs)
// decoded to UTF-8, nesting limited to kMaxDepth. It returns a one-line
// Status naming the byte offset of the first error. Strings are taken as
// bytes: invalid UTF-8 is passed through, not checked.
//
// Thread-safety: a JsonValue is a value; distinct objects may be used from
// distinct threads, a const one from several.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace cachefs {

class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  using Member = std::pair<std::string, JsonValue>;
  using Object = std::vector<Member>;

  static constexpr int kMaxDepth = 64;

  JsonValue() = default;  // null
  // Implicit by design: `obj.Set("hits", 3)` and `JsonValue("text")` read
  // naturally. Every integer type maps to an exact integer.
  JsonValue(bool b) : type_(Type::kBool), bool_(b) {}         // NOLINT(google-explicit-constructor)
  JsonValue(int v) : JsonValue(static_cast<long long>(v)) {}  // NOLINT(google-explicit-constructor)
  JsonValue(long v)
      : JsonValue(static_cast<long long>(v)) {}  // NOLINT(google-explicit-constructor)
  JsonValue(long long v);                        // NOLINT(google-explicit-constructor)
  JsonValue(unsigned v)                          // NOLINT(google-explicit-constructor)
      : JsonValue(static_cast<unsigned long long>(v)) {}
  JsonValue(unsigned long v)  // NOLINT(google-explicit-constructor)
      : JsonValue(static_cast<unsigned long long>(v)) {}
  JsonValue(unsigned long long v);  // NOLINT(google-explicit-constructor)
  JsonValue(double v);              // NOLINT(google-explicit-constructor)
  JsonValue(std::string s)          // NOLINT(google-explicit-constructor)
      : type_(Type::kString), string_(std::move(s)) {}
  JsonValue(const char* s) : JsonValue(std::string(s)) {}  // NOLINT(google-explicit-constructor)

  static JsonValue MakeArray() { return JsonValue(Type::kArray); }
  static JsonValue MakeObject() { return JsonValue(Type::kObject); }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_bool() const { return type_ == Type::kBool; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }

  // Typed access; each returns nullptr / false when the value has another
  // type (or, for the integer forms, is not an integer in range).
  const std::string* as_string() const { return is_string() ? &string_ : nullptr; }
  bool as_bool(bool* out) const;
  bool as_uint64(uint64_t* out) const;
  bool as_int64(int64_t* out) const;
  // Any number, converted to double (exact integers may round).
  bool as_double(double* out) const;
  // Whether the number is held as an exact integer (not a double).
  bool is_integer() const { return is_number() && num_kind_ != NumKind::kDouble; }

  // Arrays. REQUIRES: is_array() (Append on null turns it into an array).
  const Array& items() const { return array_; }
  void Append(JsonValue v);

  // Objects. Set replaces a member of that name or adds it at the end;
  // on null it turns the value into an object. REQUIRES: is_object() or null.
  const Object& members() const { return object_; }
  void Set(const std::string& key, JsonValue v);
  // The member named `key`, or nullptr (also when this is not an object).
  const JsonValue* Find(std::string_view key) const;

  // JSON text. indent < 0: one line without spaces (the protocol's form);
  // indent >= 0: one member or item per line, nested by `indent` spaces.
  std::string Serialize(int indent = -1) const;

  bool operator==(const JsonValue& other) const;

 private:
  enum class NumKind : uint8_t { kInt, kUint, kDouble };
  explicit JsonValue(Type t) : type_(t) {}
  void SerializeTo(std::string& out, int indent, int depth) const;

  Type type_ = Type::kNull;
  bool bool_ = false;
  NumKind num_kind_ = NumKind::kUint;
  int64_t int_ = 0;     // kInt: integers < 0
  uint64_t uint_ = 0;   // kUint: integers >= 0
  double double_ = 0;   // kDouble
  std::string string_;  // kString
  Array array_;         // kArray
  Object object_;       // kObject
};

// Parses one JSON text (surrounding whitespace allowed). Errors name the
// byte offset: "JSON: expected ':' at offset 12".
Result<JsonValue> ParseJson(std::string_view text);

// `s` as a JSON string literal, quotes included.
std::string JsonQuote(std::string_view s);

}  // namespace cachefs
