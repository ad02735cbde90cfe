#include "stages/scheduler/task_store.hpp"

#include <dirent.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <set>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"

namespace pecd::scheduler {
namespace {

constexpr std::string_view kTaskMagic = "PECT1";
constexpr uint64_t kMaxTaskFile = 1024 * 1024;

bool key_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

bool node_name_ok(std::string_view node) {
    return !node.empty() && node.size() <= 64 && std::ranges::all_of(node, key_char);
}

Result<int64_t> parse_int(std::string_view text, std::string_view what) {
    int64_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size() || text.empty())
        return fail(ErrorKind::corrupt, "bad number in '" + std::string(what) + "'");
    return value;
}

std::pair<std::string_view, std::string_view> split_key(std::string_view line) {
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) return {line, {}};
    return {line.substr(0, sp), line.substr(sp + 1)};
}

std::string hex16_sha256(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < 8; ++i) {
        out += kHex[md[i] >> 4];
        out += kHex[md[i] & 15];
    }
    return out;
}

// Temporaries get a per-process counter so that one process never reuses a name.
std::atomic<uint64_t> tmp_counter{0};

fs::path bucket_dir(const fs::path& pending, std::string_view bucket) {
    return pending / std::string(bucket);
}

}  // namespace

// ---- tasks -------------------------------------------------------------------------------------

std::optional<std::string> Task::arg(std::string_view name) const {
    for (const auto& [k, v] : args)
        if (k == name) return v;
    return std::nullopt;
}

void Task::set_arg(std::string name, std::string value) {
    for (auto& [k, v] : args)
        if (k == name) {
            v = std::move(value);
            return;
        }
    args.emplace_back(std::move(name), std::move(value));
}

bool is_valid_key(std::string_view key) {
    return !key.empty() && key.size() <= kMaxKeySize && key.front() != '.' &&
           std::ranges::all_of(key, key_char);
}

std::string timer_key(std::string_view kind, std::string_view identificativo,
                      std::string_view recipient) {
    return std::string(kind) + '.' + hex16_sha256(identificativo) + '.' + hex16_sha256(recipient);
}

std::string new_task_key(std::string_view op, int64_t now_us) {
    std::string prefix;
    for (char c : op) prefix += key_char(c) ? c : '_';
    if (prefix.empty() || prefix.front() == '.') prefix.insert(prefix.begin(), 't');
    if (prefix.size() > 64) prefix.resize(64);
    return prefix + '.' + spool::new_queue_id(now_us);
}

std::string encode_task(const Task& task) {
    std::string out;
    out.reserve(256);
    auto line = [&](std::string_view k, std::string_view v) {
        out.append(k);
        out += ' ';
        out.append(v);
        out += '\n';
    };
    out.append(kTaskMagic);
    out += '\n';
    line("key", task.key);
    line("op", spool::percent_encode(task.op));
    line("due", std::to_string(task.due_us));
    line("created", std::to_string(task.created_us));
    line("created-by", spool::percent_encode(task.created_by));
    line("attempts", std::to_string(task.attempts));
    line("last-error", spool::percent_encode(task.last_error));
    for (const auto& [k, v] : task.args)
        line("arg", spool::percent_encode(k) + ' ' + spool::percent_encode(v));
    out += "end\n";
    return out;
}

