#include "stages/provider/timeouts.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/common/log.hpp"
#include "stages/legallog/legal_log.hpp"
#include "stages/provider/stages.hpp"
#include "stages/runner/settings.hpp"

namespace pecd::provider {

namespace {

// Task args.
constexpr const char* kId = "identificativo";
constexpr const char* kRecipient = "recipient";
constexpr const char* kSender = "sender";
constexpr const char* kDispatch = "dispatch_us";
constexpr const char* kSubject = "subject";
constexpr const char* kMessageId = "message_id";
constexpr const char* kReplyTo = "reply_to";
constexpr const char* kReceipt = "ricevuta";
// One line per original recipient: "<c|e><t|c> <address>" (certificato/esterno, To/Cc).
constexpr const char* kRecipients = "recipients";

bool same_address(std::string_view a, std::string_view b) {
    return lower(a) == lower(b);
}

bool contains(const std::vector<std::string>& list, std::string_view address) {
    return std::any_of(list.begin(), list.end(),
                       [&](const std::string& x) { return same_address(x, address); });
}

std::optional<int64_t> parse_int(std::string_view text) {
    int64_t v = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec != std::errc() || ptr != text.data() + text.size() || text.empty()) return std::nullopt;
    return v;
}

std::vector<std::string> split_list(std::string_view text, char sep) {
    std::vector<std::string> out;
    while (!text.empty()) {
        size_t at = text.find(sep);
        std::string_view item = text.substr(0, at);
        if (!item.empty()) out.emplace_back(item);
        if (at == std::string_view::npos) break;
        text.remove_prefix(at + 1);
    }
    return out;
}

std::string encode_recipients(const std::vector<pec::OriginalRecipient>& list) {
    std::string out;
    for (const auto& r : list) {
        if (!out.empty()) out += '\n';
        out += r.kind == pec::RecipientKind::certificato ? 'c' : 'e';
        out += r.field == pec::AddressField::to ? 't' : 'c';
        out += ' ';
        out += r.address;
    }
    return out;
}

Result<std::vector<pec::OriginalRecipient>> decode_recipients(std::string_view text) {
    std::vector<pec::OriginalRecipient> out;
    for (const auto& line : split_list(text, '\n')) {
        if (line.size() < 4 || line[2] != ' ' || (line[0] != 'c' && line[0] != 'e') ||
            (line[1] != 't' && line[1] != 'c'))
            return fail(ErrorKind::corrupt, "bad recipient line '" + line + "'");
        out.push_back(
            {line.substr(3),
             line[0] == 'c' ? pec::RecipientKind::certificato : pec::RecipientKind::esterno,
             line[1] == 't' ? pec::AddressField::to : pec::AddressField::cc});
    }
    return out;
}

std::string hex_sha256(std::string_view data, size_t chars) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    static const char* digits = "0123456789abcdef";
    std::string hex;
    for (unsigned int i = 0; i < len && hex.size() < chars; ++i) {
        hex += digits[md[i] >> 4];
        hex += digits[md[i] & 15];
    }
    return hex.substr(0, chars);
}

pec::PecTime pec_time(int64_t us) {
    return pec::PecTime{
        std::chrono::system_clock::time_point(std::chrono::seconds(us / 1'000'000))};
}

Result<std::string> required(const scheduler::Task& task, const char* name) {
    auto v = task.arg(name);
    if (!v || v->empty())
        return fail(ErrorKind::corrupt, "task " + task.key + ": no argument '" + name + "'");
    return *v;
}

// The transaction the notice is about, from the task's args.
Result<pec::Transaction> transaction_of(const scheduler::Task& task) {
    pec::Transaction t;
    auto id = required(task, kId);
    if (!id) return std::unexpected(id.error());
    auto sender = required(task, kSender);
    if (!sender) return std::unexpected(sender.error());
    t.identificativo = *id;
    t.original.sender = *sender;
    t.original.subject = task.arg(kSubject).value_or("");
    if (auto m = task.arg(kMessageId); m && !m->empty()) t.original.message_id = *m;
    if (auto r = task.arg(kReplyTo); r && !r->empty()) t.original.reply_to = *r;
    auto kind = pec::receipt_kind_from_string(task.arg(kReceipt).value_or("completa"));
    t.original.requested_receipt = kind.value_or(pec::ReceiptKind::completa);
    auto recipients = decode_recipients(task.arg(kRecipients).value_or(""));
    if (!recipients) return context(recipients.error(), "task " + task.key);
    t.original.recipients = std::move(*recipients);
    return t;
}

Status write_notice(const spool::Spool& spool, const spool::Envelope& env, std::string bytes) {
    const fs::path target = spool.queue_dir("deliver") / env.id;
    const fs::path tmp = spool.tmp_dir() / (env.id + ".timeout");
    (void)durable::unlink_file(tmp);  // a leftover of a crashed run of the same task
    auto fd = spool::write_queue_file(tmp, env, spool::BodySource::from_bytes(std::move(bytes)));
    if (!fd) return context(fd.error(), "timeout notice");
    if (auto st = durable::sync_data(fd->get()); !st) return std::unexpected(st.error());
    auto moved = durable::rename_noreplace(tmp, target);
    if (!moved) {
        (void)durable::unlink_file(tmp);
        if (moved.error().kind == ErrorKind::conflict) return {};  // queued by an earlier run
        return std::unexpected(moved.error());
    }
    return durable::sync_dir(target.parent_path());
}

}  // namespace

