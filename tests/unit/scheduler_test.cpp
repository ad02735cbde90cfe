// The task store and scheduler: create/find/cancel, due selection by bucket with an injected
// clock, claims by two processes over one directory, a SIGKILLed owner's task taken back after
// its lease, retries with backoff, periodic tasks, and a scan that never opens future buckets.
#include "stages/scheduler/scheduler.hpp"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/scheduler/task_store.hpp"
#include "tests/support/process.hpp"

using namespace pecd;
using namespace pecd::scheduler;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kSec = 1'000'000;
// A fixed instant at the start of a 10 s bucket, so that offsets land in known buckets.
constexpr int64_t kT0 = 1'795'000'000 * kSec;

class SchedulerTest : public ::testing::Test {
  protected:
    void SetUp() override {
        char tmpl[] = "/tmp/pecd-sched-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
        auto s = TaskStore::open(dir_ / "tasks", true);
        ASSERT_TRUE(s) << s.error().message;
        store_.emplace(std::move(*s));
    }
    void TearDown() override {
        std::error_code ec;
        fs::remove_all(dir_, ec);
    }

    Task make(std::string key, int64_t due, std::string op = "count") {
        Task t;
        t.key = std::move(key);
        t.due_us = due;
        t.op = std::move(op);
        return t;
    }

    SchedulerOptions options(std::string node = "n1") {
        SchedulerOptions o;
        o.node = std::move(node);
        o.backoff_base = std::chrono::seconds(30);
        o.backoff_max = std::chrono::hours(1);
        o.max_attempts = 3;
        o.lease = std::chrono::seconds(60);
        return o;
    }

    size_t count_files(const fs::path& d) {
        size_t n = 0;
        for (auto it = fs::recursive_directory_iterator(d);
             it != fs::recursive_directory_iterator(); ++it)
            if (it->is_regular_file()) ++n;
        return n;
    }

    fs::path dir_;
    std::optional<TaskStore> store_;
};

std::vector<std::string> read_lines(const fs::path& p) {
    std::vector<std::string> out;
    std::ifstream in(p);
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
}

void append_line(const fs::path& p, const std::string& line) {
    int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return;
    std::string l = line + "\n";
    (void)!::write(fd, l.data(), l.size());
    ::close(fd);
}

}  // namespace

TEST(TaskFormat, RoundTripsAnyBytesAndRejectsTornFiles) {
    Task t;
    t.key = "timeout12.abc.def";
    t.due_us = 1234567;
    t.op = "timeout 12h";
    t.args = {{"identificativo", "opec.1@pec.test"}, {"text", "a b\nc%d\x01"}, {"empty", ""}};
    t.attempts = 2;
    t.created_us = 99;
    t.created_by = "node-1";
    t.last_error = "5.1.1 mailbox unknown\r\n";
    auto text = encode_task(t);
    auto back = decode_task(text);
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(*back, t);
    // Every line but the last, or a missing 'end': corrupt, never guessed at.
    auto torn = decode_task(text.substr(0, text.size() - 4));
    ASSERT_FALSE(torn);
    EXPECT_EQ(torn.error().kind, ErrorKind::corrupt);
    EXPECT_FALSE(decode_task("PECT1\nkey a\ndue 1\nbogus 3\nend\n"));
    EXPECT_FALSE(decode_task("PECT1\nkey ../x\ndue 1\nend\n"));
}

