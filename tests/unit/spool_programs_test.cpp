// The real programs on a temporary spool: pec-enqueue (exit codes are Postfix's contract), pecd
// --once, and pecq.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "tests/support/temp_dir.hpp"

extern char** environ;

namespace fs = std::filesystem;
using namespace pecd;
using namespace pecd::spool;

namespace {

const std::string kBin = PECD_BINARY_DIR "/bin/";

using TempDir = pecd::test::TempDir;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void spit(const fs::path& p, std::string_view data) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::vector<std::string> names_in(const fs::path& dir) {
    std::vector<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir, ec))
        out.push_back(e.path().filename().string());
    std::sort(out.begin(), out.end());
    return out;
}

struct Ran {
    int code = -1;
    std::string out;
    std::string err;
};

// fork/exec with stdin from `input`, stdout/stderr captured; PECD_* variables from the test's own
// environment are not passed on, `env` adds some.
Ran run(const fs::path& scratch, const std::vector<std::string>& argv,
        const std::string& input = "", const std::vector<std::string>& env = {}) {
    static int counter = 0;
    std::string tag = std::to_string(::getpid()) + "." + std::to_string(counter++);
    fs::path in_path = scratch / ("stdin." + tag), out_path = scratch / ("stdout." + tag),
             err_path = scratch / ("stderr." + tag);
    spit(in_path, input);
    std::vector<std::string> env_store;
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "PECD_", 5) != 0) env_store.emplace_back(*e);
    for (const auto& e : env) env_store.push_back(e);
    std::vector<char*> envp, args;
    for (auto& e : env_store) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> argv_store = argv;
    for (auto& a : argv_store) args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid == 0) {
        int in = ::open(in_path.c_str(), O_RDONLY);
        int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0) ::_exit(126);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(err, 2);
        ::execve(args[0], args.data(), envp.data());
        ::_exit(127);
    }
    Ran r;
    if (pid < 0) return r;
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return r;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = slurp(out_path);
    r.err = slurp(err_path);
    fs::remove(in_path);
    fs::remove(out_path);
    fs::remove(err_path);
    return r;
}

std::string describe(const Ran& r) {
    return "exit " + std::to_string(r.code) + "\nstdout: " + r.out + "\nstderr: " + r.err;
}

// Body with CRLF line ends, binary bytes and NULs.
std::string message(int i, size_t extra = 0) {
    std::string m = "From: mittente@pec.example.it\r\nTo: uno@pec.example.it\r\nSubject: prova " +
                    std::to_string(i) + "\r\nMIME-Version: 1.0\r\n\r\n";
    for (int k = 0; k < 256; ++k) m += static_cast<char>(k);
    m += "\r\n";
    m += std::string(extra, 'x');
    m += "\r\n.\r\nfine\r\n";
    return m;
}

