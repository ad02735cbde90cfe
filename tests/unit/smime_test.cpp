#include "stages/pec/smime.hpp"

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include <set>
#include <thread>

#include "stages/pec/ossl.hpp"
#include "tests/support/crypto_support.hpp"

using namespace pecd::pec;
using namespace pecd::test;
namespace fs = std::filesystem;

namespace {

const fs::path kReal = fs::path(PECD_SHARED_DIR) / "fixtures/real";

std::shared_ptr<const SigningKey> pem_key(const std::string& name) {
    const auto& pki = test_pki();
    auto key = load_pem_key(pki / (name + ".crt"), pki / (name + ".key"), "");
    if (!key) throw std::runtime_error(key.error().message);
    return *key;
}

std::string sign_message(const std::string& name, const std::string& entity,
                         SignOptions options = {},
                         const std::string& from = "posta-certificata@pec.alpha.test") {
    auto signed_entity = make_entity_signer(pem_key(name), options)(entity);
    if (!signed_entity) throw std::runtime_error(signed_entity.error().message);
    return with_headers(*signed_entity, from);
}

TrustConfig trust(const std::vector<std::string>& crls = {"crl-empty.pem"}) {
    TrustConfig config;
    config.ca_files = {test_pki() / "ca.crt"};
    for (const auto& crl : crls) config.crl_files.push_back(test_pki() / crl);
    return config;
}

std::shared_ptr<SmimeVerifier> verifier(const TrustConfig& config) {
    auto v = SmimeVerifier::create(config);
    if (!v) throw std::runtime_error(v.error().message);
    return *v;
}

VerifyReport check(std::string_view message, const TrustConfig& config = trust(),
                   const IndexSnapshot* index = nullptr, const VerifyOptions& options = {}) {
    auto report = verify_smime(message, config, index, options);
    if (!report) throw std::runtime_error(report.error().message);
    return *report;
}

// SHA-1 fingerprint of a PEM certificate computed by the openssl CLI, lower-case hex.
std::string cli_sha1(const fs::path& pem) {
    auto r = run("openssl x509 -noout -fingerprint -sha1 -in " + quote(pem));
    std::string hex;
    for (char c : r.output.substr(r.output.find('=') + 1))
        if (std::isxdigit(static_cast<unsigned char>(c))) hex += static_cast<char>(std::tolower(c));
    return hex;
}

ProviderRecord record_for(const std::string& name, const std::string& cert_name,
                          std::vector<std::string> domains) {
    ProviderRecord record;
    record.name = name;
    record.dn = "providerName=" + name + ",o=postacert";
    record.cert_hashes = {cli_sha1(test_pki() / (cert_name + ".crt"))};
    record.certificates = {read_file(test_pki() / (cert_name + ".der"))};
    record.managed_domains = std::move(domains);
    record.mail_receipt = "posta-certificata@" + record.managed_domains.front();
    return record;
}

// Designated initialisers would trip -Wmissing-field-initializers (GCC 12).
VerifyOptions crypto_only() {
    VerifyOptions o;
    o.chain = ChainCheck::crypto_only;
    return o;
}
VerifyOptions at(std::chrono::system_clock::time_point t) {
    VerifyOptions o;
    o.at_time = t;
    return o;
}
VerifyOptions at_signing_time() {
    VerifyOptions o;
    o.at_signing_time = true;
    return o;
}
VerifyOptions from(std::string address) {
    VerifyOptions o;
    o.from_address = std::move(address);
    return o;
}
SignOptions style(SignatureProtocol protocol) {
    SignOptions o;
    o.protocol = protocol;
    return o;
}

bool all_crlf(std::string_view text) {
    for (size_t i = 0; i < text.size(); ++i)
        if (text[i] == '\n' && (i == 0 || text[i - 1] != '\r')) return false;
    return true;
}

}  // namespace

