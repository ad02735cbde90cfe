#include "spool-layout/durable.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <array>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

namespace pecd::durable {
namespace {

struct FaultState {
    std::mutex mutex;
    std::vector<FaultRule> rules;
    std::array<uint64_t, 7> calls{};
    std::atomic<bool> active{false};
};
FaultState& faults() {
    static FaultState state;
    return state;
}

constexpr std::array<std::pair<Op, std::string_view>, 7> kOps{{{Op::open, "open"},
                                                               {Op::write, "write"},
                                                               {Op::fsync, "fsync"},
                                                               {Op::rename, "rename"},
                                                               {Op::mkdir, "mkdir"},
                                                               {Op::unlink, "unlink"},
                                                               {Op::read, "read"}}};

constexpr std::array<std::pair<int, std::string_view>, 6> kErrnos{{{EIO, "EIO"},
                                                                   {ENOSPC, "ENOSPC"},
                                                                   {EDQUOT, "EDQUOT"},
                                                                   {EROFS, "EROFS"},
                                                                   {EACCES, "EACCES"},
                                                                   {EMFILE, "EMFILE"}}};

}  // namespace

Status set_faults(std::string_view spec) {
    std::vector<FaultRule> rules;
    while (!spec.empty()) {
        size_t comma = spec.find(',');
        std::string_view item = spec.substr(0, comma);
        spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
        if (item.empty()) continue;
        size_t eq = item.find('=');
        if (eq == std::string_view::npos) return fail(ErrorKind::config, "fault rule without '='");
        FaultRule rule{};
        bool found_op = false;
        for (auto [op, name] : kOps)
            if (item.substr(0, eq) == name) rule.op = op, found_op = true;
        if (!found_op)
            return fail(ErrorKind::config, "unknown fault op in '" + std::string(item) + "'");
        std::string_view rest = item.substr(eq + 1);
        size_t at = rest.find('@');
        std::string_view err_name = rest.substr(0, at);
        bool found_err = false;
        for (auto [err, name] : kErrnos)
            if (err_name == name) rule.err = err, found_err = true;
        if (!found_err)
            return fail(ErrorKind::config, "unknown errno in '" + std::string(item) + "'");
        if (at != std::string_view::npos) {
            std::string_view when = rest.substr(at + 1);
            size_t x = when.find('x');
            std::string_view after = when.substr(0, x);
            std::from_chars(after.data(), after.data() + after.size(), rule.after);
            if (x != std::string_view::npos) {
                std::string_view count = when.substr(x + 1);
                std::from_chars(count.data(), count.data() + count.size(), rule.count);
            }
        }
        rules.push_back(rule);
    }
    auto& state = faults();
    std::lock_guard lock(state.mutex);
    state.rules = std::move(rules);
    state.calls.fill(0);
    state.active = !state.rules.empty();
    return {};
}

void clear_faults() {
    (void)set_faults("");
}

Status faults_from_env() {
    const char* spec = std::getenv("PECD_FAULTS");
    if (!spec || !*spec) return {};
    return set_faults(spec);
}

bool inject(Op op) {
    auto& state = faults();
    if (!state.active.load(std::memory_order_relaxed)) return false;
    std::lock_guard lock(state.mutex);
    uint64_t n = ++state.calls[static_cast<size_t>(op)];
    for (const auto& rule : state.rules) {
        if (rule.op != op || n < rule.after) continue;
        if (rule.count != 0 && n >= rule.after + rule.count) continue;
        errno = rule.err;
        return true;
    }
    return false;
}

Result<Fd> open_file(const fs::path& path, int flags, mode_t mode) {
    if (inject(Op::open)) return fail_errno("open " + path.string());
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    if (fd < 0) return fail_errno("open " + path.string());
    return Fd(fd);
}

Result<Fd> open_dir(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return fail_errno("open directory " + path.string());
    return Fd(fd);
}

Status write_all(int fd, std::string_view data) {
    while (!data.empty()) {
        if (inject(Op::write)) return fail_errno("write");
        ssize_t n = ::write(fd, data.data(), data.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("write");
        }
        data.remove_prefix(static_cast<size_t>(n));
    }
    return {};
}

Status pwrite_all(int fd, std::string_view data, off_t offset) {
    while (!data.empty()) {
        if (inject(Op::write)) return fail_errno("pwrite");
        ssize_t n = ::pwrite(fd, data.data(), data.size(), offset);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("pwrite");
        }
        data.remove_prefix(static_cast<size_t>(n));
        offset += n;
    }
    return {};
}

