// The copy of the original message carried as postacert.eml (pec-rules.md §2.2, §3).
//
// Decision (msgid rewrite): the access point rewrites the original with a minimal header-only edit
// of its bytes, not a GMime re-serialization: the Message-ID field is replaced in place by
// `Message-ID: <identificativo>`, `X-Riferimento-Message-ID: <original id>` is inserted right
// after it (as Aruba and Sogei do), any X-Riferimento-Message-ID the client sent is dropped (it
// would be ambiguous), and every other byte (other header fields with their folding, the body) is
// kept. The only other change is line ends, made canonical CRLF (DECISIONS #3). A user S/MIME
// signature over the body therefore still verifies inside postacert.eml. Without an original
// Message-ID, `Message-ID: <identificativo>` is appended and no X-Riferimento-Message-ID is added.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::pec {

// Byte-preserving view of a message's header block (kept in its own namespace: the reader has
// its own parsed-message types).
namespace raw {

// One header field as it appears on the wire: name and the raw field (continuation lines and the
// final CRLF included).
struct Field {
    std::string name;
    std::string raw;
    std::string value() const;  // unfolded, surrounding blanks trimmed
};

struct Message {
    std::vector<Field> headers;
    std::string body;       // everything after the blank line that ends the header block
    bool has_body = false;  // false when the message has no blank line at all

    const Field* find(std::string_view name) const;  // first field, case-insensitive
    std::vector<const Field*> find_all(std::string_view name) const;
    std::string assemble() const;
};

// Splits a CRLF message into header fields and body. ErrorKind::permanent on a line in the header
// block that is neither a field nor a continuation.
Result<Message> split(std::string_view crlf);
// The fields up to the first line that is neither a field nor a continuation (all of them for a
// well-formed message); `has_body` false and no body when the block ended that way.
Message leading_fields(std::string_view crlf);

}  // namespace raw

struct PostacertCopy {
    std::string bytes;                       // CRLF, ready to be postacert.eml
    std::optional<std::string> original_id;  // the client's Message-ID, angle brackets included
};

// The msgid rewrite described above.
Result<PostacertCopy> rewrite_message_id(std::string_view original,
                                         std::string_view identificativo);

// The breve copy (pec-rules.md §3, DECISIONS #6): inside `postacert` every part with a name= or
// filename= parameter, and every message/rfc822 part, becomes a text/plain part named
// `<name>.hash` (same disposition) whose body is the SHA-1, 40 lowercase hex, of the part body as
// transmitted (still transfer-encoded; for message/rfc822 the embedded message bytes).
// multipart/signed keeps its structure and its signature part; an application/(x-)pkcs7-mime
// original is returned unchanged. The result is GMime's serialization of the edited tree.
Result<std::string> make_breve_copy(std::string_view postacert);

}  // namespace pecd::pec
