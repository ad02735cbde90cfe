// The spool tree (docs/spool-layout.md). One root per node:
//
//   tmp/                 pec-enqueue writes here first (flock'd while being written)
//   queue/<stage>/       a stage's input queue: complete, durable queue files only
//   active/<stage>/      files the stage claimed (rename from queue/), and their outputs beside
//                        them, <id>.out.<destination>~<suffix>: committed once <id> is gone
//   deferred/<stage>/    transient failures waiting for their next attempt
//   hold/<stage>/        put aside by the administrator (pecq hold)
//   quarantine/<stage>/  permanent failures and unreadable files, <id>.reason beside each
//   outbox/              embedded outbound transport: messages handed to "the MTA"
//   lock/<stage>.lock    flock held by the process running that stage
#pragma once

#include <array>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "spool-layout/durable.hpp"
#include "stages/common/result.hpp"

namespace pecd::spool {

namespace fs = std::filesystem;

// Stage order: a submission goes classify -> wrap -> ...; mail from outside classify -> verify.
inline constexpr std::array<std::string_view, 6> kStages = {"classify", "wrap",    "verify",
                                                            "deliver",  "receipt", "outbound"};
inline constexpr std::string_view kOutbox = "outbox";

enum class Area { queue, active, deferred, hold, quarantine };
inline constexpr std::array<Area, 5> kAreas = {Area::queue, Area::active, Area::deferred,
                                               Area::hold, Area::quarantine};
std::string_view to_string(Area area);
std::optional<Area> area_from_string(std::string_view name);

bool is_stage(std::string_view name);

struct Location {
    Area area;
    std::string stage;
    std::string id;
    fs::path path;
};

class Spool {
  public:
    Spool() = default;
    explicit Spool(fs::path root) : root_(std::move(root)) {}
    // Creates the whole tree when `create`; otherwise checks that it exists.
    static Result<Spool> open(const fs::path& root, bool create);

    const fs::path& root() const { return root_; }
    fs::path tmp_dir() const { return root_ / "tmp"; }
    fs::path area_dir(Area area, std::string_view stage) const;
    fs::path queue_dir(std::string_view stage) const { return area_dir(Area::queue, stage); }
    fs::path active_dir(std::string_view stage) const { return area_dir(Area::active, stage); }
    fs::path outbox_dir() const { return root_ / kOutbox; }
    fs::path lock_path(std::string_view stage) const;
    // Where a stage output named `destination` (a stage, or "outbox") is delivered.
    Result<fs::path> destination_dir(std::string_view destination) const;

    // Looks an id up in every area of every stage (a handful of stat calls, no listing).
    std::optional<Location> find(std::string_view id) const;

  private:
    fs::path root_;
};

// An exclusive flock on lock/<stage>.lock; released when the process dies, so a SIGKILLed
// stage never blocks its successor.
class StageLock {
  public:
    static Result<StageLock> acquire(const Spool& spool, std::string_view stage, bool wait);
    bool held() const { return static_cast<bool>(fd_); }

  private:
    durable::Fd fd_;
};

}  // namespace pecd::spool
