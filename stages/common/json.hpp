// A tiny JSON writer for --json outputs (objects, arrays, strings, numbers, booleans).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace pecd::json {

std::string quote(std::string_view s);  // a JSON string literal, escaped

class Writer {
  public:
    Writer& begin_object();
    Writer& end_object();
    Writer& begin_array();
    Writer& end_array();
    Writer& key(std::string_view k);
    Writer& value(std::string_view s);
    Writer& value(const char* s) { return value(std::string_view(s)); }
    Writer& value(const std::string& s) { return value(std::string_view(s)); }
    Writer& value(int64_t n);
    Writer& value(uint64_t n);
    Writer& value(int n) { return value(static_cast<int64_t>(n)); }
    Writer& value(bool b);
    Writer& null();
    const std::string& str() const { return out_; }

  private:
    void separator();
    std::string out_;
    bool need_comma_ = false;
};

}  // namespace pecd::json
