// S/MIME throughput and memory bench.
//   bench_smime [--seconds N]
// Prints signs/s and verifies/s (per CPU second, one thread) for a 10 KB PEC-like message (PEM key;
// PKCS#11 too when PECD_BENCH_PKCS11_URI, PECD_BENCH_PKCS11_MODULE and PECD_BENCH_PKCS11_PIN_FILE
// are set, see scripts/bench-smime), `openssl speed -seconds 3 rsa2048` for reference, and the peak
// RSS of signing and verifying a 100 MB message (measured in child processes of this binary).
#include <sys/resource.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>

#include "stages/pec/smime.hpp"
#include "tests/support/crypto_support.hpp"

using namespace pecd::pec;
using namespace pecd::test;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

long peak_rss_kb() {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss;
}

double cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

// Operations per CPU second of this (single-threaded) process, like `openssl speed`, which
// counts CPU time too: the machine is shared, so wall-clock rates would mostly measure the load.
// The wall-clock rate is returned in *wall.
template <class F>
double per_second(double seconds, F&& op, double* wall = nullptr) {
    // Warm-up (first use loads the key, the store, the cache entry).
    if (!op()) return -1;
    long count = 0;
    double cpu_start = cpu_seconds();
    auto start = Clock::now();
    while (cpu_seconds() - cpu_start < seconds) {
        for (int i = 0; i < 16; ++i)
            if (!op()) return -1;
        count += 16;
    }
    if (wall) *wall = count / std::chrono::duration<double>(Clock::now() - start).count();
    return count / (cpu_seconds() - cpu_start);
}

// Sign/s from `openssl speed -seconds 3 rsa2048` ("rsa 2048 bits <t> <t> <sign/s> <verify/s>").
double openssl_speed_signs() {
    auto r = run("openssl speed -seconds 3 rsa2048");
    std::istringstream lines(r.output);
    std::string line;
    while (std::getline(lines, line)) {
        if (!line.starts_with("rsa 2048 bits")) continue;
        std::istringstream fields(line.substr(13));
        std::string sign_time, verify_time;
        double signs = 0;
        if (fields >> sign_time >> verify_time >> signs) return signs;
    }
    std::cerr << "cannot parse openssl speed output:\n" << r.output << "\n";
    return -1;
}

int child_sign_file(const char* in, const char* out) {
    const auto& pki = test_pki();
    auto key = load_pem_key(pki / "alpha.crt", pki / "alpha.key", "");
    if (!key) return 2;
    if (auto ok = sign_entity_file(**key, {}, in, out); !ok) {
        std::cerr << ok.error().message << "\n";
        return 3;
    }
    std::cout << peak_rss_kb() << "\n";
    return 0;
}

int child_verify_file(const char* path) {
    TrustConfig trust;
    trust.ca_files = {test_pki() / "ca.crt"};
    trust.crl_files = {test_pki() / "crl-empty.pem"};
    auto verifier = SmimeVerifier::create(trust);
    if (!verifier) return 2;
    auto report = (*verifier)->verify_file(path, nullptr);
    if (!report || !report->ok()) {
        std::cerr << (report ? report->reason : report.error().message) << "\n";
        return 3;
    }
    std::cout << peak_rss_kb() << "\n";
    return 0;
}

