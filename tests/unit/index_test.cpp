// Providers index (IGPEC): LDIF parsing and validation, lookups, and the LDAP loader against a
// real slapd with its cache fallback. Certificates come from the openssl CLI so that the hashes
// are checked against an independent SHA-1 (`openssl x509 -fingerprint -sha1`).
#include "stages/pec/index.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include "tests/support/ports.hpp"
#include "tests/support/slapd_fixture.hpp"

using namespace pecd::pec;
using pecd::ErrorKind;
using pecd::Result;
using pecd::test::run_command;
using pecd::test::SlapdFixture;
using pecd::test::TempDir;
namespace fs = std::filesystem;

namespace {

struct Cert {
    std::string der;
    std::string fingerprint;  // as openssl prints it: "1A:C1:..."
    std::string hex_upper;    // colons removed
    std::string hex_lower;
};

std::string read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void write_file(const fs::path& p, std::string_view data) {
    std::ofstream out(p, std::ios::binary);
    out << data;
}

std::string lower(std::string s) {
    for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
}

// SHA-1 fingerprint of a DER certificate according to the openssl CLI.
Result<std::string> openssl_fingerprint(const fs::path& der_file) {
    auto r = run_command({"openssl", "x509", "-inform", "DER", "-in", der_file.string(), "-noout",
                          "-fingerprint", "-sha1"});
    if (!r) return std::unexpected(r.error());
    std::size_t eq = r->output.find('=');
    if (r->exit_code != 0 || eq == std::string::npos)
        return pecd::fail(ErrorKind::permanent, "openssl x509 -fingerprint: " + r->output);
    std::string fp = r->output.substr(eq + 1);
    while (!fp.empty() && std::isspace(static_cast<unsigned char>(fp.back()))) fp.pop_back();
    return fp;
}

Result<Cert> make_cert(const fs::path& dir, const std::string& stem, const std::string& subject,
                       const std::string& email) {
    fs::path key = dir / (stem + ".key"), pem = dir / (stem + ".pem"), der = dir / (stem + ".der");
    auto r = run_command({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                          "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key.string(), "-out",
                          pem.string(), "-days", "3650", "-subj", subject, "-addext",
                          "subjectAltName=email:" + email});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0) return pecd::fail(ErrorKind::permanent, "openssl req: " + r->output);
    r = run_command(
        {"openssl", "x509", "-in", pem.string(), "-outform", "DER", "-out", der.string()});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0) return pecd::fail(ErrorKind::permanent, "openssl x509: " + r->output);
    Cert c;
    c.der = read_file(der);
    auto fp = openssl_fingerprint(der);
    if (!fp) return std::unexpected(fp.error());
    c.fingerprint = *fp;
    c.hex_upper = c.fingerprint;
    std::erase(c.hex_upper, ':');
    c.hex_lower = lower(c.hex_upper);
    return c;
}

std::string b64(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

// RFC 2849 folding at 76 columns, so every certificate line below exercises continuations.
std::string fold(const std::string& line) {
    std::string out = line.substr(0, 76) + "\n";
    for (std::size_t pos = 76; pos < line.size(); pos += 75)
        out += " " + line.substr(pos, 75) + "\n";
    return out;
}

struct ProviderSpec {
    std::string dn;
    std::string name;
    std::string unit;
    std::vector<std::string> hashes;
    std::vector<const Cert*> certs;
    std::string receipt;
    std::vector<std::string> domains;
};

// Non-ASCII values must be base64 in RFC 2849 ("attr:: ..."), as ldapsearch writes them.
std::string attr_line(const std::string& name, const std::string& value) {
    bool ascii = std::all_of(value.begin(), value.end(),
                             [](char c) { return static_cast<unsigned char>(c) < 0x80; });
    return ascii ? name + ": " + value + "\n" : fold(name + ":: " + b64(value));
}

std::string entry_ldif(const ProviderSpec& p) {
    std::string out =
        attr_line("dn", p.dn) + "objectClass: provider\n" + attr_line("providerName", p.name);
    if (!p.unit.empty()) out += attr_line("providerUnit", p.unit);
    for (const auto& h : p.hashes) out += "providerCertificateHash: " + h + "\n";
    for (const Cert* c : p.certs) out += fold("providerCertificate;binary:: " + b64(c->der));
    out += "mailReceipt: " + p.receipt + "\n";
    for (const auto& d : p.domains) out += "managedDomains: " + d + "\n";
    return out + "\n";
}

const char* kBaseEntry =
    "dn: o=postacert\n"
    "objectClass: organization\n"
    "objectClass: LDIFLocationURLObject\n"
    "o: postacert\n"
    "LDIFLocationURL: https://igpec.example/postacert.ldif\n"
    "\n";

// Everything a snapshot says about its providers, in order, for whole-snapshot comparisons.
std::string dump(const IndexSnapshot& s) {
    std::string out;
    for (const auto& p : s.providers) {
        out += "dn=" + p.dn + " name=" + p.name + " unit=" + p.unit + " receipt=" + p.mail_receipt;
        for (const auto& h : p.cert_hashes) out += " hash=" + h;
        for (const auto& c : p.certificates) out += " cert=" + b64(c);
        for (const auto& d : p.managed_domains) out += " domain=" + d;
        out += "\n";
    }
    return out;
}

std::string describe(const pecd::Error& e) {
    return e.describe();
}

}  // namespace

