#include "spool-layout/queue_file.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <cstdio>

namespace pecd::spool {
namespace {

bool needs_escape(unsigned char c) {
    return c < 0x21 || c > 0x7e || c == '%';
}

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

Result<int64_t> parse_int(std::string_view text, const std::string& what) {
    int64_t value = 0;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size())
        return fail(ErrorKind::corrupt, "bad number in '" + what + "'");
    return value;
}

// Splits "key rest" at the first space.
std::pair<std::string_view, std::string_view> split_key(std::string_view line) {
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) return {line, {}};
    return {line.substr(0, sp), line.substr(sp + 1)};
}

// A history or attribute record, from the envelope or from the trailer.
Status apply_record(Envelope& env, std::string_view key, std::string_view value) {
    if (key == "hist") {
        auto [stage, more] = split_key(value);
        auto [at, note] = split_key(more);
        auto s = percent_decode(stage);
        auto t = parse_int(at, "hist");
        auto n = percent_decode(note);
        if (!s || !t || !n) return fail(ErrorKind::corrupt, "bad history line");
        env.history.push_back({std::move(*s), *t, std::move(*n)});
        return {};
    }
    if (key == "attr") {
        auto [k, v] = split_key(value);
        auto dk = percent_decode(k);
        auto dv = percent_decode(v);
        if (!dk || !dv) return fail(ErrorKind::corrupt, "bad attr line");
        env.set_attr(std::move(*dk), std::move(*dv));
        return {};
    }
    // Retry state reset by an in-place hop (the next stage starts with a clean slate).
    if (key == "attempts" || key == "next-attempt") {
        auto n = parse_int(value, std::string(key));
        if (!n) return std::unexpected(n.error());
        if (key == "attempts")
            env.attempts = static_cast<int>(*n);
        else
            env.next_attempt_us = *n;
        return {};
    }
    if (key == "last-error") {
        auto v = percent_decode(value);
        if (!v) return std::unexpected(v.error());
        env.last_error = std::move(*v);
        return {};
    }
    return fail(ErrorKind::corrupt, "unknown record '" + std::string(key) + "'");
}

}  // namespace

std::optional<std::string> Envelope::attr(std::string_view key) const {
    for (const auto& [k, v] : attrs)
        if (k == key) return v;
    return std::nullopt;
}

void Envelope::set_attr(std::string key, std::string value) {
    for (auto& [k, v] : attrs)
        if (k == key) {
            v = std::move(value);
            return;
        }
    attrs.emplace_back(std::move(key), std::move(value));
}

