#include "stages/pec/smime.hpp"

#include <fcntl.h>
#include <openssl/asn1.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "stages/pec/ossl.hpp"

namespace pecd::pec {

namespace {

// ------------------------------------------------------------------ CRLF output sink BIO
// SMIME_write_CMS writes a "MIME-Version: 1.0" line first (the EntitySigner contract leaves it
// to the caller), base64-encodes smime.p7s with bare LF and ends with an empty epilogue line.
// This sink drops that first line and the trailing empty lines and writes every line end as
// CRLF. The signed content is safe to pass through it: without CMS_BINARY OpenSSL canonicalises
// it to CRLF before hashing and writing, so its bytes come out unchanged.
struct CrlfSink {
    std::string* str = nullptr;  // either append here ...
    BIO* next = nullptr;         // ... or write here (not owned)
    bool in_first_line = true;
    std::string first_line;
    bool pending_cr = false;  // a chunk ended with CR: line end or text, decided by the next byte
    size_t line_len = 0;      // bytes written on the current output line
    size_t held_blank = 0;    // empty lines not yet written (dropped if nothing follows)
    bool failed = false;
    std::string error;

    bool emit(const char* p, size_t n) {
        if (n == 0) return true;
        if (str) {
            str->append(p, n);
            return true;
        }
        while (n > 0) {
            int chunk = static_cast<int>(std::min<size_t>(n, 1 << 30));
            int w = BIO_write(next, p, chunk);
            if (w <= 0) {
                failed = true;
                error = ossl::errors("write failed");
                return false;
            }
            p += w;
            n -= static_cast<size_t>(w);
        }
        return true;
    }

    bool put_text(const char* p, size_t n) {
        if (n == 0) return true;
        for (; held_blank > 0; --held_blank)
            if (!emit("\r\n", 2)) return false;
        line_len += n;
        return emit(p, n);
    }

    bool put_eol() {
        if (line_len == 0) {
            ++held_blank;
            return true;
        }
        line_len = 0;
        return emit("\r\n", 2);
    }

    bool write(const char* p, size_t n) {
        if (in_first_line) {
            const char* nl = static_cast<const char*>(std::memchr(p, '\n', n));
            size_t take = nl ? static_cast<size_t>(nl - p) + 1 : n;
            first_line.append(p, take);
            if (first_line.size() > 64) return fail_first_line();
            if (!nl) return true;
            if (first_line != "MIME-Version: 1.0\r\n" && first_line != "MIME-Version: 1.0\n")
                return fail_first_line();
            in_first_line = false;
            p += take;
            n -= take;
        }
        if (n == 0) return true;
        if (pending_cr) {
            pending_cr = false;
            if (*p != '\n' && !put_text("\r", 1)) return false;
        }
        const char* end = p + n;
        while (p < end) {
            const char* nl = static_cast<const char*>(std::memchr(p, '\n', end - p));
            if (!nl) {
                size_t len = end - p;
                if (p[len - 1] == '\r') {
                    pending_cr = true;
                    --len;
                }
                return put_text(p, len);
            }
            size_t len = nl - p;
            if (len > 0 && p[len - 1] == '\r') --len;
            if (!put_text(p, len) || !put_eol()) return false;
            p = nl + 1;
        }
        return true;
    }

    bool fail_first_line() {
        failed = true;
        error = "unexpected S/MIME writer output: " + first_line.substr(0, 40);
        return false;
    }
};

int sink_write(BIO* b, const char* data, int len) {
    auto* sink = static_cast<CrlfSink*>(BIO_get_data(b));
    if (len <= 0) return 0;
    return sink->write(data, static_cast<size_t>(len)) ? len : -1;
}
int sink_puts(BIO* b, const char* s) {
    return sink_write(b, s, static_cast<int>(std::strlen(s)));
}
long sink_ctrl(BIO* b, int cmd, long, void*) {
    auto* sink = static_cast<CrlfSink*>(BIO_get_data(b));
    if (cmd == BIO_CTRL_FLUSH) return sink->next ? BIO_flush(sink->next) : 1;
    return 0;
}
int sink_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

const BIO_METHOD* sink_method() {
    static const BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pecd-crlf-sink");
        if (!m) return static_cast<BIO_METHOD*>(nullptr);
        BIO_meth_set_write(m, sink_write);
        BIO_meth_set_puts(m, sink_puts);
        BIO_meth_set_ctrl(m, sink_ctrl);
        BIO_meth_set_create(m, sink_create);
        return m;
    }();
    return method;
}

// The DER of the standard S/MIME capabilities list, made once: CMS_add1_signer would build and
// encode the same list again for every signature. Empty if OpenSSL could not make it.
const std::string& standard_smime_capabilities() {
    static const std::string der = [] {
        std::string out;
        STACK_OF(X509_ALGOR)* capabilities = nullptr;
        if (CMS_add_standard_smimecap(&capabilities) == 1) {
            unsigned char* encoded = nullptr;
            int length = ASN1_item_i2d(reinterpret_cast<ASN1_VALUE*>(capabilities), &encoded,
                                       ASN1_ITEM_rptr(X509_ALGORS));
            if (length > 0) out.assign(reinterpret_cast<const char*>(encoded), length);
            OPENSSL_free(encoded);
        }
        sk_X509_ALGOR_pop_free(capabilities, X509_ALGOR_free);
        return out;
    }();
    return der;
}

// `canonical`: the caller checked that the input has CRLF line ends only; then the content is
// hashed and copied as it is (CMS_BINARY) instead of line by line, which is the same bytes.
Status sign_to_sink(const SigningKey& key, const SignOptions& options, BIO* in, CrlfSink& sink,
                    bool canonical) {
    auto pkey = key.private_key();
    if (!pkey) return std::unexpected(pkey.error());
    const BIO_METHOD* method = sink_method();
    if (!method) return fail(ErrorKind::transient, ossl::errors("BIO_meth_new failed"));
    ossl::Bio out(BIO_new(method));
    if (!out) return fail(ErrorKind::transient, ossl::errors("BIO_new failed"));
    BIO_set_data(out.get(), &sink);

    const unsigned int flags = CMS_DETACHED | CMS_STREAM | (canonical ? CMS_BINARY : 0u);
    STACK_OF(X509)* extra = options.include_chain ? key.chain() : nullptr;
    ossl::Cms cms(CMS_sign(nullptr, nullptr, extra, nullptr, flags | CMS_PARTIAL));
    if (!cms) return fail(ErrorKind::permanent, ossl::errors("CMS_sign failed"));
    // The SMIMECapabilities attribute CMS_add1_signer adds by default, from its encoding made once.
    const std::string& capabilities = standard_smime_capabilities();
    if (capabilities.empty())
        return fail(ErrorKind::permanent, ossl::errors("S/MIME capabilities not available"));
    CMS_SignerInfo* signer = CMS_add1_signer(cms.get(), key.certificate(), pkey->get(),
                                             EVP_sha256(), flags | CMS_NOSMIMECAP);
    if (!signer) return fail(ErrorKind::permanent, ossl::errors("CMS_add1_signer failed"));
    if (CMS_signed_add1_attr_by_NID(signer, NID_SMIMECapabilities, V_ASN1_SEQUENCE,
                                    capabilities.data(),
                                    static_cast<int>(capabilities.size())) != 1)
        return fail(ErrorKind::permanent, ossl::errors("cannot add the S/MIME capabilities"));
    // SMIME_OLDMIME (same bit as CMS_NOOLDMIMETYPE) selects application/x-pkcs7-signature.
    unsigned int write_flags = flags | CMS_CRLFEOL;
    if (options.protocol == SignatureProtocol::x_pkcs7_signature) write_flags |= SMIME_OLDMIME;
    // The digest is computed while the entity streams from `in` to the sink; the signature
    // (and, for PKCS#11, the token call) happens at the end of the content.
    int ok = SMIME_write_CMS(out.get(), cms.get(), in, static_cast<int>(write_flags));
    if (sink.failed) return fail(ErrorKind::transient, sink.error);
    if (ok != 1) return fail(ErrorKind::permanent, ossl::errors("SMIME_write_CMS failed"));
    if (sink.in_first_line) return fail(ErrorKind::permanent, "S/MIME writer produced no output");
    if (BIO_flush(out.get()) != 1 || sink.failed)
        return fail(ErrorKind::transient, sink.failed ? sink.error : ossl::errors("flush failed"));
    return {};
}

// True when every LF is preceded by CR and every CR followed by LF.
bool is_canonical_crlf(std::string_view text) {
    size_t crs = 0, lfs = 0;
    for (const char* p = text.data();
         (p = static_cast<const char*>(std::memchr(p, '\n', text.data() + text.size() - p))); ++p) {
        if (p == text.data() || p[-1] != '\r') return false;
        ++lfs;
    }
    for (const char* p = text.data();
         (p = static_cast<const char*>(std::memchr(p, '\r', text.data() + text.size() - p))); ++p)
        ++crs;
    return crs == lfs;
}

// ------------------------------------------------------------- content source BIO
// A read-only BIO over memory that supports BIO_gets (CMS_verify canonicalises line by line).
// Over a mapped file it gives the pages behind the read position back to the kernel, so that
// verifying a 100 MB message does not keep 100 MB resident.
struct MemSource {
    const char* data = nullptr;
    size_t size = 0;
    size_t pos = 0;
    const char* map_base = nullptr;  // page-aligned mapping start, or null: no release
    size_t released = 0;             // bytes of the mapping already given back

