// The legal log written by the stages (pec-rules §8): the two providers of provider_flow_test with
// one log stream per stage, the events of a certified-to-certified exchange with their data, read
// back through `pecq log` and checked by `pecq log verify`; stage processes SIGKILLed between the
// log's sync and the commit leave no output without its record; a log that cannot be written
// holds the batch back.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <set>

#include "stages/legallog/legal_log.hpp"
#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using legallog::Event;
using legallog::Record;

namespace {

const std::string kPecq = std::string(PECD_BINARY_DIR) + "/bin/pecq";

Result<std::unique_ptr<legallog::Writer>> open_log(const fs::path& dir, const std::string& node,
                                                   const std::string& stage) {
    legallog::WriterOptions o;
    o.directory = dir;
    o.node = node;
    o.stage = stage;
    return legallog::Writer::open(std::move(o));
}

std::vector<Record> records_of(const Node& n) {
    std::vector<Record> out;
    if (!fs::exists(n.legal_log_dir())) return out;
    auto found = legallog::search(n.legal_log_dir(), {});
    EXPECT_TRUE(found.has_value()) << found.error().message;
    if (found)
        for (auto& f : *found) out.push_back(std::move(f.record));
    return out;
}

using StageEvent = std::pair<std::string, std::string>;  // stage, event

std::multiset<StageEvent> stage_events(const std::vector<Record>& records) {
    std::multiset<StageEvent> out;
    for (const auto& r : records) out.insert({r.stage, std::string(legallog::to_string(r.event))});
    return out;
}

const Record* find_event(const std::vector<Record>& records, Event event) {
    for (const auto& r : records)
        if (r.event == event) return &r;
    return nullptr;
}

bool related_has(const Record& r, std::string_view id) {
    return std::find(r.related.begin(), r.related.end(), id) != r.related.end();
}

bool related_has_tag(const Record& r, std::string_view tag) {
    return std::any_of(r.related.begin(), r.related.end(), [&](const std::string& id) {
        return spool::is_valid_queue_id(id) && id.ends_with(tag);
    });
}

// The events of a certified-to-certified exchange, alpha (mario) to beta (anna).
const std::multiset<StageEvent> kAlphaEvents{
    {"classify", "ricezione"},        // the submission
    {"wrap", "accettazione"},         //
    {"wrap", "busta-inviata"},        //
    {"deliver", "consegna"},          // the accettazione to mario
    {"outbound", "invio"},            // the busta
    {"classify", "ricezione"},        // the presa in carico from beta
    {"verify", "ricevuta-ricevuta"},  //
    {"deliver", "consegna"},          // into posta-certificata@pec.alpha.test
    {"classify", "ricezione"},        // the avvenuta consegna from beta
    {"verify", "ricevuta-ricevuta"},  //
    {"deliver", "consegna"},          // to mario
};
const std::multiset<StageEvent> kBetaEvents{
    {"classify", "ricezione"},         // the busta
    {"verify", "presa-in-carico"},     //
    {"outbound", "invio"},             // the presa in carico
    {"deliver", "consegna"},           // the busta to anna
    {"receipt", "ricevuta-consegna"},  //
    {"outbound", "invio"},             // the avvenuta consegna
};

std::set<StageEvent> distinct(const std::multiset<StageEvent>& events) {
    return {events.begin(), events.end()};
}

// Every file a stage of `n` has committed and that still waits in the spool (a queue or deferral
// of a later stage, a committed output set, an input committed in place) is named among the related
// ids of a record of `n`'s legal log. Files in queue/classify come from outside; the outbox belongs
// to the transport.
void expect_every_output_logged(const Node& n, const std::string& when) {
    std::set<std::string> related;
    for (const auto& r : records_of(n)) related.insert(r.related.begin(), r.related.end());
    std::vector<std::pair<fs::path, std::string>> outputs;  // where, queue id
    for (auto stage : spool::kStages) {
        for (auto area : {spool::Area::queue, spool::Area::deferred}) {
            if (area == spool::Area::queue && stage == spool::kStages.front()) continue;
            fs::path dir = n.spool.area_dir(area, stage);
            if (!fs::exists(dir)) continue;
            for (const auto& e : fs::directory_iterator(dir))
                outputs.emplace_back(e.path(), e.path().filename().string());
        }
        fs::path active = n.spool.area_dir(spool::Area::active, stage);
        if (!fs::exists(active)) continue;
        for (const auto& e : fs::directory_iterator(active)) {
            std::string name = e.path().filename().string();
            // A claimed input whose last record routes it on is committed in place.
            if (spool::is_valid_queue_id(name)) {
                auto info = spool::read_header(e.path());
                if (info && !info->env.history.empty() && info->env.history.back().stage == stage &&
                    info->env.history.back().note.starts_with("-> "))
                    outputs.emplace_back(e.path(), name);
                continue;
            }
            // An output beside its input: committed once the input is gone.
            if (size_t infix = name.find(".out.", 14);
                infix != std::string::npos && name.find('~', infix) != std::string::npos) {
                if (!fs::exists(active / name.substr(0, infix)))  // its id: input id + suffix
                    outputs.emplace_back(
                        e.path(), name.substr(0, infix) + name.substr(name.find('~', infix) + 1));
                continue;
            }
            if (!e.is_directory() || !name.ends_with(".out") || name.ends_with(".out.tmp"))
                continue;
            for (const auto& f : fs::directory_iterator(e.path())) {
                std::string file = f.path().filename().string();
                outputs.emplace_back(f.path(), file.substr(file.find('~') + 1));
            }
        }
    }
    for (const auto& [path, id] : outputs)
        EXPECT_TRUE(related.contains(id))
            << when << ": " << path << " exists without a legal-log record naming it";
}

using LogPoint = runner::StageRunner::LogPoint;

// Forks a process that drains `r` with its own legal log open and SIGKILLs itself at `point` of
// its first batch: just before the records are appended, or as soon as they are durable; the
// batch's commits come after both.
bool drain_killed_at(const Node& n, runner::StageRunner& r, LogPoint point) {
    pid_t pid = ::fork();
    if (pid == 0) {
        auto w = open_log(n.legal_log_dir(), n.name, r.stage());
        if (!w) ::_exit(3);
        r.set_legal_log(std::move(*w));
        r.set_log_hook([point](LogPoint at) {
            if (at == point) ::kill(::getpid(), SIGKILL);
        });
        std::atomic<bool> stop{false};
        (void)r.drain(stop);
        ::_exit(4);  // the hook never ran: nothing was processed
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return false;
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

size_t queued(const Node& n, std::string_view stage) {
    auto names = durable::list_dir(n.spool.queue_dir(std::string(stage)));
    return names ? names->size() : 0;
}

}  // namespace

TEST(ProviderLegalLog, CertifiedToCertifiedLogsEveryEventOnBothProviders) {
    TwoProviders net;
    net.alpha.attach_legal_logs();
    net.beta.attach_legal_logs();
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    const std::string original =
        client_message(mario, anna, "", "Fattura 1", "In allegato la fattura.");
    const size_t at = original.find("Message-ID: ") + 12;
    const std::string client_id = original.substr(at, original.find("\r\n", at) - at);
    const std::string submission = net.submit("mario", {anna}, original);
    net.run();
    net.expect_clean();
    net.alpha.detach_legal_logs();
    net.beta.detach_legal_logs();

    auto acc = net.mailbox(net.alpha, mario);
    ASSERT_FALSE(acc.empty());
    ASSERT_TRUE(acc[0].info.daticert.has_value());
    const std::string id = acc[0].info.daticert->identificativo;

    auto alpha = records_of(net.alpha), beta = records_of(net.beta);
    EXPECT_EQ(stage_events(alpha), kAlphaEvents);
    EXPECT_EQ(stage_events(beta), kBetaEvents);
    for (const auto* list : {&alpha, &beta}) {
        for (const auto& r : *list) {
            SCOPED_TRACE(r.node + "/" + r.stage + " " + std::string(legallog::to_string(r.event)));
            EXPECT_EQ(r.message_id, client_id);
            EXPECT_FALSE(r.related.empty());
            EXPECT_GT(r.time_us, 0);
            if (r.stage == "classify") {
                // What the head says: a receipt names the identificativo only in its body.
                bool receipt = r.sender == net.beta.service();
                EXPECT_EQ(r.identificativo, receipt ? "" : id);
                EXPECT_TRUE(r.subject.ends_with("Fattura 1")) << r.subject;
                continue;
            }
            EXPECT_EQ(r.identificativo, id);
            // Every later event is about mario's message to anna.
            EXPECT_EQ(r.sender, mario);
            EXPECT_EQ(r.subject, "Fattura 1");
            EXPECT_EQ(r.recipients.size(), 1u);
        }
    }

    // The access point: the submission received, accepted and sent as one busta.
    const Record* received = find_event(alpha, Event::ricezione);
    ASSERT_NE(received, nullptr);
    EXPECT_EQ(received->sender, mario);
    EXPECT_EQ(received->recipients, std::vector<std::string>{anna});
    EXPECT_EQ(received->message_id, client_id);
    EXPECT_TRUE(related_has(*received, submission));
    const Record* accepted = find_event(alpha, Event::accettazione);
    ASSERT_NE(accepted, nullptr);
    EXPECT_EQ(accepted->recipients, std::vector<std::string>{anna});
    EXPECT_EQ(accepted->provider, "Gestore Alpha S.p.A.");
    EXPECT_EQ(accepted->node, "alpha");
    EXPECT_TRUE(related_has(*accepted, spool::derived_queue_id(submission, "acc")));
    EXPECT_TRUE(related_has(*accepted, spool::derived_queue_id(submission, "b")));
    EXPECT_TRUE(related_has(*accepted, id));  // the busta's Message-ID is the identificativo
    const Record* sent = find_event(alpha, Event::busta_inviata);
    ASSERT_NE(sent, nullptr);
    EXPECT_EQ(sent->time_us, accepted->time_us);  // one instant per transaction
    EXPECT_TRUE(related_has(*sent, spool::derived_queue_id(submission, "b")));
    // The receipt point of beta: the busta taken in charge, signed by alpha.
    const Record* taken = find_event(beta, Event::presa_in_carico);
    ASSERT_NE(taken, nullptr);
    EXPECT_EQ(taken->recipients, std::vector<std::string>{anna});
    EXPECT_EQ(taken->provider, "Gestore Alpha");  // the signer's providerName in the index
    EXPECT_TRUE(related_has_tag(*taken, "-pic"));
    const Record* delivered = find_event(beta, Event::consegna);
    ASSERT_NE(delivered, nullptr);
    EXPECT_EQ(delivered->recipients, std::vector<std::string>{anna});
    EXPECT_EQ(delivered->provider, "Gestore Alpha");
    const Record* receipt = find_event(beta, Event::ricevuta_consegna);
    ASSERT_NE(receipt, nullptr);
    EXPECT_EQ(receipt->recipients, std::vector<std::string>{anna});
    EXPECT_EQ(receipt->provider, "Gestore Beta S.p.A.");
    EXPECT_TRUE(related_has_tag(*receipt, "-r0"));

    // pecq finds them by identificativo, and the chains hold.
    for (const Node* n : {&net.alpha, &net.beta}) {
        auto r = run(kPecq + " log --dir " + quote(n->legal_log_dir()) + " --id " + id);
        EXPECT_EQ(r.status, 0) << r.output;
        // alpha's two receipts from beta are found by id from verify on, not at classify.
        size_t expected = n == &net.alpha ? kAlphaEvents.size() - 2 : kBetaEvents.size();
        EXPECT_NE(r.output.find("-- " + std::to_string(expected) + " record(s)"), std::string::npos)
            << r.output;
        r = run(kPecq + " log verify --dir " + quote(n->legal_log_dir()));
        EXPECT_EQ(r.status, 0) << r.output;
        EXPECT_NE(r.output.find("OK"), std::string::npos) << r.output;
    }
    // by the client's Message-ID, all of them; by the queue id of the submission, its ricezione.
    auto r =
        run(kPecq + " log --dir " + quote(net.alpha.legal_log_dir()) + " --id '" + client_id + "'");
    EXPECT_NE(r.output.find("-- " + std::to_string(kAlphaEvents.size()) + " record(s)"),
              std::string::npos)
        << r.output;
    r = run(kPecq + " log --dir " + quote(net.alpha.legal_log_dir()) + " --id " + submission);
    EXPECT_NE(r.output.find("-- 1 record(s)"), std::string::npos) << r.output;
}

TEST(ProviderLegalLog, KilledBetweenLogSyncAndCommitLeavesNoOutputWithoutItsRecord) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    net.submit("mario", {anna}, client_message(mario, anna, "", "Fattura 2", "x"));
    std::set<std::string> killed;  // node/stage
    std::atomic<bool> stop{false};
    for (int round = 0; round < 50; ++round) {
        size_t moved = 0;
        for (Node* n : {&net.alpha, &net.beta}) {
            for (auto& r : n->runners) {
                std::string key = n->name + "/" + r->stage();
                if (queued(*n, r->stage()) > 0 && !killed.contains(key)) {
                    // Killed before its log step: if anything were committed before its record
                    // were durable, it would show here or, moved on by recovery without a
                    // re-run, after the next drain.
                    ASSERT_TRUE(drain_killed_at(*n, *r, LogPoint::before_append)) << key;
                    expect_every_output_logged(*n, "after killing " + key + " before its log");
                    ASSERT_TRUE(r->recover().has_value());
                    // Killed with its records durable and nothing committed: the re-run logs
                    // them again.
                    ASSERT_TRUE(drain_killed_at(*n, *r, LogPoint::after_sync)) << key;
                    killed.insert(key);
                    expect_every_output_logged(*n, "after killing " + key + " after its log");
                }
                // The next process: recovery, then the batch again, logged again.
                auto w = open_log(n->legal_log_dir(), n->name, r->stage());
                ASSERT_TRUE(w.has_value()) << w.error().message;
                r->set_legal_log(std::move(*w));
                ASSERT_TRUE(r->recover().has_value());
                auto count = r->drain(stop);
                ASSERT_TRUE(count.has_value()) << count.error().message;
                moved += *count;
                r->set_legal_log(nullptr);
                expect_every_output_logged(*n, "after running " + key);
            }
        }
        for (Node* n : {&net.alpha, &net.beta}) moved += net.relay(*n, {});
        if (moved == 0) break;
    }
    net.expect_clean();
    // Every stage that had work was killed twice: before its log step and after its sync.
    // (alpha's receipt stage has none: the receipts alpha delivers end at its deliver stage.)
    EXPECT_EQ(killed, (std::set<std::string>{"alpha/classify", "alpha/wrap", "alpha/verify",
                                             "alpha/deliver", "alpha/outbound", "beta/classify",
                                             "beta/verify", "beta/deliver", "beta/receipt",
                                             "beta/outbound"}));
    // At least once: every event is there, the killed batches' ones again (and what a killed
    // deliver or outbound did twice, the mailbox write or the send, is logged as often).
    auto alpha = stage_events(records_of(net.alpha)), beta = stage_events(records_of(net.beta));
    EXPECT_EQ(distinct(alpha), distinct(kAlphaEvents));
    EXPECT_EQ(distinct(beta), distinct(kBetaEvents));
    EXPECT_GT(alpha.size(), kAlphaEvents.size());
    EXPECT_GT(beta.size(), kBetaEvents.size());
    // The killed writers' files were continued: every chain holds.
    for (const Node* n : {&net.alpha, &net.beta}) {
        legallog::VerifyOptions o;
        o.directory = n->legal_log_dir();
        auto report = legallog::verify(o);
        ASSERT_TRUE(report.has_value());
        EXPECT_TRUE(report->ok()) << report->problems.front().file << ":"
                                  << report->problems.front().line << ": "
                                  << report->problems.front().message;
    }
}

TEST(ProviderLegalLog, AFailedLogWriteHoldsTheBatchBackAndAFailedStageLogsNothing) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    const std::string id =
        net.submit("mario", {anna}, client_message(mario, anna, "", "Fattura 3", "x"));
    auto& classify = *net.alpha.runners.front();
    ASSERT_EQ(classify.stage(), "classify");
    auto w = open_log(net.alpha.legal_log_dir(), "alpha", "classify");
    ASSERT_TRUE(w.has_value());
    classify.set_legal_log(std::move(*w));
    std::atomic<bool> stop{false};

