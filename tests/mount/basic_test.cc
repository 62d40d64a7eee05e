// The mount comes up, shows SOURCE, and goes away cleanly.
#include <gtest/gtest.h>
#include <sys/stat.h>
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

}  // namespace
}  // namespace cachefs::testing
