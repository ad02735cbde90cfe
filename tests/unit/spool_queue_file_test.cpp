// Queue file format: percent encoding, envelope round trips, bodies, and corrupt files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "tests/support/temp_dir.hpp"

namespace fs = std::filesystem;
using namespace pecd;
using namespace pecd::spool;

namespace {

using TempDir = pecd::test::TempDir;

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

void spit(const fs::path& p, std::string_view data) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

std::string all_bytes() {
    std::string s;
    for (int i = 0; i < 256; ++i) s += static_cast<char>(i);
    return s;
}

Envelope full_envelope() {
    Envelope env;
    env.arrival_us = now_us();
    env.id = new_queue_id(env.arrival_us);
    env.sender = "mittente@pec.example.it";
    env.recipients = {"a@pec.example.it", "b c@example.org", "\"quoted\"@x.it", "%41@y.it"};
    env.user = "utente con spazi";
    env.client = "[2001:db8::1]:2525";
    env.attempts = 7;
    env.next_attempt_us = env.arrival_us + 123456789;
    env.last_error = "451 4.3.0 temporary\r\nsecond line\ttab";
    env.history = {{"enqueue", env.arrival_us, "pec-enqueue"},
                   {"classify", env.arrival_us + 1, "-> wrap"},
                   {"wrap", env.arrival_us + 2, ""},
                   {"", 0, "note with spaces and %"}};
    env.attrs = {{"route", "submission"},
                 {"key with space", "value\nwith newline"},
                 {"empty", ""},
                 {"bytes", all_bytes()}};
    return env;
}

// Writes header + body to `path` as a complete queue file; returns the header.
std::string write_raw(const fs::path& path, const Envelope& env, std::string_view body) {
    std::string header = encode_header(env, body.size());
    spit(path, header + std::string(body));
    return header;
}

Result<QueueFileInfo> read_header_of_bytes(const fs::path& path, std::string_view bytes) {
    spit(path, bytes);
    return read_header(path);
}

}  // namespace

// ---- percent encoding --------------------------------------------------------------------------

TEST(spoolPercentEncoding, EveryByteRoundTripsAndEncodedFormIsOneToken) {
    std::string raw = all_bytes();
    std::string enc = percent_encode(raw);
    for (unsigned char c : enc) {
        EXPECT_GE(c, 0x21) << "encoded output must hold no space/control bytes";
        EXPECT_LE(c, 0x7e) << "encoded output must be printable ASCII";
    }
    auto dec = percent_decode(enc);
    ASSERT_TRUE(dec.has_value()) << dec.error().message;
    EXPECT_EQ(*dec, raw);
}

TEST(spoolPercentEncoding, EachSingleByteRoundTripsAndEscapesExactlyTheRightOnes) {
    for (int i = 0; i < 256; ++i) {
        std::string raw(1, static_cast<char>(i));
        std::string enc = percent_encode(raw);
        bool must_escape = i < 0x21 || i > 0x7e || i == '%';
        if (must_escape) {
            ASSERT_EQ(enc.size(), 3u) << "byte " << i;
            EXPECT_EQ(enc[0], '%');
        } else {
            EXPECT_EQ(enc, raw) << "byte " << i << " should be kept as is";
        }
        auto dec = percent_decode(enc);
        ASSERT_TRUE(dec.has_value()) << "byte " << i;
        EXPECT_EQ(*dec, raw) << "byte " << i;
    }
}

TEST(spoolPercentEncoding, RandomStringsRoundTrip) {
    std::mt19937 rng(12345);
    for (int n = 0; n < 500; ++n) {
        std::string raw(rng() % 64, '\0');
        for (auto& c : raw) c = static_cast<char>(rng() & 0xff);
        auto dec = percent_decode(percent_encode(raw));
        ASSERT_TRUE(dec.has_value());
        EXPECT_EQ(*dec, raw);
    }
}

