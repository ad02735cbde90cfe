// A minimal HTTP/1.1 client on a plain socket (Connection: close), for the TSA (POST) and CRL
// downloads (GET). Timeouts bound connect, send and every read; errors are transient.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

#include "stages/common/result.hpp"

namespace pecd::http {

struct Request {
    std::string method = "GET";
    std::string url;           // http://host[:port]/path
    std::string content_type;  // POST body type
    std::string body;
    std::string expect_type;  // required reply Content-Type prefix; empty = any
    std::chrono::milliseconds timeout{10000};
    std::string label = "HTTP";  // names the peer in error messages ("TSA", "CRL")
    size_t max_reply = 16u << 20;
};

// The reply body when the status is 200 (and the type matches `expect_type`).
Result<std::string> request(const Request& r);

}  // namespace pecd::http
