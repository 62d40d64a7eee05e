#include "cmd/check_format.h"

#include <algorithm>
#include <cstdio>
#include <ctime>

#include "cache/options.h"
#include "cmd/stats_format.h"

namespace cachefs {
namespace {

constexpr int kSchemaVersion = 1;

std::string Hex(const std::string& bytes) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += kDigits[c >> 4];
    out += kDigits[c & 15];
  }
  return out;
}

std::string UtcTime(uint64_t unix_ns) {
  const time_t secs = static_cast<time_t>(unix_ns / 1000000000);
  struct tm tm {};
  if (gmtime_r(&secs, &tm) == nullptr) return "?";
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

// "1712345678.123456789": nanoseconds since the epoch as seconds.
std::string Seconds(int64_t ns) {
  char buf[48];
  const int64_t s = ns / 1000000000;
  const int64_t frac = ns % 1000000000;
  std::snprintf(buf, sizeof(buf), "%lld.%09lld", static_cast<long long>(s),
                static_cast<long long>(frac < 0 ? -frac : frac));
  return buf;
}

std::string Bytes(uint64_t n) { return HumanBytes(static_cast<double>(n)); }

JsonValue CountsJson(const CheckCounts& c) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("files", c.files);
  o.Set("paths", c.paths);
  o.Set("blocks", c.blocks);
  o.Set("dirty_blocks", c.dirty_blocks);
  o.Set("dirty_entries", c.dirty_entries);
  o.Set("cached_bytes", c.cached_bytes);
  o.Set("dirty_bytes", c.dirty_bytes);
  o.Set("verified_bytes", c.verified_bytes);
  o.Set("conflict_files", c.conflict_files);
  o.Set("unmatched_files", c.unmatched_files);
  return o;
}

JsonValue ProblemsJson(const std::vector<CheckProblem>& problems) {
  JsonValue list = JsonValue::MakeArray();
  for (const CheckProblem& p : problems) {
    JsonValue o = JsonValue::MakeObject();
    o.Set("class", ProblemClassName(p.cls));
    o.Set("code", p.code);
    o.Set("where", p.where);
    o.Set("what", p.what);
    o.Set("repair", p.repair.empty() ? JsonValue() : JsonValue(p.repair));
    list.Append(std::move(o));
  }
  return list;
}

std::string CountsLine(const CheckCounts& c) {
  std::string line = std::to_string(c.files) + " files (" + std::to_string(c.paths) + " names), " +
                     std::to_string(c.blocks) + " blocks (" + std::to_string(c.dirty_blocks) +
                     " dirty), " + std::to_string(c.dirty_entries) + " dirty index entries; " +
                     Bytes(c.cached_bytes) + " cached, " + Bytes(c.dirty_bytes) + " dirty";
  if (c.conflict_files > 0) line += ", " + std::to_string(c.conflict_files) + " files in conflict";
  if (c.unmatched_files > 0) line += ", " + std::to_string(c.unmatched_files) + " kept aside";
  return line;
}

size_t CountClass(const std::vector<CheckProblem>& problems, ProblemClass cls) {
  return static_cast<size_t>(std::count_if(problems.begin(), problems.end(),
                                           [&](const CheckProblem& p) { return p.cls == cls; }));
}

std::string Joined(const std::vector<std::string>& items, const char* sep) {
  std::string out;
  for (const std::string& s : items) out += (out.empty() ? "" : sep) + s;
  return out;
}

}  // namespace

int CheckExitCode(const CheckReport& r) {
  if (!r.repaired) {
    if (!r.repair_error.empty()) return kCheckExitBroken;
    switch (r.verdict) {
      case CheckVerdict::kClean:
        return kCheckExitClean;
      case CheckVerdict::kRepairable:
        return kCheckExitProblems;
      case CheckVerdict::kBroken:
        return kCheckExitBroken;
    }
  }
  if (!r.repair_error.empty() || r.verdict_after != CheckVerdict::kClean) return kCheckExitBroken;
  return r.verdict == CheckVerdict::kBroken ? kCheckExitBroken : kCheckExitRepaired;
}

std::string BitmapHex(const std::vector<uint64_t>& words, uint32_t sub_blocks) {
  static const char kDigits[] = "0123456789abcdef";
  const uint32_t digits = (sub_blocks + 3) / 4;
  std::string out;
  for (uint32_t d = digits; d-- > 0;) {
    const uint32_t bit = d * 4;
    const size_t w = bit / 64;
    const uint64_t nibble = w < words.size() ? (words[w] >> (bit % 64)) & 15 : 0;
    out += kDigits[nibble];
  }
  return out;
}

