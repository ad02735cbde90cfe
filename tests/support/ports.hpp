// Loopback ports for test servers.
#pragma once

#include <chrono>

#include "stages/common/result.hpp"

namespace pecd::test {

// A port on 127.0.0.1 that was free a moment ago (bind to port 0, read it back, close). A server
// started on it may still lose a race with another process; fixtures retry on "in use".
Result<int> free_loopback_port();

// True when something accepts TCP connections on 127.0.0.1:`port`.
bool loopback_port_answers(int port);

// Waits (polling every 25 ms, up to `limit`) for a server just started on 127.0.0.1:`port`.
bool wait_for_loopback_port(int port, std::chrono::milliseconds limit = std::chrono::seconds(5));

}  // namespace pecd::test
