// The 12 h / 24 h timers (pec-rules.md §5.4, DECISIONS #5) on two providers: alpha has a
// [scheduler] section, beta none. Receipts are held back in beta's outbox with the relay filter,
// and a Scheduler with an injected clock plays the hours that pass. Every notice is read back
// from mario's mailbox with read_pec_message and verified against the test PKI.
#include "stages/provider/timeouts.hpp"

#include <gtest/gtest.h>

#include <map>

#include "stages/legallog/legal_log.hpp"
#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using pec::MessageType;

namespace {

constexpr int64_t kH = provider::kHourUs;

NodeOptions with_scheduler() {
    NodeOptions o;
    o.extra = "[scheduler]\ndirectory = tasks\nnode = alpha\n";
    return o;
}

// What the relay holds back, told apart by their SMTP envelope as an MTA would: the busta is from
// mario, the presa in carico goes to alpha's service mailbox, the avvenuta consegna comes from
// beta's service address to mario.
enum class Held { busta, presa_in_carico, consegna };

std::function<bool(const spool::Envelope&)> hold(std::vector<Held> what) {
    return [what](const spool::Envelope& env) {
        const std::string alpha_service = "posta-certificata@pec.alpha.test";
        const std::string beta_service = "posta-certificata@pec.beta.test";
        bool to_alpha_service = std::find(env.recipients.begin(), env.recipients.end(),
                                          alpha_service) != env.recipients.end();
        for (auto h : what) {
            if (h == Held::busta && env.sender == "mario@pec.alpha.test") return false;
            if (h == Held::presa_in_carico && env.sender == beta_service && to_alpha_service)
                return false;
            if (h == Held::consegna && env.sender == beta_service && !to_alpha_service)
                return false;
        }
        return true;
    };
}

class Timeouts : public ::testing::Test {
  protected:
    Timeouts() : net(with_scheduler()) {
        mario = net.alpha.address("mario");
        anna = net.beta.address("anna");
        auto store = scheduler::TaskStore::open(net.alpha.dir / "tasks", /*create=*/false);
        EXPECT_TRUE(store.has_value()) << (store ? "" : store.error().message);
        scheduler::SchedulerOptions o;
        o.node = "test";
        o.clock = [this] { return now; };
        sched = std::make_unique<scheduler::Scheduler>(std::move(*store), o);
        // As `pecd scheduler` does it: provider and spool from alpha's pecd.conf.
        auto config = Config::load(net.alpha.conf);
        EXPECT_TRUE(config.has_value());
        if (config) {
            auto registered = provider::register_timeout_ops(*sched, *config);
            EXPECT_TRUE(registered.has_value()) << (registered ? "" : registered.error().message);
        }
    }

    // mario -> `to`, run with `filter`; returns the identificativo (from the accettazione).
    std::string send(const std::vector<std::string>& to,
                     const std::function<bool(const spool::Envelope&)>& filter) {
        std::string list;
        for (const auto& r : to) list += (list.empty() ? "" : ", ") + r;
        net.submit("mario", to, client_message(mario, list, "", "Contratto", "Firmato."));
        net.run(filter);
        auto box = net.mailbox(net.alpha, mario);
        for (const auto& r : box)
            if (r.info.type == MessageType::accettazione && r.info.daticert)
                return r.info.daticert->identificativo;
        ADD_FAILURE() << "no accettazione\n" << net.describe();
        return "";
    }

    std::optional<scheduler::Task> task(const std::string& key) {
        auto found = sched->store().find(key);
        if (!found) return std::nullopt;
        return found->task;
    }

    // The dispatch time, from the 24 h task (due = dispatch + 24 h).
    int64_t dispatch(const std::string& id) {
        auto t = task(provider::timeout24_key(id, anna));
        EXPECT_TRUE(t.has_value());
        return t ? t->due_us - 24 * kH : 0;
    }

    size_t run_at(int64_t at) {
        now = at;
        auto pass = sched->run_due(at);
        EXPECT_TRUE(pass.has_value()) << (pass ? "" : pass.error().message);
        EXPECT_EQ(pass ? pass->failed : 0, 0u);
        return pass ? pass->succeeded : 0;
    }