Status copy_range(int in_fd, uint64_t in_offset, uint64_t size, int out_fd) {
    loff_t off = static_cast<loff_t>(in_offset);
    bool use_copy_range = true;
    while (size > 0) {
        if (inject(Op::write)) return fail_errno("copy body");
        ssize_t n = -1;
        if (use_copy_range) {
            n = ::copy_file_range(in_fd, &off, out_fd, nullptr, size, 0);
            if (n < 0 &&
                (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
                use_copy_range = false;
                continue;
            }
        } else {
            char buf[65536];
            size_t want = size < sizeof buf ? size : sizeof buf;
            n = ::pread(in_fd, buf, want, off);
            if (n > 0) {
                if (auto st = write_all(out_fd, std::string_view(buf, static_cast<size_t>(n))); !st)
                    return st;
                off += n;
            }
        }
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("copy body");
        }
        if (n == 0)
            return fail(ErrorKind::corrupt, "copy body: input shorter than its header says");
        size -= static_cast<uint64_t>(n);
    }
    return {};
}

Status sync_data(int fd) {
    if (inject(Op::fsync)) return fail_errno("fdatasync");
    if (::fdatasync(fd) != 0) return fail_errno("fdatasync");
    return {};
}

Status write_back_data(int fd) {
    if (inject(Op::fsync)) return fail_errno("sync_file_range");
    constexpr unsigned kFlags =
        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;
    if (::sync_file_range(fd, 0, 0, kFlags) == 0) return {};
    if (errno == ENOSYS || errno == EINVAL || errno == ESPIPE || errno == EOPNOTSUPP)
        return sync_data(fd);
    return fail_errno("sync_file_range");
}

Status sync_file(int fd) {
    if (inject(Op::fsync)) return fail_errno("fsync");
    if (::fsync(fd) != 0) return fail_errno("fsync");
    return {};
}

Status sync_dir(const fs::path& dir) {
    auto fd = open_dir(dir);
    if (!fd) return std::unexpected(fd.error());
    if (auto st = sync_file(fd->get()); !st) return context(st.error(), dir.string());
    return {};
}

Status sync_data_at(const fs::path& path) {
    auto fd = open_file(path, O_RDONLY);
    if (!fd) return std::unexpected(fd.error());
    return sync_data(fd->get());
}

Status sync_filesystem(int fd) {
    if (inject(Op::fsync)) return fail_errno("syncfs");
    if (::syncfs(fd) != 0) return fail_errno("syncfs");
    return {};
}

namespace {
// One per filesystem: generations of syncfs calls, one in flight at a time.
struct SharedSync {
    std::mutex mutex;
    std::condition_variable done;
    bool in_flight = false;
    uint64_t started = 0;       // generations started
    uint64_t completed = 0;     // generations finished
    uint64_t last_success = 0;  // the newest generation that succeeded
    Error last_error{ErrorKind::transient, ""};
};

SharedSync& shared_sync_for(dev_t device) {
    static std::mutex registry_mutex;
    static std::map<dev_t, std::unique_ptr<SharedSync>> registry;
    std::lock_guard lock(registry_mutex);
    auto& slot = registry[device];
    if (!slot) slot = std::make_unique<SharedSync>();
    return *slot;
}
}  // namespace

Status sync_filesystem_shared(int fd, dev_t device) {
    if (device == 0) {
        struct stat st {};
        if (::fstat(fd, &st) != 0) return fail_errno("fstat");
        device = st.st_dev;
    }
    SharedSync& s = shared_sync_for(device);
    std::unique_lock lock(s.mutex);
    // Our writes are done: any syncfs that starts from now on covers them.
    const uint64_t target = s.started + 1;
    while (s.completed < target) {
        if (s.in_flight) {
            s.done.wait(lock);
            continue;
        }
        s.in_flight = true;
        const uint64_t generation = ++s.started;
        lock.unlock();
        Status result = sync_filesystem(fd);
        lock.lock();
        s.in_flight = false;
        s.completed = generation;
        if (result)
            s.last_success = generation;
        else
            s.last_error = result.error();
        s.done.notify_all();
    }
    // A later generation succeeding covers us too; only if every one since our call failed do we.
    if (s.last_success >= target) return {};
    return std::unexpected(s.last_error);
}

Status sync_filesystem_at(const fs::path& dir) {
    auto fd = open_dir(dir);
    if (!fd) return std::unexpected(fd.error());
    return sync_filesystem_shared(fd->get());
}

Status rename_file(const fs::path& from, const fs::path& to) {
    if (inject(Op::rename)) return fail_errno("rename " + from.string() + " -> " + to.string());
    if (::rename(from.c_str(), to.c_str()) != 0)
        return fail_errno("rename " + from.string() + " -> " + to.string());
    return {};
}

