// Providers index (IGPEC): RFC 2849 LDIF reader, libldap loader with an LDIF cache, and the
// validation both share (pec-rules.md §7, DECISIONS #4 and #14).
#include "stages/pec/index.hpp"

#include <fcntl.h>
#include <ldap.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <set>
#include <string_view>
#include <utility>

#include "stages/common/log.hpp"
#include "stages/pec/smime.hpp"

namespace pecd::pec {
namespace {

constexpr std::size_t kMaxLdifBytes = 64u << 20;  // the whole AgID directory is a few MB
constexpr std::size_t kMaxReportedProblems = 10;

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
    while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
    return s;
}

bool is_hex40(std::string_view s) {
    return s.size() == 40 && std::all_of(s.begin(), s.end(), [](char c) {
               return std::isxdigit(static_cast<unsigned char>(c)) != 0;
           });
}

std::string sha1_hex(std::string_view bytes) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha1(), nullptr) != 1) return {};
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(len * 2);
    for (unsigned int i = 0; i < len; ++i) {
        out.push_back(kHex[md[i] >> 4]);
        out.push_back(kHex[md[i] & 0x0f]);
    }
    return out;
}

// EVP_Decode* (not EVP_DecodeBlock) because it accounts for '=' padding in the output length.
std::optional<std::string> base64_decode(std::string_view in) {
    std::unique_ptr<EVP_ENCODE_CTX, decltype(&EVP_ENCODE_CTX_free)> ctx(EVP_ENCODE_CTX_new(),
                                                                        &EVP_ENCODE_CTX_free);
    if (!ctx) return std::nullopt;
    std::string out(in.size() / 4 * 3 + 3, '\0');
    EVP_DecodeInit(ctx.get());
    int n = 0;
    auto* dst = reinterpret_cast<unsigned char*>(out.data());
    if (EVP_DecodeUpdate(ctx.get(), dst, &n, reinterpret_cast<const unsigned char*>(in.data()),
                         static_cast<int>(in.size())) < 0)
        return std::nullopt;
    int tail = 0;
    if (EVP_DecodeFinal(ctx.get(), dst + n, &tail) != 1) return std::nullopt;
    out.resize(static_cast<std::size_t>(n + tail));
    return out;
}

std::string base64_encode(std::string_view in) {
    std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(in.data()),
                            static_cast<int>(in.size()));
    out.resize(static_cast<std::size_t>(n));
    return out;
}

// ---------------------------------------------------------------------------------------------
// Entries as read from either source, before validation.

struct RawAttr {
    std::string type;                  // lower-case base name
    std::vector<std::string> options;  // lower-case, e.g. "binary"
    std::string value;
    int line = 0;  // 0 = from LDAP
};

struct RawEntry {
    std::string dn;
    int line = 0;
    std::vector<RawAttr> attrs;
};

void split_description(std::string_view desc, RawAttr& attr) {
    std::size_t semi = desc.find(';');
    attr.type = lower(desc.substr(0, semi));
    while (semi != std::string_view::npos) {
        std::size_t next = desc.find(';', semi + 1);
        attr.options.push_back(lower(desc.substr(semi + 1, next - semi - 1)));
        semi = next;
    }
}

std::string at_line(int line) {
    return line > 0 ? " (line " + std::to_string(line) + ")" : "";
}

// One logical line (folding already undone), with the physical line it started on.
struct LogicalLine {
    std::string text;
    int line = 0;
};

class LdifReader {
  public:
    LdifReader(std::string_view text, const std::string& source) : text_(text), source_(source) {}

    Result<std::vector<RawEntry>> read() {
        std::vector<LogicalLine> record;
        std::optional<LogicalLine> current;
        bool current_is_comment = false;
        int lineno = 0;
        std::size_t pos = 0;
        while (pos <= text_.size()) {
            std::size_t nl = text_.find('\n', pos);
            bool last = nl == std::string_view::npos;
            std::string_view line = text_.substr(pos, last ? std::string_view::npos : nl - pos);
            pos = last ? text_.size() + 1 : nl + 1;
            if (last && line.empty()) break;  // the file ended with a newline
            ++lineno;
            if (!line.empty() && line.back() == '\r') line.remove_suffix(1);

            if (!line.empty() && line.front() == ' ') {
                // RFC 2849 folding: the leading space is dropped, the rest joins the line above.
                if (!current) return error(lineno, "continuation line with no line to continue");
                if (!current_is_comment) current->text.append(line.substr(1));
                continue;
            }
            if (current && !current_is_comment) record.push_back(std::move(*current));
            current.reset();
            if (line.empty()) {
                if (auto st = flush(record); !st) return std::unexpected(st.error());
                continue;
            }
            current = LogicalLine{std::string(line), lineno};
            current_is_comment = line.front() == '#';
        }
        if (current && !current_is_comment) record.push_back(std::move(*current));
        if (auto st = flush(record); !st) return std::unexpected(st.error());
        return std::move(entries_);
    }

