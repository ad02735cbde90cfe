// pecq: inspect and administer the pecd spool (think postqueue -p, qshape, postcat, postsuper).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <thread>

#include "spool-layout/queue_admin.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/common/config.hpp"
#include "stages/common/json.hpp"
#include "stages/legallog/legal_log.hpp"
#include "stages/legallog/seal.hpp"
#include "stages/pec/inspect.hpp"
#include "stages/runner/settings.hpp"
#include "stages/scheduler/scheduler.hpp"

using namespace pecd;

namespace {

std::string age_text(int64_t arrival_us, int64_t now) {
    int64_t s = (now - arrival_us) / 1'000'000;
    if (s < 0) s = 0;
    char buf[32];
    if (s < 120)
        std::snprintf(buf, sizeof buf, "%llds", static_cast<long long>(s));
    else if (s < 7200)
        std::snprintf(buf, sizeof buf, "%lldm", static_cast<long long>(s / 60));
    else if (s < 172800)
        std::snprintf(buf, sizeof buf, "%lldh", static_cast<long long>(s / 3600));
    else
        std::snprintf(buf, sizeof buf, "%lldd", static_cast<long long>(s / 86400));
    return buf;
}

void write_envelope(json::Writer& w, const spool::Envelope& env) {
    w.key("id").value(env.id).key("arrival_us").value(env.arrival_us);
    w.key("sender").value(env.sender);
    w.key("recipients").begin_array();
    for (const auto& r : env.recipients) w.value(r);
    w.end_array();
    w.key("user").value(env.user).key("client").value(env.client);
    w.key("attempts").value(env.attempts).key("next_attempt_us").value(env.next_attempt_us);
    w.key("last_error").value(env.last_error);
    w.key("history").begin_array();
    for (const auto& h : env.history)
        w.begin_object()
            .key("stage")
            .value(h.stage)
            .key("at_us")
            .value(h.at_us)
            .key("note")
            .value(h.note)
            .end_object();
    w.end_array();
    w.key("attrs").begin_object();
    for (const auto& [k, v] : env.attrs) w.key(k).value(v);
    w.end_object();
}

int fail_with(const Error& e) {
    std::fprintf(stderr, "pecq: %s\n", e.message.c_str());
    return e.kind == ErrorKind::not_found ? 3 : 1;
}

// `pecq log`: the legal log needs no spool, only its directory (--dir or [legallog] directory).
struct LogArgs {
    std::string dir, id, sender, recipient, since, until, ca, tsa_url, retention, max_seal_delay;
    bool json = false;
};

int run_log(const std::string& config_file, LogArgs& a, bool verify, bool seal, bool expire) {
    legallog::Settings settings;
    if (a.dir.empty() || (seal && a.tsa_url.empty()) || (expire && a.retention.empty())) {
        auto config = Config::load(runner::config_path(config_file));
        if (!config) return fail_with(config.error());
        auto s = legallog::settings(*config);
        if (!s) return fail_with(s.error());
        settings = *s;
    }
    std::filesystem::path dir = a.dir.empty() ? settings.directory : std::filesystem::path(a.dir);
    if (verify) {
        legallog::VerifyOptions opts;
        opts.directory = dir;
        opts.ca_file = a.ca;
        if (!a.max_seal_delay.empty()) {
            auto delay = parse_duration(a.max_seal_delay);
            if (!delay) return fail_with(delay.error());
            opts.max_seal_delay = std::chrono::duration_cast<std::chrono::microseconds>(*delay);
        }
        auto report = legallog::verify(opts);
        if (!report) return fail_with(report.error());
        if (a.json) {
            json::Writer w;
            w.begin_object()
                .key("ok")
                .value(report->ok())
                .key("files")
                .value(uint64_t(report->files));
            w.key("records")
                .value(uint64_t(report->records))
                .key("sealed")
                .value(uint64_t(report->sealed));
            w.key("awaiting_seal")
                .value(uint64_t(report->unsealed_closed))
                .key("seal_overdue")
                .value(uint64_t(report->seal_overdue))
                .key("open")
                .value(uint64_t(report->open));
            w.key("problems").begin_array();
            for (const auto& p : report->problems)
                w.begin_object()
                    .key("file")
                    .value(p.file.string())
                    .key("line")
                    .value(uint64_t(p.line))
                    .key("message")
                    .value(p.message)
                    .end_object();
            w.end_array().end_object();
            std::printf("%s\n", w.str().c_str());
        } else {
            for (const auto& p : report->problems)
                std::printf("%s:%zu: %s\n", p.file.c_str(), p.line, p.message.c_str());
            std::printf(
                "%zu file(s), %zu record(s), %zu sealed, %zu closed awaiting a seal, %zu open: "
                "%s%s\n",
                report->files, report->records, report->sealed, report->unsealed_closed,
                report->open, report->ok() ? "OK" : "BAD",
                a.ca.empty() && report->sealed ? " (signatures not checked: no --ca)" : "");
        }
        return report->ok() ? 0 : 1;
    }
    if (seal) {
        legallog::SealOptions opts;
        opts.directory = dir;
        opts.tsa_url = a.tsa_url.empty() ? settings.tsa_url : a.tsa_url;
        opts.tsa_ca = a.ca.empty() ? settings.tsa_ca : std::filesystem::path(a.ca);
        auto report = legallog::seal_pending(opts);
        if (!report) return fail_with(report.error());
        for (const auto& f : report->closed) std::printf("closed:  %s\n", f.c_str());
        for (const auto& f : report->sealed) std::printf("sealed:  %s\n", f.c_str());
        for (const auto& f : report->pending) std::printf("pending: %s\n", f.c_str());
        if (!report->pending.empty())
            std::fprintf(stderr, "pecq: %s\n", report->last_error.c_str());
        return report->pending.empty() ? 0 : 1;
    }
    if (expire) {
        legallog::Retention retention = settings.retention;
        if (!a.retention.empty()) {
            auto r = legallog::parse_retention(a.retention);
            if (!r) return fail_with(r.error()), 2;
            retention = *r;
        }
        auto report = legallog::remove_expired(dir, retention, legallog::system_now_us());
        if (!report) return fail_with(report.error());
        for (const auto& f : report->removed) std::printf("removed: %s\n", f.c_str());
        return 0;
    }
    legallog::Query q;
    q.id = a.id;
    q.sender = a.sender;
    q.recipient = a.recipient;
    if (!a.since.empty()) {
        auto t = legallog::parse_time_arg(a.since, false);
        if (!t) return fail_with(t.error()), 2;
        q.since_us = *t;
    }
    if (!a.until.empty()) {
        auto t = legallog::parse_time_arg(a.until, true);
        if (!t) return fail_with(t.error()), 2;
        q.until_us = *t;
    }
    auto found = legallog::search(dir, q);
    if (!found) return fail_with(found.error());
    if (a.json) {
        json::Writer w;
        w.begin_array();
        for (const auto& f : *found) {
            const auto& r = f.record;
            w.begin_object().key("time_us").value(r.time_us).key("time").value(r.legal_time);
            w.key("event")
                .value(legallog::to_string(r.event))
                .key("identificativo")
                .value(r.identificativo);
            w.key("message_id")
                .value(r.message_id)
                .key("sender")
                .value(r.sender)
                .key("recipients")
                .begin_array();
            for (const auto& x : r.recipients) w.value(x);
            w.end_array().key("subject").value(r.subject).key("related").begin_array();
            for (const auto& x : r.related) w.value(x);
            w.end_array()
                .key("provider")
                .value(r.provider)
                .key("node")
                .value(r.node)
                .key("stage")
                .value(r.stage);
            w.key("detail")
                .value(r.detail)
                .key("file")
                .value(f.file.filename().string())
                .key("line")
                .value(uint64_t(f.line));
            w.end_object();
        }
        w.end_array();
        std::printf("%s\n", w.str().c_str());
        return 0;
    }
    for (const auto& f : *found) {
        const auto& r = f.record;
        std::string rcpts;
        for (const auto& x : r.recipients) rcpts += (rcpts.empty() ? "" : ",") + x;
        std::printf("%s  %-16s %s  %s -> %s  \"%s\"", r.legal_time.c_str(),
                    std::string(legallog::to_string(r.event)).c_str(), r.identificativo.c_str(),
                    r.sender.empty() ? "<>" : r.sender.c_str(), rcpts.c_str(), r.subject.c_str());
        if (!r.related.empty()) {
            std::string rel;
            for (const auto& x : r.related) rel += (rel.empty() ? "" : ",") + x;
            std::printf("  related: %s", rel.c_str());
        }
        if (!r.detail.empty()) std::printf("  (%s)", r.detail.c_str());
        std::printf("  [%s/%s %s:%zu]\n", r.node.c_str(), r.stage.c_str(),
                    f.file.filename().c_str(), f.line);
    }
    std::printf("-- %zu record(s)\n", found->size());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"pecq: inspect and administer the pecd spool"};
    app.require_subcommand(1);
    std::string config_file;
    app.add_option("-c,--config", config_file, "configuration file");

