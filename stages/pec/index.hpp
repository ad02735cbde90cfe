// The providers index (IGPEC, pec-rules.md §7, DECISIONS #14): who is a PEC provider, with which
// certificates, service mailbox and domains. Lookups are served from an in-memory snapshot; the
// sources (an LDIF file, or an LDAP server through libldap with a local cache file) only load it.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::pec {

struct ProviderRecord {
    std::string dn;
    std::string name;                       // providerName
    std::string unit;                       // providerUnit (secondary environments), may be empty
    std::vector<std::string> cert_hashes;   // providerCertificateHash, lower-case hex SHA-1
    std::vector<std::string> certificates;  // providerCertificate;binary, DER bytes
    std::string mail_receipt;               // mailReceipt (service mailbox)
    std::vector<std::string> managed_domains;  // managedDomains, lower-case
};

struct IndexSnapshot {
    std::vector<ProviderRecord> providers;
    std::chrono::system_clock::time_point loaded_at{};
    std::string source;  // "ldif:/path" or "ldap://host/..." for messages and `pecq`
    // A signed LDIF's CMS signingTime, when it has one: how new the index is.
    std::optional<std::chrono::system_clock::time_point> signed_at;

    // Case-insensitive (DECISIONS #4 / pec-rules.md §10.6).
    const ProviderRecord* find_by_cert_hash(std::string_view sha1_hex) const;
    const ProviderRecord* find_by_domain(std::string_view domain) const;
    bool is_certified_address(std::string_view address) const;  // domain in some managedDomains
};

struct TrustConfig;  // smime.hpp

// How a signed LDIF (pec-rules.md §7: the LDIF inside a CMS SignedData, DER or PEM, a `.p7m`)
// is trusted. Its signer must chain to `anchors` (validity, purpose, CRL) and be either one of
// `signers` (SHA-1 of the certificates allowed to sign a file of any number of providers: the
// directory's own signer) or, when `signers` is empty, a certificate listed by the one provider
// record the file holds (a provider's own record). A file whose name ends in `.p7m`, or any file
// once `signers` is set, must be signed.
struct LdifTrust {
    const TrustConfig* anchors = nullptr;
    std::vector<std::string> signers;  // lower-case hex SHA-1
};

// Parses RFC 2849 LDIF (base64 `::` values, continuation lines, `;binary` options) holding
// objectClass=provider entries, plain or signed (LdifTrust). A signature that does not hold is
// ErrorKind::corrupt, or transient when the signer's CRL is missing or stale (refresh the CRL
// and try again); a signed file without anchors is ErrorKind::config.
Result<IndexSnapshot> load_ldif(const std::filesystem::path& path, const LdifTrust& trust = {});
// The same for bytes in hand (a download), named `path` (its extension counts, as above).
Result<IndexSnapshot> read_ldif(std::string_view bytes, const std::filesystem::path& path,
                                const LdifTrust& trust = {});
Result<IndexSnapshot> parse_ldif(std::string_view text, std::string source = "ldif:<string>");

// One provider's record as LDIF (version line, then the entry), as the provider publishes it at
// its LDIFLocationURL (pec-rules.md §7), signed with sign_data_der. `ldif_url` empty: no
// LDIFLocationURL attribute.
std::string provider_record_ldif(const ProviderRecord& record, std::string_view ldif_url = {});

struct LdapIndexOptions {
    std::string uri;  // ldap://127.0.0.1:3890
    std::string base_dn = "o=postacert";
    std::string bind_dn;  // empty = anonymous
    std::string bind_password;
    std::chrono::milliseconds timeout{5000};
    std::filesystem::path cache_file;  // LDIF copy of the last good load; used when LDAP is down
};
Result<IndexSnapshot> load_ldap(const LdapIndexOptions& options);

// Thread-safe holder: stages read the current snapshot while a refresh swaps in a new one.
class ProvidersIndex {
  public:
    explicit ProvidersIndex(IndexSnapshot initial)
        : current_(std::make_shared<const IndexSnapshot>(std::move(initial))) {}
    std::shared_ptr<const IndexSnapshot> snapshot() const {
        std::lock_guard lock(mutex_);
        return current_;
    }
    void replace(IndexSnapshot next) {
        auto fresh = std::make_shared<const IndexSnapshot>(std::move(next));
        std::lock_guard lock(mutex_);
        current_ = std::move(fresh);
    }

  private:
    mutable std::mutex mutex_;
    std::shared_ptr<const IndexSnapshot> current_;
};

}  // namespace pecd::pec