std::string percent_encode(std::string_view raw) {
    static const char* digits = "0123456789ABCDEF";
    std::string out;
    out.reserve(raw.size());
    for (unsigned char c : raw) {
        if (needs_escape(c)) {
            out += '%';
            out += digits[c >> 4];
            out += digits[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

Result<std::string> percent_decode(std::string_view encoded) {
    std::string out;
    out.reserve(encoded.size());
    for (size_t i = 0; i < encoded.size(); ++i) {
        char c = encoded[i];
        if (c != '%') {
            out += c;
            continue;
        }
        if (i + 2 >= encoded.size()) return fail(ErrorKind::corrupt, "truncated percent escape");
        int hi = hex_value(encoded[i + 1]), lo = hex_value(encoded[i + 2]);
        if (hi < 0 || lo < 0) return fail(ErrorKind::corrupt, "bad percent escape");
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

std::string format_body_size(uint64_t size) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "%020llu", static_cast<unsigned long long>(size));
    return buf;
}

std::string encode_header(const Envelope& env, uint64_t body_size) {
    std::string h(kQueueMagic);
    auto line = [&h](std::string_view key, std::string_view value) {
        h += key;
        h += ' ';
        h += value;
        h += '\n';
    };
    line("id", env.id);
    line("arrival", std::to_string(env.arrival_us));
    line("sender", percent_encode(env.sender));
    for (const auto& r : env.recipients) line("rcpt", percent_encode(r));
    line("user", percent_encode(env.user));
    line("client", percent_encode(env.client));
    line("attempts", std::to_string(env.attempts));
    line("next-attempt", std::to_string(env.next_attempt_us));
    line("last-error", percent_encode(env.last_error));
    for (const auto& e : env.history)
        line("hist", percent_encode(e.stage) + ' ' + std::to_string(e.at_us) + ' ' +
                         percent_encode(e.note));
    for (const auto& [k, v] : env.attrs) line("attr", percent_encode(k) + ' ' + percent_encode(v));
    line("body", format_body_size(body_size));
    return h;
}

size_t body_size_field_offset(std::string_view header) {
    return header.size() - 21;
}

std::string encode_trailer_hist(const HistoryEntry& e) {
    return "hist " + percent_encode(e.stage) + ' ' + std::to_string(e.at_us) + ' ' +
           percent_encode(e.note) + '\n';
}

std::string encode_trailer_attr(std::string_view key, std::string_view value) {
    return "attr " + percent_encode(key) + ' ' + percent_encode(value) + '\n';
}

std::string encode_trailer_retry_reset() {
    return "attempts 0\nnext-attempt 0\nlast-error \n";
}

Result<QueueFileInfo> read_header(int fd, const std::string& name) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return fail_errno("stat " + name);
    uint64_t file_size = static_cast<uint64_t>(st.st_size);
    // Envelopes are small; read a first chunk and grow only for huge recipient lists.
    uint64_t chunk = std::min<uint64_t>(file_size, kHeaderFirstRead);
    std::string data;
    size_t end = std::string::npos;
    while (true) {
        auto read = durable::pread_exact(fd, 0, chunk);
        if (!read) return context(read.error(), name);
        data = std::move(*read);
        size_t body = data.find("\nbody ");
        if (body != std::string::npos) end = data.find('\n', body + 1);
        if (end != std::string::npos) break;
        if (chunk >= file_size || chunk >= kMaxHeaderSize)
            return fail(ErrorKind::corrupt, name + ": no complete envelope (truncated file?)");
        chunk = std::min<uint64_t>(std::min<uint64_t>(chunk * 4, file_size), kMaxHeaderSize);
    }
    std::string_view head = std::string_view(data).substr(0, end + 1);
    if (!head.starts_with(kQueueMagic))
        return fail(ErrorKind::corrupt, name + ": not a queue file");

    QueueFileInfo info;
    info.header_size = head.size();
    Envelope& env = info.env;
    std::string_view rest = std::string_view(head).substr(kQueueMagic.size());
    bool have_body = false;
    while (!rest.empty()) {
        size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest.remove_prefix(nl + 1);
        auto [key, value] = split_key(line);
        auto decode = [&](std::string_view v) { return percent_decode(v); };
        if (key == "id") {
            env.id = std::string(value);
        } else if (key == "arrival") {
            auto n = parse_int(value, "arrival");
            if (!n) return context(n.error(), name);
            env.arrival_us = *n;
        } else if (key == "sender" || key == "rcpt" || key == "user" || key == "client" ||
                   key == "last-error") {
            auto v = decode(value);
            if (!v) return context(v.error(), name);
            if (key == "sender")
                env.sender = std::move(*v);
            else if (key == "rcpt")
                env.recipients.push_back(std::move(*v));
            else if (key == "user")
                env.user = std::move(*v);
            else if (key == "client")
                env.client = std::move(*v);
            else
                env.last_error = std::move(*v);
        } else if (key == "attempts") {
            auto n = parse_int(value, "attempts");
            if (!n) return context(n.error(), name);
            env.attempts = static_cast<int>(*n);
        } else if (key == "next-attempt") {
            auto n = parse_int(value, "next-attempt");
            if (!n) return context(n.error(), name);
            env.next_attempt_us = *n;
        } else if (key == "hist" || key == "attr") {
            if (auto st = apply_record(env, key, value); !st) return context(st.error(), name);
        } else if (key == "body") {
            auto n = parse_int(value, "body");
            if (!n || *n < 0) return fail(ErrorKind::corrupt, name + ": bad body size");
            info.body_size = static_cast<uint64_t>(*n);
            have_body = true;
        } else {
            return fail(ErrorKind::corrupt,
                        name + ": unknown envelope field '" + std::string(key) + "'");
        }
    }
    if (!have_body || env.id.empty())
        return fail(ErrorKind::corrupt, name + ": incomplete envelope");
    uint64_t end_of_body = info.header_size + info.body_size;
    if (end_of_body > file_size)
        return fail(ErrorKind::corrupt, name + ": length " + std::to_string(file_size) +
                                            " is shorter than its envelope says (" +
                                            std::to_string(end_of_body) + ")");
    if (end_of_body < file_size) {
        std::string read;
        std::string_view records;
        if (auto in_data = byte_range(data, end_of_body, file_size - end_of_body)) {
            records = *in_data;
        } else {
            auto trailer = durable::pread_exact(fd, end_of_body, file_size - end_of_body);
            if (!trailer) return context(trailer.error(), name);
            read = std::move(*trailer);
            records = read;
        }
        size_t complete = records.rfind('\n');
        complete = complete == std::string_view::npos ? 0 : complete + 1;
        info.trailer_size = complete;
        info.torn_size = records.size() - complete;
        records = records.substr(0, complete);
        while (!records.empty()) {
            size_t nl = records.find('\n');
            auto [key, value] = split_key(records.substr(0, nl));
            if (auto st = apply_record(env, key, value); !st)
                return fail(ErrorKind::corrupt, name + ": trailer: " + st.error().message);
            records.remove_prefix(nl + 1);
        }
    }
    // Kept only when it is the first read: an envelope that needed more (a huge recipient list)
    // is not held in memory for the whole batch.
    if (data.size() <= kHeaderFirstRead) info.head = std::move(data);
    return info;
}

Result<QueueFileInfo> read_header(const std::filesystem::path& path) {
    auto fd = durable::open_file(path, O_RDONLY);
    if (!fd) return std::unexpected(fd.error());
    return read_header(fd->get(), path.string());
}

Result<std::string> read_body(int fd, const QueueFileInfo& info) {
    if (auto cached = info.cached(info.body_offset(), info.body_size)) return std::string(*cached);
    return durable::pread_exact(fd, info.body_offset(), info.body_size);
}

Result<durable::Fd> write_queue_file(const std::filesystem::path& path, const Envelope& env,
                                     const BodySource& body) {
    auto fd = durable::open_file(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (!fd) return std::unexpected(fd.error());
    std::string header = encode_header(env, body.size);
    Status st;
    if (body.fd < 0) {
        // One write for small messages: header and body together.
        if (body.bytes.size() < 256 * 1024) {
            header += body.bytes;
            st = durable::write_all(fd->get(), header);
        } else {
            st = durable::write_all(fd->get(), header);
            if (st) st = durable::write_all(fd->get(), body.bytes);
        }
    } else {
        st = durable::write_all(fd->get(), header);
        if (st) st = durable::copy_range(body.fd, body.offset, body.size, fd->get());
    }
    if (!st) {
        (void)::unlink(path.c_str());
        return context(st.error(), path.string());
    }
    return fd;
}

}  // namespace pecd::spool
