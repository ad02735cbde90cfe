// Provider bench: prints figures, asserts nothing.
//
//   bench_provider [messages=500] [size=2048] [mta_concurrency=8] [dir=/tmp]
//
// Two providers as scripts/demo runs them (alpha and beta, each a `pecd all` on its own spool
// with the embedded services: Maildir, outbox directory, EICAR scanner, the test PKI and an
// LDIF index), and this process playing the MTAs: it submits `messages` certified messages from
// mario@pec.alpha.test to anna@pec.beta.test (as pec-enqueue does, durable before it returns)
// and relays each outbox file to the provider of its recipients (durable in the peer's spool
// before the outbox file goes). Every hop is durable: spool stages with group commit, Maildir
// deliveries and outbox hand-overs published with their batch's flush, and each stage's legal
// log (as a provider runs it).
// Figure: messages/s from the first submission to the last receipt in the sender's mailbox
// (accettazione + avvenuta consegna for each, and the presa in carico in alpha's service mailbox),
// beside `openssl speed -multi 2 -seconds 3 rsa2048` of the same run, and ratio = RSA-2048
// signatures/s / messages/s. A message costs four signatures (accettazione, busta, presa in carico,
// avvenuta consegna) and three verifications.
// Environment: BENCH_DEBUG=1 (batch log), BENCH_KEEP=1 (keep the run's directory), BENCH_AV=none
// (no antivirus), BENCH_WRAP="/usr/bin/valgrind --tool=callgrind" (each daemon under a profiler).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/enqueue.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "tests/support/process.hpp"
#include "tests/support/provider_net.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using Clock = std::chrono::steady_clock;

namespace {

const fs::path kBin = fs::path(PECD_BINARY_DIR) / "bin";

size_t count_files(const fs::path& dir) {
    auto names = durable::list_dir(dir);
    return names ? names->size() : 0;
}

// pec-enqueue's durable commit, from bytes.
Result<std::string> enqueue(const spool::Spool& spool, const std::string& sender,
                            const std::vector<std::string>& rcpts, const std::string& user,
                            std::string_view body) {
    int fd = ::memfd_create("msg", MFD_CLOEXEC);
    if (fd < 0) return fail(ErrorKind::transient, "memfd_create");
    if (::write(fd, body.data(), body.size()) != static_cast<ssize_t>(body.size()) ||
        ::lseek(fd, 0, SEEK_SET) != 0) {
        ::close(fd);
        return fail(ErrorKind::transient, "memfd write");
    }
    spool::Envelope env;
    env.sender = sender;
    env.recipients = rcpts;
    env.user = user;
    env.client = "127.0.0.1";
    auto id = spool::enqueue_message(spool, std::move(env), fd, {});
    ::close(fd);
    return id;
}

// The MTAs: one outbox file to the spool of its recipients' provider, then unlinked.
size_t relay_one(const spool::Spool& from, const std::string& name, const spool::Spool& alpha,
                 const spool::Spool& beta) {
    fs::path path = from.outbox_dir() / name;
    auto info = spool::read_header(path);
    auto file = durable::read_file(path);
    if (!info || !file) return 0;
    std::string body = file->substr(info->body_offset(), info->body_size);
    std::vector<std::string> to_alpha, to_beta;
    for (const auto& r : info->env.recipients)
        (provider::domain_of(r) == "pec.alpha.test" ? to_alpha : to_beta).push_back(r);
    for (auto [spool, rcpts] : {std::pair{&alpha, &to_alpha}, std::pair{&beta, &to_beta}})
        if (!rcpts->empty())
            if (auto id = enqueue(*spool, info->env.sender, *rcpts, "", body); !id) {
                std::fprintf(stderr, "relay: %s\n", id.error().message.c_str());
                return 0;  // left in the outbox, retried on the next pass
            }
    fs::remove(path);
    return 1;
}

// The MTAs' delivery agents: `workers` threads that live for the whole run (as Postfix's
// pipe(8) processes do), each taking its share of every round's outbox files. Threads made
// per round would cost the machine thousands of clone/munmap calls the MTAs never make.
class RelayPool {
  public:
    RelayPool(size_t workers, const spool::Spool& alpha, const spool::Spool& beta)
        : alpha_(alpha), beta_(beta) {
        // At least one, or a round with files would wait for ever.
        for (size_t w = 0; w < std::max<size_t>(workers, 1); ++w)
            threads_.emplace_back([this] { work(); });
    }
    ~RelayPool() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& t : threads_) t.join();
    }
    // Relays every outbox file of both providers; returns how many went.
    size_t round() {
        std::vector<std::pair<const spool::Spool*, std::string>> items;
        for (const spool::Spool* from : {&alpha_, &beta_})
            if (auto names = durable::list_dir(from->outbox_dir()))
                for (auto& n : *names)
                    if (spool::is_valid_queue_id(n)) items.emplace_back(from, std::move(n));
        if (items.empty()) return 0;
        std::unique_lock lock(mutex_);
        items_ = std::move(items);
        next_ = 0;
        finished_ = 0;
        moved_ = 0;
        ++generation_;
        wake_.notify_all();
        done_.wait(lock, [this] { return finished_ == items_.size(); });
        return moved_;
    }

  private:
    void work() {
        uint64_t seen = 0;
        std::unique_lock lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
            if (stopping_) return;
            seen = generation_;
            while (next_ < items_.size()) {
                auto [from, name] = items_[next_++];
                lock.unlock();
                size_t moved = relay_one(*from, name, alpha_, beta_);
                lock.lock();
                moved_ += moved;
                if (++finished_ == items_.size()) done_.notify_one();
            }
        }
    }

    const spool::Spool& alpha_;
    const spool::Spool& beta_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    std::vector<std::pair<const spool::Spool*, std::string>> items_;
    size_t next_ = 0, finished_ = 0, moved_ = 0;
    uint64_t generation_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

