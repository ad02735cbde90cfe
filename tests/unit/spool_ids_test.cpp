// Queue ids: format, uniqueness across threads, ordering by arrival, derived ids, validation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "spool-layout/queue_id.hpp"

using namespace pecd::spool;

TEST(spoolQueueId, NewIdsAreValidAndWellFormed) {
    int64_t now = now_us();
    for (int i = 0; i < 1000; ++i) {
        std::string id = new_queue_id(now + i);
        ASSERT_EQ(id.size(), 30u) << id;
        EXPECT_TRUE(is_valid_queue_id(id)) << id;
        EXPECT_EQ(id[13], '.');
        for (size_t k = 0; k < id.size(); ++k) {
            if (k == 13) continue;
            char c = id[k];
            EXPECT_TRUE((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) << id;
        }
    }
}

TEST(spoolQueueId, NowIsMicrosecondsSinceEpoch) {
    int64_t a = now_us();
    int64_t seconds = static_cast<int64_t>(::time(nullptr));
    EXPECT_NEAR(static_cast<double>(a) / 1e6, static_cast<double>(seconds), 2.0);
    EXPECT_LE(a, now_us());
}

TEST(spoolQueueId, ArrivalRoundTrips) {
    for (int64_t t :
         {int64_t{0}, int64_t{1}, int64_t{15}, int64_t{16}, now_us(), int64_t{0x0fffffffffffff}}) {
        std::string id = new_queue_id(t);
        auto back = arrival_from_id(id);
        ASSERT_TRUE(back.has_value()) << id;
        EXPECT_EQ(*back, t) << id;
        // Derived ids keep the parent's arrival.
        auto derived = arrival_from_id(derived_queue_id(id, "r1"));
        ASSERT_TRUE(derived.has_value());
        EXPECT_EQ(*derived, t);
    }
}

TEST(spoolQueueId, ArrivalFromGarbageIsEmpty) {
    EXPECT_FALSE(arrival_from_id("").has_value());
    EXPECT_FALSE(arrival_from_id("short").has_value());
    EXPECT_FALSE(arrival_from_id("0000000000000x0000000000000000").has_value());
    EXPECT_FALSE(arrival_from_id("000000000000G.0000000000000000").has_value());
    EXPECT_FALSE(arrival_from_id("000000000000A.0000000000000000").has_value()) << "uppercase";
    EXPECT_FALSE(arrival_from_id("../../etc/passwd").has_value());
}

TEST(spoolQueueId, SortsByArrival) {
    // Lexicographic order of ids (what a sorted directory listing gives) is arrival order.
    std::vector<int64_t> times = {0,
                                  1,
                                  9,
                                  10,
                                  15,
                                  16,
                                  255,
                                  256,
                                  4095,
                                  4096,
                                  1'700'000'000'000'000,
                                  1'700'000'000'000'001,
                                  now_us(),
                                  now_us() + 3'600'000'000};
    std::sort(times.begin(), times.end());
    std::vector<std::string> ids;
    for (int64_t t : times) ids.push_back(new_queue_id(t));
    for (size_t i = 1; i < ids.size(); ++i)
        EXPECT_LT(ids[i - 1], ids[i]) << times[i - 1] << " vs " << times[i];
    // And ids made in sequence at real arrival times come out ordered.
    std::vector<std::string> seq;
    for (int i = 0; i < 200; ++i) {
        int64_t t = now_us();
        while (now_us() == t) {
        }  // distinct microseconds
        seq.push_back(new_queue_id(now_us()));
    }
    EXPECT_TRUE(std::is_sorted(seq.begin(), seq.end()));
}

TEST(spoolQueueId, UniqueAcrossThreadsEvenAtTheSameArrival) {
    constexpr int kThreads = 4;
    constexpr int kPerThread = 50'000;
    std::vector<std::vector<std::string>> made(kThreads);
    int64_t same_time = now_us();
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&, t] {
            made[t].reserve(kPerThread);
            for (int i = 0; i < kPerThread; ++i)
                // Half the ids share one arrival time: uniqueness must come from the random part.
                made[t].push_back(new_queue_id(i % 2 ? same_time : now_us()));
        });
    for (auto& th : threads) th.join();
    std::unordered_set<std::string> all;
    for (const auto& v : made)
        for (const auto& id : v) {
            ASSERT_TRUE(is_valid_queue_id(id)) << id;
            EXPECT_TRUE(all.insert(id).second) << "duplicate id " << id;
        }
    EXPECT_EQ(all.size(), static_cast<size_t>(kThreads * kPerThread));
    // The random parts must differ between threads too (per-thread generators seeded apart).
    std::unordered_set<std::string> suffixes;
    for (const auto& v : made) suffixes.insert(v.front().substr(14));
    EXPECT_EQ(suffixes.size(), static_cast<size_t>(kThreads));
}

