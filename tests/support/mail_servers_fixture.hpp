// Real mail servers for the transport tests, each private to one test: Dovecot (LMTP),
// Postfix's smtp-sink, a Postfix instance, clamd. Every server runs in the foreground as our
// child, on 127.0.0.1:<free port> with all its files in a temp dir, and is stopped by PID and
// its dir removed by the destructor, also when the test fails (real-servers.md §5-§7).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::test {

class ServerFixture {
  public:
    ~ServerFixture();  // stop() and remove the temp dir
    ServerFixture(const ServerFixture&) = delete;
    ServerFixture& operator=(const ServerFixture&) = delete;

    // SIGTERM, wait up to 10 s, then SIGKILL. Idempotent; the port is closed on return.
    Status stop();
    bool running() const { return pid_ > 0; }
    pid_t pid() const { return pid_; }
    int port() const { return port_; }
    std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
    const std::filesystem::path& dir() const { return dir_; }
    std::string log() const;  // the server's log file (or its stderr) so far

    // Used by the start_* functions below.
    using Ready = std::function<Result<bool>(const ServerFixture&)>;
    static Result<std::unique_ptr<ServerFixture>> create(std::string_view name);
    // Picks a free port, lets `prepare(port)` write the config and return argv, runs it in the
    // foreground and waits until `ready` says yes (the error quotes the log).
    Status launch(const std::function<Result<std::vector<std::string>>(int port)>& prepare,
                  const Ready& ready, std::filesystem::path log_path,
                  std::chrono::milliseconds timeout = std::chrono::seconds(20));

  private:
    ServerFixture() = default;
    std::filesystem::path dir_;
    std::filesystem::path log_path_;
    int port_ = 0;
    pid_t pid_ = -1;
};

// Dovecot LMTP. `users`: full addresses with a mailbox; any other recipient is unknown (5.1.1).
// Mail is stored under dir()/mail/<domain>/<local>/Maildir with CRLF kept (mail_save_crlf).
Result<std::unique_ptr<ServerFixture>> start_dovecot(const std::vector<std::string>& users);
std::filesystem::path dovecot_maildir(const ServerFixture& f, std::string_view address);
std::filesystem::path dovecot_lmtp_socket(const ServerFixture& f);

// smtp-sink dumping every message to dir()/dump/; `extra` e.g. {"-f", "RCPT"} (hard reject).
Result<std::unique_ptr<ServerFixture>> start_smtp_sink(const std::vector<std::string>& extra = {});

// A Postfix instance (master in the foreground) with an smtpd on the port. Recipients:
// `mailboxes` are delivered by virtual(8) to dir()/vmail/<domain>/<local>/ (Maildir);
// `access` lines ("addr 550 5.1.1 text") reject others at RCPT time.
Result<std::unique_ptr<ServerFixture>> start_postfix(const std::vector<std::string>& mailboxes,
                                                     const std::vector<std::string>& access);

// Dovecot's SASL socket for Postfix (smtpd_sasl_type = dovecot): the users of start_dovecot,
// password "secret".
std::filesystem::path dovecot_auth_socket(const ServerFixture& f);

// A Postfix instance built from the snippets an administrator installs, conf/postfix/main.cf and
// conf/postfix/master.cf, with only paths, ports and the pipe user replaced: port() is the
// smtp (25) listener; the submission (587) and reinjection (10025) ports go into `ports`.
struct PecPostfixOptions {
    std::string hostname;               // myhostname, distinct per instance (loop detection)
    std::filesystem::path pec_enqueue;  // the binary the pipe runs
    std::filesystem::path pecd_conf;    // its -c
    std::filesystem::path sasl_socket;  // dovecot_auth_socket()
    std::vector<std::string> domains;   // the PEC domains (pec_domains, pec_transport -> pecd:)
    std::vector<std::string> senders;   // pec_senders: each login may send as itself
    std::string pipe_user = "nobody";   // pipe(8) refuses root; no pecd account here
};
struct PecPostfixPorts {
    int smtp = 0, submission = 0, reinjection = 0;
};
Result<std::unique_ptr<ServerFixture>> start_pec_postfix(const PecPostfixOptions& options,
                                                         PecPostfixPorts& ports);
// Writes pec_transport: `domains` to pecd, then `routes` ("pec.beta.test smtp:[127.0.0.1]:2525",
// what DNS MX records would say) and reloads a running instance.
Status set_pec_routes(const ServerFixture& postfix, const std::vector<std::string>& domains,
                      const std::vector<std::string>& routes);

// clamd with the private two-signature EICAR DB; reachable on the TCP port and on
// dir()/clamd.sock. `stream_max` is clamd's StreamMaxLength ("100M").
Result<std::unique_ptr<ServerFixture>> start_clamd(std::string stream_max = "100M");

// The 68-byte EICAR test string.
std::string eicar();

// Files below `dir` (recursively), sorted.
std::vector<std::filesystem::path> files_under(const std::filesystem::path& dir);

}  // namespace pecd::test
