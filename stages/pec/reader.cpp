#include "stages/pec/reader.hpp"

#include <gmime/gmime.h>
#include <strings.h>

#include <algorithm>

#include "stages/common/json.hpp"
#include "stages/pec/gmime_util.hpp"

namespace pecd::pec {
namespace {

struct GFree {
    void operator()(void* p) const noexcept { g_free(p); }
};

std::string_view trim(std::string_view s) {
    size_t b = s.find_first_not_of(" \t\r\n");
    if (b == std::string_view::npos) return {};
    size_t e = s.find_last_not_of(" \t\r\n");
    return s.substr(b, e - b + 1);
}

std::string lower(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) {
        return static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
    });
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

bool iends_with(std::string_view s, std::string_view suffix) {
    return s.size() >= suffix.size() && iequals(s.substr(s.size() - suffix.size()), suffix);
}

// GMime looks header names up case-insensitively and returns the unfolded, decoded value.
std::optional<std::string> header(GMimeObject* object, const char* name) {
    const char* value = g_mime_object_get_header(object, name);
    if (value == nullptr) return std::nullopt;
    return std::string(trim(value));
}

std::string mime_type(GMimeObject* object) {
    GMimeContentType* ct = g_mime_object_get_content_type(object);
    if (ct == nullptr) return "text/plain";  // RFC 2045 default
    std::unique_ptr<char, GFree> type(g_mime_content_type_get_mime_type(ct));
    return type ? lower(type.get()) : "text/plain";
}

std::string filename_of(GMimeObject* object) {
    const char* name = g_mime_object_get_content_disposition_parameter(object, "filename");
    if (name == nullptr) name = g_mime_object_get_content_type_parameter(object, "name");
    return name ? std::string(trim(name)) : std::string();
}

std::string decoded_content(GMimePart* part) {
    GMimeDataWrapper* content = g_mime_part_get_content(part);
    if (content == nullptr) return {};
    GPtr<GMimeStream> out(g_mime_stream_mem_new());
    if (g_mime_data_wrapper_write_to_stream(content, out.get()) < 0) return {};
    GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out.get()));
    return std::string(reinterpret_cast<const char*>(bytes->data), bytes->len);
}

// Sizes are counted through a null stream: a 30 MB attachment is never copied just to be measured.
size_t decoded_size(GMimePart* part) {
    GMimeDataWrapper* content = g_mime_part_get_content(part);
    if (content == nullptr) return 0;
    GPtr<GMimeStream> out(g_mime_stream_null_new());
    if (g_mime_data_wrapper_write_to_stream(content, out.get()) < 0) return 0;
    return GMIME_STREAM_NULL(out.get())->written;
}

size_t serialized_size(GMimeObject* object) {
    GPtr<GMimeStream> out(g_mime_stream_null_new());
    if (g_mime_object_write_to_stream(object, nullptr, out.get()) < 0) return 0;
    return GMIME_STREAM_NULL(out.get())->written;
}

bool is_signature_type(std::string_view type) {
    return type == "application/pkcs7-signature" || type == "application/x-pkcs7-signature";
}

bool is_sha1_hex(std::string_view s) {
    s = trim(s);
    return s.size() == 40 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
           });
}

// Walks a MIME tree, listing leaves. With `search`, also picks out daticert.xml and the
// message/rfc822 parts; it never descends into a message/rfc822 part, so a daticert.xml inside
// a forwarded PEC message (or inside postacert.eml) is never taken for this message's own.
struct Walker {
    std::vector<PartInfo> parts;
    std::vector<std::string> daticerts;
    std::vector<GMimeMessagePart*> postacerts;  // named postacert.eml
    GMimeMessagePart* first_message = nullptr;  // any message/rfc822 (anomaly envelope)
    size_t hash_parts = 0;
    std::vector<std::string> bad_hash_parts;  // .hash parts whose body is not a SHA-1 hex
    std::vector<std::string> unhashed_named;  // named parts a breve receipt should have hashed

