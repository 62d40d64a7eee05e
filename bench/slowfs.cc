// slowfs: a slow store to put under cachefs, for benchmarks and mount tests.
//
//   slowfs SOURCE MOUNTPOINT [-f] [-d] [-o opt,opt...]
//
// A FUSE passthrough of SOURCE built from cachefs's own fs/ layer (the same
// Filesystem, served by the same FuseMount), so it behaves exactly like
// cachefs without a cache, except that every request is slowed down and the
// ones a cache is meant to save are counted. Its operation table is
// Filesystem::Operations() with entries replaced by wrappers that count,
// wait, then call the original entry.
//
// Delay model (SlowDevice): every request that reaches SOURCE (all but
// forget) waits latency_us, and requests wait in parallel, like round trips
// to a remote store; read and write data also moves through one shared link
// of `bandwidth` bytes per second, so concurrent transfers queue behind each
// other as on a single disk or network link. A request finishes at
//   max(now, link free) + bytes / bandwidth + latency
// and the link is then busy until that time minus the latency. At most
// fuse_threads requests are in flight (the FUSE worker threads do the
// waiting).
//
// Counters: `getfattr -n user.slowfs.stats MOUNTPOINT` (the mount root only)
// gives one line
//   reads=N read_bytes=N writes=N write_bytes=N lookups=N getattrs=N opens=N fsyncs=N
// counting FUSE requests of each kind (a create is not an open; read_bytes:
// bytes the read could return, i.e. clipped at the end of the file;
// write_bytes: bytes handed in).
// `setfattr -n user.slowfs.reset MOUNTPOINT` (any value) zeroes them; a
// read-only mount refuses it (the kernel does). Neither name costs a delay or
// is counted; every other extended attribute is SOURCE's.
//
// Options (-o, comma-separated; may be repeated):
//   latency_us=N      per-request delay in microseconds [0]
//   bandwidth=SIZE    bytes per second, K/M/G = 1024-based, 0 = unlimited [0]
//   attr_timeout=SEC, entry_timeout=SEC, fuse_threads=N, ro, rw, allow_other
//                     as for cachefs
// slowfs always stays in the foreground (-f is accepted and changes nothing):
// start it in the background and wait until MOUNTPOINT shows up in
// /proc/self/mountinfo. It prints nothing on success; an error before the
// mount is one line on stderr and exit status 2 (usage) or 1. SIGTERM,
// SIGINT or an unmount (fusermount3 -u) ends it with status 0.
//
// Thread-safety: the wrappers run on all FUSE worker threads at once; the
// counters are atomics and the link clock is behind a mutex. There is one
// slowfs per process (the wrappers find their state in a global).
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/parse.h"
#include "common/status.h"
#include "common/thread_annotations.h"
#include "fs/filesystem.h"
#include "fs/mount.h"

namespace cachefs {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

constexpr char kStatsName[] = "user.slowfs.stats";
constexpr char kResetName[] = "user.slowfs.reset";
// Longer than any stats line (8 names and 8 numbers of at most 20 digits):
// the size announced to a size query, so that counters growing between the
// query and the read never make the read fail with ERANGE.
constexpr size_t kStatsMaxSize = 256;

constexpr char kUsage[] =
    "usage: slowfs SOURCE MOUNTPOINT [-f] [-d] [-o opt,...]\n"
    "A FUSE passthrough of SOURCE that is slow on purpose and counts requests.\n"
    "Stays in the foreground. Options:\n"
    "  latency_us=N     delay of every request in microseconds [0]\n"
    "  bandwidth=SIZE   bytes per second of the shared data link (100M...), 0 unlimited [0]\n"
    "  attr_timeout=SEC, entry_timeout=SEC, fuse_threads=N, ro, rw, allow_other\n"
    "Counters: getfattr -n user.slowfs.stats MOUNTPOINT\n"
    "Reset:    setfattr -n user.slowfs.reset MOUNTPOINT\n";

struct SlowOptions {
  // Delay of every request, in microseconds. Default: 0.
  uint64_t latency_us = 0;
  // Bytes per second of the data link shared by reads and writes; 0 is
  // unlimited. Default: unlimited.
  uint64_t bandwidth = 0;
};

struct Config {
  std::string source;
  std::string mountpoint;
  bool debug = false;
  FsOptions fs;
  SlowOptions slow;
};

// The slow store's timing (see the model at the top of the file).
class SlowDevice {
 public:
  using Clock = std::chrono::steady_clock;

