// The stage runner on a real spool: claims, outputs, deferrals, quarantine, crash recovery from
// hand-made directory states, injected I/O faults, and the libuv event loop.
#include <dlfcn.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/enqueue.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/log.hpp"
#include "stages/runner/runner.hpp"
#include "stages/runner/settings.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using namespace pecd::spool;
using namespace pecd::runner;
using namespace std::chrono_literals;

// ---- fsync spy ---------------------------------------------------------------------------------
// The test binary's own fsync/fdatasync/syncfs take precedence over libc's for the statically
// linked pecd_core, so a test can see which files and directories the runner made durable.
namespace spy {
std::mutex mutex;
std::vector<std::string> synced;  // paths, as they were named at the time of the call
std::vector<std::string> calls;   // "fdatasync <path>", in call order (sync_file_range included)
std::atomic<bool> recording{false};
std::atomic<int> syncfs_calls{0};
std::atomic<int> syncfs_delay_ms{0};  // a slow disk, so that concurrent callers overlap

// With `moves`, also "unlink <path>" and "rename <from> <to>", in call order with the syncs:
// what a sync orders.
std::atomic<bool> moves{false};
void record_path(const char* call, const char* path, const char* to = nullptr) {
    if (!recording.load() || !moves.load()) return;
    std::lock_guard lock(mutex);
    calls.push_back(std::string(call) + " " + path + (to ? std::string(" ") + to : ""));
}
void record(int fd, const char* call) {
    if (!recording.load()) return;
    char link[64];
    std::snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    char target[4096];
    ssize_t n = ::readlink(link, target, sizeof target - 1);
    if (n < 0) return;
    std::lock_guard lock(mutex);
    std::string path(target, static_cast<size_t>(n));
    calls.push_back(std::string(call) + " " + path);
    if (std::string_view(call) != "sync_file_range") synced.push_back(std::move(path));
}
template <class F>
F real(const char* name) {
    return reinterpret_cast<F>(::dlsym(RTLD_NEXT, name));
}
// Records the fsyncs and fdatasyncs from here on, from a clean slate.
void start() {
    {
        std::lock_guard lock(mutex);
        synced.clear();
        calls.clear();
    }
    recording = true;
}
// Stops recording; returns the paths synced since start().
std::vector<std::string> stop() {
    recording = false;
    std::lock_guard lock(mutex);
    return synced;
}
bool contains(const std::vector<std::string>& synced_paths, const fs::path& dir) {
    return std::any_of(synced_paths.begin(), synced_paths.end(),
                       [&](const std::string& s) { return fs::path(s) == fs::canonical(dir); });
}
}  // namespace spy

extern "C" int fsync(int fd) {
    spy::record(fd, "fsync");
    static auto real = spy::real<int (*)(int)>("fsync");
    return real(fd);
}
extern "C" int syncfs(int fd) {
    if (spy::recording.load()) spy::syncfs_calls++;
    if (int ms = spy::syncfs_delay_ms.load())
        std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    static auto real = spy::real<int (*)(int)>("syncfs");
    return real(fd);
}
extern "C" int fdatasync(int fd) {
    spy::record(fd, "fdatasync");
    static auto real = spy::real<int (*)(int)>("fdatasync");
    return real(fd);
}
extern "C" int unlink(const char* path) {
    spy::record_path("unlink", path);
    static auto real = spy::real<int (*)(const char*)>("unlink");
    return real(path);
}
extern "C" int renameat2(int from_dir, const char* from, int to_dir, const char* to,
                         unsigned int flags) {
    spy::record_path("rename", from, to);
    static auto real =
        spy::real<int (*)(int, const char*, int, const char*, unsigned int)>("renameat2");
    return real(from_dir, from, to_dir, to, flags);
}
extern "C" int sync_file_range(int fd, off64_t offset, off64_t count, unsigned int flags) {
    spy::record(fd, "sync_file_range");
    static auto real = spy::real<int (*)(int, off64_t, off64_t, unsigned int)>("sync_file_range");
    return real(fd, offset, count, flags);
}

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

// Distinct bodies with CRLF, binary bytes and NULs.
std::string body_for(int i) {
    std::string b = "From: sender" + std::to_string(i) + "@pec.example.it\r\nSubject: test " +
                    std::to_string(i) + "\r\n\r\n";
    // Every fifth body is larger than read_header's first read: its stage reads it from the file.
    const int size = i % 5 == 4 ? 40 * 1024 : 50 + i * 37;
    for (int k = 0; k < size; ++k) b += static_cast<char>((k * 7 + i) & 0xff);
    b += "\r\n.\r\n";
    b += std::string(static_cast<size_t>(i % 3), '\0');
    return b;
}

Envelope make_env(int64_t arrival = now_us()) {
    Envelope env;
    env.arrival_us = arrival;
    env.id = new_queue_id(arrival);
    env.sender = "mittente@pec.example.it";
    env.recipients = {"uno@pec.example.it", "due@pec.example.org"};
    env.user = "mittente";
    env.client = "192.0.2.7";
    env.history.push_back({"enqueue", arrival, "pec-enqueue"});
    env.set_attr("route", "submission");
    return env;
}

bool write_at(const fs::path& path, const Envelope& env, std::string_view body) {
    auto fd = write_queue_file(path, env, BodySource::from_bytes(std::string(body)));
    if (!fd) ADD_FAILURE() << "write " << path << ": " << fd.error().message;
    return fd.has_value();
}

struct Stored {
    Envelope env;
    std::string body;
};

std::optional<Stored> load(const fs::path& path) {
    auto fd = durable::open_file(path, O_RDONLY);
    if (!fd) return std::nullopt;
    auto info = read_header(fd->get(), path.string());
    if (!info) {
        ADD_FAILURE() << path << ": " << info.error().message;
        return std::nullopt;
    }
    auto body = read_body(fd->get(), *info);
    if (!body) return std::nullopt;
    return Stored{info->env, *body};
}

RunnerOptions small_options(SyncMode mode) {
    RunnerOptions o;
    o.batch_size = 4;
    o.sync = mode;
    o.rescan_interval = 50ms;
    o.deferred_scan_interval = 20ms;
    o.backoff_base = 60'000ms;
    o.backoff_max = 3'600'000ms;
    o.max_attempts = 30;
    return o;
}

class RunnerTest : public ::testing::TestWithParam<SyncMode> {
  protected:
    void SetUp() override {
        log::set_level(log::Level::error);
        auto s = Spool::open(dir_.path() / "spool", true);
        ASSERT_TRUE(s.has_value()) << s.error().message;
        spool_ = *s;
        options_ = small_options(GetParam());
    }
    void TearDown() override { durable::clear_faults(); }

    // Writes a complete file in tmp/ and renames it into the queue (what pec-enqueue does).
    std::string enqueue(std::string_view stage, const std::string& body,
                        Envelope* env_out = nullptr) {
        Envelope env = make_env();
        fs::path tmp = spool_.tmp_dir() / env.id;
        if (!write_at(tmp, env, body)) return {};
        fs::rename(tmp, spool_.queue_dir(stage) / env.id);
        bodies_[env.id] = body;
        envs_[env.id] = env;
        if (env_out) *env_out = env;
        return env.id;
    }
    // `count` inputs written straight into queue/<stage> with body_for(0..count-1); their ids,
    // in order, are appended to `ids`. Call it under ASSERT_NO_FATAL_FAILURE.
    void queue_inputs(std::string_view stage, int count, std::vector<std::string>& ids) {
        for (int i = 0; i < count; ++i) {
            Envelope env = make_env();
            ASSERT_TRUE(write_at(spool_.queue_dir(stage) / env.id, env, body_for(i)));
            ids.push_back(env.id);
        }
    }
    // Runs `r`'s event loop on a thread, calls `feed`, waits until `done` (at most 30 s), then
    // stops the loop and joins it. The loop must end without an error.
    void run_loop_until(StageRunner& r, const std::function<void()>& feed,
                        const std::function<bool()>& done) {
        std::thread loop([&] {
            auto st = r.run(stop_);
            EXPECT_TRUE(st.has_value());
        });
        feed();
        auto deadline = std::chrono::steady_clock::now() + 30s;
        while (!done() && std::chrono::steady_clock::now() < deadline)
            std::this_thread::sleep_for(10ms);
        stop_ = true;
        r.wake();
        loop.join();
    }
    fs::path dir(Area area, std::string_view stage = "classify") const {
        return spool_.area_dir(area, stage);
    }
    void expect_active_clean(std::string_view stage = "classify") {
        for (const auto& n : names_in(spool_.active_dir(stage))) {
            EXPECT_EQ(n.find(".tmp"), std::string::npos) << "leftover " << n;
            EXPECT_EQ(n.find(".out"), std::string::npos) << "leftover " << n;
        }
        EXPECT_TRUE(names_in(spool_.active_dir(stage)).empty());
    }
    // Every enqueued message is in queue/wrap exactly once, byte-identical, with a classify entry.
    void expect_all_delivered_once(const fs::path& where) {
        auto got = names_in(where);
        std::set<std::string> expected;
        for (const auto& [id, _] : bodies_) expected.insert(id);
        EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), expected);
        EXPECT_EQ(got.size(), bodies_.size());
        for (const auto& id : got) {
            auto s = load(where / id);
            ASSERT_TRUE(s.has_value()) << id;
            EXPECT_TRUE(s->body == bodies_[id]) << id << ": body differs";
            EXPECT_EQ(s->env.id, id);
            EXPECT_EQ(s->env.recipients, envs_[id].recipients);
        }
    }

    TempDir dir_;
    Spool spool_;
    RunnerOptions options_;
    std::map<std::string, std::string> bodies_;
    std::map<std::string, Envelope> envs_;
    std::atomic<bool> stop_{false};
};

INSTANTIATE_TEST_SUITE_P(spoolSync, RunnerTest,
                         ::testing::Values(SyncMode::strict, SyncMode::batch),
                         [](const auto& info) {
                             return info.param == SyncMode::strict ? "strict" : "batch";
                         });

// Like pass_through, but the output is always written as a new file (the output-set path).
StageFunction copy_to(std::string destination) {
    return [destination](const StageInput& in) -> Result<std::vector<StageOutput>> {
        std::vector<StageOutput> out;
        out.push_back(StageOutput{destination, in.env, in.body_source(), /*in_place=*/false});
        return out;
    };
}

StageFunction failing(ErrorKind kind, std::string message, std::atomic<int>* calls = nullptr) {
    return [kind, message, calls](const StageInput&) -> Result<std::vector<StageOutput>> {
        if (calls) (*calls)++;
        return fail(kind, message);
    };
}

}  // namespace

// ---- the normal path
// -----------------------------------------------------------------------------

TEST_P(RunnerTest, PassThroughIsByteIdenticalWithHistory) {
    for (int i = 0; i < 11; ++i) enqueue("classify", body_for(i));
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    int64_t before = now_us();
    auto n = r.drain(stop_);
    int64_t after = now_us();
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 11u);
    EXPECT_EQ(r.stats().processed.load(), 11u);
    EXPECT_GE(r.stats().batches.load(), 3u) << "batch_size 4 over 11 files";
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    expect_active_clean();
    expect_all_delivered_once(spool_.queue_dir("wrap"));
    for (const auto& id : names_in(spool_.queue_dir("wrap"))) {
        auto s = load(spool_.queue_dir("wrap") / id);
        ASSERT_TRUE(s.has_value());
        Envelope expected = envs_[id];
        ASSERT_EQ(s->env.history.size(), expected.history.size() + 1);
        const HistoryEntry& h = s->env.history.back();
        EXPECT_EQ(h.stage, "classify");
        EXPECT_EQ(h.note, "-> wrap");
        EXPECT_GE(h.at_us, before);
        EXPECT_LE(h.at_us, after);
        // Apart from the new history line the envelope is the input's.
        Envelope without = s->env;
        without.history.pop_back();
        EXPECT_EQ(without, expected);
    }
    // A second drain finds nothing.
    auto again = r.drain(stop_);
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(*again, 0u);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")).size(), 11u);
}

