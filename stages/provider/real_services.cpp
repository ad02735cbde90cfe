#include "stages/provider/real_services.hpp"

#include <charconv>
#include <memory>
#include <utility>

#include "stages/provider/embedded.hpp"
#include "stages/transport/factory.hpp"

namespace pecd::provider {

namespace {

RecipientStatus status_of(const transport::RecipientOutcome& o) {
    RecipientStatus st;
    st.recipient = o.recipient;
    st.code = o.status;
    st.text = o.text;
    switch (o.disposition) {
        case transport::Disposition::accepted:
            st.outcome = Outcome::ok;
            break;
        case transport::Disposition::transient_failure:
            st.outcome = Outcome::transient;
            break;
        case transport::Disposition::permanent_failure:
            st.outcome = Outcome::permanent;
            break;
    }
    return st;
}

// LMTP: one transaction per recipient, as the deliver stage asks for each one. A domain we do
// not manage is 5.1.2 before any server is asked, as with the embedded Maildir.
// LMTP has no idempotency key: a delivery run again after a crash is delivered again.
std::function<Result<RecipientStatus>(const std::string&, std::string_view, std::string_view)>
lmtp_delivery(std::shared_ptr<transport::MailboxDelivery> lmtp, std::vector<std::string> domains) {
    return [lmtp = std::move(lmtp), domains = std::move(domains)](
               const std::string& recipient, std::string_view message,
               std::string_view) -> Result<RecipientStatus> {
        std::string domain = domain_of(recipient);
        if (std::find(domains.begin(), domains.end(), domain) == domains.end())
            return RecipientStatus{recipient, Outcome::permanent, "5.1.2", "dominio non gestito"};
        auto outcome = lmtp->deliver(recipient, message);
        if (!outcome) return context(outcome.error(), lmtp->describe());
        return status_of(*outcome);
    };
}

std::function<Result<std::vector<RecipientStatus>>(
    const std::string&, const std::vector<std::string>&, std::string_view)>
smtp_sender(std::shared_ptr<transport::OutboundTransport> smtp) {
    return
        [smtp = std::move(smtp)](const std::string& from, const std::vector<std::string>& rcpts,
                                 std::string_view message) -> Result<std::vector<RecipientStatus>> {
            auto sent = smtp->send(from, rcpts, message);
            if (!sent) return context(sent.error(), smtp->describe());
            std::vector<RecipientStatus> out;
            out.reserve(sent->recipients.size());
            for (const auto& o : sent->recipients) out.push_back(status_of(o));
            return out;
        };
}

std::function<Result<ScanResult>(std::string_view)> clamd_scanner(
    std::shared_ptr<transport::Antivirus> clamd) {
    return [clamd = std::move(clamd)](std::string_view message) -> Result<ScanResult> {
        auto verdict = clamd->scan(message);
        if (!verdict) return context(verdict.error(), clamd->describe());
        if (verdict->infected()) return ScanResult{true, verdict->signature};
        return ScanResult{};
    };
}

// "<source>:<line>: ..." (the factories' errors) -> the line, 0 when there is none.
ConfigProblem as_problem(const Config& config, const Error& e) {
    std::string_view m = e.message;
    std::string prefix = config.source() + ":";
    int line = 0;
    if (m.starts_with(prefix)) {
        m.remove_prefix(prefix.size());
        auto [end, ec] = std::from_chars(m.data(), m.data() + m.size(), line);
        if (ec == std::errc() && end < m.data() + m.size() && *end == ':') {
            m.remove_prefix(static_cast<size_t>(end - m.data()) + 1);
            while (m.starts_with(' ')) m.remove_prefix(1);
        } else {
            line = 0;
            m = e.message;
        }
    }
    // A missing key has no line of its own: the line of the section's `type` asked for it.
    if (line == 0)
        for (std::string_view section : {"mailbox", "outbound", "antivirus"})
            if (m.starts_with("[" + std::string(section) + "]"))
                if (auto type = config.find(section, "type")) line = type->line;
    return {line, std::string(m)};
}

struct Adapters {
    std::shared_ptr<transport::MailboxDelivery> lmtp;
    std::shared_ptr<transport::OutboundTransport> smtp;
    std::shared_ptr<transport::Antivirus> clamd;
    std::vector<Error> errors;
};

Adapters build(const Config& config, const ProviderSettings& s) {
    Adapters a;
    if (s.mailbox_type == "lmtp") {
        if (auto d = transport::make_delivery(config, "mailbox"); d)
            a.lmtp = std::move(*d);
        else
            a.errors.push_back(d.error());
    }
    if (s.outbound_type == "smtp") {
        if (auto o = transport::make_outbound(config, "outbound"); o)
            a.smtp = std::move(*o);
        else
            a.errors.push_back(o.error());
    }
    if (s.antivirus == "clamd") {
        if (auto v = transport::make_antivirus(config, "antivirus"); v)
            a.clamd = std::move(*v);
        else
            a.errors.push_back(v.error());
    }
    return a;
}

}  // namespace

Result<ProviderServices> make_services(const Config& config, const ProviderSettings& settings) {
    Adapters a = build(config, settings);
    if (!a.errors.empty()) return std::unexpected(a.errors.front());
    ProviderServices s = make_embedded_services(settings);
    if (a.lmtp) s.deliver_to_mailbox = lmtp_delivery(a.lmtp, settings.domains);
    if (a.smtp) {
        s.send = smtp_sender(a.smtp);
        s.send_queue_file = nullptr;  // the outbox's shortcut, not SMTP's
    }
    if (a.clamd) {
        s.scan = clamd_scanner(a.clamd);
        s.scan_parsed = nullptr;  // the built-in scanner's shortcut, not clamd's
    }
    return s;
}

std::vector<ConfigProblem> check_services(const Config& config, const ProviderSettings& settings) {
    std::vector<ConfigProblem> out;
    for (const auto& e : build(config, settings).errors) out.push_back(as_problem(config, e));
    return out;
}

}  // namespace pecd::provider
