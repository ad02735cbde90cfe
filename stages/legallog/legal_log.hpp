// The legal log (pec-rules §8): one line per PEC event, hash-chained, written durably by every
// stage process, closed daily (and at a size limit), sealed with an RFC 3161 time stamp (seal.hpp),
// kept 30 months. Format and discipline: docs/legal-log.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "spool-layout/durable.hpp"
#include "stages/common/config.hpp"
#include "stages/common/result.hpp"

namespace pecd::legallog {

namespace fs = std::filesystem;

enum class Event {
    accettazione,
    non_accettazione,
    busta_inviata,
    ricezione,  // a message taken in: a submission, or mail from outside for our users
    presa_in_carico,
    consegna,          // a message stored in a recipient's mailbox
    mancata_consegna,  // a recipient's mailbox refused it for good
    anomalia,
    virus,
    preavviso_12h,
    preavviso_24h,
    ricevuta_ricevuta,        // a valid receipt or notice received (receipt point)
    ricevuta_consegna,        // an avvenuta consegna emitted (delivery point)
    avviso_mancata_consegna,  // an avviso di mancata consegna emitted
    invio,                    // a PEC message handed to the next hop (outbound)
};
std::string_view to_string(Event event);  // "accettazione", "non-accettazione", ...
std::optional<Event> event_from_string(std::string_view name);

// One event. time_us is the transaction's single instant (DECISIONS #2); legal_time is derived from
// it when written ("dd/mm/yyyy hh:mm:ss (+0100)", Europe/Rome) and filled in when read back.
struct Record {
    int64_t time_us = 0;
    std::string legal_time;
    Event event = Event::accettazione;
    std::string identificativo;  // the PEC message id
    std::string message_id;      // the client's Message-ID
    std::string sender;
    std::vector<std::string> recipients;
    std::string subject;
    std::vector<std::string> related;  // ids of the messages produced (receipts, busta, ...)
    std::string provider;              // sending provider
    std::string node;                  // the writer fills node and stage
    std::string stage;
    std::string detail;  // error text, virus name, ...
    bool operator==(const Record&) const = default;
};

std::string italian_legal_time(int64_t time_us);  // "22/11/2026 13:08:01 (+0100)"
std::string day_of(int64_t time_us);              // "2026-11-22", Europe/Rome
std::string sha256_hex(std::string_view data);
inline constexpr std::string_view kGenesis =
    "0000000000000000000000000000000000000000000000000000000000000000";

using Clock = std::function<int64_t()>;  // microseconds since the epoch; injectable for tests
int64_t system_now_us();

struct WriterOptions {
    fs::path directory;
    std::string node;   // [a-z0-9-]+: part of file names
    std::string stage;  // [a-z0-9-]+
    uint64_t max_file_size = 64ull * 1024 * 1024;
    Clock clock;  // empty: system clock
};

// One writer per (node, stage) stream at a time, enforced by an flock held for the writer's life:
// the runner already runs one process per stage. Files: <day>.<node>.<stage>.<opened hex
// µs>.<pid>.log Group commit: a stage appends the records of a batch, the runner calls sync() once
// per batch; records are durable only once sync() succeeded. A failed write or sync cuts the file
// back to the last synced line, so the chain on disk never holds a torn or unsynced record the
// caller retries.
class Writer {
  public:
    static Result<std::unique_ptr<Writer>> open(WriterOptions options);
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

    Status append(std::span<const Record> records);
    Status append(const Record& record) { return append(std::span<const Record>(&record, 1)); }
    Status sync();
    // The appended records were made durable by other means (a syncfs of the log's filesystem,
    // which the runner's group commit does anyway): they count as synced.
    void mark_synced();
    // Those other means failed: cut the file back to its last synced line, as a failed sync()
    // does.
    Status drop_unsynced() { return cut_back(); }
    // The filesystem the log is on (st_dev): the runner folds the log's sync into its own syncfs
    // only when it is the spool's.
    dev_t device() const { return device_; }
    // Closes the current file when its day is over (the runner calls it when idle).
    Status rotate_if_due();
    // Closes the current file now (a close line, fdatasync); the next append opens a new file.
    Status close(std::string_view reason = "shutdown");
    const fs::path& current_file() const { return path_; }

  private:
    explicit Writer(WriterOptions options);
    Status open_new_file();
    Status close_current(std::string_view reason);
    Status cut_back();
    int64_t now() const;

