// Permission checks for users other than the mount's owner (contract 8).
//
// The test binary runs as root and mounts with allow_other. Each check forks a
// child that takes a numeric test identity (no /etc/passwd entry is needed)
// and runs one operation twice: through the mount, and on base/ref, a plain
// twin of SOURCE built with the same names, modes and owners. The mount always
// uses default_permissions, so the kernel decides from the attributes the
// daemon reports; the daemon then acts as root (or, for creation, as the
// caller). Any outcome that differs from ref means the daemon reported or did
// something other than what SOURCE itself would.
//
// Every tree is built in SOURCE before the mount has looked at any of it, and
// later changes go through the mount, so the kernel's attribute cache never
// holds stale modes or owners.
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {
namespace {

constexpr uid_t kRoot = 0;
constexpr uid_t kAliceUid = 4242;
constexpr gid_t kAliceGid = 4242;
constexpr uid_t kBobUid = 4244;
constexpr gid_t kBobGid = 4244;
constexpr gid_t kTeam = 4343;  // alice is a member, bob is not

// A test identity: what the child takes with setgroups/setresgid/setresuid.
struct Identity {
  const char* name;
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;
};
const Identity& Alice() {
  static const Identity* id = new Identity{"alice", kAliceUid, kAliceGid, {kTeam}};
  return *id;
}
const Identity& Bob() {
  static const Identity* id = new Identity{"bob", kBobUid, kBobGid, {}};
  return *id;
}

// Markers in Outcome::ret for failures of the harness rather than of the
// operation under test.
constexpr long kCannotSwitch = -1000;
constexpr long kChildLost = -1001;

// Forks a child that drops to uid/gid/groups, runs `op` there and sends its
// outcome back over a pipe. Fails the test (and returns kChildLost) if the
// child dies, hangs for 10 s, or cannot take the identity.
Outcome RunAs(uid_t uid, gid_t gid, const std::vector<gid_t>& groups,
              const std::function<Outcome()>& op) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe2: " << std::strerror(errno);
    return {kChildLost, errno};
  }
  pid_t pid = fork();
  if (pid == -1) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    close(fds[0]);
    close(fds[1]);
    return {kChildLost, errno};
  }
  if (pid == 0) {
    // The child never returns into gtest: _exit skips the fixture's
    // destructors, which would unmount the parent's mount.
    close(fds[0]);
    Outcome o;
    if (setgroups(groups.size(), groups.data()) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0) {
      o = {kCannotSwitch, errno};
    } else {
      umask(022);  // the same for the mount and for ref
      o = op();
    }
    ssize_t n = write(fds[1], &o, sizeof(o));
    _exit(n == static_cast<ssize_t>(sizeof(o)) ? 0 : 1);
  }
  close(fds[1]);
  Outcome o{kChildLost, 0};
  pollfd p{fds[0], POLLIN, 0};
  bool ready = poll(&p, 1, 10000) == 1;
  ssize_t n = ready ? read(fds[0], &o, sizeof(o)) : -1;
  close(fds[0]);
  if (!ready) kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (n != static_cast<ssize_t>(sizeof(o)) || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    ADD_FAILURE() << "child as uid " << uid << (ready ? " died" : " hung for 10 s")
                  << " (wait status " << status << ")";
    return {kChildLost, 0};
  }
  if (o.ret == kCannotSwitch) {
    ADD_FAILURE() << "cannot become uid " << uid << ": " << std::strerror(o.err);
  }
  return o;
}

Outcome RunAs(const Identity& who, const std::function<long()>& op) {
  return RunAs(who.uid, who.gid, who.groups, [&] { return Capture(op); });
}

Outcome Ok(long ret = 0) { return {ret, 0}; }
Outcome Err(int err) { return {-1, err}; }

// --- operations run in the child; each returns -1 with errno on failure -----

// Keeps errno of the failing call across the cleanup that follows it.
long FailWith(int err) {
  errno = err;
  return -1;
}

// Reads up to 4 KiB; returns the byte count.
long ReadSome(const std::string& path, int extra_flags = 0) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | extra_flags);
  if (fd == -1) return -1;
  char buf[4096];
  ssize_t n = read(fd, buf, sizeof(buf));
  int err = errno;
  close(fd);
  return n == -1 ? FailWith(err) : n;
}

// Opens with `flags` and writes "x"; returns the byte count.
long WriteSome(const std::string& path, int flags = O_WRONLY) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd == -1) return -1;
  ssize_t n = write(fd, "x", 1);
  int err = errno;
  if (close(fd) == -1 && n != -1) return -1;
  return n == -1 ? FailWith(err) : n;
}

long OpenClose(const std::string& path, int flags, mode_t mode = 0644) {
  int fd = open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd == -1) return -1;
  close(fd);
  return 0;
}

// Lists a directory; returns the number of entries (with . and ..).
long ListDir(const std::string& path) {
  DIR* d = opendir(path.c_str());
  if (d == nullptr) return -1;
  long count = 0;
  errno = 0;
  while (readdir(d) != nullptr) ++count;
  int err = errno;
  closedir(d);
  return err != 0 ? FailWith(err) : count;
}

long Stat(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st);
}

long SetTimes(const std::string& path, long atime_nsec_or_flag, long mtime_nsec_or_flag) {
  timespec ts[2] = {{1000000000, atime_nsec_or_flag}, {1000000000, mtime_nsec_or_flag}};
  return utimensat(AT_FDCWD, path.c_str(), ts, 0);
}

