// Test helpers: run a command and capture its output, and a private slapd (mdb, IGPEC schema,
// suffix o=postacert) on a free loopback port, stopped by PID and removed when destroyed.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::test {

struct CommandResult {
    int exit_code = -1;  // -1 if killed by a signal
    std::string output;  // stdout and stderr interleaved
};

// Runs argv[0] (a path, or a name looked up in PATH) and waits for it. A non-zero exit is a
// successful Result with exit_code set; only failing to start it is an error.
Result<CommandResult> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout = std::chrono::seconds(60));

// A fresh temporary directory removed (recursively) by the destructor.
class TempDir {
  public:
    static Result<TempDir> create(std::string_view prefix = "pecd-test");
    TempDir(TempDir&& other) noexcept : path_(std::move(other.path_)) { other.path_.clear(); }
    TempDir& operator=(TempDir&&) = delete;
    TempDir(const TempDir&) = delete;
    ~TempDir();
    const std::filesystem::path& path() const { return path_; }
    // Hands the directory over to the caller, who removes it.
    std::filesystem::path release() { return std::exchange(path_, {}); }

  private:
    explicit TempDir(std::filesystem::path p) : path_(std::move(p)) {}
    std::filesystem::path path_;
};

struct SlapdOptions {
    std::filesystem::path schema_file = PECD_SOURCE_DIR "/conf/schema/igpec.schema";
    std::string suffix = "o=postacert";
    std::string root_dn = "cn=admin,o=postacert";
    std::string root_password = "secret";
    std::chrono::milliseconds start_timeout{15000};
};

class SlapdFixture {
  public:
    // Writes slapd.conf in a temp dir, starts slapd in the foreground on 127.0.0.1:<free port>
    // and returns once it answers an LDAP bind. The error carries slapd's own log on failure.
    static Result<std::unique_ptr<SlapdFixture>> start(SlapdOptions options = {});
    ~SlapdFixture();  // stop() and remove the temp dir
    SlapdFixture(const SlapdFixture&) = delete;
    SlapdFixture& operator=(const SlapdFixture&) = delete;

    const std::string& uri() const { return uri_; }  // ldap://127.0.0.1:<port>/
    int port() const { return port_; }
    pid_t pid() const { return pid_; }
    bool running() const { return pid_ > 0; }
    const SlapdOptions& options() const { return options_; }
    const std::filesystem::path& dir() const { return dir_; }

    // ldapadd as the rootdn; the error quotes ldapadd's output.
    Status add_ldif(const std::filesystem::path& ldif) const;
    Status add_ldif_text(std::string_view ldif) const;

    // SIGTERM, wait up to 10 s, then SIGKILL. Idempotent; the port is closed on return.
    Status stop();
    std::string log() const;  // slapd's stderr so far

  private:
    SlapdFixture() = default;
    Status launch();

    SlapdOptions options_;
    std::filesystem::path dir_;
    std::string uri_;
    int port_ = 0;
    pid_t pid_ = -1;
    mutable int ldif_counter_ = 0;
};

}  // namespace pecd::test