// Certificates are generated once for the whole suite (EC P-256: fast to make).
class IndexTest : public ::testing::Test {
  protected:
    static void SetUpTestSuite() {
        auto dir = TempDir::create("pecd-index-test");
        if (!dir) {
            setup_error_ = describe(dir.error());
            return;
        }
        dir_.emplace(std::move(*dir));
        const std::pair<const char*, const char*> specs[] = {
            {"/O=Gestore Alfa S.p.A./CN=Posta Certificata Gestore Alfa",
             "posta-certificata@pec.alfa.example"},
            {"/O=Gestore Alfa S.p.A./CN=Posta Certificata Gestore Alfa (rinnovo)",
             "posta-certificata@pec.alfa.example"},
            {"/O=Gestore Beta S.r.l./CN=Posta Certificata Gestore Beta",
             "posta-certificata@pec.beta.example"},
            {"/O=Gestore Alfa S.p.A./CN=Posta Certificata Alfa Ambiente B",
             "posta-certificata@amb-b.alfa.example"},
        };
        int i = 0;
        for (const auto& [subject, email] : specs) {
            auto c = make_cert(dir_->path(), "cert" + std::to_string(i++), subject, email);
            if (!c) {
                setup_error_ = describe(c.error());
                return;
            }
            certs_.push_back(std::move(*c));
        }
    }
    static void TearDownTestSuite() {
        certs_.clear();
        dir_.reset();
    }
    void SetUp() override { ASSERT_TRUE(setup_error_.empty()) << setup_error_; }

    static const Cert& alfa() { return certs_[0]; }
    static const Cert& alfa_renewed() { return certs_[1]; }
    static const Cert& beta() { return certs_[2]; }
    static const Cert& alfa_b() { return certs_[3]; }

    // Two providers, one of them with a renewed certificate and a secondary environment, one
    // with a UTF-8 name (base64 in LDIF, raw UTF-8 over LDAP). Hashes are written in the three
    // spellings the world uses: upper, lower, mixed case.
    static std::string two_providers_ldif() {
        std::string text = kBaseEntry;
        text += entry_ldif({"providerName=Gestore Alfa,o=postacert",
                            "Gestore Alfa",
                            "",
                            {alfa().hex_upper, alfa_renewed().hex_lower},
                            {&alfa(), &alfa_renewed()},
                            "posta-certificata@pec.alfa.example",
                            {"PEC.Alfa.Example", "legalmail.alfa.example"}});
        text += entry_ldif({"providerUnit=Ambiente B,providerName=Gestore Alfa,o=postacert",
                            "Gestore Alfa",
                            "Ambiente B",
                            {alfa_b().hex_lower},
                            {&alfa_b()},
                            "posta-certificata@amb-b.alfa.example",
                            {"amb-b.alfa.example"}});
        std::string mixed = beta().hex_upper.substr(0, 20) + beta().hex_lower.substr(20);
        text += entry_ldif({"providerName=Gestore Beta Società,o=postacert",
                            "Gestore Beta Società",
                            "",
                            {mixed},
                            {&beta()},
                            "posta-certificata@pec.beta.example",
                            {"pec.beta.example"}});
        return text;
    }

