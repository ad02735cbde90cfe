#include "stages/provider/refresh.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <signal.h>
#include <sys/file.h>

#include <algorithm>
#include <memory>
#include <set>

#include "spool-layout/durable.hpp"
#include "stages/common/http.hpp"
#include "stages/pec/index.hpp"
#include "stages/pec/keys.hpp"
#include "stages/pec/smime.hpp"
#include "stages/provider/provider_config.hpp"

namespace pecd::provider {
namespace {

struct CrlFree {
    void operator()(X509_CRL* c) const { X509_CRL_free(c); }
};
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

Crl parse_crl(std::string_view bytes) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())), BIO_free);
    if (!bio) return nullptr;
    Crl crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr));
    if (crl) return crl;
    ERR_clear_error();
    const unsigned char* p = reinterpret_cast<const unsigned char*>(bytes.data());
    crl.reset(d2i_X509_CRL(nullptr, &p, static_cast<long>(bytes.size())));
    ERR_clear_error();
    return crl;
}

// True when a certificate of `anchors_pem` (a PEM bundle) is the CRL's issuer and signed it.
bool signed_by_anchor(X509_CRL* crl, const std::string& anchors_pem) {
    std::unique_ptr<BIO, decltype(&BIO_free)> bio(
        BIO_new_mem_buf(anchors_pem.data(), static_cast<int>(anchors_pem.size())), BIO_free);
    while (bio) {
        std::unique_ptr<X509, decltype(&X509_free)> cert(
            PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
        if (!cert) break;
        if (X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_CRL_get_issuer(crl)) != 0)
            continue;
        EVP_PKEY* key = X509_get0_pubkey(cert.get());
        if (key && X509_CRL_verify(crl, key) == 1) {
            ERR_clear_error();
            return true;
        }
    }
    ERR_clear_error();
    return false;
}

// RFC 5280 §5.2.3: the CRL number only grows; without it, compare thisUpdate.
bool older_than(X509_CRL* fresh, X509_CRL* current) {
    using Number = std::unique_ptr<ASN1_INTEGER, decltype(&ASN1_INTEGER_free)>;
    Number a(
        static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(fresh, NID_crl_number, nullptr, nullptr)),
        ASN1_INTEGER_free);
    Number b(
        static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(current, NID_crl_number, nullptr, nullptr)),
        ASN1_INTEGER_free);
    if (a && b) return ASN1_INTEGER_cmp(a.get(), b.get()) < 0;
    return ASN1_TIME_compare(X509_CRL_get0_lastUpdate(fresh), X509_CRL_get0_lastUpdate(current)) <
           0;
}

}  // namespace

namespace {

// Downloads [index] url and puts it in place of [index] ldif only if it loads as the index would
// (signature, signer, LDIF) and is not older than the file there: a bad download never replaces
// a good file.
Result<pec::IndexSnapshot> download_index(const ProviderSettings& s) {
    http::Request request;
    request.url = s.index_url;
    request.timeout = std::chrono::seconds(60);
    request.total_timeout = std::chrono::minutes(10);
    request.label = "index " + s.index_url;
    request.max_reply = 64u << 20;
    request.ca_file = s.index_url_ca.string();
    TlsClientIdentity identity;
    if (s.index_url_client_auth) {
        auto loaded = load_index_client_identity(s);
        if (!loaded) return std::unexpected(loaded.error());
        identity = std::move(*loaded);
        request.client_cert = identity.key->certificate();
        request.client_key = identity.private_key.get();
        request.client_chain = identity.chain.get();
    }
    auto body = http::request(request);
    if (!body) return std::unexpected(body.error());
    // Checked in memory, as the index would be read (the name gives the extension), then
    // written over the file in place by write, fsync and rename: a refresh running beside this
    // one can only put its own checked bytes there.
    const std::string refused = "index downloaded from " + s.index_url + " refused: ";
    auto fresh = pec::read_ldif(*body, s.ldif, {&s.trust, s.ldif_signers});
    if (!fresh) return fail(fresh.error().kind, refused + fresh.error().message);
    // Never back in time: an older signed index (a replay) does not replace a newer one.
    auto current = pec::load_ldif(s.ldif, {&s.trust, s.ldif_signers});
    if (current && current->signed_at &&
        (!fresh->signed_at || *fresh->signed_at < *current->signed_at))
        return fail(ErrorKind::corrupt,
                    refused + "signed before the index in place (CMS signingTime), or undated");
    if (auto st = durable::write_file_atomic(s.ldif, *body); !st)
        return std::unexpected(st.error());
    return fresh;
}

}  // namespace

