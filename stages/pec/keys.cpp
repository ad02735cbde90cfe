#include "stages/pec/keys.hpp"

#include <libp11.h>
#include <openssl/crypto.h>
#include <openssl/pem.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <map>
#include <optional>
#include <vector>

#include "stages/pec/ossl.hpp"

namespace pecd::pec {

namespace {

Result<ossl::X509Ptr> read_cert(const std::filesystem::path& path) {
    ossl::Bio bio(BIO_new_file(path.c_str(), "r"));
    if (!bio) return fail(ErrorKind::config, ossl::errors("cannot open " + path.string()));
    ossl::X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert)
        return fail(ErrorKind::config, ossl::errors("no PEM certificate in " + path.string()));
    return cert;
}

Status check_key_matches(X509* cert, EVP_PKEY* key, const std::string& origin) {
    if (X509_check_private_key(cert, key) != 1)
        return fail(ErrorKind::config,
                    ossl::errors("private key " + origin + " does not match the certificate"));
    return {};
}

// --- PKCS#11 -------------------------------------------------------------------------------

// One loaded module per (path, process). Two PKCS11_CTX on the same module would be unsafe:
// unloading one calls C_Finalize under the other.
struct P11Module {
    PKCS11_CTX* ctx = nullptr;
    PKCS11_SLOT* slots = nullptr;
    unsigned int nslots = 0;
    pid_t pid = 0;
    std::mutex mutex;  // slot enumeration, login, key lookup

    ~P11Module() {
        // A module inherited across fork() belongs to the parent's sessions: leave it alone.
        if (pid != getpid()) return;
        if (slots) PKCS11_release_all_slots(ctx, slots, nslots);
        if (ctx) {
            PKCS11_CTX_unload(ctx);
            PKCS11_CTX_free(ctx);
        }
    }
};

Result<std::shared_ptr<P11Module>> open_module(const std::string& path) {
    static std::mutex registry_mutex;
    static auto* registry = new std::map<std::string, std::weak_ptr<P11Module>>();  // never freed
    std::lock_guard lock(registry_mutex);
    auto& slot = (*registry)[path];
    if (auto existing = slot.lock(); existing && existing->pid == getpid()) return existing;
    if (auto stale = slot.lock()) {
        // Inherited from the parent process: keep it from being finalised here (see ~P11Module).
        new std::shared_ptr<P11Module>(std::move(stale));
    }
    auto mod = std::make_shared<P11Module>();
    mod->pid = getpid();
    mod->ctx = PKCS11_CTX_new();
    if (!mod->ctx) return fail(ErrorKind::transient, "PKCS11_CTX_new failed");
    if (PKCS11_CTX_load(mod->ctx, path.c_str()) != 0) {
        PKCS11_CTX_free(mod->ctx);
        mod->ctx = nullptr;
        return fail(ErrorKind::config, ossl::errors("cannot load PKCS#11 module " + path));
    }
    if (PKCS11_enumerate_slots(mod->ctx, &mod->slots, &mod->nslots) != 0)
        return fail(ErrorKind::transient, ossl::errors("PKCS#11 slot enumeration failed"));
    slot = mod;
    return mod;
}

std::string trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    return std::string(s);
}

std::optional<std::string> percent_decode(std::string_view in) {
    std::string out;
    for (size_t i = 0; i < in.size(); ++i) {
        if (in[i] != '%') {
            out += in[i];
            continue;
        }
        if (i + 2 >= in.size() || !std::isxdigit(static_cast<unsigned char>(in[i + 1])) ||
            !std::isxdigit(static_cast<unsigned char>(in[i + 2])))
            return std::nullopt;
        out += static_cast<char>(std::stoi(std::string(in.substr(i + 1, 2)), nullptr, 16));
        i += 2;
    }
    return out;
}

}  // namespace

struct SigningKey::Pkcs11Spec {
    std::string module_path;
    std::string token_label;
    std::string token_serial;
    std::string object_label;
    std::string object_id;  // raw bytes
    std::string pin;
    ~Pkcs11Spec() { OPENSSL_cleanse(pin.data(), pin.size()); }
};