class spoolProgramsTest : public ::testing::Test {
  protected:
    void SetUp() override {
        for (const char* program : {"pecd", "pec-enqueue", "pecq"})
            ASSERT_TRUE(fs::exists(kBin + program))
                << kBin + program
                << " is missing: build the pecd, pec-enqueue and pecq targets first";
        root_ = dir_.path() / "spool";
        conf_ = dir_.path() / "pecd.conf";
        write_conf("");
        auto init = run_pecd({"init"});
        ASSERT_EQ(init.code, 0) << describe(init);
        spool_ = Spool(root_);
        ASSERT_TRUE(Spool::open(root_, false).has_value());
    }
    void write_conf(const std::string& extra_spool_lines) {
        spit(conf_, "[spool]\ndirectory = " + root_.string() + "\nmax_message_size = 1M\n" +
                        extra_spool_lines);
    }
    Ran enqueue(const std::vector<std::string>& args, const std::string& input,
                const std::vector<std::string>& env = {}) {
        std::vector<std::string> argv = {kBin + "pec-enqueue", "-c", conf_.string()};
        argv.insert(argv.end(), args.begin(), args.end());
        return run(dir_.path(), argv, input, env);
    }
    Ran simple_enqueue(const std::string& input, const std::vector<std::string>& env = {}) {
        return enqueue({"-f", "mittente@pec.example.it", "-u", "mittente", "-a", "192.0.2.1", "--",
                        "uno@pec.example.it", "due@pec.example.org"},
                       input, env);
    }
    Ran run_pecd(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {kBin + "pecd", "-c", conf_.string()};
        argv.insert(argv.end(), args.begin(), args.end());
        return run(dir_.path(), argv);
    }
    Ran run_pecq(const std::vector<std::string>& args) {
        std::vector<std::string> argv = {kBin + "pecq", "-c", conf_.string()};
        argv.insert(argv.end(), args.begin(), args.end());
        return run(dir_.path(), argv);
    }
    std::vector<std::string> queued() { return names_in(spool_.queue_dir("classify")); }
    void expect_nothing_left() {
        EXPECT_TRUE(names_in(spool_.tmp_dir()).empty()) << "tmp/ not cleaned";
        EXPECT_TRUE(queued().empty()) << "a failed enqueue must not leave a queue file";
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
    fs::path root_, conf_;
    Spool spool_;
};

bool contains(const std::string& hay, const std::string& needle) {
    return hay.find(needle) != std::string::npos;
}

}  // namespace

// ---- pec-enqueue
// ---------------------------------------------------------------------------------

TEST_F(spoolProgramsTest, EnqueueCommitsTheMessage) {
    std::string body = message(1, 100000);
    int64_t before = now_us();
    auto r = simple_enqueue(body);
    int64_t after = now_us();
    ASSERT_EQ(r.code, 0) << describe(r);
    auto files = queued();
    ASSERT_EQ(files.size(), 1u);
    EXPECT_TRUE(is_valid_queue_id(files[0]));
    auto stored = read(spool_.queue_dir("classify") / files[0]);
    ASSERT_TRUE(stored.has_value());
    const Envelope& env = stored->first;
    EXPECT_EQ(env.id, files[0]);
    EXPECT_EQ(env.sender, "mittente@pec.example.it");
    EXPECT_EQ(env.recipients,
              (std::vector<std::string>{"uno@pec.example.it", "due@pec.example.org"}));
    EXPECT_EQ(env.user, "mittente");
    EXPECT_EQ(env.client, "192.0.2.1");
    EXPECT_EQ(env.attempts, 0);
    EXPECT_GE(env.arrival_us, before);
    EXPECT_LE(env.arrival_us, after);
    EXPECT_EQ(arrival_from_id(env.id), env.arrival_us);
    ASSERT_EQ(env.history.size(), 1u);
    EXPECT_EQ(env.history[0].stage, "enqueue");
    EXPECT_TRUE(stored->second == body) << "body not byte-identical";
    EXPECT_TRUE(names_in(spool_.tmp_dir()).empty());
}

TEST_F(spoolProgramsTest, EnqueueNullSenderEmptyBodyAndOddRecipients) {
    auto r = enqueue({"-f", "", "--", "strano destinatario@x.it", "percento%41@y.it"}, "");
    ASSERT_EQ(r.code, 0) << describe(r);
    auto files = queued();
    ASSERT_EQ(files.size(), 1u);
    auto stored = read(spool_.queue_dir("classify") / files[0]);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->first.sender, "");
    EXPECT_EQ(stored->first.user, "");
    EXPECT_EQ(stored->first.recipients,
              (std::vector<std::string>{"strano destinatario@x.it", "percento%41@y.it"}));
    EXPECT_EQ(stored->second, "");
}