    void advance(size_t n) {
        pos += n;
        if (!map_base) return;
        constexpr size_t step = 8u << 20;
        size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
        size_t done = static_cast<size_t>(data + pos - map_base) / page * page;
        if (done >= released + step) {
            // Private read-only file mapping: dropped pages would simply be read again.
            ::madvise(const_cast<char*>(map_base) + released, done - released, MADV_DONTNEED);
            released = done;
        }
    }
};

int source_read(BIO* b, char* out, int len) {
    auto* src = static_cast<MemSource*>(BIO_get_data(b));
    size_t n = std::min(static_cast<size_t>(std::max(len, 0)), src->size - src->pos);
    std::memcpy(out, src->data + src->pos, n);
    src->advance(n);
    return static_cast<int>(n);
}

int source_gets(BIO* b, char* out, int size) {
    auto* src = static_cast<MemSource*>(BIO_get_data(b));
    if (size <= 0) return 0;
    size_t max = std::min(static_cast<size_t>(size - 1), src->size - src->pos);
    const char* start = src->data + src->pos;
    const char* nl = static_cast<const char*>(std::memchr(start, '\n', max));
    size_t n = nl ? static_cast<size_t>(nl - start) + 1 : max;
    std::memcpy(out, start, n);
    out[n] = '\0';
    src->advance(n);
    return static_cast<int>(n);
}

long source_ctrl(BIO* b, int cmd, long, void*) {
    auto* src = static_cast<MemSource*>(BIO_get_data(b));
    switch (cmd) {
        case BIO_CTRL_EOF:
            return src->pos >= src->size ? 1 : 0;
        case BIO_CTRL_PENDING:
            return static_cast<long>(src->size - src->pos);
        case BIO_CTRL_FLUSH:
            return 1;
        default:
            return 0;
    }
}

const BIO_METHOD* source_method() {
    static const BIO_METHOD* method = [] {
        BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pecd-mem-source");
        if (!m) return static_cast<BIO_METHOD*>(nullptr);
        BIO_meth_set_read(m, source_read);
        BIO_meth_set_gets(m, source_gets);
        BIO_meth_set_ctrl(m, source_ctrl);
        BIO_meth_set_create(m, sink_create);
        return m;
    }();
    return method;
}

// ------------------------------------------------------------------------ MIME splitting

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

struct HeaderField {
    std::string_view name;
    std::string value;  // unfolded
};

// Header block up to the first empty line (CRLF or LF). `body_start` is set past that line.
std::vector<HeaderField> parse_headers(std::string_view text, size_t& body_start) {
    std::vector<HeaderField> fields;
    size_t pos = 0;
    body_start = text.size();
    while (pos < text.size()) {
        size_t nl = text.find('\n', pos);
        size_t line_end = nl == std::string_view::npos ? text.size() : nl;
        size_t next = nl == std::string_view::npos ? text.size() : nl + 1;
        std::string_view line = text.substr(pos, line_end - pos);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.empty()) {
            body_start = next;
            return fields;
        }
        if ((line[0] == ' ' || line[0] == '\t') && !fields.empty()) {
            fields.back().value += line;
        } else if (size_t colon = line.find(':'); colon != std::string_view::npos) {
            fields.push_back({trim(line.substr(0, colon)), std::string(line.substr(colon + 1))});
        }
        pos = next;
    }
    return fields;
}

const HeaderField* find_header(const std::vector<HeaderField>& fields, std::string_view name) {
    for (const auto& f : fields)
        if (iequals(f.name, name)) return &f;
    return nullptr;
}

struct ContentType {
    std::string type;                           // lower-case "type/subtype"
    std::map<std::string, std::string> params;  // lower-case names
};

ContentType parse_content_type(std::string_view value) {
    ContentType ct;
    size_t semi = value.find(';');
    ct.type = lower(trim(value.substr(0, semi)));
    size_t pos = semi;
    while (pos != std::string_view::npos && pos < value.size()) {
        ++pos;  // past ';'
        size_t eq = value.find('=', pos);
        if (eq == std::string_view::npos) break;
        std::string name = lower(trim(value.substr(pos, eq - pos)));
        size_t v = eq + 1;
        while (v < value.size() && (value[v] == ' ' || value[v] == '\t')) ++v;
        std::string val;
        if (v < value.size() && value[v] == '"') {
            ++v;
            while (v < value.size() && value[v] != '"') {
                if (value[v] == '\\' && v + 1 < value.size()) ++v;
                val += value[v++];
            }
            pos = value.find(';', v);
        } else {
            size_t end = value.find(';', v);
            val = std::string(trim(value.substr(v, end == std::string_view::npos ? end : end - v)));
            pos = end;
        }
        ct.params.emplace(std::move(name), std::move(val));
    }
    return ct;
}

