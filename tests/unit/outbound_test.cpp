// SmtpTransport against Postfix's smtp-sink and a
// real Postfix instance started by the test (real-servers.md §5).
#include "stages/transport/outbound.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "spool-layout/durable.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::transport {
namespace {

namespace fs = std::filesystem;
using test::files_under;

const std::string kMessage =
    "From: mittente@pec.example.it\r\n"
    "To: utente@pec.test\r\n"
    "Subject: prova SMTP\r\n"
    "Date: Sun, 22 Nov 2026 10:00:00 +0100\r\n"
    "Message-ID: <smtp-1@pec.example.it>\r\n"
    "\r\n"
    "prima riga\r\n"
    ".\r\n"
    ".riga con punto\r\n"
    "ultima\r\n";

std::string to_lf(std::string s) {
    std::string out;
    for (char c : s)
        if (c != '\r') out += c;
    return out;
}

std::string slurp(const fs::path& p) {
    auto r = durable::read_file(p);
    return r ? *r : "<unreadable " + p.string() + ">";
}

SmtpOptions options_for(const test::ServerFixture& s) {
    SmtpOptions o;
    o.relay = *parse_endpoint(s.address());
    o.helo_name = "pecd.test";
    o.timeouts.command = std::chrono::seconds(10);
    return o;
}

// ---- SMTP against smtp-sink ------------------------------------------------------------------

TEST(SmtpTransport, SendsThroughSmtpSinkWithEveryRecipient) {
    auto sink = test::start_smtp_sink();
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test", "b@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message << "\n" << (*sink)->log();
    EXPECT_TRUE(sent->all_accepted()) << sent->reply;
    EXPECT_TRUE(sent->reply.starts_with("250")) << sent->reply;
    auto dumps = files_under((*sink)->dir() / "dump");
    ASSERT_EQ(dumps.size(), 1u);
    // smtp-sink's dump (LF lines): its own headers, the unstuffed message, an empty line.
    std::string dump = slurp(dumps[0]);
    EXPECT_NE(dump.find("X-Mail-Args: <mittente@pec.example.it>"), std::string::npos) << dump;
    EXPECT_NE(dump.find("X-Rcpt-Args: <a@pec.test>\nX-Rcpt-Args: <b@pec.test>\n"),
              std::string::npos)
        << dump;
    EXPECT_TRUE(dump.ends_with(to_lf(kMessage) + "\n")) << dump;
}

// Queue files spell the null sender "<>"; both that and "" become MAIL FROM:<>.
TEST(SmtpTransport, NullSenderInBothSpellings) {
    auto sink = test::start_smtp_sink();
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    for (std::string from : {"", "<>"}) {
        auto sent = t.send(from, {"a@pec.test"}, kMessage);
        ASSERT_TRUE(sent) << sent.error().message;
        EXPECT_TRUE(sent->all_accepted()) << from;
    }
    auto dumps = files_under((*sink)->dir() / "dump");
    ASSERT_EQ(dumps.size(), 2u);
    for (const auto& d : dumps)
        EXPECT_NE(slurp(d).find("X-Mail-Args: <>\n"), std::string::npos) << slurp(d);
}

TEST(SmtpTransport, EightBitMessageIsDeclaredAsBody8BitMime) {
    auto sink = test::start_smtp_sink();
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    const std::string eight = "Subject: perch\xc3\xa8\r\n\r\ncaff\xc3\xa8\r\n";
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, eight);
    ASSERT_TRUE(sent) << sent.error().message;
    EXPECT_TRUE(sent->all_accepted()) << sent->reply;
    auto dumps = files_under((*sink)->dir() / "dump");
    ASSERT_EQ(dumps.size(), 1u);
    std::string dump = slurp(dumps[0]);
    EXPECT_NE(dump.find("BODY=8BITMIME"), std::string::npos) << dump;
    EXPECT_TRUE(dump.ends_with(to_lf(eight) + "\n")) << dump;
}

TEST(SmtpTransport, FallsBackToHeloWhenEhloIsRefused) {
    auto sink = test::start_smtp_sink({"-f", "EHLO"});
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message;
    EXPECT_TRUE(sent->all_accepted()) << sent->reply;
    auto dumps = files_under((*sink)->dir() / "dump");
    ASSERT_EQ(dumps.size(), 1u);
    EXPECT_NE(slurp(dumps[0]).find("X-Client-Proto: SMTP\n"), std::string::npos) << slurp(dumps[0]);
    // Without EHLO there is no 8BITMIME: an 8-bit message is refused, not sent corrupted.
    auto eight =
        t.send("mittente@pec.example.it", {"a@pec.test"}, "Subject: \xc3\xa8\r\n\r\nx\r\n");
    ASSERT_FALSE(eight);
    EXPECT_EQ(eight.error().kind, ErrorKind::permanent) << eight.error().message;
}