    WriterOptions options_;
    durable::Fd lock_;
    dev_t device_ = 0;
    durable::Fd fd_;
    fs::path path_;
    std::string day_;
    uint64_t size_ = 0;         // bytes written
    uint64_t synced_size_ = 0;  // bytes known durable
    uint64_t seq_ = 0;          // line number of the last line written
    uint64_t synced_seq_ = 0;
    uint64_t records_ = 0;  // records in the current file
    uint64_t synced_records_ = 0;
    std::string head_;  // SHA-256 of the last line written
    std::string synced_head_;
    std::string last_file_;  // name of the previous file of this stream ("" for the first)
};

// ---- reading --------------------------------------------------------------------------------

// A log file name split into its parts; nullopt for anything else.
struct FileName {
    std::string day, node, stage;
    int64_t opened_us = 0;
    int64_t pid = 0;
    std::string stream() const { return node + "." + stage; }
};
std::optional<FileName> parse_file_name(std::string_view name);

// The log files of a directory (.log only), grouped by stream and in the order they were opened.
Result<std::vector<fs::path>> list_files(const fs::path& directory);

struct Found {
    fs::path file;
    size_t line = 0;
    Record record;
};
struct Query {
    std::string id;  // identificativo, Message-ID or related id
    std::string sender;
    std::string recipient;
    std::optional<int64_t> since_us, until_us;
};
Result<std::vector<Found>> search(const fs::path& directory, const Query& query);
// "YYYY-MM-DD", "YYYY-MM-DDTHH:MM[:SS]" (or a space for T) in UTC, or "@<µs since the epoch>".
// end_of_day: a bare day means its last microsecond (for --until).
Result<int64_t> parse_time_arg(std::string_view text, bool end_of_day);

// Whether a file ends with a close line (closed files are sealed and may expire).
struct FileState {
    bool closed = false;
    int64_t closed_us = 0;
    std::string final_hash;  // SHA-256 of the last complete line
};
Result<FileState> file_state(const fs::path& file);

// ---- verification -----------------------------------------------------------------------------

struct Problem {
    fs::path file;
    size_t line = 0;  // 0: the whole file (seal, missing predecessor)
    std::string message;
};
struct VerifyOptions {
    fs::path directory;
    fs::path ca_file;  // TSA trust anchor; empty: token imprints only, signatures not checked
    // When set: a closed file still without a seal this long after its close line is a problem
    // (the daily seal task is not running, or the TSA has been refusing for that long).
    std::optional<std::chrono::microseconds> max_seal_delay;
    int64_t now_us = 0;  // 0: the system clock
};
struct VerifyReport {
    size_t files = 0, records = 0, sealed = 0, unsealed_closed = 0, open = 0;
    size_t seal_overdue = 0;        // unsealed closed files past max_seal_delay
    std::vector<Problem> problems;  // in stream, file and line order: problems[0] is the first bad
    bool ok() const { return problems.empty(); }
};
Result<VerifyReport> verify(const VerifyOptions& options);

// ---- retention ----------------------------------------------------------------------------------

struct Retention {
    int months = 30;
    std::chrono::milliseconds extra{0};
};
Result<Retention> parse_retention(std::string_view text);  // "30months", "30mo", "900d", "12h"
int64_t add_retention(int64_t time_us, const Retention& retention);  // calendar months
struct RetentionReport {
    std::vector<fs::path> removed;
};
// Removes closed files whose close line is older than the retention period (with their seals);
// open files and anything younger are never touched.
Result<RetentionReport> remove_expired(const fs::path& directory, const Retention& retention,
                                       int64_t now_us);

// Closes the files left open by writers that are gone (their stream lock is free) once their day
// is over, so that they can be sealed. Returns the files closed.
Result<std::vector<fs::path>> close_stale_files(const fs::path& directory, int64_t now_us);

// ---- configuration ----------------------------------------------------------------------------

struct Settings {
    fs::path directory;
    std::string tsa_url;
    fs::path tsa_ca;
    std::string node;
    Retention retention;
    uint64_t max_file_size = 64ull * 1024 * 1024;
};
// [legallog] directory, tsa_url, tsa_ca, node (default: host name), retention, max_file_size.
Result<Settings> settings(const Config& config);

}  // namespace pecd::legallog