struct Delimiter {
    size_t start = 0;        // first byte of "--boundary"
    size_t content_end = 0;  // where the previous part ends (its last EOL excluded)
    size_t after = 0;        // first byte of the next part
    bool close = false;
};

// RFC 2046 §5.1.1: a delimiter is "--boundary" at the start of a line, optionally "--", then
// optional whitespace and the end of the line. `pos` is where the needle was found.
std::optional<Delimiter> delimiter_at(std::string_view body, std::string_view needle, size_t pos) {
    if (pos != 0 && body[pos - 1] != '\n') return std::nullopt;
    size_t p = pos + needle.size();
    bool close = body.substr(p, 2) == "--";
    if (close) p += 2;
    while (p < body.size() && (body[p] == ' ' || body[p] == '\t' || body[p] == '\r')) ++p;
    if (p != body.size() && body[p] != '\n') return std::nullopt;
    Delimiter d;
    d.start = pos;
    d.close = close;
    d.after = p == body.size() ? p : p + 1;
    size_t end = pos;
    if (end > 0 && body[end - 1] == '\n') --end;
    if (end > 0 && body[end - 1] == '\r') --end;
    d.content_end = end;
    return d;
}

std::optional<Delimiter> find_delimiter(std::string_view body, std::string_view boundary,
                                        size_t from) {
    std::string needle = "--" + std::string(boundary);
    for (size_t pos = from; (pos = body.find(needle, pos)) != std::string_view::npos;
         pos += needle.size())
        if (auto d = delimiter_at(body, needle, pos)) {
            d->content_end = std::max(d->content_end, from);
            return d;
        }
    return std::nullopt;
}

// The last delimiter starting before `before`. Searching from the end finds the signature part
// without reading the (possibly huge) signed content: a mapped file stays mostly unread.
std::optional<Delimiter> find_last_delimiter(std::string_view body, std::string_view boundary,
                                             size_t before) {
    std::string needle = "--" + std::string(boundary);
    if (before == 0) return std::nullopt;
    for (size_t pos = body.rfind(needle, before - 1); pos != std::string_view::npos;
         pos = pos == 0 ? std::string_view::npos : body.rfind(needle, pos - 1))
        if (auto d = delimiter_at(body, needle, pos)) return d;
    return std::nullopt;
}

struct SignedParts {
    std::vector<HeaderField> headers;  // top-level
    std::string protocol;
    std::string_view content;  // the signed part of a multipart/signed
    bool detached = false;     // multipart/signed (else opaque application/pkcs7-mime)
    std::string der;           // the CMS
    std::string problem;       // set when there is no usable signature
};

bool decode_base64(std::string_view in, std::string& out) {
    EVP_ENCODE_CTX* ctx = EVP_ENCODE_CTX_new();
    if (!ctx) return false;
    EVP_DecodeInit(ctx);
    out.resize(in.size() / 4 * 3 + 64);
    int total = 0;
    bool ok = true;
    size_t pos = 0;
    while (ok && pos < in.size()) {
        int chunk = static_cast<int>(std::min<size_t>(in.size() - pos, 1 << 20));
        int n = 0;
        if (EVP_DecodeUpdate(ctx, reinterpret_cast<unsigned char*>(out.data()) + total, &n,
                             reinterpret_cast<const unsigned char*>(in.data()) + pos, chunk) < 0)
            ok = false;
        total += n;
        pos += static_cast<size_t>(chunk);
    }
    int n = 0;
    if (ok && EVP_DecodeFinal(ctx, reinterpret_cast<unsigned char*>(out.data()) + total, &n) < 0)
        ok = false;
    EVP_ENCODE_CTX_free(ctx);
    out.resize(static_cast<size_t>(total + n));
    return ok && !out.empty();
}

bool decode_part_body(const std::vector<HeaderField>& headers, std::string_view body,
                      std::string& der) {
    const HeaderField* cte = find_header(headers, "Content-Transfer-Encoding");
    if (cte && iequals(trim(cte->value), "base64")) return decode_base64(body, der);
    der.assign(body);  // binary DER
    return !der.empty();
}

SignedParts split_signed(std::string_view raw) {
    SignedParts parts;
    size_t body_start = 0;
    parts.headers = parse_headers(raw, body_start);
    std::string_view body = raw.substr(body_start);
    const HeaderField* ctf = find_header(parts.headers, "Content-Type");
    if (!ctf) {
        parts.problem = "no Content-Type: not an S/MIME message";
        return parts;
    }
    ContentType ct = parse_content_type(ctf->value);
    if (ct.type == "application/pkcs7-mime" || ct.type == "application/x-pkcs7-mime") {
        if (!decode_part_body(parts.headers, body, parts.der))
            parts.problem = "undecodable " + ct.type + " body";
        parts.protocol = ct.type;
        return parts;
    }
    if (ct.type != "multipart/signed") {
        parts.problem = "not multipart/signed (" + ct.type + ")";
        return parts;
    }
    parts.protocol = lower(ct.params["protocol"]);
    const std::string& boundary = ct.params["boundary"];
    if (boundary.empty()) {
        parts.problem = "multipart/signed without boundary";
        return parts;
    }
    auto first = find_delimiter(body, boundary, 0);
    if (!first) {
        parts.problem = "multipart/signed without any part";
        return parts;
    }
    // A multipart/signed has two parts: the signature part is the last one before the close
    // delimiter (or the last one at all, tolerating a missing close delimiter).
    auto last = find_last_delimiter(body, boundary, body.size());
    size_t sig_end = body.size();
    if (last && last->close) {
        sig_end = last->content_end;
        last = find_last_delimiter(body, boundary, last->start);
    }
    if (!last || last->start <= first->start || last->close) {
        parts.problem = "multipart/signed without a signature part";
        return parts;
    }
    parts.detached = true;
    parts.content =
        body.substr(first->after, std::max(last->content_end, first->after) - first->after);
    std::string_view sig = body.substr(last->after, sig_end - last->after);
    size_t sig_body = 0;
    auto sig_headers = parse_headers(sig, sig_body);
    const HeaderField* sig_ct = find_header(sig_headers, "Content-Type");
    std::string sig_type = sig_ct ? parse_content_type(sig_ct->value).type : "";
    if (sig_type != "application/pkcs7-signature" && sig_type != "application/x-pkcs7-signature") {
        parts.problem = "second part is not a PKCS#7 signature (" + sig_type + ")";
        return parts;
    }
    if (!decode_part_body(sig_headers, sig.substr(sig_body), parts.der))
        parts.problem = "unreadable smime.p7s";
    return parts;
}

// The addr-spec domain of the first From address, lower-case ("" when absent).
std::string from_domain_of(std::string_view address) {
    size_t lt = address.rfind('<');  // the angle-addr follows any display name
    if (lt != std::string_view::npos) {
        size_t gt = address.find('>', lt);
        address = address.substr(lt + 1, gt == std::string_view::npos ? gt : gt - lt - 1);
    }
    address = trim(address);
    size_t at = address.rfind('@');
    if (at == std::string_view::npos) return "";
    return lower(trim(address.substr(at + 1)));
}

