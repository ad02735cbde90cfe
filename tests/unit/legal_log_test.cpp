// The legal log: durable hash-chained records, concurrent stage processes, tamper detection (in
// process and through `pecq log verify`), RFC 3161 seals from a real TSA process, retention.
#include "stages/legallog/legal_log.hpp"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <fstream>
#include <set>
#include <thread>

#include "spool-layout/durable.hpp"
#include "stages/legallog/seal.hpp"
#include "tests/support/crypto_support.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/process.hpp"

namespace {

using namespace pecd;
using namespace pecd::legallog;
using pecd::test::quote;
using pecd::test::TempDir;

const std::string kPecq = std::string(PECD_BINARY_DIR) + "/bin/pecq";
const std::string kTestTsa = std::string(PECD_BINARY_DIR) + "/tests/test_tsa";

// 2026-11-22 12:00:00 UTC: 13:00 legal time in Rome (CET, +0100).
constexpr int64_t kT0 = 1'795'348'800'000'000LL;
constexpr int64_t kDay = 86'400'000'000LL;

Record make_record(int i, std::string stage = "") {
    Record r;
    r.time_us = kT0 + i;
    r.event = i % 2 ? Event::consegna : Event::accettazione;
    r.identificativo = "opec" + std::to_string(i) + ".20261122@pec.alpha.test";
    r.message_id = "<client" + std::to_string(i) + "@mua.example>";
    r.sender = "mittente@pec.alpha.test";
    r.recipients = {"dest" + std::to_string(i) + "@pec.beta.test", "altro@pec.beta.test"};
    r.subject = "prova " + std::to_string(i);
    r.related = {"acc" + std::to_string(i) + "@pec.alpha.test"};
    r.provider = "Gestore Alpha S.p.A.";
    r.stage = std::move(stage);
    return r;
}

struct FixedClock {
    int64_t now = kT0;
    Clock clock() {
        return [this] { return now; };
    }
};

std::unique_ptr<Writer> open_writer(const fs::path& dir, const std::string& stage, Clock clock,
                                    uint64_t max_size = 64ull << 20) {
    WriterOptions o;
    o.directory = dir;
    o.node = "node1";
    o.stage = stage;
    o.max_file_size = max_size;
    o.clock = std::move(clock);
    auto w = Writer::open(std::move(o));
    EXPECT_TRUE(w) << w.error().message;
    return w ? std::move(*w) : nullptr;
}

std::vector<std::string> file_lines(const fs::path& file) {
    std::ifstream in(file);
    std::vector<std::string> out;
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
}

void write_lines(const fs::path& file, const std::vector<std::string>& lines) {
    std::string data;
    for (const auto& l : lines) data += l + "\n";
    pecd::test::write_file(file, data);
}

VerifyReport must_verify(const fs::path& dir, const fs::path& ca = {}) {
    VerifyOptions o;
    o.directory = dir;
    o.ca_file = ca;
    auto r = verify(o);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : VerifyReport{};
}

// A closed file of `n` records, alone in `dir`.
fs::path closed_file(const fs::path& dir, int n) {
    FixedClock clock;
    auto w = open_writer(dir, "wrap", clock.clock());
    std::vector<Record> batch;
    for (int i = 0; i < n; ++i) batch.push_back(make_record(i));
    EXPECT_TRUE(w->append(batch));
    EXPECT_TRUE(w->sync());
    fs::path file = w->current_file();
    EXPECT_TRUE(w->close());
    return file;
}

// ---- the test TSA, a separate process on a free port -----------------------------------------

class TestTsa {
  public:
    // `flags`: test_tsa's --wrong-imprint, --chunked.
    explicit TestTsa(const fs::path& work, int port = 0, std::vector<std::string> flags = {}) {
        const auto& pki = pecd::test::test_pki();
        fs::path port_file = work / ("tsa-port-" + std::to_string(port));
        std::vector<std::string> argv{kTestTsa,
                                      "--cert",
                                      (pki / "tsa.crt").string(),
                                      "--key",
                                      (pki / "tsa.key").string(),
                                      "--chain",
                                      (pki / "ca.crt").string(),
                                      "--port-file",
                                      port_file.string(),
                                      "--port",
                                      std::to_string(port)};
        argv.insert(argv.end(), flags.begin(), flags.end());
        guard_ = pecd::testing::ProcessGuard(pecd::testing::spawn(argv));
        // Readiness, not timing: the server writes its port file once it listens.
        for (int i = 0; i < 1000 && !fs::exists(port_file); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        std::ifstream in(port_file);
        in >> port_;
    }
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/tsa"; }
    int port() const { return port_; }

  private:
    pecd::testing::ProcessGuard guard_;
    int port_ = 0;
};

SealOptions seal_options(const fs::path& dir, const std::string& url, bool with_ca = true) {
    SealOptions o;
    o.directory = dir;
    o.tsa_url = url;
    if (with_ca) o.tsa_ca = pecd::test::test_pki() / "ca.crt";
    o.timeout = std::chrono::milliseconds(5000);
    return o;
}

// ---- records --------------------------------------------------------------------------------

TEST(LegalLog, LegalTimeIsRomeTime) {
    EXPECT_EQ(italian_legal_time(kT0), "22/11/2026 13:00:00 (+0100)");
    EXPECT_EQ(italian_legal_time(1'782'900'000'000'000LL),
              "01/07/2026 12:00:00 (+0200)");                     // 10:00 UTC, CEST
    EXPECT_EQ(day_of(kT0 + 11 * 3'600'000'000LL), "2026-11-23");  // 23:00 UTC is tomorrow in Rome
}

TEST(LegalLog, AppendReadRoundTripAndSearch) {
    TempDir dir("legallog");
    FixedClock clock;
    auto w = open_writer(dir.path(), "wrap", clock.clock());
    std::vector<Record> batch{make_record(1), make_record(2), make_record(3)};
    batch[1].subject = "tab\there, 100% newline\nend, UTF-8 caffè";
    batch[1].detail = "5.1.1 - Gestore - indirizzo non valido";
    batch[2].event = Event::preavviso_24h;
    ASSERT_TRUE(w->append(batch));
    ASSERT_TRUE(w->sync());

    auto all = search(dir.path(), {});
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(all->size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
        Record want = batch[i];
        want.legal_time = italian_legal_time(want.time_us);
        want.node = "node1";
        want.stage = "wrap";
        EXPECT_EQ((*all)[i].record, want) << i;
        EXPECT_EQ((*all)[i].line, i + 2);  // line 1 is the file header
    }
    EXPECT_EQ((*all)[0].record.legal_time, "22/11/2026 13:00:00 (+0100)");
    // One line per record on disk, whatever the subject holds.
    EXPECT_EQ(file_lines(w->current_file()).size(), 4u);

    Query by_id;
    by_id.id = "acc2@pec.alpha.test";  // a related (produced) message
    EXPECT_EQ(search(dir.path(), by_id)->size(), 1u);
    by_id.id = "<client3@mua.example>";
    EXPECT_EQ(search(dir.path(), by_id)->at(0).record.event, Event::preavviso_24h);
    Query by_rcpt;
    by_rcpt.recipient = "dest1@pec.beta.test";
    EXPECT_EQ(search(dir.path(), by_rcpt)->size(), 1u);
    Query by_sender;
    by_sender.sender = "nobody@pec.alpha.test";
    EXPECT_TRUE(search(dir.path(), by_sender)->empty());
    Query range;
    range.since_us = kT0 + 2;
    range.until_us = kT0 + 2;
    ASSERT_EQ(search(dir.path(), range)->size(), 1u);
    EXPECT_EQ(search(dir.path(), range)->at(0).record.identificativo, batch[1].identificativo);

    auto report = must_verify(dir.path());
    EXPECT_TRUE(report.ok());
    EXPECT_EQ(report.records, 3u);
    EXPECT_EQ(report.open, 1u);
}

TEST(LegalLog, PecqLogSearchesAndPrintsJson) {
    TempDir dir("legallog");
    closed_file(dir.path(), 6);
    auto r = pecd::test::run(
        kPecq + " log --dir " + quote(dir.path()) +
        " --recipient dest4@pec.beta.test --json | jq -r '.[0].identificativo, length'");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output, "opec4.20261122@pec.alpha.test\n1\n");
    r = pecd::test::run(kPecq + " log --dir " + quote(dir.path()) + " --since @" +
                        std::to_string(kT0 + 2) + " --until @" + std::to_string(kT0 + 3));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("-- 2 record(s)"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("22/11/2026 13:00:00 (+0100)  accettazione"), std::string::npos)
        << r.output;
    r = pecd::test::run(kPecq + " log --dir " + quote(dir.path()) + " --since 2026-11-23");
    EXPECT_NE(r.output.find("-- 0 record(s)"), std::string::npos) << r.output;
    r = pecd::test::run(kPecq + " log --dir " + quote(dir.path()) + " --until 2026-11-22");
    EXPECT_NE(r.output.find("-- 6 record(s)"), std::string::npos) << r.output;
}

// ---- files: rotation, recovery, one writer per stream ------------------------------------------

TEST(LegalLog, RotatesDailyAndAtSizeAndChainsAcrossFiles) {
    TempDir dir("legallog");
    FixedClock clock;
    auto w = open_writer(dir.path(), "deliver", clock.clock(), 2048);
    for (int i = 0; i < 40; ++i) {
        ASSERT_TRUE(w->append(make_record(i)));
        ASSERT_TRUE(w->sync());
    }
    fs::path before_midnight = w->current_file();
    clock.now += kDay;
    ASSERT_TRUE(w->append(make_record(100)));
    ASSERT_TRUE(w->sync());
    EXPECT_NE(w->current_file(), before_midnight);
    EXPECT_TRUE(w->current_file().filename().string().starts_with("2026-11-23.node1.deliver."));
    EXPECT_TRUE(file_state(before_midnight)->closed);

    auto files = list_files(dir.path());
    ASSERT_GT(files->size(), 3u);  // the size limit split the first day
    for (size_t i = 0; i + 1 < files->size(); ++i)
        EXPECT_TRUE(file_state((*files)[i])->closed) << i;
    // Each header chains to the previous file's close line.
    auto header = file_lines((*files)[1])[0];
    EXPECT_EQ(header.substr(0, 64), sha256_hex(file_lines((*files)[0]).back()));
    EXPECT_NE(header.find((*files)[0].filename().string()), std::string::npos);

    auto report = must_verify(dir.path());
    EXPECT_TRUE(report.ok()) << report.problems[0].message;
    EXPECT_EQ(report.records, 41u);
    EXPECT_EQ(report.files, files->size());
    EXPECT_EQ(report.unsealed_closed, files->size() - 1);
}

TEST(LegalLog, ReopeningContinuesTodaysFileAndClosesYesterdays) {
    TempDir dir("legallog");
    FixedClock clock;
    auto w = open_writer(dir.path(), "wrap", clock.clock());
    ASSERT_TRUE(w->append(make_record(1)));
    ASSERT_TRUE(w->sync());
    ASSERT_TRUE(w->append(make_record(2)));  // never synced: not committed, cut on exit
    fs::path first = w->current_file();
    w.reset();
    w = open_writer(dir.path(), "wrap", clock.clock());
    ASSERT_TRUE(w->append(make_record(3)));
    ASSERT_TRUE(w->sync());
    EXPECT_EQ(w->current_file(), first);
    EXPECT_EQ(search(dir.path(), {})->size(), 2u);

    // A crash leaves a torn line; the next writer, a day later, cuts it and closes the file.
    { std::ofstream(first, std::ios::app) << "deadbeef\t4\tR\t12"; }
    w.reset();
    clock.now += kDay;
    w = open_writer(dir.path(), "wrap", clock.clock());
    ASSERT_TRUE(w->append(make_record(4)));
    ASSERT_TRUE(w->sync());
    EXPECT_NE(w->current_file(), first);
    auto lines = file_lines(first);
    EXPECT_NE(lines.back().find("\tC\t"), std::string::npos);
    EXPECT_NE(lines.back().find("recovered"), std::string::npos);
    auto report = must_verify(dir.path());
    EXPECT_TRUE(report.ok()) << report.problems[0].file << ":" << report.problems[0].line << " "
                             << report.problems[0].message;
    EXPECT_EQ(report.records, 3u);
}

// Monitoring the daily seal: with a maximum delay, a closed file still unsealed after it is a
// problem; without one, an unsealed closed file is only counted.
TEST(LegalLog, AClosedFileUnsealedPastTheMaximumDelayIsAProblem) {
    TempDir dir("legallog");
    closed_file(dir.path(), 2);
    constexpr int64_t kHour = 3'600'000'000LL;
    auto check = [&](std::optional<int64_t> max_hours, int64_t now_us) {
        VerifyOptions o;
        o.directory = dir.path();
        if (max_hours) o.max_seal_delay = std::chrono::hours(*max_hours);
        o.now_us = now_us;
        auto r = verify(o);
        EXPECT_TRUE(r) << r.error().message;
        return r ? *r : VerifyReport{};
    };
    auto early = check(48, kT0 + 47 * kHour);
    EXPECT_TRUE(early.ok());
    EXPECT_EQ(early.unsealed_closed, 1u);
    EXPECT_EQ(early.seal_overdue, 0u);
    auto late = check(48, kT0 + 49 * kHour);
    EXPECT_FALSE(late.ok());
    EXPECT_EQ(late.seal_overdue, 1u);
    ASSERT_EQ(late.problems.size(), 1u);
    EXPECT_NE(late.problems[0].message.find("49 h ago and still not sealed"), std::string::npos)
        << late.problems[0].message;
    EXPECT_TRUE(check(std::nullopt, kT0 + 1000 * kHour).ok()) << "not asked: only counted";
}

TEST(LegalLog, ClockSteppedBackKeepsFilesInOrder) {
    TempDir dir("legallog");
    FixedClock clock;
    auto w = open_writer(dir.path(), "wrap", clock.clock());
    ASSERT_TRUE(w->append(make_record(1)) && w->sync() && w->close());
    clock.now -= 3'600'000'000LL;  // NTP steps the clock back an hour
    ASSERT_TRUE(w->append(make_record(2)) && w->sync());
    auto files = *list_files(dir.path());
    ASSERT_EQ(files.size(), 2u);
    EXPECT_EQ(files.back(), w->current_file());
    EXPECT_TRUE(must_verify(dir.path()).ok());
}

TEST(LegalLog, OneWriterPerStream) {
    TempDir dir("legallog");
    auto w = open_writer(dir.path(), "wrap", {});
    WriterOptions o;
    o.directory = dir.path();
    o.node = "node1";
    o.stage = "wrap";
    auto second = Writer::open(o);
    ASSERT_FALSE(second);
    EXPECT_EQ(second.error().kind, ErrorKind::conflict);
    o.stage = "Bad/Name";
    EXPECT_EQ(Writer::open(o).error().kind, ErrorKind::config);
}

TEST(LegalLog, FailedSyncCutsTheBatchAndTheChainStaysValid) {
    TempDir dir("legallog");
    auto w = open_writer(dir.path(), "wrap", {});
    ASSERT_TRUE(w->append(make_record(1)));
    ASSERT_TRUE(w->sync());  // fsyncs 1-3: header, directory, batch
    ASSERT_TRUE(durable::set_faults("fsync=EIO@1x1"));
    ASSERT_TRUE(w->append(make_record(2)));
    auto st = w->sync();
    durable::clear_faults();
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().kind, ErrorKind::transient);
    ASSERT_TRUE(w->append(make_record(3)));  // the runner retries the batch
    ASSERT_TRUE(w->sync());
    auto all = search(dir.path(), {});
    ASSERT_EQ(all->size(), 2u);
    EXPECT_EQ(all->at(1).record.identificativo, make_record(3).identificativo);
    EXPECT_TRUE(must_verify(dir.path()).ok());
}

TEST(LegalLog, FailedWriteLeavesNothingBehind) {
    TempDir dir("legallog");
    auto w = open_writer(dir.path(), "wrap", {});
    ASSERT_TRUE(w->append(make_record(1)) && w->sync());
    auto size = fs::file_size(w->current_file());
    ASSERT_TRUE(durable::set_faults("write=ENOSPC@1x1"));
    auto st = w->append(make_record(2));
    durable::clear_faults();
    ASSERT_FALSE(st);
    EXPECT_EQ(fs::file_size(w->current_file()), size);
    ASSERT_TRUE(w->append(make_record(3)) && w->sync());
    EXPECT_EQ(search(dir.path(), {})->size(), 2u);
    EXPECT_TRUE(must_verify(dir.path()).ok());
}

TEST(LegalLog, SettingsFromPecdConf) {
    auto config = Config::parse(
        "[legallog]\ndirectory = /srv/legallog\ntsa_url = http://tsa.example:318/ts\n"
        "node = n2\nretention = 36months\nmax_file_size = 1M\n");
    ASSERT_TRUE(config);
    auto s = settings(*config);
    ASSERT_TRUE(s) << s.error().message;
    EXPECT_EQ(s->directory, "/srv/legallog");
    EXPECT_EQ(s->tsa_url, "http://tsa.example:318/ts");
    EXPECT_EQ(s->node, "n2");
    EXPECT_EQ(s->retention.months, 36);
    EXPECT_EQ(s->max_file_size, 1024u * 1024u);
    auto defaults = settings(*Config::parse(""));
    ASSERT_TRUE(defaults);
    EXPECT_EQ(defaults->retention.months, 30);
    auto bad = settings(*Config::parse("[legallog]\n\nretention = forever\n", "pecd.conf"));
    ASSERT_FALSE(bad);
    EXPECT_EQ(bad.error().kind, ErrorKind::config);
    EXPECT_NE(bad.error().message.find("pecd.conf:3"), std::string::npos) << bad.error().message;
    // A TSA URL check-config refuses (provider_pecd_test) does not stop the log from opening.
    auto typo = settings(*Config::parse("[legallog]\ntsa_url = http://tsa.example:31x8/\n"));
    ASSERT_TRUE(typo) << typo.error().message;
    EXPECT_EQ(typo->tsa_url, "http://tsa.example:31x8/");
}

TEST(LegalLog, PecqReadsTheDirectoryFromTheConfig) {
    TempDir dir("legallog");
    closed_file(dir.path() / "log", 2);
    pecd::test::write_file(dir.path() / "pecd.conf", "[legallog]\ndirectory = log\n");
    auto r = pecd::test::run(kPecq + " -c " + quote(dir.path() / "pecd.conf") +
                             " log --sender mittente@pec.alpha.test");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("-- 2 record(s)"), std::string::npos) << r.output;
    r = pecd::test::run(kPecq + " -c " + quote(dir.path() / "pecd.conf") +
                        " log verify --json | jq -r .ok,.records");
    EXPECT_EQ(r.output, "true\n2\n");
}

TEST(LegalLog, ConcurrentStageProcessesKeepEveryRecordAndEveryChain) {
    TempDir dir("legallog");
    constexpr int kProcs = 4, kBatches = 40, kBatch = 16;
    std::vector<pid_t> pids;
    for (int p = 0; p < kProcs; ++p) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            // A stage process: its own stream, batches with one fdatasync each, small files.
            WriterOptions o;
            o.directory = dir.path();
            o.node = "node1";
            o.stage = "stage" + std::to_string(p);
            o.max_file_size = 8192;
            auto w = Writer::open(o);
            if (!w) ::_exit(2);
            for (int b = 0; b < kBatches; ++b) {
                std::vector<Record> batch;
                for (int i = 0; i < kBatch; ++i)
                    batch.push_back(make_record(p * 100000 + b * kBatch + i));
                if (!(*w)->append(batch) || !(*w)->sync()) ::_exit(3);
            }
            ::_exit(0);
        }
        pids.push_back(pid);
    }
    for (pid_t pid : pids) EXPECT_EQ(pecd::testing::wait_exit(pid), 0);
    auto all = search(dir.path(), {});
    ASSERT_TRUE(all);
    ASSERT_EQ(all->size(), size_t(kProcs * kBatches * kBatch));
    std::set<std::string> ids;
    for (const auto& f : *all) ids.insert(f.record.stage + "/" + f.record.identificativo);
    EXPECT_EQ(ids.size(), all->size());
    auto report = must_verify(dir.path());
    EXPECT_TRUE(report.ok()) << report.problems[0].message;
    EXPECT_EQ(report.records, all->size());
    EXPECT_EQ(report.open, size_t(kProcs));
    EXPECT_GT(report.files, size_t(kProcs));  // rotation at the size limit happened under load
    auto r = pecd::test::run(kPecq + " log verify --dir " + quote(dir.path()));
    EXPECT_EQ(r.status, 0) << r.output;
}

