#include "spool-layout/spool.hpp"

#include <sys/file.h>
#include <sys/stat.h>

namespace pecd::spool {

std::string_view to_string(Area area) {
    switch (area) {
        case Area::queue:
            return "queue";
        case Area::active:
            return "active";
        case Area::deferred:
            return "deferred";
        case Area::hold:
            return "hold";
        case Area::quarantine:
            return "quarantine";
    }
    return "?";
}

std::optional<Area> area_from_string(std::string_view name) {
    for (Area a : kAreas)
        if (to_string(a) == name) return a;
    return std::nullopt;
}

bool is_stage(std::string_view name) {
    for (auto s : kStages)
        if (s == name) return true;
    return false;
}

Result<Spool> Spool::open(const fs::path& root, bool create) {
    Spool spool(root);
    std::vector<fs::path> dirs = {root, spool.tmp_dir(), spool.outbox_dir(), root / "lock"};
    for (Area area : kAreas) {
        dirs.push_back(root / std::string(to_string(area)));
        for (auto stage : kStages) dirs.push_back(spool.area_dir(area, stage));
    }
    for (const auto& dir : dirs) {
        struct stat st {};
        if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
        if (!create)
            return fail(ErrorKind::config, "spool directory " + dir.string() +
                                               " is missing (run `pecd init` or check spool_dir)");
        if (auto made = durable::make_dir(dir, 0750); !made) return std::unexpected(made.error());
        if (auto synced = durable::sync_dir(dir.parent_path()); !synced)
            return std::unexpected(synced.error());
    }
    return spool;
}

fs::path Spool::area_dir(Area area, std::string_view stage) const {
    return root_ / std::string(to_string(area)) / std::string(stage);
}

fs::path Spool::lock_path(std::string_view stage) const {
    return root_ / "lock" / (std::string(stage) + ".lock");
}

Result<fs::path> Spool::destination_dir(std::string_view destination) const {
    if (destination == kOutbox) return outbox_dir();
    if (is_stage(destination)) return queue_dir(destination);
    return fail(ErrorKind::permanent, "unknown destination '" + std::string(destination) + "'");
}

std::optional<Location> Spool::find(std::string_view id) const {
    for (Area area : kAreas)
        for (auto stage : kStages) {
            fs::path p = area_dir(area, stage) / std::string(id);
            struct stat st {};
            if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode))
                return Location{area, std::string(stage), std::string(id), p};
        }
    return std::nullopt;
}

Result<StageLock> StageLock::acquire(const Spool& spool, std::string_view stage, bool wait) {
    auto fd = durable::open_file(spool.lock_path(stage), O_RDWR | O_CREAT, 0640);
    if (!fd) return std::unexpected(fd.error());
    if (::flock(fd->get(), LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
        if (errno == EWOULDBLOCK)
            return fail(ErrorKind::conflict,
                        "stage " + std::string(stage) + " is already running on this spool");
        return fail_errno("lock " + spool.lock_path(stage).string());
    }
    // Record the holder for administrators (informational only; the flock is the truth).
    std::string pid = std::to_string(::getpid()) + "\n";
    (void)::ftruncate(fd->get(), 0);
    (void)::pwrite(fd->get(), pid.data(), pid.size(), 0);
    StageLock lock;
    lock.fd_ = std::move(*fd);
    return lock;
}

}  // namespace pecd::spool
