#include "stages/runner/runner.hpp"

#include <dirent.h>
#include <sys/stat.h>
#include <uv.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>

#include "spool-layout/queue_id.hpp"
#include "stages/common/log.hpp"

namespace pecd::runner {
namespace {

// Output sets of earlier versions: a directory <id>.out.tmp, committed by its rename to <id>.out.
// recover() still finishes or discards them (a spool left by a crash before an upgrade).
constexpr std::string_view kOutTmpSuffix = ".out.tmp";
constexpr std::string_view kOutSuffix = ".out";
// An output is written beside its input as <input id>.out.<destination>~<suffix>, where its own
// queue id is the input's followed by <suffix> (often empty): the name stays within NAME_MAX for
// the longest ids. The unlink of the input commits all of them (docs/spool-layout.md, "Commit
// protocol").
constexpr std::string_view kOutInfix = ".out.";
constexpr std::string_view kDeferTmpSuffix = ".defer.tmp";
constexpr char kDestSeparator = '~';
constexpr std::string_view kDeferredMark = "@deferred";

bool ends_with(std::string_view s, std::string_view suffix) {
    return s.ends_with(suffix);
}

// What an output's file name says: "<input id>.out.<destination>~<suffix>" beside its input,
// for the id <input id><suffix>, or "<destination>~<id>" inside a directory of an earlier
// version (no input). nullopt: neither. (A queue id has one '.', at a fixed place, so the first
// ".out." after it ends the input's id.)
struct OutputName {
    std::string input, destination, id;
};
std::optional<OutputName> parse_output_name(std::string_view name) {
    OutputName out;
    if (size_t infix = name.find(kOutInfix, 14); infix != std::string_view::npos) {
        out.input = name.substr(0, infix);
        name.remove_prefix(infix + kOutInfix.size());
    }
    size_t sep = name.find(kDestSeparator);
    if (sep == std::string_view::npos) return std::nullopt;
    out.destination = name.substr(0, sep);
    out.id = out.input + std::string(name.substr(sep + 1));
    return out;
}

// The input an output beside it belongs to; empty for any other name.
std::string output_owner(std::string_view name) {
    auto parsed = parse_output_name(name);
    return parsed && spool::is_valid_queue_id(parsed->input) ? parsed->input : std::string();
}

}  // namespace

StageFunction pass_through(std::string destination) {
    return [destination](const StageInput& in) -> Result<StageResult> {
        std::vector<StageOutput> out;
        out.push_back(StageOutput{destination, in.env, in.body_source(), /*in_place=*/true});
        return out;
    };
}

Status StageRunner::rotate_legal_log() {
    if (!legal_log_) return {};
    return legal_log_->rotate_if_due();
}

Status StageRunner::close_legal_log(std::string_view reason) {
    if (!legal_log_) return {};
    return legal_log_->close(reason);
}

StageRunner::StageRunner(spool::Spool spool, std::string stage, StageFunction fn,
                         RunnerOptions options)
    : spool_(std::move(spool)),
      stage_(std::move(stage)),
      fn_(std::move(fn)),
      options_(options),
      queue_dir_(spool_.queue_dir(stage_)),
      active_dir_(spool_.active_dir(stage_)) {}

// Makes everything written so far durable. In batch mode one syncfs covers files, renames and
// directories of the whole spool filesystem: the group commit.
Status StageRunner::sync_point(const std::vector<int>& fds, const std::vector<fs::path>& dirs) {
    if (options_.sync == SyncMode::batch) {
        if (!spool_fd_) {
            auto dir = durable::open_dir(spool_.root());
            if (!dir) return std::unexpected(dir.error());
            spool_fd_ = std::move(*dir);
        }
        return durable::sync_filesystem_shared(spool_fd_.get(), spool_device());
    }
    for (int fd : fds)
        if (auto st = durable::sync_data(fd); !st) return st;
    std::set<fs::path> unique(dirs.begin(), dirs.end());
    for (const auto& d : unique)
        if (auto st = durable::sync_dir(d); !st) return st;
    return {};
}

namespace {
thread_local BatchPublisher* current_publisher = nullptr;

struct PublisherScope {
    explicit PublisherScope(BatchPublisher* p) { current_publisher = p; }
    ~PublisherScope() { current_publisher = nullptr; }
};

dev_t device_of(const fs::path& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? st.st_dev : 0;
}
}  // namespace

BatchPublisher* BatchPublisher::current() {
    return current_publisher;
}

Status BatchPublisher::publish_durably(const fs::path& tmp, const fs::path& dest) {
    if (auto* batch = current()) {
        batch->publish(tmp, dest);
        return {};
    }
    Status st = durable::sync_data_at(tmp);
    if (st) st = durable::rename_noreplace(tmp, dest);
    if (!st) {
        (void)durable::unlink_file(tmp);
        return st;
    }
    return durable::sync_dir(dest.parent_path());
}

Status BatchPublisher::link_durably(const fs::path& existing, const fs::path& dest) {
    if (auto st = durable::link_file(existing, dest); !st) return st;
    if (auto* batch = current()) {
        batch->linked_dirs_.push_back(dest.parent_path());
        return {};
    }
    return durable::sync_dir(dest.parent_path());
}

dev_t StageRunner::spool_device() {
    if (spool_device_ == 0) spool_device_ = device_of(spool_.root());
    return spool_device_;
}

// The batch's files outside the spool: content durable, then renamed into place. In batch mode
// the directories' new names become durable with sync point 1 when they are on the spool's
// filesystem, else with one more syncfs of theirs; in strict mode each file and directory is
// synced. A failed flush abandons the batch (the caller removes what is left); a failed rename
// fails only the input that published the file.
Status StageRunner::publish(BatchPublisher& publisher, std::map<size_t, std::string>& failed) {
    auto& pending = publisher.pending_;
    auto discard_from = [&](size_t first) {
        for (size_t i = first; i < pending.size(); ++i) (void)durable::unlink_file(pending[i].tmp);
        pending.clear();
    };
    // The device of each directory, looked up once per batch (a batch's files share a few).
    std::map<fs::path, dev_t> devices;
    auto device_of_dir = [&](const fs::path& dir) {
        auto [it, inserted] = devices.try_emplace(dir, 0);
        if (inserted) it->second = device_of(dir);
        return it->second;
    };
    std::set<dev_t> flushed;
    std::set<fs::path> dest_dirs(publisher.linked_dirs_.begin(), publisher.linked_dirs_.end());
    publisher.linked_dirs_.clear();
    for (const auto& p : pending) {
        Status st;
        if (options_.sync == SyncMode::strict) {
            st = durable::sync_data_at(p.tmp);
        } else if (dev_t dev = device_of_dir(p.tmp.parent_path()); flushed.insert(dev).second) {
            // On the spool's filesystem: the spool's descriptor, not one more open directory.
            st = dev != 0 && dev == spool_device()
                     ? sync_point({}, {})
                     : durable::sync_filesystem_at(p.tmp.parent_path());
        }
        if (!st) {
            discard_from(0);
            return st;
        }
    }
    // A rename that fails (a mailbox directory removed meanwhile) fails its input, not the
    // batch: the others commit, that one is deferred and runs again. Its files that did go are
    // not delivered twice: the embedded Maildir names them by the queue id and finds them again;
    // an outbound input publishes one file.
    for (const auto& p : pending) {
        if (failed.contains(p.item)) {
            (void)durable::unlink_file(p.tmp);
            continue;
        }
        if (auto st = durable::rename_noreplace(p.tmp, p.dest); !st) {
            (void)durable::unlink_file(p.tmp);
            failed.emplace(p.item, "publishing " + p.dest.string() + ": " + st.error().message);
            continue;
        }
        dest_dirs.insert(p.dest.parent_path());
    }
    pending.clear();
    std::set<dev_t> synced;
    for (const auto& dir : dest_dirs) {
        Status st;
        if (options_.sync == SyncMode::strict)
            st = durable::sync_dir(dir);
        else if (dev_t dev = device_of_dir(dir); dev != spool_device() && synced.insert(dev).second)
            st = durable::sync_filesystem_at(dir);
        if (!st) return st;
    }
    return {};
}

Status StageRunner::quarantine_file(const fs::path& file, const std::string& id,
                                    const std::string& reason) {
    fs::path qdir = spool_.area_dir(spool::Area::quarantine, stage_);
    // A file with an invalid name gets a fresh queue id so that pecq lists it; .reason keeps the
    // original name.
    std::string name = spool::is_valid_queue_id(id) ? id : spool::new_queue_id(spool::now_us());
    std::string text = "stage: " + stage_ + "\ntime: " + std::to_string(spool::now_us()) +
                       "\noriginal-name: " + spool::percent_encode(file.filename().string()) +
                       "\nreason: " + reason + "\n";
    if (auto st = durable::write_file_atomic(qdir / (name + ".reason"), text); !st) return st;
    if (auto st = durable::rename_noreplace(file, qdir / name); !st) return st;
    stats_.quarantined++;
    PECD_LOG(warn) << stage_ << ": " << name << ": quarantined: " << reason;
    return durable::sync_dir(qdir);
}

// Moves every file of a committed output set to its destination queue. Each rename is atomic
// and removes the entry from the set, so a crash in the middle never moves anything twice.
Status StageRunner::deliver_output_set(const fs::path& out_dir, std::vector<fs::path>* touched) {
    auto names = durable::list_dir(out_dir);
    if (!names)
        return names.error().kind == ErrorKind::not_found ? Status{}
                                                          : Status(std::unexpected(names.error()));
    return deliver_output_set(out_dir, *names, touched);
}

Status StageRunner::deliver_output_set(const fs::path& out_dir,
                                       const std::vector<std::string>& names,
                                       std::vector<fs::path>* touched) {
    for (const auto& name : names) {
        auto parsed = parse_output_name(name);
        if (!parsed) {
            PECD_LOG(error) << stage_ << ": unexpected file " << (out_dir / name).string();
            continue;
        }
        std::string& dest = parsed->destination;
        const std::string& id = parsed->id;
        // "<stage>@deferred~<id>": the output waits in deferred/<stage> (its envelope says until
        // when).
        bool deferred = dest.ends_with(kDeferredMark);
        if (deferred) dest.resize(dest.size() - kDeferredMark.size());
        auto dest_dir = deferred && spool::is_stage(dest)
                            ? Result<fs::path>(spool_.area_dir(spool::Area::deferred, dest))
                            : spool_.destination_dir(dest);
        if (!dest_dir || !spool::is_valid_queue_id(id)) {
            // Only a file that pecd did not write can get here (a stage's outputs are checked
            // before they are written): set aside, never a reason for recovery to stop.
            auto q = quarantine_file(out_dir / name, id,
                                     "not an output pecd writes (destination " + dest + ")");
            if (!q) return q;
            continue;
        }
        auto moved = durable::rename_noreplace(out_dir / name, *dest_dir / id);
        if (!moved && moved.error().kind == ErrorKind::conflict) {
            // Never overwrite a queue file: two messages with one id is a bug to look at.
            auto q = quarantine_file(out_dir / name, id,
                                     "an output with the same queue id already exists in " + dest);
            if (!q) return q;
            continue;
        }
        if (!moved) return moved;
        touched->push_back(*dest_dir);
    }
    return {};
}

Status StageRunner::recover() {
    auto names = durable::list_dir(active_dir_);
    if (!names) return std::unexpected(names.error());
    std::set<std::string> committed, inputs;
    std::map<std::string, std::vector<std::string>> outputs;  // by the input that wrote them
    size_t discarded = 0, returned = 0, committed_beside = 0;
    for (const auto& name : *names) {
        if (spool::is_valid_queue_id(name)) inputs.insert(name);
        if (std::string owner = output_owner(name); !owner.empty()) {
            outputs[owner].push_back(name);
        } else if (ends_with(name, kOutTmpSuffix)) {
            if (auto st = durable::remove_tree(active_dir_ / name); !st) return st;
            ++discarded;
        } else if (ends_with(name, kDeferTmpSuffix)) {
            if (auto st = durable::unlink_file(active_dir_ / name); !st) return st;
        } else if (ends_with(name, kOutSuffix)) {
            committed.insert(name.substr(0, name.size() - kOutSuffix.size()));
        }
    }
    // A committed output set means its input is done: remove the input first (durably), then
    // finish delivering the set, then drop the set.
    for (const auto& id : committed)
        if (auto st = durable::unlink_file(active_dir_ / id); !st) return st;
    if (!committed.empty())
        if (auto st = sync_point({}, {active_dir_}); !st) return st;
    std::vector<fs::path> touched{active_dir_};
    for (const auto& id : committed)
        if (auto st = deliver_output_set(active_dir_ / (id + std::string(kOutSuffix)), &touched);
            !st)
            return st;
    // Outputs beside their input: the input still there means they were never committed (the
    // input runs again); the input gone means its unlink committed them, and they move on once
    // that unlink is durable (or a power cut could bring the input back beside a moved output).
    for (const auto& [id, files] : outputs) {
        if (!inputs.contains(id)) {
            ++committed_beside;
            continue;
        }
        for (const auto& f : files)
            if (auto st = durable::unlink_file(active_dir_ / f); !st) return st;
        ++discarded;
    }
    if (committed_beside > 0)
        if (auto st = sync_point({}, {active_dir_}); !st) return st;
    for (const auto& [id, files] : outputs)
        if (!inputs.contains(id))
            if (auto st = deliver_output_set(active_dir_, files, &touched); !st) return st;
    if (auto st = sync_point({}, touched); !st) return st;
    for (const auto& id : committed)
        if (auto st = durable::remove_dir(active_dir_ / (id + std::string(kOutSuffix))); !st)
            return st;
    // Claimed inputs: one whose last record is this stage's routing was committed in place and
    // moves on; any other goes back to the queue (a torn append is cut off first).
    size_t routed = 0;
    std::vector<fs::path> route_dirs{queue_dir_, active_dir_};
    for (const auto& name : *names) {
        if (!spool::is_valid_queue_id(name) || committed.contains(name)) continue;
        fs::path claimed = active_dir_ / name;
        fs::path target = queue_dir_ / name;
        if (auto fd = durable::open_file(claimed, O_RDWR); fd) {
            auto info = spool::read_header(fd->get(), claimed.string());
            if (info && info->torn_size > 0 &&
                ::ftruncate(fd->get(), static_cast<off_t>(info->complete_size())) != 0)
                return fail_errno("truncate " + claimed.string());
            if (info && !info->env.history.empty()) {
                const auto& last = info->env.history.back();
                if (last.stage == stage_ && last.note.starts_with("-> ")) {
                    auto dest = spool_.destination_dir(last.note.substr(3));
                    if (dest) {
                        target = *dest / name;
                        route_dirs.push_back(*dest);
                    }
                }
            }
        }
        auto st = durable::rename_noreplace(claimed, target);
        if (!st && st.error().kind == ErrorKind::conflict) {
            st = quarantine_file(claimed, name,
                                 "a message with the same queue id already exists in " +
                                     target.parent_path().string());
        } else if (st) {
            ++(target.parent_path() == queue_dir_ ? returned : routed);
        }
        if (!st && st.error().kind != ErrorKind::not_found) return st;
    }
    // Anything else in active/ that recovery does not understand is set aside, never left to
    // block the stage.
    for (const auto& name : *names) {
        if (spool::is_valid_queue_id(name) || !output_owner(name).empty() ||
            ends_with(name, kOutTmpSuffix) || ends_with(name, kOutSuffix) ||
            ends_with(name, kDeferTmpSuffix))
            continue;
        struct stat st {};
        if (::stat((active_dir_ / name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
        if (auto q =
                quarantine_file(active_dir_ / name, name, "unexpected file in active/" + stage_);
            !q)
            return q;
    }
    if (returned + routed > 0)
        if (auto st = sync_point({}, route_dirs); !st) return st;
    if (discarded + returned + routed + committed.size() + committed_beside > 0)
        PECD_LOG(info) << stage_ << ": recovered: " << committed.size() + committed_beside + routed
                       << " committed, " << discarded << " discarded, " << returned
                       << " returned to queue";
    return {};
}

Result<size_t> StageRunner::release_due_deferred() {
    fs::path dir = spool_.area_dir(spool::Area::deferred, stage_);
    auto names = durable::list_dir(dir);
    if (!names) return std::unexpected(names.error());
    int64_t now = spool::now_us();
    size_t moved = 0;
    for (const auto& name : *names) {
        if (!spool::is_valid_queue_id(name)) continue;
        auto info = spool::read_header(dir / name);
        if (!info) {
            if (info.error().kind == ErrorKind::corrupt)
                (void)quarantine_file(dir / name, name, info.error().message);
            continue;
        }
        if (info->env.next_attempt_us > now) continue;
        auto st = durable::rename_noreplace(dir / name, queue_dir_ / name);
        if (st) ++moved;
    }
    if (moved > 0)
        if (auto st = sync_point({}, {queue_dir_, dir}); !st) return std::unexpected(st.error());
    return moved;
}

struct StageRunner::Claimed {
    // ok: an output set; route: in place; consume: no output at all, the input just goes.
    // keep: stays in active/ for recover() (an output it wrote could not be removed).
    enum class Outcome { ok, route, consume, defer, quarantine, put_back, keep };
    std::string id;
    fs::path input;
    durable::Fd fd;
    spool::QueueFileInfo info;
    Outcome outcome = Outcome::ok;
    std::string reason;
    std::vector<durable::Fd> out_fds;
    std::vector<std::string> out_names;  // Outcome::ok: the set's file names, as written
    bool committed = false;              // Outcome::ok: the input is unlinked, the set is real
    durable::Fd defer_fd;
    fs::path route_dir;                     // Outcome::route: where the input itself goes
    std::string route_records;              // Outcome::route: the records to append
    std::vector<StageOutput> outputs;       // Outcome::route: kept for the rewrite fallback
    std::vector<legallog::Record> records;  // the stage's legal-log records
};

// The in-place hop, planned: whether the single output can be this stage's records appended to
// the claimed file. The append itself waits until the batch's legal-log records are durable,
// because the appended routing record is the commit (recover() moves such a file on instead of
// re-running it), and page cache survives a killed process.
bool StageRunner::plan_route_in_place(Claimed& c, std::vector<StageOutput>& outputs, int64_t now) {
    if (outputs.size() != 1 || !outputs[0].in_place || outputs[0].defer_until_us > 0) return false;
    StageOutput& out = outputs[0];
    const spool::Envelope& in = c.info.env;
    auto dest = spool_.destination_dir(out.destination);
    if (!dest || out.env.id != c.id || out.env.sender != in.sender ||
        out.env.recipients != in.recipients || out.env.user != in.user ||
        out.env.client != in.client || out.body.fd != c.fd.get() ||
        out.body.offset != c.info.body_offset() || out.body.size != c.info.body_size ||
        out.env.attempts != in.attempts || out.env.history.size() < in.history.size())
        return false;
    // A removed attribute cannot be expressed by appending: write the file anew instead.
    for (const auto& [key, value] : in.attrs)
        if (!out.env.attr(key)) return false;
    std::string records;
    if (in.attempts != 0 || in.next_attempt_us != 0 || !in.last_error.empty())
        records += spool::encode_trailer_retry_reset();
    for (size_t i = in.history.size(); i < out.env.history.size(); ++i)
        records += spool::encode_trailer_hist(out.env.history[i]);
    for (const auto& [key, value] : out.env.attrs)
        if (in.attr(key) != value) records += spool::encode_trailer_attr(key, value);
    records += spool::encode_trailer_hist({stage_, now, "-> " + out.destination});
    c.outcome = Claimed::Outcome::route;
    c.route_dir = *dest;
    c.route_records = std::move(records);
    return true;
}

// The planned in-place hop, done: one append to the claimed file.
bool StageRunner::append_route(Claimed& c) {
    if (c.info.torn_size > 0 &&
        ::ftruncate(c.fd.get(), static_cast<off_t>(c.info.complete_size())) != 0)
        return false;
    auto written = durable::pwrite_all(c.fd.get(), c.route_records,
                                       static_cast<off_t>(c.info.complete_size()));
    if (!written) {
        // Cut a partial append off again; the rewrite path (or a deferral) takes over.
        (void)::ftruncate(c.fd.get(), static_cast<off_t>(c.info.complete_size()));
        return false;
    }
    return true;
}

bool StageRunner::remove_outputs(Claimed& c) {
    bool all = true;
    for (const auto& name : c.out_names) {
        auto st = durable::unlink_file(active_dir_ / name);
        if (!st) {
            PECD_LOG(error) << stage_ << ": " << c.id << ": " << st.error().message;
            all = false;
        }
    }
    if (all) c.out_names.clear();
    return all;
}

// Writes the output set beside its input, as <id>.out.<destination>~<suffix>; the set becomes
// real only when the input is unlinked. On failure the input is deferred or quarantined instead,
// or kept in active/ if what it wrote cannot be removed.
void StageRunner::write_output_set(Claimed& c, std::vector<StageOutput>& outputs, int64_t now,
                                   std::vector<int>& fds_to_sync) {
    c.outcome = Claimed::Outcome::ok;
    const std::string prefix = c.id + std::string(kOutInfix);
    Status st;
    for (auto& out : outputs) {
        if (!st) break;
        if (!spool::is_valid_queue_id(out.env.id) || !out.env.id.starts_with(c.id) ||
            !spool_.destination_dir(out.destination) ||
            (out.defer_until_us > 0 && !spool::is_stage(out.destination))) {
            st = fail(ErrorKind::permanent, "stage produced an invalid output (" + out.destination +
                                                ", " + out.env.id + ")");
            break;
        }
        std::string set_name = out.destination;
        if (out.defer_until_us > 0) {
            // A deferred output keeps its retry state: the stage decides attempts/last_error.
            out.env.next_attempt_us = out.defer_until_us;
            out.env.history.push_back({stage_, now, "-> " + out.destination + " (deferred)"});
            set_name += kDeferredMark;
        } else {
            out.env.attempts = 0;
            out.env.next_attempt_us = 0;
            out.env.last_error.clear();
            out.env.history.push_back({stage_, now, "-> " + out.destination});
        }
        std::string file_name = prefix + set_name + kDestSeparator + out.env.id.substr(c.id.size());
        if (std::find(c.out_names.begin(), c.out_names.end(), file_name) != c.out_names.end()) {
            st = fail(ErrorKind::permanent, "stage produced two outputs with one queue id (" +
                                                out.destination + ", " + out.env.id + ")");
            break;
        }
        const fs::path path = active_dir_ / file_name;
        auto written = spool::write_queue_file(path, out.env, out.body);
        if (!written && written.error().sys_errno == EEXIST) {
            // Left by an earlier try of this input whose clean-up failed: never committed.
            (void)durable::unlink_file(path);
            written = spool::write_queue_file(path, out.env, out.body);
        }
        if (!written) {
            st = std::unexpected(written.error());
            // Whatever the failed write left (or a leftover it met) goes with the rest below.
            c.out_names.push_back(std::move(file_name));
        } else {
            c.out_fds.push_back(std::move(*written));
            c.out_names.push_back(std::move(file_name));
        }
    }
    if (!st) {
        c.out_fds.clear();
        c.reason = st.error().message;
        if (!remove_outputs(c)) {
            // An output left beside an input that moved on would pass for committed.
            c.outcome = Claimed::Outcome::keep;
            return;
        }
        c.outcome = st.error().kind == ErrorKind::transient ? Claimed::Outcome::defer
                                                            : Claimed::Outcome::quarantine;
        return;
    }
    for (auto& f : c.out_fds) fds_to_sync.push_back(f.get());
}

Result<size_t> StageRunner::process_batch(std::vector<std::string>& names) {
    std::vector<Claimed> items(names.size());
    std::vector<int> fds_to_sync;
    int64_t now = spool::now_us();
    BatchPublisher publisher;

    for (size_t i = 0; i < names.size(); ++i) {
        Claimed& c = items[i];
        c.id = names[i];
        c.input = active_dir_ / c.id;
        auto fd = durable::open_file(c.input, O_RDWR);
        if (!fd) {
            c.outcome = Claimed::Outcome::put_back;
            c.reason = fd.error().message;
            continue;
        }
        c.fd = std::move(*fd);
        auto info = spool::read_header(c.fd.get(), c.input.string());
        if (!info) {
            c.outcome = info.error().kind == ErrorKind::corrupt ? Claimed::Outcome::quarantine
                                                                : Claimed::Outcome::put_back;
            c.reason = info.error().message;
            continue;
        }
        c.info = std::move(*info);
        if (c.info.env.id != c.id) {
            c.outcome = Claimed::Outcome::quarantine;
            c.reason = "file name does not match envelope id " + c.info.env.id;
            continue;
        }
        StageInput in{c.info.env,       c.fd.get(), c.info.body_offset(),
                      c.info.body_size, c.input,    c.info.head};
        publisher.item_ = i;
        auto result = [&] {
            PublisherScope scope(&publisher);
            return fn_(in);
        }();
        if (!result) {
            c.outcome = result.error().kind == ErrorKind::transient ? Claimed::Outcome::defer
                                                                    : Claimed::Outcome::quarantine;
            c.reason = result.error().message;
            continue;
        }
        c.records = std::move(result->records);
        if (result->outputs.empty())
            c.outcome = Claimed::Outcome::consume;
        else if (plan_route_in_place(c, result->outputs, now))
            c.outputs = std::move(result->outputs);
        else
            write_output_set(c, result->outputs, now, fds_to_sync);
    }

    bool log_folded = false;
    // What an input wrote before its commit: its output set, its rewrite, and the records an
    // in-place hop appended (cut off, so that the file is back as it was claimed).
    // False if an output could not be removed: then the input must stay in active/, where
    // recover() finds the two together and removes the output.
    auto discard_uncommitted = [&](Claimed& c) {
        if (c.committed) return true;  // its outputs are recover()'s to move on
        bool removed = remove_outputs(c);
        (void)durable::unlink_file(active_dir_ / (c.id + std::string(kDeferTmpSuffix)));
        if (c.outcome == Claimed::Outcome::route)
            (void)::ftruncate(c.fd.get(), static_cast<off_t>(c.info.complete_size()));
        return removed;
    };
    auto abandon = [&](const Error& e) -> Result<size_t> {
        // The batch could not be made durable: discard everything uncommitted; claimed inputs
        // stay in active/ and the next recover() puts them back in the queue.
        if (log_folded) (void)legal_log_->drop_unsynced();
        for (const auto& p : publisher.pending_) (void)durable::unlink_file(p.tmp);
        for (auto& c : items) discard_uncommitted(c);
        return std::unexpected(e);
    };

    // A deferred input is rewritten with one more attempt and its next-attempt time (committed
    // with the batch), or quarantined once it has had them all.
    auto prepare_deferral = [&](Claimed& c) {
        spool::Envelope env = c.info.env;
        env.attempts += 1;
        if (env.attempts >= options_.max_attempts) {
            c.outcome = Claimed::Outcome::quarantine;
            c.reason = "gave up after " + std::to_string(env.attempts) + " attempts: " + c.reason;
            return;
        }
        double factor = std::pow(2.0, std::min(env.attempts - 1, 30));
        auto delay =
            std::min<double>(options_.backoff_base.count() * factor, options_.backoff_max.count());
        env.next_attempt_us = now + static_cast<int64_t>(delay) * 1000;
        env.last_error = c.reason;
        env.history.push_back({stage_, now, "deferred: " + c.reason});
        fs::path tmp = active_dir_ / (c.id + std::string(kDeferTmpSuffix));
        (void)durable::unlink_file(tmp);
        auto written = spool::write_queue_file(
            tmp, env,
            spool::BodySource::from_file(c.fd.get(), c.info.body_offset(), c.info.body_size));
        // If even the rewrite fails (disk full), the file is deferred as it is: it comes back
        // at the next deferred scan, and the fault has been logged.
        if (written) {
            c.defer_fd = std::move(*written);
            fds_to_sync.push_back(c.defer_fd.get());
        }
    };

    // The legal log before any commit: the records of everything this batch is about to commit
    // are durable first (one append, one fdatasync), so no output exists without its record. A
    // crash after this and before the commit re-runs the inputs, which logs their events again:
    // the log is at-least-once (docs/legal-log.md).
    if (log_hook_) log_hook_(LogPoint::before_append);
    if (legal_log_) {
        std::vector<legallog::Record> records;
        // An in-place hop is committed by its append, which sync point 1 makes durable together
        // with everything else: its records must be durable before that append is written.
        bool route_has_records = false;
        for (auto& c : items)
            if (c.outcome == Claimed::Outcome::ok || c.outcome == Claimed::Outcome::route ||
                c.outcome == Claimed::Outcome::consume) {
                route_has_records |= c.outcome == Claimed::Outcome::route && !c.records.empty();
                std::move(c.records.begin(), c.records.end(), std::back_inserter(records));
            }
        if (!records.empty()) {
            Status st = legal_log_->append(records);
            // Output sets and consumed inputs are committed only after sync point 1: in batch
            // mode its syncfs makes the records durable too, when the log is on the spool's
            // filesystem, and the log needs no flush of its own.
            log_folded = st && options_.sync == SyncMode::batch && !route_has_records &&
                         legal_log_->device() == spool_device();
            if (st && !log_folded) st = legal_log_->sync();
            if (!st) return abandon(st.error());
        }
    }
    if (log_hook_) log_hook_(LogPoint::after_sync);
    for (auto& c : items) {
        if (c.outcome == Claimed::Outcome::route) {
            if (append_route(c))
                fds_to_sync.push_back(c.fd.get());
            else
                write_output_set(c, c.outputs, now, fds_to_sync);
        }
        if (c.outcome == Claimed::Outcome::defer) prepare_deferral(c);
    }

    // What the stages wrote outside the spool is in place before anything of the batch commits.
    // An input whose file could not be put in place is deferred alone; its outputs are dropped
    // (its records are in the log already: the log is at-least-once).
    if (!publisher.empty()) {
        std::map<size_t, std::string> failed;
        if (auto st = publish(publisher, failed); !st) return abandon(st.error());
        for (const auto& [i, reason] : failed) {
            Claimed& c = items[i];
            PECD_LOG(warn) << stage_ << ": " << c.id << ": " << reason;
            // An input that failed in its stage is deferred or quarantined already.
            if (c.outcome != Claimed::Outcome::ok && c.outcome != Claimed::Outcome::route &&
                c.outcome != Claimed::Outcome::consume)
                continue;
            c.reason = reason;
            if (!discard_uncommitted(c)) {
                c.outcome = Claimed::Outcome::keep;
                continue;
            }
            c.outcome = Claimed::Outcome::defer;
            prepare_deferral(c);
        }
    }

    // Ordering point 1: output sets and rewrites are on disk, names included (in strict mode
    // active/ is synced too, or a committed set could come back without its files).
    bool has_output_sets = std::any_of(items.begin(), items.end(), [](const Claimed& c) {
        return c.outcome == Claimed::Outcome::ok;
    });
    std::vector<fs::path> set_dirs;
    if (has_output_sets) set_dirs.push_back(active_dir_);
    if (auto st = sync_point(fds_to_sync, set_dirs); !st) return abandon(st.error());
    if (log_folded) legal_log_->mark_synced();
    // Sync point 1 also made the previous batch's moves durable (batch mode).
    unsynced_moves_ = false;
    for (auto& c : items) {
        if (c.outcome == Claimed::Outcome::ok) {
            // The commit: with its input gone, the set is what the input became.
            c.fd.reset();
            if (auto st = durable::unlink_file(c.input); !st) {
                // An unlink reported failed may have happened all the same: then the outputs
                // are committed, and must be left for recover() to move on, not discarded.
                struct stat input {};
                c.committed = ::lstat(c.input.c_str(), &input) != 0 && errno == ENOENT;
                return abandon(st.error());
            }
            c.committed = true;
        } else if (c.outcome == Claimed::Outcome::defer && c.defer_fd) {
            auto st =
                durable::rename_file(active_dir_ / (c.id + std::string(kDeferTmpSuffix)), c.input);
            if (!st) return abandon(st.error());
        }
    }
    // Ordering point 2: output-set commits (the inputs' unlinks) are durable before any output
    // moves into a queue, or a power cut could bring an input back beside its delivered
    // outputs. In-place hops and deferrals unlink nothing, so a batch of them skips it. In batch
    // mode the filesystem's journal keeps metadata operations in order (docs/spool-layout.md),
    // so the moves need no flush before them.
    if (has_output_sets && options_.sync == SyncMode::strict)
        if (auto st = sync_point({}, {active_dir_}); !st) return std::unexpected(st.error());

    std::vector<fs::path> touched{active_dir_};
    fs::path deferred_dir = spool_.area_dir(spool::Area::deferred, stage_);
    size_t done = 0;
    Status failure;
    for (auto& c : items) {
        c.fd.reset();
        Status st;
        switch (c.outcome) {
            case Claimed::Outcome::ok:
                // Committed above. The names as written: no listing.
                st = deliver_output_set(active_dir_, c.out_names, &touched);
                if (st) ++done;
                break;
            case Claimed::Outcome::consume:
                // Its records (if any) are durable since sync point 1: nothing else to keep.
                st = durable::unlink_file(c.input);
                if (st) ++done;
                break;
            case Claimed::Outcome::route:
                st = durable::rename_noreplace(c.input, c.route_dir / c.id);
                if (!st && st.error().kind == ErrorKind::conflict) {
                    st = quarantine_file(c.input, c.id,
                                         "a message with the same queue id already exists in " +
                                             c.route_dir.string());
                } else if (st) {
                    touched.push_back(c.route_dir);
                    ++done;
                }
                break;
            case Claimed::Outcome::defer:
                st = durable::rename_noreplace(c.input, deferred_dir / c.id);
                touched.push_back(deferred_dir);
                stats_.deferred++;
                PECD_LOG(info) << stage_ << ": " << c.id << ": deferred: " << c.reason;
                break;
            case Claimed::Outcome::quarantine:
                st = quarantine_file(c.input, c.id, c.reason);
                break;
            case Claimed::Outcome::keep:
                // Left in active/ with what it wrote; the recover() that this failure brings
                // removes the outputs and puts the input back in the queue.
                st = fail(ErrorKind::transient, c.id + ": " + c.reason);
                break;
            case Claimed::Outcome::put_back:
                PECD_LOG(warn) << stage_ << ": " << c.id << ": put back: " << c.reason;
                st = durable::rename_noreplace(c.input, queue_dir_ / c.id);
                break;
        }
        if (!st && failure) failure = st;
    }
    // Ordering point 3: the moves are durable before the batch returns (strict). In batch mode
    // the next batch's sync point 1, or the one drain() takes when the queue runs dry, makes
    // them durable: under load that is one syncfs per batch. (Until then a power cut leaves an
    // output beside its gone input, and recover() moves it again.)
    if (options_.sync == SyncMode::strict) {
        if (auto st = sync_point({}, touched); !st) return std::unexpected(st.error());
    } else {
        unsynced_moves_ = true;
    }
    stats_.processed += done;
    stats_.batches++;
    PECD_LOG(debug) << stage_ << ": batch of " << items.size() << " in "
                    << (spool::now_us() - now) / 1000.0 << " ms";
    if (!failure) return std::unexpected(failure.error());
    return done;
}

Result<size_t> StageRunner::claim_and_process(const std::atomic<bool>& stop, const NextName& next,
                                              bool listed) {
    size_t processed = 0;
    std::vector<std::string> batch;
    Status failure;
    auto flush = [&]() {
        if (batch.empty()) return;
        auto n = process_batch(batch);
        if (!n)
            failure = std::unexpected(n.error());
        else
            processed += *n;
        batch.clear();
    };
    while (auto next_name = next()) {
        std::string_view name = *next_name;
        if (name.empty() || name.front() == '.') continue;
        if (!spool::is_valid_queue_id(name)) {
            // A stranger in the queue. A hint may name something that is gone already: only a
            // listing quarantines.
            if (!listed) continue;
            auto st = quarantine_file(queue_dir_ / std::string(name), std::string(name),
                                      "unexpected file name in queue");
            if (!st) PECD_LOG(error) << stage_ << ": " << st.error().message;
            continue;
        }
        auto claimed = durable::rename_noreplace(queue_dir_ / std::string(name),
                                                 active_dir_ / std::string(name));
        if (!claimed) {
            // Taken by another claimer, or (a hint) our own claim's event, or never there.
            if (claimed.error().kind == ErrorKind::not_found) continue;
            failure = claimed;
            break;
        }
        if (track_own_claims_) own_claims_.emplace(name);
        batch.emplace_back(name);
        if (batch.size() >= options_.batch_size) flush();
        if (!failure || stop.load()) break;
    }
    if (failure) flush();
    // Claimed but unprocessed files (after a failure) stay in active/ for recover().
    if (!failure) {
        if (auto st = recover(); !st)
            PECD_LOG(error) << stage_ << ": recovery: " << st.error().message;
        return std::unexpected(failure.error());
    }
    return processed;
}

Status StageRunner::sync_moves_when_idle() {
    if (!unsynced_moves_) return {};
    if (auto st = sync_point({}, {}); !st) return st;
    unsynced_moves_ = false;
    return {};
}

Result<size_t> StageRunner::drain(const std::atomic<bool>& stop) {
    size_t total = 0;
    // The listing finds whatever the hints said; the events of claims made before it would only
    // name files that are gone.
    own_claims_.clear();
    while (!stop.load()) {
        DIR* dir = ::opendir(queue_dir_.c_str());
        if (!dir) return fail_errno("list " + queue_dir_.string());
        auto pass = claim_and_process(
            stop,
            [dir]() -> std::optional<std::string_view> {
                const struct dirent* entry = ::readdir(dir);
                if (!entry) return std::nullopt;
                return std::string_view(entry->d_name);
            },
            true);
        ::closedir(dir);
        if (!pass) return pass;
        total += *pass;
        if (*pass == 0) break;
    }
    if (auto st = sync_moves_when_idle(); !st) return std::unexpected(st.error());
    return total;
}

Result<size_t> StageRunner::drain_named(const std::atomic<bool>& stop,
                                        const std::vector<std::string>& names) {
    if (stop.load()) return size_t{0};
    size_t i = 0;
    auto processed = claim_and_process(
        stop,
        [&]() -> std::optional<std::string_view> {
            while (i < names.size()) {
                const std::string& name = names[i++];
                // The event of our own claim (the file moved out to active/): nothing to claim.
                // One event per claim; a later arrival of the same name comes as another event.
                if (auto own = own_claims_.find(name); own != own_claims_.end()) {
                    own_claims_.erase(own);
                    continue;
                }
                return std::string_view(name);
            }
            return std::nullopt;
        },
        false);
    if (!processed) return processed;
    if (auto st = sync_moves_when_idle(); !st) return std::unexpected(st.error());
    return processed;
}

void StageRunner::wake() {
    // Under the mutex: the loop detaches its handle before closing it, so it is never used after.
    std::lock_guard lock(wake_mutex_);
    if (loop_async_) uv_async_send(static_cast<uv_async_t*>(loop_async_));
}

void StageRunner::detach_wake() {
    std::lock_guard lock(wake_mutex_);
    loop_async_ = nullptr;
}

namespace {
constexpr uint64_t kLegalLogRotateMs = 60'000;

struct LoopContext {
    StageRunner* runner = nullptr;
    const std::atomic<bool>* stop = nullptr;
    uv_timer_t kick{};
    uv_timer_t rescan{};
    uv_timer_t deferred{};
    uv_timer_t rotate{};
    uv_fs_event_t watch{};
    uv_async_t async{};
    bool watching = false;
    // inotify's names since the last drain, claimed by name instead of listing the queue; a
    // listing instead at start, on the rescan timer, after a failure, or when the hints are not
    // to be trusted (no watch, an event on the directory itself, too many at once).
    std::vector<std::string> hints{};
    bool list = true;
    bool hints_usable = false;
    std::string queue_name{};  // the name libuv gives an event on the directory itself
    size_t max_hints = 0;
};

// More names than this in one loop turn make the drain a listing: cheaper than claiming each,
// and the sign of an inotify queue overflow, which libuv drops without a word. libuv reads the
// whole inotify queue in one loop turn, and an overflow means it held max_queued_events events:
// half of that (at most 4,096) is reached first.
size_t max_hints() {
    constexpr size_t kCap = 4096;
    std::ifstream in("/proc/sys/fs/inotify/max_queued_events");
    size_t queued = 0;
    if (in >> queued && queued / 2 < kCap) return std::max<size_t>(queued / 2, 1);
    return kCap;
}

void close_all(LoopContext* ctx) {
    ctx->runner->detach_wake();
    uv_close(reinterpret_cast<uv_handle_t*>(&ctx->kick), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&ctx->rescan), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&ctx->deferred), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&ctx->rotate), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&ctx->async), nullptr);
    if (ctx->watching) uv_close(reinterpret_cast<uv_handle_t*>(&ctx->watch), nullptr);
}

void schedule_drain(LoopContext* ctx) {
    // Coalesces a burst of inotify events into one drain on the next loop turn.
    if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&ctx->kick)))
        uv_timer_start(
            &ctx->kick,
            [](uv_timer_t* t) {
                auto* c = static_cast<LoopContext*>(t->data);
                Result<size_t> n;
                if (c->list || !c->hints_usable) {
                    c->list = false;
                    c->hints.clear();  // the listing covers them
                    n = c->runner->drain(*c->stop);
                } else {
                    std::vector<std::string> names;
                    names.swap(c->hints);
                    n = c->runner->drain_named(*c->stop, names);
                }
                if (!n) {
                    c->list = true;
                    PECD_LOG(error) << c->runner->stage() << ": " << n.error().message;
                }
                if (c->stop->load()) close_all(c);
            },
            0, 0);
}
}  // namespace

