#include "stages/provider/provider_config.hpp"

#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "stages/common/http.hpp"
#include "stages/pec/templates.hpp"
#include "stages/provider/embedded.hpp"
#include "stages/provider/real_services.hpp"
#include "stages/provider/timeouts.hpp"

namespace pecd::provider {

std::string lower(std::string_view text) {
    std::string out(text);
    for (char& c : out)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    return out;
}

std::string domain_of(std::string_view address) {
    size_t at = address.rfind('@');
    if (at == std::string_view::npos) return {};
    std::string d = lower(address.substr(at + 1));
    while (!d.empty() && (d.back() == '>' || d.back() == '.' || d.back() == ' ')) d.pop_back();
    return d;
}

bool ProviderSettings::manages(std::string_view domain) const {
    std::string d = lower(domain);
    return std::find(domains.begin(), domains.end(), d) != domains.end();
}

OrdinaryPolicy ProviderSettings::policy_for(std::string_view domain) const {
    auto it = ordinary_mail_per_domain.find(lower(domain));
    return it == ordinary_mail_per_domain.end() ? ordinary_mail : it->second;
}

bool provider_configured(const Config& config) {
    auto sections = config.sections();
    return std::find(sections.begin(), sections.end(), "provider") != sections.end();
}

namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::vector<std::string> split_list(std::string_view text) {
    std::vector<std::string> out;
    while (!text.empty()) {
        size_t comma = text.find(',');
        auto item = trim(text.substr(0, comma));
        if (!item.empty()) out.emplace_back(item);
        if (comma == std::string_view::npos) break;
        text.remove_prefix(comma + 1);
    }
    return out;
}

bool plausible_domain(std::string_view d) {
    if (d.empty() || d.size() > 253 || d.front() == '.' || d.back() == '.' ||
        d.find('.') == std::string_view::npos)
        return false;
    return std::all_of(d.begin(), d.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
    });
}

// Reads the settings, collecting every problem instead of stopping at the first.
struct Reader {
    const Config& config;
    std::vector<ConfigProblem> problems;
    std::set<std::string, std::less<>> bad_sections;  // sections with a value problem

    int line(std::string_view section, std::string_view key) const {
        auto v = config.find(section, key);
        return v ? v->line : 0;
    }
    void problem(std::string_view section, std::string_view key, std::string message) {
        bad_sections.emplace(section);
        problems.push_back({line(section, key), "[" + std::string(section) + "] " +
                                                    std::string(key) + ": " + std::move(message)});
    }
    std::string required(std::string_view section, std::string_view key) {
        std::string v = config.get(section, key);
        if (v.empty()) problem(section, key, "is required");
        return v;
    }
    fs::path existing(std::string_view section, std::string_view key, bool is_dir) {
        fs::path p = config.get_path(section, key);
        if (p.empty()) return p;
        std::error_code ec;
        bool ok = is_dir ? fs::is_directory(p, ec) : fs::is_regular_file(p, ec);
        if (!ok)
            problem(section, key,
                    p.string() + (is_dir ? " is not a directory" : " is not a readable file"));
        return p;
    }
    void only_known(std::string_view section, std::set<std::string, std::less<>> known,
                    std::string_view prefix = {}) {
        for (const auto& k : config.keys(section))
            if (!known.contains(k) && (prefix.empty() || !k.starts_with(prefix)))
                problem(section, k, "unknown key");
    }
};

std::optional<OrdinaryPolicy> policy_from(std::string_view v) {
    if (v == "anomaly") return OrdinaryPolicy::anomaly;
    if (v == "reject") return OrdinaryPolicy::reject;
    return std::nullopt;
}

