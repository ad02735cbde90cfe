// Crash and fault harness for the stage chain, run by CTest (and usable by hand):
//
//   crash_harness crash BIN_DIR [messages] [kills]
//     Starts one `pecd <stage>` process per stage, enqueues `messages` distinct messages through
//     pec-enqueue while SIGKILLing a random stage process at random moments and restarting it,
//     at least `kills` times. Then checks that every message reached the outbox exactly once,
//     byte-identical, and that nothing is left claimed, half-written or quarantined.
//
//   crash_harness fault BIN_DIR [messages]
//     Runs the chain with failing fsyncs, writes and renames injected (PECD_FAULTS), checks that
//     nothing is lost and nothing arrives while the fault lasts, then clears the fault and checks
//     that every message arrives exactly once.
#include <sys/stat.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"
#include "tests/support/process.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using pecd::testing::spawn;
using pecd::testing::SpawnOptions;

namespace {

int failures = 0;
#define CHECK(cond, ...)                                 \
    do {                                                 \
        if (!(cond)) {                                   \
            std::fprintf(stderr, "FAILED: %s: ", #cond); \
            std::fprintf(stderr, __VA_ARGS__);           \
            std::fprintf(stderr, "\n");                  \
            ++failures;                                  \
        }                                                \
    } while (0)

struct Setup {
    fs::path dir;
    fs::path conf;
    fs::path bin;
    spool::Spool spool;
};

Setup make_setup(const fs::path& bin, const std::string& name) {
    Setup s;
    s.bin = bin;
    s.dir = fs::temp_directory_path() / (name + "." + std::to_string(::getpid()));
    fs::remove_all(s.dir);
    fs::create_directories(s.dir);
    s.conf = s.dir / "pecd.conf";
    std::ofstream(s.conf)
        << "[spool]\ndirectory = " << (s.dir / "spool").string()
        << "\nmax_message_size = 10M\n[runner]\nrescan_interval = 300ms\n"
           "deferred_scan_interval = 100ms\nbackoff_base = 50ms\nbackoff_max = 200ms\n"
           "max_attempts = 1000\nbatch_size = 32\n";
    int rc = pecd::testing::run({(bin / "pecd").string(), "-c", s.conf.string(), "init"},
                                {.stdout_path = "/dev/null"});
    if (rc != 0) {
        std::fprintf(stderr, "pecd init failed (%d)\n", rc);
        std::exit(1);
    }
    s.spool = spool::Spool(s.dir / "spool");
    return s;
}

// Distinct content per message, sizes from 200 B to ~20 KB, with CRLF and a NUL-free body.
std::string make_message(int seq, std::mt19937& rng) {
    std::ostringstream m;
    m << "From: sender@pec.alpha.test\r\nTo: rcpt@pec.beta.test\r\nSubject: crash " << seq
      << "\r\nX-Crash-Seq: " << seq << "\r\n\r\n";
    int lines = std::uniform_int_distribution<int>(2, 250)(rng);
    for (int i = 0; i < lines; ++i)
        m << "line " << i << " of message " << seq << " " << rng() << "\r\n";
    return m.str();
}

int enqueue(const Setup& s, const std::string& body,
            const std::vector<std::string>& extra_env = {}) {
    fs::path tmp =
        s.dir / ("in." + std::to_string(::getpid()) + "." +
                 std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id())));
    { std::ofstream(tmp, std::ios::binary) << body; }
    int rc =
        pecd::testing::run({(s.bin / "pec-enqueue").string(), "-c", s.conf.string(), "-f",
                            "sender@pec.alpha.test", "-u", "sender", "--", "rcpt@pec.beta.test"},
                           {.env = extra_env, .stdin_path = tmp.string()});
    fs::remove(tmp);
    return rc;
}

size_t count_files(const fs::path& dir) {
    auto names = durable::list_dir(dir);
    return names ? names->size() : 0;
}