// A POSIX ACL in the kernel's xattr format (system.posix_acl_access).
struct AclEntry {
  uint16_t tag;
  uint16_t perm;
  uint32_t id;
};
std::string AclXattr(const std::vector<AclEntry>& entries) {
  std::string v;
  uint32_t version = 2;  // POSIX_ACL_XATTR_VERSION
  v.append(reinterpret_cast<const char*>(&version), sizeof(version));
  for (const AclEntry& e : entries) v.append(reinterpret_cast<const char*>(&e), sizeof(e));
  return v;
}
constexpr uint16_t kAclUserObj = 0x01, kAclUser = 0x02, kAclGroupObj = 0x04, kAclMask = 0x10,
                   kAclOther = 0x20;
constexpr uint32_t kAclNoId = static_cast<uint32_t>(-1);

// --- the twin trees ---------------------------------------------------------

struct Node {
  const char* path;  // relative to the tree's root
  bool dir;
  mode_t mode;
  uid_t uid;
  gid_t gid;
};

// Owners and modes are set after creation (chown clears set-id bits, so it
// comes first) and hold regardless of the test binary's umask.
const std::vector<Node>& TreeNodes() {
  static const auto* nodes = new std::vector<Node>{
      {"bob_secret", false, 0600, kBobUid, kBobGid},
      {"bob_public", false, 0644, kBobUid, kBobGid},
      {"bob_writable", false, 0666, kBobUid, kBobGid},
      {"bob_setuid", false, 04666, kBobUid, kBobGid},
      {"bob_setid_exec", false, 06777, kBobUid, kBobGid},
      {"bob_dir", true, 0755, kBobUid, kBobGid},
      {"bob_listonly", true, 0711, kBobUid, kBobGid},
      {"bob_listonly/known", false, 0644, kBobUid, kBobGid},
      {"bob_private", true, 0700, kBobUid, kBobGid},
      {"bob_private/inner", false, 0644, kBobUid, kBobGid},
      {"sticky", true, 01777, kRoot, kRoot},
      {"sticky/bob_file", false, 0644, kBobUid, kBobGid},
      {"sticky/bob_subdir", true, 0755, kBobUid, kBobGid},
      {"sticky/alice_file", false, 0644, kAliceUid, kAliceGid},
      {"alice_file", false, 0644, kAliceUid, kAliceGid},
      {"alice_ro", false, 0444, kAliceUid, kAliceGid},
      {"alice_foreign_group", false, 0644, kAliceUid, kBobGid},
      {"team_file", false, 0640, kRoot, kTeam},
      {"team_0060", false, 0060, kRoot, kTeam},
      {"alice_team_0060", false, 0060, kAliceUid, kTeam},
      {"team_0070", true, 0070, kRoot, kTeam},
      {"team_0070/entry", false, 0644, kRoot, kRoot},
      {"team_dir", true, 0775, kRoot, kTeam},
      {"setgid_dir", true, 02777, kRoot, kTeam},
      {"open_dir", true, 0777, kRoot, kRoot},
      {"acl_grant", false, 0600, kRoot, kRoot},
      {"acl_deny", false, 0644, kRoot, kRoot},
      {"acl_default_dir", true, 0777, kRoot, kRoot},
  };
  return *nodes;
}

void BuildTree(const std::string& root) {
  for (const Node& n : TreeNodes()) {
    std::string p = root + "/" + n.path;
    if (n.dir) {
      ASSERT_EQ(mkdir(p.c_str(), 0700), 0) << p << ": " << std::strerror(errno);
    } else {
      WriteFile(p, std::string("contents of ") + n.path + "\n");
    }
    ASSERT_EQ(lchown(p.c_str(), n.uid, n.gid), 0) << p << ": " << std::strerror(errno);
    ASSERT_EQ(chmod(p.c_str(), n.mode), 0) << p << ": " << std::strerror(errno);
  }
  std::string link = root + "/alice_link";
  ASSERT_EQ(symlink("alice_file", link.c_str()), 0) << link << ": " << std::strerror(errno);
  ASSERT_EQ(lchown(link.c_str(), kAliceUid, kAliceGid), 0) << link << ": " << std::strerror(errno);
  for (const char* f : {"bob_public", "bob_secret"}) {
    std::string p = root + "/" + f;
    ASSERT_EQ(setxattr(p.c_str(), "user.note", "v", 1, 0), 0) << p << ": " << std::strerror(errno);
  }
}

