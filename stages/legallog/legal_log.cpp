#include "stages/legallog/legal_log.hpp"

#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <chrono>
#include <map>

#include "stages/legallog/seal.hpp"
#include "stages/pec/types.hpp"

namespace pecd::legallog {
namespace {

constexpr std::array<std::pair<Event, std::string_view>, 15> kEvents{{
    {Event::accettazione, "accettazione"},
    {Event::non_accettazione, "non-accettazione"},
    {Event::busta_inviata, "busta-inviata"},
    {Event::ricezione, "ricezione"},
    {Event::presa_in_carico, "presa-in-carico"},
    {Event::consegna, "consegna"},
    {Event::mancata_consegna, "mancata-consegna"},
    {Event::anomalia, "anomalia"},
    {Event::virus, "virus"},
    {Event::preavviso_12h, "preavviso-12h"},
    {Event::preavviso_24h, "preavviso-24h"},
    {Event::ricevuta_ricevuta, "ricevuta-ricevuta"},
    {Event::ricevuta_consegna, "ricevuta-consegna"},
    {Event::avviso_mancata_consegna, "avviso-mancata-consegna"},
    {Event::invio, "invio"},
}};

constexpr size_t kRecordFields = 16;
constexpr size_t kHeaderFields = 9;
constexpr size_t kCloseFields = 6;

bool valid_name_part(std::string_view s) {
    if (s.empty() || s.size() > 64) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
    });
}

// Fields are tab-separated; controls, '%' and ',' (the list separator) are percent-encoded, so no
// value can break a line or a field. Everything else (spaces, UTF-8) stays readable.
std::string enc(std::string_view s) {
    static constexpr char hex[] = "0123456789ABCDEF";
    std::string out;
    out.reserve(s.size());
    for (unsigned char c : s) {
        if (c < 0x20 || c == 0x7f || c == '%' || c == ',') {
            out += '%';
            out += hex[c >> 4];
            out += hex[c & 15];
        } else {
            out += static_cast<char>(c);
        }
    }
    return out;
}

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

std::optional<std::string> dec(std::string_view s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) return std::nullopt;
        int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
        if (hi < 0 || lo < 0) return std::nullopt;
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
    }
    return out;
}

std::string enc_list(const std::vector<std::string>& items) {
    std::string out;
    for (size_t i = 0; i < items.size(); ++i) {
        if (i) out += ',';
        out += enc(items[i]);
    }
    return out;
}

std::optional<std::vector<std::string>> dec_list(std::string_view s) {
    std::vector<std::string> out;
    if (s.empty()) return out;
    size_t start = 0;
    while (true) {
        size_t comma = s.find(',', start);
        auto item = dec(s.substr(start, comma == std::string_view::npos ? s.npos : comma - start));
        if (!item) return std::nullopt;
        out.push_back(std::move(*item));
        if (comma == std::string_view::npos) break;
        start = comma + 1;
    }
    return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
    std::vector<std::string_view> out;
    size_t start = 0;
    while (true) {
        size_t pos = s.find(sep, start);
        out.push_back(s.substr(start, pos == std::string_view::npos ? s.npos : pos - start));
        if (pos == std::string_view::npos) break;
        start = pos + 1;
    }
    return out;
}

template <class T>
std::optional<T> to_int(std::string_view s) {
    T v{};
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || p != s.data() + s.size() || s.empty()) return std::nullopt;
    return v;
}

