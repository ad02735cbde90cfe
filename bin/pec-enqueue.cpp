// pec-enqueue: the Postfix pipe(8) target. Reads one message on stdin and commits it to
// queue/classify as a durable queue file. Exit 0 only once the file is durable; on any internal
// failure exit 75 (EX_TEMPFAIL) so that Postfix keeps the mail and retries: never a code that
// would bounce it. Only an over-size message is refused permanently (when so configured).
//
//   master.cf: pecd unix - n n - - pipe flags=q user=pecd
//                argv=/usr/local/bin/pec-enqueue -f ${sender} -u ${sasl_username} -a
//                ${client_address} -- ${recipient}
#include <CLI/CLI.hpp>
#include <cstdio>
#include <vector>

#include "spool-layout/enqueue.hpp"
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
    app.add_option("-f,--from", sender, "envelope sender (MAIL FROM); empty for the null sender")
        ->required();
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
    auto runner_options = runner::runner_options(*config);
    if (!runner_options) return temp_fail(runner_options.error().message);
    auto spool = spool::Spool::open(settings->root, /*create=*/false);
    if (!spool) return temp_fail(spool.error().message);

    spool::Envelope env;
    env.sender = sender;
    env.recipients = recipients;
    env.user = user;
    env.client = client;
    auto id = spool::enqueue_message(
        *spool, std::move(env), STDIN_FILENO,
        {settings->max_message_size, runner_options->sync == runner::SyncMode::strict});
    if (!id) {
        if (id.error().kind == ErrorKind::permanent) {
            std::fprintf(stderr, "%s\n", id.error().message.c_str());
            return settings->oversize_bounces ? kUnavailable : kTempFail;
        }
        return temp_fail(id.error().message);
    }
    return 0;
}