  private:
    std::unexpected<Error> error(int line, const std::string& what) const {
        return fail(ErrorKind::corrupt, source_ + ": line " + std::to_string(line) + ": " + what);
    }

    struct Spec {
        std::string description;
        std::string value;
    };

    Result<Spec> split_spec(const LogicalLine& l) const {
        std::size_t colon = l.text.find(':');
        if (colon == std::string::npos || colon == 0)
            return error(l.line,
                         "expected \"attribute: value\", got \"" + l.text.substr(0, 60) + "\"");
        Spec spec{l.text.substr(0, colon), {}};
        for (char c : spec.description) {
            if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != ';' && c != '.')
                return error(l.line, "invalid attribute description \"" + spec.description + "\"");
        }
        std::string_view rest = std::string_view(l.text).substr(colon + 1);
        if (!rest.empty() && rest.front() == '<')
            return error(l.line, "\"" + spec.description +
                                     ":<\" URL values are not supported; inline the value "
                                     "as base64 with \"::\"");
        bool b64 = !rest.empty() && rest.front() == ':';
        if (b64) rest.remove_prefix(1);
        while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
        if (b64) {
            auto decoded = base64_decode(rest);
            if (!decoded)
                return error(l.line, "invalid base64 value for \"" + spec.description + "\"");
            spec.value = std::move(*decoded);
        } else {
            spec.value = std::string(rest);
        }
        return spec;
    }

    Status flush(std::vector<LogicalLine>& record) {
        if (record.empty()) return {};
        std::vector<LogicalLine> lines = std::move(record);
        record.clear();
        std::size_t i = 0;
        if (!seen_record_) {
            seen_record_ = true;
            auto first = split_spec(lines[0]);
            if (!first) return std::unexpected(first.error());
            if (lower(first->description) == "version") {
                if (trim(first->value) != "1")
                    return error(lines[0].line,
                                 "unsupported LDIF version \"" + first->value + "\"");
                i = 1;
                if (i == lines.size()) return {};  // "version: 1" followed by a blank line
            }
        }
        auto dn = split_spec(lines[i]);
        if (!dn) return std::unexpected(dn.error());
        if (lower(dn->description) != "dn")
            return error(lines[i].line,
                         "a record must start with \"dn:\", got \"" + dn->description + ":\"");
        RawEntry entry{std::string(trim(dn->value)), lines[i].line, {}};
        for (++i; i < lines.size(); ++i) {
            auto spec = split_spec(lines[i]);
            if (!spec) return std::unexpected(spec.error());
            std::string desc = lower(spec->description);
            if (desc == "dn") return error(lines[i].line, "second \"dn:\" in one record");
            if (desc == "control")
                return error(lines[i].line, "LDIF change controls are not supported in an index");
            if (desc == "changetype") {
                // An "add" record carries the same attributes as a content record; anything else
                // edits a directory we do not have.
                if (lower(trim(spec->value)) != "add")
                    return error(lines[i].line, "changetype \"" + spec->value +
                                                    "\" is not supported in an index LDIF");
                continue;
            }
            RawAttr attr;
            split_description(spec->description, attr);
            attr.value = std::move(spec->value);
            attr.line = lines[i].line;
            entry.attrs.push_back(std::move(attr));
        }
        entries_.push_back(std::move(entry));
        return {};
    }

    std::string_view text_;
    const std::string& source_;
    bool seen_record_ = false;
    std::vector<RawEntry> entries_;
};

// ---------------------------------------------------------------------------------------------
// Validation shared by LDIF and LDAP: entries with objectClass=provider become ProviderRecords.

