#include "spool-layout/queue_admin.hpp"

#include <dirent.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "spool-layout/queue_id.hpp"

namespace pecd::spool {
namespace {

// Age buckets in minutes, like qshape's default: 5 10 20 40 80 160 320 640 1280 1280+.
constexpr int64_t kBucketMinutes[] = {5, 10, 20, 40, 80, 160, 320, 640, 1280};
constexpr time_t kTmpGraceSeconds = 60;

}  // namespace

std::vector<std::string> summary_bucket_labels() {
    std::vector<std::string> labels;
    for (int64_t m : kBucketMinutes) labels.push_back(std::to_string(m));
    labels.push_back("1280+");
    return labels;
}

std::optional<std::string> quarantine_reason(const Spool& spool, const Location& where) {
    if (where.area != Area::quarantine) return std::nullopt;
    auto text = durable::read_file(
        spool.area_dir(Area::quarantine, where.stage) / (where.id + ".reason"), 64 * 1024);
    if (!text) return std::nullopt;
    size_t pos = text->find("reason: ");
    if (pos == std::string::npos) return *text;
    std::string reason = text->substr(pos + 8);
    while (!reason.empty() && reason.back() == '\n') reason.pop_back();
    return reason;
}

Result<std::vector<QueueEntry>> list_entries(const Spool& spool, const ListOptions& options) {
    std::vector<QueueEntry> out;
    for (Area area : kAreas) {
        if (options.area && *options.area != area) continue;
        for (auto stage : kStages) {
            if (options.stage && *options.stage != stage) continue;
            fs::path dir = spool.area_dir(area, stage);
            auto names = durable::list_dir(dir);
            if (!names) return std::unexpected(names.error());
            for (const auto& name : *names) {
                if (!is_valid_queue_id(name)) continue;
                QueueEntry e;
                e.area = area;
                e.stage = std::string(stage);
                e.id = name;
                e.arrival_us = arrival_from_id(name).value_or(0);
                struct stat st {};
                if (::stat((dir / name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
                e.size = static_cast<uint64_t>(st.st_size);
                if (options.read_envelopes) {
                    auto info = read_header(dir / name);
                    if (info) {
                        e.size = info->body_size;
                        e.arrival_us = info->env.arrival_us;
                        e.env = std::move(info->env);
                    } else {
                        e.problem = info.error().message;
                    }
                }
                if (area == Area::quarantine)
                    e.quarantine_reason =
                        quarantine_reason(spool, Location{area, e.stage, e.id, dir / name})
                            .value_or("");
                out.push_back(std::move(e));
            }
        }
    }
    return out;
}

Result<std::vector<SummaryRow>> summarize(const Spool& spool, int64_t now_us) {
    std::vector<SummaryRow> rows;
    for (Area area : kAreas)
        for (auto stage : kStages) {
            SummaryRow row;
            row.name = std::string(to_string(area)) + "/" + std::string(stage);
            row.buckets.assign(std::size(kBucketMinutes) + 1, 0);
            fs::path dir = spool.area_dir(area, stage);
            DIR* d = ::opendir(dir.c_str());
            if (!d) return fail_errno("list " + dir.string());
            while (struct dirent* entry = ::readdir(d)) {
                std::string_view name = entry->d_name;
                if (!is_valid_queue_id(name)) continue;  // sets, temporaries, .reason files
                auto arrival = arrival_from_id(name);
                if (!arrival) continue;
                int64_t minutes = (now_us - *arrival) / 60'000'000;
                size_t b = 0;
                while (b < std::size(kBucketMinutes) && minutes >= kBucketMinutes[b]) ++b;
                row.buckets[b]++;
                row.total++;
            }
            ::closedir(d);
            rows.push_back(std::move(row));
        }
    return rows;
}

namespace {

Result<Location> locate(const Spool& spool, const std::string& id) {
    if (!is_valid_queue_id(id)) return fail(ErrorKind::permanent, "'" + id + "' is not a queue id");
    auto where = spool.find(id);
    if (!where) return fail(ErrorKind::not_found, id + ": no such message in the spool");
    return *where;
}

Status move(const Spool& spool, const Location& from, Area to) {
    fs::path target_dir = spool.area_dir(to, from.stage);
    auto st = durable::rename_noreplace(from.path, target_dir / from.id);
    if (!st) {
        if (st.error().kind == ErrorKind::not_found)
            return fail(ErrorKind::conflict, from.id + ": moved by a stage meanwhile; try again");
        return st;
    }
    if (auto s = durable::sync_dir(target_dir); !s) return s;
    return durable::sync_dir(from.path.parent_path());
}

}  // namespace

Status hold(const Spool& spool, const std::string& id) {
    auto where = locate(spool, id);
    if (!where) return std::unexpected(where.error());
    if (where->area == Area::hold) return {};
    if (where->area == Area::active)
        return fail(ErrorKind::conflict,
                    id + ": being processed by stage " + where->stage + "; try again");
    if (where->area == Area::quarantine)
        return fail(ErrorKind::permanent, id + ": is in quarantine; use requeue or delete");
    return move(spool, *where, Area::hold);
}

Status release(const Spool& spool, const std::string& id) {
    auto where = locate(spool, id);
    if (!where) return std::unexpected(where.error());
    if (where->area != Area::hold) return fail(ErrorKind::permanent, id + ": is not on hold");
    return move(spool, *where, Area::queue);
}

Status requeue(const Spool& spool, const std::string& id) {
    auto where = locate(spool, id);
    if (!where) return std::unexpected(where.error());
    if (where->area == Area::queue) return {};
    if (where->area == Area::active)
        return fail(ErrorKind::conflict, id + ": being processed by stage " + where->stage);
    // Reset the retry state so the message is tried now, keeping its history.
    auto fd = durable::open_file(where->path, O_RDONLY);
    if (!fd) return std::unexpected(fd.error());
    auto info = read_header(fd->get(), where->path.string());
    if (info) {
        Envelope env = info->env;
        env.attempts = 0;
        env.next_attempt_us = 0;
        env.history.push_back(
            {"pecq", now_us(), "requeued from " + std::string(to_string(where->area))});
        fs::path tmp = spool.tmp_dir() / (id + ".requeue");
        (void)durable::unlink_file(tmp);
        auto written = write_queue_file(
            tmp, env, BodySource::from_file(fd->get(), info->body_offset(), info->body_size));
        if (!written) return std::unexpected(written.error());
        if (auto st = durable::sync_data(written->get()); !st) return st;
        if (auto st = durable::rename_file(tmp, where->path); !st) return st;
    } else if (info.error().kind != ErrorKind::corrupt) {
        return std::unexpected(info.error());
    }
    // An unreadable file is requeued as it is: the stage will quarantine it again with the reason.
    if (auto st = move(spool, *where, Area::queue); !st) return st;
    if (where->area == Area::quarantine)
        (void)durable::unlink_file(where->path.parent_path() / (id + ".reason"));
    return {};
}

Status remove(const Spool& spool, const std::string& id) {
    auto where = locate(spool, id);
    if (!where) return std::unexpected(where.error());
    if (where->area == Area::active)
        return fail(ErrorKind::conflict, id + ": being processed by stage " + where->stage);
    if (auto st = durable::unlink_file(where->path); !st) return st;
    if (where->area == Area::quarantine)
        (void)durable::unlink_file(where->path.parent_path() / (id + ".reason"));
    return durable::sync_dir(where->path.parent_path());
}

Result<bool> is_idle(const Spool& spool) {
    for (Area area : {Area::queue, Area::active})
        for (auto stage : kStages) {
            auto names = durable::list_dir(spool.area_dir(area, stage));
            if (!names) return std::unexpected(names.error());
            if (!names->empty()) return false;
        }
    auto tmp = durable::list_dir(spool.tmp_dir());
    if (!tmp) return std::unexpected(tmp.error());
    return tmp->empty();
}

Result<size_t> clean_stale_tmp(const Spool& spool) {
    auto names = durable::list_dir(spool.tmp_dir());
    if (!names) return std::unexpected(names.error());
    size_t removed = 0;
    for (const auto& name : *names) {
        fs::path p = spool.tmp_dir() / name;
        auto fd = durable::open_file(p, O_RDONLY);
        if (!fd) continue;
        // A live pec-enqueue holds the lock until its rename; a free lock means it died, unless
        // the file is so new that its writer is between open() and flock().
        struct stat st {};
        if (::fstat(fd->get(), &st) != 0 || st.st_mtime > ::time(nullptr) - kTmpGraceSeconds)
            continue;
        if (::flock(fd->get(), LOCK_EX | LOCK_NB) != 0) continue;
        if (durable::unlink_file(p)) ++removed;
    }
    return removed;
}

}  // namespace pecd::spool