    // The log's write fails: nothing moves on, the submission is back in the queue.
    ASSERT_TRUE(durable::set_faults("write=EIO@1x1").has_value());
    auto failed = classify.drain(stop);
    durable::clear_faults();
    EXPECT_FALSE(failed.has_value());
    EXPECT_TRUE(fs::exists(net.alpha.spool.queue_dir("classify") / id));
    EXPECT_EQ(queued(net.alpha, "wrap"), 0u);
    EXPECT_TRUE(records_of(net.alpha).empty());

    // Once the log works, the batch goes through with its record, logged once.
    auto done = classify.drain(stop);
    ASSERT_TRUE(done.has_value()) << done.error().message;
    EXPECT_EQ(*done, 1u);
    EXPECT_TRUE(fs::exists(net.alpha.spool.queue_dir("wrap") / id));
    auto records = records_of(net.alpha);
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].event, Event::ricezione);
    EXPECT_TRUE(related_has(records[0], id));

    // A stage that fails (here wrap, on a submission without any sender) logs nothing.
    auto& wrap = *net.alpha.runners[1];
    ASSERT_EQ(wrap.stage(), "wrap");
    auto ww = open_log(net.alpha.legal_log_dir(), "alpha", "wrap");
    ASSERT_TRUE(ww.has_value());
    wrap.set_legal_log(std::move(*ww));
    const std::string bad = net.enqueue(net.alpha, "", {anna}, "mario", "no headers at all\r\n");
    ASSERT_TRUE(durable::rename_file(net.alpha.spool.queue_dir("classify") / bad,
                                     net.alpha.spool.queue_dir("wrap") / bad)
                    .has_value());
    ASSERT_TRUE(fs::remove(net.alpha.spool.queue_dir("wrap") / id));
    auto none = wrap.drain(stop);
    ASSERT_TRUE(none.has_value()) << none.error().message;
    EXPECT_EQ(records_of(net.alpha).size(), 1u);
    auto quarantined = net.leftovers(net.alpha, spool::Area::quarantine);
    EXPECT_NE(std::find(quarantined.begin(), quarantined.end(), "wrap/" + bad), quarantined.end());
}

