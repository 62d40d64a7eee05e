#include "cache/cache_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <string>

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

Result<std::unique_ptr<CacheDirLock>> CacheDirLock::Acquire(const std::string& dir) {
  Status s = MakeDirs(dir);
  if (!s.ok()) return s;
  std::string path = dir + "/lock";
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "cache lock '" + path + "'");
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    std::string holder = n > 0 ? " (pid " + std::string(buf, static_cast<size_t>(n)) + ")" : "";
    while (!holder.empty() && (holder.back() == '\n')) holder.pop_back();
    if (err == EWOULDBLOCK) {
      return Status::Error(EBUSY, "cache '" + dir + "' is in use by another mount" + holder);
    }
    return Status::FromErrno(err, "cache lock '" + path + "'");
  }
  std::string pid = std::to_string(getpid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    // The pid is only for messages; the lock itself holds.
  }
  return std::unique_ptr<CacheDirLock>(new CacheDirLock(fd));
}

CacheDirLock::~CacheDirLock() { close(fd_); }

}  // namespace cachefs