Status rename_noreplace(const fs::path& from, const fs::path& to) {
    if (inject(Op::rename)) return fail_errno("rename " + from.string() + " -> " + to.string());
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0)
        return fail_errno("rename " + from.string() + " -> " + to.string());
    return {};
}

Status link_file(const fs::path& from, const fs::path& to) {
    if (inject(Op::rename)) return fail_errno("link " + from.string() + " -> " + to.string());
    if (::link(from.c_str(), to.c_str()) == 0) return {};
    const int err = errno;
    if (err == EEXIST) {
        struct stat a {};
        struct stat b {};
        if (::stat(from.c_str(), &a) == 0 && ::stat(to.c_str(), &b) == 0 && a.st_dev == b.st_dev &&
            a.st_ino == b.st_ino)
            return {};
    }
    return fail_errno("link " + from.string() + " -> " + to.string(), err);
}

Status unlink_file(const fs::path& path) {
    if (inject(Op::unlink)) return fail_errno("unlink " + path.string());
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
        return fail_errno("unlink " + path.string());
    return {};
}

Status make_dir(const fs::path& path, mode_t mode) {
    if (inject(Op::mkdir)) return fail_errno("mkdir " + path.string());
    if (::mkdir(path.c_str(), mode) != 0 && errno != EEXIST)
        return fail_errno("mkdir " + path.string());
    return {};
}

Status make_empty_dir(const fs::path& path, mode_t mode) {
    if (inject(Op::mkdir)) return fail_errno("mkdir " + path.string());
    if (::mkdir(path.c_str(), mode) == 0) return {};
    if (errno != EEXIST) return fail_errno("mkdir " + path.string());
    if (auto st = remove_tree(path); !st) return st;
    return make_dir(path, mode);
}

Status remove_dir(const fs::path& path) {
    if (::rmdir(path.c_str()) != 0 && errno != ENOENT) return fail_errno("rmdir " + path.string());
    return {};
}

Status remove_tree(const fs::path& path) {
    std::error_code ec;
    fs::remove_all(path, ec);
    if (ec) return fail(ErrorKind::transient, "remove " + path.string() + ": " + ec.message());
    return {};
}

Result<std::string> read_file(const fs::path& path, uint64_t limit) {
    auto fd = open_file(path, O_RDONLY);
    if (!fd) return std::unexpected(fd.error());
    std::string out;
    char buf[65536];
    while (true) {
        if (inject(Op::read)) return fail_errno("read " + path.string());
        ssize_t n = ::read(fd->get(), buf, sizeof buf);
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read " + path.string());
        }
        if (n == 0) break;
        out.append(buf, static_cast<size_t>(n));
        if (out.size() > limit)
            return fail(ErrorKind::permanent, path.string() + ": larger than limit");
    }
    return out;
}

Result<std::string> pread_exact(int fd, uint64_t offset, uint64_t size) {
    std::string out(size, '\0');
    uint64_t done = 0;
    while (done < size) {
        if (inject(Op::read)) return fail_errno("read");
        ssize_t n = ::pread(fd, out.data() + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return fail_errno("read");
        }
        if (n == 0) return fail(ErrorKind::corrupt, "file shorter than expected");
        done += static_cast<uint64_t>(n);
    }
    return out;
}

Status write_file_atomic(const fs::path& path, std::string_view data) {
    fs::path tmp = path;
    tmp += ".tmp." + std::to_string(::getpid());
    {
        auto fd = open_file(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (!fd) return std::unexpected(fd.error());
        auto st = write_all(fd->get(), data);
        if (st) st = sync_data(fd->get());
        if (!st) {
            (void)::unlink(tmp.c_str());
            return st;
        }
    }
    if (auto st = rename_file(tmp, path); !st) {
        (void)::unlink(tmp.c_str());
        return st;
    }
    return sync_dir(path.parent_path().empty() ? fs::path(".") : path.parent_path());
}

Result<std::vector<std::string>> list_dir(const fs::path& dir) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return fail_errno("list " + dir.string());
    std::vector<std::string> names;
    errno = 0;
    while (struct dirent* entry = ::readdir(d)) {
        if (entry->d_name[0] == '.' &&
            (entry->d_name[1] == 0 || (entry->d_name[1] == '.' && entry->d_name[2] == 0)))
            continue;
        names.emplace_back(entry->d_name);
    }
    int err = errno;
    ::closedir(d);
    if (err != 0) return fail_errno("list " + dir.string(), err);
    return names;
}

}  // namespace pecd::durable
