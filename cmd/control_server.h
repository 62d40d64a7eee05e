// The daemon's side of the control channel (protocol: cmd/control_protocol.h).
//
// ControlServer listens on a Unix socket in its own thread and answers each
// connection in a thread of its own (at most kMaxConnections at once; more
// are told the daemon is busy): it reads one request line, checks the peer,
// hands the request to its ControlHandler and writes the handler's reply.
// Only the mount's owner and root are served (SO_PEERCRED, taken at
// connect); anyone else gets a one-line refusal. The socket is made under a
// temporary name, given mode 0600 and the owner, and then renamed into
// place, so it is never reachable with other permissions and a stale socket
// of a dead daemon is replaced in one step. Stop() (or the destructor)
// wakes the accept loop through an eventfd, cuts open connections short,
// joins every thread and removes the socket if it is still ours.
//
// ControlHandler is the seam where commands live: DaemonControlHandler
// answers the commands of a mounted daemon (info, stats, get); a new
// command is a new method and one line of its dispatch table.
//
// Thread-safety: Start, Stop and the destructor are called by one thread.
// Handle() is called from connection threads, possibly concurrently.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "cache/engine.h"
#include "cmd/cli.h"
#include "common/json.h"
#include "common/status.h"
#include "common/thread_annotations.h"

namespace cachefs {

class ControlHandler {
 public:
  virtual ~ControlHandler() = default;
  // Answers `request`, an object whose "cmd" member is a string. Returns
  // the members of the reply besides "version" and "ok" (an object), or the
  // Status whose message becomes the reply's "error".
  virtual Result<JsonValue> Handle(const JsonValue& request) = 0;
};

class ControlServer {
 public:
  static constexpr unsigned kMaxConnections = 8;
  // How long a client may take to send its request and read the reply.
  static constexpr std::chrono::milliseconds kIoTimeout{5000};

  // Creates the socket `path` (its directory must exist), owned by `owner`
  // with mode 0600, replacing whatever socket had that name, and starts
  // serving with `handler`. Peers with uid `owner` or 0 are served. Errors:
  // a one-line Status naming the path.
  static Result<std::unique_ptr<ControlServer>> Start(const std::string& path, uid_t owner,
                                                      std::unique_ptr<ControlHandler> handler);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Stops accepting, cuts open connections short, joins all threads and
  // removes the socket unless another process has replaced it meanwhile.
  // Idempotent.
  void Stop();

  const std::string& path() const { return path_; }

 private:
  struct Connection {
    int fd = -1;
    uid_t uid = 0;
    std::thread thread;
    std::atomic<bool> done{false};
  };

  ControlServer() = default;
  void AcceptLoop();
  void Serve(Connection* c);
  // Joins and closes the connections that have finished.
  void ReapDone() LOCKS_EXCLUDED(mu_);