TEST(SmimeSign, OutputFollowsTheEntitySignerContract) {
    std::string entity = pec_entity();
    auto out = make_entity_signer(pem_key("alpha"))(entity);
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_TRUE(
        out->starts_with("Content-Type: multipart/signed; "
                         "protocol=\"application/pkcs7-signature\"; micalg=\"sha-256\"; "
                         "boundary="))
        << out->substr(0, 200);
    size_t first_eol = out->find("\r\n");
    EXPECT_EQ(out->substr(first_eol, 4), "\r\n\r\n");  // one header line, then the blank line
    EXPECT_EQ(out->find("MIME-Version"), std::string::npos);
    EXPECT_TRUE(all_crlf(*out)) << "bare LF in output";
    EXPECT_NE(out->find("\r\n" + entity), std::string::npos) << "entity not carried unchanged";
    EXPECT_NE(out->find("Content-Type: application/pkcs7-signature; name=\"smime.p7s\""),
              std::string::npos);
    EXPECT_TRUE(out->ends_with("--\r\n"));

    auto old =
        make_entity_signer(pem_key("alpha"), style(SignatureProtocol::x_pkcs7_signature))(entity);
    ASSERT_TRUE(old) << old.error().message;
    EXPECT_TRUE(
        old->starts_with("Content-Type: multipart/signed; "
                         "protocol=\"application/x-pkcs7-signature\"; micalg=\"sha-256\""));
    EXPECT_NE(old->find("Content-Type: application/x-pkcs7-signature; name=\"smime.p7s\""),
              std::string::npos);
    EXPECT_TRUE(all_crlf(*old));
}

TEST(SmimeSign, RoundTripBothProtocolStyles) {
    std::string expected_sha1 = cli_sha1(test_pki() / "alpha.crt");
    for (auto protocol :
         {SignatureProtocol::pkcs7_signature, SignatureProtocol::x_pkcs7_signature}) {
        auto message = sign_message("alpha", pec_entity(), style(protocol));
        auto report = check(message);
        EXPECT_TRUE(report.ok()) << to_string(report.failure) << ": " << report.reason;
        EXPECT_TRUE(report.chain_checked);
        EXPECT_EQ(report.digest_algorithm, "sha256");
        EXPECT_EQ(report.signer_cert_sha1, expected_sha1);
        EXPECT_EQ(report.signer_subject,
                  "C=IT, O=Gestore Alpha S.p.A., CN=Posta Certificata Gestore Alpha S.p.A.");
        EXPECT_EQ(report.signer_email, "posta-certificata@pec.alpha.test");
        ASSERT_TRUE(report.signing_time);
        auto skew = std::chrono::system_clock::now() - *report.signing_time;
        EXPECT_LT(std::chrono::abs(skew), std::chrono::minutes(2));
        EXPECT_EQ(report.protocol, protocol == SignatureProtocol::pkcs7_signature
                                       ? "application/pkcs7-signature"
                                       : "application/x-pkcs7-signature");
    }
}

TEST(SmimeSign, OpensslCliVerifiesAndRecoversTheEntity) {
    TempDir dir("pecd-smime");
    std::string entity = pec_entity();
    for (auto protocol :
         {SignatureProtocol::pkcs7_signature, SignatureProtocol::x_pkcs7_signature}) {
        write_file(dir.path() / "msg.eml", sign_message("alpha", entity, style(protocol)));
        auto r =
            run("openssl cms -verify -purpose smimesign -CAfile " + quote(test_pki() / "ca.crt") +
                " -in " + quote(dir.path() / "msg.eml") + " -out " + quote(dir.path() / "content"));
        EXPECT_EQ(r.status, 0) << r.output;
        EXPECT_NE(r.output.find("CMS Verification successful"), std::string::npos) << r.output;
        EXPECT_EQ(read_file(dir.path() / "content"), entity);
    }
    // And it notices tampering, so the check above means something.
    std::string bad = sign_message("alpha", entity);
    bad.replace(bad.find("Lorem"), 5, "LOREM");
    write_file(dir.path() / "bad.eml", bad);
    auto r = run("openssl cms -verify -CAfile " + quote(test_pki() / "ca.crt") + " -in " +
                 quote(dir.path() / "bad.eml") + " -out /dev/null");
    EXPECT_NE(r.status, 0) << r.output;
}

