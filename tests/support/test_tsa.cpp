// A test RFC 3161 TSA (Debian has no TSA server package): OpenSSL's TS API behind a minimal
// HTTP/1.1 server on 127.0.0.1. POST application/timestamp-query -> application/timestamp-reply.
//
//   test_tsa --cert tsa.crt --key tsa.key --chain ca.crt --port-file FILE [--port N]
//   [--wrong-imprint] [--chunked]
//
// The bound port is written to FILE (temporary + rename) once the server listens, so that tests can
// start it on a free port. --wrong-imprint stamps a different digest (a lying TSA). --chunked sends
// the reply in the chunked transfer coding, as TSAs behind Java servlet containers do. Stopped by
// PID.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ts.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <string_view>

namespace {

uint64_t g_serial = 0;

ASN1_INTEGER* next_serial(TS_RESP_CTX*, void*) {
    ASN1_INTEGER* serial = ASN1_INTEGER_new();
    if (serial) ASN1_INTEGER_set_uint64(serial, ++g_serial);
    return serial;
}

X509* read_cert(const char* path) {
    FILE* f = std::fopen(path, "r");
    if (!f) return nullptr;
    X509* cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    return cert;
}

EVP_PKEY* read_key(const char* path) {
    FILE* f = std::fopen(path, "r");
    if (!f) return nullptr;
    EVP_PKEY* key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    return key;
}

TS_RESP_CTX* make_ctx(const char* cert_path, const char* key_path, const char* chain_path) {
    TS_RESP_CTX* ctx = TS_RESP_CTX_new();
    X509* cert = read_cert(cert_path);
    EVP_PKEY* key = read_key(key_path);
    X509* chain = read_cert(chain_path);
    if (!ctx || !cert || !key || !chain) return nullptr;
    STACK_OF(X509)* certs = sk_X509_new_null();
    sk_X509_push(certs, chain);
    ASN1_OBJECT* policy = OBJ_txt2obj("1.3.6.1.4.1.99999.1.1", 1);
    bool ok = TS_RESP_CTX_set_signer_cert(ctx, cert) && TS_RESP_CTX_set_signer_key(ctx, key) &&
              TS_RESP_CTX_set_certs(ctx, certs) && TS_RESP_CTX_set_def_policy(ctx, policy) &&
              TS_RESP_CTX_set_signer_digest(ctx, EVP_sha256()) &&
              TS_RESP_CTX_add_md(ctx, EVP_sha256()) && TS_RESP_CTX_add_md(ctx, EVP_sha384()) &&
              TS_RESP_CTX_add_md(ctx, EVP_sha512()) && TS_RESP_CTX_set_accuracy(ctx, 1, 0, 0);
    TS_RESP_CTX_set_serial_cb(ctx, next_serial, nullptr);
    TS_RESP_CTX_add_flags(ctx, TS_TSA_NAME | TS_ORDERING);
    X509_free(cert);  // the context keeps its own references
    EVP_PKEY_free(key);
    sk_X509_pop_free(certs, X509_free);
    ASN1_OBJECT_free(policy);
    return ok ? ctx : nullptr;
}

// Flips a byte of the request's imprint: the reply is then for other data.
std::string lie_about(const std::string& query) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(query.data());
    TS_REQ* req = d2i_TS_REQ(nullptr, &p, static_cast<long>(query.size()));
    if (!req) return query;
    ASN1_OCTET_STRING* msg = TS_MSG_IMPRINT_get_msg(TS_REQ_get_msg_imprint(req));
    std::string digest(reinterpret_cast<const char*>(ASN1_STRING_get0_data(msg)),
                       ASN1_STRING_length(msg));
    digest[0] = static_cast<char>(digest[0] ^ 0x5a);
    ASN1_OCTET_STRING_set(msg, reinterpret_cast<const unsigned char*>(digest.data()),
                          static_cast<int>(digest.size()));
    unsigned char* der = nullptr;
    int len = i2d_TS_REQ(req, &der);
    std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    TS_REQ_free(req);
    return out;
}

