// The stage runner: a stage is one function from one queue file to its outputs. The runner
// claims files by atomic rename, commits outputs with a group commit, and recovers after a crash
// from the directories alone (docs/spool-layout.md, "Commit protocol").
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/result.hpp"
#include "stages/legallog/legal_log.hpp"

namespace pecd::runner {

namespace fs = std::filesystem;

struct StageInput {
    const spool::Envelope& env;
    int fd;
    uint64_t body_offset;
    uint64_t body_size;
    fs::path path;
    // The file's first bytes when the runner has them already (QueueFileInfo::head).
    std::string_view head = {};

    Result<std::string> body() const { return body_prefix(body_size); }
    // The first `size` bytes of the body (all of it when shorter).
    Result<std::string> body_prefix(uint64_t size) const {
        size = std::min(size, body_size);
        if (auto cached = spool::byte_range(head, body_offset, size)) return std::string(*cached);
        return durable::pread_exact(fd, body_offset, size);
    }
    spool::BodySource body_source() const {
        return spool::BodySource::from_file(fd, body_offset, body_size);
    }
};

struct StageOutput {
    std::string destination;  // a stage name (its queue) or "outbox"
    spool::Envelope env;      // env.id must be the input id or derived from it (deterministic)
    spool::BodySource body;
    // The input file itself moves on, unchanged but for new history/attr records appended to
    // it: no copy, one append and one rename. Only for a single output with the input's id,
    // body and routing data; anything else is written as a new file.
    bool in_place = false;
    // When set (microseconds since the epoch), the output waits in deferred/<destination> until
    // then, e.g. the recipients whose delivery failed transiently while the others moved on.
    int64_t defer_until_us = 0;
};

// What a stage made of one input: its outputs, and the legal-log records of the PEC events it
// caused (pec-rules §8). The stage only describes the events; the runner makes the records of a
// whole batch durable (one append, one fdatasync) before it commits any output of that batch, so
// that no output exists without its record. A failed stage (an error) logs nothing.
struct StageResult {
    std::vector<StageOutput> outputs;
    std::vector<legallog::Record> records;

    StageResult() = default;
    // Implicit: a stage without events returns its outputs alone.
    StageResult(std::vector<StageOutput> o) : outputs(std::move(o)) {}  // NOLINT
    StageResult(std::vector<StageOutput> o, std::vector<legallog::Record> r)
        : outputs(std::move(o)), records(std::move(r)) {}
};

// Files a stage function writes outside the spool (a Maildir message, an outbox file) become
// visible by a rename, and only once their content is durable. Inside a runner batch the stage
// leaves both to the runner, which flushes the content of the whole batch's files at once, renames
// them, and commits the batch only after that (docs/spool-layout.md, "Publishing"): one flush per
// batch instead of a few per file.
class BatchPublisher {
  public:
    // The publisher of the batch whose stage function runs on this thread; null outside a runner
    // batch, where the caller makes its file durable and renames it itself.
    static BatchPublisher* current();
    // `tmp` is complete and closed; it is renamed to `dest` (never replacing a file) once durable.
    void publish(fs::path tmp, fs::path dest) {
        pending_.push_back({std::move(tmp), std::move(dest), item_});
    }
    bool empty() const { return pending_.empty() && linked_dirs_.empty(); }
    // The same for any caller: left to the batch of this thread if there is one, else done now
    // (fdatasync, rename, fsync of dest's directory; tmp removed on failure).
    static Status publish_durably(const fs::path& tmp, const fs::path& dest);
    // Publishes a file that is already complete and durable (a queue file) under a second name,
    // by link(2), at once: no copy, no temporary. The new name becomes durable with the batch
    // (before it commits), or now outside a batch. Idempotent: a re-run after a crash finds the
    // name already on the same file. A link made by an abandoned batch stays: its input runs
    // again and finds it.
    static Status link_durably(const fs::path& existing, const fs::path& dest);

  private:
    friend class StageRunner;
    struct Pending {
        fs::path tmp, dest;
        size_t item = 0;  // the batch input whose stage function published it
    };
    std::vector<Pending> pending_;
    size_t item_ = 0;                    // the input the stage function is running for
    std::vector<fs::path> linked_dirs_;  // directories that got a new name by link_durably
};

// Returning an error: ErrorKind::transient -> deferred with backoff; anything else -> quarantine.
using StageFunction = std::function<Result<StageResult>(const StageInput&)>;

// The pass-through stage used until a stage has real logic: same envelope, same bytes, next queue.
StageFunction pass_through(std::string destination);

enum class SyncMode {
    // fdatasync every file and fsync every directory at each ordering point.
    strict,
    // Group commit: one syncfs() per ordering point for the whole batch. Same ordering as strict;
    // syncfs also flushes what other processes wrote on the spool filesystem.
    batch,
};

struct RunnerOptions {
    size_t batch_size = 64;
    SyncMode sync = SyncMode::batch;
    std::chrono::milliseconds rescan_interval{5000};
    std::chrono::milliseconds deferred_scan_interval{1000};
    std::chrono::milliseconds backoff_base{30'000};
    std::chrono::milliseconds backoff_max{3'600'000};
    int max_attempts = 30;  // then quarantine: "gave up"
};

struct RunnerStats {
    std::atomic<uint64_t> processed{0};
    std::atomic<uint64_t> deferred{0};
    std::atomic<uint64_t> quarantined{0};
    std::atomic<uint64_t> batches{0};
};

class StageRunner {
  public:
    StageRunner(spool::Spool spool, std::string stage, StageFunction fn, RunnerOptions options);