Result<std::string> refresh_index(const Config& config) {
    auto settings = read_settings(config);
    if (!settings) return std::unexpected(settings.error());
    // The download is the index just checked and installed: no second read of the file.
    const bool download = settings->index_source == ProviderSettings::IndexSource::ldif &&
                          !settings->index_url.empty();
    auto snapshot =
        download ? download_index(*settings)
        : settings->index_source == ProviderSettings::IndexSource::ldap
            ? pec::load_ldap(settings->ldap)
            : pec::load_ldif(settings->ldif, {&settings->trust, settings->ldif_signers});
    if (!snapshot) return std::unexpected(snapshot.error());
    std::string summary =
        std::to_string(snapshot->providers.size()) + " providers from " + snapshot->source;
    if (download) summary += ", downloaded from " + settings->index_url;
    return summary;
}

namespace {

// RFC 4514: the characters a DN attribute value escapes with a backslash.
std::string escape_dn_value(std::string_view value) {
    std::string out;
    for (size_t i = 0; i < value.size(); ++i) {
        char c = value[i];
        if (c == '\0') {
            out += "\\00";
            continue;
        }
        bool special = std::string_view(",+\"\\<>;=").find(c) != std::string_view::npos ||
                       (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.size() && c == ' ');
        if (special) out.push_back('\\');
        out.push_back(c);
    }
    return out;
}

Status add_certificate(pec::ProviderRecord& record, X509* cert) {
    auto sha1 = pec::cert_sha1_hex(cert);
    if (!sha1) return std::unexpected(sha1.error());
    auto der = pec::cert_der(cert);
    if (!der) return std::unexpected(der.error());
    if (std::find(record.cert_hashes.begin(), record.cert_hashes.end(), *sha1) !=
        record.cert_hashes.end())
        return {};  // listed already (the signing certificate given again as the next one)
    record.cert_hashes.push_back(*sha1);
    record.certificates.push_back(std::move(*der));
    return {};
}

}  // namespace

Result<std::string> index_record(const Config& config, const IndexRecordOptions& options) {
    auto settings = read_settings(config);
    if (!settings) return std::unexpected(settings.error());
    auto key = load_signing_key(*settings);
    if (!key) return std::unexpected(key.error());
    pec::ProviderRecord record;
    record.name = settings->name;
    record.dn = "providerName=" + escape_dn_value(settings->name) + ",o=postacert";
    record.mail_receipt = options.mail_receipt.empty()
                              ? "posta-certificata@" + settings->mail_domain
                              : options.mail_receipt;
    record.managed_domains = settings->domains;
    if (auto st = add_certificate(record, (*key)->certificate()); !st)
        return std::unexpected(st.error());
    for (const auto& file : options.next_certs) {
        auto certs = pec::read_pem_certificates(file);
        if (!certs) return std::unexpected(certs.error());
        if (sk_X509_num(certs->get()) == 0)
            return fail(ErrorKind::config, file.string() + ": no PEM certificate in it");
        for (int i = 0; i < sk_X509_num(certs->get()); ++i) {
            X509* cert = sk_X509_value(certs->get(), i);
            // A renewal of this provider's certificate: the same service address, a later end.
            if (auto san = check_service_address(cert, settings->mail_domain); !san)
                return fail(ErrorKind::config, file.string() + ": " + san.error().message);
            if (ASN1_TIME_compare(X509_get0_notAfter(cert),
                                  X509_get0_notAfter((*key)->certificate())) <= 0)
                return fail(ErrorKind::config,
                            file.string() +
                                ": expires no later than the signing certificate: not a renewal");
            if (auto st = add_certificate(record, cert); !st) return std::unexpected(st.error());
        }
    }
    std::string ldif = pec::provider_record_ldif(record, options.ldif_url);
    // What we publish must read back as what we meant: the same parser reads others' records.
    auto reread = pec::parse_ldif(ldif, "index-record");
    if (!reread || reread->providers.size() != 1)
        return fail(ErrorKind::permanent,
                    "the record does not read back: " +
                        (reread ? std::string("no provider entry") : reread.error().message));
    if (!options.sign) return ldif;
    return pec::sign_data_der(**key, ldif);
}

