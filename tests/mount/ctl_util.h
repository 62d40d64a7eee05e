// Helpers of the cachefsctl mount tests: run the real cachefsctl (the one
// next to the cachefs under test, or $CACHEFSCTL_BIN), read its output, and
// a fixture that mounts a fresh cache and waits for its control socket.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/json.h"
#include "tests/mount/mount_fixture.h"

namespace cachefs::testing {

// The block size CtlTest::Mount formats its caches with.
inline constexpr size_t kCtlBlock = 64 << 10;

struct CtlResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs cachefsctl with `args`, as `uid` (and gid) when it is not 0.
CtlResult RunCtl(const std::vector<std::string>& args, uid_t uid = 0);
// The result, for a failure message.
std::string Describe(const CtlResult& r);
// A failure as the brief of every cachefs tool wants it: nothing on
// stdout, one line on stderr that says `says`, a non-zero exit.
void ExpectOneLineError(const CtlResult& r, const std::string& says, int exit_code);
// stdout as JSON (a test failure if it is not, or the exit is not 0).
JsonValue ParseOut(const CtlResult& r);
// Members of a JSON object (a test failure when missing or of another type).
uint64_t Uint(const JsonValue& obj, const char* key);
std::string Str(const JsonValue& obj, const char* key);
// Reads all of `path` in block-sized O_DIRECT reads: each read reaches the
// daemon as one request for one whole block, whatever the kernel cached.
void ReadDirect(const std::string& path, size_t size);

class CtlTest : public ::testing::Test {
 protected:
  void TearDown() override { cachefs_.reset(); }

  // Mounts a fresh cache of kCtlBlock blocks and waits for its control socket.
  bool Mount(const std::vector<std::string>& extra = {});
  // Waits for the control socket of the mount at `mnt` (socket_ is set to it).
  bool WaitForSocket(const std::string& mnt);
  static bool Connectable(const std::string& path);

  const std::string& mnt() const { return cachefs_->mnt(); }
  const std::string& src() const { return cachefs_->src(); }

  std::unique_ptr<MountedCachefs> cachefs_;
  std::string socket_;
};

}  // namespace cachefs::testing
