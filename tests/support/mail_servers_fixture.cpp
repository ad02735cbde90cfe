#include "tests/support/mail_servers_fixture.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "stages/transport/session.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::test {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::string read_text(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

Status write_text(const fs::path& p, std::string_view text) {
    std::ofstream out(p, std::ios::binary);
    out << text;
    out.close();
    if (!out) return fail(ErrorKind::transient, "cannot write " + p.string());
    return {};
}

Status chown_to(const fs::path& p, const char* user) {
    passwd* pw = ::getpwnam(user);
    if (!pw) return fail(ErrorKind::config, std::string("no user ") + user);
    if (::chown(p.c_str(), pw->pw_uid, pw->pw_gid) != 0) return fail_errno("chown " + p.string());
    return {};
}

// Ready once the server sends an SMTP/LMTP greeting on the port.
Result<bool> greets(const ServerFixture& f) {
    transport::Endpoint ep{"", "127.0.0.1", f.port()};
    auto conn = transport::Connection::open(ep, std::chrono::milliseconds(300));
    if (!conn) return false;
    auto line = conn->read_line(std::chrono::milliseconds(2000));
    return line && line->starts_with("220");
}

// Postfix's internal services, chroot n everywhere (a plain master start does not populate a
// chroot jail), plus what one instance needs (`extra`).
std::string postfix_internal_services(const std::string& extra) {
    return std::string(
               "pickup unix n - n 60 1 pickup\n"
               "cleanup unix n - n - 0 cleanup\n"
               "qmgr unix n - n 300 1 qmgr\n"
               "rewrite unix - - n - - trivial-rewrite\n"
               "bounce unix - - n - 0 bounce\n"
               "defer unix - - n - 0 bounce\n"
               "trace unix - - n - 0 bounce\n"
               "verify unix - - n - 1 verify\n"
               "flush unix n - n 1000? 0 flush\n"
               "proxymap unix - - n - - proxymap\n"
               "proxywrite unix - - n - 1 proxymap\n"
               "smtp unix - - n - - smtp\n"
               "showq unix n - n - - showq\n"
               "error unix - - n - - error\n"
               "retry unix - - n - - error\n"
               "discard unix - - n - - discard\n"
               "anvil unix - - n - 1 anvil\n"
               "scache unix - - n - 1 scache\n"
               "postlog unix-dgram n - n - 1 postlogd\n") +
           extra;
}

// Writes main.cf and master.cf, runs `postfix check` (it creates the queue directories with the
// right owners) and returns the argv of the master: `-d` keeps it in the foreground, so the PID
// we hold is the master's and SIGTERM to it stops the whole instance.
Result<std::vector<std::string>> prepare_postfix(const fs::path& etc, const std::string& main_cf,
                                                 const std::string& master_cf) {
    if (auto st = write_text(etc / "main.cf", main_cf); !st) return std::unexpected(st.error());
    if (auto st = write_text(etc / "master.cf", master_cf); !st) return std::unexpected(st.error());
    auto check = run_command({"/usr/sbin/postfix", "-c", etc.string(), "check"});
    if (!check) return std::unexpected(check.error());
    if (check->exit_code != 0)
        return fail(ErrorKind::config, "postfix check failed: " + check->output);
    return std::vector<std::string>{"/usr/lib/postfix/sbin/master", "-c", etc.string(), "-d"};
}

}  // namespace

std::string eicar() {
    return R"E(X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*)E";
}

std::vector<fs::path> files_under(const fs::path& dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
        if (it->is_regular_file()) out.push_back(it->path());
    std::sort(out.begin(), out.end());
    return out;
}

Result<std::unique_ptr<ServerFixture>> ServerFixture::create(std::string_view name) {
    auto dir = TempDir::create("pecd-" + std::string(name));
    if (!dir) return std::unexpected(dir.error());
    std::unique_ptr<ServerFixture> f(new ServerFixture());
    f->dir_ = dir->release();
    // Servers drop privileges (nobody, postfix, dovenull): they must be able to enter the dir.
    if (::chmod(f->dir_.c_str(), 0755) != 0) return fail_errno("chmod " + f->dir_.string());
    return f;
}