TEST(SmimeSign, GpgsmVerifies) {
    TempDir home("pecd-gnupg");
    fs::permissions(home.path(), fs::perms::owner_all, fs::perm_options::replace);
    std::string env = "GNUPGHOME=" + quote(home.path()) + " ";
    // gpgsm starts a gpg-agent for this GNUPGHOME: stop it however the test ends.
    struct AgentStopper {
        std::string env;
        ~AgentStopper() { run(env + "gpgconf --kill all"); }
    } stopper{env};
    // CRL and policy checks off: the test CA publishes no distribution point.
    write_file(home.path() / "gpgsm.conf", "disable-crl-checks\ndisable-policy-checks\n");
    auto imp = run(env + "gpgsm --batch --import " + quote(test_pki() / "ca.crt"));
    ASSERT_EQ(imp.status, 0) << imp.output;
    // Mark the root as trusted for S/MIME (gpg-agent's trustlist: fingerprint + "S").
    auto fpr = run(env + "gpgsm --with-colons --list-keys");
    size_t at = fpr.output.find("\nfpr:");
    ASSERT_NE(at, std::string::npos) << fpr.output;
    std::string line = fpr.output.substr(at + 1, fpr.output.find('\n', at + 1) - at - 1);
    std::string fingerprint = line.substr(line.rfind(':', line.size() - 2) + 1);
    fingerprint.erase(fingerprint.find_last_not_of(':') + 1);
    write_file(home.path() / "trustlist.txt", fingerprint + " S\n");

    std::string entity = pec_entity();
    for (auto protocol :
         {SignatureProtocol::pkcs7_signature, SignatureProtocol::x_pkcs7_signature}) {
        auto signed_entity = make_entity_signer(pem_key("alpha"), style(protocol))(entity);
        ASSERT_TRUE(signed_entity);
        // gpgsm takes the detached signature and the signed data as two files.
        size_t p7s = signed_entity->find("filename=\"smime.p7s\"\r\n\r\n");
        ASSERT_NE(p7s, std::string::npos);
        size_t b64 = p7s + std::string("filename=\"smime.p7s\"\r\n\r\n").size();
        write_file(home.path() / "sig.b64",
                   signed_entity->substr(b64, signed_entity->find("\r\n\r\n", b64) - b64));
        ASSERT_EQ(run("openssl base64 -d -in " + quote(home.path() / "sig.b64") + " -out " +
                      quote(home.path() / "sig.der"))
                      .status,
                  0);
        write_file(home.path() / "data", entity);
        auto good = run(env + "gpgsm --batch --status-fd 1 --verify " +
                        quote(home.path() / "sig.der") + " " + quote(home.path() / "data"));
        EXPECT_EQ(good.status, 0) << good.output;
        EXPECT_NE(good.output.find("[GNUPG:] GOODSIG"), std::string::npos) << good.output;
        EXPECT_NE(good.output.find("[GNUPG:] TRUST_FULLY"), std::string::npos) << good.output;

        std::string tampered = entity;
        tampered.replace(tampered.find("Lorem"), 5, "LOREM");
        write_file(home.path() / "data", tampered);
        auto bad = run(env + "gpgsm --batch --status-fd 1 --verify " +
                       quote(home.path() / "sig.der") + " " + quote(home.path() / "data"));
        EXPECT_NE(bad.output.find("[GNUPG:] BADSIG"), std::string::npos) << bad.output;
    }
}

TEST(SmimeVerify, LfOnlyCopyStillVerifies) {
    std::string message = sign_message("alpha", pec_entity());
    std::string lf;
    for (char c : message)
        if (c != '\r') lf += c;
    auto report = check(lf);
    EXPECT_TRUE(report.ok()) << report.reason;
}

TEST(SmimeVerify, EachFailureHasItsOwnReason) {
    std::string entity = pec_entity();
    {
        std::string tampered = sign_message("alpha", entity);
        tampered.replace(tampered.find("accettato"), 9, "rifiutato");
        auto r = check(tampered);
        EXPECT_EQ(r.failure, VerifyFailure::bad_signature) << r.reason;
        EXPECT_FALSE(r.signer_cert_sha1.empty());  // the signer is still reported
    }
    {
        auto r = check(sign_message("foreign", entity));
        EXPECT_EQ(r.failure, VerifyFailure::untrusted_chain) << r.reason;
        // Crypto-only mode accepts it: the signature itself is fine.
        EXPECT_TRUE(check(sign_message("foreign", entity), trust(), nullptr, crypto_only()).ok());
    }
    {
        std::string expired = sign_message("expired", entity);
        auto r = check(expired);
        EXPECT_EQ(r.failure, VerifyFailure::expired) << r.reason;
        // At an instant inside its validity (2020-06-01) the same message passes.
        auto inside = std::chrono::system_clock::from_time_t(1590969600);
        // (CRL check off: the test CRLs were issued now, so they are "not yet valid" in 2020.)
        TrustConfig no_crl = trust({});
        no_crl.check_crl = false;
        auto within = check(expired, no_crl, nullptr, at(inside));
        EXPECT_TRUE(within.ok()) << within.reason;
    }
    {
        std::string revoked = sign_message("revoked", entity);
        auto r = check(revoked, trust({"crl-revoked.pem"}));
        EXPECT_EQ(r.failure, VerifyFailure::revoked) << r.reason;
        EXPECT_TRUE(check(revoked, trust({"crl-empty.pem"})).ok());
        auto no_crl = check(revoked, trust({}));
        EXPECT_EQ(no_crl.failure, VerifyFailure::crl_unavailable) << no_crl.reason;
        TrustConfig lax = trust({});
        lax.check_crl = false;
        EXPECT_TRUE(check(revoked, lax).ok());
    }
    {
        auto r = check(with_headers(entity));
        EXPECT_EQ(r.failure, VerifyFailure::no_signature) << r.reason;
        auto anon = check(read_file(kReal / "anon-accettazione.eml"));
        EXPECT_EQ(anon.failure, VerifyFailure::no_signature) << anon.reason;
    }
    std::set<VerifyFailure> distinct = {
        VerifyFailure::bad_signature, VerifyFailure::untrusted_chain, VerifyFailure::expired,
        VerifyFailure::revoked,       VerifyFailure::crl_unavailable, VerifyFailure::no_signature};
    std::set<std::string_view> names;
    for (auto f : distinct) names.insert(to_string(f));
    EXPECT_EQ(names.size(), distinct.size());
}