bool send_all(int fd, std::string_view data) {
    while (!data.empty()) {
        ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
        if (n <= 0) return false;
        data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
}

bool g_chunked = false;

void reply(int fd, const char* status, std::string_view type, std::string_view body) {
    std::string head = std::string("HTTP/1.1 ") + status + "\r\nContent-Type: " + std::string(type);
    if (!g_chunked) {
        head +=
            "\r\nContent-Length: " + std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n";
        send_all(fd, head);
        send_all(fd, body);
        return;
    }
    // Chunks of 250 bytes, sizes in hex, one with an extension; a trailer field at the end.
    head += "\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    send_all(fd, head);
    for (size_t off = 0; off < body.size(); off += 250) {
        std::string_view piece = body.substr(off, 250);
        char size[32];
        std::snprintf(size, sizeof size, "%zx%s\r\n", piece.size(), off == 0 ? ";part=1" : "");
        send_all(fd, size);
        send_all(fd, piece);
        send_all(fd, "\r\n");
    }
    send_all(fd, "0\r\nX-Served-By: test_tsa\r\n\r\n");
}

void serve(int fd, TS_RESP_CTX* ctx, bool wrong_imprint) {
    std::string in;
    char buf[8192];
    size_t head_end = std::string::npos, length = 0;
    while (true) {
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return;
        in.append(buf, static_cast<size_t>(n));
        if (head_end == std::string::npos &&
            (head_end = in.find("\r\n\r\n")) != std::string::npos) {
            std::string head = in.substr(0, head_end);
            for (auto& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            size_t cl = head.find("content-length:");
            length =
                cl == std::string::npos ? 0 : std::strtoul(head.c_str() + cl + 15, nullptr, 10);
            if (!head.starts_with("post ") ||
                head.find("content-type: application/timestamp-query") == std::string::npos)
                return reply(fd, "400 Bad Request", "text/plain",
                             "expected POST application/timestamp-query\n");
        }
        if (head_end != std::string::npos && in.size() >= head_end + 4 + length) break;
        if (in.size() > (1u << 20)) return;
    }
    std::string query = in.substr(head_end + 4, length);
    if (wrong_imprint) query = lie_about(query);
    BIO* bio = BIO_new_mem_buf(query.data(), static_cast<int>(query.size()));
    TS_RESP* resp = TS_RESP_create_response(ctx, bio);
    BIO_free(bio);
    if (!resp) return reply(fd, "500 Internal Server Error", "text/plain", "no response\n");
    unsigned char* der = nullptr;
    int len = i2d_TS_RESP(resp, &der);
    TS_RESP_free(resp);
    reply(fd, "200 OK", "application/timestamp-reply",
          std::string_view(reinterpret_cast<char*>(der), len));
    OPENSSL_free(der);
}

}  // namespace

int main(int argc, char** argv) {
    const char *cert = nullptr, *key = nullptr, *chain = nullptr, *port_file = nullptr;
    int port = 0;
    bool wrong_imprint = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        bool has_value = i + 1 < argc;
        if (a == "--cert" && has_value)
            cert = argv[++i];
        else if (a == "--key" && has_value)
            key = argv[++i];
        else if (a == "--chain" && has_value)
            chain = argv[++i];
        else if (a == "--port-file" && has_value)
            port_file = argv[++i];
        else if (a == "--port" && has_value)
            port = std::atoi(argv[++i]);
        else if (a == "--wrong-imprint")
            wrong_imprint = true;
        else if (a == "--chunked")
            g_chunked = true;
        else {
            std::fprintf(stderr,
                         "usage: test_tsa --cert C --key K --chain CA --port-file F [--port N] "
                         "[--wrong-imprint] [--chunked]\n");
            return 2;
        }
    }
    if (!cert || !key || !chain || !port_file) return 2;
    TS_RESP_CTX* ctx = make_ctx(cert, key, chain);
    if (!ctx) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    socklen_t alen = sizeof addr;
    if (::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(s, 16) != 0 ||
        ::getsockname(s, reinterpret_cast<sockaddr*>(&addr), &alen) != 0) {
        std::perror("test_tsa: listen");
        return 1;
    }
    std::string tmp = std::string(port_file) + ".tmp";
    {
        std::ofstream out(tmp);
        out << ntohs(addr.sin_port) << "\n";
    }
    if (std::rename(tmp.c_str(), port_file) != 0) return 1;
    while (true) {
        int c = ::accept4(s, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) continue;
        serve(c, ctx, wrong_imprint);
        ::close(c);
    }
}
