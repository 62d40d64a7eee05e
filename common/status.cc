#include "common/status.h"

#include <cstring>

namespace cachefs {

Status Status::FromErrno(int code, const std::string& what) {
  if (code == 0) code = EIO;
  return Status(code, what + ": " + std::strerror(code));
}

Status Status::Prefixed(const std::string& context) const {
  if (ok()) return *this;
  return Status(code_, context + ": " + message_);
}

int ErrnoOf(const Status& s) {
  if (s.ok()) return 0;
  return s.code() > 0 ? s.code() : EIO;
}

}  // namespace cachefs