TEST(spoolQueueId, DerivedIdsAreValidAndDeterministic) {
    std::string parent = new_queue_id(now_us());
    for (std::string_view tag : {"acc", "r3", "0", "a", "abcdefghijklmnop", "z9z9"}) {
        std::string d = derived_queue_id(parent, tag);
        EXPECT_TRUE(is_valid_queue_id(d)) << d;
        EXPECT_TRUE(d.starts_with(parent));
        EXPECT_EQ(d, derived_queue_id(parent, tag)) << "must be deterministic";
        EXPECT_EQ(d, parent + "-" + std::string(tag));
    }
    // Derived of derived is still valid, and distinct tags give distinct ids.
    std::string dd = derived_queue_id(derived_queue_id(parent, "r1"), "acc");
    EXPECT_TRUE(is_valid_queue_id(dd)) << dd;
    EXPECT_NE(derived_queue_id(parent, "r1"), derived_queue_id(parent, "r2"));
}

TEST(spoolQueueId, DerivedWithBadTagsIsRejectedByValidation) {
    std::string parent = new_queue_id(now_us());
    for (std::string_view tag :
         {"", "ABC", "a_b", "a.b", "a/b", "abcdefghijklmnopq", "../x", " "}) {
        EXPECT_FALSE(is_valid_queue_id(derived_queue_id(parent, tag))) << "tag '" << tag << "'";
    }
}

TEST(spoolQueueId, InvalidIdsRejected) {
    std::string good = new_queue_id(now_us());
    ASSERT_TRUE(is_valid_queue_id(good));
    std::string upper = good;
    for (auto& c : upper)
        if (c >= 'a' && c <= 'f') c = static_cast<char>(c - 'a' + 'A');
    if (upper == good) upper[0] = 'A';  // make sure the test has an uppercase letter in it
    std::string bad_dot = good;
    bad_dot[13] = '-';
    std::string too_long_suffix = good + "-" + std::string(200, 'a');
    std::string long_but_valid_tags = good;
    while (long_but_valid_tags.size() + 17 <= 160)
        long_but_valid_tags += "-" + std::string(16, 'a');
    ASSERT_TRUE(is_valid_queue_id(long_but_valid_tags)) << long_but_valid_tags.size();
    std::string over_160 = long_but_valid_tags;
    while (over_160.size() <= 160) over_160 += "-a";

    for (const std::string& bad :
         std::vector<std::string>{"",
                                  "../x",
                                  "..",
                                  ".",
                                  "/",
                                  "x",
                                  good.substr(0, 29),
                                  good.substr(0, 14),
                                  upper,
                                  bad_dot,
                                  good + "-",
                                  good + "--a",
                                  good + "-A",
                                  good + "_a",
                                  good + ".out",
                                  good + ".out.tmp",
                                  good + ".defer.tmp",
                                  good + ".reason",
                                  good + "/x",
                                  "../" + good,
                                  good.substr(0, 27) + "/..",
                                  std::string(13, 'g') + "." + std::string(16, '0'),
                                  std::string(13, '0') + "." + std::string(15, '0') + "g",
                                  std::string(13, '0') + "." + std::string(15, '0') + ".",
                                  too_long_suffix,
                                  over_160,
                                  std::string("0000000000000.00000000000000\0"
                                              "00",
                                              30),
                                  " " + good.substr(1)}) {
        EXPECT_FALSE(is_valid_queue_id(bad)) << "'" << bad << "'";
    }
}