ProviderSettings read_all(Reader& r) {
    const Config& c = r.config;
    ProviderSettings s;
    r.only_known("provider",
                 {"name", "mail_domain", "domains", "templates", "virus_store", "node"});
    s.name = r.required("provider", "name");
    s.mail_domain = lower(r.required("provider", "mail_domain"));
    if (!s.mail_domain.empty() && !plausible_domain(s.mail_domain))
        r.problem("provider", "mail_domain", "'" + s.mail_domain + "' is not a mail domain");
    for (const auto& d : split_list(r.required("provider", "domains"))) {
        std::string domain = lower(d);
        if (!plausible_domain(domain))
            r.problem("provider", "domains", "'" + d + "' is not a mail domain");
        else
            s.domains.push_back(domain);
    }
    // The service mailbox must be ours: presa in carico and rilevazione virus come back to it.
    if (!s.mail_domain.empty() && !s.domains.empty() && !s.manages(s.mail_domain))
        r.problem("provider", "mail_domain",
                  "'" + s.mail_domain + "' must also be listed in [provider] domains");
    s.templates = r.existing("provider", "templates", true);
    if (s.templates.empty()) r.problem("provider", "templates", "is required");
    s.virus_store = c.get_path("provider", "virus_store");
    if (s.virus_store.empty()) r.problem("provider", "virus_store", "is required");
    s.node = c.get("provider", "node");

    r.only_known("keys", {"cert", "key", "chain", "pkcs11_uri", "pkcs11_module", "pin_file",
                          "signature_protocol"});
    s.pkcs11_uri = c.get("keys", "pkcs11_uri");
    s.cert = r.existing("keys", "cert", false);
    s.chain = r.existing("keys", "chain", false);
    if (s.pkcs11_uri.empty()) {
        s.key = r.existing("keys", "key", false);
        if (s.cert.empty()) r.problem("keys", "cert", "is required (or pkcs11_uri)");
        if (s.key.empty()) r.problem("keys", "key", "is required (or pkcs11_uri)");
    } else {
        if (c.find("keys", "key")) r.problem("keys", "key", "conflicts with pkcs11_uri");
        s.pkcs11_module = r.existing("keys", "pkcs11_module", false);
        s.pin_file = r.existing("keys", "pin_file", false);
        if (s.pkcs11_module.empty())
            r.problem("keys", "pkcs11_module", "is required with pkcs11_uri");
        if (s.pin_file.empty()) r.problem("keys", "pin_file", "is required with pkcs11_uri");
    }
    std::string protocol = c.get("keys", "signature_protocol", "pkcs7-signature");
    if (protocol == "x-pkcs7-signature")
        s.protocol = pec::SignatureProtocol::x_pkcs7_signature;
    else if (protocol != "pkcs7-signature")
        r.problem("keys", "signature_protocol", "must be pkcs7-signature or x-pkcs7-signature");

    r.only_known("trust", {"ca_files", "ca_dirs", "crl_files", "crl_urls", "check_crl"});
    // Comma lists of paths, relative ones resolved like get_path (against the file's directory).
    Config resolver = c;
    auto paths = [&](std::string_view key, bool dirs, std::vector<fs::path>& into) {
        for (const auto& item : split_list(c.get("trust", key))) {
            resolver.set("trust", "path.item", item);
            fs::path p = resolver.get_path("trust", "path.item");
            std::error_code ec;
            if (dirs ? !fs::is_directory(p, ec) : !fs::is_regular_file(p, ec))
                r.problem("trust", key, p.string() + " does not exist");
            into.push_back(p);
        }
    };
    paths("ca_files", false, s.trust.ca_files);
    paths("ca_dirs", true, s.trust.ca_dirs);
    paths("crl_files", false, s.trust.crl_files);
    // crl_urls[i] is where `pecd refresh-crl` downloads crl_files[i] from.
    s.crl_urls = split_list(c.get("trust", "crl_urls"));
    if (!s.crl_urls.empty() && s.crl_urls.size() != s.trust.crl_files.size())
        r.problem("trust", "crl_urls",
                  "must list one URL per entry of crl_files, in the same order");
    for (const auto& url : s.crl_urls)
        if (!url.starts_with("http://"))
            r.problem("trust", "crl_urls", url + " is not an http:// URL");
        else if (auto ok = http::check_url(url, "CRL"); !ok)
            r.problem("trust", "crl_urls", ok.error().message);
    if (s.trust.ca_files.empty() && s.trust.ca_dirs.empty())
        r.problem("trust", "ca_files", "is required (the trust anchors of the PEC providers)");
    if (auto crl = c.get_bool("trust", "check_crl", true); crl)
        s.trust.check_crl = *crl;
    else
        r.problem("trust", "check_crl", "must be yes or no");
    // Without a CRL every signature check would end in crl_unavailable.
    if (s.trust.check_crl && s.trust.crl_files.empty() && s.trust.ca_dirs.empty())
        r.problem("trust", "crl_files", "is required while check_crl = yes");

    r.only_known("index", {"source", "ldif", "ldif_signer", "url", "url_ca_file", "url_client_auth",
                           "url_client_cert", "url_client_key", "uri", "base", "bind_dn",
                           "bind_password_file", "cache_file", "timeout"});
    std::string source = c.get("index", "source", "ldif");
    if (source == "ldif") {
        s.index_source = ProviderSettings::IndexSource::ldif;
        s.ldif = r.existing("index", "ldif", false);
        if (s.ldif.empty()) r.problem("index", "ldif", "is required with source = ldif");
        // The certificates allowed to sign a whole directory (PEM, one or more).
        if (fs::path signer = r.existing("index", "ldif_signer", false); !signer.empty()) {
            auto certs = pec::read_pem_certificates(signer);
            for (int i = 0; certs && i < sk_X509_num(certs->get()); ++i)
                if (auto sha1 = pec::cert_sha1_hex(sk_X509_value(certs->get(), i)))
                    s.ldif_signers.push_back(*sha1);
            if (!certs)
                r.problem("index", "ldif_signer", certs.error().message);
            else if (s.ldif_signers.empty())
                r.problem("index", "ldif_signer", signer.string() + ": no PEM certificate in it");
        }
        s.index_url = c.get("index", "url");
        if (!s.index_url.empty() && !s.index_url.starts_with("https://"))
            r.problem("index", "url", "must be https:// (IGPEC is served over TLS only)");
        else if (auto ok = http::check_url(s.index_url, "index"); !s.index_url.empty() && !ok)
            r.problem("index", "url", ok.error().message);
        // What comes from the network is taken only signed, by the directory's own signer.
        else if (!s.index_url.empty() && (s.ldif.extension() != ".p7m" || s.ldif_signers.empty()))
            r.problem("index", "url",
                      "needs ldif to be a .p7m and ldif_signer to name who signs the directory");
        s.index_url_ca = r.existing("index", "url_ca_file", false);
        if (auto auth = c.get_bool("index", "url_client_auth", true); auth)
            s.index_url_client_auth = *auth;
        else
            r.problem("index", "url_client_auth", "must be yes or no");
        // A TLS client certificate of its own, for a directory server that wants one fit for
        // client authentication (the PEC certificate's extended key usage is e-mail protection).
        s.index_url_client_cert = r.existing("index", "url_client_cert", false);
        s.index_url_client_key = r.existing("index", "url_client_key", false);
        if (s.index_url_client_cert.empty() != s.index_url_client_key.empty())
            r.problem("index",
                      s.index_url_client_cert.empty() ? "url_client_key" : "url_client_cert",
                      "url_client_cert and url_client_key go together");
        else if (!s.index_url_client_cert.empty() && !s.index_url_client_auth)
            r.problem("index", "url_client_cert", "is set while url_client_auth = no");
    } else if (source == "ldap") {
        s.index_source = ProviderSettings::IndexSource::ldap;
        if (!c.get("index", "url").empty())
            r.problem("index", "url", "is for source = ldif (LDAP has cache_file)");
        s.ldap.uri = r.required("index", "uri");
        s.ldap.base_dn = c.get("index", "base", s.ldap.base_dn);
        s.ldap.bind_dn = c.get("index", "bind_dn");
        s.ldap.cache_file = c.get_path("index", "cache_file");
        if (fs::path pw = r.existing("index", "bind_password_file", false); !pw.empty()) {
            std::ifstream in(pw);
            std::getline(in, s.ldap.bind_password);
        }
        if (auto t = c.get_duration("index", "timeout", s.ldap.timeout); t)
            s.ldap.timeout = *t;
        else
            r.problem("index", "timeout", "must be a duration such as 5s");
    } else {
        r.problem("index", "source", "must be ldif or ldap");
    }

    r.only_known("limits", {"max_size_times_recipients"});
    if (auto limit = c.get_size("limits", "max_size_times_recipients", s.max_size_times_recipients);
        limit)
        s.max_size_times_recipients = *limit;
    else
        r.problem("limits", "max_size_times_recipients", "must be a size such as 30M");

    r.only_known("policy", {"ordinary_mail"}, "ordinary_mail.");
    for (const auto& key : c.keys("policy")) {
        std::string value = c.get("policy", key);
        auto policy = policy_from(value);
        if (!policy) {
            r.problem("policy", key, "must be anomaly or reject, not '" + value + "'");
            continue;
        }
        if (key == "ordinary_mail") {
            s.ordinary_mail = *policy;
        } else if (key.starts_with("ordinary_mail.")) {
            std::string domain = lower(key.substr(std::string_view("ordinary_mail.").size()));
            if (!s.manages(domain))
                r.problem("policy", key, "'" + domain + "' is not one of [provider] domains");
            s.ordinary_mail_per_domain[domain] = *policy;
        }
    }

    // The services. One vocabulary with stages/transport/factory.hpp (docs/transports.md).
    const std::set<std::string, std::less<>> timeouts = {"connect_timeout", "command_timeout",
                                                         "data_timeout"};
    auto with = [](std::set<std::string, std::less<>> keys,
                   const std::set<std::string, std::less<>>& more) {
        keys.insert(more.begin(), more.end());
        return keys;
    };
    r.only_known("mailbox",
                 with({"type", "maildir", "lmtp", "lmtp_sender", "helo_name"}, timeouts));
    s.mailbox_type = c.get("mailbox", "type", "maildir");
    if (s.mailbox_type == "maildir") {
        s.maildir_root = r.existing("mailbox", "maildir", true);
        if (s.maildir_root.empty())
            r.problem("mailbox", "maildir", "is required with type = maildir");
    } else if (s.mailbox_type != "lmtp") {
        r.problem("mailbox", "type", "must be maildir or lmtp, not '" + s.mailbox_type + "'");
    }
    r.only_known("outbound", with({"type", "directory", "relay", "helo_name"}, timeouts));
    s.outbound_type = c.get("outbound", "type", "outbox");
    if (s.outbound_type == "outbox") {
        s.outbox = c.get_path("outbound", "directory");
        if (s.outbox.empty()) {
            fs::path spool = c.get_path("spool", "directory");
            if (!spool.empty()) s.outbox = spool / "outbox";
        }
    } else if (s.outbound_type != "smtp") {
        r.problem("outbound", "type", "must be outbox or smtp, not '" + s.outbound_type + "'");
    }
    r.only_known("antivirus", {"type", "clamd", "connect_timeout", "clamd_timeout"});
    s.antivirus = c.get("antivirus", "type", "none");
    if (s.antivirus != "none" && s.antivirus != "eicar" && s.antivirus != "clamd")
        r.problem("antivirus", "type", "must be none, eicar or clamd, not '" + s.antivirus + "'");
    // lmtp, relay, clamd and the timeouts: what the adapter factories say, with their lines,
    // for each of the three sections whose type is sound.
    ProviderSettings sound = s;
    if (r.bad_sections.contains("mailbox")) sound.mailbox_type = "maildir";
    if (r.bad_sections.contains("outbound")) sound.outbound_type = "outbox";
    if (r.bad_sections.contains("antivirus")) sound.antivirus = "none";
    for (auto& p : check_services(c, sound)) {
        for (std::string_view section : {"mailbox", "outbound", "antivirus"})
            if (p.message.starts_with("[" + std::string(section) + "]"))
                r.bad_sections.emplace(section);
        r.problems.push_back(std::move(p));
    }
    return s;
}

}  // namespace

