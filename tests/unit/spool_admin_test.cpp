// Spool tree and administration (what pecq does): listing, qshape summary, hold/release/requeue/
// delete, idleness and stale temporaries.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_admin.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using namespace pecd::spool;

namespace {

using TempDir = pecd::test::TempDir;

std::vector<std::string> names_in(const fs::path& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
        out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

void spit(const fs::path& p, std::string_view data) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

constexpr int64_t kMinute = 60'000'000;

class spoolAdminTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto s = Spool::open(dir_.path() / "spool", true);
        ASSERT_TRUE(s.has_value()) << s.error().message;
        spool_ = *s;
        now_ = now_us();
    }

    // Puts a complete queue file for a new message in area/stage; returns its envelope.
    Envelope put(Area area, std::string_view stage, const std::string& body, int64_t arrival = 0,
                 int attempts = 0) {
        Envelope env;
        env.arrival_us = arrival ? arrival : now_us();
        env.id = new_queue_id(env.arrival_us);
        env.sender = "s" + std::to_string(counter_++) + "@pec.example.it";
        env.recipients = {"r1@x.it", "r2@y.it"};
        env.attempts = attempts;
        env.next_attempt_us = attempts ? now_us() + 3600 * 1'000'000LL : 0;
        env.last_error = attempts ? "421 try later" : "";
        env.history = {{"enqueue", env.arrival_us, "pec-enqueue"}};
        auto fd = write_queue_file(spool_.area_dir(area, stage) / env.id, env,
                                   BodySource::from_bytes(body));
        EXPECT_TRUE(fd.has_value()) << (fd ? "" : fd.error().message);
        bodies_[env.id] = body;
        return env;
    }
    void quarantine_reason_file(std::string_view stage, const std::string& id,
                                const std::string& reason) {
        spit(spool_.area_dir(Area::quarantine, stage) / (id + ".reason"),
             "stage: " + std::string(stage) + "\ntime: 1\noriginal-name: " + id +
                 "\nreason: " + reason + "\n");
    }
    std::optional<std::pair<Envelope, std::string>> read(const fs::path& p) {
        auto fd = durable::open_file(p, O_RDONLY);
        if (!fd) return std::nullopt;
        auto info = read_header(fd->get(), p.string());
        if (!info) return std::nullopt;
        auto body = read_body(fd->get(), *info);
        if (!body) return std::nullopt;
        return std::make_pair(info->env, *body);
    }

    TempDir dir_;
    Spool spool_;
    int64_t now_ = 0;
    int counter_ = 0;
    std::map<std::string, std::string> bodies_;
};

ListOptions options(std::optional<Area> area, std::optional<std::string> stage,
                    bool envelopes = true) {
    ListOptions o;
    o.area = area;
    o.stage = std::move(stage);
    o.read_envelopes = envelopes;
    return o;
}

const QueueEntry* find_entry(const std::vector<QueueEntry>& entries, const std::string& id) {
    for (const auto& e : entries)
        if (e.id == id) return &e;
    return nullptr;
}

}  // namespace

// ---- the tree
// ------------------------------------------------------------------------------------

TEST(spoolTree, OpenCreatesEveryDirectoryAndRefusesMissingWithoutCreate) {
    TempDir dir;
    auto missing = Spool::open(dir.path() / "spool", false);
    ASSERT_FALSE(missing.has_value());
    EXPECT_EQ(missing.error().kind, ErrorKind::config);
    auto s = Spool::open(dir.path() / "spool", true);
    ASSERT_TRUE(s.has_value()) << s.error().message;
    EXPECT_TRUE(fs::is_directory(s->tmp_dir()));
    EXPECT_TRUE(fs::is_directory(s->outbox_dir()));
    EXPECT_TRUE(fs::is_directory(s->root() / "lock"));
    for (Area a : kAreas)
        for (auto st : kStages)
            EXPECT_TRUE(fs::is_directory(s->area_dir(a, st))) << to_string(a) << "/" << st;
    EXPECT_TRUE(Spool::open(dir.path() / "spool", false).has_value());
    // A single missing stage directory is noticed.
    fs::remove(s->area_dir(Area::hold, "receipt"));
    EXPECT_FALSE(Spool::open(dir.path() / "spool", false).has_value());
    EXPECT_TRUE(Spool::open(dir.path() / "spool", true).has_value());
    EXPECT_TRUE(fs::is_directory(s->area_dir(Area::hold, "receipt")));
}