TEST(TaskFormat, NamesAreDerivable) {
    EXPECT_EQ(bucket_name(kT0), bucket_name(kT0 + 9 * kSec + 999'999));
    EXPECT_NE(bucket_name(kT0), bucket_name(kT0 + 10 * kSec));
    EXPECT_LT(bucket_name(kT0 + 10 * kSec), bucket_name(kT0 + 20 * kSec));
    EXPECT_LT(bucket_name(kT0), bucket_name(kT0 + 86400 * kSec));
    EXPECT_TRUE(is_bucket_name(bucket_name(kT0)));
    EXPECT_EQ(bucket_name(0), "19700101T000000");
    auto k1 = timer_key("timeout12", "opec.123@pec.test", "bob@pec.beta.test");
    EXPECT_EQ(k1, timer_key("timeout12", "opec.123@pec.test", "bob@pec.beta.test"));
    EXPECT_NE(k1, timer_key("timeout12", "opec.123@pec.test", "carol@pec.beta.test"));
    EXPECT_TRUE(is_valid_key(k1));
    EXPECT_FALSE(is_valid_key("a/b"));
    EXPECT_FALSE(is_valid_key(".hidden"));
    EXPECT_FALSE(is_valid_key("a~b"));
    auto c = parse_claim_name(claim_name(k1, "node-2", 4242, kT0));
    ASSERT_TRUE(c);
    EXPECT_EQ(c->key, k1);
    EXPECT_EQ(c->node, "node-2");
    EXPECT_EQ(c->pid, 4242);
    EXPECT_EQ(c->claimed_us, kT0);
    EXPECT_FALSE(parse_claim_name("plainkey"));
}

TEST_F(SchedulerTest, ScheduleFindCancel) {
    auto key = timer_key("timeout12", "opec.1@pec.test", "bob@pec.beta.test");
    Task t = make(key, kT0 + 12 * 3600 * kSec, "timeout-12h");
    t.set_arg("recipient", "bob@pec.beta.test");
    ASSERT_TRUE(store_->schedule(t, "n1"));
    auto dup = store_->schedule(t, "n1");
    ASSERT_FALSE(dup);
    EXPECT_EQ(dup.error().kind, ErrorKind::conflict);

    auto found = store_->find(key);
    ASSERT_TRUE(found) << found.error().message;
    EXPECT_EQ(found->state, TaskState::pending);
    EXPECT_EQ(found->task.op, "timeout-12h");
    EXPECT_EQ(found->task.arg("recipient"), "bob@pec.beta.test");
    EXPECT_EQ(found->task.created_by, "n1");
    EXPECT_EQ(found->path, store_->pending_dir() / bucket_name(t.due_us) / key);

    ASSERT_TRUE(store_->cancel(key));
    EXPECT_EQ(store_->find(key).error().kind, ErrorKind::not_found);
    EXPECT_EQ(store_->cancel(key).error().kind, ErrorKind::not_found);
    EXPECT_FALSE(fs::exists(store_->index_dir() / key));

    // Cancelled means never run, even long after.
    Scheduler s(std::move(*store_), options());
    int runs = 0;
    s.register_simple_op("timeout-12h", [&](const Task&) -> Status {
        ++runs;
        return {};
    });
    auto pass = s.run_due(kT0 + 48 * 3600 * kSec);
    ASSERT_TRUE(pass);
    EXPECT_EQ(runs, 0);
    // And the key can be scheduled again.
    EXPECT_TRUE(s.store().schedule(t, "n1"));
}

TEST_F(SchedulerTest, CancelPrefixTakesEveryRecipientOfAMessage) {
    std::vector<Task> tasks;
    for (auto r : {"a@x.test", "b@x.test", "c@x.test"})
        tasks.push_back(make(timer_key("timeout24", "opec.7@pec.test", r), kT0 + 24 * 3600 * kSec));
    tasks.push_back(
        make(timer_key("timeout24", "opec.8@pec.test", "a@x.test"), kT0 + 24 * 3600 * kSec));
    ASSERT_TRUE(store_->schedule(tasks, "n1"));
    std::string prefix = tasks[0].key.substr(0, tasks[0].key.rfind('.') + 1);
    auto n = store_->cancel_prefix(prefix);
    ASSERT_TRUE(n) << n.error().message;
    EXPECT_EQ(*n, 3u);
    EXPECT_TRUE(store_->find(tasks[3].key));
    EXPECT_FALSE(store_->find(tasks[0].key));
}

TEST_F(SchedulerTest, RunsATaskOnceAtOrAfterItsDueTime) {
    ASSERT_TRUE(store_->schedule(make("a", kT0 + 5 * kSec), "n1"));
    ASSERT_TRUE(store_->schedule(make("b", kT0 + 25 * kSec), "n1"));
    ASSERT_TRUE(store_->schedule(make("c", kT0 + 3600 * kSec), "n1"));
    Scheduler s(std::move(*store_), options());
    std::vector<std::string> ran;
    s.register_simple_op("count", [&](const Task& t) -> Status {
        ran.push_back(t.key);
        return {};
    });
    ASSERT_TRUE(s.run_due(kT0));
    EXPECT_TRUE(ran.empty());
    ASSERT_TRUE(s.run_due(kT0 + 5 * kSec - 1));  // same bucket, one microsecond early
    EXPECT_TRUE(ran.empty());
    ASSERT_TRUE(s.run_due(kT0 + 5 * kSec));
    EXPECT_EQ(ran, std::vector<std::string>{"a"});
    ASSERT_TRUE(s.run_due(kT0 + 6 * kSec));
    EXPECT_EQ(ran.size(), 1u);  // not twice
    auto pass = s.run_due(kT0 + 3599 * kSec);
    ASSERT_TRUE(pass);
    EXPECT_EQ(ran, (std::vector<std::string>{"a", "b"}));
    EXPECT_EQ(s.store().find("a").error().kind, ErrorKind::not_found);
    EXPECT_EQ(s.store().find("c")->state, TaskState::pending);
}

TEST_F(SchedulerTest, ScanListsOnlyDueBucketsAndNeverReadsFutureOnes) {
    // Two past buckets with due tasks; 200 future buckets; and a garbage file in a future bucket
    // that would land in failed/ if anything opened it.
    ASSERT_TRUE(store_->schedule(make("p1", kT0 - 100 * kSec), "n1"));
    ASSERT_TRUE(store_->schedule(make("p2", kT0 - 50 * kSec), "n1"));
    std::vector<Task> future;
    for (int i = 0; i < 200; ++i)
        future.push_back(make("f" + std::to_string(i), kT0 + (60 + i * 10) * kSec));
    ASSERT_TRUE(store_->schedule(future, "n1"));
    fs::path trap_bucket = store_->pending_dir() / bucket_name(kT0 + 30 * kSec);
    fs::create_directories(trap_bucket);
    std::ofstream(trap_bucket / "garbage") << "not a task\n";

    Scheduler s(std::move(*store_), options());
    int runs = 0;
    s.register_simple_op("count", [&](const Task&) -> Status {
        ++runs;
        return {};
    });
    auto pass = s.run_due(kT0 + 1);
    ASSERT_TRUE(pass) << pass.error().message;
    EXPECT_EQ(runs, 2);
    EXPECT_EQ(pass->scan.buckets_listed, 2u);  // p1's and p2's: not one of the 201 future ones
    EXPECT_EQ(pass->scan.files_read, 0u);      // past buckets need no read before the claim
    EXPECT_TRUE(fs::is_empty(s.store().failed_dir()));

    // Inside a partly due bucket only that bucket's files are read.
    pass = s.run_due(kT0 + 65 * kSec);
    ASSERT_TRUE(pass);
    EXPECT_EQ(runs, 3);
    EXPECT_EQ(pass->scan.files_read, 1u);  // f0, due at +60 s, in the current bucket
    // The trap's time has come: the unreadable file is moved aside, not run and not lost.
    EXPECT_EQ(pass->failed, 1u);
    EXPECT_TRUE(fs::exists(s.store().failed_dir() / "garbage"));
}

TEST_F(SchedulerTest, TransientFailuresBackOffThenFail) {
    ASSERT_TRUE(store_->schedule(make("flaky", kT0), "n1"));
    ASSERT_TRUE(store_->schedule(make("broken", kT0, "perm"), "n1"));
    ASSERT_TRUE(store_->schedule(make("nobody", kT0, "no-such-op"), "n1"));
    Scheduler s(std::move(*store_), options());
    std::vector<int> attempts_seen;
    s.register_simple_op("count", [&](const Task& t) -> Status {
        attempts_seen.push_back(t.attempts);
        return fail(ErrorKind::transient, "server down");
    });
    s.register_simple_op(
        "perm", [&](const Task&) -> Status { return fail(ErrorKind::permanent, "bad data"); });

    auto pass = s.run_due(kT0);
    ASSERT_TRUE(pass);
    EXPECT_EQ(pass->retried, 1u);
    EXPECT_EQ(pass->failed, 2u);  // permanent at once; unknown operation at once
    auto info = s.store().find("flaky");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->state, TaskState::pending);
    EXPECT_EQ(info->task.attempts, 1);
    EXPECT_EQ(info->task.due_us, kT0 + 30 * kSec);  // base
    EXPECT_EQ(info->task.last_error, "server down");

    ASSERT_TRUE(s.run_due(kT0 + 30 * kSec - 1));
    EXPECT_EQ(attempts_seen.size(), 1u);
    ASSERT_TRUE(s.run_due(kT0 + 30 * kSec));
    EXPECT_EQ(s.store().find("flaky")->task.due_us, kT0 + 90 * kSec);  // 2 x base
    pass = s.run_due(kT0 + 90 * kSec);
    ASSERT_TRUE(pass);
    EXPECT_EQ(pass->failed, 1u);  // third failure = max_attempts
    EXPECT_EQ(attempts_seen, (std::vector<int>{0, 1, 2}));

    info = s.store().find("flaky");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->state, TaskState::failed);
    EXPECT_EQ(info->task.attempts, 3);
    EXPECT_EQ(info->task.last_error, "server down");
    EXPECT_EQ(s.store().find("broken")->task.last_error, "bad data");
    EXPECT_NE(s.store().find("nobody")->task.last_error.find("unknown operation"),
              std::string::npos);
    // Nothing left behind in claimed/ or the index.
    EXPECT_TRUE(fs::is_empty(s.store().claimed_dir()));
    EXPECT_TRUE(fs::is_empty(s.store().index_dir()));
}