Result<ProviderSettings> read_settings(const Config& config) {
    Reader r{config, {}, {}};
    ProviderSettings s = read_all(r);
    if (!r.problems.empty())
        return fail(ErrorKind::config, config.source() + ":" + std::to_string(r.problems[0].line) +
                                           ": " + r.problems[0].message);
    return s;
}

Result<std::shared_ptr<const pec::SigningKey>> load_signing_key(const ProviderSettings& s) {
    if (!s.pkcs11_uri.empty())
        return pec::load_pkcs11_key(s.pkcs11_uri, s.pkcs11_module, s.pin_file, s.cert);
    return pec::load_pem_key(s.cert, s.key, s.chain);
}

Result<TlsClientIdentity> load_index_client_identity(const ProviderSettings& s) {
    TlsClientIdentity id;
    id.chain.reset(sk_X509_new_null());
    if (!id.chain) return fail(ErrorKind::transient, "out of memory");
    auto add_to_chain = [&](X509* cert) {
        return X509_up_ref(cert) == 1 && sk_X509_push(id.chain.get(), cert) > 0;
    };
    if (s.index_url_client_cert.empty()) {
        auto key = load_signing_key(s);
        if (!key) return std::unexpected(key.error());
        id.key = *key;
        for (int i = 0; i < sk_X509_num(id.key->chain()); ++i)
            if (!add_to_chain(sk_X509_value(id.key->chain(), i)))
                return fail(ErrorKind::transient, "out of memory");
    } else {
        auto key = pec::load_pem_key(s.index_url_client_cert, s.index_url_client_key, {});
        if (!key) return std::unexpected(key.error());
        id.key = *key;
        auto certs = pec::read_pem_certificates(s.index_url_client_cert);
        if (!certs) return std::unexpected(certs.error());
        for (int i = 1; i < sk_X509_num(certs->get()); ++i)  // the first is the leaf
            if (!add_to_chain(sk_X509_value(certs->get(), i)))
                return fail(ErrorKind::transient, "out of memory");
    }
    auto pkey = id.key->private_key();
    if (!pkey) return std::unexpected(pkey.error());
    id.private_key = *pkey;
    return id;
}

