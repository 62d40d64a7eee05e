#include "common/crc32c.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace cachefs {
namespace {

TEST(Crc32c, KnownValues) {
  // RFC 3720 (iSCSI) test vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32);
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(Crc32c(0, zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(0, ones.data(), ones.size()), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(0, inc.data(), inc.size()), 0x46DD794Eu);
  EXPECT_EQ(Crc32c(0, "123456789", 9), 0xE3069283u);
}

TEST(Crc32c, ExtendsInPieces) {
  std::string s = "the quick brown fox jumps over the lazy dog, twice over";
  uint32_t whole = Crc32c(0, s.data(), s.size());
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    EXPECT_EQ(Crc32c(Crc32c(0, s.data(), cut), s.data() + cut, s.size() - cut), whole) << cut;
  }
}

TEST(SubBlockCrc, SeedSeparatesPlaceAndGeneration) {
  std::vector<uint8_t> data(4096, 0x5a);
  uint32_t base = SubBlockCrc(1, 2, 3, data.data(), data.size());
  EXPECT_NE(base, SubBlockCrc(9, 2, 3, data.data(), data.size()));
  EXPECT_NE(base, SubBlockCrc(1, 9, 3, data.data(), data.size()));
  EXPECT_NE(base, SubBlockCrc(1, 2, 9, data.data(), data.size()));
  EXPECT_EQ(base, SubBlockCrc(1, 2, 3, data.data(), data.size()));
  data[100] ^= 1;
  EXPECT_NE(base, SubBlockCrc(1, 2, 3, data.data(), data.size()));
}

}  // namespace
}  // namespace cachefs
