#include "stages/pec/templates.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

namespace pecd::pec {
namespace {

using P = std::vector<std::string_view>;

// Every message names the transaction the same way; the extras say what happened.
P base(std::initializer_list<std::string_view> extra, bool with_id = true) {
    P p{"giorno", "ora", "zona", "gestore", "oggetto", "mittente", "destinatari"};
    if (with_id) p.push_back("identificativo");
    p.insert(p.end(), extra);
    return p;
}

std::string file_name(std::string_view stem, TemplatePart part) {
    return std::string(stem) + (part == TemplatePart::text ? ".txt" : ".html");
}

struct Placeholder {
    size_t begin = 0;  // position of "{{"
    size_t end = 0;    // one past "}}"
    std::string name;
};

// Splits a template into its placeholders; a malformed one is reported with its line number.
Result<std::vector<Placeholder>> scan(std::string_view text, const std::string& file) {
    std::vector<Placeholder> out;
    size_t pos = 0;
    while ((pos = text.find("{{", pos)) != std::string_view::npos) {
        size_t close = text.find("}}", pos + 2);
        size_t line = 1 + static_cast<size_t>(std::count(text.begin(), text.begin() + pos, '\n'));
        if (close == std::string_view::npos)
            return fail(ErrorKind::config,
                        file + ":" + std::to_string(line) + ": unterminated '{{' placeholder");
        std::string name(text.substr(pos + 2, close - pos - 2));
        // Tolerate {{ name }} but nothing else: a typo must not pass silently.
        while (!name.empty() && name.front() == ' ') name.erase(0, 1);
        while (!name.empty() && name.back() == ' ') name.pop_back();
        bool ok = !name.empty();
        for (char c : name) ok = ok && ((c >= 'a' && c <= 'z') || c == '_');
        if (!ok)
            return fail(ErrorKind::config,
                        file + ":" + std::to_string(line) + ": malformed placeholder '{{" +
                            std::string(text.substr(pos + 2, close - pos - 2)) + "}}'");
        out.push_back({pos, close + 2, std::move(name)});
        pos = close + 2;
    }
    return out;
}

bool valid_utf8(std::string_view s) {
    size_t i = 0;
    while (i < s.size()) {
        auto c = static_cast<unsigned char>(s[i]);
        size_t n = 0;
        if (c >= 0x80) {
            if ((c & 0xE0) == 0xC0)
                n = 1;
            else if ((c & 0xF0) == 0xE0)
                n = 2;
            else if ((c & 0xF8) == 0xF0)
                n = 3;
            else
                return false;
        }
        if (i + n >= s.size()) return false;
        for (size_t k = 1; k <= n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

std::string html_escape(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        switch (c) {
            case '&':
                out += "&amp;";
                break;
            case '<':
                out += "&lt;";
                break;
            case '>':
                out += "&gt;";
                break;
            case '"':
                out += "&quot;";
                break;
            case '\'':
                out += "&#39;";
                break;
            default:
                out += c;
        }
    }
    return out;
}

}  // namespace

const std::vector<TemplateSpec>& template_specs() {
    static const std::vector<TemplateSpec> specs{
        {"busta-trasporto", base({})},
        {"busta-anomalia", base({"errore"}, false)},
        {"accettazione", base({})},
        {"non-accettazione", base({"errore"})},
        {"non-accettazione-virus", base({"errore"})},
        {"presa-in-carico", base({"ricezione"})},
        {"avvenuta-consegna-completa", base({"consegna"})},
        {"avvenuta-consegna-breve", base({"consegna"})},
        {"avvenuta-consegna-sintetica", base({"consegna"})},
        {"errore-consegna", base({"consegna", "errore"})},
        {"preavviso-errore-consegna-12h", base({"consegna"})},
        {"preavviso-errore-consegna-24h", base({"consegna"})},
        {"rilevazione-virus", base({"consegna", "errore"})},
        {"errore-consegna-virus", base({"consegna", "errore"})},
    };
    return specs;
}

Result<TemplateSet> TemplateSet::load(const std::filesystem::path& dir) {
    TemplateSet set;
    set.dir_ = dir;
    for (const auto& spec : template_specs()) {
        for (TemplatePart part : {TemplatePart::text, TemplatePart::html}) {
            std::string name = file_name(spec.stem, part);
            std::string path = (dir / name).string();
            std::ifstream in(path, std::ios::binary);
            if (!in) return fail(ErrorKind::config, "template " + path + ": cannot be read");
            std::ostringstream buf;
            buf << in.rdbuf();
            if (in.bad()) return fail(ErrorKind::config, "template " + path + ": read error");
            std::string content = buf.str();
            if (!valid_utf8(content))
                return fail(ErrorKind::config, "template " + path + ": not valid UTF-8");
            auto found = scan(content, path);
            if (!found) return std::unexpected(found.error());
            for (const auto& ph : *found) {
                bool known = false;
                for (auto allowed : spec.placeholders) known = known || allowed == ph.name;
                if (!known) {
                    std::string list;
                    for (auto allowed : spec.placeholders)
                        list += (list.empty() ? "" : ", ") + std::string(allowed);
                    return fail(ErrorKind::config, "template " + path + ": unknown placeholder {{" +
                                                       ph.name +
                                                       "}} (this template may use: " + list + ")");
                }
            }
            set.files_.emplace(std::move(name), std::move(content));
        }
    }
    return set;
}

Result<std::string> TemplateSet::render(std::string_view stem, TemplatePart part,
                                        const TemplateValues& values) const {
    std::string name = file_name(stem, part);
    std::string path = (dir_ / name).string();
    auto it = files_.find(name);
    if (it == files_.end()) return fail(ErrorKind::config, "template " + path + ": not loaded");
    const std::string& text = it->second;
    auto found = scan(text, path);
    if (!found) return std::unexpected(found.error());
    std::string out;
    size_t last = 0;
    for (const auto& ph : *found) {
        out.append(text, last, ph.begin - last);
        auto v = values.find(ph.name);
        if (v == values.end())
            return fail(ErrorKind::config,
                        "template " + path + ": no value for placeholder {{" + ph.name + "}}");
        const auto& lines = v->second.lines;
        for (size_t i = 0; i < lines.size(); ++i) {
            if (part == TemplatePart::text) {
                out += (i ? "\n" : "") + lines[i];
            } else {
                out += (i ? "<br>\n" : "") + html_escape(lines[i]);
            }
        }
        last = ph.end;
    }
    out.append(text, last);
    return out;
}

}  // namespace pecd::pec