    bool as_json = false;
    std::string area_name, stage_name;
    auto* list = app.add_subcommand(
        "list", "list queued messages (id, age, size, sender, recipients, stage, last error)");
    list->add_option("--area", area_name, "queue, active, deferred, hold or quarantine");
    list->add_option("--stage", stage_name, "only this stage");
    list->add_flag("--json", as_json, "JSON output");

    auto* summary = app.add_subcommand("summary", "counts by queue and age, like qshape");
    summary->add_flag("--json", as_json, "JSON output");

    std::string id;
    auto* show = app.add_subcommand("show", "show one message's envelope and history");
    show->add_option("id", id)->required();
    show->add_flag("--json", as_json, "JSON output");
    auto* cat = app.add_subcommand("cat", "print a message's raw bytes");
    cat->add_option("id", id)->required();

    std::vector<std::string> ids;
    bool force = false;
    auto* hold = app.add_subcommand("hold", "put messages on hold");
    hold->add_option("ids", ids)->required();
    auto* release = app.add_subcommand("release", "release held messages");
    release->add_option("ids", ids)->required();
    auto* requeue =
        app.add_subcommand("requeue", "retry deferred, held or quarantined messages now");
    requeue->add_option("ids", ids)->required();
    auto* del = app.add_subcommand("delete", "delete messages (needs --force)");
    del->add_option("ids", ids)->required();
    del->add_flag("--force", force, "really delete");