TEST(spoolPercentEncoding, DecodeAcceptsLowerAndUpperHex) {
    auto lower = percent_decode("%c3%a8%0a");
    auto upper = percent_decode("%C3%A8%0A");
    ASSERT_TRUE(lower.has_value());
    ASSERT_TRUE(upper.has_value());
    EXPECT_EQ(*lower, "\xc3\xa8\n");
    EXPECT_EQ(*upper, *lower);
    EXPECT_EQ(percent_decode("").value(), "");
    EXPECT_EQ(percent_decode("plain").value(), "plain");
    EXPECT_EQ(percent_decode("%25").value(), "%");
    EXPECT_EQ(percent_decode("a%41").value(), "aA");
    EXPECT_EQ(percent_decode("%41b").value(), "Ab");
}

TEST(spoolPercentEncoding, OddInputsAreCorrupt) {
    for (std::string_view bad :
         {"%", "abc%", "%4", "abc%4", "%zz", "%4g", "%g4", "%%41", "% 1", "%-1", "x%\n0"}) {
        auto dec = percent_decode(bad);
        ASSERT_FALSE(dec.has_value()) << "'" << bad << "' decoded to '" << *dec << "'";
        EXPECT_EQ(dec.error().kind, ErrorKind::corrupt) << bad;
    }
}

// ---- envelope round trip -----------------------------------------------------------------------

TEST(spoolQueueFileHeader, FullEnvelopeRoundTrips) {
    TempDir tmp;
    Envelope env = full_envelope();
    std::string body = "Subject: x\r\n\r\nhello\r\n";
    std::string header = write_raw(tmp.path() / env.id, env, body);
    EXPECT_TRUE(header.starts_with(kQueueMagic));
    auto info = read_header(tmp.path() / env.id);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->env, env);
    EXPECT_EQ(info->header_size, header.size());
    EXPECT_EQ(info->body_size, body.size());
    EXPECT_EQ(info->body_offset(), header.size());
    EXPECT_EQ(info->env.attr("route"), "submission");
    EXPECT_EQ(info->env.attr("bytes"), all_bytes());
    EXPECT_FALSE(info->env.attr("absent").has_value());
}

TEST(spoolQueueFileHeader, EmptySenderAndEmptyFieldsRoundTrip) {
    TempDir tmp;
    Envelope env;
    env.arrival_us = 1;
    env.id = new_queue_id(1);
    env.recipients = {"r@x.it"};
    auto header = write_raw(tmp.path() / "f", env, "");
    auto info = read_header(tmp.path() / "f");
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->env, env);
    EXPECT_EQ(info->env.sender, "");
    EXPECT_EQ(info->body_size, 0u);
    EXPECT_EQ(info->header_size, header.size());
}

TEST(spoolQueueFileHeader, NoRecipientsRoundTrips) {
    TempDir tmp;
    Envelope env;
    env.arrival_us = 42;
    env.id = new_queue_id(42);
    write_raw(tmp.path() / "f", env, "x");
    auto info = read_header(tmp.path() / "f");
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_TRUE(info->env.recipients.empty());
    EXPECT_EQ(info->env, env);
}

TEST(spoolQueueFileHeader, ManyRecipientsBeyondFirstReadChunk) {
    TempDir tmp;
    for (size_t count : {100u, 700u, 5000u, 40000u}) {
        Envelope env = full_envelope();
        env.recipients.clear();
        for (size_t i = 0; i < count; ++i)
            env.recipients.push_back("destinatario.numero." + std::to_string(i) +
                                     "@pec.example.it");
        std::string body = "body after a long envelope\r\n";
        fs::path p = tmp.path() / ("many" + std::to_string(count));
        std::string header = write_raw(p, env, body);
        if (count >= 700) {
            ASSERT_GT(header.size(), 8192u) << "test must exercise the growing read";
        }
        auto info = read_header(p);
        ASSERT_TRUE(info.has_value()) << count << ": " << info.error().message;
        EXPECT_EQ(info->env.recipients.size(), count);
        EXPECT_EQ(info->env, env);
        EXPECT_EQ(info->header_size, header.size());
        auto fd = durable::open_file(p, O_RDONLY);
        ASSERT_TRUE(fd.has_value());
        auto read = read_body(fd->get(), *info);
        ASSERT_TRUE(read.has_value());
        EXPECT_EQ(*read, body);
    }
}

