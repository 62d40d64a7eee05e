#include "cmd/cli.h"

#include <CLI/CLI.hpp>
#include <functional>
#include <set>
#include <sstream>

#include "common/parse.h"

namespace cachefs {

const char kCachefsVersion[] = "0.1.0";

namespace {

using Apply = std::function<Status(DaemonConfig&, const std::string&)>;

struct OptionSpec {
  const char* name;
  const char* help;
  bool takes_value;
  Apply apply;
};

template <typename T, typename Set>
Status Assign(Result<T> r, Set set) {
  if (!r.ok()) return r.status();
  set(r.value());
  return Status::Ok();
}

const std::vector<OptionSpec>& Specs() {
  static const std::vector<OptionSpec> specs = {
      {"cache", "cache directory (store, metadata, lock)", true,
       [](DaemonConfig& c, const std::string& v) {
         if (v.empty()) return Status::Invalid("must not be empty");
         c.cache.cache_dir = v;
         return Status::Ok();
       }},
      {"cache_size", "store data bytes (K/M/G/T) or N% of the cache filesystem [10%]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSizeOrPercent(v), [&](SizeOrPercent s) { c.cache.cache_size = s; });
       }},
      {"block_size", "cache block size, a power of two from 4K to 4M [64K]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSize(v), [&](uint64_t b) { c.cache.block_size = b; });
       }},
      {"store", "store kind: file or pmem [file]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseStoreKind(v), [&](StoreKind k) { c.cache.store = k; });
       }},
      {"store_path", "the store file or DAX device [DIR/store]", true,
       [](DaemonConfig& c, const std::string& v) {
         c.cache.store_path = v;
         return Status::Ok();
       }},
      {"store_io", "file store IO: buffered, or direct (O_DIRECT for all) [buffered]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseStoreIo(v), [&](bool d) { c.cache.store_direct_io = d; });
       }},
      {"mode", "writethrough, writeback, writearound, readonly or cow [writethrough]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseCacheMode(v), [&](CacheMode m) { c.cache.mode = m; });
       }},
      {"policy", "eviction policy: smq, lru or cleaner [smq]", true,
       [](DaemonConfig& c, const std::string& v) {
         c.cache.policy = v;
         return Status::Ok();
       }},
      {"fuse_threads", "FUSE worker threads [16]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 1, 1024), [&](uint64_t n) { c.fs.fuse_threads = unsigned(n); });
       }},
      {"writeback_threads", "background writeback threads [4]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 1, 256),
                       [&](uint64_t n) { c.cache.writeback_threads = unsigned(n); });
       }},
      {"dirty_high", "start writeback at this percent of the cache dirty [60]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 0, 100), [&](uint64_t n) { c.cache.dirty_high = unsigned(n); });
       }},
      {"dirty_low", "stop forced writeback at this percent [40]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 0, 100), [&](uint64_t n) { c.cache.dirty_low = unsigned(n); });
       }},
      {"writeback_delay", "seconds a dirty block ages before it is written back [5]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSeconds(v), [&](double s) { c.cache.writeback_delay = s; });
       }},
      {"migration_threshold", "writeback bytes in flight [64M]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSize(v), [&](uint64_t b) { c.cache.migration_threshold = b; });
       }},
      {"commit_interval", "milliseconds between periodic persists [1000]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 1, 3600000),
                       [&](uint64_t n) { c.cache.commit_interval_ms = n; });
       }},
      {"sequential_threshold", "contiguous blocks before a stream bypasses the cache [512]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseUint(v, 1, 1ull << 32),
                       [&](uint64_t n) { c.cache.sequential_threshold = n; });
       }},
      {"file_size_limit", "files larger than this are read uncached; 0 = no limit [0]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSize(v), [&](uint64_t b) { c.cache.file_size_limit = b; });
       }},
      {"readahead", "prefetch size on sequential streams; 0 = off [1M]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSize(v), [&](uint64_t b) { c.cache.readahead = b; });
       }},
      {"verify", "check the CRC of every hit: on or off [on]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseBool(v), [&](bool b) { c.cache.verify = b; });
       }},
      {"attr_timeout", "seconds the kernel caches attributes [1]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSeconds(v), [&](double s) { c.fs.attr_timeout = s; });
       }},
      {"entry_timeout", "seconds the kernel caches names [1]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSeconds(v), [&](double s) { c.fs.entry_timeout = s; });
       }},
      {"flush_timeout", "seconds of writeback after unmount [60]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSeconds(v), [&](double s) { c.cache.flush_timeout = s; });
       }},
      {"source_timeout", "seconds a read of SOURCE may hang before EIO; 0: forever [60]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseSeconds(v), [&](double s) { c.cache.source_timeout = s; });
       }},
      {"xattr", "extended attributes: on, or off (xattr calls fail; faster writes) [on]", true,
       [](DaemonConfig& c, const std::string& v) {
         return Assign(ParseBool(v), [&](bool b) { c.fs.xattr = b; });
       }},
      {"allow_other", "let other users in (permissions enforced)", false,
       [](DaemonConfig& c, const std::string&) {
         c.fs.allow_other = true;
         return Status::Ok();
       }},
      {"ro", "mount read-only", false,
       [](DaemonConfig& c, const std::string&) {
         c.fs.read_only = true;
         return Status::Ok();
       }},
      {"rw", "mount read-write (the default)", false,
       [](DaemonConfig& c, const std::string&) {
         c.fs.read_only = false;
         return Status::Ok();
       }},
  };
  return specs;
}

