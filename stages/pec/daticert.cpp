#include "stages/pec/daticert.hpp"

#include <glib.h>
#include <libxml/SAX2.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlerror.h>
#include <libxml/xmlwriter.h>

#include <limits>
#include <memory>
#include <mutex>
#include <new>

namespace pecd::pec {
namespace {

struct GFree {
    void operator()(void* p) const noexcept { g_free(p); }
};

void ensure_libxml() {
    static std::once_flag once;
    std::call_once(once, [] { xmlInitParser(); });
}

// ---------------------------------------------------------------------------------------------
// Writing

// XML 1.0 allows only some code points, and libxml2's writer does not check its input: replace
// malformed UTF-8 with U+FFFD (GLib) and drop control characters, so a hostile subject cannot
// make the document ill-formed.
std::string xml_safe(std::string_view in) {
    std::unique_ptr<gchar, GFree> valid(
        g_utf8_make_valid(in.data(), static_cast<gssize>(in.size())));
    std::string out;
    out.reserve(in.size());
    for (const gchar* p = valid.get(); *p != '\0'; p = g_utf8_next_char(p)) {
        gunichar cp = g_utf8_get_char(p);
        bool allowed =
            (cp >= 0x20 || cp == 0x09 || cp == 0x0A || cp == 0x0D) && cp != 0xFFFE && cp != 0xFFFF;
        if (allowed) out.append(p, static_cast<size_t>(g_utf8_next_char(p) - p));
    }
    return out;
}

struct TextWriterFree {
    void operator()(xmlTextWriter* w) const noexcept { xmlFreeTextWriter(w); }
};
struct BufferFree {
    void operator()(xmlBuffer* b) const noexcept { xmlBufferFree(b); }
};

// The libxml2 writer only fails when memory runs out; report it the way std::string does.
void check(int rc) {
    if (rc < 0) throw std::bad_alloc();
}

class Writer {
  public:
    Writer() : buffer_(xmlBufferCreate()) {
        if (!buffer_) throw std::bad_alloc();
        writer_.reset(xmlNewTextWriterMemory(buffer_.get(), 0));
        if (!writer_) throw std::bad_alloc();
        check(xmlTextWriterSetIndent(writer_.get(), 1));
        check(xmlTextWriterSetIndentString(writer_.get(), BAD_CAST "    "));
        check(xmlTextWriterStartDocument(writer_.get(), "1.0", "UTF-8", nullptr));
    }
    void start(const char* name) { check(xmlTextWriterStartElement(writer_.get(), BAD_CAST name)); }
    void end() { check(xmlTextWriterEndElement(writer_.get())); }
    void attribute(const char* name, std::string_view value) {
        std::string safe = xml_safe(value);
        check(xmlTextWriterWriteAttribute(writer_.get(), BAD_CAST name, BAD_CAST safe.c_str()));
    }
    void element(const char* name, std::string_view text) {
        std::string safe = xml_safe(text);
        check(xmlTextWriterWriteElement(writer_.get(), BAD_CAST name, BAD_CAST safe.c_str()));
    }
    void text(std::string_view text) {
        std::string safe = xml_safe(text);
        check(xmlTextWriterWriteString(writer_.get(), BAD_CAST safe.c_str()));
    }
    std::string finish() {
        check(xmlTextWriterEndDocument(writer_.get()));
        writer_.reset();  // flushes into the buffer
        return std::string(reinterpret_cast<const char*>(xmlBufferContent(buffer_.get())),
                           static_cast<size_t>(xmlBufferLength(buffer_.get())));
    }

