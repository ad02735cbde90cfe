// Virus scanning of a whole message before it is accepted or delivered.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "stages/common/result.hpp"
#include "stages/transport/session.hpp"

namespace pecd::transport {

struct ScanVerdict {
    enum class Kind { clean, infected };
    Kind kind = Kind::clean;
    std::string signature;  // for infected: the scanner's signature name
    bool infected() const { return kind == Kind::infected; }
};

// Errors: scanner unreachable or failing → transient (never treat "could not scan" as clean);
// a message the scanner refuses by size → permanent, with a message naming the limit.
class Antivirus {
  public:
    virtual ~Antivirus() = default;
    virtual Result<ScanVerdict> scan(std::string_view message) = 0;
    virtual std::string describe() const = 0;
};

// Embedded default: no scanner configured, every message is clean.
class NoAntivirus final : public Antivirus {
  public:
    Result<ScanVerdict> scan(std::string_view) override { return ScanVerdict{}; }
    std::string describe() const override { return "none"; }
};

struct ClamdOptions {
    Endpoint endpoint;  // 127.0.0.1:3310 or unix:/run/clamav/clamd.ctl
    Millis connect_timeout{5000};
    Millis scan_timeout{120000};  // sending the stream and waiting for the verdict
    size_t chunk_size = 64 * 1024;
};

// clamd's INSTREAM command (clamd(8)): "zINSTREAM\0", chunks framed by a 4-byte big-endian
// length, a zero-length chunk, then one NUL-terminated reply.
class ClamdScanner final : public Antivirus {
  public:
    explicit ClamdScanner(ClamdOptions options) : options_(std::move(options)) {}
    Result<ScanVerdict> scan(std::string_view message) override;
    std::string describe() const override { return "clamd " + options_.endpoint.describe(); }

  private:
    ClamdOptions options_;
};

// Parses one clamd INSTREAM reply ("stream: OK", "stream: Name FOUND", "... ERROR").
Result<ScanVerdict> parse_clamd_reply(std::string_view reply, size_t message_size);

}  // namespace pecd::transport
