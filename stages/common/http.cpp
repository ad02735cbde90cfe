#include "stages/common/http.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <memory>
#include <optional>

#include "spool-layout/durable.hpp"

namespace pecd::http {
namespace {

struct Url {
    bool tls = false;
    std::string host;  // an IPv6 literal without its brackets
    std::string port = "80", path = "/";

    // The Host header's value: brackets around an IPv6 literal, the port only when not the
    // scheme's own (RFC 9110 §7.2).
    std::string authority() const {
        std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
        if (port != (tls ? "443" : "80")) out += ":" + port;
        return out;
    }
};

Result<Url> parse_url(std::string_view url, const std::string& label) {
    const std::string whole(url);
    auto bad = [&](const std::string& why) {
        return fail(ErrorKind::config, "bad " + label + " URL " + whole + ": " + why);
    };
    Url out;
    if (url.starts_with("https://")) {
        out.tls = true;
        out.port = "443";
        url.remove_prefix(8);
    } else if (url.starts_with("http://")) {
        url.remove_prefix(7);
    } else {
        return fail(ErrorKind::config, label + " URL must be http[s]://host[:port]/path");
    }
    url = url.substr(0, url.find('#'));  // a fragment is never sent
    size_t end = url.find_first_of("/?");
    std::string_view authority = url.substr(0, end);
    if (end != std::string_view::npos) {
        out.path = std::string(url.substr(end));
        if (out.path.front() == '?') out.path.insert(0, "/");
    }
    if (authority.find('@') != std::string_view::npos)
        return bad("user names in URLs are not supported");
    std::string_view port;
    if (authority.starts_with("[")) {  // [IPv6 literal] (RFC 3986 §3.2.2)
        size_t close = authority.find(']');
        if (close == std::string_view::npos) return bad("unclosed [");
        out.host = std::string(authority.substr(1, close - 1));
        std::string_view rest = authority.substr(close + 1);
        if (!rest.empty() && !rest.starts_with(":")) return bad("text after ]");
        if (!rest.empty()) port = rest.substr(1);
        in6_addr ip6{};
        if (::inet_pton(AF_INET6, out.host.c_str(), &ip6) != 1)
            return bad("\"" + out.host + "\" is not an IPv6 address");
    } else {
        size_t colon = authority.rfind(':');
        out.host = std::string(authority.substr(0, colon));
        if (colon != std::string_view::npos) port = authority.substr(colon + 1);
        if (out.host.find(':') != std::string::npos)
            return bad("an IPv6 address goes in brackets, as in https://[::1]:8443/");
    }
    if (out.host.empty()) return bad("no host");
    if (port.data() != nullptr) {
        unsigned number = 0;
        auto [p, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
        if (port.empty() || ec != std::errc{} || p != port.data() + port.size() || number == 0 ||
            number > 65535)
            return bad("port \"" + std::string(port) + "\"");
        out.port = std::string(port);
    }
    return out;
}

std::string tls_errors(const std::string& what) {
    std::string out = what;
    while (unsigned long e = ERR_get_error()) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof buf);
        out += out == what ? ": " : "; ";
        out += buf;
    }
    return out;
}

struct SslFree {
    void operator()(SSL* p) const { SSL_free(p); }
    void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};

// The TLS session over a connected socket, the server checked: chain, name, TLS 1.2 or later.
Result<std::unique_ptr<SSL, SslFree>> tls_connect(int sock, const Url& u, const Request& r,
                                                  std::unique_ptr<SSL_CTX, SslFree>& ctx) {
    ERR_clear_error();
    ctx.reset(SSL_CTX_new(TLS_client_method()));
    if (!ctx) return fail(ErrorKind::transient, tls_errors("SSL_CTX_new"));
    SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
    // A server that closes without close_notify: the body is checked against Content-Length
    // or the chunked coding's last chunk when there is one, and what pecd downloads over TLS is
    // signed besides.
    SSL_CTX_set_options(ctx.get(), SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if ((r.ca_file.empty()
             ? SSL_CTX_set_default_verify_paths(ctx.get())
             : SSL_CTX_load_verify_locations(ctx.get(), r.ca_file.c_str(), nullptr)) != 1)
        return fail(ErrorKind::config, tls_errors(r.label + ": cannot load CA file " + r.ca_file));
    if ((r.client_cert == nullptr) != (r.client_key == nullptr))
        return fail(ErrorKind::config, r.label + ": a client certificate needs its key");
    if (r.client_cert && (SSL_CTX_use_certificate(ctx.get(), r.client_cert) != 1 ||
                          SSL_CTX_use_PrivateKey(ctx.get(), r.client_key) != 1))
        return fail(ErrorKind::config, tls_errors(r.label + ": client certificate"));
    for (int i = 0; r.client_cert && r.client_chain && i < sk_X509_num(r.client_chain); ++i)
        if (SSL_CTX_add1_chain_cert(ctx.get(), sk_X509_value(r.client_chain, i)) != 1)
            return fail(ErrorKind::config, tls_errors(r.label + ": client certificate chain"));
    std::unique_ptr<SSL, SslFree> ssl(SSL_new(ctx.get()));
    if (!ssl || SSL_set_fd(ssl.get(), sock) != 1)
        return fail(ErrorKind::transient, tls_errors("SSL_new"));
    in6_addr ip6{};
    in_addr ip4{};
    bool is_ip = ::inet_pton(AF_INET, u.host.c_str(), &ip4) == 1 ||
                 ::inet_pton(AF_INET6, u.host.c_str(), &ip6) == 1;
    if (is_ip) {
        if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl.get()), u.host.c_str()) != 1)
            return fail(ErrorKind::transient, tls_errors("X509_VERIFY_PARAM_set1_ip_asc"));
    } else if (SSL_set_tlsext_host_name(ssl.get(), u.host.c_str()) != 1 ||
               SSL_set1_host(ssl.get(), u.host.c_str()) != 1) {
        return fail(ErrorKind::transient, tls_errors("SSL_set1_host"));
    }
    if (SSL_connect(ssl.get()) != 1) {
        long verify = SSL_get_verify_result(ssl.get());
        std::string why = verify != X509_V_OK ? std::string("server certificate: ") +
                                                    X509_verify_cert_error_string(verify)
                                              : tls_errors("handshake");
        ERR_clear_error();
        return fail(ErrorKind::transient, r.label + " " + u.host + ":" + u.port + ": TLS " + why);
    }
    return ssl;
}

