#include "stages/scheduler/scheduler.hpp"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/common/json.hpp"
#include "stages/common/log.hpp"

extern char** environ;

namespace pecd::scheduler {
namespace {

using std::chrono::duration_cast;
using std::chrono::microseconds;

int64_t us(std::chrono::milliseconds d) {
    return duration_cast<microseconds>(d).count();
}

std::string default_node() {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0 || !host[0]) return "node";
    std::string node;
    for (const char* p = host; *p && *p != '.'; ++p) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_';
        node += ok ? c : '_';
    }
    return node.empty() ? "node" : node;
}

}  // namespace

Result<SchedulerOptions> scheduler_options(const Config& config, fs::path& directory) {
    SchedulerOptions o;
    directory = config.get_path("scheduler", "directory");
    if (directory.empty())
        return fail(ErrorKind::config, config.source() + ": [scheduler] directory is not set");
    o.node = config.get("scheduler", "node", default_node());
    for (auto* slot : {&o.lease, &o.poll_interval, &o.backoff_base, &o.backoff_max}) {
        const char* key = slot == &o.lease           ? "lease"
                          : slot == &o.poll_interval ? "poll_interval"
                          : slot == &o.backoff_base  ? "backoff_base"
                                                     : "backoff_max";
        auto d = config.get_duration("scheduler", key, *slot);
        if (!d) return std::unexpected(d.error());
        *slot = *d;
    }
    auto attempts = config.get_int("scheduler", "max_attempts", o.max_attempts);
    if (!attempts) return std::unexpected(attempts.error());
    if (*attempts < 1)
        return fail(ErrorKind::config, config.source() + ": [scheduler] max_attempts must be >= 1");
    o.max_attempts = static_cast<int>(*attempts);
    if (o.lease.count() <= 0)
        return fail(ErrorKind::config, config.source() + ": [scheduler] lease must be > 0");
    return o;
}

Scheduler::Scheduler(TaskStore store, SchedulerOptions options)
    : store_(std::move(store)), options_(std::move(options)) {
    if (options_.pid == 0) options_.pid = ::getpid();
    if (!options_.clock) options_.clock = [] { return spool::now_us(); };
}

void Scheduler::register_op(std::string name, Handler handler) {
    ops_[std::move(name)] = std::move(handler);
}

void Scheduler::register_simple_op(std::string name, std::function<Status(const Task&)> handler) {
    register_op(std::move(name), [h = std::move(handler)](const Task& t) -> Result<Next> {
        if (auto st = h(t); !st) return std::unexpected(st.error());
        return Next::done();
    });
}

int64_t Scheduler::now() const {
    return options_.clock();
}

int64_t Scheduler::backoff_us(int attempts) const {
    int64_t delay = us(options_.backoff_base);
    for (int i = 1; i < attempts && delay < us(options_.backoff_max); ++i) delay *= 2;
    return std::min(delay, us(options_.backoff_max));
}

Result<PassStats> Scheduler::run_due(int64_t now_us, const std::atomic<bool>* stop) {
    PassStats stats;
    auto stopping = [&] { return stop && stop->load(); };
    // 1. Claims whose owner died (or overran its lease): the reclaim rename has one winner.
    auto expired = store_.expired_claims(now_us, us(options_.lease));
    if (!expired) return std::unexpected(expired.error());
    for (auto& old : *expired) {
        if (stopping()) break;
        auto mine = store_.reclaim(old, options_.node, options_.pid, now_us);
        if (!mine) {
            if (mine.error().kind != ErrorKind::not_found) return std::unexpected(mine.error());
            ++stats.lost;
            continue;
        }
        ++stats.reclaimed;
        PECD_LOG(warn) << "task " << old.key << ": lease of " << old.node << " pid " << old.pid
                       << " expired, taken back";
        run_claimed(std::move(*mine), old.key, old, now_us, stats);
    }
    // 2. Due tasks, streamed bucket by bucket.
    Status failed_scan;
    auto st = store_.for_each_due(now_us, stats.scan, [&](const DueEntry& entry) {
        if (stopping()) return false;
        auto claimed = store_.claim(entry, options_.node, options_.pid, now_us);
        if (!claimed) {
            if (claimed.error().kind == ErrorKind::not_found) {
                ++stats.lost;  // another scheduler (or a cancel) was first
                return true;
            }
            failed_scan = std::unexpected(claimed.error());
            return false;
        }
        ++stats.claimed;
        run_claimed(std::move(*claimed), entry.key, std::nullopt, now_us, stats);
        return true;
    });
    if (!st) return std::unexpected(st.error());
    if (!failed_scan) return std::unexpected(failed_scan.error());
    if (stats.succeeded + stats.dropped > 0)
        if (auto s = store_.sync_claimed(); !s) return std::unexpected(s.error());
    return stats;
}

