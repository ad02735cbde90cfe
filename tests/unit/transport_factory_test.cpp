// The adapter factories read pecd.conf, and the wire helpers under them (endpoints, dot
// stuffing, multi-line replies from a real server).
#include <gtest/gtest.h>

#include "stages/transport/factory.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::transport {
namespace {

Config parse(std::string_view text) {
    auto c = Config::parse(text, "/etc/pecd/pecd.conf");
    EXPECT_TRUE(c) << c.error().message;
    return c ? *c : Config{};
}

TEST(TransportFactory, TheEmbeddedDefaultsAreTheProvidersNotAdapters) {
    // maildir and outbox (the defaults) are the provider's embedded services
    // (stages/provider/embedded.hpp); asked of the factories they are config errors.
    Config c = parse("[mailbox]\nmaildir = /srv/mail\n[outbound]\ntype = outbox\n");
    auto d = make_delivery(c, "mailbox");
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().kind, ErrorKind::config);
    EXPECT_NE(d.error().message.find("embedded"), std::string::npos) << d.error().message;
    auto o = make_outbound(c, "outbound");
    ASSERT_FALSE(o);
    EXPECT_NE(o.error().message.find("pecd.conf:4:"), std::string::npos) << o.error().message;
    auto a = make_antivirus(c, "antivirus");
    ASSERT_TRUE(a);
    EXPECT_EQ((*a)->describe(), "none");
}

TEST(TransportFactory, RealAdaptersFromTheirKeys) {
    Config c = parse(
        "[mailbox]\ntype = lmtp\nlmtp = unix:/run/dovecot/lmtp\n"
        "[outbound]\ntype = smtp\nrelay = 127.0.0.1:10025\ncommand_timeout = 500ms\n"
        "[antivirus]\ntype = clamd\nclamd = 127.0.0.1\nclamd_timeout = 30s\n");
    auto d = make_delivery(c, "mailbox");
    ASSERT_TRUE(d) << d.error().message;
    EXPECT_EQ((*d)->describe(), "lmtp unix:/run/dovecot/lmtp");
    auto o = make_outbound(c, "outbound");
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ((*o)->describe(), "smtp 127.0.0.1:10025");
    auto a = make_antivirus(c, "antivirus");
    ASSERT_TRUE(a) << a.error().message;
    EXPECT_EQ((*a)->describe(), "clamd 127.0.0.1:3310");
}

TEST(TransportFactory, MistakesAreConfigErrorsNamingFileAndLine) {
    Config c = parse(
        "[mailbox]\n"
        "type = mbox\n"
        "[outbound]\n"
        "type = smtp\n"
        "relay = 127.0.0.1:99999\n"
        "[antivirus]\n"
        "type = clamd\n"
        "clamd_timeout = soon\n"
        "clamd = 127.0.0.1:3310\n");
    auto d = make_delivery(c, "mailbox");
    ASSERT_FALSE(d);
    EXPECT_EQ(d.error().kind, ErrorKind::config);
    EXPECT_NE(d.error().message.find("/etc/pecd/pecd.conf:2:"), std::string::npos)
        << d.error().message;
    auto o = make_outbound(c, "outbound");
    ASSERT_FALSE(o);
    EXPECT_NE(o.error().message.find("pecd.conf:5:"), std::string::npos) << o.error().message;
    auto a = make_antivirus(c, "antivirus");
    ASSERT_FALSE(a);
    EXPECT_NE(a.error().message.find("pecd.conf:8:"), std::string::npos) << a.error().message;
    EXPECT_FALSE(make_delivery(parse("[x]\ntype = lmtp\n"), "x")) << "lmtp without lmtp";
    EXPECT_FALSE(make_outbound(parse("[x]\ntype = smtp\n"), "x")) << "smtp without relay";
}

TEST(TransportFactory, BuiltAdaptersWork) {
    auto clamd = test::start_clamd();
    ASSERT_TRUE(clamd) << clamd.error().message;
    Config c;
    c.set("antivirus", "type", "clamd");
    c.set("antivirus", "clamd", (*clamd)->address());
    auto a = make_antivirus(c, "antivirus");
    ASSERT_TRUE(a);
    auto v = (*a)->scan(test::eicar());
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_TRUE(v->infected());
}

TEST(MailSession, EndpointsParse) {
    auto tcp = parse_endpoint("mx.pec.test:2525");
    ASSERT_TRUE(tcp);
    EXPECT_EQ(tcp->host, "mx.pec.test");
    EXPECT_EQ(tcp->port, 2525);
    auto v6 = parse_endpoint("[::1]:24");
    ASSERT_TRUE(v6);
    EXPECT_EQ(v6->host, "::1");
    EXPECT_EQ(v6->describe(), "[::1]:24");
    auto unix_ep = parse_endpoint("unix:/run/x.sock");
    ASSERT_TRUE(unix_ep);
    EXPECT_EQ(unix_ep->unix_path, "/run/x.sock");
    EXPECT_EQ(parse_endpoint("host", 25)->port, 25);
    for (auto bad : {"host", ":25", "host:0", "host:x", "host:70000", "[::1", "unix:"})
        EXPECT_FALSE(parse_endpoint(bad)) << bad;
}

TEST(MailSession, DotStuffingAndLineEnds) {
    EXPECT_EQ(dot_stuff("a\r\n.b\r\n"), "a\r\n..b\r\n.\r\n");
    EXPECT_EQ(dot_stuff(".\r\n"), "..\r\n.\r\n");
    EXPECT_EQ(dot_stuff("a\nb"), "a\r\nb\r\n.\r\n");
    EXPECT_EQ(dot_stuff(""), ".\r\n");
    EXPECT_EQ(dot_stuff("x.y\r\n"), "x.y\r\n.\r\n");
}

// A real server's multi-line EHLO reply is parsed into its extension keywords.
TEST(MailSession, ReadsTheExtensionsOfARealServer) {
    auto sink = test::start_smtp_sink();
    ASSERT_TRUE(sink) << sink.error().message;
    auto s = MailSession::start(*parse_endpoint((*sink)->address()), false, "pecd.test", {});
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_TRUE(s->has_extension("8BITMIME"));
    EXPECT_TRUE(s->has_extension("ENHANCEDSTATUSCODES"));
    EXPECT_FALSE(s->has_extension("NO-SUCH-THING"));
    auto noop = s->command("NOOP");
    ASSERT_TRUE(noop);
    EXPECT_EQ(noop->code, 250);
    s->quit();
}

}  // namespace
}  // namespace pecd::transport