  explicit SlowDevice(const SlowOptions& opts)
      : latency_(std::chrono::microseconds(opts.latency_us)), bandwidth_(opts.bandwidth) {}

  // Blocks the calling thread until a request moving `bytes` of data would
  // be done.
  void Wait(uint64_t bytes) LOCKS_EXCLUDED(mu_) {
    Clock::time_point now = Clock::now();
    Clock::time_point done = now;
    if (bandwidth_ > 0 && bytes > 0) {
      auto transfer = std::chrono::nanoseconds(
          static_cast<int64_t>(static_cast<double>(bytes) * 1e9 / static_cast<double>(bandwidth_)));
      std::lock_guard<std::mutex> lock(mu_);
      link_free_ = std::max(link_free_, now) + transfer;
      done = link_free_;
    }
    done += latency_;
    if (done > now) std::this_thread::sleep_until(done);
  }

 private:
  const Clock::duration latency_;
  const uint64_t bandwidth_;
  std::mutex mu_;
  Clock::time_point link_free_ GUARDED_BY(mu_);
};

struct Counters {
  std::atomic<uint64_t> reads{0};
  std::atomic<uint64_t> read_bytes{0};
  std::atomic<uint64_t> writes{0};
  std::atomic<uint64_t> write_bytes{0};
  std::atomic<uint64_t> lookups{0};
  std::atomic<uint64_t> getattrs{0};
  std::atomic<uint64_t> opens{0};
  std::atomic<uint64_t> fsyncs{0};

  // Not atomic as a whole: a request counted during a reset may survive it.
  void Reset() {
    for (std::atomic<uint64_t>* c :
         {&reads, &read_bytes, &writes, &write_bytes, &lookups, &getattrs, &opens, &fsyncs}) {
      c->store(0);
    }
  }

  std::string Line() const {
    return "reads=" + std::to_string(reads) + " read_bytes=" + std::to_string(read_bytes) +
           " writes=" + std::to_string(writes) + " write_bytes=" + std::to_string(write_bytes) +
           " lookups=" + std::to_string(lookups) + " getattrs=" + std::to_string(getattrs) +
           " opens=" + std::to_string(opens) + " fsyncs=" + std::to_string(fsyncs);
  }
};

struct Slowfs {
  explicit Slowfs(const SlowOptions& opts) : device(opts) {}
  fuse_lowlevel_ops base{};  // Filesystem::Operations(): what the wrappers call
  SlowDevice device;
  Counters counters;
};

// Set once in main before the session starts; never freed.
Slowfs* g_slowfs = nullptr;

Filesystem& Fs(fuse_req_t req) { return *static_cast<Filesystem*>(fuse_req_userdata(req)); }

void Count(std::atomic<uint64_t>& counter, uint64_t n = 1) {
  counter.fetch_add(n, std::memory_order_relaxed);
}

// --- wrappers -----------------------------------------------------------------

// The bytes a read of `size` at `off` can return: what moves over the link
// and what read_bytes counts. The kernel asks for whole pages, past the end
// of the file too.
uint64_t ReadableBytes(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off) {
  struct stat st;
  if (fstat(Fs(req).inodes().Get(ino)->fd(), &st) == -1) return size;
  if (off >= st.st_size) return 0;
  return std::min<uint64_t>(size, static_cast<uint64_t>(st.st_size - off));
}

void SlowRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  uint64_t bytes = ReadableBytes(req, ino, size, off);
  Count(g_slowfs->counters.reads);
  Count(g_slowfs->counters.read_bytes, bytes);
  g_slowfs->device.Wait(bytes);
  g_slowfs->base.read(req, ino, size, off, fi);
}