namespace {

// Keeps a claim fresh while its handler runs: every third of the lease the claim is renamed to a
// new claim time, so that no other node sees it expire and runs a slow task a second time. A
// renewal that fails means someone else has the claim now: the keeper stops and says so.
class LeaseKeeper {
  public:
    LeaseKeeper(TaskStore& store, fs::path claimed, const SchedulerOptions& options,
                std::function<int64_t()> now)
        : store_(store), claimed_(std::move(claimed)) {
        const auto interval = std::max(options.lease / 3, std::chrono::milliseconds(10));
        thread_ = std::thread(
            [this, interval, node = options.node, pid = options.pid, now = std::move(now)] {
                std::unique_lock lock(mutex_);
                while (!cv_.wait_for(lock, interval, [this] { return stopping_; })) {
                    auto renewed = store_.renew(claimed_, node, pid, now());
                    if (!renewed) {
                        lost_ = renewed.error().message;
                        return;
                    }
                    claimed_ = std::move(*renewed);
                }
            });
    }
    ~LeaseKeeper() { stop(); }
    // Stops renewing; returns the claim's current name.
    const fs::path& stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        cv_.notify_all();
        if (thread_.joinable()) thread_.join();
        return claimed_;
    }
    const std::optional<std::string>& lost() const { return lost_; }

  private:
    TaskStore& store_;
    fs::path claimed_;
    std::mutex mutex_;
    std::condition_variable cv_;
    bool stopping_ = false;
    std::optional<std::string> lost_;
    std::thread thread_;
};

}  // namespace