TEST_P(RunnerTest, LargeBodyPassesThroughByteIdentical) {
    std::string big(3 * 1024 * 1024 + 17, '\0');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>((i * 131) ^ (i >> 9));
    std::string id = enqueue("classify", big);
    StageRunner r(spool_, "classify", pass_through("outbox"), options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.outbox_dir() / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == big);
}

TEST_P(RunnerTest, ChainOfStagesEndsInOutbox) {
    for (int i = 0; i < 5; ++i) enqueue("classify", body_for(i));
    for (size_t k = 0; k < kStages.size(); ++k) {
        std::string next =
            k + 1 < kStages.size() ? std::string(kStages[k + 1]) : std::string(kOutbox);
        StageRunner r(spool_, std::string(kStages[k]), pass_through(next), options_);
        ASSERT_EQ(r.drain(stop_).value_or(99), 5u) << kStages[k];
    }
    expect_all_delivered_once(spool_.outbox_dir());
    auto s = load(spool_.outbox_dir() / bodies_.begin()->first);
    ASSERT_TRUE(s.has_value());
    ASSERT_EQ(s->env.history.size(), 1 + kStages.size());
    for (size_t k = 0; k < kStages.size(); ++k) EXPECT_EQ(s->env.history[k + 1].stage, kStages[k]);
}

TEST_P(RunnerTest, ThreeDerivedOutputsToDifferentDestinationsDeliveredOnce) {
    std::atomic<int> calls{0};
    StageFunction split = [&calls](const StageInput& in) -> Result<std::vector<StageOutput>> {
        calls++;
        std::vector<StageOutput> out;
        Envelope a = in.env;
        a.id = derived_queue_id(in.env.id, "a");
        a.set_attr("part", "a");
        out.push_back({"wrap", a, in.body_source()});
        Envelope b = in.env;
        b.id = derived_queue_id(in.env.id, "b");
        b.recipients = {"only@pec.example.it"};
        out.push_back({"verify", b, BodySource::from_bytes("receipt for " + in.env.id + "\r\n")});
        Envelope c = in.env;
        c.id = derived_queue_id(in.env.id, "c");
        auto body = in.body();
        if (!body) return std::unexpected(body.error());
        out.push_back({std::string(kOutbox), c, BodySource::from_bytes(*body + "appended")});
        return out;
    };
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) ids.push_back(enqueue("classify", body_for(i)));
    StageRunner r(spool_, "classify", split, options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 6u);
    ASSERT_EQ(r.drain(stop_).value_or(99), 0u);
    EXPECT_EQ(calls.load(), 6);
    expect_active_clean();
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")).size(), 6u);
    EXPECT_EQ(names_in(spool_.queue_dir("verify")).size(), 6u);
    EXPECT_EQ(names_in(spool_.outbox_dir()).size(), 6u);
    for (const auto& id : ids) {
        auto a = load(spool_.queue_dir("wrap") / (id + "-a"));
        auto b = load(spool_.queue_dir("verify") / (id + "-b"));
        auto c = load(spool_.outbox_dir() / (id + "-c"));
        ASSERT_TRUE(a && b && c) << id;
        EXPECT_TRUE(a->body == bodies_[id]);
        EXPECT_EQ(a->env.attr("part"), "a");
        EXPECT_EQ(a->env.history.back().note, "-> wrap");
        EXPECT_EQ(b->body, "receipt for " + id + "\r\n");
        EXPECT_EQ(b->env.recipients, std::vector<std::string>{"only@pec.example.it"});
        EXPECT_EQ(b->env.history.back().note, "-> verify");
        EXPECT_TRUE(c->body == bodies_[id] + "appended");
        EXPECT_EQ(c->env.history.back().note, "-> outbox");
    }
}

TEST_P(RunnerTest, ZeroOutputsConsumesTheInput) {
    enqueue("classify", "dropped");
    StageRunner r(
        spool_, "classify",
        [](const StageInput&) -> Result<std::vector<StageOutput>> {
            return std::vector<StageOutput>{};
        },
        options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    expect_active_clean();
    EXPECT_TRUE(names_in(dir(Area::quarantine)).empty());
}

TEST_P(RunnerTest, InvalidOutputsGoToQuarantineAndDeliverNothing) {
    std::string foreign = enqueue("classify", "x");
    std::string unknown_dest = enqueue("classify", "y");
    std::string second_output_bad = enqueue("classify", "z");
    StageFunction bad = [&](const StageInput& in) -> Result<std::vector<StageOutput>> {
        std::vector<StageOutput> out;
        Envelope e = in.env;
        if (in.env.id == foreign) {
            e.id = new_queue_id(now_us());  // not derived from the input: not deterministic
            out.push_back({"wrap", e, in.body_source()});
        } else if (in.env.id == unknown_dest) {
            out.push_back({"nowhere", e, in.body_source()});
        } else {
            out.push_back({"wrap", e, in.body_source()});
            Envelope e2 = in.env;
            e2.id = in.env.id + "-BAD";
            out.push_back({"verify", e2, in.body_source()});
        }
        return out;
    };
    StageRunner r(spool_, "classify", bad, options_);
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 0u);
    EXPECT_TRUE(names_in(spool_.queue_dir("wrap")).empty())
        << "a rejected output set must deliver nothing";
    EXPECT_TRUE(names_in(spool_.queue_dir("verify")).empty());
    for (const auto& id : {foreign, unknown_dest, second_output_bad}) {
        EXPECT_TRUE(fs::exists(dir(Area::quarantine) / id)) << id;
        std::string reason = slurp(dir(Area::quarantine) / (id + ".reason"));
        EXPECT_NE(reason.find("invalid output"), std::string::npos) << reason;
    }
    EXPECT_EQ(r.stats().quarantined.load(), 3u);
    expect_active_clean();
}

TEST_P(RunnerTest, PassThroughIsAnInPlaceAppend) {
    // A message routed unchanged keeps its file: the original bytes, then appended records.
    std::string id = enqueue("classify", body_for(7));
    std::string original = slurp(spool_.queue_dir("classify") / id);
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    std::string moved = slurp(spool_.queue_dir("wrap") / id);
    ASSERT_GT(moved.size(), original.size());
    EXPECT_TRUE(moved.starts_with(original)) << "the input was rewritten instead of appended to";
    auto info = read_header(spool_.queue_dir("wrap") / id);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->trailer_size, moved.size() - original.size());
    EXPECT_EQ(info->torn_size, 0u);
    EXPECT_EQ(info->env.history.back().note, "-> wrap");
    // The next hop appends again.
    StageRunner w(spool_, "wrap", pass_through("verify"), options_);
    ASSERT_EQ(w.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.queue_dir("verify") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == bodies_[id]);
    ASSERT_EQ(s->env.history.size(), 3u);
    EXPECT_EQ(s->env.history[1].stage, "classify");
    EXPECT_EQ(s->env.history[2].stage, "wrap");
    EXPECT_EQ(s->env.history[2].note, "-> verify");
}

TEST_P(RunnerTest, RetryStateDoesNotFollowTheMessageToTheNextStage) {
    // A message that needed retries in classify must start wrap with a clean slate, as outputs
    // written as new files do: otherwise wrap gives up after fewer attempts than configured.
    options_.backoff_base = 0ms;
    options_.max_attempts = 3;
    Envelope env = make_env();
    env.attempts = 2;
    env.last_error = "421 classify was unhappy";
    env.next_attempt_us = now_us() - 1000;
    ASSERT_TRUE(write_at(spool_.queue_dir("classify") / env.id, env, "retried"));
    StageRunner classify(spool_, "classify", pass_through("wrap"), options_);
    ASSERT_EQ(classify.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.queue_dir("wrap") / env.id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env.attempts, 0) << "attempts carried over from classify";
    EXPECT_TRUE(s->env.last_error.empty()) << "stale last-error: " << s->env.last_error;
    EXPECT_EQ(s->env.next_attempt_us, 0);
    // One transient failure in wrap is a first deferral, not the last straw.
    StageRunner wrap(spool_, "wrap", failing(ErrorKind::transient, "wrap hiccup"), options_);
    ASSERT_TRUE(wrap.drain(stop_).has_value());
    EXPECT_TRUE(fs::exists(dir(Area::deferred, "wrap") / env.id))
        << "quarantined after a single failure in wrap";
    EXPECT_FALSE(fs::exists(dir(Area::quarantine, "wrap") / env.id));
    auto d = load(dir(Area::deferred, "wrap") / env.id);
    if (d) {
        EXPECT_EQ(d->env.attempts, 1);
    }
}

TEST_P(RunnerTest, InPlaceOutputIsTheEnvelopeTheStageReturned) {
    // A stage may mark its single output in_place and still change routing attributes: what
    // reaches the next queue must be the envelope it returned, including removed attributes.
    StageFunction annotate = [](const StageInput& in) -> Result<std::vector<StageOutput>> {
        Envelope e = in.env;
        e.attrs.erase(std::remove_if(e.attrs.begin(), e.attrs.end(),
                                     [](const auto& kv) { return kv.first == "route"; }),
                      e.attrs.end());
        e.set_attr("verdict", "ok");
        e.history.push_back({"classify", 1, "annotated"});
        std::vector<StageOutput> out;
        out.push_back(StageOutput{"wrap", e, in.body_source(), true});
        return out;
    };
    std::string id = enqueue("classify", body_for(2));
    ASSERT_EQ(envs_[id].attr("route"), "submission");
    StageRunner r(spool_, "classify", annotate, options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.queue_dir("wrap") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env.attr("verdict"), "ok");
    ASSERT_GE(s->env.history.size(), 2u);
    EXPECT_EQ(s->env.history[s->env.history.size() - 2].note, "annotated");
    EXPECT_TRUE(s->body == bodies_[id]);
    EXPECT_FALSE(s->env.attr("route").has_value()) << "the stage removed 'route' but it came back";
}

TEST_P(RunnerTest, InPlaceFlagWithChangedEnvelopeIsWrittenAsNewFile) {
    StageFunction reroute = [](const StageInput& in) -> Result<std::vector<StageOutput>> {
        Envelope e = in.env;
        e.recipients = {"changed@pec.example.it"};
        e.sender = "";
        std::vector<StageOutput> out;
        out.push_back(StageOutput{"verify", e, in.body_source(), true});
        return out;
    };
    std::string id = enqueue("classify", body_for(8));
    StageRunner r(spool_, "classify", reroute, options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.queue_dir("verify") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env.recipients, std::vector<std::string>{"changed@pec.example.it"});
    EXPECT_EQ(s->env.sender, "");
    EXPECT_TRUE(s->body == bodies_[id]);
    expect_active_clean();
}

