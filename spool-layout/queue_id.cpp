#include "spool-layout/queue_id.hpp"

#include <sys/random.h>

#include <chrono>
#include <cstdio>
#include <random>

namespace pecd::spool {
namespace {

uint64_t random64() {
    // A per-thread generator seeded from the kernel: cheap, and distinct across processes/nodes.
    thread_local std::mt19937_64 engine = [] {
        uint64_t seed[2] = {0, 0};
        if (getrandom(seed, sizeof seed, 0) != sizeof seed)
            seed[0] =
                static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        std::seed_seq seq{seed[0], seed[0] >> 32, seed[1], seed[1] >> 32};
        return std::mt19937_64(seq);
    }();
    return engine();
}

bool is_hex(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

}  // namespace

int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string new_queue_id(int64_t arrival_us) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%013llx.%016llx", static_cast<unsigned long long>(arrival_us),
                  static_cast<unsigned long long>(random64()));
    return buf;
}

std::string derived_queue_id(std::string_view parent, std::string_view tag) {
    std::string id(parent);
    id += '-';
    id += tag;
    return id;
}

bool is_valid_queue_id(std::string_view id) {
    if (id.size() < 30 || id.size() > 160) return false;
    for (size_t i = 0; i < 13; ++i)
        if (!is_hex(id[i])) return false;
    if (id[13] != '.') return false;
    for (size_t i = 14; i < 30; ++i)
        if (!is_hex(id[i])) return false;
    // Derived suffixes: ("-" tag)* with tags of [a-z0-9].
    std::string_view rest = id.substr(30);
    while (!rest.empty()) {
        if (rest.front() != '-') return false;
        rest.remove_prefix(1);
        size_t n = 0;
        while (n < rest.size() && n < 16 &&
               ((rest[n] >= 'a' && rest[n] <= 'z') || (rest[n] >= '0' && rest[n] <= '9')))
            ++n;
        if (n == 0) return false;
        rest.remove_prefix(n);
    }
    return true;
}

std::optional<int64_t> arrival_from_id(std::string_view id) {
    if (id.size() < 14 || id[13] != '.') return std::nullopt;
    int64_t value = 0;
    for (size_t i = 0; i < 13; ++i) {
        char c = id[i];
        if (!is_hex(c)) return std::nullopt;
        value = value * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return value;
}

}  // namespace pecd::spool