TEST_F(spoolProgramsTest, EnqueueFaultsDeferAndLeaveNothing) {
    for (const char* spec : {"open=EIO", "write=ENOSPC", "write=EIO@2", "fsync=EIO", "fsync=EIO@2",
                             "rename=EIO", "write=EDQUOT@3"}) {
        SCOPED_TRACE(spec);
        auto r = simple_enqueue(message(2, 200000), {std::string("PECD_FAULTS=") + spec});
        EXPECT_EQ(r.code, 75) << describe(r);
        EXPECT_TRUE(r.err.starts_with("4.3.0")) << r.err;
        expect_nothing_left();
    }
    // And the same spool still takes mail once the fault is gone.
    auto ok = simple_enqueue(message(3));
    EXPECT_EQ(ok.code, 0) << describe(ok);
    EXPECT_EQ(queued().size(), 1u);
}

TEST_F(spoolProgramsTest, EnqueueTempFailsOnSetupProblems) {
    std::string body = message(4);
    // Missing configuration file.
    auto r = run(dir_.path(),
                 {kBin + "pec-enqueue", "-c", (dir_.path() / "absent.conf").string(), "-f", "a@b",
                  "--", "c@d"},
                 body);
    EXPECT_EQ(r.code, 75) << describe(r);
    // Configuration without [spool] directory.
    fs::path empty_conf = dir_.path() / "empty.conf";
    spit(empty_conf, "[spool]\nmax_message_size = 1M\n");
    r = run(dir_.path(),
            {kBin + "pec-enqueue", "-c", empty_conf.string(), "-f", "a@b", "--", "c@d"}, body);
    EXPECT_EQ(r.code, 75) << describe(r);
    // Spool directory missing (never created: pec-enqueue must not create it).
    fs::path other_conf = dir_.path() / "other.conf";
    spit(other_conf, "[spool]\ndirectory = " + (dir_.path() / "nospool").string() + "\n");
    r = run(dir_.path(),
            {kBin + "pec-enqueue", "-c", other_conf.string(), "-f", "a@b", "--", "c@d"}, body);
    EXPECT_EQ(r.code, 75) << describe(r);
    EXPECT_FALSE(fs::exists(dir_.path() / "nospool"));
    // Bad arguments: no recipients, no sender, unknown option.
    for (const auto& args : std::vector<std::vector<std::string>>{
             {"-f", "a@b"}, {"--", "c@d"}, {"--bogus", "-f", "a@b", "--", "c@d"}, {"-f"}}) {
        r = enqueue(args, body);
        EXPECT_EQ(r.code, 75) << describe(r);
    }
    // A bad fault specification is a setup problem too, not a bounce.
    r = simple_enqueue(body, {"PECD_FAULTS=fsync=EWHATEVER"});
    EXPECT_EQ(r.code, 75) << describe(r);
    expect_nothing_left();
}

TEST_F(spoolProgramsTest, EnqueueOversize) {
    const size_t limit = 1024 * 1024;
    auto exact = simple_enqueue(std::string(limit, 'a'));
    EXPECT_EQ(exact.code, 0) << describe(exact);
    ASSERT_EQ(queued().size(), 1u);
    fs::remove(spool_.queue_dir("classify") / queued()[0]);

    auto over = simple_enqueue(std::string(limit + 1, 'a'));
    EXPECT_EQ(over.code, 69) << describe(over);
    EXPECT_TRUE(contains(over.err, "5.3.4")) << over.err;
    expect_nothing_left();
    auto way_over = simple_enqueue(std::string(3 * limit, 'b'));
    EXPECT_EQ(way_over.code, 69) << describe(way_over);
    expect_nothing_left();

    write_conf("oversize_action = defer\n");
    auto deferred = simple_enqueue(std::string(limit + 1, 'a'));
    EXPECT_EQ(deferred.code, 75) << describe(deferred);
    expect_nothing_left();
}

// ---- pecd --once
// ---------------------------------------------------------------------------------