void SlowWriteBuf(fuse_req_t req, fuse_ino_t ino, fuse_bufvec* in, off_t off, fuse_file_info* fi) {
  uint64_t bytes = fuse_buf_size(in);
  Count(g_slowfs->counters.writes);
  Count(g_slowfs->counters.write_bytes, bytes);
  g_slowfs->device.Wait(bytes);
  g_slowfs->base.write_buf(req, ino, in, off, fi);
}

void SlowLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Count(g_slowfs->counters.lookups);
  g_slowfs->device.Wait(0);
  g_slowfs->base.lookup(req, parent, name);
}

void SlowGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Count(g_slowfs->counters.getattrs);
  g_slowfs->device.Wait(0);
  g_slowfs->base.getattr(req, ino, fi);
}

void SlowOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Count(g_slowfs->counters.opens);
  g_slowfs->device.Wait(0);
  g_slowfs->base.open(req, ino, fi);
}

void SlowFsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  Count(g_slowfs->counters.fsyncs);
  g_slowfs->device.Wait(0);
  g_slowfs->base.fsync(req, ino, datasync, fi);
}

void SlowGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  if (ino != FUSE_ROOT_ID || std::strcmp(name, kStatsName) != 0) {
    g_slowfs->device.Wait(0);
    return g_slowfs->base.getxattr(req, ino, name, size);
  }
  std::string line = g_slowfs->counters.Line();
  if (size == 0) {
    fuse_reply_xattr(req, kStatsMaxSize);
  } else if (size < line.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, line.data(), line.size());
  }
}

// SOURCE's names plus the stats name.
void SlowListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  g_slowfs->device.Wait(0);
  if (ino != FUSE_ROOT_ID) return g_slowfs->base.listxattr(req, ino, size);
  // As Filesystem does: xattr calls name the object by its /proc link.
  std::string path = Fs(req).inodes().root()->ProcPath();
  std::string names;
  for (;;) {
    ssize_t n = listxattr(path.c_str(), nullptr, 0);
    if (n == -1 && (errno == ENOTSUP || errno == EOPNOTSUPP)) n = 0;
    if (n == -1) return static_cast<void>(fuse_reply_err(req, errno));
    if (n == 0) break;
    names.resize(static_cast<size_t>(n));
    n = listxattr(path.c_str(), names.data(), names.size());
    if (n == -1 && errno == ERANGE) continue;  // the list grew in between
    if (n == -1) return static_cast<void>(fuse_reply_err(req, errno));
    names.resize(static_cast<size_t>(n));
    break;
  }
  names.append(kStatsName, sizeof(kStatsName));  // with its NUL
  if (size == 0) {
    fuse_reply_xattr(req, names.size());
  } else if (size < names.size()) {
    fuse_reply_err(req, ERANGE);
  } else {
    fuse_reply_buf(req, names.data(), names.size());
  }
}

void SlowSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                  int flags) {
  if (ino == FUSE_ROOT_ID && std::strcmp(name, kResetName) == 0) {
    g_slowfs->counters.Reset();
    return static_cast<void>(fuse_reply_err(req, 0));
  }
  g_slowfs->device.Wait(0);
  g_slowfs->base.setxattr(req, ino, name, value, size, flags);
}

// Any other operation: wait the latency, then the original. `kOp` names the
// entry of fuse_lowlevel_ops; its parameter types come with it.
template <auto kOp>
struct Delayed;
template <typename... Args, void (*fuse_lowlevel_ops::*kOp)(fuse_req_t, Args...)>
struct Delayed<kOp> {
  static void Call(fuse_req_t req, Args... args) {
    g_slowfs->device.Wait(0);
    (g_slowfs->base.*kOp)(req, args...);
  }
};

