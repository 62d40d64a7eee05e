#include "common/json.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace cachefs {
namespace {

JsonValue Parse(const std::string& text) {
  auto r = ParseJson(text);
  EXPECT_TRUE(r.ok()) << text << ": " << r.status().message();
  return r.ok() ? r.value() : JsonValue();
}

TEST(Json, ScalarsRoundTrip) {
  for (const char* text :
       {"null", "true", "false", "0", "-1", "42", "\"\"", "\"text\"", "18446744073709551615",
        "-9223372036854775808", "0.5", "-2.25", "1e+300", "[]", "{}"}) {
    EXPECT_EQ(Parse(text).Serialize(), text);
  }
}

TEST(Json, IntegersStayExact) {
  JsonValue max = Parse("18446744073709551615");
  uint64_t u = 0;
  ASSERT_TRUE(max.as_uint64(&u));
  EXPECT_EQ(u, std::numeric_limits<uint64_t>::max());
  int64_t i = 0;
  EXPECT_FALSE(max.as_int64(&i)) << "out of int64 range";
  JsonValue min = Parse("-9223372036854775808");
  ASSERT_TRUE(min.as_int64(&i));
  EXPECT_EQ(i, std::numeric_limits<int64_t>::min());
  EXPECT_FALSE(min.as_uint64(&u)) << "negative";
  // Too big for any integer: a double, not an error.
  JsonValue huge = Parse("123456789012345678901234567890");
  EXPECT_FALSE(huge.is_integer());
  double d = 0;
  ASSERT_TRUE(huge.as_double(&d));
  EXPECT_DOUBLE_EQ(d, 1.2345678901234568e29);
  // Fractions and exponents are doubles even when whole.
  EXPECT_FALSE(Parse("1.0").is_integer());
  EXPECT_FALSE(Parse("1e2").is_integer());
  EXPECT_TRUE(Parse("100").is_integer());
}

TEST(Json, ConstructorsKeepEveryIntegerType) {
  uint32_t u32 = 4000000000u;
  size_t sz = 1ull << 40;
  uint64_t u64 = std::numeric_limits<uint64_t>::max();
  int neg = -5;
  EXPECT_EQ(JsonValue(u32).Serialize(), "4000000000");
  EXPECT_EQ(JsonValue(sz).Serialize(), "1099511627776");
  EXPECT_EQ(JsonValue(u64).Serialize(), "18446744073709551615");
  EXPECT_EQ(JsonValue(neg).Serialize(), "-5");
  EXPECT_EQ(JsonValue(int64_t{-7}).Serialize(), "-7");
  EXPECT_EQ(JsonValue(0.1).Serialize(), "0.1");
}

TEST(Json, DoublesRoundTripExactly) {
  for (double d : {0.1, 1.0 / 3, 2.5e-300, 6.02214076e23, -0.0078125}) {
    JsonValue v(d);
    double back = 0;
    ASSERT_TRUE(Parse(v.Serialize()).as_double(&back));
    EXPECT_EQ(back, d) << v.Serialize();
  }
}

TEST(Json, NonFiniteDoublesAreNull) {
  EXPECT_EQ(JsonValue(std::numeric_limits<double>::quiet_NaN()).Serialize(), "null");
  EXPECT_EQ(JsonValue(std::numeric_limits<double>::infinity()).Serialize(), "null");
}

TEST(Json, OutOfRangeDoublesAreClamped) {
  double d = 0;
  ASSERT_TRUE(Parse("1e999").as_double(&d));
  EXPECT_EQ(d, std::numeric_limits<double>::max());
  ASSERT_TRUE(Parse("-1e999").as_double(&d));
  EXPECT_EQ(d, -std::numeric_limits<double>::max());
  ASSERT_TRUE(Parse("1e-999").as_double(&d));
  EXPECT_EQ(d, 0.0);
}

TEST(Json, StringEscapes) {
  JsonValue v = Parse(R"("a\"b\\c\/d\b\f\n\r\t\u0001\u00e9\u20ac\ud83d\ude00")");
  ASSERT_TRUE(v.is_string());
  EXPECT_EQ(*v.as_string(), "a\"b\\c/d\b\f\n\r\t\x01\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
  // Written back: control characters escaped, UTF-8 passed through.
  EXPECT_EQ(v.Serialize(),
            "\"a\\\"b\\\\c/d\\b\\f\\n\\r\\t\\u0001\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
  EXPECT_EQ(Parse(v.Serialize()), v);
  EXPECT_EQ(JsonQuote(std::string("x\0y", 3)), "\"x\\u0000y\"");
}

TEST(Json, ObjectsKeepInsertionOrderAndReplaceByName) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("b", 1);
  o.Set("a", "two");
  o.Set("c", JsonValue::MakeArray());
  o.Set("b", 3);  // replaced in place
  EXPECT_EQ(o.Serialize(), R"({"b":3,"a":"two","c":[]})");
  ASSERT_NE(o.Find("a"), nullptr);
  EXPECT_EQ(*o.Find("a")->as_string(), "two");
  EXPECT_EQ(o.Find("missing"), nullptr);
  EXPECT_EQ(JsonValue(5).Find("a"), nullptr) << "not an object";
  // Parsing keeps the text's order; a repeated name keeps the last value.
  JsonValue p = Parse(R"({"z":1,"y":2,"z":3})");
  EXPECT_EQ(p.Serialize(), R"({"z":3,"y":2})");
}

TEST(Json, NullTurnsIntoTheContainerItIsUsedAs) {
  JsonValue a;
  a.Append(1);
  a.Append("x");
  EXPECT_EQ(a.Serialize(), R"([1,"x"])");
  JsonValue o;
  o.Set("k", true);
  EXPECT_EQ(o.Serialize(), R"({"k":true})");
}

TEST(Json, IndentedOutput) {
  JsonValue o = Parse(R"({"a":[1,2],"b":{},"c":{"d":null}})");
  EXPECT_EQ(
      o.Serialize(2),
      "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": {},\n  \"c\": {\n    \"d\": null\n  }\n}");
  EXPECT_EQ(Parse(o.Serialize(2)), o);
}

TEST(Json, WhitespaceAroundTokens) {
  JsonValue v = Parse(" \t\r\n{ \"a\" :\n[ 1 , true ] } \n");
  EXPECT_EQ(v.Serialize(), R"({"a":[1,true]})");
}

TEST(Json, TypedAccessRefusesOtherTypes) {
  JsonValue s("5");
  uint64_t u = 0;
  int64_t i = 0;
  double d = 0;
  bool b = false;
  EXPECT_FALSE(s.as_uint64(&u));
  EXPECT_FALSE(s.as_int64(&i));
  EXPECT_FALSE(s.as_double(&d));
  EXPECT_FALSE(s.as_bool(&b));
  EXPECT_EQ(JsonValue(5).as_string(), nullptr);
  EXPECT_FALSE(JsonValue(0.5).as_uint64(&u)) << "not an integer";
  ASSERT_TRUE(JsonValue(true).as_bool(&b));
  EXPECT_TRUE(b);
}

TEST(Json, MalformedTextIsRefusedWithItsOffset) {
  struct Case {
    const char* text;
    const char* says;
  };
  for (const Case& c : {
           Case{"", "unexpected end"},
           Case{"   ", "unexpected end"},
           Case{"{", "member name"},
           Case{"{\"a\"}", "':'"},
           Case{"{\"a\":1,}", "member name"},
           Case{"[1,]", "unexpected character"},
           Case{"[1 2]", "',' or ']'"},
           Case{"{\"a\":1 \"b\":2}", "',' or '}'"},
           Case{"01", "leading zero"},
           Case{"-", "bad number"},
           Case{"1.", "bad fraction"},
           Case{"1e", "bad exponent"},
           Case{"+1", "unexpected character"},
           Case{".5", "unexpected character"},
           Case{"tru", "unexpected character"},
           Case{"nul", "unexpected character"},
           Case{"\"abc", "unterminated"},
           Case{"\"a\nb\"", "control character"},
           Case{"\"\\x\"", "bad escape"},
           Case{"\"\\u12g4\"", "\\u"},
           Case{"\"\\ud800\"", "surrogate"},
           Case{"\"\\udc00\"", "surrogate"},
           Case{"\"\\ud800\\u0041\"", "surrogate"},
           Case{"{} {}", "after the value"},
           Case{"1 2", "after the value"},
           Case{"NaN", "unexpected character"},
           Case{"{'a':1}", "member name"},
       }) {
    auto r = ParseJson(c.text);
    ASSERT_FALSE(r.ok()) << "accepted: " << c.text;
    EXPECT_NE(r.status().message().find(c.says), std::string::npos)
        << c.text << " -> " << r.status().message();
    EXPECT_NE(r.status().message().find("at offset"), std::string::npos) << r.status().message();
  }
  auto r = ParseJson("[1, 2, x]");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("offset 7"), std::string::npos) << r.status().message();
}

TEST(Json, NestingIsLimited) {
  std::string ok(JsonValue::kMaxDepth, '[');
  ok += std::string(JsonValue::kMaxDepth, ']');
  EXPECT_TRUE(ParseJson(ok).ok());
  // Deep enough to overflow a stack without the limit.
  std::string deep(100000, '[');
  auto r = ParseJson(deep);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("nesting"), std::string::npos) << r.status().message();
}

TEST(Json, EqualityComparesValues) {
  EXPECT_EQ(Parse(R"({"a":[1,"x",null]})"), Parse(R"( { "a" : [ 1 , "x" , null ] } )"));
  EXPECT_NE(Parse(R"({"a":1,"b":2})"), Parse(R"({"b":2,"a":1})")) << "order is part of the value";
  EXPECT_NE(Parse("1"), Parse("\"1\""));
  EXPECT_EQ(Parse("1"), Parse("1.0")) << "numbers compare by value";
  EXPECT_NE(Parse("-1"), Parse("18446744073709551615"));
}

}  // namespace
}  // namespace cachefs
