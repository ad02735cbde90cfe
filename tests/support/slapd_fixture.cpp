#include "tests/support/slapd_fixture.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ldap.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include "tests/support/ports.hpp"

namespace pecd::test {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
    std::vector<char*> out;
    for (const auto& a : argv) out.push_back(const_cast<char*>(a.c_str()));
    out.push_back(nullptr);
    return out;
}

// Polls waitpid until the child exits or the deadline passes; returns the wait status.
std::optional<int> wait_until(pid_t pid, Clock::time_point deadline) {
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return std::nullopt;
        if (Clock::now() >= deadline) return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::string read_text(const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// True once slapd accepts a bind as the rootdn: the listener is open and the database loaded.
Result<bool> answers(const std::string& uri, const SlapdOptions& o) {
    LDAP* raw = nullptr;
    int rc = ldap_initialize(&raw, uri.c_str());
    std::unique_ptr<LDAP, decltype([](LDAP* ld) { ldap_unbind_ext_s(ld, nullptr, nullptr); })> ld(
        raw);
    if (rc != LDAP_SUCCESS || !ld)
        return fail(ErrorKind::config, "ldap_initialize(" + uri + "): " + ldap_err2string(rc));
    int version = LDAP_VERSION3;
    timeval tv{0, 300000};
    if (ldap_set_option(ld.get(), LDAP_OPT_PROTOCOL_VERSION, &version) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld.get(), LDAP_OPT_NETWORK_TIMEOUT, &tv) != LDAP_OPT_SUCCESS ||
        ldap_set_option(ld.get(), LDAP_OPT_TIMEOUT, &tv) != LDAP_OPT_SUCCESS)
        return fail(ErrorKind::config, "cannot set LDAP options for " + uri);
    berval cred{o.root_password.size(), const_cast<char*>(o.root_password.c_str())};
    rc = ldap_sasl_bind_s(ld.get(), o.root_dn.c_str(), LDAP_SASL_SIMPLE, &cred, nullptr, nullptr,
                          nullptr);
    if (rc == LDAP_SUCCESS) return true;
    if (rc == LDAP_SERVER_DOWN || rc == LDAP_CONNECT_ERROR || rc == LDAP_TIMEOUT) return false;
    return fail(ErrorKind::config,
                "slapd answered the rootdn bind with " + std::string(ldap_err2string(rc)));
}

}  // namespace

Result<CommandResult> run_command(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout) {
    if (argv.empty()) return fail(ErrorKind::config, "run_command: empty argv");
    int pipefd[2];
    if (::pipe2(pipefd, O_CLOEXEC) != 0) return fail_errno("pipe2");
    auto args = c_argv(argv);
    pid_t pid = ::fork();
    if (pid < 0) {
        int err = errno;
        ::close(pipefd[0]);
        ::close(pipefd[1]);
        return fail_errno("fork", err);
    }
    if (pid == 0) {
        // Child: only async-signal-safe calls until exec.
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        ::dup2(pipefd[1], 1);
        ::dup2(pipefd[1], 2);
        ::execvp(args[0], args.data());
        static const char msg[] = "run_command: exec failed\n";
        [[maybe_unused]] auto n = ::write(2, msg, sizeof msg - 1);
        ::_exit(127);
    }
    ::close(pipefd[1]);
    CommandResult result;
    auto deadline = Clock::now() + timeout;
    bool timed_out = false;
    char buf[4096];
    for (;;) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        if (left.count() <= 0) {
            timed_out = true;
            break;
        }
        pollfd pfd{pipefd[0], POLLIN, 0};
        int pr = ::poll(&pfd, 1, static_cast<int>(left.count()));
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) {
            timed_out = pr == 0;
            break;
        }
        ssize_t n = ::read(pipefd[0], buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;  // EOF: the child closed its output
        result.output.append(buf, static_cast<std::size_t>(n));
    }
    ::close(pipefd[0]);
    if (timed_out) ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (timed_out)
        return fail(ErrorKind::transient, argv[0] + " timed out; output: " + result.output);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return result;
}

Result<TempDir> TempDir::create(std::string_view prefix) {
    std::string templ =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    if (::mkdtemp(templ.data()) == nullptr) return fail_errno("mkdtemp " + templ);
    return TempDir(templ);
}

