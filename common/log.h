// Logging for the daemon and its tools.
//
// Messages go to stderr until LogToSyslog() is called (the daemon does so
// once it has detached), then to syslog with the ident "cachefs". Debug
// messages are dropped unless SetLogDebug(true). The libfuse library's own
// messages are routed through the same sink (see RouteFuseLog()).
//
// Thread-safety: all functions may be called from any thread.
#pragma once

#include <string>

namespace cachefs {

enum class LogLevel { kDebug, kInfo, kWarning, kError };

void SetLogDebug(bool on);
bool LogDebugEnabled();
// From now on, write to syslog instead of stderr.
void LogToSyslog();
void Log(LogLevel level, const std::string& message);

inline void LogError(const std::string& m) { Log(LogLevel::kError, m); }
inline void LogWarning(const std::string& m) { Log(LogLevel::kWarning, m); }
inline void LogInfo(const std::string& m) { Log(LogLevel::kInfo, m); }
inline void LogDebug(const std::string& m) {
  if (LogDebugEnabled()) Log(LogLevel::kDebug, m);
}

}  // namespace cachefs
