#include "cache/cache_dir.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "common/log.h"

namespace cachefs {
namespace {

Status MakeDirs(const std::string& dir) {
  std::string partial;
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    partial = dir.substr(0, pos);
    if (partial.empty()) continue;
    if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      return Status::FromErrno(errno, "cache directory '" + partial + "'");
    }
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) return Status::FromErrno(errno, "cache directory '" + dir + "'");
  if (!S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, "cache directory '" + dir + "' is not a directory");
  }
  return Status::Ok();
}

constexpr char kFlushingTag[] = " flushing";

// What the lock file says of its holder: "PID", or "PID flushing".
struct Holder {
  pid_t pid = 0;
  bool flushing = false;
};

Holder ReadHolder(int fd) {
  char buf[64] = {0};
  ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
  Holder h;
  if (n <= 0) return h;
  char* end = nullptr;
  long pid = std::strtol(buf, &end, 10);
  if (end != buf && pid > 0) h.pid = static_cast<pid_t>(pid);
  h.flushing = std::string(buf, static_cast<size_t>(n)).find(kFlushingTag) != std::string::npos;
  return h;
}

// The real uid of process `pid` (the "Uid:" line of /proc/PID/status).
std::optional<uid_t> ProcessUid(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Uid:", 0) == 0) {
      char* end = nullptr;
      unsigned long uid = std::strtoul(line.c_str() + 4, &end, 10);
      if (end != line.c_str() + 4) return static_cast<uid_t>(uid);
    }
  }
  return std::nullopt;
}

// Polls for the lock until `seconds` have passed.
bool WaitForLock(int fd, int seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (true) {
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

std::string SystemdEscapePath(const std::string& path) {
  size_t b = 0, e = path.size();
  while (b < e && path[b] == '/') ++b;
  while (e > b && path[e - 1] == '/') --e;
  std::string in = path.substr(b, e - b);
  if (in.empty()) return "-";
  std::string out;
  for (size_t i = 0; i < in.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(in[i]);
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == ':' || (c == '.' && i > 0);
    if (c == '/') {
      out += '-';
    } else if (plain) {
      out += static_cast<char>(c);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string DefaultCacheDir(const std::string& canonical_source) {
  return "/var/cache/cachefs/" + SystemdEscapePath(canonical_source);
}

Result<std::unique_ptr<CacheDirLock>> CacheDirLock::Acquire(const std::string& dir,
                                                            bool take_over) {
  Status s = MakeDirs(dir);
  if (!s.ok()) return s;
  std::string path = dir + "/lock";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "cache lock '" + path + "'");
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    Holder h = ReadHolder(fd);
    // Right after an unmount its daemon may not have marked itself flushing
    // yet, or be in its clean shutdown: `umount; mount` should not fail on that.
    auto grace = std::chrono::steady_clock::now() + std::chrono::milliseconds(kUnmountGraceMs);
    while (err == EWOULDBLOCK && take_over && !h.flushing &&
           std::chrono::steady_clock::now() < grace) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      if (flock(fd, LOCK_EX | LOCK_NB) == 0) err = 0;
      h = ReadHolder(fd);
    }
    std::string pid = h.pid > 0 ? "pid " + std::to_string(h.pid) : "";
    // The daemon of the last mount, unmounted and still writing back: its
    // dirty data is safe in the cache, and this mount goes on writing it
    // back, so it is asked to stop rather than keep the mount waiting. Only
    // a daemon of our own user: another's is not ours to stop.
    if (err == EWOULDBLOCK && take_over && h.flushing && h.pid > 0 &&
        ProcessUid(h.pid) == geteuid()) {
      LogInfo("cache '" + dir + "': the daemon of its last mount (" + pid +
              ") is still writing back after its unmount: stopping it; this mount writes back "
              "the rest");
      if (kill(h.pid, SIGTERM) == 0 && WaitForLock(fd, kTakeOverSeconds)) {
        err = 0;
      } else {
        close(fd);
        return Status::Error(EBUSY, "cache '" + dir +
                                        "' is in use by the daemon of its last mount (" + pid +
                                        "), still writing back after its unmount; it did not "
                                        "stop within " +
                                        std::to_string(kTakeOverSeconds) + " s");
      }
    }
    if (err != 0) {
      close(fd);
      if (err == EWOULDBLOCK) {
        std::string holder = pid;
        if (h.flushing) holder += ", writing back after its unmount";
        if (!holder.empty()) holder = " (" + holder + ")";
        return Status::Error(EBUSY, "cache '" + dir + "' is in use by another mount" + holder);
      }
      return Status::FromErrno(err, "cache lock '" + path + "'");
    }
  }
  std::string pid = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for messages; the lock itself holds.
  }
  return std::unique_ptr<CacheDirLock>(new CacheDirLock(fd));
}

Status CacheDirLock::MarkFlushing() {
  // Written over the pid alone (a longer text that starts the same), so a
  // reader sees the one or the other, never an empty file.
  std::string text = std::to_string(getpid()) + kFlushingTag;
  if (pwrite(fd_, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
    return Status::FromErrno(errno, "cache lock: marking it flushing");
  }
  return Status::Ok();
}

CacheDirLock::~CacheDirLock() { close(fd_); }

}  // namespace cachefs