Status check_service_address(X509* cert, const std::string& mail_domain) {
    const std::string wanted = "posta-certificata@" + mail_domain;
    auto* names =
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    bool found = false;
    for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
        const GENERAL_NAME* name = sk_GENERAL_NAME_value(names, i);
        if (name->type != GEN_EMAIL) continue;
        const ASN1_IA5STRING* email = name->d.rfc822Name;
        std::string_view value(reinterpret_cast<const char*>(ASN1_STRING_get0_data(email)),
                               static_cast<size_t>(ASN1_STRING_length(email)));
        found = found || lower(value) == wanted;
    }
    GENERAL_NAMES_free(names);
    if (!found)
        return fail(ErrorKind::config,
                    "the signing certificate has no subjectAltName email " + wanted);
    return {};
}

namespace {

Result<pec::IndexSnapshot> load_index(const ProviderSettings& s) {
    if (s.index_source == ProviderSettings::IndexSource::ldap) return pec::load_ldap(s.ldap);
    return pec::load_ldif(s.ldif, {&s.trust, s.ldif_signers});
}

}  // namespace

std::vector<ConfigProblem> check(const Config& config) {
    Reader r{config, {}, {}};
    ProviderSettings s = read_all(r);
    // Then load what the sound sections point at, each failure on its own line; a section
    // whose values are wrong is not loaded (its problems are already listed).
    const auto value_problems = r.bad_sections;
    auto sound = [&value_problems](std::initializer_list<std::string_view> sections) {
        for (auto section : sections)
            if (value_problems.contains(section)) return false;
        return true;
    };
    auto loaded = [&](std::string_view section, std::string_view key, const Error& e) {
        r.problem(section, key, e.message);
    };
    Result<std::shared_ptr<const pec::SigningKey>> key =
        fail(ErrorKind::config, "not loaded: [keys] has problems");
    if (sound({"keys", "provider"})) {
        key = load_signing_key(s);
        if (!key) loaded("keys", s.pkcs11_uri.empty() ? "key" : "pkcs11_uri", key.error());
    }
    if (key) {
        // A test signature proves the key works (a token PIN, a key that fits the certificate).
        auto signer = pec::make_entity_signer(*key, {});
        if (auto signed_entity = signer("Content-Type: text/plain\r\n\r\ncheck\r\n");
            !signed_entity)
            loaded("keys", "cert", signed_entity.error());
        if (auto san = check_service_address((*key)->certificate(), s.mail_domain); !san)
            loaded("keys", "cert", san.error());
    }
    if (!s.templates.empty())
        if (auto t = pec::TemplateSet::load(s.templates); !t)
            loaded("provider", "templates", t.error());
    // Only refresh-index uses the index's own TLS client key: loaded here, not by every stage.
    if (sound({"index"}) && !s.index_url_client_cert.empty())
        if (auto id = load_index_client_identity(s); !id)
            loaded("index", "url_client_key", id.error());
    if (sound({"trust"}))
        if (auto v = pec::SmimeVerifier::create(s.trust); !v)
            loaded("trust", "ca_files", v.error());
    if (sound({"provider"}))
        if (auto ids = pec::IdentificativoGenerator::create(s.mail_domain, s.node); !ids)
            loaded("provider", "node", ids.error());
    if (!sound({"index"})) return r.problems;
    auto index = load_index(s);
    if (!index) {
        loaded("index", s.index_source == ProviderSettings::IndexSource::ldif ? "ldif" : "uri",
               index.error());
    } else if (key && sound({"provider"})) {
        // The index must know us as the network sees us: our certificate, our mail domain.
        auto sha1 = pec::cert_sha1_hex((*key)->certificate());
        const pec::ProviderRecord* self = sha1 ? index->find_by_cert_hash(*sha1) : nullptr;
        if (self == nullptr)
            r.problem("keys", "cert", "the signing certificate is not in the providers index");
        else if (std::find(self->managed_domains.begin(), self->managed_domains.end(),
                           s.mail_domain) == self->managed_domains.end())
            r.problem("provider", "mail_domain",
                      "'" + s.mail_domain + "' is not among our managedDomains in the index");
    }
    return r.problems;
}