TEST(spoolTree, AreaNamesAndDestinations) {
    for (Area a : kAreas) EXPECT_EQ(area_from_string(to_string(a)), a);
    EXPECT_FALSE(area_from_string("outbox").has_value());
    EXPECT_TRUE(is_stage("wrap"));
    EXPECT_FALSE(is_stage("outbox"));
    EXPECT_FALSE(is_stage("../wrap"));
    Spool s("/spool");
    EXPECT_EQ(s.destination_dir("outbox").value(), fs::path("/spool/outbox"));
    EXPECT_EQ(s.destination_dir("verify").value(), fs::path("/spool/queue/verify"));
    auto bad = s.destination_dir("../../etc");
    ASSERT_FALSE(bad.has_value());
    EXPECT_EQ(bad.error().kind, ErrorKind::permanent);
}

TEST_F(spoolAdminTest, FindLocatesMessagesInEveryArea) {
    std::map<std::string, std::pair<Area, std::string>> placed;
    for (Area a : kAreas)
        for (auto st : kStages) placed[put(a, st, "x").id] = {a, std::string(st)};
    for (const auto& [id, where] : placed) {
        auto loc = spool_.find(id);
        ASSERT_TRUE(loc.has_value()) << id;
        EXPECT_EQ(loc->area, where.first);
        EXPECT_EQ(loc->stage, where.second);
        EXPECT_EQ(loc->path, spool_.area_dir(where.first, where.second) / id);
    }
    EXPECT_FALSE(spool_.find(new_queue_id(now_)).has_value());
}

TEST_F(spoolAdminTest, StageLockIsExclusiveAndReleased) {
    {
        auto first = StageLock::acquire(spool_, "wrap", false);
        ASSERT_TRUE(first.has_value()) << first.error().message;
        EXPECT_TRUE(first->held());
        auto second = StageLock::acquire(spool_, "wrap", false);
        ASSERT_FALSE(second.has_value());
        EXPECT_EQ(second.error().kind, ErrorKind::conflict);
        auto other = StageLock::acquire(spool_, "verify", false);
        EXPECT_TRUE(other.has_value()) << "locks are per stage";
    }
    auto again = StageLock::acquire(spool_, "wrap", false);
    EXPECT_TRUE(again.has_value()) << "released with its holder";
}

// ---- listing
// -------------------------------------------------------------------------------------

TEST_F(spoolAdminTest, ListEntriesWithEnvelopes) {
    Envelope q1 = put(Area::queue, "classify", "body one");
    Envelope q2 = put(Area::queue, "classify", std::string(5000, 'z'));
    Envelope d = put(Area::deferred, "wrap", "deferred body", 0, 2);
    Envelope h = put(Area::hold, "verify", "held");
    Envelope qu = put(Area::quarantine, "deliver", "quarantined");
    quarantine_reason_file("deliver", qu.id, "5.7.1 signature invalid");
    std::string corrupt = new_queue_id(now_);
    spit(spool_.queue_dir("receipt") / corrupt, "definitely not PECQ1");
    // Not messages: skipped.
    spit(spool_.queue_dir("classify") / "junk", "x");
    fs::create_directories(spool_.active_dir("classify") / (q1.id + ".out"));

    auto all = list_entries(spool_, {});
    ASSERT_TRUE(all.has_value()) << all.error().message;
    EXPECT_EQ(all->size(), 6u);
    for (const Envelope* e : {&q1, &q2, &d, &h, &qu}) {
        const QueueEntry* entry = find_entry(*all, e->id);
        ASSERT_NE(entry, nullptr) << e->id;
        ASSERT_TRUE(entry->env.has_value()) << entry->problem;
        EXPECT_EQ(*entry->env, *e);
        EXPECT_EQ(entry->size, bodies_[e->id].size());
        EXPECT_EQ(entry->arrival_us, e->arrival_us);
        EXPECT_TRUE(entry->problem.empty());
    }
    EXPECT_EQ(find_entry(*all, q1.id)->area, Area::queue);
    EXPECT_EQ(find_entry(*all, q1.id)->stage, "classify");
    EXPECT_EQ(find_entry(*all, d.id)->area, Area::deferred);
    EXPECT_EQ(find_entry(*all, d.id)->env->last_error, "421 try later");
    EXPECT_EQ(find_entry(*all, h.id)->area, Area::hold);
    const QueueEntry* qe = find_entry(*all, qu.id);
    EXPECT_EQ(qe->area, Area::quarantine);
    EXPECT_EQ(qe->quarantine_reason, "5.7.1 signature invalid");
    EXPECT_TRUE(find_entry(*all, q1.id)->quarantine_reason.empty());
    const QueueEntry* ce = find_entry(*all, corrupt);
    ASSERT_NE(ce, nullptr);
    EXPECT_FALSE(ce->env.has_value());
    EXPECT_FALSE(ce->problem.empty());
    EXPECT_EQ(ce->arrival_us, arrival_from_id(corrupt).value());
    EXPECT_EQ(ce->stage, "receipt");
}

