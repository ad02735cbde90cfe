// Provider signing keys: a private key handle, the signer certificate and optional extra chain
// certificates, loaded from PEM files or from a PKCS#11 token through libp11.
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "stages/common/result.hpp"
#include "stages/pec/ossl.hpp"

namespace pecd::pec {

class SigningKey {
  public:
    ~SigningKey();
    SigningKey(const SigningKey&) = delete;
    SigningKey& operator=(const SigningKey&) = delete;

    X509* certificate() const { return cert_; }            // owned by this object
    STACK_OF(X509) * chain() const { return chain_; }      // extra certs to include; may be empty
    const std::string& origin() const { return origin_; }  // "pem:<key path>" or the PKCS#11 URI
    bool is_pkcs11() const { return p11_ != nullptr; }

    // The private key for one signing operation. Thread-safe. For PKCS#11 the module is opened
    // again (new context, login) when the process id changed since the last use, because
    // PKCS#11 sessions do not survive fork(). The returned handle keeps the module alive.
    Result<std::shared_ptr<EVP_PKEY>> private_key() const;

    struct Pkcs11Spec;  // keys.cpp: module, token, object and PIN, to reopen after fork

  private:
    friend Result<std::shared_ptr<const SigningKey>> load_pem_key(const std::filesystem::path&,
                                                                  const std::filesystem::path&,
                                                                  const std::filesystem::path&);
    friend Result<std::shared_ptr<const SigningKey>> load_pkcs11_key(std::string_view,
                                                                     const std::filesystem::path&,
                                                                     const std::filesystem::path&,
                                                                     const std::filesystem::path&);
    SigningKey() = default;

    X509* cert_ = nullptr;
    STACK_OF(X509) * chain_ = nullptr;
    std::string origin_;
    std::shared_ptr<EVP_PKEY> pem_key_;  // PEM: loaded once, shared by all threads

    std::unique_ptr<Pkcs11Spec> p11_;
    mutable std::mutex p11_mutex_;
    mutable std::shared_ptr<EVP_PKEY> p11_key_;  // for the process p11_pid_
    mutable pid_t p11_pid_ = 0;
};

// cert_path: PEM signer certificate; key_path: PEM private key (unencrypted);
// chain_path: PEM file with zero or more extra certificates, or empty for none.
// Fails with ErrorKind::config when a file is unreadable or the key does not match the cert.
Result<std::shared_ptr<const SigningKey>> load_pem_key(const std::filesystem::path& cert_path,
                                                       const std::filesystem::path& key_path,
                                                       const std::filesystem::path& chain_path);

// pkcs11_uri: RFC 7512, path attributes token=, object=, id= (percent-encoded), serial=;
//   the query part (pin-value=...) is refused: the PIN comes from pin_file only.
// module_path: e.g. /usr/lib/softhsm/libsofthsm2.so.
// pin_file: the user PIN on its first line.
// cert_path: PEM signer certificate, or empty to read it from the token (same id/label as the key).
// Thread safety: libp11 (0.4.12) borrows a PKCS#11 session from its per-slot pool for each
// private-key operation, so one key is shared by several threads; keys_test proves it.
Result<std::shared_ptr<const SigningKey>> load_pkcs11_key(std::string_view pkcs11_uri,
                                                          const std::filesystem::path& module_path,
                                                          const std::filesystem::path& pin_file,
                                                          const std::filesystem::path& cert_path);

// Every PEM certificate in `path`, in order (none for an empty path); a file that cannot be read
// or holds a broken certificate is ErrorKind::config.
Result<ossl::X509Stack> read_pem_certificates(const std::filesystem::path& path);

// The certificate's DER: the IGPEC providerCertificate.
Result<std::string> cert_der(X509* cert);

// Lower-case hex SHA-1 of the DER certificate: the IGPEC providerCertificateHash.
Result<std::string> cert_sha1_hex(X509* cert);

}  // namespace pecd::pec
