#include "stages/legallog/seal.hpp"

#include <netdb.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ts.h>
#include <openssl/x509.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <charconv>
#include <memory>

#include "stages/common/http.hpp"

namespace pecd::legallog {
namespace {

template <class T, void (*F)(T*)>
struct Deleter {
    void operator()(T* p) const { F(p); }
};
using TsReq = std::unique_ptr<TS_REQ, Deleter<TS_REQ, TS_REQ_free>>;
using TsResp = std::unique_ptr<TS_RESP, Deleter<TS_RESP, TS_RESP_free>>;
using TsMsgImprint = std::unique_ptr<TS_MSG_IMPRINT, Deleter<TS_MSG_IMPRINT, TS_MSG_IMPRINT_free>>;
using TsVerifyCtx = std::unique_ptr<TS_VERIFY_CTX, Deleter<TS_VERIFY_CTX, TS_VERIFY_CTX_free>>;
using Algor = std::unique_ptr<X509_ALGOR, Deleter<X509_ALGOR, X509_ALGOR_free>>;
using Asn1Int = std::unique_ptr<ASN1_INTEGER, Deleter<ASN1_INTEGER, ASN1_INTEGER_free>>;
using Store = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;

std::string ossl_errors(std::string what) {
    bool first = true;
    while (unsigned long code = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(code, buf, sizeof buf);
        what += first ? ": " : "; ";
        what += buf;
        first = false;
    }
    return what;
}

std::string digest(std::string_view data, const EVP_MD* md) {
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), out, &len, md, nullptr);
    return std::string(reinterpret_cast<char*>(out), len);
}

Result<Store> load_store(const fs::path& ca_file) {
    Store store(X509_STORE_new());
    if (!store || X509_STORE_load_file(store.get(), ca_file.c_str()) != 1)
        return fail(ErrorKind::config, ossl_errors("TSA CA " + ca_file.string()));
    return store;
}

}  // namespace

Result<std::string> http_post(const std::string& url, std::string_view content_type,
                              std::string_view body, std::string_view expect_type,
                              std::chrono::milliseconds timeout) {
    http::Request request;
    request.method = "POST";
    request.url = url;
    request.content_type = std::string(content_type);
    request.body = std::string(body);
    request.expect_type = std::string(expect_type);
    request.timeout = timeout;
    request.label = "TSA";
    request.max_reply = 1u << 20;
    return http::request(request);
}

Result<std::string> request_timestamp(const std::string& url, std::string_view data,
                                      const fs::path& tsa_ca, std::chrono::milliseconds timeout) {
    TsReq req(TS_REQ_new());
    TsMsgImprint imprint(TS_MSG_IMPRINT_new());
    Algor alg(X509_ALGOR_new());
    std::string md = digest(data, EVP_sha256());
    unsigned char nonce_bytes[8];
    Asn1Int nonce(ASN1_INTEGER_new());
    if (!req || !imprint || !alg || !nonce || RAND_bytes(nonce_bytes, sizeof nonce_bytes) != 1)
        return fail(ErrorKind::transient, ossl_errors("TS request"));
    nonce_bytes[0] &= 0x7f;  // a positive INTEGER
    uint64_t n = 0;
    for (unsigned char b : nonce_bytes) n = (n << 8) | b;
    X509_ALGOR_set0(alg.get(), OBJ_nid2obj(NID_sha256), V_ASN1_NULL, nullptr);
    if (!ASN1_INTEGER_set_uint64(nonce.get(), n) ||
        !TS_MSG_IMPRINT_set_algo(imprint.get(), alg.get()) ||
        !TS_MSG_IMPRINT_set_msg(imprint.get(), reinterpret_cast<unsigned char*>(md.data()),
                                static_cast<int>(md.size())) ||
        !TS_REQ_set_version(req.get(), 1) || !TS_REQ_set_msg_imprint(req.get(), imprint.get()) ||
        !TS_REQ_set_nonce(req.get(), nonce.get()) || !TS_REQ_set_cert_req(req.get(), 1))
        return fail(ErrorKind::transient, ossl_errors("TS request"));
    unsigned char* der = nullptr;
    int der_len = i2d_TS_REQ(req.get(), &der);
    if (der_len <= 0) return fail(ErrorKind::transient, ossl_errors("TS request encoding"));
    std::string query(reinterpret_cast<char*>(der), static_cast<size_t>(der_len));
    OPENSSL_free(der);

    auto reply = http_post(url, "application/timestamp-query", query, "application/timestamp-reply",
                           timeout);
    if (!reply) return std::unexpected(reply.error());
    const unsigned char* p = reinterpret_cast<const unsigned char*>(reply->data());
    TsResp resp(d2i_TS_RESP(nullptr, &p, static_cast<long>(reply->size())));
    if (!resp) return fail(ErrorKind::transient, ossl_errors("TSA reply is not a TimeStampResp"));
    // Status granted, our nonce, our imprint, version; the signature too when we know the TSA's CA.
    TsVerifyCtx ctx(TS_REQ_to_TS_VERIFY_CTX(req.get(), nullptr));
    if (!ctx) return fail(ErrorKind::transient, ossl_errors("TS verify context"));
    if (!tsa_ca.empty()) {
        auto store = load_store(tsa_ca);
        if (!store) return std::unexpected(store.error());
        TS_VERIFY_CTX_set_store(ctx.get(), store->release());
        TS_VERIFY_CTX_add_flags(ctx.get(), TS_VFY_SIGNATURE);
    }
    if (TS_RESP_verify_response(ctx.get(), resp.get()) != 1)
        return fail(ErrorKind::transient, ossl_errors("TSA reply rejected"));
    return std::move(*reply);
}