    double timeout_s = 0;
    auto* wait = app.add_subcommand(
        "wait", "return when the spool is idle (nothing queued or in processing)");
    wait->add_option("--timeout", timeout_s, "give up after this many seconds (exit 1)");

    std::string inspect_file, index_file;
    std::vector<std::string> ca_files, crl_files;
    bool at_signing_time = false;
    auto* inspect = app.add_subcommand("inspect",
                                       "say what a message is: PEC type, daticert, signature "
                                       "verdict (exit 0 only for a valid PEC message)");
    inspect->add_option("file", inspect_file, "the message, or - for standard input")->required();
    inspect->add_option(
        "--ca", ca_files,
        "trust anchor PEM file (repeatable); without it only the cryptography is checked");
    inspect->add_option("--crl", crl_files, "CRL file (repeatable)");
    inspect->add_option("--index", index_file,
                        "providers index LDIF, to identify the signing provider");
    inspect->add_flag("--at-signing-time", at_signing_time,
                      "check validity at the signing time (archived messages)");
    inspect->add_flag("--json", as_json, "JSON output");

    LogArgs log_args;
    auto* log_cmd =
        app.add_subcommand("log", "search the legal log by message id, sender, recipient, time");
    log_cmd->require_subcommand(0, 1);
    log_cmd->add_option("--dir", log_args.dir,
                        "legal log directory (default: [legallog] directory)");
    log_cmd->add_option("--id", log_args.id,
                        "PEC identificativo, Message-ID or id of a related message");
    log_cmd->add_option("--sender", log_args.sender, "sender address");
    log_cmd->add_option("--recipient", log_args.recipient, "recipient address");
    log_cmd->add_option("--since", log_args.since, "YYYY-MM-DD[THH:MM[:SS]] UTC, or @microseconds");
    log_cmd->add_option("--until", log_args.until,
                        "YYYY-MM-DD[THH:MM[:SS]] UTC (a bare day: to its end), or @microseconds");
    log_cmd->add_flag("--json", log_args.json, "JSON output");
    auto* log_verify = log_cmd->add_subcommand(
        "verify", "check every chain and time stamp; names the first bad record (exit 1 then)");
    log_verify->add_option("--dir", log_args.dir,
                           "legal log directory (default: [legallog] directory)");
    log_verify->add_option("--ca", log_args.ca,
                           "TSA trust anchor: check the time-stamp signatures and chains too");
    log_verify->add_flag("--json", log_args.json, "JSON output");
    log_verify->add_option("--max-seal-delay", log_args.max_seal_delay,
                           "a closed file unsealed for longer (e.g. 2d) is a problem: for "
                           "monitoring that the daily seal runs");
    auto* log_seal =
        log_cmd->add_subcommand("seal", "close stale files and time-stamp every closed file now");
    log_seal->add_option("--dir", log_args.dir,
                         "legal log directory (default: [legallog] directory)");
    log_seal->add_option("--tsa-url", log_args.tsa_url, "TSA URL (default: [legallog] tsa_url)");
    log_seal->add_option("--ca", log_args.ca, "TSA trust anchor (default: [legallog] tsa_ca)");
    std::string task_state, task_prefix;
    std::vector<std::string> task_keys;
    bool by_prefix = false;
    auto* tasks = app.add_subcommand("tasks", "scheduled tasks ([scheduler] directory)");
    tasks->require_subcommand(1);
    auto* tasks_list = tasks->add_subcommand("list", "pending (in due order), claimed, failed");
    tasks_list->add_option("--state", task_state, "pending, claimed or failed");
    tasks_list->add_option("--prefix", task_prefix, "only keys starting with this");
    tasks_list->add_flag("--json", as_json, "JSON output (one array)");
    auto* tasks_show = tasks->add_subcommand("show", "show one task");
    tasks_show->add_option("key", id)->required();
    tasks_show->add_flag("--json", as_json, "JSON output");
    auto* tasks_cancel =
        tasks->add_subcommand("cancel", "cancel tasks (a running one is not run again)");
    tasks_cancel->add_option("keys", task_keys)->required();
    tasks_cancel->add_flag("--prefix", by_prefix, "the arguments are key prefixes");

