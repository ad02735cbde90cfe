// pecd: runs one stage (`pecd wrap`), every stage in one process (`pecd all`), creates the spool
// (`pecd init`) or checks the configuration (`pecd check-config`).
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "spool-layout/queue_admin.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/config.hpp"
#include "stages/common/http.hpp"
#include "stages/common/log.hpp"
#include "stages/provider/refresh.hpp"
#include "stages/provider/timeouts.hpp"
#include "stages/registry.hpp"
#include "stages/runner/runner.hpp"
#include "stages/runner/settings.hpp"
#include "stages/scheduler/scheduler.hpp"

using namespace pecd;

namespace {

int check_config(const Config& config) {
    int problems = 0;
    for (const auto& p : config.problems()) {
        std::fprintf(stderr, "%s:%d: %s\n", config.source().c_str(), p.line, p.message.c_str());
        ++problems;
    }
    auto report = [&](const Error& e) {
        std::fprintf(stderr, "%s\n", e.message.c_str());
        ++problems;
    };
    if (auto s = runner::spool_settings(config); !s) report(s.error());
    if (auto r = runner::runner_options(config); !r) report(r.error());
    if (legal_log_configured(config)) {
        if (auto l = legallog::settings(config); !l) report(l.error());
        // Checked here, not by settings(): a typo in the TSA's URL must not stop the stages from
        // logging, only the seal (which then fails and says why).
        if (auto v = config.find("legallog", "tsa_url"); v && !v->value.empty())
            if (auto ok = http::check_url(v->value, "TSA"); !ok)
                report(Error{ErrorKind::config, config.source() + ":" + std::to_string(v->line) +
                                                    ": [legallog] tsa_url: " + ok.error().message});
    }
    // The provider sections: every problem with its line, then whether everything loads.
    for (const auto& p : check_stage_config(config)) {
        std::fprintf(stderr, "%s:%d: %s\n", config.source().c_str(), p.line, p.message.c_str());
        ++problems;
    }
    if (!provider::provider_configured(config))
        std::printf("%s: no [provider] section: the stages pass messages along unchanged\n",
                    config.source().c_str());
    if (!config.keys("scheduler").empty()) {
        std::filesystem::path directory;
        if (auto o = scheduler::scheduler_options(config, directory); !o) report(o.error());
    }
    if (problems == 0) std::printf("%s: OK\n", config.source().c_str());
    return problems == 0 ? 0 : 1;
}

// Drains every stage, in order, until a whole round moves nothing (for cron and path units).
int run_once(std::vector<std::unique_ptr<runner::StageRunner>>& runners) {
    std::atomic<bool> stop{false};
    while (true) {
        size_t moved = 0;
        for (auto& r : runners) {
            auto released = r->release_due_deferred();
            if (!released) PECD_LOG(error) << r->stage() << ": " << released.error().message;
            auto n = r->drain(stop);
            if (!n) {
                PECD_LOG(error) << r->stage() << ": " << n.error().message;
                return 75;
            }
            moved += *n;
        }
        if (moved == 0) return 0;
    }
}

// `pecd scheduler`: runs due tasks of the [scheduler] directory (shared by several nodes, each
// running its own scheduler); --once runs one pass.
int run_scheduler(const Config& config, bool once) {
    std::filesystem::path directory;
    auto options = scheduler::scheduler_options(config, directory);
    if (!options) {
        std::fprintf(stderr, "pecd: %s\n", options.error().message.c_str());
        return 78;
    }
    auto store = scheduler::TaskStore::open(directory, /*create=*/true);
    if (!store) {
        std::fprintf(stderr, "pecd: %s\n", store.error().message.c_str());
        return 75;
    }
    scheduler::Scheduler sched(std::move(*store), *options);
    auto commands = scheduler::configured_commands(config);
    sched.register_op("command", scheduler::command_handler(std::move(commands), {}));
    if (auto timers = provider::register_timeout_ops(sched, config); !timers) {
        std::fprintf(stderr, "pecd: %s\n", timers.error().message.c_str());
        return timers.error().kind == ErrorKind::config ? 78 : 75;
    }
    auto periodic =
        scheduler::ensure_periodic_tasks(sched.store(), config, options->node, sched.now());
    if (!periodic) {
        std::fprintf(stderr, "pecd: %s\n", periodic.error().message.c_str());
        return periodic.error().kind == ErrorKind::config ? 78 : 75;
    }
    if (once) {
        auto pass = sched.run_due(sched.now());
        if (!pass) {
            std::fprintf(stderr, "pecd: scheduler: %s\n", pass.error().message.c_str());
            return 75;
        }
        return 0;
    }
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::atomic<bool> stop{false};
    std::thread loop([&] { (void)sched.run(stop); });
    PECD_LOG(info) << "scheduler " << options->node << " running on " << directory.string();
    while (true) {
        int sig = 0;
        sigwait(&signals, &sig);
        if (sig != SIGHUP) break;
    }
    stop = true;
    sched.wake();
    loop.join();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"pecd: PEC provider engine stage daemons"};
    std::string config_file, what;
    bool once = false, debug = false;
    app.add_option("-c,--config", config_file,
                   "configuration file (default $PECD_CONFIG or /etc/pecd/pecd.conf)");
    app.add_flag("--once", once, "drain the queues and exit (cron, systemd path units)");
    app.add_flag("--debug", debug, "debug logging on stderr");
    app.add_option("what", what,
                   "a stage (classify wrap verify deliver receipt outbound), all, scheduler, init, "
                   "check-config, reload, refresh-index, refresh-crl or index-record")
        ->required();
    // index-record: this provider's IGPEC record, to publish at its LDIFLocationURL.
    std::string record_out, record_url, record_receipt;
    std::vector<std::string> next_certs;
    bool record_plain = false;
    const std::vector<CLI::Option*> record_only{
        app.add_option("--out", record_out,
                       "index-record: write the record here (default or '-': stdout)"),
        app.add_option("--url", record_url, "index-record: its LDIFLocationURL"),
        app.add_option("--mail-receipt", record_receipt,
                       "index-record: mailReceipt (default posta-certificata@<mail_domain>)"),
        app.add_option("--next-cert", next_certs,
                       "index-record: a renewed certificate (PEM) to list beside the current one"),
        app.add_flag("--plain", record_plain, "index-record: plain LDIF, not signed")};
    CLI11_PARSE(app, argc, argv);
    // An option of index-record given to another command would be ignored without a word.
    if (what != "index-record")
        for (const CLI::Option* option : record_only)
            if (option->count() > 0) {
                std::fprintf(stderr, "pecd: %s is an option of index-record only\n",
                             option->get_name().c_str());
                return 64;  // EX_USAGE
            }
    if (record_out == "-") record_out.clear();
    // A peer that goes away mid-write (a TLS alert, an SMTP or LMTP server) is an error to
    // handle, not a signal that ends the process: OpenSSL writes with write(2).
    ::signal(SIGPIPE, SIG_IGN);