// ------------------------------------------------------------------ certificate helpers

std::string name_oneline(X509_NAME* name) {
    ossl::Bio bio(BIO_new(BIO_s_mem()));
    if (!bio) return "";
    unsigned long flags = (XN_FLAG_ONELINE & ~XN_FLAG_SPC_EQ & ~ASN1_STRFLGS_ESC_MSB);
    if (X509_NAME_print_ex(bio.get(), name, 0, flags) < 0) return "";
    char* data = nullptr;
    long len = BIO_get_mem_data(bio.get(), &data);
    return std::string(data, static_cast<size_t>(len));
}

std::string first_san_email(X509* cert) {
    auto* names =
        static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    if (!names) return "";
    std::string out;
    for (int i = 0; i < sk_GENERAL_NAME_num(names) && out.empty(); ++i) {
        GENERAL_NAME* gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type == GEN_EMAIL)
            out.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(gn->d.rfc822Name)),
                       static_cast<size_t>(ASN1_STRING_length(gn->d.rfc822Name)));
    }
    GENERAL_NAMES_free(names);
    return out;
}

std::optional<time_t> asn1_time_t(const ASN1_TIME* t) {
    struct tm tm {};
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return std::nullopt;
    return timegm(&tm);
}

std::optional<time_t> signing_time_of(CMS_SignerInfo* si) {
    int idx = CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1);
    if (idx < 0) return std::nullopt;
    X509_ATTRIBUTE* attr = CMS_signed_get_attr(si, idx);
    ASN1_TYPE* value = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
    if (!value) return std::nullopt;
    if (value->type == V_ASN1_UTCTIME) return asn1_time_t(value->value.utctime);
    if (value->type == V_ASN1_GENERALIZEDTIME) return asn1_time_t(value->value.generalizedtime);
    return std::nullopt;
}

VerifyFailure classify_x509_error(int err) {
    switch (err) {
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return VerifyFailure::expired;
        case X509_V_ERR_CERT_REVOKED:
            return VerifyFailure::revoked;
        case X509_V_ERR_UNABLE_TO_GET_CRL:
        case X509_V_ERR_CRL_HAS_EXPIRED:
        case X509_V_ERR_CRL_NOT_YET_VALID:
        case X509_V_ERR_CRL_SIGNATURE_FAILURE:
        case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
        case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
        case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD:
        case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
        case X509_V_ERR_DIFFERENT_CRL_SCOPE:
        case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
            return VerifyFailure::crl_unavailable;
        case X509_V_ERR_INVALID_PURPOSE:
        case X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION:
        case X509_V_ERR_INVALID_EXTENSION:
        case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
            return VerifyFailure::bad_certificate;
        default:
            return VerifyFailure::untrusted_chain;
    }
}

// ------------------------------------------------------- certificates carried by the CMS
// d2i_CMS_ContentInfo decodes every certificate the CMS carries, and OpenSSL 3.0 decodes each
// public key through OSSL_DECODER: the costliest step of a verification. Every message of a
// provider carries the same certificates, so their DER is cut out of the CMS before d2i and
// taken from a cache of decoded certificates instead. Signatures do not cover the certificates
// field (RFC 5652 §5.4), so the cut CMS verifies exactly as the whole one.

// One BER element (X.690 §8.1), its identifier and length decoded by OpenSSL's ASN1_get_object:
// low tag numbers (one identifier byte), definite or indefinite length.
struct BerElement {
    unsigned char tag = 0;  // the identifier byte: class | constructed | number
    size_t start = 0;       // the tag byte
    size_t content = 0;     // the first content byte
    size_t end = 0;         // one past the element, end-of-contents octets included
    bool indefinite = false;
    size_t content_end() const { return indefinite ? end - 2 : end; }
};

std::optional<BerElement> ber_element(std::string_view der, size_t pos, int depth = 0) {
    if (depth > 32 || pos >= der.size()) return std::nullopt;
    const auto* begin = reinterpret_cast<const unsigned char*>(der.data()) + pos;
    const unsigned char* p = begin;
    long length = 0;
    int number = 0, cls = 0;
    const int ret =
        ASN1_get_object(&p, &length, &number, &cls, static_cast<long>(der.size() - pos));
    if ((ret & 0x80) || number > 30) return std::nullopt;
    BerElement e;
    e.tag = static_cast<unsigned char>(cls | (ret & V_ASN1_CONSTRUCTED) | number);
    e.start = pos;
    e.content = pos + static_cast<size_t>(p - begin);
    if (ret & 1) {  // indefinite length (constructed only): children up to end-of-contents
        e.indefinite = true;
        size_t q = e.content;
        while (q + 2 <= der.size() && !(der[q] == 0 && der[q + 1] == 0)) {
            auto child = ber_element(der, q, depth + 1);
            if (!child) return std::nullopt;
            q = child->end;
        }
        if (q + 2 > der.size()) return std::nullopt;
        e.end = q + 2;
        return e;
    }
    e.end = e.content + static_cast<size_t>(length);  // within der: ASN1_get_object checked it
    return e;
}

// `outer` re-encoded with the bytes [from, to) of its content replaced by `inner`; its new
// identifier and length written by OpenSSL's ASN1_put_object.
std::optional<std::string> ber_replace(std::string_view der, const BerElement& outer, size_t from,
                                       size_t to, std::string_view inner) {
    std::string content;
    content.reserve(outer.end - outer.content);
    content.append(der.substr(outer.content, from - outer.content));
    content.append(inner);
    content.append(der.substr(to, outer.end - to));  // end-of-contents octets included
    if (content.size() > static_cast<size_t>(INT32_MAX)) return std::nullopt;
    unsigned char header[16];
    unsigned char* p = header;
    const int constructed = outer.indefinite ? 2 : ((outer.tag & V_ASN1_CONSTRUCTED) ? 1 : 0);
    ASN1_put_object(&p, constructed, static_cast<int>(content.size()), outer.tag & 0x1F,
                    outer.tag & 0xC0);
    return std::string(reinterpret_cast<const char*>(header), static_cast<size_t>(p - header)) +
           content;
}

struct CmsWithoutCertificates {
    std::string der;                        // the ContentInfo with no certificates field
    std::vector<std::string_view> carried;  // the DER of each certificate it had, in order
};