    void walk(GMimeObject* object, int depth, bool search) {
        if (GMIME_IS_MULTIPART(object)) {
            auto* multipart = GMIME_MULTIPART(object);
            int count = g_mime_multipart_get_count(multipart);
            for (int i = 0; i < count; ++i) {
                // Only the first part of multipart/signed is signed content.
                bool in_content = search && (!GMIME_IS_MULTIPART_SIGNED(object) || i == 0);
                walk(g_mime_multipart_get_part(multipart, i), depth + 1, in_content);
            }
            return;
        }
        PartInfo info;
        info.content_type = mime_type(object);
        info.filename = filename_of(object);
        info.depth = depth;
        if (GMIME_IS_MESSAGE_PART(object)) {
            auto* message_part = GMIME_MESSAGE_PART(object);
            GMimeMessage* inner = g_mime_message_part_get_message(message_part);
            info.size = inner ? serialized_size(GMIME_OBJECT(inner)) : 0;
            if (search && inner != nullptr) {
                if (iequals(info.filename, "postacert.eml")) postacerts.push_back(message_part);
                if (first_message == nullptr) first_message = message_part;
            }
        } else if (GMIME_IS_PART(object)) {
            auto* part = GMIME_PART(object);
            bool is_daticert = search && iequals(info.filename, "daticert.xml");
            bool is_hash = info.content_type == "text/plain" && iends_with(info.filename, ".hash");
            if (is_daticert || is_hash) {
                std::string content = decoded_content(part);
                info.size = content.size();
                if (is_hash && !is_sha1_hex(content)) bad_hash_parts.push_back(info.filename);
                if (is_daticert) daticerts.push_back(std::move(content));
            } else {
                info.size = decoded_size(part);
            }
            if (is_hash) {
                ++hash_parts;
            } else if (!info.filename.empty() && !is_signature_type(info.content_type)) {
                unhashed_named.push_back(info.filename);
            }
        }
        parts.push_back(std::move(info));
    }
};

void collect_addresses(InternetAddressList* list, std::vector<std::string>& out) {
    if (list == nullptr) return;
    int count = internet_address_list_length(list);
    for (int i = 0; i < count; ++i) {
        InternetAddress* address = internet_address_list_get_address(list, i);
        if (INTERNET_ADDRESS_IS_MAILBOX(address)) {
            const char* addr = internet_address_mailbox_get_addr(INTERNET_ADDRESS_MAILBOX(address));
            if (addr != nullptr && *addr != '\0') out.emplace_back(addr);
        } else if (INTERNET_ADDRESS_IS_GROUP(address)) {
            collect_addresses(internet_address_group_get_members(INTERNET_ADDRESS_GROUP(address)),
                              out);
        }
    }
}

PecHeaders read_headers(GMimeObject* m) {
    PecHeaders h;
    h.x_ricevuta = header(m, "X-Ricevuta");
    h.x_trasporto = header(m, "X-Trasporto");
    h.x_tipo_ricevuta = header(m, "X-TipoRicevuta");
    h.x_riferimento_message_id = header(m, "X-Riferimento-Message-ID");
    h.x_verifica_sicurezza = header(m, "X-VerificaSicurezza");
    h.x_mittente = header(m, "X-Mittente");
    h.from = header(m, "From");
    h.to = header(m, "To");
    h.cc = header(m, "Cc");
    h.reply_to = header(m, "Reply-To");
    h.subject = header(m, "Subject");
    h.message_id = header(m, "Message-ID");
    h.date = header(m, "Date");
    return h;
}