TempDir::~TempDir() {
    if (path_.empty() || std::getenv("PECD_KEEP_TEST_DIRS") != nullptr) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

Result<std::unique_ptr<SlapdFixture>> SlapdFixture::start(SlapdOptions options) {
    std::unique_ptr<SlapdFixture> f(new SlapdFixture());
    f->options_ = std::move(options);
    auto dir = TempDir::create("pecd-slapd");
    if (!dir) return std::unexpected(dir.error());
    f->dir_ = dir->release();  // the fixture's destructor removes it from here on
    std::string keep = f->dir_.string();

    std::error_code ec;
    std::filesystem::create_directories(f->dir_ / "db", ec);
    if (ec) return fail(ErrorKind::transient, "cannot create " + keep + "/db: " + ec.message());
    const SlapdOptions& o = f->options_;
    std::ofstream conf(f->dir_ / "slapd.conf");
    conf << "# written by pecd's SlapdFixture\n"
         << "include /etc/ldap/schema/core.schema\n"
         << "include " << o.schema_file.string() << "\n"
         << "pidfile " << (f->dir_ / "slapd.pid").string() << "\n"
         << "argsfile " << (f->dir_ / "slapd.args").string() << "\n"
         << "modulepath /usr/lib/ldap\n"
         << "moduleload back_mdb.la\n"
         << "database mdb\n"
         << "maxsize 104857600\n"
         << "suffix \"" << o.suffix << "\"\n"
         << "rootdn \"" << o.root_dn << "\"\n"
         << "rootpw " << o.root_password << "\n"
         << "directory " << (f->dir_ / "db").string() << "\n"
         << "index objectClass eq\n"
         << "access to * by * read\n";
    conf.close();
    if (!conf) return fail(ErrorKind::transient, "cannot write " + keep + "/slapd.conf");

    // A port picked as free can be taken by someone else before slapd binds it: retry.
    Status st;
    for (int attempt = 0; attempt < 3; ++attempt) {
        st = f->launch();
        if (st || st.error().kind != ErrorKind::conflict) break;
    }
    if (!st) return std::unexpected(st.error());
    return f;
}

Status SlapdFixture::launch() {
    auto port = free_loopback_port();
    if (!port) return std::unexpected(port.error());
    port_ = *port;
    uri_ = "ldap://127.0.0.1:" + std::to_string(port_) + "/";
    std::filesystem::path log_path = dir_ / "slapd.log";
    std::string log_str = log_path.string();
    // -d keeps slapd in the foreground, so the PID we fork is slapd's; 256 = stats log.
    std::vector<std::string> argv = {
        "/usr/sbin/slapd", "-d", "256", "-h", uri_, "-f", (dir_ / "slapd.conf").string()};
    auto args = c_argv(argv);
    pid_t parent = ::getpid();
    pid_t pid = ::fork();
    if (pid < 0) return fail_errno("fork");
    if (pid == 0) {
        // If the test process dies without running destructors, slapd gets SIGTERM too.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(1);
        int devnull = ::open("/dev/null", O_RDONLY);
        if (devnull >= 0) ::dup2(devnull, 0);
        int log = ::open(log_str.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (log >= 0) {
            ::dup2(log, 1);
            ::dup2(log, 2);
        }
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    pid_ = pid;

    auto deadline = Clock::now() + options_.start_timeout;
    while (Clock::now() < deadline) {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) == pid_) {
            pid_ = -1;
            std::string log_text = read_text(log_path);
            ErrorKind kind = log_text.find("Address already in use") != std::string::npos
                                 ? ErrorKind::conflict
                                 : ErrorKind::config;
            return fail(kind, "slapd exited during start-up (status " + std::to_string(status) +
                                  "); log:\n" + log_text);
        }
        auto ok = answers(uri_, options_);
        if (!ok) {
            (void)stop();
            return fail(ok.error().kind, ok.error().message + "; log:\n" + read_text(log_path));
        }
        if (*ok) return {};
        std::this_thread::sleep_for(std::chrono::milliseconds(30));
    }
    (void)stop();
    return fail(ErrorKind::transient, "slapd did not answer within " +
                                          std::to_string(options_.start_timeout.count()) +
                                          " ms; log:\n" + read_text(log_path));
}

Status SlapdFixture::stop() {
    if (pid_ <= 0) return {};
    pid_t pid = pid_;
    pid_ = -1;
    if (::kill(pid, SIGTERM) != 0 && errno != ESRCH) return fail_errno("kill slapd");
    // slapd takes 1-2 s to shut down cleanly (real-servers.md §4).
    if (wait_until(pid, Clock::now() + std::chrono::seconds(10))) return {};
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return fail(ErrorKind::transient, "slapd did not stop on SIGTERM within 10 s; killed");
}

SlapdFixture::~SlapdFixture() {
    if (auto st = stop(); !st)
        std::fprintf(stderr, "SlapdFixture: %s\n", st.error().message.c_str());
    if (dir_.empty() || std::getenv("PECD_KEEP_TEST_DIRS") != nullptr) return;
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
}

std::string SlapdFixture::log() const {
    return read_text(dir_ / "slapd.log");
}

Status SlapdFixture::add_ldif(const std::filesystem::path& ldif) const {
    if (!running()) return fail(ErrorKind::config, "slapd is not running");
    auto r = run_command({"ldapadd", "-x", "-H", uri_, "-D", options_.root_dn, "-w",
                          options_.root_password, "-f", ldif.string()});
    if (!r) return std::unexpected(r.error());
    if (r->exit_code != 0)
        return fail(ErrorKind::permanent, "ldapadd -f " + ldif.string() + " exited with " +
                                              std::to_string(r->exit_code) + ": " + r->output);
    return {};
}

Status SlapdFixture::add_ldif_text(std::string_view ldif) const {
    auto path = dir_ / ("add-" + std::to_string(++ldif_counter_) + ".ldif");
    std::ofstream out(path, std::ios::binary);
    out << ldif;
    out.close();
    if (!out) return fail(ErrorKind::transient, "cannot write " + path.string());
    return add_ldif(path);
}

}  // namespace pecd::test
