// cachefsctl: asks running cachefs daemons about their mounts.
//
//   cachefsctl list [--json]
//   cachefsctl stats [PATH] [--json | --prometheus | --watch SECONDS [--count N]]
//   cachefsctl get [KEY] [PATH] [--json]
//   cachefsctl set KEY VALUE [PATH]
//   cachefsctl mode MODE [PATH]
//   cachefsctl flush [--wait] [PATH]
//   cachefsctl warm PATH...
//   cachefsctl evict PATH... | --all [PATH]
//   cachefsctl pin [--warm] PATH...
//   cachefsctl unpin PATH...
//   cachefsctl conflicts [PATH] [--json]
//   cachefsctl conflicts --keep-ours FILE | --keep-theirs FILE | --save-ours FILE
//   cachefsctl commit [PATH] [--json]
//   cachefsctl discard [PATH] [--json]
//   cachefsctl check CACHE_DIR [--repair | --no-data] [--json]
//   cachefsctl dump CACHE_DIR [--blocks] [--json]
//
// PATH is any path inside a cachefs mount (default: the only one there
// is). The daemon is found through the device number of PATH and asked
// over its control socket (cmd/control_protocol.h; docs/control.md).
// check and dump work offline, on the cache directory of an unmounted
// cache (cache/check.h).
// Exit status: 0 done, 1 the mount or its daemon failed us, 2 bad arguments;
// check has its own, like fsck (cmd/check_format.h).
#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cache/check.h"
#include "cmd/check_format.h"
#include "cmd/control_protocol.h"
#include "cmd/stats_format.h"
#include "common/json.h"
#include "common/status.h"

#ifndef CACHEFS_VERSION
#define CACHEFS_VERSION "unknown"
#endif