TEST(spoolQueueFileHeader, HeaderEndingExactlyAtChunkBoundaries) {
    // Recipient lists sized so that the "body" line straddles the first 8 KB chunk in every way.
    TempDir tmp;
    Envelope base;
    base.arrival_us = 1000;
    base.id = new_queue_id(1000);
    std::string without = encode_header(base, 0);
    for (int delta = -40; delta <= 40; ++delta) {
        Envelope env = base;
        // One recipient whose line ("rcpt " + value + "\n") pads the header to 8192 + delta.
        int64_t pad = 8192 + delta - static_cast<int64_t>(without.size()) - 6;
        ASSERT_GT(pad, 0);
        env.recipients = {std::string(static_cast<size_t>(pad), 'r')};
        fs::path p = tmp.path() / ("edge" + std::to_string(delta + 100));
        std::string header = write_raw(p, env, "BODY\r\n");
        ASSERT_EQ(header.size(), static_cast<size_t>(8192 + delta));
        auto info = read_header(p);
        ASSERT_TRUE(info.has_value()) << delta << ": " << info.error().message;
        EXPECT_EQ(info->env, env);
        EXPECT_EQ(info->body_size, 6u);
    }
}

TEST(spoolQueueFileHeader, BodyContainingEnvelopeLikeTextDoesNotConfuseParser) {
    TempDir tmp;
    Envelope env = full_envelope();
    std::string body = "\nbody 00000000000000000001\nrcpt evil@x.it\nPECQ1\n";
    write_raw(tmp.path() / "f", env, body);
    auto info = read_header(tmp.path() / "f");
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->env, env);
    EXPECT_EQ(info->body_size, body.size());
}

TEST(spoolQueueFileHeader, FormatBodySizeAndPatchingTheField) {
    EXPECT_EQ(format_body_size(0), "00000000000000000000");
    EXPECT_EQ(format_body_size(1234567), "00000000000001234567");
    EXPECT_EQ(format_body_size(UINT64_MAX), "18446744073709551615");
    EXPECT_EQ(format_body_size(UINT64_MAX).size(), 20u);

    // pec-enqueue's streaming write: header with size 0, body appended, size patched in place.
    TempDir tmp;
    Envelope env = full_envelope();
    std::string header = encode_header(env, 0);
    size_t off = body_size_field_offset(header);
    EXPECT_EQ(header.substr(off), format_body_size(0) + "\n");
    EXPECT_EQ(header.substr(off - 6, 6), "\nbody ");
    std::string body(100000, 'x');
    for (size_t i = 0; i < body.size(); i += 77) body[i] = static_cast<char>(i & 0xff);
    fs::path p = tmp.path() / env.id;
    spit(p, header + body);
    auto before = read_header(p);
    ASSERT_FALSE(before.has_value()) << "size 0 with a body must be corrupt";
    EXPECT_EQ(before.error().kind, ErrorKind::corrupt);
    {
        auto fd = durable::open_file(p, O_WRONLY);
        ASSERT_TRUE(fd.has_value());
        ASSERT_TRUE(
            durable::pwrite_all(fd->get(), format_body_size(body.size()), static_cast<off_t>(off)));
    }
    auto info = read_header(p);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->env, env);
    EXPECT_EQ(info->body_size, body.size());
    EXPECT_EQ(encode_header(env, body.size()), slurp(p).substr(0, header.size()));
    auto fd = durable::open_file(p, O_RDONLY);
    ASSERT_TRUE(fd.has_value());
    EXPECT_EQ(read_body(fd->get(), *info).value(), body);
}

// ---- bodies ------------------------------------------------------------------------------------

