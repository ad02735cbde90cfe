#include "stages/pec/builders.hpp"

#include <strings.h>

#include "stages/pec/gmime_util.hpp"
#include "stages/pec/postacert.hpp"

namespace pecd::pec {
namespace {

constexpr size_t kFoldAt = 78;

// Header values come from users (subjects, addresses): a CR or LF would inject header fields.
std::string one_line(std::string_view value) {
    std::string out(value);
    for (char& c : out)
        if (c == '\r' || c == '\n') c = ' ';
    return out;
}

bool is_plain_ascii(std::string_view s) {
    for (unsigned char c : s)
        if (c >= 0x7F || (c < 0x20 && c != '\t')) return false;
    return true;
}

// Appends `Name: value` CRLF, folded at blanks near 78 columns (RFC 5322 §2.2.3); unfolding gives
// back the value unchanged.
void append_field(std::string& out, std::string_view name, std::string_view value) {
    std::string line = std::string(name) + ": " + one_line(value);
    size_t start = 0;
    size_t min_break = name.size() + 1;
    while (line.size() - start > kFoldAt) {
        size_t limit = start + kFoldAt;
        size_t blank = line.find_last_of(" \t", limit);
        if (blank == std::string::npos || blank <= start + (start == 0 ? min_break : 0)) {
            blank = line.find_first_of(" \t", limit);  // an overlong word: break after it
            if (blank == std::string::npos) break;
        }
        out.append(line, start, blank - start);
        out += "\r\n";
        start = blank;  // the continuation line begins with the blank
    }
    out.append(line, start, std::string::npos);
    out += "\r\n";
}

std::string gfree_string(char* s) {
    std::string out = s ? s : "";
    g_free(s);
    return out;
}

// Unstructured text (Subject): RFC 2047 encoded words only when needed.
std::string encode_text(std::string_view text) {
    std::string clean = one_line(text);
    if (is_plain_ascii(clean)) return clean;
    ensure_gmime();
    return gfree_string(g_mime_utils_header_encode_text(nullptr, clean.c_str(), nullptr));
}

// `"Per conto di: <sender>" <posta-certificata@dom>` (DECISIONS #1).
std::string on_behalf_from(std::string_view sender, const ProviderIdentity& provider) {
    std::string phrase = "Per conto di: " + one_line(sender);
    std::string display;
    if (is_plain_ascii(phrase)) {
        display = "\"";
        for (char c : phrase) {
            if (c == '"' || c == '\\') display += '\\';
            display += c;
        }
        display += "\"";
    } else {
        ensure_gmime();
        display = gfree_string(g_mime_utils_header_encode_phrase(nullptr, phrase.c_str(), nullptr));
    }
    return display + " <" + provider.service_address() + ">";
}

std::string strip_brackets(std::string_view id) {
    if (id.size() >= 2 && id.front() == '<' && id.back() == '>') id = id.substr(1, id.size() - 2);
    return std::string(id);
}

// UTF-8 -> ISO-8859-1 (the charset of the text parts, pec-rules.md §3). Characters beyond
// Latin-1 become numeric references in HTML and '?' in plain text; CRs are dropped (templates
// edited on Windows) since the serializer writes CRLF itself.
std::string to_latin1(std::string_view utf8, bool html) {
    std::string out;
    size_t i = 0;
    while (i < utf8.size()) {
        auto c = static_cast<unsigned char>(utf8[i]);
        uint32_t cp = 0;
        size_t n = 0;
        if (c < 0x80) {
            cp = c;
        } else if ((c & 0xE0) == 0xC0) {
            cp = c & 0x1F, n = 1;
        } else if ((c & 0xF0) == 0xE0) {
            cp = c & 0x0F, n = 2;
        } else if ((c & 0xF8) == 0xF0) {
            cp = c & 0x07, n = 3;
        } else {
            cp = '?';
        }
        bool ok = i + n < utf8.size() || n == 0;
        for (size_t k = 1; ok && k <= n; ++k) {
            auto cc = static_cast<unsigned char>(utf8[i + k]);
            ok = (cc & 0xC0) == 0x80;
            cp = (cp << 6) | (cc & 0x3F);
        }
        if (!ok) {
            cp = '?';
            n = 0;
        }
        i += n + 1;
        if (cp == '\r') continue;
        if (cp <= 0xFF) {
            out += static_cast<char>(cp);
        } else if (html) {
            out += "&#" + std::to_string(cp) + ";";
        } else {
            out += '?';
        }
    }
    return out;
}

// The content of a leaf part: a copy of `bytes`, which are `encoding` already (DEFAULT: raw).
void set_content(GMimeObject* part, std::string_view bytes, GMimeContentEncoding encoding) {
    auto stream = memory_stream(bytes);
    GPtr<GMimeDataWrapper> content(g_mime_data_wrapper_new_with_stream(stream.get(), encoding));
    g_mime_part_set_content(GMIME_PART(part), content.get());
}

GPtr<GMimeObject> text_part(const char* subtype) {
    GMimePart* part = g_mime_part_new_with_type("text", subtype);
    g_mime_object_set_content_type_parameter(GMIME_OBJECT(part), "charset", "iso-8859-1");
    g_mime_object_set_disposition(GMIME_OBJECT(part), "inline");
    g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_QUOTEDPRINTABLE);
    return GPtr<GMimeObject>(GMIME_OBJECT(part));
}

GPtr<GMimeObject> daticert_part() {
    GMimePart* part = g_mime_part_new_with_type("application", "xml");
    g_mime_object_set_disposition(GMIME_OBJECT(part), "inline");
    g_mime_part_set_filename(part, "daticert.xml");  // filename= and name=
    g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_BASE64);
    return GPtr<GMimeObject>(GMIME_OBJECT(part));
}

