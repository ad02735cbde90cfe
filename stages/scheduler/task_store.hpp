// The task store: one FILE per scheduled task in a directory that several nodes may share (NFS).
// Every state change is a rename, so the directories alone say where each task is; no lock is
// ever taken (flock over NFS is not to be trusted). See docs/scheduler.md for the full protocol.
//
//   <root>/tmp/                         temporaries: written, fsynced, then renamed into place
//   <root>/pending/<bucket>/<key>       tasks waiting; <bucket> = due time floored to 10 s, UTC,
//                                       "yyyymmddThhmmss": the scan lists only buckets <= now
//   <root>/claimed/<key>~<node>~<pid>~<claim µs hex>   a task being run; the name says by whom
//                                       and since when, so an expired lease is seen from a listing
//   <root>/failed/<key>                 given up (last-error inside)
//   <root>/index/<key>                  symlink -> <bucket>: where a pending task is, for cancel
//   <root>/cancelled/<key>              a cancel that met a running task: do not reschedule it
//
// Task file: percent-encoded text records like a queue file (spool-layout/queue_file.hpp).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::scheduler {

namespace fs = std::filesystem;

inline constexpr int64_t kBucketUs = 10'000'000;  // 10 s: one partly-due bucket at most
inline constexpr size_t kMaxKeySize = 200;

struct Task {
    std::string key;  // the file name: [A-Za-z0-9._-], 1-200 bytes, not starting with '.'
    int64_t due_us = 0;
    std::string op;  // registered operation name
    std::vector<std::pair<std::string, std::string>> args;
    int attempts = 0;  // failed runs so far
    int64_t created_us = 0;
    std::string created_by;  // node name
    std::string last_error;

    std::optional<std::string> arg(std::string_view name) const;
    void set_arg(std::string name, std::string value);
    bool operator==(const Task&) const = default;
};

bool is_valid_key(std::string_view key);
// "<kind>.<16 hex of sha256(identificativo)>.<16 hex of sha256(recipient)>": the key of a
// per-(message, recipient) timer, computable by whoever later wants to cancel it.
std::string timer_key(std::string_view kind, std::string_view identificativo,
                      std::string_view recipient);
// A fresh unique key for tasks nobody needs to name: "<op>.<13 hex µs>.<16 hex random>".
std::string new_task_key(std::string_view op, int64_t now_us);

std::string encode_task(const Task& task);
Result<Task> decode_task(std::string_view text);

std::string bucket_name(int64_t due_us);
bool is_bucket_name(std::string_view name);

struct ClaimName {
    std::string key, node;
    int64_t pid = 0;
    int64_t claimed_us = 0;
};
std::string claim_name(std::string_view key, std::string_view node, int64_t pid,
                       int64_t claimed_us);
std::optional<ClaimName> parse_claim_name(std::string_view name);

enum class TaskState { pending, claimed, failed };
const char* to_string(TaskState state);

struct TaskInfo {
    TaskState state = TaskState::pending;
    Task task;  // as read from the file (key always set)
    fs::path path;
    std::optional<ClaimName> claim;  // claimed tasks
    std::string problem;             // the file could not be read or parsed
};

struct ListOptions {
    std::optional<TaskState> state;
    std::string key_prefix;
};

// Counters for the scan, so tests can show that only due buckets are looked at.
struct ScanStats {
    uint64_t buckets_listed = 0;  // directories read under pending/
    uint64_t files_read = 0;      // task files opened before a claim (only the current bucket)
};

// A due task found by the scan, not yet claimed.
struct DueEntry {
    std::string bucket, key;
};

class TaskStore {
  public:
    static Result<TaskStore> open(const fs::path& root, bool create);
    const fs::path& root() const { return root_; }

    // Writes the task durably into its bucket (created_us/created_by filled when empty). A pending
    // task with the same key is an ErrorKind::conflict. The span form is one group commit.
    Status schedule(const Task& task, std::string_view node);
    Status schedule(std::span<const Task> tasks, std::string_view node);

