// TEMPORARY stand-in so that the builders tests link before the real daticert.cpp is merged.
// Drop this file on merge: the real implementation replaces it.
#include "stages/pec/daticert.hpp"

namespace pecd::pec {
namespace {

std::string esc(std::string_view s) {
    std::string out;
    for (char c : s) {
        switch (c) {
            case '&': out += "&amp;"; break;
            case '<': out += "&lt;"; break;
            case '>': out += "&gt;"; break;
            case '"': out += "&quot;"; break;
            default: out += c;
        }
    }
    return out;
}

void element(std::string& out, std::string_view name, std::string_view value) {
    out += "<" + std::string(name) + ">" + esc(value) + "</" + std::string(name) + ">\n";
}

}  // namespace

void Daticert::set_time(const PecTime& t) {
    giorno = t.giorno();
    ora = t.ora();
    zona = t.zona();
}

std::string write_daticert(const Daticert& d) {
    std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
    out += "<postacert tipo=\"" + std::string(to_string(d.tipo)) + "\" errore=\"" +
           std::string(to_string(d.errore)) + "\">\n<intestazione>\n";
    element(out, "mittente", d.mittente);
    for (const auto& r : d.destinatari)
        out += "<destinatari tipo=\"" + std::string(to_string(r.kind)) + "\">" + esc(r.address) +
               "</destinatari>\n";
    element(out, "risposte", d.risposte);
    if (d.oggetto) element(out, "oggetto", *d.oggetto);
    out += "</intestazione>\n<dati>\n";
    element(out, "gestore-emittente", d.gestore_emittente);
    out += "<data zona=\"" + esc(d.zona) + "\">\n";
    element(out, "giorno", d.giorno);
    element(out, "ora", d.ora);
    out += "</data>\n";
    element(out, "identificativo", d.identificativo);
    if (d.msgid) element(out, "msgid", *d.msgid);
    if (d.ricevuta) out += "<ricevuta tipo=\"" + std::string(to_string(*d.ricevuta)) + "\"/>\n";
    if (d.consegna) element(out, "consegna", *d.consegna);
    for (const auto& r : d.ricezione) element(out, "ricezione", r);
    if (d.errore_esteso) element(out, "errore-esteso", *d.errore_esteso);
    out += "</dati>\n</postacert>\n";
    return out;
}

Result<Daticert> parse_daticert(std::string_view) {
    return fail(ErrorKind::permanent, "daticert parsing not available in the builders worktree");
}

}  // namespace pecd::pec
