// The scheduler loop: claims due tasks from a TaskStore by rename, runs their registered
// handlers, and resolves each claim (done, rescheduled, retried with backoff, or failed). Any
// number of schedulers, on any nodes, may share one task directory; see docs/scheduler.md.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "stages/common/config.hpp"
#include "stages/common/result.hpp"
#include "stages/scheduler/task_store.hpp"

namespace pecd::scheduler {

// What a handler wants after a successful run: nothing more, or run again at a time (periodic).
struct Next {
    std::optional<int64_t> reschedule_at_us;
    static Next done() { return {}; }
    static Next at(int64_t us) { return Next{us}; }
};

// Errors: ErrorKind::transient retries with backoff; any other kind fails the task at once.
using Handler = std::function<Result<Next>(const Task&)>;
using Clock = std::function<int64_t()>;  // microseconds since the epoch

struct SchedulerOptions {
    std::string node;  // [A-Za-z0-9._-]: names this node in claims and created-by
    int64_t pid = 0;   // 0: getpid()
    // A claim not renewed for this long is taken back by any scheduler. Its owner renews it every
    // third of the lease while the handler runs, so it must exceed the clock skew between nodes
    // and the longest stall of a node (a slow shared filesystem), not the longest handler.
    std::chrono::milliseconds lease{std::chrono::minutes(10)};
    std::chrono::milliseconds poll_interval{std::chrono::seconds(1)};
    std::chrono::milliseconds backoff_base{std::chrono::seconds(30)};
    std::chrono::milliseconds backoff_max{std::chrono::hours(1)};
    int max_attempts = 10;  // failed runs (and expired leases) before failed/
    std::chrono::milliseconds tidy_interval{std::chrono::minutes(1)};
    std::chrono::milliseconds tmp_max_age{std::chrono::hours(1)};
    Clock clock;  // empty: the system clock
};

// [scheduler] section of pecd.conf: directory, node, lease, poll_interval, backoff_base,
// backoff_max, max_attempts. The directory is returned through `directory`.
Result<SchedulerOptions> scheduler_options(const Config& config, fs::path& directory);

struct PassStats {
    size_t claimed = 0;    // fresh claims from pending/
    size_t reclaimed = 0;  // expired claims taken over
    size_t succeeded = 0;
    size_t rescheduled = 0;  // periodic: the handler asked for another run
    size_t retried = 0;      // transient failure, back to pending with backoff
    size_t failed = 0;       // moved to failed/
    size_t dropped = 0;      // cancelled while running
    size_t lost = 0;         // claim races lost to another scheduler
    ScanStats scan;
    size_t ran() const { return succeeded + rescheduled + retried + failed + dropped; }
};

class Scheduler {
  public:
    Scheduler(TaskStore store, SchedulerOptions options);

    void register_op(std::string name, Handler handler);
    // For handlers with nothing to reschedule.
    void register_simple_op(std::string name, std::function<Status(const Task&)> handler);

    // One pass at `now_us`: takes back expired claims, then claims and runs every due task.
    // Stops between tasks when *stop becomes true.
    Result<PassStats> run_due(int64_t now_us, const std::atomic<bool>* stop = nullptr);
    // Passes every poll_interval (sooner after wake()) until `stop`; tidies now and then.
    Status run(const std::atomic<bool>& stop);
    void wake();

    TaskStore& store() { return store_; }
    const SchedulerOptions& options() const { return options_; }
    int64_t now() const;
    int64_t backoff_us(int attempts) const;

  private:
    void run_claimed(fs::path claimed, const std::string& key, std::optional<ClaimName> expired,
                     int64_t now_us, PassStats& stats);

    TaskStore store_;
    SchedulerOptions options_;
    std::map<std::string, Handler, std::less<>> ops_;
    std::mutex mutex_;
    std::condition_variable cv_;
    bool woken_ = false;
};

// The `command` operation: runs the program configured as `command.<name>` (task arg `command`)
// without a shell, with PECD_TASK_KEY and PECD_TASK_ATTEMPTS in its environment. Exit 0 is done,
// 75 (EX_TEMPFAIL) a transient failure, anything else permanent. A task arg `every` (a duration,
// "1h") makes it periodic: the next run is the first multiple of `every` after now.
Handler command_handler(std::map<std::string, std::vector<std::string>> commands, Clock clock);
// command.<name> entries of [scheduler], split on white space.
std::map<std::string, std::vector<std::string>> configured_commands(const Config& config);
// For each `every.<name> = <duration>` of [scheduler] (with a command.<name>), makes sure a task
// "periodic.<name>" exists (op `command`), due now: index-refresh, crl-refresh and the like.
// A failed one is left for the administrator. Returns how many were created.
Result<size_t> ensure_periodic_tasks(TaskStore& store, const Config& config, std::string_view node,
                                     int64_t now_us);

// For pecq: one task as a JSON object, and as "field: value" lines.
std::string task_json(const TaskInfo& info);
std::string task_text(const TaskInfo& info, int64_t now_us);
std::string task_row_header();
std::string task_row(const TaskInfo& info, int64_t now_us);  // one line of `pecq tasks list`

}  // namespace pecd::scheduler