TEST(SmtpTransport, HardRejectedRecipientsArePermanentWithTheServersCode) {
    auto sink = test::start_smtp_sink({"-f", "RCPT"});
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message;
    ASSERT_EQ(sent->recipients.size(), 1u);
    EXPECT_EQ(sent->recipients[0].disposition, Disposition::permanent_failure);
    EXPECT_EQ(sent->recipients[0].status, "5.3.0") << sent->recipients[0].text;
    // smtp-sink opens its dump at MAIL time; the message itself must never have been sent.
    for (const auto& f : files_under((*sink)->dir() / "dump"))
        EXPECT_EQ(slurp(f).find("prima riga"), std::string::npos) << slurp(f);
}

TEST(SmtpTransport, SoftRejectedDataIsTransientForEveryRecipient) {
    auto sink = test::start_smtp_sink({"-r", "."});
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test", "b@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message;
    for (const auto& r : sent->recipients) {
        EXPECT_EQ(r.disposition, Disposition::transient_failure) << r.describe();
        EXPECT_EQ(r.status, "4.3.0") << r.describe();
    }
}

TEST(SmtpTransport, ServerDroppingTheConnectionIsTransient) {
    auto sink = test::start_smtp_sink({"-q", "MAIL"});
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, kMessage);
    ASSERT_FALSE(sent);
    EXPECT_EQ(sent.error().kind, ErrorKind::transient) << sent.error().message;
}

TEST(SmtpTransport, StoppedRelayIsTransient) {
    auto sink = test::start_smtp_sink();
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpTransport t(options_for(**sink));
    ASSERT_TRUE((*sink)->stop());
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, kMessage);
    ASSERT_FALSE(sent);
    EXPECT_EQ(sent.error().kind, ErrorKind::transient) << sent.error().message;
}

TEST(SmtpTransport, ReplyTimeoutIsTransient) {
    // smtp-sink waits 5 s before answering MAIL; we give up after 300 ms.
    auto sink = test::start_smtp_sink({"-W", "MAIL:5"});
    ASSERT_TRUE(sink) << sink.error().message;
    SmtpOptions o = options_for(**sink);
    o.timeouts.command = std::chrono::milliseconds(300);
    SmtpTransport t(o);
    auto start = std::chrono::steady_clock::now();
    auto sent = t.send("mittente@pec.example.it", {"a@pec.test"}, kMessage);
    auto took = std::chrono::steady_clock::now() - start;
    ASSERT_FALSE(sent);
    EXPECT_EQ(sent.error().kind, ErrorKind::transient);
    EXPECT_NE(sent.error().message.find("timed out"), std::string::npos) << sent.error().message;
    EXPECT_LT(took, std::chrono::seconds(3));
}

// ---- SMTP against a real Postfix instance ----------------------------------------------------

// Postfix accepts one recipient, refuses one with 5.1.1 and one with 4.2.1 at RCPT time, then
// queues the message and virtual(8) stores it in the accepted recipient's Maildir.
TEST(SmtpTransport, RealPostfixGivesPerRecipientResultsAndDelivers) {
    auto pf = test::start_postfix(
        {"utente@pec.test"},
        {"nessuno@pec.test 550 5.1.1 mailbox unknown", "pieno@pec.test 450 4.2.1 try again later"});
    ASSERT_TRUE(pf) << pf.error().message;
    SmtpTransport t(options_for(**pf));
    auto sent = t.send("mittente@pec.example.it",
                       {"utente@pec.test", "nessuno@pec.test", "pieno@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message << "\n" << (*pf)->log();
    ASSERT_EQ(sent->recipients.size(), 3u);
    EXPECT_TRUE(sent->recipients[0].accepted()) << sent->recipients[0].describe();
    EXPECT_NE(sent->reply.find("queued as"), std::string::npos) << sent->reply;
    EXPECT_EQ(sent->recipients[1].disposition, Disposition::permanent_failure);
    EXPECT_EQ(sent->recipients[1].status, "5.1.1") << sent->recipients[1].describe();
    EXPECT_EQ(sent->recipients[2].disposition, Disposition::transient_failure);
    EXPECT_EQ(sent->recipients[2].status, "4.2.1") << sent->recipients[2].describe();

    fs::path box = (*pf)->dir() / "vmail" / "pec.test" / "utente" / "new";
    std::vector<fs::path> files;
    for (int i = 0; i < 200 && files.empty(); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        files = files_under(box);
    }
    ASSERT_EQ(files.size(), 1u) << (*pf)->log();
    // virtual(8) stores LF lines and prepends Return-Path/X-Original-To/Delivered-To/Received;
    // the message carries Date and Message-ID, so Postfix added nothing to it.
    EXPECT_TRUE(slurp(files[0]).ends_with(to_lf(kMessage))) << slurp(files[0]);
}

}  // namespace
}  // namespace pecd::transport