// utime + stime of a live process (or of one thread: "<pid>/task/<tid>"), in seconds.
double cpu_seconds(const std::string& proc) {
    std::ifstream stat("/proc/" + proc + "/stat");
    std::string line;
    std::getline(stat, line);
    size_t close = line.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i)
        if (i == 14 || i == 15) ticks += std::stod(field);
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// "rsa 2048 bits 0.000127s 0.000004s 7905.1 266666.7" -> 7905.1 (sign/s of all processes).
double openssl_rsa2048_signs() {
    FILE* p = ::popen("openssl speed -multi 2 -seconds 3 rsa2048 2>/dev/null", "r");
    if (!p) return 0;
    char line[512];
    double signs = 0;
    while (std::fgets(line, sizeof line, p)) {
        std::string l(line);
        if (!l.starts_with("rsa 2048 bits")) continue;
        std::istringstream in(l.substr(13));
        std::string sign_time, verify_time;
        in >> sign_time >> verify_time >> signs;
    }
    ::pclose(p);
    return signs;
}

}  // namespace

int main(int argc, char** argv) {
    const size_t messages = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 500;
    const size_t size = argc > 2 ? std::strtoul(argv[2], nullptr, 10) : 2048;
    const size_t workers = argc > 3 ? std::strtoul(argv[3], nullptr, 10) : 8;
    const auto& pki = test::test_pki();
    // [dir]: where the spools and mailboxes go (default /tmp); /dev/shm shows the figure without
    // the storage's fsync latency.
    const std::string base = argc > 4 ? argv[4] : "/tmp";
    std::string tmpl = base + "/pecd-bench-provider-XXXXXX";
    if (!::mkdtemp(tmpl.data())) {
        std::fprintf(stderr, "mkdtemp %s failed\n", tmpl.c_str());
        return 1;
    }
    const fs::path root = tmpl;
    struct Cleanup {
        fs::path dir;
        ~Cleanup() {
            std::error_code ec;
            if (!std::getenv("BENCH_KEEP")) fs::remove_all(dir, ec);
        }
    } cleanup{root};
    test::write_file(root / "index.ldif", test::test_ldif());
    // BENCH_AV=none: without the built-in EICAR scanner (what the antivirus costs).
    const std::string antivirus = std::getenv("BENCH_AV") ? std::getenv("BENCH_AV") : "eicar";
    std::vector<pecd::testing::ProcessGuard> daemons;
    std::vector<spool::Spool> spools;
    for (std::string p : {"alpha", "beta"}) {
        fs::path dir = root / p;
        fs::create_directories(dir);
        std::string domain = "pec." + p + ".test";
        test::write_file(dir / "pecd.conf",
                         "[spool]\ndirectory = spool\n[runner]\nrescan_interval = 500ms\n"
                         "deferred_scan_interval = 200ms\n[provider]\nname = Gestore " +
                             p + " S.p.A.\nmail_domain = " + domain + "\ndomains = " + domain +
                             "\ntemplates = " PECD_SOURCE_DIR
                             "/conf/templates\n"
                             "virus_store = virus\nnode = " +
                             p + "\n[keys]\ncert = " + (pki / (p + ".crt")).string() +
                             "\nkey = " + (pki / (p + ".key")).string() +
                             "\n[trust]\nca_files = " + (pki / "ca.crt").string() +
                             "\ncrl_files = " + (pki / "crl-empty.pem").string() +
                             "\n[index]\nsource = ldif\nldif = ../index.ldif\n"
                             "[mailbox]\nmaildir = mail\n[antivirus]\ntype = " +
                             antivirus +
                             "\n"
                             "[legallog]\ndirectory = legallog\nnode = " +
                             p + "\n");
        for (const char* box : {"posta-certificata", "mario", "anna"})
            if (auto st = provider::create_maildir(dir / "mail", std::string(box) + "@" + domain);
                !st) {
                std::fprintf(stderr, "%s\n", st.error().message.c_str());
                return 1;
            }
        if (pecd::testing::run(
                {(kBin / "pecd").string(), "-c", (dir / "pecd.conf").string(), "init"},
                {{}, "", "/dev/null", ""}) != 0)
            return 1;
        auto spool = spool::Spool::open(dir / "spool", false);
        if (!spool) return 1;
        spools.push_back(*spool);
    }
    std::string body = "Fattura in allegato.\r\n";
    while (body.size() < size) body += "Riga di testo della fattura, dettagli e importi.\r\n";
    std::printf(
        "bench_provider: %zu messages of %zu bytes, mario@pec.alpha.test -> "
        "anna@pec.beta.test, MTA concurrency %zu\n",
        messages, body.size(), workers);
    // BENCH_DEBUG=1: the daemons log each batch (size, time) into <dir>/<provider>.log.
    for (std::string p : {"alpha", "beta"}) {
        std::vector<std::string> argv{(kBin / "pecd").string(), "-c",
                                      (root / p / "pecd.conf").string(), "all"};
        if (std::getenv("BENCH_DEBUG")) argv.insert(argv.begin() + 1, "--debug");
        // BENCH_WRAP="valgrind --tool=callgrind": run each daemon under a profiler.
        if (const char* wrap = std::getenv("BENCH_WRAP")) {
            std::istringstream words(wrap);
            std::vector<std::string> prefix{std::istream_iterator<std::string>(words), {}};
            argv.insert(argv.begin(), prefix.begin(), prefix.end());
        }
        daemons.emplace_back(
            pecd::testing::spawn(argv, {{}, "", "", (root / (p + ".log")).string()}));
    }

    const fs::path mario = root / "alpha/mail/pec.alpha.test/mario/new";
    const fs::path service = root / "alpha/mail/pec.alpha.test/posta-certificata/new";
    const fs::path anna = root / "beta/mail/pec.beta.test/anna/new";
    auto start = Clock::now();
    // Submissions as concurrent pec-enqueue runs would make them.
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::vector<std::thread> submitters;
    for (size_t w = 0; w < workers; ++w)
        submitters.emplace_back([&] {
            for (size_t i = next++; i < messages; i = next++) {
                std::string msg = test::client_message("mario@pec.alpha.test", "anna@pec.beta.test",
                                                       "", "Fattura " + std::to_string(i), body);
                auto id = enqueue(spools[0], "mario@pec.alpha.test", {"anna@pec.beta.test"},
                                  "mario", msg);
                if (!id) {
                    std::fprintf(stderr, "submit: %s\n", id.error().message.c_str());
                    failed = true;
                }
            }
        });
    for (auto& t : submitters) t.join();
    if (failed) return 1;
    double submit_s = std::chrono::duration<double>(Clock::now() - start).count();
    auto deadline = Clock::now() + std::chrono::minutes(10);
    // How long the MTAs were busy relaying: near the whole run, they are the bottleneck.
    double relay_s = 0;
    size_t rounds = 0;
    RelayPool relays(workers, spools[0], spools[1]);
    while (Clock::now() < deadline) {
        auto round_start = Clock::now();
        ++rounds;
        size_t moved = relays.round();
        if (count_files(mario) >= 2 * messages && count_files(service) >= messages) break;
        relay_s += std::chrono::duration<double>(Clock::now() - round_start).count();
        if (moved == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    double total_s = std::chrono::duration<double>(Clock::now() - start).count();
    double alpha_cpu = cpu_seconds(std::to_string(daemons[0].pid())),
           beta_cpu = cpu_seconds(std::to_string(daemons[1].pid()));
    // Per stage thread (named pecd/<stage>): where each provider's CPU went.
    std::string per_stage[2];
    for (int i = 0; i < 2; ++i) {
        const std::string pid = std::to_string(daemons[i].pid());
        std::error_code ec;
        for (const auto& task : fs::directory_iterator("/proc/" + pid + "/task", ec)) {
            std::ifstream comm(task.path() / "comm");
            std::string name;
            std::getline(comm, name);
            if (!name.starts_with("pecd/")) continue;
            double s = cpu_seconds(pid + "/task/" + task.path().filename().string());
            char figure[64];
            std::snprintf(figure, sizeof figure, " %s %.2f", name.c_str() + 5, s);
            per_stage[i] += figure;
        }
    }
    // Which allocator the daemons run with (PECD_TCMALLOC): it shows in the CPU figures.
    std::string allocator = "glibc malloc";
    {
        std::ifstream maps("/proc/" + std::to_string(daemons[0].pid()) + "/maps");
        for (std::string line; std::getline(maps, line);)
            if (line.find("libtcmalloc") != std::string::npos) allocator = "tcmalloc";
    }
    for (auto& d : daemons) pecd::testing::stop_pid(d.release());
    size_t got_mario = count_files(mario), got_service = count_files(service),
           got_anna = count_files(anna);
    std::printf(
        "submitted in %.2f s; mario %zu receipts (want %zu), anna %zu buste, alpha service "
        "%zu prese in carico\n",
        submit_s, got_mario, 2 * messages, got_anna, got_service);
    if (got_mario < 2 * messages || got_service < messages) {
        std::printf("INCOMPLETE after %.1f s\n", total_s);
        return 1;
    }
    double rate = static_cast<double>(messages) / total_s;
    std::printf("CPU: pecd alpha %.2f s, beta %.2f s (%.1f ms per message for both; %s)\n",
                alpha_cpu, beta_cpu, 1000 * (alpha_cpu + beta_cpu) / static_cast<double>(messages),
                allocator.c_str());
    std::printf("CPU by stage (s): alpha%s; beta%s\n", per_stage[0].c_str(), per_stage[1].c_str());
    struct rusage self {};
    ::getrusage(RUSAGE_SELF, &self);
    auto seconds = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6;
    };
    std::printf("CPU: the MTAs (this process: submissions, relays, durable enqueues) %.2f s\n",
                seconds(self.ru_utime) + seconds(self.ru_stime));
    std::printf("MTA relays busy %.2f s of the run (%zu rounds)\n", relay_s, rounds);
    std::printf("end to end: %.2f s, %.1f messages/s (%.1f signatures/s by the providers)\n",
                total_s, rate, 4 * rate);
    double rsa = openssl_rsa2048_signs();
    std::printf("openssl speed -multi 2 -seconds 3 rsa2048: %.1f sign/s\n", rsa);
    std::printf("ratio RSA-2048 signs/s / messages/s = %.1f (target <= 20)\n", rsa / rate);
    return 0;
}