    // Removes a pending task: O(1), through index/<key>. A task being run gets a cancelled/<key>
    // marker instead (it is not rescheduled or retried after this run). ErrorKind::not_found when
    // there is no such task.
    Status cancel(std::string_view key);
    // Every pending task whose key starts with `prefix` (an administrator's tool: lists index/).
    Result<size_t> cancel_prefix(std::string_view prefix);

    Result<TaskInfo> find(std::string_view key) const;
    // Streams tasks (pending buckets in due order, then claimed, then failed); `fn` returns false
    // to stop. Memory stays bounded by one directory's names at a time.
    Status for_each(const ListOptions& options,
                    const std::function<bool(const TaskInfo&)>& fn) const;

    // ---- scheduler side ----------------------------------------------------------------------
    // Streams the due tasks: lists pending/ for the bucket names <= bucket(now), then each of
    // those buckets, oldest first. Only the bucket holding `now` has tasks not yet due, so only
    // its files are read. `fn` returns false to stop.
    Status for_each_due(int64_t now_us, ScanStats& stats,
                        const std::function<bool(const DueEntry&)>& fn) const;
    // Claims by rename into claimed/. ErrorKind::not_found when someone else got it first.
    Result<fs::path> claim(const DueEntry& entry, std::string_view node, int64_t pid,
                           int64_t now_us);
    // Claims whose lease expired (claimed_us + lease <= now): candidates for a reclaim.
    Result<std::vector<ClaimName>> expired_claims(int64_t now_us, int64_t lease_us) const;
    // Takes an expired claim over by renaming it to our own claim name: two reclaimers cannot
    // both win. ErrorKind::not_found when it is gone.
    Result<fs::path> reclaim(const ClaimName& old, std::string_view node, int64_t pid,
                             int64_t now_us);
    // Renames our claim to a fresh claim time (a lease renewal); not_found when it was taken.
    Result<fs::path> renew(const fs::path& claimed, std::string_view node, int64_t pid,
                           int64_t now_us);

    // Resolutions of a claimed task.
    Status finish(const fs::path& claimed, std::string_view key);  // done: remove it
    Status reschedule(const fs::path& claimed,
                      const Task& updated);  // back to pending/<bucket(due)>
    Status fail_task(const fs::path& claimed, const Task& updated);  // to failed/ with last_error
    bool cancel_requested(std::string_view key) const;
    Status clear_cancel(std::string_view key);
    // Makes the removals of finish() durable (one fsync of claimed/ per pass).
    Status sync_claimed() const;
    // Removes past empty buckets and temporaries older than `max_age_us`.
    Status tidy(int64_t now_us, int64_t max_age_us);

    fs::path pending_dir() const { return root_ / "pending"; }
    fs::path claimed_dir() const { return root_ / "claimed"; }
    fs::path failed_dir() const { return root_ / "failed"; }
    fs::path index_dir() const { return root_ / "index"; }
    fs::path cancelled_dir() const { return root_ / "cancelled"; }
    fs::path tmp_dir() const { return root_ / "tmp"; }

  private:
    explicit TaskStore(fs::path root) : root_(std::move(root)) {}
    Result<fs::path> write_tmp(const Task& task, std::string_view tag, bool sync) const;
    Status set_index(std::string_view key, std::string_view bucket, bool sync) const;
    Status remove_index(std::string_view key) const;
    std::optional<std::string> index_bucket(std::string_view key) const;
    Result<std::optional<ClaimName>> find_claim(std::string_view key) const;
    Status ensure_bucket(const std::string& bucket) const;

    fs::path root_;
};

// Reads and parses one task file.
Result<Task> read_task(const fs::path& path);
// Streams the names in a directory ("." and ".." skipped); `fn` returns false to stop.
Status for_each_name(const fs::path& dir, const std::function<bool(std::string_view)>& fn);

}  // namespace pecd::scheduler