    std::vector<Received> notices() {
        std::vector<Received> out;
        for (auto& r : net.mailbox(net.alpha, mario))
            if (r.info.type == MessageType::preavviso_errore_consegna) out.push_back(std::move(r));
        return out;
    }

    // What every notice must say; returns "4.4.7" (12 h) or "5.4.7" (24 h).
    std::string check_notice(const Received& r, const std::string& id,
                             const std::string& recipient) {
        EXPECT_TRUE(r.report.ok()) << pec::to_string(r.report.failure) << ": " << r.report.reason;
        EXPECT_EQ(r.report.provider_name, "Gestore Alpha");
        EXPECT_EQ(r.info.type, MessageType::preavviso_errore_consegna);
        EXPECT_EQ(r.info.to_addresses, std::vector<std::string>{mario});
        if (!r.info.daticert) {
            ADD_FAILURE() << "no daticert";
            return "";
        }
        const pec::Daticert& d = *r.info.daticert;
        EXPECT_EQ(d.tipo, pec::DaticertType::preavviso_errore_consegna);
        EXPECT_EQ(d.errore, pec::DaticertError::altro);
        EXPECT_EQ(d.consegna, recipient);
        EXPECT_EQ(d.identificativo, id);
        EXPECT_EQ(d.mittente, mario);
        EXPECT_EQ(d.oggetto, "Contratto");
        return d.errore_esteso.value_or("").substr(0, 5);
    }

    TwoProviders net;
    std::string mario, anna;
    int64_t now = 0;
    std::unique_ptr<scheduler::Scheduler> sched;
};

}  // namespace

TEST_F(Timeouts, PresaInCaricoWithin12hNoConsegnaGivesOnly24hNotice) {
    auto filter = hold({Held::consegna});
    std::string id = send({anna}, filter);
    int64_t t0 = dispatch(id);
    // The presa in carico came back: the 12 h timer is gone, the 24 h one waits.
    EXPECT_FALSE(task(provider::timeout12_key(id, anna)).has_value());
    ASSERT_TRUE(task(provider::timeout24_key(id, anna)).has_value());
    EXPECT_EQ(run_at(t0 + 12 * kH + 1), 0u);
    EXPECT_EQ(run_at(t0 + 24 * kH), 1u);
    net.run(filter);
    auto got = notices();
    ASSERT_EQ(got.size(), 1u) << net.describe();
    EXPECT_EQ(check_notice(got[0], id, anna), "5.4.7");
    EXPECT_FALSE(task(provider::timeout24_key(id, anna)).has_value());
}

TEST_F(Timeouts, NoPresaInCaricoConsegnaBetween12And24hGivesOnly12hNotice) {
    std::string id = send({anna}, hold({Held::presa_in_carico, Held::consegna}));
    int64_t t0 = dispatch(id);
    ASSERT_TRUE(task(provider::timeout12_key(id, anna)).has_value());
    EXPECT_EQ(run_at(t0 + 12 * kH), 1u);
    // Now the consegna (and only it) arrives: both timers are cancelled.
    net.run(hold({Held::presa_in_carico}));
    EXPECT_FALSE(task(provider::timeout24_key(id, anna)).has_value());
    EXPECT_EQ(run_at(t0 + 24 * kH), 0u);
    auto got = notices();
    ASSERT_EQ(got.size(), 1u) << net.describe();
    EXPECT_EQ(check_notice(got[0], id, anna), "4.4.7");
    size_t consegne = 0;
    for (const auto& r : net.mailbox(net.alpha, mario))
        consegne += r.info.type == MessageType::avvenuta_consegna;
    EXPECT_EQ(consegne, 1u);
}

TEST_F(Timeouts, NothingArrivesGivesBothNotices) {
    auto filter = hold({Held::busta});  // the busta never reaches beta
    std::string id = send({anna}, filter);
    int64_t t0 = dispatch(id);
    EXPECT_EQ(run_at(t0 + 12 * kH - 1), 0u);
    EXPECT_EQ(run_at(t0 + 12 * kH), 1u);
    net.run(filter);
    EXPECT_EQ(run_at(t0 + 24 * kH - 1), 0u);
    EXPECT_EQ(run_at(t0 + 24 * kH), 1u);
    net.run(filter);
    auto got = notices();
    ASSERT_EQ(got.size(), 2u) << net.describe();
    std::set<std::string> stages{check_notice(got[0], id, anna), check_notice(got[1], id, anna)};
    EXPECT_EQ(stages, (std::set<std::string>{"4.4.7", "5.4.7"}));
}