Result<Task> decode_task(std::string_view text) {
    Task task;
    bool magic = false, ended = false, have_key = false, have_due = false;
    while (!text.empty()) {
        size_t nl = text.find('\n');
        if (nl == std::string_view::npos)
            return fail(ErrorKind::corrupt, "task file: unterminated line");
        std::string_view line = text.substr(0, nl);
        text.remove_prefix(nl + 1);
        if (ended) return fail(ErrorKind::corrupt, "task file: data after 'end'");
        if (!magic) {
            if (line != kTaskMagic) return fail(ErrorKind::corrupt, "task file: not a PECT1 file");
            magic = true;
            continue;
        }
        if (line == "end") {
            ended = true;
            continue;
        }
        auto [k, v] = split_key(line);
        auto decoded = [&](std::string& into) -> Status {
            auto d = spool::percent_decode(v);
            if (!d) return std::unexpected(d.error());
            into = std::move(*d);
            return {};
        };
        Status st;
        if (k == "key") {
            task.key = std::string(v);
            have_key = true;
        } else if (k == "op") {
            st = decoded(task.op);
        } else if (k == "created-by") {
            st = decoded(task.created_by);
        } else if (k == "last-error") {
            st = decoded(task.last_error);
        } else if (k == "due" || k == "created" || k == "attempts") {
            auto n = parse_int(v, k);
            if (!n) return std::unexpected(n.error());
            if (k == "due")
                task.due_us = *n, have_due = true;
            else if (k == "created")
                task.created_us = *n;
            else
                task.attempts = static_cast<int>(*n);
        } else if (k == "arg") {
            auto [ak, av] = split_key(v);
            auto dk = spool::percent_decode(ak);
            auto dv = spool::percent_decode(av);
            if (!dk || !dv) return fail(ErrorKind::corrupt, "task file: bad arg record");
            task.args.emplace_back(std::move(*dk), std::move(*dv));
        } else {
            return fail(ErrorKind::corrupt, "task file: unknown record '" + std::string(k) + "'");
        }
        if (!st) return std::unexpected(st.error());
    }
    if (!ended) return fail(ErrorKind::corrupt, "task file: no 'end' record");
    if (!have_key || !is_valid_key(task.key))
        return fail(ErrorKind::corrupt, "task file: bad or missing key");
    if (!have_due) return fail(ErrorKind::corrupt, "task file: no due time");
    return task;
}

Result<Task> read_task(const fs::path& path) {
    auto text = durable::read_file(path, kMaxTaskFile);
    if (!text) return std::unexpected(text.error());
    auto task = decode_task(*text);
    if (!task) return context(task.error(), path.string());
    return task;
}

// ---- names -------------------------------------------------------------------------------------

