// The providers index as IGPEC distributes it: LDIF signed as a CMS SignedData (`.p7m`,
// pec-rules.md §7). A provider's record is written and signed by pecd (provider_record_ldif,
// sign_data_der) and read back by load_ldif only once its signature and signer check out.
// `openssl cms` is the independent reader and writer.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>

#include "stages/pec/index.hpp"
#include "stages/pec/smime.hpp"
#include "tests/support/crypto_support.hpp"
#include "tests/support/temp_dir.hpp"

using namespace pecd::pec;
using namespace pecd::test;
using pecd::ErrorKind;
namespace fs = std::filesystem;

namespace {

std::shared_ptr<const SigningKey> pem_key(const std::string& name) {
    const auto& pki = test_pki();
    auto key = load_pem_key(pki / (name + ".crt"), pki / (name + ".key"), "");
    if (!key) throw std::runtime_error(key.error().message);
    return *key;
}

TrustConfig trust(const std::string& crl = "crl-empty.pem") {
    TrustConfig config;
    config.ca_files = {test_pki() / "ca.crt"};
    config.crl_files = {test_pki() / crl};
    return config;
}

ProviderRecord alpha_record(const SigningKey& key) {
    ProviderRecord record;
    record.name = "Gestore Alpha S.p.A.";
    record.dn = "providerName=Gestore Alpha S.p.A.,o=postacert";
    record.mail_receipt = "posta-certificata@pec.alpha.test";
    record.managed_domains = {"pec.alpha.test", "alpha.example"};
    auto sha1 = cert_sha1_hex(key.certificate());
    if (!sha1) throw std::runtime_error(sha1.error().message);
    record.cert_hashes = {*sha1};
    auto der = cert_der(key.certificate());
    if (!der) throw std::runtime_error(der.error().message);
    record.certificates = {*der};
    return record;
}

// `snap` is a refusal, of `kind` if one is given, whose message says `says`.
void expect_refused(const pecd::Result<IndexSnapshot>& snap, std::optional<ErrorKind> kind,
                    std::string_view says, const std::string& context = {}) {
    ASSERT_FALSE(snap.has_value()) << context;
    if (kind) {
        EXPECT_EQ(snap.error().kind, *kind) << context;
    }
    EXPECT_NE(snap.error().message.find(says), std::string::npos)
        << context << ": " << snap.error().message;
}

// The record signed by `signer` (its own key, as a provider publishes it), written to a file.
fs::path signed_record(const TempDir& dir, const std::string& signer,
                       const std::string& name = "record.p7m") {
    auto alpha = pem_key("alpha");
    auto der = sign_data_der(
        *pem_key(signer), provider_record_ldif(alpha_record(*alpha), "https://pec.alpha.test/x"));
    if (!der) throw std::runtime_error(der.error().message);
    fs::path path = dir.path() / name;
    write_file(path, *der);
    return path;
}

TEST(SignedIndex, ARecordSignedByItsProviderReadsBackWhole) {
    TempDir dir;
    fs::path path = signed_record(dir, "alpha");
    auto tc = trust();
    auto snap = load_ldif(path, {&tc, {}});
    ASSERT_TRUE(snap.has_value()) << snap.error().message;
    ASSERT_EQ(snap->providers.size(), 1u);
    const ProviderRecord expected = alpha_record(*pem_key("alpha"));
    const ProviderRecord& got = snap->providers[0];
    EXPECT_EQ(got.name, expected.name);
    EXPECT_EQ(got.dn, expected.dn);
    EXPECT_EQ(got.mail_receipt, expected.mail_receipt);
    EXPECT_EQ(got.managed_domains, expected.managed_domains);
    EXPECT_EQ(got.cert_hashes, expected.cert_hashes);
    EXPECT_EQ(got.certificates, expected.certificates);
    EXPECT_NE(snap->source.find("signed by"), std::string::npos) << snap->source;
    EXPECT_NE(snap->source.find("Gestore Alpha"), std::string::npos) << snap->source;
    EXPECT_TRUE(snap->is_certified_address("anna@alpha.example"));
}

// A provider whose key is in an HSM signs its record there (SoftHSM2 through PKCS#11).
TEST(SignedIndex, ARecordSignedThroughPkcs11ReadsBack) {
    SoftHsmToken token("alpha");
    auto key = load_pkcs11_key(token.uri(), SoftHsmToken::module, token.pin_file(), "");
    ASSERT_TRUE(key.has_value()) << key.error().message;
    ASSERT_TRUE((*key)->is_pkcs11());
    const std::string ldif = provider_record_ldif(alpha_record(**key));
    auto der = sign_data_der(**key, ldif);
    ASSERT_TRUE(der.has_value()) << der.error().message;
    auto opened = open_signed_data(*der, trust());
    ASSERT_TRUE(opened.has_value()) << opened.error().message;
    EXPECT_TRUE(opened->report.ok()) << opened->report.reason;
    EXPECT_EQ(opened->content, ldif);
    EXPECT_EQ(opened->report.signer_email, "posta-certificata@pec.alpha.test");
}

TEST(SignedIndex, OpensslReadsWhatPecdSignsAndPecdReadsWhatOpensslSigns) {
    TempDir dir;
    const auto& pki = test_pki();
    fs::path ours = signed_record(dir, "alpha");
    auto out = run("openssl cms -verify -inform DER -in " + quote(ours) + " -CAfile " +
                   quote(pki / "ca.crt") + " -purpose smimesign 2>&1");
    ASSERT_EQ(out.status, 0) << out.output;
    EXPECT_NE(out.output.find("managedDomains: alpha.example"), std::string::npos) << out.output;

    // Alpha's record signed by the openssl CLI, in PEM (`-----BEGIN CMS-----`) and in DER: by
    // alpha it is alpha's record; by beta, a trusted provider too, it is refused all the same.
    fs::path ldif = dir.path() / "plain.ldif";
    write_file(ldif, provider_record_ldif(alpha_record(*pem_key("alpha"))));
    for (const std::string signer : {"alpha", "beta"})
        for (const std::string form : {"PEM", "DER"}) {
            fs::path p7m = dir.path() / ("cli-" + signer + "-" + form + ".p7m");
            auto signed_by_cli =
                run("openssl cms -sign -nodetach -binary -outform " + form + " -in " + quote(ldif) +
                    " -signer " + quote(pki / (signer + ".crt")) + " -inkey " +
                    quote(pki / (signer + ".key")) + " -out " + quote(p7m) + " 2>&1");
            ASSERT_EQ(signed_by_cli.status, 0) << signed_by_cli.output;
            auto tc = trust();
            auto snap = load_ldif(p7m, {&tc, {}});
            if (signer == "alpha") {
                ASSERT_TRUE(snap.has_value()) << form << ": " << snap.error().message;
                ASSERT_EQ(snap->providers.size(), 1u);
                EXPECT_NE(snap->source.find("signed by C=IT, O=Gestore Alpha"), std::string::npos)
                    << snap->source;
            } else {
                expect_refused(snap, ErrorKind::corrupt,
                               "not by a certificate of the provider it describes", form);
            }
        }
}

// A whole directory (several providers) is read only from a signer named by [index]
// ldif_signer, whoever else the anchors trust.
TEST(SignedIndex, AWholeDirectoryIsReadOnlyFromTheNamedSigner) {
    TempDir dir;
    auto alpha = pem_key("alpha");
    auto beta = pem_key("beta");
    ProviderRecord beta_record = alpha_record(*beta);
    beta_record.name = "Gestore Beta S.p.A.";
    beta_record.dn = "providerName=Gestore Beta S.p.A.,o=postacert";
    beta_record.mail_receipt = "posta-certificata@pec.beta.test";
    beta_record.managed_domains = {"pec.beta.test"};
    const std::string version = "version: 1\n\n";
    std::string directory = provider_record_ldif(alpha_record(*alpha)) + "\n" +
                            provider_record_ldif(beta_record).substr(version.size());
    auto der = sign_data_der(*beta, directory);
    ASSERT_TRUE(der.has_value()) << der.error().message;
    fs::path path = dir.path() / "igpec.p7m";
    write_file(path, *der);
    auto tc = trust();
    auto beta_sha1 = cert_sha1_hex(beta->certificate());
    auto alpha_sha1 = cert_sha1_hex(alpha->certificate());
    ASSERT_TRUE(beta_sha1 && alpha_sha1);

    auto unnamed = load_ldif(path, {&tc, {}});
    expect_refused(unnamed, ErrorKind::config, "holds 2 providers");
    auto other = load_ldif(path, {&tc, {*alpha_sha1}});
    expect_refused(other, std::nullopt, "not by a certificate of [index] ldif_signer");
    auto named = load_ldif(path, {&tc, {*alpha_sha1, *beta_sha1}});
    ASSERT_TRUE(named.has_value()) << named.error().message;
    EXPECT_EQ(named->providers.size(), 2u);
}

// Dropping the signature is no way round it: a `.p7m`, or any file once a signer is named,
// must be signed.
TEST(SignedIndex, APlainFileWhereASignedOneIsExpectedIsRefused) {
    TempDir dir;
    const std::string ldif = provider_record_ldif(alpha_record(*pem_key("alpha")));
    fs::path p7m = dir.path() / "record.p7m";
    fs::path plain = dir.path() / "record.ldif";
    write_file(p7m, ldif);
    write_file(plain, ldif);
    auto tc = trust();
    auto sha1 = cert_sha1_hex(pem_key("alpha")->certificate());
    ASSERT_TRUE(sha1.has_value());
    const std::vector<std::pair<fs::path, std::vector<std::string>>> cases{{p7m, {}},
                                                                           {plain, {*sha1}}};
    for (const auto& [path, signers] : cases) {
        auto snap = load_ldif(path, {&tc, signers});
        expect_refused(snap, ErrorKind::corrupt, "not signed", path.string());
    }
}

// A missing or stale CRL is the CRL's problem, not the index's: transient, so that the refresh
// is retried once the CRL is.
TEST(SignedIndex, WithoutACurrentCrlTheLoadIsTransient) {
    TempDir dir;
    fs::path path = signed_record(dir, "alpha");
    TrustConfig no_crl;
    no_crl.ca_files = {test_pki() / "ca.crt"};
    auto snap = load_ldif(path, {&no_crl, {}});
    expect_refused(snap, ErrorKind::transient, "crl_unavailable");
}

TEST(SignedIndex, AChangedByteFailsTheSignature) {
    TempDir dir;
    fs::path path = signed_record(dir, "alpha");
    std::string der = read_file(path);
    size_t at = der.find("managedDomains: alpha.example");
    ASSERT_NE(at, std::string::npos);
    der[at + 16] = 'b';  // "blpha.example": a domain the provider never published
    write_file(path, der);
    auto tc = trust();
    auto snap = load_ldif(path, {&tc, {}});
    expect_refused(snap, ErrorKind::corrupt, "bad_signature");
}

TEST(SignedIndex, SignersOutsideTheTrustAreRefusedWithTheReason) {
    TempDir dir;
    struct Case {
        std::string signer, crl, failure;
    };
    for (const Case& c : {Case{"foreign", "crl-empty.pem", "untrusted_chain"},
                          Case{"revoked", "crl-revoked.pem", "revoked"},
                          Case{"expired", "crl-empty.pem", "expired"}}) {
        fs::path path = signed_record(dir, c.signer, c.signer + ".p7m");
        auto tc = trust(c.crl);
        auto snap = load_ldif(path, {&tc, {}});
        expect_refused(snap, ErrorKind::corrupt, c.failure, c.signer);
    }
}

TEST(SignedIndex, ASignedFileWithoutTrustAnchorsIsAConfigurationError) {
    TempDir dir;
    fs::path path = signed_record(dir, "alpha");
    const TrustConfig no_anchors;
    for (const TrustConfig* tc : {static_cast<const TrustConfig*>(nullptr), &no_anchors}) {
        auto snap = load_ldif(path, {tc, {}});
        expect_refused(snap, ErrorKind::config, "[trust]");
    }
}

TEST(SignedIndex, ADetachedSignatureCarriesNoIndex) {
    TempDir dir;
    const auto& pki = test_pki();
    fs::path ldif = dir.path() / "plain.ldif";
    write_file(ldif, provider_record_ldif(alpha_record(*pem_key("alpha"))));
    fs::path p7s = dir.path() / "detached.p7s";
    auto r = run("openssl cms -sign -binary -outform DER -in " + quote(ldif) + " -signer " +
                 quote(pki / "alpha.crt") + " -inkey " + quote(pki / "alpha.key") + " -out " +
                 quote(p7s) + " 2>&1");
    ASSERT_EQ(r.status, 0) << r.output;
    auto tc = trust();
    auto snap = load_ldif(p7s, {&tc, {}});
    expect_refused(snap, std::nullopt, "does not carry its content");
}

TEST(SignedIndex, PlainLdifIsReadAsBeforeWithOrWithoutTrust) {
    TempDir dir;
    fs::path ldif = dir.path() / "plain.ldif";
    write_file(ldif, provider_record_ldif(alpha_record(*pem_key("alpha"))));
    const TrustConfig tc = trust();
    for (const TrustConfig* t : {static_cast<const TrustConfig*>(nullptr), &tc}) {
        auto snap = load_ldif(ldif, {t, {}});
        ASSERT_TRUE(snap.has_value()) << snap.error().message;
        EXPECT_EQ(snap->providers.size(), 1u);
        EXPECT_EQ(snap->source, "ldif:" + ldif.string());
    }
    EXPECT_FALSE(looks_like_signed_data(read_file(ldif)));
    EXPECT_TRUE(looks_like_signed_data(read_file(signed_record(dir, "alpha"))));
}

}  // namespace
