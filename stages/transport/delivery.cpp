#include "stages/transport/delivery.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <random>

#include "spool-layout/durable.hpp"

namespace pecd::transport {
namespace {

namespace fs = std::filesystem;

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

}  // namespace

std::string RecipientOutcome::describe() const {
    return recipient + ": " + to_string(disposition) + " " + status +
           (text.empty() ? "" : " " + text);
}

RecipientOutcome outcome_from_reply(const std::string& recipient, const Reply& reply) {
    RecipientOutcome o;
    o.recipient = recipient;
    o.disposition = reply.disposition();
    o.status = reply.status;
    o.text = std::to_string(reply.code) + " " + reply.text;
    return o;
}

bool safe_in_command(std::string_view address) {
    return address.size() <= 256 && std::none_of(address.begin(), address.end(), [](char c) {
               auto u = static_cast<unsigned char>(c);
               return u < 0x21 || u == 0x7f || c == '<' || c == '>';
           });
}

std::optional<MailboxAddress> parse_mailbox_address(std::string_view address) {
    if (!safe_in_command(address)) return std::nullopt;
    auto at = address.rfind('@');
    if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return std::nullopt;
    MailboxAddress a{lower(address.substr(0, at)), lower(address.substr(at + 1))};
    for (const std::string* part : {&a.local, &a.domain})
        if (part->front() == '.' || part->find('/') != std::string::npos ||
            part->find('@') != std::string::npos)
            return std::nullopt;
    return a;
}

Result<std::vector<DeliveryOutcome>> MailboxDelivery::deliver_all(
    const std::vector<std::string>& recipients, std::string_view message) {
    std::vector<DeliveryOutcome> out;
    for (const auto& r : recipients) {
        auto o = deliver(r, message);
        if (!o) return std::unexpected(o.error());
        out.push_back(std::move(*o));
    }
    return out;
}

Result<DeliveryOutcome> LmtpDelivery::deliver(const std::string& recipient,
                                              std::string_view message) {
    auto all = deliver_all({recipient}, message);
    if (!all) return std::unexpected(all.error());
    return std::move(all->front());
}

Result<std::vector<DeliveryOutcome>> LmtpDelivery::deliver_all(
    const std::vector<std::string>& recipients, std::string_view message) {
    std::vector<DeliveryOutcome> out(recipients.size());
    std::vector<size_t> pending;  // recipients we still have to talk to the server about
    for (size_t i = 0; i < recipients.size(); ++i) {
        out[i].recipient = recipients[i];
        if (!safe_in_command(recipients[i]) || recipients[i].empty()) {
            out[i].disposition = Disposition::permanent_failure;
            out[i].status = "5.1.3";
            out[i].text = "bad destination mailbox address syntax";
        } else {
            pending.push_back(i);
        }
    }
    if (pending.empty()) return out;
    const std::string sender = options_.sender == "<>" ? std::string() : options_.sender;
    if (!safe_in_command(sender))
        return fail(ErrorKind::config, "lmtp sender '" + options_.sender + "' is not usable");

    auto session =
        MailSession::start(options_.endpoint, true, options_.lhlo_name, options_.timeouts);
    if (!session) return std::unexpected(session.error());
    const std::string where = "lmtp " + options_.endpoint.describe();
    auto mail = session->command("MAIL FROM:<" + sender + ">");
    if (!mail) return std::unexpected(mail.error());
    if (mail->disposition() != Disposition::accepted) {
        // A refused sender refuses the whole transaction: every recipient shares that reply.
        for (size_t i : pending) out[i] = outcome_from_reply(recipients[i], *mail);
        session->quit();
        return out;
    }
    std::vector<size_t> accepted;
    for (size_t i : pending) {
        auto r = session->command("RCPT TO:<" + recipients[i] + ">");
        if (!r) return std::unexpected(r.error());
        if (r->disposition() == Disposition::accepted)
            accepted.push_back(i);
        else
            out[i] = outcome_from_reply(recipients[i], *r);
    }
    if (accepted.empty()) {
        session->quit();
        return out;
    }
    auto replies = session->data(message, accepted.size());
    if (!replies) return std::unexpected(replies.error());
    for (size_t k = 0; k < accepted.size(); ++k) {
        size_t i = accepted[k];
        out[i] = outcome_from_reply(recipients[i], (*replies)[k]);
        out[i].where = where;
    }
    session->quit();
    return out;
}

}  // namespace pecd::transport
