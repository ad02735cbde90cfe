#include "stages/common/json.hpp"

#include <cstdio>

namespace pecd::json {

std::string quote(std::string_view s) {
    std::string out = "\"";
    for (unsigned char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
    return out;
}

void Writer::separator() {
    if (need_comma_) out_ += ',';
    need_comma_ = true;
}
Writer& Writer::begin_object() {
    separator();
    out_ += '{';
    need_comma_ = false;
    return *this;
}
Writer& Writer::end_object() {
    out_ += '}';
    need_comma_ = true;
    return *this;
}
Writer& Writer::begin_array() {
    separator();
    out_ += '[';
    need_comma_ = false;
    return *this;
}
Writer& Writer::end_array() {
    out_ += ']';
    need_comma_ = true;
    return *this;
}
Writer& Writer::key(std::string_view k) {
    separator();
    out_ += quote(k);
    out_ += ':';
    need_comma_ = false;
    return *this;
}
Writer& Writer::value(std::string_view s) {
    separator();
    out_ += quote(s);
    return *this;
}
Writer& Writer::value(int64_t n) {
    separator();
    out_ += std::to_string(n);
    return *this;
}
Writer& Writer::value(uint64_t n) {
    separator();
    out_ += std::to_string(n);
    return *this;
}
Writer& Writer::value(bool b) {
    separator();
    out_ += b ? "true" : "false";
    return *this;
}
Writer& Writer::null() {
    separator();
    out_ += "null";
    return *this;
}

}  // namespace pecd::json
