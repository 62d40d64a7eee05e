// Status: the one error type of cachefs.
//
// A Status is either OK or carries an errno-style code and a one-line message
// that names the thing that failed ("source '/slow': No such file or
// directory"). OK is cheap: no allocation. Every layer returns Status (or
// Result<T>) instead of throwing; the FUSE adapter turns a Status into an errno
// reply with ErrnoOf(), the command line turns it into one line on stderr and
// a non-zero exit.
//
// Thread-safety: a Status is a value; distinct objects may be used from
// distinct threads without synchronisation.
#pragma once

#include <cerrno>
#include <optional>
#include <string>
#include <utility>

namespace cachefs {

class Status {
 public:
  Status() = default;  // OK

  static Status Ok() { return Status(); }
  // An error with errno `code` (never 0) and a message for the user.
  static Status Error(int code, std::string message) { return Status(code, std::move(message)); }
  // An invalid argument or option: EINVAL.
  static Status Invalid(std::string message) { return Status(EINVAL, std::move(message)); }
  // The failure of a system call: `what` names the object, errno is `code`.
  // Message: "<what>: <strerror(code)>".
  static Status FromErrno(int code, const std::string& what);

  bool ok() const { return code_ == 0; }
  int code() const { return code_; }
  const std::string& message() const { return message_; }
  bool IsNotFound() const { return code_ == ENOENT; }
  bool IsInvalid() const { return code_ == EINVAL; }

  // The message with `context` in front: "context: message". OK stays OK.
  Status Prefixed(const std::string& context) const;

 private:
  Status(int code, std::string message) : code_(code), message_(std::move(message)) {}
  int code_ = 0;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <typename T>
class Result {
 public:
  Result(T value) : value_(std::move(value)) {}          // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT: implicit by design
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  // REQUIRES: ok()
  T& value() { return *value_; }
  const T& value() const { return *value_; }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

// The errno a Status maps to for a FUSE reply: its code, or EIO when a
// non-OK status has none. 0 for OK.
int ErrnoOf(const Status& s);

}  // namespace cachefs
