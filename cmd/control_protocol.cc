#include "cmd/control_protocol.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/parse.h"

namespace cachefs {
namespace {

bool ParseDevice(const std::string& text, dev_t* dev) {
  unsigned maj = 0;
  unsigned min = 0;
  char colon = 0;
  std::istringstream in(text);
  if (!(in >> maj >> colon >> min) || colon != ':') return false;
  *dev = makedev(maj, min);
  return true;
}

// The mount point `m` is `path` or an ancestor of it (both lexical absolute).
bool IsUnder(const std::string& path, const std::string& m) {
  if (m == "/") return true;
  return path == m ||
         (path.size() > m.size() && path.compare(0, m.size(), m) == 0 && path[m.size()] == '/');
}

using Clock = std::chrono::steady_clock;

int RemainingMs(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Waits until `fd` is ready for `events` or the deadline passes (ETIMEDOUT).
Status WaitFd(int fd, short events, Clock::time_point deadline, const std::string& what) {
  while (true) {
    pollfd p{fd, events, 0};
    int n = poll(&p, 1, RemainingMs(deadline));
    if (n > 0) return Status::Ok();
    if (n == 0) return Status::Error(ETIMEDOUT, what + ": the daemon did not answer in time");
    if (errno != EINTR) return Status::FromErrno(errno, what);
  }
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

}  // namespace

std::string DeviceName(dev_t dev) {
  return std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

std::string ControlSocketPath(dev_t dev) {
  return std::string(kControlDir) + "/" + DeviceName(dev) + ".sock";
}

std::vector<MountInfo> ParseMountInfo(const std::string& text) {
  std::vector<MountInfo> mounts;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    // id parent maj:min root mount_point options [optional...] - fstype source superopts
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point, options, field;
    if (!(fields >> id >> parent >> devno >> root >> mount_point >> options)) continue;
    bool dash = false;
    while (fields >> field) {
      if (field == "-") {
        dash = true;
        break;
      }
    }
    MountInfo m;
    if (!dash || !ParseDevice(devno, &m.dev)) continue;
    std::string source;
    if (!(fields >> m.fs_type >> source)) continue;
    fields >> m.super_options;
    m.root = UnescapeOctal(root);
    m.mount_point = UnescapeOctal(mount_point);
    m.source = UnescapeOctal(source);
    mounts.push_back(std::move(m));
  }
  return mounts;
}

std::vector<MountInfo> ReadMountInfo() {
  std::ifstream in("/proc/self/mountinfo");
  std::stringstream ss;
  ss << in.rdbuf();
  return ParseMountInfo(ss.str());
}

std::vector<MountInfo> CachefsMounts(const std::vector<MountInfo>& mounts) {
  std::vector<MountInfo> out;
  for (const MountInfo& m : mounts) {
    if (m.fs_type == kCachefsFsType) out.push_back(m);
  }
  return out;
}

std::string ControlOkReply(const JsonValue& fields) {
  JsonValue reply = JsonValue::MakeObject();
  reply.Set("version", kControlProtocolVersion);
  reply.Set("ok", true);
  for (const auto& [key, value] : fields.members()) {
    if (key != "version" && key != "ok") reply.Set(key, value);
  }
  return reply.Serialize() + "\n";
}

std::string ControlErrorReply(const std::string& message) {
  JsonValue reply = JsonValue::MakeObject();
  reply.Set("version", kControlProtocolVersion);
  reply.Set("ok", false);
  reply.Set("error", message);
  return reply.Serialize() + "\n";
}

const std::vector<std::string>& LiveOptionNames() {
  static const std::vector<std::string> names = {
      "policy",          "writeback_threads",   "dirty_high",      "dirty_low",
      "writeback_delay", "migration_threshold", "commit_interval", "sequential_threshold",
      "file_size_limit", "readahead",           "verify",          "attr_timeout",
      "entry_timeout",   "flush_timeout",       "source_timeout"};
  return names;
}

std::string LexicallyAbsolute(const std::string& path) {
  std::string full = path;
  if (full.empty() || full[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == nullptr) return path;
    full = std::string(cwd) + "/" + full;
  }
  std::vector<std::string> parts;
  std::istringstream in(full);
  std::string part;
  while (std::getline(in, part, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }
  std::string out;
  for (const std::string& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

Result<MountInfo> FindCachefsMount(const std::string& path, const std::vector<MountInfo>& mounts) {
  const Status not_cachefs = Status::Error(ENODEV, path + " is not on a cachefs mount");
  struct stat st;
  if (stat(path.c_str(), &st) == 0) {
    for (const MountInfo& m : mounts) {
      if (m.dev == st.st_dev && m.fs_type == kCachefsFsType) return m;
    }
    return not_cachefs;
  }
  int err = errno;
  if (err != EACCES && err != ENOTCONN) return Status::FromErrno(err, path);
  // The mount itself refused the stat. The deepest mount point above the
  // path is the mount it lies on (later entries are mounted on top).
  const std::string abs = LexicallyAbsolute(path);
  const MountInfo* best = nullptr;
  for (const MountInfo& m : mounts) {
    if (IsUnder(abs, m.mount_point) &&
        (best == nullptr || m.mount_point.size() >= best->mount_point.size())) {
      best = &m;
    }
  }
  if (best == nullptr) return Status::FromErrno(err, path);
  if (best->fs_type != kCachefsFsType) return Status::FromErrno(err, path);
  return *best;
}

Result<JsonValue> ControlCall(const std::string& socket_path, const JsonValue& request,
                              int timeout_ms) {
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    return Status::Invalid(socket_path + ": path too long for a socket");
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Status::FromErrno(errno, "socket");
  // A connect to a daemon whose backlog is full waits up to the send timeout.
  timeval tv{timeout_ms / 1000, static_cast<suseconds_t>(timeout_ms % 1000) * 1000};
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno == EAGAIN ? ETIMEDOUT : errno;
    return Status::FromErrno(err, socket_path);
  }
  std::string line = request.Serialize() + "\n";
  size_t sent = 0;
  // A daemon that answers without reading (busy, refused) may close before
  // the request is out: its answer is still there to read.
  Status send_error;
  while (sent < line.size()) {
    Status s = WaitFd(fd.get(), POLLOUT, deadline, socket_path);
    if (!s.ok()) return s;
    ssize_t n = send(fd.get(), line.data() + sent, line.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      send_error = Status::FromErrno(errno, socket_path);
      break;
    }
    sent += static_cast<size_t>(n);
  }
  std::string reply;
  char buf[4096];
  while (reply.find('\n') == std::string::npos) {
    Status s = WaitFd(fd.get(), POLLIN, deadline, socket_path);
    if (!s.ok()) return s;
    ssize_t n = recv(fd.get(), buf, sizeof(buf), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return send_error.ok() ? Status::FromErrno(errno, socket_path) : send_error;
    if (n == 0) break;
    reply.append(buf, static_cast<size_t>(n));
    if (reply.size() > kControlMaxReply) {
      return Status::Error(EPROTO, socket_path + ": reply longer than the protocol allows");
    }
  }
  size_t nl = reply.find('\n');
  if (nl == std::string::npos && reply.empty()) {
    if (!send_error.ok()) return send_error;
    return Status::Error(EPROTO, socket_path + ": the daemon closed without a reply");
  }
  if (nl != std::string::npos) reply.resize(nl);
  auto parsed = ParseJson(reply);
  if (!parsed.ok()) return Status::Error(EPROTO, socket_path + ": " + parsed.status().message());
  const JsonValue& v = parsed.value();
  int64_t version = 0;
  const JsonValue* version_field = v.Find("version");
  if (version_field == nullptr || !version_field->as_int64(&version)) {
    return Status::Error(EPROTO, socket_path + ": reply without a protocol version");
  }
  bool ok = false;
  const JsonValue* ok_field = v.Find("ok");
  if (ok_field == nullptr || !ok_field->as_bool(&ok)) {
    return Status::Error(EPROTO, socket_path + ": reply without \"ok\"");
  }
  if (!ok) {
    const JsonValue* error = v.Find("error");
    const std::string* text = error != nullptr ? error->as_string() : nullptr;
    return Status::Error(EREMOTEIO, text != nullptr ? *text : "the daemon refused the request");
  }
  if (version != kControlProtocolVersion) {
    return Status::Error(EPROTO, socket_path + ": the daemon speaks protocol version " +
                                     std::to_string(version) + ", this client " +
                                     std::to_string(kControlProtocolVersion));
  }
  return parsed;
}

}  // namespace cachefs
