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

Result<SendOutcome> OutboxTransport::send(const std::string& mail_from,
                                          const std::vector<std::string>& rcpts,
                                          std::string_view message) {
    if (rcpts.empty()) return fail(ErrorKind::permanent, "outbox: no recipients");
    for (const fs::path& d : {dir_, dir_ / "tmp", dir_ / "new"})
        if (auto st = durable::make_dir(d); !st) return context(st.error(), "outbox");
    spool::Envelope env;
    env.arrival_us = spool::now_us();
    env.id = spool::new_queue_id(env.arrival_us);
    env.sender = mail_from.empty() ? "<>" : mail_from;
    env.recipients = rcpts;
    fs::path tmp = dir_ / "tmp" / env.id;
    fs::path dest = dir_ / "new" / env.id;
    auto fd =
        spool::write_queue_file(tmp, env, spool::BodySource::from_bytes(std::string(message)));
    if (!fd) {
        (void)durable::unlink_file(tmp);
        return context(fd.error(), "outbox");
    }
    Status st = durable::sync_data(fd->get());
    fd->reset();
    if (st) st = durable::rename_noreplace(tmp, dest);
    if (!st) {
        (void)durable::unlink_file(tmp);
        return context(st.error(), "outbox");
    }
    if (auto synced = durable::sync_dir(dir_ / "new"); !synced)
        return context(synced.error(), "outbox");
    SendOutcome out;
    out.reply = "queued as " + env.id;
    for (const auto& r : rcpts) {
        RecipientOutcome o;
        o.recipient = r;
        o.disposition = Disposition::accepted;
        o.status = "2.0.0";
        o.text = out.reply;
        o.where = dest.string();
        out.recipients.push_back(std::move(o));
    }
    return out;
}

Result<OutboxMessage> read_outbox_file(const fs::path& path) {
    auto fd = durable::open_file(path, O_RDONLY | O_CLOEXEC);
    if (!fd) return std::unexpected(fd.error());
    auto info = spool::read_header(fd->get(), path.string());
    if (!info) return std::unexpected(info.error());
    auto body = spool::read_body(fd->get(), *info);
    if (!body) return std::unexpected(body.error());
    return OutboxMessage{std::move(info->env), std::move(*body)};
}

Result<std::vector<fs::path>> list_outbox(const fs::path& dir) {
    auto names = durable::list_dir(dir / "new");
    if (!names) return std::unexpected(names.error());
    std::sort(names->begin(), names->end());
    std::vector<fs::path> out;
    for (const auto& n : *names) out.push_back(dir / "new" / n);
    return out;
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
