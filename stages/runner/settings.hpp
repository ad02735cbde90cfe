// Reading the spool and runner settings out of pecd.conf ([spool] and [runner] sections).
#pragma once

#include <filesystem>

#include "stages/common/config.hpp"
#include "stages/runner/runner.hpp"

namespace pecd::runner {

inline constexpr const char* kDefaultConfigPath = "/etc/pecd/pecd.conf";

// -c/--config, else $PECD_CONFIG, else /etc/pecd/pecd.conf.
std::filesystem::path config_path(const std::string& from_command_line);

struct SpoolSettings {
    std::filesystem::path root;
    uint64_t max_message_size = 50ull * 1024 * 1024;
    bool oversize_bounces = true;  // pec-enqueue: bounce (permanent) or defer an oversized message
};

Result<SpoolSettings> spool_settings(const Config& config);
Result<RunnerOptions> runner_options(const Config& config);

}  // namespace pecd::runner