// message/rfc822 must not be base64/QP encoded (RFC 2046 §5.2.1): label what the bytes are.
GMimeContentEncoding identity_encoding(std::string_view bytes) {
    bool eight_bit = false;
    size_t line = 0;
    size_t longest = 0;
    for (char ch : bytes) {
        auto c = static_cast<unsigned char>(ch);
        if (c >= 0x80 || c == 0) eight_bit = true;
        line = c == '\n' ? 0 : line + 1;
        longest = std::max(longest, line);
    }
    if (longest > 998) return GMIME_CONTENT_ENCODING_BINARY;
    return eight_bit ? GMIME_CONTENT_ENCODING_8BIT : GMIME_CONTENT_ENCODING_7BIT;
}

// A leaf part over the exact bytes (set_postacert), so that GMime writes the original untouched
// (a parsed GMimeMessagePart would be re-serialized instead).
GPtr<GMimeObject> postacert_part() {
    GMimePart* part = g_mime_part_new_with_type("message", "rfc822");
    g_mime_object_set_disposition(GMIME_OBJECT(part), "inline");
    g_mime_part_set_filename(part, "postacert.eml");
    return GPtr<GMimeObject>(GMIME_OBJECT(part));
}

void set_postacert(GMimeObject* part, std::string_view bytes) {
    GMimeContentEncoding encoding = identity_encoding(bytes);
    g_mime_part_set_content_encoding(GMIME_PART(part), encoding);
    set_content(part, bytes, encoding);
}

// The MIME tree of a built message:
//   multipart/mixed { multipart/alternative { text/plain, text/html }, [daticert], [postacert] }
// Building and freeing its ~50 GObjects took about a third of a build, so each thread keeps one
// tree per shape and refills it: only the contents and the boundaries change between messages.
struct Skeleton {
    GPtr<GMimeMultipart> mixed, alternative;
    GPtr<GMimeObject> plain, html, xml, eml;

    Skeleton(bool with_daticert, bool with_postacert)
        : mixed(new_multipart("mixed")),
          alternative(new_multipart("alternative")),
          plain(text_part("plain")),
          html(text_part("html")) {
        g_mime_multipart_add(alternative.get(), plain.get());
        g_mime_multipart_add(alternative.get(), html.get());
        g_mime_multipart_add(mixed.get(), GMIME_OBJECT(alternative.get()));
        if (with_daticert) {
            xml = daticert_part();
            g_mime_multipart_add(mixed.get(), xml.get());
        }
        if (with_postacert) {
            eml = postacert_part();
            g_mime_multipart_add(mixed.get(), eml.get());
        }
    }
};

