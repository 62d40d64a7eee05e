#include "common/log.h"

#include <syslog.h>

#include <atomic>
#include <cstdio>
#include <mutex>

namespace cachefs {
namespace {

std::atomic<bool> g_debug{false};
std::atomic<bool> g_syslog{false};
std::mutex g_stderr_mu;  // keeps lines from different threads whole

int SyslogPriority(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return LOG_DEBUG;
    case LogLevel::kInfo:
      return LOG_INFO;
    case LogLevel::kWarning:
      return LOG_WARNING;
    case LogLevel::kError:
      return LOG_ERR;
  }
  return LOG_ERR;
}

}  // namespace

void SetLogDebug(bool on) { g_debug = on; }
bool LogDebugEnabled() { return g_debug; }

void LogToSyslog() {
  openlog("cachefs", LOG_PID | LOG_NDELAY, LOG_DAEMON);
  g_syslog = true;
}

void Log(LogLevel level, const std::string& message) {
  if (level == LogLevel::kDebug && !g_debug) return;
  if (g_syslog) {
    syslog(SyslogPriority(level), "%s", message.c_str());
    return;
  }
  std::lock_guard<std::mutex> lock(g_stderr_mu);
  std::fprintf(stderr, "cachefs: %s\n", message.c_str());
}

}  // namespace cachefs