class ProviderBuilder {
  public:
    void add(const RawEntry& e) {
        bool is_provider = std::any_of(e.attrs.begin(), e.attrs.end(), [](const RawAttr& a) {
            return a.type == "objectclass" && lower(trim(a.value)) == "provider";
        });
        if (!is_provider) return;  // the o=postacert base and any other entry are not providers
        where_ = "entry \"" + e.dn + "\"" + at_line(e.line);
        if (!seen_dns_.insert(lower(e.dn)).second) problem("duplicate entry");

        ProviderRecord rec;
        rec.dn = e.dn;
        std::vector<std::pair<std::string, int>> hashes;  // value, line
        std::vector<int> cert_lines;
        int name_count = 0, unit_count = 0, receipt_count = 0, domain_count = 0;
        for (const RawAttr& a : e.attrs) {
            bool binary =
                std::find(a.options.begin(), a.options.end(), "binary") != a.options.end();
            bool known = true;
            if (a.type == "providername") {
                rec.name = std::string(trim(a.value));
                ++name_count;
            } else if (a.type == "providerunit") {
                rec.unit = std::string(trim(a.value));
                ++unit_count;
            } else if (a.type == "providercertificatehash") {
                hashes.emplace_back(lower(trim(a.value)), a.line);
            } else if (a.type == "providercertificate") {
                // Certificate syntax travels as ;binary (RFC 4522); a bare name with a base64
                // value carries the same DER bytes, so both are accepted.
                rec.certificates.push_back(a.value);
                cert_lines.push_back(a.line);
            } else if (a.type == "mailreceipt") {
                rec.mail_receipt = std::string(trim(a.value));
                ++receipt_count;
            } else if (a.type == "manageddomains") {
                ++domain_count;
                std::string d = lower(trim(a.value));
                if (!d.empty() && d.back() == '.') d.pop_back();
                if (d.empty() || d.find_first_of("@<> \t") != std::string::npos)
                    problem("managedDomains \"" + a.value + "\"" + at_line(a.line) +
                            " is not a domain name");
                else
                    rec.managed_domains.push_back(std::move(d));
            } else {
                known = false;
            }
            std::size_t allowed = (binary && a.type == "providercertificate") ? 1 : 0;
            if (known && a.options.size() > allowed)
                problem("unsupported attribute option on \"" + a.type + "\"" + at_line(a.line));
        }

        // MUST attributes of the RFC 6109 `provider` object class.
        if (name_count == 0) problem("missing MUST attribute providerName");
        if (name_count > 0 && rec.name.empty()) problem("providerName is empty");
        if (hashes.empty()) problem("missing MUST attribute providerCertificateHash");
        if (rec.certificates.empty()) problem("missing MUST attribute providerCertificate;binary");
        if (receipt_count == 0) problem("missing MUST attribute mailReceipt");
        if (receipt_count > 0 && rec.mail_receipt.empty()) problem("mailReceipt is empty");
        if (domain_count == 0) problem("missing MUST attribute managedDomains");
        // SINGLE-VALUE attributes.
        if (name_count > 1)
            problem("providerName is single-valued but has " + std::to_string(name_count) +
                    " values");
        if (unit_count > 1)
            problem("providerUnit is single-valued but has " + std::to_string(unit_count) +
                    " values");
        if (receipt_count > 1)
            problem("mailReceipt is single-valued but has " + std::to_string(receipt_count) +
                    " values");
        if (!rec.mail_receipt.empty()) {
            std::size_t at = rec.mail_receipt.rfind('@');
            if (at == std::string::npos || at == 0 || at + 1 == rec.mail_receipt.size() ||
                rec.mail_receipt.find_first_of("<> \t") != std::string::npos)
                problem("mailReceipt \"" + rec.mail_receipt + "\" is not a bare addr-spec");
        }

        // Each certificate must be one DER X.509 certificate; its SHA-1 is what signers are
        // identified by (DECISIONS #4), so every hash must name one of the entry's certificates
        // and every certificate must be findable by its hash. A mismatch means a stale or
        // tampered record: refuse the whole index rather than misclassify mail with part of it.
        std::vector<std::string> cert_sha1;
        for (std::size_t i = 0; i < rec.certificates.size(); ++i) {
            const std::string& der = rec.certificates[i];
            const auto* p = reinterpret_cast<const unsigned char*>(der.data());
            X509* x = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
            bool whole = x != nullptr &&
                         p == reinterpret_cast<const unsigned char*>(der.data()) + der.size();
            X509_free(x);
            if (!whole)
                problem("providerCertificate #" + std::to_string(i + 1) + at_line(cert_lines[i]) +
                        " is not a DER X.509 certificate");
            cert_sha1.push_back(sha1_hex(der));
        }
        for (const auto& [hash, line] : hashes) {
            if (!is_hex40(hash)) {
                problem("providerCertificateHash \"" + hash + "\"" + at_line(line) +
                        " is not a 40-digit hex SHA-1");
                continue;
            }
            if (std::find(cert_sha1.begin(), cert_sha1.end(), hash) == cert_sha1.end()) {
                std::string actual;
                for (const auto& s : cert_sha1) actual += (actual.empty() ? "" : ", ") + s;
                problem("providerCertificateHash " + hash + at_line(line) +
                        " does not match the SHA-1 of any providerCertificate (certificates hash "
                        "to " +
                        (actual.empty() ? std::string("nothing") : actual) + ")");
            }
            if (std::find(rec.cert_hashes.begin(), rec.cert_hashes.end(), hash) ==
                rec.cert_hashes.end())
                rec.cert_hashes.push_back(hash);
        }
        for (std::size_t i = 0; i < cert_sha1.size(); ++i) {
            bool listed = std::any_of(hashes.begin(), hashes.end(),
                                      [&](const auto& h) { return h.first == cert_sha1[i]; });
            if (!listed && !hashes.empty())
                problem("providerCertificate #" + std::to_string(i + 1) + at_line(cert_lines[i]) +
                        " (SHA-1 " + cert_sha1[i] + ") has no providerCertificateHash");
        }
        records_.push_back(std::move(rec));
    }