// This thread's tree for the shape (empty until the first build).
std::unique_ptr<Skeleton>& skeleton_slot(bool with_daticert, bool with_postacert) {
    thread_local std::unique_ptr<Skeleton> trees[2][2];
    return trees[with_daticert][with_postacert];
}

std::string ensure_final_crlf(std::string_view text) {
    std::string crlf = to_crlf(text);
    if (!crlf.ends_with("\r\n")) crlf += "\r\n";
    return crlf;
}

std::vector<std::string> labelled(const std::vector<OriginalRecipient>& recipients) {
    std::vector<std::string> out;
    for (const auto& r : recipients)
        out.push_back(r.address + (r.kind == RecipientKind::certificato ? " (posta certificata)"
                                                                        : " (posta ordinaria)"));
    return out;
}

std::vector<std::string> plain(const std::vector<OriginalRecipient>& recipients) {
    std::vector<std::string> out;
    for (const auto& r : recipients) out.push_back(r.address);
    return out;
}

std::string join_addresses(const std::vector<OriginalRecipient>& recipients, AddressField field) {
    std::string out;
    for (const auto& r : recipients)
        if (r.field == field) out += (out.empty() ? "" : ", ") + r.address;
    return out;
}

Status check_transaction(const Transaction& t, bool needs_id) {
    if (t.original.sender.empty())
        return fail(ErrorKind::permanent, "builder: the original sender is empty");
    if (needs_id && t.identificativo.empty())
        return fail(ErrorKind::permanent, "builder: the identificativo is empty");
    if (needs_id && (t.identificativo.front() == '<' || t.identificativo.back() == '>'))
        return fail(ErrorKind::permanent, "builder: identificativo must not carry angle brackets");
    // daticert needs at least one <destinatari> (DTD: destinatari+).
    if (needs_id && t.original.recipients.empty())
        return fail(ErrorKind::permanent, "builder: the original has no recipients");
    return {};
}

}  // namespace

ReceiptKind receipt_kind_for(ReceiptKind requested, AddressField field) {
    return field == AddressField::cc ? ReceiptKind::sintetica : requested;
}

// Everything that tells one message from another; build() does the common MIME and signing.
struct MessageBuilder::Spec {
    MessageType type = MessageType::ordinary;
    std::string stem;
    TemplateValues values;
    std::string headers;  // complete PEC header block, CRLF, without MIME-Version/Content-Type
    std::string message_id;
    std::optional<Daticert> daticert;
    std::optional<std::string> postacert;
};

MessageBuilder::MessageBuilder(ProviderIdentity provider,
                               std::shared_ptr<const TemplateSet> templates, EntitySigner signer,
                               std::shared_ptr<IdentificativoGenerator> ids)
    : provider_(std::move(provider)),
      templates_(std::move(templates)),
      signer_(std::move(signer)),
      ids_(std::move(ids)) {}

Result<BuiltMessage> MessageBuilder::build(const Spec& spec) const {
    if (!templates_ || !signer_)
        return fail(ErrorKind::config, "builder: templates or signer not configured");
    ensure_gmime();

    auto text = templates_->render(spec.stem, TemplatePart::text, spec.values);
    if (!text) return std::unexpected(text.error());
    auto html = templates_->render(spec.stem, TemplatePart::html, spec.values);
    if (!html) return std::unexpected(html.error());

    auto& slot = skeleton_slot(spec.daticert.has_value(), spec.postacert.has_value());
    if (!slot)
        slot = std::make_unique<Skeleton>(spec.daticert.has_value(), spec.postacert.has_value());
    Skeleton& tree = *slot;
    g_mime_multipart_set_boundary(tree.mixed.get(), new_boundary().c_str());
    g_mime_multipart_set_boundary(tree.alternative.get(), new_boundary().c_str());
    set_content(tree.plain.get(), to_latin1(*text, false), GMIME_CONTENT_ENCODING_DEFAULT);
    set_content(tree.html.get(), to_latin1(*html, true), GMIME_CONTENT_ENCODING_DEFAULT);
    if (spec.daticert)
        set_content(tree.xml.get(), write_daticert(*spec.daticert), GMIME_CONTENT_ENCODING_DEFAULT);
    if (spec.postacert) set_postacert(tree.eml.get(), *spec.postacert);
    std::string entity = serialize_crlf(GMIME_OBJECT(tree.mixed.get()));
    // A tree that holds a large original is not kept: its copy would stay until the next build.
    constexpr size_t kKeepUpTo = 256 * 1024;
    if (spec.postacert && spec.postacert->size() > kKeepUpTo) slot.reset();

    auto signed_entity = signer_(entity);
    if (!signed_entity) return context(signed_entity.error(), "signing " + spec.stem);
    static constexpr std::string_view kContentType = "Content-Type:";
    if (signed_entity->size() < kContentType.size() ||
        strncasecmp(signed_entity->data(), kContentType.data(), kContentType.size()) != 0)
        return fail(ErrorKind::permanent,
                    "signer output does not start with a Content-Type header line");

    BuiltMessage out;
    out.type = spec.type;
    out.message_id = spec.message_id;
    out.daticert = spec.daticert;
    static constexpr std::string_view kMimeVersion = "MIME-Version: 1.0\r\n";
    out.bytes.reserve(spec.headers.size() + kMimeVersion.size() + signed_entity->size());
    out.bytes.append(spec.headers).append(kMimeVersion);
    append_crlf(out.bytes, *signed_entity);
    return out;
}