const OptionSpec* FindSpec(const std::string& name) {
  for (const OptionSpec& s : Specs()) {
    if (name == s.name) return &s;
  }
  return nullptr;
}

// Options of mount(8) and fstab that concern mount(8), systemd or the user
// database and not the filesystem: accepted and ignored.
bool IsIgnoredMountOption(const std::string& key) {
  static const std::set<std::string> kIgnored = {
      "defaults", "_netdev", "nofail", "noauto", "auto",    "user",
      "users",    "nouser",  "owner",  "group",  "comment", "default_permissions"};
  return kIgnored.count(key) > 0 || key.rfind("x-", 0) == 0;
}

// Generic mount flags the kernel applies to a FUSE mount: handed on as they are.
bool IsKernelMountOption(const std::string& key) {
  static const std::set<std::string> kKernel = {
      "suid",       "nosuid",      "dev",           "nodev",      "exec",
      "noexec",     "async",       "sync",          "atime",      "noatime",
      "diratime",   "nodiratime",  "lazytime",      "nolazytime", "relatime",
      "norelatime", "strictatime", "nostrictatime", "dirsync"};
  return kKernel.count(key) > 0;
}

Status ApplyOption(DaemonConfig& c, const std::string& key, const std::string* value) {
  if (const OptionSpec* spec = FindSpec(key)) {
    if (spec->takes_value && value == nullptr) {
      return Status::Invalid("option '" + key + "' needs a value (" + key + "=...)");
    }
    if (!spec->takes_value && value != nullptr) {
      return Status::Invalid("option '" + key + "' takes no value");
    }
    return spec->apply(c, value ? *value : std::string()).Prefixed("option '" + key + "'");
  }
  if (value == nullptr && IsKernelMountOption(key)) {
    c.fs.kernel_options.push_back(key);
    return Status::Ok();
  }
  if (IsIgnoredMountOption(key)) return Status::Ok();
  return Status::Invalid("unknown option '" + key + "'");
}

Status ApplyMountOptions(DaemonConfig& c, const std::string& list) {
  std::string item;
  std::istringstream in(list);
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    size_t eq = item.find('=');
    if (eq == std::string::npos) {
      Status s = ApplyOption(c, item, nullptr);
      if (!s.ok()) return s;
    } else {
      std::string value = item.substr(eq + 1);
      Status s = ApplyOption(c, item.substr(0, eq), &value);
      if (!s.ok()) return s;
    }
  }
  return Status::Ok();
}

}  // namespace

