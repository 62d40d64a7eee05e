// The control channel without a mount: the protocol helpers, ControlServer
// over a socket in a temporary directory with a test handler, and the
// daemon's handler where it needs no engine.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cmd/control_protocol.h"
#include "cmd/control_server.h"

namespace cachefs {
namespace {

using Clock = std::chrono::steady_clock;

// --- protocol helpers -----------------------------------------------------------

TEST(ControlProtocol, SocketPathIsTheDeviceNumber) {
  EXPECT_EQ(ControlSocketPath(makedev(0, 55)), "/run/cachefs/0:55.sock");
  EXPECT_EQ(ControlSocketPath(makedev(259, 1048575)), "/run/cachefs/259:1048575.sock");
  EXPECT_EQ(DeviceName(makedev(8, 3)), "8:3");
}

TEST(ControlProtocol, MountInfoLinesAreParsed) {
  const std::string text =
      "22 1 8:3 / / rw,relatime shared:1 - ext4 /dev/sda3 rw\n"
      "97 22 0:55 / /tmp/my\\040mnt rw,nosuid,nodev,relatime shared:50 master:3 - fuse.cachefs "
      "/slow\\040dir rw,user_id=0,group_id=0\n"
      "garbage line\n"
      "98 22 0:56 / /tmp/other rw - fuse.sshfs host:/x rw\n"
      "99 22 0:57 /sub /tmp/bind rw - fuse.cachefs /slow rw\n";
  std::vector<MountInfo> m = ParseMountInfo(text);
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].mount_point, "/");
  EXPECT_EQ(m[0].dev, makedev(8, 3));
  EXPECT_EQ(m[1].mount_point, "/tmp/my mnt");
  EXPECT_EQ(m[1].source, "/slow dir");
  EXPECT_EQ(m[1].fs_type, "fuse.cachefs");
  EXPECT_EQ(m[1].dev, makedev(0, 55));
  EXPECT_EQ(m[1].super_options, "rw,user_id=0,group_id=0");
  EXPECT_EQ(m[3].root, "/sub");
  std::vector<MountInfo> ours = CachefsMounts(m);
  ASSERT_EQ(ours.size(), 2u);
  EXPECT_EQ(ours[0].mount_point, "/tmp/my mnt");
  EXPECT_EQ(ours[1].mount_point, "/tmp/bind");
}

TEST(ControlProtocol, OwnMountTableIsReadable) {
  std::vector<MountInfo> m = ReadMountInfo();
  ASSERT_FALSE(m.empty());
  bool root = false;
  for (const MountInfo& e : m) root = root || e.mount_point == "/";
  EXPECT_TRUE(root);
}

TEST(ControlProtocol, LexicallyAbsolute) {
  EXPECT_EQ(LexicallyAbsolute("/a/b/../c/./d//"), "/a/c/d");
  EXPECT_EQ(LexicallyAbsolute("/.."), "/");
  EXPECT_EQ(LexicallyAbsolute("/"), "/");
  char cwd[4096];
  ASSERT_NE(getcwd(cwd, sizeof(cwd)), nullptr);
  EXPECT_EQ(LexicallyAbsolute("x/y"), std::string(cwd == std::string("/") ? "" : cwd) + "/x/y");
}