TEST_P(RunnerTest, OutputOntoAnExistingIdIsQuarantinedAndDoesNotWedgeTheStage) {
    // Two messages with one id is a bug to look at: the queue file already there is never
    // replaced, the newcomer goes to quarantine, and the stage (and its recovery) keep working.
    // Both ways of producing the output must behave alike.
    for (bool in_place : {false, true}) {
        SCOPED_TRACE(in_place ? "in-place hop" : "output written as a new file");
        Envelope env;
        std::string id = enqueue("classify", "newcomer", &env);
        Envelope squatter = env;
        squatter.sender = "already@there.it";
        ASSERT_TRUE(write_at(spool_.queue_dir("wrap") / id, squatter, "already there"));
        std::string other = enqueue("classify", "innocent bystander");
        StageRunner r(spool_, "classify", in_place ? pass_through("wrap") : copy_to("wrap"),
                      options_);
        (void)r.drain(stop_);
        auto st = r.recover();
        EXPECT_TRUE(st.has_value()) << "recovery fails for good: " << st.error().message;
        auto kept = load(spool_.queue_dir("wrap") / id);
        ASSERT_TRUE(kept.has_value());
        EXPECT_EQ(kept->body, "already there");
        EXPECT_EQ(kept->env.sender, "already@there.it");
        EXPECT_TRUE(fs::exists(spool_.queue_dir("wrap") / other));
        EXPECT_TRUE(fs::exists(dir(Area::quarantine) / id)) << "the newcomer is not in quarantine";
        expect_active_clean();
        // And a fresh runner (a restart) can start.
        StageRunner again(spool_, "classify", pass_through("wrap"), options_);
        auto st2 = again.recover();
        EXPECT_TRUE(st2.has_value()) << st2.error().message;
    }
}

TEST_P(RunnerTest, OutputCanWaitInDeferredUntilAGivenTime) {
    // Partial results: one recipient moves on now, the other waits in deferred/wrap with the
    // retry state the stage chose.
    int64_t later_us = now_us() + 3'600'000'000LL;
    StageFunction partial = [later_us](const StageInput& in) -> Result<std::vector<StageOutput>> {
        std::vector<StageOutput> out;
        Envelope done = in.env;
        done.id = derived_queue_id(in.env.id, "ok");
        done.recipients = {in.env.recipients.at(0)};
        out.push_back(StageOutput{"wrap", done, in.body_source()});
        Envelope wait = in.env;
        wait.id = derived_queue_id(in.env.id, "retry");
        wait.recipients = {in.env.recipients.at(1)};
        wait.attempts = 4;
        wait.last_error = "452 mailbox full";
        StageOutput o{"wrap", wait, in.body_source()};
        o.defer_until_us = later_us;
        out.push_back(o);
        return out;
    };
    std::string id = enqueue("classify", body_for(3));
    StageRunner r(spool_, "classify", partial, options_);
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    expect_active_clean();
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id + "-ok"});
    EXPECT_EQ(names_in(dir(Area::deferred, "wrap")), std::vector<std::string>{id + "-retry"});
    auto now_one = load(spool_.queue_dir("wrap") / (id + "-ok"));
    ASSERT_TRUE(now_one.has_value());
    EXPECT_EQ(now_one->env.recipients, std::vector<std::string>{"uno@pec.example.it"});
    EXPECT_EQ(now_one->env.attempts, 0);
    auto waiting = load(dir(Area::deferred, "wrap") / (id + "-retry"));
    ASSERT_TRUE(waiting.has_value());
    EXPECT_EQ(waiting->env.recipients, std::vector<std::string>{"due@pec.example.org"});
    EXPECT_EQ(waiting->env.next_attempt_us, later_us);
    EXPECT_EQ(waiting->env.attempts, 4);
    EXPECT_EQ(waiting->env.last_error, "452 mailbox full");
    EXPECT_TRUE(waiting->body == bodies_[id]);
    // Not due yet for the wrap stage.
    StageRunner w(spool_, "wrap", pass_through("verify"), options_);
    EXPECT_EQ(w.release_due_deferred().value_or(99), 0u);
    EXPECT_TRUE(fs::exists(dir(Area::deferred, "wrap") / (id + "-retry")));
}

TEST_P(RunnerTest, DeferredOutputsAreNeverInPlaceAndNeedAStage) {
    int64_t past_us = now_us() - 1000;
    std::string a = enqueue("classify", "in place but deferred");
    std::string b = enqueue("classify", "deferred to the outbox");
    StageFunction fn = [&, past_us](const StageInput& in) -> Result<std::vector<StageOutput>> {
        StageOutput o{in.env.id == a ? "wrap" : std::string(kOutbox), in.env, in.body_source(),
                      true};
        o.defer_until_us = past_us;
        return std::vector<StageOutput>{o};
    };
    StageRunner r(spool_, "classify", fn, options_);
    (void)r.drain(stop_);
    EXPECT_TRUE(fs::exists(dir(Area::deferred, "wrap") / a))
        << "a deferred output must wait in deferred/";
    EXPECT_FALSE(fs::exists(spool_.queue_dir("wrap") / a));
    EXPECT_TRUE(fs::exists(dir(Area::quarantine) / b)) << "the outbox has no deferred area";
    EXPECT_TRUE(names_in(spool_.outbox_dir()).empty());
    expect_active_clean();
    // Due already: the wrap stage takes it back.
    StageRunner w(spool_, "wrap", pass_through("verify"), options_);
    EXPECT_EQ(w.release_due_deferred().value_or(99), 1u);
    EXPECT_TRUE(fs::exists(spool_.queue_dir("wrap") / a));
}

// ---- deferrals
// -----------------------------------------------------------------------------------

TEST_P(RunnerTest, TransientErrorDefersWithBackoff) {
    std::string body = body_for(3);
    std::string id = enqueue("classify", body);
    std::atomic<int> calls{0};
    StageRunner r(spool_, "classify", failing(ErrorKind::transient, "mx unreachable", &calls),
                  options_);
    int64_t before = now_us();
    auto n = r.drain(stop_);
    int64_t after = now_us();
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 0u);
    EXPECT_EQ(calls.load(), 1);
    EXPECT_EQ(r.stats().deferred.load(), 1u);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    expect_active_clean();
    EXPECT_EQ(names_in(dir(Area::deferred)), std::vector<std::string>{id});
    auto s = load(dir(Area::deferred) / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env.attempts, 1);
    EXPECT_NE(s->env.last_error.find("mx unreachable"), std::string::npos) << s->env.last_error;
    // First retry after backoff_base (60 s).
    EXPECT_GE(s->env.next_attempt_us, before + 60'000'000);
    EXPECT_LE(s->env.next_attempt_us, after + 60'000'000);
    EXPECT_TRUE(s->body == body);
    ASSERT_FALSE(s->env.history.empty());
    EXPECT_EQ(s->env.history.back().stage, "classify");
    EXPECT_NE(s->env.history.back().note.find("deferred"), std::string::npos);
    // Not due: stays deferred.
    auto released = r.release_due_deferred();
    ASSERT_TRUE(released.has_value());
    EXPECT_EQ(*released, 0u);
    EXPECT_EQ(names_in(dir(Area::deferred)), std::vector<std::string>{id});
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
}

TEST_P(RunnerTest, BackoffDoublesAndIsCapped) {
    options_.backoff_base = 10'000ms;
    options_.backoff_max = 70'000ms;
    StageRunner r(spool_, "classify", failing(ErrorKind::transient, "again"), options_);
    // Messages that already failed k times: delay = base * 2^k, at most backoff_max.
    std::map<std::string, int> prior;
    for (int k : {1, 2, 3, 25}) {
        Envelope env = make_env();
        env.attempts = k;
        ASSERT_TRUE(write_at(spool_.queue_dir("classify") / env.id, env, "b"));
        prior[env.id] = k;
    }
    int64_t before = now_us();
    ASSERT_TRUE(r.drain(stop_).has_value());
    int64_t after = now_us();
    for (const auto& [id, k] : prior) {
        auto s = load(dir(Area::deferred) / id);
        ASSERT_TRUE(s.has_value()) << k;
        EXPECT_EQ(s->env.attempts, k + 1);
        int64_t delay_ms = std::min<int64_t>(10'000LL << k, 70'000);
        EXPECT_GE(s->env.next_attempt_us, before + delay_ms * 1000) << k;
        EXPECT_LE(s->env.next_attempt_us, after + delay_ms * 1000) << k;
    }
}

TEST_P(RunnerTest, ReleaseDueDeferredOnlyWhenDue) {
    // Backoff 0: due at once.
    options_.backoff_base = 0ms;
    std::string id = enqueue("classify", "now");
    {
        StageRunner r(spool_, "classify", failing(ErrorKind::transient, "t"), options_);
        ASSERT_TRUE(r.drain(stop_).has_value());
        ASSERT_TRUE(fs::exists(dir(Area::deferred) / id));
        auto moved = r.release_due_deferred();
        ASSERT_TRUE(moved.has_value());
        EXPECT_EQ(*moved, 1u);
        EXPECT_TRUE(fs::exists(spool_.queue_dir("classify") / id));
        EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
        auto s = load(spool_.queue_dir("classify") / id);
        ASSERT_TRUE(s.has_value());
        EXPECT_EQ(s->env.attempts, 1) << "releasing keeps the retry count";
    }
    // Backoff 1 s: not due at first, due after the delay.
    options_.backoff_base = 1000ms;
    StageRunner r(spool_, "classify", failing(ErrorKind::transient, "t"), options_);
    ASSERT_TRUE(r.drain(stop_).has_value());
    auto s = load(dir(Area::deferred) / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env.attempts, 2);
    int64_t due = s->env.next_attempt_us;
    auto early = r.release_due_deferred();
    ASSERT_TRUE(early.has_value());
    if (now_us() < due) {
        EXPECT_EQ(*early, 0u);
        EXPECT_TRUE(fs::exists(dir(Area::deferred) / id));
    }
    while (now_us() <= due) std::this_thread::sleep_for(10ms);
    auto late = r.release_due_deferred();
    ASSERT_TRUE(late.has_value());
    EXPECT_EQ(*late, 1u);
    EXPECT_TRUE(fs::exists(spool_.queue_dir("classify") / id));
}

TEST_P(RunnerTest, ReleaseDueDeferredQuarantinesCorruptFiles) {
    Envelope env = make_env();
    spit(dir(Area::deferred) / env.id, "not a queue file");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    auto moved = r.release_due_deferred();
    ASSERT_TRUE(moved.has_value());
    EXPECT_EQ(*moved, 0u);
    EXPECT_TRUE(fs::exists(dir(Area::quarantine) / env.id));
    EXPECT_TRUE(fs::exists(dir(Area::quarantine) / (env.id + ".reason")));
    EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
}

TEST_P(RunnerTest, MaxAttemptsQuarantinesWithReason) {
    options_.backoff_base = 0ms;
    options_.max_attempts = 3;
    std::string body = body_for(9);
    std::string id = enqueue("classify", body);
    std::atomic<int> calls{0};
    StageRunner r(spool_, "classify", failing(ErrorKind::transient, "4.4.1 still down", &calls),
                  options_);
    for (int attempt = 1; attempt <= 2; ++attempt) {
        ASSERT_TRUE(r.drain(stop_).has_value());
        auto s = load(dir(Area::deferred) / id);
        ASSERT_TRUE(s.has_value()) << attempt;
        EXPECT_EQ(s->env.attempts, attempt);
        ASSERT_EQ(r.release_due_deferred().value_or(0), 1u);
    }
    ASSERT_TRUE(r.drain(stop_).has_value());
    EXPECT_EQ(calls.load(), 3);
    EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    expect_active_clean();
    ASSERT_TRUE(fs::exists(dir(Area::quarantine) / id));
    std::string reason = slurp(dir(Area::quarantine) / (id + ".reason"));
    EXPECT_NE(reason.find("gave up after 3 attempts"), std::string::npos) << reason;
    EXPECT_NE(reason.find("4.4.1 still down"), std::string::npos) << reason;
    EXPECT_NE(reason.find("stage: classify"), std::string::npos) << reason;
    auto s = load(dir(Area::quarantine) / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == body);
    EXPECT_EQ(r.stats().quarantined.load(), 1u);
}

