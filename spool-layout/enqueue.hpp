// Committing a new message into queue/classify: what pec-enqueue does, as a library call (the
// bench and tests use it without spawning a process).
#pragma once

#include <cstdint>
#include <string>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"

namespace pecd::spool {

struct EnqueueOptions {
    uint64_t max_size = 100ull << 20;
    // strict ([runner] sync = strict): fdatasync the file, rename it into the queue, fsync the
    // directory: two flushes, on any POSIX filesystem. Otherwise one journal commit: the data is
    // written back first (durable::write_back_data), then the rename, then an fsync of the file,
    // whose commit carries the rename (the rename changes the file's inode: ext4, XFS).
    bool strict = false;
};

// Streams `in_fd` into tmp/<id> (flock'd while written), patches the size and commits it into
// queue/classify (see EnqueueOptions). Returns the queue id once the file is durable. Over
// `max_size`: ErrorKind::permanent ("5.3.4 ..."). Any other failure leaves nothing behind.
// `env.id` and `env.arrival_us` are assigned here.
Result<std::string> enqueue_message(const Spool& spool, Envelope env, int in_fd,
                                    const EnqueueOptions& options);

}  // namespace pecd::spool