// Header-based classification (pec-rules.md §2.1).
MessageType classify(const PecHeaders& h, std::vector<std::string>& problems) {
    MessageType type = MessageType::ordinary;
    bool virus = false;
    if (h.x_verifica_sicurezza) {
        virus = iequals(*h.x_verifica_sicurezza, "errore");
        if (!virus)
            problems.push_back("unknown X-VerificaSicurezza value \"" + *h.x_verifica_sicurezza +
                               "\"");
    }
    if (h.x_trasporto) {
        if (iequals(*h.x_trasporto, "posta-certificata"))
            type = MessageType::busta_trasporto;
        else if (iequals(*h.x_trasporto, "errore"))
            type = MessageType::busta_anomalia;
        else
            problems.push_back("unknown X-Trasporto value \"" + *h.x_trasporto + "\"");
    }
    if (h.x_ricevuta) {
        if (h.x_trasporto) problems.push_back("both X-Ricevuta and X-Trasporto are present");
        const std::string v = lower(*h.x_ricevuta);
        if (v == "accettazione")
            type = MessageType::accettazione;
        else if (v == "non-accettazione")
            type = virus ? MessageType::non_accettazione_virus : MessageType::non_accettazione;
        else if (v == "presa-in-carico")
            type = MessageType::presa_in_carico;
        else if (v == "avvenuta-consegna")
            type = MessageType::avvenuta_consegna;
        else if (v == "errore-consegna")
            type = virus ? MessageType::errore_consegna_virus : MessageType::errore_consegna;
        else if (v == "preavviso-errore-consegna")
            type = MessageType::preavviso_errore_consegna;
        else if (v == "rilevazione-virus")
            type = MessageType::rilevazione_virus;
        else
            problems.push_back("unknown X-Ricevuta value \"" + *h.x_ricevuta + "\"");
    }
    if (virus && type != MessageType::non_accettazione_virus &&
        type != MessageType::errore_consegna_virus)
        problems.push_back(
            "X-VerificaSicurezza is only defined for non-accettazione and "
            "errore-consegna");
    return type;
}

std::optional<DaticertType> expected_daticert(MessageType type) {
    switch (type) {
        case MessageType::ordinary:
        case MessageType::busta_anomalia:
            return std::nullopt;
        case MessageType::busta_trasporto:
            return DaticertType::posta_certificata;
        case MessageType::accettazione:
            return DaticertType::accettazione;
        case MessageType::non_accettazione:
        case MessageType::non_accettazione_virus:
            return DaticertType::non_accettazione;
        case MessageType::presa_in_carico:
            return DaticertType::presa_in_carico;
        case MessageType::avvenuta_consegna:
            return DaticertType::avvenuta_consegna;
        case MessageType::errore_consegna:
        case MessageType::errore_consegna_virus:
            return DaticertType::errore_consegna;
        case MessageType::preavviso_errore_consegna:
            return DaticertType::preavviso_errore_consegna;
        case MessageType::rilevazione_virus:
            return DaticertType::rilevazione_virus;
    }
    return std::nullopt;
}

bool is_virus_type(MessageType t) {
    return t == MessageType::non_accettazione_virus || t == MessageType::errore_consegna_virus ||
           t == MessageType::rilevazione_virus;
}

// pec-rules.md §2.1 "Contains Orig?": true = required, false = forbidden, nullopt = not stated.
std::optional<bool> original_expected(MessageType t, const std::optional<Daticert>& d) {
    switch (t) {
        case MessageType::busta_trasporto:
        case MessageType::busta_anomalia:
            return true;
        case MessageType::avvenuta_consegna:
            if (d && d->ricevuta) return *d->ricevuta != ReceiptKind::sintetica;
            return std::nullopt;
        case MessageType::accettazione:
        case MessageType::non_accettazione:
        case MessageType::non_accettazione_virus:
        case MessageType::preavviso_errore_consegna:
        case MessageType::rilevazione_virus:
            return false;
        default:
            return std::nullopt;
    }
}

void check_envelope(PecMessageInfo& info) {
    auto& p = info.problems;
    if (!info.is_signed) {
        p.push_back("a PEC message must be S/MIME multipart/signed");
        return;
    }
    if (!is_signature_type(info.signature_protocol))
        p.push_back("unexpected multipart/signed protocol \"" + info.signature_protocol + "\"");
    static constexpr std::string_view kMicalgs[] = {"sha1", "sha-1", "sha-256", "sha256"};
    if (std::find(std::begin(kMicalgs), std::end(kMicalgs), info.micalg) == std::end(kMicalgs))
        p.push_back("unsupported micalg \"" + info.micalg + "\"");
    if (!info.has_signature_part)
        p.push_back("multipart/signed has no signature part: the signature cannot be verified");
}

