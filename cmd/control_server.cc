#include "cmd/control_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <utility>

#include "cmd/control_protocol.h"
#include "cmd/stats_format.h"
#include "common/log.h"

namespace cachefs {
namespace {

using Clock = std::chrono::steady_clock;

// Writes all of `data` to the connection `fd`; gives up at the deadline.
void SendAll(int fd, const std::string& data, Clock::time_point deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return;
    pollfd p{fd, POLLOUT, 0};
    int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || (p.revents & (POLLERR | POLLHUP)) != 0) return;
    ssize_t w = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (w < 0) return;
    sent += static_cast<size_t>(w);
  }
}

// Reads one request line from `fd` (without its newline). A peer that
// closes after a last line without newline has sent that line. Fails on
// timeout, on a line over kControlMaxRequest and when cut short by Stop().
Result<std::string> ReadLine(int fd, Clock::time_point deadline) {
  std::string line;
  char buf[4096];
  while (true) {
    size_t nl = line.find('\n');
    if (nl != std::string::npos) {
      line.resize(nl);
      return line;
    }
    if (line.size() >= kControlMaxRequest) {
      return Status::Invalid("request longer than " + std::to_string(kControlMaxRequest) +
                             " bytes");
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return Status::Error(ETIMEDOUT, "no request line in time");
    pollfd p{fd, POLLIN, 0};
    int n = poll(&p, 1, static_cast<int>(left.count()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::FromErrno(errno, "poll");
    if (n == 0) continue;  // the deadline check above ends it
    ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r < 0) return Status::FromErrno(errno, "recv");
    if (r == 0) {
      if (line.empty()) return Status::Error(ECONNRESET, "closed without a request");
      return line;
    }
    line.append(buf, static_cast<size_t>(r));
  }
}

// Checks the envelope of a request: an object with a string "cmd" and, if
// it names one, our protocol version.
Status CheckRequest(const JsonValue& req) {
  if (!req.is_object()) return Status::Invalid("a request is a JSON object");
  const JsonValue* version = req.Find("version");
  if (version != nullptr) {
    int64_t v = 0;
    if (!version->as_int64(&v) || v != kControlProtocolVersion) {
      return Status::Invalid("protocol version " + version->Serialize() +
                             " is not supported (this daemon speaks " +
                             std::to_string(kControlProtocolVersion) + ")");
    }
  }
  const JsonValue* cmd = req.Find("cmd");
  if (cmd == nullptr || !cmd->is_string()) {
    return Status::Invalid("a request needs a \"cmd\" string");
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::Start(
    const std::string& path, uid_t owner, std::unique_ptr<ControlHandler> handler) {
  std::unique_ptr<ControlServer> server(new ControlServer());
  server->path_ = path;
  server->owner_ = owner;
  server->handler_ = std::move(handler);
  const std::string tmp = path + ".tmp" + std::to_string(getpid());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (tmp.size() >= sizeof(addr.sun_path)) {
    return Status::Invalid("control socket '" + path + "': path too long");
  }
  std::memcpy(addr.sun_path, tmp.c_str(), tmp.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "control socket: socket");
  server->listen_fd_ = fd;  // closed by the destructor from here on
  unlink(tmp.c_str());      // left by a daemon of our pid that died here
  // Nobody can connect before listen(): the mode and owner are right by then.
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Status::FromErrno(errno, "control socket '" + tmp + "': bind");
  }
  struct stat st;
  bool placed = chmod(tmp.c_str(), 0600) == 0 &&
                (geteuid() != 0 || chown(tmp.c_str(), owner, static_cast<gid_t>(-1)) == 0) &&
                lstat(tmp.c_str(), &st) == 0 && listen(fd, 16) == 0 &&
                rename(tmp.c_str(), path.c_str()) == 0;
  if (!placed) {
    int err = errno;
    unlink(tmp.c_str());
    return Status::FromErrno(err, "control socket '" + path + "'");
  }
  server->socket_dev_ = st.st_dev;
  server->socket_ino_ = st.st_ino;
  server->wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (server->wake_fd_ < 0) {
    int err = errno;
    server->Stop();
    return Status::FromErrno(err, "control socket: eventfd");
  }
  ControlServer* s = server.get();
  server->accept_thread_ = std::thread([s] { s->AcceptLoop(); });
  return server;
}

ControlServer::~ControlServer() { Stop(); }

void ControlServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  if (accept_thread_.joinable()) {
    uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    accept_thread_.join();
  }
  std::list<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connections.swap(connections_);
  }
  // Wakes connection threads waiting for a slow client; the fd stays open
  // (and its number unused by anyone else) until the thread is joined.
  for (auto& c : connections) shutdown(c->fd, SHUT_RDWR);
  for (auto& c : connections) {
    c->thread.join();
    close(c->fd);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  listen_fd_ = wake_fd_ = -1;
  // A new daemon may have taken the name over (a device number is reused
  // once our mount is gone): remove the socket only if it is still ours.
  struct stat st;
  if (socket_ino_ != 0 && lstat(path_.c_str(), &st) == 0 && st.st_dev == socket_dev_ &&
      st.st_ino == socket_ino_) {
    unlink(path_.c_str());
  }
}

void ControlServer::ReapDone() {
  std::list<std::unique_ptr<Connection>> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = connections_.begin(); it != connections_.end();) {
      if ((*it)->done.load()) {
        done.push_back(std::move(*it));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (auto& c : done) {
    c->thread.join();
    close(c->fd);
  }
}

void ControlServer::AcceptLoop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(fds, 2, -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      LogError(std::string("control socket: poll: ") + std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM || errno == ENOBUFS) {
        // Out of descriptors: back off instead of spinning on the ready socket.
        pollfd wake{wake_fd_, POLLIN, 0};
        if (poll(&wake, 1, 100) > 0) return;
      }
      continue;
    }
    ReapDone();
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      close(fd);
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (connections_.size() >= kMaxConnections) {
      // Told at once, without reading its request: a client must not hang.
      SendAll(fd, ControlErrorReply("busy: too many control connections, try again"),
              Clock::now() + std::chrono::milliseconds(100));
      close(fd);
      continue;
    }
    auto c = std::make_unique<Connection>();
    c->fd = fd;
    c->uid = cred.uid;
    Connection* raw = c.get();
    connections_.push_back(std::move(c));
    raw->thread = std::thread([this, raw] { Serve(raw); });
  }
}

void ControlServer::Serve(Connection* c) {
  const Clock::time_point deadline = Clock::now() + kIoTimeout;
  // The request is read even from a peer about to be refused: closing on
  // unread data would reset the connection before it reads the refusal.
  auto line = ReadLine(c->fd, deadline);
  std::string reply;
  if (!line.ok()) {
    reply = ControlErrorReply(line.status().message());
  } else if (c->uid != owner_ && c->uid != 0) {
    reply = ControlErrorReply("permission denied: uid " + std::to_string(c->uid) +
                              " is neither the owner of this mount (uid " + std::to_string(owner_) +
                              ") nor root");
  } else {
    auto req = ParseJson(line.value());
    Status s = req.ok() ? CheckRequest(req.value()) : req.status();
    if (!s.ok()) {
      reply = ControlErrorReply(s.message());
    } else {
      auto fields = handler_->Handle(req.value());
      reply = fields.ok() ? ControlOkReply(fields.value())
                          : ControlErrorReply(fields.status().message());
    }
  }
  // The handler may have worked a long time (a mode switch writes back): the
  // reply gets its own time.
  SendAll(c->fd, reply, Clock::now() + kIoTimeout);
  // The peer sees the end now; the descriptor is closed by whoever joins
  // this thread, so that Stop() never touches a number reused meanwhile.
  shutdown(c->fd, SHUT_RDWR);
  c->done.store(true);
}

// --- the daemon's commands ---------------------------------------------------

namespace {

// Shortest decimal text of `v` that reads back the same ("5", "0.25").
std::string NumberText(double v) {
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

// A byte count as option text: the largest K/M/G/T unit that divides it.
std::string SizeText(uint64_t bytes) {
  static const char kUnits[] = {'T', 'G', 'M', 'K'};
  for (int i = 0; i < 4; ++i) {
    uint64_t unit = 1ull << (10 * (4 - i));
    if (bytes != 0 && bytes % unit == 0) return std::to_string(bytes / unit) + kUnits[i];
  }
  return std::to_string(bytes);
}

}  // namespace

JsonValue LiveOptionsJson(const DaemonConfig& config) {
  const CacheOptions& c = config.cache;
  JsonValue o = JsonValue::MakeObject();
  o.Set("policy", c.policy.value_or("smq"));  // the engine's default (Engine::Open)
  o.Set("writeback_threads",
        c.writeback_threads == 0 ? "auto" : std::to_string(c.writeback_threads));
  o.Set("dirty_high", std::to_string(c.dirty_high));
  o.Set("dirty_low", std::to_string(c.dirty_low));
  o.Set("writeback_delay", NumberText(c.writeback_delay));
  o.Set("migration_threshold", SizeText(c.migration_threshold));
  o.Set("commit_interval", std::to_string(c.commit_interval_ms));
  o.Set("sequential_threshold", std::to_string(c.sequential_threshold));
  o.Set("file_size_limit", SizeText(c.file_size_limit));
  o.Set("readahead", c.readahead ? SizeText(*c.readahead) : "auto");
  o.Set("verify", c.verify ? "on" : "off");
  o.Set("attr_timeout", NumberText(config.fs.attr_timeout));
  o.Set("entry_timeout", NumberText(config.fs.entry_timeout));
  o.Set("flush_timeout", NumberText(c.flush_timeout));
  o.Set("source_timeout", NumberText(c.source_timeout));
  return o;
}

DaemonControlHandler::DaemonControlHandler(DaemonInfo info)
    : info_(std::move(info)), config_(info_.config), started_(std::chrono::steady_clock::now()) {}

Result<JsonValue> DaemonControlHandler::Handle(const JsonValue& request) {
  using Command = Result<JsonValue> (DaemonControlHandler::*)(const JsonValue&);
  // One line per command.
  static const std::map<std::string, Command> kCommands = {
      {"info", &DaemonControlHandler::Info},
      {"stats", &DaemonControlHandler::Stats},
      {"get", &DaemonControlHandler::Get},
      {"flush", &DaemonControlHandler::Flush},
      {"flush_status", &DaemonControlHandler::FlushStatus},
      {"set", &DaemonControlHandler::Set},
      {"mode", &DaemonControlHandler::Mode},
      {"warm", &DaemonControlHandler::Warm},
      {"evict", &DaemonControlHandler::Evict},
      {"pin", &DaemonControlHandler::Pin},
      {"unpin", &DaemonControlHandler::Unpin},
      {"conflicts", &DaemonControlHandler::Conflicts},
      {"resolve", &DaemonControlHandler::Resolve},
      {"commit", &DaemonControlHandler::Commit},
      {"discard", &DaemonControlHandler::Discard},
  };
  const std::string& cmd = *request.Find("cmd")->as_string();
  auto it = kCommands.find(cmd);
  if (it == kCommands.end()) {
    std::string known;
    for (const auto& [name, fn] : kCommands) known += (known.empty() ? "" : ", ") + name;
    return Status::Invalid("unknown command '" + cmd + "' (this daemon knows " + known + ")");
  }
  return (this->*(it->second))(request);
}

JsonValue DaemonControlHandler::MountJson() const {
  const Superblock& sb = info_.engine->superblock();
  JsonValue m = JsonValue::MakeObject();
  m.Set("mount_point", info_.mount_point);
  m.Set("source", info_.source);
  m.Set("cache_dir", info_.engine->cache_dir());
  m.Set("device", DeviceName(info_.dev));
  m.Set("mode", CacheModeName(info_.engine->mode()));
  m.Set("policy", info_.engine->policy_name());
  m.Set("block_size", sb.block_size);
  m.Set("cache_size", sb.slot_count * sb.block_size);
  m.Set("store", StoreKindName(sb.store_kind));
  m.Set("state", "running");
  m.Set("pid", static_cast<int64_t>(getpid()));
  std::chrono::duration<double> up = std::chrono::steady_clock::now() - started_;
  m.Set("uptime_seconds", up.count());
  return m;
}

Result<JsonValue> DaemonControlHandler::Info(const JsonValue& /*request*/) {
  JsonValue r = JsonValue::MakeObject();
  r.Set("mount", MountJson());
  return r;
}

Result<JsonValue> DaemonControlHandler::Stats(const JsonValue& /*request*/) {
  JsonValue r = JsonValue::MakeObject();
  r.Set("mount", MountJson());
  const EngineStats stats = info_.engine->stats();
  r.Set("stats", StatsToJson(stats));
  r.Set("totals", TotalsToJson(stats));
  return r;
}

Result<JsonValue> DaemonControlHandler::Get(const JsonValue& /*request*/) {
  JsonValue r = JsonValue::MakeObject();
  std::lock_guard<std::mutex> lock(config_mu_);
  r.Set("options", LiveOptionsJson(config_));
  return r;
}

// {"cmd":"set","name":NAME,"value":TEXT}: changes a live option; replies
// with every option as `get` does.
Result<JsonValue> DaemonControlHandler::Set(const JsonValue& request) {
  const JsonValue* name = request.Find("name");
  const JsonValue* value = request.Find("value");
  if (name == nullptr || name->as_string() == nullptr || value == nullptr ||
      value->as_string() == nullptr) {
    return Status::Invalid("set needs \"name\" and \"value\" (strings)");
  }
  std::lock_guard<std::mutex> lock(config_mu_);
  DaemonConfig changed = config_;
  Status s = SetLiveOption(changed, *name->as_string(), *value->as_string());
  if (s.ok()) s = info_.engine->Reconfigure(changed.cache);
  if (!s.ok()) return s;
  config_ = std::move(changed);
  JsonValue r = JsonValue::MakeObject();
  r.Set("options", LiveOptionsJson(config_));
  return r;
}

// {"cmd":"mode","mode":MODE}: switches the cache's mode (leaving writeback
// writes everything back first, which may take long).
Result<JsonValue> DaemonControlHandler::Mode(const JsonValue& request) {
  const JsonValue* mode = request.Find("mode");
  if (mode == nullptr || mode->as_string() == nullptr) {
    return Status::Invalid("mode needs \"mode\" (a string)");
  }
  auto parsed = ParseCacheMode(*mode->as_string());
  if (!parsed.ok()) return parsed.status();
  const CacheMode before = info_.engine->mode();
  Status s = info_.engine->SetMode(parsed.value());
  if (!s.ok()) return s;
  JsonValue r = JsonValue::MakeObject();
  r.Set("previous", CacheModeName(before));
  r.Set("mode", CacheModeName(info_.engine->mode()));
  return r;
}

// {"cmd":"flush"}: wakes the writer; "mark" names what was dirty then.
Result<JsonValue> DaemonControlHandler::Flush(const JsonValue& /*request*/) {
  if (info_.engine->mode() == CacheMode::kCow) {
    return Status::Invalid(
        "mode=cow never writes back: cachefsctl commit writes the layer to the image");
  }
  JsonValue r = JsonValue::MakeObject();
  r.Set("mark", info_.engine->StartFlush());
  return r;
}

// {"cmd":"commit"}: writes the cow layer down to the image (synced).
Result<JsonValue> DaemonControlHandler::Commit(const JsonValue& /*request*/) {
  auto layer = info_.engine->CommitLayer();
  if (!layer.ok()) return layer.status();
  JsonValue r = JsonValue::MakeObject();
  r.Set("blocks", layer->blocks);
  r.Set("bytes", layer->bytes);
  return r;
}

// {"cmd":"discard"}: drops the cow layer; the kernel forgets its pages of
// the image, so reads show the image again.
Result<JsonValue> DaemonControlHandler::Discard(const JsonValue& /*request*/) {
  auto layer = info_.engine->DiscardLayer();
  if (!layer.ok()) return layer.status();
  if (info_.invalidate_image) info_.invalidate_image();
  JsonValue r = JsonValue::MakeObject();
  r.Set("blocks", layer->blocks);
  r.Set("bytes", layer->bytes);
  return r;
}

// {"cmd":"flush_status","mark":N}: what is left of it.
Result<JsonValue> DaemonControlHandler::FlushStatus(const JsonValue& request) {
  const JsonValue* mark = request.Find("mark");
  uint64_t value = 0;
  if (mark == nullptr || !mark->as_uint64(&value)) {
    return Status::Invalid("flush_status needs \"mark\" (from flush)");
  }
  Engine::FlushLeft left = info_.engine->FlushProgress(value);
  JsonValue r = JsonValue::MakeObject();
  r.Set("blocks_left", left.blocks);
  r.Set("bytes_left", left.blocks * info_.engine->block_size());
  r.Set("blocks_in_conflict", left.conflicted);
  return r;
}

namespace {

// The request's "path" (a string, required unless `fallback` is given).
Result<std::string> PathOf(const JsonValue& request, const char* cmd,
                           const char* fallback = nullptr) {
  const JsonValue* path = request.Find("path");
  if (path == nullptr && fallback != nullptr) return std::string(fallback);
  if (path == nullptr || path->as_string() == nullptr) {
    return Status::Invalid(std::string(cmd) + " needs \"path\" (a string, relative to SOURCE)");
  }
  return *path->as_string();
}

}  // namespace

// {"cmd":"warm","path":REL,"offset":N,"length":N}: caches that part of a file.
Result<JsonValue> DaemonControlHandler::Warm(const JsonValue& request) {
  auto path = PathOf(request, "warm");
  if (!path.ok()) return path.status();
  uint64_t offset = 0;
  uint64_t length = kMaxWarmLength;
  const JsonValue* v = request.Find("offset");
  if (v != nullptr && !v->as_uint64(&offset)) {
    return Status::Invalid("warm: \"offset\" is a byte count");
  }
  v = request.Find("length");
  if (v != nullptr && !v->as_uint64(&length)) {
    return Status::Invalid("warm: \"length\" is a byte count");
  }
  auto r = info_.engine->Warm(path.value(), offset, std::min(length, kMaxWarmLength));
  if (!r.ok()) return r.status();
  JsonValue out = JsonValue::MakeObject();
  out.Set("size", r->size);
  out.Set("blocks_fetched", r->blocks_fetched);
  out.Set("bytes_fetched", r->bytes_fetched);
  out.Set("blocks_present", r->blocks_present);
  return out;
}

// {"cmd":"evict","path":REL}: drops what is cached of a file or tree.
Result<JsonValue> DaemonControlHandler::Evict(const JsonValue& request) {
  auto path = PathOf(request, "evict");
  if (!path.ok()) return path.status();
  auto r = info_.engine->Evict(path.value());
  if (!r.ok()) return r.status();
  JsonValue out = JsonValue::MakeObject();
  out.Set("files", r->files);
  out.Set("blocks_dropped", r->blocks_dropped);
  out.Set("bytes_dropped", r->blocks_dropped * info_.engine->block_size());
  out.Set("blocks_kept_dirty", r->blocks_kept_dirty);
  out.Set("files_pinned", r->files_pinned);
  out.Set("blocks_pinned_kept", r->blocks_pinned_kept);
  out.Set("files_failed", r->files_failed);
  if (!r->error.empty()) out.Set("first_error", r->error);
  return out;
}

// {"cmd":"pin","path":REL}: pins one regular file.
Result<JsonValue> DaemonControlHandler::Pin(const JsonValue& request) {
  auto path = PathOf(request, "pin");
  if (!path.ok()) return path.status();
  auto r = info_.engine->Pin(path.value());
  if (!r.ok()) return r.status();
  JsonValue out = JsonValue::MakeObject();
  out.Set("was_pinned", r->was_pinned);
  out.Set("blocks_cached", r->blocks_cached);
  return out;
}

// {"cmd":"unpin","path":REL}: unpins a file or every file of a tree.
Result<JsonValue> DaemonControlHandler::Unpin(const JsonValue& request) {
  auto path = PathOf(request, "unpin");
  if (!path.ok()) return path.status();
  auto r = info_.engine->Unpin(path.value());
  if (!r.ok()) return r.status();
  JsonValue out = JsonValue::MakeObject();
  out.Set("files", r->files);
  out.Set("blocks", r->blocks);
  return out;
}

// {"cmd":"conflicts"[,"path":REL]}: the files in conflict (at or below REL).
Result<JsonValue> DaemonControlHandler::Conflicts(const JsonValue& request) {
  auto path = PathOf(request, "conflicts", "");
  if (!path.ok()) return path.status();
  auto r = info_.engine->Conflicts(path.value());
  if (!r.ok()) return r.status();
  JsonValue list = JsonValue::MakeArray();
  for (const Engine::ConflictInfo& c : r.value()) {
    JsonValue e = JsonValue::MakeObject();
    e.Set("path", c.path);
    e.Set("dirty_blocks", c.dirty_blocks);
    e.Set("dirty_bytes", c.dirty_bytes);
    e.Set("size", c.size);
    e.Set("mtime_ns", c.mtime_ns);
    e.Set("in_source", c.in_source);
    if (c.in_source) {
      e.Set("source_size", c.source_size);
      e.Set("source_mtime_ns", c.source_mtime_ns);
    }
    list.Append(std::move(e));
  }
  JsonValue out = JsonValue::MakeObject();
  out.Set("conflicts", std::move(list));
  return out;
}

// {"cmd":"resolve","path":REL,"action":ACTION}: settles one conflict.
Result<JsonValue> DaemonControlHandler::Resolve(const JsonValue& request) {
  auto path = PathOf(request, "resolve");
  if (!path.ok()) return path.status();
  const JsonValue* action = request.Find("action");
  const std::string* a = action != nullptr ? action->as_string() : nullptr;
  Engine::Resolution how;
  if (a != nullptr && *a == "keep-ours") {
    how = Engine::Resolution::kKeepOurs;
  } else if (a != nullptr && *a == "keep-theirs") {
    how = Engine::Resolution::kKeepTheirs;
  } else if (a != nullptr && *a == "save-ours") {
    how = Engine::Resolution::kSaveOurs;
  } else {
    return Status::Invalid("resolve needs \"action\": keep-ours, keep-theirs or save-ours");
  }
  auto r = info_.engine->ResolveConflict(path.value(), how);
  if (!r.ok()) return r.status();
  JsonValue out = JsonValue::MakeObject();
  out.Set("path", path.value());
  out.Set("action", *a);
  out.Set("bytes", r->bytes);
  if (!r->saved_as.empty()) out.Set("saved_as", r->saved_as);
  return out;
}

std::unique_ptr<ControlServer> StartDaemonControl(const std::string& source,
                                                  const std::string& mount_point,
                                                  const DaemonConfig& config, Engine* engine,
                                                  std::function<void()> invalidate_image) {
  auto fail = [](const std::string& why) {
    LogWarning("no control socket (cachefsctl cannot reach this mount): " + why);
    return nullptr;
  };
  // The device of our mount from the mount table, not from a stat of the
  // mount point: that would be a FUSE request to ourselves.
  DaemonInfo info;
  bool found = false;
  for (const MountInfo& m : ReadMountInfo()) {
    if (m.mount_point == mount_point && m.fs_type == kCachefsFsType) {
      info.dev = m.dev;  // the last one is the mount on top: ours
      found = true;
    }
  }
  if (!found) return fail(mount_point + " is not in /proc/self/mountinfo");
  if (mkdir(kControlDir, 0755) != 0 && errno != EEXIST) {
    return fail(Status::FromErrno(errno, kControlDir).message());
  }
  // A directory others could write to would let them replace our socket.
  struct stat dir;
  if (lstat(kControlDir, &dir) != 0) return fail(Status::FromErrno(errno, kControlDir).message());
  if (!S_ISDIR(dir.st_mode) || (dir.st_mode & 022) != 0 ||
      (dir.st_uid != 0 && dir.st_uid != geteuid())) {
    return fail(std::string(kControlDir) +
                " must be a directory owned by root and writable by nobody else");
  }
  info.mount_point = mount_point;
  info.source = source;
  info.config = config;
  info.engine = engine;
  info.invalidate_image = std::move(invalidate_image);
  const std::string path = ControlSocketPath(info.dev);
  auto server =
      ControlServer::Start(path, getuid(), std::make_unique<DaemonControlHandler>(std::move(info)));
  if (!server.ok()) return fail(server.status().message());
  LogDebug("control socket " + path);
  return std::move(server.value());
}

}  // namespace cachefs
