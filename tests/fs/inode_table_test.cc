#include "fs/inode_table.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

namespace cachefs {
namespace {

int OpenPath(const char* p) { return open(p, O_PATH | O_NOFOLLOW | O_CLOEXEC); }

class InodeTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cachefs-inode-XXXXXX";
    dir_ = mkdtemp(t);
    close(open((dir_ + "/a").c_str(), O_CREAT | O_WRONLY, 0644));
    ASSERT_EQ(link((dir_ + "/a").c_str(), (dir_ + "/b").c_str()), 0);
    int root = OpenPath(dir_.c_str());
    struct stat st;
    fstat(root, &st);
    table_ = std::make_unique<InodeTable>(root, st);
  }
  void TearDown() override {
    unlink((dir_ + "/a").c_str());
    unlink((dir_ + "/b").c_str());
    rmdir(dir_.c_str());
  }
  Inode* Acquire(const std::string& name) {
    int fd = OpenPath((dir_ + "/" + name).c_str());
    struct stat st;
    fstat(fd, &st);
    return table_->Acquire(fd, st);
  }
  std::string dir_;
  std::unique_ptr<InodeTable> table_;
};

TEST_F(InodeTableTest, RootIsFuseRootId) {
  EXPECT_EQ(table_->FuseIno(table_->root()), FUSE_ROOT_ID);
  EXPECT_EQ(table_->Get(FUSE_ROOT_ID), table_->root());
  EXPECT_EQ(table_->size(), 1u);
}

TEST_F(InodeTableTest, HardLinksShareOneInodeAndCountLookups) {
  Inode* a = Acquire("a");
  Inode* b = Acquire("b");
  EXPECT_EQ(a, b);
  EXPECT_EQ(table_->size(), 2u);
  EXPECT_EQ(table_->Get(table_->FuseIno(a)), a);
  table_->Forget(a, 1);
  EXPECT_EQ(table_->size(), 2u);  // one lookup left
  table_->Forget(a, 1);
  EXPECT_EQ(table_->size(), 1u);  // gone
}

TEST_F(InodeTableTest, GenerationsDifferAfterForget) {
  Inode* a = Acquire("a");
  uint64_t g1 = a->generation();
  table_->Forget(a, 1);
  Inode* again = Acquire("a");
  EXPECT_NE(again->generation(), g1);
  table_->Forget(again, 5);  // over-forgetting clamps
  EXPECT_EQ(table_->size(), 1u);
}

TEST_F(InodeTableTest, RootNeverForgotten) {
  int fd = OpenPath(dir_.c_str());
  struct stat st;
  fstat(fd, &st);
  EXPECT_EQ(table_->Acquire(fd, st), table_->root());
  table_->Forget(table_->root(), 100);
  EXPECT_EQ(table_->size(), 1u);
  EXPECT_GE(fcntl(table_->root()->fd(), F_GETFD), 0);
}

}  // namespace
}  // namespace cachefs