TEST(spoolQueueFileBody, FromBytesIsByteIdentical) {
    TempDir tmp;
    for (size_t size : {size_t{0}, size_t{1}, size_t{255}, size_t{256 * 1024 - 1},
                        size_t{256 * 1024}, size_t{700 * 1024}}) {
        std::string body;
        body.reserve(size);
        std::mt19937 rng(static_cast<unsigned>(size));
        for (size_t i = 0; i < size; ++i)
            body += (i % 50 == 48) ? '\r' : (i % 50 == 49) ? '\n' : static_cast<char>(rng());
        Envelope env = full_envelope();
        fs::path p = tmp.path() / ("bytes" + std::to_string(size));
        auto fd = write_queue_file(p, env, BodySource::from_bytes(body));
        ASSERT_TRUE(fd.has_value()) << fd.error().message;
        fd->reset();
        auto info = read_header(p);
        ASSERT_TRUE(info.has_value()) << info.error().message;
        EXPECT_EQ(info->env, env);
        EXPECT_EQ(info->body_size, size);
        auto in = durable::open_file(p, O_RDONLY);
        ASSERT_TRUE(in.has_value());
        auto read = read_body(in->get(), *info);
        ASSERT_TRUE(read.has_value());
        EXPECT_TRUE(*read == body) << "body of size " << size << " differs";
        EXPECT_EQ(fs::file_size(p), info->header_size + size);
    }
}

TEST(spoolQueueFileBody, FromFileRangeIsByteIdentical) {
    TempDir tmp;
    // A source queue file whose body holds every byte value, NULs and bare/CRLF line ends.
    std::string body = all_bytes() + "\r\n.\r\n\0\0\r\rend\n" + all_bytes();
    body += std::string(300000, '\0');
    body += "tail\r\n";
    Envelope src_env = full_envelope();
    fs::path src = tmp.path() / "src";
    write_raw(src, src_env, body);
    auto src_info = read_header(src);
    ASSERT_TRUE(src_info.has_value()) << src_info.error().message;
    auto src_fd = durable::open_file(src, O_RDONLY);
    ASSERT_TRUE(src_fd.has_value());

    Envelope out_env = src_env;
    out_env.id = derived_queue_id(src_env.id, "copy");
    out_env.history.push_back({"test", 5, "copied"});
    fs::path dst = tmp.path() / "dst";
    auto out = write_queue_file(
        dst, out_env,
        BodySource::from_file(src_fd->get(), src_info->body_offset(), src_info->body_size));
    ASSERT_TRUE(out.has_value()) << out.error().message;
    out->reset();
    auto info = read_header(dst);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->env, out_env);
    auto dst_fd = durable::open_file(dst, O_RDONLY);
    ASSERT_TRUE(dst_fd.has_value());
    auto copied = read_body(dst_fd->get(), *info);
    ASSERT_TRUE(copied.has_value());
    EXPECT_TRUE(*copied == body);

    // A sub-range of another file.
    fs::path part = tmp.path() / "part";
    auto p = write_queue_file(
        part, out_env, BodySource::from_file(src_fd->get(), src_info->body_offset() + 10, 100));
    ASSERT_TRUE(p.has_value());
    p->reset();
    auto pinfo = read_header(part);
    ASSERT_TRUE(pinfo.has_value());
    auto pfd = durable::open_file(part, O_RDONLY);
    EXPECT_EQ(read_body(pfd->get(), *pinfo).value(), body.substr(10, 100));
}

TEST(spoolQueueFileBody, FromFileRangeShorterThanClaimedFailsAndLeavesNothing) {
    TempDir tmp;
    fs::path src = tmp.path() / "short";
    spit(src, "only twenty bytes!!!");
    auto fd = durable::open_file(src, O_RDONLY);
    ASSERT_TRUE(fd.has_value());
    Envelope env = full_envelope();
    fs::path dst = tmp.path() / "dst";
    auto out = write_queue_file(dst, env, BodySource::from_file(fd->get(), 0, 1000));
    ASSERT_FALSE(out.has_value());
    EXPECT_EQ(out.error().kind, ErrorKind::corrupt);
    EXPECT_FALSE(fs::exists(dst)) << "a failed write must not leave a partial queue file";
}

