// The slapd test fixture itself: it starts, answers, loads LDIF, stops by PID and cleans up,
// also when slapd refuses its configuration.
#include "tests/support/slapd_fixture.hpp"

#include <gtest/gtest.h>
#include <signal.h>

using pecd::ErrorKind;
using pecd::test::run_command;
using pecd::test::SlapdFixture;
using pecd::test::SlapdOptions;
namespace fs = std::filesystem;

namespace {
pecd::Result<pecd::test::CommandResult> search(const std::string& uri, const std::string& base) {
    return run_command({"ldapsearch", "-x", "-LLL", "-o", "nettimeout=2", "-H", uri, "-b", base,
                        "(objectClass=*)", "o"});
}
}  // namespace

TEST(SlapdFixture, StartsLoadsStopsAndRemovesItsDirectory) {
    fs::path dir;
    pid_t pid = -1;
    std::string uri;
    {
        auto slapd = SlapdFixture::start();
        ASSERT_TRUE(slapd) << slapd.error().describe();
        auto& s = **slapd;
        dir = s.dir();
        pid = s.pid();
        uri = s.uri();
        EXPECT_TRUE(s.running());
        EXPECT_TRUE(fs::exists(dir / "slapd.conf"));
        EXPECT_EQ(uri, "ldap://127.0.0.1:" + std::to_string(s.port()) + "/");

        auto st = s.add_ldif_text("dn: o=postacert\nobjectClass: organization\no: postacert\n");
        ASSERT_TRUE(st) << st.error().describe();
        auto r = search(uri, "o=postacert");
        ASSERT_TRUE(r);
        EXPECT_EQ(r->exit_code, 0) << r->output;
        EXPECT_NE(r->output.find("dn: o=postacert"), std::string::npos) << r->output;

        // ldapadd's complaint reaches the caller: `provider` lacks its MUST attributes here.
        st = s.add_ldif_text(
            "dn: providerName=X,o=postacert\nobjectClass: provider\n"
            "providerName: X\n");
        ASSERT_FALSE(st);
        EXPECT_NE(st.error().message.find("Object class violation"), std::string::npos)
            << st.error().message;

        ASSERT_TRUE(s.stop());
        EXPECT_FALSE(s.running());
        EXPECT_TRUE(s.stop()) << "stop() is idempotent";
        EXPECT_NE(::kill(pid, 0), 0) << "slapd process still exists";
        r = search(uri, "o=postacert");
        ASSERT_TRUE(r);
        EXPECT_NE(r->exit_code, 0) << "still answering after stop(): " << r->output;
        EXPECT_TRUE(fs::exists(dir)) << "the directory lives as long as the fixture";
    }
    EXPECT_FALSE(fs::exists(dir));
}

TEST(SlapdFixture, DestructorStopsARunningServer) {
    pid_t pid = -1;
    {
        auto slapd = SlapdFixture::start();
        ASSERT_TRUE(slapd) << slapd.error().describe();
        pid = (*slapd)->pid();
        ASSERT_EQ(::kill(pid, 0), 0);
    }
    EXPECT_NE(::kill(pid, 0), 0);
}

TEST(SlapdFixture, RefusedConfigurationIsAnErrorWithSlapdsLog) {
    SlapdOptions o;
    o.schema_file = "/nonexistent/igpec.schema";
    auto slapd = SlapdFixture::start(o);
    ASSERT_FALSE(slapd);
    EXPECT_EQ(slapd.error().kind, ErrorKind::config);
    EXPECT_NE(slapd.error().message.find("slapd exited during start-up"), std::string::npos);
    EXPECT_NE(slapd.error().message.find("/nonexistent/igpec.schema"), std::string::npos)
        << slapd.error().message;
}
