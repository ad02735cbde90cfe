// The HTTP client behind the TSA, CRL and index downloads: what it makes of a reply (Content-
// Length, the chunked coding, redirections, errors) and of a URL (ports, IPv6 literals), against
// scripted replies and a one-shot server on the loopback.
#include "stages/common/http.hpp"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>

namespace {

using pecd::ErrorKind;
using pecd::http::parse_reply;
using pecd::http::Request;

Request typed(std::string type = "") {
    Request r;
    r.label = "TSA";
    r.expect_type = std::move(type);
    return r;
}

// The error message of a reply that must be refused (transient: the peer may do better later).
std::string refusal(std::string_view reply, const Request& r = typed()) {
    auto body = parse_reply(reply, r);
    EXPECT_FALSE(body) << "accepted: " << (body ? *body : "");
    if (body) return {};
    EXPECT_EQ(body.error().kind, ErrorKind::transient) << body.error().message;
    return body.error().message;
}

TEST(HttpReply, ContentLengthBodyIsTakenWhole) {
    auto body = parse_reply(
        "HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-reply\r\n"
        "Content-Length: 5\r\n\r\nhello",
        typed("application/timestamp-reply"));
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "hello");
    // A server that says nothing of the length: the body runs to the close.
    body = parse_reply("HTTP/1.0 200 OK\r\n\r\nto the end\r\n", typed());
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "to the end\r\n");
}

TEST(HttpReply, ChunkedBodyIsDecodedWithExtensionsAndTrailers) {
    std::string reply =
        "HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\n"
        "Transfer-Encoding: Chunked\r\n\r\n"
        "5;name=value\r\nhello\r\n"
        "1B \r\n, chunked and \r\n in pieces!\r\n"  // upper-case hex, space before CRLF
        "000\r\n"
        "X-Trailer: yes\r\nX-Other: 2\r\n\r\n";
    auto body = parse_reply(reply, typed("application/pkcs7-mime"));
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "hello, chunked and \r\n in pieces!");
    // Binary data with CRLFs and NULs inside the chunks passes untouched.
    std::string binary("\0\r\n\r\n0\r\n\xff", 8);
    body = parse_reply(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\n" + binary + "\r\n0\r\n\r\n",
        typed());
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, binary);
}

TEST(HttpReply, ChunkedCodingWinsOverAContentLength) {
    // RFC 9112 §6.3: with both, Transfer-Encoding delimits the body.
    auto body = parse_reply(
        "HTTP/1.1 200 OK\r\nContent-Length: 999\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n",
        typed());
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "abc");
}

TEST(HttpReply, BrokenChunkedBodiesAreRefusedWithTheReason) {
    const std::string head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    EXPECT_NE(refusal(head + "5\r\nhello\r\n").find("cut off before its last chunk"),
              std::string::npos);
    EXPECT_NE(
        refusal(head + "a\r\nhello world!\r\n0\r\n\r\n").find("chunk data not followed by CRLF"),
        std::string::npos);
    EXPECT_NE(refusal(head + "10\r\nshort").find("cut off inside a chunk"), std::string::npos);
    EXPECT_NE(refusal(head + "zz\r\nhello\r\n0\r\n\r\n").find("chunk size \"zz\""),
              std::string::npos);
    EXPECT_NE(refusal(head + "-5\r\nhello\r\n0\r\n\r\n").find("chunk size"), std::string::npos);
    EXPECT_NE(refusal(head + "\r\nhello\r\n0\r\n\r\n").find("chunk size"), std::string::npos);
    // A size no reply could have (and that would overflow a size_t if read as one).
    EXPECT_NE(refusal(head + "ffffffffffffffffff\r\nx\r\n0\r\n\r\n").find("chunk size"),
              std::string::npos);
    EXPECT_NE(refusal(head + "3\r\nabc\r\n0\r\nX-Trailer: 1\r\n").find("cut off in its trailer"),
              std::string::npos);
    // Codings pecd never asked for (it sends no TE header).
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n")
                  .find("transfer coding \"gzip, chunked\" not supported"),
              std::string::npos);
}