void check_daticert(PecMessageInfo& info) {
    auto& p = info.problems;
    const auto& h = info.headers;
    std::optional<DaticertType> expected = expected_daticert(info.type);
    if (!info.has_daticert) {
        if (expected) p.push_back("daticert.xml is missing");
        return;
    }
    if (!expected) {
        p.push_back(info.type == MessageType::busta_anomalia
                        ? "a busta di anomalia must not carry daticert.xml"
                        : "daticert.xml present but no X-Ricevuta/X-Trasporto header");
    }
    if (info.daticert_error) {
        p.push_back("daticert.xml is invalid: " + *info.daticert_error);
        return;
    }
    if (!info.daticert) return;
    const Daticert& d = *info.daticert;
    if (expected && d.tipo != *expected)
        p.push_back("daticert tipo \"" + std::string(to_string(d.tipo)) +
                    "\" does not match the headers (" + std::string(to_string(info.type)) + ")");
    if (is_virus_type(info.type) != (d.errore == DaticertError::virus) && expected)
        p.push_back("daticert errore \"" + std::string(to_string(d.errore)) +
                    "\" does not match the headers (" + std::string(to_string(info.type)) + ")");
    if (expected && h.x_riferimento_message_id != d.msgid)
        p.push_back("X-Riferimento-Message-ID " + h.x_riferimento_message_id.value_or("(absent)") +
                    " differs from daticert msgid " + d.msgid.value_or("(absent)"));
    if (d.consegna) {
        bool listed = std::any_of(d.destinatari.begin(), d.destinatari.end(),
                                  [&](const auto& r) { return iequals(r.address, *d.consegna); });
        if (!listed) p.push_back("daticert consegna " + *d.consegna + " is not among destinatari");
    }
    switch (info.type) {
        case MessageType::busta_trasporto: {
            if (h.message_id != "<" + d.identificativo + ">")
                p.push_back("busta Message-ID " + h.message_id.value_or("(absent)") +
                            " differs from daticert identificativo " + d.identificativo);
            // X-TipoRicevuta absent means completa (pec-rules.md §2.2).
            ReceiptKind requested = info.tipo_ricevuta.value_or(ReceiptKind::completa);
            if (d.ricevuta != requested)
                p.push_back("daticert ricevuta does not match X-TipoRicevuta " +
                            std::string(to_string(requested)));
            static constexpr std::string_view kPerConto = "Per conto di:";
            if (info.from_name.size() < kPerConto.size() ||
                !iequals(info.from_name.substr(0, kPerConto.size()), kPerConto)) {
                p.push_back("busta From has no \"Per conto di:\" display name");
            } else if (!iequals(trim(info.from_name.substr(kPerConto.size())), d.mittente)) {
                p.push_back("busta From \"" + info.from_name +
                            "\" differs from daticert mittente " + d.mittente);
            }
            break;
        }
        case MessageType::avvenuta_consegna:
            if (!d.ricevuta) p.push_back("avvenuta-consegna daticert has no <ricevuta>");
            if (!d.consegna) p.push_back("avvenuta-consegna daticert has no <consegna>");
            break;
        case MessageType::errore_consegna:
        case MessageType::errore_consegna_virus:
        case MessageType::preavviso_errore_consegna:
        case MessageType::rilevazione_virus:
            if (!d.consegna) p.push_back("per-recipient notice daticert has no <consegna>");
            break;
        case MessageType::presa_in_carico:
            if (d.ricezione.empty()) p.push_back("presa-in-carico daticert has no <ricezione>");
            break;
        default:
            break;
    }
}