// ---- tampering --------------------------------------------------------------------------------

struct Tamper {
    const char* what;
    std::function<void(std::vector<std::string>&)> change;
    size_t bad_line;
};

TEST(LegalLog, EditedDeletedAndReorderedRecordsAreNamed) {
    for (const Tamper& t : {
             Tamper{"edited", [](auto& l) { l[4].replace(l[4].find("prova 3"), 7, "prova X"); }, 5},
             Tamper{"deleted", [](auto& l) { l.erase(l.begin() + 4); }, 5},
             Tamper{"reordered", [](auto& l) { std::swap(l[4], l[5]); }, 5},
             Tamper{"last record deleted", [](auto& l) { l.erase(l.end() - 2); }, 11},
         }) {
        SCOPED_TRACE(t.what);
        TempDir dir("legallog");
        fs::path file = closed_file(dir.path(), 10);  // header, 10 records (lines 2-11), close line
        // A second file after it, so that the chain also runs across files.
        {
            FixedClock clock;
            clock.now += kDay;
            auto w = open_writer(dir.path(), "wrap", clock.clock());
            ASSERT_TRUE(w->append(make_record(50)));
            ASSERT_TRUE(w->sync());
        }
        ASSERT_TRUE(must_verify(dir.path()).ok());
        auto lines = file_lines(file);
        ASSERT_EQ(lines.size(), 12u);
        t.change(lines);
        write_lines(file, lines);

        auto report = must_verify(dir.path());
        ASSERT_FALSE(report.ok());
        EXPECT_EQ(report.problems[0].file, file);
        EXPECT_EQ(report.problems[0].line, t.bad_line) << report.problems[0].message;

        auto r = pecd::test::run(kPecq + " log verify --dir " + quote(dir.path()));
        EXPECT_EQ(r.status, 1) << r.output;
        EXPECT_TRUE(r.output.starts_with(file.string() + ":" + std::to_string(t.bad_line) + ": "))
            << r.output;
    }
}