// ---- quarantine
// ----------------------------------------------------------------------------------

TEST_P(RunnerTest, PermanentErrorQuarantinesWithReason) {
    std::string body = body_for(1);
    std::string id = enqueue("classify", body);
    StageRunner r(spool_, "classify", failing(ErrorKind::permanent, "5.1.1 no such mailbox"),
                  options_);
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value());
    EXPECT_EQ(*n, 0u);
    EXPECT_EQ(names_in(dir(Area::quarantine)), (std::vector<std::string>{id, id + ".reason"}));
    std::string reason = slurp(dir(Area::quarantine) / (id + ".reason"));
    EXPECT_NE(reason.find("reason: 5.1.1 no such mailbox"), std::string::npos) << reason;
    EXPECT_NE(reason.find("stage: classify"), std::string::npos) << reason;
    auto s = load(dir(Area::quarantine) / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == body);
    EXPECT_EQ(s->env, envs_[id]) << "the quarantined file is the input, untouched";
    EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
    expect_active_clean();
}

TEST_P(RunnerTest, OtherNonTransientKindsQuarantineToo) {
    for (ErrorKind kind :
         {ErrorKind::corrupt, ErrorKind::config, ErrorKind::not_found, ErrorKind::conflict}) {
        std::string id = enqueue("classify", "k");
        StageRunner r(spool_, "classify", failing(kind, "kind"), options_);
        ASSERT_TRUE(r.drain(stop_).has_value());
        EXPECT_TRUE(fs::exists(dir(Area::quarantine) / id)) << to_string(kind);
    }
    EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
}

TEST_P(RunnerTest, CorruptFilesInQueueAreQuarantined) {
    std::atomic<int> calls{0};
    StageFunction counting = [&calls](const StageInput& in) -> Result<StageResult> {
        calls++;
        return pass_through("wrap")(in);
    };
    // Garbage, a truncated body, and a file whose name is not its envelope id.
    std::string garbage = new_queue_id(now_us());
    spit(spool_.queue_dir("classify") / garbage, "garbage\nbody 12\n");
    Envelope t = make_env();
    std::string full = encode_header(t, 100) + std::string(60, 'x');
    spit(spool_.queue_dir("classify") / t.id, full);
    Envelope m = make_env();
    std::string misnamed = new_queue_id(now_us());
    ASSERT_TRUE(write_at(spool_.queue_dir("classify") / misnamed, m, "m"));
    std::string good = enqueue("classify", "good");

    StageRunner r(spool_, "classify", counting, options_);
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 1u);
    EXPECT_EQ(calls.load(), 1) << "the stage must only see readable input";
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{good});
    for (const auto& id : {garbage, t.id, misnamed}) {
        EXPECT_TRUE(fs::exists(dir(Area::quarantine) / id)) << id;
        EXPECT_TRUE(fs::exists(dir(Area::quarantine) / (id + ".reason"))) << id;
    }
    EXPECT_NE(slurp(dir(Area::quarantine) / (misnamed + ".reason")).find(m.id), std::string::npos);
    EXPECT_EQ(slurp(dir(Area::quarantine) / t.id), full)
        << "quarantine keeps the bytes as they were";
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    expect_active_clean();
}

TEST_P(RunnerTest, InvalidFileNamesInQueueAreQuarantined) {
    std::string good = enqueue("classify", "good");
    for (std::string_view bad : {"junk.txt", "0000000000000.000000000000000X", "ABCDEF", "x-y"})
        spit(spool_.queue_dir("classify") / std::string(bad), "whatever");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value());
    EXPECT_EQ(*n, 1u);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{good});
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    auto q = names_in(dir(Area::quarantine));
    // Quarantined under generated names, each with a reason that records the original name.
    size_t files = 0, reasons = 0;
    std::string all_reasons;
    for (const auto& name : q) {
        if (name.ends_with(".reason")) {
            ++reasons;
            all_reasons += slurp(dir(Area::quarantine) / name);
        } else {
            ++files;
            EXPECT_EQ(slurp(dir(Area::quarantine) / name), "whatever");
        }
    }
    EXPECT_EQ(files, 4u);
    EXPECT_EQ(reasons, 4u);
    for (std::string_view bad : {"junk.txt", "ABCDEF", "x-y"})
        EXPECT_NE(all_reasons.find("original-name: " + std::string(bad)), std::string::npos) << bad;
    EXPECT_NE(all_reasons.find("unexpected file name"), std::string::npos);
    expect_active_clean();
}

// ---- crash recovery from hand-made states
// --------------------------------------------------------

class RecoveryTest : public RunnerTest {
  protected:
    // A claimed input: the file sits in active/classify.
    std::string claimed_input(const std::string& body, Envelope* env_out = nullptr) {
        Envelope env = make_env();
        if (!write_at(spool_.active_dir("classify") / env.id, env, body)) return {};
        bodies_[env.id] = body;
        envs_[env.id] = env;
        if (env_out) *env_out = env;
        return env.id;
    }
    // An output file as the runner writes it: beside its input, named after it (its id is the
    // input's followed by the part after '~').
    void output_beside(const std::string& input_id, std::string_view dest, const Envelope& env,
                       const std::string& body) {
        ASSERT_TRUE(env.id.starts_with(input_id));
        ASSERT_TRUE(write_at(
            spool_.active_dir("classify") /
                (input_id + ".out." + std::string(dest) + "~" + env.id.substr(input_id.size())),
            env, body));
    }
    // An output file as earlier versions wrote it, inside an output set directory.
    void output_in_set(const fs::path& set_dir, std::string_view dest, const Envelope& env,
                       const std::string& body) {
        fs::create_directories(set_dir);
        ASSERT_TRUE(write_at(set_dir / (std::string(dest) + "~" + env.id), env, body));
    }
    void run_recover(StageRunner& r) {
        auto st = r.recover();
        ASSERT_TRUE(st.has_value()) << st.error().message;
        expect_active_clean();
    }
};

INSTANTIATE_TEST_SUITE_P(spoolSync, RecoveryTest,
                         ::testing::Values(SyncMode::strict, SyncMode::batch),
                         [](const auto& info) {
                             return info.param == SyncMode::strict ? "strict" : "batch";
                         });

TEST_P(RecoveryTest, A_ClaimedInputWithoutOutputGoesBackToTheQueue) {
    std::string a = claimed_input(body_for(1));
    std::string b = claimed_input(body_for(2));
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("classify")),
              (std::vector<std::string>{std::min(a, b), std::max(a, b)}));
    EXPECT_TRUE(load(spool_.queue_dir("classify") / a)->body == bodies_[a]);
    EXPECT_TRUE(names_in(spool_.queue_dir("wrap")).empty());
    ASSERT_EQ(r.drain(stop_).value_or(99), 2u);
    expect_all_delivered_once(spool_.queue_dir("wrap"));
}

TEST_P(RecoveryTest, B_OutputsBesideTheirStillPresentInputAreDiscarded) {
    // The input is unlinked only once its outputs are durable: while it is there, they were
    // never committed, complete or not.
    Envelope env, second;
    std::string id = claimed_input(body_for(4), &env);
    second = env;
    second.id = derived_queue_id(id, "b");
    output_beside(id, "wrap", env, bodies_[id]);
    spit(spool_.active_dir("classify") / (id + ".out.verify~-b"),
         "PECQ1\nid " + second.id + "\narri");  // cut mid-write
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("classify")), std::vector<std::string>{id});
    EXPECT_TRUE(names_in(spool_.queue_dir("wrap")).empty())
        << "nothing of an uncommitted set may escape";
    EXPECT_TRUE(names_in(spool_.queue_dir("verify")).empty());
    EXPECT_TRUE(names_in(dir(Area::quarantine)).empty());
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    expect_all_delivered_once(spool_.queue_dir("wrap"));
}

TEST_P(RecoveryTest, C_OutputsWhoseInputIsGoneAreDelivered) {
    // The input's unlink committed them; the crash came before they moved on.
    Envelope env = make_env();
    std::string id = env.id;
    Envelope a = env, c = env;
    a.id = derived_queue_id(id, "a");
    c.id = derived_queue_id(id, "c");
    output_beside(id, "wrap", env, "first");
    output_beside(id, "verify", a, "second");
    output_beside(id, "outbox", c, "third");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id});
    EXPECT_EQ(names_in(spool_.queue_dir("verify")), std::vector<std::string>{a.id});
    EXPECT_EQ(names_in(spool_.outbox_dir()), std::vector<std::string>{c.id});
    EXPECT_EQ(load(spool_.queue_dir("wrap") / id)->body, "first");
    EXPECT_EQ(load(spool_.outbox_dir() / c.id)->body, "third");
    // One of them moved before the crash: the others finish, nothing twice.
    Envelope next = make_env(), moved = next;
    moved.id = derived_queue_id(next.id, "m");
    ASSERT_TRUE(write_at(spool_.queue_dir("verify") / moved.id, moved, "M"));
    output_beside(next.id, "wrap", next, "N");
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")).size(), 2u);
    EXPECT_EQ(names_in(spool_.queue_dir("verify")).size(), 2u);
    EXPECT_EQ(names_in(spool_.outbox_dir()).size(), 1u);
    EXPECT_TRUE(names_in(dir(Area::quarantine)).empty());
    ASSERT_EQ(r.drain(stop_).value_or(99), 0u);
}

TEST_P(RecoveryTest, C2_CommittedOutputsMoveOnlyOnceTheirInputsUnlinkIsDurable) {
    // Beside a leftover of an earlier version, so that the count of what was discarded cannot
    // stand in for the count of what was committed.
    Envelope half_env;
    std::string half = claimed_input(body_for(1), &half_env);
    fs::create_directories(spool_.active_dir("classify") / (half + ".out.tmp"));
    Envelope gone = make_env();
    output_beside(gone.id, "wrap", gone, "G");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    spy::moves = true;
    spy::start();
    auto st = r.recover();
    spy::stop();
    spy::moves = false;
    ASSERT_TRUE(st.has_value()) << st.error().message;
    std::vector<std::string> calls;
    {
        std::lock_guard lock(spy::mutex);
        calls = spy::calls;
    }
    const std::string active = fs::canonical(spool_.active_dir("classify")).string();
    auto moved = std::find_if(calls.begin(), calls.end(), [&](const std::string& c) {
        return c.starts_with("rename ") && c.ends_with("/queue/wrap/" + gone.id);
    });
    std::string order;
    for (const auto& c : calls) order += "  " + c + "\n";
    ASSERT_NE(moved, calls.end()) << order;
    if (GetParam() == SyncMode::strict) {
        EXPECT_NE(std::find(calls.begin(), moved, "fsync " + active), moved)
            << "active/ synced before the committed output moved\n"
            << order;
    }
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{gone.id});
    EXPECT_EQ(names_in(spool_.queue_dir("classify")), std::vector<std::string>{half});
}