TEST(SmimeVerify, ProvidersIndexAndFromDomain) {
    std::string message = sign_message("alpha", pec_entity());
    IndexSnapshot index;
    index.providers = {record_for("Gestore Alpha", "alpha", {"pec.alpha.test"}),
                       record_for("Gestore Beta", "beta", {"pec.beta.test"})};
    auto ok = check(message, trust(), &index);
    EXPECT_TRUE(ok.ok()) << ok.reason;
    EXPECT_EQ(ok.provider_name, "Gestore Alpha");
    EXPECT_EQ(ok.from_domain, "pec.alpha.test");

    // Hash comparison is case-insensitive (DECISIONS #4).
    IndexSnapshot upper = index;
    for (char& c : upper.providers[0].cert_hashes[0]) c = static_cast<char>(std::toupper(c));
    EXPECT_TRUE(check(message, trust(), &upper).ok());

    IndexSnapshot only_beta;
    only_beta.providers = {index.providers[1]};
    auto missing = check(message, trust(), &only_beta);
    EXPECT_EQ(missing.failure, VerifyFailure::not_in_index) << missing.reason;

    IndexSnapshot mismatch = index;
    mismatch.providers[0].certificates = {read_file(test_pki() / "beta.der")};
    auto differ = check(message, trust(), &mismatch);
    EXPECT_EQ(differ.failure, VerifyFailure::cert_mismatch) << differ.reason;

    auto foreign_from =
        check(sign_message("alpha", pec_entity(), {}, "posta-certificata@pec.beta.test"), trust(),
              &index);
    EXPECT_EQ(foreign_from.failure, VerifyFailure::domain_not_managed) << foreign_from.reason;
    EXPECT_EQ(foreign_from.from_domain, "pec.beta.test");
    // The caller may supply the From address it already parsed.
    auto overridden = check(message, trust(), &index, from("x@PEC.BETA.TEST"));
    EXPECT_EQ(overridden.failure, VerifyFailure::domain_not_managed);
}

struct RealFixture {
    const char* file;
    const char* subject_part;
    const char* signing_time;  // from the fixtures README
};

