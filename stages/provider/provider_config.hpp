// The provider's configuration ([provider], [keys], [trust], [index], [limits], [policy],
// [mailbox], [outbound], [antivirus] of pecd.conf) and the Provider built from it once: key and
// signer, verifier, providers index, message builder, identificativo generator and services.
// SIGHUP builds a new Provider and swaps it in (ProviderHandle); a stage function takes one
// snapshot per message, so a message is handled by one configuration from start to end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "stages/common/config.hpp"
#include "stages/pec/builders.hpp"
#include "stages/pec/identificativo.hpp"
#include "stages/pec/index.hpp"
#include "stages/pec/smime.hpp"
#include "stages/provider/services.hpp"

namespace pecd::provider {

namespace fs = std::filesystem;

class Timeouts;  // timeouts.hpp: the 12 h / 24 h timers ([scheduler]), null without them

// What happens to ordinary (non-PEC) or invalid mail for a mailbox (DECISIONS #12).
enum class OrdinaryPolicy { anomaly, reject };

struct ProviderSettings {
    // [provider]
    std::string name;                  // daticert gestore-emittente
    std::string mail_domain;           // posta-certificata@<mail_domain>
    std::vector<std::string> domains;  // managed mailbox domains, lower case
    fs::path templates;
    fs::path virus_store;
    std::string node;  // identificativo node part; empty = host name

    // [keys]: PEM files or a PKCS#11 token
    fs::path cert, key, chain;
    std::string pkcs11_uri;
    fs::path pkcs11_module, pin_file;
    pec::SignatureProtocol protocol = pec::SignatureProtocol::pkcs7_signature;

    pec::TrustConfig trust;             // [trust]
    std::vector<std::string> crl_urls;  // [trust] crl_urls: where crl_files are refreshed from

    // [index]
    enum class IndexSource { ldif, ldap } index_source = IndexSource::ldif;
    fs::path ldif;
    std::vector<std::string> ldif_signers;  // [index] ldif_signer: SHA-1 of each certificate
    // [index] url: where `pecd refresh-index` downloads the ldif file from (https://), checking
    // the server against url_ca_file (empty: the system's store) and, unless url_client_auth =
    // no, presenting url_client_cert (PEM, the leaf first, then its intermediates) with
    // url_client_key, or without them the [keys] certificate.
    std::string index_url;
    fs::path index_url_ca;
    bool index_url_client_auth = true;
    fs::path index_url_client_cert, index_url_client_key;
    pec::LdapIndexOptions ldap;

    uint64_t max_size_times_recipients = 30ull * 1024 * 1024;  // [limits]

    OrdinaryPolicy ordinary_mail = OrdinaryPolicy::anomaly;          // [policy]
    std::map<std::string, OrdinaryPolicy> ordinary_mail_per_domain;  // ordinary_mail.<domain>

    // Services (real_services.hpp): [mailbox] type, [outbound] type, [antivirus] type; the
    // keys of the real adapters (lmtp, relay, clamd, timeouts) are read by their factories.
    std::string mailbox_type = "maildir";  // maildir | lmtp
    fs::path maildir_root;                 // maildir
    std::string outbound_type = "outbox";  // outbox | smtp
    fs::path outbox;                       // outbox
    std::string antivirus = "none";        // none | eicar | clamd

    bool manages(std::string_view domain) const;
    OrdinaryPolicy policy_for(std::string_view domain) const;
};

// True when pecd.conf has a [provider] section: the stages run the PEC logic. Without it they
// pass messages along unchanged (the spool machinery alone, as the crash harness runs it).
bool provider_configured(const Config& config);

// Every problem of the provider sections, each with its line: values first, then whether the
// key, templates, trust anchors and index actually load. For `pecd check-config`.
std::vector<ConfigProblem> check(const Config& config);

// The settings alone; the first problem as an ErrorKind::config error naming file and line.
Result<ProviderSettings> read_settings(const Config& config);

// Every message we sign has From: posta-certificata@<mail_domain>, which must be an email
// address of `cert`'s subjectAltName (pec-rules.md §2.2, RFC 6109 §2.1).
Status check_service_address(X509* cert, const std::string& mail_domain);

// The provider's signing key of [keys]: PEM files or a PKCS#11 token.
Result<std::shared_ptr<const pec::SigningKey>> load_signing_key(const ProviderSettings& s);

// Who `pecd refresh-index` says it is to the directory server: [index] url_client_cert and
// url_client_key (the certificate file holds the leaf first, then its intermediates), or without
// them the [keys] key and chain. ErrorKind::config when they do not load or do not match.
struct TlsClientIdentity {
    std::shared_ptr<const pec::SigningKey> key;  // keeps the certificate
    std::shared_ptr<EVP_PKEY> private_key;       // for this use (a PKCS#11 key stays open)
    pec::ossl::X509Stack chain;                  // sent after the leaf
};
Result<TlsClientIdentity> load_index_client_identity(const ProviderSettings& s);

class Provider {
  public:
    // Loads everything; `services` replaces the embedded ones built from the configuration
    // (tests, or the real transport adapters).
    static Result<std::shared_ptr<const Provider>> create(
        const Config& config, std::optional<ProviderServices> services = std::nullopt);

    const ProviderSettings& settings() const { return settings_; }
    const pec::ProviderIdentity& identity() const { return identity_; }
    const pec::MessageBuilder& builder() const { return *builder_; }
    const pec::SmimeVerifier& verifier() const { return *verifier_; }
    std::shared_ptr<const pec::IndexSnapshot> index() const { return index_->snapshot(); }
    pec::IdentificativoGenerator& ids() const { return *ids_; }
    const ProviderServices& services() const { return services_; }
    const Timeouts* timeouts() const { return timeouts_.get(); }

    // An address whose domain is one of our managed mailbox domains.
    bool is_local(std::string_view address) const;

  private:
    Provider() = default;
    ProviderSettings settings_;
    pec::ProviderIdentity identity_;
    std::shared_ptr<const pec::SigningKey> key_;
    std::shared_ptr<pec::SmimeVerifier> verifier_;
    std::shared_ptr<pec::ProvidersIndex> index_;
    std::shared_ptr<pec::IdentificativoGenerator> ids_;
    std::unique_ptr<pec::MessageBuilder> builder_;
    ProviderServices services_;
    std::shared_ptr<Timeouts> timeouts_;
};

// The current Provider of a process. reload() builds a new one first and swaps only on
// success, so a bad edit of pecd.conf leaves the running configuration in place.
class ProviderHandle {
  public:
    explicit ProviderHandle(std::shared_ptr<const Provider> initial)
        : current_(std::move(initial)) {}
    std::shared_ptr<const Provider> current() const {
        std::lock_guard lock(mutex_);
        return current_;
    }
    void replace(std::shared_ptr<const Provider> next) {
        std::lock_guard lock(mutex_);
        current_ = std::move(next);
    }
    Status reload(const Config& config, std::optional<ProviderServices> services = std::nullopt);

  private:
    mutable std::mutex mutex_;
    std::shared_ptr<const Provider> current_;
};

// Lower-case domain part of an address ("" when there is none).
std::string domain_of(std::string_view address);
std::string lower(std::string_view text);

}  // namespace pecd::provider
