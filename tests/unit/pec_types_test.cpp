#include <gtest/gtest.h>

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
