// The PEC vocabulary of pec-rules.md §2 and DECISIONS.md, shared by builders, reader and stages.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace pecd::pec {

// The eleven message kinds of pec-rules.md §2.1 plus ordinary (non-PEC) mail.
enum class MessageType {
    ordinary,                   // not a PEC system message
    busta_trasporto,            // #1  X-Trasporto: posta-certificata
    busta_anomalia,             // #2  X-Trasporto: errore
    accettazione,               // #3  X-Ricevuta: accettazione
    non_accettazione,           // #4  X-Ricevuta: non-accettazione
    non_accettazione_virus,     // #5  X-Ricevuta: non-accettazione + X-VerificaSicurezza: errore
    presa_in_carico,            // #6  X-Ricevuta: presa-in-carico
    avvenuta_consegna,          // #7  X-Ricevuta: avvenuta-consegna (completa/breve/sintetica)
    errore_consegna,            // #8  X-Ricevuta: errore-consegna
    preavviso_errore_consegna,  // #9  X-Ricevuta: preavviso-errore-consegna (12 h and 24 h)
    rilevazione_virus,          // #10 X-Ricevuta: rilevazione-virus
    errore_consegna_virus,      // #11 X-Ricevuta: errore-consegna + X-VerificaSicurezza: errore
};

std::string_view to_string(MessageType type);  // stable snake-case name, used in JSON output
std::optional<MessageType> message_type_from_string(std::string_view name);

// X-TipoRicevuta / daticert <ricevuta tipo=...>
enum class ReceiptKind { completa, breve, sintetica };
std::string_view to_string(ReceiptKind kind);
std::optional<ReceiptKind> receipt_kind_from_string(std::string_view name);  // case-insensitive

// daticert <postacert tipo=...>
enum class DaticertType {
    accettazione,
    non_accettazione,
    presa_in_carico,
    avvenuta_consegna,
    posta_certificata,
    errore_consegna,
    preavviso_errore_consegna,
    rilevazione_virus,
};
std::string_view to_string(DaticertType type);  // the wire literal, e.g. "presa-in-carico"
std::optional<DaticertType> daticert_type_from_string(std::string_view literal);

// daticert <postacert errore=...>
enum class DaticertError { nessuno, no_dest, no_dominio, virus, altro };
std::string_view to_string(DaticertError error);  // wire literal, e.g. "no-dest"
std::optional<DaticertError> daticert_error_from_string(std::string_view literal);

// <destinatari tipo=...>
enum class RecipientKind { certificato, esterno };
std::string_view to_string(RecipientKind kind);

struct Recipient {
    std::string address;
    RecipientKind kind = RecipientKind::certificato;
    bool operator==(const Recipient&) const = default;
};

// One instant per transaction (DECISIONS #2), rendered in Italian legal time (Europe/Rome).
struct PecTime {
    std::chrono::system_clock::time_point instant;
    std::string giorno() const;   // "dd/mm/yyyy" local
    std::string ora() const;      // "hh:mm:ss" local
    std::string zona() const;     // "+0100" / "+0200"
    std::string rfc5322() const;  // Date: header value
    bool operator==(const PecTime&) const = default;
};

}  // namespace pecd::pec
