#include "common/notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace cachefs {

Status NotifySocket(const std::string& address, const std::string& state) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  // An abstract name keeps its length exactly (no terminating NUL counted);
  // a path may be as long as sun_path allows, NUL included.
  if (address.size() < 2 || (address[0] != '/' && address[0] != '@') ||
      address.size() > sizeof(addr.sun_path) - (address[0] == '/' ? 1 : 0)) {
    return Status::Invalid("notify socket '" + address + "': not a path or @abstract name");
  }
  std::memcpy(addr.sun_path, address.data(), address.size());
  if (address[0] == '@') addr.sun_path[0] = '\0';
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size() +
                                    (address[0] == '/' ? 1 : 0));
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::FromErrno(errno, "notify socket");
  ssize_t n;
  do {
    n = sendto(fd, state.data(), state.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr),
               len);
  } while (n < 0 && errno == EINTR);
  int err = errno;
  close(fd);
  if (n < 0) return Status::FromErrno(err, "notify socket '" + address + "'");
  if (static_cast<size_t>(n) != state.size()) {
    return Status::Error(EMSGSIZE, "notify socket '" + address + "': short send");
  }
  return Status::Ok();
}

Status NotifyServiceManager(const std::string& state) {
  const char* address = std::getenv("NOTIFY_SOCKET");
  if (address == nullptr || *address == '\0') return Status::Ok();
  return NotifySocket(address, state);
}

}  // namespace cachefs
