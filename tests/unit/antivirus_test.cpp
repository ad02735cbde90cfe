// ClamdScanner against a real clamd started by the test with the private EICAR DB
// (real-servers.md §7), and the reply parser on its own.
#include "stages/transport/antivirus.hpp"

#include <gtest/gtest.h>

#include <string>

#include "stages/pec/reader.hpp"
#include "stages/provider/embedded.hpp"
#include "tests/support/mail_servers_fixture.hpp"

namespace pecd::transport {
namespace {

std::string base64(std::string_view in) {
    static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
        unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                     (static_cast<unsigned char>(in[i + 1]) << 8) |
                     static_cast<unsigned char>(in[i + 2]);
        out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
    }
    if (i + 1 == in.size()) {
        unsigned v = static_cast<unsigned char>(in[i]) << 16;
        out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
    } else if (i + 2 == in.size()) {
        unsigned v = (static_cast<unsigned char>(in[i]) << 16) |
                     (static_cast<unsigned char>(in[i + 1]) << 8);
        out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
    }
    return out;
}

// The EICAR string only as a base64 attachment: no signature matches the raw message bytes,
// so a FOUND proves clamd decoded the MIME part.
std::string infected_mail() {
    std::string b64 = base64(test::eicar());
    EXPECT_EQ(b64.find("EICAR"), std::string::npos);
    return "From: mittente@pec.example.it\r\n"
           "To: utente@pec.test\r\n"
           "Subject: allegato\r\n"
           "MIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
           "\r\n"
           "--b1\r\n"
           "Content-Type: text/plain\r\n"
           "\r\n"
           "vedi allegato\r\n"
           "--b1\r\n"
           "Content-Type: application/octet-stream; name=\"eicar.com\"\r\n"
           "Content-Transfer-Encoding: base64\r\n"
           "Content-Disposition: attachment; filename=\"eicar.com\"\r\n"
           "\r\n" +
           b64 +
           "\r\n"
           "--b1--\r\n";
}

const std::string kClean =
    "From: mittente@pec.example.it\r\nTo: utente@pec.test\r\nSubject: pulito\r\n\r\nCiao\r\n";

ClamdOptions options_for(const test::ServerFixture& s) {
    ClamdOptions o;
    o.endpoint = *parse_endpoint(s.address());
    o.scan_timeout = std::chrono::seconds(20);
    return o;
}

TEST(ClamdScanner, FindsEicarInABase64AttachmentOverTcp) {
    auto clamd = test::start_clamd();
    ASSERT_TRUE(clamd) << clamd.error().message;
    ClamdScanner s(options_for(**clamd));
    auto v = s.scan(infected_mail());
    ASSERT_TRUE(v) << v.error().message;
    EXPECT_TRUE(v->infected());
    EXPECT_TRUE(v->signature.starts_with("PEC.Test.EICAR.")) << v->signature;
    EXPECT_TRUE(v->signature.ends_with(".UNOFFICIAL")) << v->signature;
}

TEST(ClamdScanner, CleanMailIsCleanAndSmallChunksWorkOverTheUnixSocket) {
    auto clamd = test::start_clamd();
    ASSERT_TRUE(clamd) << clamd.error().message;
    ClamdOptions o = options_for(**clamd);
    o.endpoint = *parse_endpoint("unix:" + ((*clamd)->dir() / "clamd.sock").string());
    o.chunk_size = 7;  // many frames: the framing, not one lucky chunk, is what works
    ClamdScanner s(o);
    auto clean = s.scan(kClean);
    ASSERT_TRUE(clean) << clean.error().message;
    EXPECT_FALSE(clean->infected());
    auto bad = s.scan(infected_mail());
    ASSERT_TRUE(bad) << bad.error().message;
    EXPECT_TRUE(bad->infected());
}

TEST(ClamdScanner, StreamOverTheLimitIsAClearPermanentError) {
    auto clamd = test::start_clamd("1K");
    ASSERT_TRUE(clamd) << clamd.error().message;
    ClamdScanner s(options_for(**clamd));
    // 4 MiB: clamd answers and closes long before we finish sending.
    std::string big = kClean + std::string(4 << 20, 'x') + "\r\n";
    auto v = s.scan(big);
    ASSERT_FALSE(v);
    EXPECT_EQ(v.error().kind, ErrorKind::permanent) << v.error().message;
    EXPECT_NE(v.error().message.find("StreamMaxLength"), std::string::npos) << v.error().message;
}

TEST(ClamdScanner, StoppedClamdIsTransient) {
    auto clamd = test::start_clamd();
    ASSERT_TRUE(clamd) << clamd.error().message;
    ClamdScanner s(options_for(**clamd));
    ASSERT_TRUE((*clamd)->stop());
    auto v = s.scan(kClean);
    ASSERT_FALSE(v);
    EXPECT_EQ(v.error().kind, ErrorKind::transient) << v.error().message;
}

TEST(ClamdReply, ParsesOkFoundAndErrors) {
    auto ok = parse_clamd_reply("stream: OK", 1);
    ASSERT_TRUE(ok);
    EXPECT_FALSE(ok->infected());
    auto found = parse_clamd_reply(std::string("stream: Eicar-Test-Signature FOUND\0", 35), 1);
    ASSERT_TRUE(found);
    EXPECT_EQ(found->signature, "Eicar-Test-Signature");
    auto err = parse_clamd_reply("stream: Can't allocate memory ERROR", 1);
    ASSERT_FALSE(err);
    EXPECT_EQ(err.error().kind, ErrorKind::transient);
    EXPECT_FALSE(parse_clamd_reply("", 1));
}

TEST(BuiltinScanner, FindsEicarInADecodedAttachmentFromBytesOrFromAParse) {
    // The embedded default: the raw form parses the message itself, the parsed form (what the
    // stages use after their own parse) reads the same decoded parts.
    auto raw_scan = provider::builtin_scanner("eicar");
    auto parsed_scan = provider::builtin_parsed_scanner("eicar");
    ASSERT_TRUE(parsed_scan);
    for (const std::string& mail : {infected_mail(), kClean}) {
        const bool infected = mail != kClean;
        auto parsed = pec::ParsedMessage::parse(mail);
        ASSERT_TRUE(parsed);
        auto from_bytes = raw_scan(mail);
        auto from_parse = parsed_scan(mail, *parsed);
        ASSERT_TRUE(from_bytes && from_parse);
        EXPECT_EQ(from_bytes->infected, infected);
        EXPECT_EQ(from_parse->infected, infected);
        if (infected) {
            EXPECT_EQ(from_parse->virus, "Eicar-Test-Signature");
        }
    }
    EXPECT_FALSE(provider::builtin_parsed_scanner("none")) << "none: the stages call scan()";
}

TEST(NoAntivirus, SaysCleanEvenForEicar) {
    NoAntivirus n;
    auto v = n.scan(test::eicar());
    ASSERT_TRUE(v);
    EXPECT_FALSE(v->infected());
}

}  // namespace
}  // namespace pecd::transport