TEST(SmimeVerify, RealProviderMessagesVerifyCryptographically) {
    TempDir dir("pecd-real");
    for (RealFixture fx :
         {RealFixture{"aruba-accettazione-2018.eml",
                      "O=Aruba PEC S.p.A., "
                      "CN=Posta Certificata ARUBA PEC",
                      "2018-11-13 15:39:26"},
          RealFixture{"aruba-avvenuta-consegna-2018.eml",
                      "O=Aruba PEC S.p.A., CN=Posta Certificata ARUBA PEC", "2018-11-13 15:39:27"},
          RealFixture{"sogei-busta-breve-2018.eml", "O=Sogei S.p.A., CN=Posta Certificata Sogei",
                      "2018-12-08 11:26:18"}}) {
        SCOPED_TRACE(fx.file);
        std::string raw = read_file(kReal / fx.file);
        auto r = check(raw, {}, nullptr, crypto_only());
        ASSERT_TRUE(r.ok()) << to_string(r.failure) << ": " << r.reason;
        EXPECT_FALSE(r.chain_checked);
        EXPECT_NE(r.signer_subject.find(fx.subject_part), std::string::npos) << r.signer_subject;
        EXPECT_EQ(r.digest_algorithm, "sha1");
        EXPECT_EQ(r.protocol, "application/x-pkcs7-signature");
        ASSERT_TRUE(r.signing_time);
        std::time_t t = std::chrono::system_clock::to_time_t(*r.signing_time);
        char buf[32];
        std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
        EXPECT_STREQ(buf, fx.signing_time);

        // The signer hash, cross-checked with the openssl CLI's view of the same p7s.
        auto cli = run("openssl cms -verify -noverify -in " + quote(kReal / fx.file) +
                       " -out /dev/null -signer " + quote(dir.path() / "signer.pem"));
        ASSERT_EQ(cli.status, 0) << cli.output;
        EXPECT_EQ(r.signer_cert_sha1, cli_sha1(dir.path() / "signer.pem"));

        // Full chain mode: the AgID root is not configured, so the chain is untrusted.
        auto chained = check(raw, trust(), nullptr, at_signing_time());
        EXPECT_EQ(chained.failure, VerifyFailure::untrusted_chain) << chained.reason;

        // One changed byte in the signed part breaks it.
        std::string tampered = raw;
        size_t pos = tampered.find("daticert.xml");
        ASSERT_NE(pos, std::string::npos);
        tampered[pos] = 'D';
        EXPECT_EQ(check(tampered, {}, nullptr, crypto_only()).failure,
                  VerifyFailure::bad_signature);
    }
}

TEST(SmimeVerify, ChainResultIsCachedAndDroppedOnReload) {
    std::string revoked = sign_message("revoked", pec_entity());
    auto v = verifier(trust({"crl-empty.pem"}));
    for (int i = 0; i < 3; ++i) {
        auto r = v->verify(revoked, nullptr);
        ASSERT_TRUE(r);
        EXPECT_TRUE(r->ok()) << r->reason;
    }
    auto stats = v->cache_stats();
    EXPECT_EQ(stats.entries, 1u);
    EXPECT_EQ(stats.misses, 1u);
    EXPECT_EQ(stats.hits, 2u);

    // The CA publishes a new CRL: the cached "good" answer must not survive the reload.
    ASSERT_TRUE(v->reload(trust({"crl-revoked.pem"})));
    EXPECT_EQ(v->cache_stats().entries, 0u);
    auto r = v->verify(revoked, nullptr);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->failure, VerifyFailure::revoked) << r->reason;
}

TEST(SmimeSign, FileAndBioEntryPointsStream) {
    TempDir dir("pecd-smime-file");
    std::string entity = pec_entity(256 * 1024);
    write_file(dir.path() / "entity", entity);
    auto key = pem_key("alpha");
    ASSERT_TRUE(sign_entity_file(*key, {}, dir.path() / "entity", dir.path() / "signed"));
    std::string signed_entity = read_file(dir.path() / "signed");
    EXPECT_TRUE(all_crlf(signed_entity));
    EXPECT_NE(signed_entity.find("\r\n" + entity), std::string::npos);
    write_file(dir.path() / "msg.eml", with_headers(signed_entity));
    auto v = verifier(trust());
    auto r = v->verify_file(dir.path() / "msg.eml", nullptr);
    ASSERT_TRUE(r) << r.error().message;
    EXPECT_TRUE(r->ok()) << r->reason;

    // BIO entry point: same shape, verifies.
    ossl::Bio in(BIO_new_mem_buf(entity.data(), static_cast<int>(entity.size())));
    ossl::Bio out(BIO_new(BIO_s_mem()));
    ASSERT_TRUE(in && out);
    ASSERT_TRUE(sign_entity_bio(*key, {}, in.get(), out.get()));
    char* data = nullptr;
    long len = BIO_get_mem_data(out.get(), &data);
    std::string from_bio(data, static_cast<size_t>(len));
    EXPECT_TRUE(from_bio.starts_with("Content-Type: multipart/signed; "));
    EXPECT_TRUE(all_crlf(from_bio));
    auto bio_report = v->verify(with_headers(from_bio), nullptr);
    ASSERT_TRUE(bio_report);
    EXPECT_TRUE(bio_report->ok()) << bio_report->reason;

    // Missing input: an error value, and no partial output left behind.
    auto missing = sign_entity_file(*key, {}, dir.path() / "nope", dir.path() / "out");
    EXPECT_FALSE(missing);
    EXPECT_FALSE(fs::exists(dir.path() / "out"));
}