Status verify_timestamp(std::string_view tsr_der, std::string_view data, const fs::path& ca_file) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(tsr_der.data());
    TsResp resp(d2i_TS_RESP(nullptr, &p, static_cast<long>(tsr_der.size())));
    if (!resp) return fail(ErrorKind::corrupt, ossl_errors("time-stamp token unreadable"));
    TS_TST_INFO* info = TS_RESP_get_tst_info(resp.get());
    if (!info) return fail(ErrorKind::corrupt, "time-stamp reply carries no token");
    // The imprint first, by hand: "file changed or token swapped" is the common finding.
    TS_MSG_IMPRINT* imprint = TS_TST_INFO_get_msg_imprint(info);
    const EVP_MD* md = EVP_get_digestbyobj(TS_MSG_IMPRINT_get_algo(imprint)->algorithm);
    ASN1_OCTET_STRING* msg = TS_MSG_IMPRINT_get_msg(imprint);
    if (!md) return fail(ErrorKind::corrupt, "time-stamp token: unknown digest algorithm");
    std::string want = digest(data, md);
    if (ASN1_STRING_length(msg) != static_cast<int>(want.size()) ||
        std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(msg)), want.size()) !=
            want)
        return fail(
            ErrorKind::corrupt,
            "time-stamp does not match the file (modified after sealing, or token swapped)");
    if (ca_file.empty()) return {};
    TsVerifyCtx ctx(TS_VERIFY_CTX_new());
    auto store = load_store(ca_file);
    if (!store) return std::unexpected(store.error());
    BIO* bio = BIO_new_mem_buf(data.data(), static_cast<int>(data.size()));
    if (!ctx || !bio) return fail(ErrorKind::transient, "out of memory");
    TS_VERIFY_CTX_set_flags(ctx.get(), TS_VFY_VERSION | TS_VFY_SIGNATURE | TS_VFY_DATA);
    TS_VERIFY_CTX_set_data(ctx.get(), bio);  // the context owns bio and store from here
    TS_VERIFY_CTX_set_store(ctx.get(), store->release());
    if (TS_RESP_verify_response(ctx.get(), resp.get()) != 1)
        return fail(ErrorKind::corrupt, ossl_errors("time-stamp signature not valid"));
    return {};
}

Status check_seal(const fs::path& file, std::string_view data, std::string_view final_hash,
                  const fs::path& ca_file) {
    auto seal = durable::read_file(file.string() + ".seal", 64 * 1024);
    if (!seal) return std::unexpected(seal.error());
    std::string want = "file " + file.filename().string() + "\nfinal " + std::string(final_hash) +
                       "\nsha256 " + sha256_hex(data) + "\n";
    if (!seal->starts_with(want))
        return fail(ErrorKind::corrupt, "seal does not match the file (final hash or digest)");
    auto tsr = durable::read_file(file.string() + ".tsr", 1 << 20);
    if (!tsr) return std::unexpected(tsr.error());
    return verify_timestamp(*tsr, data, ca_file);
}

Result<SealReport> seal_pending(const SealOptions& options) {
    SealReport report;
    auto lock_dir = options.directory / "locks";
    if (auto st = durable::make_dir(lock_dir, 0750); !st) return std::unexpected(st.error());
    auto lock = durable::open_file(lock_dir / "seal.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (!lock) return std::unexpected(lock.error());
    if (::flock(lock->get(), LOCK_EX | LOCK_NB) != 0) return report;  // another process is sealing

    int64_t now = options.clock ? options.clock() : system_now_us();
    auto closed = close_stale_files(options.directory, now);
    if (!closed) return std::unexpected(closed.error());
    report.closed = std::move(*closed);

    auto files = list_files(options.directory);
    if (!files) return std::unexpected(files.error());
    bool tsa_down = false;
    for (const auto& file : *files) {
        if (fs::exists(file.string() + ".seal") && fs::exists(file.string() + ".tsr")) continue;
        auto state = file_state(file);
        if (!state) return std::unexpected(state.error());
        if (!state->closed) continue;
        if (tsa_down || options.tsa_url.empty()) {
            report.pending.push_back(file);
            if (options.tsa_url.empty()) report.last_error = "no [legallog] tsa_url configured";
            continue;
        }
        auto data = durable::read_file(file);
        if (!data) return std::unexpected(data.error());
        auto token = request_timestamp(options.tsa_url, *data, options.tsa_ca, options.timeout);
        if (!token) {
            // Unreachable or refusing: keep the rest pending too, the next run retries them all.
            report.last_error = token.error().message;
            report.pending.push_back(file);
            tsa_down = true;
            continue;
        }
        std::string seal = "file " + file.filename().string() + "\nfinal " + state->final_hash +
                           "\nsha256 " + sha256_hex(*data) + "\nsealed " + std::to_string(now) +
                           "\ntsa " + options.tsa_url + "\n";
        // Token first: a .seal is written only beside a token already durable.
        if (auto st = durable::write_file_atomic(file.string() + ".tsr", *token); !st)
            return std::unexpected(st.error());
        if (auto st = durable::write_file_atomic(file.string() + ".seal", seal); !st)
            return std::unexpected(st.error());
        report.sealed.push_back(file);
    }
    return report;
}

}  // namespace pecd::legallog