    log::set_program("pecd " + what);
    if (debug) log::set_level(log::Level::debug);
    if (auto f = durable::faults_from_env(); !f) {
        std::fprintf(stderr, "pecd: PECD_FAULTS: %s\n", f.error().message.c_str());
        return 2;
    }
    auto config = Config::load(runner::config_path(config_file));
    if (!config) {
        std::fprintf(stderr, "pecd: %s\n", config.error().message.c_str());
        return 78;  // EX_CONFIG
    }
    if (what == "check-config") return check_config(*config);
    for (const auto& p : config->problems())
        PECD_LOG(warn) << config->source() << ":" << p.line << ": " << p.message;
    if (what == "scheduler") return run_scheduler(*config, once);
    if (what == "index-record") {
        provider::IndexRecordOptions record_options{record_url, record_receipt, {}, !record_plain};
        for (const auto& c : next_certs) record_options.next_certs.emplace_back(c);
        auto record = provider::index_record(*config, record_options);
        if (!record) {
            std::fprintf(stderr, "pecd index-record: %s\n", record.error().message.c_str());
            return record.error().kind == ErrorKind::config      ? 78
                   : record.error().kind == ErrorKind::transient ? 75
                                                                 : 1;
        }
        if (record_out.empty()) {
            if (!record_plain && ::isatty(STDOUT_FILENO)) {
                std::fprintf(stderr,
                             "pecd index-record: the signed record is binary (DER): "
                             "give --out FILE, or redirect stdout\n");
                return 64;
            }
            return std::fwrite(record->data(), 1, record->size(), stdout) == record->size() &&
                           std::fflush(stdout) == 0
                       ? 0
                       : 74;
        }
        if (auto st = durable::write_file_atomic(record_out, *record); !st) {
            std::fprintf(stderr, "pecd index-record: %s\n", st.error().message.c_str());
            return 73;
        }
        // Published data, for the web server that serves it at LDIFLocationURL.
        if (::chmod(record_out.c_str(), 0644) != 0) {
            std::fprintf(stderr, "pecd index-record: chmod %s: %s\n", record_out.c_str(),
                         std::strerror(errno));
            return 73;
        }
        std::printf("%s: this provider's IGPEC record, %s\n", record_out.c_str(),
                    record_plain ? "plain LDIF" : "signed (DER .p7m)");
        return 0;
    }

