// LmtpDelivery against a real Dovecot LMTP started by the test (real-servers.md §6).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "spool-layout/durable.hpp"
#include "stages/transport/delivery.hpp"
#include "tests/support/mail_servers_fixture.hpp"

namespace pecd::transport {
namespace {

namespace fs = std::filesystem;
using test::files_under;

// Lines starting with '.' (one is a lone "." that would end DATA if not stuffed), 8-bit text,
// and a trailing CRLF: what reaches the Maildir must be exactly this.
const std::string kMessage =
    "From: mittente@pec.example.it\r\n"
    "To: utente@pec.test\r\n"
    "Subject: prova LMTP\r\n"
    "Message-ID: <lmtp-1@pec.example.it>\r\n"
    "\r\n"
    "prima riga\r\n"
    ".\r\n"
    "..due punti\r\n"
    ".riga con punto\r\n"
    "ultima\r\n";

LmtpOptions options_for(const test::ServerFixture& s) {
    LmtpOptions o;
    o.endpoint = *parse_endpoint(s.address());
    o.sender = "mittente@pec.example.it";
    o.timeouts.command = std::chrono::seconds(10);
    return o;
}

// Dovecot prepends trace headers (Return-Path, Received, and Delivered-To for a single
// recipient); the rest of the stored file must be our message byte for byte.
void expect_stored(const fs::path& maildir, const std::string& message) {
    auto files = files_under(maildir / "new");
    ASSERT_EQ(files.size(), 1u) << maildir;
    auto stored = durable::read_file(files[0]);
    ASSERT_TRUE(stored);
    ASSERT_TRUE(stored->ends_with(message)) << *stored;
    std::string trace = stored->substr(0, stored->size() - message.size());
    EXPECT_TRUE(trace.starts_with("Return-Path: <mittente@pec.example.it>\r\n")) << trace;
    EXPECT_NE(trace.find("\r\nReceived: from "), std::string::npos) << trace;
    EXPECT_EQ(trace.find("\r\n\r\n"), std::string::npos) << "trace is not only headers: " << trace;
}

class LmtpDeliveryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto s = test::start_dovecot({"utente@pec.test", "altro@pec.test"});
        ASSERT_TRUE(s) << s.error().message;
        dovecot_ = std::move(*s);
    }
    std::unique_ptr<test::ServerFixture> dovecot_;
};

TEST_F(LmtpDeliveryTest, DeliversTheMessageByteForByteOverTcp) {
    LmtpDelivery d(options_for(*dovecot_));
    auto o = d.deliver("utente@pec.test", kMessage);
    ASSERT_TRUE(o) << o.error().message << "\n" << dovecot_->log();
    EXPECT_TRUE(o->accepted()) << o->describe();
    EXPECT_EQ(o->status, "2.0.0");
    expect_stored(test::dovecot_maildir(*dovecot_, "utente@pec.test"), kMessage);
}

TEST_F(LmtpDeliveryTest, DeliversOverTheUnixSocket) {
    LmtpOptions o = options_for(*dovecot_);
    o.endpoint = *parse_endpoint("unix:" + test::dovecot_lmtp_socket(*dovecot_).string());
    LmtpDelivery d(o);
    auto r = d.deliver("altro@pec.test", kMessage);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->accepted()) << r->describe();
    expect_stored(test::dovecot_maildir(*dovecot_, "altro@pec.test"), kMessage);
}

TEST_F(LmtpDeliveryTest, UnknownUserIsPermanent511WithTheServersText) {
    LmtpDelivery d(options_for(*dovecot_));
    auto o = d.deliver("nessuno@pec.test", kMessage);
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->disposition, Disposition::permanent_failure) << o->describe();
    EXPECT_EQ(o->status, "5.1.1") << o->describe();
    EXPECT_TRUE(o->text.starts_with("550")) << o->text;
}