// ContentInfo { OID, [0] SignedData { version, digestAlgorithms, encapContentInfo,
// [0] certificates, ... } }. Nothing when the shape differs or any certificate choice is not a
// plain X.509 certificate: the caller then decodes the whole CMS as it is.
std::optional<CmsWithoutCertificates> cut_certificates(std::string_view der) {
    auto info = ber_element(der, 0);
    if (!info || info->tag != 0x30) return std::nullopt;
    auto type = ber_element(der, info->content);
    if (!type || type->tag != 0x06) return std::nullopt;
    auto explicit0 = ber_element(der, type->end);
    if (!explicit0 || explicit0->tag != 0xA0) return std::nullopt;
    auto signed_data = ber_element(der, explicit0->content);
    if (!signed_data || signed_data->tag != 0x30) return std::nullopt;
    size_t pos = signed_data->content;
    for (unsigned char tag : {0x02, 0x31, 0x30}) {  // version, digestAlgorithms, encapContentInfo
        auto field = ber_element(der, pos);
        if (!field || field->tag != tag) return std::nullopt;
        pos = field->end;
    }
    auto certificates = ber_element(der, pos);
    if (!certificates || certificates->tag != 0xA0) return std::nullopt;
    CmsWithoutCertificates out;
    for (size_t p = certificates->content; p < certificates->content_end();) {
        auto cert = ber_element(der, p);
        if (!cert || cert->tag != 0x30) return std::nullopt;
        out.carried.push_back(der.substr(cert->start, cert->end - cert->start));
        p = cert->end;
    }
    if (out.carried.empty()) return std::nullopt;
    auto cut = ber_replace(der, *signed_data, certificates->start, certificates->end, "");
    if (cut) cut = ber_replace(der, *explicit0, signed_data->start, signed_data->end, *cut);
    if (cut) cut = ber_replace(der, *info, explicit0->start, explicit0->end, *cut);
    if (!cut) return std::nullopt;
    out.der = std::move(*cut);
    return out;
}

}  // namespace

// -------------------------------------------------------------------------------- signing

Status sign_entity_bio(const SigningKey& key, const SignOptions& options, BIO* in, BIO* out) {
    CrlfSink sink;
    sink.next = out;
    return sign_to_sink(key, options, in, sink, false);
}

Result<std::string> sign_entity(const SigningKey& key, const SignOptions& options,
                                std::string_view entity) {
    if (entity.size() > static_cast<size_t>(INT32_MAX))
        return fail(ErrorKind::permanent,
                    "entity too large for a memory BIO: use sign_entity_file");
    ossl::Bio in(BIO_new_mem_buf(entity.data(), static_cast<int>(entity.size())));
    if (!in) return fail(ErrorKind::transient, ossl::errors("cannot wrap entity in a BIO"));
    std::string output;
    output.reserve(entity.size() + entity.size() / 64 + 8192);  // + p7s with cert(s)
    CrlfSink sink;
    sink.str = &output;
    if (auto ok = sign_to_sink(key, options, in.get(), sink, is_canonical_crlf(entity)); !ok)
        return std::unexpected(ok.error());
    return output;
}

Status sign_entity_file(const SigningKey& key, const SignOptions& options,
                        const std::filesystem::path& in, const std::filesystem::path& out) {
    ossl::Bio input(BIO_new_file(in.c_str(), "rb"));
    if (!input) return fail_errno("cannot open " + in.string());
    ossl::Bio output(BIO_new_file(out.c_str(), "wb"));
    if (!output) return fail_errno("cannot create " + out.string());
    auto ok = sign_entity_bio(key, options, input.get(), output.get());
    output.reset();  // closes the file
    if (!ok) {
        std::error_code ec;
        std::filesystem::remove(out, ec);
    }
    return ok;
}

EntitySigner make_entity_signer(std::shared_ptr<const SigningKey> key, SignOptions options) {
    return [key = std::move(key), options](std::string_view entity) -> Result<std::string> {
        if (!key) return fail(ErrorKind::config, "no signing key configured");
        return sign_entity(*key, options, entity);
    };
}

// ---------------------------------------------------------------------------- verification

std::string_view to_string(VerifyFailure failure) {
    switch (failure) {
        case VerifyFailure::none:
            return "none";
        case VerifyFailure::no_signature:
            return "no_signature";
        case VerifyFailure::bad_signature:
            return "bad_signature";
        case VerifyFailure::untrusted_chain:
            return "untrusted_chain";
        case VerifyFailure::bad_certificate:
            return "bad_certificate";
        case VerifyFailure::expired:
            return "expired";
        case VerifyFailure::revoked:
            return "revoked";
        case VerifyFailure::crl_unavailable:
            return "crl_unavailable";
        case VerifyFailure::not_in_index:
            return "not_in_index";
        case VerifyFailure::cert_mismatch:
            return "cert_mismatch";
        case VerifyFailure::domain_not_managed:
            return "domain_not_managed";
    }
    return "unknown";
}

struct SmimeVerifier::State {
    TrustConfig config;
    mutable std::shared_mutex mutex;    // guards store, crl_next_update and cache
    std::shared_ptr<X509_STORE> store;  // shared: a verify in flight survives a reload
    time_t crl_next_update = 0;         // earliest nextUpdate of the loaded CRLs, 0 = none

    struct Entry {
        VerifyFailure failure;
        std::string reason;
        time_t valid_until;  // 0 = no expiry (checks at a fixed instant)
    };
    mutable std::unordered_map<std::string, Entry> cache;
    mutable std::atomic<std::size_t> hits{0}, misses{0};

    // Certificates carried by CMS signatures, decoded once, by DER (independent of the trust
    // configuration, so kept across reloads).
    mutable std::mutex decoded_mutex;
    mutable std::unordered_map<std::string, ossl::X509Ptr> decoded;

    Status load(TrustConfig next);
    // The certificates of `ders`, in order; null when one does not decode.
    ossl::X509Stack certificates(const std::vector<std::string_view>& ders) const;
};

ossl::X509Stack SmimeVerifier::State::certificates(
    const std::vector<std::string_view>& ders) const {
    constexpr std::size_t kMaxDecoded = 256;  // a few per provider
    ossl::X509Stack out(sk_X509_new_null());
    if (!out) return out;
    for (std::string_view der : ders) {
        std::string key(der);
        std::lock_guard lock(decoded_mutex);
        auto it = decoded.find(key);
        if (it == decoded.end()) {
            const auto* p = reinterpret_cast<const unsigned char*>(der.data());
            ossl::X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
            if (!cert || p != reinterpret_cast<const unsigned char*>(der.data() + der.size()))
                return nullptr;
            if (decoded.size() >= kMaxDecoded) decoded.clear();
            it = decoded.emplace(std::move(key), std::move(cert)).first;
        }
        if (X509_up_ref(it->second.get()) != 1) return nullptr;
        if (sk_X509_push(out.get(), it->second.get()) <= 0) {
            X509_free(it->second.get());
            return nullptr;
        }
    }
    return out;
}

