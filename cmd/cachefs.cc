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
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cache/engine.h"
#include "cmd/cli.h"
#include "cmd/control_server.h"
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
  std::unique_ptr<ControlServer> control =
      StartDaemonControl(source, Canonical(cfg.mountpoint), cfg, engine.value().get());
  if (report_fd >= 0) {
    FinishDetach(report_fd);  // the parent notifies systemd
  } else {
    NotifyReady(0);
  }
  LogInfo("mounted " + source + " on " + Canonical(cfg.mountpoint));
  s = mount.value()->Run();
  Status stopping = NotifyServiceManager("STOPPING=1");
  if (!stopping.ok()) LogWarning(stopping.message());
  control.reset();
  mount.value().reset();
  if (!s.ok()) {
    LogError(s.message());
    return kExitFailure;
  }
  fs.value()->set_engine(nullptr);
  engine.value().reset();  // clean shutdown of the cache
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