    Result<IndexSnapshot> finish(std::string source) {
        if (problems_.empty() && records_.empty())
            return fail(ErrorKind::corrupt, source + ": no objectClass=provider entries");
        if (!problems_.empty()) {
            std::string msg = source + ": " + std::to_string(problems_.size()) +
                              " problem(s) in the providers index: ";
            for (std::size_t i = 0; i < problems_.size() && i < kMaxReportedProblems; ++i)
                msg += (i ? "; " : "") + problems_[i];
            if (problems_.size() > kMaxReportedProblems)
                msg += "; and " + std::to_string(problems_.size() - kMaxReportedProblems) + " more";
            return fail(ErrorKind::corrupt, std::move(msg));
        }
        // One order whatever the source (LDAP returns entries in any order): main records
        // before secondary environments, then by DN, so first-match lookups are deterministic.
        std::sort(records_.begin(), records_.end(),
                  [](const ProviderRecord& a, const ProviderRecord& b) {
                      if (a.unit.empty() != b.unit.empty()) return a.unit.empty();
                      return lower(a.dn) < lower(b.dn);
                  });
        IndexSnapshot snap;
        snap.providers = std::move(records_);
        snap.loaded_at = std::chrono::system_clock::now();
        snap.source = std::move(source);
        return snap;
    }

  private:
    void problem(const std::string& what) { problems_.push_back(where_ + ": " + what); }

    std::string where_;
    std::set<std::string> seen_dns_;
    std::vector<ProviderRecord> records_;
    std::vector<std::string> problems_;
};

Result<IndexSnapshot> build_snapshot(const std::vector<RawEntry>& entries, std::string source) {
    ProviderBuilder builder;
    for (const RawEntry& e : entries) builder.add(e);
    return builder.finish(std::move(source));
}

Result<std::string> read_file(const std::filesystem::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return fail_errno("cannot open providers index " + path.string());
    std::string data;
    char buf[65536];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            int err = errno;
            ::close(fd);
            return fail_errno("cannot read providers index " + path.string(), err);
        }
        if (n == 0) break;
        data.append(buf, static_cast<std::size_t>(n));
        if (data.size() > kMaxLdifBytes) {
            ::close(fd);
            return fail(ErrorKind::corrupt, path.string() + ": larger than " +
                                                std::to_string(kMaxLdifBytes) + " bytes");
        }
    }
    ::close(fd);
    return data;
}

// ---------------------------------------------------------------------------------------------
// Cache file: the snapshot written back as LDIF that load_ldif reads.