template <auto kOp>
void DelayOp(fuse_lowlevel_ops* ops) {
  // An entry Filesystem leaves empty must stay empty: the kernel then does
  // the work itself (locks) or knows it is unsupported.
  if (ops->*kOp != nullptr) ops->*kOp = &Delayed<kOp>::Call;
}

// `base` with every request that reaches SOURCE slowed down (all but init,
// destroy and the forgets, which have no reply to delay) and the counted
// ones counted.
fuse_lowlevel_ops MakeSlowOperations(const fuse_lowlevel_ops& base) {
  using Ops = fuse_lowlevel_ops;
  Ops ops = base;
  DelayOp<&Ops::setattr>(&ops);
  DelayOp<&Ops::readlink>(&ops);
  DelayOp<&Ops::mknod>(&ops);
  DelayOp<&Ops::mkdir>(&ops);
  DelayOp<&Ops::unlink>(&ops);
  DelayOp<&Ops::rmdir>(&ops);
  DelayOp<&Ops::symlink>(&ops);
  DelayOp<&Ops::rename>(&ops);
  DelayOp<&Ops::link>(&ops);
  DelayOp<&Ops::flush>(&ops);
  DelayOp<&Ops::release>(&ops);
  DelayOp<&Ops::opendir>(&ops);
  DelayOp<&Ops::readdir>(&ops);
  DelayOp<&Ops::releasedir>(&ops);
  DelayOp<&Ops::fsyncdir>(&ops);
  DelayOp<&Ops::statfs>(&ops);
  DelayOp<&Ops::removexattr>(&ops);
  DelayOp<&Ops::access>(&ops);
  DelayOp<&Ops::create>(&ops);
  DelayOp<&Ops::fallocate>(&ops);
  DelayOp<&Ops::readdirplus>(&ops);
  DelayOp<&Ops::copy_file_range>(&ops);
  DelayOp<&Ops::lseek>(&ops);
  if (base.read != nullptr) ops.read = SlowRead;
  if (base.write_buf != nullptr) ops.write_buf = SlowWriteBuf;
  if (base.lookup != nullptr) ops.lookup = SlowLookup;
  if (base.getattr != nullptr) ops.getattr = SlowGetattr;
  if (base.open != nullptr) ops.open = SlowOpen;
  if (base.fsync != nullptr) ops.fsync = SlowFsync;
  if (base.getxattr != nullptr) ops.getxattr = SlowGetxattr;
  if (base.listxattr != nullptr) ops.listxattr = SlowListxattr;
  if (base.setxattr != nullptr) ops.setxattr = SlowSetxattr;
  return ops;
}

// --- command line ---------------------------------------------------------------

Status ApplyOption(Config* c, const std::string& key, const std::string* value) {
  const bool takes_value = key == "latency_us" || key == "bandwidth" || key == "attr_timeout" ||
                           key == "entry_timeout" || key == "fuse_threads";
  const bool is_flag = key == "ro" || key == "rw" || key == "allow_other";
  if (!takes_value && !is_flag) return Status::Invalid("unknown option '" + key + "'");
  if (takes_value && value == nullptr) {
    return Status::Invalid("option '" + key + "' needs a value (" + key + "=...)");
  }
  if (is_flag && value != nullptr) return Status::Invalid("option '" + key + "' takes no value");
  const std::string where = "option '" + key + "'";
  if (key == "latency_us") {
    auto v = ParseUint(*value, 0, 60'000'000);
    if (!v.ok()) return v.status().Prefixed(where);
    c->slow.latency_us = v.value();
  } else if (key == "bandwidth") {
    auto v = ParseSize(*value);
    if (!v.ok()) return v.status().Prefixed(where);
    c->slow.bandwidth = v.value();
  } else if (key == "attr_timeout" || key == "entry_timeout") {
    auto v = ParseSeconds(*value);
    if (!v.ok()) return v.status().Prefixed(where);
    (key == "attr_timeout" ? c->fs.attr_timeout : c->fs.entry_timeout) = v.value();
  } else if (key == "fuse_threads") {
    auto v = ParseUint(*value, 1, 1024);
    if (!v.ok()) return v.status().Prefixed(where);
    c->fs.fuse_threads = static_cast<unsigned>(v.value());
  } else if (key == "allow_other") {
    c->fs.allow_other = true;
  } else {
    c->fs.read_only = key == "ro";
  }
  return Status::Ok();
}

