#include "stages/pec/postacert.hpp"

#include <openssl/evp.h>
#include <strings.h>

#include "stages/pec/gmime_util.hpp"

namespace pecd::pec {
namespace {

// The breve hash (DECISIONS #6): SHA-1, 40 lowercase hex.
Result<std::string> sha1_hex(std::string_view bytes) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha1(), nullptr) != 1)
        return fail(ErrorKind::transient, "SHA-1 digest failed in OpenSSL");
    static constexpr char hex[] = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < length; ++i) {
        out += hex[digest[i] >> 4];
        out += hex[digest[i] & 15];
    }
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

std::string trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return std::string(s);
}

// Name of an attachment-like part: Content-Disposition filename, else Content-Type name.
std::string part_name(GMimeObject* object) {
    const char* name = g_mime_object_get_content_disposition_parameter(object, "filename");
    if (!name || !*name) name = g_mime_object_get_content_type_parameter(object, "name");
    return name ? name : "";
}

Result<GPtr<GMimeObject>> hash_part(const std::string& name, const char* disposition,
                                    std::string_view transmitted) {
    auto hex = sha1_hex(transmitted);
    if (!hex) return std::unexpected(hex.error());
    GMimePart* part = g_mime_part_new_with_type("text", "plain");
    g_mime_object_set_disposition(GMIME_OBJECT(part),
                                  disposition && *disposition ? disposition : "attachment");
    g_mime_part_set_filename(part, (name + ".hash").c_str());  // also sets Content-Type name=
    auto stream = memory_stream(*hex);
    GPtr<GMimeDataWrapper> content(
        g_mime_data_wrapper_new_with_stream(stream.get(), GMIME_CONTENT_ENCODING_7BIT));
    g_mime_part_set_content(part, content.get());
    g_mime_part_set_content_encoding(part, GMIME_CONTENT_ENCODING_7BIT);
    return GPtr<GMimeObject>(GMIME_OBJECT(part));
}

// Returns the replacement for `object`, or null to keep it (its children may have been edited).
Result<GPtr<GMimeObject>> breve_replacement(GMimeObject* object) {
    if (GMIME_IS_MULTIPART(object)) {
        GMimeMultipart* multipart = GMIME_MULTIPART(object);
        int count = g_mime_multipart_get_count(multipart);
        // multipart/signed: only the signed content is edited, the signature part stays.
        if (GMIME_IS_MULTIPART_SIGNED(object)) count = count > 0 ? 1 : 0;
        for (int i = 0; i < count; ++i) {
            GMimeObject* child = g_mime_multipart_get_part(multipart, i);
            auto replacement = breve_replacement(child);
            if (!replacement) return std::unexpected(replacement.error());
            if (*replacement) {
                GMimeObject* old = g_mime_multipart_replace(multipart, i, replacement->get());
                if (old) g_object_unref(old);
            }
        }
        return GPtr<GMimeObject>();
    }
    if (GMIME_IS_MESSAGE_PART(object)) {
        // An attached message is hashed as a whole, named or not.
        GMimeMessage* inner = g_mime_message_part_get_message(GMIME_MESSAGE_PART(object));
        std::string bytes = inner ? serialize_crlf(GMIME_OBJECT(inner)) : std::string();
        std::string name = part_name(object);
        if (name.empty()) name = "messaggio.eml";
        return hash_part(name, g_mime_object_get_disposition(object), bytes);
    }
    if (GMIME_IS_PART(object)) {
        std::string name = part_name(object);
        if (name.empty()) return GPtr<GMimeObject>();
        GMimeDataWrapper* content = g_mime_part_get_content(GMIME_PART(object));
        std::string transmitted;
        if (content) transmitted = read_all(g_mime_data_wrapper_get_stream(content));
        return hash_part(name, g_mime_object_get_disposition(object), transmitted);
    }
    return GPtr<GMimeObject>();
}

bool is_pkcs7_mime(GMimeObject* object) {
    GMimeContentType* type = g_mime_object_get_content_type(object);
    return type && (g_mime_content_type_is_type(type, "application", "pkcs7-mime") ||
                    g_mime_content_type_is_type(type, "application", "x-pkcs7-mime"));
}

}  // namespace

std::string raw::Field::value() const {
    std::string_view raw_view(raw);
    size_t colon = raw_view.find(':');
    std::string_view v = colon == std::string_view::npos ? "" : raw_view.substr(colon + 1);
    std::string unfolded;
    for (char c : v)
        if (c != '\r' && c != '\n') unfolded += c;
    return trim(unfolded);
}

const raw::Field* raw::Message::find(std::string_view name) const {
    for (const auto& h : headers)
        if (iequals(h.name, name)) return &h;
    return nullptr;
}