TEST_F(Timeouts, The24hNoticeNeverFiresBefore22h) {
    auto filter = hold({Held::busta});
    std::string id = send({anna}, filter);
    int64_t t0 = dispatch(id);
    // Only the 24 h timer is looked at here.
    ASSERT_TRUE(sched->store().cancel(provider::timeout12_key(id, anna)).has_value());
    // A manual requeue (or a skewed clock) makes the 24 h task due 1 h after dispatch.
    const std::string key = provider::timeout24_key(id, anna);
    auto early = task(key);
    ASSERT_TRUE(early.has_value());
    ASSERT_TRUE(sched->store().cancel(key).has_value());
    early->due_us = t0 + 1 * kH;
    ASSERT_TRUE(sched->store().schedule(*early, "test").has_value());
    now = t0 + 1 * kH;
    auto pass = sched->run_due(now);
    ASSERT_TRUE(pass.has_value());
    EXPECT_EQ(pass->rescheduled, 1u);
    auto moved = task(key);
    ASSERT_TRUE(moved.has_value());
    EXPECT_EQ(moved->due_us, t0 + 22 * kH);
    EXPECT_EQ(run_at(t0 + 22 * kH - 1), 0u);
    net.run(filter);
    EXPECT_TRUE(notices().empty());
    EXPECT_EQ(run_at(t0 + 22 * kH), 1u);
    net.run(filter);
    auto got = notices();
    ASSERT_EQ(got.size(), 1u) << net.describe();
    EXPECT_EQ(check_notice(got[0], id, anna), "5.4.7");
}

TEST_F(Timeouts, EsternoRecipientsGetNoTimers) {
    const std::string ext = "rossi@example.org";
    auto filter = hold({Held::busta});
    std::string id = send({anna, ext}, filter);
    EXPECT_TRUE(task(provider::timeout12_key(id, anna)).has_value());
    EXPECT_TRUE(task(provider::timeout24_key(id, anna)).has_value());
    EXPECT_FALSE(task(provider::timeout12_key(id, ext)).has_value());
    EXPECT_FALSE(task(provider::timeout24_key(id, ext)).has_value());
    size_t count = 0;
    ASSERT_TRUE(sched->store()
                    .for_each({}, [&](const scheduler::TaskInfo&) { return ++count, true; })
                    .has_value());
    EXPECT_EQ(count, 2u);
    // Beta has no [scheduler] section: its provider keeps no timers at all.
    EXPECT_EQ(net.beta.handle->current()->timeouts(), nullptr);
}