TEST(spoolQueueFileBody, WriteRefusesExistingFile) {
    TempDir tmp;
    fs::path p = tmp.path() / "exists";
    spit(p, "precious");
    auto out = write_queue_file(p, full_envelope(), BodySource::from_bytes("x"));
    ASSERT_FALSE(out.has_value());
    EXPECT_EQ(out.error().kind, ErrorKind::conflict);
    EXPECT_EQ(slurp(p), "precious");
}

TEST(spoolQueueFileBody, InjectedWriteFaultRemovesThePartialFile) {
    TempDir tmp;
    ASSERT_TRUE(durable::set_faults("write=ENOSPC"));
    fs::path p = tmp.path() / "f";
    auto out = write_queue_file(p, full_envelope(), BodySource::from_bytes(std::string(10, 'x')));
    durable::clear_faults();
    ASSERT_FALSE(out.has_value());
    EXPECT_EQ(out.error().kind, ErrorKind::transient);
    EXPECT_EQ(out.error().sys_errno, ENOSPC);
    EXPECT_FALSE(fs::exists(p));
    // Large bodies take the two-write path: the fault on the second write must clean up too.
    ASSERT_TRUE(durable::set_faults("write=EIO@2"));
    auto big =
        write_queue_file(p, full_envelope(), BodySource::from_bytes(std::string(300000, 'y')));
    durable::clear_faults();
    ASSERT_FALSE(big.has_value());
    EXPECT_FALSE(fs::exists(p));
}

// ---- corrupt files -----------------------------------------------------------------------------

class spoolCorruptQueueFile : public ::testing::Test {
  protected:
    void SetUp() override {
        env_ = full_envelope();
        header_ = encode_header(env_, body_.size());
        good_ = header_ + body_;
        // The well-formed file is accepted: the mutations below are what make it corrupt.
        auto ok = read_header_of_bytes(tmp_.path() / "good", good_);
        ASSERT_TRUE(ok.has_value()) << ok.error().message;
    }
    void expect_corrupt(std::string_view bytes, const std::string& what) {
        auto info = read_header_of_bytes(tmp_.path() / "bad", bytes);
        ASSERT_FALSE(info.has_value()) << what << ": accepted";
        EXPECT_EQ(info.error().kind, ErrorKind::corrupt) << what << ": " << info.error().describe();
    }
    TempDir tmp_;
    Envelope env_;
    std::string body_ = "From: a@b\r\n\r\nbinary\x01\x02\xff\r\n";
    std::string header_;
    std::string good_;
};

TEST_F(spoolCorruptQueueFile, TruncatedBody) {
    for (size_t cut = 1; cut <= body_.size(); ++cut)
        expect_corrupt(good_.substr(0, good_.size() - cut), "body short by " + std::to_string(cut));
}

TEST_F(spoolCorruptQueueFile, TruncatedHeader) {
    for (size_t len :
         {size_t{0}, size_t{3}, kQueueMagic.size(), header_.size() / 2, header_.size() - 1})
        expect_corrupt(good_.substr(0, len), "truncated to " + std::to_string(len));
}

TEST_F(spoolCorruptQueueFile, ExtraTrailingLinesThatAreNotRecords) {
    // After the body only complete "hist"/"attr" trailer records may follow.
    expect_corrupt(good_ + "x\n", "a junk line");
    expect_corrupt(good_ + std::string(10000, '\n'), "many empty lines");
    expect_corrupt(good_ + "body 00000000000000000001\nX", "a second body line");
    expect_corrupt(good_ + "rcpt extra@x.it\n", "an envelope field in the trailer");
    expect_corrupt(good_ + "hist stage notanumber note\n", "a bad trailer history record");
    expect_corrupt(good_ + "attr k%zz v\n", "a bad trailer attr record");
    expect_corrupt(good_ + encode_trailer_hist({"wrap", 1, "ok"}) + "junk\n",
                   "junk after a good record");
}

