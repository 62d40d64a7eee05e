// The mount comes up, shows SOURCE, and goes away cleanly.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

TEST(BasicMount, ShowsSourceAndUnmountsCleanly) {
  auto m = MountedCachefs::Start();
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/hello", "hello world\n");
  EXPECT_EQ(ReadFile(m->mnt() + "/hello"), "hello world\n");
  WriteFile(m->mnt() + "/back", "through the mount");
  EXPECT_EQ(ReadFile(m->src() + "/back"), "through the mount");
  int status = m->Unmount();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "daemon status " << status;
  EXPECT_FALSE(IsMountPoint(m->mnt()));
}

TEST(BasicMount, SigtermUnmounts) {
  auto m = MountedCachefs::Start();
  ASSERT_NE(m, nullptr);
  ASSERT_EQ(kill(m->daemon_pid(), SIGTERM), 0);
  for (int i = 0; i < 500 && IsMountPoint(m->mnt()); ++i) usleep(10000);
  EXPECT_FALSE(IsMountPoint(m->mnt()));
}

// SOURCE a regular file: the mount is that one file (image mode), on a
// regular-file MOUNTPOINT. tests/mount/image_test.sh uses it for real.
TEST(BasicMount, ImageFileOnRegularFileMountpoint) {
  std::string dir = MakeTempDir("image");
  ASSERT_FALSE(dir.empty());
  std::string img = dir + "/disk.img";
  std::string mnt = dir + "/mnt.img";
  std::string data(1 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  WriteFile(img, data);
  WriteFile(mnt, "");
  std::string cmd = "'" + CachefsBinary() + "' '" + img + "' '" + mnt + "'";
  for (const std::string& a : TestCacheArgs()) cmd += " '" + a + "'";
  CommandResult r = RunCommand(cmd);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(IsMountPoint(mnt));
  EXPECT_EQ(ReadFile(mnt), data);
  {
    int fd = open(mnt.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(pwrite(fd, "XYZ", 3, 4096), 3);
    close(fd);
  }
  EXPECT_EQ(ReadFile(img).substr(4096, 3), "XYZ");
  RunCommand("fusermount3 -u -z '" + mnt + "'");
  EXPECT_FALSE(IsMountPoint(mnt));
  RemoveTree(dir);
}

}  // namespace
}  // namespace cachefs::testing