// Gives the acl_* nodes their ACLs. Returns false, without failing the test,
// when the filesystem under TMPDIR has no POSIX ACLs.
bool SetAcls(const std::string& root) {
  // acl_grant: 0600 root's, but alice may read it (mask r--, so mode 0640).
  std::string grant = AclXattr({{kAclUserObj, 6, kAclNoId},
                                {kAclUser, 4, kAliceUid},
                                {kAclGroupObj, 0, kAclNoId},
                                {kAclMask, 4, kAclNoId},
                                {kAclOther, 0, kAclNoId}});
  // acl_deny: world-readable, except for bob (mask r--, so mode stays 0644).
  std::string deny = AclXattr({{kAclUserObj, 6, kAclNoId},
                               {kAclUser, 0, kBobUid},
                               {kAclGroupObj, 4, kAclNoId},
                               {kAclMask, 4, kAclNoId},
                               {kAclOther, 4, kAclNoId}});
  // acl_default_dir: a minimal default ACL, rwx for all, which replaces the
  // creator's umask for new entries.
  std::string dflt =
      AclXattr({{kAclUserObj, 7, kAclNoId}, {kAclGroupObj, 7, kAclNoId}, {kAclOther, 7, kAclNoId}});
  for (const auto& [name, attr, acl] :
       {std::tuple{"acl_grant", "system.posix_acl_access", grant},
        std::tuple{"acl_deny", "system.posix_acl_access", deny},
        std::tuple{"acl_default_dir", "system.posix_acl_default", dflt}}) {
    std::string p = root + "/" + name;
    if (setxattr(p.c_str(), attr, acl.data(), acl.size(), 0) == 0) continue;
    if (errno == EOPNOTSUPP) return false;
    ADD_FAILURE() << p << " " << attr << ": " << std::strerror(errno);
    return false;
  }
  return true;
}

class PermissionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    m_ = MountedCachefs::Start({"-o", "allow_other"});
    ASSERT_NE(m_, nullptr);
    ASSERT_NO_FATAL_FAILURE(BuildTree(m_->src()));
    ASSERT_NO_FATAL_FAILURE(BuildTree(m_->ref()));
    acls_ = SetAcls(m_->src()) && SetAcls(m_->ref());
  }

  // Runs op(root) as `who` through the mount and on ref. Ref must give `want`
  // (otherwise the premise of the check is wrong, not the daemon) and the
  // mount must give the same.
  void Expect(const Identity& who, const Outcome& want, const std::string& what,
              const std::function<long(const std::string& root)>& op) {
    Outcome ref = RunAs(who, [&] { return op(m_->ref()); });
    Outcome mnt = RunAs(who, [&] { return op(m_->mnt()); });
    EXPECT_EQ(ref, want) << who.name << ": " << what << " on ref gave " << ToString(ref)
                         << ", the test expects " << ToString(want);
    EXPECT_EQ(mnt, ref) << who.name << ": " << what << " through the mount gave " << ToString(mnt)
                        << ", on ref " << ToString(ref);
  }

  // As Expect, for an operation that must succeed with whatever value ref gives.
  void ExpectSuccess(const Identity& who, const std::string& what,
                     const std::function<long(const std::string& root)>& op) {
    Outcome ref = RunAs(who, [&] { return op(m_->ref()); });
    Outcome mnt = RunAs(who, [&] { return op(m_->mnt()); });
    EXPECT_GE(ref.ret, 0) << who.name << ": " << what << " on ref gave " << ToString(ref);
    EXPECT_EQ(mnt, ref) << who.name << ": " << what << " through the mount gave " << ToString(mnt)
                        << ", on ref " << ToString(ref);
  }

  // lstat of `rel` in SOURCE and in ref; they must agree on type, mode, owner
  // and link count. Returns the SOURCE one.
  struct stat ExpectSameInode(const std::string& rel) {
    struct stat s = {};
    struct stat r = {};
    EXPECT_EQ(lstat((m_->src() + "/" + rel).c_str(), &s), 0) << rel << " in SOURCE";
    EXPECT_EQ(lstat((m_->ref() + "/" + rel).c_str(), &r), 0) << rel << " in ref";
    EXPECT_EQ(s.st_mode, r.st_mode)
        << rel << std::oct << ": mode 0" << s.st_mode << " in SOURCE, 0" << r.st_mode << " in ref";
    EXPECT_EQ(s.st_uid, r.st_uid) << rel << ": uid in SOURCE vs ref";
    EXPECT_EQ(s.st_gid, r.st_gid) << rel << ": gid in SOURCE vs ref";
    EXPECT_EQ(s.st_nlink, r.st_nlink) << rel << ": link count in SOURCE vs ref";
    return s;
  }

  std::unique_ptr<MountedCachefs> m_;
  bool acls_ = false;  // the acl_* nodes have their ACLs
};