void check_original(PecMessageInfo& info, const Walker& walker, size_t postacert_count) {
    auto& p = info.problems;
    if (postacert_count > 1) p.push_back("more than one postacert.eml part");
    std::optional<bool> expected = original_expected(info.type, info.daticert);
    if (expected && *expected && !info.original)
        p.push_back("the original message (postacert.eml) is missing");
    if (expected && !*expected && info.original)
        p.push_back(std::string(to_string(info.type)) + " must not carry the original message");
    if (!info.original) return;
    const OriginalInfo& o = *info.original;
    if (info.type == MessageType::busta_anomalia || info.type == MessageType::ordinary) return;

    // The original inside a busta or receipt has its Message-ID rewritten to the PEC msgid and
    // keeps the client's in X-Riferimento-Message-ID (pec-rules.md §2.2).
    if (info.daticert && o.message_id != "<" + info.daticert->identificativo + ">")
        p.push_back("postacert.eml Message-ID " + o.message_id.value_or("(absent)") +
                    " differs from daticert identificativo " + info.daticert->identificativo);
    if (o.riferimento_message_id != info.headers.x_riferimento_message_id)
        p.push_back("postacert.eml X-Riferimento-Message-ID " +
                    o.riferimento_message_id.value_or("(absent)") + " differs from the header's " +
                    info.headers.x_riferimento_message_id.value_or("(absent)"));
    for (const std::string& name : walker.bad_hash_parts)
        p.push_back("hash part " + name + " does not hold a 40-digit SHA-1");
    bool breve_receipt = info.type == MessageType::avvenuta_consegna && info.daticert &&
                         info.daticert->ricevuta == ReceiptKind::breve;
    bool opaque = !o.parts.empty() && (o.parts.front().content_type == "application/pkcs7-mime" ||
                                       o.parts.front().content_type == "application/x-pkcs7-mime");
    if (breve_receipt && !opaque)
        for (const std::string& name : walker.unhashed_named)
            p.push_back("breve receipt carries attachment " + name + " instead of its hash");
}

}  // namespace

void ParsedMessage::Unref::operator()(GMimeMessage* message) const noexcept {
    if (message != nullptr) g_object_unref(message);
}

Result<ParsedMessage> ParsedMessage::parse(std::string_view raw) {
    ensure_gmime();
    if (trim(raw).empty()) return fail(ErrorKind::corrupt, "empty message");
    GPtr<GMimeStream> stream(g_mime_stream_mem_new_with_buffer(raw.data(), raw.size()));
    GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
    g_mime_parser_set_format(parser.get(), GMIME_FORMAT_MESSAGE);
    GMimeMessage* message = g_mime_parser_construct_message(parser.get(), nullptr);
    if (!message) return fail(ErrorKind::corrupt, "not a MIME message");
    return ParsedMessage(message);
}

Result<PecMessageInfo> read_pec_message(std::string_view raw) {
    auto message = ParsedMessage::parse(raw);
    if (!message) return std::unexpected(message.error());
    return read_pec_message(*message);
}

