#include "stages/pec/identificativo.hpp"

#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace pecd::pec {
namespace {

constexpr size_t kTimeLen = 14;    // yyyymmddhhmmss
constexpr size_t kPidLen = 5;      // base36 of pid_max (4194304) fits in 5
constexpr size_t kCounterLen = 8;  // base36 counter, wrapped at 36^8 (never within one second)
constexpr size_t kRandomLen = 12;  // 48 bits, hex
constexpr uint64_t kCounterWrap = 2821109907456ULL;  // 36^8

std::string base36(uint64_t v) {
    static constexpr char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    std::string out;
    do {
        out.insert(out.begin(), digits[v % 36]);
        v /= 36;
    } while (v);
    return out;
}

bool is_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

bool plausible_domain(const std::string& d) {
    if (d.empty() || d.front() == '.' || d.back() == '.' || d.find("..") != std::string::npos)
        return false;
    for (char c : d)
        if (!is_alnum(c) && c != '.' && c != '-') return false;
    return true;
}

}  // namespace

Result<std::unique_ptr<IdentificativoGenerator>> IdentificativoGenerator::create(
    std::string mail_domain, std::string node) {
    if (!plausible_domain(mail_domain))
        return fail(ErrorKind::config,
                    "identificativo: invalid provider mail domain '" + mail_domain + "'");
    if (node.empty()) {
        char host[256] = {};
        if (gethostname(host, sizeof host - 1) == 0) node = host;
    }
    std::string clean;
    for (char c : node)
        if (is_alnum(c) && clean.size() < kMaxNode) clean += static_cast<char>(std::tolower(c));
    if (clean.empty()) clean = "node";
    size_t worst = kTimeLen + 1 + clean.size() + 1 + kPidLen + 1 + kCounterLen + 1 + kRandomLen +
                   1 + mail_domain.size();
    if (worst > kMaxLength)
        return fail(ErrorKind::config, "identificativo: mail domain '" + mail_domain +
                                           "' is too long: identifiers could exceed " +
                                           std::to_string(kMaxLength) + " characters");
    return std::unique_ptr<IdentificativoGenerator>(
        new IdentificativoGenerator(std::move(mail_domain), std::move(clean)));
}

IdentificativoGenerator::IdentificativoGenerator(std::string domain, std::string node)
    : domain_(std::move(domain)), node_(std::move(node)) {
    std::random_device rd;
    std::seed_seq seq{rd(), rd(), rd(), rd(), rd(), rd()};
    rng_.seed(seq);
}

std::string IdentificativoGenerator::next() {
    uint64_t count = counter_.fetch_add(1, std::memory_order_relaxed) % kCounterWrap;
    uint64_t random = 0;
    {
        std::lock_guard lock(rng_mutex_);
        random = rng_() & 0xFFFFFFFFFFFFULL;
    }
    time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
    std::tm tm{};
    gmtime_r(&now, &tm);
    char stamp[32];
    std::snprintf(stamp, sizeof stamp, "%04d%02d%02d%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    char rnd[16];
    std::snprintf(rnd, sizeof rnd, "%012llx", static_cast<unsigned long long>(random));
    // getpid() per call: a generator created before a fork() must not repeat the parent's ids.
    std::string pid = base36(static_cast<uint64_t>(getpid()));
    return std::string(stamp) + "." + node_ + "." + pid + "." + base36(count) + "." + rnd + "@" +
           domain_;
}

}  // namespace pecd::pec