Status SmimeVerifier::State::load(TrustConfig next) {
    std::shared_ptr<X509_STORE> fresh(X509_STORE_new(), X509_STORE_free);
    if (!fresh) return fail(ErrorKind::transient, ossl::errors("X509_STORE_new failed"));
    for (const auto& file : next.ca_files)
        if (X509_STORE_load_file(fresh.get(), file.c_str()) != 1)
            return fail(ErrorKind::config, ossl::errors("cannot load CA file " + file.string()));
    for (const auto& dir : next.ca_dirs)
        if (X509_STORE_load_path(fresh.get(), dir.c_str()) != 1)
            return fail(ErrorKind::config, ossl::errors("cannot load CA dir " + dir.string()));
    time_t next_update = 0;
    for (const auto& file : next.crl_files) {
        ossl::Bio bio(BIO_new_file(file.c_str(), "rb"));
        if (!bio) return fail(ErrorKind::config, ossl::errors("cannot open CRL " + file.string()));
        std::vector<ossl::Crl> crls;
        while (X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr))
            crls.emplace_back(crl);
        if (crls.empty()) {  // not PEM: try one DER CRL
            ERR_clear_error();
            BIO_reset(bio.get());
            if (X509_CRL* crl = d2i_X509_CRL_bio(bio.get(), nullptr)) crls.emplace_back(crl);
        }
        if (crls.empty())
            return fail(ErrorKind::config, ossl::errors("no CRL in " + file.string()));
        ERR_clear_error();
        for (auto& crl : crls) {
            if (X509_STORE_add_crl(fresh.get(), crl.get()) != 1)
                return fail(ErrorKind::config, ossl::errors("cannot add CRL " + file.string()));
            if (auto t = asn1_time_t(X509_CRL_get0_nextUpdate(crl.get())))
                next_update = next_update == 0 ? *t : std::min(next_update, *t);
        }
    }
    std::unique_lock lock(mutex);
    config = std::move(next);
    store = std::move(fresh);
    crl_next_update = next_update;
    cache.clear();
    return {};
}

Result<std::shared_ptr<SmimeVerifier>> SmimeVerifier::create(TrustConfig config) {
    std::shared_ptr<SmimeVerifier> verifier(new SmimeVerifier());
    verifier->state_ = std::make_unique<State>();
    if (auto ok = verifier->state_->load(std::move(config)); !ok)
        return std::unexpected(ok.error());
    return verifier;
}

SmimeVerifier::~SmimeVerifier() = default;

Status SmimeVerifier::reload() {
    TrustConfig copy;
    {
        std::shared_lock lock(state_->mutex);
        copy = state_->config;
    }
    return state_->load(std::move(copy));
}

Status SmimeVerifier::reload(TrustConfig config) {
    return state_->load(std::move(config));
}

SmimeVerifier::CacheStats SmimeVerifier::cache_stats() const {
    std::shared_lock lock(state_->mutex);
    return {state_->cache.size(), state_->hits.load(), state_->misses.load()};
}

namespace {

// When the chain is checked (none: now), from VerifyOptions; an error when the check is to be at
// the signing time and the CMS has no signingTime.
std::expected<std::optional<time_t>, std::string> check_instant(const VerifyOptions& options,
                                                                std::optional<time_t> signed_at) {
    if (options.at_signing_time) {
        if (!signed_at)
            return std::unexpected("at-signing-time check asked but the CMS has no signingTime");
        return signed_at;
    }
    if (options.at_time) return std::chrono::system_clock::to_time_t(*options.at_time);
    return std::nullopt;
}

// The signer's chain, validity, purpose and CRL against `store`. A result for "now" (no `at`)
// holds until a certificate or CRL of it expires, at most an hour; one for a fixed instant
// holds for ever (valid_until 0).
struct ChainResult {
    VerifyFailure failure = VerifyFailure::none;
    std::string reason;
    time_t valid_until = 0;
};
Result<ChainResult> check_chain(X509_STORE* store, X509* signer, STACK_OF(X509) * carried,
                                bool check_crl, std::optional<time_t> at, time_t now,
                                time_t crl_next) {
    ossl::StoreCtx ctx(X509_STORE_CTX_new());
    if (!ctx || X509_STORE_CTX_init(ctx.get(), store, signer, carried) != 1)
        return fail(ErrorKind::transient, ossl::errors("X509_STORE_CTX_init failed"));
    X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SMIME_SIGN);
    if (check_crl) X509_STORE_CTX_set_flags(ctx.get(), X509_V_FLAG_CRL_CHECK);
    if (at) X509_STORE_CTX_set_time(ctx.get(), 0, *at);
    ChainResult result;
    if (X509_verify_cert(ctx.get()) != 1) {
        int err = X509_STORE_CTX_get_error(ctx.get());
        X509* bad = X509_STORE_CTX_get_current_cert(ctx.get());
        result.failure = classify_x509_error(err);
        result.reason = std::string("certificate check failed at depth ") +
                        std::to_string(X509_STORE_CTX_get_error_depth(ctx.get())) + ": " +
                        X509_verify_cert_error_string(err) +
                        (bad ? " (" + name_oneline(X509_get_subject_name(bad)) + ")" : "");
    }
    if (!at) {
        time_t until = now + 3600;
        if (crl_next > 0) until = std::min(until, crl_next);
        STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
        for (int i = 0; chain && i < sk_X509_num(chain); ++i)
            if (auto t = asn1_time_t(X509_get0_notAfter(sk_X509_value(chain, i))))
                until = std::min(until, *t);
        result.valid_until = std::max(until, now + 1);
    }
    ERR_clear_error();
    return result;
}

