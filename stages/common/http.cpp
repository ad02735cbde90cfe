#include "stages/common/http.hpp"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <charconv>
#include <memory>

#include "spool-layout/durable.hpp"

namespace pecd::http {
namespace {

struct Url {
    std::string host, port = "80", path = "/";
};

Result<Url> parse_url(std::string_view url, const std::string& label) {
    if (!url.starts_with("http://"))
        return fail(ErrorKind::config, label + " URL must be http://host[:port]/path");
    url.remove_prefix(7);
    Url out;
    size_t slash = url.find('/');
    std::string_view authority = url.substr(0, slash);
    if (slash != std::string_view::npos) out.path = std::string(url.substr(slash));
    size_t colon = authority.rfind(':');
    if (colon != std::string_view::npos) {
        out.host = std::string(authority.substr(0, colon));
        out.port = std::string(authority.substr(colon + 1));
    } else {
        out.host = std::string(authority);
    }
    if (out.host.empty() || out.port.empty())
        return fail(ErrorKind::config, "bad " + label + " URL " + std::string(url));
    return out;
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
    std::string request =
        r.method + " " + u->path + " HTTP/1.1\r\nHost: " + u->host + ":" + u->port;
    if (!r.content_type.empty()) request += "\r\nContent-Type: " + r.content_type;
    if (!r.expect_type.empty()) request += "\r\nAccept: " + r.expect_type;
    if (r.method == "POST") request += "\r\nContent-Length: " + std::to_string(r.body.size());
    request += "\r\nConnection: close\r\n\r\n" + r.body;
    for (size_t off = 0; off < request.size();) {
        ssize_t n = ::send(sock.get(), request.data() + off, request.size() - off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return fail_errno("send to " + r.label);
        off += static_cast<size_t>(n);
    }
    std::string reply;
    char buf[16384];
    while (true) {
        ssize_t n = ::recv(sock.get(), buf, sizeof buf, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail_errno("read from " + r.label);
        if (n == 0) break;
        reply.append(buf, static_cast<size_t>(n));
        if (reply.size() > r.max_reply)
            return fail(ErrorKind::transient, r.label + " reply too large");
    }
    size_t end = reply.find("\r\n\r\n");
    if (end == std::string::npos)
        return fail(ErrorKind::transient, r.label + ": truncated HTTP reply");
    std::string_view head(reply.data(), end);
    if (!head.starts_with("HTTP/1.") || head.size() < 12 || head.substr(9, 3) != "200")
        return fail(ErrorKind::transient,
                    r.label + ": " + std::string(head.substr(0, head.find('\r'))));
    std::string body_out = reply.substr(end + 4);
    bool type_ok = false;
    size_t pos = head.find("\r\n");
    while (pos != std::string_view::npos) {
        size_t next = head.find("\r\n", pos + 2);
        std::string_view h =
            head.substr(pos + 2, next == std::string_view::npos ? head.npos : next - pos - 2);
        if (iequals_prefix(h, "content-type:")) {
            std::string_view v = h.substr(13);
            while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
            type_ok = iequals_prefix(v, r.expect_type);
        } else if (iequals_prefix(h, "content-length:")) {
            std::string_view v = h.substr(15);
            while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
            size_t len = 0;
            auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), len);
            if (ec != std::errc{} || len != body_out.size())
                return fail(ErrorKind::transient,
                            r.label + ": body length differs from Content-Length");
        } else if (iequals_prefix(h, "transfer-encoding:")) {
            return fail(ErrorKind::transient, r.label + ": chunked replies are not supported");
        }
        pos = next;
    }
    if (!r.expect_type.empty() && !type_ok)
        return fail(ErrorKind::transient, r.label + ": reply is not " + r.expect_type);
    return body_out;
}

}  // namespace pecd::http