Status ApplyOptionList(Config* c, const std::string& list) {
  std::istringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (item.empty()) continue;
    size_t eq = item.find('=');
    Status s;
    if (eq == std::string::npos) {
      s = ApplyOption(c, item, nullptr);
    } else {
      std::string value = item.substr(eq + 1);
      s = ApplyOption(c, item.substr(0, eq), &value);
    }
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

// Parses `args` (without the program name). Sets `*help` and returns an
// empty config for -h/--help.
Result<Config> ParseArgs(const std::vector<std::string>& args, bool* help) {
  Config c;
  std::vector<std::string> positional;
  *help = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") {
      *help = true;
      return c;
    }
    if (a == "-f") continue;  // always in the foreground
    if (a == "-d") {
      c.debug = true;
    } else if (a == "-o") {
      if (i + 1 == args.size()) return Status::Invalid("-o needs a value");
      Status s = ApplyOptionList(&c, args[++i]);
      if (!s.ok()) return s;
    } else if (a.rfind("-o", 0) == 0) {
      Status s = ApplyOptionList(&c, a.substr(2));
      if (!s.ok()) return s;
    } else if (!a.empty() && a[0] == '-') {
      return Status::Invalid("unknown argument '" + a + "'");
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() != 2) return Status::Invalid("needs SOURCE and MOUNTPOINT");
  c.source = positional[0];
  c.mountpoint = positional[1];
  Status s = c.fs.Validate();
  if (!s.ok()) return s;
  return c;
}

// --- serving --------------------------------------------------------------------

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) return path;
  return buf;
}

int Fail(const Status& s) {
  std::fprintf(stderr, "slowfs: %s\n", s.message().c_str());
  return kExitFailure;
}

int Serve(const Config& cfg) {
  // The process set-up Filesystem relies on, as cmd/cachefs.cc does it:
  // credentials and umask are the caller's, per request.
  if (geteuid() == 0) setgroups(0, nullptr);
  umask(0);
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  std::string source = Canonical(cfg.source);
  std::string mountpoint = Canonical(cfg.mountpoint);
  auto fs = Filesystem::Open(source, cfg.fs);
  if (!fs.ok()) return Fail(fs.status());
  Status s = CheckMountpoint(cfg.mountpoint, source, fs.value()->source_is_directory());
  if (s.ok()) s = CheckDevFuse();
  if (!s.ok()) return Fail(s);
  g_slowfs = new Slowfs(cfg.slow);
  g_slowfs->base = Filesystem::Operations();
  const fuse_lowlevel_ops ops = MakeSlowOperations(g_slowfs->base);
  auto mount = FuseMount::Mount(fs.value().get(), source, mountpoint, cfg.debug, &ops);
  if (!mount.ok()) return Fail(mount.status());
  s = mount.value()->Run();
  mount.value().reset();
  if (!s.ok()) return Fail(s);
  return 0;
}

}  // namespace
}  // namespace cachefs

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool help = false;
  auto cfg = cachefs::ParseArgs(args, &help);
  if (!cfg.ok()) {
    std::fprintf(stderr, "slowfs: %s (see slowfs --help)\n", cfg.status().message().c_str());
    return cachefs::kExitUsage;
  }
  if (help) {
    std::fputs(cachefs::kUsage, stdout);
    return 0;
  }
  cachefs::SetLogDebug(cfg->debug);
  return cachefs::Serve(cfg.value());
}