Result<PecMessageInfo> read_pec_message(const ParsedMessage& parsed) {
    GMimeMessage* message = parsed.gmime();
    GMimeObject* top = g_mime_message_get_mime_part(message);
    if (top == nullptr) return fail(ErrorKind::corrupt, "message has no body");

    PecMessageInfo info;
    info.headers = read_headers(GMIME_OBJECT(message));
    info.type = classify(info.headers, info.problems);

    InternetAddressList* from = g_mime_message_get_from(message);
    if (from != nullptr && internet_address_list_length(from) > 0) {
        InternetAddress* first = internet_address_list_get_address(from, 0);
        if (const char* name = internet_address_get_name(first)) info.from_name = trim(name);
        std::vector<std::string> addresses;
        collect_addresses(from, addresses);
        if (!addresses.empty()) info.from_address = addresses.front();
    }
    collect_addresses(g_mime_message_get_to(message), info.to_addresses);
    collect_addresses(g_mime_message_get_cc(message), info.cc_addresses);
    if (GDateTime* date = g_mime_message_get_date(message))
        info.date = std::chrono::system_clock::from_time_t(g_date_time_to_unix(date));
    if (info.headers.x_tipo_ricevuta) {
        info.tipo_ricevuta = receipt_kind_from_string(*info.headers.x_tipo_ricevuta);
        if (!info.tipo_ricevuta)
            info.problems.push_back("unknown X-TipoRicevuta value \"" +
                                    *info.headers.x_tipo_ricevuta + "\"");
    }

    if (GMIME_IS_MULTIPART_SIGNED(top)) {
        info.is_signed = true;
        const char* protocol = g_mime_object_get_content_type_parameter(top, "protocol");
        const char* micalg = g_mime_object_get_content_type_parameter(top, "micalg");
        info.signature_protocol = protocol ? lower(trim(protocol)) : "";
        info.micalg = micalg ? lower(trim(micalg)) : "";
        int count = g_mime_multipart_get_count(GMIME_MULTIPART(top));
        if (count >= 2)
            info.has_signature_part =
                is_signature_type(mime_type(g_mime_multipart_get_part(GMIME_MULTIPART(top), 1)));
        if (count > 2) info.problems.push_back("multipart/signed has more than two parts");
    }

    Walker walker;
    walker.walk(top, 0, true);
    info.parts = std::move(walker.parts);

    if (!walker.daticerts.empty()) {
        info.has_daticert = true;
        if (walker.daticerts.size() > 1) info.problems.push_back("more than one daticert.xml part");
        info.daticert_xml = walker.daticerts.front();
        auto parsed = parse_daticert(*info.daticert_xml);
        if (parsed)
            info.daticert = std::move(*parsed);
        else
            info.daticert_error = parsed.error().message;
    }

    // An anomaly wraps the received message whatever its name (pec-rules.md §2.1 #2).
    GMimeMessagePart* original = walker.postacerts.empty() ? nullptr : walker.postacerts.front();
    if (original == nullptr && info.type == MessageType::busta_anomalia)
        original = walker.first_message;
    Walker original_walker;
    if (original != nullptr) {
        GMimeMessage* inner = g_mime_message_part_get_message(original);
        GMimeObject* inner_object = GMIME_OBJECT(inner);
        OriginalInfo o;
        o.filename = filename_of(GMIME_OBJECT(original));
        o.message_id = header(inner_object, "Message-ID");
        o.riferimento_message_id = header(inner_object, "X-Riferimento-Message-ID");
        o.subject = header(inner_object, "Subject");
        o.from = header(inner_object, "From");
        o.x_tipo_ricevuta = header(inner_object, "X-TipoRicevuta");
        if (GMimeObject* body = g_mime_message_get_mime_part(inner))
            original_walker.walk(body, 0, false);
        o.parts = original_walker.parts;
        o.hash_parts = original_walker.hash_parts;
        info.original = std::move(o);
    }

    if (info.type != MessageType::ordinary) {
        check_envelope(info);
        check_original(info, original_walker, walker.postacerts.size());
    }
    check_daticert(info);
    return info;
}

// ---------------------------------------------------------------------------------------------
// JSON

namespace {

void json_string(std::string& out, std::string_view s) {
    // RFC 8259 wants UTF-8: malformed bytes become U+FFFD (GLib) rather than invalid JSON.
    std::unique_ptr<gchar, GFree> valid(g_utf8_make_valid(s.data(), static_cast<gssize>(s.size())));
    out += json::quote(std::string_view(valid.get()));
}

class Json {
  public:
    explicit Json(std::string& out) : out_(out) {}
    Json& key(std::string_view k) {
        comma();
        json_string(out_, k);
        out_ += ':';
        fresh_ = true;
        return *this;
    }
    Json& str(std::string_view v) {
        comma();
        json_string(out_, v);
        return *this;
    }
    Json& opt(const std::optional<std::string>& v) {
        if (v) return str(*v);
        comma();
        out_ += "null";
        return *this;
    }
    Json& boolean(bool v) {
        comma();
        out_ += v ? "true" : "false";
        return *this;
    }
    Json& number(long long v) {
        comma();
        out_ += std::to_string(v);
        return *this;
    }
    Json& null() {
        comma();
        out_ += "null";
        return *this;
    }
    Json& open(char c) {
        comma();
        out_ += c;
        fresh_ = true;
        return *this;
    }
    Json& close(char c) {
        out_ += c;
        fresh_ = false;
        return *this;
    }