TEST_F(spoolCorruptQueueFile, TornTrailerIsIgnoredAndReported) {
    // A crash during an in-place append leaves a partial last line: ignored, its size reported.
    std::string record = encode_trailer_hist({"wrap", 77, "-> verify"});
    for (size_t cut = 1; cut < record.size(); ++cut) {
        auto info = read_header_of_bytes(tmp_.path() / "torn", good_ + record.substr(0, cut));
        ASSERT_TRUE(info.has_value()) << cut << ": " << info.error().message;
        EXPECT_EQ(info->env, env_) << "a torn record must not change the envelope";
        EXPECT_EQ(info->trailer_size, 0u);
        EXPECT_EQ(info->torn_size, cut);
        EXPECT_EQ(info->complete_size(), good_.size());
    }
    // A complete record followed by a torn one: the complete one counts.
    std::string two = record + encode_trailer_attr("k", "v").substr(0, 4);
    auto info = read_header_of_bytes(tmp_.path() / "torn2", good_ + two);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    EXPECT_EQ(info->trailer_size, record.size());
    EXPECT_EQ(info->torn_size, 4u);
    EXPECT_EQ(info->env.history.size(), env_.history.size() + 1);
    EXPECT_FALSE(info->env.attr("k").has_value());
}

TEST(spoolQueueFileTrailer, RecordsAreMergedIntoTheEnvelope) {
    TempDir tmp;
    Envelope env = full_envelope();
    std::string body("body\r\nwith\0nul\r\n", 16);
    std::string header = encode_header(env, body.size());
    HistoryEntry hop{"wrap phase", 1234, "-> verify %weird\n"};
    std::vector<std::string> records = {encode_trailer_hist(hop),
                                        encode_trailer_attr("route", "changed value"),
                                        encode_trailer_attr("new key", std::string("\0\xff", 2))};
    std::string trailer;
    for (const auto& r : records) {
        ASSERT_TRUE(r.ends_with('\n'));
        EXPECT_EQ(std::count(r.begin(), r.end(), '\n'), 1) << "a record must be one line: " << r;
        trailer += r;
    }
    fs::path p = tmp.path() / env.id;
    spit(p, header + body + trailer);
    auto info = read_header(p);
    ASSERT_TRUE(info.has_value()) << info.error().message;
    Envelope expected = env;
    expected.history.push_back(hop);
    expected.set_attr("route", "changed value");
    expected.set_attr("new key", std::string("\0\xff", 2));
    EXPECT_EQ(info->env, expected);
    EXPECT_EQ(info->header_size, header.size());
    EXPECT_EQ(info->body_size, body.size());
    EXPECT_EQ(info->trailer_size, trailer.size());
    EXPECT_EQ(info->torn_size, 0u);
    EXPECT_EQ(info->complete_size(), header.size() + body.size() + trailer.size());
    auto fd = durable::open_file(p, O_RDONLY);
    ASSERT_TRUE(fd.has_value());
    EXPECT_EQ(read_body(fd->get(), *info).value(), body) << "the trailer is not part of the body";
}

// read_header's first read keeps the file's first bytes: a file no larger than it is read once
// (body and trailer from memory), a larger one has its trailer and body read where they are, and
// a trailer straddling the first read's end is read whole.
TEST(spoolQueueFileTrailer, TheFirstReadServesBodyAndTrailerOfASmallFileOnly) {
    TempDir tmp;
    Envelope env = full_envelope();
    const std::string header_probe = encode_header(env, 0);
    const std::string trailer = encode_trailer_hist({"verify", 42, "-> deliver"}) +
                                encode_trailer_attr("pec.kind", "busta-trasporto");
    // The file's size relative to the first read: smaller, ending exactly at it, straddling it
    // with the trailer, and beyond it with the body.
    for (int64_t overhang :
         {int64_t{-1000}, int64_t{0}, static_cast<int64_t>(trailer.size()) / 2, int64_t{70000}}) {
        SCOPED_TRACE("file size = first read + " + std::to_string(overhang));
        size_t total = static_cast<size_t>(static_cast<int64_t>(kHeaderFirstRead) + overhang);
        // The body's size field may be a digit longer than in the probe: adjust once.
        size_t body_size = total - header_probe.size() - trailer.size();
        std::string header = encode_header(env, body_size);
        body_size = total - header.size() - trailer.size();
        header = encode_header(env, body_size);
        ASSERT_EQ(header.size() + body_size + trailer.size(), total);
        std::string body(body_size, 'b');
        body.front() = 'B';
        body.back() = 'E';
        fs::path p = tmp.path() / env.id;
        spit(p, header + body + trailer);
        auto fd = durable::open_file(p, O_RDONLY);
        ASSERT_TRUE(fd.has_value());
        auto info = read_header(fd->get(), p.string());
        ASSERT_TRUE(info.has_value()) << info.error().message;
        EXPECT_EQ(info->trailer_size, trailer.size());
        EXPECT_EQ(info->env.attr("pec.kind"), "busta-trasporto");
        ASSERT_FALSE(info->env.history.empty());
        EXPECT_EQ(info->env.history.back().note, "-> deliver");
        EXPECT_EQ(read_body(fd->get(), *info).value(), body);
        // Without the file: only what the first read kept.
        auto from_memory = read_body(-1, *info);
        if (overhang <= 0) {
            ASSERT_TRUE(from_memory.has_value()) << "a file within the first read is read once";
            EXPECT_EQ(*from_memory, body);
        } else if (overhang > static_cast<int64_t>(trailer.size())) {
            EXPECT_FALSE(from_memory.has_value()) << "a body beyond the first read is read";
        }
        fs::remove(p);
    }
}