bool ldif_safe(std::string_view v) {
    if (v.empty()) return true;
    if (v.front() == ' ' || v.front() == ':' || v.front() == '<' || v.back() == ' ') return false;
    return std::all_of(v.begin(), v.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u != 0 && u != '\n' && u != '\r' && u < 0x80;
    });
}

void append_attr(std::string& out, std::string_view name, std::string_view value) {
    std::string line(name);
    if (ldif_safe(value)) {
        line += ": ";
        line += value;
    } else {
        line += ":: ";
        line += base64_encode(value);
    }
    // Fold at 76 columns as ldapsearch does; continuation lines start with one space.
    constexpr std::size_t kWidth = 76;
    out.append(line.substr(0, kWidth));
    out.push_back('\n');
    for (std::size_t pos = kWidth; pos < line.size(); pos += kWidth - 1) {
        out.push_back(' ');
        out.append(line.substr(pos, kWidth - 1));
        out.push_back('\n');
    }
}

// A provider entry's attributes after its dn and objectClass lines: the cache file and a
// provider's published record write them alike.
void append_provider_attrs(std::string& out, const ProviderRecord& p) {
    append_attr(out, "providerName", p.name);
    if (!p.unit.empty()) append_attr(out, "providerUnit", p.unit);
    for (const auto& h : p.cert_hashes) append_attr(out, "providerCertificateHash", h);
    for (const auto& c : p.certificates) append_attr(out, "providerCertificate;binary", c);
    append_attr(out, "mailReceipt", p.mail_receipt);
    for (const auto& d : p.managed_domains) append_attr(out, "managedDomains", d);
}

std::string to_ldif(const IndexSnapshot& snap) {
    std::string out = "# pecd providers index cache, from " + snap.source + "\n";
    out += "# written by pecd after a successful load; do not edit\nversion: 1\n";
    for (const ProviderRecord& p : snap.providers) {
        out.push_back('\n');
        append_attr(out, "dn", p.dn);
        append_attr(out, "objectClass", "provider");
        append_provider_attrs(out, p);
    }
    return out;
}

// Write to a temporary file in the same directory, fsync, rename over, fsync the directory:
// a crash leaves either the old cache or the new one, never a torn file.
Status write_atomically(const std::filesystem::path& path, std::string_view data) {
    std::filesystem::path tmp = path;
    tmp += ".tmp." + std::to_string(::getpid());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return fail_errno("cannot create " + tmp.string());
    auto abandon = [&](const std::string& what) {
        int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        return fail_errno(what + " " + tmp.string(), err);
    };
    for (std::size_t done = 0; done < data.size();) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return abandon("cannot write");
        done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd) != 0) return abandon("cannot fsync");
    if (::close(fd) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        return fail_errno("cannot close " + tmp.string(), err);
    }
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        int err = errno;
        ::unlink(tmp.c_str());
        return fail_errno("cannot rename " + tmp.string() + " to " + path.string(), err);
    }
    std::filesystem::path dir = path.parent_path().empty() ? "." : path.parent_path();
    int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return fail_errno("cannot open directory " + dir.string());
    int rc = ::fsync(dfd);
    int err = errno;
    ::close(dfd);
    if (rc != 0) return fail_errno("cannot fsync directory " + dir.string(), err);
    return {};
}

// ---------------------------------------------------------------------------------------------
// LDAP.

struct LdapUnbind {
    void operator()(LDAP* ld) const { ldap_unbind_ext_s(ld, nullptr, nullptr); }
};
struct LdapMsgFree {
    void operator()(LDAPMessage* m) const { ldap_msgfree(m); }
};
struct BerFree {
    void operator()(BerElement* b) const { ber_free(b, 0); }
};
struct LdapMemFree {
    void operator()(char* p) const { ldap_memfree(p); }
};
struct ValuesFree {
    void operator()(berval** v) const { ldap_value_free_len(v); }
};
using LdapPtr = std::unique_ptr<LDAP, LdapUnbind>;
using LdapMsgPtr = std::unique_ptr<LDAPMessage, LdapMsgFree>;
using BerPtr = std::unique_ptr<BerElement, BerFree>;
using LdapStr = std::unique_ptr<char, LdapMemFree>;
using ValuesPtr = std::unique_ptr<berval*, ValuesFree>;

