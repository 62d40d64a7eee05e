#include "common/status.h"

#include <gtest/gtest.h>

namespace cachefs {
namespace {

TEST(Status, OkIsCheapAndHasNoErrno) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(ErrnoOf(s), 0);
  EXPECT_TRUE(s.Prefixed("ctx").ok());
}

TEST(Status, FromErrnoNamesTheObject) {
  Status s = Status::FromErrno(ENOENT, "source '/x'");
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(s.IsNotFound());
  EXPECT_EQ(s.message(), "source '/x': No such file or directory");
  EXPECT_EQ(ErrnoOf(s), ENOENT);
  EXPECT_EQ(s.Prefixed("mount").message(), "mount: source '/x': No such file or directory");
}

TEST(Status, ZeroErrnoBecomesEio) { EXPECT_EQ(ErrnoOf(Status::FromErrno(0, "x")), EIO); }

TEST(Result, CarriesValueOrStatus) {
  Result<int> good(5);
  ASSERT_TRUE(good.ok());
  EXPECT_EQ(good.value(), 5);
  Result<int> bad(Status::Invalid("nope"));
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(bad.status().IsInvalid());
}

}  // namespace
}  // namespace cachefs
