#include "stages/pec/keys.hpp"

#include <gtest/gtest.h>
#include <openssl/x509v3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "stages/pec/smime.hpp"
#include "tests/support/crypto_support.hpp"

using namespace pecd::pec;
using namespace pecd::test;
namespace fs = std::filesystem;

namespace {

TrustConfig trust() {
    TrustConfig config;
    config.ca_files = {test_pki() / "ca.crt"};
    config.crl_files = {test_pki() / "crl-empty.pem"};
    return config;
}

// Signs a PEC-like entity with `key` and verifies it (chain + CRL against the test CA).
VerifyReport sign_and_verify(const SigningKey& key, const SmimeVerifier& verifier) {
    auto signed_entity = sign_entity(key, {}, pec_entity());
    if (!signed_entity) {
        VerifyReport r;
        r.failure = VerifyFailure::no_signature;
        r.reason = "signing failed: " + signed_entity.error().message;
        return r;
    }
    auto report = verifier.verify(with_headers(*signed_entity), nullptr);
    if (!report) throw std::runtime_error(report.error().message);
    return *report;
}

std::shared_ptr<SmimeVerifier> make_verifier() {
    auto v = SmimeVerifier::create(trust());
    if (!v) throw std::runtime_error(v.error().message);
    return *v;
}

}  // namespace

TEST(PemKey, LoadsCertKeyAndChain) {
    const auto& pki = test_pki();
    auto key = load_pem_key(pki / "alpha.crt", pki / "alpha.key", pki / "ca.crt");
    ASSERT_TRUE(key) << key.error().message;
    EXPECT_FALSE((*key)->is_pkcs11());
    EXPECT_EQ(sk_X509_num((*key)->chain()), 1);
    auto sha1 = cert_sha1_hex((*key)->certificate());
    ASSERT_TRUE(sha1);
    EXPECT_EQ(sha1->size(), 40u);
    auto report = sign_and_verify(**key, *make_verifier());
    EXPECT_TRUE(report.ok()) << report.reason;
    EXPECT_EQ(report.signer_cert_sha1, *sha1);
}

TEST(PemKey, RefusesMismatchedOrMissingFiles) {
    const auto& pki = test_pki();
    auto mismatch = load_pem_key(pki / "alpha.crt", pki / "beta.key", "");
    ASSERT_FALSE(mismatch);
    EXPECT_EQ(mismatch.error().kind, pecd::ErrorKind::config);
    EXPECT_NE(mismatch.error().message.find("does not match"), std::string::npos);
    EXPECT_FALSE(load_pem_key(pki / "nope.crt", pki / "alpha.key", ""));
    EXPECT_FALSE(load_pem_key(pki / "alpha.crt", pki / "nope.key", ""));
    EXPECT_FALSE(load_pem_key(pki / "alpha.crt", pki / "alpha.key", pki / "nope.pem"));
    // A key file is not a certificate.
    EXPECT_FALSE(load_pem_key(pki / "alpha.key", pki / "alpha.key", ""));
}

TEST(TestPki, ProviderCertsFollowTheRfc6109Profile) {
    const auto& pki = test_pki();
    for (const char* name : {"alpha", "beta", "expired", "revoked", "foreign"}) {
        SCOPED_TRACE(name);
        auto key = load_pem_key(pki / (std::string(name) + ".crt"),
                                pki / (std::string(name) + ".key"), "");
        ASSERT_TRUE(key) << key.error().message;
        X509* cert = (*key)->certificate();
        // RFC 6109 §5.5: no basicConstraints; KeyUsage digitalSignature, critical; SKI, AKI, SAN.
        EXPECT_LT(X509_get_ext_by_NID(cert, NID_basic_constraints, -1), 0);
        int ku = X509_get_ext_by_NID(cert, NID_key_usage, -1);
        ASSERT_GE(ku, 0);
        EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(cert, ku)), 1);
        EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
        EXPECT_NE(X509_get_extended_key_usage(cert) & XKU_SMIME, 0u);
        EXPECT_NE(X509_get0_subject_key_id(cert), nullptr);
        EXPECT_NE(X509_get0_authority_key_id(cert), nullptr);
        EXPECT_GE(X509_get_ext_by_NID(cert, NID_subject_alt_name, -1), 0);
    }
    auto tsa = run("openssl verify -purpose timestampsign -CAfile " + quote(pki / "ca.crt") + " " +
                   quote(pki / "tsa.crt"));
    EXPECT_EQ(tsa.status, 0) << tsa.output;
}

class Pkcs11Key : public ::testing::Test {
  protected:
    static void SetUpTestSuite() { token_ = new SoftHsmToken("alpha"); }
    static void TearDownTestSuite() {
        delete token_;
        token_ = nullptr;
    }
    static SoftHsmToken* token_;
};
SoftHsmToken* Pkcs11Key::token_ = nullptr;