TEST_F(spoolAdminTest, ListEntriesWithoutEnvelopesAndFilters) {
    Envelope q = put(Area::queue, "classify", "a");
    Envelope d1 = put(Area::deferred, "wrap", "b", 0, 1);
    Envelope d2 = put(Area::deferred, "verify", "c", 0, 1);
    Envelope w = put(Area::queue, "wrap", "d");
    Envelope qu = put(Area::quarantine, "wrap", "e");
    quarantine_reason_file("wrap", qu.id, "broken");

    auto bare = list_entries(spool_, options(std::nullopt, std::nullopt, false));
    ASSERT_TRUE(bare.has_value());
    EXPECT_EQ(bare->size(), 5u);
    for (const auto& e : *bare) {
        EXPECT_FALSE(e.env.has_value()) << "envelopes not read";
        EXPECT_EQ(e.arrival_us, arrival_from_id(e.id).value()) << "arrival from the name alone";
        EXPECT_GT(e.size, 0u);
    }
    EXPECT_EQ(find_entry(*bare, qu.id)->quarantine_reason, "broken");

    auto ids_of = [](const Result<std::vector<QueueEntry>>& r) {
        std::vector<std::string> ids;
        for (const auto& e : *r) ids.push_back(e.id);
        std::sort(ids.begin(), ids.end());
        return ids;
    };
    auto sorted = [](std::vector<std::string> v) {
        std::sort(v.begin(), v.end());
        return v;
    };
    auto deferred = list_entries(spool_, options(Area::deferred, std::nullopt));
    ASSERT_TRUE(deferred.has_value());
    EXPECT_EQ(ids_of(deferred), sorted({d1.id, d2.id}));
    auto wrap = list_entries(spool_, options(std::nullopt, "wrap"));
    ASSERT_TRUE(wrap.has_value());
    EXPECT_EQ(ids_of(wrap), sorted({d1.id, w.id, qu.id}));
    auto deferred_wrap = list_entries(spool_, options(Area::deferred, "wrap"));
    ASSERT_TRUE(deferred_wrap.has_value());
    EXPECT_EQ(ids_of(deferred_wrap), std::vector<std::string>{d1.id});
    auto quarantine = list_entries(spool_, options(Area::quarantine, std::nullopt));
    ASSERT_TRUE(quarantine.has_value());
    ASSERT_EQ(quarantine->size(), 1u);
    EXPECT_EQ(quarantine->front().quarantine_reason, "broken");
    auto none = list_entries(spool_, options(Area::hold, std::nullopt));
    ASSERT_TRUE(none.has_value());
    EXPECT_TRUE(none->empty());
    auto q_only = list_entries(spool_, options(Area::queue, "classify"));
    EXPECT_EQ(ids_of(q_only), std::vector<std::string>{q.id});
}

// ---- summary
// -------------------------------------------------------------------------------------

