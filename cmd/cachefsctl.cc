// cachefsctl: asks running cachefs daemons about their mounts.
//
//   cachefsctl list [--json]
//   cachefsctl stats [PATH] [--json | --prometheus | --watch SECONDS [--count N]]
//   cachefsctl get [KEY] [PATH] [--json]
//   cachefsctl set KEY VALUE [PATH]
//   cachefsctl mode MODE [PATH]
//   cachefsctl flush [--wait] [PATH]
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
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
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

const std::vector<std::string> kCommands = {"list", "stats", "get",   "set",
                                            "mode", "flush", "check", "dump"};

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

// Left-aligned columns, two spaces apart, no trailing blanks.
std::string Columns(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line.append(width[i] - row[i].size() + 2, ' ');
    }
    out += line + "\n";
  }
  return out;
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
      "mode", "switch the mode (writethrough, writeback, writearound, readonly) of a mount");
  mode->add_option("mode", mode_name, "the new mode")->type_name("MODE")->required();
  mode->add_option("path", mode_path, "a path inside the mount")->type_name("PATH");

  std::string flush_path;
  bool flush_wait = false;
  CLI::App* flush = app.add_subcommand("flush", "write back everything dirty now (mode=writeback)");
  flush->add_option("path", flush_path, "a path inside the mount")->type_name("PATH");
  flush->add_flag("--wait", flush_wait,
                  "wait until it is all on the slow store, showing what is left; exit 0 only then");

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
