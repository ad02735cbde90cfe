#include "stages/pec/types.hpp"

#include <strings.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <utility>

namespace pecd::pec {
namespace {

template <class E, size_t N>
std::optional<E> lookup(const std::array<std::pair<E, std::string_view>, N>& table,
                        std::string_view name, bool ignore_case = false) {
    for (const auto& [value, literal] : table) {
        if (literal.size() != name.size()) continue;
        bool same = ignore_case ? strncasecmp(literal.data(), name.data(), name.size()) == 0
                                : literal == name;
        if (same) return value;
    }
    return std::nullopt;
}

template <class E, size_t N>
std::string_view name_of(const std::array<std::pair<E, std::string_view>, N>& table, E value) {
    for (const auto& [v, literal] : table)
        if (v == value) return literal;
    return "?";
}

constexpr std::array<std::pair<MessageType, std::string_view>, 12> kMessageTypes{{
    {MessageType::ordinary, "ordinary"},
    {MessageType::busta_trasporto, "busta-trasporto"},
    {MessageType::busta_anomalia, "busta-anomalia"},
    {MessageType::accettazione, "accettazione"},
    {MessageType::non_accettazione, "non-accettazione"},
    {MessageType::non_accettazione_virus, "non-accettazione-virus"},
    {MessageType::presa_in_carico, "presa-in-carico"},
    {MessageType::avvenuta_consegna, "avvenuta-consegna"},
    {MessageType::errore_consegna, "errore-consegna"},
    {MessageType::preavviso_errore_consegna, "preavviso-errore-consegna"},
    {MessageType::rilevazione_virus, "rilevazione-virus"},
    {MessageType::errore_consegna_virus, "errore-consegna-virus"},
}};

constexpr std::array<std::pair<ReceiptKind, std::string_view>, 3> kReceiptKinds{{
    {ReceiptKind::completa, "completa"},
    {ReceiptKind::breve, "breve"},
    {ReceiptKind::sintetica, "sintetica"},
}};

constexpr std::array<std::pair<DaticertType, std::string_view>, 8> kDaticertTypes{{
    {DaticertType::accettazione, "accettazione"},
    {DaticertType::non_accettazione, "non-accettazione"},
    {DaticertType::presa_in_carico, "presa-in-carico"},
    {DaticertType::avvenuta_consegna, "avvenuta-consegna"},
    {DaticertType::posta_certificata, "posta-certificata"},
    {DaticertType::errore_consegna, "errore-consegna"},
    {DaticertType::preavviso_errore_consegna, "preavviso-errore-consegna"},
    {DaticertType::rilevazione_virus, "rilevazione-virus"},
}};

constexpr std::array<std::pair<DaticertError, std::string_view>, 5> kDaticertErrors{{
    {DaticertError::nessuno, "nessuno"},
    {DaticertError::no_dest, "no-dest"},
    {DaticertError::no_dominio, "no-dominio"},
    {DaticertError::virus, "virus"},
    {DaticertError::altro, "altro"},
}};

// Italian legal time follows the EU rule: summer time (+0200) from 01:00 UTC on the last Sunday
// of March to 01:00 UTC on the last Sunday of October. Computed here so that no process-wide TZ
// setting can change what a receipt says, and with std::chrono's calendar alone: glibc's
// gmtime_r and timegm take one process-wide lock, and every receipt and legal-log record
// formats a time (each once took six such calls).
int64_t last_sunday_utc_0100(std::chrono::year year, unsigned month) {
    using namespace std::chrono;
    sys_days sunday{year / std::chrono::month{month} / Sunday[last]};
    return duration_cast<seconds>(sunday.time_since_epoch()).count() + 3600;
}

int rome_offset_minutes(int64_t utc) {
    using namespace std::chrono;
    year_month_day date{floor<days>(sys_seconds{seconds{utc}})};
    int64_t start = last_sunday_utc_0100(date.year(), 3);  // last Sunday of March
    int64_t end = last_sunday_utc_0100(date.year(), 10);   // last Sunday of October
    return (utc >= start && utc < end) ? 120 : 60;
}

// The broken-down fields of `secs` seconds since the epoch, as gmtime_r gives them.
std::tm utc_fields(int64_t secs) {
    using namespace std::chrono;
    sys_seconds t{seconds{secs}};
    sys_days day = floor<days>(t);
    year_month_day date{day};
    hh_mm_ss time{t - day};
    std::tm tm{};
    tm.tm_year = static_cast<int>(date.year()) - 1900;
    tm.tm_mon = static_cast<int>(static_cast<unsigned>(date.month())) - 1;
    tm.tm_mday = static_cast<int>(static_cast<unsigned>(date.day()));
    tm.tm_hour = static_cast<int>(time.hours().count());
    tm.tm_min = static_cast<int>(time.minutes().count());
    tm.tm_sec = static_cast<int>(time.seconds().count());
    tm.tm_wday = static_cast<int>(weekday{day}.c_encoding());
    tm.tm_yday = static_cast<int>((day - sys_days{date.year() / January / 1}).count());
    return tm;
}

std::tm rome_local(std::chrono::system_clock::time_point t, int* offset_minutes) {
    int64_t utc = std::chrono::floor<std::chrono::seconds>(t).time_since_epoch().count();
    int offset = rome_offset_minutes(utc);
    if (offset_minutes) *offset_minutes = offset;
    return utc_fields(utc + offset * 60);
}

}  // namespace

std::string_view to_string(MessageType type) {
    return name_of(kMessageTypes, type);
}
std::optional<MessageType> message_type_from_string(std::string_view name) {
    return lookup(kMessageTypes, name);
}
std::string_view to_string(ReceiptKind kind) {
    return name_of(kReceiptKinds, kind);
}
std::optional<ReceiptKind> receipt_kind_from_string(std::string_view name) {
    return lookup(kReceiptKinds, name, true);
}
std::string_view to_string(DaticertType type) {
    return name_of(kDaticertTypes, type);
}
std::optional<DaticertType> daticert_type_from_string(std::string_view literal) {
    return lookup(kDaticertTypes, literal);
}
std::string_view to_string(DaticertError error) {
    return name_of(kDaticertErrors, error);
}
std::optional<DaticertError> daticert_error_from_string(std::string_view literal) {
    return lookup(kDaticertErrors, literal);
}
std::string_view to_string(RecipientKind kind) {
    return kind == RecipientKind::certificato ? "certificato" : "esterno";
}

std::string PecTime::giorno() const {
    std::tm tm = rome_local(instant, nullptr);
    char buf[48];
    std::snprintf(buf, sizeof buf, "%02d/%02d/%04d", tm.tm_mday, tm.tm_mon + 1, tm.tm_year + 1900);
    return buf;
}

std::string PecTime::ora() const {
    std::tm tm = rome_local(instant, nullptr);
    char buf[48];
    std::snprintf(buf, sizeof buf, "%02d:%02d:%02d", tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

std::string PecTime::zona() const {
    int offset = 0;
    rome_local(instant, &offset);
    char buf[24];
    std::snprintf(buf, sizeof buf, "+%02d%02d", offset / 60, offset % 60);
    return buf;
}

std::string PecTime::rfc5322() const {
    int offset = 0;
    std::tm tm = rome_local(instant, &offset);
    char date[64];
    std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S", &tm);  // C locale names
    char buf[80];
    std::snprintf(buf, sizeof buf, "%s +%02d%02d", date, offset / 60, offset % 60);
    return buf;
}

}  // namespace pecd::pec
