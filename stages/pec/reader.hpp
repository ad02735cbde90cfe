// Reads any incoming message (PEC or not) with GMime 3, classifies it (pec-rules.md §2.1) and
// extracts its certification data. Nothing here verifies the signature: see signing.hpp.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/pec/daticert.hpp"
#include "stages/pec/types.hpp"

typedef struct _GMimeMessage GMimeMessage;  // as gmime-message.h declares it

namespace pecd::pec {

// One leaf of a MIME tree (multiparts are walked, not listed; message/rfc822 is a leaf).
struct PartInfo {
    std::string content_type;  // "type/subtype", lower case
    std::string filename;      // Content-Disposition filename, else Content-Type name; may be empty
    std::size_t size = 0;      // decoded bytes; message/rfc822: the serialized inner message
    int depth = 0;             // number of enclosing multiparts within the walked body
    bool operator==(const PartInfo&) const = default;
};

// The original message carried as postacert.eml (or the wrapped message of an anomaly).
struct OriginalInfo {
    std::string filename;                   // "postacert.eml" normally
    std::optional<std::string> message_id;  // raw header value, angle brackets kept
    std::optional<std::string> riferimento_message_id;
    std::optional<std::string> subject;
    std::optional<std::string> from;
    std::optional<std::string> x_tipo_ricevuta;
    std::vector<PartInfo> parts;
    std::size_t hash_parts = 0;  // breve receipt: text/plain "<name>.hash" replacements
};

// Header values, unfolded and trimmed, as they are on the wire (RFC 2047 words decoded).
// Absent headers are nullopt; names are matched case-insensitively (Sogei: X-Tiporicevuta).
struct PecHeaders {
    std::optional<std::string> x_ricevuta;
    std::optional<std::string> x_trasporto;
    std::optional<std::string> x_tipo_ricevuta;
    std::optional<std::string> x_riferimento_message_id;
    std::optional<std::string> x_verifica_sicurezza;
    std::optional<std::string> x_mittente;
    std::optional<std::string> from;
    std::optional<std::string> to;
    std::optional<std::string> cc;
    std::optional<std::string> reply_to;
    std::optional<std::string> subject;
    std::optional<std::string> message_id;
    std::optional<std::string> date;
};

struct PecMessageInfo {
    MessageType type = MessageType::ordinary;
    PecHeaders headers;

    // Parsed address fields (addr-spec only, in order).
    std::string from_address;
    std::string from_name;  // display name: "Per conto di: <sender>" on a busta
    std::vector<std::string> to_addresses;
    std::vector<std::string> cc_addresses;
    std::optional<std::chrono::system_clock::time_point> date;
    std::optional<ReceiptKind> tipo_ricevuta;  // X-TipoRicevuta, when valid

    // S/MIME envelope (detached multipart/signed).
    bool is_signed = false;
    std::string signature_protocol;   // "application/pkcs7-signature" or the x- variant
    std::string micalg;               // "sha1", "sha-256", ... as declared, lower case
    bool has_signature_part = false;  // false for the anon-* fixtures (p7s part removed)

    // daticert.xml: present and parsed, or present and refused. parse_daticert is strict about
    // the DTD content model, so a defective file (anon-errore-consegna.eml: stray text after
    // </risposte>) leaves `daticert` empty, sets `daticert_error` and adds a problem; the type
    // still comes from the headers, and the decoded bytes stay in `daticert_xml` for display.
    bool has_daticert = false;
    std::optional<Daticert> daticert;
    std::optional<std::string> daticert_error;
    std::optional<std::string> daticert_xml;

    std::optional<OriginalInfo> original;

    // Leaves of the signed content (or of the whole body when unsigned); postacert.eml is one
    // leaf, its own parts are in `original`.
    std::vector<PartInfo> parts;

    // Consistency findings: not fatal, each one sentence. Empty for a well-formed message.
    std::vector<std::string> problems;
};

// A message as GMime parsed it, for a caller that reads the same bytes in more than one way
// (read_pec_message and extract_postacert): one parse serves both.
class ParsedMessage {
  public:
    // ErrorKind::corrupt when the bytes are empty or not a MIME message.
    static Result<ParsedMessage> parse(std::string_view raw);
    GMimeMessage* gmime() const { return message_.get(); }

  private:
    struct Unref {
        void operator()(GMimeMessage* message) const noexcept;
    };
    explicit ParsedMessage(GMimeMessage* message) : message_(message) {}
    std::unique_ptr<GMimeMessage, Unref> message_;
};

// Errors (ErrorKind::corrupt) only when the bytes are not a MIME message at all; every PEC-level
// defect is reported in `problems` / `daticert_error` instead.
Result<PecMessageInfo> read_pec_message(std::string_view raw);
Result<PecMessageInfo> read_pec_message(const ParsedMessage& message);

// Compact JSON object for `pecq inspect --json` (UTF-8, RFC 8259 escaping).
std::string to_json(const PecMessageInfo& info);

}  // namespace pecd::pec
