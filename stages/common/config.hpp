// pecd.conf: INI-style `[section]` and `key = value` lines, `#` comments. Every value keeps the
// line it came from so that `pecd check-config` and startup errors can point at it.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd {

struct ConfigValue {
    std::string value;
    int line = 0;
};

// A problem found while reading or checking the configuration, with its line (0 = whole file).
struct ConfigProblem {
    int line = 0;
    std::string message;
};

class Config {
  public:
    static Result<Config> load(const std::filesystem::path& path);
    static Result<Config> parse(std::string_view text, std::string source = "<string>");

    const std::string& source() const { return source_; }
    std::optional<ConfigValue> find(std::string_view section, std::string_view key) const;
    std::string get(std::string_view section, std::string_view key,
                    std::string fallback = "") const;
    // Typed getters: a malformed value is a config error naming the file and line.
    Result<int64_t> get_int(std::string_view section, std::string_view key, int64_t fallback) const;
    Result<bool> get_bool(std::string_view section, std::string_view key, bool fallback) const;
    // Sizes accept k/K, M, G suffixes (powers of 1024): "30M".
    Result<uint64_t> get_size(std::string_view section, std::string_view key,
                              uint64_t fallback) const;
    // Durations accept ms, s, m, h, d suffixes: "500ms", "12h". A bare number means seconds.
    Result<std::chrono::milliseconds> get_duration(std::string_view section, std::string_view key,
                                                   std::chrono::milliseconds fallback) const;
    std::vector<std::string> keys(std::string_view section) const;
    std::vector<std::string> sections() const;
    // Relative paths in the file are resolved against the file's directory.
    std::filesystem::path get_path(std::string_view section, std::string_view key,
                                   std::filesystem::path fallback = {}) const;
    // Problems met while parsing (unknown syntax is reported, not fatal, so check-config lists
    // all).
    const std::vector<ConfigProblem>& problems() const { return problems_; }

    void set(std::string section, std::string key, std::string value);  // for tests and overrides

  private:
    Error value_error(std::string_view section, std::string_view key, const ConfigValue& v,
                      std::string_view expected) const;

    std::string source_;
    std::filesystem::path base_dir_;
    std::map<std::string, std::map<std::string, ConfigValue, std::less<>>, std::less<>> values_;
    std::vector<ConfigProblem> problems_;
};

Result<uint64_t> parse_size(std::string_view text);
Result<std::chrono::milliseconds> parse_duration(std::string_view text);

}  // namespace pecd