TEST_P(RecoveryTest, C3_AFileLikeAnOutputForNoDestinationIsQuarantinedNotFatal) {
    // Named like an output whose input is gone, but for no destination pecd knows: recovery
    // sets it aside with the reason and goes on.
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool_.active_dir("classify") / (env.id + ".out.nowhere~"), env, "x"));
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    ASSERT_EQ(names_in(dir(Area::quarantine)),
              (std::vector<std::string>{env.id, env.id + ".reason"}));
    EXPECT_NE(slurp(dir(Area::quarantine) / (env.id + ".reason")).find("destination nowhere"),
              std::string::npos);
}

// Output sets of earlier versions: directories, committed by a rename.
TEST_P(RecoveryTest, B_HalfWrittenOutputSetIsDiscardedAndInputRequeued) {
    Envelope env;
    std::string id = claimed_input(body_for(4), &env);
    fs::path set = spool_.active_dir("classify") / (id + ".out.tmp");
    fs::create_directories(set);
    spit(set / ("wrap~" + id), "PECQ1\nid " + id + "\narri");  // cut mid-write
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_FALSE(fs::exists(set));
    EXPECT_EQ(names_in(spool_.queue_dir("classify")), std::vector<std::string>{id});
    EXPECT_TRUE(names_in(spool_.queue_dir("wrap")).empty())
        << "nothing of a half-written set may escape";
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    expect_all_delivered_once(spool_.queue_dir("wrap"));
}

TEST_P(RecoveryTest, C_CommittedOutputSetIsDeliveredAndInputRemoved) {
    Envelope env;
    std::string id = claimed_input(body_for(5), &env);
    fs::path set = spool_.active_dir("classify") / (id + ".out");
    Envelope a = env, c = env;
    a.id = derived_queue_id(id, "a");
    c.id = derived_queue_id(id, "c");
    output_in_set(set, "wrap", env, bodies_[id]);
    output_in_set(set, "verify", a, "second");
    output_in_set(set, "outbox", c, "third");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty())
        << "a committed input must not be re-run";
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id});
    EXPECT_EQ(names_in(spool_.queue_dir("verify")), std::vector<std::string>{a.id});
    EXPECT_EQ(names_in(spool_.outbox_dir()), std::vector<std::string>{c.id});
    EXPECT_TRUE(load(spool_.queue_dir("wrap") / id)->body == bodies_[id]);
    EXPECT_EQ(load(spool_.queue_dir("verify") / a.id)->body, "second");
    EXPECT_EQ(load(spool_.outbox_dir() / c.id)->body, "third");
    // Idempotent: a second recovery (crash during the first) changes nothing.
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")).size(), 1u);
    EXPECT_EQ(names_in(spool_.queue_dir("verify")).size(), 1u);
    EXPECT_EQ(names_in(spool_.outbox_dir()).size(), 1u);
    ASSERT_EQ(r.drain(stop_).value_or(99), 0u);
}

TEST_P(RecoveryTest, D_PartiallyDeliveredSetFinishesWithoutDuplicates) {
    for (bool input_still_there : {true, false}) {
        SCOPED_TRACE(input_still_there ? "input present" : "input already removed");
        Envelope env = make_env();
        std::string id = env.id;
        if (input_still_there) {
            ASSERT_TRUE(write_at(spool_.active_dir("classify") / id, env, "in"));
        }
        fs::path set = spool_.active_dir("classify") / (id + ".out");
        Envelope a = env, b = env;
        a.id = derived_queue_id(id, "a");
        b.id = derived_queue_id(id, "b");
        // Output a was already moved to its queue before the crash; b is still in the set.
        ASSERT_TRUE(write_at(spool_.queue_dir("wrap") / a.id, a, "A"));
        output_in_set(set, "verify", b, "B");
        StageRunner r(spool_, "classify", pass_through("wrap"), options_);
        run_recover(r);
        auto w = names_in(spool_.queue_dir("wrap"));
        EXPECT_EQ(std::count(w.begin(), w.end(), a.id), 1);
        auto v = names_in(spool_.queue_dir("verify"));
        EXPECT_EQ(std::count(v.begin(), v.end(), b.id), 1);
        EXPECT_EQ(load(spool_.queue_dir("verify") / b.id)->body, "B");
        EXPECT_FALSE(fs::exists(spool_.queue_dir("classify") / id));
        EXPECT_TRUE(names_in(dir(Area::quarantine)).empty());
    }
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")).size(), 2u);
    EXPECT_EQ(names_in(spool_.queue_dir("verify")).size(), 2u);
}

TEST_P(RecoveryTest, D2_FullyDeliveredButUnremovedSetIsDropped) {
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool_.queue_dir("wrap") / env.id, env, "delivered"));
    fs::create_directories(spool_.active_dir("classify") / (env.id + ".out"));
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{env.id});
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
}

TEST_P(RecoveryTest, E_DeferRewriteLeftoverIsRemoved) {
    Envelope env;
    std::string id = claimed_input(body_for(6), &env);
    Envelope rewritten = env;
    rewritten.attempts = 1;
    ASSERT_TRUE(
        write_at(spool_.active_dir("classify") / (id + ".defer.tmp"), rewritten, "partial"));
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("classify")), std::vector<std::string>{id});
    auto s = load(spool_.queue_dir("classify") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(s->env, env) << "the original input, not the uncommitted rewrite";
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    expect_all_delivered_once(spool_.queue_dir("wrap"));
}

TEST_P(RecoveryTest, AllCrashPointsAtOnce) {
    // Several inputs, each stopped at a different point, recovered together.
    std::string plain = claimed_input(body_for(1));
    Envelope tmp_env;
    std::string half = claimed_input(body_for(2), &tmp_env);
    fs::create_directories(spool_.active_dir("classify") / (half + ".out.tmp"));
    Envelope done_env;
    std::string done = claimed_input(body_for(3), &done_env);
    output_in_set(spool_.active_dir("classify") / (done + ".out"), "wrap", done_env, bodies_[done]);
    Envelope def_env;
    std::string def = claimed_input(body_for(4), &def_env);
    ASSERT_TRUE(write_at(spool_.active_dir("classify") / (def + ".defer.tmp"), def_env, "x"));
    Envelope beside_env;
    std::string beside = claimed_input(body_for(5), &beside_env);
    output_beside(beside, "wrap", beside_env, bodies_[beside]);
    Envelope gone_env = make_env();
    bodies_[gone_env.id] = body_for(6);
    envs_[gone_env.id] = gone_env;
    output_beside(gone_env.id, "wrap", gone_env, bodies_[gone_env.id]);
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    auto q = names_in(spool_.queue_dir("classify"));
    EXPECT_EQ(std::set<std::string>(q.begin(), q.end()),
              (std::set<std::string>{plain, half, def, beside}));
    auto w = names_in(spool_.queue_dir("wrap"));
    EXPECT_EQ(std::set<std::string>(w.begin(), w.end()),
              (std::set<std::string>{done, gone_env.id}));
    ASSERT_EQ(r.drain(stop_).value_or(99), 4u);
    expect_all_delivered_once(spool_.queue_dir("wrap"));
}

TEST_P(RecoveryTest, F_InputWithDurableInPlaceRouteMovesOn) {
    // Crash after the routing record was appended, before the rename: the hop is committed.
    Envelope env;
    std::string id = claimed_input(body_for(7), &env);
    std::string appended = encode_trailer_hist({"classify", now_us(), "-> verify"});
    {
        std::ofstream out(spool_.active_dir("classify") / id, std::ios::binary | std::ios::app);
        out << appended;
    }
    std::atomic<int> calls{0};
    StageRunner r(
        spool_, "classify",
        [&calls](const StageInput& in) -> Result<StageResult> {
            calls++;
            return pass_through("wrap")(in);
        },
        options_);
    run_recover(r);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty())
        << "a committed hop must not be re-run";
    EXPECT_EQ(names_in(spool_.queue_dir("verify")), std::vector<std::string>{id});
    ASSERT_EQ(r.drain(stop_).value_or(99), 0u);
    EXPECT_EQ(calls.load(), 0);
    auto s = load(spool_.queue_dir("verify") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == bodies_[id]);
    EXPECT_EQ(s->env.history.back().note, "-> verify");
}

TEST_P(RecoveryTest, G_TornAppendIsCutOffAndInputRequeued) {
    Envelope env;
    std::string id = claimed_input(body_for(8), &env);
    fs::path file = spool_.active_dir("classify") / id;
    uintmax_t original_size = fs::file_size(file);
    std::string record = encode_trailer_hist({"classify", now_us(), "-> wrap"});
    {
        std::ofstream out(file, std::ios::binary | std::ios::app);
        out << record.substr(0, record.size() - 3);
    }
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    EXPECT_EQ(names_in(spool_.queue_dir("classify")), std::vector<std::string>{id});
    EXPECT_EQ(fs::file_size(spool_.queue_dir("classify") / id), original_size)
        << "torn bytes not cut off";
    EXPECT_TRUE(names_in(spool_.queue_dir("wrap")).empty());
    ASSERT_EQ(r.drain(stop_).value_or(99), 1u);
    auto s = load(spool_.queue_dir("wrap") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_EQ(std::count_if(s->env.history.begin(), s->env.history.end(),
                            [](const HistoryEntry& h) { return h.stage == "classify"; }),
              1);
    auto info = read_header(spool_.queue_dir("wrap") / id);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->torn_size, 0u);
}

TEST_P(RecoveryTest, H_OnlyThisStagesRoutingRecordCommits) {
    // Records that are not this stage's routing (another stage's hop, a deferral note) do not.
    Envelope a_env, b_env;
    std::string a = claimed_input(body_for(1), &a_env);
    std::string b = claimed_input(body_for(2), &b_env);
    {
        std::ofstream out(spool_.active_dir("classify") / a, std::ios::binary | std::ios::app);
        out << encode_trailer_hist({"wrap", now_us(), "-> verify"});
    }
    {
        std::ofstream out(spool_.active_dir("classify") / b, std::ios::binary | std::ios::app);
        out << encode_trailer_hist({"classify", now_us(), "deferred: -> nothing"});
    }
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_recover(r);
    auto q = names_in(spool_.queue_dir("classify"));
    EXPECT_EQ(std::set<std::string>(q.begin(), q.end()), (std::set<std::string>{a, b}));
    EXPECT_TRUE(names_in(spool_.queue_dir("verify")).empty());
}

TEST(spoolRunnerFaults, AnOutputThatCannotBeRemovedKeepsItsInputInActive) {
    // The second output's write fails, and so does the unlink of the first: the input must not
    // be deferred (or quarantined) while an output of it sits beside where it was, or recovery
    // would take that output for committed and the retry would make it again.
    log::set_level(log::Level::error);
    TempDir dir;
    Spool spool = Spool::open(dir.path() / "spool", true).value();
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool.queue_dir("classify") / env.id, env, "body"));
    StageFunction two = [](const StageInput& in) -> Result<std::vector<StageOutput>> {
        Envelope a = in.env, b = in.env;
        b.id = derived_queue_id(in.env.id, "b");
        std::vector<StageOutput> out;
        out.push_back({"wrap", a, BodySource::from_bytes("first\r\n")});
        out.push_back({"verify", b, BodySource::from_bytes("second\r\n")});
        return out;
    };
    RunnerOptions options = small_options(SyncMode::batch);
    options.backoff_base = 0ms;
    std::atomic<bool> stop{false};
    StageRunner r(spool, "classify", two, options);
    ASSERT_TRUE(durable::set_faults("write=EIO@2x1,unlink=EIO@1x1"));
    auto failed = r.drain(stop);
    durable::clear_faults();
    EXPECT_FALSE(failed.has_value()) << "a batch that leaves an input in active/ reports it";
    EXPECT_TRUE(names_in(spool.area_dir(Area::deferred, "classify")).empty());
    EXPECT_TRUE(names_in(spool.area_dir(Area::quarantine, "classify")).empty());
    // The recovery that the failure brought removed the output and put the input back.
    EXPECT_TRUE(names_in(spool.active_dir("classify")).empty());
    EXPECT_EQ(names_in(spool.queue_dir("classify")), std::vector<std::string>{env.id});
    ASSERT_TRUE(r.recover().has_value());
    ASSERT_EQ(r.drain(stop).value_or(99), 1u);
    EXPECT_EQ(names_in(spool.queue_dir("wrap")), std::vector<std::string>{env.id});
    EXPECT_EQ(names_in(spool.queue_dir("verify")),
              std::vector<std::string>{derived_queue_id(env.id, "b")});
    EXPECT_EQ(load(spool.queue_dir("wrap") / env.id)->body, "first\r\n");
    EXPECT_TRUE(names_in(spool.active_dir("classify")).empty());
}

