#include "cmd/cli.h"

#include <gtest/gtest.h>

namespace cachefs {
namespace {

Result<ParseOutcome> Parse(std::vector<std::string> args) { return ParseDaemonArgs(args); }

TEST(Cli, SourceAndMountpointRequired) {
  EXPECT_FALSE(Parse({}).ok());
  EXPECT_FALSE(Parse({"/src"}).ok());
  auto r = Parse({"/src", "/mnt"});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->config.source, "/src");
  EXPECT_EQ(r->config.mountpoint, "/mnt");
  EXPECT_FALSE(r->config.foreground);
}

TEST(Cli, MountStyleAndLongOptionsMeanTheSame) {
  auto a = Parse({"/s", "/m", "-o", "cache_size=1G,mode=writeback,attr_timeout=2.5,allow_other"});
  auto b = Parse({"/s", "/m", "--cache_size=1G", "--mode", "writeback", "--attr-timeout=2.5",
                  "--allow_other"});
  for (auto* r : {&a, &b}) {
    ASSERT_TRUE(r->ok()) << r->status().message();
    const DaemonConfig& c = r->value().config;
    EXPECT_EQ(c.cache.cache_size->bytes, 1ull << 30);
    EXPECT_EQ(*c.cache.mode, CacheMode::kWriteback);
    EXPECT_DOUBLE_EQ(c.fs.attr_timeout, 2.5);
    EXPECT_TRUE(c.fs.allow_other);
  }
}

TEST(Cli, StandardMountOptionsAccepted) {
  auto r =
      Parse({"/s", "/m", "-o", "defaults,rw,_netdev,nofail,noauto,user,users,x-systemd.automount",
             "-o", "nosuid,nodev,noatime,ro"});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->config.fs.read_only);
  EXPECT_EQ(r->config.fs.kernel_options, (std::vector<std::string>{"nosuid", "nodev", "noatime"}));
}

TEST(Cli, BadOptionsGiveOneLine) {
  for (auto args : std::vector<std::vector<std::string>>{
           {"/s", "/m", "-o", "bogus"},
           {"/s", "/m", "-o", "cache_size"},
           {"/s", "/m", "-o", "allow_other=1"},
           {"/s", "/m", "-o", "block_size=3K"},
           {"/s", "/m", "-o", "mode=fast"},
           {"/s", "/m", "-o", "dirty_low=70"},
           {"/s", "/m", "--policy=random"},
           {"/s", "/m", "--no-such-flag"},
           {"/s", "/m", "--fuse_threads=0"},
       }) {
    auto r = Parse(args);
    ASSERT_FALSE(r.ok()) << args.back();
    EXPECT_EQ(r.status().message().find('\n'), std::string::npos) << r.status().message();
  }
}

TEST(Cli, HelpAndVersionExitEarly) {
  auto h = Parse({"--help"});
  ASSERT_TRUE(h.ok());
  EXPECT_TRUE(h->exit_now);
  EXPECT_NE(h->output.find("cache_size"), std::string::npos);
  auto v = Parse({"--version"});
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->exit_now);
  EXPECT_NE(v->output.find(kCachefsVersion), std::string::npos);
}

TEST(Cli, DebugImpliesForeground) {
  auto r = Parse({"-d", "/s", "/m"});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->config.debug);
  EXPECT_TRUE(r->config.foreground);
}

}  // namespace
}  // namespace cachefs