bool is_hash(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

// One parsed line: prev, seq, kind ('H' header, 'R' record, 'C' close) and the remaining fields.
struct Line {
    std::string_view prev;
    uint64_t seq = 0;
    char kind = 0;
    std::vector<std::string_view> fields;  // all fields, including the first three
};

std::optional<Line> parse_line(std::string_view text) {
    Line line;
    line.fields = split(text, '\t');
    if (line.fields.size() < 3 || !is_hash(line.fields[0]) || line.fields[2].size() != 1)
        return std::nullopt;
    auto seq = to_int<uint64_t>(line.fields[1]);
    if (!seq) return std::nullopt;
    line.prev = line.fields[0];
    line.seq = *seq;
    line.kind = line.fields[2][0];
    size_t want = line.kind == 'H'   ? kHeaderFields
                  : line.kind == 'R' ? kRecordFields
                  : line.kind == 'C' ? kCloseFields
                                     : 0;
    if (line.fields.size() != want) return std::nullopt;
    return line;
}

std::optional<Record> record_of(const Line& line) {
    if (line.kind != 'R') return std::nullopt;
    const auto& f = line.fields;
    Record r;
    auto t = to_int<int64_t>(f[3]);
    auto event = event_from_string(f[5]);
    auto legal = dec(f[4]), id = dec(f[6]), msgid = dec(f[7]), sender = dec(f[8]),
         subject = dec(f[10]), provider = dec(f[12]), node = dec(f[13]), stage = dec(f[14]),
         detail = dec(f[15]);
    auto rcpts = dec_list(f[9]), related = dec_list(f[11]);
    if (!t || !event || !legal || !id || !msgid || !sender || !subject || !provider || !node ||
        !stage || !detail || !rcpts || !related)
        return std::nullopt;
    r.time_us = *t;
    r.legal_time = std::move(*legal);
    r.event = *event;
    r.identificativo = std::move(*id);
    r.message_id = std::move(*msgid);
    r.sender = std::move(*sender);
    r.recipients = std::move(*rcpts);
    r.subject = std::move(*subject);
    r.related = std::move(*related);
    r.provider = std::move(*provider);
    r.node = std::move(*node);
    r.stage = std::move(*stage);
    r.detail = std::move(*detail);
    return r;
}

std::string record_line(std::string_view prev, uint64_t seq, const Record& r) {
    std::string s;
    s.reserve(256);
    s.append(prev).append("\t").append(std::to_string(seq)).append("\tR\t");
    s.append(std::to_string(r.time_us))
        .append("\t")
        .append(enc(italian_legal_time(r.time_us)))
        .append("\t");
    s.append(to_string(r.event)).append("\t").append(enc(r.identificativo)).append("\t");
    s.append(enc(r.message_id))
        .append("\t")
        .append(enc(r.sender))
        .append("\t")
        .append(enc_list(r.recipients));
    s.append("\t").append(enc(r.subject)).append("\t").append(enc_list(r.related)).append("\t");
    s.append(enc(r.provider)).append("\t").append(enc(r.node)).append("\t").append(enc(r.stage));
    s.append("\t").append(enc(r.detail));
    return s;
}

std::string header_line(std::string_view prev, int64_t opened_us, std::string_view name,
                        std::string_view prev_file, std::string_view node, std::string_view stage) {
    return std::string(prev) + "\t1\tH\t" + std::to_string(opened_us) + "\t" + std::string(name) +
           "\t" + std::string(prev_file) + "\t" + std::string(node) + "\t" + std::string(stage) +
           "\t" + std::to_string(::getpid());
}

std::string close_line(std::string_view prev, uint64_t seq, int64_t closed_us, uint64_t records,
                       std::string_view reason) {
    return std::string(prev) + "\t" + std::to_string(seq) + "\tC\t" + std::to_string(closed_us) +
           "\t" + std::to_string(records) + "\t" + enc(reason);
}

// A file's complete lines; a last line without its newline (a torn append) is reported apart.
struct Lines {
    std::string data;
    std::vector<std::string_view> lines;
    size_t complete_size = 0;  // bytes up to and including the last newline
    bool torn = false;
};

Result<Lines> read_lines(const fs::path& path) {
    auto data = durable::read_file(path);
    if (!data) return std::unexpected(data.error());
    Lines out;
    out.data = std::move(*data);
    size_t last_nl = out.data.rfind('\n');
    out.complete_size = last_nl == std::string::npos ? 0 : last_nl + 1;
    out.torn = out.complete_size != out.data.size();
    std::string_view whole(out.data.data(), out.complete_size);
    size_t start = 0;
    while (start < whole.size()) {
        size_t nl = whole.find('\n', start);
        out.lines.push_back(whole.substr(start, nl - start));
        start = nl + 1;
    }
    return out;
}

Result<durable::Fd> lock_stream(const fs::path& directory, std::string_view stream, bool patient) {
    auto dir = directory / "locks";
    if (auto st = durable::make_dir(dir, 0750); !st) return std::unexpected(st.error());
    auto fd = durable::open_file(dir / (std::string(stream) + ".lock"),
                                 O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (!fd) return std::unexpected(fd.error());
    int rc = ::flock(fd->get(), LOCK_EX | LOCK_NB);
    // The sealer holds a stream's lock for a moment while it closes a dead writer's file: a
    // starting writer waits that out, a live writer is reported.
    for (int i = 0; patient && rc != 0 && errno == EWOULDBLOCK && i < 100; ++i) {
        ::usleep(10'000);
        rc = ::flock(fd->get(), LOCK_EX | LOCK_NB);
    }
    if (rc != 0) {
        if (errno == EWOULDBLOCK)
            return fail(ErrorKind::conflict,
                        "legal log stream " + std::string(stream) + " is held by another writer");
        return fail_errno("flock " + std::string(stream));
    }
    return std::move(*fd);
}

Status truncate_to(int fd, uint64_t size, const fs::path& path) {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
        return fail_errno("ftruncate " + path.string());
    return {};
}

// Appends a close line to an unclosed file whose writer is gone: cut the torn tail, chain, sync.
// Returns the hash of the close line.
Result<std::string> close_orphan(const fs::path& path, std::string_view reason, int64_t now_us) {
    auto lines = read_lines(path);
    if (!lines) return std::unexpected(lines.error());
    auto fd = durable::open_file(path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (!fd) return std::unexpected(fd.error());
    if (lines->torn)
        if (auto st = truncate_to(fd->get(), lines->complete_size, path); !st)
            return std::unexpected(st.error());
    if (lines->lines.empty()) return fail(ErrorKind::corrupt, path.string() + ": no complete line");
    uint64_t records = 0;
    for (auto l : lines->lines)
        if (auto p = parse_line(l); p && p->kind == 'R') ++records;
    std::string c = close_line(sha256_hex(lines->lines.back()), lines->lines.size() + 1, now_us,
                               records, reason);
    if (auto st = durable::write_all(fd->get(), c + "\n"); !st) {
        (void)truncate_to(fd->get(), lines->complete_size, path);
        return std::unexpected(st.error());
    }
    if (auto st = durable::sync_data(fd->get()); !st) return std::unexpected(st.error());
    return sha256_hex(c);
}

}  // namespace

std::string_view to_string(Event event) {
    for (const auto& [e, name] : kEvents)
        if (e == event) return name;
    return "unknown";
}

std::optional<Event> event_from_string(std::string_view name) {
    for (const auto& [e, n] : kEvents)
        if (n == name) return e;
    return std::nullopt;
}

std::string italian_legal_time(int64_t time_us) {
    pec::PecTime t{std::chrono::system_clock::time_point(std::chrono::microseconds(time_us))};
    return t.giorno() + " " + t.ora() + " (" + t.zona() + ")";
}

std::string day_of(int64_t time_us) {
    pec::PecTime t{std::chrono::system_clock::time_point(std::chrono::microseconds(time_us))};
    std::string g = t.giorno();  // dd/mm/yyyy
    return g.substr(6, 4) + "-" + g.substr(3, 2) + "-" + g.substr(0, 2);
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
    static constexpr char hex[] = "0123456789abcdef";
    std::string out(len * 2, '0');
    for (unsigned i = 0; i < len; ++i) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    return out;
}

int64_t system_now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

// ---- file names -------------------------------------------------------------------------------

std::optional<FileName> parse_file_name(std::string_view name) {
    // <yyyy-mm-dd>.<node>.<stage>.<opened µs, 13+ hex>.<pid>.log
    if (!name.ends_with(".log")) return std::nullopt;
    auto parts = split(name.substr(0, name.size() - 4), '.');
    if (parts.size() != 5 || parts[0].size() != 10 || !valid_name_part(parts[1]) ||
        !valid_name_part(parts[2]))
        return std::nullopt;
    FileName out;
    out.day = parts[0];
    out.node = parts[1];
    out.stage = parts[2];
    int64_t opened = 0;
    auto [p, ec] = std::from_chars(parts[3].data(), parts[3].data() + parts[3].size(), opened, 16);
    auto pid = to_int<int64_t>(parts[4]);
    if (ec != std::errc{} || p != parts[3].data() + parts[3].size() || !pid) return std::nullopt;
    out.opened_us = opened;
    out.pid = *pid;
    return out;
}

Result<std::vector<fs::path>> list_files(const fs::path& directory) {
    auto names = durable::list_dir(directory);
    if (!names) return std::unexpected(names.error());
    std::vector<std::pair<FileName, std::string>> found;
    for (auto& n : *names)
        if (auto f = parse_file_name(n)) found.emplace_back(*f, n);
    std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) {
        if (a.first.stream() != b.first.stream()) return a.first.stream() < b.first.stream();
        if (a.first.opened_us != b.first.opened_us) return a.first.opened_us < b.first.opened_us;
        return a.second < b.second;
    });
    std::vector<fs::path> out;
    for (auto& [f, n] : found) out.push_back(directory / n);
    return out;
}

// ---- writer -----------------------------------------------------------------------------------

Writer::Writer(WriterOptions options) : options_(std::move(options)) {}

Writer::~Writer() {
    // Unsynced records belong to a batch that was not committed: leave the file as a crash would,
    // minus the records nobody was told were durable.
    if (fd_ && size_ != synced_size_) (void)cut_back();
}

int64_t Writer::now() const {
    return options_.clock ? options_.clock() : system_now_us();
}

Result<std::unique_ptr<Writer>> Writer::open(WriterOptions options) {
    if (!valid_name_part(options.node) || !valid_name_part(options.stage))
        return fail(ErrorKind::config, "legal log: node and stage must match [a-z0-9-]+ (got '" +
                                           options.node + "', '" + options.stage + "')");
    if (auto st = durable::make_dir(options.directory, 0750); !st)
        return std::unexpected(st.error());
    std::unique_ptr<Writer> w(new Writer(std::move(options)));
    std::string stream = w->options_.node + "." + w->options_.stage;
    auto lock = lock_stream(w->options_.directory, stream, /*patient=*/true);
    if (!lock) return std::unexpected(lock.error());
    w->lock_ = std::move(*lock);
    struct stat lock_stat {};
    if (::fstat(w->lock_.get(), &lock_stat) != 0) return fail_errno("fstat legal log lock");
    w->device_ = lock_stat.st_dev;
    w->head_ = std::string(kGenesis);

    // Recovery from the files alone: the stream's newest file is continued (same day, room left)
    // or closed; a file left empty by a crash during its creation is removed.
    auto files = list_files(w->options_.directory);
    if (!files) return std::unexpected(files.error());
    std::vector<fs::path> mine;
    for (const auto& f : *files)
        if (parse_file_name(f.filename().string())->stream() == stream) mine.push_back(f);
    while (!mine.empty()) {
        fs::path latest = mine.back();
        auto lines = read_lines(latest);
        if (!lines) return std::unexpected(lines.error());
        if (lines->lines.empty()) {
            if (auto st = durable::unlink_file(latest); !st) return std::unexpected(st.error());
            mine.pop_back();
            continue;
        }
        auto last = parse_line(lines->lines.back());
        int64_t now = w->now();
        auto name = parse_file_name(latest.filename().string());
        if (last && last->kind == 'C') {
            w->head_ = sha256_hex(lines->lines.back());
            w->last_file_ = latest.filename().string();
        } else if (last && name->day == day_of(now) &&
                   lines->complete_size < w->options_.max_file_size) {
            auto fd = durable::open_file(latest, O_WRONLY | O_APPEND | O_CLOEXEC);
            if (!fd) return std::unexpected(fd.error());
            if (lines->torn)
                if (auto st = truncate_to(fd->get(), lines->complete_size, latest); !st)
                    return std::unexpected(st.error());
            w->fd_ = std::move(*fd);
            w->path_ = latest;
            w->day_ = name->day;
            w->size_ = w->synced_size_ = lines->complete_size;
            w->seq_ = w->synced_seq_ = lines->lines.size();
            uint64_t records = 0;
            for (auto l : lines->lines)
                if (auto p = parse_line(l); p && p->kind == 'R') ++records;
            w->records_ = w->synced_records_ = records;
            w->head_ = w->synced_head_ = sha256_hex(lines->lines.back());
            auto header = parse_line(lines->lines.front());
            w->last_file_ = header && header->kind == 'H' ? std::string(header->fields[5]) : "";
        } else {
            auto head = close_orphan(latest, "recovered", now);
            if (!head) return std::unexpected(head.error());
            w->head_ = *head;
            w->last_file_ = latest.filename().string();
        }
        break;
    }
    return w;
}

Status Writer::open_new_file() {
    int64_t opened = now();
    // Streams are ordered by opening time: a clock stepped back must not put a file before its
    // predecessor.
    if (auto prev = parse_file_name(last_file_)) opened = std::max(opened, prev->opened_us + 1);
    while (true) {
        day_ = day_of(opened);
        char hex[32];
        std::snprintf(hex, sizeof hex, "%013llx", static_cast<unsigned long long>(opened));
        std::string name = day_ + "." + options_.node + "." + options_.stage + "." + hex + "." +
                           std::to_string(::getpid()) + ".log";
        fs::path path = options_.directory / name;
        auto fd =
            durable::open_file(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0640);
        if (!fd && fd.error().kind == ErrorKind::conflict) {
            ++opened;  // same microsecond as an earlier file (injected clocks): the next one
            continue;
        }
        if (!fd) return std::unexpected(fd.error());
        std::string header =
            header_line(head_, opened, name, last_file_, options_.node, options_.stage);
        auto st = durable::write_all(fd->get(), header + "\n");
        if (st) st = durable::sync_data(fd->get());
        if (st) st = durable::sync_dir(options_.directory);
        if (!st) {
            (void)durable::unlink_file(path);
            return std::unexpected(st.error());
        }
        fd_ = std::move(*fd);
        path_ = path;
        size_ = synced_size_ = header.size() + 1;
        seq_ = synced_seq_ = 1;
        records_ = synced_records_ = 0;
        head_ = synced_head_ = sha256_hex(header);
        return {};
    }
}

Status Writer::cut_back() {
    if (!fd_) return {};
    auto st = truncate_to(fd_.get(), synced_size_, path_);
    size_ = synced_size_;
    seq_ = synced_seq_;
    records_ = synced_records_;
    head_ = synced_head_;
    return st;
}

Status Writer::close_current(std::string_view reason) {
    std::string c = close_line(head_, seq_ + 1, now(), records_, reason);
    auto st = durable::write_all(fd_.get(), c + "\n");
    if (st) st = durable::sync_data(fd_.get());
    if (!st) {
        (void)cut_back();
        return context(st.error(), "legal log " + path_.string());
    }
    head_ = synced_head_ = sha256_hex(c);
    last_file_ = path_.filename().string();
    fd_.reset();
    path_.clear();
    return {};
}

Status Writer::append(std::span<const Record> records) {
    if (records.empty()) return {};
    int64_t t = now();
    if (fd_ && (day_of(t) != day_ || size_ >= options_.max_file_size))
        if (auto st = close_current(day_of(t) != day_ ? "day" : "size"); !st) return st;
    if (!fd_)
        if (auto st = open_new_file(); !st) return st;
    std::string buf;
    buf.reserve(records.size() * 320);
    for (const auto& r : records) {
        Record copy;
        const Record* rec = &r;
        if (r.node.empty() || r.stage.empty()) {
            copy = r;
            if (copy.node.empty()) copy.node = options_.node;
            if (copy.stage.empty()) copy.stage = options_.stage;
            rec = &copy;
        }
        std::string line = record_line(head_, ++seq_, *rec);
        head_ = sha256_hex(line);
        buf += line;
        buf += '\n';
        ++records_;
    }
    if (auto st = durable::write_all(fd_.get(), buf); !st) {
        (void)cut_back();
        return context(st.error(), "legal log " + path_.string());
    }
    size_ += buf.size();
    return {};
}

Status Writer::sync() {
    if (!fd_ || size_ == synced_size_) return {};
    if (auto st = durable::sync_data(fd_.get()); !st) {
        (void)cut_back();
        return context(st.error(), "legal log " + path_.string());
    }
    mark_synced();
    return {};
}

void Writer::mark_synced() {
    synced_size_ = size_;
    synced_seq_ = seq_;
    synced_records_ = records_;
    synced_head_ = head_;
}

Status Writer::rotate_if_due() {
    if (!fd_ || day_of(now()) == day_) return {};
    if (auto st = sync(); !st) return st;
    return close_current("day");
}

Status Writer::close(std::string_view reason) {
    if (!fd_) return {};
    if (auto st = sync(); !st) return st;
    return close_current(reason);
}

// ---- reading ----------------------------------------------------------------------------------

Result<std::vector<Found>> search(const fs::path& directory, const Query& q) {
    auto files = list_files(directory);
    if (!files) return std::unexpected(files.error());
    std::vector<Found> out;
    for (const auto& file : *files) {
        auto lines = read_lines(file);
        if (!lines) return std::unexpected(lines.error());
        for (size_t i = 0; i < lines->lines.size(); ++i) {
            auto line = parse_line(lines->lines[i]);
            if (!line || line->kind != 'R') continue;
            auto r = record_of(*line);
            if (!r) continue;
            if (q.since_us && r->time_us < *q.since_us) continue;
            if (q.until_us && r->time_us > *q.until_us) continue;
            if (!q.sender.empty() && r->sender != q.sender) continue;
            if (!q.recipient.empty() && std::find(r->recipients.begin(), r->recipients.end(),
                                                  q.recipient) == r->recipients.end())
                continue;
            if (!q.id.empty() && r->identificativo != q.id && r->message_id != q.id &&
                std::find(r->related.begin(), r->related.end(), q.id) == r->related.end())
                continue;
            out.push_back({file, i + 1, std::move(*r)});
        }
    }
    std::stable_sort(out.begin(), out.end(), [](const Found& a, const Found& b) {
        return a.record.time_us < b.record.time_us;
    });
    return out;
}

Result<int64_t> parse_time_arg(std::string_view text, bool end_of_day) {
    if (text.starts_with("@")) {
        if (auto v = to_int<int64_t>(text.substr(1))) return *v;
        return fail(ErrorKind::permanent, "bad time '" + std::string(text) + "'");
    }
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0, consumed = 0;
    std::string s(text);
    bool date_only = std::sscanf(s.c_str(), "%4d-%2d-%2d%n", &y, &mo, &d, &consumed) == 3 &&
                     consumed == static_cast<int>(s.size());
    if (!date_only) {
        int n = std::sscanf(s.c_str(), "%4d-%2d-%2d%*[T ]%2d:%2d%n:%2d%n", &y, &mo, &d, &h, &mi,
                            &consumed, &sec, &consumed);
        if (n < 5 || consumed != static_cast<int>(s.size()))
            return fail(ErrorKind::permanent,
                        "bad time '" + s + "': expected YYYY-MM-DD[THH:MM[:SS]] or @µs");
    }
    using namespace std::chrono;
    year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
    if (!ymd.ok() || h > 23 || mi > 59 || sec > 60)
        return fail(ErrorKind::permanent, "bad time '" + s + "'");
    auto tp = sys_days(ymd) + hours(h) + minutes(mi) + seconds(sec);
    int64_t us = duration_cast<microseconds>(tp.time_since_epoch()).count();
    if (date_only && end_of_day) us += 86'400'000'000LL - 1;
    return us;
}

Result<FileState> file_state(const fs::path& file) {
    auto lines = read_lines(file);
    if (!lines) return std::unexpected(lines.error());
    FileState st;
    if (lines->lines.empty()) return st;
    st.final_hash = sha256_hex(lines->lines.back());
    auto last = parse_line(lines->lines.back());
    if (last && last->kind == 'C') {
        st.closed = true;
        st.closed_us = to_int<int64_t>(last->fields[3]).value_or(0);
    }
    return st;
}

// ---- verification -----------------------------------------------------------------------------

Result<VerifyReport> verify(const VerifyOptions& options) {
    auto files = list_files(options.directory);
    if (!files) return std::unexpected(files.error());
    VerifyReport report;
    const int64_t now_us = options.now_us != 0
                               ? options.now_us
                               : std::chrono::duration_cast<std::chrono::microseconds>(
                                     std::chrono::system_clock::now().time_since_epoch())
                                     .count();
    std::string prev_stream, prev_name, prev_last_hash;
    for (size_t fi = 0; fi < files->size(); ++fi) {
        const fs::path& file = (*files)[fi];
        std::string name = file.filename().string();
        std::string stream = parse_file_name(name)->stream();
        bool first_of_stream = stream != prev_stream;
        bool last_of_stream =
            fi + 1 == files->size() ||
            parse_file_name((*files)[fi + 1].filename().string())->stream() != stream;
        ++report.files;
        auto lines = read_lines(file);
        if (!lines) return std::unexpected(lines.error());
        auto problem = [&](size_t line, std::string msg) {
            report.problems.push_back({file, line, std::move(msg)});
        };
        size_t problems_before = report.problems.size();
        const auto& ls = lines->lines;
        bool closed = false;
        int64_t closed_us = 0;
        if (ls.empty()) {
            if (!last_of_stream) problem(0, "empty file");
        } else {
            auto header = parse_line(ls[0]);
            if (!header || header->kind != 'H' || header->seq != 1) {
                problem(1, "not a legal log header line");
            } else if (header->fields[4] != name) {
                problem(1, "header names another file (" + std::string(header->fields[4]) +
                               "): renamed or copied");
            } else if (!first_of_stream && header->fields[5] != prev_name) {
                problem(0, "previous file " + std::string(header->fields[5]) +
                               " is missing (found " + prev_name + ")");
            } else if (!first_of_stream && header->prev != prev_last_hash) {
                problem(1, "prev does not match the last line of " + prev_name);
            }
            for (size_t i = 1; i < ls.size() && report.problems.size() == problems_before; ++i) {
                size_t lineno = i + 1;
                auto line = parse_line(ls[i]);
                if (!line) {
                    problem(lineno, "unreadable line");
                } else if (line->seq != lineno) {
                    problem(lineno, "out of place: its sequence number is " +
                                        std::to_string(line->seq) +
                                        " (a record before it was removed or moved)");
                } else if (line->prev != sha256_hex(ls[i - 1])) {
                    problem(i, "record altered: its hash does not match the prev of line " +
                                   std::to_string(lineno));
                } else if (closed) {
                    problem(lineno, "line after the close line");
                } else if (line->kind == 'H') {
                    problem(lineno, "second header line");
                } else if (line->kind == 'R') {
                    if (!record_of(*line)) problem(lineno, "unreadable record");
                    ++report.records;
                } else if (line->kind == 'C') {
                    closed = true;
                    closed_us =
                        line->fields.size() > 3 ? to_int<int64_t>(line->fields[3]).value_or(0) : 0;
                }
            }
        }
        if (lines->torn && (closed || !last_of_stream))
            problem(ls.size() + 1, "incomplete last line");
        if (!closed && !last_of_stream && report.problems.size() == problems_before)
            problem(ls.size(),
                    "file not closed although a later file follows (its end was removed?)");
        if (!closed && report.problems.size() == problems_before) ++report.open;

        // The seal: final hash and RFC 3161 token over the whole file.
        fs::path tsr = file.string() + ".tsr", seal = file.string() + ".seal";
        bool has_tsr = fs::exists(tsr), has_seal = fs::exists(seal);
        if (closed && !has_tsr && !has_seal) {
            ++report.unsealed_closed;
            if (options.max_seal_delay &&
                now_us - closed_us > static_cast<int64_t>(options.max_seal_delay->count())) {
                ++report.seal_overdue;
                const int64_t s = (now_us - closed_us) / 1'000'000;
                const std::string ago = s < 120    ? std::to_string(s) + " s"
                                        : s < 7200 ? std::to_string(s / 60) + " min"
                                                   : std::to_string(s / 3600) + " h";
                problem(0, "closed " + ago + " ago and still not sealed");
            }
        }
        if (has_seal || has_tsr) {
            if (!closed) {
                problem(0, "sealed but not closed (its end was removed?)");
            } else if (!has_tsr || !has_seal) {
                problem(0, std::string("seal incomplete: ") + (has_tsr ? ".seal" : ".tsr") +
                               " missing");
            } else {
                auto checked = check_seal(file, lines->data,
                                          ls.empty() ? "" : sha256_hex(ls.back()), options.ca_file);
                if (!checked)
                    problem(0, checked.error().message);
                else
                    ++report.sealed;
            }
        }
        prev_stream = stream;
        prev_name = name;
        prev_last_hash = ls.empty() ? std::string(kGenesis) : sha256_hex(ls.back());
    }
    return report;
}

// ---- retention --------------------------------------------------------------------------------

Result<Retention> parse_retention(std::string_view text) {
    Retention r;
    for (std::string_view suffix : {"months", "month", "mo"}) {
        if (text.ends_with(suffix)) {
            auto n = to_int<int>(text.substr(0, text.size() - suffix.size()));
            if (!n || *n < 0) break;
            r.months = *n;
            return r;
        }
    }
    auto d = parse_duration(text);
    if (!d)
        return fail(ErrorKind::config,
                    "retention: expected <n>months or a duration, got '" + std::string(text) + "'");
    r.months = 0;
    r.extra = *d;
    return r;
}

int64_t add_retention(int64_t time_us, const Retention& retention) {
    using namespace std::chrono;
    sys_time<microseconds> tp{microseconds(time_us)};
    auto day = floor<days>(tp);
    year_month_day ymd{day};
    ymd += months(retention.months);
    // 31 August + 6 months is the end of February, never a day earlier than the period.
    if (!ymd.ok()) ymd = ymd.year() / ymd.month() / last;
    auto shifted = sys_days(ymd) + (tp - day) + duration_cast<microseconds>(retention.extra);
    return shifted.time_since_epoch().count();
}

Result<RetentionReport> remove_expired(const fs::path& directory, const Retention& retention,
                                       int64_t now_us) {
    auto files = list_files(directory);
    if (!files) return std::unexpected(files.error());
    RetentionReport report;
    for (const auto& file : *files) {
        auto st = file_state(file);
        if (!st) return std::unexpected(st.error());
        if (!st->closed || add_retention(st->closed_us, retention) >= now_us) continue;
        // The log first: a crash after it leaves only seal files, removed by the next run below.
        for (const auto& p :
             {file, fs::path(file.string() + ".tsr"), fs::path(file.string() + ".seal")})
            if (auto u = durable::unlink_file(p); !u) return std::unexpected(u.error());
        report.removed.push_back(file);
    }
    auto names = durable::list_dir(directory);
    if (!names) return std::unexpected(names.error());
    for (const auto& n : *names) {
        for (std::string_view ext : {".tsr", ".seal"}) {
            if (!n.ends_with(ext)) continue;
            std::string log = n.substr(0, n.size() - ext.size());
            if (parse_file_name(log) && !fs::exists(directory / log))
                if (auto u = durable::unlink_file(directory / n); !u)
                    return std::unexpected(u.error());
        }
    }
    if (!report.removed.empty())
        if (auto s = durable::sync_dir(directory); !s) return std::unexpected(s.error());
    return report;
}

Result<std::vector<fs::path>> close_stale_files(const fs::path& directory, int64_t now_us) {
    auto files = list_files(directory);
    if (!files) return std::unexpected(files.error());
    std::map<std::string, fs::path> latest;
    for (const auto& f : *files) latest[parse_file_name(f.filename().string())->stream()] = f;
    std::vector<fs::path> closed;
    std::string today = day_of(now_us);
    for (const auto& [stream, file] : latest) {
        if (parse_file_name(file.filename().string())->day >= today) continue;
        auto lock = lock_stream(directory, stream, false);
        if (!lock && lock.error().kind == ErrorKind::conflict) continue;  // its writer is alive
        if (!lock) return std::unexpected(lock.error());
        auto st = file_state(file);
        if (!st) return std::unexpected(st.error());
        if (st->closed) continue;
        auto head = close_orphan(file, "day", now_us);
        if (!head) return std::unexpected(head.error());
        closed.push_back(file);
    }
    return closed;
}

// ---- configuration ----------------------------------------------------------------------------

Result<Settings> settings(const Config& config) {
    Settings s;
    s.directory = config.get_path("legallog", "directory", "/var/lib/pecd/legallog");
    s.tsa_url = config.get("legallog", "tsa_url");
    s.tsa_ca = config.get_path("legallog", "tsa_ca");
    s.node = config.get("legallog", "node");
    if (s.node.empty()) {
        char host[256] = {};
        ::gethostname(host, sizeof host - 1);
        for (char* p = host; *p && *p != '.'; ++p) {
            char c = static_cast<char>(std::tolower(static_cast<unsigned char>(*p)));
            s.node += valid_name_part(std::string_view(&c, 1)) ? c : '-';
        }
        if (s.node.empty()) s.node = "node";
    }
    if (!valid_name_part(s.node))
        return fail(ErrorKind::config, "[legallog] node must match [a-z0-9-]+");
    if (auto v = config.find("legallog", "retention")) {
        auto r = parse_retention(v->value);
        if (!r)
            return fail(ErrorKind::config,
                        config.source() + ":" + std::to_string(v->line) + ": " + r.error().message);
        s.retention = *r;
    }
    auto size = config.get_size("legallog", "max_file_size", s.max_file_size);
    if (!size) return std::unexpected(size.error());
    s.max_file_size = *size;
    return s;
}

}  // namespace pecd::legallog
