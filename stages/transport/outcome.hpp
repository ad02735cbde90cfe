// What happened to one recipient, shared by mailbox delivery and outbound sending.
#pragma once

#include <string>
#include <vector>

#include "stages/transport/session.hpp"

namespace pecd::transport {

struct RecipientOutcome {
    std::string recipient;
    Disposition disposition = Disposition::transient_failure;
    std::string status;  // RFC 3463 enhanced status code: "2.0.0", "5.1.1", "4.3.1"
    std::string text;    // the server's reply text, or our own reason
    std::string where;   // where it went: the Maildir file, or the server that took it

    bool accepted() const { return disposition == Disposition::accepted; }
    std::string describe() const;  // "<rcpt>: permanent 5.1.1 text"
};

RecipientOutcome outcome_from_reply(const std::string& recipient, const Reply& reply);

}  // namespace pecd::transport