TEST(LegalLog, MissingFileInTheMiddleIsNamed) {
    TempDir dir("legallog");
    FixedClock clock;
    auto w = open_writer(dir.path(), "wrap", clock.clock(), 1024);
    for (int i = 0; i < 30; ++i) ASSERT_TRUE(w->append(make_record(i)) && w->sync());
    auto files = *list_files(dir.path());
    ASSERT_GE(files.size(), 3u);
    fs::remove(files[1]);
    auto report = must_verify(dir.path());
    ASSERT_FALSE(report.ok());
    EXPECT_EQ(report.problems[0].file, files[2]);
    EXPECT_NE(report.problems[0].message.find(files[1].filename().string()), std::string::npos);
}

// ---- seals with the test TSA --------------------------------------------------------------------

TEST(LegalLog, SealWithTestTsaVerifiesWithOpensslTs) {
    TempDir dir("legallog");
    TestTsa tsa(dir.path());
    ASSERT_GT(tsa.port(), 0);
    fs::path logdir = dir.path() / "log";
    fs::path file = closed_file(logdir, 5);
    auto report = seal_pending(seal_options(logdir, tsa.url()));
    ASSERT_TRUE(report) << report.error().message;
    ASSERT_EQ(report->sealed.size(), 1u) << report->last_error;
    EXPECT_TRUE(report->pending.empty());

    const auto& pki = pecd::test::test_pki();
    auto r = pecd::test::run("openssl ts -verify -data " + quote(file) + " -in " +
                             quote(file.string() + ".tsr") + " -CAfile " + quote(pki / "ca.crt") +
                             " -untrusted " + quote(pki / "tsa.crt"));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("Verification: OK"), std::string::npos) << r.output;

    auto v = must_verify(logdir, pki / "ca.crt");
    EXPECT_TRUE(v.ok());
    EXPECT_EQ(v.sealed, 1u);
    r = pecd::test::run(kPecq + " log verify --dir " + quote(logdir) + " --ca " +
                        quote(pki / "ca.crt"));
    EXPECT_EQ(r.status, 0) << r.output;
    // A trust anchor that did not issue the TSA certificate fails the signature check.
    v = must_verify(logdir, pki / "foreign-ca.crt");
    ASSERT_FALSE(v.ok());
    EXPECT_NE(v.problems[0].message.find("signature"), std::string::npos) << v.problems[0].message;
    // Sealing again does nothing: the file is sealed.
    EXPECT_TRUE(seal_pending(seal_options(logdir, tsa.url()))->sealed.empty());
}