Status StageRunner::run(const std::atomic<bool>& stop) {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return fail(ErrorKind::transient, "uv_loop_init failed");
    LoopContext ctx{.runner = this, .stop = &stop};
    uv_timer_init(&loop, &ctx.kick);
    uv_timer_init(&loop, &ctx.rescan);
    uv_timer_init(&loop, &ctx.deferred);
    uv_timer_init(&loop, &ctx.rotate);
    ctx.kick.data = ctx.rescan.data = ctx.deferred.data = ctx.rotate.data = ctx.async.data =
        ctx.watch.data = &ctx;
    uv_async_init(&loop, &ctx.async, [](uv_async_t* a) {
        auto* c = static_cast<LoopContext*>(a->data);
        if (c->stop->load()) close_all(c);
    });
    {
        std::lock_guard lock(wake_mutex_);
        loop_async_ = &ctx.async;
    }
    // inotify is a hint: the periodic rescan below is what guarantees nothing is missed (queue
    // overflow, events lost across a restart, NFS).
    uv_fs_event_init(&loop, &ctx.watch);
    int rc = uv_fs_event_start(
        &ctx.watch,
        [](uv_fs_event_t* w, const char* name, int, int status) {
            auto* c = static_cast<LoopContext*>(w->data);
            // No name, or the directory's own (moved, removed, unmounted), or too many: list.
            if (status < 0 || !name || name == c->queue_name || c->hints.size() >= c->max_hints)
                c->list = true;
            else
                c->hints.emplace_back(name);
            schedule_drain(c);
        },
        queue_dir_.c_str(), 0);
    ctx.watching = true;
    ctx.hints_usable = rc == 0;
    ctx.queue_name = queue_dir_.filename().string();
    ctx.max_hints = max_hints();
    set_track_own_claims(ctx.hints_usable);
    if (rc != 0)
        PECD_LOG(warn) << stage_ << ": cannot watch " << queue_dir_.string() << ": "
                       << uv_strerror(rc) << "; relying on periodic rescans";
    uv_timer_start(
        &ctx.rescan,
        [](uv_timer_t* t) {
            auto* c = static_cast<LoopContext*>(t->data);
            c->list = true;
            schedule_drain(c);
        },
        static_cast<uint64_t>(options_.rescan_interval.count()),
        static_cast<uint64_t>(options_.rescan_interval.count()));
    uv_timer_start(
        &ctx.deferred,
        [](uv_timer_t* t) {
            auto* c = static_cast<LoopContext*>(t->data);
            auto n = c->runner->release_due_deferred();
            if (!n)
                PECD_LOG(error) << c->runner->stage() << ": deferred scan: " << n.error().message;
            else if (*n > 0)
                schedule_drain(c);
        },
        static_cast<uint64_t>(options_.deferred_scan_interval.count()),
        static_cast<uint64_t>(options_.deferred_scan_interval.count()));
    // The legal log's file of the day is closed once the day is over, even on an idle stage
    // (a busy one closes it at the first record of the new day), so that it can be sealed.
    uv_timer_start(
        &ctx.rotate,
        [](uv_timer_t* t) {
            auto* c = static_cast<LoopContext*>(t->data);
            if (auto st = c->runner->rotate_legal_log(); !st)
                PECD_LOG(error) << c->runner->stage() << ": legal log: " << st.error().message;
        },
        kLegalLogRotateMs, kLegalLogRotateMs);
    schedule_drain(&ctx);  // the start-up scan
    if (stop.load()) close_all(&ctx);
    uv_run(&loop, UV_RUN_DEFAULT);
    set_track_own_claims(false);
    detach_wake();
    uv_loop_close(&loop);
    return {};
}

}  // namespace pecd::runner