  private:
    void comma() {
        if (!fresh_) out_ += ',';
        fresh_ = false;
    }
    std::string& out_;
    bool fresh_ = true;
};

void json_parts(Json& j, const std::vector<PartInfo>& parts) {
    j.open('[');
    for (const PartInfo& p : parts) {
        j.open('{');
        j.key("content_type").str(p.content_type);
        j.key("filename").str(p.filename);
        j.key("size").number(static_cast<long long>(p.size));
        j.key("depth").number(p.depth);
        j.close('}');
    }
    j.close(']');
}

void json_daticert(Json& j, const Daticert& d) {
    j.open('{');
    j.key("tipo").str(to_string(d.tipo));
    j.key("errore").str(to_string(d.errore));
    j.key("mittente").str(d.mittente);
    j.key("destinatari").open('[');
    for (const Recipient& r : d.destinatari) {
        j.open('{');
        j.key("address").str(r.address);
        j.key("tipo").str(to_string(r.kind));
        j.close('}');
    }
    j.close(']');
    j.key("risposte").str(d.risposte);
    j.key("oggetto").opt(d.oggetto);
    j.key("gestore_emittente").str(d.gestore_emittente);
    j.key("giorno").str(d.giorno);
    j.key("ora").str(d.ora);
    j.key("zona").str(d.zona);
    j.key("identificativo").str(d.identificativo);
    j.key("msgid").opt(d.msgid);
    j.key("ricevuta");
    if (d.ricevuta)
        j.str(to_string(*d.ricevuta));
    else
        j.null();
    j.key("consegna").opt(d.consegna);
    j.key("ricezione").open('[');
    for (const std::string& r : d.ricezione) j.str(r);
    j.close(']');
    j.key("errore_esteso").opt(d.errore_esteso);
    j.close('}');
}

}  // namespace

std::string to_json(const PecMessageInfo& info) {
    std::string out;
    Json j(out);
    j.open('{');
    j.key("type").str(to_string(info.type));
    const PecHeaders& h = info.headers;
    j.key("headers").open('{');
    j.key("x_ricevuta").opt(h.x_ricevuta);
    j.key("x_trasporto").opt(h.x_trasporto);
    j.key("x_tipo_ricevuta").opt(h.x_tipo_ricevuta);
    j.key("x_riferimento_message_id").opt(h.x_riferimento_message_id);
    j.key("x_verifica_sicurezza").opt(h.x_verifica_sicurezza);
    j.key("x_mittente").opt(h.x_mittente);
    j.key("from").opt(h.from);
    j.key("to").opt(h.to);
    j.key("cc").opt(h.cc);
    j.key("reply_to").opt(h.reply_to);
    j.key("subject").opt(h.subject);
    j.key("message_id").opt(h.message_id);
    j.key("date").opt(h.date);
    j.close('}');
    j.key("from_address").str(info.from_address);
    j.key("from_name").str(info.from_name);
    j.key("to_addresses").open('[');
    for (const auto& a : info.to_addresses) j.str(a);
    j.close(']');
    j.key("cc_addresses").open('[');
    for (const auto& a : info.cc_addresses) j.str(a);
    j.close(']');
    j.key("tipo_ricevuta");
    if (info.tipo_ricevuta)
        j.str(to_string(*info.tipo_ricevuta));
    else
        j.null();
    j.key("date_unix");
    if (info.date)
        j.number(std::chrono::duration_cast<std::chrono::seconds>(info.date->time_since_epoch())
                     .count());
    else
        j.null();
    j.key("signed").boolean(info.is_signed);
    j.key("signature_protocol").str(info.signature_protocol);
    j.key("micalg").str(info.micalg);
    j.key("has_signature_part").boolean(info.has_signature_part);
    j.key("has_daticert").boolean(info.has_daticert);
    j.key("daticert");
    if (info.daticert)
        json_daticert(j, *info.daticert);
    else
        j.null();
    j.key("daticert_error").opt(info.daticert_error);
    j.key("daticert_xml").opt(info.daticert_xml);
    j.key("original");
    if (info.original) {
        const OriginalInfo& o = *info.original;
        j.open('{');
        j.key("filename").str(o.filename);
        j.key("message_id").opt(o.message_id);
        j.key("x_riferimento_message_id").opt(o.riferimento_message_id);
        j.key("subject").opt(o.subject);
        j.key("from").opt(o.from);
        j.key("x_tipo_ricevuta").opt(o.x_tipo_ricevuta);
        j.key("hash_parts").number(static_cast<long long>(o.hash_parts));
        j.key("parts");
        json_parts(j, o.parts);
        j.close('}');
    } else {
        j.null();
    }
    j.key("parts");
    json_parts(j, info.parts);
    j.key("problems").open('[');
    for (const auto& p : info.problems) j.str(p);
    j.close(']');
    j.close('}');
    return out;
}

}  // namespace pecd::pec