    auto* log_expire = log_cmd->add_subcommand(
        "expire", "remove closed files older than the retention period, with their seals");
    log_expire->add_option("--dir", log_args.dir,
                           "legal log directory (default: [legallog] directory)");
    log_expire->add_option("--retention", log_args.retention,
                           "e.g. 30months, 900d (default: [legallog] retention)");

    CLI11_PARSE(app, argc, argv);

    if (*log_cmd)
        return run_log(config_file, log_args, log_verify->parsed(), log_seal->parsed(),
                       log_expire->parsed());

    if (*inspect) {
        // Needs no spool: administrators run it on anything a user forwards them.
        std::string raw;
        if (inspect_file == "-") {
            std::ostringstream in;
            in << std::cin.rdbuf();
            raw = in.str();
        } else {
            auto data = durable::read_file(inspect_file);
            if (!data) return fail_with(data.error()), 2;
            raw = std::move(*data);
        }
        pec::InspectOptions opts;
        for (const auto& f : ca_files) opts.trust.ca_files.emplace_back(f);
        for (const auto& f : crl_files) opts.trust.crl_files.emplace_back(f);
        opts.trust.check_crl = !crl_files.empty();
        opts.at_signing_time = at_signing_time;
        if (!index_file.empty()) {
            auto index = pec::load_ldif(index_file, {&opts.trust, {}});
            if (!index) return fail_with(index.error()), 2;
            opts.index = std::move(*index);
        }
        auto report = pec::inspect_message(raw, opts);
        if (!report) return fail_with(report.error()), 2;
        std::fputs((as_json ? pec::format_json(*report) + "\n" : pec::format_text(*report)).c_str(),
                   stdout);
        return report->valid ? 0 : 1;
    }

    auto config = Config::load(runner::config_path(config_file));
    if (!config) return fail_with(config.error());
    if (*tasks) {
        std::filesystem::path directory;
        auto sopts = scheduler::scheduler_options(*config, directory);
        if (!sopts) return fail_with(sopts.error());
        auto store = scheduler::TaskStore::open(directory, /*create=*/false);
        if (!store) return fail_with(store.error());
        int64_t at = spool::now_us();
        if (*tasks_show) {
            auto info = store->find(id);
            if (!info) return fail_with(info.error());
            auto text =
                as_json ? scheduler::task_json(*info) + "\n" : scheduler::task_text(*info, at);
            std::fputs(text.c_str(), stdout);
            return 0;
        }
        if (*tasks_cancel) {
            int rc = 0;
            for (const auto& k : task_keys) {
                if (by_prefix) {
                    auto n = store->cancel_prefix(k);
                    if (!n)
                        rc = fail_with(n.error());
                    else
                        std::printf("%s*: %zu cancelled\n", k.c_str(), *n);
                } else if (auto st = store->cancel(k); !st) {
                    rc = fail_with(st.error());
                } else {
                    std::printf("%s: cancelled\n", k.c_str());
                }
            }
            return rc;
        }
        scheduler::ListOptions opts;
        opts.key_prefix = task_prefix;
        if (!task_state.empty()) {
            if (task_state == "pending")
                opts.state = scheduler::TaskState::pending;
            else if (task_state == "claimed")
                opts.state = scheduler::TaskState::claimed;
            else if (task_state == "failed")
                opts.state = scheduler::TaskState::failed;
            else
                return fail_with({ErrorKind::permanent, "unknown state " + task_state, 0});
        }
        size_t n = 0;
        std::fputs(as_json ? "[" : scheduler::task_row_header().c_str(), stdout);
        auto st = store->for_each(opts, [&](const scheduler::TaskInfo& info) {
            if (as_json)
                std::printf("%s%s", n ? ",\n" : "\n", scheduler::task_json(info).c_str());
            else
                std::fputs(scheduler::task_row(info, at).c_str(), stdout);
            ++n;
            return true;
        });
        if (as_json)
            std::fputs(n ? "\n]\n" : "]\n", stdout);
        else
            std::printf("-- %zu task(s)\n", n);
        if (!st) return fail_with(st.error());
        return 0;
    }
    auto settings = runner::spool_settings(*config);
    if (!settings) return fail_with(settings.error());
    auto spool = spool::Spool::open(settings->root, /*create=*/false);
    if (!spool) return fail_with(spool.error());
    int64_t now = spool::now_us();