TEST(HttpReply, LengthStatusAndTypeProblemsAreRefused) {
    EXPECT_NE(
        refusal("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhello").find("5 bytes, 9 announced"),
        std::string::npos);
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello")
                  .find("bad Content-Length \"5x\""),
              std::string::npos);
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nContent-Length: 5").find("truncated"), std::string::npos);
    EXPECT_NE(refusal("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                  .find("TSA: HTTP/1.1 503 Service Unavailable"),
              std::string::npos);
    // A redirection says where to: the administrator fixes the URL (pecd does not follow it).
    std::string moved = refusal(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: https://igpec.example/index.p7m\r\n\r\n");
    EXPECT_NE(moved.find("301 Moved Permanently (to https://igpec.example/index.p7m;"),
              std::string::npos)
        << moved;
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>",
                      typed("application/timestamp-reply"))
                  .find("reply is not application/timestamp-reply"),
              std::string::npos);
    // A header name that only begins like a known one is not that header.
    auto body = parse_reply("HTTP/1.1 200 OK\r\nContent-Length-Extra: 99\r\n\r\nhello", typed());
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "hello");
}

TEST(HttpReply, FramingAndStatusAreReadStrictly) {
    // Two lengths that disagree: which body is meant cannot be known (RFC 9112 §6.3).
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 2\r\n\r\nhi")
                  .find("two Content-Length fields that differ"),
              std::string::npos);
    auto same =
        parse_reply("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi", typed());
    ASSERT_TRUE(same) << same.error().message;
    EXPECT_EQ(*same, "hi");
    // A blank before the colon could hide a Transfer-Encoding: refused, not read past.
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
                  .find("blank before its colon"),
              std::string::npos);
    // 200 is three digits, then the end of the line or a space.
    EXPECT_NE(refusal("HTTP/1.1 2000 OK\r\n\r\nhi").find("HTTP/1.1 2000 OK"), std::string::npos);
    auto bare = parse_reply("HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nhi", typed());
    ASSERT_TRUE(bare) << bare.error().message;
    // Interim 1xx replies come before the final one and are skipped.
    auto interim = parse_reply(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX: y\r\n\r\n"
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        typed());
    ASSERT_TRUE(interim) << interim.error().message;
    EXPECT_EQ(*interim, "hi");
    // The type is the announced one, parameters allowed, not a longer name that begins alike.
    auto typed_reply =
        parse_reply("HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-reply; q=1\r\n\r\nx",
                    typed("application/timestamp-reply"));
    EXPECT_TRUE(typed_reply) << typed_reply.error().message;
    EXPECT_NE(refusal("HTTP/1.1 200 OK\r\nContent-Type: application/timestamp-replyX\r\n\r\nx",
                      typed("application/timestamp-reply"))
                  .find("reply is not"),
              std::string::npos);
}

TEST(HttpReply, LocationIsQuotedOnlyForRedirectionsAndAsOneLine) {
    std::string moved = refusal("HTTP/1.1 302 Found\r\nLocation: /x\nFAKE LOG LINE\x7f\r\n\r\n");
    EXPECT_NE(moved.find("(to /x?FAKE LOG LINE?; redirections are not followed)"),
              std::string::npos)
        << moved;
    EXPECT_EQ(moved.find('\n'), std::string::npos) << moved;
    std::string created = refusal("HTTP/1.1 201 Created\r\nLocation: /new\r\n\r\n");
    EXPECT_EQ(created.find("redirections"), std::string::npos) << created;
}

// A one-shot server on a loopback address: takes one connection, keeps the request's head and
// sends `reply`, then closes. Gives up after 10 s so that a failing client never hangs the test.
class OneShotServer {
  public:
    OneShotServer(int family, std::string reply) {
        fd_ = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_storage addr{};
        socklen_t len = 0;
        if (family == AF_INET6) {
            auto* a6 = reinterpret_cast<sockaddr_in6*>(&addr);
            a6->sin6_family = AF_INET6;
            a6->sin6_addr = in6addr_loopback;
            len = sizeof *a6;
        } else {
            auto* a4 = reinterpret_cast<sockaddr_in*>(&addr);
            a4->sin_family = AF_INET;
            a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            len = sizeof *a4;
        }
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
            ::listen(fd_, 1) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
            return;
        port_ = ntohs(family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                                         : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
        thread_ = std::thread([this, reply = std::move(reply)] { serve(reply); });
    }
    ~OneShotServer() {
        if (thread_.joinable()) thread_.join();
        if (fd_ >= 0) ::close(fd_);
    }
    int port() const { return port_; }
    // The request's head, once the server is done.
    std::string head() {
        if (thread_.joinable()) thread_.join();
        return head_;
    }

  private:
    void serve(const std::string& reply) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 10000) != 1) return;
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) return;
        char buf[4096];
        while (head_.find("\r\n\r\n") == std::string::npos) {
            pollfd q{c, POLLIN, 0};
            if (::poll(&q, 1, 10000) != 1) break;
            ssize_t n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) break;
            head_.append(buf, static_cast<size_t>(n));
        }
        head_ = head_.substr(0, head_.find("\r\n\r\n"));
        for (size_t off = 0; off < reply.size();) {
            // A few bytes at a time: the client must gather a reply across reads.
            ssize_t n = ::send(c, reply.data() + off, std::min<size_t>(7, reply.size() - off),
                               MSG_NOSIGNAL);
            if (n <= 0) break;
            off += static_cast<size_t>(n);
        }
        ::close(c);
    }

    int fd_ = -1;
    int port_ = 0;
    std::thread thread_;
    std::string head_;
};

