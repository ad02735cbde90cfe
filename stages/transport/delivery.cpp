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

bool is_dir(const fs::path& p) {
    struct stat st {};
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Maildir unique name (cr.yp.to/proto/maildir.html): time, microseconds, pid, a per-process
// counter and random bits, host name. O_EXCL on tmp/ catches the impossible collision anyway.
std::string unique_name() {
    static std::atomic<uint64_t> counter{0};
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    auto now = std::chrono::system_clock::now().time_since_epoch();
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
    char host[256] = "localhost";
    ::gethostname(host, sizeof host - 1);
    std::string h;
    for (const char* c = host; *c; ++c) {
        // '/' and ':' are not allowed in the host part of a Maildir name.
        if (*c == '/')
            h += "\\057";
        else if (*c == ':')
            h += "\\072";
        else
            h += *c;
    }
    char rand[17];
    std::snprintf(rand, sizeof rand, "%016llx", static_cast<unsigned long long>(rng()));
    return std::to_string(us / 1000000) + ".M" + std::to_string(us % 1000000) + "P" +
           std::to_string(::getpid()) + "Q" + std::to_string(++counter) + "R" + rand + "." + h;
}

// A filesystem error while delivering to one mailbox: transient, with the RFC 3463 code that
// says why (disk full and quota are the interesting ones).
DeliveryOutcome io_failure(const std::string& recipient, const Error& e) {
    DeliveryOutcome o;
    o.recipient = recipient;
    o.disposition = Disposition::transient_failure;
    o.status = e.sys_errno == ENOSPC ? "4.3.1" : e.sys_errno == EDQUOT ? "4.2.2" : "4.3.0";
    o.text = e.message;
    return o;
}

// Creates missing tmp/new/cur; the mailbox dir is fsynced after a creation so that new/ (and
// the mail about to be renamed into it) cannot vanish in a crash.
Status ensure_maildir(const fs::path& box) {
    bool created = false;
    for (const char* sub : {"tmp", "new", "cur"}) {
        if (is_dir(box / sub)) continue;
        if (auto st = durable::make_dir(box / sub); !st) return st;
        created = true;
    }
    return created ? durable::sync_dir(box) : Status{};
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

MaildirDelivery::MaildirDelivery(MaildirOptions options) : options_(std::move(options)) {}

std::string MaildirDelivery::describe() const {
    return "maildir " + options_.root.string() + (options_.auto_create ? " (auto-create)" : "");
}

std::optional<fs::path> MaildirDelivery::mailbox_path(std::string_view recipient) const {
    auto a = parse_mailbox_address(recipient);
    if (!a) return std::nullopt;
    return options_.root / a->domain / a->local;
}

Result<DeliveryOutcome> MaildirDelivery::deliver(const std::string& recipient,
                                                 std::string_view message) {
    // A missing root is a broken installation or an unmounted volume, not an unknown user.
    if (!is_dir(options_.root))
        return fail(ErrorKind::transient, "maildir root " + options_.root.string() + " missing");
    DeliveryOutcome o;
    o.recipient = recipient;
    auto box = mailbox_path(recipient);
    if (!box) {
        o.disposition = Disposition::permanent_failure;
        o.status = "5.1.3";
        o.text = "bad destination mailbox address syntax";
        return o;
    }
    if (!is_dir(*box)) {
        if (!options_.auto_create) {
            o.disposition = Disposition::permanent_failure;
            o.status = "5.1.1";
            o.text = "mailbox unknown";
            return o;
        }
        // Creating the domain and mailbox directories: fsync each parent so that a mailbox
        // that received mail survives a crash.
        if (auto st = durable::make_dir(box->parent_path()); !st)
            return io_failure(recipient, st.error());
        if (auto st = durable::sync_dir(options_.root); !st)
            return io_failure(recipient, st.error());
        if (auto st = durable::make_dir(*box); !st) return io_failure(recipient, st.error());
        if (auto st = durable::sync_dir(box->parent_path()); !st)
            return io_failure(recipient, st.error());
    }
    if (auto st = ensure_maildir(*box); !st) return io_failure(recipient, st.error());

    fs::path tmp;
    std::string name;
    durable::Fd fd;
    for (int attempt = 0;; ++attempt) {
        name = unique_name();
        tmp = *box / "tmp" / name;
        auto f = durable::open_file(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (f) {
            fd = std::move(*f);
            break;
        }
        if (f.error().kind != ErrorKind::conflict || attempt == 3)
            return io_failure(recipient, f.error());
    }
    fs::path dest = *box / "new" / name;
    Status st = durable::write_all(fd.get(), message);
    if (st) st = durable::sync_data(fd.get());
    fd.reset();
    if (st) st = durable::rename_noreplace(tmp, dest);
    if (!st) {
        (void)durable::unlink_file(tmp);
        return io_failure(recipient, st.error());
    }
    // Until new/ is synced the rename may be lost in a crash: only then is the mail delivered.
    if (auto synced = durable::sync_dir(*box / "new"); !synced) {
        // The file is complete in new/; removing it would risk losing a delivered message, so
        // report a transient failure and accept a possible duplicate on retry.
        return io_failure(recipient, synced.error());
    }
    o.disposition = Disposition::accepted;
    o.status = "2.0.0";
    o.text = "delivered to maildir";
    o.where = dest.string();
    return o;
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