namespace {

Result<SigningKey::Pkcs11Spec> parse_pkcs11_uri(std::string_view uri) {
    SigningKey::Pkcs11Spec spec;
    constexpr std::string_view scheme = "pkcs11:";
    if (uri.substr(0, scheme.size()) != scheme)
        return fail(ErrorKind::config, "not a pkcs11: URI: " + std::string(uri));
    std::string_view rest = uri.substr(scheme.size());
    if (rest.find('?') != std::string_view::npos)
        return fail(ErrorKind::config,
                    "pkcs11 URI query attributes are not accepted "
                    "(the PIN is read from the PIN file)");
    while (!rest.empty()) {
        size_t semi = rest.find(';');
        std::string_view attr = rest.substr(0, semi);
        rest = semi == std::string_view::npos ? std::string_view{} : rest.substr(semi + 1);
        size_t eq = attr.find('=');
        if (eq == std::string_view::npos)
            return fail(ErrorKind::config, "bad pkcs11 URI attribute: " + std::string(attr));
        std::string_view name = attr.substr(0, eq);
        auto value = percent_decode(attr.substr(eq + 1));
        if (!value) return fail(ErrorKind::config, "bad percent-encoding in pkcs11 URI");
        if (name == "token")
            spec.token_label = *value;
        else if (name == "serial")
            spec.token_serial = *value;
        else if (name == "object")
            spec.object_label = *value;
        else if (name == "id")
            spec.object_id = *value;
        else if (name == "type") {
            if (*value != "private")
                return fail(ErrorKind::config, "pkcs11 URI must name a private key (type=private)");
        }
        // manufacturer=, model=, library-*=: not needed to pick the key, ignored.
    }
    if (spec.object_label.empty() && spec.object_id.empty())
        return fail(ErrorKind::config, "pkcs11 URI names no object= or id=");
    return spec;
}

Result<PKCS11_SLOT*> find_slot(P11Module& mod, const SigningKey::Pkcs11Spec& spec) {
    for (unsigned int i = 0; i < mod.nslots; ++i) {
        PKCS11_SLOT* slot = &mod.slots[i];
        if (!slot->token || !slot->token->initialized) continue;
        if (!spec.token_label.empty() && trim(slot->token->label) != spec.token_label) continue;
        if (!spec.token_serial.empty() && trim(slot->token->serialnr) != spec.token_serial)
            continue;
        return slot;
    }
    return fail(ErrorKind::config, "no PKCS#11 token matches token=\"" + spec.token_label + "\"");
}

bool object_matches(const char* label, const unsigned char* id, size_t id_len,
                    const SigningKey::Pkcs11Spec& spec) {
    if (!spec.object_label.empty() && (!label || spec.object_label != label)) return false;
    if (!spec.object_id.empty() &&
        std::string_view(reinterpret_cast<const char*>(id), id_len) != spec.object_id)
        return false;
    return true;
}

// Logs in if needed and returns a new EVP_PKEY for the key (caller owns it) plus, when asked,
// a copy of the matching certificate on the token.
Result<EVP_PKEY*> open_token_key(P11Module& mod, const SigningKey::Pkcs11Spec& spec,
                                 ossl::X509Ptr* cert_out) {
    std::lock_guard lock(mod.mutex);
    auto slot = find_slot(mod, spec);
    if (!slot) return std::unexpected(slot.error());
    int logged_in = 0;
    if (PKCS11_is_logged_in(*slot, 0, &logged_in) != 0)
        return fail(ErrorKind::transient, ossl::errors("PKCS11_is_logged_in failed"));
    if (!logged_in && PKCS11_login(*slot, 0, spec.pin.c_str()) != 0)
        return fail(ErrorKind::config, ossl::errors("PKCS#11 login failed"));

    PKCS11_KEY* keys = nullptr;
    unsigned int nkeys = 0;
    if (PKCS11_enumerate_keys((*slot)->token, &keys, &nkeys) != 0)
        return fail(ErrorKind::transient, ossl::errors("PKCS#11 key enumeration failed"));
    PKCS11_KEY* found = nullptr;
    for (unsigned int i = 0; i < nkeys; ++i) {
        if (keys[i].isPrivate && object_matches(keys[i].label, keys[i].id, keys[i].id_len, spec)) {
            found = &keys[i];
            break;
        }
    }
    if (!found) return fail(ErrorKind::config, "no private key on the token matches the URI");

    if (cert_out) {
        PKCS11_CERT* certs = nullptr;
        unsigned int ncerts = 0;
        if (PKCS11_enumerate_certs((*slot)->token, &certs, &ncerts) != 0)
            return fail(ErrorKind::transient, ossl::errors("PKCS#11 cert enumeration failed"));
        for (unsigned int i = 0; i < ncerts; ++i) {
            // The certificate that goes with a key shares its CKA_ID (or, lacking one, its label).
            bool same =
                found->id_len > 0
                    ? std::string_view(reinterpret_cast<char*>(certs[i].id), certs[i].id_len) ==
                          std::string_view(reinterpret_cast<char*>(found->id), found->id_len)
                    : (certs[i].label && found->label &&
                       std::string_view(certs[i].label) == found->label);
            if (same && certs[i].x509) {
                X509_up_ref(certs[i].x509);
                cert_out->reset(certs[i].x509);
                break;
            }
        }
        if (!*cert_out)
            return fail(ErrorKind::config, "no certificate on the token matches the key");
    }
    EVP_PKEY* pkey = PKCS11_get_private_key(found);
    if (!pkey) return fail(ErrorKind::transient, ossl::errors("PKCS11_get_private_key failed"));
    return pkey;
}

Result<std::shared_ptr<EVP_PKEY>> open_pkcs11(const SigningKey::Pkcs11Spec& spec,
                                              ossl::X509Ptr* cert_out) {
    auto mod = open_module(spec.module_path);
    if (!mod) return std::unexpected(mod.error());
    auto pkey = open_token_key(**mod, spec, cert_out);
    if (!pkey) return std::unexpected(pkey.error());
    // The key's methods call into the module: keep the module loaded as long as the key lives.
    return std::shared_ptr<EVP_PKEY>(*pkey, [m = *mod](EVP_PKEY* k) { EVP_PKEY_free(k); });
}

Result<std::string> read_pin(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return fail_errno("cannot read PIN file " + path.string());
    std::string pin;
    std::getline(in, pin);
    while (!pin.empty() && (pin.back() == '\r' || pin.back() == ' ')) pin.pop_back();
    if (pin.empty()) return fail(ErrorKind::config, "empty PIN file " + path.string());
    return pin;
}

}  // namespace