    static inline std::optional<TempDir> dir_;
    static inline std::vector<Cert> certs_;
    static inline std::string setup_error_;
};

// ------------------------------------------------------------------------------------------------
// LDIF parsing

TEST_F(IndexTest, ParsesTwoProvidersWithRenewalAndSecondaryEnvironment) {
    auto snap = parse_ldif(two_providers_ldif(), "ldif:test");
    ASSERT_TRUE(snap) << describe(snap.error());
    ASSERT_EQ(snap->providers.size(), 3u);
    EXPECT_EQ(snap->source, "ldif:test");
    // Main records first, then secondary environments; by DN within each group.
    const ProviderRecord& a = snap->providers[0];
    EXPECT_EQ(a.dn, "providerName=Gestore Alfa,o=postacert");
    EXPECT_EQ(a.name, "Gestore Alfa");
    EXPECT_EQ(a.unit, "");
    EXPECT_EQ(a.cert_hashes,
              (std::vector<std::string>{alfa().hex_lower, alfa_renewed().hex_lower}));
    ASSERT_EQ(a.certificates.size(), 2u);
    EXPECT_EQ(a.certificates[0], alfa().der);
    EXPECT_EQ(a.certificates[1], alfa_renewed().der);
    EXPECT_EQ(a.mail_receipt, "posta-certificata@pec.alfa.example");
    EXPECT_EQ(a.managed_domains,
              (std::vector<std::string>{"pec.alfa.example", "legalmail.alfa.example"}));
    EXPECT_EQ(snap->providers[1].dn, "providerName=Gestore Beta Società,o=postacert");
    EXPECT_EQ(snap->providers[1].cert_hashes, std::vector<std::string>{beta().hex_lower});
    EXPECT_EQ(snap->providers[2].unit, "Ambiente B");
    EXPECT_EQ(snap->providers[2].certificates, std::vector<std::string>{alfa_b().der});
}

TEST_F(IndexTest, LookupsAreCaseInsensitive) {
    auto snap = parse_ldif(two_providers_ldif());
    ASSERT_TRUE(snap) << describe(snap.error());
    const ProviderRecord* alfa_rec = snap->find_by_domain("pec.alfa.example");
    ASSERT_NE(alfa_rec, nullptr);
    EXPECT_EQ(alfa_rec->name, "Gestore Alfa");
    // Hashes: openssl's own spelling (upper case with colons), upper, lower.
    EXPECT_EQ(snap->find_by_cert_hash(alfa().fingerprint), alfa_rec);
    EXPECT_EQ(snap->find_by_cert_hash(alfa().hex_upper), alfa_rec);
    EXPECT_EQ(snap->find_by_cert_hash(alfa_renewed().hex_lower), alfa_rec);
    const ProviderRecord* beta_rec = snap->find_by_cert_hash(beta().hex_upper);
    ASSERT_NE(beta_rec, nullptr);
    EXPECT_EQ(beta_rec->name, "Gestore Beta Società");
    const ProviderRecord* unit = snap->find_by_cert_hash(alfa_b().hex_upper);
    ASSERT_NE(unit, nullptr);
    EXPECT_EQ(unit->unit, "Ambiente B");
    EXPECT_EQ(snap->find_by_cert_hash(std::string(40, '0')), nullptr);
    EXPECT_EQ(snap->find_by_cert_hash("not a hash"), nullptr);
    EXPECT_EQ(snap->find_by_cert_hash(alfa().hex_lower.substr(0, 39)), nullptr);

    EXPECT_EQ(snap->find_by_domain("PEC.ALFA.EXAMPLE"), alfa_rec);
    EXPECT_EQ(snap->find_by_domain("LegalMail.Alfa.Example."), alfa_rec);
    EXPECT_EQ(snap->find_by_domain("amb-b.alfa.example"), unit);
    EXPECT_EQ(snap->find_by_domain("alfa.example"), nullptr);  // no suffix matching
    EXPECT_EQ(snap->find_by_domain(""), nullptr);

    EXPECT_TRUE(snap->is_certified_address("Mario.Rossi@PEC.Alfa.Example"));
    EXPECT_TRUE(snap->is_certified_address("<ufficio@pec.beta.example>"));
    EXPECT_TRUE(snap->is_certified_address("\"a@b\"@pec.beta.example"));
    EXPECT_FALSE(snap->is_certified_address("mario.rossi@gmail.example"));
    EXPECT_FALSE(snap->is_certified_address("pec.alfa.example"));
    EXPECT_FALSE(snap->is_certified_address("@pec.alfa.example"));
    EXPECT_FALSE(snap->is_certified_address("user@"));
}

