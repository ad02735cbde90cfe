// pec-enqueue: the Postfix pipe(8) target. Reads one message on stdin and commits it to
// queue/classify as a durable queue file. Exit 0 only once the file is durable; on any internal
// failure exit 75 (EX_TEMPFAIL) so that Postfix keeps the mail and retries: never a code that
// would bounce it. Only an over-size message is refused permanently (when so configured).
//
//   master.cf: pecd unix - n n - - pipe flags=q user=pecd
//                argv=/usr/local/bin/pec-enqueue -f ${sender} -u ${sasl_username} -a ${client_address} -- ${recipient}
#include <sys/file.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <vector>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/config.hpp"
#include "stages/runner/settings.hpp"

using namespace pecd;

namespace {

constexpr int kTempFail = 75;     // EX_TEMPFAIL: Postfix defers
constexpr int kUnavailable = 69;  // EX_UNAVAILABLE: Postfix bounces (only for over-size)

int temp_fail(const std::string& why) {
    std::fprintf(stderr, "4.3.0 pec-enqueue: %s\n", why.c_str());
    return kTempFail;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"pec-enqueue: commit one message from stdin to the pecd spool"};
    std::string config_file, sender, user, client;
    std::vector<std::string> recipients;
    app.add_option("-c,--config", config_file, "configuration file");
    app.add_option("-f,--from", sender, "envelope sender (MAIL FROM); empty for the null sender")->required();
    app.add_option("-u,--user", user, "authenticated (SASL) user, empty when none");
    app.add_option("-a,--client", client, "client address");
    app.add_option("recipients", recipients, "envelope recipients (RCPT TO)")->required();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        // A broken master.cf line must not bounce mail: defer and say why.
        if (e.get_exit_code() == 0) return app.exit(e);
        return temp_fail(std::string("bad arguments: ") + e.what());
    }
    if (auto f = durable::faults_from_env(); !f) return temp_fail(f.error().message);

    auto config = Config::load(runner::config_path(config_file));
    if (!config) return temp_fail(config.error().message);
    auto settings = runner::spool_settings(*config);
    if (!settings) return temp_fail(settings.error().message);
    auto spool = spool::Spool::open(settings->root, /*create=*/false);
    if (!spool) return temp_fail(spool.error().message);

    spool::Envelope env;
    env.arrival_us = spool::now_us();
    env.id = spool::new_queue_id(env.arrival_us);
    env.sender = sender;
    env.recipients = recipients;
    env.user = user;
    env.client = client;
    env.history.push_back({"enqueue", env.arrival_us, "pec-enqueue"});

    std::filesystem::path tmp = spool->tmp_dir() / env.id;
    auto fd = durable::open_file(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (!fd) return temp_fail(fd.error().message);
    // The lock tells `pecd classify` start-up that this temporary file is still being written.
    ::flock(fd->get(), LOCK_EX);
    auto abandon = [&](const std::string& why, int code) {
        ::unlink(tmp.c_str());
        if (code == kTempFail) return temp_fail(why);
        std::fprintf(stderr, "%s\n", why.c_str());
        return code;
    };

    std::string header = spool::encode_header(env, 0);
    if (auto st = durable::write_all(fd->get(), header); !st) return abandon(st.error().message, kTempFail);
    uint64_t size = 0;
    std::vector<char> buf(1 << 16);
    while (true) {
        ssize_t n = ::read(STDIN_FILENO, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return abandon(std::string("reading the message: ") + std::strerror(errno), kTempFail);
        }
        if (n == 0) break;
        size += static_cast<uint64_t>(n);
        if (size > settings->max_message_size) {
            std::string why = "5.3.4 message size exceeds the limit of " +
                              std::to_string(settings->max_message_size) + " bytes";
            return abandon(why, settings->oversize_bounces ? kUnavailable : kTempFail);
        }
        if (auto st = durable::write_all(fd->get(), std::string_view(buf.data(), static_cast<size_t>(n))); !st)
            return abandon(st.error().message, kTempFail);
    }
    auto st = durable::pwrite_all(fd->get(), spool::format_body_size(size),
                                  static_cast<off_t>(spool::body_size_field_offset(header)));
    if (st) st = durable::sync_data(fd->get());
    if (!st) return abandon(st.error().message, kTempFail);
    std::filesystem::path queue = spool->queue_dir(spool::kStages.front());
    if (auto moved = durable::rename_noreplace(tmp, queue / env.id); !moved)
        return abandon(moved.error().message, kTempFail);
    // The rename is the commit; the directory fsync makes it survive a power loss. If that fsync
    // fails the file may or may not survive: defer, and let Postfix retry (a duplicate at worst).
    if (auto synced = durable::sync_dir(queue); !synced) {
        ::unlink((queue / env.id).c_str());
        return temp_fail(synced.error().message);
    }
    return 0;
}