namespace {

// Values every template may use (templates.cpp base()).
TemplateValues common_values(const Transaction& t, const ProviderIdentity& provider,
                             bool labelled_recipients) {
    TemplateValues v;
    v["giorno"] = t.time.giorno();
    v["ora"] = t.time.ora();
    v["zona"] = t.time.zona();
    v["gestore"] = provider.name;
    v["oggetto"] = one_line(t.original.subject);
    v["mittente"] = t.original.sender;
    v["destinatari"] = TemplateValue::list(labelled_recipients ? labelled(t.original.recipients)
                                                               : plain(t.original.recipients));
    v["identificativo"] = t.identificativo;
    return v;
}

Daticert base_daticert(const Transaction& t, const ProviderIdentity& provider, DaticertType tipo,
                       DaticertError errore) {
    Daticert d;
    d.tipo = tipo;
    d.errore = errore;
    d.mittente = t.original.sender;
    for (const auto& r : t.original.recipients) d.destinatari.push_back({r.address, r.kind});
    d.risposte = t.original.reply_to.value_or(t.original.sender);
    if (!t.original.subject.empty()) d.oggetto = t.original.subject;
    d.gestore_emittente = provider.name;
    d.set_time(t.time);
    d.identificativo = t.identificativo;
    d.msgid = t.original.message_id;
    return d;
}

std::string subject(std::string_view prefix, std::string_view original) {
    std::string s = std::string(prefix) + std::string(original);
    while (!s.empty() && s.back() == ' ') s.pop_back();
    return encode_text(s);
}

// Receipts and notices #3-#11 share one header layout (pec-rules.md §2.2, Aruba order).
std::string receipt_headers(const Transaction& t, const ProviderIdentity& provider,
                            std::string_view prefix, std::string_view x_ricevuta,
                            std::string_view to, const std::string& message_id,
                            bool verifica_sicurezza, bool x_mittente) {
    std::string h;
    append_field(h, "Date", t.time.rfc5322());
    append_field(h, "Subject", subject(prefix, t.original.subject));
    append_field(h, "From", provider.service_address());
    append_field(h, "To", to);
    append_field(h, "Message-ID", "<" + message_id + ">");
    append_field(h, "X-Ricevuta", x_ricevuta);
    if (t.original.message_id) append_field(h, "X-Riferimento-Message-ID", *t.original.message_id);
    if (verifica_sicurezza) append_field(h, "X-VerificaSicurezza", "errore");
    if (x_mittente) append_field(h, "X-Mittente", t.original.sender);
    return h;
}

}  // namespace