TEST_F(SchedulerTest, PeriodicTasksRescheduleThemselves) {
    Task t = make("periodic.crl-refresh", kT0, "crl-refresh");
    ASSERT_TRUE(store_->schedule(t, "n1"));
    Scheduler s(std::move(*store_), options());
    std::vector<int64_t> runs;
    s.register_op("crl-refresh", [&](const Task& task) -> Result<Next> {
        runs.push_back(task.due_us);
        return Next::at(task.due_us + 3600 * kSec);
    });
    for (int64_t now : {kT0, kT0 + 10 * kSec, kT0 + 3600 * kSec, kT0 + 7300 * kSec}) {
        auto pass = s.run_due(now);
        ASSERT_TRUE(pass);
    }
    EXPECT_EQ(runs, (std::vector<int64_t>{kT0, kT0 + 3600 * kSec, kT0 + 7200 * kSec}));
    auto info = s.store().find("periodic.crl-refresh");
    ASSERT_TRUE(info);
    EXPECT_EQ(info->state, TaskState::pending);
    EXPECT_EQ(info->task.due_us, kT0 + 3 * 3600 * kSec);
}

TEST_F(SchedulerTest, CancelWhileRunningStopsTheReschedule) {
    ASSERT_TRUE(store_->schedule(make("self", kT0, "tick"), "n1"));
    Scheduler s(std::move(*store_), options());
    Status cancel_result;
    TaskState state_during_run = TaskState::pending;
    s.register_op("tick", [&](const Task& t) -> Result<Next> {
        state_during_run = s.store().find(t.key)->state;
        cancel_result = s.store().cancel(t.key);  // e.g. the receipt arrived meanwhile
        return Next::at(t.due_us + 60 * kSec);
    });
    auto pass = s.run_due(kT0);
    ASSERT_TRUE(pass);
    EXPECT_EQ(state_during_run, TaskState::claimed);
    EXPECT_TRUE(cancel_result) << cancel_result.error().message;
    EXPECT_EQ(pass->dropped, 1u);
    EXPECT_EQ(s.store().find("self").error().kind, ErrorKind::not_found);
    EXPECT_TRUE(fs::is_empty(s.store().cancelled_dir()));
}

