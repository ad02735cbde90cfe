// Durable file operations (Postfix/qmail discipline): write to a temporary name, fsync, rename,
// fsync the directory. Every system call that can lose mail goes through here, so that the fault
// injection hook can make any of them fail in tests (PECD_FAULTS, see faults_from_env).
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::durable {

namespace fs = std::filesystem;

// ---- fault injection -------------------------------------------------------------------------
// Operations that can be made to fail. A rule "fsync=EIO" fails every fsync with EIO;
// "write=ENOSPC@3" fails the 3rd and later writes; "rename=EIO@2x1" fails only the 2nd rename.
enum class Op { open, write, fsync, rename, mkdir, unlink, read };
struct FaultRule {
    Op op;
    int err;
    uint64_t after = 1;  // first failing call (1-based)
    uint64_t count = 0;  // how many calls fail; 0 = all from `after` on
};
Status set_faults(std::string_view spec);  // "op=ERRNO[@n][xk],op=..." ; empty clears
void clear_faults();
Status faults_from_env();  // reads PECD_FAULTS
bool inject(Op op);        // true (and errno set) when this call must fail

// ---- unique fd -------------------------------------------------------------------------------
class Fd {
  public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(other.release()) {}
    Fd& operator=(Fd&& other) noexcept {
        if (this != &other) reset(other.release());
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }
    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    int release() {
        int fd = fd_;
        fd_ = -1;
        return fd;
    }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

  private:
    int fd_ = -1;
};

// ---- wrapped system calls (errors as values, faults injectable) ------------------------------
Result<Fd> open_file(const fs::path& path, int flags, mode_t mode = 0600);
Result<Fd> open_dir(const fs::path& path);
Status write_all(int fd, std::string_view data);
Status pwrite_all(int fd, std::string_view data, off_t offset);
// Copies `size` bytes from in_fd at in_offset to the current position of out_fd (copy_file_range,
// falling back to read/write across filesystems).
Status copy_range(int in_fd, uint64_t in_offset, uint64_t size, int out_fd);
Status sync_data(int fd);  // fdatasync
// Writes the file's dirty data to the device and waits (sync_file_range): blocks allocated, no
// journal commit and no cache flush of its own. The next journal commit, which flushes the
// device cache first, then carries data and metadata together. fdatasync where unsupported.
Status write_back_data(int fd);
Status sync_file(int fd);  // fsync (metadata too: used for directories)
Status sync_dir(const fs::path& dir);
Status sync_data_at(const fs::path& path);  // open, fdatasync, close
Status sync_filesystem(int fd);  // syncfs: one journal commit for a whole batch (group commit)
// syncfs shared by the threads of this process on one filesystem: a caller returns once a syncfs
// that started after its call has succeeded, so concurrent stages of one `pecd all` wait for one
// flush instead of queueing one each. `device` is `fd`'s, when the caller knows it (one fstat
// fewer per flush); 0 looks it up.
Status sync_filesystem_shared(int fd, dev_t device = 0);
Status sync_filesystem_at(const fs::path& dir);  // open the directory, sync_filesystem_shared
Status rename_file(const fs::path& from, const fs::path& to);
// Fails with ErrorKind::conflict when `to` exists: never silently replaces a queue file.
Status rename_noreplace(const fs::path& from, const fs::path& to);
Status unlink_file(const fs::path& path);  // ENOENT is success (idempotent recovery)
// A second name for a complete file (link(2)): no copy, no new inode. `to` already naming this
// very file is success (a re-run after a crash); another file there is ErrorKind::conflict.
// Across filesystems the error carries EXDEV.
Status link_file(const fs::path& from, const fs::path& to);
Status make_dir(const fs::path& path, mode_t mode = 0700);  // EEXIST is success
// An empty directory at `path`: whatever an earlier attempt left there is removed first. One
// mkdir when there is nothing (the usual case), no lookup before it.
Status make_empty_dir(const fs::path& path, mode_t mode = 0700);
Status remove_dir(const fs::path& path);  // rmdir; ENOENT is success
Status remove_tree(const fs::path& path);
Result<std::string> read_file(const fs::path& path, uint64_t limit = UINT64_MAX);
Result<std::string> pread_exact(int fd, uint64_t offset, uint64_t size);

// Writes `data` to `path` durably: temporary sibling, fsync, rename, fsync of the directory.
Status write_file_atomic(const fs::path& path, std::string_view data);

// Directory listing that never throws: names only, "." and ".." skipped.
Result<std::vector<std::string>> list_dir(const fs::path& dir);

}  // namespace pecd::durable