Result<VerifyReport> verify_impl(const SmimeVerifier::State& state, std::string_view raw,
                                 const IndexSnapshot* index, const VerifyOptions& options,
                                 const char* map_base) {
    using State = SmimeVerifier::State;
    VerifyReport report;
    auto reject = [&report](VerifyFailure failure, std::string reason) -> Result<VerifyReport> {
        report.failure = failure;
        report.reason = std::move(reason);
        ERR_clear_error();
        return report;
    };

    SignedParts parts = split_signed(raw);
    report.protocol = parts.protocol;
    if (!parts.problem.empty()) return reject(VerifyFailure::no_signature, parts.problem);

    auto decode_cms = [](std::string_view bytes) {
        const auto* der = reinterpret_cast<const unsigned char*>(bytes.data());
        return ossl::Cms(d2i_CMS_ContentInfo(nullptr, &der, static_cast<long>(bytes.size())));
    };
    // The certificates it carries, decoded from the cache; the whole CMS decoded as it is when
    // they cannot be cut out (or the cut one does not decode: then neither would the whole).
    ossl::Cms cms;
    ossl::X509Stack carried;
    if (auto cut = cut_certificates(parts.der)) {
        carried = state.certificates(cut->carried);
        if (carried) cms = decode_cms(cut->der);
    }
    if (!cms) {
        ERR_clear_error();
        cms = decode_cms(parts.der);
        if (!cms) return reject(VerifyFailure::no_signature, ossl::errors("smime.p7s is not CMS"));
        carried.reset(CMS_get1_certs(cms.get()));
    }
    if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed)
        return reject(VerifyFailure::no_signature, "CMS is not signed-data");
    STACK_OF(CMS_SignerInfo)* signers = CMS_get0_SignerInfos(cms.get());
    if (sk_CMS_SignerInfo_num(signers) < 1)
        return reject(VerifyFailure::no_signature, "CMS signed-data without signer");
    if (CMS_set1_signers_certs(cms.get(), carried.get(), 0) < sk_CMS_SignerInfo_num(signers))
        return reject(VerifyFailure::no_signature,
                      ossl::errors("signer certificate not included in the CMS"));
    CMS_SignerInfo* si = sk_CMS_SignerInfo_value(signers, 0);
    X509* signer = nullptr;
    X509_ALGOR* digest_alg = nullptr;
    CMS_SignerInfo_get0_algs(si, nullptr, &signer, &digest_alg, nullptr);
    if (!signer) return reject(VerifyFailure::no_signature, "signer certificate not found");

    report.signer_subject = name_oneline(X509_get_subject_name(signer));
    report.signer_email = first_san_email(signer);
    auto sha1 = cert_sha1_hex(signer);
    if (!sha1) return std::unexpected(sha1.error());
    report.signer_cert_sha1 = *sha1;
    if (digest_alg) {
        const ASN1_OBJECT* oid = nullptr;
        X509_ALGOR_get0(&oid, nullptr, nullptr, digest_alg);
        report.digest_algorithm = lower(OBJ_nid2sn(OBJ_obj2nid(oid)));
    }
    std::optional<time_t> signed_at = signing_time_of(si);
    if (signed_at) report.signing_time = std::chrono::system_clock::from_time_t(*signed_at);

    // 1. Digest and signature. Content that is CRLF already (the wire form) is digested as it
    // is (CMS_BINARY: the same bytes); anything else goes through OpenSSL's canonicalisation,
    // line by line, so that LF-only stored copies verify like the wire form. Only up to 1 MiB:
    // the check reads the whole content, and a large mapped file is read once, page by page,
    // as it is digested (the source BIO returns the pages behind it).
    ossl::Bio content;
    MemSource source{parts.content.data(), parts.content.size(), 0, map_base, 0};
    if (parts.detached) {
        const BIO_METHOD* method = source_method();
        content.reset(method ? BIO_new(method) : nullptr);
        if (!content) return fail(ErrorKind::transient, ossl::errors("BIO_new failed"));
        BIO_set_data(content.get(), &source);
    }
    const unsigned int verify_flags =
        CMS_NO_SIGNER_CERT_VERIFY |
        (parts.detached && parts.content.size() <= (1u << 20) && is_canonical_crlf(parts.content)
             ? CMS_BINARY
             : 0u);
    if (CMS_verify(cms.get(), nullptr, nullptr, content.get(), nullptr, verify_flags) != 1)
        return reject(VerifyFailure::bad_signature, ossl::errors("signature check failed"));

    // 2. Chain, validity, purpose, CRL: cached per signer (+ carried intermediates).
    if (options.chain == ChainCheck::full) {
        report.chain_checked = true;
        auto instant = check_instant(options, signed_at);
        if (!instant) return reject(VerifyFailure::bad_certificate, instant.error());
        std::optional<time_t> at = *instant;
        std::string key = report.signer_cert_sha1;
        for (int i = 0; carried && i < sk_X509_num(carried.get()); ++i) {
            X509* c = sk_X509_value(carried.get(), i);
            if (X509_cmp(c, signer) == 0) continue;
            auto h = cert_sha1_hex(c);
            if (!h) return std::unexpected(h.error());
            key += "+" + *h;
        }
        if (at) key += "@" + std::to_string(*at);

        time_t now = std::time(nullptr);
        std::optional<State::Entry> cached;
        std::shared_ptr<X509_STORE> store;
        time_t crl_next = 0;
        bool check_crl = true;
        {
            std::shared_lock lock(state.mutex);
            auto it = state.cache.find(key);
            if (it != state.cache.end() &&
                (it->second.valid_until == 0 || now < it->second.valid_until))
                cached = it->second;
            store = state.store;
            crl_next = state.crl_next_update;
            check_crl = state.config.check_crl;
        }
        if (cached) {
            ++state.hits;
        } else {
            ++state.misses;
            auto checked =
                check_chain(store.get(), signer, carried.get(), check_crl, at, now, crl_next);
            if (!checked) return std::unexpected(checked.error());
            State::Entry entry{checked->failure, std::move(checked->reason), checked->valid_until};
            ERR_clear_error();
            {
                std::unique_lock lock(state.mutex);
                // Only if no reload happened meanwhile: a new store means new answers.
                if (state.store == store) state.cache[key] = entry;
            }
            cached = std::move(entry);
        }
        if (cached->failure != VerifyFailure::none) return reject(cached->failure, cached->reason);
    }

    // 3. Providers index (DECISIONS #4): hash, then full certificate, then From domain.
    if (index) {
        const ProviderRecord* record = index->find_by_cert_hash(report.signer_cert_sha1);
        if (!record)
            return reject(
                VerifyFailure::not_in_index,
                "signer certificate " + report.signer_cert_sha1 + " is not in the providers index");
        report.provider_name = record->name;
        auto signer_der = cert_der(signer);
        if (!signer_der) return std::unexpected(signer_der.error());
        if (std::find(record->certificates.begin(), record->certificates.end(), *signer_der) ==
            record->certificates.end())
            return reject(VerifyFailure::cert_mismatch,
                          "providers index record " + record->name + " lists hash " +
                              report.signer_cert_sha1 + " but not this certificate");
        std::string from = options.from_address;
        if (from.empty())
            if (const HeaderField* f = find_header(parts.headers, "From")) from = f->value;
        report.from_domain = from_domain_of(from);
        if (report.from_domain.empty())
            return reject(VerifyFailure::domain_not_managed, "no From address to check");
        bool managed =
            std::any_of(record->managed_domains.begin(), record->managed_domains.end(),
                        [&](const std::string& d) { return iequals(trim(d), report.from_domain); });
        if (!managed)
            return reject(
                VerifyFailure::domain_not_managed,
                "From domain " + report.from_domain + " is not managed by " + record->name);
    }
    ERR_clear_error();
    return report;
}

}  // namespace

Result<VerifyReport> SmimeVerifier::verify(std::string_view raw, const IndexSnapshot* index,
                                           const VerifyOptions& options) const {
    return verify_impl(*state_, raw, index, options, nullptr);
}

Result<VerifyReport> SmimeVerifier::verify_file(const std::filesystem::path& path,
                                                const IndexSnapshot* index,
                                                const VerifyOptions& options) const {
    // Mapped, not read: a 100 MB message is not copied into the heap.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno("cannot open " + path.string());
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        int err = errno;
        ::close(fd);
        return fail_errno("cannot stat " + path.string(), err);
    }
    if (st.st_size == 0) {
        ::close(fd);
        return verify(std::string_view{}, index, options);
    }
    void* map = ::mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    ::close(fd);
    if (map == MAP_FAILED) return fail_errno("cannot map " + path.string(), err);
    auto result = verify_impl(
        *state_, std::string_view(static_cast<const char*>(map), static_cast<size_t>(st.st_size)),
        index, options, static_cast<const char*>(map));
    ::munmap(map, static_cast<size_t>(st.st_size));
    return result;
}