TEST_F(IndexTest, Rfc2849SyntaxBase64CommentsFoldingAndCrlf) {
    // dn, providerName and managedDomains as base64 (UTF-8 name), a folded comment, a folded plain
    // value, a "version: 1" line, CRLF line endings and a changetype: add record.
    std::string name_utf8 = "Gestore Àlfa Società";
    std::string text =
        "version: 1\r\n"
        "# a comment that is folded\r\n"
        " onto a second line: providerName: ignored\r\n"
        "\r\n"
        "dn:: " +
        b64("providerName=" + name_utf8 + ",o=postacert") +
        "\r\n"
        "changetype: add\r\n"
        "objectClass: top\r\n"
        "objectclass: PROVIDER\r\n"
        "providerName:: " +
        b64(name_utf8) +
        "\r\n"
        "PROVIDERCERTIFICATEHASH: " +
        alfa().hex_upper.substr(0, 10) + "\r\n " + alfa().hex_upper.substr(10) + "\r\n";
    std::string cert_line = "providerCertificate;Binary:: " + b64(alfa().der);
    for (std::size_t pos = 0; pos < cert_line.size(); pos += 60)
        text += (pos ? " " : "") + cert_line.substr(pos, 60) + "\r\n";
    text +=
        "# a comment between attributes\r\n"
        "mailReceipt:   posta-certificata@pec.alfa.example\r\n"
        "managedDomains:: " +
        b64("PEC.Alfa.Example") + "\r\n";
    auto snap = parse_ldif(text);
    ASSERT_TRUE(snap) << describe(snap.error());
    ASSERT_EQ(snap->providers.size(), 1u);
    const auto& p = snap->providers[0];
    EXPECT_EQ(p.dn, "providerName=" + name_utf8 + ",o=postacert");
    EXPECT_EQ(p.name, name_utf8);
    EXPECT_EQ(p.cert_hashes, std::vector<std::string>{alfa().hex_lower});
    EXPECT_EQ(p.certificates, std::vector<std::string>{alfa().der});
    EXPECT_EQ(p.mail_receipt, "posta-certificata@pec.alfa.example");
    EXPECT_EQ(p.managed_domains, std::vector<std::string>{"pec.alfa.example"});
}

TEST_F(IndexTest, CertificateWithoutBinaryOptionIsAccepted) {
    std::string text =
        "dn: providerName=X,o=postacert\nobjectClass: provider\nproviderName: X\n"
        "providerCertificateHash: " +
        beta().hex_lower + "\nproviderCertificate:: " + b64(beta().der) +
        "\nmailReceipt: r@x.example\nmanagedDomains: x.example\n";
    auto snap = parse_ldif(text);
    ASSERT_TRUE(snap) << describe(snap.error());
    EXPECT_EQ(snap->providers.at(0).certificates, std::vector<std::string>{beta().der});
}

// ------------------------------------------------------------------------------------------------
// Validation errors: they name the entry, the line and the problem.

