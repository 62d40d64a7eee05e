// cachefs: the daemon. Checks everything it can, mounts, detaches, serves.
//
// Start-up order (contract 3 and 7): parse and validate the options, open
// SOURCE, check MOUNTPOINT and /dev/fuse, mount, and only then detach and
// tell the waiting parent that the mount is up. Any failure before that is one
// line on stderr and a non-zero exit of the command, with nothing mounted.
//
// Under systemd (Type=notify, NOTIFY_SOCKET set) readiness is reported once
// the mount and the control socket are up: by the serving process itself with
// -f, else by the parent, which is the unit's main PID and hands that role to
// the serving child (MAINPID=) in the same message, so the default
// NotifyAccess=main accepts it and every later message (docs/systemd.md).
//
// Unmounted with dirty data, the daemon writes back for up to flush_timeout
// seconds before it exits (the kernel does not wait for it); a signal, or a
// new mount of the cache (CacheDirLock::Acquire), ends that early, and what is
// left stays dirty in the cache for the next mount.
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cache/engine.h"
#include "cmd/cli.h"
#include "cmd/control_server.h"
#include "cmd/stats_format.h"
#include "common/log.h"
#include "common/notify.h"
#include "fs/filesystem.h"
#include "fs/mount.h"

namespace cachefs {
namespace {

constexpr int kExitUsage = 2;
constexpr int kExitFailure = 1;

// Each inode the kernel knows holds a descriptor: allow as many as we may.
void RaiseFileLimit() {
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// Tells systemd (when it listens) that the mount is up. `main_pid` > 0 names
// the process that serves, when it is not the caller.
void NotifyReady(pid_t main_pid) {
  std::string state = "READY=1";
  if (main_pid > 0) state = "MAINPID=" + std::to_string(main_pid) + "\n" + state;
  Status s = NotifyServiceManager(state);
  if (!s.ok()) LogWarning(s.message());
}

// Forks. The parent waits for the child to report the mount and exits with
// 0, or with the child's status when it fails first. Returns the write end
// of the report pipe in the child.
int Detach() {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    std::perror("cachefs: pipe");
    std::exit(kExitFailure);
  }
  pid_t pid = fork();
  if (pid < 0) {
    std::perror("cachefs: fork");
    std::exit(kExitFailure);
  }
  if (pid > 0) {
    close(fds[1]);
    char c;
    ssize_t n;
    do {
      n = read(fds[0], &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n == 1) {
      NotifyReady(pid);
      _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    _exit(WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : kExitFailure);
  }
  close(fds[0]);
  setsid();
  return fds[1];
}

// Tells the parent the mount is up and lets go of the terminal.
void FinishDetach(int report_fd) {
  char ok = 0;
  (void)!write(report_fd, &ok, 1);
  close(report_fd);
  (void)!chdir("/");
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, STDIN_FILENO);
    dup2(null, STDOUT_FILENO);
    dup2(null, STDERR_FILENO);
    if (null > STDERR_FILENO) close(null);
  }
  LogToSyslog();
}

// In image mode the mount is typically the backing file of a loop device.
// Then memory reclaim can write dirty pages of the loop device, which waits
// for this daemon, which allocates memory, which waits for reclaim: a
// deadlock. PR_SET_IO_FLUSHER (Linux 5.6, needs CAP_SYS_RESOURCE) makes the
// kernel keep this process out of IO reclaim and out of dirty throttling. It
// is a per-task flag, inherited by the threads created later, so it is set
// in the serving process before it starts any. Without it the mount works,
// only that protection is missing: one line in the log.
void SetIoFlusher() {
#ifndef PR_SET_IO_FLUSHER
  constexpr int PR_SET_IO_FLUSHER = 57;  // NOLINT(readability-identifier-naming)
#endif
  if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
    LogWarning(std::string("image mode: cannot set PR_SET_IO_FLUSHER (") + std::strerror(errno) +
               "): a loop device over this mount may deadlock under memory pressure "
               "(it needs Linux 5.6 or later and CAP_SYS_RESOURCE)");
  }
}

// The signal (SIGTERM, SIGINT, SIGHUP) that asks the writeback after the
// unmount to end; 0: none yet.
volatile std::sig_atomic_t g_stop_signal = 0;

void OnStopSignal(int sig) { g_stop_signal = sig; }

// Replaces libfuse's handlers once its loop is done: from then on these
// signals end the writeback after the unmount instead of killing the daemon
// before its clean shutdown.
void CatchStopSignals() {
  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGTERM, SIGINT, SIGHUP}) sigaction(sig, &sa, nullptr);
}