Result<BuiltMessage> MessageBuilder::busta_trasporto(const Transaction& t,
                                                     std::string_view original) const {
    if (auto ok = check_transaction(t, true); !ok) return std::unexpected(ok.error());
    auto copy = rewrite_message_id(original, t.identificativo);
    if (!copy) return context(copy.error(), "busta: original message");
    if (copy->original_id != t.original.message_id)
        return fail(ErrorKind::permanent, "busta: the envelope Message-ID (" +
                                              t.original.message_id.value_or("none") +
                                              ") differs from the original's (" +
                                              copy->original_id.value_or("none") + ")");
    auto raw = raw::split(to_crlf(original));
    if (!raw) return context(raw.error(), "busta: original message");

    Spec spec;
    spec.type = MessageType::busta_trasporto;
    spec.stem = "busta-trasporto";
    spec.values = common_values(t, provider_, false);
    spec.message_id = t.identificativo;
    spec.postacert = std::move(copy->bytes);
    spec.daticert =
        base_daticert(t, provider_, DaticertType::posta_certificata, DaticertError::nessuno);
    spec.daticert->ricevuta = t.original.requested_receipt;

    // Trace and addressing fields are inherited byte for byte (§2.2); the rest is ours.
    std::string& h = spec.headers;
    for (const auto* f : raw->find_all("Return-Path")) h += f->raw;
    for (const auto* f : raw->find_all("Received")) h += f->raw;
    append_field(h, "Date", t.time.rfc5322());
    append_field(h, "Subject", subject("POSTA CERTIFICATA: ", t.original.subject));
    append_field(h, "From", on_behalf_from(t.original.sender, provider_));
    if (auto to = raw->find_all("To"); !to.empty()) {
        for (const auto* f : to) h += f->raw;
    } else {
        append_field(h, "To", join_addresses(t.original.recipients, AddressField::to));
    }
    for (const auto* f : raw->find_all("Cc")) h += f->raw;
    if (auto reply = raw->find_all("Reply-To"); !reply.empty()) {
        for (const auto* f : reply) h += f->raw;
    } else {
        append_field(h, "Reply-To", t.original.sender);
    }
    append_field(h, "Message-ID", "<" + t.identificativo + ">");
    if (t.original.message_id) append_field(h, "X-Riferimento-Message-ID", *t.original.message_id);
    append_field(h, "X-Trasporto", "posta-certificata");
    append_field(h, "X-TipoRicevuta", to_string(t.original.requested_receipt));
    return build(spec);
}

Result<BuiltMessage> MessageBuilder::busta_anomalia(const Transaction& t, std::string_view received,
                                                    std::string_view error) const {
    if (auto ok = check_transaction(t, false); !ok) return std::unexpected(ok.error());
    std::string bytes = ensure_final_crlf(received);
    // A received message whose header block RFC 5322 does not allow (a line that is no field)
    // is still mail for a certified mailbox: it is wrapped as it is, the anomaly's own fields
    // taken from the fields before that line, the rest from the envelope.
    const raw::Message fields = raw::leading_fields(bytes);
    const raw::Message* raw = &fields;

    Spec spec;
    spec.type = MessageType::busta_anomalia;
    spec.stem = "busta-anomalia";
    spec.values = common_values(t, provider_, false);
    spec.values.erase("identificativo");
    spec.values["errore"] = one_line(error);
    spec.postacert = std::move(bytes);  // the only attachment: no daticert (§2.1 #2)

    std::string& h = spec.headers;
    for (const auto* f : raw->find_all("Return-Path")) h += f->raw;
    for (const auto* f : raw->find_all("Received")) h += f->raw;
    append_field(h, "Date", t.time.rfc5322());
    append_field(h, "Subject", subject("ANOMALIA MESSAGGIO: ", t.original.subject));
    append_field(h, "From", on_behalf_from(t.original.sender, provider_));
    if (auto to = raw->find_all("To"); !to.empty()) {
        for (const auto* f : to) h += f->raw;
    } else if (auto joined = join_addresses(t.original.recipients, AddressField::to);
               !joined.empty()) {
        append_field(h, "To", joined);
    }
    for (const auto* f : raw->find_all("Cc")) h += f->raw;
    if (auto reply = raw->find_all("Reply-To"); !reply.empty()) {
        for (const auto* f : reply) h += f->raw;
    } else {
        append_field(h, "Reply-To", t.original.sender);
    }
    if (const auto* id = raw->find("Message-ID"); id && !id->value().empty()) {
        h += id->raw;  // the anomaly keeps the received message's Message-ID
        spec.message_id = strip_brackets(id->value());
    } else {
        if (!ids_) return fail(ErrorKind::config, "builder: no identifier generator");
        spec.message_id = ids_->next();
        append_field(h, "Message-ID", "<" + spec.message_id + ">");
    }
    append_field(h, "X-Trasporto", "errore");
    return build(spec);
}