TEST_F(spoolProgramsTest, PecdAllOnceDrainsIntoOutbox) {
    std::map<std::string, std::string> bodies;
    for (int i = 0; i < 7; ++i) {
        auto before = queued();
        std::string body = message(i, static_cast<size_t>(i) * 5000);
        auto r = simple_enqueue(body);
        ASSERT_EQ(r.code, 0) << describe(r);
        auto after = queued();
        std::vector<std::string> added;
        std::set_difference(after.begin(), after.end(), before.begin(), before.end(),
                            std::back_inserter(added));
        ASSERT_EQ(added.size(), 1u);
        bodies[added[0]] = body;
    }
    auto r = run_pecd({"all", "--once"});
    ASSERT_EQ(r.code, 0) << describe(r);
    auto out = names_in(spool_.outbox_dir());
    ASSERT_EQ(out.size(), bodies.size());
    for (const auto& id : out) {
        ASSERT_TRUE(bodies.contains(id)) << id;
        auto stored = read(spool_.outbox_dir() / id);
        ASSERT_TRUE(stored.has_value());
        EXPECT_TRUE(stored->second == bodies[id]);
        // enqueue + every stage
        ASSERT_EQ(stored->first.history.size(), 1 + kStages.size());
        for (size_t k = 0; k < kStages.size(); ++k)
            EXPECT_EQ(stored->first.history[k + 1].stage, kStages[k]);
    }
    for (Area a : kAreas)
        for (auto st : kStages)
            EXPECT_TRUE(names_in(spool_.area_dir(a, st)).empty()) << to_string(a) << "/" << st;
    auto again = run_pecd({"all", "--once"});
    EXPECT_EQ(again.code, 0) << describe(again);
    EXPECT_EQ(names_in(spool_.outbox_dir()).size(), bodies.size());
    auto wait = run_pecq({"wait", "--timeout", "5"});
    EXPECT_EQ(wait.code, 0) << describe(wait);
}

TEST_F(spoolProgramsTest, PecdSingleStageOnceMovesOneStep) {
    ASSERT_EQ(simple_enqueue(message(1)).code, 0);
    auto id = queued().at(0);
    auto r = run_pecd({"classify", "--once"});
    ASSERT_EQ(r.code, 0) << describe(r);
    EXPECT_TRUE(queued().empty());
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id});
    auto bad = run_pecd({"nosuchstage", "--once"});
    EXPECT_NE(bad.code, 0);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id});
}

// ---- pecq
// ----------------------------------------------------------------------------------------