std::string Seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", s);
  return buf;
}

// A write to SOURCE that never returns (a hard NFS mount whose server is
// gone, a hung FUSE SOURCE) would keep the daemon from exiting, and from
// giving the cache to a new mount. So once the writeback after the unmount is
// over (its timeout passed, or a signal came), the clean shutdown gets
// kShutdownGrace; past that the daemon exits without it. Nothing is lost:
// the dirty data survives as after kill -9 (contract 1), and the next mount
// recovers it. Lives from the start of that writeback to the end of the
// clean shutdown.
class ShutdownWatchdog {
 public:
  // Under CacheDirLock::kTakeOverSeconds, so a new mount's take-over works.
  static constexpr std::chrono::seconds kShutdownGrace{5};

  explicit ShutdownWatchdog(double timeout_s)
      : end_(std::chrono::steady_clock::now() +
             std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000))),
        thread_([this] { Run(); }) {}
  ~ShutdownWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  ShutdownWatchdog(const ShutdownWatchdog&) = delete;
  ShutdownWatchdog& operator=(const ShutdownWatchdog&) = delete;

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    auto end = end_;
    while (!done_) {
      auto now = std::chrono::steady_clock::now();
      if (g_stop_signal != 0 && now < end) end = now;
      if (now >= end + kShutdownGrace) {
        LogError(
            "the clean shutdown did not end within 5 s after the writeback after the unmount "
            "(a write to SOURCE hangs?): exiting without it; the dirty data stays in the "
            "cache for the next mount");
        _exit(kExitFailure);
      }
      cv_.wait_for(lock, std::chrono::milliseconds(100));
    }
  }

  const std::chrono::steady_clock::time_point end_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // guarded by mu_
  std::thread thread_;
};

// flush_timeout: after the unmount, writes back what is dirty for up to
// `timeout` seconds, logging a line before and one after. Not when a signal
// ended the mount (a request to stop now: systemctl stop, the shutdown's
// kill), nor in mode=cow, whose data is only ever written back by a commit.
// Returns the watchdog of the shutdown when it wrote back (null otherwise),
// to be kept until the engine is closed.
std::unique_ptr<ShutdownWatchdog> FlushAfterUnmount(Engine& engine, double timeout,
                                                    int exit_signal) {
  if (engine.mode() == CacheMode::kCow) return nullptr;
  Engine::FlushLeft left = engine.FlushProgress(UINT64_MAX);
  if (left.blocks <= left.conflicted) return nullptr;  // nothing the writer may write back
  const std::string dirty = HumanBytes(static_cast<double>(engine.stats().dirty_bytes)) + " (" +
                            std::to_string(left.blocks) + " blocks)";
  if (exit_signal != 0 || timeout <= 0) {
    LogInfo(std::string(exit_signal != 0 ? "stopped by a signal" : "flush_timeout=0") + ": " +
            dirty + " stays dirty in the cache for the next mount");
    return nullptr;
  }
  auto watchdog = std::make_unique<ShutdownWatchdog>(timeout);
  LogInfo("unmounted with " + dirty + " dirty: writing it back for up to " + Seconds(timeout) +
          " (flush_timeout) before exiting");
  Status status = NotifyServiceManager("STATUS=writing back " + dirty + " after the unmount");
  if (!status.ok()) LogWarning(status.message());
  const auto start = std::chrono::steady_clock::now();
  Engine::DrainReport r = engine.DrainForExit(timeout, [] { return g_stop_signal != 0; });
  const std::string took =
      Seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  if (r.complete) {
    std::string line =
        "written back after the unmount: " + HumanBytes(static_cast<double>(r.bytes_written_back)) +
        " in " + took;
    if (r.blocks_left > 0) {
      line += "; " + std::to_string(r.blocks_left) +
              " blocks of files in conflict stay dirty (cachefsctl conflicts)";
    }
    LogInfo(line);
    return watchdog;
  }
  LogInfo(std::string(r.stopped ? "writeback after the unmount stopped by a signal"
                                : "flush_timeout reached") +
          " after " + took + ": " + HumanBytes(static_cast<double>(r.dirty_bytes_left)) + " (" +
          std::to_string(r.blocks_left) + " blocks) left dirty in the cache for the next mount");
  return watchdog;
}

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  if (realpath(path.c_str(), buf) == nullptr) return path;
  return buf;
}