bool IsLiveOption(const std::string& name) {
  static const std::set<std::string> kLive = {
      "policy",          "writeback_threads",   "dirty_high",      "dirty_low",
      "writeback_delay", "migration_threshold", "commit_interval", "sequential_threshold",
      "file_size_limit", "readahead",           "verify"};
  return kLive.count(name) > 0;
}

Status SetLiveOption(DaemonConfig& c, const std::string& name, const std::string& value) {
  if (!IsLiveOption(name)) {
    if (FindSpec(name) == nullptr) return Status::Invalid("unknown option '" + name + "'");
    return Status::Invalid("option '" + name + "' cannot change while mounted (remount with -o " +
                           name + "=...)");
  }
  DaemonConfig changed = c;
  Status s = ApplyOption(changed, name, &value);
  if (s.ok()) s = changed.cache.Validate();
  if (!s.ok()) return s;
  c = std::move(changed);
  return Status::Ok();
}

Result<ParseOutcome> ParseDaemonArgs(const std::vector<std::string>& args) {
  ParseOutcome out;
  DaemonConfig& c = out.config;
  CLI::App app("cachefs: a block cache on fast storage over a slow directory or image file",
               "cachefs");
  app.set_version_flag("-V,--version", std::string("cachefs ") + kCachefsVersion);
  app.add_option("source", c.source, "the slow directory (or image file) to cache")->required();
  app.add_option("mountpoint", c.mountpoint, "where the cached view appears")->required();
  app.add_flag("-f,--foreground", c.foreground, "stay in the foreground, log to stderr");
  app.add_flag("-d,--debug", c.debug, "debug log and FUSE request trace (implies -f)");
  app.add_flag("--reformat", c.reformat,
               "throw away what the cache directory holds and format it anew");
  std::vector<std::string> mount_options;
  app.add_option("-o", mount_options,
                 "mount options, comma-separated: any option below, and "
                 "standard ones (defaults, rw, ro, _netdev, nofail, noauto, "
                 "user, users, x-*, nosuid, nodev, noexec, noatime, ...)")
      ->allow_extra_args(false)
      ->type_name("OPT[,OPT...]");
  Status long_status;  // the first error of a --long option
  for (const OptionSpec& spec : Specs()) {
    std::string name = spec.name;
    std::string flags = "--" + name;
    if (name.find('_') != std::string::npos) {
      std::string dashed = name;
      for (char& ch : dashed) ch = ch == '_' ? '-' : ch;
      flags += ",--" + dashed;
    }
    if (spec.takes_value) {
      app.add_option_function<std::string>(
             flags,
             [&c, &long_status, name](const std::string& v) {
               Status s = ApplyOption(c, name, &v);
               if (long_status.ok()) long_status = s;
             },
             spec.help)
          ->type_name("VALUE")
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    } else {
      app.add_flag_callback(
          flags,
          [&c, &long_status, name] {
            Status s = ApplyOption(c, name, nullptr);
            if (long_status.ok()) long_status = s;
          },
          spec.help);
    }
  }
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    out.exit_now = true;
    out.output = app.help();
    return out;
  } catch (const CLI::CallForVersion&) {
    out.exit_now = true;
    out.output = std::string("cachefs ") + kCachefsVersion + "\n";
    return out;
  } catch (const CLI::ParseError& e) {
    std::string msg = e.what();
    return Status::Invalid(msg);
  }
  if (!long_status.ok()) return long_status;
  for (const std::string& list : mount_options) {
    Status s = ApplyMountOptions(c, list);
    if (!s.ok()) return s;
  }
  if (c.debug) c.foreground = true;
  Status s = c.fs.Validate();
  if (s.ok()) s = c.cache.Validate();
  if (!s.ok()) return s;
  return out;
}

}  // namespace cachefs
