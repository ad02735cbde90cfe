// One message = one queue file: a text envelope, then the raw message bytes.
//
//   PECQ1\n
//   id <queue id>\n
//   arrival <microseconds since epoch>\n
//   sender <MAIL FROM>\n             ("<>" for the null sender)
//   rcpt <RCPT TO>\n                 (repeated, in order)
//   user <authenticated user>\n      (empty when not authenticated)
//   client <client address>\n
//   attempts <n>\n
//   next-attempt <microseconds>\n
//   last-error <text>\n
//   hist <stage> <microseconds> <note>\n   (repeated: the stages passed)
//   attr <key> <value>\n                   (repeated: stage annotations, e.g. the PEC route)
//   body <20-digit size>\n
//   <exactly `size` bytes of message>
//   hist ... / attr ... / attempts, next-attempt, last-error\n
//                                          (trailer: records appended by in-place hops)
//
// Values are percent-encoded (bytes outside 0x21-0x7e, and '%'), so every field is one token and
// no user input can break the framing. The fixed-width body size lets pec-enqueue stream stdin
// and patch the size in place. A stage that routes a message unchanged appends its records after
// the body instead of rewriting the file (see StageRunner); readers merge them into the envelope.
// A file shorter than its header says is corrupt; a torn last trailer line (a crash during an
// append) is ignored and reported in `torn_size`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spool-layout/durable.hpp"
#include "stages/common/result.hpp"

namespace pecd::spool {

struct HistoryEntry {
    std::string stage;
    int64_t at_us = 0;
    std::string note;
    bool operator==(const HistoryEntry&) const = default;
};

struct Envelope {
    std::string id;
    int64_t arrival_us = 0;
    std::string sender;
    std::vector<std::string> recipients;
    std::string user;
    std::string client;
    int attempts = 0;
    int64_t next_attempt_us = 0;
    std::string last_error;
    std::vector<HistoryEntry> history;
    std::vector<std::pair<std::string, std::string>> attrs;

    std::optional<std::string> attr(std::string_view key) const;
    void set_attr(std::string key, std::string value);
    bool operator==(const Envelope&) const = default;
};

std::string percent_encode(std::string_view raw);
Result<std::string> percent_decode(std::string_view encoded);

constexpr std::string_view kQueueMagic = "PECQ1\n";
constexpr size_t kMaxHeaderSize = 4 * 1024 * 1024;
// bytes[offset, offset + size), or nullopt when `bytes` does not hold all of it.
inline std::optional<std::string_view> byte_range(std::string_view bytes, uint64_t offset,
                                                  uint64_t size) {
    if (offset > bytes.size() || size > bytes.size() - offset) return std::nullopt;
    return bytes.substr(offset, size);
}

// read_header's first read: the envelope, and the whole file when it is no larger (most
// receipts and notices are under 16 KB).
constexpr size_t kHeaderFirstRead = 32 * 1024;

// The envelope serialised, ending with the "body <size>\n" line.
std::string encode_header(const Envelope& env, uint64_t body_size);
// Offset of the size digits inside an encoded header (for patching after streaming the body).
size_t body_size_field_offset(std::string_view header);
std::string format_body_size(uint64_t size);

struct QueueFileInfo {
    Envelope env;
    uint64_t header_size = 0;
    uint64_t body_size = 0;
    uint64_t trailer_size = 0;  // complete trailer records after the body
    uint64_t torn_size = 0;     // bytes of an incomplete last trailer line
    // The file's first bytes as read_header read them (at most kHeaderFirstRead): for most
    // files (receipts, notices, small messages) the whole of it, so that the body and trailer
    // need no second read.
    std::string head;
    uint64_t body_offset() const { return header_size; }
    // The bytes [offset, offset + size) when `head` holds them.
    std::optional<std::string_view> cached(uint64_t offset, uint64_t size) const {
        return byte_range(head, offset, size);
    }
    uint64_t complete_size() const { return header_size + body_size + trailer_size; }
};

// One trailer record line ("hist <stage> <us> <note>\n" or "attr <key> <value>\n").
std::string encode_trailer_hist(const HistoryEntry& entry);
std::string encode_trailer_attr(std::string_view key, std::string_view value);
// Records that clear attempts, next-attempt and last-error.
std::string encode_trailer_retry_reset();

// Parses the envelope from an open file and checks the file length against it.
Result<QueueFileInfo> read_header(int fd, const std::string& name_for_errors);
Result<QueueFileInfo> read_header(const std::filesystem::path& path);
Result<std::string> read_body(int fd, const QueueFileInfo& info);

// Where an output's message bytes come from: owned bytes, or a range of another open file
// (a pass-through copies the input body with copy_file_range, never through memory).
struct BodySource {
    std::string bytes;
    int fd = -1;
    uint64_t offset = 0;
    uint64_t size = 0;
    static BodySource from_bytes(std::string b) {
        BodySource s;
        s.size = b.size();
        s.bytes = std::move(b);
        return s;
    }
    static BodySource from_file(int fd, uint64_t offset, uint64_t size) {
        BodySource s;
        s.fd = fd;
        s.offset = offset;
        s.size = size;
        return s;
    }
};

// Creates `path` (must not exist) and writes the queue file; the caller syncs and renames it.
Result<durable::Fd> write_queue_file(const std::filesystem::path& path, const Envelope& env,
                                     const BodySource& body);

}  // namespace pecd::spool