// Two scheduler processes over one task directory and 5,000 due tasks: each task runs once.
TEST_F(SchedulerTest, TwoProcessesRunEveryTaskExactlyOnce) {
    constexpr int kTasks = 5000;
    int64_t now = spool::now_us();
    std::vector<Task> tasks;
    for (int i = 0; i < kTasks; ++i)
        tasks.push_back(make("job." + std::to_string(i), now - (i % 30) * kSec));
    ASSERT_TRUE(store_->schedule(tasks, "n0"));
    fs::path root = store_->root();

    int go[2];
    ASSERT_EQ(::pipe(go), 0);
    std::vector<pid_t> children;
    for (int p = 0; p < 2; ++p) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            ::close(go[1]);
            char c;
            (void)!::read(go[0], &c, 1);  // start together
            auto store = TaskStore::open(root, false);
            if (!store) ::_exit(2);
            Scheduler s(std::move(*store), options("n" + std::to_string(p + 1)));
            fs::path log = dir_ / ("ran." + std::to_string(p));
            int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
            s.register_simple_op("count", [fd](const Task& t) -> Status {
                std::string line = t.key + "\n";
                if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size()))
                    return fail_errno("log");
                return {};
            });
            size_t lost = 0;
            while (true) {
                auto pass = s.run_due(spool::now_us());
                if (!pass) ::_exit(3);
                lost += pass->lost;
                if (pass->claimed == 0 && pass->lost == 0) break;
            }
            std::ofstream(dir_ / ("lost." + std::to_string(p))) << lost << "\n";
            ::_exit(0);
        }
        children.push_back(pid);
    }
    ::close(go[0]);
    ASSERT_EQ(::write(go[1], "gg", 2), 2);
    ::close(go[1]);
    for (pid_t pid : children) EXPECT_EQ(pecd::testing::wait_exit(pid), 0);

    std::map<std::string, int> seen;
    std::vector<size_t> per_process;
    for (int p = 0; p < 2; ++p) {
        auto lines = read_lines(dir_ / ("ran." + std::to_string(p)));
        per_process.push_back(lines.size());
        for (const auto& l : lines) ++seen[l];
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(kTasks));
    for (const auto& [key, n] : seen) EXPECT_EQ(n, 1) << key << " ran " << n << " times";
    std::cout << "process 1 ran " << per_process[0] << ", process 2 ran " << per_process[1]
              << "; claim races lost: " << read_lines(dir_ / "lost.0").at(0) << " + "
              << read_lines(dir_ / "lost.1").at(0) << "\n";
    EXPECT_EQ(count_files(root / "pending"), 0u);
    EXPECT_TRUE(fs::is_empty(root / "claimed"));
    EXPECT_TRUE(fs::is_empty(root / "failed"));
}

