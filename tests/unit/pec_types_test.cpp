#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <ctime>
#include <optional>
#include <string>

#include "stages/pec/types.hpp"

using namespace pecd::pec;

TEST(PecTime, WinterAndSummerOffsetsForRome) {
    // 2026-01-15 12:00:00 UTC -> 13:00:00 +0100
    PecTime winter{std::chrono::system_clock::from_time_t(1768478400)};
    EXPECT_EQ(winter.giorno(), "15/01/2026");
    EXPECT_EQ(winter.ora(), "13:00:00");
    EXPECT_EQ(winter.zona(), "+0100");
    // 2026-07-15 12:00:00 UTC -> 14:00:00 +0200
    PecTime summer{std::chrono::system_clock::from_time_t(1784116800)};
    EXPECT_EQ(summer.ora(), "14:00:00");
    EXPECT_EQ(summer.zona(), "+0200");
    EXPECT_EQ(summer.rfc5322(), "Wed, 15 Jul 2026 14:00:00 +0200");
}

TEST(PecTime, SwitchesAtOneUtcOnLastSundays) {
    // 2026-03-29 is the last Sunday of March: 00:59:59 UTC is winter, 01:00:00 UTC is summer.
    EXPECT_EQ(PecTime{std::chrono::system_clock::from_time_t(1774745999)}.zona(), "+0100");
    EXPECT_EQ(PecTime{std::chrono::system_clock::from_time_t(1774746000)}.zona(), "+0200");
    // 2026-10-25 is the last Sunday of October.
    EXPECT_EQ(PecTime{std::chrono::system_clock::from_time_t(1792889999)}.zona(), "+0200");
    EXPECT_EQ(PecTime{std::chrono::system_clock::from_time_t(1792890000)}.zona(), "+0100");
}

TEST(PecTypes, LiteralsRoundTrip) {
    EXPECT_EQ(to_string(DaticertType::presa_in_carico), "presa-in-carico");
    EXPECT_EQ(daticert_type_from_string("errore-consegna"), DaticertType::errore_consegna);
    EXPECT_FALSE(daticert_type_from_string("bogus").has_value());
    EXPECT_EQ(receipt_kind_from_string("Breve"), ReceiptKind::breve);
    EXPECT_EQ(to_string(DaticertError::no_dominio), "no-dominio");
}

// The calendar arithmetic against glibc with the tz database's Europe/Rome, every 7 h 13 min
// 17 s from 2000 to 2037 (all hours, weekdays, month ends, leap days, both switches).
TEST(PecTime, AgreesWithTheTzDatabaseForEuropeRome) {
    if (::access("/usr/share/zoneinfo/Europe/Rome", R_OK) != 0)
        GTEST_SKIP() << "no tz database to compare with";
    // TZ comes back as it was however the test ends (an ASSERT returns early).
    struct RestoreTz {
        std::optional<std::string> saved;
        ~RestoreTz() {
            if (saved)
                ::setenv("TZ", saved->c_str(), 1);
            else
                ::unsetenv("TZ");
            ::tzset();
        }
    } restore{std::getenv("TZ") ? std::optional<std::string>(std::getenv("TZ")) : std::nullopt};
    ::setenv("TZ", "Europe/Rome", 1);
    ::tzset();
    size_t compared = 0;
    for (time_t t = 946684800; t < 2114380800; t += 7 * 3600 + 13 * 60 + 17) {
        std::tm tm{};
        ASSERT_NE(localtime_r(&t, &tm), nullptr);
        char date[64], zone[8];
        std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S %z", &tm);
        std::strftime(zone, sizeof zone, "%z", &tm);
        PecTime p{std::chrono::system_clock::from_time_t(t)};
        ASSERT_EQ(p.rfc5322(), date) << t;
        ASSERT_EQ(p.zona(), zone) << t;
        char giorno[16];
        std::strftime(giorno, sizeof giorno, "%d/%m/%Y", &tm);
        ASSERT_EQ(p.giorno(), giorno) << t;
        ++compared;
    }
    EXPECT_GT(compared, 44000u);
}