TEST_F(Pkcs11Key, SignsThroughTheTokenWithCertFromFileOrToken) {
    auto verifier = make_verifier();
    auto with_file = load_pkcs11_key(token_->uri(), SoftHsmToken::module, token_->pin_file(),
                                     test_pki() / "alpha.crt");
    ASSERT_TRUE(with_file) << with_file.error().message;
    EXPECT_TRUE((*with_file)->is_pkcs11());
    auto report = sign_and_verify(**with_file, *verifier);
    EXPECT_TRUE(report.ok()) << report.reason;

    // No certificate path: the certificate stored on the token (same CKA_ID) is used.
    auto from_token =
        load_pkcs11_key(token_->uri() + ";id=%01", SoftHsmToken::module, token_->pin_file(), "");
    ASSERT_TRUE(from_token) << from_token.error().message;
    EXPECT_EQ(X509_cmp((*from_token)->certificate(), (*with_file)->certificate()), 0);
    report = sign_and_verify(**from_token, *verifier);
    EXPECT_TRUE(report.ok()) << report.reason;
    EXPECT_EQ(report.signer_email, "posta-certificata@pec.alpha.test");

    // The token-signed message also verifies with the openssl CLI.
    auto signed_entity = sign_entity(**from_token, {}, pec_entity());
    ASSERT_TRUE(signed_entity) << signed_entity.error().message;
    TempDir dir("pecd-hsm-out");
    write_file(dir.path() / "msg.eml", with_headers(*signed_entity));
    auto cli =
        run("openssl cms -verify -purpose smimesign -CAfile " + quote(test_pki() / "ca.crt") +
            " -in " + quote(dir.path() / "msg.eml") + " -out /dev/null");
    EXPECT_EQ(cli.status, 0) << cli.output;
}

TEST_F(Pkcs11Key, RefusesBadPinUriAndCertificate) {
    TempDir dir("pecd-pin");
    write_file(dir.path() / "wrong", "9999\n");
    auto wrong = load_pkcs11_key(token_->uri(), SoftHsmToken::module, dir.path() / "wrong", "");
    ASSERT_FALSE(wrong);
    EXPECT_NE(wrong.error().message.find("login"), std::string::npos) << wrong.error().message;

    EXPECT_FALSE(load_pkcs11_key(token_->uri() + "?pin-value=1234", SoftHsmToken::module,
                                 token_->pin_file(), ""));
    EXPECT_FALSE(load_pkcs11_key("pkcs11:token=pec-test;object=absent", SoftHsmToken::module,
                                 token_->pin_file(), ""));
    EXPECT_FALSE(load_pkcs11_key("pkcs11:token=no-such-token;object=provkey", SoftHsmToken::module,
                                 token_->pin_file(), ""));
    EXPECT_FALSE(load_pkcs11_key(token_->uri(), SoftHsmToken::module, dir.path() / "absent", ""));
    // The token key with another provider's certificate is a configuration error.
    auto mismatch = load_pkcs11_key(token_->uri(), SoftHsmToken::module, token_->pin_file(),
                                    test_pki() / "beta.crt");
    ASSERT_FALSE(mismatch);
    EXPECT_NE(mismatch.error().message.find("does not match"), std::string::npos);
}

TEST_F(Pkcs11Key, SharedBySeveralThreads) {
    auto key = load_pkcs11_key(token_->uri(), SoftHsmToken::module, token_->pin_file(), "");
    ASSERT_TRUE(key) << key.error().message;
    auto verifier = make_verifier();
    std::atomic<int> good{0}, bad{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 25; ++i) (sign_and_verify(**key, *verifier).ok() ? good : bad)++;
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(good.load(), 100);
    EXPECT_EQ(bad.load(), 0);
}

TEST_F(Pkcs11Key, ReopensTheTokenAfterFork) {
    auto key = load_pkcs11_key(token_->uri(), SoftHsmToken::module, token_->pin_file(), "");
    ASSERT_TRUE(key) << key.error().message;
    auto verifier = make_verifier();
    ASSERT_TRUE(sign_and_verify(**key, *verifier).ok());
    auto parent_handle = (*key)->private_key();
    ASSERT_TRUE(parent_handle);

    pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        // Exit codes: 0 ok, 2 handle not renewed, 3 signing/verifying failed.
        auto handle = (*key)->private_key();
        if (!handle || handle->get() == parent_handle->get()) ::_exit(2);
        for (int i = 0; i < 5; ++i)
            if (!sign_and_verify(**key, *verifier).ok()) ::_exit(3);
        ::_exit(0);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0);
    // The parent's sessions are untouched by the child.
    auto again = (*key)->private_key();
    ASSERT_TRUE(again);
    EXPECT_EQ(again->get(), parent_handle->get());
    EXPECT_TRUE(sign_and_verify(**key, *verifier).ok());
}