TEST_F(spoolAdminTest, SummarizeCountsByAgeBucket) {
    auto labels = summary_bucket_labels();
    ASSERT_EQ(labels, (std::vector<std::string>{"5", "10", "20", "40", "80", "160", "320", "640",
                                                "1280", "1280+"}));
    // Ages chosen mid-bucket (minutes): bucket index = first label the age is below.
    const std::vector<std::pair<double, size_t>> ages = {
        {0.5, 0}, {4.5, 0}, {7.5, 1}, {15, 2},   {30, 3},   {60, 4},
        {100, 5}, {200, 6}, {500, 7}, {1000, 8}, {2000, 9}, {100000, 9}};
    for (const auto& [minutes, _] : ages)
        put(Area::queue, "classify", "x", now_ - static_cast<int64_t>(minutes * kMinute));
    put(Area::hold, "wrap", "x", now_ - 3 * kMinute);
    put(Area::hold, "wrap", "x", now_ - 3000 * kMinute);
    Envelope qu = put(Area::quarantine, "outbound", "x", now_ - 45 * kMinute);
    quarantine_reason_file("outbound", qu.id, "r");  // not a message: not counted
    Envelope a = put(Area::active, "verify", "x", now_ - 1 * kMinute);
    fs::create_directories(spool_.active_dir("verify") /
                           (a.id + ".out"));  // output set: not counted
    fs::create_directories(spool_.active_dir("verify") / (a.id + ".out.tmp"));  // neither

    auto rows = summarize(spool_, now_);
    ASSERT_TRUE(rows.has_value()) << rows.error().message;
    ASSERT_EQ(rows->size(), kAreas.size() * kStages.size());
    std::map<std::string, SummaryRow> by_name;
    for (const auto& r : *rows) {
        EXPECT_EQ(r.buckets.size(), labels.size()) << r.name;
        uint64_t sum = 0;
        for (auto c : r.buckets) sum += c;
        EXPECT_EQ(sum, r.total) << r.name;
        by_name[r.name] = r;
    }
    ASSERT_TRUE(by_name.contains("queue/classify"));
    std::vector<uint64_t> expected(labels.size(), 0);
    for (const auto& [_, bucket] : ages) expected[bucket]++;
    EXPECT_EQ(by_name["queue/classify"].buckets, expected);
    EXPECT_EQ(by_name["queue/classify"].total, ages.size());
    EXPECT_EQ(by_name["hold/wrap"].total, 2u);
    EXPECT_EQ(by_name["hold/wrap"].buckets[0], 1u);
    EXPECT_EQ(by_name["hold/wrap"].buckets[9], 1u);
    EXPECT_EQ(by_name["quarantine/outbound"].total, 1u);
    EXPECT_EQ(by_name["quarantine/outbound"].buckets[4], 1u);
    EXPECT_EQ(by_name["active/verify"].total, 1u);
    EXPECT_EQ(by_name["queue/wrap"].total, 0u);
    uint64_t grand = 0;
    for (const auto& r : *rows) grand += r.total;
    EXPECT_EQ(grand, ages.size() + 4);
}

TEST_F(spoolAdminTest, SummarizeCountsMessagesNotRunnerTemporaries) {
    // While a stage works on a message, active/<stage> also holds its deferral rewrite
    // (<id>.defer.tmp) and quarantine holds reason temporaries: one message, counted once.
    Envelope a = put(Area::active, "classify", "x", now_ - 2 * kMinute);
    spit(spool_.active_dir("classify") / (a.id + ".defer.tmp"), "rewrite in progress");
    Envelope q = put(Area::quarantine, "wrap", "x", now_ - 2 * kMinute);
    spit(spool_.area_dir(Area::quarantine, "wrap") / (q.id + ".reason.tmp.12345"), "reason: r\n");
    auto rows = summarize(spool_, now_);
    ASSERT_TRUE(rows.has_value());
    for (const auto& r : *rows) {
        if (r.name == "active/classify" || r.name == "quarantine/wrap") {
            EXPECT_EQ(r.total, 1u) << r.name;
        }
    }
    auto listed = list_entries(spool_, {});
    ASSERT_TRUE(listed.has_value());
    EXPECT_EQ(listed->size(), 2u) << "list and summary must agree";
}

