// Child processes for tests and benches: spawn with posix_spawn, stop by PID, always reaped.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace pecd::testing {

struct SpawnOptions {
    std::vector<std::string> env;  // extra NAME=value entries
    std::string stdin_path;        // empty: /dev/null
    std::string stdout_path;       // empty: inherit
    std::string stderr_path;       // empty: inherit
};

inline pid_t spawn(const std::vector<std::string>& argv, const SpawnOptions& options = {}) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e) env_store.emplace_back(*e);
    for (const auto& e : options.env) env_store.push_back(e);
    std::vector<char*> envp;
    for (auto& e : env_store) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(
        &actions, 0, options.stdin_path.empty() ? "/dev/null" : options.stdin_path.c_str(),
        O_RDONLY, 0);
    if (!options.stdout_path.empty())
        posix_spawn_file_actions_addopen(&actions, 1, options.stdout_path.c_str(),
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (!options.stderr_path.empty())
        posix_spawn_file_actions_addopen(&actions, 2, options.stderr_path.c_str(),
                                         O_WRONLY | O_CREAT | O_APPEND, 0644);
    pid_t pid = -1;
    int rc = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    return rc == 0 ? pid : -1;
}

// Waits for `pid` and returns its exit code (128+signal when killed).
inline int wait_exit(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return -1;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

inline int run(const std::vector<std::string>& argv, const SpawnOptions& options = {}) {
    pid_t pid = spawn(argv, options);
    return pid < 0 ? -1 : wait_exit(pid);
}

// Stops a server or daemon by PID: SIGTERM, then SIGKILL after `grace`.
inline void stop_pid(pid_t pid, std::chrono::milliseconds grace = std::chrono::milliseconds(5000)) {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (std::chrono::steady_clock::now() < deadline) {
        int status = 0;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ::kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
}

// RAII: the process is stopped by PID when the guard goes out of scope, also on test failure.
class ProcessGuard {
  public:
    ProcessGuard() = default;
    explicit ProcessGuard(pid_t pid) : pid_(pid) {}
    ProcessGuard(ProcessGuard&& o) noexcept : pid_(o.release()) {}
    ProcessGuard& operator=(ProcessGuard&& o) noexcept {
        if (this != &o) {
            stop_pid(pid_);
            pid_ = o.release();
        }
        return *this;
    }
    ~ProcessGuard() { stop_pid(pid_); }
    pid_t pid() const { return pid_; }
    pid_t release() {
        pid_t p = pid_;
        pid_ = -1;
        return p;
    }

  private:
    pid_t pid_ = -1;
};

}  // namespace pecd::testing