// Every message in the outbox exactly once and byte-identical; nothing left anywhere else.
void verify_final_state(const Setup& s, const std::map<int, std::string>& expected) {
    std::map<int, int> seen;
    auto names = durable::list_dir(s.spool.outbox_dir());
    CHECK(names.has_value(), "outbox readable");
    for (const auto& name : *names) {
        fs::path p = s.spool.outbox_dir() / name;
        auto fd = durable::open_file(p, O_RDONLY);
        CHECK(fd.has_value(), "open %s", p.c_str());
        if (!fd) continue;
        auto info = spool::read_header(fd->get(), p.string());
        CHECK(info.has_value(), "outbox file %s readable: %s", name.c_str(),
              info ? "" : info.error().message.c_str());
        if (!info) continue;
        auto body = spool::read_body(fd->get(), *info);
        size_t at = body->find("X-Crash-Seq: ");
        CHECK(at != std::string::npos, "%s carries its sequence number", name.c_str());
        if (at == std::string::npos) continue;
        int seq = std::atoi(body->c_str() + at + 13);
        seen[seq]++;
        auto it = expected.find(seq);
        CHECK(it != expected.end() && it->second == *body, "message %d byte-identical", seq);
        // Deferrals may appear in the history; each stage must have passed the message once.
        std::map<std::string, int> passed;
        for (const auto& h : info->env.history)
            if (h.note.starts_with("-> ")) passed[h.stage]++;
        bool once_each = passed.size() == spool::kStages.size();
        for (const auto& [stage, n] : passed) once_each = once_each && n == 1;
        CHECK(once_each, "message %d passed every stage exactly once", seq);
    }
    size_t missing = 0, duplicated = 0;
    for (const auto& [seq, body] : expected) {
        if (seen[seq] == 0) ++missing;
        if (seen[seq] > 1) ++duplicated;
    }
    CHECK(missing == 0, "%zu message(s) missing", missing);
    CHECK(duplicated == 0, "%zu message(s) duplicated", duplicated);
    CHECK(names->size() == expected.size(), "outbox holds %zu files for %zu messages",
          names->size(), expected.size());
    for (spool::Area area : spool::kAreas)
        for (auto stage : spool::kStages)
            CHECK(count_files(s.spool.area_dir(area, stage)) == 0, "%s/%s is empty",
                  std::string(spool::to_string(area)).c_str(), std::string(stage).c_str());
    CHECK(count_files(s.spool.tmp_dir()) == 0, "tmp/ is empty");
}

