// Sending a message to other providers (or to the MTA that does so).
//
// The Result's error is for failures of the whole attempt (relay down, connection lost before
// the end of DATA): ErrorKind::transient, retry all recipients. A reply
// about one recipient, or a refusal of the whole transaction (MAIL FROM or final DATA reply),
// comes back in SendOutcome as one RecipientOutcome per recipient.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/transport/outcome.hpp"
#include "stages/transport/session.hpp"

namespace pecd::transport {

struct SendOutcome {
    std::vector<RecipientOutcome> recipients;  // same order as the rcpts passed to send()
    std::string reply;  // the final reply to the message (queue id text), empty if not sent
    bool all_accepted() const;
};

class OutboundTransport {
  public:
    virtual ~OutboundTransport() = default;
    // `mail_from` empty or "<>" = null sender. `message` has CRLF line ends.
    virtual Result<SendOutcome> send(const std::string& mail_from,
                                     const std::vector<std::string>& rcpts,
                                     std::string_view message) = 0;
    virtual std::string describe() const = 0;
};

struct SmtpOptions {
    Endpoint relay;  // e.g. Postfix's reinjection listener 127.0.0.1:10025
    std::string helo_name = "localhost";
    MailSession::Timeouts timeouts;
};

// Real: an ESMTP client to a relay (RFC 5321). One transaction, one RCPT TO per recipient.
class SmtpTransport final : public OutboundTransport {
  public:
    explicit SmtpTransport(SmtpOptions options) : options_(std::move(options)) {}
    Result<SendOutcome> send(const std::string& mail_from, const std::vector<std::string>& rcpts,
                             std::string_view message) override;
    std::string describe() const override { return "smtp " + options_.relay.describe(); }

  private:
    SmtpOptions options_;
};

}  // namespace pecd::transport