// Failures that mean "cannot reach a working server now": these (and only these) fall back to
// the cache. Bad credentials, a missing base or a bad answer are configuration or data problems
// that the cache must not hide.
bool unreachable(int rc) {
    return rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_TIMEOUT ||
           rc == LDAP_BUSY || rc == LDAP_UNAVAILABLE || rc == LDAP_TIMELIMIT_EXCEEDED;
}

ErrorKind kind_of(int rc) {
    if (unreachable(rc)) return ErrorKind::transient;
    switch (rc) {
        case LDAP_INVALID_CREDENTIALS:
        case LDAP_INAPPROPRIATE_AUTH:
        case LDAP_INSUFFICIENT_ACCESS:
        case LDAP_STRONG_AUTH_REQUIRED:
        case LDAP_CONFIDENTIALITY_REQUIRED:
        case LDAP_NO_SUCH_OBJECT:
        case LDAP_INVALID_DN_SYNTAX:
        case LDAP_SIZELIMIT_EXCEEDED:
        case LDAP_PARAM_ERROR:
            return ErrorKind::config;
        default:
            return ErrorKind::permanent;
    }
}

std::string ldap_reason(LDAP* ld, int rc) {
    std::string msg = std::string(ldap_err2string(rc)) + " (" + std::to_string(rc) + ")";
    char* diag = nullptr;
    if (ld != nullptr &&
        ldap_get_option(ld, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diag) == LDAP_OPT_SUCCESS &&
        diag != nullptr) {
        LdapStr owned(diag);
        if (*diag != '\0') msg += ": " + std::string(diag);
    }
    return msg;
}

timeval to_timeval(std::chrono::milliseconds ms) {
    timeval tv{};
    tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
    tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
    return tv;
}

Result<std::vector<RawEntry>> fetch_ldap(const LdapIndexOptions& o) {
    LDAP* raw = nullptr;
    int rc = ldap_initialize(&raw, o.uri.c_str());
    LdapPtr ld(raw);
    if (rc != LDAP_SUCCESS || !ld)
        return fail(ErrorKind::config, "bad LDAP URI \"" + o.uri + "\": " + ldap_err2string(rc));

    int version = LDAP_VERSION3;
    timeval tv = to_timeval(o.timeout);
    const std::pair<int, const void*> opts[] = {
        {LDAP_OPT_PROTOCOL_VERSION, &version},
        {LDAP_OPT_NETWORK_TIMEOUT, &tv},  // connect()
        {LDAP_OPT_TIMEOUT, &tv},          // every synchronous call, including the bind
        {LDAP_OPT_REFERRALS, LDAP_OPT_OFF},
    };
    for (const auto& [opt, value] : opts) {
        rc = ldap_set_option(ld.get(), opt, value);
        if (rc != LDAP_OPT_SUCCESS)
            return fail(ErrorKind::config, "cannot set LDAP option " + std::to_string(opt) +
                                               " for " + o.uri + ": " + ldap_err2string(rc));
    }

    // Simple bind; an empty DN and password is the anonymous bind.
    berval cred{};
    cred.bv_val = const_cast<char*>(o.bind_password.c_str());
    cred.bv_len = o.bind_password.size();
    rc = ldap_sasl_bind_s(ld.get(), o.bind_dn.empty() ? nullptr : o.bind_dn.c_str(),
                          LDAP_SASL_SIMPLE, &cred, nullptr, nullptr, nullptr);
    if (rc != LDAP_SUCCESS) {
        std::string who = o.bind_dn.empty() ? "anonymous bind" : "bind as \"" + o.bind_dn + "\"";
        return fail(kind_of(rc), o.uri + ": " + who + " failed: " + ldap_reason(ld.get(), rc));
    }

    char a_objectclass[] = "objectClass", a_name[] = "providerName", a_unit[] = "providerUnit",
         a_hash[] = "providerCertificateHash", a_cert_bin[] = "providerCertificate;binary",
         a_receipt[] = "mailReceipt", a_domains[] = "managedDomains";
    char* attrs[] = {a_objectclass, a_name,    a_unit,    a_hash,
                     a_cert_bin,    a_receipt, a_domains, nullptr};
    char filter[] = "(objectClass=provider)";
    LDAPMessage* res_raw = nullptr;
    rc = ldap_search_ext_s(ld.get(), o.base_dn.c_str(), LDAP_SCOPE_SUBTREE, filter, attrs, 0,
                           nullptr, nullptr, &tv, LDAP_NO_LIMIT, &res_raw);
    LdapMsgPtr res(res_raw);  // owned even when the search failed
    if (rc != LDAP_SUCCESS)
        return fail(kind_of(rc),
                    o.uri + ": search of \"" + o.base_dn +
                        "\" for (objectClass=provider) failed: " + ldap_reason(ld.get(), rc));

    std::vector<RawEntry> entries;
    for (LDAPMessage* e = ldap_first_entry(ld.get(), res.get()); e != nullptr;
         e = ldap_next_entry(ld.get(), e)) {
        LdapStr dn(ldap_get_dn(ld.get(), e));
        if (!dn) return fail(ErrorKind::permanent, o.uri + ": entry without a DN in the answer");
        RawEntry entry{dn.get(), 0, {}};
        BerElement* ber_raw = nullptr;
        LdapStr name(ldap_first_attribute(ld.get(), e, &ber_raw));
        BerPtr ber(ber_raw);
        for (; name; name.reset(ldap_next_attribute(ld.get(), e, ber.get()))) {
            ValuesPtr values(ldap_get_values_len(ld.get(), e, name.get()));
            if (!values) continue;
            for (berval** v = values.get(); *v != nullptr; ++v) {
                RawAttr attr;
                split_description(name.get(), attr);
                attr.value.assign((*v)->bv_val, (*v)->bv_len);
                entry.attrs.push_back(std::move(attr));
            }
        }
        entries.push_back(std::move(entry));
    }
    return entries;
}