bool iequals_prefix(std::string_view text, std::string_view prefix) {
    if (text.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(text[i])) !=
            std::tolower(static_cast<unsigned char>(prefix[i])))
            return false;
    return true;
}

}  // namespace

Status check_url(std::string_view url, const std::string& label) {
    auto u = parse_url(url, label);
    if (!u) return std::unexpected(u.error());
    return {};
}

Result<std::string> request(const Request& r) {
    auto u = parse_url(r.url, r.label);
    if (!u) return std::unexpected(u.error());
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (int rc = ::getaddrinfo(u->host.c_str(), u->port.c_str(), &hints, &res); rc != 0)
        return fail(ErrorKind::transient, r.label + " " + u->host + ": " + gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(res, ::freeaddrinfo);
    durable::Fd sock;
    int last_errno = 0;
    timeval tv{static_cast<time_t>(r.timeout.count() / 1000),
               static_cast<suseconds_t>((r.timeout.count() % 1000) * 1000)};
    for (addrinfo* ai = res; ai; ai = ai->ai_next) {
        durable::Fd s(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
        if (!s) continue;
        // SO_SNDTIMEO bounds connect(2) too on Linux: a dead TSA never blocks the caller for long.
        ::setsockopt(s.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (::connect(s.get(), ai->ai_addr, ai->ai_addrlen) == 0) {
            sock = std::move(s);
            break;
        }
        last_errno = errno;
    }
    if (!sock)
        return fail_errno("connect to " + r.label + " " + u->host + ":" + u->port,
                          last_errno ? last_errno : ECONNREFUSED);
    std::unique_ptr<SSL_CTX, SslFree> ctx;
    std::unique_ptr<SSL, SslFree> ssl;
    if (u->tls) {
        auto session = tls_connect(sock.get(), *u, r, ctx);
        if (!session) return std::unexpected(session.error());
        ssl = std::move(*session);
    }
    // Plain or TLS, the same loops: n > 0 bytes moved, 0 the end, < 0 an error (errno set).
    // Each TLS call starts with no stale errno or queued error, which would be taken for its own.
    std::string tls_failure;  // what a failed TLS read or write said (an alert, for one)
    auto send_some = [&](const char* data, size_t size) -> ssize_t {
        if (!ssl) return ::send(sock.get(), data, size, MSG_NOSIGNAL);
        ERR_clear_error();
        errno = 0;
        size_t done = 0;
        if (SSL_write_ex(ssl.get(), data, size, &done) == 1) return static_cast<ssize_t>(done);
        SSL_get_error(ssl.get(), 0);
        if (ERR_peek_error() != 0) tls_failure = tls_errors("TLS");
        errno = errno && errno != EINTR ? errno : EPIPE;
        return -1;
    };
    auto recv_some = [&](char* data, size_t size) -> ssize_t {
        if (!ssl) return ::recv(sock.get(), data, size, 0);
        ERR_clear_error();
        errno = 0;
        size_t done = 0;
        if (SSL_read_ex(ssl.get(), data, size, &done) == 1) return static_cast<ssize_t>(done);
        int err = SSL_get_error(ssl.get(), 0);
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && errno == 0)) {
            ERR_clear_error();
            return 0;
        }
        // TLS 1.3: a server that refuses our certificate says so here, after the handshake. A
        // timeout leaves no TLS error, only errno.
        if (ERR_peek_error() != 0) tls_failure = tls_errors("TLS");
        errno = errno && errno != EINTR ? errno : EIO;
        return -1;
    };
    std::string request = r.method + " " + u->path + " HTTP/1.1\r\nHost: " + u->authority();
    if (!r.content_type.empty()) request += "\r\nContent-Type: " + r.content_type;
    if (!r.expect_type.empty()) request += "\r\nAccept: " + r.expect_type;
    if (r.method == "POST") request += "\r\nContent-Length: " + std::to_string(r.body.size());
    request += "\r\nConnection: close\r\n\r\n" + r.body;
    for (size_t off = 0; off < request.size();) {
        ssize_t n = send_some(request.data() + off, request.size() - off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0 && !tls_failure.empty())
            return fail(ErrorKind::transient, "send to " + r.label + ": " + tls_failure);
        if (n <= 0) return fail_errno("send to " + r.label);
        off += static_cast<size_t>(n);
    }
    std::string reply;
    char buf[16384];
    // A server that sends a byte now and then never trips the per-read timeout: the whole
    // reply has its own deadline.
    const auto deadline = std::chrono::steady_clock::now() + r.total_timeout;
    while (true) {
        if (r.total_timeout.count() > 0 && std::chrono::steady_clock::now() > deadline)
            return fail(ErrorKind::transient, r.label + ": reply not complete within " +
                                                  std::to_string(r.total_timeout.count()) + " ms");
        ssize_t n = recv_some(buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && !tls_failure.empty())
            return fail(ErrorKind::transient, "read from " + r.label + ": " + tls_failure);
        if (n < 0) return fail_errno("read from " + r.label);
        if (n == 0) break;
        reply.append(buf, static_cast<size_t>(n));
        if (reply.size() > r.max_reply)
            return fail(ErrorKind::transient, r.label + " reply too large");
    }
    return parse_reply(reply, r);
}

namespace {

std::string_view trim(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
}

// The chunked transfer coding (RFC 9112 §7.1): chunk-size [; ext] CRLF data CRLF, ..., then a
// zero size, the trailer fields and an empty line. Extensions and trailers are read past.
Result<std::string> dechunk(std::string_view in, const std::string& label) {
    auto bad = [&](const std::string& why) {
        return fail(ErrorKind::transient, label + ": bad chunked reply: " + why);
    };
    std::string out;
    while (true) {
        size_t eol = in.find("\r\n");
        if (eol == std::string_view::npos) return bad("cut off before its last chunk");
        std::string_view line = in.substr(0, eol);  // searched within the line only: linear
        std::string_view digits = trim(line.substr(0, line.find(';')));
        uint64_t size = 0;
        auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size, 16);
        if (digits.empty() || digits.size() > 15 || ec != std::errc{} ||
            p != digits.data() + digits.size())
            return bad("chunk size \"" + std::string(in.substr(0, std::min<size_t>(eol, 40))) +
                       "\"");
        in.remove_prefix(eol + 2);
        if (size == 0) break;
        if (in.size() < size + 2) return bad("cut off inside a chunk");
        if (in.substr(size, 2) != "\r\n") return bad("chunk data not followed by CRLF");
        out.append(in.substr(0, size));
        in.remove_prefix(size + 2);
    }
    while (true) {  // the trailer section, up to its empty line
        size_t eol = in.find("\r\n");
        if (eol == std::string_view::npos) return bad("cut off in its trailer");
        if (eol == 0) return out;
        in.remove_prefix(eol + 2);
    }
}

}  // namespace