class TempDir {
 public:
  TempDir() {
    char templ[] = "/tmp/cachefs-ctl-XXXXXX";
    EXPECT_NE(mkdtemp(templ), nullptr) << std::strerror(errno);
    path_ = templ;
    chmod(path_.c_str(), 0755);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(ControlProtocol, FindCachefsMountMatchesTheDeviceOfThePath) {
  TempDir dir;
  const std::string file = dir.path() + "/f";
  ASSERT_EQ(close(open(file.c_str(), O_CREAT | O_WRONLY, 0644)), 0);
  struct stat st;
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  MountInfo other{st.st_dev, "/", "/x", "ext4", "/dev/x", ""};
  MountInfo ours{st.st_dev, "/", "/y", "fuse.cachefs", "/slow", ""};
  auto found = FindCachefsMount(file, {other, ours});
  ASSERT_TRUE(found.ok()) << found.status().message();
  EXPECT_EQ(found->mount_point, "/y");
  auto not_ours = FindCachefsMount(file, {other});
  ASSERT_FALSE(not_ours.ok());
  EXPECT_EQ(not_ours.status().message(), file + " is not on a cachefs mount");
  auto missing = FindCachefsMount(dir.path() + "/none", {ours});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("No such file"), std::string::npos)
      << missing.status().message();
}

TEST(ControlProtocol, RepliesCarryVersionAndOkFirst) {
  JsonValue fields = JsonValue::MakeObject();
  fields.Set("a", 1);
  fields.Set("ok", false);  // not the handler's to set
  EXPECT_EQ(ControlOkReply(fields), "{\"version\":1,\"ok\":true,\"a\":1}\n");
  EXPECT_EQ(ControlErrorReply("no \"such\"\nthing"),
            "{\"version\":1,\"ok\":false,\"error\":\"no \\\"such\\\"\\nthing\"}\n");
}

// --- the server ---------------------------------------------------------------------

// Answers "echo" with the request, "fail" with an error, and "block" only
// once Release() is called.
class TestHandler : public ControlHandler {
 public:
  Result<JsonValue> Handle(const JsonValue& request) override {
    ++calls;
    const std::string& cmd = *request.Find("cmd")->as_string();
    if (cmd == "fail") return Status::Invalid("failed as asked");
    if (cmd == "block") {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [this] { return released_; });
    }
    JsonValue r = JsonValue::MakeObject();
    r.Set("request", request);
    return r;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  std::atomic<int> calls{0};

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

class ControlServerTest : public ::testing::Test {
 protected:
  void SetUp() override { path_ = dir_.path() + "/0:99.sock"; }

  void StartServer(uid_t owner = 0) {
    auto handler = std::make_unique<TestHandler>();
    handler_ = handler.get();
    auto s = ControlServer::Start(path_, owner, std::move(handler));
    ASSERT_TRUE(s.ok()) << s.status().message();
    server_ = std::move(s.value());
  }

  Result<JsonValue> Call(const std::string& cmd, int timeout_ms = 5000) {
    JsonValue req = JsonValue::MakeObject();
    req.Set("version", 1);
    req.Set("cmd", cmd);
    return ControlCall(path_, req, timeout_ms);
  }

  // Connects and returns the descriptor (-1 and a test failure on error).
  int Connect() {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      ADD_FAILURE() << "connect " << path_ << ": " << std::strerror(errno);
      close(fd);
      return -1;
    }
    return fd;
  }

  // Sends `raw` as it is and returns everything the server answers until it closes.
  std::string RawExchange(const std::string& raw) {
    int fd = Connect();
    if (fd < 0) return "";
    size_t sent = 0;
    while (sent < raw.size()) {
      ssize_t n = send(fd, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) break;  // the server may stop reading an over-long request
      sent += static_cast<size_t>(n);
    }
    shutdown(fd, SHUT_WR);
    std::string reply;
    char buf[4096];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) reply.append(buf, static_cast<size_t>(n));
    close(fd);
    return reply;
  }

  TempDir dir_;
  std::string path_;
  TestHandler* handler_ = nullptr;
  std::unique_ptr<ControlServer> server_;
};

TEST_F(ControlServerTest, AnswersAndRemovesItsSocketWhenStopped) {
  StartServer();
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_uid, 0u);
  auto r = Call("echo");
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->Serialize(), R"({"version":1,"ok":true,"request":{"version":1,"cmd":"echo"}})");
  server_->Stop();
  EXPECT_NE(lstat(path_.c_str(), &st), 0) << "the socket outlived Stop()";
  auto after = Call("echo");
  ASSERT_FALSE(after.ok());
  EXPECT_EQ(after.status().code(), ENOENT);
  // Nothing but the socket was ever left in the directory (no temporary name).
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path()));
}

TEST_F(ControlServerTest, SocketBelongsToTheOwner) {
  StartServer(4321);
  struct stat st;
  ASSERT_EQ(lstat(path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  // Root is served whoever owns the mount.
  EXPECT_TRUE(Call("echo").ok());
}

TEST_F(ControlServerTest, HandlerErrorsBecomeErrorReplies) {
  StartServer();
  auto r = Call("fail");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), EREMOTEIO);
  EXPECT_EQ(r.status().message(), "failed as asked");
}

