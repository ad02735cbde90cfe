// Committing a new message into queue/classify: what pec-enqueue does, as a library call (the
// bench and tests use it without spawning a process).
#pragma once

#include <cstdint>
#include <string>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"

namespace pecd::spool {

// Streams `in_fd` into tmp/<id> (flock'd while written), patches the size, fdatasyncs, renames
// into queue/classify and fsyncs the directory. Returns the queue id once the file is durable.
// Over `max_size`: ErrorKind::permanent ("5.3.4 ..."). Any other failure leaves nothing behind.
// `env.id` and `env.arrival_us` are assigned here.
Result<std::string> enqueue_message(const Spool& spool, Envelope env, int in_fd, uint64_t max_size);

}  // namespace pecd::spool