TEST_F(Timeouts, ARerunQueuesTheNoticeOnce) {
    auto filter = hold({Held::busta});
    std::string id = send({anna}, filter);
    auto t = task(provider::timeout12_key(id, anna));
    ASSERT_TRUE(t.has_value());
    now = t->due_us;
    auto handler = provider::timeout_handler(pec::TimeoutStage::first_12h, net.alpha.handle,
                                             net.alpha.spool, [this] { return now; });
    ASSERT_TRUE(handler(*t).has_value());
    ASSERT_TRUE(handler(*t).has_value());  // a crash before the task was finished: run again
    fs::path queued = net.alpha.spool.queue_dir("deliver") / provider::timeout_notice_id(*t);
    EXPECT_TRUE(fs::exists(queued));
    size_t files = 0;
    for ([[maybe_unused]] const auto& e :
         fs::directory_iterator(net.alpha.spool.queue_dir("deliver")))
        ++files;
    EXPECT_EQ(files, 1u);
    net.run(filter);
    EXPECT_EQ(notices().size(), 1u);
    // The outbound stage run again on the same busta (a crash after scheduling): the keys are
    // there already, which is success, and nothing new appears. The envelope is rebuilt as wrap
    // writes it.
    std::string busta;
    for (const auto& e : fs::directory_iterator(net.alpha.spool.outbox_dir())) {
        auto info = spool::read_header(e.path());
        ASSERT_TRUE(info.has_value());
        busta = read_file(e.path()).substr(info->body_offset(), info->body_size);
    }
    ASSERT_FALSE(busta.empty());
    auto timers = net.alpha.handle->current()->timeouts();
    ASSERT_NE(timers, nullptr);
    const int64_t t0 = t->due_us - 12 * kH;
    spool::Envelope env;
    env.id = spool::new_queue_id(t0);
    env.sender = mario;
    env.recipients = {anna};
    env.set_attr(provider::attr::id, id);
    env.set_attr(provider::attr::time, std::to_string(t0));
    env.set_attr(provider::attr::sender, mario);
    env.set_attr(provider::attr::certified, anna);
    auto count_tasks = [&] {
        size_t count = 0;
        EXPECT_TRUE(sched->store()
                        .for_each({}, [&](const scheduler::TaskInfo&) { return ++count, true; })
                        .has_value());
        return count;
    };
    auto again = timers->busta_leaving(env, busta);
    EXPECT_TRUE(again.has_value()) << (again ? "" : again.error().message);
    EXPECT_EQ(count_tasks(), 2u);
    // Once the 12 h timer has run, an outbound retry subset ("-p") does not bring it back; the
    // same busta under its first name would.
    EXPECT_EQ(run_at(t->due_us), 1u);
    EXPECT_EQ(count_tasks(), 1u);
    spool::Envelope retry = env;
    retry.id = spool::derived_queue_id(env.id, "p");
    ASSERT_TRUE(timers->busta_leaving(retry, busta).has_value());
    EXPECT_EQ(count_tasks(), 1u);
    ASSERT_TRUE(timers->busta_leaving(env, busta).has_value());
    EXPECT_EQ(count_tasks(), 2u);
}

namespace {

// The emission of each notice is a legal-log event (pec-rules.md §8), logged once by the deliver
// stage that puts the notice in the sender's mailbox, with the transaction's data.
TEST_F(Timeouts, EachNoticeIsInTheLegalLogOnce) {
    net.alpha.attach_legal_logs();
    auto filter = hold({Held::busta});
    std::string id = send({anna}, filter);
    int64_t t0 = dispatch(id);
    EXPECT_EQ(run_at(t0 + 12 * kH), 1u);
    net.run(filter);
    EXPECT_EQ(run_at(t0 + 24 * kH), 1u);
    net.run(filter);
    net.alpha.detach_legal_logs();
    ASSERT_EQ(notices().size(), 2u) << net.describe();

    auto found = legallog::search(net.alpha.legal_log_dir(), {});
    ASSERT_TRUE(found.has_value()) << found.error().message;
    std::map<legallog::Event, std::vector<legallog::Record>> by_event;
    for (auto& f : *found) by_event[f.record.event].push_back(f.record);
    for (auto event : {legallog::Event::preavviso_12h, legallog::Event::preavviso_24h}) {
        ASSERT_EQ(by_event[event].size(), 1u) << legallog::to_string(event);
        const legallog::Record& r = by_event[event][0];
        EXPECT_EQ(r.identificativo, id);
        EXPECT_EQ(r.sender, mario);
        EXPECT_EQ(r.recipients, std::vector<std::string>{anna}) << "the recipient it is about";
        EXPECT_EQ(r.subject, "Contratto");
        EXPECT_EQ(r.provider, net.alpha.handle->current()->identity().name);
        EXPECT_EQ(r.stage, "deliver");
        EXPECT_EQ(r.time_us, event == legallog::Event::preavviso_12h ? t0 + 12 * kH : t0 + 24 * kH)
            << "logged at the time the notice was made";
        ASSERT_EQ(r.related.size(), 1u);
        EXPECT_TRUE(spool::is_valid_queue_id(r.related[0]));
    }
    // Each notice's delivery to mario is logged too, beside its emission.
    size_t notice_deliveries = 0;
    for (const auto& r : by_event[legallog::Event::consegna])
        notice_deliveries += r.detail == "preavviso-errore-consegna";
    EXPECT_EQ(notice_deliveries, 2u);
}

}  // namespace