TEST_F(spoolProgramsTest, PecqListSummaryShowCat) {
    std::string body = message(9, 1234);
    ASSERT_EQ(simple_enqueue(body).code, 0);
    ASSERT_EQ(enqueue({"-f", "", "--", "x@y.it"}, "second").code, 0);
    auto ids = queued();
    ASSERT_EQ(ids.size(), 2u);
    std::string id;
    for (const auto& i : ids)
        if (read(spool_.queue_dir("classify") / i)->second == body) id = i;
    ASSERT_FALSE(id.empty());

    auto list = run_pecq({"list", "--json"});
    ASSERT_EQ(list.code, 0) << describe(list);
    EXPECT_TRUE(list.out.starts_with("[")) << list.out;
    for (const auto& i : ids) EXPECT_TRUE(contains(list.out, "\"id\":\"" + i + "\"")) << list.out;
    EXPECT_TRUE(contains(list.out, "\"area\":\"queue\",\"stage\":\"classify\"")) << list.out;
    EXPECT_TRUE(contains(list.out, "\"sender\":\"mittente@pec.example.it\"")) << list.out;
    EXPECT_TRUE(
        contains(list.out, "\"recipients\":[\"uno@pec.example.it\",\"due@pec.example.org\"]"))
        << list.out;
    EXPECT_TRUE(contains(list.out, "\"sender\":\"\"")) << list.out;
    EXPECT_TRUE(contains(list.out, "\"size\":" + std::to_string(body.size()) + ",")) << list.out;
    auto text = run_pecq({"list"});
    ASSERT_EQ(text.code, 0);
    EXPECT_TRUE(contains(text.out, id)) << text.out;
    EXPECT_TRUE(contains(text.out, "2 message(s)")) << text.out;
    auto filtered = run_pecq({"list", "--json", "--area", "hold"});
    ASSERT_EQ(filtered.code, 0);
    EXPECT_EQ(filtered.out, "[]\n");
    EXPECT_NE(run_pecq({"list", "--area", "nowhere"}).code, 0);

    auto summary = run_pecq({"summary", "--json"});
    ASSERT_EQ(summary.code, 0) << describe(summary);
    EXPECT_TRUE(contains(
        summary.out, "\"queue\":\"queue/classify\",\"total\":2,\"counts\":[2,0,0,0,0,0,0,0,0,0]"))
        << summary.out;
    EXPECT_TRUE(contains(summary.out, "\"queue\":\"queue/wrap\",\"total\":0")) << summary.out;
    EXPECT_TRUE(contains(summary.out, "\"buckets_minutes\":[\"5\",\"10\"")) << summary.out;

    auto show = run_pecq({"show", id, "--json"});
    ASSERT_EQ(show.code, 0) << describe(show);
    EXPECT_TRUE(contains(show.out, "\"area\":\"queue\",\"stage\":\"classify\"")) << show.out;
    EXPECT_TRUE(contains(show.out, "\"id\":\"" + id + "\"")) << show.out;
    EXPECT_TRUE(contains(show.out, "\"user\":\"mittente\",\"client\":\"192.0.2.1\"")) << show.out;
    EXPECT_TRUE(contains(show.out, "\"attempts\":0")) << show.out;
    EXPECT_TRUE(contains(show.out, "\"history\":[{\"stage\":\"enqueue\"")) << show.out;
    auto show_text = run_pecq({"show", id});
    ASSERT_EQ(show_text.code, 0);
    EXPECT_TRUE(contains(show_text.out, "recipient:   due@pec.example.org")) << show_text.out;

    auto cat = run_pecq({"cat", id});
    ASSERT_EQ(cat.code, 0) << describe(cat);
    EXPECT_TRUE(cat.out == body) << "pecq cat is not byte-identical (" << cat.out.size() << " vs "
                                 << body.size() << ")";

    std::string unknown = new_queue_id(now_us());
    EXPECT_EQ(run_pecq({"show", unknown}).code, 3);
    EXPECT_EQ(run_pecq({"cat", unknown}).code, 3);
    EXPECT_NE(run_pecq({"show", "../../etc/passwd"}).code, 0);
}

TEST_F(spoolProgramsTest, PecqShowsQuarantineReasonsAndUnreadableFiles) {
    std::string id = new_queue_id(now_us());
    fs::path q = spool_.area_dir(Area::quarantine, "verify");
    spit(q / id, "not a queue file");
    spit(q / (id + ".reason"),
         "stage: verify\ntime: 1\noriginal-name: " + id + "\nreason: firma non valida\n");
    auto list = run_pecq({"list", "--json", "--area", "quarantine"});
    ASSERT_EQ(list.code, 0) << describe(list);
    EXPECT_TRUE(contains(list.out, "\"id\":\"" + id + "\",\"problem\":\"")) << list.out;
    EXPECT_TRUE(contains(list.out, "\"quarantine_reason\":\"firma non valida\"")) << list.out;
    auto show = run_pecq({"show", id, "--json"});
    ASSERT_EQ(show.code, 0) << describe(show);
    EXPECT_TRUE(contains(show.out, "\"quarantine_reason\":\"firma non valida\"")) << show.out;
    EXPECT_TRUE(contains(show.out, "\"area\":\"quarantine\",\"stage\":\"verify\"")) << show.out;
    EXPECT_NE(run_pecq({"cat", id}).code, 0) << "an unreadable file has no body to print";
}