// classify reads the ricezione facts from the header block alone, whatever its line ends: the
// Subject decoded as GMime decodes it, the client's Message-ID, nothing from the body.
TEST(ProviderLegalLog, RicezioneComesFromTheHeaderBlockAlone) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    const std::string submission = "From: " + mario + "\nTo: " + anna +
                                   "\nSubject: =?UTF-8?Q?Fattura_n=C2=B0_7?=\n"
                                   "Message-ID: <lf.only@client.test>\n"
                                   "MIME-Version: 1.0\nContent-Type: text/plain\n\n"
                                   "Subject: not a header\nMessage-ID: <body@client.test>\n";
    const std::string id = net.submit("mario", {anna}, submission);
    auto& classify = *net.alpha.runners.front();
    ASSERT_EQ(classify.stage(), "classify");
    auto w = open_log(net.alpha.legal_log_dir(), "alpha", "classify");
    ASSERT_TRUE(w.has_value());
    classify.set_legal_log(std::move(*w));
    std::atomic<bool> stop{false};
    auto done = classify.drain(stop);
    ASSERT_TRUE(done.has_value()) << done.error().message;
    auto records = records_of(net.alpha);
    ASSERT_EQ(records.size(), 1u);
    EXPECT_EQ(records[0].event, Event::ricezione);
    EXPECT_EQ(records[0].subject, "Fattura n\u00b0 7");
    EXPECT_EQ(records[0].message_id, "<lf.only@client.test>");
    EXPECT_TRUE(related_has(records[0], id));
}

