#include "stages/transport/antivirus.hpp"

#include <algorithm>

namespace pecd::transport {

Result<ScanVerdict> parse_clamd_reply(std::string_view reply, size_t message_size) {
    while (!reply.empty() && (reply.back() == '\n' || reply.back() == '\0')) reply.remove_suffix(1);
    std::string text(reply);
    if (reply.starts_with("stream: ")) reply.remove_prefix(8);
    if (reply == "OK") return ScanVerdict{};
    if (reply.ends_with(" FOUND")) {
        ScanVerdict v;
        v.kind = ScanVerdict::Kind::infected;
        v.signature = std::string(reply.substr(0, reply.size() - 6));
        return v;
    }
    if (reply.find("size limit exceeded") != std::string_view::npos)
        // Retrying cannot make the message smaller: quarantine it with a reason the operator
        // can act on (raise StreamMaxLength in clamd.conf and requeue).
        return fail(ErrorKind::permanent, "clamd refused a message of " +
                                              std::to_string(message_size) + " bytes: '" + text +
                                              "' (raise StreamMaxLength)");
    return fail(ErrorKind::transient, "clamd: unexpected reply '" + text + "'");
}

Result<ScanVerdict> ClamdScanner::scan(std::string_view message) {
    auto conn = Connection::open(options_.endpoint, options_.connect_timeout);
    if (!conn) return context(conn.error(), "clamd");
    std::string out("zINSTREAM", 10);  // includes the terminating NUL
    out.reserve(10 + message.size() + (message.size() / options_.chunk_size + 2) * 4);
    auto frame = [&out](uint32_t n) {
        const char be[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16),
                            static_cast<char>(n >> 8), static_cast<char>(n)};
        out.append(be, 4);
    };
    for (size_t pos = 0; pos < message.size(); pos += options_.chunk_size) {
        auto chunk = message.substr(pos, options_.chunk_size);
        frame(static_cast<uint32_t>(chunk.size()));
        out.append(chunk);
    }
    frame(0);
    auto written = conn->write(out, options_.scan_timeout);
    // clamd answers "INSTREAM size limit exceeded" and closes while we are still sending: a
    // failed write may still leave its reply to read.
    auto reply = conn->read_until('\0', options_.scan_timeout);
    if (!reply) return context(written ? reply.error() : written.error(), "clamd");
    return parse_clamd_reply(*reply, message.size());
}

}  // namespace pecd::transport