TEST_F(PermissionTest, FilesOfAnotherUserNeedTheirModeBits) {
  Expect(Alice(), Err(EACCES), "read bob's 0600 file",
         [](const std::string& r) { return ReadSome(r + "/bob_secret"); });
  ExpectSuccess(Bob(), "read his own 0600 file",
                [](const std::string& r) { return ReadSome(r + "/bob_secret"); });
  ExpectSuccess(Alice(), "read bob's 0644 file",
                [](const std::string& r) { return ReadSome(r + "/bob_public"); });
  Expect(Alice(), Err(EACCES), "write bob's 0644 file",
         [](const std::string& r) { return WriteSome(r + "/bob_public"); });
  Expect(Alice(), Err(EACCES), "open bob's 0644 file O_RDWR",
         [](const std::string& r) { return OpenClose(r + "/bob_public", O_RDWR); });
  Expect(Alice(), Err(EACCES), "open bob's 0644 file O_WRONLY|O_TRUNC",
         [](const std::string& r) { return OpenClose(r + "/bob_public", O_WRONLY | O_TRUNC); });
  Expect(Alice(), Err(EACCES), "truncate bob's 0644 file",
         [](const std::string& r) { return truncate((r + "/bob_public").c_str(), 0); });
  Expect(Alice(), Ok(1), "write bob's 0666 file",
         [](const std::string& r) { return WriteSome(r + "/bob_writable"); });
  Expect(Alice(), Ok(), "truncate bob's 0666 file",
         [](const std::string& r) { return truncate((r + "/bob_writable").c_str(), 3); });
  EXPECT_EQ(ExpectSameInode("bob_writable").st_size, 3);
  EXPECT_EQ(ReadFile(m_->src() + "/bob_writable"), ReadFile(m_->ref() + "/bob_writable"));
  Expect(Alice(), Err(EACCES), "access(W_OK) on her own 0444 file",
         [](const std::string& r) { return access((r + "/alice_ro").c_str(), W_OK); });
  Expect(Alice(), Ok(), "access(R_OK) on her own 0444 file",
         [](const std::string& r) { return access((r + "/alice_ro").c_str(), R_OK); });
  Expect(Alice(), Err(EACCES), "access(W_OK) on bob's 0644 file",
         [](const std::string& r) { return access((r + "/bob_public").c_str(), W_OK); });
  Expect(Alice(), Err(EACCES), "open her own 0444 file for writing",
         [](const std::string& r) { return OpenClose(r + "/alice_ro", O_WRONLY); });
  Expect(Alice(), Err(EPERM), "open bob's file O_NOATIME",
         [](const std::string& r) { return ReadSome(r + "/bob_public", O_NOATIME); });
  Expect(Alice(), Err(EACCES), "getxattr user.* of bob's 0600 file", [](const std::string& r) {
    char v[16];
    return getxattr((r + "/bob_secret").c_str(), "user.note", v, sizeof(v));
  });
  Expect(Alice(), Ok(1), "getxattr user.* of bob's 0644 file", [](const std::string& r) {
    char v[16];
    return getxattr((r + "/bob_public").c_str(), "user.note", v, sizeof(v));
  });
  Expect(Alice(), Err(EACCES), "setxattr user.* on bob's 0644 file", [](const std::string& r) {
    return setxattr((r + "/bob_public").c_str(), "user.note", "w", 1, 0);
  });
  Expect(Alice(), Err(EPERM), "setxattr trusted.* on her own file", [](const std::string& r) {
    return setxattr((r + "/alice_file").c_str(), "trusted.note", "w", 1, 0);
  });
}

TEST_F(PermissionTest, DirectoriesOfAnotherUserNeedTheirModeBits) {
  const std::string in_bob_dir = "creating in bob's 0755 directory: ";
  Expect(Alice(), Err(EACCES), in_bob_dir + "create a file", [](const std::string& r) {
    return OpenClose(r + "/bob_dir/new", O_CREAT | O_WRONLY | O_EXCL);
  });
  Expect(Alice(), Err(EACCES), in_bob_dir + "mkdir",
         [](const std::string& r) { return mkdir((r + "/bob_dir/new").c_str(), 0755); });
  Expect(Alice(), Err(EACCES), in_bob_dir + "symlink",
         [](const std::string& r) { return symlink("x", (r + "/bob_dir/new").c_str()); });
  Expect(Alice(), Err(EACCES), in_bob_dir + "mkfifo",
         [](const std::string& r) { return mkfifo((r + "/bob_dir/new").c_str(), 0644); });
  Expect(Alice(), Err(EACCES), in_bob_dir + "link", [](const std::string& r) {
    return link((r + "/alice_file").c_str(), (r + "/bob_dir/new").c_str());
  });
  Expect(Alice(), Err(EACCES), in_bob_dir + "rename into", [](const std::string& r) {
    return rename((r + "/alice_file").c_str(), (r + "/bob_dir/new").c_str());
  });
  ExpectSuccess(Alice(), "list bob's 0755 directory",
                [](const std::string& r) { return ListDir(r + "/bob_dir"); });

  Expect(Alice(), Err(EACCES), "list bob's 0711 directory",
         [](const std::string& r) { return ListDir(r + "/bob_listonly"); });
  Expect(Alice(), Ok(), "stat a known name in bob's 0711 directory",
         [](const std::string& r) { return Stat(r + "/bob_listonly/known"); });
  ExpectSuccess(Alice(), "read a known name in bob's 0711 directory",
                [](const std::string& r) { return ReadSome(r + "/bob_listonly/known"); });
  Expect(Alice(), Err(ENOENT), "stat a missing name in bob's 0711 directory",
         [](const std::string& r) { return Stat(r + "/bob_listonly/missing"); });

  Expect(Alice(), Err(EACCES), "stat through bob's 0700 directory",
         [](const std::string& r) { return Stat(r + "/bob_private/inner"); });
  Expect(Alice(), Err(EACCES), "read through bob's 0700 directory",
         [](const std::string& r) { return ReadSome(r + "/bob_private/inner"); });
  Expect(Alice(), Err(EACCES), "list bob's 0700 directory",
         [](const std::string& r) { return ListDir(r + "/bob_private"); });
  Expect(Alice(), Err(EACCES), "chdir into bob's 0700 directory",
         [](const std::string& r) { return chdir((r + "/bob_private").c_str()); });
  ExpectSuccess(Bob(), "list his own 0700 directory",
                [](const std::string& r) { return ListDir(r + "/bob_private"); });

  Expect(Alice(), Err(EPERM), "mknod a character device", [](const std::string& r) {
    return mknod((r + "/open_dir/null").c_str(), S_IFCHR | 0666, makedev(1, 3));
  });
  // With fs.protected_hardlinks (the usual default) only the owner may link a
  // file they can neither read nor write.
  bool protected_hardlinks = ReadFile("/proc/sys/fs/protected_hardlinks") != "0\n";
  Expect(Alice(), protected_hardlinks ? Err(EPERM) : Ok(), "hard link to bob's 0600 file",
         [](const std::string& r) {
           return link((r + "/bob_secret").c_str(), (r + "/open_dir/stolen").c_str());
         });
}