TEST_F(spoolCorruptQueueFile, BadMagic) {
    std::string bad = good_;
    bad[0] = 'X';
    expect_corrupt(bad, "first magic byte");
    bad = good_;
    bad[4] = '2';
    expect_corrupt(bad, "magic version");
    expect_corrupt(good_.substr(kQueueMagic.size()), "no magic at all");
    expect_corrupt("garbage that is not a queue file\nbody 00000000000000000000\n", "garbage");
}

TEST_F(spoolCorruptQueueFile, UnknownField) {
    std::string bad = good_;
    bad.insert(kQueueMagic.size(), "color blue\n");
    expect_corrupt(bad, "unknown field");
    bad = good_;
    size_t at = bad.find("\nattempts ");
    bad.insert(at + 1, "attempt 3\n");
    expect_corrupt(bad, "misspelt field");
}

TEST_F(spoolCorruptQueueFile, MissingBodyLine) {
    std::string without = header_.substr(0, header_.find("\nbody ") + 1);
    expect_corrupt(without + body_, "no body line");
    expect_corrupt(without, "no body line, no body");
}

TEST_F(spoolCorruptQueueFile, MissingId) {
    std::string bad = good_;
    size_t start = bad.find("id ");
    size_t end = bad.find('\n', start);
    bad.erase(start, end - start + 1);
    expect_corrupt(bad, "no id line");
}

TEST_F(spoolCorruptQueueFile, BadNumbers) {
    auto replace_line = [&](std::string_view key, std::string_view value) {
        std::string bad = good_;
        size_t start = bad.find("\n" + std::string(key) + " ") + 1;
        size_t end = bad.find('\n', start);
        bad.replace(start, end - start, std::string(key) + " " + std::string(value));
        return bad;
    };
    expect_corrupt(replace_line("arrival", "12x"), "arrival");
    expect_corrupt(replace_line("arrival", ""), "empty arrival");
    expect_corrupt(replace_line("attempts", "two"), "attempts");
    expect_corrupt(replace_line("next-attempt", "1.5"), "next-attempt");
    expect_corrupt(replace_line("sender", "bad%zzescape"), "bad escape in sender");
    expect_corrupt(replace_line("rcpt", "trailing%"), "truncated escape in rcpt");
    // Same length as the real size field, so only the content is wrong.
    std::string bad = good_;
    size_t off = body_size_field_offset(header_);
    bad.replace(off, 20, "0000000000000000000x");
    expect_corrupt(bad, "body size with a letter");
}

TEST_F(spoolCorruptQueueFile, BadHistoryAndAttrLines) {
    std::string bad = good_;
    size_t at = bad.find("\nhist ");
    bad.insert(at + 1, "hist stage notanumber note\n");
    expect_corrupt(bad, "hist time");
    bad = good_;
    at = bad.find("\nattr ");
    bad.insert(at + 1, "attr k%g0 v\n");
    expect_corrupt(bad, "attr escape");
}

