#include "stages/common/config.hpp"

#include <charconv>
#include <fstream>
#include <sstream>

namespace pecd {
namespace {

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

bool valid_name(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok) return false;
    }
    return true;
}

}  // namespace

Result<uint64_t> parse_size(std::string_view text) {
    text = trim(text);
    uint64_t number = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (ec != std::errc() || ptr == text.data()) return fail(ErrorKind::config, "not a size");
    std::string_view suffix = trim(std::string_view(ptr, text.data() + text.size() - ptr));
    uint64_t mult = 1;
    if (suffix.empty() || suffix == "B")
        mult = 1;
    else if (suffix == "k" || suffix == "K" || suffix == "KB" || suffix == "KiB")
        mult = 1024;
    else if (suffix == "M" || suffix == "MB" || suffix == "MiB")
        mult = 1024ull * 1024;
    else if (suffix == "G" || suffix == "GB" || suffix == "GiB")
        mult = 1024ull * 1024 * 1024;
    else
        return fail(ErrorKind::config, "unknown size suffix '" + std::string(suffix) + "'");
    return number * mult;
}

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
    text = trim(text);
    int64_t number = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (ec != std::errc() || ptr == text.data() || number < 0)
        return fail(ErrorKind::config, "not a duration");
    std::string_view suffix = trim(std::string_view(ptr, text.data() + text.size() - ptr));
    using std::chrono::milliseconds;
    if (suffix == "ms") return milliseconds(number);
    if (suffix.empty() || suffix == "s") return milliseconds(number * 1000);
    if (suffix == "m" || suffix == "min") return milliseconds(number * 60'000);
    if (suffix == "h") return milliseconds(number * 3'600'000);
    if (suffix == "d") return milliseconds(number * 86'400'000);
    return fail(ErrorKind::config, "unknown duration suffix '" + std::string(suffix) + "'");
}

Result<Config> Config::load(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return fail_errno("cannot read configuration " + path.string());
    std::ostringstream text;
    text << in.rdbuf();
    auto config = parse(text.str(), path.string());
    if (config) config->base_dir_ = std::filesystem::absolute(path).parent_path();
    return config;
}

Result<Config> Config::parse(std::string_view text, std::string source) {
    Config config;
    config.source_ = std::move(source);
    config.base_dir_ = std::filesystem::current_path();
    std::string section;
    int line_no = 0;
    while (!text.empty()) {
        ++line_no;
        size_t nl = text.find('\n');
        std::string_view line = text.substr(0, nl);
        text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
        line = trim(line);
        if (line.empty() || line.front() == '#' || line.front() == ';') continue;
        if (line.front() == '[') {
            if (line.back() != ']' || !valid_name(trim(line.substr(1, line.size() - 2)))) {
                config.problems_.push_back({line_no, "malformed section header"});
                continue;
            }
            section = std::string(trim(line.substr(1, line.size() - 2)));
            config.values_[section];  // an empty section still exists
            continue;
        }
        size_t eq = line.find('=');
        if (eq == std::string_view::npos) {
            config.problems_.push_back({line_no, "expected 'key = value'"});
            continue;
        }
        std::string_view key = trim(line.substr(0, eq));
        std::string_view value = trim(line.substr(eq + 1));
        if (!valid_name(key)) {
            config.problems_.push_back({line_no, "invalid key name '" + std::string(key) + "'"});
            continue;
        }
        auto& slot = config.values_[section];
        if (auto it = slot.find(key); it != slot.end()) {
            config.problems_.push_back({line_no, "duplicate key '" + std::string(key) +
                                                     "' (first set on line " +
                                                     std::to_string(it->second.line) + ")"});
            continue;
        }
        slot.emplace(std::string(key), ConfigValue{std::string(value), line_no});
    }
    return config;
}

std::optional<ConfigValue> Config::find(std::string_view section, std::string_view key) const {
    auto s = values_.find(section);
    if (s == values_.end()) return std::nullopt;
    auto k = s->second.find(key);
    if (k == s->second.end()) return std::nullopt;
    return k->second;
}

std::string Config::get(std::string_view section, std::string_view key,
                        std::string fallback) const {
    auto v = find(section, key);
    return v ? v->value : fallback;
}

Error Config::value_error(std::string_view section, std::string_view key, const ConfigValue& v,
                          std::string_view expected) const {
    return Error{ErrorKind::config,
                 source_ + ":" + std::to_string(v.line) + ": [" + std::string(section) + "] " +
                     std::string(key) + " = '" + v.value + "': expected " + std::string(expected),
                 0};
}

Result<int64_t> Config::get_int(std::string_view section, std::string_view key,
                                int64_t fallback) const {
    auto v = find(section, key);
    if (!v) return fallback;
    int64_t number = 0;
    auto [ptr, ec] = std::from_chars(v->value.data(), v->value.data() + v->value.size(), number);
    if (ec != std::errc() || ptr != v->value.data() + v->value.size())
        return std::unexpected(value_error(section, key, *v, "an integer"));
    return number;
}

Result<bool> Config::get_bool(std::string_view section, std::string_view key, bool fallback) const {
    auto v = find(section, key);
    if (!v) return fallback;
    if (v->value == "yes" || v->value == "true" || v->value == "on" || v->value == "1") return true;
    if (v->value == "no" || v->value == "false" || v->value == "off" || v->value == "0")
        return false;
    return std::unexpected(value_error(section, key, *v, "yes or no"));
}

Result<uint64_t> Config::get_size(std::string_view section, std::string_view key,
                                  uint64_t fallback) const {
    auto v = find(section, key);
    if (!v) return fallback;
    auto size = parse_size(v->value);
    if (!size) return std::unexpected(value_error(section, key, *v, "a size such as 30M"));
    return size;
}

Result<std::chrono::milliseconds> Config::get_duration(std::string_view section,
                                                       std::string_view key,
                                                       std::chrono::milliseconds fallback) const {
    auto v = find(section, key);
    if (!v) return fallback;
    auto d = parse_duration(v->value);
    if (!d) return std::unexpected(value_error(section, key, *v, "a duration such as 30s or 12h"));
    return d;
}

std::vector<std::string> Config::keys(std::string_view section) const {
    std::vector<std::string> out;
    auto s = values_.find(section);
    if (s != values_.end())
        for (const auto& [k, v] : s->second) out.push_back(k);
    return out;
}

std::vector<std::string> Config::sections() const {
    std::vector<std::string> out;
    for (const auto& [name, v] : values_) out.push_back(name);
    return out;
}

std::filesystem::path Config::get_path(std::string_view section, std::string_view key,
                                       std::filesystem::path fallback) const {
    auto v = find(section, key);
    if (!v || v->value.empty()) return fallback;
    std::filesystem::path p(v->value);
    return p.is_absolute() ? p : base_dir_ / p;
}

void Config::set(std::string section, std::string key, std::string value) {
    values_[section][key] = ConfigValue{std::move(value), 0};
}

}  // namespace pecd