// When the cache was written, for the fallback message (GCC 12 has no clock_cast, hence stat).
std::string utc_mtime(const std::filesystem::path& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return "at an unknown time";
    std::tm tm{};
    gmtime_r(&st.st_mtime, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Lookups. The index holds a few hundred records at most, so a linear scan is cheap.

const ProviderRecord* IndexSnapshot::find_by_cert_hash(std::string_view sha1_hex) const {
    std::string key;
    for (char c : trim(sha1_hex)) {
        if (c != ':') key.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
    }
    if (!is_hex40(key)) return nullptr;
    // Loaders store lower case, but a snapshot built by hand may not: compare without case.
    for (const ProviderRecord& p : providers)
        for (const std::string& h : p.cert_hashes)
            if (strcasecmp(h.c_str(), key.c_str()) == 0) return &p;
    return nullptr;
}

const ProviderRecord* IndexSnapshot::find_by_domain(std::string_view domain) const {
    std::string key = lower(trim(domain));
    if (!key.empty() && key.back() == '.') key.pop_back();
    if (key.empty()) return nullptr;
    for (const ProviderRecord& p : providers)
        for (const std::string& d : p.managed_domains)
            if (strcasecmp(d.c_str(), key.c_str()) == 0) return &p;
    return nullptr;
}

bool IndexSnapshot::is_certified_address(std::string_view address) const {
    address = trim(address);
    if (address.size() >= 2 && address.front() == '<' && address.back() == '>')
        address = address.substr(1, address.size() - 2);
    std::size_t at = address.rfind('@');
    if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return false;
    return find_by_domain(address.substr(at + 1)) != nullptr;
}

// ---------------------------------------------------------------------------------------------

Result<IndexSnapshot> parse_ldif(std::string_view text, std::string source) {
    auto entries = LdifReader(text, source).read();
    if (!entries) return std::unexpected(entries.error());
    return build_snapshot(*entries, std::move(source));
}

Result<IndexSnapshot> load_ldif(const std::filesystem::path& path, const LdifTrust& trust) {
    auto text = read_file(path);
    if (!text) return std::unexpected(text.error());
    return read_ldif(*text, path, trust);
}

Result<IndexSnapshot> read_ldif(std::string_view bytes, const std::filesystem::path& path,
                                const LdifTrust& trust) {
    if (bytes.size() > kMaxLdifBytes)
        return fail(ErrorKind::corrupt,
                    path.string() + ": larger than " + std::to_string(kMaxLdifBytes) + " bytes");
    if (!looks_like_signed_data(bytes)) {
        if (path.extension() == ".p7m" || !trust.signers.empty())
            return fail(ErrorKind::corrupt,
                        path.string() + ": not signed (PKCS#7), and " +
                            (trust.signers.empty() ? "a .p7m must be"
                                                   : "[index] ldif_signer asks that it be"));
        return parse_ldif(bytes, "ldif:" + path.string());
    }
    const TrustConfig* anchors = trust.anchors;
    if (!anchors || (anchors->ca_files.empty() && anchors->ca_dirs.empty()))
        return fail(ErrorKind::config, path.string() +
                                           " is signed (PKCS#7): its signer is checked against "
                                           "the [trust] anchors, and none are configured");
    auto opened = open_signed_data(bytes, *anchors);
    if (!opened) return std::unexpected(opened.error());
    const VerifyReport& report = opened->report;
    if (!report.ok())
        return fail(report.failure == VerifyFailure::crl_unavailable ? ErrorKind::transient
                                                                     : ErrorKind::corrupt,
                    path.string() + ": signature not valid (" +
                        std::string(to_string(report.failure)) + "): " + report.reason);
    const std::string source =
        "ldif:" + path.string() + " (signed by " + report.signer_subject + ")";
    auto snap = parse_ldif(opened->content, source);
    if (!snap) return snap;
    snap->signed_at = report.signing_time;
    const std::string by = path.string() + ": signed by " + report.signer_subject + " (SHA-1 " +
                           report.signer_cert_sha1 + "), ";
    if (!trust.signers.empty()) {
        if (std::find(trust.signers.begin(), trust.signers.end(), report.signer_cert_sha1) ==
            trust.signers.end())
            return fail(ErrorKind::corrupt, by + "not by a certificate of [index] ldif_signer");
        return snap;
    }
    // Without a named signer only a provider's own record is taken, from that provider.
    if (snap->providers.size() != 1)
        return fail(ErrorKind::config,
                    by + "holds " + std::to_string(snap->providers.size()) +
                        " providers: a signed file of other than one provider's record is read "
                        "only from a signer named by [index] ldif_signer");
    const ProviderRecord& record = snap->providers[0];
    if (std::find(record.cert_hashes.begin(), record.cert_hashes.end(), report.signer_cert_sha1) ==
            record.cert_hashes.end() ||
        std::find(record.certificates.begin(), record.certificates.end(), opened->signer_der) ==
            record.certificates.end())
        return fail(ErrorKind::corrupt,
                    by + "not by a certificate of the provider it describes (" + record.name + ")");
    return snap;
}

std::string provider_record_ldif(const ProviderRecord& p, std::string_view ldif_url) {
    std::string out = "version: 1\n\n";
    append_attr(out, "dn", p.dn);
    append_attr(out, "objectClass", "top");
    append_attr(out, "objectClass", "provider");
    append_provider_attrs(out, p);
    if (!ldif_url.empty()) append_attr(out, "LDIFLocationURL", ldif_url);
    return out;
}

Result<IndexSnapshot> load_ldap(const LdapIndexOptions& options) {
    std::string uri = options.uri;
    while (!uri.empty() && uri.back() == '/') uri.pop_back();
    std::string source = uri + "/" + options.base_dn;

    auto entries = fetch_ldap(options);
    if (!entries) {
        const Error& err = entries.error();
        if (err.kind != ErrorKind::transient) return std::unexpected(err);
        if (options.cache_file.empty())
            return fail(ErrorKind::transient, err.message + " (no cache file configured)");
        std::error_code ec;
        if (!std::filesystem::exists(options.cache_file, ec))
            return fail(ErrorKind::transient,
                        err.message + " (no cache file at " + options.cache_file.string() + ")");
        auto cached = load_ldif(options.cache_file);
        if (!cached)
            return fail(ErrorKind::transient,
                        err.message + "; the cache is unusable too: " + cached.error().message);
        // err.message already starts with the URI.
        cached->source = "ldap-cache:" + options.cache_file.string() + " (written " +
                         utc_mtime(options.cache_file) + "; LDAP unreachable: " + err.message + ")";
        PECD_LOG(warn) << "providers index: LDAP unreachable, using the cache: " << cached->source;
        return cached;
    }

    auto snap = build_snapshot(*entries, source);
    if (!snap) return snap;
    if (!options.cache_file.empty()) {
        // The fresh index is good whether or not the cache can be written; a cache failure only
        // weakens the next outage, so it is logged rather than failing the load.
        if (auto st = write_atomically(options.cache_file, to_ldif(*snap)); !st) {
            PECD_LOG(warn) << "providers index: cannot write the cache: " << st.error().message;
        }
    }
    return snap;
}

}  // namespace pecd::pec