// A TSA behind a servlet container answers in the chunked transfer coding (HTTP/1.1 clients must
// read it): the seal is the same.
TEST(LegalLog, SealWithATsaThatRepliesInChunks) {
    TempDir dir("legallog");
    TestTsa tsa(dir.path(), 0, {"--chunked"});
    ASSERT_GT(tsa.port(), 0);
    fs::path logdir = dir.path() / "log";
    fs::path file = closed_file(logdir, 4);
    auto report = seal_pending(seal_options(logdir, tsa.url()));
    ASSERT_TRUE(report) << report.error().message;
    ASSERT_EQ(report->sealed.size(), 1u) << report->last_error;
    auto v = must_verify(logdir, pecd::test::test_pki() / "ca.crt");
    EXPECT_TRUE(v.ok());
    EXPECT_EQ(v.sealed, 1u);
}

TEST(LegalLog, FileModifiedAfterSealingOrSwappedTokenIsCaught) {
    TempDir dir("legallog");
    TestTsa tsa(dir.path());
    const auto& pki = pecd::test::test_pki();

    // Two sealed files in two streams; their tokens swapped.
    fs::path logdir = dir.path() / "swap";
    fs::path a = closed_file(logdir, 3);
    {
        auto w = open_writer(logdir, "verify", {});
        ASSERT_TRUE(w->append(make_record(9)) && w->sync() && w->close());
    }
    ASSERT_EQ(seal_pending(seal_options(logdir, tsa.url()))->sealed.size(), 2u);
    auto files = *list_files(logdir);
    fs::path b = files[0] == a ? files[1] : files[0];
    fs::rename(a.string() + ".tsr", dir.path() / "t");
    fs::rename(b.string() + ".tsr", a.string() + ".tsr");
    fs::rename(dir.path() / "t", b.string() + ".tsr");
    auto v = must_verify(logdir, pki / "ca.crt");
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.problems[0].line, 0u);
    EXPECT_NE(v.problems[0].message.find("time-stamp does not match"), std::string::npos)
        << v.problems[0].message;

    // The close line rewritten after sealing (the chain cannot see it: nothing follows it), even
    // with a .seal recomputed to match: only the time stamp catches it.
    fs::path logdir2 = dir.path() / "edit";
    fs::path c = closed_file(logdir2, 3);
    ASSERT_EQ(seal_pending(seal_options(logdir2, tsa.url()))->sealed.size(), 1u);
    auto lines = file_lines(c);
    lines.back().replace(lines.back().rfind("shutdown"), 8, "shutdowX");
    write_lines(c, lines);
    v = must_verify(logdir2);
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.problems[0].file, c);
    EXPECT_NE(v.problems[0].message.find("seal does not match"), std::string::npos)
        << v.problems[0].message;
    std::string data = pecd::test::read_file(c);
    pecd::test::write_file(c.string() + ".seal", "file " + c.filename().string() + "\nfinal " +
                                                     sha256_hex(lines.back()) + "\nsha256 " +
                                                     sha256_hex(data) + "\n");
    v = must_verify(logdir2, pki / "ca.crt");
    ASSERT_FALSE(v.ok());
    EXPECT_EQ(v.problems[0].file, c);
    EXPECT_NE(v.problems[0].message.find("time-stamp does not match"), std::string::npos)
        << v.problems[0].message;
    auto r = pecd::test::run(kPecq + " log verify --dir " + quote(logdir2));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_TRUE(r.output.starts_with(c.string() + ":0: time-stamp does not match")) << r.output;
}