struct MessageBuilder::Shape {
    MessageType type;
    std::string stem;
    std::string_view prefix;
    std::string_view x_ricevuta;
    DaticertType tipo;
    DaticertError errore = DaticertError::nessuno;
    bool verifica_sicurezza = false;
    bool x_mittente = false;
};

// The common part of #3-#11: header block, values and daticert; callers add the specifics.
Result<MessageBuilder::Spec> MessageBuilder::receipt_spec(const Transaction& t, const Shape& shape,
                                                          std::string_view to) const {
    if (auto ok = check_transaction(t, true); !ok) return std::unexpected(ok.error());
    if (!ids_) return fail(ErrorKind::config, "builder: no identifier generator");
    Spec spec;
    spec.message_id = ids_->next();  // fresh, never the identificativo (like Aruba)
    spec.headers = receipt_headers(t, provider_, shape.prefix, shape.x_ricevuta, to,
                                   spec.message_id, shape.verifica_sicurezza, shape.x_mittente);
    spec.type = shape.type;
    spec.stem = shape.stem;
    spec.values = common_values(t, provider_, true);
    spec.daticert = base_daticert(t, provider_, shape.tipo, shape.errore);
    return spec;
}

Result<BuiltMessage> MessageBuilder::accettazione(const Transaction& t) const {
    Shape shape{MessageType::accettazione, "accettazione", "ACCETTAZIONE: ", "accettazione",
                DaticertType::accettazione};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    return build(*spec);  // no <ricevuta> in accettazione (DECISIONS #7)
}