std::vector<const raw::Field*> raw::Message::find_all(std::string_view name) const {
    std::vector<const raw::Field*> out;
    for (const auto& h : headers)
        if (iequals(h.name, name)) out.push_back(&h);
    return out;
}

std::string raw::Message::assemble() const {
    std::string out;
    for (const auto& h : headers) out += h.raw;
    if (has_body) out += "\r\n" + body;
    return out;
}

namespace {

// raw::split and raw::leading_fields: `lenient` ends the header block at a line that is neither
// a field nor a continuation instead of refusing the message.
Result<raw::Message> split_fields(std::string_view crlf, bool lenient) {
    raw::Message msg;
    size_t pos = 0;
    while (pos < crlf.size()) {
        size_t eol = crlf.find("\r\n", pos);
        size_t next = eol == std::string_view::npos ? crlf.size() : eol + 2;
        std::string_view line = crlf.substr(pos, next - pos);
        if (line == "\r\n") {
            msg.has_body = true;
            msg.body = std::string(crlf.substr(next));
            return msg;
        }
        if (line.front() == ' ' || line.front() == '\t') {
            if (msg.headers.empty()) {
                if (lenient) return msg;
                return fail(ErrorKind::permanent, "message starts with a continuation line");
            }
            msg.headers.back().raw += line;
        } else {
            size_t colon = line.find(':');
            std::string name(line.substr(0, colon == std::string_view::npos ? 0 : colon));
            bool ok = !name.empty();
            for (char c : name) ok = ok && c > 32 && c < 127;
            if (!ok && lenient) return msg;
            if (!ok)
                return fail(ErrorKind::permanent,
                            "malformed header line: '" + trim(line.substr(0, 60)) + "'");
            msg.headers.push_back({std::move(name), std::string(line)});
        }
        pos = next;
    }
    return msg;  // header block only, no body
}

}  // namespace

Result<raw::Message> raw::split(std::string_view crlf) {
    return split_fields(crlf, false);
}

raw::Message raw::leading_fields(std::string_view crlf) {
    auto msg = split_fields(crlf, true);
    return msg ? std::move(*msg) : raw::Message{};
}

Result<PostacertCopy> rewrite_message_id(std::string_view original,
                                         std::string_view identificativo) {
    if (original.empty()) return fail(ErrorKind::permanent, "the original message is empty");
    std::string crlf = to_crlf(original);
    if (crlf.size() < 2 || crlf.compare(crlf.size() - 2, 2, "\r\n") != 0)
        crlf += "\r\n";  // a last line without its end would merge with the next boundary
    auto split = raw::split(crlf);
    if (!split) return std::unexpected(split.error());
    raw::Message& msg = *split;

    PostacertCopy copy;
    std::vector<raw::Field> headers;
    bool replaced = false;
    std::string fresh = "Message-ID: <" + std::string(identificativo) + ">\r\n";
    for (auto& h : msg.headers) {
        if (iequals(h.name, "X-Riferimento-Message-ID")) continue;
        if (iequals(h.name, "Message-ID")) {
            if (replaced) continue;  // a second Message-ID is invalid: keep only the first
            replaced = true;
            copy.original_id = h.value();
            headers.push_back({"Message-ID", fresh});
            if (!copy.original_id->empty())
                headers.push_back({"X-Riferimento-Message-ID",
                                   "X-Riferimento-Message-ID: " + *copy.original_id + "\r\n"});
            else
                copy.original_id.reset();
            continue;
        }
        headers.push_back(std::move(h));
    }
    if (!replaced) headers.push_back({"Message-ID", fresh});
    msg.headers = std::move(headers);
    msg.has_body = true;  // a header-only original still gets its blank line: well formed
    copy.bytes = msg.assemble();
    return copy;
}

Result<std::string> make_breve_copy(std::string_view postacert) {
    ensure_gmime();
    std::string crlf = to_crlf(postacert);
    auto stream = memory_stream(crlf);
    GPtr<GMimeParser> parser(g_mime_parser_new_with_stream(stream.get()));
    GPtr<GMimeMessage> message(g_mime_parser_construct_message(parser.get(), nullptr));
    if (!message) return fail(ErrorKind::permanent, "breve: postacert.eml does not parse as MIME");
    GMimeObject* root = g_mime_message_get_mime_part(message.get());
    if (!root) return crlf;  // no body: nothing to hash
    // An opaque S/MIME original cannot be opened: breve equals completa.
    if (is_pkcs7_mime(root)) return crlf;
    auto replacement = breve_replacement(root);
    if (!replacement) return std::unexpected(replacement.error());
    if (*replacement) g_mime_message_set_mime_part(message.get(), replacement->get());
    return serialize_crlf(GMIME_OBJECT(message.get()));
}

}  // namespace pecd::pec
