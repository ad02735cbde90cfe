// Queue ids: "<arrival, 13 hex digits of microseconds since the epoch>.<64-bit random, 16 hex>".
// Unique across restarts and nodes without coordination, sortable by arrival, and the arrival
// time can be read from a bare directory listing (qshape-style summaries of a million files
// need no open()). Messages a stage derives from one input get "<input id>-<tag>" so a re-run
// after a crash produces the same names. File names never carry user input.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace pecd::spool {

int64_t now_us();
std::string new_queue_id(int64_t arrival_us);
// `tag`: 1-16 of [a-z0-9], e.g. "acc" or "r3". Deterministic for a given parent.
std::string derived_queue_id(std::string_view parent, std::string_view tag);
bool is_valid_queue_id(std::string_view id);
std::optional<int64_t> arrival_from_id(std::string_view id);

}  // namespace pecd::spool
