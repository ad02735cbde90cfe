// RAII owners for the OpenSSL objects used by keys.cpp and smime.cpp, and the error-queue helper.
#pragma once

// pem.h before cms.h, which declares PEM_read_bio_CMS only when pem.h came first.
// clang-format off
#include <openssl/pem.h>
#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
// clang-format on

#include <memory>
#include <string>

namespace pecd::pec::ossl {

struct BioFree {
    void operator()(BIO* p) const { BIO_free_all(p); }
};
struct X509Free {
    void operator()(X509* p) const { X509_free(p); }
};
struct X509StackFree {
    void operator()(STACK_OF(X509) * p) const { sk_X509_pop_free(p, X509_free); }
};
struct PkeyFree {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct CmsFree {
    void operator()(CMS_ContentInfo* p) const { CMS_ContentInfo_free(p); }
};
struct StoreFree {
    void operator()(X509_STORE* p) const { X509_STORE_free(p); }
};
struct StoreCtxFree {
    void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
struct CrlFree {
    void operator()(X509_CRL* p) const { X509_CRL_free(p); }
};

using Bio = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using X509Stack = std::unique_ptr<STACK_OF(X509), X509StackFree>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cms = std::unique_ptr<CMS_ContentInfo, CmsFree>;
using Store = std::unique_ptr<X509_STORE, StoreFree>;
using StoreCtx = std::unique_ptr<X509_STORE_CTX, StoreCtxFree>;
using Crl = std::unique_ptr<X509_CRL, CrlFree>;

// Drains this thread's OpenSSL error queue into one line ("what: reason; reason").
inline std::string errors(const std::string& what) {
    std::string out = what;
    bool first = true;
    while (unsigned long code = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(code, buf, sizeof buf);
        out += first ? ": " : "; ";
        out += buf;
        first = false;
    }
    return out;
}

}  // namespace pecd::pec::ossl
