#include "stages/provider/stages.hpp"

#include <gmime/gmime.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/log.hpp"
#include "stages/pec/gmime_util.hpp"
#include "stages/pec/postacert.hpp"
#include "stages/pec/reader.hpp"
#include "stages/provider/timeouts.hpp"

namespace pecd::provider {

using runner::StageInput;
using runner::StageOutput;
using runner::StageResult;
using Outputs = std::vector<StageOutput>;

void carry_transaction(spool::Envelope& env, const pec::Transaction& t) {
    env.set_attr(attr::id, t.identificativo);
    env.set_attr(attr::sender, t.original.sender);
    env.set_attr(attr::subject, t.original.subject);
    if (t.original.message_id) env.set_attr(attr::message_id, *t.original.message_id);
}

namespace {

// `text` as a whole decimal number (no sign, no trailing characters).
template <class Int>
bool whole_number(std::string_view text, Int& n) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    return ec == std::errc() && end == text.data() + text.size();
}

// CRLF -> LF: the form a busta's lines have when Postfix's pipe(8) hands it over.
std::string lf_only(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i)
        if (!(text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n')) out += text[i];
    return out;
}

}  // namespace

void carry_busta(spool::Envelope& env, const pec::Transaction& t, std::string_view body,
                 std::string_view postacert) {
    carry_transaction(env, t);
    const pec::OriginalMessage& o = t.original;
    auto line = [](std::string_view key, std::string_view value) {
        return std::string(key) + " " + spool::percent_encode(value) + "\n";
    };
    std::string v = line("id", t.identificativo) + line("sender", o.sender) +
                    line("subject", o.subject) +
                    line("receipt", pec::to_string(o.requested_receipt));
    if (o.message_id) v += line("msgid", *o.message_id);
    if (o.reply_to) v += line("reply-to", *o.reply_to);
    for (const auto& r : o.recipients)
        v += "rcpt " + std::string(pec::to_string(r.kind)) +
             (r.field == pec::AddressField::cc ? " cc " : " to ") +
             spool::percent_encode(r.address) + "\n";
    auto where = [&](std::string_view form, size_t at, size_t size) {
        return "postacert " + std::string(form) + " " + std::to_string(at) + " " +
               std::to_string(size) + "\n";
    };
    if (!postacert.empty()) {
        if (size_t at = body.find(postacert); at != std::string_view::npos) {
            v += where("crlf", at, postacert.size());
        } else {
            std::string lf = lf_only(postacert);
            at = body.find(lf);
            if (at != std::string_view::npos &&
                pec::to_crlf(body.substr(at, lf.size())) == postacert)
                v += where("lf", at, lf.size());
        }
    }
    env.set_attr(attr::busta, std::move(v));
}

std::optional<CarriedBusta> carried_busta(const spool::Envelope& env, std::string_view body) {
    auto v = env.attr(attr::busta);
    if (!v) return std::nullopt;
    CarriedBusta c;
    pec::OriginalMessage& o = c.transaction.original;
    bool have_id = false, have_sender = false, have_receipt = false;
    std::string_view rest = *v;
    while (!rest.empty()) {
        size_t nl = rest.find('\n');
        if (nl == std::string_view::npos) return std::nullopt;
        std::string_view l = rest.substr(0, nl);
        rest.remove_prefix(nl + 1);
        size_t sp = l.find(' ');
        if (sp == std::string_view::npos) return std::nullopt;
        std::string_view key = l.substr(0, sp), value = l.substr(sp + 1);
        if (key == "rcpt" || key == "postacert") {
            size_t a = value.find(' '),
                   b = a == std::string_view::npos ? a : value.find(' ', a + 1);
            if (b == std::string_view::npos) return std::nullopt;
            std::string_view first = value.substr(0, a), second = value.substr(a + 1, b - a - 1),
                             third = value.substr(b + 1);
            if (key == "rcpt") {
                auto address = spool::percent_decode(third);
                if (!address || (first != "certificato" && first != "esterno") ||
                    (second != "to" && second != "cc"))
                    return std::nullopt;
                o.recipients.push_back(
                    {std::move(*address),
                     first == "certificato" ? pec::RecipientKind::certificato
                                            : pec::RecipientKind::esterno,
                     second == "cc" ? pec::AddressField::cc : pec::AddressField::to});
                continue;
            }
            uint64_t at = 0, size = 0;
            if ((first != "crlf" && first != "lf") || !whole_number(second, at) ||
                !whole_number(third, size))
                return std::nullopt;
            auto bytes = spool::byte_range(body, at, size);
            if (!bytes) return std::nullopt;
            c.postacert = first == "crlf" ? std::string(*bytes) : pec::to_crlf(*bytes);
            continue;
        }
        auto decoded = spool::percent_decode(value);
        if (!decoded) return std::nullopt;
        if (key == "id") {
            c.transaction.identificativo = std::move(*decoded);
            have_id = true;
        } else if (key == "sender") {
            o.sender = std::move(*decoded);
            have_sender = true;
        } else if (key == "subject") {
            o.subject = std::move(*decoded);
        } else if (key == "receipt") {
            auto kind = pec::receipt_kind_from_string(*decoded);
            if (!kind) return std::nullopt;
            o.requested_receipt = *kind;
            have_receipt = true;
        } else if (key == "msgid") {
            o.message_id = std::move(*decoded);
        } else if (key == "reply-to") {
            o.reply_to = std::move(*decoded);
        } else {
            return std::nullopt;
        }
    }
    if (!have_id || !have_sender || !have_receipt || o.recipients.empty()) return std::nullopt;
    return c;
}

namespace {

using Clock = std::chrono::system_clock;

// ---------------------------------------------------------------------------- small helpers

// PEC times are to the second (Date:, texts and daticert show seconds).
pec::PecTime pec_time(int64_t us) {
    return pec::PecTime{Clock::time_point(std::chrono::seconds(us / 1'000'000))};
}

bool same_address(std::string_view a, std::string_view b) {
    return lower(a) == lower(b);
}

bool contains(const std::vector<std::string>& list, std::string_view address) {
    return std::any_of(list.begin(), list.end(),
                       [&](const std::string& x) { return same_address(x, address); });
}

std::string join(const std::vector<std::string>& items) {
    std::string out;
    for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
    return out;
}

// The addr-specs of an address header value (groups flattened), parsed by GMime.
std::vector<std::string> parse_addresses(std::string_view value) {
    pec::ensure_gmime();
    std::vector<std::string> out;
    std::string text(value);
    pec::GPtr<InternetAddressList> list(internet_address_list_parse(nullptr, text.c_str()));
    if (!list) return out;
    auto add = [&out](auto& self, InternetAddressList* l) -> void {
        for (int i = 0; i < internet_address_list_length(l); ++i) {
            InternetAddress* a = internet_address_list_get_address(l, i);
            if (INTERNET_ADDRESS_IS_GROUP(a)) {
                self(self, internet_address_group_get_members(INTERNET_ADDRESS_GROUP(a)));
            } else if (const char* addr =
                           internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(a));
                       addr && *addr) {
                out.emplace_back(addr);
            }
        }
    };
    add(add, list.get());
    return out;
}

std::vector<std::string> header_addresses(const pec::raw::Message& m, std::string_view name) {
    std::vector<std::string> out;
    for (const auto* f : m.find_all(name))
        for (auto& a : parse_addresses(f->value())) out.push_back(std::move(a));
    return out;
}

// A new message produced from `in`: fresh envelope under a derived id.
StageOutput new_message(const StageInput& in, std::string destination, std::string_view tag,
                        std::string sender, std::vector<std::string> recipients, std::string bytes,
                        std::string_view kind) {
    StageOutput out;
    out.destination = std::move(destination);
    out.env.id = spool::derived_queue_id(in.env.id, tag);
    out.env.arrival_us = spool::now_us();
    out.env.sender = std::move(sender);
    out.env.recipients = std::move(recipients);
    out.env.history = in.env.history;
    out.env.set_attr(attr::parent, in.env.id);
    out.env.set_attr(attr::kind, std::string(kind));
    out.body = spool::BodySource::from_bytes(std::move(bytes));
    return out;
}

// The input's own bytes, to some of its recipients, under the input id (tag empty) or a derived
// one; attempts start again for a new file.
StageOutput copy_of_input(const StageInput& in, std::string destination, std::string_view tag,
                          std::vector<std::string> recipients) {
    StageOutput out;
    out.destination = std::move(destination);
    out.env = in.env;
    if (!tag.empty()) {
        out.env.id = spool::derived_queue_id(in.env.id, tag);
        out.env.set_attr(attr::parent, in.env.id);
        out.env.attempts = 0;
        out.env.next_attempt_us = 0;
        out.env.last_error.clear();
    }
    out.env.recipients = std::move(recipients);
    out.body = in.body_source();
    return out;
}

// The input moving on unchanged but for its attrs: one append and one rename (runner in_place).
StageOutput in_place(const StageInput& in, std::string destination,
                     std::vector<std::pair<std::string, std::string>> attrs) {
    StageOutput out;
    out.destination = std::move(destination);
    out.env = in.env;
    for (auto& [k, v] : attrs) out.env.set_attr(std::move(k), std::move(v));
    out.body = in.body_source();
    out.in_place = true;
    return out;
}

// Retry schedule of the recipient subsets a stage defers itself: 1 min doubling to 1 h.
int64_t retry_at_us(int attempts) {
    int64_t delay = 60'000'000LL << std::min(attempts, 6);
    return spool::now_us() + std::min<int64_t>(delay, 3'600'000'000LL);
}

std::string status_summary(const std::vector<RecipientStatus>& list) {
    std::string out;
    for (const auto& s : list)
        out += (out.empty() ? "" : "; ") + s.recipient + ": " + s.code + " " + s.text;
    return out;
}

// ------------------------------------------------------------------------ legal log records

using legallog::Event;
using legallog::Record;

// A record about the transaction a queue file belongs to, from the attrs the stages carry along
// (pec.id, pec.msgid, pec.sender, pec.subject, pec.provider), else from its envelope.
Record file_record(const Provider& p, Event event, const spool::Envelope& env, int64_t time_us) {
    Record r;
    r.time_us = time_us;
    r.event = event;
    r.identificativo = env.attr(attr::id).value_or("");
    r.message_id = env.attr(attr::message_id).value_or("");
    r.sender = env.attr(attr::sender).value_or(env.sender);
    r.recipients = env.recipients;
    r.subject = env.attr(attr::subject).value_or("");
    r.provider = env.attr(attr::provider).value_or(p.identity().name);
    return r;
}

// A record about a transaction known from its certification data.
Record transaction_record(Event event, const pec::Transaction& t, int64_t time_us,
                          std::string provider) {
    Record r;
    r.time_us = time_us;
    r.event = event;
    r.identificativo = t.identificativo;
    r.message_id = t.original.message_id.value_or("");
    r.sender = t.original.sender;
    for (const auto& x : t.original.recipients) r.recipients.push_back(x.address);
    r.subject = t.original.subject;
    r.provider = std::move(provider);
    return r;
}

// Names a produced message among a record's related ids: its queue id and its Message-ID.
void add_related(Record& r, const StageOutput& out, std::string_view message_id = {}) {
    r.related.push_back(out.env.id);
    if (!message_id.empty()) r.related.emplace_back(message_id);
}

// The same on a produced file.
void carry_transaction(StageOutput& out, const pec::Transaction& t) {
    provider::carry_transaction(out.env, t);
}

std::string strip_angles(std::string_view id) {
    while (!id.empty() && (id.front() == ' ' || id.front() == '\t' || id.front() == '<'))
        id.remove_prefix(1);
    while (!id.empty() && (id.back() == ' ' || id.back() == '\t' || id.back() == '>'))
        id.remove_suffix(1);
    return std::string(id);
}

// What the legal log says about a message taken in, from its head alone (the first 64 KiB): the
// Subject; the client's Message-ID (a PEC message carries it in X-Riferimento-Message-ID); the
// identificativo when the head names it (a busta's Message-ID; a receipt names it only in its
// body). Whatever cannot be read stays empty: the receipt point logs the verified data.
struct HeadFacts {
    std::string subject, message_id, identificativo;
};

// The header block of `head` with its closing empty line (CRLF or LF), or all of `head` when no
// empty line ends it within.
std::string_view header_block(std::string_view head) {
    if (head.starts_with("\r\n")) return head.substr(0, 2);
    if (head.starts_with("\n")) return head.substr(0, 1);
    for (size_t lf = head.find('\n'); lf != std::string_view::npos; lf = head.find('\n', lf + 1)) {
        std::string_view rest = head.substr(lf + 1);
        if (rest.starts_with("\r\n")) return head.substr(0, lf + 3);
        if (rest.starts_with("\n")) return head.substr(0, lf + 2);
    }
    return head;
}

HeadFacts head_facts(const StageInput& in) {
    HeadFacts f;
    auto head = in.body_prefix(64 * 1024);
    if (!head) return f;
    pec::ensure_gmime();
    // Only the header block goes to GMime: the body and its MIME parts are never parsed.
    std::string_view headers = header_block(*head);
    pec::GPtr<GMimeStream> stream(
        g_mime_stream_mem_new_with_buffer(headers.data(), headers.size()));
    pec::GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
    pec::GPtr<GMimeMessage> message(g_mime_parser_construct_message(parser.get(), nullptr));
    if (!message) return f;
    if (const char* subject = g_mime_message_get_subject(message.get())) f.subject = subject;
    const char* id = g_mime_message_get_message_id(message.get());
    if (id && *id) f.message_id = "<" + std::string(id) + ">";
    GMimeObject* object = GMIME_OBJECT(message.get());
    if (const char* ref = g_mime_object_get_header(object, "X-Riferimento-Message-ID"))
        f.message_id = "<" + strip_angles(ref) + ">";
    const char* transport = g_mime_object_get_header(object, "X-Trasporto");
    if (transport && id && *id && strip_angles(transport) == "posta-certificata")
        f.identificativo = id;
    return f;
}

// ------------------------------------------------------------------ certification data

// The transaction a received busta (or a notice about it) certifies, from its daticert.xml;
// To/Cc membership comes from the busta's inherited To and Cc fields (pec-rules.md §3).
Result<pec::Transaction> transaction_from(const pec::PecMessageInfo& info) {
    if (!info.daticert)
        return fail(ErrorKind::permanent,
                    "daticert.xml assente o non valido" +
                        (info.daticert_error ? ": " + *info.daticert_error : std::string()));
    const pec::Daticert& d = *info.daticert;
    pec::Transaction t;
    t.time = pec_time(spool::now_us());
    t.identificativo = d.identificativo;
    t.original.sender = d.mittente;
    for (const auto& r : d.destinatari) {
        bool cc = contains(info.cc_addresses, r.address) && !contains(info.to_addresses, r.address);
        t.original.recipients.push_back(
            {r.address, r.kind, cc ? pec::AddressField::cc : pec::AddressField::to});
    }
    t.original.subject = d.oggetto.value_or(
        info.original && info.original->subject ? *info.original->subject : std::string());
    t.original.message_id = d.msgid;
    if (!d.risposte.empty() && !same_address(d.risposte, d.mittente))
        t.original.reply_to = d.risposte;
    t.original.requested_receipt =
        d.ricevuta.value_or(info.tipo_ricevuta.value_or(pec::ReceiptKind::completa));
    return t;
}

// --------------------------------------------------------------------------------- classify

Result<StageResult> classify(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    StageResult res;
    Outputs& out = res.outputs;
    // ricezione: what was taken in, as its envelope and head say (relayed mail is not PEC).
    auto received = [&](const StageOutput& to, std::string identificativo, std::string provider,
                        std::string detail) {
        HeadFacts head = head_facts(in);
        Record r;
        r.time_us = spool::now_us();
        r.event = Event::ricezione;
        r.identificativo =
            identificativo.empty() ? std::move(head.identificativo) : std::move(identificativo);
        r.message_id = std::move(head.message_id);
        r.sender = env.sender;
        r.recipients = to.env.recipients;
        r.subject = std::move(head.subject);
        r.provider = std::move(provider);
        r.detail = std::move(detail);
        add_related(r, to);
        res.records.push_back(std::move(r));
    };
    // Authenticated local submission: our user sending through the access point.
    if (!env.user.empty() && p.is_local(env.sender)) {
        auto stored = env.attr(attr::id);
        std::string id = stored ? *stored : p.ids().next();
        out.push_back(in_place(in, "wrap", {{attr::route, "submission"}, {attr::id, id}}));
        received(
            out.back(), id, p.identity().name,
            "submission, user " + env.user + (env.client.empty() ? "" : ", client " + env.client));
        return res;
    }
    std::vector<std::string> local, foreign;
    for (const auto& r : env.recipients) (p.is_local(r) ? local : foreign).push_back(r);
    if (local.empty()) {
        out.push_back(in_place(in, "outbound", {{attr::route, "relay"}}));
    } else if (foreign.empty()) {
        out.push_back(in_place(in, "verify", {{attr::route, "incoming"}}));
        received(out.back(), "", "", "incoming");
    } else {
        // Mail from outside for our users and others: ours are verified, the rest passes on.
        out.push_back(copy_of_input(in, "verify", "in", std::move(local)));
        out.back().env.set_attr(attr::route, "incoming");
        received(out.back(), "", "", "incoming");
        out.push_back(copy_of_input(in, "outbound", "out", std::move(foreign)));
        out.back().env.set_attr(attr::route, "relay");
    }
    return res;
}

// ------------------------------------------------------------------------------------- wrap

struct Submission {
    pec::Transaction t;
    std::string problem;                       // the first formal error, in the words of the notice
    std::optional<pec::ParsedMessage> parsed;  // for the antivirus, when the bytes are MIME
};

// Reads `raw` as a PEC message and keeps the parse in `parsed` (for the antivirus) when the
// bytes are MIME at all.
Result<pec::PecMessageInfo> read_keeping_parse(std::string_view raw,
                                               std::optional<pec::ParsedMessage>& parsed) {
    auto message = pec::ParsedMessage::parse(raw);
    if (!message) return std::unexpected(message.error());
    auto info = pec::read_pec_message(*message);
    parsed = std::move(*message);
    return info;
}

// The antivirus verdict, on the parse the stage made already when the scanner can use it.
Result<ScanResult> scan_message(const Provider& p, std::string_view raw,
                                const std::optional<pec::ParsedMessage>& parsed) {
    if (parsed && p.services().scan_parsed) return p.services().scan_parsed(raw, *parsed);
    return p.services().scan(raw);
}

// The formal checks of the access point (pec-rules.md §5.1), in order.
Submission check_submission(const Provider& p, const spool::Envelope& env, std::string_view raw) {
    Submission s;
    pec::OriginalMessage& o = s.t.original;
    o.sender = env.sender;
    auto note = [&s](std::string text) {
        if (s.problem.empty()) s.problem = std::move(text);
    };

    auto info = read_keeping_parse(raw, s.parsed);
    auto headers = pec::raw::split(pec::to_crlf(raw));
    if (!info || !headers) {
        note("messaggio non conforme allo standard RFC 5322/MIME");
        for (const auto& r : env.recipients) o.recipients.push_back({r});
        return s;
    }
    auto from = header_addresses(*headers, "From");
    auto to = header_addresses(*headers, "To");
    auto cc = header_addresses(*headers, "Cc");
    if (o.sender.empty() && from.size() == 1) o.sender = from.front();
    auto index = p.index();
    auto add = [&](const std::string& a, pec::AddressField field) {
        for (const auto& r : o.recipients)
            if (same_address(r.address, a)) return;
        auto kind = index->is_certified_address(a) ? pec::RecipientKind::certificato
                                                   : pec::RecipientKind::esterno;
        o.recipients.push_back({a, kind, field});
    };
    for (const auto& a : to) add(a, pec::AddressField::to);
    for (const auto& a : cc) add(a, pec::AddressField::cc);
    if (const auto* subject = headers->find("Subject"); subject)
        o.subject = info->headers.subject.value_or(subject->value());
    if (const auto* id = headers->find("Message-ID"); id && !id->value().empty())
        o.message_id = id->value();
    if (auto reply = header_addresses(*headers, "Reply-To"); !reply.empty())
        o.reply_to = reply.front();
    o.requested_receipt = info->tipo_ricevuta.value_or(pec::ReceiptKind::completa);

    if (from.size() != 1) note("il campo From deve contenere uno e un solo indirizzo");
    if (to.empty()) note("il campo To deve contenere almeno un destinatario");
    if (from.size() == 1 && !same_address(env.sender, from.front()))
        note("il mittente della sessione SMTP (MAIL FROM) non coincide con il campo From");
    std::set<std::string> rcpt, listed;
    for (const auto& r : env.recipients) rcpt.insert(lower(r));
    for (const auto& r : o.recipients) listed.insert(lower(r.address));
    if (rcpt != listed)
        note("i destinatari della sessione SMTP (RCPT TO) non coincidono con i campi To e Cc");
    if (headers->find("Bcc") != nullptr) note("il campo Bcc non e' ammesso");
    uint64_t total = static_cast<uint64_t>(raw.size()) * std::max<size_t>(env.recipients.size(), 1);
    if (total > p.settings().max_size_times_recipients)
        note("dimensione del messaggio per numero di destinatari oltre il limite di " +
             std::to_string(p.settings().max_size_times_recipients) + " byte");
    // A notice needs someone to be about: fall back to the SMTP recipients.
    if (o.recipients.empty())
        for (const auto& r : env.recipients) o.recipients.push_back({r});
    return s;
}

Result<StageResult> wrap(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    auto raw = in.body();
    if (!raw) return std::unexpected(raw.error());
    int64_t now = spool::now_us();
    Submission sub = check_submission(p, env, *raw);
    pec::Transaction& t = sub.t;
    if (t.original.sender.empty())
        return fail(ErrorKind::permanent, "submission without a sender: nobody to notify");
    t.time = pec_time(now);
    auto stored_id = env.attr(attr::id);
    t.identificativo = stored_id ? *stored_id : p.ids().next();
    const std::string service = p.identity().service_address();
    const std::string time = std::to_string(now);
    StageResult res;
    Outputs& out = res.outputs;
    // The legal log: the transaction's single instant, our provider; related = what was made.
    auto log = [&](Event event, std::string detail = {}) -> Record& {
        res.records.push_back(transaction_record(event, t, now, p.identity().name));
        res.records.back().detail = std::move(detail);
        return res.records.back();
    };
    std::string notice_id;  // Message-ID of the last notice made
    auto notice = [&](Result<pec::BuiltMessage> built, std::string_view tag) -> Status {
        if (!built) return context(built.error(), "wrap");
        notice_id = built->message_id;
        out.push_back(new_message(in, "deliver", tag, service, {t.original.sender},
                                  std::move(built->bytes), pec::to_string(built->type)));
        carry_transaction(out.back(), t);
        out.back().env.set_attr(attr::time, time);
        return {};
    };

    if (!sub.problem.empty()) {
        PECD_LOG(info) << env.id << ": not accepted: " << sub.problem;
        if (auto st = notice(p.builder().non_accettazione(t, sub.problem), "na"); !st)
            return std::unexpected(st.error());
        add_related(log(Event::non_accettazione, sub.problem), out.back(), notice_id);
        return res;
    }
    auto scan = scan_message(p, *raw, sub.parsed);
    if (!scan) return fail(ErrorKind::transient, "antivirus: " + scan.error().message);
    if (scan->infected) {
        PECD_LOG(info) << env.id << ": virus at submission: " << scan->virus;
        if (auto kept = p.services().keep_infected(env.id, *raw); !kept)
            return fail(ErrorKind::transient, "virus store: " + kept.error().message);
        if (auto st = notice(p.builder().non_accettazione_virus(t, scan->virus), "nav"); !st)
            return std::unexpected(st.error());
        add_related(log(Event::non_accettazione, "virus: " + scan->virus), out.back(), notice_id);
        return res;
    }

    auto busta = p.builder().busta_trasporto(t, *raw);
    if (!busta && busta.error().kind == ErrorKind::permanent) {
        // The original cannot be carried (e.g. its header block does not split): the sender
        // learns it from a non-acceptance rather than from silence.
        std::string reason = "messaggio non trasportabile: " + busta.error().message;
        PECD_LOG(info) << env.id << ": not accepted: " << reason;
        if (auto st = notice(p.builder().non_accettazione(t, reason), "na"); !st)
            return std::unexpected(st.error());
        add_related(log(Event::non_accettazione, reason), out.back(), notice_id);
        return res;
    }
    if (!busta) return context(busta.error(), "wrap");
    if (auto st = notice(p.builder().accettazione(t), "acc"); !st)
        return std::unexpected(st.error());
    std::vector<std::string> certified, external;
    for (const auto& r : t.original.recipients)
        (r.kind == pec::RecipientKind::certificato ? certified : external).push_back(r.address);
    const std::string busta_id = busta->message_id;
    out.push_back(new_message(in, "outbound", "b", t.original.sender, env.recipients,
                              std::move(busta->bytes), pec::to_string(busta->type)));
    // What the scheduler needs for the 12 h / 24 h timers (DECISIONS #5), and the legal log.
    carry_transaction(out.back(), t);
    auto& benv = out.back().env;
    benv.set_attr(attr::time, time);
    benv.set_attr(attr::certified, join(certified));
    Record& accepted = log(Event::accettazione);
    add_related(accepted, out[0], notice_id);
    add_related(accepted, out[1], busta_id);
    add_related(log(Event::busta_inviata, external.empty() ? "" : "esterno: " + join(external)),
                out[1], busta_id);
    return res;
}

// ----------------------------------------------------------------------------------- verify

// What a received message is worth: valid PEC (signature, chain, index, From domain) or not.
struct Verdict {
    std::optional<pec::ParsedMessage> parsed;
    std::optional<pec::PecMessageInfo> info;
    pec::VerifyReport report;
    std::string problem;  // empty = valid PEC message
};

Result<Verdict> judge(const Provider& p, std::string_view raw, const pec::IndexSnapshot& index) {
    Verdict v;
    auto info = read_keeping_parse(raw, v.parsed);
    auto report = p.verifier().verify(raw, &index);
    if (!report) return fail(ErrorKind::transient, "verification: " + report.error().message);
    v.report = std::move(*report);
    if (info) v.info = std::move(*info);
    if (!v.info) {
        v.problem = "messaggio non leggibile: " + info.error().message;
    } else if (!v.report.ok()) {
        v.problem = std::string(pec::to_string(v.report.failure)) + " - " + v.report.reason;
    } else if (v.info->type == pec::MessageType::ordinary) {
        v.problem = "messaggio firmato ma privo delle intestazioni di posta certificata";
    } else if (v.info->type != pec::MessageType::busta_anomalia && !v.info->daticert) {
        v.problem = "daticert.xml assente o non valido" +
                    (v.info->daticert_error ? ": " + *v.info->daticert_error : std::string());
    }
    return v;
}

Result<StageResult> anomaly_or_refusal(const Provider& p, const StageInput& in,
                                       std::string_view raw, const Verdict& v) {
    const spool::Envelope& env = in.env;
    std::vector<std::string> wrap_them, refuse_them;
    for (const auto& r : env.recipients)
        (p.settings().policy_for(domain_of(r)) == OrdinaryPolicy::reject ? refuse_them : wrap_them)
            .push_back(r);
    if (wrap_them.empty())
        // Refusing belongs to the SMTP dialogue (the MTA); after queueing, dropping is not an
        // option, so the message waits in quarantine with the reason.
        return fail(ErrorKind::permanent, "refused by [policy] ordinary_mail: " + v.problem);
    StageResult res;
    Outputs& out = res.outputs;
    const int64_t now = spool::now_us();
    pec::Transaction t;
    t.time = pec_time(now);
    t.original.sender = env.sender;
    if (t.original.sender.empty() && v.info) t.original.sender = v.info->from_address;
    if (t.original.sender.empty()) t.original.sender = "MAILER-DAEMON";
    if (v.info) {
        t.original.subject = v.info->headers.subject.value_or("");
        t.original.message_id = v.info->headers.message_id;
        for (const auto& a : v.info->to_addresses) t.original.recipients.push_back({a});
        for (const auto& a : v.info->cc_addresses)
            t.original.recipients.push_back(
                {a, pec::RecipientKind::certificato, pec::AddressField::cc});
    }
    if (t.original.recipients.empty())
        for (const auto& r : env.recipients) t.original.recipients.push_back({r});
    auto anomaly = p.builder().busta_anomalia(t, raw, v.problem);
    if (!anomaly) return context(anomaly.error(), "verify");
    PECD_LOG(info) << env.id << ": anomaly: " << v.problem;
    out.push_back(new_message(in, "deliver", "an", p.identity().service_address(), wrap_them,
                              std::move(anomaly->bytes), pec::to_string(anomaly->type)));
    // The busta di anomalia is a PEC message of ours: its Message-ID names the event.
    t.identificativo = anomaly->message_id;
    carry_transaction(out.back(), t);
    Record r = transaction_record(Event::anomalia, t, now, v.report.provider_name);
    r.recipients = wrap_them;
    r.detail = v.problem;
    add_related(r, out.back(), anomaly->message_id);
    res.records.push_back(std::move(r));
    if (!refuse_them.empty()) out.push_back(copy_of_input(in, "verify", "rj", refuse_them));
    return res;
}

Result<StageResult> verify(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    auto raw = in.body();
    if (!raw) return std::unexpected(raw.error());
    auto index = p.index();
    auto verdict = judge(p, *raw, *index);
    if (!verdict) return std::unexpected(verdict.error());
    if (!verdict->problem.empty()) return anomaly_or_refusal(p, in, *raw, *verdict);

    const pec::PecMessageInfo& info = *verdict->info;
    const std::string service = p.identity().service_address();
    const int64_t now = spool::now_us();
    // The sending provider: the index record of the signer.
    const std::string& sender_provider = verdict->report.provider_name;
    StageResult res;
    Outputs& out = res.outputs;
    if (info.type == pec::MessageType::busta_trasporto) {
        auto t = transaction_from(info);
        if (!t) return std::unexpected(t.error());
        const pec::ProviderRecord* from =
            index->find_by_cert_hash(verdict->report.signer_cert_sha1);
        std::string receipt_box = from ? from->mail_receipt : std::string();
        auto scan = scan_message(p, *raw, verdict->parsed);
        if (!scan) return fail(ErrorKind::transient, "antivirus: " + scan.error().message);
        if (scan->infected) {
            // No delivery: one rilevazione virus per recipient to the sender's provider.
            PECD_LOG(info) << env.id << ": virus in busta " << t->identificativo << ": "
                           << scan->virus;
            if (auto kept = p.services().keep_infected(env.id, *raw); !kept)
                return fail(ErrorKind::transient, "virus store: " + kept.error().message);
            Record r = transaction_record(Event::virus, *t, now, sender_provider);
            r.recipients = env.recipients;
            r.detail = scan->virus;
            for (size_t i = 0; i < env.recipients.size(); ++i) {
                auto built =
                    p.builder().rilevazione_virus(*t, receipt_box, env.recipients[i], scan->virus);
                if (!built) return context(built.error(), "verify");
                out.push_back(new_message(in, "outbound", "rv" + std::to_string(i), service,
                                          {receipt_box}, std::move(built->bytes),
                                          pec::to_string(built->type)));
                carry_transaction(out.back(), *t);
                add_related(r, out.back(), built->message_id);
            }
            res.records.push_back(std::move(r));
            return res;
        }
        auto taken = p.builder().presa_in_carico(*t, receipt_box, env.recipients);
        if (!taken) return context(taken.error(), "verify");
        out.push_back(new_message(in, "outbound", "pic", service, {receipt_box},
                                  std::move(taken->bytes), pec::to_string(taken->type)));
        carry_transaction(out.back(), *t);
        out.push_back(copy_of_input(in, "deliver", "", env.recipients));
        out.back().env.set_attr(attr::kind, std::string(pec::to_string(info.type)));
        // The receipt stage builds the avvenuta consegna from these, without a second parse.
        std::string postacert;
        if (verdict->parsed)
            if (auto extracted = extract_postacert(*verdict->parsed))
                postacert = std::move(*extracted);
        carry_busta(out.back().env, *t, *raw, postacert);
        out.back().env.set_attr(attr::provider, sender_provider);
        // presa in carico of the busta for our recipients; related: the receipt, the busta.
        Record r = transaction_record(Event::presa_in_carico, *t, now, sender_provider);
        r.recipients = env.recipients;
        add_related(r, out[0], taken->message_id);
        add_related(r, out[1], t->identificativo);
        res.records.push_back(std::move(r));
        return res;
    }
    if (info.type == pec::MessageType::rilevazione_virus) {
        // The recipient's provider found a virus in our busta: tell our sender (#11), and keep
        // the notice in the service mailbox it was sent to.
        auto t = transaction_from(info);
        if (!t) return std::unexpected(t.error());
        std::string recipient = info.daticert->consegna.value_or("");
        std::string virus = info.daticert->errore_esteso.value_or("virus");
        auto built = p.builder().errore_consegna_virus(*t, recipient, virus);
        if (!built) return context(built.error(), "verify");
        std::string where = p.is_local(t->original.sender) ? "deliver" : "outbound";
        out.push_back(new_message(in, where, "ecv", service, {t->original.sender},
                                  std::move(built->bytes), pec::to_string(built->type)));
        carry_transaction(out.back(), *t);
        out.push_back(copy_of_input(in, "deliver", "", env.recipients));
        out.back().env.set_attr(attr::kind, std::string(pec::to_string(info.type)));
        carry_transaction(out.back(), *t);
        out.back().env.set_attr(attr::provider, sender_provider);
        Record got = transaction_record(Event::ricevuta_ricevuta, *t, now, sender_provider);
        got.detail = std::string(pec::to_string(info.type)) + ": " + recipient + ": " + virus;
        add_related(got, out[1]);
        res.records.push_back(std::move(got));
        Record notice =
            transaction_record(Event::avviso_mancata_consegna, *t, now, p.identity().name);
        notice.recipients = {recipient};
        notice.detail = "virus: " + virus;
        add_related(notice, out[0], built->message_id);
        res.records.push_back(std::move(notice));
        return res;
    }
    // Receipts and notices for our users (presa in carico: for our service mailbox).
    if (const Timeouts* timers = p.timeouts())
        if (auto st = timers->receipt_arrived(info); !st) return std::unexpected(st.error());
    std::vector<std::pair<std::string, std::string>> attrs{
        {attr::kind, std::string(pec::to_string(info.type))}, {attr::provider, sender_provider}};
    Record got;
    got.time_us = now;
    got.event = Event::ricevuta_ricevuta;
    got.provider = sender_provider;
    got.detail = std::string(pec::to_string(info.type));
    if (auto t = transaction_from(info); t) {
        got = transaction_record(Event::ricevuta_ricevuta, *t, now, sender_provider);
        got.detail = std::string(pec::to_string(info.type));
        attrs.emplace_back(attr::id, t->identificativo);
        attrs.emplace_back(attr::sender, t->original.sender);
        attrs.emplace_back(attr::subject, t->original.subject);
        if (t->original.message_id) attrs.emplace_back(attr::message_id, *t->original.message_id);
        if (info.daticert->consegna) got.detail += ": " + *info.daticert->consegna;
    }
    out.push_back(in_place(in, "deliver", std::move(attrs)));
    add_related(got, out.back(), info.headers.message_id.value_or(""));
    res.records.push_back(std::move(got));
    return res;
}

// ---------------------------------------------------------------------------------- deliver

// A dlv.<rcpt> record: "ok <us>" or "fail <us> <code> <text>".
struct DeliveryRecord {
    bool delivered = false;
    int64_t at_us = 0;
    std::string code, text;
};

std::string format_delivery(const RecipientStatus& st, int64_t at_us) {
    if (st.outcome == Outcome::ok) return "ok " + std::to_string(at_us);
    return "fail " + std::to_string(at_us) + " " + (st.code.empty() ? "5.0.0" : st.code) + " " +
           st.text;
}

Result<DeliveryRecord> parse_delivery(std::string_view record) {
    const std::string whole(record);
    DeliveryRecord d;
    auto word = [&record]() {
        size_t sp = record.find(' ');
        std::string_view w = record.substr(0, sp);
        record = sp == std::string_view::npos ? std::string_view() : record.substr(sp + 1);
        return w;
    };
    std::string_view what = word(), at = word();
    if ((what != "ok" && what != "fail") || !whole_number(at, d.at_us))
        return fail(ErrorKind::corrupt, "bad delivery record '" + whole + "'");
    d.delivered = what == "ok";
    if (!d.delivered) {
        d.code = std::string(word());
        d.text = std::string(record);
    }
    return d;
}

Result<StageResult> deliver(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    auto raw = in.body();
    if (!raw) return std::unexpected(raw.error());
    std::vector<std::pair<std::string, std::string>> records;
    std::vector<std::string> done, pending;
    std::vector<RecipientStatus> retry;
    StageResult res;
    Outputs& out = res.outputs;
    const std::string kind = env.attr(attr::kind).value_or("");
    for (const auto& r : env.recipients) {
        auto st = p.services().deliver_to_mailbox(r, *raw, env.id);
        if (!st) st = RecipientStatus{r, Outcome::transient, "4.0.0", st.error().message};
        if (st->outcome == Outcome::transient) {
            pending.push_back(r);
            retry.push_back(*st);
            continue;
        }
        done.push_back(r);
        int64_t at = spool::now_us();
        std::string value = format_delivery(*st, at);
        bool delivered = st->outcome == Outcome::ok;
        if (!delivered)
            PECD_LOG(info) << env.id << ": not delivered to " << r << ": " << st->code << " "
                           << st->text;
        records.emplace_back(attr::delivery_prefix + lower(r), value);
        // One event per recipient, at the instant of its delivery.
        Record logged =
            file_record(p, delivered ? Event::consegna : Event::mancata_consegna, env, at);
        logged.recipients = {r};
        logged.detail = kind + (delivered ? "" : ": " + st->code + " " + st->text);
        res.records.push_back(std::move(logged));
    }
    if (done.empty())
        return fail(ErrorKind::transient, "mailbox delivery: " + status_summary(retry));
    // A notice made outside the stages (12 h / 24 h): its emission is logged here, once, at the
    // time it was made; the copy left for a retry does not log it again.
    const std::string emitted = env.attr(attr::emitted).value_or("");
    if (auto event = legallog::event_from_string(emitted)) {
        int64_t made = env.arrival_us;
        if (auto t = env.attr(attr::time)) made = std::strtoll(t->c_str(), nullptr, 10);
        Record r = file_record(p, *event, env, made);
        r.recipients = {env.attr(attr::concerning).value_or("")};
        r.detail = kind;  // related: the notice, added below with the deliveries'
        res.records.push_back(std::move(r));
    }
    // Only a delivered busta di trasporto earns receipts: anything else (a receipt, a notice, an
    // anomaly) ends here once delivered, without a pass through the receipt stage.
    const bool earns_receipts = kind == pec::to_string(pec::MessageType::busta_trasporto);
    if (pending.empty()) {
        if (earns_receipts) {
            out.push_back(in_place(in, "receipt", std::move(records)));
            for (auto& r : res.records) add_related(r, out.back());
        } else {
            for (auto& r : res.records) r.related.push_back(env.id);  // the message delivered
        }
        return res;
    }
    if (earns_receipts) {
        out.push_back(copy_of_input(in, "receipt", "d", done));
        for (auto& r : res.records) add_related(r, out.back());
        for (auto& [k, v] : records) out.back().env.set_attr(k, v);
    } else {
        for (auto& r : res.records) r.related.push_back(env.id);
    }
    out.push_back(copy_of_input(in, "deliver", "p", pending));
    if (!emitted.empty()) out.back().env.set_attr(attr::emitted, "");  // logged above
    out.back().env.attempts = env.attempts + 1;
    out.back().env.last_error = status_summary(retry);
    out.back().defer_until_us = retry_at_us(env.attempts);
    return res;
}

// ---------------------------------------------------------------------------------- receipt

pec::DaticertError error_for(std::string_view code) {
    if (code == "5.1.1") return pec::DaticertError::no_dest;
    if (code == "5.1.2") return pec::DaticertError::no_dominio;
    return pec::DaticertError::altro;
}

Result<StageResult> receipt(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    StageResult res;
    Outputs& out = res.outputs;
    // Only a delivered busta di trasporto earns receipts; anomalies and notices end here.
    if (env.attr(attr::kind) != pec::to_string(pec::MessageType::busta_trasporto)) return res;
    auto raw = in.body();
    if (!raw) return std::unexpected(raw.error());
    // What verify read of the busta, else one parse for both readings: its certification data
    // and its postacert.eml.
    std::optional<pec::ParsedMessage> busta;
    std::optional<pec::Transaction> t;
    std::optional<std::string> postacert;
    auto parse = [&]() -> Status {
        auto parsed = pec::ParsedMessage::parse(*raw);
        if (!parsed) return context(parsed.error(), "receipt");
        busta = std::move(*parsed);
        return {};
    };
    if (auto carried = carried_busta(env, *raw)) {
        t = std::move(carried->transaction);
        postacert = std::move(carried->postacert);
    } else {
        if (auto st = parse(); !st) return std::unexpected(st.error());
        auto info = pec::read_pec_message(*busta);
        if (!info) return context(info.error(), "receipt");
        auto read = transaction_from(*info);
        if (!read) return std::unexpected(read.error());
        t = std::move(*read);
    }
    const std::string service = p.identity().service_address();
    for (size_t i = 0; i < env.recipients.size(); ++i) {
        const std::string& r = env.recipients[i];
        auto record = env.attr(attr::delivery_prefix + lower(r));
        if (!record) return fail(ErrorKind::permanent, "receipt: no delivery outcome for " + r);
        auto outcome = parse_delivery(*record);
        if (!outcome) return context(outcome.error(), "receipt: " + r);
        t->time = pec_time(outcome->at_us);
        Result<pec::BuiltMessage> built;
        if (outcome->delivered) {
            if (!postacert) {
                if (!busta)
                    if (auto st = parse(); !st) return std::unexpected(st.error());
                auto extracted = extract_postacert(*busta);
                if (!extracted) return context(extracted.error(), "receipt");
                postacert = std::move(*extracted);
            }
            built = p.builder().avvenuta_consegna(*t, r, *postacert);
        } else {
            built = p.builder().errore_consegna(
                *t, r, error_for(outcome->code),
                outcome->code + " - " + p.identity().name + " - " + outcome->text);
        }
        if (!built) return context(built.error(), "receipt");
        out.push_back(new_message(in, "outbound", "r" + std::to_string(i), service,
                                  {t->original.sender}, std::move(built->bytes),
                                  pec::to_string(built->type)));
        carry_transaction(out.back(), *t);
        Record r_log = transaction_record(
            outcome->delivered ? Event::ricevuta_consegna : Event::avviso_mancata_consegna, *t,
            outcome->at_us, p.identity().name);
        r_log.recipients = {r};
        r_log.detail = std::string(pec::to_string(built->type));
        if (!outcome->delivered) r_log.detail += ": " + outcome->code + " " + outcome->text;
        add_related(r_log, out.back(), built->message_id);
        res.records.push_back(std::move(r_log));
    }
    return res;
}

// --------------------------------------------------------------------------------- outbound

Result<StageResult> outbound(const Provider& p, const StageInput& in) {
    const spool::Envelope& env = in.env;
    if (auto reason = env.attr(attr::refused)) return fail(ErrorKind::permanent, *reason);
    auto raw = in.body();
    if (!raw) return std::unexpected(raw.error());
    // Our busta leaving: the 12 h / 24 h timers first, so none is lost to a crash after sending.
    if (const Timeouts* timers = p.timeouts())
        if (auto st = timers->busta_leaving(env, *raw); !st) return std::unexpected(st.error());
    // The queue file itself when the transport takes one (the embedded outbox links it), else
    // the message bytes; EXDEV from the former means "not on this filesystem".
    auto hand_over = [&]() -> Result<std::vector<RecipientStatus>> {
        if (p.services().send_queue_file) {
            auto linked = p.services().send_queue_file(env.sender, env.recipients, in.path);
            if (linked || linked.error().sys_errno != EXDEV) return linked;
        }
        return p.services().send(env.sender, env.recipients, *raw);
    };
    auto sent = hand_over();
    if (!sent) {
        if (sent.error().kind == ErrorKind::permanent) return std::unexpected(sent.error());
        return fail(ErrorKind::transient, "send: " + sent.error().message);
    }
    bool busta = env.attr(attr::kind) == pec::to_string(pec::MessageType::busta_trasporto);
    auto index = p.index();
    std::vector<std::string> ok, pending, refused;
    std::vector<RecipientStatus> retry, refusals;
    // A recipient the adapter did not report on is retried, never taken as sent.
    std::vector<RecipientStatus> statuses;
    for (const auto& r : env.recipients) {
        auto it = std::find_if(sent->begin(), sent->end(), [&r](const RecipientStatus& s) {
            return same_address(s.recipient, r);
        });
        statuses.push_back(it != sent->end() ? *it
                                             : RecipientStatus{r, Outcome::transient, "4.0.0",
                                                               "no status from the transport"});
        statuses.back().recipient = r;
    }
    for (const auto& s : statuses) {
        if (s.outcome == Outcome::ok) {
            ok.push_back(s.recipient);
        } else if (s.outcome == Outcome::transient) {
            pending.push_back(s.recipient);
            retry.push_back(s);
        } else if (busta && !index->is_certified_address(s.recipient)) {
            // An esterno recipient of a busta: ordinary mail rules, no PEC notice (§3.1.5).
            PECD_LOG(info) << env.id << ": busta refused by esterno " << s.recipient << ": "
                           << s.code << " " << s.text;
            ok.push_back(s.recipient);
        } else {
            refused.push_back(s.recipient);
            refusals.push_back(s);
        }
    }
    if (ok.empty() && refused.empty())
        return fail(ErrorKind::transient, "send: " + status_summary(retry));
    if (ok.empty() && pending.empty())
        return fail(ErrorKind::permanent, "send: " + status_summary(refusals));
    StageResult res;
    Outputs& out = res.outputs;
    // invio: a PEC message (anything a stage of ours made or verified) handed to the next hop;
    // relayed ordinary mail is not a PEC event.
    if (env.attr(attr::kind) && !ok.empty()) {
        Record r = file_record(p, Event::invio, env, spool::now_us());
        r.provider = p.identity().name;
        r.recipients = ok;
        r.detail = *env.attr(attr::kind);
        r.related.push_back(env.id);
        res.records.push_back(std::move(r));
    }
    if (!pending.empty()) {
        out.push_back(copy_of_input(in, "outbound", "p", pending));
        out.back().env.attempts = env.attempts + 1;
        out.back().env.last_error = status_summary(retry);
        out.back().defer_until_us = retry_at_us(env.attempts);
    }
    if (!refused.empty()) {
        out.push_back(copy_of_input(in, "outbound", "q", refused));
        out.back().env.set_attr(attr::refused,
                                "refused by the next hop: " + status_summary(refusals));
    }
    return res;
}

// Wraps a stage body: one Provider snapshot per message, so a reload never changes the
// configuration in the middle of one.
StageFunction with_snapshot(std::shared_ptr<ProviderHandle> handle,
                            Result<StageResult> (*body)(const Provider&, const StageInput&)) {
    return [handle = std::move(handle), body](const StageInput& in) -> Result<StageResult> {
        std::shared_ptr<const Provider> p = handle->current();
        return body(*p, in);
    };
}

}  // namespace

Result<std::string> extract_postacert(std::string_view busta) {
    auto message = pec::ParsedMessage::parse(busta);
    if (!message) return fail(ErrorKind::corrupt, "busta is not a MIME message");
    return extract_postacert(*message);
}

Result<std::string> extract_postacert(const pec::ParsedMessage& busta) {
    // The signed content is the first part of multipart/signed; postacert.eml is a direct
    // message/rfc822 part of the multipart/mixed inside it.
    GMimeObject* top = g_mime_message_get_mime_part(busta.gmime());
    if (top && GMIME_IS_MULTIPART_SIGNED(top))
        top = g_mime_multipart_get_part(GMIME_MULTIPART(top), 0);
    if (!top || !GMIME_IS_MULTIPART(top))
        return fail(ErrorKind::corrupt, "busta without multipart body");
    int count = g_mime_multipart_get_count(GMIME_MULTIPART(top));
    for (int i = 0; i < count; ++i) {
        GMimeObject* part = g_mime_multipart_get_part(GMIME_MULTIPART(top), i);
        if (!GMIME_IS_MESSAGE_PART(part)) continue;
        const char* name = g_mime_object_get_content_disposition_parameter(part, "filename");
        if (!name) name = g_mime_object_get_content_type_parameter(part, "name");
        if (!name || g_ascii_strcasecmp(name, "postacert.eml") != 0) continue;
        GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(part));
        if (!inner) break;
        return pec::serialize_crlf(GMIME_OBJECT(inner));
    }
    return fail(ErrorKind::corrupt, "busta without postacert.eml");
}

StageFunction classify_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), classify);
}
StageFunction wrap_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), wrap);
}
StageFunction verify_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), verify);
}
StageFunction deliver_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), deliver);
}
StageFunction receipt_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), receipt);
}
StageFunction outbound_stage(std::shared_ptr<ProviderHandle> h) {
    return with_snapshot(std::move(h), outbound);
}

Result<StageFunction> make_stage(std::string_view stage, std::shared_ptr<ProviderHandle> provider) {
    if (stage == "classify") return classify_stage(std::move(provider));
    if (stage == "wrap") return wrap_stage(std::move(provider));
    if (stage == "verify") return verify_stage(std::move(provider));
    if (stage == "deliver") return deliver_stage(std::move(provider));
    if (stage == "receipt") return receipt_stage(std::move(provider));
    if (stage == "outbound") return outbound_stage(std::move(provider));
    return fail(ErrorKind::config, "unknown stage '" + std::string(stage) + "'");
}

}  // namespace pecd::provider