// ---- injected faults
// -----------------------------------------------------------------------------

struct FaultCase {
    SyncMode mode;
    const char* spec;
    bool rewrite = false;  // the stage writes a new file (output set) instead of an in-place hop
};

class FaultTest : public ::testing::TestWithParam<FaultCase> {};

std::string fault_case_name(const ::testing::TestParamInfo<FaultCase>& info) {
    std::string n = std::string(info.param.rewrite ? "rewrite_" : "inplace_") +
                    (info.param.mode == SyncMode::strict ? "strict_" : "batch_") + info.param.spec;
    for (auto& c : n)
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
    return n;
}

INSTANTIATE_TEST_SUITE_P(spoolFaults, FaultTest, ::testing::ValuesIn([] {
                             std::vector<FaultCase> cases;
                             for (bool rewrite : {false, true})
                                 for (auto [mode, spec] :
                                      std::vector<std::pair<SyncMode, const char*>>{
                                          {SyncMode::batch, "fsync=EIO"},
                                          {SyncMode::strict, "fsync=EIO"},
                                          {SyncMode::batch, "fsync=EIO@1x1"},
                                          {SyncMode::batch, "fsync=EIO@2x1"},
                                          {SyncMode::batch, "fsync=EIO@3x1"},
                                          {SyncMode::batch, "fsync=EIO@2"},
                                          {SyncMode::strict, "fsync=EIO@3x1"},
                                          {SyncMode::strict, "fsync=EIO@6x1"},
                                          {SyncMode::strict, "fsync=EIO@7"},
                                          {SyncMode::batch, "write=ENOSPC"},
                                          {SyncMode::strict, "write=ENOSPC@3"},
                                          {SyncMode::batch, "write=EIO@2x1"},
                                          {SyncMode::batch, "rename=EIO"},
                                          {SyncMode::batch, "rename=EIO@6x1"},
                                          {SyncMode::batch, "rename=EIO@9"},
                                          {SyncMode::strict, "rename=EIO@14x2"},
                                          {SyncMode::batch, "unlink=EIO"},
                                          {SyncMode::strict, "unlink=EIO@2x1"},
                                          {SyncMode::batch, "mkdir=EDQUOT@2x1"},
                                          {SyncMode::batch, "open=EMFILE@3x2"},
                                          {SyncMode::batch, "read=EIO@2"},
                                          {SyncMode::batch, "write=EIO@2x1,unlink=EIO@1x1"},
                                      })
                                     cases.push_back({mode, spec, rewrite});
                             return cases;
                         }()),
                         fault_case_name);

TEST_P(FaultTest, NothingLostNothingDuplicated) {
    log::set_level(log::Level::error);
    TempDir dir;
    auto opened = Spool::open(dir.path() / "spool", true);
    ASSERT_TRUE(opened.has_value());
    Spool spool = *opened;
    RunnerOptions options = small_options(GetParam().mode);
    options.backoff_base = 0ms;
    std::map<std::string, std::string> bodies;
    for (int i = 0; i < 10; ++i) {
        Envelope env = make_env();
        std::string body = body_for(i);
        ASSERT_TRUE(write_at(spool.tmp_dir() / env.id, env, body));
        fs::rename(spool.tmp_dir() / env.id, spool.queue_dir("classify") / env.id);
        bodies[env.id] = body;
    }
    std::atomic<bool> stop{false};
    ASSERT_TRUE(durable::set_faults(GetParam().spec));
    StageFunction fn = GetParam().rewrite ? copy_to("wrap") : pass_through("wrap");
    {
        StageRunner r(spool, "classify", fn, options);
        (void)r.drain(stop);
        (void)r.release_due_deferred();
        (void)r.drain(stop);
    }
    durable::clear_faults();

    // While faulted: every message is still somewhere (input in a classify area, or output).
    std::map<std::string, int> inputs, outputs;
    for (Area area : {Area::queue, Area::active, Area::deferred, Area::hold})
        for (const auto& n : names_in(spool.area_dir(area, "classify")))
            if (bodies.contains(n)) inputs[n]++;
    // An output beside its input is committed once the input is gone: "<in>.out.wrap~<suffix>".
    for (const auto& n : names_in(spool.active_dir("classify")))
        if (size_t infix = n.find(".out.");
            infix != std::string::npos &&
            !fs::exists(spool.active_dir("classify") / n.substr(0, infix)))
            outputs[n.substr(0, infix) + n.substr(n.find('~') + 1)]++;
    for (const auto& n : names_in(spool.queue_dir("wrap"))) outputs[n]++;
    for (const auto& [id, _] : bodies) {
        EXPECT_LE(inputs[id], 1) << id;
        EXPECT_LE(outputs[id], 1) << id << " delivered twice";
        EXPECT_GE(inputs[id] + outputs[id], 1) << id << " lost while the fault lasted";
    }
    if (std::string_view(GetParam().spec) == "fsync=EIO") {
        EXPECT_TRUE(names_in(spool.queue_dir("wrap")).empty())
            << "delivered before the batch was durable";
    }

    // After the fault: a restart (recover) and a few passes deliver everything exactly once.
    StageRunner r(spool, "classify", fn, options);
    for (int round = 0; round < 5; ++round) {
        auto st = r.recover();
        ASSERT_TRUE(st.has_value()) << st.error().message;
        ASSERT_TRUE(r.release_due_deferred().has_value());
        auto n = r.drain(stop);
        ASSERT_TRUE(n.has_value()) << n.error().message;
    }
    auto got = names_in(spool.queue_dir("wrap"));
    std::set<std::string> expected;
    for (const auto& [id, _] : bodies) expected.insert(id);
    EXPECT_EQ(std::set<std::string>(got.begin(), got.end()), expected);
    EXPECT_EQ(got.size(), bodies.size());
    for (const auto& id : got) {
        auto s = load(spool.queue_dir("wrap") / id);
        ASSERT_TRUE(s.has_value());
        EXPECT_TRUE(s->body == bodies[id]) << id;
    }
    EXPECT_TRUE(names_in(spool.active_dir("classify")).empty());
    EXPECT_TRUE(names_in(spool.queue_dir("classify")).empty());
    EXPECT_TRUE(names_in(spool.area_dir(Area::deferred, "classify")).empty());
    EXPECT_TRUE(names_in(spool.area_dir(Area::quarantine, "classify")).empty())
        << "a transient I/O fault must never quarantine mail";
}

// ---- durability ordering --------------------------------------------------------

TEST(spoolRunnerDurability, StrictModeSyncsOutputNamesAndCommitBeforeMoving) {
    // In `strict` mode the runner fdatasyncs the output files, but their names live in active/:
    // unless it is fsynced before the input's unlink (the commit), a power cut can leave the
    // input gone and its outputs lost; and unless the unlink is durable before an output moves
    // into a queue, the input can come back beside its delivered output and run twice.
    log::set_level(log::Level::error);
    TempDir dir;
    Spool spool = Spool::open(dir.path() / "spool", true).value();
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool.queue_dir("classify") / env.id, env, "body"));
    StageRunner r(spool, "classify", copy_to("wrap"), small_options(SyncMode::strict));
    std::atomic<bool> stop{false};
    spy::moves = true;
    spy::start();
    auto n = r.drain(stop);
    const std::vector<std::string> synced = spy::stop();
    spy::moves = false;
    ASSERT_EQ(n.value_or(99), 1u);
    fs::path active = fs::canonical(spool.active_dir("classify"));
    fs::path wrap = fs::canonical(spool.queue_dir("wrap"));
    auto was_synced = [&](const fs::path& p) {
        return std::find(synced.begin(), synced.end(), p.string()) != synced.end();
    };
    std::string all;
    for (const auto& s : synced) all += "  " + s + "\n";
    EXPECT_TRUE(was_synced(active)) << all;
    EXPECT_TRUE(was_synced(wrap)) << "the destination queue directory\n" << all;
    // In call order: active/ synced after the outputs were written and before the input's
    // unlink, and again after the unlink and before the output's move into wrap.
    std::vector<std::string> calls;
    {
        std::lock_guard lock(spy::mutex);
        calls = spy::calls;
    }
    auto at = [&](auto pred) {
        return std::find_if(calls.begin(), calls.end(), pred) - calls.begin();
    };
    const std::string input = "unlink " + spool.active_dir("classify").string() + "/" + env.id;
    const auto unlinked = at([&](const std::string& c) { return c == input; });
    const auto moved = at([&](const std::string& c) {
        return c.starts_with("rename ") && c.ends_with("/queue/wrap/" + env.id);
    });
    const auto active_synced_after = [&](std::ptrdiff_t from) {
        return at([&](const std::string& c) {
            return &c - calls.data() > from && c == "fsync " + active.string();
        });
    };
    std::string order;
    for (const auto& c : calls) order += "  " + c + "\n";
    ASSERT_LT(unlinked, static_cast<std::ptrdiff_t>(calls.size())) << order;
    ASSERT_LT(moved, static_cast<std::ptrdiff_t>(calls.size())) << order;
    const auto output_synced = at([&](const std::string& c) {
        return c.starts_with("fdatasync " + active.string() + "/" + env.id + ".out.wrap~");
    });
    EXPECT_LT(output_synced, unlinked) << "the output's data before the commit\n" << order;
    EXPECT_LT(active_synced_after(output_synced), unlinked)
        << "the outputs' names before the commit\n"
        << order;
    EXPECT_LT(active_synced_after(unlinked), moved) << "the commit before the move\n" << order;
}

TEST(spoolRunnerDurability, BatchModeIsAGroupCommit) {
    // Group commit: the number of syncfs calls per batch does not grow with the batch, and no
    // file or directory is fsynced one by one.
    log::set_level(log::Level::error);
    auto syncs_for = [](int messages) {
        TempDir dir;
        Spool spool = Spool::open(dir.path() / "spool", true).value();
        for (int i = 0; i < messages; ++i) {
            Envelope env = make_env();
            EXPECT_TRUE(write_at(spool.queue_dir("classify") / env.id, env, body_for(i)));
        }
        RunnerOptions o = small_options(SyncMode::batch);
        o.batch_size = 64;
        StageRunner r(spool, "classify", pass_through("wrap"), o);
        std::atomic<bool> stop{false};
        spy::syncfs_calls = 0;
        spy::start();
        auto n = r.drain(stop);
        const std::vector<std::string> synced = spy::stop();
        EXPECT_EQ(n.value_or(999), static_cast<size_t>(messages));
        EXPECT_EQ(names_in(spool.queue_dir("wrap")).size(), static_cast<size_t>(messages));
        EXPECT_TRUE(synced.empty()) << "per-file fsync in batch mode: " << synced.front();
        return spy::syncfs_calls.load();
    };
    int one = syncs_for(1);
    int many = syncs_for(40);
    EXPECT_GE(one, 1);
    EXPECT_LE(one, 3) << "at most one syncfs per ordering point";
    EXPECT_EQ(many, one) << "a batch of 40 must cost the same syncs as a batch of 1";
}