TEST_F(ControlServerTest, MalformedRequestsGetOneErrorLine) {
  StartServer();
  struct Case {
    std::string raw;
    std::string says;
  };
  for (const Case& c :
       {Case{"not json\n", "JSON"}, Case{"[1,2]\n", "JSON object"}, Case{"{}\n", "\"cmd\""},
        Case{"{\"cmd\":7}\n", "\"cmd\""}, Case{"{\"version\":2,\"cmd\":\"echo\"}\n", "version 2"},
        Case{"\n", "JSON"}, Case{"", "without a request"}}) {
    std::string reply = RawExchange(c.raw);
    ASSERT_FALSE(reply.empty()) << c.raw;
    EXPECT_EQ(reply.find('\n'), reply.size() - 1) << "one line: " << reply;
    auto parsed = ParseJson(reply);
    ASSERT_TRUE(parsed.ok()) << reply;
    EXPECT_EQ(parsed->Find("ok")->Serialize(), "false") << reply;
    EXPECT_NE(parsed->Find("error")->as_string()->find(c.says), std::string::npos)
        << c.raw << " -> " << reply;
  }
  EXPECT_EQ(handler_->calls, 0);
  // A last line without its newline still counts, as does trailing text.
  EXPECT_NE(RawExchange("{\"cmd\":\"echo\"}").find("\"ok\":true"), std::string::npos);
  EXPECT_NE(RawExchange("{\"cmd\":\"echo\"}\nignored").find("\"ok\":true"), std::string::npos);
}

TEST_F(ControlServerTest, OverlongRequestIsRefused) {
  StartServer();
  std::string reply = RawExchange(std::string(kControlMaxRequest + 10, ' ') + "{}\n");
  EXPECT_NE(reply.find("request longer than"), std::string::npos) << reply;
  EXPECT_EQ(handler_->calls, 0);
}

TEST_F(ControlServerTest, ReplacesAStaleSocket) {
  // A socket left by a daemon that died: bound, never removed.
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  ASSERT_EQ(Call("echo").status().code(), ECONNREFUSED);
  StartServer();
  EXPECT_TRUE(Call("echo").ok());
}

TEST_F(ControlServerTest, LeavesASocketThatIsNoLongerItsOwn) {
  StartServer();
  // Another daemon took the name over (a reused device number).
  TempDir other_dir;
  auto other =
      ControlServer::Start(other_dir.path() + "/s.sock", 0, std::make_unique<TestHandler>());
  ASSERT_TRUE(other.ok()) << other.status().message();
  ASSERT_EQ(rename((other_dir.path() + "/s.sock").c_str(), path_.c_str()), 0);
  server_->Stop();
  struct stat st;
  EXPECT_EQ(lstat(path_.c_str(), &st), 0) << "Stop() removed a socket it no longer owned";
  EXPECT_TRUE(Call("echo").ok());
}

TEST_F(ControlServerTest, RefusesOtherUsersEvenThroughAnOpenSocket) {
  StartServer(4321);
  // Loosened by hand: the peer check must still refuse (contract 8).
  ASSERT_EQ(chmod(path_.c_str(), 0666), 0);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(pipe_fds[0]);
    if (setgroups(0, nullptr) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
    auto r = Call("echo");
    std::string msg = r.ok() ? "served" : r.status().message();
    (void)!write(pipe_fds[1], msg.data(), msg.size());
    _exit(r.ok() ? 0 : 1);
  }
  close(pipe_fds[1]);
  std::string msg;
  char buf[512];
  ssize_t n;
  while ((n = read(pipe_fds[0], buf, sizeof(buf))) > 0) msg.append(buf, static_cast<size_t>(n));
  close(pipe_fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << msg;
  EXPECT_EQ(msg,
            "permission denied: uid 65534 is neither the owner of this mount (uid 4321) "
            "nor root");
  EXPECT_EQ(handler_->calls, 0);
}

TEST_F(ControlServerTest, StopCutsASilentClientShort) {
  StartServer();
  int fd = Connect();
  ASSERT_GE(fd, 0);
  // Connections are accepted in order: once a later one is answered, the
  // silent one has its thread, waiting for a request.
  ASSERT_TRUE(Call("echo").ok());
  auto start = Clock::now();
  server_->Stop();
  auto took = Clock::now() - start;
  EXPECT_LT(took, ControlServer::kIoTimeout / 2) << "Stop() waited for the client";
  char c;
  EXPECT_GE(recv(fd, &c, 1, 0), 0);
  close(fd);
}

TEST_F(ControlServerTest, ServesClientsConcurrently) {
  StartServer();
  // A request that blocks in the handler does not hold up the others.
  std::thread blocked([this] { EXPECT_TRUE(Call("block").ok()); });
  std::vector<std::thread> clients;
  std::atomic<int> ok{0};
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&] { ok += Call("echo").ok() ? 1 : 0; });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(ok, 4);
  handler_->Release();
  blocked.join();
}

