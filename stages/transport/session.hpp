// The wire under the LMTP, SMTP and clamd clients: an endpoint ("host:port" or "unix:/path"),
// a connected socket with deadlines on every read and write, and the SMTP/LMTP reply grammar
// (RFC 5321 §4.2, enhanced status codes RFC 2034/3463). Any failure to talk to the server is a
// transient error: the server may be back on the next attempt.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool-layout/durable.hpp"
#include "stages/common/result.hpp"

namespace pecd::transport {

using Millis = std::chrono::milliseconds;

struct Endpoint {
    std::string unix_path;  // set for "unix:/path"
    std::string host;       // otherwise host and port
    int port = 0;
    std::string describe() const;
};
// Accepts "unix:/path", "host:port", "[v6addr]:port"; a bare "host" takes `default_port`.
Result<Endpoint> parse_endpoint(std::string_view text, int default_port = 0);

class Connection {
  public:
    static Result<Connection> open(const Endpoint& endpoint, Millis timeout);

    // Writes everything or fails (timeout, peer closed) as a transient error.
    Status write(std::string_view data, Millis timeout);
    // One line without its CRLF/LF; a line longer than `max` is an error.
    Result<std::string> read_line(Millis timeout, size_t max = 64 * 1024);
    // Reads until the peer sends `terminator` (kept out of the result) or closes.
    Result<std::string> read_until(char terminator, Millis timeout, size_t max = 64 * 1024);
    const std::string& peer() const { return peer_; }

  private:
    Result<bool> fill(Millis timeout);  // reads more bytes into buffer_; false at EOF
    durable::Fd fd_;
    std::string peer_;
    std::string buffer_;
};

enum class Disposition { accepted, transient_failure, permanent_failure };
const char* to_string(Disposition d);

struct Reply {
    int code = 0;
    std::string status;  // enhanced status code "5.1.1" when the server sent one, else derived
    std::string text;    // the text of all lines, joined by "; ", without code and status
    Disposition disposition() const;
    std::string describe() const;  // "550 5.1.1 text"
};

// Reads one (possibly multi-line) reply.
Result<Reply> read_reply(Connection& conn, Millis timeout);

// The DATA payload: CRLF line ends (a bare LF becomes CRLF), leading dots doubled, a final CRLF
// added when missing, then the terminating ".\r\n".
std::string dot_stuff(std::string_view message);

// A mail dialogue (SMTP or LMTP): greeting, EHLO/LHLO, commands, DATA.
class MailSession {
  public:
    struct Timeouts {
        Millis connect{10000};
        Millis command{60000};  // per reply (RFC 5321 §4.5.3.2 suggests 5 min; we fail faster)
        Millis data{600000};    // sending the payload and waiting for the final reply
    };
    // Connects, reads the 220 greeting and says EHLO (or LHLO when `lmtp`). A non-2xx greeting
    // or hello is returned as an Error whose kind follows the reply code.
    static Result<MailSession> start(const Endpoint& endpoint, bool lmtp, std::string helo_name,
                                     Timeouts timeouts);
    Result<Reply> command(std::string_view line);  // sends line + CRLF, reads the reply
    // Sends the stuffed payload and reads `replies` replies (1 for SMTP, one per accepted
    // recipient for LMTP).
    Result<std::vector<Reply>> data(std::string_view message, size_t replies);
    bool has_extension(std::string_view keyword) const;
    void quit();  // best effort: the transaction is already decided

  private:
    explicit MailSession(Connection c) : conn_(std::move(c)) {}
    Connection conn_;
    Timeouts timeouts_;
    std::vector<std::string> extensions_;
};

// An Error of the kind that matches a reply that ended a whole dialogue.
Error reply_error(const Reply& reply, std::string_view during);

}  // namespace pecd::transport