std::vector<std::string> FileFlagNames(uint32_t flags) {
  static const std::pair<uint32_t, const char*> kNames[] = {
      {FileRecord::kConflict, "conflict"},        {FileRecord::kUnlinked, "unlinked"},
      {FileRecord::kUnmatched, "unmatched"},      {FileRecord::kPinned, "pinned"},
      {FileRecord::kWritingBack, "writing_back"},
  };
  std::vector<std::string> out;
  uint32_t known = 0;
  for (const auto& [bit, name] : kNames) {
    known |= bit;
    if ((flags & bit) != 0) out.emplace_back(name);
  }
  if ((flags & ~known) != 0) {
    char hex[16];
    std::snprintf(hex, sizeof(hex), "0x%x", flags & ~known);
    out.emplace_back(hex);
  }
  return out;
}

JsonValue SuperblockJson(const Superblock& sb) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("format_version", sb.format_version);
  o.Set("source", sb.source);
  o.Set("source_is_file", sb.source_is_file);
  o.Set("block_size", sb.block_size);
  o.Set("slot_count", sb.slot_count);
  o.Set("cache_size", sb.slot_count * sb.block_size);
  o.Set("store", StoreKindName(sb.store_kind));
  o.Set("store_path", sb.store_path);
  o.Set("mode", CacheModeName(sb.mode));
  o.Set("created_unix_ns", sb.created_unix_ns);
  o.Set("cache_id", Hex(sb.cache_id));
  return o;
}

JsonValue CheckReportJson(const CheckReport& r, bool repair_asked) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("version", kSchemaVersion);
  o.Set("cache_dir", r.cache_dir);
  o.Set("superblock", r.superblock ? SuperblockJson(*r.superblock) : JsonValue());
  o.Set("data_verified", r.data_verified);
  o.Set("counts", CountsJson(r.counts));
  o.Set("problems", ProblemsJson(r.problems));
  o.Set("verdict", CheckVerdictName(r.verdict));
  if (repair_asked) {
    JsonValue rep = JsonValue::MakeObject();
    rep.Set("repaired", r.repaired);
    rep.Set("error", r.repair_error.empty() ? JsonValue() : JsonValue(r.repair_error));
    rep.Set("verdict",
            r.verdict_after ? JsonValue(CheckVerdictName(*r.verdict_after)) : JsonValue());
    rep.Set("problems", ProblemsJson(r.problems_after));
    rep.Set("counts", r.repaired ? CountsJson(r.counts_after) : JsonValue());
    o.Set("repair", std::move(rep));
  }
  o.Set("exit_code", CheckExitCode(r));
  return o;
}

std::string FormatCheckReport(const CheckReport& r, bool repair_asked) {
  std::string out = "cache '" + r.cache_dir + "'";
  if (r.superblock) {
    const Superblock& sb = *r.superblock;
    out += ": SOURCE '" + sb.source + "', " + Bytes(sb.block_size) + " blocks, " +
           std::to_string(sb.slot_count) + " slots (" + Bytes(sb.slot_count * sb.block_size) +
           "), store " + StoreKindName(sb.store_kind) + " '" + sb.store_path + "', mode " +
           CacheModeName(sb.mode);
  }
  out += "\n";
  if (r.superblock) {
    out += CountsLine(r.counts) + "; " +
           (r.data_verified ? Bytes(r.counts.verified_bytes) + " of data verified"
                            : std::string("data not verified")) +
           "\n";
  }
  for (const CheckProblem& p : r.problems) out += p.Line() + "\n";
  const size_t n = r.problems.size();
  const size_t bad = n - CountClass(r.problems, ProblemClass::kRepairable);
  const bool fatal = CountClass(r.problems, ProblemClass::kFatal) > 0;
  switch (r.verdict) {
    case CheckVerdict::kClean:
      out += "verdict: clean\n";
      break;
    case CheckVerdict::kRepairable:
      out += "verdict: repairable: " + std::to_string(n) + " problems, none loses data" +
             (repair_asked ? "" : " (cachefsctl check --repair fixes them)") + "\n";
      break;
    case CheckVerdict::kBroken:
      out += "verdict: broken: " + std::to_string(n) + " problems, " + std::to_string(bad) +
             (fatal ? " fatal or losing dirty data" : " losing dirty data (not on SOURCE)") +
             (repair_asked || fatal ? "" : " (cachefsctl check --repair keeps what verifies)") +
             "\n";
      break;
  }
  if (!r.repaired) {
    if (!r.repair_error.empty()) out += "repair: " + r.repair_error + "\n";
    return out;
  }
  if (!r.repair_error.empty()) out += "repair failed: " + r.repair_error + "\n";
  out += "after repair: " + CountsLine(r.counts_after) + "\n";
  for (const CheckProblem& p : r.problems_after) out += "  " + p.Line() + "\n";
  out += "after repair: " +
         std::string(r.verdict_after ? CheckVerdictName(*r.verdict_after) : "not checked") + "\n";
  return out;
}