TEST_F(IndexTest, HashThatMatchesNoCertificateIsAnError) {
    // Line numbers: 1 dn, 2 objectClass, 3 providerName, 4 hash.
    std::string text =
        "dn: providerName=Gestore Alfa,o=postacert\n"
        "objectClass: provider\n"
        "providerName: Gestore Alfa\n"
        "providerCertificateHash: " +
        beta().hex_upper + "\n" + fold("providerCertificate;binary:: " + b64(alfa().der)) +
        "mailReceipt: posta-certificata@pec.alfa.example\n"
        "managedDomains: pec.alfa.example\n";
    auto snap = parse_ldif(text, "ldif:mismatch");
    ASSERT_FALSE(snap);
    const std::string& m = snap.error().message;
    EXPECT_EQ(snap.error().kind, ErrorKind::corrupt);
    EXPECT_NE(m.find("ldif:mismatch"), std::string::npos) << m;
    EXPECT_NE(m.find("entry \"providerName=Gestore Alfa,o=postacert\" (line 1)"), std::string::npos)
        << m;
    EXPECT_NE(m.find("providerCertificateHash " + beta().hex_lower + " (line 4) does not match"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find(alfa().hex_lower), std::string::npos) << "names the actual SHA-1: " << m;
    // And the certificate that is now unreachable by hash is reported as well.
    EXPECT_NE(m.find("has no providerCertificateHash"), std::string::npos) << m;
}

TEST_F(IndexTest, MissingMustAttributesAreNamed) {
    std::string text = std::string(kBaseEntry) +
                       "# the dn below is on line 8\n"
                       "dn: providerName=Incompleto,o=postacert\n"
                       "objectClass: provider\n"
                       "providerName: Incompleto\n"
                       "providerCertificateHash: " +
                       alfa().hex_lower + "\n" +
                       fold("providerCertificate;binary:: " + b64(alfa().der));
    auto snap = parse_ldif(text);
    ASSERT_FALSE(snap);
    const std::string& m = snap.error().message;
    EXPECT_NE(m.find("2 problem(s)"), std::string::npos) << m;
    EXPECT_NE(m.find("entry \"providerName=Incompleto,o=postacert\" (line 8): missing MUST "
                     "attribute mailReceipt"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("missing MUST attribute managedDomains"), std::string::npos) << m;
}

TEST_F(IndexTest, OtherContentErrors) {
    auto expect_error = [](const std::string& text, const std::string& needle) {
        auto snap = parse_ldif(text);
        ASSERT_FALSE(snap) << "accepted, expected: " << needle;
        EXPECT_NE(snap.error().message.find(needle), std::string::npos)
            << snap.error().message << "\n  expected: " << needle;
    };
    const std::string head = "dn: providerName=X,o=postacert\nobjectClass: provider\n";
    const std::string good_cert = "providerCertificateHash: " + alfa().hex_lower + "\n" +
                                  fold("providerCertificate;binary:: " + b64(alfa().der));
    const std::string tail = "mailReceipt: r@x.example\nmanagedDomains: x.example\n";
    expect_error(head + "providerName: X\nproviderName: Y\n" + good_cert + tail,
                 "providerName is single-valued but has 2 values");
    expect_error(head + "providerName: X\n" + good_cert + "mailReceipt: <r@x.example>\n" +
                     "managedDomains: x.example\n",
                 "is not a bare addr-spec");
    std::string bad_domain = head + "providerName: X\n" + good_cert + "mailReceipt: r@x.example\n";
    int domain_line = static_cast<int>(std::count(bad_domain.begin(), bad_domain.end(), '\n')) + 1;
    expect_error(bad_domain + "managedDomains: user@x.example\n",
                 "managedDomains \"user@x.example\" (line " + std::to_string(domain_line) +
                     ") is not a domain name");
    // Random bytes whose SHA-1 is listed: the hash matches but the value is no certificate.
    std::string junk = "not a certificate at all";
    std::string junk_sha1;
    {
        unsigned char md[20];
        unsigned int len = 0;
        EVP_Digest(junk.data(), junk.size(), md, &len, EVP_sha1(), nullptr);
        static const char* hex = "0123456789abcdef";
        for (unsigned i = 0; i < len; ++i) junk_sha1 += {hex[md[i] >> 4], hex[md[i] & 15]};
    }
    expect_error(head + "providerName: X\nproviderCertificateHash: " + junk_sha1 +
                     "\nproviderCertificate;binary:: " + b64(junk) + "\n" + tail,
                 "providerCertificate #1 (line 5) is not a DER X.509 certificate");
    expect_error(head + "providerName: X\nproviderCertificateHash: abc\n" +
                     fold("providerCertificate;binary:: " + b64(alfa().der)) + tail,
                 "\"abc\" (line 4) is not a 40-digit hex SHA-1");
    expect_error(head + "providerName: X\n" + good_cert + tail + "\n" + head + "providerName: X\n" +
                     good_cert + tail,
                 "duplicate entry");
    expect_error(kBaseEntry, "no objectClass=provider entries");
    expect_error("", "no objectClass=provider entries");
}

TEST_F(IndexTest, SyntaxErrorsNameTheLine) {
    auto expect_error = [](const std::string& text, const std::string& needle) {
        auto snap = parse_ldif(text, "ldif:bad");
        ASSERT_FALSE(snap) << "accepted, expected: " << needle;
        EXPECT_EQ(snap.error().kind, ErrorKind::corrupt);
        EXPECT_NE(snap.error().message.find("ldif:bad: " + needle), std::string::npos)
            << snap.error().message << "\n  expected: " << needle;
    };
    expect_error(
        "dn: providerName=X,o=postacert\nobjectClass: provider\n"
        "providerCertificate;binary:< file:///etc/passwd\n",
        "line 3: \"providerCertificate;binary:<\" URL values are not supported");
    expect_error(" folded first line\n", "line 1: continuation line with no line to continue");
    expect_error("dn: o=postacert\no: postacert\n\n continuation after a blank\n",
                 "line 4: continuation line with no line to continue");
    expect_error("objectClass: provider\n", "line 1: a record must start with \"dn:\"");
    expect_error("dn: o=postacert\nchangetype: modify\nreplace: o\n",
                 "line 2: changetype \"modify\" is not supported");
    expect_error("dn: o=postacert\ncontrol: 1.2.3 true\n", "line 2: LDIF change controls");
    expect_error("dn: o=postacert\no:: ***not base64***\n", "line 2: invalid base64 value");
    expect_error("dn: o=postacert\njust text\n", "line 2: expected \"attribute: value\"");
    expect_error("version: 2\n\ndn: o=postacert\n", "line 1: unsupported LDIF version");
    expect_error("dn: o=postacert\ndn: o=other\n", "line 2: second \"dn:\" in one record");
}

TEST_F(IndexTest, LoadLdifReadsAFileAndReportsAMissingOne) {
    fs::path file = dir_->path() / "index.ldif";
    write_file(file, two_providers_ldif());
    auto snap = load_ldif(file);
    ASSERT_TRUE(snap) << describe(snap.error());
    EXPECT_EQ(snap->source, "ldif:" + file.string());
    EXPECT_EQ(snap->providers.size(), 3u);
    auto missing = load_ldif(dir_->path() / "nope.ldif");
    ASSERT_FALSE(missing);
    EXPECT_EQ(missing.error().kind, ErrorKind::not_found);
    EXPECT_NE(missing.error().message.find("nope.ldif"), std::string::npos);
}

// conf/index/example.ldif must stay loadable and its hashes must be the real SHA-1 of its
// certificates. Set PECD_REGENERATE_EXAMPLES=1 to rewrite it with fresh certificates.
TEST_F(IndexTest, ExampleIndexIsConsistent) {
    fs::path example = fs::path(PECD_SOURCE_DIR) / "conf/index/example.ldif";
    if (std::getenv("PECD_REGENERATE_EXAMPLES") != nullptr) {
        std::string text =
            "# Example IGPEC providers index (RFC 6109 §4.5): two providers under o=postacert.\n"
            "# Test certificates only (self-signed EC P-256, made with the openssl CLI); the\n"
            "# hashes are the SHA-1 of each DER certificate. Regenerate with\n"
            "# PECD_REGENERATE_EXAMPLES=1 ./build/tests/index_test "
            "--gtest_filter='*ExampleIndex*'\n\n" +
            std::string(kBaseEntry) +
            entry_ldif({"providerName=Gestore Alfa,o=postacert",
                        "Gestore Alfa",
                        "",
                        {alfa().hex_upper, alfa_renewed().hex_upper},
                        {&alfa(), &alfa_renewed()},
                        "posta-certificata@pec.alfa.example",
                        {"pec.alfa.example", "legalmail.alfa.example"}}) +
            entry_ldif({"providerName=Gestore Beta,o=postacert",
                        "Gestore Beta",
                        "",
                        {beta().hex_upper},
                        {&beta()},
                        "posta-certificata@pec.beta.example",
                        {"pec.beta.example"}});
        write_file(example, text);
    }
    auto snap = load_ldif(example);
    ASSERT_TRUE(snap) << describe(snap.error());
    ASSERT_EQ(snap->providers.size(), 2u);
    for (const auto& p : snap->providers) {
        ASSERT_EQ(p.cert_hashes.size(), p.certificates.size()) << p.dn;
        for (std::size_t i = 0; i < p.certificates.size(); ++i) {
            fs::path der = dir_->path() / "example.der";
            write_file(der, p.certificates[i]);
            auto fp = openssl_fingerprint(der);
            ASSERT_TRUE(fp) << describe(fp.error());
            std::string hex = lower(*fp);
            std::erase(hex, ':');
            EXPECT_NE(std::find(p.cert_hashes.begin(), p.cert_hashes.end(), hex),
                      p.cert_hashes.end())
                << p.dn << " certificate #" << i + 1 << " (openssl says " << *fp << ")";
        }
    }
    EXPECT_TRUE(snap->is_certified_address("utente@pec.beta.example"));
}

// ------------------------------------------------------------------------------------------------
// LDAP, against a real slapd.

class IndexLdapTest : public IndexTest {
  protected:
    void SetUp() override {
        IndexTest::SetUp();
        if (HasFatalFailure()) return;
        auto slapd = SlapdFixture::start();
        ASSERT_TRUE(slapd) << describe(slapd.error());
        slapd_ = std::move(*slapd);
        ldif_ = two_providers_ldif();
        auto st = slapd_->add_ldif_text(ldif_);
        ASSERT_TRUE(st) << describe(st.error());
        options_.uri = slapd_->uri();
        options_.bind_dn = slapd_->options().root_dn;
        options_.bind_password = slapd_->options().root_password;
        options_.timeout = std::chrono::milliseconds(3000);
        options_.cache_file = slapd_->dir() / "index-cache.ldif";
    }

    std::unique_ptr<SlapdFixture> slapd_;
    std::string ldif_;
    LdapIndexOptions options_;
};

TEST_F(IndexLdapTest, LoadLdapEqualsLoadLdifAndWritesTheCache) {
    auto from_ldif = parse_ldif(ldif_);
    ASSERT_TRUE(from_ldif) << describe(from_ldif.error());
    ASSERT_FALSE(fs::exists(options_.cache_file));

    auto from_ldap = load_ldap(options_);
    ASSERT_TRUE(from_ldap) << describe(from_ldap.error()) << "\nslapd log:\n" << slapd_->log();
    EXPECT_EQ(dump(*from_ldap), dump(*from_ldif));
    EXPECT_EQ(from_ldap->source,
              "ldap://127.0.0.1:" + std::to_string(slapd_->port()) + "/o=postacert");
    EXPECT_NE(from_ldap->find_by_cert_hash(alfa_renewed().fingerprint), nullptr);

    // The cache is an LDIF that reads back to the same snapshot, with no temp file left over.
    ASSERT_TRUE(fs::exists(options_.cache_file));
    auto cached = load_ldif(options_.cache_file);
    ASSERT_TRUE(cached) << describe(cached.error());
    EXPECT_EQ(dump(*cached), dump(*from_ldif));
    for (const auto& entry : fs::directory_iterator(options_.cache_file.parent_path()))
        EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos)
            << entry.path();
}

TEST_F(IndexLdapTest, AnonymousBindReadsTheSameIndex) {
    options_.bind_dn.clear();
    options_.bind_password.clear();
    options_.cache_file.clear();
    auto from_ldap = load_ldap(options_);
    ASSERT_TRUE(from_ldap) << describe(from_ldap.error());
    auto from_ldif = parse_ldif(ldif_);
    ASSERT_TRUE(from_ldif);
    EXPECT_EQ(dump(*from_ldap), dump(*from_ldif));
}

TEST_F(IndexLdapTest, FallsBackToTheCacheWhenTheServerIsDown) {
    auto live = load_ldap(options_);
    ASSERT_TRUE(live) << describe(live.error());
    auto st = slapd_->stop();
    ASSERT_TRUE(st) << describe(st.error());

    auto start = std::chrono::steady_clock::now();
    auto fallback = load_ldap(options_);
    ASSERT_TRUE(fallback) << describe(fallback.error());
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
    EXPECT_EQ(dump(*fallback), dump(*live));
    EXPECT_EQ(fallback->source.rfind("ldap-cache:" + options_.cache_file.string() + " (", 0), 0u)
        << fallback->source;
    EXPECT_NE(fallback->source.find("unreachable"), std::string::npos) << fallback->source;
}

TEST_F(IndexLdapTest, WrongPasswordIsAConfigErrorEvenWithACache) {
    auto live = load_ldap(options_);  // leaves a cache behind
    ASSERT_TRUE(live) << describe(live.error());
    options_.bind_password = "wrong";
    auto r = load_ldap(options_);
    ASSERT_FALSE(r) << "loaded from " << r->source;
    EXPECT_EQ(r.error().kind, ErrorKind::config);
    EXPECT_NE(
        r.error().message.find("bind as \"cn=admin,o=postacert\" failed: Invalid credentials"),
        std::string::npos)
        << r.error().message;
}

TEST_F(IndexLdapTest, MissingBaseIsAConfigError) {
    options_.base_dn = "o=nowhere";
    auto r = load_ldap(options_);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::config);
    EXPECT_NE(r.error().message.find("No such object"), std::string::npos) << r.error().message;
}