TEST_F(spoolProgramsTest, PecqHoldReleaseRequeueDelete) {
    ASSERT_EQ(simple_enqueue(message(5)).code, 0);
    std::string id = queued().at(0);
    fs::path held = spool_.area_dir(Area::hold, "classify") / id;

    auto h = run_pecq({"hold", id});
    ASSERT_EQ(h.code, 0) << describe(h);
    EXPECT_TRUE(contains(h.out, id + ": held"));
    EXPECT_TRUE(fs::exists(held));
    EXPECT_TRUE(queued().empty());
    auto list = run_pecq({"list", "--json"});
    EXPECT_TRUE(contains(list.out, "\"area\":\"hold\",\"stage\":\"classify\"")) << list.out;
    // A held message is not processed.
    ASSERT_EQ(run_pecd({"all", "--once"}).code, 0);
    EXPECT_TRUE(fs::exists(held));
    EXPECT_TRUE(names_in(spool_.outbox_dir()).empty());

    auto rel = run_pecq({"release", id});
    ASSERT_EQ(rel.code, 0) << describe(rel);
    EXPECT_EQ(queued(), std::vector<std::string>{id});
    EXPECT_NE(run_pecq({"release", id}).code, 0) << "not on hold any more";

    ASSERT_EQ(run_pecq({"hold", id}).code, 0);
    auto req = run_pecq({"requeue", id});
    ASSERT_EQ(req.code, 0) << describe(req);
    EXPECT_TRUE(contains(req.out, id + ": requeued"));
    auto stored = read(spool_.queue_dir("classify") / id);
    ASSERT_TRUE(stored.has_value());
    EXPECT_EQ(stored->first.history.back().stage, "pecq");
    EXPECT_EQ(stored->first.history.back().note, "requeued from hold");

    auto refused = run_pecq({"delete", id});
    EXPECT_EQ(refused.code, 2) << describe(refused);
    EXPECT_EQ(queued(), std::vector<std::string>{id}) << "delete without --force must not delete";
    auto del = run_pecq({"delete", "--force", id});
    ASSERT_EQ(del.code, 0) << describe(del);
    EXPECT_TRUE(queued().empty());
    EXPECT_FALSE(spool_.find(id).has_value());
    EXPECT_EQ(run_pecq({"delete", "--force", id}).code, 3) << "unknown id";
    EXPECT_EQ(run_pecq({"hold", new_queue_id(now_us())}).code, 3);
}

TEST_F(spoolProgramsTest, PecqWait) {
    auto idle = run_pecq({"wait", "--timeout", "5"});
    EXPECT_EQ(idle.code, 0) << describe(idle);
    // A message in a queue with no stage running: busy until the timeout.
    ASSERT_EQ(simple_enqueue(message(6)).code, 0);
    auto started = std::chrono::steady_clock::now();
    auto busy = run_pecq({"wait", "--timeout", "5"});
    auto took = std::chrono::steady_clock::now() - started;
    EXPECT_EQ(busy.code, 1) << describe(busy);
    EXPECT_GE(took, std::chrono::milliseconds(4500));
    // Drained: idle again.
    ASSERT_EQ(run_pecd({"all", "--once"}).code, 0);
    EXPECT_EQ(run_pecq({"wait", "--timeout", "5"}).code, 0);
}

TEST_F(spoolProgramsTest, PecqWithoutSpoolFails) {
    fs::path other_conf = dir_.path() / "other.conf";
    spit(other_conf, "[spool]\ndirectory = " + (dir_.path() / "nospool").string() + "\n");
    auto r = run(dir_.path(), {kBin + "pecq", "-c", other_conf.string(), "list"});
    EXPECT_NE(r.code, 0);
    EXPECT_FALSE(fs::exists(dir_.path() / "nospool")) << "pecq must not create a spool";
}