    if (*list) {
        spool::ListOptions opts;
        if (!area_name.empty()) {
            opts.area = spool::area_from_string(area_name);
            if (!opts.area)
                return fail_with({ErrorKind::permanent, "unknown area " + area_name, 0});
        }
        if (!stage_name.empty()) opts.stage = stage_name;
        auto entries = spool::list_entries(*spool, opts);
        if (!entries) return fail_with(entries.error());
        if (as_json) {
            json::Writer w;
            w.begin_array();
            for (const auto& e : *entries) {
                w.begin_object()
                    .key("area")
                    .value(spool::to_string(e.area))
                    .key("stage")
                    .value(e.stage);
                w.key("size").value(e.size).key("age_s").value((now - e.arrival_us) / 1'000'000);
                if (e.env)
                    write_envelope(w, *e.env);
                else
                    w.key("id").value(e.id).key("problem").value(e.problem);
                if (!e.quarantine_reason.empty())
                    w.key("quarantine_reason").value(e.quarantine_reason);
                w.end_object();
            }
            w.end_array();
            std::printf("%s\n", w.str().c_str());
            return 0;
        }
        std::printf("%-34s %-20s %6s %9s  %s\n", "ID", "QUEUE", "AGE", "SIZE",
                    "SENDER -> RECIPIENTS");
        for (const auto& e : *entries) {
            std::string where = std::string(spool::to_string(e.area)) + "/" + e.stage;
            std::string who;
            if (e.env) {
                who = (e.env->sender.empty() ? "<>" : e.env->sender) + " ->";
                for (const auto& r : e.env->recipients) who += " " + r;
            } else {
                who = "(unreadable: " + e.problem + ")";
            }
            std::printf("%-34s %-20s %6s %9llu  %s\n", e.id.c_str(), where.c_str(),
                        age_text(e.arrival_us, now).c_str(),
                        static_cast<unsigned long long>(e.size), who.c_str());
            if (e.env && !e.env->last_error.empty())
                std::printf("%34s   last error: %s\n", "", e.env->last_error.c_str());
            if (!e.quarantine_reason.empty())
                std::printf("%34s   quarantined: %s\n", "", e.quarantine_reason.c_str());
        }
        std::printf("-- %zu message(s)\n", entries->size());
        return 0;
    }
    if (*summary) {
        auto rows = spool::summarize(*spool, now);
        if (!rows) return fail_with(rows.error());
        auto labels = spool::summary_bucket_labels();
        if (as_json) {
            json::Writer w;
            w.begin_object().key("buckets_minutes").begin_array();
            for (const auto& l : labels) w.value(l);
            w.end_array().key("rows").begin_array();
            for (const auto& r : *rows) {
                w.begin_object()
                    .key("queue")
                    .value(r.name)
                    .key("total")
                    .value(r.total)
                    .key("counts")
                    .begin_array();
                for (auto c : r.buckets) w.value(c);
                w.end_array().end_object();
            }
            w.end_array().end_object();
            std::printf("%s\n", w.str().c_str());
            return 0;
        }
        std::printf("%-22s %7s", "", "T");
        for (const auto& l : labels) std::printf(" %6s", l.c_str());
        std::printf("\n");
        uint64_t grand = 0;
        for (const auto& r : *rows) {
            grand += r.total;
            std::printf("%-22s %7llu", r.name.c_str(), static_cast<unsigned long long>(r.total));
            for (auto c : r.buckets) std::printf(" %6llu", static_cast<unsigned long long>(c));
            std::printf("\n");
        }
        std::printf("%-22s %7llu\n", "TOTAL", static_cast<unsigned long long>(grand));
        return 0;
    }
    if (*show || *cat) {
        if (!spool::is_valid_queue_id(id))
            return fail_with({ErrorKind::permanent, "'" + id + "' is not a queue id", 0});
        auto where = spool->find(id);
        if (!where)
            return fail_with({ErrorKind::not_found, id + ": no such message in the spool", 0});
        auto fd = durable::open_file(where->path, O_RDONLY);
        if (!fd) return fail_with(fd.error());
        auto info = spool::read_header(fd->get(), where->path.string());
        if (*cat) {
            if (!info) return fail_with(info.error());
            auto copied =
                durable::copy_range(fd->get(), info->body_offset(), info->body_size, STDOUT_FILENO);
            if (!copied) return fail_with(copied.error());
            return 0;
        }
        auto reason = spool::quarantine_reason(*spool, *where);
        if (as_json) {
            json::Writer w;
            w.begin_object()
                .key("area")
                .value(spool::to_string(where->area))
                .key("stage")
                .value(where->stage);
            if (info) {
                w.key("size").value(info->body_size);
                write_envelope(w, info->env);
            } else {
                w.key("id").value(id).key("problem").value(info.error().message);
            }
            if (reason) w.key("quarantine_reason").value(*reason);
            w.end_object();
            std::printf("%s\n", w.str().c_str());
            return 0;
        }
        std::printf("id:          %s\nqueue:       %s/%s\nfile:        %s\n", id.c_str(),
                    std::string(spool::to_string(where->area)).c_str(), where->stage.c_str(),
                    where->path.c_str());
        if (reason) std::printf("quarantined: %s\n", reason->c_str());
        if (!info) {
            std::printf("unreadable:  %s\n", info.error().message.c_str());
            return 1;
        }
        const auto& env = info->env;
        std::printf("arrival:     %s ago\nsize:        %llu\nsender:      %s\n",
                    age_text(env.arrival_us, now).c_str(),
                    static_cast<unsigned long long>(info->body_size),
                    env.sender.empty() ? "<>" : env.sender.c_str());
        for (const auto& r : env.recipients) std::printf("recipient:   %s\n", r.c_str());
        std::printf("user:        %s\nclient:      %s\nattempts:    %d\n", env.user.c_str(),
                    env.client.c_str(), env.attempts);
        if (env.next_attempt_us > now)
            std::printf("next try:    in %llds\n",
                        static_cast<long long>((env.next_attempt_us - now) / 1'000'000));
        if (!env.last_error.empty()) std::printf("last error:  %s\n", env.last_error.c_str());
        for (const auto& [k, v] : env.attrs)
            std::printf("attr:        %s = %s\n", k.c_str(), v.c_str());
        std::printf("history:\n");
        for (const auto& h : env.history)
            std::printf("  %-10s %s ago  %s\n", h.stage.c_str(), age_text(h.at_us, now).c_str(),
                        h.note.c_str());
        return 0;
    }
    if (*hold || *release || *requeue || *del) {
        if (*del && !force) {
            std::fprintf(stderr, "pecq: delete removes messages for good; repeat with --force\n");
            return 2;
        }
        int rc = 0;
        for (const auto& one : ids) {
            Status st = *hold      ? spool::hold(*spool, one)
                        : *release ? spool::release(*spool, one)
                        : *requeue ? spool::requeue(*spool, one)
                                   : spool::remove(*spool, one);
            if (!st)
                rc = fail_with(st.error());
            else
                std::printf("%s: %s\n", one.c_str(),
                            *hold      ? "held"
                            : *release ? "released"
                            : *requeue ? "requeued"
                                       : "deleted");
        }
        return rc;
    }
    if (*wait) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
        while (true) {
            auto idle = spool::is_idle(*spool);
            if (!idle) return fail_with(idle.error());
            if (*idle) return 0;
            if (timeout_s > 0 && std::chrono::steady_clock::now() > deadline) {
                std::fprintf(stderr, "pecq: spool still busy after %.0fs\n", timeout_s);
                return 1;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    }
    return 0;
}