// ---- hold / release / requeue / remove
// -----------------------------------------------------------

TEST_F(spoolAdminTest, HoldAndReleaseMoveBetweenQueueAndHold) {
    Envelope e = put(Area::queue, "wrap", "held body");
    ASSERT_TRUE(hold(spool_, e.id).has_value());
    EXPECT_FALSE(fs::exists(spool_.queue_dir("wrap") / e.id));
    EXPECT_TRUE(fs::exists(spool_.area_dir(Area::hold, "wrap") / e.id));
    EXPECT_TRUE(hold(spool_, e.id).has_value()) << "holding a held message is a no-op";
    ASSERT_TRUE(release(spool_, e.id).has_value());
    EXPECT_TRUE(fs::exists(spool_.queue_dir("wrap") / e.id));
    EXPECT_TRUE(names_in(spool_.area_dir(Area::hold, "wrap")).empty());
    auto again = release(spool_, e.id);
    ASSERT_FALSE(again.has_value()) << "releasing a message that is not held";
    EXPECT_EQ(again.error().kind, ErrorKind::permanent);
    auto stored = read(spool_.queue_dir("wrap") / e.id);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->first, e) << "hold/release do not rewrite the file";
    EXPECT_EQ(stored->second, "held body");

    // Deferred messages can be held too.
    Envelope d = put(Area::deferred, "verify", "d", 0, 3);
    ASSERT_TRUE(hold(spool_, d.id).has_value());
    EXPECT_TRUE(fs::exists(spool_.area_dir(Area::hold, "verify") / d.id));
    // Quarantined ones cannot: requeue or delete them.
    Envelope q = put(Area::quarantine, "verify", "q");
    auto hq = hold(spool_, q.id);
    ASSERT_FALSE(hq.has_value());
    EXPECT_TRUE(fs::exists(spool_.area_dir(Area::quarantine, "verify") / q.id));
}

TEST_F(spoolAdminTest, RequeueResetsRetryStateAndRecordsHistory) {
    for (Area from : {Area::deferred, Area::hold, Area::quarantine}) {
        SCOPED_TRACE(std::string(to_string(from)));
        std::string body = "requeued body\r\n\x01\x02" + std::string(to_string(from));
        Envelope e = put(from, "deliver", body, 0, 5);
        if (from == Area::quarantine) quarantine_reason_file("deliver", e.id, "it broke");
        int64_t before = now_us();
        auto st = requeue(spool_, e.id);
        ASSERT_TRUE(st.has_value()) << st.error().message;
        EXPECT_FALSE(fs::exists(spool_.area_dir(from, "deliver") / e.id));
        EXPECT_FALSE(fs::exists(spool_.area_dir(from, "deliver") / (e.id + ".reason")));
        auto stored = read(spool_.queue_dir("deliver") / e.id);
        ASSERT_TRUE(stored.has_value());
        const Envelope& env = stored->first;
        EXPECT_EQ(env.attempts, 0);
        EXPECT_EQ(env.next_attempt_us, 0);
        ASSERT_EQ(env.history.size(), e.history.size() + 1);
        EXPECT_EQ(env.history.back().stage, "pecq");
        EXPECT_EQ(env.history.back().note, "requeued from " + std::string(to_string(from)));
        EXPECT_GE(env.history.back().at_us, before);
        EXPECT_EQ(env.recipients, e.recipients);
        EXPECT_EQ(env.sender, e.sender);
        EXPECT_EQ(stored->second, body);
        EXPECT_TRUE(names_in(spool_.tmp_dir()).empty()) << "no leftover temporary";
        // Requeueing a queued message changes nothing.
        ASSERT_TRUE(requeue(spool_, e.id).has_value());
        auto same = read(spool_.queue_dir("deliver") / e.id);
        ASSERT_TRUE(same.has_value());
        EXPECT_EQ(same->first, env);
        ASSERT_TRUE(remove(spool_, e.id).has_value());
    }
}