Result<BuiltMessage> MessageBuilder::non_accettazione(const Transaction& t,
                                                      std::string_view reason) const {
    Shape shape{MessageType::non_accettazione,  "non-accettazione",
                "AVVISO DI NON ACCETTAZIONE: ", "non-accettazione",
                DaticertType::non_accettazione, DaticertError::altro};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["errore"] = one_line(reason);
    spec->daticert->errore_esteso = one_line(reason);  // DECISIONS #8
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::non_accettazione_virus(const Transaction& t,
                                                            std::string_view virus) const {
    Shape shape{MessageType::non_accettazione_virus,
                "non-accettazione-virus",
                "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
                "non-accettazione",
                DaticertType::non_accettazione,
                DaticertError::virus,
                true};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["errore"] = one_line(virus);
    spec->daticert->errore_esteso = one_line(virus);
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::presa_in_carico(
    const Transaction& t, std::string_view service_mailbox,
    const std::vector<std::string>& covered) const {
    if (service_mailbox.empty())
        return fail(ErrorKind::permanent, "presa in carico: no service mailbox of the sender");
    if (covered.empty()) return fail(ErrorKind::permanent, "presa in carico: no recipient covered");
    Shape shape{MessageType::presa_in_carico, "presa-in-carico",
                "PRESA IN CARICO: ", "presa-in-carico", DaticertType::presa_in_carico};
    auto spec = receipt_spec(t, shape, service_mailbox);
    if (!spec) return std::unexpected(spec.error());
    spec->values["ricezione"] = TemplateValue::list(covered);
    spec->daticert->ricezione = covered;
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::avvenuta_consegna(const Transaction& t,
                                                       std::string_view recipient,
                                                       std::string_view postacert) const {
    AddressField field = AddressField::to;  // not listed: treat as primary (§3)
    for (const auto& r : t.original.recipients)
        if (strcasecmp(r.address.c_str(), std::string(recipient).c_str()) == 0) field = r.field;
    ReceiptKind kind = receipt_kind_for(t.original.requested_receipt, field);
    Shape shape{MessageType::avvenuta_consegna, "avvenuta-consegna-" + std::string(to_string(kind)),
                "CONSEGNA: ", "avvenuta-consegna", DaticertType::avvenuta_consegna};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["consegna"] = std::string(recipient);
    spec->daticert->consegna = std::string(recipient);
    spec->daticert->ricevuta = kind;  // the kind this receipt is, after the To/Cc rule
    if (kind != ReceiptKind::sintetica) {
        if (postacert.empty())
            return fail(ErrorKind::permanent, "avvenuta consegna " + std::string(to_string(kind)) +
                                                  ": the busta's postacert.eml is missing");
        if (kind == ReceiptKind::completa) {
            spec->postacert = ensure_final_crlf(postacert);
        } else {
            auto breve = make_breve_copy(postacert);
            if (!breve) return context(breve.error(), "avvenuta consegna breve");
            spec->postacert = ensure_final_crlf(*breve);
        }
    }
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::errore_consegna(const Transaction& t,
                                                     std::string_view recipient,
                                                     DaticertError error,
                                                     std::string_view errore_esteso) const {
    if (error != DaticertError::no_dest && error != DaticertError::no_dominio &&
        error != DaticertError::altro)
        return fail(ErrorKind::permanent,
                    "errore consegna: errore must be no-dest, no-dominio or altro, not " +
                        std::string(to_string(error)));
    Shape shape{MessageType::errore_consegna,   "errore-consegna",
                "AVVISO DI MANCATA CONSEGNA: ", "errore-consegna",
                DaticertType::errore_consegna,  error};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["consegna"] = std::string(recipient);
    spec->values["errore"] = one_line(errore_esteso);
    spec->daticert->consegna = std::string(recipient);
    spec->daticert->errore_esteso = one_line(errore_esteso);
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::preavviso_errore_consegna(const Transaction& t,
                                                               std::string_view recipient,
                                                               TimeoutStage stage) const {
    bool first = stage == TimeoutStage::first_12h;
    Shape shape{MessageType::preavviso_errore_consegna,
                first ? "preavviso-errore-consegna-12h" : "preavviso-errore-consegna-24h",
                "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: ",
                "preavviso-errore-consegna",
                DaticertType::preavviso_errore_consegna,
                DaticertError::altro};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["consegna"] = std::string(recipient);
    spec->daticert->consegna = std::string(recipient);
    // RFC 3463 X.4.7 "delivery time expired": 4 = still possible (12 h), 5 = final (24 h).
    spec->daticert->errore_esteso = (first ? "4.4.7 - " : "5.4.7 - ") + provider_.name +
                                    (first ? " - messaggio non consegnato entro 12 ore dall'invio"
                                           : " - messaggio non consegnato entro 24 ore dall'invio");
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::rilevazione_virus(const Transaction& t,
                                                       std::string_view service_mailbox,
                                                       std::string_view recipient,
                                                       std::string_view virus) const {
    if (service_mailbox.empty())
        return fail(ErrorKind::permanent, "rilevazione virus: no service mailbox of the sender");
    Shape shape{MessageType::rilevazione_virus,
                "rilevazione-virus",
                "PROBLEMA DI SICUREZZA: ",
                "rilevazione-virus",
                DaticertType::rilevazione_virus,
                DaticertError::virus,
                false,
                true};
    auto spec = receipt_spec(t, shape, service_mailbox);
    if (!spec) return std::unexpected(spec.error());
    spec->values["consegna"] = std::string(recipient);
    spec->values["errore"] = one_line(virus);
    spec->daticert->consegna = std::string(recipient);
    spec->daticert->errore_esteso = one_line(virus);
    return build(*spec);
}

Result<BuiltMessage> MessageBuilder::errore_consegna_virus(const Transaction& t,
                                                           std::string_view recipient,
                                                           std::string_view virus) const {
    Shape shape{MessageType::errore_consegna_virus,
                "errore-consegna-virus",
                "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
                "errore-consegna",
                DaticertType::errore_consegna,
                DaticertError::virus,
                true};
    auto spec = receipt_spec(t, shape, t.original.sender);
    if (!spec) return std::unexpected(spec.error());
    spec->values["consegna"] = std::string(recipient);
    spec->values["errore"] = one_line(virus);
    spec->daticert->consegna = std::string(recipient);
    spec->daticert->errore_esteso = one_line(virus);
    return build(*spec);
}

}  // namespace pecd::pec
