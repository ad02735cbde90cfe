// Spool bench: prints figures, asserts nothing.
//
//   bench_spool BIN_DIR [messages=5000] [size=10240] [big_spool_files=1000000]
//   [enqueue_concurrency=16]
//               [sync=batch|strict]
//
// 1. enqueue rate: `messages` pec-enqueue processes (one per message, as Postfix's pipe(8)
//    runs them), `enqueue_concurrency` at a time, each exiting only once its file is durable;
// 2. full chain: the queued messages through one process per stage (6 hops, every hop durable,
//    group commit), wall time and per-hop CPU cost read from /proc;
// 3. a spool holding `big_spool_files` queue files: time of `pecq summary` and of a restart
//    (recovery + the first message processed).
#include <sys/resource.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/enqueue.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "stages/runner/runner.hpp"
#include "tests/support/process.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}

size_t count_files(const fs::path& dir) {
    auto names = durable::list_dir(dir);
    return names ? names->size() : 0;
}

// utime + stime of a live process, in seconds.
double cpu_seconds(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    size_t close = line.rfind(')');
    std::istringstream rest(line.substr(close + 2));
    std::string field;
    double ticks = 0;
    for (int i = 3; i <= 15 && rest >> field; ++i)
        if (i == 14 || i == 15) ticks += std::stod(field);
    return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr,
                     "usage: %s BIN_DIR [messages] [size] [big_spool_files] [concurrency]\n",
                     argv[0]);
        return 2;
    }
    fs::path bin = argv[1];
    int messages = argc > 2 ? std::atoi(argv[2]) : 5000;
    size_t size = argc > 3 ? std::stoul(argv[3]) : 10240;
    long big = argc > 4 ? std::atol(argv[4]) : 1'000'000;
    int concurrency = argc > 5 ? std::atoi(argv[5]) : 16;
    std::string sync = argc > 6 ? argv[6] : "batch";
    setvbuf(stdout, nullptr, _IOLBF, 0);  // figures survive whatever happens later

    fs::path dir = fs::temp_directory_path() / ("pecd-bench." + std::to_string(::getpid()));
    fs::create_directories(dir);
    fs::path conf = dir / "pecd.conf";
    std::ofstream(conf) << "[spool]\ndirectory = " << (dir / "spool").string()
                        << "\n[runner]\nbatch_size = 128\nrescan_interval = 1s\nsync = " << sync
                        << "\n";
    pecd::testing::run({(bin / "pecd").string(), "-c", conf.string(), "init"},
                       {.stdout_path = "/dev/null"});
    spool::Spool sp(dir / "spool");
    std::string body = "From: a@pec.alpha.test\r\nTo: b@pec.beta.test\r\nSubject: bench\r\n\r\n";
    while (body.size() < size)
        body += "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\r\n";
    body.resize(size);
    fs::path input = dir / "msg.eml";
    std::ofstream(input, std::ios::binary) << body;

    std::printf("pecd spool bench: %d messages of %zu bytes, %u cores, sync = %s, spool on %s\n",
                messages, size, std::thread::hardware_concurrency(), sync.c_str(), dir.c_str());

    // 1. enqueue
    std::atomic<int> next{0}, failed{0};
    auto t0 = Clock::now();
    std::vector<std::thread> producers;
    for (int c = 0; c < concurrency; ++c)
        producers.emplace_back([&] {
            while (next++ < messages)
                if (pecd::testing::run({(bin / "pec-enqueue").string(), "-c", conf.string(), "-f",
                                        "a@pec.alpha.test", "--", "b@pec.beta.test"},
                                       {.stdin_path = input.string()}) != 0)
                    failed++;
        });
    for (auto& t : producers) t.join();
    double enqueue_s = seconds_since(t0);
    std::printf(
        "enqueue: %.0f messages/s (%d pec-enqueue processes, %d at a time, %.2f s, %d failed)\n",
        messages / enqueue_s, messages, concurrency, enqueue_s, failed.load());

    // 1b. the same commit without a process per message: the spool's own cost.
    {
        spool::Spool own(dir / "spool-inproc");
        (void)spool::Spool::open(own.root(), true);
        std::atomic<int> n{0};
        auto t1 = Clock::now();
        std::vector<std::thread> writers;
        for (int c = 0; c < concurrency; ++c)
            writers.emplace_back([&] {
                while (n++ < messages) {
                    durable::Fd in(::open(input.c_str(), O_RDONLY | O_CLOEXEC));
                    spool::Envelope env;
                    env.sender = "a@pec.alpha.test";
                    env.recipients = {"b@pec.beta.test"};
                    if (!spool::enqueue_message(own, env, in.get(), {1 << 30})) failed++;
                }
            });
        for (auto& t : writers) t.join();
        double s = seconds_since(t1);
        std::printf(
            "enqueue in-process: %.0f messages/s (%d threads, same durable commit, no process "
            "spawn)\n",
            messages / s, concurrency);
    }

    // 2. full chain
    std::vector<pid_t> stages;
    t0 = Clock::now();
    for (auto stage : spool::kStages)
        stages.push_back(
            pecd::testing::spawn({(bin / "pecd").string(), "-c", conf.string(), std::string(stage)},
                                 {.stderr_path = (dir / "stages.log").string()}));
    while (count_files(sp.outbox_dir()) < static_cast<size_t>(messages) && seconds_since(t0) < 600)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    double chain_s = seconds_since(t0);
    double cpu_total = 0;
    std::printf(
        "chain: %.0f messages/s through %zu stage processes (%.2f s, every hop durable, group "
        "commit)\n",
        messages / chain_s, stages.size(), chain_s);
    for (size_t i = 0; i < stages.size(); ++i) {
        double cpu = cpu_seconds(stages[i]);
        cpu_total += cpu;
        std::printf("  hop %-9s %7.1f us CPU per message\n", std::string(spool::kStages[i]).c_str(),
                    cpu * 1e6 / messages);
    }
    std::printf("per hop: %.1f us CPU and %.1f us wall per message on average\n",
                cpu_total * 1e6 / messages / stages.size(),
                chain_s * 1e6 / messages / stages.size());
    for (pid_t p : stages) pecd::testing::stop_pid(p);

    // 3. a big spool
    if (big > 0) {
        fs::remove_all(sp.outbox_dir());
        fs::create_directories(sp.outbox_dir());
        std::printf("big spool: writing %ld queue files into queue/deliver ...\n", big);
        t0 = Clock::now();
        spool::Envelope env;
        env.sender = "a@pec.alpha.test";
        env.recipients = {"b@pec.beta.test"};
        std::string small = "Subject: x\r\n\r\nbody\r\n";
        for (long i = 0; i < big; ++i) {
            env.arrival_us = spool::now_us() - (i % 1440) * 60'000'000LL;
            env.id = spool::new_queue_id(env.arrival_us);
            auto fd = spool::write_queue_file(sp.queue_dir("deliver") / env.id, env,
                                              spool::BodySource::from_bytes(small));
            if (!fd) {
                std::printf("big spool: stopped at %ld files: %s\n", i, fd.error().message.c_str());
                big = i;
                break;
            }
        }
        std::printf("big spool: %ld files written in %.1f s\n", big, seconds_since(t0));
        t0 = Clock::now();
        int rc = pecd::testing::run({(bin / "pecq").string(), "-c", conf.string(), "summary"},
                                    {.stdout_path = "/dev/null"});
        std::printf("pecq summary of %ld queue files: %.2f s (exit %d)\n", big, seconds_since(t0),
                    rc);
        // A restart: a handful of claimed files left behind, then the time until recovery is done
        // and the first message has gone through again.
        for (int i = 0; i < 100; ++i) {
            auto id = spool::new_queue_id(spool::now_us());
            env.id = id;
            (void)spool::write_queue_file(sp.active_dir("deliver") / id, env,
                                          spool::BodySource::from_bytes(small));
        }
        t0 = Clock::now();
        pecd::testing::ProcessGuard deliver(
            pecd::testing::spawn({(bin / "pecd").string(), "-c", conf.string(), "deliver"},
                                 {.stderr_path = (dir / "big.log").string()}));
        while (count_files(sp.queue_dir("receipt")) == 0 && seconds_since(t0) < 600)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
        std::printf(
            "restart over %ld queue files: first message through after %.3f s (recovery of 100 "
            "claimed files included)\n",
            big, seconds_since(t0));
    }
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (ec) std::printf("cleanup of %s failed: %s\n", dir.c_str(), ec.message().c_str());
    return 0;
}
