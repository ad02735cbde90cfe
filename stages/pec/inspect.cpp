#include "stages/pec/inspect.hpp"

#include <ctime>
#include <sstream>

#include "stages/common/json.hpp"

namespace pecd::pec {
namespace {

std::string utc(std::chrono::system_clock::time_point t) {
    std::time_t secs = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

bool carries_daticert(MessageType type) {
    return type != MessageType::ordinary && type != MessageType::busta_anomalia;
}

}  // namespace

Result<InspectReport> inspect_message(std::string_view raw, const InspectOptions& options) {
    auto message = read_pec_message(raw);
    if (!message) return std::unexpected(message.error());
    InspectReport report;
    report.message = std::move(*message);
    const PecMessageInfo& m = report.message;

    if (m.type == MessageType::ordinary)
        report.verdict.push_back("not a PEC message (ordinary mail)");
    if (carries_daticert(m.type) && !m.daticert)
        report.verdict.push_back(m.daticert_error ? "daticert.xml unreadable: " + *m.daticert_error
                                                  : "daticert.xml missing");

    if (m.is_signed) {
        bool have_anchors = !options.trust.ca_files.empty() || !options.trust.ca_dirs.empty();
        VerifyOptions vo;
        vo.chain = have_anchors ? ChainCheck::full : ChainCheck::crypto_only;
        vo.at_signing_time = options.at_signing_time;
        auto result =
            verify_smime(raw, options.trust, options.index ? &*options.index : nullptr, vo);
        if (result) {
            report.signature = std::move(*result);
            report.chain_checked = report.signature->chain_checked;
            if (!report.signature->ok())
                report.verdict.push_back(
                    "signature: " + std::string(to_string(report.signature->failure)) + ": " +
                    report.signature->reason);
        } else {
            report.signature_error = result.error().message;
            report.verdict.push_back("signature not checked: " + report.signature_error);
        }
    } else {
        report.verdict.push_back("not signed");
    }
    report.valid = report.verdict.empty();
    return report;
}

std::string format_text(const InspectReport& r) {
    const PecMessageInfo& m = r.message;
    std::ostringstream out;
    out << "type:            " << to_string(m.type) << "\n";
    if (m.headers.subject) out << "subject:         " << *m.headers.subject << "\n";
    out << "from:            " << m.from_address;
    if (!m.from_name.empty()) out << " (" << m.from_name << ")";
    out << "\n";
    for (const auto& to : m.to_addresses) out << "to:              " << to << "\n";
    if (m.headers.message_id) out << "message-id:      " << *m.headers.message_id << "\n";
    if (m.headers.x_riferimento_message_id)
        out << "riferimento:     " << *m.headers.x_riferimento_message_id << "\n";
    if (m.tipo_ricevuta) out << "tipo ricevuta:   " << to_string(*m.tipo_ricevuta) << "\n";
    if (m.daticert) {
        const Daticert& d = *m.daticert;
        out << "daticert:\n  tipo:           " << to_string(d.tipo) << " (errore "
            << to_string(d.errore) << ")\n"
            << "  mittente:       " << d.mittente << "\n";
        for (const auto& dest : d.destinatari)
            out << "  destinatario:   " << dest.address << " (" << to_string(dest.kind) << ")\n";
        out << "  risposte:       " << d.risposte << "\n";
        if (d.oggetto) out << "  oggetto:        " << *d.oggetto << "\n";
        out << "  gestore:        " << d.gestore_emittente << "\n"
            << "  data:           " << d.giorno << " " << d.ora << " (" << d.zona << ")\n"
            << "  identificativo: " << d.identificativo << "\n";
        if (d.msgid) out << "  msgid:          " << *d.msgid << "\n";
        if (d.ricevuta) out << "  ricevuta:       " << to_string(*d.ricevuta) << "\n";
        if (d.consegna) out << "  consegna:       " << *d.consegna << "\n";
        for (const auto& r2 : d.ricezione) out << "  ricezione:      " << r2 << "\n";
        if (d.errore_esteso) out << "  errore-esteso:  " << *d.errore_esteso << "\n";
    } else if (m.daticert_error) {
        out << "daticert:        unreadable: " << *m.daticert_error << "\n";
    }
    if (m.original) {
        out << "original (" << m.original->filename << "):\n";
        if (m.original->message_id) out << "  message-id:     " << *m.original->message_id << "\n";
        if (m.original->riferimento_message_id)
            out << "  riferimento:    " << *m.original->riferimento_message_id << "\n";
        if (m.original->subject) out << "  subject:        " << *m.original->subject << "\n";
        if (m.original->hash_parts > 0)
            out << "  .hash parts:    " << m.original->hash_parts << "\n";
    }
    if (r.signature) {
        const VerifyReport& s = *r.signature;
        out << "signature:       "
            << (s.ok() ? "valid" : "INVALID: " + std::string(to_string(s.failure)))
            << (r.chain_checked ? "" : " (cryptographic check only: no trust anchors given)")
            << "\n";
        if (!s.ok()) out << "  reason:         " << s.reason << "\n";
        if (!s.signer_subject.empty()) out << "  signer:         " << s.signer_subject << "\n";
        if (!s.signer_email.empty()) out << "  signer email:   " << s.signer_email << "\n";
        if (!s.signer_cert_sha1.empty()) out << "  signer sha1:    " << s.signer_cert_sha1 << "\n";
        if (!s.digest_algorithm.empty()) out << "  digest:         " << s.digest_algorithm << "\n";
        if (!s.protocol.empty()) out << "  protocol:       " << s.protocol << "\n";
        if (s.signing_time) out << "  signing time:   " << utc(*s.signing_time) << "\n";
        if (!s.provider_name.empty()) out << "  provider:       " << s.provider_name << "\n";
    } else {
        out << "signature:       " << (r.signature_error.empty() ? "none" : r.signature_error)
            << "\n";
    }
    for (const auto& p : m.problems) out << "problem:         " << p << "\n";
    out << "verdict:         " << (r.valid ? "valid PEC message" : "NOT a valid PEC message")
        << "\n";
    for (const auto& v : r.verdict) out << "  - " << v << "\n";
    return out.str();
}

std::string format_json(const InspectReport& r) {
    json::Writer w;
    w.begin_object().key("valid").value(r.valid).key("verdict").begin_array();
    for (const auto& v : r.verdict) w.value(v);
    w.end_array().key("chain_checked").value(r.chain_checked).key("signature");
    if (r.signature) {
        const VerifyReport& s = *r.signature;
        w.begin_object()
            .key("ok")
            .value(s.ok())
            .key("failure")
            .value(to_string(s.failure))
            .key("reason")
            .value(s.reason)
            .key("signer_subject")
            .value(s.signer_subject)
            .key("signer_email")
            .value(s.signer_email)
            .key("signer_cert_sha1")
            .value(s.signer_cert_sha1)
            .key("digest_algorithm")
            .value(s.digest_algorithm)
            .key("protocol")
            .value(s.protocol)
            .key("provider")
            .value(s.provider_name);
        if (s.signing_time) w.key("signing_time").value(utc(*s.signing_time));
        w.end_object();
    } else {
        w.null();
    }
    // The reader's own JSON is already a complete object: splice it in.
    std::string out = w.str();
    out += ",\"message\":" + to_json(r.message) + "}";
    return out;
}

}  // namespace pecd::pec
