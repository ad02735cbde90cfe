#include "stages/runner/settings.hpp"

#include <cstdlib>

namespace pecd::runner {

std::filesystem::path config_path(const std::string& from_command_line) {
    if (!from_command_line.empty()) return from_command_line;
    if (const char* env = std::getenv("PECD_CONFIG"); env && *env) return env;
    return kDefaultConfigPath;
}

Result<SpoolSettings> spool_settings(const Config& config) {
    SpoolSettings s;
    s.root = config.get_path("spool", "directory");
    if (s.root.empty())
        return fail(ErrorKind::config, config.source() + ": [spool] directory is not set");
    auto size = config.get_size("spool", "max_message_size", s.max_message_size);
    if (!size) return std::unexpected(size.error());
    s.max_message_size = *size;
    std::string action = config.get("spool", "oversize_action", "bounce");
    if (action != "bounce" && action != "defer")
        return fail(ErrorKind::config,
                    config.source() + ": [spool] oversize_action must be bounce or defer");
    s.oversize_bounces = action == "bounce";
    return s;
}

Result<RunnerOptions> runner_options(const Config& config) {
    RunnerOptions o;
    auto batch = config.get_int("runner", "batch_size", static_cast<int64_t>(o.batch_size));
    if (!batch) return std::unexpected(batch.error());
    if (*batch < 1 || *batch > 4096)
        return fail(ErrorKind::config, config.source() + ": [runner] batch_size must be 1-4096");
    o.batch_size = static_cast<size_t>(*batch);
    std::string sync = config.get("runner", "sync", "batch");
    if (sync == "batch")
        o.sync = SyncMode::batch;
    else if (sync == "strict")
        o.sync = SyncMode::strict;
    else
        return fail(ErrorKind::config, config.source() + ": [runner] sync must be batch or strict");
    auto get = [&](const char* key, std::chrono::milliseconds& into) -> Status {
        auto d = config.get_duration("runner", key, into);
        if (!d) return std::unexpected(d.error());
        into = *d;
        return {};
    };
    if (auto st = get("rescan_interval", o.rescan_interval); !st)
        return std::unexpected(st.error());
    if (auto st = get("deferred_scan_interval", o.deferred_scan_interval); !st)
        return std::unexpected(st.error());
    // libuv's repeating timer fires once only with a period of 0: the queue would never be
    // listed again, and deferred files never released.
    if (o.rescan_interval.count() <= 0 || o.deferred_scan_interval.count() <= 0)
        return fail(ErrorKind::config, config.source() +
                                           ": [runner] rescan_interval and deferred_scan_interval "
                                           "must be more than 0");
    if (auto st = get("backoff_base", o.backoff_base); !st) return std::unexpected(st.error());
    if (auto st = get("backoff_max", o.backoff_max); !st) return std::unexpected(st.error());
    auto attempts = config.get_int("runner", "max_attempts", o.max_attempts);
    if (!attempts) return std::unexpected(attempts.error());
    o.max_attempts = static_cast<int>(*attempts);
    return o;
}

}  // namespace pecd::runner
