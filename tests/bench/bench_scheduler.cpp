// Scheduler bench: prints figures, asserts nothing.
//
//   bench_scheduler [dir=/tmp/pecd-bench-scheduler] [pending=1000000] [ops=5000]
//
// 1. tasks created/s, one durable schedule() each (index, data and directory fsyncs per task),
//    and in group commits of 100 (one syncfs per batch);
// 2. tasks cancelled/s (index lookup, unlink, directory fsync);
// 3. tasks fired/s: `ops` due tasks claimed by rename, run (empty handler) and removed, with one
//    fsync of claimed/ per pass;
// 4. `pending` tasks spread over the next 24 h plus 1,000 due: the time to find the due ones
//    (directories listed, files read) and to fire them, and the resident memory meanwhile.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "spool-layout/queue_id.hpp"
#include "stages/scheduler/scheduler.hpp"
#include "stages/scheduler/task_store.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using namespace pecd::scheduler;
using SteadyClock = std::chrono::steady_clock;

namespace {

double seconds_since(SteadyClock::time_point t) {
    return std::chrono::duration<double>(SteadyClock::now() - t).count();
}

long max_rss_kib() {
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

Task make(std::string key, int64_t due) {
    Task t;
    t.key = std::move(key);
    t.due_us = due;
    t.op = "noop";
    t.set_arg("identificativo", "opec.20261122.0001@pec.alpha.test");
    t.set_arg("recipient", "bob@pec.beta.test");
    return t;
}

int die(const Error& e) {
    std::fprintf(stderr, "bench_scheduler: %s\n", e.message.c_str());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // figures appear as they come
    fs::path dir = argc > 1 ? argv[1] : "/tmp/pecd-bench-scheduler";
    size_t pending = argc > 2 ? std::stoul(argv[2]) : 1'000'000;
    size_t ops = argc > 3 ? std::stoul(argv[3]) : 5000;
    std::error_code ec;
    fs::remove_all(dir, ec);
    auto opened = TaskStore::open(dir, true);
    if (!opened) return die(opened.error());
    SchedulerOptions options;
    options.node = "bench";
    Scheduler sched(std::move(*opened), options);
    sched.register_simple_op("noop", [](const Task&) -> Status { return {}; });
    TaskStore& store = sched.store();
    const int64_t now = spool::now_us();
    const int64_t day = 86400LL * 1'000'000;
    std::printf("task directory %s; %zu ops per step; %zu pending for the scan\n", dir.c_str(), ops,
                pending);

    // 1. Creation, one durable task per call, then in group commits of 100.
    auto t = SteadyClock::now();
    for (size_t i = 0; i < ops; ++i)
        if (auto st = store.schedule(
                make(timer_key("timeout12", "m" + std::to_string(i), "r"), now + day / 2), "bench");
            !st)
            return die(st.error());
    double single = seconds_since(t);
    std::printf("created  %8.0f tasks/s  (schedule() each durable: %zu in %.2fs)\n", ops / single,
                ops, single);
    t = SteadyClock::now();
    for (size_t i = 0; i < ops; i += 100) {
        std::vector<Task> batch;
        for (size_t j = i; j < i + 100 && j < ops; ++j)
            batch.push_back(make(timer_key("timeout24", "m" + std::to_string(j), "r"), now + day));
        if (auto st = store.schedule(batch, "bench"); !st) return die(st.error());
    }
    double grouped = seconds_since(t);
    std::printf("created  %8.0f tasks/s  (groups of 100, one syncfs each: %zu in %.2fs)\n",
                ops / grouped, ops, grouped);

    // 2. Cancellation by key: no scan.
    t = SteadyClock::now();
    for (size_t i = 0; i < ops; ++i)
        if (auto st = store.cancel(timer_key("timeout12", "m" + std::to_string(i), "r")); !st)
            return die(st.error());
    double cancelled = seconds_since(t);
    std::printf("cancelled %7.0f tasks/s  (%zu in %.2fs)\n", ops / cancelled, ops, cancelled);
    if (auto n = store.cancel_prefix("timeout24."); !n) return die(n.error());

    // 3. Firing: due tasks claimed, run, removed.
    for (size_t i = 0; i < ops; i += 1000) {
        std::vector<Task> batch;
        for (size_t j = i; j < i + 1000 && j < ops; ++j)
            batch.push_back(
                make("fire." + std::to_string(j), now - static_cast<int64_t>(j % 60) * 1'000'000));
        if (auto st = store.schedule(batch, "bench"); !st) return die(st.error());
    }
    t = SteadyClock::now();
    auto pass = sched.run_due(spool::now_us());
    if (!pass) return die(pass.error());
    double fired = seconds_since(t);
    std::printf("fired    %8.0f tasks/s  (%zu in %.2fs, one pass)\n", pass->succeeded / fired,
                pass->succeeded, fired);

    // 4. A big backlog, most of it in the future, and the cost of finding what is due.
    t = SteadyClock::now();
    for (size_t i = 0; i < pending; i += 1000) {
        std::vector<Task> batch;
        for (size_t j = i; j < i + 1000 && j < pending; ++j)
            batch.push_back(
                make("future." + std::to_string(j),
                     now + 3600LL * 1'000'000 +
                         static_cast<int64_t>(j) * (day / static_cast<int64_t>(pending))));
        if (auto st = store.schedule(batch, "bench"); !st) return die(st.error());
    }
    double filled = seconds_since(t);
    std::vector<Task> due;
    for (size_t j = 0; j < 1000; ++j)
        due.push_back(
            make("due." + std::to_string(j), now - static_cast<int64_t>(j % 120) * 1'000'000));
    if (auto st = store.schedule(due, "bench"); !st) return die(st.error());
    std::printf("filled   %zu future tasks over 24 h in %.1fs (%.0f tasks/s, groups of 1000)\n",
                pending, filled, pending / filled);
    long rss_before = max_rss_kib();
    t = SteadyClock::now();
    ScanStats stats;
    size_t found = 0;
    if (auto st = store.for_each_due(spool::now_us(), stats,
                                     [&](const DueEntry&) { return ++found, true; });
        !st)
        return die(st.error());
    double scan = seconds_since(t);
    std::printf("find due %zu among %zu pending: %.2f ms (%llu buckets listed, %llu files read)\n",
                found, pending + found, scan * 1000,
                static_cast<unsigned long long>(stats.buckets_listed),
                static_cast<unsigned long long>(stats.files_read));
    t = SteadyClock::now();
    pass = sched.run_due(spool::now_us());
    if (!pass) return die(pass.error());
    double fire_due = seconds_since(t);
    std::printf("fire     %zu due among %zu pending: %.2f ms\n", pass->succeeded, pending,
                fire_due * 1000);
    t = SteadyClock::now();
    pass = sched.run_due(spool::now_us());
    if (!pass) return die(pass.error());
    std::printf("idle pass over %zu pending: %.2f ms (%llu buckets listed)\n", pending,
                seconds_since(t) * 1000,
                static_cast<unsigned long long>(pass->scan.buckets_listed));
    std::printf("max RSS  %ld KiB before the scan, %ld KiB after\n", rss_before, max_rss_kib());
    t = SteadyClock::now();
    fs::remove_all(dir, ec);
    std::printf("(removed the directory in %.1fs)\n", seconds_since(t));
    return 0;
}
