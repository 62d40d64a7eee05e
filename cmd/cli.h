// The daemon's command line: `cachefs SOURCE MOUNTPOINT [-o opt,...] [--opt ...]`.
//
// Every option of ARCHITECTURE.md has one name, usable both inside -o
// (mount style, as fstab and mount(8) pass it) and as --name[=value]. This
// file only maps flags onto FsOptions and CacheOptions; what a value means
// and whether it is valid is theirs to say (Validate()).
#pragma once

#include <string>
#include <vector>

#include "cache/options.h"
#include "common/status.h"
#include "fs/options.h"

namespace cachefs {

struct DaemonConfig {
  std::string source;
  std::string mountpoint;
  bool foreground = false;  // -f: stay attached, log to stderr
  bool debug = false;       // -d: debug logging and a FUSE request trace; implies -f
  bool reformat = false;    // --reformat: throw the cache away and format it anew
  FsOptions fs;
  CacheOptions cache;
};

struct ParseOutcome {
  // Set when the command line asked for --help or --version: print `output`
  // and exit with 0 without mounting.
  bool exit_now = false;
  std::string output;
  DaemonConfig config;
};

// Parses `args` (without the program name). A bad option gives a one-line
// Status naming it. The returned config has been validated.
Result<ParseOutcome> ParseDaemonArgs(const std::vector<std::string>& args);

// Whether option `name` may change while mounted (cachefsctl set).
bool IsLiveOption(const std::string& name);
// Sets the live option `name` to `value` in `c`, as -o would, and validates
// the result; `c` is unchanged on error (a one-line Status: an unknown
// option, one that is fixed while mounted, a bad value).
Status SetLiveOption(DaemonConfig& c, const std::string& name, const std::string& value);

extern const char kCachefsVersion[];

}  // namespace cachefs
