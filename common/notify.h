// Readiness notification to the service manager (systemd's sd_notify
// protocol, implemented here in a few lines instead of linking libsystemd).
//
// When a service is started with Type=notify, systemd sets NOTIFY_SOCKET to
// the address of an AF_UNIX datagram socket: a path ("/run/systemd/notify")
// or an abstract name written with a leading '@'. A message is one datagram
// of newline-separated VARIABLE=value lines (READY=1, STOPPING=1,
// MAINPID=pid, STATUS=text); the kernel attaches the sender's credentials,
// which is how systemd decides whether to accept it (NotifyAccess=).
// Without NOTIFY_SOCKET every call is a successful no-op, so the daemon calls
// these unconditionally.
//
// Thread-safety: every function may be called from any thread; each call
// uses its own socket.
#pragma once

#include <string>

#include "common/status.h"

namespace cachefs {

// Sends `state` (e.g. "READY=1\nSTATUS=serving") to the socket named by the
// environment variable NOTIFY_SOCKET. OK when the variable is unset or empty
// (nobody listens); an error names the address when it is malformed or the
// datagram cannot be sent (the caller logs it: readiness is never a reason
// to fail the mount).
Status NotifyServiceManager(const std::string& state);

// The same to an explicit address ("/path" or "@abstract"); for tests.
Status NotifySocket(const std::string& address, const std::string& state);

}  // namespace cachefs
