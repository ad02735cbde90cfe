// LmtpDelivery against a real Dovecot LMTP started by the test (real-servers.md §6).
#include <gtest/gtest.h>

#include <filesystem>

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

}  // namespace
}  // namespace pecd::transport