TEST_F(PermissionTest, StickyDirectoryProtectsOtherUsersEntries) {
  Expect(Alice(), Err(EPERM), "unlink bob's file in a 1777 directory",
         [](const std::string& r) { return unlink((r + "/sticky/bob_file").c_str()); });
  Expect(Alice(), Err(EPERM), "rename bob's file in a 1777 directory", [](const std::string& r) {
    return rename((r + "/sticky/bob_file").c_str(), (r + "/sticky/mine").c_str());
  });
  Expect(Alice(), Err(EPERM), "rename her file over bob's in a 1777 directory",
         [](const std::string& r) {
           return rename((r + "/sticky/alice_file").c_str(), (r + "/sticky/bob_file").c_str());
         });
  Expect(Alice(), Err(EPERM), "rmdir bob's directory in a 1777 directory",
         [](const std::string& r) { return rmdir((r + "/sticky/bob_subdir").c_str()); });
  Expect(Alice(), Ok(), "unlink her own file in a 1777 directory",
         [](const std::string& r) { return unlink((r + "/sticky/alice_file").c_str()); });
  Expect(Bob(), Ok(), "unlink his own file in a 1777 directory",
         [](const std::string& r) { return unlink((r + "/sticky/bob_file").c_str()); });
  Expect(Alice(), Ok(), "create in a 1777 directory", [](const std::string& r) {
    return OpenClose(r + "/sticky/new", O_CREAT | O_WRONLY | O_EXCL);
  });
  Expect(Bob(), Err(EPERM), "unlink alice's new file in a 1777 directory",
         [](const std::string& r) { return unlink((r + "/sticky/new").c_str()); });
}

TEST_F(PermissionTest, AttributeChangesNeedOwnership) {
  Expect(Alice(), Err(EPERM), "chmod bob's file",
         [](const std::string& r) { return chmod((r + "/bob_writable").c_str(), 0777); });
  Expect(Alice(), Ok(), "chmod her own file",
         [](const std::string& r) { return chmod((r + "/alice_file").c_str(), 0600); });
  EXPECT_EQ(ExpectSameInode("alice_file").st_mode & 07777, 0600u);
  Expect(Alice(), Err(EPERM), "chown her own file to bob", [](const std::string& r) {
    return chown((r + "/alice_file").c_str(), kBobUid, static_cast<gid_t>(-1));
  });
  Expect(Alice(), Ok(), "chown her own file to herself", [](const std::string& r) {
    return chown((r + "/alice_file").c_str(), kAliceUid, static_cast<gid_t>(-1));
  });
  Expect(Alice(), Err(EPERM), "chown bob's file to herself", [](const std::string& r) {
    return chown((r + "/bob_writable").c_str(), kAliceUid, static_cast<gid_t>(-1));
  });
  // The kernel drops S_ISGID from a chmod by an owner outside the file's group.
  Expect(Alice(), Ok(), "chmod g+s her file of bob's group",
         [](const std::string& r) { return chmod((r + "/alice_foreign_group").c_str(), 02755); });
  EXPECT_EQ(ExpectSameInode("alice_foreign_group").st_mode & 07777, 0755u);

  Expect(Alice(), Err(EPERM), "utimensat explicit times on bob's 0666 file",
         [](const std::string& r) { return SetTimes(r + "/bob_writable", 0, 0); });
  Expect(Alice(), Err(EPERM), "utimensat explicit mtime, atime UTIME_NOW, on bob's 0666 file",
         [](const std::string& r) { return SetTimes(r + "/bob_writable", UTIME_NOW, 0); });
  Expect(Alice(), Ok(), "utimensat UTIME_NOW on bob's 0666 file",
         [](const std::string& r) { return SetTimes(r + "/bob_writable", UTIME_NOW, UTIME_NOW); });
  Expect(Alice(), Ok(), "utimensat(NULL) on bob's 0666 file", [](const std::string& r) {
    return utimensat(AT_FDCWD, (r + "/bob_writable").c_str(), nullptr, 0);
  });
  Expect(Alice(), Err(EACCES), "utimensat UTIME_NOW on bob's 0644 file",
         [](const std::string& r) { return SetTimes(r + "/bob_public", UTIME_NOW, UTIME_NOW); });
  Expect(Bob(), Ok(), "utimensat explicit times on his own file",
         [](const std::string& r) { return SetTimes(r + "/bob_public", 0, 0); });
  Expect(Alice(), Ok(), "utimensat explicit times on her own symlink", [](const std::string& r) {
    timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
    return utimensat(AT_FDCWD, (r + "/alice_link").c_str(), ts, AT_SYMLINK_NOFOLLOW);
  });
  Expect(Bob(), Err(EPERM), "utimensat explicit times on alice's symlink",
         [](const std::string& r) {
           timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
           return utimensat(AT_FDCWD, (r + "/alice_link").c_str(), ts, AT_SYMLINK_NOFOLLOW);
         });
  struct stat s = {};
  struct stat r = {};
  ASSERT_EQ(lstat((m_->src() + "/alice_link").c_str(), &s), 0);
  ASSERT_EQ(lstat((m_->ref() + "/alice_link").c_str(), &r), 0);
  EXPECT_EQ(s.st_mtim.tv_sec, r.st_mtim.tv_sec) << "alice_link mtime in SOURCE vs ref";
  ASSERT_EQ(stat((m_->src() + "/bob_public").c_str(), &s), 0);
  ASSERT_EQ(stat((m_->ref() + "/bob_public").c_str(), &r), 0);
  EXPECT_EQ(s.st_mtim.tv_sec, 1000000000);
  EXPECT_EQ(s.st_mtim.tv_sec, r.st_mtim.tv_sec);
  EXPECT_EQ(s.st_atim.tv_sec, r.st_atim.tv_sec);
}