TEST_F(spoolCorruptQueueFile, SizeDisagreesBothWays) {
    // A header claiming more or fewer bytes than the file has.
    for (uint64_t claimed : {body_.size() - 1, body_.size() + 1, uint64_t{0}, uint64_t{1} << 40}) {
        std::string h = encode_header(env_, claimed);
        expect_corrupt(h + body_, "claims " + std::to_string(claimed));
    }
}

TEST(spoolQueueFileErrors, MissingFileIsNotFoundNotCorrupt) {
    TempDir tmp;
    auto info = read_header(tmp.path() / "does-not-exist");
    ASSERT_FALSE(info.has_value());
    EXPECT_EQ(info.error().kind, ErrorKind::not_found);
}

TEST(spoolQueueFileErrors, InjectedReadFaultIsTransient) {
    TempDir tmp;
    write_raw(tmp.path() / "f", full_envelope(), "abc");
    ASSERT_TRUE(durable::set_faults("read=EIO"));
    auto info = read_header(tmp.path() / "f");
    durable::clear_faults();
    ASSERT_FALSE(info.has_value());
    EXPECT_EQ(info.error().kind, ErrorKind::transient);
    EXPECT_TRUE(read_header(tmp.path() / "f").has_value());
}

TEST(spoolEnvelopeAttrs, SetAttrReplacesInPlaceAndKeepsOrder) {
    Envelope env;
    env.set_attr("a", "1");
    env.set_attr("b", "2");
    env.set_attr("a", "3");
    ASSERT_EQ(env.attrs.size(), 2u);
    EXPECT_EQ(env.attrs[0].first, "a");
    EXPECT_EQ(env.attrs[0].second, "3");
    EXPECT_EQ(env.attr("b"), "2");
}

TEST(spoolDurableFaults, SpecParsingAndCounting) {
    EXPECT_FALSE(durable::set_faults("fsync"));
    EXPECT_FALSE(durable::set_faults("frobnicate=EIO"));
    EXPECT_FALSE(durable::set_faults("fsync=EWHAT"));
    // The 2nd rename fails once; the others pass.
    ASSERT_TRUE(durable::set_faults("rename=EIO@2x1"));
    EXPECT_FALSE(durable::inject(durable::Op::rename));
    EXPECT_TRUE(durable::inject(durable::Op::rename));
    EXPECT_EQ(errno, EIO);
    EXPECT_FALSE(durable::inject(durable::Op::rename));
    EXPECT_FALSE(durable::inject(durable::Op::fsync));
    ASSERT_TRUE(durable::set_faults("write=ENOSPC@3"));
    EXPECT_FALSE(durable::inject(durable::Op::write));
    EXPECT_FALSE(durable::inject(durable::Op::write));
    EXPECT_TRUE(durable::inject(durable::Op::write));
    EXPECT_TRUE(durable::inject(durable::Op::write));
    durable::clear_faults();
    EXPECT_FALSE(durable::inject(durable::Op::write));
}

// An output set's directory is made with one mkdir; what an earlier attempt left there goes.
TEST(spoolDurable, MakeEmptyDirCreatesOrEmptiesTheDirectory) {
    TempDir tmp;
    fs::path set = tmp.path() / "q1.out.tmp";
    ASSERT_TRUE(durable::make_empty_dir(set));
    EXPECT_TRUE(fs::is_directory(set));
    EXPECT_TRUE(fs::is_empty(set));
    std::ofstream(set / "wrap~q1A") << "left by a failed attempt";
    fs::create_directory(set / "nested");
    ASSERT_TRUE(durable::make_empty_dir(set));
    EXPECT_TRUE(fs::is_directory(set));
    EXPECT_TRUE(fs::is_empty(set));
    auto missing_parent = durable::make_empty_dir(tmp.path() / "no" / "such");
    ASSERT_FALSE(missing_parent);
    EXPECT_NE(missing_parent.error().message.find("mkdir"), std::string::npos);
}
