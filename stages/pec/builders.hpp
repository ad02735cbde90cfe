// Builders of the eleven PEC system messages (pec-rules.md §2.1-§3, DECISIONS.md).
//
// Every builder returns the complete signed message, CRLF throughout:
//   PEC header fields (§2.1/§2.2; never a Sender:) + MIME-Version + the EntitySigner's
//   multipart/signed around a GMime-built multipart/mixed:
//     multipart/alternative { text/plain, text/html } (iso-8859-1, quoted-printable, from the
//                                                      editable templates)
//     application/xml daticert.xml (base64, inline)            -- all but the anomaly
//     message/rfc822 postacert.eml (inline)                     -- busta, anomaly, completa, breve
// One PecTime per transaction feeds Date:, the texts and daticert (DECISIONS #2).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/pec/daticert.hpp"
#include "stages/pec/identificativo.hpp"
#include "stages/pec/signing.hpp"
#include "stages/pec/templates.hpp"
#include "stages/pec/types.hpp"

namespace pecd::pec {

struct ProviderIdentity {
    std::string name;         // daticert gestore-emittente, e.g. "ACME PEC S.p.A."
    std::string mail_domain;  // receipts come from posta-certificata@<mail_domain>
    std::string service_address() const { return "posta-certificata@" + mail_domain; }
};

// Where a recipient appeared in the original: primary (To) or copy (Cc). When the membership is
// ambiguous the caller passes `to` (pec-rules.md §3: treat as primary).
enum class AddressField { to, cc };

struct OriginalRecipient {
    std::string address;  // RCPT TO, bare
    RecipientKind kind = RecipientKind::certificato;
    AddressField field = AddressField::to;
};

// What the certification says about the original message. Addresses are bare (no display name).
struct OriginalMessage {
    std::string sender;                         // MAIL FROM (never Reply-To)
    std::vector<OriginalRecipient> recipients;  // all To + Cc, in order
    std::string subject;                        // decoded, UTF-8, without any PEC prefix
    std::optional<std::string> message_id;      // client Message-ID with angle brackets, if any
    std::optional<std::string> reply_to;        // Reply-To of the original, if any
    ReceiptKind requested_receipt = ReceiptKind::completa;  // X-TipoRicevuta, absent = completa
};

struct Transaction {
    PecTime time;                // the one instant of this event
    std::string identificativo;  // PEC msgid of the busta di trasporto, no angle brackets
    OriginalMessage original;
};

struct BuiltMessage {
    MessageType type = MessageType::ordinary;
    std::string bytes;                 // the complete signed message, CRLF
    std::string message_id;            // the Message-ID it carries, no angle brackets
    std::optional<Daticert> daticert;  // what daticert.xml says (absent for the anomaly)
};

// §3 table: the receipt a recipient gets for the kind the sender asked for. Primary recipients
// get what was asked; copy recipients always get sintetica.
ReceiptKind receipt_kind_for(ReceiptKind requested, AddressField field);

enum class TimeoutStage { first_12h, final_24h };

class MessageBuilder {
  public:
    // `ids` mints the fresh Message-ID of receipts and notices (never the identificativo).
    MessageBuilder(ProviderIdentity provider, std::shared_ptr<const TemplateSet> templates,
                   EntitySigner signer, std::shared_ptr<IdentificativoGenerator> ids);

    // #1. `original` is the message as submitted; its postacert.eml copy gets the msgid rewrite
    // (postacert.hpp). Received, Return-Path, To, Cc and Reply-To are inherited from it.
    Result<BuiltMessage> busta_trasporto(const Transaction& t, std::string_view original) const;

    // #2. `received` is wrapped unchanged; its Received, Return-Path, To, Cc, Reply-To and
    // Message-ID are inherited. `t.identificativo` is not used (an anomaly has none); `t.original`
    // describes the received message: its sender is MAIL FROM, or the From: address when the
    // reverse path is null. `error` is the reason the data were not certified.
    Result<BuiltMessage> busta_anomalia(const Transaction& t, std::string_view received,
                                        std::string_view error) const;

    // #3
    Result<BuiltMessage> accettazione(const Transaction& t) const;
    // #4: `reason` is the formal error (daticert errore="altro", errore-esteso = reason).
    Result<BuiltMessage> non_accettazione(const Transaction& t, std::string_view reason) const;
    // #5: `virus` names what the antivirus found (errore="virus").
    Result<BuiltMessage> non_accettazione_virus(const Transaction& t, std::string_view virus) const;
    // #6, to the sender provider's service mailbox (IGPEC mailReceipt); `covered` lists the
    // recipients this provider takes charge of (daticert <ricezione>).
    Result<BuiltMessage> presa_in_carico(const Transaction& t, std::string_view service_mailbox,
                                         const std::vector<std::string>& covered) const;
    // #7, one per recipient. The kind follows receipt_kind_for(requested, recipient's field).
    // `postacert` is the postacert.eml of the received busta (needed for completa and breve).
    Result<BuiltMessage> avvenuta_consegna(const Transaction& t, std::string_view recipient,
                                           std::string_view postacert) const;
    // #8. `error` is no_dest, no_dominio or altro; `errore_esteso` the coded description
    // (DECISIONS #9, e.g. "5.1.1 - <gestore> - indirizzo non valido").
    Result<BuiltMessage> errore_consegna(const Transaction& t, std::string_view recipient,
                                         DaticertError error, std::string_view errore_esteso) const;
    // #9, both stages: X-Ricevuta/tipo preavviso-errore-consegna, errore="altro" (DECISIONS #5).
    Result<BuiltMessage> preavviso_errore_consegna(const Transaction& t, std::string_view recipient,
                                                   TimeoutStage stage) const;
    // #10, one per recipient, to the sender provider's service mailbox.
    Result<BuiltMessage> rilevazione_virus(const Transaction& t, std::string_view service_mailbox,
                                           std::string_view recipient,
                                           std::string_view virus) const;
    // #11, to the original sender, built from the data of the received #10.
    Result<BuiltMessage> errore_consegna_virus(const Transaction& t, std::string_view recipient,
                                               std::string_view virus) const;

  private:
    struct Spec;
    struct Shape;
    Result<Spec> receipt_spec(const Transaction& t, const Shape& shape, std::string_view to) const;
    Result<BuiltMessage> build(const Spec& spec) const;

    ProviderIdentity provider_;
    std::shared_ptr<const TemplateSet> templates_;
    EntitySigner signer_;
    std::shared_ptr<IdentificativoGenerator> ids_;
};

}  // namespace pecd::pec