SigningKey::~SigningKey() {
    X509_free(cert_);
    sk_X509_pop_free(chain_, X509_free);
    if (p11_ && p11_pid_ != getpid() && p11_key_) {
        // Handle inherited from the parent: its sessions are not ours to close.
        new std::shared_ptr<EVP_PKEY>(std::move(p11_key_));
    }
}

Result<std::shared_ptr<EVP_PKEY>> SigningKey::private_key() const {
    if (!p11_) return pem_key_;
    std::lock_guard lock(p11_mutex_);
    pid_t now = getpid();
    if (p11_key_ && p11_pid_ == now) return p11_key_;
    if (p11_key_) new std::shared_ptr<EVP_PKEY>(std::move(p11_key_));  // forked: see ~SigningKey
    auto key = open_pkcs11(*p11_, nullptr);
    if (!key) return std::unexpected(key.error());
    p11_key_ = *key;
    p11_pid_ = now;
    return p11_key_;
}

Result<std::shared_ptr<const SigningKey>> load_pem_key(const std::filesystem::path& cert_path,
                                                       const std::filesystem::path& key_path,
                                                       const std::filesystem::path& chain_path) {
    auto cert = read_cert(cert_path);
    if (!cert) return std::unexpected(cert.error());
    auto chain = read_pem_certificates(chain_path);
    if (!chain) return std::unexpected(chain.error());
    ossl::Bio bio(BIO_new_file(key_path.c_str(), "r"));
    if (!bio) return fail(ErrorKind::config, ossl::errors("cannot open " + key_path.string()));
    ossl::Pkey pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!pkey)
        return fail(ErrorKind::config, ossl::errors("no PEM private key in " + key_path.string()));
    std::string origin = "pem:" + key_path.string();
    if (auto ok = check_key_matches(cert->get(), pkey.get(), origin); !ok)
        return std::unexpected(ok.error());

    std::shared_ptr<SigningKey> key(new SigningKey());
    key->cert_ = cert->release();
    key->chain_ = chain->release();
    key->origin_ = std::move(origin);
    key->pem_key_ = std::shared_ptr<EVP_PKEY>(pkey.release(), EVP_PKEY_free);
    return key;
}