// A scheduler SIGKILLed in the middle of a task: nobody touches the task during the lease; after
// it, another scheduler takes the claim over (one rename) and runs the task once.
TEST_F(SchedulerTest, KilledOwnersTaskIsTakenBackAfterTheLease) {
    ASSERT_TRUE(store_->schedule(make("slow.1", spool::now_us(), "slow"), "n0"));
    fs::path root = store_->root();
    fs::path log = dir_ / "log";
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        auto store = TaskStore::open(root, false);
        if (!store) ::_exit(2);
        Scheduler s(std::move(*store), options("victim"));
        s.register_simple_op("slow", [&](const Task& t) -> Status {
            append_line(log, "start " + t.key + " victim");
            ::sleep(600);  // killed long before
            append_line(log, "done " + t.key + " victim");
            return {};
        });
        (void)s.run_due(spool::now_us());
        ::_exit(0);
    }
    pecd::testing::ProcessGuard guard(pid);
    // Wait (not a timing assertion) until the victim is inside the handler.
    for (int i = 0; i < 3000 && read_lines(log).empty(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_EQ(read_lines(log), std::vector<std::string>{"start slow.1 victim"});
    ::kill(pid, SIGKILL);
    EXPECT_EQ(pecd::testing::wait_exit(guard.release()), 128 + SIGKILL);

    auto info = store_->find("slow.1");
    ASSERT_TRUE(info);
    ASSERT_EQ(info->state, TaskState::claimed);
    ASSERT_TRUE(info->claim);
    EXPECT_EQ(info->claim->node, "victim");
    int64_t claimed_at = info->claim->claimed_us;

    auto o = options("rescuer");
    o.lease = std::chrono::seconds(5);
    Scheduler s(std::move(*store_), o);
    int attempts_seen = -1;
    s.register_simple_op("slow", [&](const Task& t) -> Status {
        attempts_seen = t.attempts;
        append_line(log, "done " + t.key + " rescuer");
        return {};
    });
    auto pass = s.run_due(claimed_at + 5 * kSec - 1);  // lease not yet over: hands off
    ASSERT_TRUE(pass);
    EXPECT_EQ(pass->reclaimed, 0u);
    EXPECT_EQ(read_lines(log).size(), 1u);
    pass = s.run_due(claimed_at + 5 * kSec);
    ASSERT_TRUE(pass) << pass.error().message;
    EXPECT_EQ(pass->reclaimed, 1u);
    EXPECT_EQ(pass->succeeded, 1u);
    EXPECT_EQ(attempts_seen, 1);  // the lost run counts as an attempt
    EXPECT_EQ(read_lines(log),
              (std::vector<std::string>{"start slow.1 victim", "done slow.1 rescuer"}));
    pass = s.run_due(claimed_at + 3600 * kSec);
    ASSERT_TRUE(pass);
    EXPECT_EQ(pass->ran(), 0u);
    EXPECT_EQ(s.store().find("slow.1").error().kind, ErrorKind::not_found);
}

// A handler that runs longer than the lease: its claim is renewed while it runs, so another
// node polling all along never takes the task over, and the task runs once.
TEST_F(SchedulerTest, ASlowHandlerKeepsItsClaimAndRunsOnce) {
    auto real_now = [] {
        return std::chrono::duration_cast<std::chrono::microseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
            .count();
    };
    ASSERT_TRUE(store_->schedule(make("slow", real_now(), "slow"), "n1"));
    auto other_store = TaskStore::open(dir_ / "tasks", false);
    ASSERT_TRUE(other_store);
    auto fast_lease = [&](std::string node) {
        SchedulerOptions o = options(std::move(node));
        o.lease = std::chrono::milliseconds(300);
        return o;
    };
    Scheduler a(std::move(*store_), fast_lease("a"));
    Scheduler b(std::move(*other_store), fast_lease("b"));
    std::atomic<int> runs{0};
    auto slow = [&](const Task&) -> Status {
        ++runs;
        std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // five leases
        return {};
    };
    a.register_simple_op("slow", slow);
    b.register_simple_op("slow", slow);
    std::atomic<bool> a_done{false};
    PassStats a_pass;
    std::thread first([&] {
        auto pass = a.run_due(real_now());
        if (pass) a_pass = *pass;
        a_done = true;
    });
    while (runs.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    size_t b_reclaimed = 0;
    while (!a_done.load()) {
        auto pass = b.run_due(real_now());
        ASSERT_TRUE(pass);
        b_reclaimed += pass->reclaimed;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    first.join();
    EXPECT_EQ(runs.load(), 1) << "the task ran on both nodes";
    EXPECT_EQ(b_reclaimed, 0u);
    EXPECT_EQ(a_pass.succeeded, 1u);
    EXPECT_EQ(a_pass.lost, 0u);
    EXPECT_EQ(a.store().find("slow").error().kind, ErrorKind::not_found) << "finished";
}

TEST_F(SchedulerTest, TwoReclaimersOneWinner) {
    ASSERT_TRUE(store_->schedule(make("r", kT0), "n0"));
    auto claimed = store_->claim(DueEntry{bucket_name(kT0), "r"}, "dead", 1, kT0);
    ASSERT_TRUE(claimed);
    auto expired = store_->expired_claims(kT0 + 61 * kSec, 60 * kSec);
    ASSERT_TRUE(expired);
    ASSERT_EQ(expired->size(), 1u);
    auto a = store_->reclaim(expired->front(), "a", 2, kT0 + 61 * kSec);
    auto b = store_->reclaim(expired->front(), "b", 3, kT0 + 61 * kSec);
    EXPECT_TRUE(a);
    ASSERT_FALSE(b);
    EXPECT_EQ(b.error().kind, ErrorKind::not_found);
    EXPECT_EQ(store_->find("r")->claim->node, "a");
}

TEST_F(SchedulerTest, WriteFailuresLeaveNothingHalfWritten) {
    ASSERT_TRUE(durable::set_faults("fsync=EIO"));
    auto st = store_->schedule(make("x", kT0), "n1");
    durable::clear_faults();
    ASSERT_FALSE(st);
    EXPECT_EQ(count_files(store_->pending_dir()), 0u);
    EXPECT_TRUE(fs::is_empty(store_->tmp_dir()));
    ASSERT_TRUE(durable::set_faults("write=ENOSPC"));
    st = store_->schedule(make("y", kT0), "n1");
    durable::clear_faults();
    ASSERT_FALSE(st);
    EXPECT_TRUE(fs::is_empty(store_->tmp_dir()));
    EXPECT_EQ(store_->find("y").error().kind, ErrorKind::not_found);
}

// The daemons: two `pecd scheduler` processes over one directory run 300 `command` tasks once
// each; a failing command lands in failed/; `pecq tasks` shows and cancels.
TEST_F(SchedulerTest, PecdSchedulerDaemonsAndPecqTasks) {
    const std::string bin = std::string(PECD_BINARY_DIR) + "/bin/";
    for (auto program : {"pecd", "pecq"})
        ASSERT_TRUE(fs::exists(bin + program))
            << bin << program << " is missing: build the pecd and pecq targets first";
    fs::path conf = dir_ / "pecd.conf";
    fs::path script = dir_ / "append.sh";
    std::ofstream(script) << "#!/bin/sh\necho \"$PECD_TASK_KEY\" >> " << (dir_ / "ran").string()
                          << "\n";
    fs::permissions(script, fs::perms::owner_all);
    std::ofstream(conf) << "[spool]\ndirectory = " << (dir_ / "spool").string()
                        << "\n[scheduler]\ndirectory = " << store_->root().string()
                        << "\nlease = 10m\npoll_interval = 100ms\ncommand.append = "
                        << script.string() << "\ncommand.fail = /bin/false\n";
    int64_t now = spool::now_us();
    std::vector<Task> tasks;
    for (int i = 0; i < 300; ++i) {
        Task t = make("cmd." + std::to_string(i), now - (i % 20) * kSec, "command");
        t.set_arg("command", "append");
        tasks.push_back(std::move(t));
    }
    Task broken = make("cmd.broken", now, "command");
    broken.set_arg("command", "fail");
    tasks.push_back(broken);
    tasks.push_back(make("later", now + 3600 * kSec, "command"));
    ASSERT_TRUE(store_->schedule(tasks, "test"));

    std::vector<pecd::testing::ProcessGuard> daemons;
    pecd::testing::SpawnOptions quiet;
    quiet.stderr_path = (dir_ / "daemons.log").string();
    for (int n = 0; n < 2; ++n)
        daemons.emplace_back(
            pecd::testing::spawn({bin + "pecd", "-c", conf.string(), "scheduler"}, quiet));
    for (auto& d : daemons) ASSERT_GT(d.pid(), 0);
    // Wait (not a timing assertion) until only the future task is pending and nothing runs.
    auto busy = [&] {
        return count_files(store_->pending_dir()) != 1 || !fs::is_empty(store_->claimed_dir());
    };
    for (int i = 0; i < 6000 && busy(); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    daemons.clear();  // SIGTERM, waited for

    std::map<std::string, int> seen;
    for (const auto& l : read_lines(dir_ / "ran")) ++seen[l];
    EXPECT_EQ(seen.size(), 300u);
    for (const auto& [key, n] : seen) EXPECT_EQ(n, 1) << key;
    auto failed = store_->find("cmd.broken");
    ASSERT_TRUE(failed);
    EXPECT_EQ(failed->state, TaskState::failed);
    EXPECT_NE(failed->task.last_error.find("exit 1"), std::string::npos) << failed->task.last_error;

    fs::path out = dir_ / "pecq.out";
    auto pecq = [&](std::vector<std::string> args) {
        args.insert(args.begin(), {bin + "pecq", "-c", conf.string(), "tasks"});
        fs::remove(out);
        pecd::testing::SpawnOptions capture;
        capture.stdout_path = capture.stderr_path = out.string();
        return pecd::testing::run(args, capture);
    };
    EXPECT_EQ(pecq({"list", "--state", "failed", "--json"}), 0);
    auto listed = read_lines(out);
    ASSERT_EQ(listed.size(), 3u);  // "[", one task, "]"
    EXPECT_NE(listed[1].find("\"key\":\"cmd.broken\""), std::string::npos);
    EXPECT_EQ(pecq({"show", "later"}), 0);
    EXPECT_NE(read_lines(out).at(1).find("pending"), std::string::npos);
    EXPECT_EQ(pecq({"cancel", "later"}), 0);
    EXPECT_EQ(pecq({"show", "later"}), 3);  // not found
    EXPECT_EQ(pecq({"list"}), 0);
    EXPECT_EQ(read_lines(out).back(), "-- 1 task(s)");  // the failed one
}

// The `command` operation and the periodic tasks pecd keeps scheduled from pecd.conf.
TEST_F(SchedulerTest, PeriodicCommandsFromTheConfiguration) {
    fs::path tempfail = dir_ / "tempfail.sh";
    std::ofstream(tempfail) << "#!/bin/sh\nexit 75\n";
    fs::permissions(tempfail, fs::perms::owner_all);
    auto config = Config::parse(
        "[scheduler]\ndirectory = /unused\ncommand.tick = /bin/true\nevery.tick = 1h\n"
        "command.busy = " +
        tempfail.string() + "\nevery.busy = 10m\n");
    ASSERT_TRUE(config);
    auto commands = configured_commands(*config);
    ASSERT_EQ(commands.size(), 2u);
    EXPECT_EQ(commands["tick"], std::vector<std::string>{"/bin/true"});

    auto created = ensure_periodic_tasks(*store_, *config, "n1", kT0);
    ASSERT_TRUE(created) << created.error().message;
    EXPECT_EQ(*created, 2u);
    created = ensure_periodic_tasks(*store_, *config, "n1", kT0 + kSec);
    ASSERT_TRUE(created);
    EXPECT_EQ(*created, 0u);  // already there

    int64_t clock = kT0 + 5000 * kSec;  // the scheduler was down for a while: runs were missed
    auto o = options();
    o.clock = [&] { return clock; };
    Scheduler s(std::move(*store_), o);
    s.register_op("command", command_handler(commands, o.clock));
    auto pass = s.run_due(clock);
    ASSERT_TRUE(pass) << pass.error().message;
    EXPECT_EQ(pass->rescheduled, 1u);
    EXPECT_EQ(pass->retried, 1u);
    auto tick = s.store().find("periodic.tick");
    ASSERT_TRUE(tick);
    EXPECT_EQ(tick->task.due_us, kT0 + 2 * 3600 * kSec);  // the next whole hour after now, once
    auto busy = s.store().find("periodic.busy");
    ASSERT_TRUE(busy);
    EXPECT_EQ(busy->task.attempts, 1);
    EXPECT_NE(busy->task.last_error.find("exit 75"), std::string::npos);

    auto bad = Config::parse("[scheduler]\ndirectory = /x\nevery.nothing = 1h\n");
    ASSERT_TRUE(bad);
    auto refused = ensure_periodic_tasks(s.store(), *bad, "n1", kT0);
    ASSERT_FALSE(refused);
    EXPECT_EQ(refused.error().kind, ErrorKind::config);
}
