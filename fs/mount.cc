#include "fs/mount.h"

#include <fcntl.h>
#include <fuse_log.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "common/log.h"
#include "common/parse.h"

namespace cachefs {
namespace {

// Escapes ',' and '\' for a libfuse -o value.
std::string EscapeOptionValue(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// While set, libfuse's error messages are collected here instead of logged,
// so that a failed mount is reported in one line. Only the starting thread
// mounts, before any worker exists.
std::string* g_captured_errors = nullptr;

void FuseLogToOurs(enum fuse_log_level level, const char* fmt, va_list ap) {
  char buf[1024];
  vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string msg(buf);
  while (!msg.empty() && msg.back() == '\n') msg.pop_back();
  if (msg.rfind("fuse: ", 0) == 0) msg = msg.substr(6);
  if (msg.empty()) return;
  if (level <= FUSE_LOG_ERR && g_captured_errors != nullptr) {
    if (!g_captured_errors->empty()) *g_captured_errors += "; ";
    *g_captured_errors += msg;
  } else if (level <= FUSE_LOG_ERR) {
    LogError(msg);
  } else if (level <= FUSE_LOG_NOTICE) {
    LogInfo(msg);
  } else {
    // libfuse's per-request trace (-d).
    Log(LogLevel::kDebug, msg);
  }
}

}  // namespace

std::vector<MountEntry> ReadMounts() {
  std::vector<MountEntry> mounts;
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    // id parent maj:min root mount_point options [optional...] - fstype source superopts
    std::istringstream fields(line);
    std::string id, parent, devno, root, mount_point, field;
    fields >> id >> parent >> devno >> root >> mount_point;
    while (fields >> field && field != "-") {
    }
    std::string fs_type;
    fields >> fs_type;
    mounts.push_back({UnescapeOctal(mount_point), fs_type});
  }
  return mounts;
}

Status CheckDevFuse() {
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO) {
      return Status::FromErrno(err, "cannot open /dev/fuse (load the fuse module: modprobe fuse)");
    }
    if (err == EACCES || err == EPERM) {
      // libfuse opens it itself before it would ever call fusermount3.
      return Status::FromErrno(
          err,
          "cannot open /dev/fuse (it must be readable and writable by you, normally mode 0666)");
    }
    return Status::FromErrno(err, "cannot open /dev/fuse");
  }
  close(fd);
  return Status::Ok();
}

Status CheckMountpoint(const std::string& mountpoint, const std::string& canonical_source,
                       bool source_is_directory) {
  const std::string what = "mountpoint '" + mountpoint + "'";
  struct stat st;
  if (stat(mountpoint.c_str(), &st) == -1) {
    int err = errno;
    if (err == ENOTCONN) {
      return Status::Error(ENOTCONN, what + " is a stale FUSE mount left by a daemon that died; " +
                                         "clear it with: fusermount3 -u -z " + mountpoint);
    }
    return Status::FromErrno(err, what);
  }
  if (source_is_directory && !S_ISDIR(st.st_mode)) {
    return Status::Error(ENOTDIR, what + " is not a directory (SOURCE is a directory)");
  }
  if (!source_is_directory && !S_ISREG(st.st_mode)) {
    return Status::Error(EINVAL, what + " is not a regular file (SOURCE is a file: image mode)");
  }
  char resolved[PATH_MAX];
  if (realpath(mountpoint.c_str(), resolved) == nullptr) return Status::FromErrno(errno, what);
  std::string canonical(resolved);
  for (const MountEntry& m : ReadMounts()) {
    if (m.mount_point == canonical) {
      return Status::Error(
          EBUSY, what + " is already a mount point (" + m.fs_type + "); unmount it first");
    }
  }
  if (source_is_directory && canonical != canonical_source &&
      canonical.compare(0, canonical_source.size() + 1, canonical_source + "/") == 0) {
    return Status::Invalid(what + " lies inside SOURCE '" + canonical_source + "'");
  }
  return Status::Ok();
}

Result<std::unique_ptr<FuseMount>> FuseMount::Mount(Filesystem* fs, const std::string& source,
                                                    const std::string& mountpoint, bool debug,
                                                    const fuse_lowlevel_ops* ops) {
  fuse_set_log_func(FuseLogToOurs);
  const FsOptions& opts = fs->options();
  // The kernel checks permissions against the attributes we report, always:
  // for the mount's owner that matches SOURCE, and with allow_other it is
  // what keeps other users to their rights (contract 8).
  std::string o = "fsname=" + EscapeOptionValue(source) + ",subtype=cachefs,default_permissions";
  if (opts.allow_other) o += ",allow_other";
  if (opts.read_only) o += ",ro";
  for (const std::string& k : opts.kernel_options) o += "," + k;
  std::vector<std::string> argv_s = {"cachefs", "-o", o};
  if (debug) argv_s.push_back("-d");
  std::vector<char*> argv;
  argv.reserve(argv_s.size());
  for (auto& a : argv_s) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  std::string errors;
  g_captured_errors = &errors;
  if (ops == nullptr) ops = &Filesystem::Operations();
  fuse_session* se = fuse_session_new(&args, ops, sizeof(fuse_lowlevel_ops), fs);
  if (se == nullptr) {
    g_captured_errors = nullptr;
    return Status::Error(EINVAL, "cannot create the FUSE session: " + errors);
  }
  fs->set_session(se);
  int res = fuse_session_mount(se, mountpoint.c_str());
  g_captured_errors = nullptr;
  if (res != 0) {
    fuse_session_destroy(se);
    return Status::Error(EIO, "cannot mount on '" + mountpoint +
                                  "': " + (errors.empty() ? "unknown error" : errors));
  }
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_unmount(se);
    fuse_session_destroy(se);
    return Status::Error(EIO, "cannot install signal handlers");
  }
  return std::unique_ptr<FuseMount>(new FuseMount(se, fs));
}

FuseMount::~FuseMount() {
  fuse_remove_signal_handlers(se_);
  if (mounted_) fuse_session_unmount(se_);
  fuse_session_destroy(se_);
}

Status FuseMount::Run() {
  unsigned threads = fs_->options().fuse_threads;
  if (threads == 0) threads = FsOptions::kDefaultFuseThreads;
  int res;
  if (threads == 1) {
    res = fuse_session_loop(se_);
  } else {
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, threads);
    fuse_loop_cfg_set_idle_threads(cfg, threads);
    fuse_loop_cfg_set_clone_fd(cfg, 0);
    res = fuse_session_loop_mt(se_, cfg);
    fuse_loop_cfg_destroy(cfg);
  }
  fuse_session_unmount(se_);
  mounted_ = false;
  if (res > 0) exit_signal_ = res;  // the loops return the signal that ended them
  if (res < 0) return Status::Error(-res, "the FUSE loop failed");
  return Status::Ok();
}

}  // namespace cachefs
