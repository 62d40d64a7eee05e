#include "common/parse.h"

#include <gtest/gtest.h>

namespace cachefs {
namespace {

TEST(ParseSize, AcceptsPowersOf1024) {
  EXPECT_EQ(ParseSize("4096").value(), 4096u);
  EXPECT_EQ(ParseSize("4K").value(), 4096u);
  EXPECT_EQ(ParseSize("4k").value(), 4096u);
  EXPECT_EQ(ParseSize("64M").value(), 64ull << 20);
  EXPECT_EQ(ParseSize("1G").value(), 1ull << 30);
  EXPECT_EQ(ParseSize("2T").value(), 2ull << 40);
  EXPECT_EQ(ParseSize("1KiB").value(), 1024u);
  EXPECT_EQ(ParseSize("1MB").value(), 1ull << 20);
  EXPECT_EQ(ParseSize("7b").value(), 7u);
}

TEST(ParseSize, RejectsGarbageAndOverflow) {
  for (const char* bad :
       {"", "K", "-1", "1.5G", "4X", "4KK", "12 M", "99999999999999999999", "20000000T"}) {
    EXPECT_FALSE(ParseSize(bad).ok()) << bad;
  }
}

TEST(ParseSizeOrPercent, Percent) {
  auto p = ParseSizeOrPercent("10%");
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(p->is_percent);
  EXPECT_DOUBLE_EQ(p->percent, 10);
  EXPECT_FALSE(ParseSizeOrPercent("0%").ok());
  EXPECT_FALSE(ParseSizeOrPercent("101%").ok());
  EXPECT_FALSE(ParseSizeOrPercent("%").ok());
  auto b = ParseSizeOrPercent("1G");
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->is_percent);
  EXPECT_EQ(b->bytes, 1ull << 30);
}

TEST(ParseBool, OnOff) {
  EXPECT_TRUE(ParseBool("on").value());
  EXPECT_TRUE(ParseBool("YES").value());
  EXPECT_FALSE(ParseBool("off").value());
  EXPECT_FALSE(ParseBool("0").value());
  EXPECT_FALSE(ParseBool("maybe").ok());
}

TEST(ParseSeconds, NonNegativeNumbers) {
  EXPECT_DOUBLE_EQ(ParseSeconds("1").value(), 1.0);
  EXPECT_DOUBLE_EQ(ParseSeconds("0.25").value(), 0.25);
  EXPECT_FALSE(ParseSeconds("-1").ok());
  EXPECT_FALSE(ParseSeconds("1s").ok());
  EXPECT_FALSE(ParseSeconds("inf").ok());
  EXPECT_FALSE(ParseSeconds("nan").ok());
}

TEST(ParseUint, Range) {
  EXPECT_EQ(ParseUint("5", 1, 10).value(), 5u);
  EXPECT_FALSE(ParseUint("0", 1, 10).ok());
  EXPECT_FALSE(ParseUint("11", 1, 10).ok());
  EXPECT_FALSE(ParseUint("+5", 1, 10).ok());
}

TEST(UnescapeOctal, UndoesMountinfoEscapes) {
  EXPECT_EQ(UnescapeOctal("/mnt/a\\040b"), "/mnt/a b");
  EXPECT_EQ(UnescapeOctal("x\\012y\\134z"), "x\ny\\z");
  EXPECT_EQ(UnescapeOctal("keep\\09 and \\1"), "keep\\09 and \\1");  // not three octal digits
  EXPECT_EQ(UnescapeOctal(""), "");
}

}  // namespace
}  // namespace cachefs
