// The output of the offline commands `cachefsctl check` and `cachefsctl
// dump` (cache/check.h): their JSON documents (schema version 1,
// docs/control.md), their text for people, and check's exit status.
//
// Exit status of check, like fsck's:
//   0  clean (with --repair: nothing to repair)
//   1  --repair fixed every problem and lost nothing that was not on SOURCE
//   2  bad arguments (as every cachefsctl command)
//   4  problems were found that --repair fixes without losing data
//   8  broken: dirty data was lost or had to be kept aside (with --repair the
//      cache is consistent again, the report lists what was lost), a fatal
//      problem, a failed repair, or the check could not run at all
//
// Thread-safety: pure functions over their arguments.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cache/check.h"
#include "common/json.h"

namespace cachefs {

inline constexpr int kCheckExitClean = 0;
inline constexpr int kCheckExitRepaired = 1;
inline constexpr int kCheckExitProblems = 4;
inline constexpr int kCheckExitBroken = 8;

// The exit status for `report` (see above).
int CheckExitCode(const CheckReport& report);

// A bitmap of `sub_blocks` bits as one hexadecimal number, ceil(n / 4)
// digits, most significant first: bit i (value 2^i) is sub-block i, so a
// 64 KiB block with every sub-block set is "ffff".
std::string BitmapHex(const std::vector<uint64_t>& words, uint32_t sub_blocks);
// The names of the set flags of a FileRecord ("conflict", "unlinked",
// "unmatched", "pinned", "writing_back"; unknown bits as "0x...").
std::vector<std::string> FileFlagNames(uint32_t flags);

JsonValue SuperblockJson(const Superblock& sb);
// {"version":1,"cache_dir":...,"superblock":...,"data_verified":...,
//  "counts":{...},"problems":[...],"verdict":...,["repair":{...},]"exit_code":N}
JsonValue CheckReportJson(const CheckReport& report, bool repair_asked);
std::string FormatCheckReport(const CheckReport& report, bool repair_asked);

// {"version":1,"cache_dir":...,"superblock":...,"mount_state":...,
//  "counters":...,"summary":{...},"files":[...][,"blocks":[...]]}
JsonValue CacheDumpJson(const CacheDump& dump, bool with_blocks);
std::string FormatCacheDump(const CacheDump& dump, bool with_blocks);

}  // namespace cachefs
