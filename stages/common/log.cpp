#include "stages/common/log.hpp"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

namespace pecd::log {
namespace {
std::mutex g_mutex;
std::string g_program = "pecd";
std::atomic<Level> g_level{Level::info};

const char* name(Level level) {
    switch (level) {
        case Level::debug:
            return "debug";
        case Level::info:
            return "info";
        case Level::warn:
            return "warning";
        case Level::error:
            return "error";
    }
    return "?";
}
}  // namespace

void set_program(std::string program) {
    std::lock_guard lock(g_mutex);
    g_program = std::move(program);
}
void set_level(Level lvl) {
    g_level = lvl;
}
Level level() {
    return g_level;
}

void write(Level lvl, const std::string& line) {
    auto now = std::chrono::system_clock::now();
    std::time_t secs = std::chrono::system_clock::to_time_t(now);
    auto millis =
        std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() %
        1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    std::lock_guard lock(g_mutex);
    std::fprintf(stderr, "%s.%03dZ %s[%d]: %s: %s\n", stamp, static_cast<int>(millis),
                 g_program.c_str(), static_cast<int>(getpid()), name(lvl), line.c_str());
}

}  // namespace pecd::log