std::string timeout12_key(std::string_view identificativo, std::string_view recipient) {
    return scheduler::timer_key(kTimeout12Op, identificativo, lower(recipient));
}

std::string timeout24_key(std::string_view identificativo, std::string_view recipient) {
    return scheduler::timer_key(kTimeout24Op, identificativo, lower(recipient));
}

Result<std::shared_ptr<Timeouts>> Timeouts::from_config(const Config& config) {
    if (config.keys("scheduler").empty()) return std::shared_ptr<Timeouts>();
    fs::path directory;
    auto options = scheduler::scheduler_options(config, directory);
    if (!options) return std::unexpected(options.error());
    auto store = scheduler::TaskStore::open(directory, /*create=*/true);
    if (!store) return context(store.error(), "[scheduler] directory");
    return std::make_shared<Timeouts>(std::move(*store), options->node);
}

Result<std::vector<scheduler::Task>> timeout_tasks(const spool::Envelope& env,
                                                   std::string_view busta) {
    std::vector<scheduler::Task> tasks;
    auto certified_attr = env.attr(attr::certified);
    if (!certified_attr || certified_attr->empty()) return tasks;
    auto id = env.attr(attr::id);
    auto time = env.attr(attr::time);
    auto sender = env.attr(attr::sender);
    int64_t dispatch_us = 0;
    if (time)
        if (auto parsed = parse_int(*time)) dispatch_us = *parsed;
    if (!id || !sender || dispatch_us <= 0)
        return fail(ErrorKind::permanent,
                    "busta " + env.id + ": pec.id, pec.time or pec.sender missing for the timers");
    auto info = pec::read_pec_message(busta);
    if (!info) return context(info.error(), "busta " + env.id);
    if (!info->daticert)
        return fail(ErrorKind::permanent, "busta " + env.id + ": daticert.xml unreadable");
    const pec::Daticert& d = *info->daticert;
    std::vector<pec::OriginalRecipient> recipients;
    for (const auto& r : d.destinatari) {
        bool cc =
            contains(info->cc_addresses, r.address) && !contains(info->to_addresses, r.address);
        recipients.push_back(
            {r.address, r.kind, cc ? pec::AddressField::cc : pec::AddressField::to});
    }
    std::string encoded = encode_recipients(recipients);
    std::string subject = d.oggetto.value_or("");
    for (const auto& rcpt : split_list(*certified_attr, ',')) {
        // A retry of part of the recipients (outbound "-p" copies) re-schedules only theirs.
        if (!contains(env.recipients, rcpt)) continue;
        for (auto [op, delay] :
             {std::pair{kTimeout12Op, kTimeout12Us}, std::pair{kTimeout24Op, kTimeout24Us}}) {
            scheduler::Task t;
            t.key = scheduler::timer_key(op, *id, lower(rcpt));
            t.op = std::string(op);
            t.due_us = dispatch_us + delay;
            t.set_arg(kId, *id);
            t.set_arg(kRecipient, rcpt);
            t.set_arg(kSender, *sender);
            t.set_arg(kDispatch, std::to_string(dispatch_us));
            t.set_arg(kSubject, subject);
            t.set_arg(kMessageId, d.msgid.value_or(""));
            if (!d.risposte.empty() && !same_address(d.risposte, d.mittente))
                t.set_arg(kReplyTo, d.risposte);
            t.set_arg(kReceipt, std::string(pec::to_string(d.ricevuta.value_or(
                                    info->tipo_ricevuta.value_or(pec::ReceiptKind::completa)))));
            t.set_arg(kRecipients, encoded);
            tasks.push_back(std::move(t));
        }
    }
    return tasks;
}

Status Timeouts::busta_leaving(const spool::Envelope& env, std::string_view busta) const {
    // The outbound retry of a recipient subset ("<id>-p"): the run that wrote it had scheduled
    // these recipients' timers already, and they may have fired or been cancelled since.
    if (env.id.ends_with("-p")) return {};
    auto tasks = timeout_tasks(env, busta);
    if (!tasks) return std::unexpected(tasks.error());
    for (const auto& t : *tasks) {
        // One at a time: a conflict on one key (scheduled by an earlier run) must not stop the
        // others. Any other failure is transient for the stage: the busta waits for its timers.
        auto st = store_.schedule(t, node_);
        if (!st && st.error().kind != ErrorKind::conflict)
            return fail(ErrorKind::transient, "scheduling " + t.key + ": " + st.error().message);
    }
    return {};
}

