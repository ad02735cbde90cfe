// Small GMime helpers private to the builders (kept apart from gmime_util.hpp, written elsewhere).
#pragma once

#include <gmime/gmime.h>

#include <memory>
#include <string>
#include <string_view>

namespace pecd::pec::gmb {

// g_mime_init keeps its own init count, so a second call from another module is harmless.
void init_gmime();

struct GObjectUnref {
    void operator()(void* p) const {
        if (p) g_object_unref(p);
    }
};
template <class T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

// A memory stream that owns a copy of `bytes`.
GPtr<GMimeStream> memory_stream(std::string_view bytes);
// Everything left in `stream` from its start.
std::string read_all(GMimeStream* stream);
// Serializes with CRLF line ends, then canonicalizes any bare LF GMime leaves (it writes a
// multipart epilogue unfiltered) so that the result is CRLF throughout.
std::string serialize_crlf(GMimeObject* object);
// LF or CRLF input -> CRLF; lone CRs are left alone.
std::string to_crlf(std::string_view text);

}  // namespace pecd::pec::gmb