Status ServerFixture::launch(
    const std::function<Result<std::vector<std::string>>(int port)>& prepare, const Ready& ready,
    fs::path log_path, std::chrono::milliseconds timeout) {
    log_path_ = std::move(log_path);
    Error last{ErrorKind::transient, "not started"};
    // A port picked as free can be taken before the server binds it: a few attempts.
    for (int attempt = 0; attempt < 3; ++attempt) {
        auto port = free_loopback_port();
        if (!port) return std::unexpected(port.error());
        port_ = *port;
        auto argv = prepare(port_);
        if (!argv) return std::unexpected(argv.error());
        std::vector<char*> args;
        for (auto& a : *argv) args.push_back(a.data());
        args.push_back(nullptr);
        std::string stderr_path = (dir_ / "stderr.log").string();
        pid_t parent = ::getpid();
        pid_t pid = ::fork();
        if (pid < 0) return fail_errno("fork");
        if (pid == 0) {
            // If the test process dies without running destructors, the server goes too.
            ::prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (::getppid() != parent) ::_exit(1);
            ::setpgid(0, 0);
            int devnull = ::open("/dev/null", O_RDWR);
            if (devnull >= 0) ::dup2(devnull, 0);
            int err = ::open(stderr_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (err >= 0) {
                ::dup2(err, 1);
                ::dup2(err, 2);
            }
            ::execv(args[0], args.data());
            ::_exit(127);
        }
        pid_ = pid;
        auto deadline = Clock::now() + timeout;
        bool exited = false;
        while (Clock::now() < deadline) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                exited = true;
                last =
                    Error{ErrorKind::transient, (*argv)[0] + " exited during start-up (status " +
                                                    std::to_string(status) + "); log:\n" + log()};
                break;
            }
            auto ok = ready(*this);
            if (!ok) {
                (void)stop();
                return context(ok.error(), "checking " + (*argv)[0] + "; log:\n" + log());
            }
            if (*ok) return {};
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        if (!exited) {
            (void)stop();
            return fail(ErrorKind::transient, (*argv)[0] + " not ready within " +
                                                  std::to_string(timeout.count()) + " ms; log:\n" +
                                                  log());
        }
    }
    return std::unexpected(last);
}

