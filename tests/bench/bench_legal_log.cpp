// Legal log write throughput: concurrent stage processes, each appending batches of records with
// one fdatasync per batch (group commit), as the runner does. Prints figures; asserts nothing.
//
//   bench_legal_log [dir] [processes=4] [batches=200] [batch=64]
//
// Two designs are measured on the same disk:
//   per-process : legallog::Writer, one stream (file) per process, O_APPEND + fdatasync per batch
//   shared+flock: one file for all processes; each batch takes an flock, reads the chain head from
//                 the file's tail, appends, fdatasyncs, unlocks (the alternative the design
//                 rejected)
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "spool-layout/durable.hpp"
#include "stages/legallog/legal_log.hpp"

using namespace pecd;
using namespace pecd::legallog;

namespace {

Record make_record(int p, int i) {
    Record r;
    r.time_us = system_now_us();
    r.event = Event::accettazione;
    r.identificativo =
        "opec" + std::to_string(p) + "." + std::to_string(i) + ".20261122@pec.alpha.test";
    r.message_id = "<client" + std::to_string(i) + "@mua.example>";
    r.sender = "mittente@pec.alpha.test";
    r.recipients = {"destinatario@pec.beta.test", "altro@pec.beta.test"};
    r.subject = "Fattura n. " + std::to_string(i) + " del 22/11/2026";
    r.related = {"acc" + std::to_string(i) + "@pec.alpha.test",
                 "busta" + std::to_string(i) + "@pec.alpha.test"};
    r.provider = "Gestore Alpha S.p.A.";
    return r;
}

int per_process_child(const fs::path& dir, int p, int batches, int batch) {
    WriterOptions o;
    o.directory = dir;
    o.node = "bench";
    o.stage = "stage" + std::to_string(p);
    auto w = Writer::open(o);
    if (!w) return 2;
    std::vector<Record> records;
    for (int b = 0; b < batches; ++b) {
        records.clear();
        for (int i = 0; i < batch; ++i) records.push_back(make_record(p, b * batch + i));
        if (!(*w)->append(records) || !(*w)->sync()) return 3;
    }
    return 0;
}

// The rejected alternative, reduced to its I/O: one shared file, chain head read under the lock.
int shared_child(const fs::path& file, int p, int batches, int batch) {
    auto fd = durable::open_file(file, O_RDWR | O_CREAT | O_APPEND, 0640);
    if (!fd) return 2;
    for (int b = 0; b < batches; ++b) {
        if (::flock(fd->get(), LOCK_EX) != 0) return 3;
        struct stat st {};
        ::fstat(fd->get(), &st);
        std::string head(kGenesis);
        if (st.st_size > 0) {
            uint64_t off = st.st_size > 4096 ? st.st_size - 4096 : 0;
            auto tail = durable::pread_exact(fd->get(), off, st.st_size - off);
            if (!tail) return 4;
            std::string_view t(*tail);
            t.remove_suffix(1);
            head = sha256_hex(t.substr(t.rfind('\n') + 1));
        }
        std::string buf;
        for (int i = 0; i < batch; ++i) {
            Record r = make_record(p, b * batch + i);
            std::string line = head + "\t" + std::to_string(r.time_us) + "\t" + r.identificativo +
                               "\t" + r.sender + "\t" + r.subject + "\t" + r.provider;
            head = sha256_hex(line);
            buf += line + "\n";
        }
        if (!durable::write_all(fd->get(), buf) || !durable::sync_data(fd->get())) return 5;
        ::flock(fd->get(), LOCK_UN);
    }
    return 0;
}

double run(const char* name, int procs, int batches, int batch,
           const std::function<int(int)>& child) {
    int go[2];
    if (::pipe(go) != 0) return 0;
    std::vector<pid_t> pids;
    for (int p = 0; p < procs; ++p) {
        pid_t pid = ::fork();
        if (pid == 0) {
            ::close(go[1]);
            char c;
            (void)!::read(go[0], &c, 1);  // start together
            ::_exit(child(p));
        }
        pids.push_back(pid);
    }
    ::close(go[0]);
    auto start = std::chrono::steady_clock::now();
    ::close(go[1]);
    int failures = 0;
    for (pid_t pid : pids) {
        int status = 0;
        ::waitpid(pid, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failures;
    }
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double total = double(procs) * batches * batch;
    std::printf(
        "%-13s %d processes x %d batches x %d records: %.0f records in %.3f s = %.0f records/s, "
        "%.0f fdatasync/s%s\n",
        name, procs, batches, batch, total, secs, total / secs, procs * batches / secs,
        failures ? "  (CHILD FAILURES)" : "");
    return total / secs;
}

}  // namespace

int main(int argc, char** argv) {
    fs::path base = argc > 1 ? fs::path(argv[1]) : fs::path("/tmp/pecd-bench-legallog");
    int procs = argc > 2 ? std::atoi(argv[2]) : 4;
    int batches = argc > 3 ? std::atoi(argv[3]) : 200;
    int batch = argc > 4 ? std::atoi(argv[4]) : 64;
    std::error_code ec;
    fs::remove_all(base, ec);
    fs::create_directories(base / "per-process");
    fs::create_directories(base / "shared");

    double per = run("per-process", procs, batches, batch, [&](int p) {
        return per_process_child(base / "per-process", p, batches, batch);
    });
    run("shared+flock", procs, batches, batch,
        [&](int p) { return shared_child(base / "shared" / "all.log", p, batches, batch); });

    auto t0 = std::chrono::steady_clock::now();
    VerifyOptions vo;
    vo.directory = base / "per-process";
    auto report = verify(vo);
    double vsecs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!report) {
        std::printf("verify failed: %s\n", report.error().message.c_str());
        return 1;
    }
    std::printf("verify: %zu files, %zu records, %s, in %.3f s (%.0f records/s)\n", report->files,
                report->records, report->ok() ? "all chains valid" : "BROKEN CHAIN", vsecs,
                report->records / vsecs);
    std::printf("target >= 20000 records/s durably: %s\n", per >= 20000 ? "met" : "NOT met");
    fs::remove_all(base, ec);
    return report->ok() ? 0 : 1;
}
