// GMime 3 process setup and GObject ownership, shared by the message readers and builders.
#pragma once

#include <gmime/gmime.h>

#include <memory>
#include <string>
#include <string_view>

namespace pecd::pec {

// Calls g_mime_init() exactly once per process; cheap to call before every GMime use.
void ensure_gmime();

struct GObjectUnref {
    void operator()(void* object) const noexcept {
        if (object != nullptr) g_object_unref(object);
    }
};

// Owning pointer for anything that is released with g_object_unref (GMimeMessage, GMimeStream,
// ...).
template <class T>
using GPtr = std::unique_ptr<T, GObjectUnref>;

GPtr<GMimeStream> memory_stream(std::string_view bytes);  // a copy of `bytes`
std::string read_all(GMimeStream* stream);
std::string serialize_crlf(GMimeObject* object);            // as written on the wire, CRLF
std::string to_crlf(std::string_view text);                 // bare LFs become CRLF
void append_crlf(std::string& out, std::string_view text);  // the same, appended to `out`

// An empty multipart/<subtype> with a fresh boundary. g_mime_multipart_new_with_subtype reads
// /dev/urandom (open, read, close) to invent the boundary; this one comes from a generator.
GPtr<GMimeMultipart> new_multipart(const char* subtype);
// A fresh boundary, as new_multipart gives one ("=-" and 32 hex digits).
std::string new_boundary();

}  // namespace pecd::pec
