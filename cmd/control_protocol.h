// The control protocol between cachefsctl and a cachefs daemon (docs/control.md).
//
// Each mounted daemon listens on the Unix stream socket
// /run/cachefs/MAJ:MIN.sock, where MAJ:MIN is the device number of its
// mount (st_dev of any path inside it), so a client finds the daemon from
// any path in the mount. A client connects, writes one request, a JSON
// object on one line ({"version":1,"cmd":"stats"}), and reads one reply,
// a JSON object on one line that starts with "version" and "ok":
//   {"version":1,"ok":true,...}   {"version":1,"ok":false,"error":"..."}
// then the daemon closes the connection.
//
// This file holds what both sides share: the socket's path, the reply
// envelope, the reading of /proc/self/mountinfo, and the client's half
// (finding the mount of a path, one request-reply exchange).
//
// Thread-safety: free functions without shared state; safe from any thread.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace cachefs {

inline constexpr int kControlProtocolVersion = 1;
inline constexpr char kControlDir[] = "/run/cachefs";
inline constexpr char kCachefsFsType[] = "fuse.cachefs";
// The longest request line the daemon reads, and the longest reply line a
// client reads, newline included.
inline constexpr size_t kControlMaxRequest = 64 * 1024;
inline constexpr size_t kControlMaxReply = 16 * 1024 * 1024;

// /run/cachefs/MAJ:MIN.sock for the mount whose device is `dev`.
std::string ControlSocketPath(dev_t dev);

// "MAJ:MIN" of `dev`, as /proc/self/mountinfo writes it.
std::string DeviceName(dev_t dev);

// One line of /proc/self/mountinfo (proc(5)), its escapes undone.
struct MountInfo {
  dev_t dev = 0;
  std::string root;         // the mount's root inside its filesystem
  std::string mount_point;  // relative to the process's root
  std::string fs_type;      // "fuse.cachefs" for a cachefs mount
  std::string source;       // cachefs: its SOURCE (fsname=)
  std::string super_options;
};

// Parses the text of a mountinfo file; malformed lines are skipped.
std::vector<MountInfo> ParseMountInfo(const std::string& text);
// ParseMountInfo of /proc/self/mountinfo ({} when unreadable).
std::vector<MountInfo> ReadMountInfo();
// The cachefs mounts among `mounts`, in mount order.
std::vector<MountInfo> CachefsMounts(const std::vector<MountInfo>& mounts);

// The reply envelope: {"version":1,"ok":true} followed by the members of
// `fields` (an object), or {"version":1,"ok":false,"error":message}. One
// line, newline included.
std::string ControlOkReply(const JsonValue& fields);
std::string ControlErrorReply(const std::string& message);

// The live tunables that `get` reports, in the order it reports them.
const std::vector<std::string>& LiveOptionNames();

// The client's side.

// The cachefs mount that `path` lies on, among `mounts` (normally
// ReadMountInfo()): the one whose device is stat(path).st_dev. When `path`
// cannot be stat()ed because the mount refuses the caller (EACCES: a mount
// without allow_other) or its daemon died (ENOTCONN), the cachefs mount
// whose mount point is the longest prefix of the absolute path stands in.
// Errors: "PATH: <strerror>" when stat fails otherwise; "PATH is not on a
// cachefs mount".
Result<MountInfo> FindCachefsMount(const std::string& path, const std::vector<MountInfo>& mounts);

// `path` made absolute against the working directory, with "." and ".."
// and repeated slashes folded away lexically (symlinks are not resolved).
std::string LexicallyAbsolute(const std::string& path);

// Sends `request` to the daemon listening on `socket_path` and returns its
// reply, an object with "ok": true. `timeout_ms` bounds the whole exchange.
// Errors: a daemon that cannot be reached (ENOENT, ECONNREFUSED, EACCES,
// ETIMEDOUT: the connect or the wait for the reply) keeps the errno of the
// failure in its code; a reply with "ok": false gives its "error" text with
// code EREMOTEIO; a reply that is no JSON object, or of another protocol
// version, gives EPROTO.
Result<JsonValue> ControlCall(const std::string& socket_path, const JsonValue& request,
                              int timeout_ms);

}  // namespace cachefs
