// Final delivery of a message into a recipient's mailbox.
//
// The Result's error is for failures that concern no recipient in particular (server down,
// connection lost, mailbox root missing): always worth a retry, so ErrorKind::transient except
// for configuration mistakes. Everything the mailbox store says about one recipient (unknown
// mailbox 5.1.1, over quota 4.2.2, disk full 4.3.1) is a per-recipient DeliveryOutcome.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/transport/outcome.hpp"
#include "stages/transport/session.hpp"

namespace pecd::transport {

using DeliveryOutcome = RecipientOutcome;

class MailboxDelivery {
  public:
    virtual ~MailboxDelivery() = default;
    // `message` has CRLF line ends.
    virtual Result<DeliveryOutcome> deliver(const std::string& recipient,
                                            std::string_view message) = 0;
    // One outcome per recipient, in order. The default delivers one by one; LMTP does all of
    // them in one transaction with one reply per recipient (RFC 2033 §4.2).
    virtual Result<std::vector<DeliveryOutcome>> deliver_all(
        const std::vector<std::string>& recipients, std::string_view message);
    virtual std::string describe() const = 0;
};

// Splits "local@domain" and lower-cases it; nullopt for anything that cannot name a mailbox
// safely (no '@', empty parts, '/', leading '.', control characters, spaces, <>).
struct MailboxAddress {
    std::string local;
    std::string domain;
};
std::optional<MailboxAddress> parse_mailbox_address(std::string_view address);

struct LmtpOptions {
    Endpoint endpoint;  // Dovecot: 127.0.0.1:24 or unix:/run/dovecot/lmtp
    std::string lhlo_name = "localhost";
    std::string sender;  // MAIL FROM; empty or "<>" = null sender
    MailSession::Timeouts timeouts;
};

// Real mailbox store: an LMTP client (RFC 2033).
class LmtpDelivery final : public MailboxDelivery {
  public:
    explicit LmtpDelivery(LmtpOptions options) : options_(std::move(options)) {}
    Result<DeliveryOutcome> deliver(const std::string& recipient,
                                    std::string_view message) override;
    Result<std::vector<DeliveryOutcome>> deliver_all(const std::vector<std::string>& recipients,
                                                     std::string_view message) override;
    std::string describe() const override { return "lmtp " + options_.endpoint.describe(); }

  private:
    LmtpOptions options_;
};

// True when `address` can go into "<...>" of MAIL FROM / RCPT TO without breaking the command.
bool safe_in_command(std::string_view address);

}  // namespace pecd::transport