int Serve(const DaemonConfig& cfg) {
  if (geteuid() == 0) {
    // Credentials are switched per request (fs/credentials.h); the daemon
    // itself keeps no supplementary groups.
    setgroups(0, nullptr);
  }
  umask(0);  // each request applies its caller's umask (fs/credentials.h)
  RaiseFileLimit();
  std::string source = Canonical(cfg.source);
  auto fs = Filesystem::Open(source, cfg.fs);
  if (!fs.ok()) {
    LogError(fs.status().message());
    return kExitFailure;
  }
  Status s = CheckMountpoint(cfg.mountpoint, source, fs.value()->source_is_directory());
  if (s.ok()) s = CheckDevFuse();
  if (!s.ok()) {
    LogError(s.message());
    return kExitFailure;
  }
  int report_fd = cfg.foreground ? -1 : Detach();
  if (!fs.value()->source_is_directory()) SetIoFlusher();
  // The cache is opened and recovered before the mount (contract 3), in the
  // process that will serve: RocksDB's threads do not survive a fork.
  EngineConfig ec;
  ec.options = cfg.cache;
  ec.source = source;
  ec.source_is_file = !fs.value()->source_is_directory();
  ec.reformat = cfg.reformat;
  auto engine = Engine::Open(ec);
  if (!engine.ok()) {
    LogError(engine.status().message());
    return kExitFailure;
  }
  fs.value()->set_engine(engine.value().get());
  auto mount = FuseMount::Mount(fs.value().get(), source, Canonical(cfg.mountpoint), cfg.debug);
  if (!mount.ok()) {
    LogError(mount.status().message());
    return kExitFailure;
  }
  // cachefsctl's socket, ready before the command returns; gone at unmount.
  // An image SOURCE is the mount's root inode; after a discard of the cow
  // layer the kernel must not keep serving the layer's pages.
  Filesystem* served = fs.value().get();
  auto invalidate_image = [served] {
    if (served->source_is_directory() || served->session() == nullptr) return;
    int rc = fuse_lowlevel_notify_inval_inode(served->session(), FUSE_ROOT_ID, 0, 0);
    if (rc != 0 && rc != -ENOENT) {
      LogWarning("dropping the kernel's pages of the image failed: " +
                 std::string(std::strerror(-rc)));
    }
  };
  std::unique_ptr<ControlServer> control = StartDaemonControl(
      source, Canonical(cfg.mountpoint), cfg, engine.value().get(), invalidate_image);
  if (report_fd >= 0) {
    FinishDetach(report_fd);  // the parent notifies systemd
  } else {
    NotifyReady(0);
  }
  LogInfo("mounted " + source + " on " + Canonical(cfg.mountpoint));
  s = mount.value()->Run();
  const int exit_signal = mount.value()->exit_signal();
  CatchStopSignals();
  Status stopping = NotifyServiceManager("STOPPING=1");
  if (!stopping.ok()) LogWarning(stopping.message());
  control.reset();
  mount.value().reset();
  if (!s.ok()) {
    LogError(s.message());
    return kExitFailure;
  }
  fs.value()->set_engine(nullptr);
  std::unique_ptr<ShutdownWatchdog> watchdog =
      FlushAfterUnmount(*engine.value(), cfg.cache.flush_timeout, exit_signal);
  engine.value().reset();  // clean shutdown of the cache
  watchdog.reset();
  LogInfo("unmounted " + Canonical(cfg.mountpoint));
  return 0;
}

}  // namespace
}  // namespace cachefs

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  auto parsed = cachefs::ParseDaemonArgs(args);
  if (!parsed.ok()) {
    std::fprintf(stderr, "cachefs: %s (see cachefs --help)\n", parsed.status().message().c_str());
    return cachefs::kExitUsage;
  }
  if (parsed->exit_now) {
    std::fputs(parsed->output.c_str(), stdout);
    return 0;
  }
  cachefs::SetLogDebug(parsed->config.debug);
  return cachefs::Serve(parsed->config);
}