Status Timeouts::receipt_arrived(const pec::PecMessageInfo& info) const {
    if (!info.daticert) return {};
    const pec::Daticert& d = *info.daticert;
    std::vector<std::string> keys;
    if (info.type == pec::MessageType::presa_in_carico) {
        for (const auto& r : d.ricezione) keys.push_back(timeout12_key(d.identificativo, r));
    } else if ((info.type == pec::MessageType::avvenuta_consegna ||
                info.type == pec::MessageType::errore_consegna) &&
               d.consegna) {
        keys.push_back(timeout12_key(d.identificativo, *d.consegna));
        keys.push_back(timeout24_key(d.identificativo, *d.consegna));
    }
    for (const auto& key : keys) {
        auto st = store_.cancel(key);
        if (!st && st.error().kind != ErrorKind::not_found)
            return fail(ErrorKind::transient, "cancelling " + key + ": " + st.error().message);
        if (st) PECD_LOG(debug) << "timer " << key << " cancelled";
    }
    return {};
}

std::string timeout_notice_id(const scheduler::Task& task) {
    // "<13 hex of the due time>.<16 hex of sha256(key)>": a valid queue id, the same on every
    // run of the task, different for every (message, recipient, stage).
    char arrival[32];
    std::snprintf(arrival, sizeof arrival, "%013llx",
                  static_cast<unsigned long long>(std::max<int64_t>(task.due_us, 0)));
    return std::string(arrival) + "." + hex_sha256(task.key, 16);
}

scheduler::Handler timeout_handler(pec::TimeoutStage stage,
                                   std::shared_ptr<ProviderHandle> provider, spool::Spool spool,
                                   scheduler::Clock clock) {
    if (!clock) clock = [] { return spool::now_us(); };
    return [stage, provider = std::move(provider), spool = std::move(spool),
            clock = std::move(clock)](const scheduler::Task& task) -> Result<scheduler::Next> {
        int64_t now = clock();
        auto dispatch_text = required(task, kDispatch);
        if (!dispatch_text) return std::unexpected(dispatch_text.error());
        auto dispatch = parse_int(*dispatch_text);
        if (!dispatch) return fail(ErrorKind::corrupt, "task " + task.key + ": bad dispatch_us");
        if (stage == pec::TimeoutStage::final_24h && now < *dispatch + kTimeout24FloorUs) {
            // Run early (a manual requeue, clock skew between nodes): not before 22 h.
            PECD_LOG(info) << task.key << ": too early for the 24 h notice, rescheduled";
            return scheduler::Next::at(*dispatch + kTimeout24FloorUs);
        }
        auto recipient = required(task, kRecipient);
        if (!recipient) return std::unexpected(recipient.error());
        auto t = transaction_of(task);
        if (!t) return std::unexpected(t.error());
        t->time = pec_time(now);
        std::shared_ptr<const Provider> p = provider->current();
        std::string id = timeout_notice_id(task);
        if (spool.find(id)) return scheduler::Next::done();  // queued by an earlier run
        auto built = p->builder().preavviso_errore_consegna(*t, *recipient, stage);
        if (!built) return context(built.error(), "task " + task.key);
        spool::Envelope env;
        env.id = id;
        env.arrival_us = now;
        env.sender = p->identity().service_address();
        env.recipients = {t->original.sender};
        env.set_attr(attr::kind, std::string(pec::to_string(built->type)));
        carry_transaction(env, *t);
        env.set_attr(attr::time, std::to_string(now));
        // The notice's emission is a legal-log event; the scheduler has no log of its own, so the
        // deliver stage logs it with the delivery (from these attrs).
        env.set_attr(attr::emitted,
                     std::string(legallog::to_string(stage == pec::TimeoutStage::first_12h
                                                         ? legallog::Event::preavviso_12h
                                                         : legallog::Event::preavviso_24h)));
        env.set_attr(attr::concerning, *recipient);
        env.set_attr(attr::provider, p->identity().name);
        if (auto st = write_notice(spool, env, std::move(built->bytes)); !st)
            return fail(ErrorKind::transient, "task " + task.key + ": " + st.error().message);
        PECD_LOG(info) << t->identificativo << ": "
                       << (stage == pec::TimeoutStage::first_12h ? "12 h" : "24 h")
                       << " notice for " << *recipient << " queued as " << id;
        return scheduler::Next::done();
    };
}

Status register_timeout_ops(scheduler::Scheduler& sched, const Config& config) {
    if (!provider_configured(config)) return {};
    auto p = Provider::create(config);
    if (!p) return std::unexpected(p.error());
    auto handle = std::make_shared<ProviderHandle>(std::move(*p));
    auto settings = runner::spool_settings(config);
    if (!settings) return std::unexpected(settings.error());
    auto spool = spool::Spool::open(settings->root, /*create=*/true);
    if (!spool) return std::unexpected(spool.error());
    auto clock = sched.options().clock;
    sched.register_op(std::string(kTimeout12Op),
                      timeout_handler(pec::TimeoutStage::first_12h, handle, *spool, clock));
    sched.register_op(std::string(kTimeout24Op),
                      timeout_handler(pec::TimeoutStage::final_24h, handle, *spool, clock));
    return {};
}

}  // namespace pecd::provider
