// engine_memory: RAM per cached block and mount (recovery) time with a large
// cache. Fills a cache of N blocks through the engine from a synthetic slow
// store (no disk reads), then reopens it and reports the daemon-side RSS and
// the time to recover the index from the metadata, then reads every block
// once more (hits) and reports what that added (the records kept for hits).
//
//   engine_memory [--blocks N] [--block_size SIZE] [--dir DIR]
//
// Defaults: 1048576 blocks of 4 KiB (a 4 GiB store file under DIR, default
// /var/tmp), removed afterwards.
#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "cache/engine.h"
#include "common/parse.h"

namespace {

using cachefs::Backing;
using cachefs::Result;
using cachefs::Status;

// A slow store that makes its bytes up: block i of the file is filled with a
// pattern derived from its offset.
class SyntheticBacking final : public Backing {
 public:
  Result<size_t> Read(int /*fd*/, uint64_t off, size_t len, void* buf) override {
    auto* p = static_cast<uint64_t*>(buf);
    for (size_t i = 0; i < len / 8; ++i) p[i] = off + i * 8;
    return len;
  }
  Status Write(int, uint64_t, size_t, const void*) override { return Status::Ok(); }
  Status Sync(int) override { return Status::Ok(); }
  Status Stat(int, struct stat*) override { return Status::Ok(); }
};

long RssKiB() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

int Fail(const std::string& m) {
  std::fprintf(stderr, "engine_memory: %s\n", m.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t blocks = 1 << 20;
  uint64_t block_size = 4096;
  std::string dir = "/var/tmp";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--blocks") {
      blocks = std::strtoull(v.c_str(), nullptr, 10);
    } else if (k == "--block_size") {
      auto b = cachefs::ParseSize(v);
      if (!b.ok()) return Fail(b.status().message());
      block_size = b.value();
    } else if (k == "--dir") {
      dir = v;
    } else {
      return Fail("unknown argument '" + k + "'");
    }
  }
  std::string base = dir + "/cachefs-engine-memory-" + std::to_string(getpid());
  std::filesystem::create_directories(base + "/src");
  std::string file = base + "/src/big";
  { std::ofstream(file) << ""; }
  // The file only has to look big: the synthetic store supplies the bytes.
  if (truncate(file.c_str(), static_cast<off_t>(blocks * block_size)) != 0) {
    return Fail("truncate: " + std::string(std::strerror(errno)));
  }
  SyntheticBacking backing;
  cachefs::EngineConfig cfg;
  cfg.options.cache_dir = base + "/cache";
  cfg.options.block_size = block_size;
  cfg.options.cache_size = cachefs::SizeOrPercent{false, 0, blocks * block_size};
  cfg.options.source_timeout = 0;
  // Every block cached: one sequential pass would otherwise be bypassed
  // (sequential_threshold) or not admitted (smq's scan resistance).
  cfg.options.policy = "lru";
  cfg.options.sequential_threshold = UINT64_MAX / block_size;
  cfg.source = base + "/src";
  cfg.backing = &backing;
  auto fd = std::make_shared<cachefs::SourceFd>(open(file.c_str(), O_RDONLY));
  struct stat st;
  fstat(fd->get(), &st);
  long rss_start = RssKiB();
  double fill_s = 0;
  {
    auto e = cachefs::Engine::Open(cfg);
    if (!e.ok()) return Fail(e.status().message());
    auto f = e.value()->OpenFile("big", st);
    if (!f.ok()) return Fail(f.status().message());
    std::string buf(1 << 20, '\0');
    auto t = std::chrono::steady_clock::now();
    for (uint64_t off = 0; off < blocks * block_size; off += buf.size()) {
      auto n = e.value()->Read(*f.value(), fd, off, buf.size(), buf.data());
      if (!n.ok()) return Fail(n.status().message());
    }
    fill_s = Seconds(t);
    std::printf("filled %llu blocks of %llu bytes in %.1f s (%llu cached)\n",
                static_cast<unsigned long long>(blocks),
                static_cast<unsigned long long>(block_size), fill_s,
                static_cast<unsigned long long>(e.value()->stats().blocks_cached));
  }
  long rss_closed = RssKiB();
  auto t = std::chrono::steady_clock::now();
  auto e = cachefs::Engine::Open(cfg);
  if (!e.ok()) return Fail(e.status().message());
  double open_s = Seconds(t);
  long rss_open = RssKiB();
  cachefs::EngineStats s = e.value()->stats();
  std::printf("reopen (recovery from the metadata): %.2f s for %llu blocks\n", open_s,
              static_cast<unsigned long long>(s.blocks_cached));
  std::printf("index + policy + slot state: %.1f bytes per block (%zu bytes)\n",
              static_cast<double>(s.index_memory) / static_cast<double>(blocks), s.index_memory);
  std::printf("process RSS: %ld KiB at start, %ld KiB after fill and close, %ld KiB after reopen\n",
              rss_start, rss_closed, rss_open);
  std::printf("RSS after reopen minus at start: %.1f bytes per block (includes RocksDB caches)\n",
              static_cast<double>(rss_open - rss_start) * 1024 / static_cast<double>(blocks));
  // Every block read once more: all hits, so the block records kept in
  // memory for hits (RecordCache) fill up to their cap.
  {
    auto f = e.value()->OpenFile("big", st);
    if (!f.ok()) return Fail(f.status().message());
    std::string buf(1 << 20, '\0');
    // Heap in use, not RSS: the allocator reuses what the fill freed.
    const size_t heap_before = mallinfo2().uordblks;
    for (uint64_t off = 0; off < blocks * block_size; off += buf.size()) {
      auto n = e.value()->Read(*f.value(), fd, off, buf.size(), buf.data());
      if (!n.ok()) return Fail(n.status().message());
    }
    const size_t heap_after = mallinfo2().uordblks;
    std::printf(
        "heap in use after reading every block once (hits): %+.1f MiB (%.1f bytes per "
        "block)\n",
        (static_cast<double>(heap_after) - static_cast<double>(heap_before)) / 1048576,
        (static_cast<double>(heap_after) - static_cast<double>(heap_before)) /
            static_cast<double>(blocks));
  }
  e.value().reset();
  fd.reset();
  std::error_code ec;
  std::filesystem::remove_all(base, ec);
  return 0;
}