TEST_F(ControlServerTest, ClientGivesUpOnASlowDaemon) {
  StartServer();
  auto start = Clock::now();
  auto r = Call("block", 200);
  auto took = Clock::now() - start;
  handler_->Release();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), ETIMEDOUT) << r.status().message();
  EXPECT_LT(took, std::chrono::seconds(2));
}

TEST_F(ControlServerTest, TooManyConnectionsAreToldSoAtOnce) {
  StartServer();
  std::vector<int> idle;
  for (unsigned i = 0; i < ControlServer::kMaxConnections; ++i) idle.push_back(Connect());
  // Accepted in order: the next one is the one too many.
  auto r = Call("echo");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("busy"), std::string::npos) << r.status().message();
  for (int fd : idle) close(fd);
  // Once they are gone, the server serves again (it reaps at the next accept).
  auto deadline = Clock::now() + std::chrono::seconds(5);
  bool served = false;
  while (!served && Clock::now() < deadline) served = Call("echo").ok();
  EXPECT_TRUE(served);
}

// --- the daemon's handler ---------------------------------------------------------

TEST(DaemonControl, GetReportsEveryLiveOptionInOrder) {
  DaemonConfig config;
  config.cache.policy = "lru";
  config.cache.writeback_delay = 2.5;
  config.cache.migration_threshold = 3ull << 30;
  config.cache.readahead = 1 << 20;
  config.cache.verify = false;
  config.cache.commit_interval_ms = 250;
  config.fs.attr_timeout = 0.25;
  JsonValue o = LiveOptionsJson(config);
  std::vector<std::string> names;
  for (const auto& [name, value] : o.members()) {
    names.push_back(name);
    EXPECT_TRUE(value.is_string()) << name;
  }
  EXPECT_EQ(names, LiveOptionNames());
  EXPECT_EQ(o.Serialize(),
            R"({"policy":"lru","writeback_threads":"auto","dirty_high":"60","dirty_low":"40",)"
            R"("writeback_delay":"2.5","migration_threshold":"3G","commit_interval":"250",)"
            R"("sequential_threshold":"512","file_size_limit":"0","readahead":"1M","verify":"off",)"
            R"("attr_timeout":"0.25","entry_timeout":"1","flush_timeout":"60",)"
            R"("source_timeout":"60"})");
  DaemonConfig odd;
  odd.cache.migration_threshold = 1000;  // no unit divides it
  odd.cache.writeback_threads = 4;
  JsonValue p = LiveOptionsJson(odd);
  EXPECT_EQ(*p.Find("migration_threshold")->as_string(), "1000");
  EXPECT_EQ(*p.Find("writeback_threads")->as_string(), "4");
  EXPECT_EQ(*p.Find("policy")->as_string(), "smq") << "the engine's default";
}

TEST(DaemonControl, UnknownCommandNamesTheKnownOnes) {
  DaemonInfo info;  // no engine: neither command below touches it
  DaemonControlHandler h(info);
  JsonValue req = JsonValue::MakeObject();
  req.Set("cmd", "frobnicate");
  auto r = h.Handle(req);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(
      r.status().message(),
      "unknown command 'frobnicate' (this daemon knows commit, conflicts, discard, evict, flush, "
      "flush_status, get, info, mode, pin, resolve, set, stats, unpin, warm)");
  req.Set("cmd", "get");
  auto g = h.Handle(req);
  ASSERT_TRUE(g.ok()) << g.status().message();
  EXPECT_EQ(g->Find("options")->members().size(), LiveOptionNames().size());
}

}  // namespace
}  // namespace cachefs
