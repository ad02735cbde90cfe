// What `pecq` does to a spool, as library calls (so the unit tests exercise the same code).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"

namespace pecd::spool {

struct QueueEntry {
    Area area = Area::queue;
    std::string stage;
    std::string id;
    int64_t arrival_us = 0;
    uint64_t size = 0;
    std::optional<Envelope> env;    // when read_envelopes; absent if unreadable
    std::string problem;            // why the envelope could not be read
    std::string quarantine_reason;  // from <id>.reason
};

struct ListOptions {
    std::optional<Area> area;
    std::optional<std::string> stage;
    bool read_envelopes = true;
};

Result<std::vector<QueueEntry>> list_entries(const Spool& spool, const ListOptions& options);

// qshape-style: counts per area/stage and age bucket, from directory listings only.
struct SummaryRow {
    std::string name;  // "queue/wrap", ...
    uint64_t total = 0;
    std::vector<uint64_t> buckets;  // counts per age bucket (see summary_bucket_labels)
};
std::vector<std::string> summary_bucket_labels();
Result<std::vector<SummaryRow>> summarize(const Spool& spool, int64_t now_us);

std::optional<std::string> quarantine_reason(const Spool& spool, const Location& where);

// Administrative moves (each one atomic rename; refuses files a stage has claimed).
Status hold(const Spool& spool, const std::string& id);
Status release(const Spool& spool, const std::string& id);  // hold -> queue
Status requeue(const Spool& spool,
               const std::string& id);  // deferred/quarantine/hold -> queue, attempts reset
Status remove(const Spool& spool, const std::string& id);

// True when no queue or active directory holds anything (deferred/hold/quarantine excluded).
Result<bool> is_idle(const Spool& spool);

// Removes pec-enqueue temporaries whose writer died (flock free, older than a minute).
Result<size_t> clean_stale_tmp(const Spool& spool);

}  // namespace pecd::spool