// slapd checks the schema but not that a hash belongs to a certificate: a bad record on the
// server fails the load and leaves the last good cache untouched.
TEST_F(IndexLdapTest, InvalidServerDataFailsAndKeepsTheCache) {
    auto live = load_ldap(options_);
    ASSERT_TRUE(live) << describe(live.error());
    std::string before = read_file(options_.cache_file);
    auto st = slapd_->add_ldif_text(entry_ldif({"providerName=Gestore Gamma,o=postacert",
                                                "Gestore Gamma",
                                                "",
                                                {alfa().hex_lower},
                                                {&beta()},
                                                "posta-certificata@pec.gamma.example",
                                                {"pec.gamma.example"}}));
    ASSERT_TRUE(st) << describe(st.error());
    auto r = load_ldap(options_);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::corrupt);
    EXPECT_NE(r.error().message.find("entry \"providerName=Gestore Gamma,o=postacert\": "
                                     "providerCertificateHash " +
                                     alfa().hex_lower + " does not match"),
              std::string::npos)
        << r.error().message;
    EXPECT_EQ(read_file(options_.cache_file), before);
}

TEST_F(IndexLdapTest, ExampleIndexLoadsIntoSlapd) {
    // A second, empty server: the example brings its own o=postacert entry.
    auto other = SlapdFixture::start();
    ASSERT_TRUE(other) << describe(other.error());
    auto st = (*other)->add_ldif(fs::path(PECD_SOURCE_DIR) / "conf/index/example.ldif");
    ASSERT_TRUE(st) << describe(st.error());
    LdapIndexOptions o;
    o.uri = (*other)->uri();
    auto snap = load_ldap(o);
    ASSERT_TRUE(snap) << describe(snap.error());
    auto file = load_ldif(fs::path(PECD_SOURCE_DIR) / "conf/index/example.ldif");
    ASSERT_TRUE(file) << describe(file.error());
    EXPECT_EQ(dump(*snap), dump(*file));
}