bool wait_for_outbox(const Setup& s, size_t want, int seconds) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < deadline) {
        if (count_files(s.spool.outbox_dir()) >= want) {
            bool idle = true;
            for (auto stage : spool::kStages)
                idle = idle && count_files(s.spool.queue_dir(stage)) == 0 &&
                       count_files(s.spool.active_dir(stage)) == 0;
            if (idle) return true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
}

int crash_mode(const fs::path& bin, int messages, int min_kills) {
    Setup s = make_setup(bin, "pecd-crash");
    fs::path log = s.dir / "stages.log";
    std::mutex procs_mutex;
    std::vector<pid_t> procs(spool::kStages.size(), -1);
    auto start_stage = [&](size_t i) {
        procs[i] =
            spawn({(bin / "pecd").string(), "-c", s.conf.string(), std::string(spool::kStages[i])},
                  {.stderr_path = log.string()});
    };
    for (size_t i = 0; i < procs.size(); ++i) start_stage(i);

    std::map<int, std::string> expected;
    std::mt19937 rng(12345);
    for (int i = 0; i < messages; ++i) expected[i] = make_message(i, rng);

    std::atomic<bool> enqueue_done{false};
    std::atomic<int> enqueue_failures{0};
    std::thread producer([&] {
        for (const auto& [seq, body] : expected) {
            // pec-enqueue either commits (0) or defers (75) like Postfix would retry.
            int rc;
            while ((rc = enqueue(s, body)) == 75)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
            if (rc != 0) enqueue_failures++;
        }
        enqueue_done = true;
    });

    int kills = 0;
    std::mt19937 chaos(777);
    auto started = std::chrono::steady_clock::now();
    while (kills < min_kills || !enqueue_done) {
        std::this_thread::sleep_for(
            std::chrono::milliseconds(std::uniform_int_distribution<int>(5, 120)(chaos)));
        size_t victim = std::uniform_int_distribution<size_t>(0, procs.size() - 1)(chaos);
        std::lock_guard lock(procs_mutex);
        ::kill(procs[victim], SIGKILL);
        pecd::testing::wait_exit(procs[victim]);
        ++kills;
        start_stage(victim);
        if (std::chrono::steady_clock::now() - started > std::chrono::minutes(10)) break;
    }
    producer.join();
    std::printf("crash: %d messages enqueued, %d SIGKILLs of stage processes\n", messages, kills);
    bool arrived = wait_for_outbox(s, expected.size(), 300);
    for (pid_t p : procs) pecd::testing::stop_pid(p);
    CHECK(enqueue_failures == 0, "%d enqueue failures", enqueue_failures.load());
    CHECK(kills >= min_kills, "only %d kills", kills);
    CHECK(arrived, "the chain drained within the deadline");
    verify_final_state(s, expected);
    if (failures == 0)
        fs::remove_all(s.dir);
    else
        std::fprintf(stderr, "state kept in %s\n", s.dir.c_str());
    return failures == 0 ? 0 : 1;
}

int fault_mode(const fs::path& bin, int messages) {
    Setup s = make_setup(bin, "pecd-fault");
    std::map<int, std::string> expected;
    std::mt19937 rng(99);
    for (int i = 0; i < messages; ++i) expected[i] = make_message(i, rng);

    // While pec-enqueue's own writes fail it must defer (75) and leave nothing behind.
    for (const char* fault : {"write=ENOSPC", "fsync=EIO", "rename=EIO", "open=EDQUOT"}) {
        int rc = enqueue(s, expected.begin()->second, {std::string("PECD_FAULTS=") + fault});
        CHECK(rc == 75, "pec-enqueue with %s exits 75 (got %d)", fault, rc);
        CHECK(count_files(s.spool.tmp_dir()) == 0, "no temporary left with %s", fault);
        CHECK(count_files(s.spool.queue_dir("classify")) == 0, "nothing queued with %s", fault);
    }
    for (const auto& [seq, body] : expected) CHECK(enqueue(s, body) == 0, "enqueue %d", seq);

    // The stages meet a full disk, failing fsyncs and failing renames: nothing may arrive, and
    // nothing may be lost or quarantined.
    for (const char* fault : {"write=ENOSPC", "fsync=EIO@3", "rename=EIO@5", "open=EMFILE@4"}) {
        int rc =
            pecd::testing::run({(bin / "pecd").string(), "-c", s.conf.string(), "--once", "all"},
                               {.env = {std::string("PECD_FAULTS=") + fault},
                                .stderr_path = (s.dir / "fault.log").string()});
        std::printf("fault: pecd all --once with %s exited %d\n", fault, rc);
        size_t quarantined = 0;
        for (auto stage : spool::kStages)
            quarantined += count_files(s.spool.area_dir(spool::Area::quarantine, stage));
        CHECK(quarantined == 0, "nothing quarantined by a transient fault (%s)", fault);
    }
    CHECK(count_files(s.spool.outbox_dir()) == 0,
          "nothing went through while every write failed (%zu)", count_files(s.spool.outbox_dir()));
    // The fault clears: a normal daemon resumes and everything arrives exactly once.
    pecd::testing::ProcessGuard daemon(
        spawn({(bin / "pecd").string(), "-c", s.conf.string(), "all"},
              {.stderr_path = (s.dir / "resume.log").string()}));
    bool arrived = wait_for_outbox(s, expected.size(), 120);
    for (auto stage : spool::kStages)
        CHECK(count_files(s.spool.area_dir(spool::Area::deferred, stage)) == 0,
              "deferred/%s drained", std::string(stage).c_str());
    daemon = pecd::testing::ProcessGuard();
    CHECK(arrived, "the chain resumed and drained after the fault cleared");
    verify_final_state(s, expected);
    if (failures == 0)
        fs::remove_all(s.dir);
    else
        std::fprintf(stderr, "state kept in %s\n", s.dir.c_str());
    return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s crash|fault BIN_DIR [messages] [kills]\n", argv[0]);
        return 2;
    }
    std::string mode = argv[1];
    fs::path bin = argv[2];
    int messages = argc > 3 ? std::atoi(argv[3]) : (mode == "crash" ? 1000 : 200);
    int kills = argc > 4 ? std::atoi(argv[4]) : 50;
    int rc = mode == "crash" ? crash_mode(bin, messages, kills) : fault_mode(bin, messages);
    std::printf("%s: %s\n", mode.c_str(), rc == 0 ? "PASSED" : "FAILED");
    return rc;
}
