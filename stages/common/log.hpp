// Minimal operational logging: one line per event on stderr (the daemons run under a supervisor
// that captures stderr; there is no syslogd on the target machines). Not the legal log.
#pragma once

#include <sstream>
#include <string>

namespace pecd::log {

enum class Level { debug = 0, info = 1, warn = 2, error = 3 };

void set_program(std::string name);
void set_level(Level level);
Level level();
void write(Level level, const std::string& line);

class Line {
  public:
    explicit Line(Level level) : level_(level) {}
    Line(const Line&) = delete;
    Line& operator=(const Line&) = delete;
    ~Line() { write(level_, out_.str()); }
    template <class T>
    Line& operator<<(const T& value) {
        out_ << value;
        return *this;
    }

  private:
    Level level_;
    std::ostringstream out_;
};

}  // namespace pecd::log

// Streams one log line when `lvl` is enabled; the for-statement form is safe under if/else.
#define PECD_LOG(lvl)                                                                           \
    for (bool pecd_log_once_ = ::pecd::log::Level::lvl >= ::pecd::log::level(); pecd_log_once_; \
         pecd_log_once_ = false)                                                                \
    ::pecd::log::Line(::pecd::log::Level::lvl)