Status ServerFixture::stop() {
    if (pid_ <= 0) return {};
    pid_t pid = std::exchange(pid_, -1);
    if (::kill(pid, SIGTERM) != 0 && errno != ESRCH) return fail_errno("kill");
    auto deadline = Clock::now() + std::chrono::seconds(10);
    while (Clock::now() < deadline) {
        int status = 0;
        pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid || (r < 0 && errno == ECHILD)) {
            // Helpers the server forked share its process group; leftovers must not outlive it.
            ::kill(-pid, SIGKILL);
            return {};
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ::kill(-pid, SIGKILL);
    ::kill(pid, SIGKILL);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return fail(ErrorKind::transient, "server did not stop on SIGTERM within 10 s; killed");
}

ServerFixture::~ServerFixture() {
    if (auto st = stop(); !st)
        std::fprintf(stderr, "ServerFixture: %s\n", st.error().message.c_str());
    if (dir_.empty() || std::getenv("PECD_KEEP_TEST_DIRS") != nullptr) return;
    std::error_code ec;
    fs::remove_all(dir_, ec);
}

std::string ServerFixture::log() const {
    std::string out = read_text(dir_ / "stderr.log");
    if (!log_path_.empty() && log_path_ != dir_ / "stderr.log") out += read_text(log_path_);
    return out;
}

// ---- Dovecot ---------------------------------------------------------------------------------

fs::path dovecot_maildir(const ServerFixture& f, std::string_view address) {
    auto at = address.rfind('@');
    return f.dir() / "mail" / std::string(address.substr(at + 1)) /
           std::string(address.substr(0, at)) / "Maildir";
}

fs::path dovecot_lmtp_socket(const ServerFixture& f) {
    return f.dir() / "run" / "lmtp";
}

Result<std::unique_ptr<ServerFixture>> start_dovecot(const std::vector<std::string>& users) {
    auto f = ServerFixture::create("dovecot");
    if (!f) return std::unexpected(f.error());
    const fs::path d = (*f)->dir();
    std::error_code ec;
    for (const char* sub : {"run", "state", "mail"}) fs::create_directories(d / sub, ec);
    if (auto st = chown_to(d / "mail", "nobody"); !st) return std::unexpected(st.error());
    // passwd-file: user:password:uid:gid:gecos:home:shell. Only these users exist.
    std::string passwd;
    for (const auto& u : users) {
        auto at = u.rfind('@');
        passwd += u + ":{PLAIN}secret:65534:65534::" +
                  (d / "mail" / u.substr(at + 1) / u.substr(0, at)).string() + "::\n";
    }
    if (auto st = write_text(d / "users", passwd); !st) return std::unexpected(st.error());
    auto prepare = [d](int port) -> Result<std::vector<std::string>> {
        std::string conf =
            "protocols = lmtp\n"
            "listen = 127.0.0.1\n"
            "base_dir = " +
            (d / "run").string() +
            "\n"
            "state_dir = " +
            (d / "state").string() +
            "\n"
            "log_path = " +
            (d / "dovecot.log").string() +
            "\n"
            "info_log_path = " +
            (d / "dovecot.log").string() +
            "\n"
            "ssl = no\n"
            "default_internal_user = dovecot\n"
            "default_login_user = dovenull\n"
            "mail_location = maildir:~/Maildir\n"
            "mail_save_crlf = yes\n"
            "first_valid_uid = 1\n"
            "passdb {\n  driver = passwd-file\n  args = " +
            (d / "users").string() +
            "\n}\n"
            "userdb {\n  driver = passwd-file\n  args = " +
            (d / "users").string() +
            "\n}\n"
            "service lmtp {\n"
            "  inet_listener lmtp {\n    address = 127.0.0.1\n    port = " +
            std::to_string(port) +
            "\n  }\n"
            "  unix_listener lmtp {\n    mode = 0666\n  }\n"
            "}\n"
            "lmtp_save_to_detail_mailbox = no\n"
            // SASL for Postfix submissions (dovecot_auth_socket): the same users and passwords.
            "auth_mechanisms = plain login\n"
            "disable_plaintext_auth = no\n"
            "service auth {\n  unix_listener auth-postfix {\n    mode = 0666\n  }\n}\n"
            "protocol lmtp {\n  postmaster_address = postmaster@pec.test\n}\n";
        if (auto st = write_text(d / "dovecot.conf", conf); !st) return std::unexpected(st.error());
        // -F: the master stays in the foreground, so the PID we hold is Dovecot's.
        return std::vector<std::string>{"/usr/sbin/dovecot", "-F", "-c",
                                        (d / "dovecot.conf").string()};
    };
    if (auto st = (*f)->launch(prepare, greets, d / "dovecot.log"); !st)
        return std::unexpected(st.error());
    return f;
}

// ---- smtp-sink -------------------------------------------------------------------------------

Result<std::unique_ptr<ServerFixture>> start_smtp_sink(const std::vector<std::string>& extra) {
    auto f = ServerFixture::create("smtp-sink");
    if (!f) return std::unexpected(f.error());
    const fs::path d = (*f)->dir();
    std::error_code ec;
    fs::create_directories(d / "dump", ec);
    if (auto st = chown_to(d / "dump", "nobody"); !st) return std::unexpected(st.error());
    auto prepare = [d, extra](int port) -> Result<std::vector<std::string>> {
        // As root smtp-sink must be told whom to become (-u); -d dumps one file per message.
        std::vector<std::string> argv = {"/usr/sbin/smtp-sink",          "-u", "nobody",   "-d",
                                         (d / "dump" / "msg.").string(), "-h", "sink.test"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        argv.push_back("127.0.0.1:" + std::to_string(port));
        argv.push_back("10");
        return argv;
    };
    if (auto st = (*f)->launch(prepare, greets, d / "stderr.log"); !st)
        return std::unexpected(st.error());
    return f;
}

// ---- Postfix ---------------------------------------------------------------------------------

Result<std::unique_ptr<ServerFixture>> start_postfix(const std::vector<std::string>& mailboxes,
                                                     const std::vector<std::string>& access) {
    auto f = ServerFixture::create("postfix");
    if (!f) return std::unexpected(f.error());
    const fs::path d = (*f)->dir();
    std::error_code ec;
    for (const char* sub : {"etc", "spool", "data", "vmail"}) fs::create_directories(d / sub, ec);
    if (auto st = chown_to(d / "data", "postfix"); !st) return std::unexpected(st.error());
    if (auto st = chown_to(d / "vmail", "nobody"); !st) return std::unexpected(st.error());
    std::string vmailbox, domains;
    for (const auto& m : mailboxes) {
        auto at = m.rfind('@');
        std::string domain = m.substr(at + 1);
        vmailbox += m + " " + domain + "/" + m.substr(0, at) + "/\n";
        if (domains.find(domain) == std::string::npos)
            domains += (domains.empty() ? "" : " ") + domain;
    }
    std::string access_map;
    for (const auto& a : access) access_map += a + "\n";
    if (auto st = write_text(d / "etc" / "vmailbox", vmailbox); !st)
        return std::unexpected(st.error());
    if (auto st = write_text(d / "etc" / "rcpt_access", access_map); !st)
        return std::unexpected(st.error());
    const std::string etc = (d / "etc").string();
    auto prepare = [d, etc, domains](int port) -> Result<std::vector<std::string>> {
        std::string main_cf =
            "compatibility_level = 3.6\n"
            "queue_directory = " +
            (d / "spool").string() +
            "\n"
            "data_directory = " +
            (d / "data").string() +
            "\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            // No syslogd here: postlogd writes the log file (it must be under a listed prefix).
            "maillog_file = " +
            (d / "maillog").string() +
            "\n"
            "maillog_file_prefixes = /var, /dev/stdout, " +
            d.string() +
            "\n"
            "myhostname = mx.pec.test\nmydomain = pec.test\nmyorigin = $myhostname\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n"
            "mydestination =\nrelayhost =\nalias_maps =\nalias_database =\n"
            "local_recipient_maps =\nbiff = no\nsmtpd_banner = $myhostname ESMTP\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            "smtpd_recipient_restrictions = check_recipient_access texthash:" +
            etc +
            "/rcpt_access, permit_mynetworks, reject\n"
            "message_size_limit = 10485760\n"
            "virtual_mailbox_domains = " +
            domains +
            "\n"
            "virtual_mailbox_base = " +
            (d / "vmail").string() +
            "\n"
            "virtual_mailbox_maps = texthash:" +
            etc +
            "/vmailbox\n"
            "virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n"
            "virtual_mailbox_limit = 0\n";
        // chroot n everywhere: a plain master start does not populate a chroot jail.
        std::string master_cf = "127.0.0.1:" + std::to_string(port) + " inet n - n - - smtpd\n" +
                                postfix_internal_services("virtual unix - n n - - virtual\n");
        return prepare_postfix(d / "etc", main_cf, master_cf);
    };
    if (auto st = (*f)->launch(prepare, greets, d / "maillog"); !st)
        return std::unexpected(st.error());
    return f;
}

Result<std::unique_ptr<ServerFixture>> start_pec_postfix(const PecPostfixOptions& o,
                                                         PecPostfixPorts& ports) {
    auto f = ServerFixture::create("postfix-" + o.hostname);
    if (!f) return std::unexpected(f.error());
    const fs::path d = (*f)->dir();
    std::error_code ec;
    for (const char* sub : {"etc", "spool", "data"}) fs::create_directories(d / sub, ec);
    if (auto st = chown_to(d / "data", "postfix"); !st) return std::unexpected(st.error());
    auto snippet = [](const char* name) -> Result<std::string> {
        std::ifstream in(fs::path(PECD_SOURCE_DIR) / "conf" / "postfix" / name);
        std::stringstream text;
        text << in.rdbuf();
        if (!in) return fail(ErrorKind::config, std::string("cannot read conf/postfix/") + name);
        return text.str();
    };
    auto main_snippet = snippet("main.cf");
    if (!main_snippet) return std::unexpected(main_snippet.error());
    auto master_snippet = snippet("master.cf");
    if (!master_snippet) return std::unexpected(master_snippet.error());
    const std::string etc = (d / "etc").string();
    auto replace_all = [](std::string text, std::string_view from, const std::string& to) {
        for (size_t at = text.find(from); at != std::string::npos;
             at = text.find(from, at + to.size()))
            text.replace(at, from.size(), to);
        return text;
    };
    std::string tables;
    for (const auto& dom : o.domains) tables += dom + " OK\n";
    if (auto st = write_text(d / "etc" / "pec_domains", tables); !st)
        return std::unexpected(st.error());
    std::string senders;
    for (const auto& s : o.senders) senders += s + " " + s + "\n";
    if (auto st = write_text(d / "etc" / "pec_senders", senders); !st)
        return std::unexpected(st.error());
    if (auto st = set_pec_routes(**f, o.domains, {}); !st) return std::unexpected(st.error());
    auto prepare = [=, &ports](int port) -> Result<std::vector<std::string>> {
        auto submission = free_loopback_port();
        if (!submission) return std::unexpected(submission.error());
        auto reinjection = free_loopback_port();
        if (!reinjection) return std::unexpected(reinjection.error());
        ports = {port, *submission, *reinjection};
        // The instance around the snippet: its own directories and log, loopback only, no
        // chroot (a plain master start does not populate a jail); then conf/postfix/main.cf.
        std::string main_cf =
            "compatibility_level = 3.6\nqueue_directory = " + (d / "spool").string() +
            "\ndata_directory = " + (d / "data").string() +
            "\nmail_owner = postfix\nsetgid_group = postdrop\n"
            "maillog_file = " +
            (d / "maillog").string() + "\nmaillog_file_prefixes = /var, /dev/stdout, " +
            d.string() + "\nmyhostname = " + o.hostname +
            "\nmyorigin = $myhostname\ninet_interfaces = 127.0.0.1\n"
            "inet_protocols = ipv4\nmydestination =\nrelayhost =\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\n"
            "biff = no\nsmtpd_banner = $myhostname ESMTP\n"
            "smtp_host_lookup = native\n\n";
        std::string pec_main = replace_all(*main_snippet, "/etc/postfix/", etc + "/");
        pec_main = replace_all(pec_main, "smtpd_sasl_path = private/auth",
                               "smtpd_sasl_path = " + o.sasl_socket.string());
        main_cf += pec_main;
        // conf/postfix/master.cf with this instance's ports, paths and pipe user.
        std::string pec_master = *master_snippet;
        pec_master = replace_all(pec_master, "\nsmtp      inet  n",
                                 "\n127.0.0.1:" + std::to_string(port) + " inet n");
        pec_master = replace_all(pec_master, "\nsubmission inet n",
                                 "\n127.0.0.1:" + std::to_string(*submission) + " inet n");
        pec_master =
            replace_all(pec_master, "127.0.0.1:10025", "127.0.0.1:" + std::to_string(*reinjection));
        pec_master = replace_all(pec_master, "/usr/local/bin/pec-enqueue", o.pec_enqueue.string());
        pec_master = replace_all(pec_master, "/etc/pecd/pecd.conf", o.pecd_conf.string());
        pec_master = replace_all(pec_master, "user=pecd", "user=" + o.pipe_user);
        std::string master_cf =
            pec_master + postfix_internal_services("relay unix - - n - - smtp\n");
        return prepare_postfix(d / "etc", main_cf, master_cf);
    };
    if (auto st = (*f)->launch(prepare, greets, d / "maillog"); !st)
        return std::unexpected(st.error());
    return f;
}

Status set_pec_routes(const ServerFixture& postfix, const std::vector<std::string>& domains,
                      const std::vector<std::string>& routes) {
    std::string table;
    for (const auto& dom : domains) table += dom + " pecd:\n";
    for (const auto& r : routes) table += r + "\n";
    const fs::path etc = postfix.dir() / "etc";
    if (auto st = write_text(etc / "pec_transport", table); !st) return st;
    if (!postfix.running()) return {};
    // texthash tables are read when a Postfix daemon starts: reload them.
    auto reload = run_command({"/usr/sbin/postfix", "-c", etc.string(), "reload"});
    if (!reload) return std::unexpected(reload.error());
    if (reload->exit_code != 0)
        return fail(ErrorKind::transient, "postfix reload failed: " + reload->output);
    return {};
}

fs::path dovecot_auth_socket(const ServerFixture& f) {
    return f.dir() / "run" / "auth-postfix";
}

// ---- clamd -----------------------------------------------------------------------------------

Result<std::unique_ptr<ServerFixture>> start_clamd(std::string stream_max) {
    auto f = ServerFixture::create("clamd");
    if (!f) return std::unexpected(f.error());
    const fs::path d = (*f)->dir();
    std::error_code ec;
    fs::create_directories(d / "db", ec);
    // real-servers.md §7: a whole-file MD5 signature and a body substring signature of EICAR.
    std::string hex;
    for (unsigned char c : std::string("EICAR-STANDARD-ANTIVIRUS-TEST-FILE")) {
        char b[3];
        std::snprintf(b, sizeof b, "%02x", c);
        hex += b;
    }
    if (auto st = write_text(d / "db" / "pec-test.hdb",
                             "44d88612fea8a8f36de82e1278abb02f:68:PEC.Test.EICAR.HDB\n");
        !st)
        return std::unexpected(st.error());
    if (auto st = write_text(d / "db" / "pec-test.ndb", "PEC.Test.EICAR.NDB:0:*:" + hex + "\n");
        !st)
        return std::unexpected(st.error());
    auto prepare = [d, stream_max](int port) -> Result<std::vector<std::string>> {
        std::string conf = "DatabaseDirectory " + (d / "db").string() + "\n" + "LocalSocket " +
                           (d / "clamd.sock").string() + "\n" +
                           "LocalSocketMode 666\n"
                           "TCPSocket " +
                           std::to_string(port) + "\n" +
                           "TCPAddr 127.0.0.1\n"
                           "Foreground yes\n"
                           "LogFile " +
                           (d / "clamd.log").string() + "\n" +
                           "LogTime yes\nMaxThreads 4\n"
                           "StreamMaxLength " +
                           stream_max + "\n" + "ScanMail yes\nBytecode no\nSelfCheck 0\n";
        if (auto st = write_text(d / "clamd.conf", conf); !st) return std::unexpected(st.error());
        return std::vector<std::string>{"/usr/sbin/clamd", "-c", (d / "clamd.conf").string()};
    };
    auto pong = [](const ServerFixture& s) -> Result<bool> {
        transport::Endpoint ep{"", "127.0.0.1", s.port()};
        auto conn = transport::Connection::open(ep, std::chrono::milliseconds(300));
        if (!conn) return false;
        if (!conn->write(std::string_view("zPING", 6), std::chrono::milliseconds(1000)))
            return false;
        auto reply = conn->read_until('\0', std::chrono::milliseconds(2000));
        return reply && *reply == "PONG";
    };
    if (auto st = (*f)->launch(prepare, pong, d / "clamd.log"); !st)
        return std::unexpected(st.error());
    return f;
}

}  // namespace pecd::test