    auto settings = runner::spool_settings(*config);
    auto options = runner::runner_options(*config);
    if (!settings || !options) {
        std::fprintf(stderr, "pecd: %s\n",
                     (!settings ? settings.error() : options.error()).message.c_str());
        return 78;
    }
    auto spool = spool::Spool::open(settings->root, /*create=*/true);
    if (!spool) {
        std::fprintf(stderr, "pecd: %s\n", spool.error().message.c_str());
        return 75;
    }
    if (what == "init") {
        std::printf("spool ready at %s\n", spool->root().c_str());
        return 0;
    }
    // Upkeep commands, run by the scheduler as periodic command tasks or by hand. Exit 75 on a
    // transient failure so that the scheduler retries, 78 on a configuration problem.
    if (what == "reload" || what == "refresh-index" || what == "refresh-crl") {
        if (what != "reload") {
            auto done = what == "refresh-index" ? provider::refresh_index(*config)
                                                : provider::refresh_crls(*config);
            if (!done) {
                std::fprintf(stderr, "pecd %s: %s\n", what.c_str(), done.error().message.c_str());
                return done.error().kind == ErrorKind::transient ? 75
                       : done.error().kind == ErrorKind::config  ? 78
                                                                 : 1;
            }
            std::printf("%s\n", done->c_str());
        }
        auto signalled = provider::signal_reload(*spool);
        if (!signalled) {
            std::fprintf(stderr, "pecd %s: %s\n", what.c_str(), signalled.error().message.c_str());
            return 75;
        }
        std::printf("%zu running pecd process(es) told to reload\n", *signalled);
        return 0;
    }

    std::vector<std::string> stages;
    if (what == "all")
        stages.assign(spool::kStages.begin(), spool::kStages.end());
    else if (spool::is_stage(what))
        stages.push_back(what);
    else {
        std::fprintf(stderr, "pecd: unknown stage '%s'\n", what.c_str());
        return 64;
    }

    // Block the signals before any thread starts so that only sigwait below receives them.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    auto context = make_stage_context(*config);
    if (!context) {
        std::fprintf(stderr, "pecd: %s\n", context.error().message.c_str());
        return 78;
    }
    std::vector<spool::StageLock> locks;
    std::vector<std::unique_ptr<runner::StageRunner>> runners;
    for (const auto& stage : stages) {
        auto lock = spool::StageLock::acquire(*spool, stage, /*wait=*/false);
        if (!lock) {
            if (once && lock.error().kind == ErrorKind::conflict) {
                PECD_LOG(info) << lock.error().message << "; nothing to do";
                continue;
            }
            std::fprintf(stderr, "pecd: %s\n", lock.error().message.c_str());
            return 75;
        }
        locks.push_back(std::move(*lock));
        auto fn = make_stage_function(stage, *context);
        if (!fn) {
            std::fprintf(stderr, "pecd: %s\n", fn.error().message.c_str());
            return 78;
        }
        auto r = std::make_unique<runner::StageRunner>(*spool, stage, std::move(*fn), *options);
        // The stage's legal-log stream, opened under the stage lock (one writer per stream).
        auto legal_log = open_legal_log(*config, stage);
        if (!legal_log) {
            std::fprintf(stderr, "pecd: %s: legal log: %s\n", stage.c_str(),
                         legal_log.error().message.c_str());
            return legal_log.error().kind == ErrorKind::config ? 78 : 75;
        }
        r->set_legal_log(std::move(*legal_log));
        if (stage == spool::kStages.front())
            if (auto cleaned = spool::clean_stale_tmp(*spool); cleaned && *cleaned > 0)
                PECD_LOG(info) << "removed " << *cleaned
                               << " temporary files of dead pec-enqueue runs";
        if (auto st = r->recover(); !st) {
            std::fprintf(stderr, "pecd: %s: recovery failed: %s\n", stage.c_str(),
                         st.error().message.c_str());
            return 75;
        }
        runners.push_back(std::move(r));
    }
    if (once) return run_once(runners);

    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;
    for (auto& r : runners)
        threads.emplace_back([&r, &stop] {
            // "pecd/deliver" in top -H, ps -L and perf: which stage uses the CPU.
            std::string name = "pecd/" + r->stage();
            pthread_setname_np(pthread_self(), name.substr(0, 15).c_str());
            if (auto st = r->run(stop); !st)
                PECD_LOG(error) << r->stage() << ": " << st.error().message;
        });
    PECD_LOG(info) << "running " << runners.size() << " stage(s) on " << spool->root().string();
    while (true) {
        int sig = 0;
        sigwait(&signals, &sig);
        if (sig == SIGHUP) {
            // A new provider (keys, index, templates, trust, policy) is built beside the running
            // one and swapped in; messages in hand finish with the snapshot they started with.
            // [spool] and [runner] changes need a restart.
            auto fresh = Config::load(config->source());
            Status reloaded = fresh ? reload_stage_context(*context, *fresh)
                                    : Status(std::unexpected(fresh.error()));
            if (reloaded)
                PECD_LOG(info) << "SIGHUP: configuration reloaded from " << config->source();
            else
                PECD_LOG(error) << "SIGHUP: reload failed, keeping the running configuration: "
                                << reloaded.error().message;
            continue;
        }
        PECD_LOG(info) << "signal " << sig << ": finishing the batch in hand";
        break;
    }
    stop = true;
    for (auto& r : runners) r->wake();
    for (auto& t : threads) t.join();
    // The legal log's files are closed (close line, fdatasync) so that they can be sealed; a
    // --once run leaves them open for the next run to continue.
    int rc = 0;
    for (auto& r : runners)
        if (auto st = r->close_legal_log("shutdown"); !st) {
            PECD_LOG(error) << r->stage() << ": legal log: " << st.error().message;
            rc = 75;
        }
    return rc;
}