// `pecq log expire` (cron, until the scheduler does it): closed files past the retention go, with
// their seals; younger closed files and open ones stay.
TEST(ProviderLegalLog, PecqLogExpireRemovesOnlyClosedFilesPastRetention) {
    TempDir dir("legallog-expire");
    const int64_t now = legallog::system_now_us();
    const int64_t old = now - 31LL * 31 * 86'400'000'000LL;  // 31 months of 31 days ago
    auto write = [&](const std::string& stage, int64_t at, bool close) {
        legallog::WriterOptions o;
        o.directory = dir.path();
        o.node = "n1";
        o.stage = stage;
        o.clock = [at] { return at; };
        auto w = legallog::Writer::open(std::move(o));
        ASSERT_TRUE(w.has_value()) << w.error().message;
        Record r;
        r.time_us = at;
        r.event = Event::consegna;
        r.identificativo = stage + "@pec.alpha.test";
        ASSERT_TRUE((*w)->append(r).has_value());
        ASSERT_TRUE((*w)->sync().has_value());
        if (close) {
            ASSERT_TRUE((*w)->close().has_value());
        }
    };
    write("wrap", old, true);      // closed 31 months ago: expired
    write("verify", now, true);    // closed today: kept
    write("deliver", old, false);  // never closed: kept whatever its age
    auto before = legallog::list_files(dir.path());
    ASSERT_TRUE(before.has_value());
    ASSERT_EQ(before->size(), 3u);
    fs::path expired;
    for (const auto& f : *before)
        if (f.filename().string().find(".wrap.") != std::string::npos) expired = f;
    ASSERT_FALSE(expired.empty());
    write_file(fs::path(expired.string() + ".seal"), "seal\n");

    auto r = run(kPecq + " log expire --dir " + quote(dir.path()) + " --retention 30months");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("removed: " + expired.string()), std::string::npos) << r.output;
    EXPECT_FALSE(fs::exists(expired));
    EXPECT_FALSE(fs::exists(expired.string() + ".seal"));
    auto after = legallog::list_files(dir.path());
    ASSERT_TRUE(after.has_value());
    EXPECT_EQ(after->size(), 2u);
    r = run(kPecq + " log --dir " + quote(dir.path()));
    EXPECT_NE(r.output.find("-- 2 record(s)"), std::string::npos) << r.output;
}