TEST(LegalLog, TokenForOtherDataIsRefusedOnReceipt) {
    TempDir dir("legallog");
    TestTsa liar(dir.path(), 0, {"--wrong-imprint"});
    fs::path logdir = dir.path() / "log";
    fs::path file = closed_file(logdir, 2);
    auto report = seal_pending(seal_options(logdir, liar.url(), /*with_ca=*/false));
    ASSERT_TRUE(report);
    EXPECT_TRUE(report->sealed.empty());
    ASSERT_EQ(report->pending.size(), 1u);
    EXPECT_NE(report->last_error.find("rejected"), std::string::npos) << report->last_error;
    EXPECT_FALSE(fs::exists(file.string() + ".tsr"));
}

TEST(LegalLog, TsaDownLeavesSealPendingUntilItComesBack) {
    TempDir dir("legallog");
    fs::path logdir = dir.path() / "log";
    FixedClock clock;
    {
        auto w = open_writer(logdir, "wrap", clock.clock());
        ASSERT_TRUE(w->append(make_record(1)) && w->sync());
    }  // the writer is gone with its file open: the sealer closes it once the day is over
    auto free = pecd::test::free_loopback_port();
    ASSERT_TRUE(free) << free.error().message;
    int port = *free;
    std::string url = "http://127.0.0.1:" + std::to_string(port) + "/tsa";
    auto opts = seal_options(logdir, url);
    clock.now += kDay;
    opts.clock = clock.clock();
    auto report = seal_pending(opts);
    ASSERT_TRUE(report) << report.error().message;
    EXPECT_EQ(report->closed.size(), 1u);
    EXPECT_TRUE(report->sealed.empty());
    ASSERT_EQ(report->pending.size(), 1u);
    EXPECT_FALSE(report->last_error.empty());
    // Logging goes on meanwhile.
    {
        auto w = open_writer(logdir, "wrap", clock.clock());
        ASSERT_TRUE(w->append(make_record(2)) && w->sync());
    }
    auto r = pecd::test::run(kPecq + " log seal --dir " + quote(logdir) + " --tsa-url " + url);
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("pending: "), std::string::npos) << r.output;

    TestTsa tsa(dir.path(), port);
    ASSERT_EQ(tsa.port(), port);
    r = pecd::test::run(kPecq + " log seal --dir " + quote(logdir) + " --tsa-url " + url +
                        " --ca " + quote(pecd::test::test_pki() / "ca.crt"));
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("sealed:  " + report->pending[0].string()), std::string::npos)
        << r.output;
    auto v = must_verify(logdir, pecd::test::test_pki() / "ca.crt");
    EXPECT_TRUE(v.ok());
    EXPECT_EQ(v.sealed, 1u);
    EXPECT_EQ(v.open, 1u);
}

