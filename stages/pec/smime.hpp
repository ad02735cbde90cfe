// S/MIME v3 detached signatures for PEC system messages (pec-rules.md §6, DECISIONS #3, #4):
// signing through OpenSSL CMS with a SigningKey, and verification of received messages
// (signature, chain/validity/CRL against configured anchors, providers index, From domain).
#pragma once

#include <openssl/bio.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/pec/index.hpp"
#include "stages/pec/keys.hpp"
#include "stages/pec/signing.hpp"

namespace pecd::pec {

// ---------------------------------------------------------------------------------- signing

enum class SignatureProtocol {
    pkcs7_signature,    // protocol="application/pkcs7-signature" (default, DECISIONS #3)
    x_pkcs7_signature,  // protocol="application/x-pkcs7-signature" (Aruba, Namirial, Sogei)
};

struct SignOptions {
    SignatureProtocol protocol = SignatureProtocol::pkcs7_signature;
    bool include_chain = true;  // add the SigningKey's extra chain certificates to the CMS
};

// The EntitySigner of signing.hpp: CMS detached, SHA-256, signer certificate included, micalg
// "sha-256", output all CRLF (the smime.p7s base64 lines included).
EntitySigner make_entity_signer(std::shared_ptr<const SigningKey> key, SignOptions options = {});

// Same output as the EntitySigner.
Result<std::string> sign_entity(const SigningKey& key, const SignOptions& options,
                                std::string_view entity);

// Streaming: reads the entity from `in` once and writes the multipart/signed entity to `out`;
// memory use does not grow with the entity size.
Status sign_entity_bio(const SigningKey& key, const SignOptions& options, BIO* in, BIO* out);
Status sign_entity_file(const SigningKey& key, const SignOptions& options,
                        const std::filesystem::path& in, const std::filesystem::path& out);

// ----------------------------------------------------------------------------- verification

enum class VerifyFailure {
    none,
    no_signature,        // not multipart/signed, or no/unreadable smime.p7s part
    bad_signature,       // digest or signature does not match (tampered content)
    untrusted_chain,     // signer does not chain to a configured trust anchor
    bad_certificate,     // chains, but not usable for S/MIME signing (purpose, extensions)
    expired,             // signer or chain certificate outside its validity at the check time
    revoked,             // listed in a configured CRL
    crl_unavailable,     // CRL check required but no valid CRL for the issuer
    not_in_index,        // SHA-1 of the signer certificate not in the providers index
    cert_mismatch,       // hash found, but the index record does not hold this certificate
    domain_not_managed,  // From domain not in that provider's managedDomains
};
std::string_view to_string(VerifyFailure failure);  // stable snake-case name

struct VerifyReport {
    VerifyFailure failure = VerifyFailure::none;
    std::string reason;  // human-readable detail for logs and quarantine
    bool ok() const { return failure == VerifyFailure::none; }

    // Filled as far as the message allowed (empty when there is no readable signature).
    std::string signer_subject;    // "C=IT, O=..., CN=..."
    std::string signer_email;      // first SAN rfc822Name
    std::string signer_cert_sha1;  // lower-case hex SHA-1 of the DER certificate
    std::string digest_algorithm;  // "sha1", "sha256", ...
    std::string protocol;          // protocol= of the multipart/signed header
    std::optional<std::chrono::system_clock::time_point> signing_time;
    bool chain_checked = false;  // false in crypto-only mode
    std::string provider_name;   // index record that matched, if an index was given
    std::string from_domain;
};

struct TrustConfig {
    std::vector<std::filesystem::path> ca_files;   // PEM trust anchors (bundles allowed)
    std::vector<std::filesystem::path> ca_dirs;    // OpenSSL hashed directories
    std::vector<std::filesystem::path> crl_files;  // PEM or DER CRLs
    bool check_crl = true;                         // signer's CRL required (crl_unavailable)
};

enum class ChainCheck {
    full,         // chain, validity, purpose and CRL against TrustConfig
    crypto_only,  // like `openssl cms -verify -noverify`: digest + signature only
};

struct VerifyOptions {
    ChainCheck chain = ChainCheck::full;
    // Check validity/CRLs at this instant instead of now (e.g. archived messages).
    std::optional<std::chrono::system_clock::time_point> at_time;
    bool at_signing_time = false;  // use the CMS signingTime attribute as at_time
    // The From address to check against managedDomains; empty = parse the message's From.
    std::string from_address;
};

struct SignedContent {
    std::string content;
    VerifyReport report;
    std::string signer_der;  // the signer's certificate, DER (when the report is ok)
};

// Holds the trust store and a cache of chain-validation results per signer certificate (keyed
// by the certificate SHA-1 plus the extra certificates carried in the CMS). Thread-safe.
class SmimeVerifier {
  public:
    static Result<std::shared_ptr<SmimeVerifier>> create(TrustConfig config);
    ~SmimeVerifier();

    // Re-reads anchors and CRLs and drops every cached chain result.
    Status reload();
    // Same, with a new configuration.
    Status reload(TrustConfig config);

    // `raw_message`: the whole message (headers and body), CRLF or LF-only. `index` may be
    // null: then the index and From-domain checks are skipped. Err only for operational faults.
    Result<VerifyReport> verify(std::string_view raw_message, const IndexSnapshot* index,
                                const VerifyOptions& options = {}) const;
    Result<VerifyReport> verify_file(const std::filesystem::path& path, const IndexSnapshot* index,
                                     const VerifyOptions& options = {}) const;

    // The content of an opaque CMS SignedData (DER, or PEM "PKCS7"/"CMS"): the providers index
    // as distributed, LDIF in a `.p7m` (pec-rules.md §7). Checked like a message's signature:
    // digest and signature, then the signer's chain, validity, purpose and CRL (no index, no
    // From). `report.ok()` false: no content, and the report says why. Err only for operational
    // faults.
    Result<SignedContent> open_signed_data(std::string_view bytes,
                                           const VerifyOptions& options = {}) const;

    struct CacheStats {
        std::size_t entries = 0;
        std::size_t hits = 0;
        std::size_t misses = 0;
    };
    CacheStats cache_stats() const;

    struct State;  // smime.cpp

  private:
    SmimeVerifier() = default;
    std::unique_ptr<State> state_;
};

// One-shot convenience (builds a verifier: no cache across calls).
Result<VerifyReport> verify_smime(std::string_view raw_message, const TrustConfig& trust,
                                  const IndexSnapshot* index, const VerifyOptions& options = {});

// ------------------------------------------------------------------- signed data (.p7m)

// Whether `bytes` look like a CMS structure (DER, or PEM "PKCS7"/"CMS") rather than text.
bool looks_like_signed_data(std::string_view bytes);

// `content` in an opaque CMS SignedData, DER: SHA-256, the signer certificate and chain
// included, the content encapsulated byte for byte. How a provider signs its IGPEC record.
Result<std::string> sign_data_der(const SigningKey& key, std::string_view content);

// One-shot SmimeVerifier::open_signed_data.
Result<SignedContent> open_signed_data(std::string_view bytes, const TrustConfig& trust,
                                       const VerifyOptions& options = {});

}  // namespace pecd::pec