// The runner without a provider: any stage function's records reach the stage's stream, and
// rotate_legal_log() (run()'s timer) closes the file once its day is over, not before.
TEST(ProviderLegalLog, RunnerRotatesTheStageLogWhenItsDayIsOver) {
    TempDir dir("legallog-rotate");
    auto spool = spool::Spool::open(dir.path() / "spool", true);
    ASSERT_TRUE(spool.has_value());
    std::atomic<int64_t> clock{1'795'348'800'000'000LL};  // 22/11/2026 13:00 in Rome
    legallog::WriterOptions o;
    o.directory = dir.path() / "legallog";
    o.node = "n1";
    o.stage = "classify";
    o.clock = [&clock] { return clock.load(); };
    auto w = legallog::Writer::open(std::move(o));
    ASSERT_TRUE(w.has_value()) << w.error().message;
    runner::StageFunction fn =
        [&clock](const runner::StageInput& in) -> Result<runner::StageResult> {
        runner::StageResult res;
        res.outputs.push_back({"wrap", in.env, in.body_source(), true, 0});
        Record r;
        r.time_us = clock.load();
        r.event = Event::ricezione;
        r.identificativo = in.env.id + "@pec.alpha.test";
        r.related = {in.env.id};
        res.records.push_back(std::move(r));
        return res;
    };
    runner::StageRunner r(*spool, "classify", fn, runner::RunnerOptions{});
    r.set_legal_log(std::move(*w));
    spool::Envelope env;
    env.arrival_us = spool::now_us();
    env.id = spool::new_queue_id(env.arrival_us);
    env.sender = "a@pec.alpha.test";
    env.recipients = {"b@pec.beta.test"};
    ASSERT_TRUE(spool::write_queue_file(spool->queue_dir("classify") / env.id, env,
                                        spool::BodySource::from_bytes("Subject: x\r\n\r\nx\r\n"))
                    .has_value());
    std::atomic<bool> stop{false};
    auto n = r.drain(stop);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 1u);
    EXPECT_TRUE(fs::exists(spool->queue_dir("wrap") / env.id));
    const fs::path file = r.legal_log()->current_file();
    ASSERT_FALSE(file.empty());

    clock += 10LL * 3'600'000'000LL;  // 23:00 the same day
    ASSERT_TRUE(r.rotate_legal_log().has_value());
    EXPECT_FALSE(legallog::file_state(file)->closed);
    clock += 2LL * 3'600'000'000LL;  // 01:00 the next day
    ASSERT_TRUE(r.rotate_legal_log().has_value());
    auto state = legallog::file_state(file);
    ASSERT_TRUE(state.has_value());
    EXPECT_TRUE(state->closed);
    EXPECT_TRUE(read_file(file).ends_with("\tday\n"));
    legallog::Query by_queue_id;
    by_queue_id.id = env.id;
    auto found = legallog::search(dir.path() / "legallog", by_queue_id);
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(found->size(), 1u);
}