JsonValue CacheDumpJson(const CacheDump& d, bool with_blocks) {
  JsonValue o = JsonValue::MakeObject();
  o.Set("version", kSchemaVersion);
  o.Set("cache_dir", d.cache_dir);
  o.Set("superblock", SuperblockJson(d.superblock));
  if (d.mount_state) {
    JsonValue ms = JsonValue::MakeObject();
    ms.Set("clean_shutdown", d.mount_state->clean_shutdown);
    ms.Set("mount_count", d.mount_state->mount_count);
    ms.Set("policy", d.mount_state->policy);
    ms.Set("policy_hints_bytes", static_cast<uint64_t>(d.mount_state->policy_hints.size()));
    o.Set("mount_state", std::move(ms));
  } else {
    o.Set("mount_state", JsonValue());
  }
  if (d.counters) {
    const PersistentCounters& c = *d.counters;
    JsonValue co = JsonValue::MakeObject();
    co.Set("read_hits", c.read_hits);
    co.Set("read_misses", c.read_misses);
    co.Set("write_hits", c.write_hits);
    co.Set("write_misses", c.write_misses);
    co.Set("bytes_from_cache", c.bytes_from_cache);
    co.Set("bytes_from_source", c.bytes_from_source);
    co.Set("bytes_written_back", c.bytes_written_back);
    o.Set("counters", std::move(co));
  } else {
    o.Set("counters", JsonValue());
  }
  JsonValue summary = JsonValue::MakeObject();
  summary.Set("files", static_cast<uint64_t>(d.files.size()));
  summary.Set("blocks", d.blocks);
  summary.Set("dirty_blocks", d.dirty_blocks);
  summary.Set("dirty_entries", d.dirty_entries);
  o.Set("summary", std::move(summary));
  JsonValue files = JsonValue::MakeArray();
  for (const DumpedFile& f : d.files) {
    const FileRecord& r = f.record;
    JsonValue fo = JsonValue::MakeObject();
    fo.Set("file_id", r.file_id);
    fo.Set("has_record", f.has_record);
    fo.Set("path", f.has_record ? JsonValue(r.path) : JsonValue());
    JsonValue names = JsonValue::MakeArray();
    for (const std::string& n : f.names) names.Append(n);
    fo.Set("names", std::move(names));
    fo.Set("source_ino", r.source_ino);
    JsonValue fp = JsonValue::MakeObject();
    fp.Set("size", r.fingerprint.size);
    fp.Set("mtime_ns", r.fingerprint.mtime_ns);
    fp.Set("ctime_ns", r.fingerprint.ctime_ns);
    fo.Set("fingerprint", std::move(fp));
    fo.Set("size", r.size);
    fo.Set("mtime_ns", r.mtime_ns);
    fo.Set("ctime_ns", r.ctime_ns);
    JsonValue flags = JsonValue::MakeArray();
    for (const std::string& name : FileFlagNames(r.flags)) flags.Append(name);
    fo.Set("flags", std::move(flags));
    fo.Set("cached_blocks", f.cached_blocks);
    fo.Set("dirty_blocks", f.dirty_blocks);
    files.Append(std::move(fo));
  }
  o.Set("files", std::move(files));
  if (with_blocks) {
    JsonValue blocks = JsonValue::MakeArray();
    for (const BlockRecord& b : d.block_records) {
      JsonValue bo = JsonValue::MakeObject();
      bo.Set("file_id", b.file_id);
      bo.Set("index", b.index);
      bo.Set("slot", b.slot);
      bo.Set("generation", b.generation);
      bo.Set("sub_blocks", b.sub_blocks());
      bo.Set("valid", BitmapHex(b.valid, b.sub_blocks()));
      bo.Set("dirty", BitmapHex(b.dirty, b.sub_blocks()));
      bo.Set("dirty_seq", b.dirty_seq);
      blocks.Append(std::move(bo));
    }
    o.Set("blocks", std::move(blocks));
  }
  return o;
}

