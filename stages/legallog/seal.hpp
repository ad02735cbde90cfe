// Sealing closed legal log files: an RFC 3161 time-stamp token over the whole file, obtained from a
// TSA over HTTP (POST application/timestamp-query -> application/timestamp-reply) and checked on
// receipt (status, nonce, imprint; signature and chain too when a TSA CA is configured).
// <file>.tsr holds the DER TimeStampResp, <file>.seal the final hash and the file's SHA-256.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/legallog/legal_log.hpp"

namespace pecd::legallog {

struct SealOptions {
    fs::path directory;
    std::string tsa_url;  // http://host:port/path
    fs::path tsa_ca;      // optional: check the token's signature and chain on receipt
    std::chrono::milliseconds timeout{10000};
    Clock clock;  // empty: system clock
};

struct SealReport {
    std::vector<fs::path> closed;   // stale files closed first (writer gone, day over)
    std::vector<fs::path> sealed;   // sealed by this call
    std::vector<fs::path> pending;  // closed, still without a seal (TSA unreachable or refusing)
    std::string last_error;
};

// Seals every closed, unsealed file. A TSA failure leaves the files pending for the next call; it
// never touches the writers. Runs in one process at a time (a lock); others return at once.
Result<SealReport> seal_pending(const SealOptions& options);

// One HTTP/1.1 POST on a plain socket (Connection: close); the reply body when the status is 200
// and the content type is `expect_type`.
Result<std::string> http_post(const std::string& url, std::string_view content_type,
                              std::string_view body, std::string_view expect_type,
                              std::chrono::milliseconds timeout);

// Asks the TSA for a token over SHA-256(data); returns the DER TimeStampResp once verified.
Result<std::string> request_timestamp(const std::string& url, std::string_view data,
                                      const fs::path& tsa_ca, std::chrono::milliseconds timeout);

// Checks a token (DER TimeStampResp) against `data`: imprint always, signature and chain when
// ca_file is given.
Status verify_timestamp(std::string_view tsr_der, std::string_view data, const fs::path& ca_file);

// Checks <file>.seal and <file>.tsr against the file's bytes and its final line hash.
Status check_seal(const fs::path& file, std::string_view data, std::string_view final_hash,
                  const fs::path& ca_file);

}  // namespace pecd::legallog