Result<VerifyReport> verify_smime(std::string_view raw_message, const TrustConfig& trust,
                                  const IndexSnapshot* index, const VerifyOptions& options) {
    auto verifier = SmimeVerifier::create(trust);
    if (!verifier) return std::unexpected(verifier.error());
    return (*verifier)->verify(raw_message, index, options);
}

// ------------------------------------------------------------------- signed data (.p7m)

bool looks_like_signed_data(std::string_view bytes) {
    // DER: a SEQUENCE with a long-form or indefinite length, which no LDIF text starts with.
    if (bytes.size() >= 2 && static_cast<unsigned char>(bytes[0]) == 0x30 &&
        (static_cast<unsigned char>(bytes[1]) & 0x80) != 0)
        return true;
    return bytes.starts_with("-----BEGIN PKCS7-----") || bytes.starts_with("-----BEGIN CMS-----");
}

Result<std::string> sign_data_der(const SigningKey& key, std::string_view content) {
    if (content.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
        return fail(ErrorKind::permanent, "content too large to sign in memory");
    auto pkey = key.private_key();
    if (!pkey) return std::unexpected(pkey.error());
    ossl::Bio in(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
    ossl::Bio out(BIO_new(BIO_s_mem()));
    if (!in || !out) return fail(ErrorKind::transient, ossl::errors("BIO_new failed"));
    // Encapsulated (no CMS_DETACHED) and byte for byte (CMS_BINARY): the content travels inside.
    // SHA-256 named, not left to OpenSSL's default.
    const unsigned int flags = CMS_BINARY | CMS_PARTIAL;
    ossl::Cms cms(CMS_sign(nullptr, nullptr, key.chain(), nullptr, flags));
    if (!cms) return fail(ErrorKind::permanent, ossl::errors("CMS_sign failed"));
    if (!CMS_add1_signer(cms.get(), key.certificate(), pkey->get(), EVP_sha256(), flags))
        return fail(ErrorKind::permanent, ossl::errors("CMS_add1_signer failed"));
    if (CMS_final(cms.get(), in.get(), nullptr, flags) != 1)
        return fail(ErrorKind::permanent, ossl::errors("CMS_final failed"));
    if (i2d_CMS_bio(out.get(), cms.get()) != 1)
        return fail(ErrorKind::permanent, ossl::errors("cannot encode the CMS"));
    char* data = nullptr;
    long size = BIO_get_mem_data(out.get(), &data);
    return std::string(data, static_cast<size_t>(size));
}

Result<SignedContent> SmimeVerifier::open_signed_data(std::string_view bytes,
                                                      const VerifyOptions& options) const {
    SignedContent out;
    auto reject = [&out](VerifyFailure failure, std::string reason) -> Result<SignedContent> {
        out.content.clear();
        out.report.failure = failure;
        out.report.reason = std::move(reason);
        ERR_clear_error();
        return out;
    };
    if (bytes.size() > static_cast<size_t>(std::numeric_limits<int>::max()))
        return reject(VerifyFailure::no_signature, "too large");
    ossl::Bio in(BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())));
    if (!in) return fail(ErrorKind::transient, ossl::errors("BIO_new failed"));
    ossl::Cms cms(bytes.starts_with("-----BEGIN")
                      ? PEM_read_bio_CMS(in.get(), nullptr, nullptr, nullptr)
                      : d2i_CMS_bio(in.get(), nullptr));
    if (!cms) return reject(VerifyFailure::no_signature, ossl::errors("not CMS (DER or PEM)"));
    if (OBJ_obj2nid(CMS_get0_type(cms.get())) != NID_pkcs7_signed)
        return reject(VerifyFailure::no_signature, "CMS is not signed-data");
    if (CMS_is_detached(cms.get()) == 1)
        return reject(VerifyFailure::no_signature, "the signed-data does not carry its content");
    if (OBJ_obj2nid(CMS_get0_eContentType(cms.get())) != NID_pkcs7_data)
        return reject(VerifyFailure::no_signature, "the signed content is not plain data");
    // One signer, whose chain is the one checked below.
    if (sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms.get())) != 1)
        return reject(VerifyFailure::no_signature, "not exactly one signer");
    ossl::X509Stack carried(CMS_get1_certs(cms.get()));
    ossl::Bio content(BIO_new(BIO_s_mem()));
    if (!content) return fail(ErrorKind::transient, ossl::errors("BIO_new failed"));
    if (CMS_verify(cms.get(), nullptr, nullptr, nullptr, content.get(),
                   CMS_NO_SIGNER_CERT_VERIFY | CMS_BINARY) != 1)
        return reject(VerifyFailure::bad_signature, ossl::errors("signature check failed"));
    // CMS_get0_signers: a new stack of borrowed certificates, freed alone.
    std::unique_ptr<STACK_OF(X509), decltype([](STACK_OF(X509) * p) { sk_X509_free(p); })> signers(
        CMS_get0_signers(cms.get()));
    X509* signer =
        signers && sk_X509_num(signers.get()) > 0 ? sk_X509_value(signers.get(), 0) : nullptr;
    if (!signer) return reject(VerifyFailure::no_signature, "signer certificate not found");
    out.report.signer_subject = name_oneline(X509_get_subject_name(signer));
    out.report.signer_email = first_san_email(signer);
    auto sha1 = cert_sha1_hex(signer);
    if (!sha1) return std::unexpected(sha1.error());
    out.report.signer_cert_sha1 = *sha1;
    CMS_SignerInfo* si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms.get()), 0);
    std::optional<time_t> signed_at = si ? signing_time_of(si) : std::nullopt;
    if (signed_at) out.report.signing_time = std::chrono::system_clock::from_time_t(*signed_at);

    if (options.chain == ChainCheck::full) {
        out.report.chain_checked = true;
        auto instant = check_instant(options, signed_at);
        if (!instant) return reject(VerifyFailure::bad_certificate, instant.error());
        std::optional<time_t> at = *instant;
        std::shared_ptr<X509_STORE> store;
        bool check_crl = true;
        {
            std::shared_lock lock(state_->mutex);
            store = state_->store;
            check_crl = state_->config.check_crl;
        }
        auto checked =
            check_chain(store.get(), signer, carried.get(), check_crl, at, std::time(nullptr), 0);
        if (!checked) return std::unexpected(checked.error());
        if (checked->failure != VerifyFailure::none)
            return reject(checked->failure, std::move(checked->reason));
    }
    auto signer_der = cert_der(signer);
    if (!signer_der) return std::unexpected(signer_der.error());
    out.signer_der = std::move(*signer_der);
    char* data = nullptr;
    long size = BIO_get_mem_data(content.get(), &data);
    out.content.assign(data, static_cast<size_t>(size));
    ERR_clear_error();
    return out;
}

Result<SignedContent> open_signed_data(std::string_view bytes, const TrustConfig& trust,
                                       const VerifyOptions& options) {
    auto verifier = SmimeVerifier::create(trust);
    if (!verifier) return std::unexpected(verifier.error());
    return (*verifier)->open_signed_data(bytes, options);
}

}  // namespace pecd::pec