std::string FormatCacheDump(const CacheDump& d, bool with_blocks) {
  const Superblock& sb = d.superblock;
  std::vector<std::vector<std::string>> head = {
      {"cache", d.cache_dir},
      {"source", sb.source + (sb.source_is_file ? " (image file)" : " (directory)")},
      {"format", std::to_string(sb.format_version)},
      {"block size", Bytes(sb.block_size) + " (" + std::to_string(sb.block_size / kSubBlockSize) +
                         " sub-blocks)"},
      {"slots", std::to_string(sb.slot_count) + " (" + Bytes(sb.slot_count * sb.block_size) + ")"},
      {"store", std::string(StoreKindName(sb.store_kind)) + " " + sb.store_path},
      {"mode", CacheModeName(sb.mode)},
      {"created", UtcTime(sb.created_unix_ns)},
      {"cache id", Hex(sb.cache_id)},
  };
  if (d.mount_state) {
    const MountState& ms = *d.mount_state;
    head.push_back({"last unmount", ms.clean_shutdown ? "clean" : "not clean (crash, or mounted)"});
    head.push_back({"mounts", std::to_string(ms.mount_count)});
    head.push_back({"policy", (ms.policy.empty() ? "-" : ms.policy) +
                                  " (hints: " + Bytes(ms.policy_hints.size()) + ")"});
  } else {
    head.push_back({"last unmount", "never mounted"});
  }
  if (d.counters) {
    const PersistentCounters& c = *d.counters;
    head.push_back({"counters", "read hits " + std::to_string(c.read_hits) + ", read misses " +
                                    std::to_string(c.read_misses) + ", write hits " +
                                    std::to_string(c.write_hits) + ", write misses " +
                                    std::to_string(c.write_misses)});
    head.push_back({"", "from cache " + Bytes(c.bytes_from_cache) + ", from source " +
                            Bytes(c.bytes_from_source) + ", written back " +
                            Bytes(c.bytes_written_back)});
  }
  head.push_back({"contents", std::to_string(d.files.size()) + " files, " +
                                  std::to_string(d.blocks) + " blocks (" +
                                  std::to_string(d.dirty_blocks) + " dirty), " +
                                  std::to_string(d.dirty_entries) + " dirty index entries"});
  std::string out = Columns(head);
  if (!d.files.empty()) {
    std::vector<std::vector<std::string>> rows = {
        {"ID", "INODE", "SIZE", "SOURCE_SIZE", "SOURCE_MTIME", "FLAGS", "BLOCKS", "DIRTY", "PATH"}};
    for (const DumpedFile& f : d.files) {
      const FileRecord& r = f.record;
      std::vector<std::string> flags = FileFlagNames(r.flags);
      if (!f.has_record) {
        rows.push_back({std::to_string(r.file_id), "-", "-", "-", "-", "no-record",
                        std::to_string(f.cached_blocks), std::to_string(f.dirty_blocks), "-"});
        continue;
      }
      std::string path = "'" + r.path + "'";
      for (const std::string& n : f.names) {
        if (n != r.path) path += " (also '" + n + "')";
      }
      if (f.names.empty()) path += " (no name)";
      rows.push_back({std::to_string(r.file_id), std::to_string(r.source_ino),
                      std::to_string(r.size), std::to_string(r.fingerprint.size),
                      Seconds(r.fingerprint.mtime_ns), flags.empty() ? "-" : Joined(flags, ","),
                      std::to_string(f.cached_blocks), std::to_string(f.dirty_blocks), path});
    }
    out += "\n" + Columns(rows);
  }
  if (with_blocks && !d.block_records.empty()) {
    std::vector<std::vector<std::string>> rows = {
        {"FILE", "INDEX", "SLOT", "GENERATION", "VALID", "DIRTY", "DIRTY_SEQ"}};
    for (const BlockRecord& b : d.block_records) {
      rows.push_back({std::to_string(b.file_id), std::to_string(b.index), std::to_string(b.slot),
                      std::to_string(b.generation), BitmapHex(b.valid, b.sub_blocks()),
                      BitmapHex(b.dirty, b.sub_blocks()), std::to_string(b.dirty_seq)});
    }
    out += "\n" + Columns(rows);
  }
  return out;
}

}  // namespace cachefs
