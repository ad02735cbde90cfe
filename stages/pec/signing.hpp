// The seam between message builders and S/MIME: builders produce a complete MIME entity and hand
// it to an EntitySigner; smime.cpp provides the real one (PEM key or PKCS#11 through libp11).
#pragma once

#include <functional>
#include <string>
#include <string_view>

#include "stages/common/result.hpp"

namespace pecd::pec {

// Input: a complete MIME entity (its own headers, a blank line, its body), canonical CRLF.
// Output: the detached S/MIME multipart/signed entity that wraps it: a
// `Content-Type: multipart/signed; protocol=...; micalg=...; boundary=...` header line (CRLF),
// a blank line, and the body (preamble, the entity unchanged, the smime.p7s part, closing
// boundary), all CRLF. The caller prepends the message headers (From, To, Subject, Date, ...)
// and `MIME-Version: 1.0`.
using EntitySigner = std::function<Result<std::string>(std::string_view entity)>;

}  // namespace pecd::pec