Result<std::shared_ptr<const Provider>> Provider::create(const Config& config,
                                                         std::optional<ProviderServices> services) {
    auto settings = read_settings(config);
    if (!settings) return std::unexpected(settings.error());
    std::shared_ptr<Provider> p(new Provider());
    p->settings_ = std::move(*settings);
    const ProviderSettings& s = p->settings_;
    p->identity_ = pec::ProviderIdentity{s.name, s.mail_domain};

    auto key = load_signing_key(s);
    if (!key) return context(key.error(), "[keys]");
    p->key_ = *key;
    if (auto san = check_service_address(p->key_->certificate(), s.mail_domain); !san)
        return context(san.error(), "[keys]");
    auto templates = pec::TemplateSet::load(s.templates);
    if (!templates) return context(templates.error(), "[provider] templates");
    auto verifier = pec::SmimeVerifier::create(s.trust);
    if (!verifier) return context(verifier.error(), "[trust]");
    p->verifier_ = *verifier;
    auto index = load_index(s);
    if (!index) return context(index.error(), "[index]");
    p->index_ = std::make_shared<pec::ProvidersIndex>(std::move(*index));
    auto ids = pec::IdentificativoGenerator::create(s.mail_domain, s.node);
    if (!ids) return context(ids.error(), "[provider]");
    p->ids_ = std::shared_ptr<pec::IdentificativoGenerator>(std::move(*ids));
    pec::SignOptions sign;
    sign.protocol = s.protocol;
    p->builder_ = std::make_unique<pec::MessageBuilder>(
        p->identity_, std::make_shared<const pec::TemplateSet>(std::move(*templates)),
        pec::make_entity_signer(p->key_, sign), p->ids_);
    if (services) {
        p->services_ = std::move(*services);
    } else {
        auto built = make_services(config, s);
        if (!built) return std::unexpected(built.error());
        p->services_ = std::move(*built);
    }
    auto timeouts = Timeouts::from_config(config);
    if (!timeouts) return context(timeouts.error(), "[scheduler]");
    p->timeouts_ = std::move(*timeouts);
    return std::shared_ptr<const Provider>(std::move(p));
}

bool Provider::is_local(std::string_view address) const {
    return settings_.manages(domain_of(address));
}

Status ProviderHandle::reload(const Config& config, std::optional<ProviderServices> services) {
    // A file caught half-edited must not replace a working configuration.
    if (!config.problems().empty())
        return fail(ErrorKind::config, config.source() + ":" +
                                           std::to_string(config.problems()[0].line) + ": " +
                                           config.problems()[0].message);
    auto next = Provider::create(config, std::move(services));
    if (!next) return std::unexpected(next.error());
    replace(std::move(*next));
    return {};
}

}  // namespace pecd::provider
