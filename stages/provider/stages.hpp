// The provider's stage functions (pec-rules.md §5): classify, wrap (access point), verify
// (receipt point), deliver (delivery point), receipt, outbound.
//
// Every function is a pure function of its input and the Provider snapshot it takes for that
// message, except for the calls into ProviderServices: mailbox delivery (deliver), sending
// (outbound) and keeping infected messages (wrap, verify; stored under the queue id, so a
// re-run replaces instead of duplicating). Outputs are named by the input id or
// derived_queue_id(input, tag), so a re-run after a crash rewrites the same files.
//
// Decisions:
//  * The identificativo is minted once, by classify, and stored in the attr `pec.id`: every
//    later attempt at the same submission (a deferral of wrap, a crash re-run) uses the same
//    one, so logs written along the way name one transaction.
//  * The busta goes to `outbound` with all the original recipients, ours included: it comes
//    back through the MTA (pec-enqueue -> classify -> verify) like any received busta, since
//    processing happens even when sender and recipient share the domain (DM6 c.5).
//  * Receipts and notices for our own users are delivered directly (`deliver`); those for other
//    providers leave through `outbound`.
//  * A subset of recipients that needs a different fate than the rest (refused by policy,
//    refused by the next hop) is written back to the same stage under a derived id, and that
//    file alone is quarantined on its next pass: quarantine works on whole inputs.
//  * Legal log (pec-rules §8): each function returns, beside its outputs, one legallog::Record
//    per PEC event it caused (StageResult::records): classify ricezione; wrap accettazione,
//    non-accettazione, busta-inviata; verify presa-in-carico, anomalia, virus,
//    ricevuta-ricevuta, avviso-mancata-consegna; deliver consegna, mancata-consegna; receipt
//    ricevuta-consegna, avviso-mancata-consegna; outbound invio. Related ids are the queue ids
//    and Message-IDs of what was produced. The runner makes them durable before the commit.
//  * Mailbox delivery after a crash: a crash after a delivery and before the commit runs the
//    input again. The embedded Maildir keeps one copy per queue id; LMTP delivers again (at
//    least once). The receipt is issued once, from the committed outputs.
#pragma once

#include <memory>
#include <string_view>

#include "stages/pec/builders.hpp"
#include "stages/pec/reader.hpp"
#include "stages/provider/provider_config.hpp"
#include "stages/runner/runner.hpp"

namespace pecd::provider {

// Envelope attrs written by the stages (what the scheduler and the legal log will read).
namespace attr {
inline constexpr const char* route = "pec.route";          // submission | incoming | relay
inline constexpr const char* id = "pec.id";                // identificativo of the transaction
inline constexpr const char* kind = "pec.kind";            // MessageType name of the file's body
inline constexpr const char* time = "pec.time";            // event time, microseconds
inline constexpr const char* sender = "pec.sender";        // original sender of the transaction
inline constexpr const char* certified = "pec.certified";  // certificato recipients, comma list
inline constexpr const char* parent = "pec.parent";        // queue id this message came from
inline constexpr const char* refused = "pec.refused";      // reason: quarantine this subset
// For the legal log of the later stages (pec-rules §8): the original's subject and client
// Message-ID, and the sending provider (gestore) of a received busta.
inline constexpr const char* subject = "pec.subject";
inline constexpr const char* message_id = "pec.msgid";
inline constexpr const char* provider = "pec.provider";
// An event made outside the stages and not logged yet (the scheduler's 12 h / 24 h notices): the
// deliver stage logs it with the delivery, for the original recipient in `concerning`.
inline constexpr const char* emitted = "pec.emitted";        // legal-log event name
inline constexpr const char* concerning = "pec.concerning";  // the original recipient
// What the receipt stage needs of a verified busta, so that it does not parse it again: its
// transaction and where its postacert.eml is in the body (carry_busta).
inline constexpr const char* busta = "pec.busta";
inline constexpr const char* delivery_prefix =
    "dlv.";  // dlv.<rcpt> = "ok <us>" | "fail <us> <code> <text>"
}  // namespace attr

using runner::StageFunction;

StageFunction classify_stage(std::shared_ptr<ProviderHandle> provider);
StageFunction wrap_stage(std::shared_ptr<ProviderHandle> provider);
StageFunction verify_stage(std::shared_ptr<ProviderHandle> provider);
StageFunction deliver_stage(std::shared_ptr<ProviderHandle> provider);
StageFunction receipt_stage(std::shared_ptr<ProviderHandle> provider);
StageFunction outbound_stage(std::shared_ptr<ProviderHandle> provider);

// What later stages need to log the transaction a produced file belongs to: the attrs id,
// sender, subject and msgid.
void carry_transaction(spool::Envelope& env, const pec::Transaction& t);

// The function of a stage by name (spool::kStages).
Result<StageFunction> make_stage(std::string_view stage, std::shared_ptr<ProviderHandle> provider);

// The busta's transaction and postacert.eml as its verification read them, in the attr busta,
// for the receipt stage. The postacert position is recorded only when the body's own bytes (CRLF,
// or LF as Postfix's pipe(8) hands them over) give back exactly what extract_postacert gave.
void carry_busta(spool::Envelope& env, const pec::Transaction& t, std::string_view body,
                 std::string_view postacert);
struct CarriedBusta {
    pec::Transaction transaction;          // its time is the verification's
    std::optional<std::string> postacert;  // CRLF, as extract_postacert gives it
};
// Their reading: nullopt when the attr is missing or malformed (a file from an older version), and
// the caller parses the busta instead.
std::optional<CarriedBusta> carried_busta(const spool::Envelope& env, std::string_view body);

// The postacert.eml carried by a busta, as its bytes (CRLF).
Result<std::string> extract_postacert(std::string_view busta);
Result<std::string> extract_postacert(const pec::ParsedMessage& busta);

}  // namespace pecd::provider