std::string bucket_name(int64_t due_us) {
    int64_t floored = due_us >= 0 ? due_us / kBucketUs * kBucketUs : 0;
    time_t secs = static_cast<time_t>(floored / 1'000'000);
    struct tm tm {};
    gmtime_r(&secs, &tm);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%04d%02d%02dT%02d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1,
                  tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

bool is_bucket_name(std::string_view name) {
    if (name.size() != 15 || name[8] != 'T') return false;
    for (size_t i = 0; i < name.size(); ++i)
        if (i != 8 && (name[i] < '0' || name[i] > '9')) return false;
    return true;
}

std::string claim_name(std::string_view key, std::string_view node, int64_t pid,
                       int64_t claimed_us) {
    char tail[64];
    std::snprintf(tail, sizeof tail, "~%lld~%013llx", static_cast<long long>(pid),
                  static_cast<unsigned long long>(claimed_us));
    return std::string(key) + '~' + std::string(node) + tail;
}

std::optional<ClaimName> parse_claim_name(std::string_view name) {
    size_t t3 = name.rfind('~');
    if (t3 == std::string_view::npos || t3 == 0) return std::nullopt;
    size_t t2 = name.rfind('~', t3 - 1);
    if (t2 == std::string_view::npos || t2 == 0) return std::nullopt;
    size_t t1 = name.rfind('~', t2 - 1);
    if (t1 == std::string_view::npos) return std::nullopt;
    ClaimName c;
    c.key = std::string(name.substr(0, t1));
    c.node = std::string(name.substr(t1 + 1, t2 - t1 - 1));
    std::string_view pid = name.substr(t2 + 1, t3 - t2 - 1);
    std::string_view at = name.substr(t3 + 1);
    auto [p1, e1] = std::from_chars(pid.data(), pid.data() + pid.size(), c.pid);
    uint64_t us = 0;
    auto [p2, e2] = std::from_chars(at.data(), at.data() + at.size(), us, 16);
    if (e1 != std::errc() || p1 != pid.data() + pid.size() || e2 != std::errc() ||
        p2 != at.data() + at.size() || at.empty() || !is_valid_key(c.key) || !node_name_ok(c.node))
        return std::nullopt;
    c.claimed_us = static_cast<int64_t>(us);
    return c;
}

const char* to_string(TaskState state) {
    switch (state) {
        case TaskState::pending:
            return "pending";
        case TaskState::claimed:
            return "claimed";
        case TaskState::failed:
            return "failed";
    }
    return "?";
}

Status for_each_name(const fs::path& dir, const std::function<bool(std::string_view)>& fn) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return fail_errno("list " + dir.string());
    errno = 0;
    while (struct dirent* entry = ::readdir(d)) {
        std::string_view name(entry->d_name);
        if (name == "." || name == "..") continue;
        if (!fn(name)) break;
        errno = 0;
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return fail_errno("list " + dir.string(), err);
    return {};
}

// ---- the store ---------------------------------------------------------------------------------

Result<TaskStore> TaskStore::open(const fs::path& root, bool create) {
    TaskStore store(root);
    const fs::path dirs[] = {store.tmp_dir(),    store.pending_dir(), store.claimed_dir(),
                             store.failed_dir(), store.index_dir(),   store.cancelled_dir()};
    if (create) {
        if (auto st = durable::make_dir(root, 0755); !st) return std::unexpected(st.error());
        for (const auto& d : dirs)
            if (auto st = durable::make_dir(d, 0755); !st) return std::unexpected(st.error());
        if (auto st = durable::sync_dir(root); !st) return std::unexpected(st.error());
    }
    for (const auto& d : dirs) {
        struct stat sb {};
        if (::stat(d.c_str(), &sb) != 0 || !S_ISDIR(sb.st_mode))
            return fail(ErrorKind::config, root.string() + ": not a task directory (missing " +
                                               d.filename().string() + "/)");
    }
    return store;
}

Result<fs::path> TaskStore::write_tmp(const Task& task, std::string_view tag, bool sync) const {
    fs::path tmp =
        tmp_dir() / (task.key + '~' + std::string(tag) + '~' + std::to_string(::getpid()) + '~' +
                     std::to_string(tmp_counter.fetch_add(1)));
    auto fd = durable::open_file(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (!fd) return std::unexpected(fd.error());
    auto st = durable::write_all(fd->get(), encode_task(task));
    if (st && sync) st = durable::sync_data(fd->get());
    if (!st) {
        (void)::unlink(tmp.c_str());
        return std::unexpected(st.error());
    }
    return tmp;
}

Status TaskStore::set_index(std::string_view key, std::string_view bucket, bool sync) const {
    fs::path link = index_dir() / std::string(key);
    std::string target(bucket);
    if (::symlink(target.c_str(), link.c_str()) != 0) {
        if (errno != EEXIST) return fail_errno("index " + link.string());
        // Replace atomically: a reader sees the old or the new bucket, never nothing.
        fs::path tmp = link;
        tmp += "~" + std::to_string(::getpid()) + "~" + std::to_string(tmp_counter.fetch_add(1));
        if (::symlink(target.c_str(), tmp.c_str()) != 0) return fail_errno("index " + tmp.string());
        if (auto st = durable::rename_file(tmp, link); !st) {
            (void)::unlink(tmp.c_str());
            return st;
        }
    }
    if (sync) return durable::sync_dir(index_dir());
    return {};
}

std::optional<std::string> TaskStore::index_bucket(std::string_view key) const {
    fs::path link = index_dir() / std::string(key);
    char buf[64];
    ssize_t n = ::readlink(link.c_str(), buf, sizeof buf);
    if (n <= 0 || static_cast<size_t>(n) >= sizeof buf) return std::nullopt;
    std::string bucket(buf, static_cast<size_t>(n));
    if (!is_bucket_name(bucket)) return std::nullopt;
    return bucket;
}

Status TaskStore::remove_index(std::string_view key) const {
    // A task of the same key scheduled since keeps its entry.
    if (auto b = index_bucket(key)) {
        struct stat sb {};
        if (::stat((bucket_dir(pending_dir(), *b) / std::string(key)).c_str(), &sb) == 0) return {};
    }
    return durable::unlink_file(index_dir() / std::string(key));
}

Status TaskStore::ensure_bucket(const std::string& bucket) const {
    fs::path dir = bucket_dir(pending_dir(), bucket);
    if (durable::inject(durable::Op::mkdir)) return fail_errno("mkdir " + dir.string());
    if (::mkdir(dir.c_str(), 0755) == 0) return durable::sync_dir(pending_dir());
    if (errno == EEXIST) return {};
    return fail_errno("mkdir " + dir.string());
}

Status TaskStore::schedule(const Task& task, std::string_view node) {
    return schedule(std::span<const Task>(&task, 1), node);
}

Status TaskStore::schedule(std::span<const Task> tasks, std::string_view node) {
    if (!node_name_ok(node))
        return fail(ErrorKind::config, "bad node name '" + std::string(node) + "'");
    std::set<std::string_view> keys;
    for (const auto& t : tasks) {
        if (!is_valid_key(t.key)) return fail(ErrorKind::permanent, "bad task key '" + t.key + "'");
        if (t.op.empty()) return fail(ErrorKind::permanent, t.key + ": no operation");
        if (!keys.insert(t.key).second)
            return fail(ErrorKind::conflict, t.key + ": scheduled twice in one batch");
        if (auto b = index_bucket(t.key)) {
            struct stat sb {};
            if (::stat((bucket_dir(pending_dir(), *b) / t.key).c_str(), &sb) == 0)
                return fail(ErrorKind::conflict, t.key + ": already scheduled");
        }
    }
    const bool single = tasks.size() == 1;
    int64_t now = spool::now_us();
    // 1. Index entries first, durable, so that every pending task always has one: cancel never
    //    needs to search.
    for (const auto& t : tasks) {
        (void)durable::unlink_file(cancelled_dir() /
                                   t.key);  // a stale cancel must not hit the new task
        if (auto st = set_index(t.key, bucket_name(t.due_us), false); !st) return st;
    }
    if (auto st = durable::sync_dir(index_dir()); !st) return st;
    // 2. Task files in tmp/, data durable (one syncfs for a batch).
    std::vector<fs::path> tmps;
    auto drop_tmps = [&] {
        for (const auto& p : tmps) (void)::unlink(p.c_str());
    };
    for (const auto& t : tasks) {
        Task filled = t;
        if (filled.created_us == 0) filled.created_us = now;
        if (filled.created_by.empty()) filled.created_by = std::string(node);
        auto tmp = write_tmp(filled, "new", single);
        if (!tmp) {
            drop_tmps();
            return std::unexpected(tmp.error());
        }
        tmps.push_back(std::move(*tmp));
    }
    if (!single) {
        auto dir = durable::open_dir(tmp_dir());
        Status st =
            dir ? durable::sync_filesystem(dir->get()) : Status(std::unexpected(dir.error()));
        if (!st) {
            drop_tmps();
            return st;
        }
    }
    // 3. New buckets made (one fsync of pending/ for all), renames, then each bucket's
    //    directory durable.
    std::set<std::string> touched;
    bool created = false;
    for (const auto& t : tasks) {
        std::string bucket = bucket_name(t.due_us);
        if (!touched.insert(bucket).second) continue;
        fs::path dir = bucket_dir(pending_dir(), bucket);
        int rc = durable::inject(durable::Op::mkdir) ? -1 : ::mkdir(dir.c_str(), 0755);
        if (rc == 0) {
            created = true;
        } else if (errno != EEXIST) {
            auto err = fail_errno("mkdir " + dir.string());
            drop_tmps();
            return err;
        }
    }
    if (created)
        if (auto st = durable::sync_dir(pending_dir()); !st) {
            drop_tmps();
            return st;
        }
    for (size_t i = 0; i < tasks.size(); ++i) {
        std::string bucket = bucket_name(tasks[i].due_us);
        fs::path dest = bucket_dir(pending_dir(), bucket) / tasks[i].key;
        Status st;
        // A past bucket may be removed by a concurrent tidy between mkdir and rename: retry.
        for (int round = 0; round < 3; ++round) {
            st = durable::rename_file(tmps[i], dest);
            if (st || st.error().kind != ErrorKind::not_found) break;
            st = ensure_bucket(bucket);
            if (!st) break;
        }
        if (!st) {
            for (size_t j = i; j < tmps.size(); ++j) (void)::unlink(tmps[j].c_str());
            return st;
        }
    }
    for (const auto& b : touched)
        if (auto st = durable::sync_dir(bucket_dir(pending_dir(), b)); !st) return st;
    return {};
}

Result<std::optional<ClaimName>> TaskStore::find_claim(std::string_view key) const {
    std::optional<ClaimName> found;
    std::string prefix = std::string(key) + '~';
    auto st = for_each_name(claimed_dir(), [&](std::string_view name) {
        if (!name.starts_with(prefix)) return true;
        auto c = parse_claim_name(name);
        if (c && c->key == key) {
            found = std::move(c);
            return false;
        }
        return true;
    });
    if (!st) return std::unexpected(st.error());
    return found;
}

Status TaskStore::cancel(std::string_view key) {
    if (!is_valid_key(key))
        return fail(ErrorKind::permanent, "bad task key '" + std::string(key) + "'");
    bool marked = false;
    for (int round = 0; round < 4; ++round) {
        auto bucket = index_bucket(key);
        if (!bucket) {
            if (marked) return {};
            return fail(ErrorKind::not_found, std::string(key) + ": no such task");
        }
        fs::path dir = bucket_dir(pending_dir(), *bucket);
        fs::path file = dir / std::string(key);
        if (durable::inject(durable::Op::unlink)) return fail_errno("unlink " + file.string());
        if (::unlink(file.c_str()) == 0) {
            if (auto st = durable::sync_dir(dir); !st) return st;
            if (marked) (void)clear_cancel(key);
            return remove_index(key);
        }
        if (errno != ENOENT) return fail_errno("unlink " + file.string());
        auto claim = find_claim(key);
        if (!claim) return std::unexpected(claim.error());
        if (*claim) {
            if (marked) return {};
            // Running now: it finishes, but is neither retried nor rescheduled. Look again once
            // afterwards, in case its owner moved it back to pending before seeing the marker.
            if (auto st = durable::write_file_atomic(cancelled_dir() / std::string(key), ""); !st)
                return st;
            marked = true;
            continue;
        }
        auto again = index_bucket(key);
        if (again == bucket) {
            // Stale entry: its task finished or failed (a crash before the index was cleaned).
            (void)durable::unlink_file(index_dir() / std::string(key));
            if (marked) return {};
            return fail(ErrorKind::not_found, std::string(key) + ": no such task");
        }
    }
    if (marked) return {};
    return fail(ErrorKind::transient,
                std::string(key) + ": task kept moving while being cancelled");
}

Result<size_t> TaskStore::cancel_prefix(std::string_view prefix) {
    std::vector<std::string> keys;
    auto st = for_each_name(index_dir(), [&](std::string_view name) {
        if (name.starts_with(prefix) && is_valid_key(name)) keys.emplace_back(name);
        return true;
    });
    if (!st) return std::unexpected(st.error());
    size_t cancelled = 0;
    for (const auto& k : keys) {
        auto c = cancel(k);
        if (c)
            ++cancelled;
        else if (c.error().kind != ErrorKind::not_found)
            return std::unexpected(c.error());
    }
    return cancelled;
}

Result<TaskInfo> TaskStore::find(std::string_view key) const {
    if (!is_valid_key(key))
        return fail(ErrorKind::permanent, "bad task key '" + std::string(key) + "'");
    auto fill = [](TaskInfo& info, std::string_view k) {
        auto task = read_task(info.path);
        if (task)
            info.task = std::move(*task);
        else
            info.problem = task.error().message, info.task.key = std::string(k);
    };
    TaskInfo info;
    if (auto bucket = index_bucket(key)) {
        info.path = bucket_dir(pending_dir(), *bucket) / std::string(key);
        struct stat sb {};
        if (::stat(info.path.c_str(), &sb) == 0) {
            info.state = TaskState::pending;
            fill(info, key);
            return info;
        }
    }
    auto claim = find_claim(key);
    if (!claim) return std::unexpected(claim.error());
    if (*claim) {
        info.state = TaskState::claimed;
        info.path = claimed_dir() /
                    claim_name((*claim)->key, (*claim)->node, (*claim)->pid, (*claim)->claimed_us);
        info.claim = std::move(*claim);
        fill(info, key);
        return info;
    }
    info.path = failed_dir() / std::string(key);
    struct stat sb {};
    if (::stat(info.path.c_str(), &sb) == 0) {
        info.state = TaskState::failed;
        fill(info, key);
        return info;
    }
    return fail(ErrorKind::not_found, std::string(key) + ": no such task");
}

Status TaskStore::for_each(const ListOptions& options,
                           const std::function<bool(const TaskInfo&)>& fn) const {
    bool go_on = true;
    auto visit = [&](TaskState state, const fs::path& path, std::string_view key,
                     std::optional<ClaimName> claim) {
        if (!key.starts_with(options.key_prefix)) return true;
        TaskInfo info;
        info.state = state;
        info.path = path;
        info.claim = std::move(claim);
        auto task = read_task(path);
        if (task)
            info.task = std::move(*task);
        else if (task.error().kind == ErrorKind::not_found)
            return true;  // moved meanwhile
        else
            info.problem = task.error().message, info.task.key = std::string(key);
        go_on = fn(info);
        return go_on;
    };
    if (!options.state || *options.state == TaskState::pending) {
        std::vector<std::string> buckets;  // bounded by the scheduling horizon / 10 s
        if (auto st = for_each_name(pending_dir(),
                                    [&](std::string_view n) {
                                        if (is_bucket_name(n)) buckets.emplace_back(n);
                                        return true;
                                    });
            !st)
            return st;
        std::ranges::sort(buckets);
        for (const auto& b : buckets) {
            fs::path dir = bucket_dir(pending_dir(), b);
            auto st = for_each_name(dir, [&](std::string_view n) {
                return !is_valid_key(n) ||
                       visit(TaskState::pending, dir / std::string(n), n, std::nullopt);
            });
            if (!st && st.error().kind != ErrorKind::not_found) return st;
            if (!go_on) return {};
        }
    }
    if (!options.state || *options.state == TaskState::claimed) {
        auto st = for_each_name(claimed_dir(), [&](std::string_view n) {
            auto c = parse_claim_name(n);
            if (!c) return true;
            std::string key = c->key;
            return visit(TaskState::claimed, claimed_dir() / std::string(n), key, std::move(c));
        });
        if (!st) return st;
        if (!go_on) return {};
    }
    if (!options.state || *options.state == TaskState::failed) {
        auto st = for_each_name(failed_dir(), [&](std::string_view n) {
            return !is_valid_key(n) ||
                   visit(TaskState::failed, failed_dir() / std::string(n), n, std::nullopt);
        });
        if (!st) return st;
    }
    return {};
}

Status TaskStore::for_each_due(int64_t now_us, ScanStats& stats,
                               const std::function<bool(const DueEntry&)>& fn) const {
    const std::string now_bucket = bucket_name(now_us);
    std::vector<std::string> due;  // only the due buckets' names are kept
    if (auto st = for_each_name(pending_dir(),
                                [&](std::string_view n) {
                                    if (is_bucket_name(n) && n <= now_bucket) due.emplace_back(n);
                                    return true;
                                });
        !st)
        return st;
    std::ranges::sort(due);
    bool go_on = true;
    for (const auto& b : due) {
        fs::path dir = bucket_dir(pending_dir(), b);
        ++stats.buckets_listed;
        const bool partial = b == now_bucket;
        auto st = for_each_name(dir, [&](std::string_view n) {
            if (!is_valid_key(n)) return true;
            if (partial) {
                // The one bucket that may hold tasks due later than now.
                ++stats.files_read;
                auto task = read_task(dir / std::string(n));
                if (!task && task.error().kind == ErrorKind::not_found) return true;
                if (task && task->due_us > now_us) return true;
                // An unreadable task is passed on: its claimer moves it to failed/.
            }
            go_on = fn(DueEntry{b, std::string(n)});
            return go_on;
        });
        if (!st && st.error().kind != ErrorKind::not_found) return st;
        if (!go_on) break;
    }
    return {};
}

Result<fs::path> TaskStore::claim(const DueEntry& entry, std::string_view node, int64_t pid,
                                  int64_t now_us) {
    fs::path from = bucket_dir(pending_dir(), entry.bucket) / entry.key;
    fs::path to = claimed_dir() / claim_name(entry.key, node, pid, now_us);
    if (auto st = durable::rename_file(from, to); !st) return std::unexpected(st.error());
    return to;
}

Result<std::vector<ClaimName>> TaskStore::expired_claims(int64_t now_us, int64_t lease_us) const {
    std::vector<ClaimName> out;
    auto st = for_each_name(claimed_dir(), [&](std::string_view n) {
        auto c = parse_claim_name(n);
        if (c && c->claimed_us + lease_us <= now_us) out.push_back(std::move(*c));
        return true;
    });
    if (!st) return std::unexpected(st.error());
    return out;
}

Result<fs::path> TaskStore::reclaim(const ClaimName& old, std::string_view node, int64_t pid,
                                    int64_t now_us) {
    fs::path from = claimed_dir() / claim_name(old.key, old.node, old.pid, old.claimed_us);
    fs::path to = claimed_dir() / claim_name(old.key, node, pid, now_us);
    if (from == to) return to;
    if (auto st = durable::rename_file(from, to); !st) return std::unexpected(st.error());
    return to;
}

Result<fs::path> TaskStore::renew(const fs::path& claimed, std::string_view node, int64_t pid,
                                  int64_t now_us) {
    auto c = parse_claim_name(claimed.filename().string());
    if (!c) return fail(ErrorKind::permanent, claimed.string() + ": not a claim");
    return reclaim(*c, node, pid, now_us);
}

Status TaskStore::finish(const fs::path& claimed, std::string_view key) {
    if (auto st = durable::unlink_file(claimed); !st) return st;
    (void)durable::unlink_file(cancelled_dir() / std::string(key));
    return remove_index(key);
}

Status TaskStore::reschedule(const fs::path& claimed, const Task& updated) {
    // Rewrite in place (atomic replace of the claimed file), then one rename back to pending: a
    // crash leaves either the old claim (run again after its lease) or the new pending task.
    auto tmp = write_tmp(updated, "re", true);
    if (!tmp) return std::unexpected(tmp.error());
    if (auto st = durable::rename_file(*tmp, claimed); !st) {
        (void)::unlink(tmp->c_str());
        return st;
    }
    std::string bucket = bucket_name(updated.due_us);
    if (auto st = set_index(updated.key, bucket, true); !st) return st;
    fs::path dest = bucket_dir(pending_dir(), bucket) / updated.key;
    Status st;
    for (int round = 0; round < 3; ++round) {
        st = ensure_bucket(bucket);
        if (st) st = durable::rename_file(claimed, dest);
        if (st || st.error().kind != ErrorKind::not_found) break;
    }
    if (!st) return st;
    return durable::sync_dir(bucket_dir(pending_dir(), bucket));
}

Status TaskStore::fail_task(const fs::path& claimed, const Task& updated) {
    auto tmp = write_tmp(updated, "fail", true);
    if (!tmp) return std::unexpected(tmp.error());
    if (auto st = durable::rename_file(*tmp, claimed); !st) {
        (void)::unlink(tmp->c_str());
        return st;
    }
    if (auto st = durable::rename_file(claimed, failed_dir() / updated.key); !st) return st;
    if (auto st = durable::sync_dir(failed_dir()); !st) return st;
    (void)durable::unlink_file(cancelled_dir() / updated.key);
    return remove_index(updated.key);
}

bool TaskStore::cancel_requested(std::string_view key) const {
    struct stat sb {};
    return ::stat((cancelled_dir() / std::string(key)).c_str(), &sb) == 0;
}

Status TaskStore::clear_cancel(std::string_view key) {
    return durable::unlink_file(cancelled_dir() / std::string(key));
}

Status TaskStore::sync_claimed() const {
    return durable::sync_dir(claimed_dir());
}

Status TaskStore::tidy(int64_t now_us, int64_t max_age_us) {
    // Past buckets, one bucket of slack for writers that computed their bucket a moment ago.
    const std::string limit = bucket_name(now_us - kBucketUs);
    std::vector<std::string> past;
    if (auto st = for_each_name(pending_dir(),
                                [&](std::string_view n) {
                                    if (is_bucket_name(n) && n < limit) past.emplace_back(n);
                                    return true;
                                });
        !st)
        return st;
    for (const auto& b : past)
        (void)::rmdir(bucket_dir(pending_dir(), b).c_str());  // ENOTEMPTY: kept
    const time_t oldest = static_cast<time_t>((now_us - max_age_us) / 1'000'000);
    for (const fs::path& dir : {tmp_dir(), cancelled_dir()}) {
        std::vector<std::string> stale;
        auto st = for_each_name(dir, [&](std::string_view n) {
            struct stat sb {};
            std::string path = (dir / std::string(n)).string();
            if (::lstat(path.c_str(), &sb) == 0 && sb.st_mtime < oldest)
                stale.emplace_back(std::move(path));
            return true;
        });
        if (!st) return st;
        for (const auto& p : stale) (void)durable::unlink_file(p);
    }
    return {};
}

}  // namespace pecd::scheduler