TEST_F(spoolAdminTest, RequeueFoldsTrailerRecordsIntoTheRewrittenEnvelope) {
    Envelope e = put(Area::hold, "verify", "body with trailer", 0, 2);
    fs::path held = spool_.area_dir(Area::hold, "verify") / e.id;
    {
        std::ofstream out(held, std::ios::binary | std::ios::app);
        out << encode_trailer_hist({"wrap", 42, "-> verify"})
            << encode_trailer_attr("route", "pec");
    }
    ASSERT_TRUE(requeue(spool_, e.id).has_value());
    fs::path queued = spool_.queue_dir("verify") / e.id;
    auto info = read_header(queued);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->trailer_size, 0u) << "the rewrite carries everything in its envelope";
    ASSERT_EQ(info->env.history.size(), 3u);
    EXPECT_EQ(info->env.history[1].note, "-> verify");
    EXPECT_EQ(info->env.history[2].stage, "pecq");
    EXPECT_EQ(info->env.attr("route"), "pec");
    EXPECT_EQ(info->env.attempts, 0);
    auto stored = read(queued);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->second, "body with trailer");
}

TEST_F(spoolAdminTest, RequeueOfUnreadableQuarantinedFileMovesItAsIs) {
    std::string id = new_queue_id(now_);
    spit(spool_.area_dir(Area::quarantine, "wrap") / id, "garbage bytes");
    quarantine_reason_file("wrap", id, "not a queue file");
    auto st = requeue(spool_, id);
    ASSERT_TRUE(st.has_value()) << st.error().message;
    std::ifstream in(spool_.queue_dir("wrap") / id, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    EXPECT_EQ(s.str(), "garbage bytes");
    EXPECT_TRUE(names_in(spool_.area_dir(Area::quarantine, "wrap")).empty());
}

TEST_F(spoolAdminTest, RemoveDeletesFromEveryInactiveAreaWithReason) {
    for (Area from : {Area::queue, Area::deferred, Area::hold, Area::quarantine}) {
        Envelope e = put(from, "receipt", "gone");
        if (from == Area::quarantine) quarantine_reason_file("receipt", e.id, "r");
        auto st = remove(spool_, e.id);
        ASSERT_TRUE(st.has_value()) << st.error().message;
        EXPECT_TRUE(names_in(spool_.area_dir(from, "receipt")).empty()) << to_string(from);
        EXPECT_FALSE(spool_.find(e.id).has_value());
        auto twice = remove(spool_, e.id);
        ASSERT_FALSE(twice.has_value());
        EXPECT_EQ(twice.error().kind, ErrorKind::not_found);
    }
}

TEST_F(spoolAdminTest, ActiveFilesAreRefused) {
    Envelope e = put(Area::active, "wrap", "being processed");
    for (auto op : {&spool::hold, &spool::requeue, &spool::remove}) {
        auto st = op(spool_, e.id);
        ASSERT_FALSE(st.has_value());
        EXPECT_EQ(st.error().kind, ErrorKind::conflict);
        EXPECT_TRUE(fs::exists(spool_.active_dir("wrap") / e.id));
    }
    auto rel = spool::release(spool_, e.id);
    EXPECT_FALSE(rel.has_value());
    EXPECT_TRUE(fs::exists(spool_.active_dir("wrap") / e.id));
    auto stored = read(spool_.active_dir("wrap") / e.id);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->first, e) << "untouched";
}

TEST_F(spoolAdminTest, UnknownAndInvalidIds) {
    std::string unknown = new_queue_id(now_);
    for (auto op : {&spool::hold, &spool::release, &spool::requeue, &spool::remove}) {
        auto st = op(spool_, unknown);
        ASSERT_FALSE(st.has_value());
        EXPECT_EQ(st.error().kind, ErrorKind::not_found);
        for (const std::string& bad :
             std::vector<std::string>{"../x", "../../etc/passwd", "", "UPPER", unknown + "/.."}) {
            auto b = op(spool_, bad);
            ASSERT_FALSE(b.has_value()) << bad;
            EXPECT_EQ(b.error().kind, ErrorKind::permanent) << bad;
        }
    }
}

// ---- idleness and temporaries
// --------------------------------------------------------------------

