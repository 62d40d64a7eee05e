#include "cache/backing.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace cachefs {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kFileSize = 256 * kPage;  // 1 MiB

// A file on a disk file system (/var/tmp: the kernel can drop its clean
// pages, which it cannot on tmpfs), written and synced so every page is clean.
class RealBackingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/var/tmp/cachefs-backing-XXXXXX";
    ASSERT_NE(mkdtemp(t), nullptr);
    dir_ = t;
    std::mt19937 rng(7);
    data_.resize(kFileSize);
    for (auto& c : data_) c = static_cast<char>(rng());
    fd_ = open((dir_ + "/f").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    ASSERT_GE(fd_, 0);
    ASSERT_EQ(pwrite(fd_, data_.data(), data_.size(), 0), static_cast<ssize_t>(data_.size()));
    ASSERT_EQ(fsync(fd_), 0);
  }
  void TearDown() override {
    if (fd_ >= 0) close(fd_);
    std::filesystem::remove_all(dir_);
  }

  // Which of the file's pages are in the page cache. The mapping is never
  // touched, so it maps no page and keeps none from being dropped.
  std::vector<bool> Resident() {
    void* map = mmap(nullptr, kFileSize, PROT_READ, MAP_SHARED, fd_, 0);
    EXPECT_NE(map, MAP_FAILED);
    std::vector<unsigned char> vec(kFileSize / kPage);
    EXPECT_EQ(mincore(map, kFileSize, vec.data()), 0);
    munmap(map, kFileSize);
    std::vector<bool> out;
    for (unsigned char v : vec) out.push_back((v & 1) != 0);
    return out;
  }

  std::string dir_;
  std::string data_;
  int fd_ = -1;
};

// The cache keeps what it reads from SOURCE, so the real backing lets the
// kernel drop SOURCE's page-cache copy of those bytes. (The kernel drops a
// page only when the whole folio holding it lies in the range, so the test
// reads whole files: a large folio around a partial range may stay.)
TEST_F(RealBackingTest, ReadDropsThePagesItRead) {
  // Every page cached first (a plain read), so a drop is the backing's doing.
  std::string warm(kFileSize, '\0');
  ASSERT_EQ(pread(fd_, warm.data(), warm.size(), 0), static_cast<ssize_t>(kFileSize));
  std::vector<bool> before = Resident();
  ASSERT_EQ(std::count(before.begin(), before.end(), true), static_cast<long>(before.size()))
      << "the test file's pages are not all cached after a read";

  std::string buf(kFileSize, '\0');
  auto n = RealBacking()->Read(fd_, 0, buf.size(), buf.data());
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(n.value(), kFileSize);
  EXPECT_EQ(buf, data_);
  std::vector<bool> after = Resident();
  EXPECT_EQ(std::count(after.begin(), after.end(), true), 0) << "pages still cached after the read";
}

// A read asking past the end returns what there is and drops it; a read at
// the end returns nothing and is no error.
TEST_F(RealBackingTest, ReadPastTheEndIsShortAndDropsWhatItRead) {
  std::string buf(2 * kFileSize, '\0');
  auto n = RealBacking()->Read(fd_, 0, buf.size(), buf.data());
  ASSERT_TRUE(n.ok()) << n.status().message();
  ASSERT_EQ(n.value(), kFileSize);
  EXPECT_EQ(buf.substr(0, kFileSize), data_);
  std::vector<bool> after = Resident();
  EXPECT_EQ(std::count(after.begin(), after.end(), true), 0) << "pages still cached after the read";

  auto past = RealBacking()->Read(fd_, kFileSize, buf.size(), buf.data());
  ASSERT_TRUE(past.ok()) << past.status().message();
  EXPECT_EQ(past.value(), 0u);
}

}  // namespace
}  // namespace cachefs