// ---- retention ----------------------------------------------------------------------------------

TEST(LegalLog, RetentionIsCalendarMonths) {
    EXPECT_EQ(parse_retention("30months")->months, 30);
    EXPECT_EQ(parse_retention("6mo")->months, 6);
    EXPECT_EQ(parse_retention("900d")->months, 0);
    EXPECT_FALSE(parse_retention("soon"));
    Retention six{6, {}};
    int64_t aug31 = *parse_time_arg("2024-08-31T10:00", false);
    EXPECT_EQ(add_retention(aug31, six), *parse_time_arg("2025-02-28T10:00", false));
    Retention thirty;
    EXPECT_EQ(add_retention(kT0, thirty), *parse_time_arg("2029-05-22T12:00", false));
}

TEST(LegalLog, RetentionRemovesOnlyClosedFilesOlderThanThePeriod) {
    TempDir dir("legallog");
    TestTsa tsa(dir.path());
    fs::path logdir = dir.path() / "log";
    FixedClock clock;
    auto w = open_writer(logdir, "wrap", clock.clock());
    ASSERT_TRUE(w->append(make_record(1)) && w->sync());
    fs::path old_file = w->current_file();
    clock.now += 40 * kDay;  // a younger file
    ASSERT_TRUE(w->append(make_record(2)) && w->sync());
    fs::path young_file = w->current_file();
    ASSERT_NE(old_file, young_file);
    clock.now += 40 * kDay;
    ASSERT_TRUE(w->close());
    ASSERT_EQ(seal_pending(seal_options(logdir, tsa.url()))->sealed.size(), 2u);
    // Still open, and older than everything: never removed.
    {
        auto other = open_writer(logdir, "deliver", [] { return kT0 - kDay; });
        ASSERT_TRUE(other->append(make_record(3)) && other->sync());
    }
    Retention thirty;
    int64_t old_closed = file_state(old_file)->closed_us;
    auto kept = remove_expired(logdir, thirty, add_retention(old_closed, thirty));
    ASSERT_TRUE(kept);
    EXPECT_TRUE(kept->removed.empty());  // exactly 30 months: not older than the period yet
    auto removed = remove_expired(logdir, thirty, add_retention(old_closed, thirty) + 1);
    ASSERT_TRUE(removed);
    ASSERT_EQ(removed->removed.size(), 1u);
    EXPECT_EQ(removed->removed[0], old_file);
    EXPECT_FALSE(fs::exists(old_file));
    EXPECT_FALSE(fs::exists(old_file.string() + ".tsr"));
    EXPECT_FALSE(fs::exists(old_file.string() + ".seal"));
    EXPECT_TRUE(fs::exists(young_file));
    EXPECT_TRUE(fs::exists(young_file.string() + ".tsr"));
    EXPECT_EQ(list_files(logdir)->size(), 2u);
    // What is left still verifies: the oldest remaining file chains to a removed one.
    auto v = must_verify(logdir, pecd::test::test_pki() / "ca.crt");
    EXPECT_TRUE(v.ok()) << v.problems[0].message;
}

}  // namespace