// One transaction, three recipients: the unknown one is refused at RCPT, the two others get
// one reply each after DATA (RFC 2033 §4.2) and one stored copy each.
TEST_F(LmtpDeliveryTest, OneTransactionGivesPerRecipientReplies) {
    LmtpDelivery d(options_for(*dovecot_));
    auto all = d.deliver_all({"utente@pec.test", "nessuno@pec.test", "altro@pec.test"}, kMessage);
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(all->size(), 3u);
    EXPECT_TRUE((*all)[0].accepted()) << (*all)[0].describe();
    EXPECT_EQ((*all)[1].status, "5.1.1") << (*all)[1].describe();
    EXPECT_TRUE((*all)[2].accepted()) << (*all)[2].describe();
    expect_stored(test::dovecot_maildir(*dovecot_, "utente@pec.test"), kMessage);
    expect_stored(test::dovecot_maildir(*dovecot_, "altro@pec.test"), kMessage);
}

TEST_F(LmtpDeliveryTest, BareLfMessageIsSentWithCrlf) {
    LmtpDelivery d(options_for(*dovecot_));
    auto o = d.deliver("utente@pec.test", "Subject: lf\n\nriga\n.punto\n");
    ASSERT_TRUE(o) << o.error().message;
    ASSERT_TRUE(o->accepted()) << o->describe();
    expect_stored(test::dovecot_maildir(*dovecot_, "utente@pec.test"),
                  "Subject: lf\r\n\r\nriga\r\n.punto\r\n");
}

TEST_F(LmtpDeliveryTest, StoppedServerIsATransientError) {
    LmtpDelivery d(options_for(*dovecot_));
    ASSERT_TRUE(dovecot_->stop());
    auto o = d.deliver("utente@pec.test", kMessage);
    ASSERT_FALSE(o);
    EXPECT_EQ(o.error().kind, ErrorKind::transient) << o.error().message;
}

// Dovecot cannot be made to die between two per-recipient replies, so this one case uses a
// scripted LMTP peer: it accepts both recipients, answers 250 for the first after DATA and
// closes. The first recipient is delivered (a retry would duplicate it), only the second gets
// a transient 4.4.2.
TEST(LmtpScripted, ConnectionLostBetweenPerRecipientRepliesKeepsTheFirstOutcome) {
    int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(listener, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    std::string received;
    std::thread peer([listener, &received] {
        int c = ::accept(listener, nullptr, nullptr);
        if (c < 0) return;
        auto say = [c](std::string_view s) { (void)!::write(c, s.data(), s.size()); };
        // Reads until `marker` has arrived, so that the replies follow the client's commands.
        auto wait_for = [c, &received](std::string_view marker) {
            char buf[4096];
            while (received.find(marker) == std::string::npos) {
                ssize_t n = ::read(c, buf, sizeof buf);
                if (n <= 0) return;
                received.append(buf, static_cast<size_t>(n));
            }
        };
        say("220 scripted LMTP\r\n");
        wait_for("LHLO");
        say("250-scripted\r\n250 ENHANCEDSTATUSCODES\r\n");
        wait_for("MAIL FROM");
        say("250 2.1.0 ok\r\n");
        wait_for("RCPT TO:<a@pec.test>");
        say("250 2.1.5 ok\r\n");
        wait_for("RCPT TO:<b@pec.test>");
        say("250 2.1.5 ok\r\n");
        wait_for("DATA");
        say("354 go\r\n");
        wait_for("\r\n.\r\n");
        say("250 2.0.0 <a@pec.test> Saved\r\n");
        ::close(c);
    });
    LmtpOptions o;
    o.endpoint = Endpoint{"", "127.0.0.1", ntohs(addr.sin_port)};
    o.timeouts.command = std::chrono::seconds(5);
    o.timeouts.data = std::chrono::seconds(5);
    LmtpDelivery d(o);
    auto all = d.deliver_all({"a@pec.test", "b@pec.test"}, kMessage);
    peer.join();
    ::close(listener);
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(all->size(), 2u);
    EXPECT_TRUE((*all)[0].accepted()) << (*all)[0].describe();
    EXPECT_EQ((*all)[1].disposition, Disposition::transient_failure) << (*all)[1].describe();
    EXPECT_EQ((*all)[1].status, "4.4.2");
    EXPECT_NE(received.find("\r\n..\r\n"), std::string::npos) << "lone dot not stuffed";
}

}  // namespace
}  // namespace pecd::transport