TEST_F(PermissionTest, ChgrpFollowsGroupMembership) {
  Expect(Alice(), Ok(), "chgrp her own file to a group she is in", [](const std::string& r) {
    return chown((r + "/alice_file").c_str(), static_cast<uid_t>(-1), kTeam);
  });
  EXPECT_EQ(ExpectSameInode("alice_file").st_gid, kTeam);
  Expect(Alice(), Err(EPERM), "chgrp her own file to a group she is not in",
         [](const std::string& r) {
           return chown((r + "/alice_file").c_str(), static_cast<uid_t>(-1), kBobGid);
         });
  Expect(Bob(), Err(EPERM), "chgrp his own file to a group he is not in", [](const std::string& r) {
    return chown((r + "/bob_public").c_str(), static_cast<uid_t>(-1), kTeam);
  });
  Expect(Alice(), Err(EPERM), "chgrp bob's file to her group", [](const std::string& r) {
    return chown((r + "/bob_writable").c_str(), static_cast<uid_t>(-1), kTeam);
  });
  Expect(Alice(), Ok(), "lchown her own symlink to a group she is in", [](const std::string& r) {
    return lchown((r + "/alice_link").c_str(), static_cast<uid_t>(-1), kTeam);
  });
  Expect(Alice(), Err(EPERM), "lchown her own symlink to a group she is not in",
         [](const std::string& r) {
           return lchown((r + "/alice_link").c_str(), static_cast<uid_t>(-1), kBobGid);
         });
  EXPECT_EQ(ExpectSameInode("alice_file").st_gid, kTeam);
  EXPECT_EQ(ExpectSameInode("alice_link").st_gid, kTeam);
  EXPECT_EQ(ExpectSameInode("bob_public").st_gid, kBobGid);
}

TEST_F(PermissionTest, GroupBitsApplyToMembersOnly) {
  ExpectSuccess(Alice(), "read a 0640 file of her group",
                [](const std::string& r) { return ReadSome(r + "/team_file"); });
  Expect(Bob(), Err(EACCES), "read a 0640 file of a group he is not in",
         [](const std::string& r) { return ReadSome(r + "/team_file"); });
  Expect(Alice(), Err(EACCES), "write a 0640 file of her group",
         [](const std::string& r) { return WriteSome(r + "/team_file"); });
  ExpectSuccess(Alice(), "read a 0060 file of her group",
                [](const std::string& r) { return ReadSome(r + "/team_0060"); });
  Expect(Alice(), Ok(1), "append to a 0060 file of her group",
         [](const std::string& r) { return WriteSome(r + "/team_0060", O_WRONLY | O_APPEND); });
  Expect(Bob(), Err(EACCES), "read a 0060 file of a group he is not in",
         [](const std::string& r) { return ReadSome(r + "/team_0060"); });
  // The owner class wins even when the group class would allow.
  Expect(Alice(), Err(EACCES), "read her own 0060 file of her group",
         [](const std::string& r) { return ReadSome(r + "/alice_team_0060"); });

  ExpectSuccess(Alice(), "list a 0070 directory of her group",
                [](const std::string& r) { return ListDir(r + "/team_0070"); });
  Expect(Alice(), Ok(), "create in a 0070 directory of her group", [](const std::string& r) {
    return OpenClose(r + "/team_0070/alice_new", O_CREAT | O_WRONLY | O_EXCL);
  });
  Expect(Bob(), Err(EACCES), "list a 0070 directory of a group he is not in",
         [](const std::string& r) { return ListDir(r + "/team_0070"); });
  Expect(Bob(), Err(EACCES), "stat through a 0070 directory of a group he is not in",
         [](const std::string& r) { return Stat(r + "/team_0070/entry"); });

  Expect(Alice(), Ok(), "create a file in a 0775 directory of her group", [](const std::string& r) {
    return OpenClose(r + "/team_dir/alice_new", O_CREAT | O_WRONLY | O_EXCL);
  });
  Expect(Alice(), Ok(), "mkdir in a 0775 directory of her group",
         [](const std::string& r) { return mkdir((r + "/team_dir/alice_dir").c_str(), 0755); });
  Expect(Bob(), Err(EACCES), "create a file in a 0775 directory of a group he is not in",
         [](const std::string& r) {
           return OpenClose(r + "/team_dir/bob_new", O_CREAT | O_WRONLY | O_EXCL);
         });
  Expect(Bob(), Err(EACCES), "unlink in a 0775 directory of a group he is not in",
         [](const std::string& r) { return unlink((r + "/team_dir/alice_new").c_str()); });
  ExpectSuccess(Bob(), "list a 0775 directory of a group he is not in",
                [](const std::string& r) { return ListDir(r + "/team_dir"); });
  // Created as alice with her groups, in a directory that is not setgid.
  struct stat st = ExpectSameInode("team_dir/alice_new");
  EXPECT_EQ(st.st_uid, kAliceUid);
  EXPECT_EQ(st.st_gid, kAliceGid);
}