// ------------------------------------------------------------------------------------------------
// Unreachable servers without a cache.

TEST(IndexLdapDown, NoServerAndNoCacheIsTransient) {
    auto port = pecd::test::free_loopback_port();
    ASSERT_TRUE(port);
    LdapIndexOptions o;
    o.uri = "ldap://127.0.0.1:" + std::to_string(*port);
    o.timeout = std::chrono::milliseconds(1000);
    auto r = load_ldap(o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::transient);
    EXPECT_NE(r.error().message.find("Can't contact LDAP server"), std::string::npos)
        << r.error().message;
    EXPECT_NE(r.error().message.find("no cache file configured"), std::string::npos);

    o.cache_file = "/nonexistent-dir/cache.ldif";
    r = load_ldap(o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::transient);
    EXPECT_NE(r.error().message.find("no cache file at /nonexistent-dir/cache.ldif"),
              std::string::npos)
        << r.error().message;
}

TEST(IndexLdapDown, ServerThatNeverAnswersTimesOut) {
    // A listening socket nobody accept()s: the TCP handshake succeeds, the bind never returns.
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(fd, 4), 0);
    ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    LdapIndexOptions o;
    o.uri = "ldap://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
    o.timeout = std::chrono::milliseconds(400);
    auto start = std::chrono::steady_clock::now();
    auto r = load_ldap(o);
    auto took = std::chrono::steady_clock::now() - start;
    ::close(fd);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::transient) << r.error().message;
    EXPECT_LT(took, std::chrono::seconds(3));
}

TEST(IndexLdapDown, BadUriIsAConfigError) {
    LdapIndexOptions o;
    o.uri = "http://not-ldap.example/";
    auto r = load_ldap(o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::config) << r.error().message;
}
