// PEC msgid (identificativo) generator, DECISIONS #11.
//
// Format: <utc yyyymmddhhmmss>.<node>.<pid base36>.<counter base36>.<12 hex random>@<mail domain>
// e.g. 20261122113512.mx1.1f4k.2s.9c0e41a7b3d2@pec.example.it
//  * node (letters and digits of the configured node name, at most 12) separates cluster nodes;
//  * pid + per-process counter separate processes and messages on one node;
//  * the UTC second separates restarts (a pid is not reused within the same second in practice),
//    and the 48 random bits cover the remaining corner (same second, same reused pid).
// Only letters, digits and dots before '@'; at most 100 characters, checked when the generator is
// created (the worst case, not the typical one, must fit). The same generator also mints the fresh
// Message-ID of receipts, which must differ from the identificativo they refer to.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "stages/common/result.hpp"

namespace pecd::pec {

class IdentificativoGenerator {
  public:
    static constexpr size_t kMaxLength = 100;
    static constexpr size_t kMaxNode = 12;

    // `node` defaults to the host name when empty. Config error if the domain is not a plausible
    // mail domain or is too long for the worst-case identificativo to stay within 100 characters.
    static Result<std::unique_ptr<IdentificativoGenerator>> create(std::string mail_domain,
                                                                   std::string node = {});

    IdentificativoGenerator(const IdentificativoGenerator&) = delete;
    IdentificativoGenerator& operator=(const IdentificativoGenerator&) = delete;

    std::string next();  // thread-safe
    const std::string& domain() const { return domain_; }
    const std::string& node() const { return node_; }

  private:
    IdentificativoGenerator(std::string domain, std::string node);

    std::string domain_;
    std::string node_;
    std::atomic<uint64_t> counter_{0};
    std::mutex rng_mutex_;
    std::mt19937_64 rng_;
};

}  // namespace pecd::pec