Result<std::shared_ptr<const SigningKey>> load_pkcs11_key(std::string_view pkcs11_uri,
                                                          const std::filesystem::path& module_path,
                                                          const std::filesystem::path& pin_file,
                                                          const std::filesystem::path& cert_path) {
    auto spec = parse_pkcs11_uri(pkcs11_uri);
    if (!spec) return std::unexpected(spec.error());
    spec->module_path = module_path.string();
    auto pin = read_pin(pin_file);
    if (!pin) return std::unexpected(pin.error());
    spec->pin = *pin;
    OPENSSL_cleanse(pin->data(), pin->size());

    ossl::X509Ptr cert;
    if (!cert_path.empty()) {
        auto file_cert = read_cert(cert_path);
        if (!file_cert) return std::unexpected(file_cert.error());
        cert = std::move(*file_cert);
    }
    auto pkey = open_pkcs11(*spec, cert ? nullptr : &cert);
    if (!pkey) return std::unexpected(pkey.error());
    std::string origin(pkcs11_uri);
    if (auto ok = check_key_matches(cert.get(), pkey->get(), origin); !ok)
        return std::unexpected(ok.error());
    ossl::X509Stack chain(sk_X509_new_null());
    if (!chain) return fail(ErrorKind::transient, "out of memory");

    std::shared_ptr<SigningKey> key(new SigningKey());
    key->cert_ = cert.release();
    key->chain_ = chain.release();
    key->origin_ = std::move(origin);
    key->p11_ = std::make_unique<SigningKey::Pkcs11Spec>(std::move(*spec));
    key->p11_key_ = std::move(*pkey);
    key->p11_pid_ = getpid();
    return key;
}

Result<ossl::X509Stack> read_pem_certificates(const std::filesystem::path& path) {
    ossl::X509Stack stack(sk_X509_new_null());
    if (!stack) return fail(ErrorKind::transient, "out of memory");
    if (path.empty()) return stack;
    ossl::Bio bio(BIO_new_file(path.c_str(), "r"));
    if (!bio) return fail(ErrorKind::config, ossl::errors("cannot open " + path.string()));
    while (X509* cert = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) {
        if (!sk_X509_push(stack.get(), cert)) {
            X509_free(cert);
            return fail(ErrorKind::transient, "out of memory");
        }
    }
    // The loop ends on "no start line" at EOF; anything else is a broken file.
    unsigned long err = ERR_peek_last_error();
    if (err != 0 && ERR_GET_REASON(err) != PEM_R_NO_START_LINE)
        return fail(ErrorKind::config, ossl::errors("bad certificate in " + path.string()));
    ERR_clear_error();
    return stack;
}

Result<std::string> cert_der(X509* cert) {
    int len = i2d_X509(cert, nullptr);
    if (len <= 0) return fail(ErrorKind::permanent, ossl::errors("i2d_X509 failed"));
    std::string der(static_cast<size_t>(len), '\0');
    auto* p = reinterpret_cast<unsigned char*>(der.data());
    if (i2d_X509(cert, &p) != len) return fail(ErrorKind::permanent, "i2d_X509 length changed");
    return der;
}

Result<std::string> cert_sha1_hex(X509* cert) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!cert || X509_digest(cert, EVP_sha1(), md, &len) != 1)
        return fail(ErrorKind::permanent, ossl::errors("X509_digest failed"));
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned int i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 0xf];
    }
    return out;
}

}  // namespace pecd::pec