TEST_F(PermissionTest, CreatedObjectsBelongToTheCaller) {
  ExpectSuccess(Alice(), "create a file", [](const std::string& r) {
    return OpenClose(r + "/open_dir/file", O_CREAT | O_WRONLY | O_EXCL, 0640);
  });
  ExpectSuccess(Alice(), "mkdir",
                [](const std::string& r) { return mkdir((r + "/open_dir/dir").c_str(), 0750); });
  ExpectSuccess(Alice(), "symlink", [](const std::string& r) {
    return symlink("file", (r + "/open_dir/sym").c_str());
  });
  ExpectSuccess(Alice(), "mkfifo",
                [](const std::string& r) { return mkfifo((r + "/open_dir/fifo").c_str(), 0600); });
  ExpectSuccess(Alice(), "hard link", [](const std::string& r) {
    return link((r + "/open_dir/file").c_str(), (r + "/open_dir/hard").c_str());
  });
  ExpectSuccess(Alice(), "create a 0444 file opened for writing", [](const std::string& r) {
    return WriteSome(r + "/open_dir/ro_new", O_CREAT | O_WRONLY | O_EXCL);
  });
  for (const char* rel : {"open_dir/file", "open_dir/dir", "open_dir/sym", "open_dir/fifo",
                          "open_dir/hard", "open_dir/ro_new"}) {
    struct stat st = ExpectSameInode(rel);
    EXPECT_EQ(st.st_uid, kAliceUid) << rel << " in SOURCE";
    EXPECT_EQ(st.st_gid, kAliceGid) << rel << " in SOURCE";
  }
  EXPECT_EQ(ExpectSameInode("open_dir/hard").st_nlink, 2u);
  // A root caller with another primary group: the daemon must not keep
  // alice's identity on its thread, nor its own group.
  Outcome ref = RunAs(kRoot, kTeam, {}, [&] {
    return Capture(
        [&] { return OpenClose(m_->ref() + "/open_dir/root_file", O_CREAT | O_WRONLY); });
  });
  Outcome mnt = RunAs(kRoot, kTeam, {}, [&] {
    return Capture(
        [&] { return OpenClose(m_->mnt() + "/open_dir/root_file", O_CREAT | O_WRONLY); });
  });
  EXPECT_EQ(ref, Ok());
  EXPECT_EQ(mnt, ref) << ToString(mnt);
  struct stat st = ExpectSameInode("open_dir/root_file");
  EXPECT_EQ(st.st_uid, kRoot);
  EXPECT_EQ(st.st_gid, kTeam);
}

TEST_F(PermissionTest, SetgidDirectoryPassesItsGroupOn) {
  ExpectSuccess(Alice(), "create a file in a setgid directory", [](const std::string& r) {
    return OpenClose(r + "/setgid_dir/file", O_CREAT | O_WRONLY | O_EXCL, 0644);
  });
  ExpectSuccess(Alice(), "mkdir in a setgid directory",
                [](const std::string& r) { return mkdir((r + "/setgid_dir/sub").c_str(), 0755); });
  ExpectSuccess(Alice(), "create a file in the new subdirectory", [](const std::string& r) {
    return OpenClose(r + "/setgid_dir/sub/deeper", O_CREAT | O_WRONLY | O_EXCL, 0644);
  });
  ExpectSuccess(Bob(), "create a file in a setgid directory of a group he is not in",
                [](const std::string& r) {
                  return OpenClose(r + "/setgid_dir/bobs", O_CREAT | O_WRONLY | O_EXCL, 0644);
                });
  ExpectSuccess(
      Bob(), "mkdir with S_ISGID asked for in a setgid directory",
      [](const std::string& r) { return mkdir((r + "/setgid_dir/bobs_dir").c_str(), 02755); });
  ExpectSuccess(Bob(), "create a 02755 file in a setgid directory", [](const std::string& r) {
    return OpenClose(r + "/setgid_dir/bobs_sgid", O_CREAT | O_WRONLY | O_EXCL, 02755);
  });

  struct stat file = ExpectSameInode("setgid_dir/file");
  EXPECT_EQ(file.st_uid, kAliceUid);
  EXPECT_EQ(file.st_gid, kTeam);
  struct stat sub = ExpectSameInode("setgid_dir/sub");
  EXPECT_EQ(sub.st_uid, kAliceUid);
  EXPECT_EQ(sub.st_gid, kTeam);
  EXPECT_TRUE(sub.st_mode & S_ISGID) << std::oct << sub.st_mode;
  EXPECT_EQ(ExpectSameInode("setgid_dir/sub/deeper").st_gid, kTeam);
  struct stat bobs = ExpectSameInode("setgid_dir/bobs");
  EXPECT_EQ(bobs.st_uid, kBobUid);
  EXPECT_EQ(bobs.st_gid, kTeam);
  EXPECT_TRUE(ExpectSameInode("setgid_dir/bobs_dir").st_mode & S_ISGID);
  // Not a member of the group the file gets: the kernel drops S_ISGID.
  EXPECT_FALSE(ExpectSameInode("setgid_dir/bobs_sgid").st_mode & S_ISGID);
}