const std::string kChunkedIndex =
    "HTTP/1.1 200 OK\r\nContent-Type: application/pkcs7-mime\r\nTransfer-Encoding: chunked\r\n"
    "Connection: close\r\n\r\n4\r\ndn: \r\nd\r\no=postacert\r\n\r\n0\r\n\r\n";

TEST(HttpRequest, ChunkedReplyOverTheLoopbackWithTheHostAndPort) {
    OneShotServer server(AF_INET, kChunkedIndex);
    ASSERT_GT(server.port(), 0);
    Request r;
    r.url = "http://127.0.0.1:" + std::to_string(server.port()) + "/igpec/index.p7m?day=1#top";
    r.label = "index";
    auto body = pecd::http::request(r);
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "dn: o=postacert\r\n");
    std::string head = server.head();
    EXPECT_TRUE(head.starts_with("GET /igpec/index.p7m?day=1 HTTP/1.1\r\n")) << head;
    EXPECT_NE(head.find("\r\nHost: 127.0.0.1:" + std::to_string(server.port()) + "\r\n"),
              std::string::npos)
        << head;
}

// A query right after the authority still gets its path.
TEST(HttpRequest, AQueryWithoutAPathAsksForTheRoot) {
    OneShotServer server(AF_INET, kChunkedIndex);
    ASSERT_GT(server.port(), 0);
    Request r;
    r.url = "http://127.0.0.1:" + std::to_string(server.port()) + "?index";
    auto body = pecd::http::request(r);
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_TRUE(server.head().starts_with("GET /?index HTTP/1.1\r\n")) << server.head();
}

TEST(HttpRequest, BracketedIpv6LiteralIsReachedAndNamedInHost) {
    OneShotServer server(AF_INET6, kChunkedIndex);
    if (server.port() == 0) GTEST_SKIP() << "no IPv6 loopback on this machine";
    Request r;
    r.url = "http://[::1]:" + std::to_string(server.port()) + "/index.p7m";
    r.label = "index";
    auto body = pecd::http::request(r);
    ASSERT_TRUE(body) << body.error().message;
    EXPECT_EQ(*body, "dn: o=postacert\r\n");
    EXPECT_NE(server.head().find("\r\nHost: [::1]:" + std::to_string(server.port()) + "\r\n"),
              std::string::npos)
        << server.head();
}

TEST(HttpRequest, MalformedUrlsAreConfigurationErrorsThatSayWhy) {
    auto refused = [](const std::string& url) {
        Request r;
        r.url = url;
        r.label = "CRL";
        auto body = pecd::http::request(r);
        EXPECT_FALSE(body) << url;
        if (body) return std::string();
        EXPECT_EQ(body.error().kind, ErrorKind::config) << url << ": " << body.error().message;
        return body.error().message;
    };
    EXPECT_NE(refused("ftp://host/x").find("must be http[s]://"), std::string::npos);
    EXPECT_NE(refused("http://[::1/x").find("unclosed ["), std::string::npos);
    EXPECT_NE(refused("http://[::1]x/").find("text after ]"), std::string::npos);
    EXPECT_NE(refused("http://[example.org]/").find("is not an IPv6 address"), std::string::npos);
    EXPECT_NE(refused("http://::1/x").find("in brackets"), std::string::npos);
    EXPECT_NE(refused("http://host:99999/").find("port \"99999\""), std::string::npos);
    EXPECT_NE(refused("http://host:/").find("port \"\""), std::string::npos);
    EXPECT_NE(refused("http://host:80a/").find("port \"80a\""), std::string::npos);
    EXPECT_NE(refused("http://user:pw@host/").find("user names"), std::string::npos);
    EXPECT_NE(refused("http:///path").find("no host"), std::string::npos);
}

}  // namespace
