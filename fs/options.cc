#include "fs/options.h"

namespace cachefs {

Status FsOptions::Validate() const {
  if (attr_timeout < 0 || attr_timeout > kMaxTimeout) {
    return Status::Invalid("attr_timeout must be between 0 and one year");
  }
  if (entry_timeout < 0 || entry_timeout > kMaxTimeout) {
    return Status::Invalid("entry_timeout must be between 0 and one year");
  }
  if (fuse_threads > 1024) return Status::Invalid("fuse_threads must be between 1 and 1024");
  return Status::Ok();
}

}  // namespace cachefs
