#include "stages/pec/gmime_util.hpp"

#include <gmime/gmime.h>

#include <cstdio>
#include <mutex>
#include <random>
#include <string>

namespace pecd::pec {

void ensure_gmime() {
    static std::once_flag once;
    // Never paired with g_mime_shutdown(): the library stays usable until the process exits.
    std::call_once(once, [] { g_mime_init(); });
}

GPtr<GMimeStream> memory_stream(std::string_view bytes) {
    ensure_gmime();
    return GPtr<GMimeStream>(g_mime_stream_mem_new_with_buffer(bytes.data(), bytes.size()));
}

std::string read_all(GMimeStream* stream) {
    std::string out;
    g_mime_stream_reset(stream);
    char buf[8192];
    for (;;) {
        ssize_t n = g_mime_stream_read(stream, buf, sizeof buf);
        if (n <= 0) break;
        out.append(buf, static_cast<size_t>(n));
    }
    return out;
}

std::string serialize_crlf(GMimeObject* object) {
    ensure_gmime();
    GMimeFormatOptions* options = g_mime_format_options_new();
    g_mime_format_options_set_newline_format(options, GMIME_NEWLINE_FORMAT_DOS);
    GByteArray* array = g_byte_array_new();
    GPtr<GMimeStream> out(g_mime_stream_mem_new_with_byte_array(array));  // stream owns array
    g_mime_object_write_to_stream(object, options, out.get());
    g_mime_stream_flush(out.get());
    g_mime_format_options_free(options);
    return to_crlf(std::string_view(reinterpret_cast<const char*>(array->data), array->len));
}

void append_crlf(std::string& out, std::string_view text) {
    // Whole lines at a time: the text is CRLF already, or nearly, in every caller.
    size_t start = 0;
    for (size_t lf = text.find('\n'); lf != std::string_view::npos; lf = text.find('\n', lf + 1)) {
        if (lf > 0 && text[lf - 1] == '\r') continue;
        out.append(text, start, lf - start);
        out += "\r\n";
        start = lf + 1;
    }
    out.append(text, start);
}

std::string to_crlf(std::string_view text) {
    std::string out;
    out.reserve(text.size() + text.size() / 32);
    append_crlf(out, text);
    return out;
}

std::string new_boundary() {
    // A boundary needs to be unique, not secret: one generator per thread, seeded once.
    thread_local std::mt19937_64 rng = [] {
        std::random_device device;
        std::seed_seq seed{device(), device(), device(), device()};
        return std::mt19937_64(seed);
    }();
    const auto high = static_cast<unsigned long long>(rng());
    const auto low = static_cast<unsigned long long>(rng());
    // "=-" (GMime's own prefix) cannot occur in base64 or quoted-printable text, so an encoded
    // part can never contain the boundary.
    char boundary[2 + 32 + 1];
    std::snprintf(boundary, sizeof boundary, "=-%016llx%016llx", high, low);
    return boundary;
}

GPtr<GMimeMultipart> new_multipart(const char* subtype) {
    ensure_gmime();
    GPtr<GMimeMultipart> multipart(
        static_cast<GMimeMultipart*>(g_object_new(GMIME_TYPE_MULTIPART, nullptr)));
    GPtr<GMimeContentType> type(g_mime_content_type_new("multipart", subtype));
    g_mime_object_set_content_type(GMIME_OBJECT(multipart.get()), type.get());
    g_mime_multipart_set_boundary(multipart.get(), new_boundary().c_str());
    return multipart;
}

}  // namespace pecd::pec