TEST(SmimeVerify, LargeMappedFileReleasesPagesAndStillCatchesTampering) {
    // Big enough for verify_file to hand pages back while hashing (every 8 MB).
    TempDir dir("pecd-smime-big");
    std::string message = sign_message("alpha", pec_entity(24 * 1024 * 1024));
    write_file(dir.path() / "msg.eml", message);
    auto v = verifier(trust());
    auto good = v->verify_file(dir.path() / "msg.eml", nullptr);
    ASSERT_TRUE(good) << good.error().message;
    EXPECT_TRUE(good->ok()) << good->reason;
    // A change near the end of the content, after pages before it were released.
    size_t pos = message.rfind("Lorem");
    ASSERT_GT(pos, 20u * 1024 * 1024);
    message[pos] = 'l';
    write_file(dir.path() / "msg.eml", message);
    auto bad = v->verify_file(dir.path() / "msg.eml", nullptr);
    ASSERT_TRUE(bad);
    EXPECT_EQ(bad->failure, VerifyFailure::bad_signature);
}

// The verifier keeps the certificates the signatures carry decoded: each message must still be
// judged by the certificate it carries itself.
TEST(SmimeVerify, KeptCertificatesNeverStandInForTheCarriedOnes) {
    auto v = verifier(trust({"crl-revoked.pem"}));
    const std::string alpha_sha1 = cli_sha1(test_pki() / "alpha.crt");
    const std::string beta_sha1 = cli_sha1(test_pki() / "beta.crt");
    for (int round = 0; round < 2; ++round) {
        auto alpha = v->verify(sign_message("alpha", pec_entity()), nullptr);
        ASSERT_TRUE(alpha);
        EXPECT_TRUE(alpha->ok()) << alpha->reason;
        EXPECT_EQ(alpha->signer_cert_sha1, alpha_sha1);
        auto beta = v->verify(sign_message("beta", pec_entity()), nullptr);
        ASSERT_TRUE(beta);
        EXPECT_TRUE(beta->ok()) << beta->reason;
        EXPECT_EQ(beta->signer_cert_sha1, beta_sha1);
        auto revoked = v->verify(sign_message("revoked", pec_entity()), nullptr);
        ASSERT_TRUE(revoked);
        EXPECT_EQ(revoked->failure, VerifyFailure::revoked) << revoked->reason;
    }
}

TEST(SmimeVerify, OneVerifierSharedByThreads) {
    std::string good = sign_message("alpha", pec_entity());
    std::string bad = good;
    bad.replace(bad.find("accettato"), 9, "rifiutato");
    auto v = verifier(trust());
    std::atomic<int> right{0}, wrong{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < 50; ++i) {
                auto ok = v->verify(good, nullptr);
                auto ko = v->verify(bad, nullptr);
                bool as_expected =
                    ok && ok->ok() && ko && ko->failure == VerifyFailure::bad_signature;
                (as_expected ? right : wrong)++;
            }
        });
    for (auto& t : threads) t.join();
    EXPECT_EQ(right.load(), 200);
    EXPECT_EQ(wrong.load(), 0);
    auto stats = v->cache_stats();
    EXPECT_EQ(stats.entries, 1u);
    EXPECT_EQ(stats.hits + stats.misses, 200u);  // bad signatures never reach the chain check
}

TEST(SmimeSign, LfOnlyEntityIsCanonicalisedBeforeSigning) {
    // Callers should pass CRLF; an LF-only entity must still give a valid, all-CRLF message.
    std::string lf;
    for (char c : pec_entity())
        if (c != '\r') lf += c;
    auto out = make_entity_signer(pem_key("alpha"))(lf);
    ASSERT_TRUE(out) << out.error().message;
    EXPECT_TRUE(all_crlf(*out));
    EXPECT_NE(out->find("\r\n" + pec_entity()), std::string::npos);  // carried as CRLF
    TempDir dir("pecd-smime-lf");
    write_file(dir.path() / "msg.eml", with_headers(*out));
    auto r = run("openssl cms -verify -CAfile " + quote(test_pki() / "ca.crt") + " -in " +
                 quote(dir.path() / "msg.eml") + " -out /dev/null");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_TRUE(check(with_headers(*out)).ok());
}
