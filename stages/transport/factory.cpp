#include "stages/transport/factory.hpp"

namespace pecd::transport {
namespace {

Error at(const Config& cfg, std::string_view section, std::string_view key,
         const std::string& problem) {
    auto v = cfg.find(section, key);
    std::string where = cfg.source() + ":" + std::to_string(v ? v->line : 0) + ": [" +
                        std::string(section) + "] " + std::string(key);
    return Error{ErrorKind::config, where + ": " + problem};
}

// The selector key, lower-cased comparison is not needed: values are documented lower-case.
Result<std::string> choice(const Config& cfg, std::string_view section, std::string_view key,
                           std::initializer_list<std::string_view> allowed) {
    std::string v = cfg.get(section, key, std::string(*allowed.begin()));
    for (auto a : allowed)
        if (v == a) return v;
    std::string list;
    for (auto a : allowed) list += (list.empty() ? "" : " | ") + std::string(a);
    return std::unexpected(at(cfg, section, key, "'" + v + "' is not one of " + list));
}

Result<Endpoint> endpoint(const Config& cfg, std::string_view section, std::string_view key,
                          int default_port) {
    auto v = cfg.find(section, key);
    if (!v || v->value.empty())
        return std::unexpected(at(cfg, section, key, "required (host:port or unix:/path)"));
    auto ep = parse_endpoint(v->value, default_port);
    if (!ep) return std::unexpected(at(cfg, section, key, ep.error().message));
    return ep;
}

Result<MailSession::Timeouts> timeouts(const Config& cfg, std::string_view section) {
    MailSession::Timeouts t;
    auto c = cfg.get_duration(section, "connect_timeout", t.connect);
    if (!c) return std::unexpected(c.error());
    auto m = cfg.get_duration(section, "command_timeout", t.command);
    if (!m) return std::unexpected(m.error());
    auto d = cfg.get_duration(section, "data_timeout", t.data);
    if (!d) return std::unexpected(d.error());
    return MailSession::Timeouts{*c, *m, *d};
}

}  // namespace

Result<std::unique_ptr<MailboxDelivery>> make_delivery(const Config& cfg,
                                                       std::string_view section) {
    auto kind = choice(cfg, section, "type", {"maildir", "lmtp"});
    if (!kind) return std::unexpected(kind.error());
    if (*kind == "maildir")
        return std::unexpected(
            at(cfg, section, "type", "maildir is the provider's embedded Maildir, not an adapter"));
    LmtpOptions o;
    auto ep = endpoint(cfg, section, "lmtp", 24);
    if (!ep) return std::unexpected(ep.error());
    o.endpoint = *ep;
    o.lhlo_name = cfg.get(section, "helo_name", o.lhlo_name);
    o.sender = cfg.get(section, "lmtp_sender", "");
    if (!safe_in_command(o.sender))
        return std::unexpected(at(cfg, section, "lmtp_sender", "not a usable address"));
    auto t = timeouts(cfg, section);
    if (!t) return std::unexpected(t.error());
    o.timeouts = *t;
    return std::make_unique<LmtpDelivery>(std::move(o));
}

Result<std::unique_ptr<OutboundTransport>> make_outbound(const Config& cfg,
                                                         std::string_view section) {
    auto kind = choice(cfg, section, "type", {"outbox", "smtp"});
    if (!kind) return std::unexpected(kind.error());
    if (*kind == "outbox")
        return std::unexpected(
            at(cfg, section, "type", "outbox is the provider's embedded outbox, not an adapter"));
    SmtpOptions o;
    auto ep = endpoint(cfg, section, "relay", 25);
    if (!ep) return std::unexpected(ep.error());
    o.relay = *ep;
    o.helo_name = cfg.get(section, "helo_name", o.helo_name);
    auto t = timeouts(cfg, section);
    if (!t) return std::unexpected(t.error());
    o.timeouts = *t;
    return std::make_unique<SmtpTransport>(std::move(o));
}

Result<std::unique_ptr<Antivirus>> make_antivirus(const Config& cfg, std::string_view section) {
    auto kind = choice(cfg, section, "type", {"none", "eicar", "clamd"});
    if (!kind) return std::unexpected(kind.error());
    if (*kind == "none") return std::make_unique<NoAntivirus>();
    if (*kind == "eicar")
        return std::unexpected(at(cfg, section, "type",
                                  "eicar is the provider's built-in test scanner, not an adapter"));
    ClamdOptions o;
    auto ep = endpoint(cfg, section, "clamd", 3310);
    if (!ep) return std::unexpected(ep.error());
    o.endpoint = *ep;
    auto c = cfg.get_duration(section, "connect_timeout", o.connect_timeout);
    if (!c) return std::unexpected(c.error());
    o.connect_timeout = *c;
    auto s = cfg.get_duration(section, "clamd_timeout", o.scan_timeout);
    if (!s) return std::unexpected(s.error());
    o.scan_timeout = *s;
    return std::make_unique<ClamdScanner>(std::move(o));
}

}  // namespace pecd::transport
