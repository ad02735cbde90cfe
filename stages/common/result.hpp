// Errors are values across the core (osquery style): every fallible call returns Result<T>.
#pragma once

#include <cerrno>
#include <cstring>
#include <expected>
#include <string>
#include <utility>

namespace pecd {

// What the caller should do about a failure; the stage runner maps these to deferred/quarantine.
enum class ErrorKind {
    transient,  // retry later (I/O hiccup, server down, disk full): goes to `deferred`
    permanent,  // this input will never succeed: goes to `quarantine` with the reason
    corrupt,    // unreadable/invalid stored data: quarantine
    config,     // bad configuration: refuse to start / EX_TEMPFAIL
    not_found,  // a looked-up thing is absent (often not an error for the caller)
    conflict,   // lost a race (claim taken by another worker, name exists)
};

const char* to_string(ErrorKind kind);

struct Error {
    ErrorKind kind = ErrorKind::permanent;
    std::string message;
    int sys_errno = 0;

    std::string describe() const;
};

template <class T>
using Result = std::expected<T, Error>;
using Status = std::expected<void, Error>;

inline std::unexpected<Error> fail(ErrorKind kind, std::string message, int sys_errno = 0) {
    return std::unexpected(Error{kind, std::move(message), sys_errno});
}

// A failed system call: ENOSPC/EIO/EDQUOT and friends are transient for mail (Postfix defers them).
inline std::unexpected<Error> fail_errno(std::string what, int err = errno) {
    ErrorKind kind = ErrorKind::transient;
    if (err == ENOENT) kind = ErrorKind::not_found;
    if (err == EEXIST) kind = ErrorKind::conflict;
    return std::unexpected(Error{kind, std::move(what) + ": " + std::strerror(err), err});
}

// Prefix context onto an error while propagating it.
inline std::unexpected<Error> context(const Error& e, const std::string& where) {
    return std::unexpected(Error{e.kind, where + ": " + e.message, e.sys_errno});
}

}  // namespace pecd