TEST_F(spoolAdminTest, IsIdle) {
    EXPECT_EQ(is_idle(spool_).value(), true);
    Envelope d = put(Area::deferred, "wrap", "x", 0, 1);
    Envelope h = put(Area::hold, "wrap", "x");
    Envelope q = put(Area::quarantine, "wrap", "x");
    EXPECT_EQ(is_idle(spool_).value(), true) << "deferred, hold and quarantine do not count";
    Envelope queued = put(Area::queue, "outbound", "x");
    EXPECT_EQ(is_idle(spool_).value(), false);
    ASSERT_TRUE(remove(spool_, queued.id).has_value());
    EXPECT_EQ(is_idle(spool_).value(), true);
    Envelope active = put(Area::active, "classify", "x");
    EXPECT_EQ(is_idle(spool_).value(), false);
    fs::remove(spool_.active_dir("classify") / active.id);
    fs::create_directories(spool_.active_dir("classify") / "x.out");
    EXPECT_EQ(is_idle(spool_).value(), false) << "an output set still to deliver";
    fs::remove(spool_.active_dir("classify") / "x.out");
    spit(spool_.tmp_dir() / new_queue_id(now_), "being enqueued");
    EXPECT_EQ(is_idle(spool_).value(), false) << "an enqueue in progress";
    for (const auto& n : names_in(spool_.tmp_dir())) fs::remove(spool_.tmp_dir() / n);
    EXPECT_EQ(is_idle(spool_).value(), true);
}

TEST_F(spoolAdminTest, CleanStaleTmpKeepsLockedFiles) {
    // A temporary belongs to a live pec-enqueue while its flock is held (and, for the moment
    // between open() and flock(), while it is very new); otherwise its writer died.
    auto age = [](const fs::path& p, std::chrono::seconds by) {
        fs::last_write_time(p, fs::file_time_type::clock::now() - by);
    };
    fs::path live = spool_.tmp_dir() / new_queue_id(now_);
    fs::path dead = spool_.tmp_dir() / new_queue_id(now_);
    fs::path fresh = spool_.tmp_dir() / new_queue_id(now_);
    spit(live, "still being written");
    spit(dead, "writer died");
    spit(fresh, "writer between open and flock");
    age(live, std::chrono::seconds(600));
    age(dead, std::chrono::seconds(600));
    int fd = ::open(live.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::flock(fd, LOCK_EX), 0);
    auto removed = clean_stale_tmp(spool_);
    ASSERT_TRUE(removed.has_value()) << removed.error().message;
    EXPECT_EQ(*removed, 1u);
    EXPECT_TRUE(fs::exists(live)) << "a locked temporary belongs to a live pec-enqueue";
    EXPECT_FALSE(fs::exists(dead));
    EXPECT_TRUE(fs::exists(fresh)) << "a brand-new temporary may not be locked yet";
    ::close(fd);  // the writer dies: its lock goes with it
    age(fresh, std::chrono::seconds(600));
    removed = clean_stale_tmp(spool_);
    ASSERT_TRUE(removed.has_value());
    EXPECT_EQ(*removed, 2u);
    EXPECT_TRUE(names_in(spool_.tmp_dir()).empty());
    removed = clean_stale_tmp(spool_);
    ASSERT_TRUE(removed.has_value());
    EXPECT_EQ(*removed, 0u);
}

TEST_F(spoolAdminTest, QuarantineReasonParsing) {
    Envelope q = put(Area::quarantine, "wrap", "x");
    Location where{Area::quarantine, "wrap", q.id,
                   spool_.area_dir(Area::quarantine, "wrap") / q.id};
    EXPECT_FALSE(quarantine_reason(spool_, where).has_value()) << "no .reason file";
    quarantine_reason_file("wrap", q.id, "the reason");
    EXPECT_EQ(quarantine_reason(spool_, where), "the reason");
    spit(spool_.area_dir(Area::quarantine, "wrap") / (q.id + ".reason"), "free text only");
    EXPECT_EQ(quarantine_reason(spool_, where), "free text only");
    Location queued{Area::queue, "wrap", q.id, where.path};
    EXPECT_FALSE(quarantine_reason(spool_, queued).has_value());
}