  std::string path_;
  uid_t owner_ = 0;
  std::unique_ptr<ControlHandler> handler_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;      // eventfd: Stop() writes it to end AcceptLoop
  dev_t socket_dev_ = 0;  // the socket file we made, to remove only that one
  ino_t socket_ino_ = 0;
  std::thread accept_thread_;
  std::mutex mu_;
  std::list<std::unique_ptr<Connection>> connections_ GUARDED_BY(mu_);
  bool stopped_ = false;
};

// What a mounted daemon reports about itself.
struct DaemonInfo {
  std::string mount_point;  // canonical
  std::string source;       // canonical
  dev_t dev = 0;            // of the mount
  DaemonConfig config;      // the options it was started with
  Engine* engine = nullptr;
  // Drops the kernel's cached pages of an image SOURCE (after a discard of
  // the cow layer, which changes what the mount shows); may be empty.
  std::function<void()> invalidate_image;
};

// The commands of a mounted daemon:
//   info   {"mount": MOUNT}
//   stats  {"mount": MOUNT, "stats": StatsToJson(engine stats)}
//   get    {"options": {NAME: VALUE, ...}}  every tunable, values as
//          option text ("64M", "on", "1.5"); "auto" where the daemon picks
//   set    {"name": NAME, "value": TEXT} -> {"options": ...}  a live option
//   mode   {"mode": MODE} -> {"previous": MODE, "mode": MODE}
//   flush, flush_status  (see docs/control.md)
//   warm   {"path": REL, "offset": N, "length": N} -> {"size", "blocks_fetched",
//          "bytes_fetched", "blocks_present"}  at most kMaxWarmLength a call
//   evict  {"path": REL} -> {"files", "blocks_dropped", "bytes_dropped",
//          "blocks_kept_dirty", "files_pinned", "blocks_pinned_kept", "files_failed"[,
//          "first_error"]}
//   pin    {"path": REL} -> {"was_pinned", "blocks_cached"}
//   unpin  {"path": REL} -> {"files", "blocks"}
//   conflicts {"path": REL} -> {"conflicts": [CONFLICT, ...]}
//   resolve {"path": REL, "action": "keep-ours" | "keep-theirs" | "save-ours"}
//          -> {"path", "action", "bytes"[, "saved_as"]}
//   commit, discard  {} -> {"blocks", "bytes"}  the cow layer (mode=cow only)
// REL is a path relative to SOURCE in canonical form ("" for all of it);
// the engine refuses anything else and opens nothing outside SOURCE.
// MOUNT is {"mount_point", "source", "cache_dir", "device", "mode",
// "block_size", "cache_size", "store", "state", "pid", "uptime_seconds"}.
class DaemonControlHandler : public ControlHandler {
 public:
  // The most bytes one `warm` call fetches, whatever it asks: no request is
  // unbounded (cachefsctl asks for 16 MiB at a time).
  static constexpr uint64_t kMaxWarmLength = uint64_t{256} << 20;

  explicit DaemonControlHandler(DaemonInfo info);
  Result<JsonValue> Handle(const JsonValue& request) override;

 private:
  JsonValue MountJson() const;
  Result<JsonValue> Info(const JsonValue& request);
  Result<JsonValue> Stats(const JsonValue& request);
  Result<JsonValue> Get(const JsonValue& request);
  Result<JsonValue> Flush(const JsonValue& request);
  Result<JsonValue> FlushStatus(const JsonValue& request);
  Result<JsonValue> Set(const JsonValue& request);
  Result<JsonValue> Mode(const JsonValue& request);
  Result<JsonValue> Warm(const JsonValue& request);
  Result<JsonValue> Evict(const JsonValue& request);
  Result<JsonValue> Pin(const JsonValue& request);
  Result<JsonValue> Unpin(const JsonValue& request);
  Result<JsonValue> Conflicts(const JsonValue& request);
  Result<JsonValue> Resolve(const JsonValue& request);
  Result<JsonValue> Commit(const JsonValue& request);
  Result<JsonValue> Discard(const JsonValue& request);

  const DaemonInfo info_;
  std::mutex config_mu_;                        // one `set` at a time
  DaemonConfig config_ GUARDED_BY(config_mu_);  // info_.config with the changes of `set`
  const std::chrono::steady_clock::time_point started_;
};

// The options `get` reports, in order, with their values as option text.
JsonValue LiveOptionsJson(const DaemonConfig& config);

// Starts the control server of the daemon mounted as `info` (the mount
// must be up): creates /run/cachefs (0755) if missing and serves on
// /run/cachefs/MAJ:MIN.sock for getuid(). Returns nullptr, after logging
// why, when it cannot: the mount works without it. `invalidate_image`
// becomes DaemonInfo::invalidate_image.
std::unique_ptr<ControlServer> StartDaemonControl(const std::string& source,
                                                  const std::string& mount_point,
                                                  const DaemonConfig& config, Engine* engine,
                                                  std::function<void()> invalidate_image = {});

}  // namespace cachefs