void Scheduler::run_claimed(fs::path claimed, const std::string& key,
                            std::optional<ClaimName> expired, int64_t now_us, PassStats& stats) {
    auto task = read_task(claimed);
    if (!task) {
        // Unreadable: kept as it is in failed/ for a human, never guessed at.
        PECD_LOG(error) << "task " << key << ": " << task.error().message << "; moved to failed/";
        if (auto st = durable::rename_file(claimed, store_.failed_dir() / key); !st)
            PECD_LOG(error) << st.error().message;
        ++stats.failed;
        return;
    }
    auto give_up = [&](Task& t, std::string reason) {
        t.last_error = std::move(reason);
        PECD_LOG(warn) << "task " << t.key << " (" << t.op << ") failed: " << t.last_error;
        if (auto st = store_.fail_task(claimed, t); !st)
            PECD_LOG(error) << "task " << t.key << ": " << st.error().message;
        ++stats.failed;
    };
    if (expired) {
        ++task->attempts;
        task->last_error =
            "lease expired while run by " + expired->node + " pid " + std::to_string(expired->pid);
        if (task->attempts >= options_.max_attempts) return give_up(*task, task->last_error);
    }
    auto op = ops_.find(task->op);
    if (op == ops_.end()) return give_up(*task, "unknown operation '" + task->op + "'");

    Result<Next> result = fail(ErrorKind::permanent, "handler did not return");
    {
        LeaseKeeper keeper(store_, claimed, options_, [this] { return now(); });
        try {
            result = op->second(*task);
        } catch (const std::exception& e) {
            result = fail(ErrorKind::permanent, std::string("handler threw: ") + e.what());
        } catch (...) {
            result = fail(ErrorKind::permanent, "handler threw");
        }
        claimed = keeper.stop();
        if (keeper.lost()) {
            // Another scheduler took the claim while this one could not renew it (a stalled node,
            // a lost shared filesystem): the task is theirs now; touch nothing.
            PECD_LOG(error) << "task " << task->key
                            << ": claim lost while running: " << *keeper.lost();
            ++stats.lost;
            return;
        }
    }

    if (store_.cancel_requested(task->key) || (result && !result->reschedule_at_us)) {
        bool dropped = !result || result->reschedule_at_us;
        if (auto st = store_.finish(claimed, task->key); !st)
            PECD_LOG(error) << "task " << task->key << ": " << st.error().message;
        ++(dropped ? stats.dropped : stats.succeeded);
        return;
    }
    // Moving it on: renew the claim first, so that a lease overrun is noticed rather than
    // fought over (the rename fails when someone else took the claim).
    auto renewed = store_.renew(claimed, options_.node, options_.pid, std::max(now_us, now()));
    if (!renewed) {
        PECD_LOG(error) << "task " << task->key << ": claim lost while running (lease too short?): "
                        << renewed.error().message;
        ++stats.lost;
        return;
    }
    claimed = std::move(*renewed);
    Task next = *task;
    if (result) {
        next.due_us = *result->reschedule_at_us;
        next.attempts = 0;
        next.last_error.clear();
        if (auto st = store_.reschedule(claimed, next); !st) {
            PECD_LOG(error) << "task " << task->key << ": " << st.error().message;
            return;
        }
        ++stats.rescheduled;
        return;
    }
    next.attempts = task->attempts + 1;
    if (result.error().kind != ErrorKind::transient || next.attempts >= options_.max_attempts)
        return give_up(next, result.error().message);
    next.last_error = result.error().message;
    next.due_us = now_us + backoff_us(next.attempts);
    PECD_LOG(info) << "task " << next.key << " (" << next.op << "): " << next.last_error
                   << "; retry " << next.attempts << " in " << (next.due_us - now_us) / 1'000'000
                   << "s";
    if (auto st = store_.reschedule(claimed, next); !st) {
        PECD_LOG(error) << "task " << task->key << ": " << st.error().message;
        return;
    }
    ++stats.retried;
}

Status Scheduler::run(const std::atomic<bool>& stop) {
    int64_t next_tidy = 0;
    while (!stop.load()) {
        int64_t t = now();
        if (t >= next_tidy) {
            if (auto st = store_.tidy(t, us(options_.tmp_max_age)); !st)
                PECD_LOG(warn) << st.error().message;
            next_tidy = t + us(options_.tidy_interval);
        }
        auto pass = run_due(t, &stop);
        if (!pass)
            PECD_LOG(error) << "scheduler pass: " << pass.error().message;
        else if (pass->ran() > 0)
            PECD_LOG(debug) << "pass: " << pass->ran() << " run, " << pass->lost << " lost, "
                            << pass->scan.buckets_listed << " buckets";
        std::unique_lock lock(mutex_);
        cv_.wait_for(lock, options_.poll_interval, [&] { return woken_ || stop.load(); });
        woken_ = false;
    }
    return {};
}

void Scheduler::wake() {
    {
        std::lock_guard lock(mutex_);
        woken_ = true;
    }
    cv_.notify_all();
}

// ---- the command operation ---------------------------------------------------------------------

std::map<std::string, std::vector<std::string>> configured_commands(const Config& config) {
    std::map<std::string, std::vector<std::string>> out;
    for (const auto& key : config.keys("scheduler")) {
        if (!key.starts_with("command.") || key.size() == 8) continue;
        std::vector<std::string> argv;
        std::string value = config.get("scheduler", key), word;
        for (char c : value + ' ') {
            if (c == ' ' || c == '\t') {
                if (!word.empty()) argv.push_back(std::move(word));
                word.clear();
            } else {
                word += c;
            }
        }
        if (!argv.empty()) out[key.substr(8)] = std::move(argv);
    }
    return out;
}