// ---- the batch commit: consumed inputs, published files, the folded log, the shared syncfs ----

// A stage that ends a message: no output at all. The input goes after the batch's flush and leaves
// no output set behind.
TEST_P(RunnerTest, AnInputWithoutOutputsIsRemovedWithoutAnOutputSet) {
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool_.queue_dir("receipt") / env.id, env, "x"));
    StageRunner r(
        spool_, "receipt", [](const StageInput&) -> Result<StageResult> { return StageResult{}; },
        options_);
    ASSERT_EQ(r.drain(stop_).value_or(0), 1u);
    EXPECT_TRUE(names_in(spool_.active_dir("receipt")).empty());
    EXPECT_TRUE(names_in(spool_.queue_dir("receipt")).empty());
    EXPECT_EQ(r.stats().processed.load(), 1u);
}

// What a stage writes outside the spool (a Maildir message) is published by the batch: content
// synced, renamed into place, before the outputs commit.
StageFunction publishing_to(fs::path dir, std::string destination) {
    return [dir, destination](const StageInput& in) -> Result<StageResult> {
        fs::path tmp = dir / "tmp" / in.env.id;
        spit(tmp, "delivered " + in.env.id);
        auto* batch = BatchPublisher::current();
        if (!batch) return fail(ErrorKind::permanent, "no batch publisher inside a runner");
        batch->publish(tmp, dir / "new" / in.env.id);
        std::vector<StageOutput> out;
        out.push_back(StageOutput{destination, in.env, in.body_source(), /*in_place=*/false});
        return StageResult(std::move(out));
    };
}

TEST_P(RunnerTest, PublishedFilesAreInPlaceWhenTheOutputsCommit) {
    EXPECT_EQ(BatchPublisher::current(), nullptr) << "no publisher outside a batch";
    fs::path box = dir_.path() / "mailbox";
    fs::create_directories(box / "tmp");
    fs::create_directories(box / "new");
    std::vector<std::string> ids;
    ASSERT_NO_FATAL_FAILURE(queue_inputs("deliver", 6, ids));
    StageRunner r(spool_, "deliver", publishing_to(box, "receipt"), options_);
    spy::start();
    ASSERT_EQ(r.drain(stop_).value_or(0), ids.size());
    const std::vector<std::string> synced = spy::stop();
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(names_in(box / "new"), ids);
    EXPECT_TRUE(names_in(box / "tmp").empty());
    EXPECT_EQ(names_in(spool_.queue_dir("receipt")), ids);
    // Strict: each published file and its directory are synced one by one.
    if (GetParam() == SyncMode::strict) {
        EXPECT_TRUE(spy::contains(synced, box / "new"));
    }
}

TEST_P(RunnerTest, AFailedPublishAbandonsTheBatchAndLeavesNoHalfDeliveredFile) {
    fs::path box = dir_.path() / "mailbox";
    fs::create_directories(box / "tmp");
    fs::create_directories(box / "new");
    Envelope env = make_env();
    ASSERT_TRUE(write_at(spool_.queue_dir("deliver") / env.id, env, "body"));
    // The first flush fails: the content of the published file is not known durable.
    ASSERT_TRUE(durable::set_faults("fsync=EIO@1x1"));
    {
        StageRunner r(spool_, "deliver", publishing_to(box, "receipt"), options_);
        EXPECT_FALSE(r.drain(stop_).has_value());
    }
    durable::clear_faults();
    EXPECT_TRUE(names_in(box / "new").empty()) << "published without a durable content";
    EXPECT_TRUE(names_in(box / "tmp").empty()) << "the unpublished file is removed";
    EXPECT_TRUE(names_in(spool_.queue_dir("receipt")).empty());
    EXPECT_EQ(names_in(spool_.queue_dir("deliver")), std::vector<std::string>{env.id})
        << "the input is back in its queue";
    // And the next run delivers it once.
    StageRunner again(spool_, "deliver", publishing_to(box, "receipt"), options_);
    ASSERT_EQ(again.drain(stop_).value_or(0), 1u);
    EXPECT_EQ(names_in(box / "new"), std::vector<std::string>{env.id});
}

// A file that cannot be put in place (its mailbox's new/ is gone) fails its own input, not the
// batch: the others commit, that one is deferred with its reason and an attempt counted, so that
// it can never hold the queue back, and its temporary file is removed.
TEST_P(RunnerTest, AFileThatCannotBePublishedDefersItsInputAloneAndTheBatchCommits) {
    fs::path good = dir_.path() / "good", broken = dir_.path() / "broken";
    for (const auto& box : {good, broken}) fs::create_directories(box / "tmp");
    fs::create_directories(good / "new");
    std::vector<std::string> ids;
    ASSERT_NO_FATAL_FAILURE(queue_inputs("deliver", 3, ids));
    const std::string unlucky = ids[1];
    StageFunction good_fn = publishing_to(good, "receipt"),
                  broken_fn = publishing_to(broken, "receipt");
    auto fn = [&](const StageInput& in) {
        return in.env.id == unlucky ? broken_fn(in) : good_fn(in);
    };
    StageRunner r(spool_, "deliver", fn, options_);
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 2u);
    std::vector<std::string> expected{ids[0], ids[2]};
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(names_in(good / "new"), expected);
    EXPECT_EQ(names_in(spool_.queue_dir("receipt")), expected);
    EXPECT_TRUE(names_in(broken / "tmp").empty()) << "the unpublished file is removed";
    EXPECT_EQ(names_in(dir(Area::deferred, "deliver")), std::vector<std::string>{unlucky});
    auto deferred = load(dir(Area::deferred, "deliver") / unlucky);
    ASSERT_TRUE(deferred.has_value());
    EXPECT_EQ(deferred->env.attempts, 1);
    EXPECT_NE(deferred->env.last_error.find("publishing"), std::string::npos)
        << deferred->env.last_error;
    EXPECT_TRUE(names_in(spool_.active_dir("deliver")).empty());
}

// A queue file handed over whole (the embedded outbox) gets a second name by link(2): no copy,
// in place when the batch commits, and a re-run finds its own link instead of failing.
TEST_P(RunnerTest, LinkedFilesAreInPlaceWhenTheInputIsConsumed) {
    fs::path outbox = dir_.path() / "outbox";
    fs::create_directories(outbox);
    std::vector<std::string> ids;
    ASSERT_NO_FATAL_FAILURE(queue_inputs("outbound", 5, ids));
    std::map<std::string, std::string> content;
    for (const auto& id : ids) content[id] = slurp(spool_.queue_dir("outbound") / id);
    auto hand_over = [&](const StageInput& in) -> Result<StageResult> {
        if (auto st = BatchPublisher::link_durably(in.path, outbox / in.env.id); !st)
            return std::unexpected(st.error());
        // Twice: the second finds the same file there (what a re-run after a crash does).
        if (auto st = BatchPublisher::link_durably(in.path, outbox / in.env.id); !st)
            return std::unexpected(st.error());
        return StageResult{};
    };
    StageRunner r(spool_, "outbound", hand_over, options_);
    spy::start();
    ASSERT_EQ(r.drain(stop_).value_or(0), ids.size());
    const std::vector<std::string> synced = spy::stop();
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(names_in(outbox), ids);
    for (const auto& id : ids) {
        EXPECT_EQ(slurp(outbox / id), content[id]) << "the queue file itself, unchanged";
        struct stat st {};
        ASSERT_EQ(::stat((outbox / id).c_str(), &st), 0);
        EXPECT_EQ(st.st_nlink, 1u) << "the input's name is gone, the outbox's is the only one";
    }
    EXPECT_TRUE(names_in(spool_.active_dir("outbound")).empty());
    EXPECT_TRUE(names_in(spool_.queue_dir("outbound")).empty());
    if (GetParam() == SyncMode::strict) {
        EXPECT_TRUE(spy::contains(synced, outbox))
            << "strict: the new names are synced before the inputs go";
    }
}

TEST(spoolRunnerDurability, LinkingOverAnotherFileIsAConflictAndChangesNothing) {
    TempDir dir;
    spit(dir.path() / "a", "first");
    spit(dir.path() / "b", "second");
    auto st = durable::link_file(dir.path() / "a", dir.path() / "b");
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().kind, ErrorKind::conflict);
    EXPECT_EQ(slurp(dir.path() / "b"), "second");
    ASSERT_TRUE(durable::link_file(dir.path() / "a", dir.path() / "c"));
    EXPECT_TRUE(durable::link_file(dir.path() / "a", dir.path() / "c"))
        << "same file: done already";
    EXPECT_EQ(slurp(dir.path() / "c"), "first");
    // Outside a batch the new name is synced at once.
    EXPECT_EQ(BatchPublisher::current(), nullptr);
    EXPECT_TRUE(BatchPublisher::link_durably(dir.path() / "a", dir.path() / "d"));
    EXPECT_EQ(slurp(dir.path() / "d"), "first");
}

// The legal log of a batch of output sets rides on the batch's syncfs (same filesystem); a batch
// of in-place hops carrying records syncs the log first, since their append is their commit.
TEST(spoolRunnerDurability, TheLegalLogSyncIsFoldedIntoTheBatchFlushOnlyWhenItIsSafe) {
    log::set_level(log::Level::error);
    auto log_syncs_for = [](bool in_place) {
        TempDir dir;
        Spool spool = Spool::open(dir.path() / "spool", true).value();
        auto enqueue = [&](int n) {
            for (int i = 0; i < n; ++i) {
                Envelope env = make_env();
                EXPECT_TRUE(write_at(spool.queue_dir("classify") / env.id, env, body_for(i)));
            }
        };
        StageFunction fn = [in_place](const StageInput& in) -> Result<StageResult> {
            std::vector<StageOutput> out;
            out.push_back(StageOutput{"wrap", in.env, in.body_source(), in_place});
            legallog::Record rec;
            rec.time_us = now_us();
            rec.event = legallog::Event::ricezione;
            rec.identificativo = in.env.id;
            rec.sender = in.env.sender;
            return StageResult(std::move(out), {rec});
        };
        StageRunner r(spool, "classify", fn, small_options(SyncMode::batch));
        legallog::WriterOptions wo;
        wo.directory = dir.path() / "spool" / "log";
        wo.node = "node";
        wo.stage = "classify";
        auto writer = legallog::Writer::open(wo);
        EXPECT_TRUE(writer.has_value());
        r.set_legal_log(std::move(*writer));
        std::atomic<bool> stop{false};
        // The first batch opens the day's file (a durable creation of its own); count after it.
        enqueue(1);
        EXPECT_EQ(r.drain(stop).value_or(0), 1u);
        enqueue(3);
        spy::start();
        EXPECT_EQ(r.drain(stop).value_or(0), 3u);
        const std::vector<std::string> synced = spy::stop();
        fs::path log_file = r.legal_log()->current_file();
        auto found = legallog::search(dir.path() / "spool" / "log", {});
        EXPECT_EQ(found ? found->size() : 0u, 4u) << "every record written";
        return std::count_if(synced.begin(), synced.end(),
                             [&](const std::string& s) { return fs::path(s) == log_file; });
    };
    EXPECT_EQ(log_syncs_for(/*in_place=*/false), 0) << "output sets: the batch's syncfs covers it";
    EXPECT_GE(log_syncs_for(/*in_place=*/true), 1) << "in-place hops: the log first";
}