namespace cachefs {
namespace {

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr int kTimeoutMs = 5000;

// A mode switch out of writeback ends with a last write-back while writes
// are held off: allow it this long.
constexpr int kModeTimeoutMs = 600 * 1000;

// warm asks for this much of a file at a time, so it can show progress and
// no request runs unbounded; each call may take this long (a slow store).
constexpr uint64_t kWarmChunk = uint64_t{16} << 20;
constexpr int kWarmTimeoutMs = 600 * 1000;
// evict and resolve may write back first.
constexpr int kWriteBackTimeoutMs = 600 * 1000;

const std::vector<std::string> kCommands = {"list",      "stats",  "get",     "set",   "mode",
                                            "flush",     "warm",   "evict",   "pin",   "unpin",
                                            "conflicts", "commit", "discard", "check", "dump"};

// A failure that ends the program: one line on stderr and an exit status.
struct Failure {
  int exit_code;
  std::string message;
};

int Fail(const Failure& f) {
  std::string m = f.message;
  for (char& c : m) {
    if (c == '\n') c = ' ';
  }
  std::fprintf(stderr, "cachefsctl: %s\n", m.c_str());
  return f.exit_code;
}

std::string Joined(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// The mount `path` names, or the only cachefs mount when `path` is empty.
std::optional<MountInfo> ResolveMount(const std::string& path, Failure* failure) {
  std::vector<MountInfo> mounts = ReadMountInfo();
  if (!path.empty()) {
    auto m = FindCachefsMount(path, mounts);
    if (!m.ok()) {
      *failure = {kExitFailure, m.status().message()};
      return std::nullopt;
    }
    return m.value();
  }
  std::vector<MountInfo> ours = CachefsMounts(mounts);
  if (ours.size() == 1) return ours[0];
  if (ours.empty()) {
    *failure = {kExitFailure, "there is no cachefs mount"};
  } else {
    std::vector<std::string> names;
    names.reserve(ours.size());
    for (const MountInfo& m : ours) names.push_back(m.mount_point);
    *failure = {kExitUsage, "there are several cachefs mounts (" + Joined(names) +
                                "): name one with a PATH inside it"};
  }
  return std::nullopt;
}

// Why the daemon of `m` did not answer, for people.
std::string Explain(const MountInfo& m, const Status& s) {
  const std::string socket = ControlSocketPath(m.dev);
  switch (s.code()) {
    case ENOENT:
    case ECONNREFUSED:
    case ETIMEDOUT:
      return m.mount_point + ": the cachefs daemon is not responding (" + s.message() + ")";
    case EACCES:
    case EPERM: {
      struct stat st;
      std::string owner =
          stat(socket.c_str(), &st) == 0 ? " (uid " + std::to_string(st.st_uid) + ")" : "";
      return m.mount_point + ": permission denied: only the mount's owner" + owner +
             " or root may control it";
    }
    default:
      return m.mount_point + ": " + s.message();
  }
}

// Sends `cmd` with the members of `fields` to the daemon of `m`.
Result<JsonValue> Ask(const MountInfo& m, const std::string& cmd,
                      const JsonValue& fields = JsonValue::MakeObject(),
                      int timeout_ms = kTimeoutMs) {
  JsonValue req = JsonValue::MakeObject();
  req.Set("version", kControlProtocolVersion);
  req.Set("cmd", cmd);
  for (const auto& [key, value] : fields.members()) req.Set(key, value);
  return ControlCall(ControlSocketPath(m.dev), req, timeout_ms);
}

// The reply without its "ok", as cachefsctl's JSON output (schema version 1).
JsonValue Document(const JsonValue& reply) {
  JsonValue out = JsonValue::MakeObject();
  for (const auto& [key, value] : reply.members()) {
    if (key != "ok") out.Set(key, value);
  }
  return out;
}

std::string TextOf(const JsonValue& obj, const char* key, const std::string& fallback = "-") {
  const JsonValue* v = obj.Find(key);
  const std::string* s = v != nullptr ? v->as_string() : nullptr;
  return s != nullptr ? *s : fallback;
}

std::string BytesOf(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  double d = 0;
  return v != nullptr && v->as_double(&d) ? HumanBytes(d) : "-";
}

int List(bool json) {
  std::vector<MountInfo> mounts = CachefsMounts(ReadMountInfo());
  JsonValue doc = JsonValue::MakeObject();
  doc.Set("version", kControlProtocolVersion);
  JsonValue list = JsonValue::MakeArray();
  std::vector<std::vector<std::string>> rows = {
      {"MOUNT", "SOURCE", "CACHE", "MODE", "BLOCK", "SIZE", "STATE"}};
  for (const MountInfo& m : mounts) {
    auto reply = Ask(m, "info");
    JsonValue entry = JsonValue::MakeObject();
    if (reply.ok() && reply->Find("mount") != nullptr && reply->Find("mount")->is_object()) {
      entry = *reply->Find("mount");
    } else {
      entry.Set("mount_point", m.mount_point);
      entry.Set("source", m.source);
      entry.Set("device", DeviceName(m.dev));
      bool refused =
          !reply.ok() && (reply.status().code() == EACCES || reply.status().code() == EPERM);
      entry.Set("state", refused ? "permission denied" : "not responding");
      entry.Set("error", reply.ok() ? "reply without \"mount\"" : reply.status().message());
    }
    rows.push_back({TextOf(entry, "mount_point"), TextOf(entry, "source"),
                    TextOf(entry, "cache_dir"), TextOf(entry, "mode"), BytesOf(entry, "block_size"),
                    BytesOf(entry, "cache_size"), TextOf(entry, "state")});
    list.Append(std::move(entry));
  }
  doc.Set("mounts", std::move(list));
  if (json) {
    std::printf("%s\n", doc.Serialize(2).c_str());
  } else if (mounts.empty()) {
    std::printf("no cachefs mounts\n");
  } else {
    std::fputs(Columns(rows).c_str(), stdout);
  }
  return 0;
}

struct StatsArgs {
  std::string path;
  bool json = false;
  bool prometheus = false;
  double watch = 0;
  uint64_t count = 0;  // with watch: stop after this many tables; 0: never
};

int Stats(const StatsArgs& a) {
  Failure failure;
  auto mount = ResolveMount(a.path, &failure);
  if (!mount) return Fail(failure);
  auto reply = Ask(*mount, "stats");
  if (!reply.ok()) return Fail({kExitFailure, Explain(*mount, reply.status())});
  if (a.json) {
    std::printf("%s\n", Document(reply.value()).Serialize(2).c_str());
    return 0;
  }
  if (a.prometheus) {
    std::fputs(FormatStatsPrometheus(reply.value()).c_str(), stdout);
    return 0;
  }
  if (a.watch <= 0) {
    std::fputs(FormatStatsTable(reply.value()).c_str(), stdout);
    return 0;
  }
  using Clock = std::chrono::steady_clock;
  const bool tty = isatty(STDOUT_FILENO) != 0;
  const auto period =
      std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(a.watch));
  JsonValue previous = reply.value();
  Clock::time_point previous_at = Clock::now();
  std::string table = FormatStatsTable(previous);
  for (uint64_t shown = 1;; ++shown) {
    std::string screen = tty ? "\033[H\033[2J" + table : (shown > 1 ? "\n" : "") + table;
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    if (a.count != 0 && shown >= a.count) return 0;
    // A redraw every period, on a fixed schedule.
    std::this_thread::sleep_until(previous_at + period);
    auto next = Ask(*mount, "stats");
    if (!next.ok()) return Fail({kExitFailure, Explain(*mount, next.status())});
    Clock::time_point now = Clock::now();
    double interval = std::chrono::duration<double>(now - previous_at).count();
    table = FormatStatsTable(next.value(), &previous, interval);
    previous = std::move(next.value());
    previous_at = now;
  }
}

// `get`'s arguments: KEY PATH, or one of them: a tunable's name is a KEY.
int Get(const std::vector<std::string>& args, bool json) {
  std::string key;
  std::string path;
  const std::vector<std::string>& names = LiveOptionNames();
  if (args.size() == 2 ||
      (args.size() == 1 && std::find(names.begin(), names.end(), args[0]) != names.end())) {
    key = args[0];
    if (std::find(names.begin(), names.end(), key) == names.end()) {
      return Fail({kExitUsage, "'" + key + "' is not a tunable (" + Joined(names) + ")"});
    }
  }
  if (args.size() == 2 || (args.size() == 1 && key.empty())) path = args.back();
  Failure failure;
  auto mount = ResolveMount(path, &failure);
  if (!mount) return Fail(failure);
  auto reply = Ask(*mount, "get");
  if (!reply.ok()) return Fail({kExitFailure, Explain(*mount, reply.status())});
  const JsonValue* options = reply->Find("options");
  if (options == nullptr || !options->is_object()) {
    return Fail({kExitFailure, mount->mount_point + ": the daemon sent no options"});
  }
  JsonValue shown = JsonValue::MakeObject();
  for (const auto& [name, value] : options->members()) {
    if (key.empty() || name == key) shown.Set(name, value);
  }
  if (!key.empty() && shown.members().empty()) {
    return Fail({kExitFailure, mount->mount_point + ": the daemon does not report '" + key + "'"});
  }
  if (json) {
    JsonValue doc = JsonValue::MakeObject();
    doc.Set("version", kControlProtocolVersion);
    doc.Set("mount_point", mount->mount_point);
    doc.Set("options", std::move(shown));
    std::printf("%s\n", doc.Serialize(2).c_str());
    return 0;
  }
  for (const auto& [name, value] : shown.members()) {
    const std::string* text = value.as_string();
    std::printf("%s %s\n", name.c_str(),
                text != nullptr ? text->c_str() : value.Serialize().c_str());
  }
  return 0;
}

// `flush [--wait] [PATH]`: writes back what is dirty now; with --wait,
// returns 0 only once all of it is on the slow store.
int Flush(const std::string& path, bool wait) {
  Failure failure;
  auto mount = ResolveMount(path, &failure);
  if (!mount) return Fail(failure);
  auto started = Ask(*mount, "flush");
  if (!started.ok()) return Fail({kExitFailure, Explain(*mount, started.status())});
  uint64_t mark = 0;
  const JsonValue* m = started->Find("mark");
  if (m == nullptr || !m->as_uint64(&mark)) {
    return Fail({kExitFailure, mount->mount_point + ": the daemon sent no flush mark"});
  }
  if (!wait) return 0;
  const bool tty = isatty(STDOUT_FILENO) != 0;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point begin = Clock::now();
  uint64_t first_bytes = 0;
  bool have_first = false;
  while (true) {
    JsonValue fields = JsonValue::MakeObject();
    fields.Set("mark", mark);
    auto st = Ask(*mount, "flush_status", fields);
    if (!st.ok()) return Fail({kExitFailure, Explain(*mount, st.status())});
    uint64_t blocks = 0, bytes = 0, conflicted = 0;
    const JsonValue* v = st->Find("blocks_left");
    if (v != nullptr) v->as_uint64(&blocks);
    v = st->Find("bytes_left");
    if (v != nullptr) v->as_uint64(&bytes);
    v = st->Find("blocks_in_conflict");
    if (v != nullptr) v->as_uint64(&conflicted);
    if (!have_first) {
      first_bytes = bytes;
      have_first = true;
    }
    double secs = std::chrono::duration<double>(Clock::now() - begin).count();
    double rate =
        secs > 0 ? static_cast<double>(first_bytes - std::min(first_bytes, bytes)) / secs : 0;
    std::string line = "flush: " + HumanBytes(bytes) + " left";
    if (rate > 0) {
      line += ", " + HumanBytes(static_cast<uint64_t>(rate)) + "/s, about " +
              std::to_string(static_cast<uint64_t>(static_cast<double>(bytes) / rate)) + " s to go";
    }
    if (blocks == 0) {
      std::printf("%sflush: everything dirty at the call is on the slow store\n",
                  tty ? "\r\033[K" : "");
      return 0;
    }
    if (blocks == conflicted) {
      std::printf("%s", tty ? "\n" : "");
      return Fail({kExitFailure, mount->mount_point + ": " + std::to_string(conflicted) +
                                     " blocks of files in conflict are not written back "
                                     "(changed in SOURCE meanwhile)"});
    }
    if (tty) {
      std::printf("\r\033[K%s", line.c_str());
      std::fflush(stdout);
    } else {
      std::printf("%s\n", line.c_str());
    }
    // Quick at first (a small flush is done in milliseconds), then calmer.
    const bool early = std::chrono::duration<double>(Clock::now() - begin).count() < 1.0;
    std::this_thread::sleep_for(std::chrono::milliseconds(early ? 50 : (tty ? 200 : 1000)));
  }
}

// `set KEY VALUE [PATH]`: changes a live tunable; prints its new value.
int Set(const std::vector<std::string>& args) {
  Failure failure;
  auto mount = ResolveMount(args.size() > 2 ? args[2] : "", &failure);
  if (!mount) return Fail(failure);
  JsonValue fields = JsonValue::MakeObject();
  fields.Set("name", args[0]);
  fields.Set("value", args[1]);
  auto reply = Ask(*mount, "set", fields);
  if (!reply.ok()) return Fail({kExitFailure, Explain(*mount, reply.status())});
  const JsonValue* options = reply->Find("options");
  const JsonValue* now = options != nullptr ? options->Find(args[0]) : nullptr;
  const std::string* text = now != nullptr ? now->as_string() : nullptr;
  std::printf("%s %s\n", args[0].c_str(), text != nullptr ? text->c_str() : args[1].c_str());
  return 0;
}

// `mode MODE [PATH]`: switches the mode. Out of writeback, the dirty data is
// written back first with flush's progress lines, so the switch itself
// (which writes back the rest with writes held off) is short.
int Mode(const std::string& mode, const std::string& path) {
  Failure failure;
  auto mount = ResolveMount(path, &failure);
  if (!mount) return Fail(failure);
  auto info = Ask(*mount, "info");
  if (!info.ok()) return Fail({kExitFailure, Explain(*mount, info.status())});
  const JsonValue* m = info->Find("mount");
  const std::string before = m != nullptr ? TextOf(*m, "mode") : "-";
  if (before == "writeback" && mode != "writeback") {
    if (int rc = Flush(path.empty() ? mount->mount_point : path, true); rc != 0) return rc;
  }
  JsonValue fields = JsonValue::MakeObject();
  fields.Set("mode", mode);
  auto reply = Ask(*mount, "mode", fields, kModeTimeoutMs);
  if (!reply.ok()) return Fail({kExitFailure, Explain(*mount, reply.status())});
  std::printf("mode: %s -> %s\n", TextOf(reply.value(), "previous").c_str(),
              TextOf(reply.value(), "mode").c_str());
  return 0;
}

// --- warm, evict, pin, unpin, conflicts ---------------------------------------

// A path named on the command line (or found below one), inside a mount.
struct Target {
  MountInfo mount;
  std::string rel;   // relative to SOURCE ("" for all of it)
  std::string real;  // canonical absolute path
  uint64_t size = 0;
};

// Resolves `arg` to its canonical path, the mount it lies on and its path
// relative to SOURCE. Without `must_exist`, a path the mount no longer shows
// (gone from SOURCE, still known to the cache) is taken by its directory.
std::optional<Target> Locate(const std::string& arg, bool must_exist, Failure* failure) {
  Target t;
  char buf[PATH_MAX];
  if (realpath(arg.c_str(), buf) != nullptr) {
    t.real = buf;
  } else {
    const int err = errno;
    const std::string abs = LexicallyAbsolute(arg);
    const size_t slash = abs.find_last_of('/');
    const std::string name = abs.substr(slash + 1);
    const std::string dir = slash == 0 ? "/" : abs.substr(0, slash);
    if (must_exist || err != ENOENT || name.empty() || realpath(dir.c_str(), buf) == nullptr) {
      *failure = {kExitFailure, arg + ": " + std::strerror(err)};
      return std::nullopt;
    }
    t.real = std::string(buf) + (std::string(buf) == "/" ? "" : "/") + name;
  }
  const std::string probe = t.real.substr(0, std::max<size_t>(1, t.real.find_last_of('/')));
  auto m = FindCachefsMount(must_exist || access(t.real.c_str(), F_OK) == 0 ? t.real : probe,
                            ReadMountInfo());
  if (!m.ok()) {
    *failure = {kExitFailure, m.status().message()};
    return std::nullopt;
  }
  t.mount = m.value();
  const std::string& mp = t.mount.mount_point;
  std::string tail;
  if (t.real == mp) {
    tail = "";
  } else if (t.real.size() > mp.size() && t.real.compare(0, mp.size(), mp) == 0 &&
             (mp == "/" || t.real[mp.size()] == '/')) {
    tail = t.real.substr(mp == "/" ? 1 : mp.size() + 1);
  } else {
    *failure = {kExitFailure, arg + " is not inside the cachefs mount " + mp};
    return std::nullopt;
  }
  // A bind mount of a directory of the mount shows SOURCE from there.
  std::string base = t.mount.root == "/" ? "" : t.mount.root.substr(1);
  t.rel = base.empty() ? tail : (tail.empty() ? base : base + "/" + tail);
  return t;
}

// The regular files at or below `t` (symlinks not followed, other mounts
// not entered), in walk order.
std::vector<Target>* walk_out = nullptr;
const Target* walk_root = nullptr;

int WalkOne(const char* path, const struct stat* st, int type, struct FTW* /*ftw*/) {
  if (type != FTW_F || !S_ISREG(st->st_mode)) return 0;
  Target f = *walk_root;
  f.real = path;
  std::string tail = f.real.substr(walk_root->real.size());
  if (!tail.empty() && tail[0] == '/') tail.erase(0, 1);
  f.rel =
      walk_root->rel.empty() ? tail : (tail.empty() ? walk_root->rel : walk_root->rel + "/" + tail);
  f.size = static_cast<uint64_t>(st->st_size);
  walk_out->push_back(std::move(f));
  return 0;
}

std::vector<Target> RegularFiles(const Target& t) {
  std::vector<Target> out;
  walk_out = &out;
  walk_root = &t;
  nftw(t.real.c_str(), WalkOne, 32, FTW_PHYS | FTW_MOUNT);
  walk_out = nullptr;
  walk_root = nullptr;
  return out;
}

// Every regular file named by `args` or found below them.
std::optional<std::vector<Target>> FilesOf(const std::vector<std::string>& args, Failure* failure) {
  std::vector<Target> files;
  for (const std::string& arg : args) {
    auto t = Locate(arg, true, failure);
    if (!t) return std::nullopt;
    std::vector<Target> found = RegularFiles(*t);
    files.insert(files.end(), found.begin(), found.end());
  }
  return files;
}

uint64_t UintOf(const JsonValue& obj, const char* key) {
  const JsonValue* v = obj.Find(key);
  uint64_t n = 0;
  if (v != nullptr) v->as_uint64(&n);
  return n;
}

std::string Plural(uint64_t n, const std::string& one, const std::string& many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// `warm PATH...`: fetches every regular file at or below the PATHs into the
// cache, 16 MiB a call, showing files and bytes done and the rate (one
// redrawn line on a terminal, a plain line a second otherwise).
int Warm(const std::vector<std::string>& args) {
  Failure failure;
  auto files = FilesOf(args, &failure);
  if (!files) return Fail(failure);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point begin = Clock::now();
  Clock::time_point shown = begin;
  const bool tty = isatty(STDOUT_FILENO) != 0;
  uint64_t total = 0;
  for (const Target& f : *files) total += f.size;
  uint64_t done = 0, fetched = 0, present = 0;
  size_t files_done = 0;
  auto line = [&] {
    double secs = std::chrono::duration<double>(Clock::now() - begin).count();
    std::string l = "warm: " + std::to_string(files_done) + "/" + std::to_string(files->size()) +
                    " files, " + HumanBytes(static_cast<double>(done)) + " of " +
                    HumanBytes(static_cast<double>(total));
    if (secs > 0) l += ", " + HumanBytes(static_cast<double>(fetched) / secs) + "/s";
    return l;
  };
  for (const Target& f : *files) {
    uint64_t offset = 0;
    uint64_t size = f.size;
    do {
      JsonValue fields = JsonValue::MakeObject();
      fields.Set("path", f.rel);
      fields.Set("offset", offset);
      fields.Set("length", kWarmChunk);
      auto reply = Ask(f.mount, "warm", fields, kWarmTimeoutMs);
      if (!reply.ok()) {
        if (tty && files_done + done > 0) std::printf("\n");
        return Fail({kExitFailure, Explain(f.mount, reply.status())});
      }
      size = UintOf(reply.value(), "size");
      fetched += UintOf(reply.value(), "bytes_fetched");
      present += UintOf(reply.value(), "blocks_present");
      const uint64_t step = std::min(kWarmChunk, size > offset ? size - offset : 0);
      done += step;
      offset += kWarmChunk;
      Clock::time_point now = Clock::now();
      if (tty) {
        std::printf("\r\033[K%s", line().c_str());
        std::fflush(stdout);
      } else if (now - shown >= std::chrono::seconds(1)) {
        std::printf("%s\n", line().c_str());
        shown = now;
      }
    } while (offset < size);
    ++files_done;
  }
  double secs = std::chrono::duration<double>(Clock::now() - begin).count();
  std::printf("%swarm: %s, %s: %s fetched, %s already cached, %.1f s", tty ? "\r\033[K" : "",
              Plural(files->size(), "file", "files").c_str(),
              HumanBytes(static_cast<double>(done)).c_str(),
              HumanBytes(static_cast<double>(fetched)).c_str(),
              Plural(present, "block", "blocks").c_str(), secs);
  if (secs > 0 && fetched > 0) {
    std::printf(" (%s/s)", HumanBytes(static_cast<double>(fetched) / secs).c_str());
  }
  std::printf("\n");
  return 0;
}

// `evict PATH... | --all [PATH]`: drops what is cached of files and trees,
// writing dirty data back first; pinned files keep theirs.
int Evict(const std::vector<std::string>& args, bool all) {
  Failure failure;
  std::vector<Target> targets;
  if (all) {
    if (args.size() > 1) {
      return Fail({kExitUsage, "evict --all takes at most one PATH (to name the mount)"});
    }
    auto mount = ResolveMount(args.empty() ? "" : args[0], &failure);
    if (!mount) return Fail(failure);
    Target t;
    t.mount = *mount;
    targets.push_back(t);
  } else {
    if (args.empty()) return Fail({kExitUsage, "evict needs PATH... or --all"});
    for (const std::string& arg : args) {
      auto t = Locate(arg, false, &failure);
      if (!t) return Fail(failure);
      targets.push_back(*t);
    }
  }
  uint64_t files = 0, blocks = 0, bytes = 0, dirty = 0, pinned_files = 0, pinned_blocks = 0,
           failed = 0;
  std::string first_error;
  for (const Target& t : targets) {
    JsonValue fields = JsonValue::MakeObject();
    fields.Set("path", t.rel);
    auto reply = Ask(t.mount, "evict", fields, kWriteBackTimeoutMs);
    if (!reply.ok()) return Fail({kExitFailure, Explain(t.mount, reply.status())});
    files += UintOf(reply.value(), "files");
    blocks += UintOf(reply.value(), "blocks_dropped");
    bytes += UintOf(reply.value(), "bytes_dropped");
    dirty += UintOf(reply.value(), "blocks_kept_dirty");
    pinned_files += UintOf(reply.value(), "files_pinned");
    pinned_blocks += UintOf(reply.value(), "blocks_pinned_kept");
    failed += UintOf(reply.value(), "files_failed");
    if (first_error.empty()) first_error = TextOf(reply.value(), "first_error", "");
  }
  std::string out = "evict: " + Plural(blocks, "block", "blocks") + " (" +
                    HumanBytes(static_cast<double>(bytes)) + ") dropped from " +
                    Plural(files, "file", "files");
  if (dirty > 0) out += "; " + Plural(dirty, "dirty block", "dirty blocks") + " kept";
  if (pinned_files > 0) {
    out += "; " + Plural(pinned_files, "pinned file", "pinned files") + " kept (" +
           Plural(pinned_blocks, "block", "blocks") + "; unpin first)";
  }
  std::printf("%s\n", out.c_str());
  if (failed > 0) {
    return Fail(
        {kExitFailure, Plural(failed, "file", "files") +
                           " could not be written back, their dirty data is kept: " + first_error});
  }
  return 0;
}

// `pin [--warm] PATH...`: pins every regular file at or below the PATHs.
int Pin(const std::vector<std::string>& args, bool warm) {
  Failure failure;
  auto files = FilesOf(args, &failure);
  if (!files) return Fail(failure);
  uint64_t already = 0, cached = 0;
  for (const Target& f : *files) {
    JsonValue fields = JsonValue::MakeObject();
    fields.Set("path", f.rel);
    auto reply = Ask(f.mount, "pin", fields);
    if (!reply.ok()) return Fail({kExitFailure, Explain(f.mount, reply.status())});
    bool was = false;
    const JsonValue* v = reply->Find("was_pinned");
    if (v != nullptr) v->as_bool(&was);
    already += was ? 1 : 0;
    cached += UintOf(reply.value(), "blocks_cached");
  }
  std::printf("pin: %s pinned (%llu already were), %s of them cached%s\n",
              Plural(files->size(), "file", "files").c_str(),
              static_cast<unsigned long long>(already), Plural(cached, "block", "blocks").c_str(),
              warm ? "" : " (cachefsctl warm fetches the rest)");
  return warm ? Warm(args) : 0;
}

// `unpin PATH...`: unpins the files at or below the PATHs.
int Unpin(const std::vector<std::string>& args) {
  Failure failure;
  uint64_t files = 0, blocks = 0;
  for (const std::string& arg : args) {
    auto t = Locate(arg, false, &failure);
    if (!t) return Fail(failure);
    JsonValue fields = JsonValue::MakeObject();
    fields.Set("path", t->rel);
    auto reply = Ask(t->mount, "unpin", fields);
    if (!reply.ok()) return Fail({kExitFailure, Explain(t->mount, reply.status())});
    files += UintOf(reply.value(), "files");
    blocks += UintOf(reply.value(), "blocks");
  }
  std::printf("unpin: %s unpinned, %s of them may be evicted again\n",
              Plural(files, "file", "files").c_str(),
              Plural(blocks, "cached block", "cached blocks").c_str());
  return 0;
}

std::string LocalTime(int64_t ns) {
  time_t secs = static_cast<time_t>(ns / 1000000000);
  struct tm tm;
  localtime_r(&secs, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

struct ConflictArgs {
  std::string path;
  bool json = false;
  std::string keep_ours, keep_theirs, save_ours;
};

// `conflicts [PATH] [--json]` lists the files in conflict; `--keep-ours`,
// `--keep-theirs` and `--save-ours FILE` resolve one.
int Conflicts(const ConflictArgs& a) {
  Failure failure;
  std::string action, file;
  if (!a.keep_ours.empty()) action = "keep-ours", file = a.keep_ours;
  if (!a.keep_theirs.empty()) action = "keep-theirs", file = a.keep_theirs;
  if (!a.save_ours.empty()) action = "save-ours", file = a.save_ours;
  if (!action.empty()) {
    auto t = Locate(file, false, &failure);
    if (!t) return Fail(failure);
    JsonValue fields = JsonValue::MakeObject();
    fields.Set("path", t->rel);
    fields.Set("action", action);
    auto reply = Ask(t->mount, "resolve", fields, kWriteBackTimeoutMs);
    if (!reply.ok()) return Fail({kExitFailure, Explain(t->mount, reply.status())});
    const std::string bytes = HumanBytes(static_cast<double>(UintOf(reply.value(), "bytes")));
    if (action == "keep-ours") {
      std::printf("conflicts: %s: kept ours (%s of our data written over SOURCE's change)\n",
                  t->real.c_str(), bytes.c_str());
    } else if (action == "keep-theirs") {
      std::printf("conflicts: %s: kept SOURCE's version (%s of our data dropped)\n",
                  t->real.c_str(), bytes.c_str());
    } else {
      std::printf("conflicts: %s: ours saved in SOURCE as %s, SOURCE's version kept\n",
                  t->real.c_str(), TextOf(reply.value(), "saved_as").c_str());
    }
    return 0;
  }
  Target t;
  if (!a.path.empty()) {
    auto found = Locate(a.path, false, &failure);
    if (!found) return Fail(failure);
    t = *found;
  } else {
    auto mount = ResolveMount("", &failure);
    if (!mount) return Fail(failure);
    t.mount = *mount;
  }
  JsonValue fields = JsonValue::MakeObject();
  fields.Set("path", t.rel);
  auto reply = Ask(t.mount, "conflicts", fields);
  if (!reply.ok()) return Fail({kExitFailure, Explain(t.mount, reply.status())});
  const JsonValue* list = reply->Find("conflicts");
  if (list == nullptr || !list->is_array()) {
    return Fail({kExitFailure, t.mount.mount_point + ": the daemon sent no conflicts"});
  }
  if (a.json) {
    JsonValue doc = JsonValue::MakeObject();
    doc.Set("version", kControlProtocolVersion);
    doc.Set("mount_point", t.mount.mount_point);
    doc.Set("conflicts", *list);
    std::printf("%s\n", doc.Serialize(2).c_str());
    return 0;
  }
  if (list->items().empty()) {
    std::printf("no files in conflict\n");
    return 0;
  }
  std::vector<std::vector<std::string>> rows = {
      {"PATH", "DIRTY", "OURS: SIZE", "WRITTEN", "SOURCE: SIZE", "CHANGED"}};
  for (const JsonValue& c : list->items()) {
    int64_t ours = 0, theirs = 0;
    const JsonValue* v = c.Find("mtime_ns");
    if (v != nullptr) v->as_int64(&ours);
    v = c.Find("source_mtime_ns");
    const bool in_source = v != nullptr && v->as_int64(&theirs);
    const std::string rel = TextOf(c, "path", "");
    rows.push_back({t.mount.mount_point + (rel.empty() ? "" : "/" + rel), BytesOf(c, "dirty_bytes"),
                    BytesOf(c, "size"), LocalTime(ours),
                    in_source ? BytesOf(c, "source_size") : "(gone)",
                    in_source ? LocalTime(theirs) : "-"});
  }
  std::fputs(Columns(rows).c_str(), stdout);
  return 0;
}

// `commit [PATH] [--json]`, `discard [PATH] [--json]`: end the cow layer of
// an image mount, written down to the image or dropped (docs/control.md).
int Layer(const std::string& cmd, const std::string& path, bool json) {
  Failure failure;
  auto mount = ResolveMount(path, &failure);
  if (!mount) return Fail(failure);
  auto reply = Ask(*mount, cmd, JsonValue::MakeObject(), kWriteBackTimeoutMs);
  if (!reply.ok()) return Fail({kExitFailure, Explain(*mount, reply.status())});
  if (json) {
    std::printf("%s\n", Document(reply.value()).Serialize(2).c_str());
    return 0;
  }
  uint64_t blocks = 0, bytes = 0;
  if (const JsonValue* v = reply->Find("blocks")) v->as_uint64(&blocks);
  if (const JsonValue* v = reply->Find("bytes")) v->as_uint64(&bytes);
  const std::string size = Plural(blocks, "block", "blocks") + ", " + HumanBytes(bytes);
  if (cmd == "commit") {
    std::printf("commit: the cow layer (%s) is on the image and synced; the layer is empty\n",
                size.c_str());
  } else {
    std::printf("discard: the cow layer (%s) is dropped; the mount shows the image again\n",
                size.c_str());
  }
  return 0;
}

// `check CACHE_DIR`: the offline check (and repair) of an unmounted cache;
// the exit status says the verdict (CheckExitCode).
int Check(const std::string& dir, const CheckOptions& options, bool json) {
  auto report = CheckCache(dir, options);
  if (!report.ok()) return Fail({kCheckExitBroken, report.status().message()});
  if (json) {
    std::printf("%s\n", CheckReportJson(report.value(), options.repair).Serialize(2).c_str());
  } else {
    std::fputs(FormatCheckReport(report.value(), options.repair).c_str(), stdout);
  }
  return CheckExitCode(report.value());
}

// `dump CACHE_DIR`: the metadata of an unmounted cache, read-only.
int Dump(const std::string& dir, bool blocks, bool json) {
  auto dump = DumpCache(dir, blocks);
  if (!dump.ok()) return Fail({kExitFailure, dump.status().message()});
  if (json) {
    std::printf("%s\n", CacheDumpJson(dump.value(), blocks).Serialize(2).c_str());
  } else {
    std::fputs(FormatCacheDump(dump.value(), blocks).c_str(), stdout);
  }
  return 0;
}

int Main(int argc, char** argv) {
  // An unknown command is named as such, not as an unexpected argument.
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.empty() || arg[0] == '-') continue;
    if (std::find(kCommands.begin(), kCommands.end(), arg) == kCommands.end()) {
      return Fail({kExitUsage, "unknown command '" + arg + "' (" + Joined(kCommands) +
                                   "; see cachefsctl --help)"});
    }
    break;
  }
  CLI::App app("cachefsctl: show and control running cachefs mounts", "cachefsctl");
  app.set_version_flag("-V,--version", std::string("cachefsctl ") + CACHEFS_VERSION);
  app.require_subcommand(1);
  app.footer(
      "PATH is any path inside a cachefs mount; without it, the only cachefs mount.\n"
      "CACHE_DIR is the cache directory of an unmounted cache (check, dump).\n"
      "Exit status: 0 done, 1 the mount or its daemon failed, 2 bad arguments\n"
      "(check: see cachefsctl check --help).\n");

  bool list_json = false;
  CLI::App* list = app.add_subcommand("list", "every cachefs mount, its cache and its state");
  list->add_flag("--json", list_json, "JSON output (docs/control.md)");

  StatsArgs stats_args;
  CLI::App* stats = app.add_subcommand("stats", "the counters of a mount");
  stats->add_option("path", stats_args.path, "a path inside the mount")->type_name("PATH");
  CLI::Option* json_opt =
      stats->add_flag("--json", stats_args.json, "JSON output, schema version 1 (docs/control.md)");
  CLI::Option* prom_opt =
      stats->add_flag("--prometheus", stats_args.prometheus, "Prometheus text exposition format");
  CLI::Option* watch_opt =
      stats
          ->add_option("--watch", stats_args.watch,
                       "redraw every SECONDS with rates over the last interval")
          ->type_name("SECONDS")
          ->check(CLI::Range(0.1, 86400.0));
  CLI::Option* count_opt =
      stats->add_option("--count", stats_args.count, "with --watch: stop after N tables")
          ->type_name("N")
          ->check(CLI::Range(uint64_t{1}, uint64_t{1} << 40));
  json_opt->excludes(prom_opt);
  watch_opt->excludes(json_opt)->excludes(prom_opt);
  count_opt->needs(watch_opt);

  std::vector<std::string> get_args;
  bool get_json = false;
  CLI::App* get = app.add_subcommand("get", "the live tunables of a mount, as KEY VALUE lines");
  get->add_option("args", get_args, "[KEY] [PATH]: one tunable (default: all) of a mount")
      ->type_name("[KEY] [PATH]")
      ->expected(0, 2);
  get->add_flag("--json", get_json, "JSON output (docs/control.md)");

  std::vector<std::string> set_args;
  CLI::App* set = app.add_subcommand("set", "change a live tunable of a mount");
  set->add_option("args", set_args, "KEY VALUE [PATH]: the tunable, its new value, the mount")
      ->type_name("KEY VALUE [PATH]")
      ->expected(2, 3)
      ->required();

  std::string mode_name;
  std::string mode_path;
  CLI::App* mode = app.add_subcommand(
      "mode", "switch the mode (writethrough, writeback, writearound, readonly, cow) of a mount");
  mode->add_option("mode", mode_name, "the new mode")->type_name("MODE")->required();
  mode->add_option("path", mode_path, "a path inside the mount")->type_name("PATH");

  std::string flush_path;
  bool flush_wait = false;
  CLI::App* flush = app.add_subcommand("flush", "write back everything dirty now (mode=writeback)");
  flush->add_option("path", flush_path, "a path inside the mount")->type_name("PATH");
  flush->add_flag("--wait", flush_wait,
                  "wait until it is all on the slow store, showing what is left; exit 0 only then");

  std::vector<std::string> warm_paths;
  CLI::App* warm = app.add_subcommand(
      "warm", "fetch files, or every file of trees, into the cache now (prefetch)");
  warm->add_option("paths", warm_paths, "files or directories inside the mount")
      ->type_name("PATH...")
      ->required();

  std::vector<std::string> evict_paths;
  bool evict_all = false;
  CLI::App* evict = app.add_subcommand(
      "evict", "drop the cached data of files or trees (dirty data is written back first)");
  evict->add_option("paths", evict_paths, "files or directories inside the mount")
      ->type_name("PATH...");
  evict->add_flag("--all", evict_all,
                  "every file of the mount (PATH, if given, only names the mount)");

  std::vector<std::string> pin_paths;
  bool pin_warm = false;
  CLI::App* pin = app.add_subcommand(
      "pin", "keep files (every file of trees) in the cache: never evicted, even across remounts");
  pin->add_option("paths", pin_paths, "files or directories inside the mount")
      ->type_name("PATH...")
      ->required();
  pin->add_flag("--warm", pin_warm, "then fetch them into the cache (as cachefsctl warm)");

  std::vector<std::string> unpin_paths;
  CLI::App* unpin = app.add_subcommand("unpin", "let pinned files be evicted again");
  unpin->add_option("paths", unpin_paths, "files or directories inside the mount")
      ->type_name("PATH...")
      ->required();

  ConflictArgs conflict_args;
  CLI::App* conflicts = app.add_subcommand(
      "conflicts", "list the files changed in SOURCE while they had dirty data, or resolve one");
  CLI::Option* conflict_path =
      conflicts->add_option("path", conflict_args.path, "only files at or below PATH")
          ->type_name("PATH");
  CLI::Option* conflict_json =
      conflicts->add_flag("--json", conflict_args.json, "JSON output (docs/control.md)");
  CLI::Option* keep_ours = conflicts
                               ->add_option("--keep-ours", conflict_args.keep_ours,
                                            "write our data back over SOURCE's change")
                               ->type_name("FILE");
  CLI::Option* keep_theirs = conflicts
                                 ->add_option("--keep-theirs", conflict_args.keep_theirs,
                                              "drop our data, keep SOURCE's version")
                                 ->type_name("FILE");
  CLI::Option* save_ours =
      conflicts
          ->add_option("--save-ours", conflict_args.save_ours,
                       "save our version beside it in SOURCE (FILE.cachefs-ours-DATE-TIME), then "
                       "keep SOURCE's version")
          ->type_name("FILE");
  for (CLI::Option* resolution : {keep_ours, keep_theirs, save_ours}) {
    resolution->excludes(conflict_path)->excludes(conflict_json);
  }
  keep_ours->excludes(keep_theirs)->excludes(save_ours);
  keep_theirs->excludes(save_ours);

  std::string commit_path;
  bool commit_json = false;
  CLI::App* commit = app.add_subcommand(
      "commit", "write the cow layer of an image mount down to the image (mode=cow)");
  commit->add_option("path", commit_path, "a path inside the mount")->type_name("PATH");
  commit->add_flag("--json", commit_json, "JSON output (docs/control.md)");

  std::string discard_path;
  bool discard_json = false;
  CLI::App* discard = app.add_subcommand(
      "discard", "drop the cow layer of an image mount: it shows the image again (mode=cow)");
  discard->add_option("path", discard_path, "a path inside the mount")->type_name("PATH");
  discard->add_flag("--json", discard_json, "JSON output (docs/control.md)");

  std::string check_dir;
  CheckOptions check_options;
  bool check_no_data = false;
  bool check_json = false;
  CLI::App* check =
      app.add_subcommand("check", "check an unmounted cache offline, and repair it with --repair");
  check->add_option("cache_dir", check_dir, "the cache directory")
      ->type_name("CACHE_DIR")
      ->required();
  CLI::Option* repair_opt =
      check->add_flag("--repair", check_options.repair,
                      "fix what can be fixed (in synced metadata batches), then check again");
  CLI::Option* no_data_opt = check->add_flag(
      "--no-data", check_no_data, "check the metadata only: do not read the cached data");
  no_data_opt->excludes(repair_opt);
  check->add_flag("--json", check_json, "JSON output, schema version 1 (docs/control.md)");
  check->footer(
      "Exit status: 0 clean, 1 repaired, 2 bad arguments, 4 problems --repair fixes without\n"
      "loss, 8 broken (dirty data lost or kept aside, a fatal problem, or no check possible).\n");

  std::string dump_dir;
  bool dump_blocks = false;
  bool dump_json = false;
  CLI::App* dump = app.add_subcommand(
      "dump", "show the metadata of an unmounted cache: superblock, files, blocks");
  dump->add_option("cache_dir", dump_dir, "the cache directory")
      ->type_name("CACHE_DIR")
      ->required();
  dump->add_flag("--blocks", dump_blocks, "also every block: slot, generation, bitmaps, dirty seq");
  dump->add_flag("--json", dump_json, "JSON output, schema version 1 (docs/control.md)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return Fail({kExitUsage, std::string(e.what()) + " (see cachefsctl --help)"});
  }
  if (list->parsed()) return List(list_json);
  if (stats->parsed()) return Stats(stats_args);
  if (flush->parsed()) return Flush(flush_path, flush_wait);
  if (set->parsed()) return Set(set_args);
  if (mode->parsed()) return Mode(mode_name, mode_path);
  if (warm->parsed()) return Warm(warm_paths);
  if (evict->parsed()) return Evict(evict_paths, evict_all);
  if (pin->parsed()) return Pin(pin_paths, pin_warm);
  if (unpin->parsed()) return Unpin(unpin_paths);
  if (conflicts->parsed()) return Conflicts(conflict_args);
  if (commit->parsed()) return Layer("commit", commit_path, commit_json);
  if (discard->parsed()) return Layer("discard", discard_path, discard_json);
  if (check->parsed()) {
    check_options.verify_data = !check_no_data;
    return Check(check_dir, check_options, check_json);
  }
  if (dump->parsed()) return Dump(dump_dir, dump_blocks, dump_json);
  return Get(get_args, get_json);
}

}  // namespace
}  // namespace cachefs

int main(int argc, char** argv) {
  try {
    return cachefs::Main(argc, argv);
  } catch (const std::exception& e) {
    // Nothing should get here: CLI11's own errors are handled in Main.
    std::fprintf(stderr, "cachefsctl: %s\n", e.what());
    return 1;
  }
}