Handler command_handler(std::map<std::string, std::vector<std::string>> commands, Clock clock) {
    return [commands = std::move(commands),
            clock = std::move(clock)](const Task& task) -> Result<Next> {
        auto name = task.arg("command");
        if (!name) return fail(ErrorKind::permanent, "no 'command' argument");
        auto it = commands.find(*name);
        if (it == commands.end())
            return fail(ErrorKind::permanent, "no command." + *name + " in [scheduler]");
        int64_t every = 0;
        if (auto e = task.arg("every")) {
            auto d = parse_duration(*e);
            if (!d || d->count() <= 0)
                return fail(ErrorKind::permanent, "bad 'every' argument '" + *e + "'");
            every = us(*d);
        }
        std::vector<std::string> env_store;
        for (char** e = environ; *e; ++e)
            if (std::strncmp(*e, "PECD_TASK_", 10) != 0) env_store.emplace_back(*e);
        env_store.push_back("PECD_TASK_KEY=" + task.key);
        env_store.push_back("PECD_TASK_ATTEMPTS=" + std::to_string(task.attempts));
        std::vector<char*> envp, argv;
        for (auto& e : env_store) envp.push_back(e.data());
        envp.push_back(nullptr);
        std::vector<std::string> args = it->second;
        for (auto& a : args) argv.push_back(a.data());
        argv.push_back(nullptr);
        // The command starts with the signals as a program expects them: none blocked (the
        // daemon blocks some for sigwait) and SIGPIPE at its default (the daemon ignores it).
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        sigset_t none, defaults;
        sigemptyset(&none);
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGPIPE);
        posix_spawnattr_setsigmask(&attr, &none);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
        pid_t pid = -1;
        int rc = posix_spawn(&pid, argv[0], nullptr, &attr, argv.data(), envp.data());
        posix_spawnattr_destroy(&attr);
        if (rc != 0)
            return fail(ErrorKind::transient, "spawn " + args[0] + ": " + std::strerror(rc));
        int status = 0;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR) return fail_errno("wait " + args[0]);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            if (every == 0) return Next::done();
            int64_t now = clock ? clock() : spool::now_us();
            int64_t next = task.due_us + every;
            if (next <= now) next += (now - next) / every * every + every;  // skip missed runs
            return Next::at(next);
        }
        std::string how = WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                            : "signal " + std::to_string(WTERMSIG(status));
        ErrorKind kind = WIFEXITED(status) && WEXITSTATUS(status) == 75 ? ErrorKind::transient
                                                                        : ErrorKind::permanent;
        return fail(kind, args[0] + ": " + how);
    };
}

Result<size_t> ensure_periodic_tasks(TaskStore& store, const Config& config, std::string_view node,
                                     int64_t now_us) {
    auto commands = configured_commands(config);
    size_t created = 0;
    for (const auto& key : config.keys("scheduler")) {
        if (!key.starts_with("every.") || key.size() == 6) continue;
        std::string name = key.substr(6);
        if (!commands.contains(name))
            return fail(ErrorKind::config,
                        config.source() + ": [scheduler] " + key + " without command." + name);
        auto every = config.get_duration("scheduler", key, std::chrono::milliseconds(0));
        if (!every) return std::unexpected(every.error());
        if (every->count() <= 0)
            return fail(ErrorKind::config,
                        config.source() + ": [scheduler] " + key + " must be > 0");
        Task t;
        t.key = "periodic." + name;
        if (!is_valid_key(t.key))
            return fail(ErrorKind::config, "[scheduler] " + key + ": bad name");
        auto existing = store.find(t.key);
        if (existing) continue;  // pending, running, or failed (left for a human)
        if (existing.error().kind != ErrorKind::not_found) return std::unexpected(existing.error());
        t.op = "command";
        t.due_us = now_us;
        t.set_arg("command", name);
        t.set_arg("every", config.get("scheduler", key));
        auto st = store.schedule(t, node);
        if (!st && st.error().kind != ErrorKind::conflict) return std::unexpected(st.error());
        if (st) ++created;
    }
    return created;
}

