// Editable Italian body texts of the PEC system messages (pec-rules.md §2.4).
//
// One UTF-8 file per message kind and part under a configurable directory, e.g.
// conf/templates/accettazione.txt and accettazione.html, with `{{name}}` placeholders. An
// administrator changes the wording without rebuilding; the whole set is read and checked at
// load time, so a missing file or an unknown placeholder stops the daemon at startup instead of
// failing on the first receipt.
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::pec {

// A placeholder value: one line, or a list rendered one item per line.
struct TemplateValue {
    std::vector<std::string> lines;
    TemplateValue() = default;
    TemplateValue(std::string single) : lines{std::move(single)} {}  // NOLINT: implicit on purpose
    TemplateValue(const char* single) : lines{single} {}             // NOLINT
    static TemplateValue list(std::vector<std::string> items) {
        TemplateValue v;
        v.lines = std::move(items);
        return v;
    }
};
using TemplateValues = std::map<std::string, TemplateValue, std::less<>>;

enum class TemplatePart { text, html };

// The template stems pecd needs, each with a .txt and a .html file, and the placeholders each may
// use. Stems follow the MessageType names; #7 and #9 have one stem per variant.
struct TemplateSpec {
    std::string_view stem;
    std::vector<std::string_view> placeholders;
};
const std::vector<TemplateSpec>& template_specs();

class TemplateSet {
  public:
    // Reads and checks every `<stem>.txt` / `<stem>.html` of template_specs() in `dir`.
    // Errors are ErrorKind::config and name the file (and the placeholder or line at fault).
    static Result<TemplateSet> load(const std::filesystem::path& dir);

    // Renders `<stem>.txt` (values verbatim, list items one per line) or `<stem>.html` (values
    // HTML-escaped, list items joined with <br>). The result is UTF-8 with LF line ends.
    // A placeholder without a value is a config error naming the file.
    Result<std::string> render(std::string_view stem, TemplatePart part,
                               const TemplateValues& values) const;

    const std::filesystem::path& directory() const { return dir_; }

  private:
    std::filesystem::path dir_;
    std::map<std::string, std::string, std::less<>> files_;  // file name -> content
};

}  // namespace pecd::pec
