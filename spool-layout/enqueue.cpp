#include "spool-layout/enqueue.hpp"

#include <sys/file.h>

#include <cstring>
#include <vector>

#include "spool-layout/queue_id.hpp"

namespace pecd::spool {

Result<std::string> enqueue_message(const Spool& spool, Envelope env, int in_fd,
                                    const EnqueueOptions& options) {
    env.arrival_us = now_us();
    env.id = new_queue_id(env.arrival_us);
    env.history.push_back({"enqueue", env.arrival_us, "pec-enqueue"});

    fs::path tmp = spool.tmp_dir() / env.id;
    auto fd = durable::open_file(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (!fd) return std::unexpected(fd.error());
    // The lock tells `pecd classify` start-up that this temporary file is still being written.
    ::flock(fd->get(), LOCK_EX);
    auto abandon = [&](Error e) -> Result<std::string> {
        ::unlink(tmp.c_str());
        return std::unexpected(std::move(e));
    };

    std::string header = encode_header(env, 0);
    if (auto st = durable::write_all(fd->get(), header); !st) return abandon(st.error());
    uint64_t size = 0;
    std::vector<char> buf(1 << 16);
    while (true) {
        ssize_t n = ::read(in_fd, buf.data(), buf.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return abandon({ErrorKind::transient,
                            std::string("reading the message: ") + std::strerror(errno), errno});
        }
        if (n == 0) break;
        size += static_cast<uint64_t>(n);
        if (size > options.max_size)
            return abandon({ErrorKind::permanent,
                            "5.3.4 message size exceeds the limit of " +
                                std::to_string(options.max_size) + " bytes",
                            0});
        if (auto st =
                durable::write_all(fd->get(), std::string_view(buf.data(), static_cast<size_t>(n)));
            !st)
            return abandon(st.error());
    }
    auto st = durable::pwrite_all(fd->get(), format_body_size(size),
                                  static_cast<off_t>(body_size_field_offset(header)));
    // Strict: the data is durable before its name exists. Otherwise it is at least written
    // back, so that any journal commit that carries the rename (ours below, or one another
    // process forces meanwhile) finds it on the device: never a name with an empty file.
    if (st)
        st = options.strict ? durable::sync_data(fd->get()) : durable::write_back_data(fd->get());
    if (!st) return abandon(st.error());
    fs::path queue = spool.queue_dir(kStages.front());
    if (auto moved = durable::rename_noreplace(tmp, queue / env.id); !moved)
        return abandon(moved.error());
    // The rename is the commit; the flush below makes it survive a power cut. If it fails the
    // file may or may not survive: withdraw it and report a transient failure (Postfix retries;
    // a duplicate at worst, if a stage took the file meanwhile).
    auto synced = options.strict ? durable::sync_dir(queue) : durable::sync_file(fd->get());
    if (!synced) {
        ::unlink((queue / env.id).c_str());
        return std::unexpected(synced.error());
    }
    return env.id;
}

}  // namespace pecd::spool