    const std::string& stage() const { return stage_; }
    RunnerStats& stats() { return stats_; }

    // Finishes what a dead predecessor left in active/<stage>: committed output sets are
    // delivered, half-written ones discarded, claimed inputs put back in the queue.
    Status recover();
    // Claims and processes everything in the queue until a pass finds nothing (or `stop`).
    Result<size_t> drain(const std::atomic<bool>& stop);
    // Claims and processes the named files: inotify's hints, names moved into the queue (or out
    // of it). A name no longer there is skipped, and one that is no queue id is left to the
    // next drain(), which lists the queue and finds whatever a lost hint missed.
    Result<size_t> drain_named(const std::atomic<bool>& stop,
                               const std::vector<std::string>& names);
    // Whether claims are recorded so that drain_named() skips the event each one causes. run()
    // turns it on while its watch works; a test turns it on to drive drain_named() as run() does.
    void set_track_own_claims(bool on) {
        track_own_claims_ = on;
        if (!on) own_claims_.clear();
    }
    // Moves deferred files whose next attempt is due back into the queue.
    Result<size_t> release_due_deferred();
    // The legal log of this stage process (null: none). The runner appends the records of each
    // batch and syncs them before the batch's commit; run() rotates it daily and closes it on
    // stop.
    void set_legal_log(std::unique_ptr<legallog::Writer> writer) { legal_log_ = std::move(writer); }
    legallog::Writer* legal_log() { return legal_log_.get(); }
    // Closes the log's file when its day is over (run() calls it on a timer).
    Status rotate_legal_log();
    // Closes the log's file now (SIGTERM): a close line, fdatasync.
    Status close_legal_log(std::string_view reason = "shutdown");
    // Test hook around the batch's legal-log step (crash tests kill the process there): before
    // the records are appended (nothing of the batch may be committed yet) and after they are
    // durable (nothing committed yet either: the commits follow).
    enum class LogPoint { before_append, after_sync };
    void set_log_hook(std::function<void(LogPoint)> hook) { log_hook_ = std::move(hook); }

    // Event loop (libuv): inotify on the queue dir as a hint, plus periodic rescans. Returns when
    // `stop` is set and `wake()` is called; the batch in hand is finished first.
    Status run(const std::atomic<bool>& stop);
    void wake();
    void detach_wake();  // the loop is closing: wake() must not touch its handle any more

  private:
    struct Claimed;
    using NextName = std::function<std::optional<std::string_view>()>;
    // Claims each name `next` gives and processes them in batches; `listed`: the names come
    // from listing the queue (a stranger is quarantined) rather than from hints.
    Result<size_t> claim_and_process(const std::atomic<bool>& stop, const NextName& next,
                                     bool listed);
    // Batch mode: the last batch's moves are made durable when the queue runs dry.
    Status sync_moves_when_idle();
    Result<size_t> process_batch(std::vector<std::string>& names);
    bool plan_route_in_place(Claimed& c, std::vector<StageOutput>& outputs, int64_t now);
    bool append_route(Claimed& c);
    void write_output_set(Claimed& c, std::vector<StageOutput>& outputs, int64_t now,
                          std::vector<int>& fds_to_sync);
    Status sync_point(const std::vector<int>& fds, const std::vector<fs::path>& dirs);
    // Unlinks what an input wrote beside it; false if any of it is still there.
    bool remove_outputs(Claimed& c);
    // Moves a committed set's files to their queues: listed (recovery), or named by the caller.
    Status deliver_output_set(const fs::path& out_dir, std::vector<fs::path>* touched_dirs);
    Status deliver_output_set(const fs::path& out_dir, const std::vector<std::string>& names,
                              std::vector<fs::path>* touched_dirs);
    Status quarantine_file(const fs::path& file, const std::string& id, const std::string& reason);
    dev_t spool_device();
    // A file that cannot be renamed into place fails its input alone (in `failed`, with the
    // reason): the input is deferred and its other files are left out; a failed flush fails the
    // batch.
    Status publish(BatchPublisher& publisher, std::map<size_t, std::string>& failed);

    spool::Spool spool_;
    std::string stage_;
    StageFunction fn_;
    RunnerOptions options_;
    RunnerStats stats_;
    fs::path queue_dir_;
    fs::path active_dir_;
    std::mutex wake_mutex_;
    void* loop_async_ = nullptr;  // uv_async_t of the running loop, guarded by wake_mutex_
    durable::Fd spool_fd_;        // kept open for syncfs (batch mode)
    dev_t spool_device_ = 0;
    // Batch mode: the last batch's moves wait for the next sync point 1, or drain()'s last sync.
    bool unsynced_moves_ = false;
    // run() with a watch: the names this runner claimed whose inotify event (moved out of the
    // queue) drain_named() has not seen yet; that event is skipped rather than tried.
    bool track_own_claims_ = false;
    std::unordered_multiset<std::string> own_claims_;
    std::unique_ptr<legallog::Writer> legal_log_;
    std::function<void(LogPoint)> log_hook_;
};

}  // namespace pecd::runner