Result<std::string> refresh_crls(const Config& config) {
    auto settings = read_settings(config);
    if (!settings) return std::unexpected(settings.error());
    if (settings->crl_urls.empty())
        return std::string("no [trust] crl_urls configured: nothing to do");
    std::string anchors;
    for (const auto& f : settings->trust.ca_files) {
        auto pem = durable::read_file(f, 16u << 20);
        if (!pem) return std::unexpected(pem.error());
        anchors += *pem;
    }
    size_t updated = 0;
    std::string first_error;
    ErrorKind error_kind = ErrorKind::transient;
    for (size_t i = 0; i < settings->crl_urls.size(); ++i) {
        const std::string& url = settings->crl_urls[i];
        const fs::path& file = settings->trust.crl_files[i];
        http::Request request;
        request.url = url;
        request.timeout = std::chrono::seconds(30);
        request.label = "CRL " + url;
        request.max_reply = 64u << 20;
        auto body = http::request(request);
        Status problem;
        Crl fresh;
        if (!body) {
            problem = std::unexpected(body.error());
        } else if (!(fresh = parse_crl(*body))) {
            problem = fail(ErrorKind::permanent, url + ": not a CRL (PEM or DER)");
        } else if (!signed_by_anchor(fresh.get(), anchors)) {
            problem =
                fail(ErrorKind::permanent, url + ": CRL not signed by a configured trust anchor");
        }
        if (!problem) {
            if (first_error.empty()) {
                first_error = problem.error().message;
                error_kind = problem.error().kind;
            }
            continue;
        }
        // Never go back in time: an older CRL could un-revoke a certificate.
        if (auto current = durable::read_file(file, 64u << 20); current) {
            if (Crl old = parse_crl(*current); old && older_than(fresh.get(), old.get())) {
                if (first_error.empty())
                    first_error = url + ": CRL older than the one in " + file.string();
                error_kind = ErrorKind::permanent;
                continue;
            }
        }
        if (auto st = durable::write_file_atomic(file, *body); !st)
            return std::unexpected(st.error());
        ++updated;
    }
    if (!first_error.empty()) return fail(error_kind, first_error);
    return std::to_string(updated) + " CRL(s) refreshed";
}

Result<size_t> signal_reload(const spool::Spool& spool) {
    std::set<pid_t> pids;
    for (auto stage : spool::kStages) {
        auto fd = durable::open_file(spool.lock_path(stage), O_RDONLY);
        if (!fd) continue;  // never run
        // A lock we can take is held by nobody: no daemon to tell.
        if (::flock(fd->get(), LOCK_SH | LOCK_NB) == 0) continue;
        auto text = durable::read_file(spool.lock_path(stage), 64);
        if (!text) continue;
        pid_t pid = static_cast<pid_t>(std::atol(text->c_str()));
        if (pid > 1) pids.insert(pid);
    }
    size_t signalled = 0;
    for (pid_t pid : pids)
        if (::kill(pid, SIGHUP) == 0) ++signalled;
    return signalled;
}

}  // namespace pecd::provider
