// A minimal HTTP/1.1 client (Connection: close), for the TSA (POST), CRL downloads (GET) and the
// providers index (GET over TLS, with a client certificate). Timeouts bound connect, the TLS
// handshake, send and every read; errors are transient.
#pragma once

#include <openssl/types.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "stages/common/result.hpp"

namespace pecd::http {

struct Request {
    std::string method = "GET";
    std::string url;           // http://host[:port]/path or https://host[:port]/path
    std::string content_type;  // POST body type
    std::string body;
    std::string expect_type;  // required reply Content-Type prefix; empty = any
    std::chrono::milliseconds timeout{10000};
    std::string label = "HTTP";  // names the peer in error messages ("TSA", "CRL")
    size_t max_reply = 16u << 20;
    std::chrono::milliseconds total_timeout{0};  // the whole reply; 0: only `timeout` per read
    // https://: the server's certificate must chain to `ca_file` (empty: the system's store) and
    // name the URL's host (DNS name or IP address); TLS 1.2 at least. `client_cert` and
    // `client_key` (both or neither, not owned) authenticate us to the server, sent with the
    // intermediate certificates in `client_chain` (may be null).
    std::string ca_file;
    X509* client_cert = nullptr;
    EVP_PKEY* client_key = nullptr;
    STACK_OF(X509) * client_chain = nullptr;
};

// Whether `url` is one `request` can use (scheme, host or bracketed IPv6 address, port); the
// error (config) says what is wrong. For check-config, before any request is made.
Status check_url(std::string_view url, const std::string& label);

// The reply body when the status is 200 (and the type matches `expect_type`).
Result<std::string> request(const Request& r);

// The body of a whole HTTP/1.x reply, as read up to the server's close: status 200, the type
// `r.expect_type`, the length its Content-Length announces, or the chunked coding decoded.
// What `request` does with the bytes it read; on its own for the tests.
Result<std::string> parse_reply(std::string_view reply, const Request& r);

}  // namespace pecd::http