std::string task_json(const TaskInfo& info) {
    json::Writer w;
    w.begin_object().key("key").value(info.task.key).key("state").value(to_string(info.state));
    w.key("path").value(info.path.string());
    if (!info.problem.empty()) {
        w.key("problem").value(info.problem).end_object();
        return w.str();
    }
    const Task& t = info.task;
    w.key("op").value(t.op).key("due_us").value(t.due_us).key("attempts").value(t.attempts);
    w.key("created_us").value(t.created_us).key("created_by").value(t.created_by);
    w.key("last_error").value(t.last_error);
    w.key("args").begin_object();
    for (const auto& [k, v] : t.args) w.key(k).value(v);
    w.end_object();
    if (info.claim)
        w.key("claim")
            .begin_object()
            .key("node")
            .value(info.claim->node)
            .key("pid")
            .value(info.claim->pid)
            .key("claimed_us")
            .value(info.claim->claimed_us)
            .end_object();
    w.end_object();
    return w.str();
}

std::string task_text(const TaskInfo& info, int64_t now_us) {
    auto when = [&](int64_t at) {
        int64_t s = (at - now_us) / 1'000'000;
        return s >= 0 ? "in " + std::to_string(s) + "s" : std::to_string(-s) + "s ago";
    };
    std::string out = "key:         " + info.task.key + "\nstate:       " + to_string(info.state) +
                      "\nfile:        " + info.path.string() + "\n";
    if (!info.problem.empty()) return out + "unreadable:  " + info.problem + "\n";
    const Task& t = info.task;
    out += "op:          " + t.op + "\ndue:         " + std::to_string(t.due_us) + " (" +
           when(t.due_us) + ")\n";
    out += "attempts:    " + std::to_string(t.attempts) +
           "\ncreated:     " + std::to_string(t.created_us) + " by " + t.created_by + "\n";
    if (!t.last_error.empty()) out += "last error:  " + t.last_error + "\n";
    if (info.claim)
        out += "claimed by:  " + info.claim->node + " pid " + std::to_string(info.claim->pid) +
               ", " + when(info.claim->claimed_us) + "\n";
    for (const auto& [k, v] : t.args) out += "arg:         " + k + " = " + v + "\n";
    return out;
}

namespace {
std::string relative(int64_t at_us, int64_t now_us) {
    int64_t s = (at_us - now_us) / 1'000'000;
    std::string sign = s < 0 ? "-" : "";
    s = s < 0 ? -s : s;
    if (s < 120) return sign + std::to_string(s) + "s";
    if (s < 7200) return sign + std::to_string(s / 60) + "m";
    if (s < 172800) return sign + std::to_string(s / 3600) + "h";
    return sign + std::to_string(s / 86400) + "d";
}
}  // namespace

std::string task_row_header() {
    char buf[160];
    std::snprintf(buf, sizeof buf, "%-48s %-8s %-16s %6s %4s  %s\n", "KEY", "STATE", "OP", "DUE",
                  "TRY", "LAST ERROR / OWNER");
    return buf;
}

std::string task_row(const TaskInfo& info, int64_t now_us) {
    const Task& t = info.task;
    std::string note = t.last_error;
    if (!info.problem.empty())
        note = "(unreadable: " + info.problem + ")";
    else if (info.claim)
        note = "claimed by " + info.claim->node + " pid " + std::to_string(info.claim->pid);
    std::string due = info.problem.empty() ? relative(t.due_us, now_us) : "?";
    char buf[512];
    std::snprintf(buf, sizeof buf, "%-48s %-8s %-16s %6s %4d  ", t.key.c_str(),
                  to_string(info.state), t.op.c_str(), due.c_str(), t.attempts);
    return buf + note + "\n";
}

}  // namespace pecd::scheduler
