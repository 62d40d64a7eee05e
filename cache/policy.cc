#include "cache/policy.h"

#include <cstring>

#include "cache/cleaner_policy.h"
#include "cache/lru_policy.h"
#include "cache/smq_policy.h"
#include "common/crc32c.h"

namespace cachefs {

Result<std::unique_ptr<Policy>> MakePolicy(const std::string& name, uint32_t slot_count) {
  if (name.empty() || name == "smq") return std::unique_ptr<Policy>(new SmqPolicy(slot_count));
  if (name == "lru") return std::unique_ptr<Policy>(new LruPolicy(slot_count));
  if (name == "cleaner") return std::unique_ptr<Policy>(new CleanerPolicy(slot_count));
  return Status::Invalid("policy '" + name + "' is not known (smq, lru, cleaner)");
}

const std::vector<std::string>& PolicyNames() {
  static const std::vector<std::string> names = {"smq", "lru", "cleaner"};
  return names;
}

uint64_t BlockKeyHash(uint64_t file_id, uint64_t index) {
  // Two rounds of the splitmix64 finaliser, so blocks next to each other, and
  // the same index in neighbouring files, land far apart.
  auto mix = [](uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  };
  return mix(mix(file_id + 0x9e3779b97f4a7c15ULL) ^ index);
}

// --- SlotQueues ---------------------------------------------------------------

SlotQueues::SlotQueues(uint32_t slot_count, uint32_t queue_count)
    : prev_(slot_count, kNone),
      next_(slot_count, kNone),
      head_(queue_count, kNone),
      tail_(queue_count, kNone),
      size_(queue_count, 0) {}

void SlotQueues::PushBack(uint32_t queue, uint32_t slot) {
  prev_[slot] = tail_[queue];
  next_[slot] = kNone;
  if (tail_[queue] != kNone) {
    next_[tail_[queue]] = slot;
  } else {
    head_[queue] = slot;
  }
  tail_[queue] = slot;
  size_[queue]++;
}

void SlotQueues::Unlink(uint32_t queue, uint32_t slot) {
  uint32_t p = prev_[slot];
  uint32_t n = next_[slot];
  if (p != kNone) {
    next_[p] = n;
  } else {
    head_[queue] = n;
  }
  if (n != kNone) {
    prev_[n] = p;
  } else {
    tail_[queue] = p;
  }
  prev_[slot] = next_[slot] = kNone;
  size_[queue]--;
}

void SlotQueues::MoveToBack(uint32_t queue, uint32_t slot) {
  if (tail_[queue] == slot) return;
  Unlink(queue, slot);
  PushBack(queue, slot);
}

size_t SlotQueues::MemoryUsed() const {
  return (prev_.capacity() + next_.capacity() + head_.capacity() + tail_.capacity() +
          size_.capacity()) *
         sizeof(uint32_t);
}

// --- hints --------------------------------------------------------------------
//
// Layout (little-endian): "CFPH" | version u8 = 1 | name length u8 | name |
// slot_count u32 | entry count u32 | entries: slot delta as a LEB128 varint
// (from the previous slot + 1, starting at 0), value u8 | CRC32C u32 of all
// that precedes it.

namespace {

constexpr char kHintsMagic[4] = {'C', 'F', 'P', 'H'};
constexpr uint8_t kHintsVersion = 1;

void PutU32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

uint32_t GetU32(std::string_view in, size_t pos) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= uint32_t{static_cast<uint8_t>(in[pos + i])} << (8 * i);
  return v;
}

}  // namespace

std::string EncodeHints(std::string_view policy, uint32_t slot_count,
                        const std::vector<std::pair<uint32_t, uint8_t>>& entries) {
  std::string out(kHintsMagic, sizeof(kHintsMagic));
  out.push_back(static_cast<char>(kHintsVersion));
  std::string_view name = policy.substr(0, 255);
  out.push_back(static_cast<char>(name.size()));
  out.append(name);
  PutU32(out, slot_count);
  PutU32(out, static_cast<uint32_t>(entries.size()));
  uint32_t next = 0;
  for (const auto& [slot, value] : entries) {
    uint32_t delta = slot - next;
    while (delta >= 0x80) {
      out.push_back(static_cast<char>((delta & 0x7f) | 0x80));
      delta >>= 7;
    }
    out.push_back(static_cast<char>(delta));
    out.push_back(static_cast<char>(value));
    next = slot + 1;
  }
  PutU32(out, Crc32c(0, out.data(), out.size()));
  return out;
}

Result<std::vector<std::pair<uint32_t, uint8_t>>> DecodeHints(std::string_view blob,
                                                              std::string_view policy,
                                                              uint32_t slot_count) {
  auto bad = [&](const std::string& why) {
    return Status::Invalid("policy hints for '" + std::string(policy) + "': " + why);
  };
  const size_t header = sizeof(kHintsMagic) + 2;
  if (blob.size() < header + 4 + 4 + 4 || std::memcmp(blob.data(), kHintsMagic, 4) != 0) {
    return bad("not a hint blob");
  }
  size_t body = blob.size() - 4;
  if (Crc32c(0, blob.data(), body) != GetU32(blob, body)) return bad("checksum mismatch");
  if (static_cast<uint8_t>(blob[4]) != kHintsVersion) return bad("unknown version");
  size_t name_len = static_cast<uint8_t>(blob[5]);
  if (header + name_len + 8 > body) return bad("truncated header");
  if (blob.substr(header, name_len) != policy) {
    return bad("written by policy '" + std::string(blob.substr(header, name_len)) + "'");
  }
  size_t pos = header + name_len;
  if (GetU32(blob, pos) != slot_count) {
    return bad("written for " + std::to_string(GetU32(blob, pos)) + " slots, not " +
               std::to_string(slot_count));
  }
  uint32_t count = GetU32(blob, pos + 4);
  pos += 8;
  if (count > slot_count || count > (body - pos) / 2) return bad("bad entry count");
  std::vector<std::pair<uint32_t, uint8_t>> entries;
  entries.reserve(count);
  uint64_t next = 0;
  for (uint32_t i = 0; i < count; ++i) {
    uint64_t delta = 0;
    for (int shift = 0;; shift += 7) {
      if (pos >= body || shift > 28) return bad("truncated entry");
      auto byte = static_cast<uint8_t>(blob[pos++]);
      delta |= uint64_t{byte & 0x7fu} << shift;
      if ((byte & 0x80) == 0) break;
    }
    uint64_t slot = next + delta;
    if (slot >= slot_count || pos >= body) return bad("entry out of range");
    entries.emplace_back(static_cast<uint32_t>(slot), static_cast<uint8_t>(blob[pos++]));
    next = slot + 1;
  }
  if (pos != body) return bad("trailing bytes");
  return entries;
}

}  // namespace cachefs
