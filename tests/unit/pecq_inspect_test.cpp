// `pecq inspect` as administrators run it: the real binary on real provider messages and on
// messages pecd itself builds and signs.
#include <gtest/gtest.h>

#include <fstream>

#include "stages/pec/builders.hpp"
#include "stages/pec/identificativo.hpp"
#include "stages/pec/keys.hpp"
#include "stages/pec/smime.hpp"
#include "stages/pec/templates.hpp"
#include "tests/support/crypto_support.hpp"

namespace {

using namespace pecd;
using namespace pecd::pec;
using pecd::test::quote;
using pecd::test::run;

const std::string kPecq = std::string(PECD_BINARY_DIR) + "/bin/pecq";
const std::filesystem::path kFixtures = std::filesystem::path(PECD_SHARED_DIR) / "fixtures/real";

struct Inspected {
    int status;
    std::string output;
};

Inspected inspect(const std::filesystem::path& file, const std::string& extra = "") {
    auto r = run(kPecq + " inspect " + extra + " " + quote(file) + " 2>&1");
    return {r.status, r.output};
}

// A field of the JSON output, read with jq (an independent parser).
std::string jq(const std::filesystem::path& file, const std::string& filter,
               const std::string& extra = "") {
    auto r =
        run(kPecq + " inspect --json " + extra + " " + quote(file) + " | jq -r " + quote(filter));
    std::string out = r.output;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
}

TEST(PecqInspect, RealSignedFixturesAreValidAndNameTheirSigner) {
    struct Case {
        const char* file;
        const char* type;
        const char* tipo;
        const char* signer;
        const char* identificativo;
    };
    for (const Case& c : {
             Case{"aruba-accettazione-2018.eml", "accettazione", "accettazione",
                  "Posta Certificata ARUBA PEC",
                  "opec288.20181113163926.01838.310.1.63@pec.aruba.it"},
             Case{"aruba-avvenuta-consegna-2018.eml", "avvenuta-consegna", "avvenuta-consegna",
                  "Posta Certificata ARUBA PEC",
                  "opec288.20181113163926.01838.310.1.63@pec.aruba.it"},
             Case{"sogei-busta-breve-2018.eml", "busta-trasporto", "posta-certificata",
                  "Posta Certificata Sogei",
                  "opec288.20181208122618.17535.2665.1.3@pcert.sogei.it"},
         }) {
        SCOPED_TRACE(c.file);
        auto r = inspect(kFixtures / c.file);
        EXPECT_EQ(r.status, 0) << r.output;
        EXPECT_NE(r.output.find("signature:       valid"), std::string::npos) << r.output;
        EXPECT_EQ(jq(kFixtures / c.file, ".message.type"), c.type);
        EXPECT_EQ(jq(kFixtures / c.file, ".message.daticert.tipo"), c.tipo);
        EXPECT_EQ(jq(kFixtures / c.file, ".message.daticert.identificativo"), c.identificativo);
        EXPECT_NE(jq(kFixtures / c.file, ".signature.signer_subject").find(c.signer),
                  std::string::npos);
        EXPECT_EQ(jq(kFixtures / c.file, ".signature.digest_algorithm"), "sha1");
        EXPECT_EQ(jq(kFixtures / c.file, ".valid"), "true");
    }
    EXPECT_EQ(jq(kFixtures / "sogei-busta-breve-2018.eml", ".message.tipo_ricevuta"), "breve");
}

TEST(PecqInspect, AnonymisedFixturesAreClassifiedButNotValid) {
    struct Case {
        const char* file;
        const char* type;
    };
    for (const Case& c : {Case{"anon-accettazione.eml", "accettazione"},
                          Case{"anon-errore-consegna.eml", "errore-consegna"},
                          Case{"anon-avvenuta-consegna-sha256.eml", "avvenuta-consegna"},
                          Case{"anon-busta-sha256.eml", "busta-trasporto"}}) {
        SCOPED_TRACE(c.file);
        auto r = inspect(kFixtures / c.file);
        EXPECT_EQ(r.status, 1) << r.output;  // their smime.p7s was removed or replaced
        EXPECT_EQ(jq(kFixtures / c.file, ".message.type"), c.type);
        EXPECT_EQ(jq(kFixtures / c.file, ".signature.failure"), "no_signature");
    }
    EXPECT_EQ(jq(kFixtures / "anon-accettazione.eml", ".message.daticert.mittente"),
              "sender@fakepec.it");
}

class PecqInspectOwnMessages : public ::testing::Test {
  protected:
    void SetUp() override {
        const auto& pki = pecd::test::test_pki();
        auto key = load_pem_key(pki / "alpha.crt", pki / "alpha.key", "");
        ASSERT_TRUE(key) << key.error().message;
        auto templates = TemplateSet::load(PECD_SOURCE_DIR "/conf/templates");
        ASSERT_TRUE(templates) << templates.error().message;
        auto ids = IdentificativoGenerator::create("pec.alpha.test", "test");
        ASSERT_TRUE(ids);
        MessageBuilder builder({"Gestore Alfa S.p.A.", "pec.alpha.test"},
                               std::make_shared<TemplateSet>(std::move(*templates)),
                               make_entity_signer(*key),
                               std::shared_ptr<IdentificativoGenerator>(std::move(*ids)));
        Transaction t;
        t.time = PecTime{std::chrono::system_clock::now()};
        t.identificativo = "pecd.test.1@pec.alpha.test";
        t.original.sender = "mario.rossi@pec.alpha.test";
        t.original.recipients = {
            {"anna.bianchi@pec.beta.test", RecipientKind::certificato, AddressField::to},
            {"esterno@example.org", RecipientKind::esterno, AddressField::cc}};
        t.original.subject = "Fattura 12";
        t.original.message_id = "<client-1@alpha.test>";
        auto built = builder.accettazione(t);
        ASSERT_TRUE(built) << built.error().message;
        pecd::test::write_file(dir_.path() / "acc.eml", built->bytes);
        // The index: alpha with its real certificate hash.
        auto der = pecd::test::read_file(pki / "alpha.der");
        auto hash = run("openssl x509 -inform DER -in " + quote(pki / "alpha.der") +
                        " -noout -fingerprint -sha1 | sed 's/.*=//; s/://g'");
        std::string sha1 = hash.output.substr(0, 40);
        auto b64 = run("base64 -w0 " + quote(pki / "alpha.der"));
        pecd::test::write_file(
            dir_.path() / "index.ldif",
            "dn: providerName=Gestore Alfa,o=postacert\nobjectClass: provider\n"
            "providerName: Gestore Alfa\nproviderCertificateHash: " +
                sha1 + "\nproviderCertificate;binary:: " + b64.output +
                "\nmailReceipt: ricevute@pec.alpha.test\nmanagedDomains: pec.alpha.test\n");
        trust_ = "--ca " + quote(pki / "ca.crt") + " --crl " + quote(pki / "crl-empty.pem") +
                 " --index " + quote(dir_.path() / "index.ldif");
    }
    pecd::test::TempDir dir_{"pecq-inspect"};
    std::string trust_;
};

TEST_F(PecqInspectOwnMessages, SignedReceiptVerifiesWithChainAndIndex) {
    auto r = inspect(dir_.path() / "acc.eml", trust_);
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(jq(dir_.path() / "acc.eml", ".chain_checked", trust_), "true");
    EXPECT_EQ(jq(dir_.path() / "acc.eml", ".signature.provider", trust_), "Gestore Alfa");
    EXPECT_EQ(jq(dir_.path() / "acc.eml", ".message.daticert.destinatari[1].tipo", trust_),
              "esterno");
}

TEST_F(PecqInspectOwnMessages, TamperedOrUnknownSignerIsRefusedWithItsReason) {
    std::string raw = pecd::test::read_file(dir_.path() / "acc.eml");
    size_t at = raw.find("Fattura 12", raw.find("\r\n\r\n"));
    ASSERT_NE(at, std::string::npos);
    raw[at] = 'f';
    pecd::test::write_file(dir_.path() / "tampered.eml", raw);
    auto r = inspect(dir_.path() / "tampered.eml", trust_);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_EQ(jq(dir_.path() / "tampered.eml", ".signature.failure", trust_), "bad_signature");
    // Same message, but an index holding only beta: the signer is not a known provider.
    const auto& pki = pecd::test::test_pki();
    auto hash = run("openssl x509 -inform DER -in " + quote(pki / "beta.der") +
                    " -noout -fingerprint -sha1 | sed 's/.*=//; s/://g'");
    auto b64 = run("base64 -w0 " + quote(pki / "beta.der"));
    pecd::test::write_file(
        dir_.path() / "beta-only.ldif",
        "dn: providerName=Gestore Beta,o=postacert\nobjectClass: provider\n"
        "providerName: Gestore Beta\nproviderCertificateHash: " +
            hash.output.substr(0, 40) + "\nproviderCertificate;binary:: " + b64.output +
            "\nmailReceipt: ricevute@pec.beta.test\nmanagedDomains: pec.beta.test\n");
    std::string other =
        "--ca " + quote(pki / "ca.crt") + " --index " + quote(dir_.path() / "beta-only.ldif");
    EXPECT_EQ(inspect(dir_.path() / "acc.eml", other).status, 1);
    EXPECT_EQ(jq(dir_.path() / "acc.eml", ".signature.failure", other), "not_in_index");
    // Standard input works too.
    auto piped = run("cat " + quote(dir_.path() / "acc.eml") + " | " + kPecq + " inspect -");
    EXPECT_EQ(piped.status, 0) << piped.output;
}

}  // namespace
