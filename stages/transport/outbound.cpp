#include "stages/transport/outbound.hpp"

#include <fcntl.h>

#include <algorithm>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/transport/delivery.hpp"

namespace pecd::transport {
namespace {

namespace fs = std::filesystem;

bool has_8bit(std::string_view s) {
    return std::any_of(s.begin(), s.end(),
                       [](char c) { return static_cast<unsigned char>(c) > 0x7f; });
}

}  // namespace

bool SendOutcome::all_accepted() const {
    return !recipients.empty() &&
           std::all_of(recipients.begin(), recipients.end(),
                       [](const RecipientOutcome& r) { return r.accepted(); });
}

Result<SendOutcome> SmtpTransport::send(const std::string& mail_from,
                                        const std::vector<std::string>& rcpts,
                                        std::string_view message) {
    if (rcpts.empty()) return fail(ErrorKind::permanent, "smtp: no recipients");
    // Queue files spell the null sender "<>" (spool Envelope); on the wire it is MAIL FROM:<>.
    const std::string from = mail_from == "<>" ? std::string() : mail_from;
    if (!safe_in_command(from))
        return fail(ErrorKind::permanent, "smtp: unusable sender address '" + mail_from + "'");
    SendOutcome out;
    out.recipients.resize(rcpts.size());
    std::vector<size_t> pending;
    for (size_t i = 0; i < rcpts.size(); ++i) {
        out.recipients[i].recipient = rcpts[i];
        if (rcpts[i].empty() || !safe_in_command(rcpts[i])) {
            out.recipients[i].disposition = Disposition::permanent_failure;
            out.recipients[i].status = "5.1.3";
            out.recipients[i].text = "bad destination mailbox address syntax";
        } else {
            pending.push_back(i);
        }
    }
    if (pending.empty()) return out;

    auto session = MailSession::start(options_.relay, false, options_.helo_name, options_.timeouts);
    if (!session) return std::unexpected(session.error());
    std::string mail = "MAIL FROM:<" + from + ">";
    // Declare what we send when the server understands it (RFC 1870, RFC 6152).
    if (session->has_extension("SIZE")) mail += " SIZE=" + std::to_string(message.size());
    if (has_8bit(message)) {
        if (!session->has_extension("8BITMIME"))
            return fail(ErrorKind::permanent, "smtp: 8-bit message but " +
                                                  options_.relay.describe() +
                                                  " does not offer 8BITMIME");
        mail += " BODY=8BITMIME";
    }
    auto mail_reply = session->command(mail);
    if (!mail_reply) return std::unexpected(mail_reply.error());
    if (mail_reply->disposition() != Disposition::accepted) {
        for (size_t i : pending) out.recipients[i] = outcome_from_reply(rcpts[i], *mail_reply);
        session->quit();
        return out;
    }
    std::vector<size_t> accepted;
    for (size_t i : pending) {
        auto r = session->command("RCPT TO:<" + rcpts[i] + ">");
        if (!r) return std::unexpected(r.error());
        if (r->disposition() == Disposition::accepted)
            accepted.push_back(i);
        else
            out.recipients[i] = outcome_from_reply(rcpts[i], *r);
    }
    if (accepted.empty()) {
        session->quit();
        return out;
    }
    auto replies = session->data(message, 1);
    if (!replies) return std::unexpected(replies.error());
    const Reply& final_reply = replies->front();
    out.reply = final_reply.describe();
    for (size_t i : accepted) {
        out.recipients[i] = outcome_from_reply(rcpts[i], final_reply);
        out.recipients[i].where = options_.relay.describe();
    }
    session->quit();
    return out;
}

}  // namespace pecd::transport
