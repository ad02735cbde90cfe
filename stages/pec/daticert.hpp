// daticert.xml (pec-rules.md §4, DTD in ../shared/fixtures/real/daticert.dtd): written for every
// type, parsed safely (no DTD fetch, no external entities, DOCTYPE internal subsets refused).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/pec/types.hpp"

namespace pecd::pec {

struct Daticert {
    DaticertType tipo = DaticertType::posta_certificata;
    DaticertError errore = DaticertError::nessuno;
    // intestazione
    std::string mittente;
    std::vector<Recipient> destinatari;  // all To + Cc of the original, each certificato/esterno
    std::string risposte;                // Reply-To of the original, else the sender
    std::optional<std::string> oggetto;
    // dati
    std::string gestore_emittente;
    // As written on the wire: giorno "dd/mm/yyyy", ora "hh:mm:ss", zona "+0100".
    std::string giorno;
    std::string ora;
    std::string zona;
    std::string identificativo;           // PEC msgid, no angle brackets
    std::optional<std::string> msgid;     // original Message-ID WITH angle brackets
    std::optional<ReceiptKind> ricevuta;  // busta and avvenuta-consegna
    std::optional<std::string> consegna;  // per-recipient notices (#7-#11)
    std::vector<std::string> ricezione;   // presa in carico: recipients covered
    std::optional<std::string> errore_esteso;

    void set_time(const PecTime& t);
    bool operator==(const Daticert&) const = default;
};

// UTF-8 XML with the `<?xml version="1.0" encoding="UTF-8"?>` prolog, valid against the DTD.
std::string write_daticert(const Daticert& d);
// Errors are ErrorKind::corrupt with a reason (malformed XML, DOCTYPE subset, unknown tipo, ...).
Result<Daticert> parse_daticert(std::string_view xml);

}  // namespace pecd::pec