  private:
    std::unique_ptr<xmlBuffer, BufferFree> buffer_;
    std::unique_ptr<xmlTextWriter, TextWriterFree> writer_;
};

// pec-rules.md §4.2 and DECISIONS #7: which optional <dati> elements a tipo may carry.
bool carries_ricevuta(DaticertType t) {
    return t == DaticertType::posta_certificata || t == DaticertType::avvenuta_consegna;
}
bool carries_consegna(DaticertType t) {
    return t == DaticertType::avvenuta_consegna || t == DaticertType::errore_consegna ||
           t == DaticertType::preavviso_errore_consegna || t == DaticertType::rilevazione_virus;
}
bool carries_ricezione(DaticertType t) {
    return t == DaticertType::presa_in_carico;
}

// ---------------------------------------------------------------------------------------------
// Parsing

struct ParserCtxtFree {
    void operator()(xmlParserCtxt* c) const noexcept { xmlFreeParserCtxt(c); }
};
struct DocFree {
    void operator()(xmlDoc* d) const noexcept { xmlFreeDoc(d); }
};
struct XmlCharFree {
    void operator()(xmlChar* s) const noexcept { xmlFree(s); }
};

struct ParseState {
    bool internal_subset = false;
};

// SAX hook run when <!DOCTYPE name ExternalID> has been read and blanks skipped. If the next
// character opens an internal subset, stop before any declaration in it is parsed: entities
// declared there are the billion-laughs and XXE vectors (DECISIONS #13).
void on_internal_subset(void* ctx, const xmlChar* name, const xmlChar* external_id,
                        const xmlChar* system_id) {
    auto* ctxt = static_cast<xmlParserCtxtPtr>(ctx);
    if (ctxt->input != nullptr && ctxt->input->cur != nullptr && *ctxt->input->cur == '[') {
        static_cast<ParseState*>(ctxt->_private)->internal_subset = true;
        xmlStopParser(ctxt);
        return;
    }
    xmlSAX2InternalSubset(ctx, name, external_id, system_id);
}

std::unexpected<Error> corrupt(const std::string& what) {
    return fail(ErrorKind::corrupt, "daticert: " + what);
}

std::string_view node_name(const xmlNode* n) {
    return reinterpret_cast<const char*>(n->name);
}

bool is_blank(std::string_view s) {
    return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

std::string_view trim(std::string_view s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

std::string shorten(std::string_view s) {
    s = trim(s);
    return std::string(s.substr(0, 40)) + (s.size() > 40 ? "..." : "");
}

// Element children of an element-only content model; whitespace, comments and processing
// instructions are skipped, anything else (stray text, entity references) is an error.
Result<std::vector<xmlNode*>> element_children(xmlNode* parent) {
    std::vector<xmlNode*> out;
    for (xmlNode* c = parent->children; c != nullptr; c = c->next) {
        switch (c->type) {
            case XML_ELEMENT_NODE:
                out.push_back(c);
                break;
            case XML_TEXT_NODE:
            case XML_CDATA_SECTION_NODE: {
                std::string_view text = c->content ? reinterpret_cast<const char*>(c->content) : "";
                if (!is_blank(text))
                    return corrupt("unexpected text \"" + shorten(text) + "\" in <" +
                                   std::string(node_name(parent)) + ">");
                break;
            }
            case XML_COMMENT_NODE:
            case XML_PI_NODE:
                break;
            case XML_ENTITY_REF_NODE:
                return corrupt("entity reference &" + std::string(node_name(c)) + "; in <" +
                               std::string(node_name(parent)) + "> is not allowed");
            default:
                return corrupt("unexpected node in <" + std::string(node_name(parent)) + ">");
        }
    }
    return out;
}

// #PCDATA content of a leaf element.
Result<std::string> leaf_text(xmlNode* e) {
    std::string out;
    for (xmlNode* c = e->children; c != nullptr; c = c->next) {
        switch (c->type) {
            case XML_TEXT_NODE:
            case XML_CDATA_SECTION_NODE:
                if (c->content) out += reinterpret_cast<const char*>(c->content);
                break;
            case XML_COMMENT_NODE:
            case XML_PI_NODE:
                break;
            case XML_ELEMENT_NODE:
                return corrupt("unexpected <" + std::string(node_name(c)) + "> inside <" +
                               std::string(node_name(e)) + ">");
            case XML_ENTITY_REF_NODE:
                return corrupt("entity reference &" + std::string(node_name(c)) + "; in <" +
                               std::string(node_name(e)) + "> is not allowed");
            default:
                return corrupt("unexpected node in <" + std::string(node_name(e)) + ">");
        }
    }
    return out;
}

// Leaf text with surrounding whitespace removed (pretty-printers may wrap values); a mandatory
// value must not be empty.
Result<std::string> trimmed_text(xmlNode* e, bool required) {
    auto text = leaf_text(e);
    if (!text) return std::unexpected(text.error());
    std::string value(trim(*text));
    if (required && value.empty()) return corrupt("empty <" + std::string(node_name(e)) + ">");
    return value;
}

std::optional<std::string> attribute(xmlNode* e, const char* name) {
    std::unique_ptr<xmlChar, XmlCharFree> v(xmlGetNoNsProp(e, BAD_CAST name));
    if (!v) return std::nullopt;
    return std::string(reinterpret_cast<const char*>(v.get()));
}

// Walks the children of one element against its DTD sequence (a, b+, c?, d*).
class Sequence {
  public:
    Sequence(std::vector<xmlNode*> nodes, std::string parent)
        : nodes_(std::move(nodes)), parent_(std::move(parent)) {}

    xmlNode* optional(std::string_view name) {
        if (pos_ < nodes_.size() && node_name(nodes_[pos_]) == name) return nodes_[pos_++];
        return nullptr;
    }
    Result<xmlNode*> one(std::string_view name) {
        if (xmlNode* n = optional(name)) return n;
        std::string found =
            pos_ < nodes_.size() ? ", found <" + std::string(node_name(nodes_[pos_])) + ">" : "";
        return corrupt("missing <" + std::string(name) + "> in <" + parent_ + ">" + found);
    }
    std::vector<xmlNode*> many(std::string_view name) {
        std::vector<xmlNode*> out;
        while (xmlNode* n = optional(name)) out.push_back(n);
        return out;
    }
    Status end() {
        if (pos_ == nodes_.size()) return {};
        std::string name(node_name(nodes_[pos_]));
        return corrupt("unexpected <" + name + "> in <" + parent_ + ">");
    }

  private:
    std::vector<xmlNode*> nodes_;
    std::string parent_;
    size_t pos_ = 0;
};

bool digits_at(std::string_view s, std::initializer_list<size_t> positions) {
    for (size_t p : positions)
        if (p >= s.size() || s[p] < '0' || s[p] > '9') return false;
    return true;
}
bool valid_giorno(std::string_view s) {
    return s.size() == 10 && s[2] == '/' && s[5] == '/' && digits_at(s, {0, 1, 3, 4, 6, 7, 8, 9});
}
bool valid_ora(std::string_view s) {
    return s.size() == 8 && s[2] == ':' && s[5] == ':' && digits_at(s, {0, 1, 3, 4, 6, 7});
}
bool valid_zona(std::string_view s) {
    return s.size() == 5 && (s[0] == '+' || s[0] == '-') && digits_at(s, {1, 2, 3, 4});
}

Status parse_intestazione(xmlNode* node, Daticert& d) {
    auto kids = element_children(node);
    if (!kids) return std::unexpected(kids.error());
    Sequence seq(std::move(*kids), "intestazione");

    auto mittente = seq.one("mittente");
    if (!mittente) return std::unexpected(mittente.error());
    auto mittente_text = trimmed_text(*mittente, true);
    if (!mittente_text) return std::unexpected(mittente_text.error());
    d.mittente = std::move(*mittente_text);

    auto destinatari = seq.many("destinatari");
    if (destinatari.empty()) {
        auto missing = seq.one("destinatari");  // yields the precise error
        return std::unexpected(missing.error());
    }
    for (xmlNode* n : destinatari) {
        Recipient r;
        auto address = trimmed_text(n, true);
        if (!address) return std::unexpected(address.error());
        r.address = std::move(*address);
        // Without DTD processing the default is not filled in by libxml2: apply it here.
        std::string kind = attribute(n, "tipo").value_or("certificato");
        if (kind == "certificato")
            r.kind = RecipientKind::certificato;
        else if (kind == "esterno")
            r.kind = RecipientKind::esterno;
        else
            return corrupt("unknown destinatari tipo \"" + shorten(kind) + "\"");
        d.destinatari.push_back(std::move(r));
    }

    auto risposte = seq.one("risposte");
    if (!risposte) return std::unexpected(risposte.error());
    auto risposte_text = trimmed_text(*risposte, false);
    if (!risposte_text) return std::unexpected(risposte_text.error());
    d.risposte = std::move(*risposte_text);

    if (xmlNode* oggetto = seq.optional("oggetto")) {
        // The subject is kept verbatim: leading/trailing blanks can be part of it.
        auto text = leaf_text(oggetto);
        if (!text) return std::unexpected(text.error());
        d.oggetto = std::move(*text);
    }
    return seq.end();
}

Status parse_data(xmlNode* node, Daticert& d) {
    auto zona = attribute(node, "zona");
    if (!zona) return corrupt("missing zona attribute on <data>");
    d.zona = std::string(trim(*zona));
    if (!valid_zona(d.zona)) return corrupt("zona \"" + shorten(d.zona) + "\" is not [+|-]hhmm");

    auto kids = element_children(node);
    if (!kids) return std::unexpected(kids.error());
    Sequence seq(std::move(*kids), "data");
    auto giorno = seq.one("giorno");
    if (!giorno) return std::unexpected(giorno.error());
    auto giorno_text = trimmed_text(*giorno, true);
    if (!giorno_text) return std::unexpected(giorno_text.error());
    if (!valid_giorno(*giorno_text))
        return corrupt("giorno \"" + shorten(*giorno_text) + "\" is not dd/mm/yyyy");
    d.giorno = std::move(*giorno_text);

    auto ora = seq.one("ora");
    if (!ora) return std::unexpected(ora.error());
    auto ora_text = trimmed_text(*ora, true);
    if (!ora_text) return std::unexpected(ora_text.error());
    if (!valid_ora(*ora_text)) return corrupt("ora \"" + shorten(*ora_text) + "\" is not hh:mm:ss");
    d.ora = std::move(*ora_text);
    return seq.end();
}

Status parse_dati(xmlNode* node, Daticert& d) {
    auto kids = element_children(node);
    if (!kids) return std::unexpected(kids.error());
    Sequence seq(std::move(*kids), "dati");

    auto gestore = seq.one("gestore-emittente");
    if (!gestore) return std::unexpected(gestore.error());
    auto gestore_text = trimmed_text(*gestore, true);
    if (!gestore_text) return std::unexpected(gestore_text.error());
    d.gestore_emittente = std::move(*gestore_text);

    auto data = seq.one("data");
    if (!data) return std::unexpected(data.error());
    if (auto st = parse_data(*data, d); !st) return st;

    auto identificativo = seq.one("identificativo");
    if (!identificativo) return std::unexpected(identificativo.error());
    auto id_text = trimmed_text(*identificativo, true);
    if (!id_text) return std::unexpected(id_text.error());
    d.identificativo = std::move(*id_text);

    if (xmlNode* msgid = seq.optional("msgid")) {
        auto text = trimmed_text(msgid, false);
        if (!text) return std::unexpected(text.error());
        d.msgid = std::move(*text);
    }
    if (xmlNode* ricevuta = seq.optional("ricevuta")) {
        auto kids_of_ricevuta = element_children(ricevuta);  // EMPTY: no elements, no text
        if (!kids_of_ricevuta) return std::unexpected(kids_of_ricevuta.error());
        if (!kids_of_ricevuta->empty()) return corrupt("<ricevuta> must be empty");
        auto tipo = attribute(ricevuta, "tipo");
        if (!tipo) return corrupt("missing tipo attribute on <ricevuta>");
        d.ricevuta = receipt_kind_from_string(trim(*tipo));
        if (!d.ricevuta) return corrupt("unknown ricevuta tipo \"" + shorten(*tipo) + "\"");
    }
    if (xmlNode* consegna = seq.optional("consegna")) {
        auto text = trimmed_text(consegna, true);
        if (!text) return std::unexpected(text.error());
        d.consegna = std::move(*text);
    }
    for (xmlNode* ricezione : seq.many("ricezione")) {
        auto text = trimmed_text(ricezione, true);
        if (!text) return std::unexpected(text.error());
        d.ricezione.push_back(std::move(*text));
    }
    if (xmlNode* errore_esteso = seq.optional("errore-esteso")) {
        auto text = trimmed_text(errore_esteso, false);
        if (!text) return std::unexpected(text.error());
        d.errore_esteso = std::move(*text);
    }
    return seq.end();
}

}  // namespace

void Daticert::set_time(const PecTime& t) {
    giorno = t.giorno();
    ora = t.ora();
    zona = t.zona();
}

std::string write_daticert(const Daticert& d) {
    ensure_libxml();
    Writer w;
    w.start("postacert");
    w.attribute("tipo", to_string(d.tipo));
    w.attribute("errore", to_string(d.errore));

    w.start("intestazione");
    w.element("mittente", d.mittente);
    for (const Recipient& r : d.destinatari) {
        w.start("destinatari");
        w.attribute("tipo", to_string(r.kind));
        w.text(r.address);
        w.end();
    }
    w.element("risposte", d.risposte);
    if (d.oggetto) w.element("oggetto", *d.oggetto);
    w.end();

    w.start("dati");
    w.element("gestore-emittente", d.gestore_emittente);
    w.start("data");
    w.attribute("zona", d.zona);
    w.element("giorno", d.giorno);
    w.element("ora", d.ora);
    w.end();
    w.element("identificativo", d.identificativo);
    if (d.msgid) w.element("msgid", *d.msgid);  // the writer escapes <> as &lt; &gt;
    if (d.ricevuta && carries_ricevuta(d.tipo)) {
        w.start("ricevuta");
        w.attribute("tipo", to_string(*d.ricevuta));
        w.end();
    }
    if (d.consegna && carries_consegna(d.tipo)) w.element("consegna", *d.consegna);
    if (carries_ricezione(d.tipo))
        for (const std::string& r : d.ricezione) w.element("ricezione", r);
    if (d.errore_esteso) w.element("errore-esteso", *d.errore_esteso);
    w.end();

    w.end();
    return w.finish();
}

Result<Daticert> parse_daticert(std::string_view xml) {
    ensure_libxml();
    // Real files are under 4 KiB; a cap keeps a hostile part from costing more than a glance.
    constexpr size_t kMaxDaticert = 1 << 20;
    static_assert(kMaxDaticert < static_cast<size_t>(std::numeric_limits<int>::max()));
    if (xml.size() > kMaxDaticert) return corrupt("document larger than 1 MiB");

    std::unique_ptr<xmlParserCtxt, ParserCtxtFree> ctxt(xmlNewParserCtxt());
    if (!ctxt) return fail(ErrorKind::transient, "daticert: cannot allocate an XML parser");
    ParseState state;
    ctxt->_private = &state;
    ctxt->sax->internalSubset = on_internal_subset;

    // No DTD loading, no entity substitution, no default attributes from a DTD, no network:
    // the document is read exactly as written. Errors are collected, not printed.
    const int options = XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING;
    std::unique_ptr<xmlDoc, DocFree> doc(xmlCtxtReadMemory(
        ctxt.get(), xml.data(), static_cast<int>(xml.size()), "daticert.xml", nullptr, options));
    if (state.internal_subset) return corrupt("DOCTYPE with an internal subset is refused");
    if (!doc || !ctxt->wellFormed) {
        const xmlError* err = xmlCtxtGetLastError(ctxt.get());
        std::string reason = err && err->message ? std::string(trim(err->message)) : "parse error";
        if (err) reason += " at line " + std::to_string(err->line);
        return corrupt("malformed XML: " + reason);
    }
    // Belt and braces: a document that still declares anything locally is refused.
    if (doc->intSubset != nullptr && doc->intSubset->children != nullptr)
        return corrupt("DOCTYPE with an internal subset is refused");

    xmlNode* root = xmlDocGetRootElement(doc.get());
    if (root == nullptr) return corrupt("no root element");
    if (node_name(root) != "postacert")
        return corrupt("root element is <" + std::string(node_name(root)) + ">, not <postacert>");

    Daticert d;
    auto tipo = attribute(root, "tipo");
    if (!tipo) return corrupt("missing tipo attribute on <postacert>");
    auto parsed_tipo = daticert_type_from_string(trim(*tipo));
    if (!parsed_tipo) return corrupt("unknown postacert tipo \"" + shorten(*tipo) + "\"");
    d.tipo = *parsed_tipo;
    auto errore = attribute(root, "errore").value_or("nessuno");
    auto parsed_errore = daticert_error_from_string(trim(errore));
    if (!parsed_errore) return corrupt("unknown postacert errore \"" + shorten(errore) + "\"");
    d.errore = *parsed_errore;

    auto kids = element_children(root);
    if (!kids) return std::unexpected(kids.error());
    Sequence seq(std::move(*kids), "postacert");
    auto intestazione = seq.one("intestazione");
    if (!intestazione) return std::unexpected(intestazione.error());
    if (auto st = parse_intestazione(*intestazione, d); !st) return std::unexpected(st.error());
    auto dati = seq.one("dati");
    if (!dati) return std::unexpected(dati.error());
    if (auto st = parse_dati(*dati, d); !st) return std::unexpected(st.error());
    if (auto st = seq.end(); !st) return std::unexpected(st.error());
    return d;
}

}  // namespace pecd::pec