TEST_F(PermissionTest, WriteByAnotherUserClearsSetIdBits) {
  Expect(Alice(), Ok(1), "write bob's 04666 file",
         [](const std::string& r) { return WriteSome(r + "/bob_setuid"); });
  EXPECT_EQ(ExpectSameInode("bob_setuid").st_mode & 07777, 0666u);
  Expect(Alice(), Ok(), "truncate bob's 06777 file",
         [](const std::string& r) { return truncate((r + "/bob_setid_exec").c_str(), 1); });
  EXPECT_EQ(ExpectSameInode("bob_setid_exec").st_mode & 07777, 0777u);
}

// POSIX ACLs in SOURCE must bind users of the mount as they bind users of
// SOURCE: a named-user entry can grant more than the mode bits show, and deny
// what they seem to allow.
TEST_F(PermissionTest, PosixAclsInSourceAreEnforced) {
  if (!acls_) GTEST_SKIP() << "no POSIX ACLs on the filesystem under TMPDIR";
  ExpectSuccess(Alice(), "read a 0600 root file whose ACL grants her read",
                [](const std::string& r) { return ReadSome(r + "/acl_grant"); });
  Expect(Bob(), Err(EACCES), "read a 0640 root file whose ACL does not name him",
         [](const std::string& r) { return ReadSome(r + "/acl_grant"); });
  Expect(Bob(), Err(EACCES), "read a 0644 root file whose ACL denies him",
         [](const std::string& r) { return ReadSome(r + "/acl_deny"); });
  ExpectSuccess(Alice(), "read a 0644 root file whose ACL denies only bob",
                [](const std::string& r) { return ReadSome(r + "/acl_deny"); });
}

// A default ACL on the parent replaces the creator's umask (acl(5)): entries
// made through the mount must get the modes they get in SOURCE directly.
TEST_F(PermissionTest, DefaultAclInSourceReplacesUmask) {
  if (!acls_) GTEST_SKIP() << "no POSIX ACLs on the filesystem under TMPDIR";
  ExpectSuccess(Alice(), "create a 0666 file under umask 022 in a directory with a default ACL",
                [](const std::string& r) {
                  return OpenClose(r + "/acl_default_dir/file", O_CREAT | O_WRONLY | O_EXCL, 0666);
                });
  ExpectSuccess(
      Alice(), "mkdir 0777 under umask 022 in a directory with a default ACL",
      [](const std::string& r) { return mkdir((r + "/acl_default_dir/dir").c_str(), 0777); });
  EXPECT_EQ(ExpectSameInode("acl_default_dir/file").st_mode & 07777, 0666u);
  EXPECT_EQ(ExpectSameInode("acl_default_dir/dir").st_mode & 07777, 0777u);
  // Control: without a default ACL the umask applies, through the mount as in SOURCE.
  ExpectSuccess(Alice(), "create a 0666 file under umask 022", [](const std::string& r) {
    return OpenClose(r + "/open_dir/file", O_CREAT | O_WRONLY | O_EXCL, 0666);
  });
  EXPECT_EQ(ExpectSameInode("open_dir/file").st_mode & 07777, 0644u);
}

// Without allow_other the kernel keeps every user but the mount's owner out,
// before the daemon sees a request.
TEST(PermissionNoAllowOther, OtherUsersAreDenied) {
  auto m = MountedCachefs::Start();
  ASSERT_NE(m, nullptr);
  WriteFile(m->src() + "/file", "data\n");
  WriteFile(m->ref() + "/file", "data\n");
  ASSERT_EQ(chmod((m->src() + "/file").c_str(), 0644), 0);
  ASSERT_EQ(chmod((m->ref() + "/file").c_str(), 0644), 0);
  auto expect = [](const std::string& what, const Outcome& got, const Outcome& want) {
    EXPECT_EQ(got, want) << what << " gave " << ToString(got) << ", expected " << ToString(want);
  };
  auto as_alice = [](const std::function<long()>& op) { return RunAs(Alice(), op); };
  expect("alice: stat on ref", as_alice([&] { return Stat(m->ref() + "/file"); }), Ok());
  expect("alice: stat a file in the mount", as_alice([&] { return Stat(m->mnt() + "/file"); }),
         Err(EACCES));
  expect("alice: read a file in the mount", as_alice([&] { return ReadSome(m->mnt() + "/file"); }),
         Err(EACCES));
  expect("alice: list the mount", as_alice([&] { return ListDir(m->mnt()); }), Err(EACCES));
  expect("alice: stat the mountpoint", as_alice([&] { return Stat(m->mnt()); }), Err(EACCES));
  expect("alice: create in the mount",
         as_alice([&] { return OpenClose(m->mnt() + "/new", O_CREAT | O_WRONLY); }), Err(EACCES));
  // The owner (root, who mounted it) still gets in.
  expect("root: read a file in the mount", Capture([&] { return ReadSome(m->mnt() + "/file"); }),
         Ok(5));
  struct stat st;
  EXPECT_EQ(lstat((m->src() + "/new").c_str(), &st), -1) << "alice created a file in SOURCE";
}

}  // namespace
}  // namespace cachefs::testing