Result<std::string> parse_reply(std::string_view reply, const Request& r) {
    auto refuse = [&](const std::string& why) {
        return fail(ErrorKind::transient, r.label + ": " + why);
    };
    size_t end = reply.find("\r\n\r\n");
    std::string_view status_line = reply.substr(0, reply.find("\r\n"));
    // 1xx replies are interim (RFC 9110 §15.2): the final one follows.
    while (end != std::string_view::npos && status_line.starts_with("HTTP/1.") &&
           status_line.size() >= 12 && status_line[9] == '1' && status_line[8] == ' ') {
        reply.remove_prefix(end + 4);
        end = reply.find("\r\n\r\n");
        status_line = reply.substr(0, reply.find("\r\n"));
    }
    if (end == std::string_view::npos) return refuse("truncated HTTP reply");
    std::string_view head = reply.substr(0, end);
    std::string_view body = reply.substr(end + 4);
    // "HTTP/1.x 200" and then the end of the line or a space before the reason phrase.
    const bool ok = status_line.starts_with("HTTP/1.") && status_line.size() >= 12 &&
                    status_line[8] == ' ' && status_line.substr(9, 3) == "200" &&
                    (status_line.size() == 12 || status_line[12] == ' ');
    const bool redirected =
        status_line.size() >= 12 && status_line[8] == ' ' && status_line[9] == '3';
    bool type_ok = false, chunked = false;
    std::optional<size_t> content_length;
    std::string location;
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos) {
        size_t next = head.find("\r\n", pos + 2);
        std::string_view h =
            head.substr(pos + 2, next == std::string_view::npos ? head.npos : next - pos - 2);
        pos = next;
        size_t colon = h.find(':');
        if (colon == std::string_view::npos) continue;
        std::string_view name = h.substr(0, colon + 1), value = trim(h.substr(colon + 1));
        // A blank before the colon makes a field a server must not send (RFC 9112 §5.1): read
        // past, it could hide a Transfer-Encoding.
        if (colon > 0 && (h[colon - 1] == ' ' || h[colon - 1] == '\t'))
            return refuse("header field with a blank before its colon");
        auto is = [&](std::string_view field) {
            return name.size() == field.size() && iequals_prefix(name, field);
        };
        if (is("location:")) {
            // Into an error message and the log: one line of printable text.
            location.clear();
            for (char c : value.substr(0, 200))
                location += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
        } else if (!ok) {
            continue;
        } else if (is("content-type:")) {
            type_ok = iequals_prefix(value, r.expect_type) &&
                      (value.size() == r.expect_type.size() || value[r.expect_type.size()] == ';' ||
                       value[r.expect_type.size()] == ' ');
        } else if (is("content-length:")) {
            size_t len = 0;
            auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), len);
            if (value.empty() || ec != std::errc{} || p != value.data() + value.size())
                return refuse("bad Content-Length \"" + std::string(value) + "\"");
            if (content_length && *content_length != len)
                return refuse("two Content-Length fields that differ");
            content_length = len;
        } else if (is("transfer-encoding:")) {
            // pecd sends no TE header, so chunked is the only coding a server may use.
            if (!iequals_prefix(value, "chunked") || value.size() != 7)
                return refuse("transfer coding \"" + std::string(value) + "\" not supported");
            chunked = true;
        }
    }
    if (!ok) {
        std::string what = std::string(status_line.substr(0, 200));
        if (redirected && !location.empty())
            what += " (to " + location + "; redirections are not followed)";
        return refuse(what);
    }
    std::string body_out;
    if (chunked) {  // the coding delimits the body; a Content-Length beside it is ignored
        auto decoded = dechunk(body, r.label);
        if (!decoded) return std::unexpected(decoded.error());
        body_out = std::move(*decoded);
    } else {
        if (content_length && *content_length != body.size())
            return refuse("body length differs from Content-Length (" +
                          std::to_string(body.size()) + " bytes, " +
                          std::to_string(*content_length) + " announced)");
        body_out = std::string(body);
    }
    if (!r.expect_type.empty() && !type_ok) return refuse("reply is not " + r.expect_type);
    return body_out;
}

}  // namespace pecd::http