TEST(spoolDurable, ConcurrentSharedSyncsShareFlushes) {
    TempDir dir;
    auto fd = durable::open_dir(dir.path());
    ASSERT_TRUE(fd.has_value());
    constexpr int kThreads = 8, kRounds = 20;
    spy::syncfs_calls = 0;
    spy::syncfs_delay_ms = 5;
    spy::recording = true;
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&] {
            for (int i = 0; i < kRounds; ++i)
                if (!durable::sync_filesystem_shared(fd->get())) failures++;
        });
    for (auto& t : threads) t.join();
    spy::recording = false;
    spy::syncfs_delay_ms = 0;
    EXPECT_EQ(failures.load(), 0);
    EXPECT_GE(spy::syncfs_calls.load(), kRounds) << "each call needs a flush started after it";
    EXPECT_LE(spy::syncfs_calls.load(), kThreads * kRounds / 2)
        << "callers arriving during a flush wait for the next one together";

    // A failing flush fails its callers; the next one succeeds again.
    ASSERT_TRUE(durable::set_faults("fsync=EIO@1x1"));
    EXPECT_FALSE(durable::sync_filesystem_shared(fd->get()).has_value());
    EXPECT_TRUE(durable::sync_filesystem_shared(fd->get()).has_value());
    durable::clear_faults();
}

// ---- the libuv loop
// ------------------------------------------------------------------------------

TEST_P(RunnerTest, EventLoopProcessesFilesDroppedWhileRunning) {
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    run_loop_until(
        r,
        [&] {
            for (int i = 0; i < 20; ++i) {
                enqueue("classify", body_for(i));
                if (i % 5 == 0) std::this_thread::sleep_for(20ms);
            }
        },
        [&] { return names_in(spool_.queue_dir("wrap")).size() >= 20; });
    expect_all_delivered_once(spool_.queue_dir("wrap"));
    expect_active_clean();
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
}

TEST_P(RunnerTest, EventLoopRetriesDeferredMessages) {
    options_.backoff_base = 0ms;
    std::atomic<int> calls{0};
    StageFunction flaky = [&calls](const StageInput& in) -> Result<StageResult> {
        if (calls++ == 0) return fail(ErrorKind::transient, "first try fails");
        return pass_through("wrap")(in);
    };
    StageRunner r(spool_, "classify", flaky, options_);
    std::string id = enqueue("classify", "retry me");
    run_loop_until(
        r, [] {}, [&] { return fs::exists(spool_.queue_dir("wrap") / id); });
    ASSERT_TRUE(fs::exists(spool_.queue_dir("wrap") / id));
    auto s = load(spool_.queue_dir("wrap") / id);
    ASSERT_TRUE(s.has_value());
    EXPECT_TRUE(s->body == "retry me");
    EXPECT_GE(calls.load(), 2);
}

TEST_P(RunnerTest, EventLoopTakesNewAndReturningFilesFromInotifyAlone) {
    // No rescan during the test: only inotify's names can bring the files in. Each input fails
    // once and comes back into the queue under its own name (released from deferred/), after
    // the event of its claim: neither may be taken for the other.
    options_.rescan_interval = 3'600'000ms;
    options_.backoff_base = 0ms;
    std::mutex mutex;
    std::set<std::string> failed_once;
    StageFunction flaky = [&](const StageInput& in) -> Result<StageResult> {
        {
            std::lock_guard lock(mutex);
            if (failed_once.insert(in.env.id).second)
                return fail(ErrorKind::transient, "first try fails");
        }
        return pass_through("wrap")(in);
    };
    StageRunner r(spool_, "classify", flaky, options_);
    run_loop_until(
        r,
        [&] {
            std::this_thread::sleep_for(50ms);  // past the start-up listing
            for (int i = 0; i < 12; ++i) {
                enqueue("classify", body_for(i));
                if (i % 4 == 0) std::this_thread::sleep_for(20ms);
            }
        },
        [&] { return names_in(spool_.queue_dir("wrap")).size() >= 12; });
    expect_all_delivered_once(spool_.queue_dir("wrap"));
    EXPECT_EQ(failed_once.size(), 12u);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    EXPECT_TRUE(names_in(dir(Area::deferred)).empty());
}

TEST_P(RunnerTest, DrainNamedTakesOnlyTheNamedFilesThatAreThere) {
    std::string a = enqueue("classify", body_for(1));
    std::string b = enqueue("classify", body_for(2));
    std::string c = enqueue("classify", body_for(3));
    std::string gone = make_env().id;  // a valid name with no file (an event already stale)
    std::string stranger = "junk.txt";
    spit(spool_.queue_dir("classify") / stranger, "whatever");
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);

    auto n = r.drain_named(stop_, {a, gone, stranger, c, a});
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 2u) << "a and c; a named twice is taken once";
    auto wrap = names_in(spool_.queue_dir("wrap"));
    EXPECT_EQ(std::set<std::string>(wrap.begin(), wrap.end()), (std::set<std::string>{a, c}));
    auto left = names_in(spool_.queue_dir("classify"));
    EXPECT_EQ(std::set<std::string>(left.begin(), left.end()), (std::set<std::string>{b, stranger}))
        << "b was not named; a stranger named by a hint waits for a listing";
    EXPECT_TRUE(names_in(dir(Area::quarantine)).empty());

    n = r.drain(stop_);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 1u);
    EXPECT_TRUE(names_in(spool_.queue_dir("classify")).empty());
    EXPECT_EQ(names_in(dir(Area::quarantine)).size(), 2u) << "the stranger and its reason";
    expect_all_delivered_once(spool_.queue_dir("wrap"));
    expect_active_clean();
}

TEST_P(RunnerTest, DrainNamedSkipsItsOwnClaimsEventButNotTheReturnThatFollows) {
    // What run() sees for a file that fails once and comes back from deferred/: the event of
    // the claim (moved out), then the event of the return (moved in), both with its name.
    options_.backoff_base = 0ms;
    int calls = 0;
    StageFunction flaky = [&calls](const StageInput& in) -> Result<StageResult> {
        if (calls++ == 0) return fail(ErrorKind::transient, "first try fails");
        return pass_through("wrap")(in);
    };
    StageRunner r(spool_, "classify", flaky, options_);
    r.set_track_own_claims(true);
    std::string id = enqueue("classify", "comes back");
    auto n = r.drain(stop_);
    ASSERT_TRUE(n.has_value()) << n.error().message;
    ASSERT_TRUE(fs::exists(dir(Area::deferred) / id)) << "deferred after its first try";
    auto released = r.release_due_deferred();
    ASSERT_TRUE(released.has_value());
    ASSERT_EQ(*released, 1u);
    ASSERT_TRUE(fs::exists(spool_.queue_dir("classify") / id));

    n = r.drain_named(stop_, {id});  // the claim's own event alone: skipped, not tried
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 0u);
    EXPECT_TRUE(fs::exists(spool_.queue_dir("classify") / id));
    n = r.drain_named(stop_, {id});  // the return's event
    ASSERT_TRUE(n.has_value()) << n.error().message;
    EXPECT_EQ(*n, 1u);
    EXPECT_EQ(names_in(spool_.queue_dir("wrap")), std::vector<std::string>{id});
    EXPECT_EQ(calls, 2);
    expect_active_clean();
}

TEST(spoolRunnerSettings, ScanIntervalsMustBeMoreThanZero) {
    for (const char* key : {"rescan_interval", "deferred_scan_interval"}) {
        auto config = Config::parse(std::string("[runner]\n") + key + " = 0s\n", "pecd.conf");
        ASSERT_TRUE(config.has_value());
        auto options = runner_options(*config);
        ASSERT_FALSE(options.has_value()) << key;
        EXPECT_NE(options.error().message.find(key), std::string::npos) << options.error().message;
    }
    auto config = Config::parse("[runner]\nrescan_interval = 2s\n", "pecd.conf");
    ASSERT_TRUE(config.has_value());
    auto options = runner_options(*config);
    ASSERT_TRUE(options.has_value()) << options.error().message;
    EXPECT_EQ(options->rescan_interval, 2000ms);
}

TEST_P(RunnerTest, EventLoopStopsPromptly) {
    StageRunner r(spool_, "classify", pass_through("wrap"), options_);
    stop_ = true;
    auto started = std::chrono::steady_clock::now();
    std::thread loop([&] { EXPECT_TRUE(r.run(stop_).has_value()); });
    loop.join();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
    // And stopping a running loop through wake().
    stop_ = false;
    std::thread loop2([&] { EXPECT_TRUE(r.run(stop_).has_value()); });
    std::this_thread::sleep_for(100ms);
    started = std::chrono::steady_clock::now();
    stop_ = true;
    r.wake();
    loop2.join();
    EXPECT_LT(std::chrono::steady_clock::now() - started, 5s);
}

namespace {
// pec-enqueue's commit of one message, with the flushes it made, in order.
std::pair<std::string, std::vector<std::string>> enqueue_recorded(const Spool& spool, bool strict) {
    int in = ::memfd_create("message", MFD_CLOEXEC);
    std::string message = "From: a@pec.alpha.test\r\nTo: b@pec.beta.test\r\n\r\nciao\r\n";
    EXPECT_EQ(::write(in, message.data(), message.size()), static_cast<ssize_t>(message.size()));
    ::lseek(in, 0, SEEK_SET);
    Envelope env;
    env.sender = "a@pec.alpha.test";
    env.recipients = {"b@pec.beta.test"};
    spy::start();
    auto id = enqueue_message(spool, env, in, {1 << 20, strict});
    spy::stop();
    ::close(in);
    EXPECT_TRUE(id) << (id ? "" : id.error().message);
    std::lock_guard lock(spy::mutex);
    return {id.value_or(""), spy::calls};
}
}  // namespace

TEST(spoolEnqueueDurability, OneJournalCommitWritesTheDataBackBeforeTheRenameAndFsyncsAfter) {
    // Default (batch) mode: the data reaches the device under the temporary name, the rename
    // into the queue follows, and one fsync of the file commits both (its inode changed with
    // the rename). No second flush for the directory.
    TempDir dir;
    Spool spool = Spool::open(dir.path() / "spool", true).value();
    auto [id, calls] = enqueue_recorded(spool, /*strict=*/false);
    const fs::path root = fs::canonical(spool.root());
    const fs::path queued = root / "queue" / "classify" / id;
    std::vector<std::string> want{
        "sync_file_range " + (fs::canonical(spool.tmp_dir()) / id).string(),
        "fsync " + queued.string()};
    EXPECT_EQ(calls, want);
    EXPECT_TRUE(fs::exists(queued));
    EXPECT_TRUE(names_in(spool.tmp_dir()).empty());
}

TEST(spoolEnqueueDurability, StrictModeFlushesTheDataThenTheDirectory) {
    TempDir dir;
    Spool spool = Spool::open(dir.path() / "spool", true).value();
    auto [id, calls] = enqueue_recorded(spool, /*strict=*/true);
    std::vector<std::string> want{"fdatasync " + (fs::canonical(spool.tmp_dir()) / id).string(),
                                  "fsync " + fs::canonical(spool.queue_dir("classify")).string()};
    EXPECT_EQ(calls, want);
    EXPECT_TRUE(fs::exists(spool.queue_dir("classify") / id));
}