void bench_key(const std::string& label, const SigningKey& key, double seconds,
               double openssl_signs) {
    std::string entity = pec_entity(10 * 1024);
    double wall = 0;
    double signs = per_second(
        seconds, [&] { return sign_entity(key, {}, entity).has_value(); }, &wall);
    std::printf("%-34s %10.1f signs/s", (label + " sign (10 KB)").c_str(), signs);
    if (openssl_signs > 0)
        std::printf("   = %.0f%% of openssl speed", 100.0 * signs / openssl_signs);
    std::printf("   (wall clock: %.1f/s)\n", wall);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 4 && std::string(argv[1]) == "--child-sign")
        return child_sign_file(argv[2], argv[3]);
    if (argc == 3 && std::string(argv[1]) == "--child-verify") return child_verify_file(argv[2]);
    double seconds = 2;
    if (argc == 3 && std::string(argv[1]) == "--seconds") seconds = std::atof(argv[2]);

    const auto& pki = test_pki();
    auto key = load_pem_key(pki / "alpha.crt", pki / "alpha.key", "");
    if (!key) {
        std::cerr << key.error().message << "\n";
        return 1;
    }
    double openssl_signs = openssl_speed_signs();
    std::printf("%-34s %10.1f signs/s\n", "openssl speed -seconds 3 rsa2048", openssl_signs);

    // The same RSA operation without S/MIME around it, measured here under the same load.
    auto pkey = (*key)->private_key();
    if (!pkey) return 1;
    double raw = per_second(seconds, [&] {
        unsigned char md[32] = {1};
        unsigned char sig[512];
        size_t sig_len = sizeof sig;
        EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new(pkey->get(), nullptr);
        bool ok = ctx && EVP_PKEY_sign_init(ctx) == 1 &&
                  EVP_PKEY_CTX_set_signature_md(ctx, EVP_sha256()) == 1 &&
                  EVP_PKEY_sign(ctx, sig, &sig_len, md, sizeof md) == 1;
        EVP_PKEY_CTX_free(ctx);
        return ok;
    });
    std::printf("%-34s %10.1f signs/s\n", "raw RSA-2048 EVP_PKEY_sign", raw);
    bench_key("PEM key", **key, seconds, openssl_signs);

    TrustConfig trust;
    trust.ca_files = {pki / "ca.crt"};
    trust.crl_files = {pki / "crl-empty.pem"};
    auto verifier = SmimeVerifier::create(trust);
    if (!verifier) return 1;
    auto signed_entity = sign_entity(**key, {}, pec_entity(10 * 1024));
    if (!signed_entity) return 1;
    std::string message = with_headers(*signed_entity);
    auto verify_with = [&](const VerifyOptions& options) {
        auto r = (*verifier)->verify(message, nullptr, options);
        return r && r->ok();
    };
    double cached = per_second(seconds, [&] { return verify_with({}); });
    VerifyOptions crypto;
    crypto.chain = ChainCheck::crypto_only;
    double crypto_only = per_second(seconds, [&] { return verify_with(crypto); });
    double cold = per_second(seconds, [&] {
        // A fresh verifier per message: CA/CRL files loaded and the chain built every time.
        auto r = verify_smime(message, trust, nullptr);
        return r && r->ok();
    });
    std::printf("%-34s %10.1f verifies/s\n", "verify, chain + CRL, cached", cached);
    std::printf("%-34s %10.1f verifies/s\n", "verify, crypto only", crypto_only);
    std::printf("%-34s %10.1f verifies/s\n", "verify, chain, cold (new store)", cold);
    auto stats = (*verifier)->cache_stats();
    std::printf("%-34s %zu entries, %zu hits, %zu misses\n", "chain cache", stats.entries,
                stats.hits, stats.misses);

    const char* uri = std::getenv("PECD_BENCH_PKCS11_URI");
    const char* module = std::getenv("PECD_BENCH_PKCS11_MODULE");
    const char* pin_file = std::getenv("PECD_BENCH_PKCS11_PIN_FILE");
    if (uri && module && pin_file) {
        auto hsm = load_pkcs11_key(uri, module, pin_file, "");
        if (!hsm) {
            std::cerr << hsm.error().message << "\n";
            return 1;
        }
        bench_key("PKCS#11 key", **hsm, seconds, openssl_signs);
    } else {
        std::printf("PKCS#11: skipped (run scripts/bench-smime to set up a SoftHSM2 token)\n");
    }

    // 100 MB: generated on disk, then signed and verified by child processes whose peak RSS
    // is not inflated by this process.
    TempDir dir("pecd-bench");
    {
        std::string entity = pec_entity(100 * 1024 * 1024);
        write_file(dir.path() / "big.entity", entity);
    }
    auto t0 = Clock::now();
    auto sign = run(quote(argv[0]) + " --child-sign " + quote(dir.path() / "big.entity") + " " +
                    quote(dir.path() / "big.signed"));
    double sign_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (sign.status != 0) {
        std::cerr << "100 MB signing failed: " << sign.output << "\n";
        return 1;
    }
    std::printf("%-34s %10.1f MB peak RSS, %.2f s\n", "sign 100 MB file-to-file",
                std::atol(sign.output.c_str()) / 1024.0, sign_s);
    write_file(dir.path() / "big.eml", with_headers(read_file(dir.path() / "big.signed")));
    fs::remove(dir.path() / "big.signed");
    t0 = Clock::now();
    auto verify = run(quote(argv[0]) + " --child-verify " + quote(dir.path() / "big.eml"));
    double verify_s = std::chrono::duration<double>(Clock::now() - t0).count();
    if (verify.status != 0) {
        std::cerr << "100 MB verification failed: " << verify.output << "\n";
        return 1;
    }
    std::printf("%-34s %10.1f MB peak RSS (file mapped), %.2f s\n", "verify 100 MB (mmap)",
                std::atol(verify.output.c_str()) / 1024.0, verify_s);
    return 0;
}
