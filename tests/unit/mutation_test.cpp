// Hostile input, many times over: the real provider messages and pecd's own buste and
// submissions, each damaged in many seeded ways (bytes flipped, cut, repeated or inserted, lines
// made huge, line ends mixed, MIME boundaries, headers and base64 broken), read by the message
// library and then pushed through the providers' stages. Nothing may crash (the sanitizer build
// runs this too), and every damaged input must be accounted for: a message in the mailbox or a
// receipt to the sender, or a quarantined file with its reason. Never lost, never stuck.
#include <gtest/gtest.h>

#include <random>

#include "stages/pec/postacert.hpp"
#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using pec::MessageType;

namespace {

const fs::path kFixtures = fs::path(PECD_SHARED_DIR) / "fixtures" / "real";

std::vector<std::string> real_messages() {
    std::vector<std::string> out;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(kFixtures))
        if (e.path().extension() == ".eml") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) out.push_back(read_file(f));
    return out;
}

// How many damaged copies a test makes: PECD_MUTATIONS=N for a longer hunt than CI's.
uint32_t mutations(uint32_t by_default) {
    const char* n = std::getenv("PECD_MUTATIONS");
    return n && std::atoi(n) > 0 ? static_cast<uint32_t>(std::atoi(n)) : by_default;
}

// One seeded damage of `in`, 1 to 3 operations stacked.
class Mutator {
  public:
    explicit Mutator(uint32_t seed) : rng_(seed) {}

    std::string operator()(std::string s) {
        int ops = 1 + static_cast<int>(pick(3));
        for (int i = 0; i < ops && !s.empty(); ++i) s = once(std::move(s));
        return s;
    }

  private:
    size_t pick(size_t n) {
        return n == 0 ? 0 : std::uniform_int_distribution<size_t>(0, n - 1)(rng_);
    }
    char any_byte() { return static_cast<char>(pick(256)); }

    // Start and length of a random line.
    std::pair<size_t, size_t> some_line(const std::string& s) {
        size_t at = pick(s.size());
        size_t start = s.rfind('\n', at);
        start = start == std::string::npos ? 0 : start + 1;
        size_t end = s.find('\n', start);
        if (end == std::string::npos) end = s.size();
        return {start, end - start};
    }

    std::string once(std::string s) {
        switch (pick(11)) {
            case 0:  // flip a byte
                s[pick(s.size())] = any_byte();
                break;
            case 1: {  // cut a range
                size_t at = pick(s.size());
                s.erase(at, 1 + pick(200));
                break;
            }
            case 2: {  // repeat a range
                size_t at = pick(s.size());
                std::string piece = s.substr(at, 1 + pick(300));
                s.insert(at, piece);
                break;
            }
            case 3: {  // insert raw bytes: NULs, 8-bit, bare CR and LF
                std::string junk;
                for (size_t n = 1 + pick(16); n > 0; --n) junk += "\0\r\n\x80\xff="[pick(6)];
                s.insert(pick(s.size()), junk);
                break;
            }
            case 4:  // truncate
                s.resize(pick(s.size()));
                break;
            case 5: {  // a line made huge
                auto [start, len] = some_line(s);
                s.insert(start + len, std::string(4096 + pick(60000), "aZ9/+ <>;\""[pick(10)]));
                break;
            }
            case 6: {  // line ends mixed: CRLF -> LF or LF -> CRLF over a stretch
                size_t from = pick(s.size()), to = std::min(s.size(), from + pick(4000));
                std::string mid = s.substr(from, to - from), out;
                bool strip = pick(2) == 0;
                for (size_t i = 0; i < mid.size(); ++i) {
                    if (strip && mid[i] == '\r' && i + 1 < mid.size() && mid[i + 1] == '\n')
                        continue;
                    if (!strip && mid[i] == '\n' && (i == 0 || mid[i - 1] != '\r')) out += '\r';
                    out += mid[i];
                }
                s = s.substr(0, from) + out + s.substr(to);
                break;
            }
            case 7: {  // a MIME boundary changed where it is declared or where it is used
                size_t b = s.find("boundary=");
                if (b == std::string::npos) return once(std::move(s));
                std::vector<size_t> uses;
                for (size_t p = s.find("\n--"); p != std::string::npos; p = s.find("\n--", p + 1))
                    uses.push_back(p + 3);
                size_t at = uses.empty() || pick(3) == 0 ? b + 10 : uses[pick(uses.size())];
                if (at < s.size()) s[at] = static_cast<char>(s[at] ^ 0x21);
                break;
            }
            case 8: {  // a header line removed (or any line, past the header)
                auto [start, len] = some_line(s.substr(0, std::min(s.size(), s.find("\r\n\r\n"))));
                s.erase(start, len + 1);
                break;
            }
            case 9: {  // a line repeated: headers twice, parts twice
                auto [start, len] = some_line(s);
                s.insert(start, s.substr(start, len + 1));
                break;
            }
            default: {  // base64 made invalid along a stretch
                size_t at = pick(s.size());
                for (size_t i = at; i < std::min(s.size(), at + 1 + pick(80)); ++i)
                    if (std::isalnum(static_cast<unsigned char>(s[i]))) s[i] = "!*~-"[pick(4)];
                break;
            }
        }
        return s;
    }

    std::mt19937 rng_;
};

// Everything left in a spool's quarantine, with the reason files beside: a file without its
// reason is a failure.
size_t quarantined_with_reasons(const TwoProviders& net, const Node& node) {
    size_t count = 0;
    for (const auto& name : net.leftovers(node, spool::Area::quarantine)) {
        if (name.ends_with(".reason")) continue;
        ++count;
        fs::path file =
            node.spool.area_dir(spool::Area::quarantine, name.substr(0, name.find('/'))) /
            name.substr(name.find('/') + 1);
        fs::path reason = file.parent_path() / (file.filename().string() + ".reason");
        EXPECT_TRUE(fs::exists(reason)) << name << " quarantined without a reason";
        if (fs::exists(reason)) {
            EXPECT_FALSE(read_file(reason).empty()) << name;
        }
    }
    return count;
}

// Nothing waiting or in processing anywhere: only mailboxes, the internet sink and quarantine.
void expect_only_quarantine_left(const TwoProviders& net) {
    for (const Node* n : {&net.alpha, &net.beta})
        for (auto area : spool::kAreas) {
            if (area == spool::Area::quarantine) continue;
            auto left = net.leftovers(*n, area);
            EXPECT_TRUE(left.empty())
                << n->name << " " << spool::to_string(area) << ": " << left.front();
        }
}

TEST(Mutation, TheMessageLibraryReadsAndVerifiesDamagedMessagesWithoutFailingUnsafely) {
    TwoProviders net;
    auto p = net.beta.handle->current();
    auto index = p->index();
    size_t read = 0, refused = 0, verified_ok = 0;
    uint32_t seed = 1;
    for (const auto& original : real_messages()) {
        for (uint32_t i = 0; i < mutations(150); ++i, ++seed) {
            std::string damaged = Mutator(seed)(original);
            auto info = pec::read_pec_message(damaged);
            if (info) {
                ++read;
                std::string json = pec::to_json(*info);
                EXPECT_TRUE(json.starts_with("{") && json.ends_with("}")) << "seed " << seed;
            } else {
                ++refused;
                EXPECT_EQ(info.error().kind, ErrorKind::corrupt) << "seed " << seed;
                EXPECT_FALSE(info.error().message.empty()) << "seed " << seed;
            }
            auto report = p->verifier().verify(damaged, index.get());
            if (report && report->ok()) ++verified_ok;
        }
    }
    // The real messages are signed by providers outside the test PKI: a damaged copy never
    // passes as valid here.
    EXPECT_EQ(verified_ok, 0u);
    EXPECT_GT(read + refused, 1000u);
    std::cout << "damaged real messages: " << read << " read, " << refused << " refused\n";
}

// daticert.xml from the real messages, damaged: refused with a reason, or read into values that
// write_daticert writes back to the same values (nothing read that pecd could not reproduce).
TEST(Mutation, DamagedDaticertIsRefusedOrReadConsistently) {
    std::vector<std::string> xmls;
    for (const auto& m : real_messages())
        if (auto info = pec::read_pec_message(m); info && info->daticert_xml)
            xmls.push_back(*info->daticert_xml);
    ASSERT_GE(xmls.size(), 5u);
    size_t read = 0, refused = 0;
    uint32_t seed = 5000;
    for (const auto& xml : xmls)
        for (uint32_t i = 0; i < mutations(200); ++i, ++seed) {
            auto d = pec::parse_daticert(Mutator(seed)(xml));
            if (!d) {
                ++refused;
                EXPECT_EQ(d.error().kind, ErrorKind::corrupt) << "seed " << seed;
                EXPECT_FALSE(d.error().message.empty()) << "seed " << seed;
                continue;
            }
            ++read;
            auto again = pec::parse_daticert(pec::write_daticert(*d));
            ASSERT_TRUE(again) << "seed " << seed << ": " << again.error().message;
            EXPECT_EQ(*again, *d) << "seed " << seed;
        }
    EXPECT_GT(read, 0u);
    EXPECT_GT(refused, 0u);
    std::cout << "damaged daticert: " << read << " read, " << refused << " refused\n";
}

// A damaged providers index (a cache file hit by a disk fault, a hand edit gone wrong): refused
// with a reason, or read into records that pecd writes back as LDIF that reads the same.
TEST(Mutation, DamagedIndexLdifIsRefusedOrReadConsistently) {
    const std::string ldif = test_ldif();
    size_t read = 0, refused = 0;
    for (uint32_t seed = 9000; seed < 9000 + mutations(400); ++seed) {
        auto index = pec::parse_ldif(Mutator(seed)(ldif));
        if (!index) {
            ++refused;
            EXPECT_FALSE(index.error().message.empty()) << "seed " << seed;
            continue;
        }
        ++read;
        for (const auto& record : index->providers) {
            auto again = pec::parse_ldif(pec::provider_record_ldif(record));
            ASSERT_TRUE(again) << "seed " << seed << ": " << again.error().message;
            ASSERT_EQ(again->providers.size(), 1u) << "seed " << seed;
            EXPECT_EQ(again->providers[0].name, record.name) << "seed " << seed;
            EXPECT_EQ(again->providers[0].cert_hashes, record.cert_hashes) << "seed " << seed;
            EXPECT_EQ(again->providers[0].certificates, record.certificates) << "seed " << seed;
            EXPECT_EQ(again->providers[0].managed_domains, record.managed_domains)
                << "seed " << seed;
            EXPECT_EQ(again->providers[0].mail_receipt, record.mail_receipt) << "seed " << seed;
        }
    }
    EXPECT_GT(read, 0u);
    EXPECT_GT(refused, 0u);
    std::cout << "damaged index: " << read << " read, " << refused << " refused\n";
}

// A damaged pecd.conf (a typo, a bad paste, a half-written file): check-config's reading reports
// problems with their lines, or finds a configuration that loads; it never fails otherwise.
TEST(Mutation, DamagedConfigurationIsReportedLineByLine) {
    TwoProviders net;
    const std::string conf = read_file(net.alpha.conf);
    size_t clean = 0, reported = 0;
    for (uint32_t seed = 11000; seed < 11000 + mutations(150); ++seed) {
        std::string damaged = Mutator(seed)(conf);
        write_file(net.alpha.conf, damaged);
        auto config = Config::load(net.alpha.conf);
        if (!config) {
            ++reported;
            EXPECT_FALSE(config.error().message.empty()) << "seed " << seed;
            continue;
        }
        auto problems = provider::check(*config);
        for (const auto& p : config->problems()) problems.push_back(p);
        if (problems.empty()) {
            ++clean;
            continue;
        }
        ++reported;
        const size_t lines =
            static_cast<size_t>(std::count(damaged.begin(), damaged.end(), '\n')) + 1;
        for (const auto& p : problems) {
            EXPECT_FALSE(p.message.empty()) << "seed " << seed;
            EXPECT_GE(p.line, 0) << "seed " << seed;
            EXPECT_LE(static_cast<size_t>(p.line), lines) << "seed " << seed << ": " << p.message;
        }
    }
    write_file(net.alpha.conf, conf);
    EXPECT_GT(reported, 0u);
    std::cout << "damaged pecd.conf: " << clean << " load, " << reported << " reported\n";
}

// Damaged buste from alpha arrive at beta: each becomes a busta (the damage missed what is
// signed and checked), a busta di anomalia, or a quarantined file with its reason.
TEST(Mutation, DamagedBusteAtTheReceiptPointAreEachAccountedFor) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    net.submit("mario", {anna},
               client_message(mario, anna, "", "Contratto", "Importo: 100 euro.\r\n\r\nFirma."));
    // Hold alpha's busta in its outbox: it is the model for the damaged copies.
    net.run([](const spool::Envelope& env) {
        return env.sender.empty() || env.sender.starts_with("posta-");
    });
    auto held = net.held_in_outbox(net.alpha);
    ASSERT_EQ(held.size(), 1u);
    fs::path file = held[0];
    auto header = spool::read_header(file);
    ASSERT_TRUE(header.has_value());
    std::string busta = read_file(file).substr(header->body_offset(), header->body_size);
    fs::remove(file);

    std::vector<std::string> inputs;
    const uint32_t busta_seeds = mutations(80);
    for (uint32_t seed = 1000; seed < 1000 + busta_seeds; ++seed)
        inputs.push_back(Mutator(seed)(busta));
    for (const auto& real : real_messages())  // other providers' mail, damaged, to anna
        for (uint32_t seed = 2000; seed < 2004; ++seed) inputs.push_back(Mutator(seed)(real));
    for (const auto& input : inputs) net.enqueue(net.beta, header->env.sender, {anna}, "", input);
    net.run();

    auto box = net.mailbox(net.beta, anna);
    size_t quarantined = quarantined_with_reasons(net, net.beta);
    size_t buste = 0, anomalies = 0;
    for (const auto& r : box) {
        EXPECT_TRUE(r.info.type == MessageType::busta_trasporto ||
                    r.info.type == MessageType::busta_anomalia)
            << pec::to_string(r.info.type);
        buste += r.info.type == MessageType::busta_trasporto;
        anomalies += r.info.type == MessageType::busta_anomalia;
        // Whatever anna gets, beta or alpha signed it, and it verifies.
        EXPECT_TRUE(r.report.ok()) << pec::to_string(r.report.failure) << ": " << r.report.reason;
    }
    EXPECT_EQ(box.size() + quarantined, inputs.size()) << net.describe();
    // With the default policy (ordinary mail becomes an anomaly) nothing arriving for a
    // certified mailbox is kept from it: what cannot be a busta is delivered as an anomaly.
    EXPECT_EQ(quarantined, 0u) << net.describe();
    // A presa in carico to alpha's service box for each busta taken in, one only.
    EXPECT_EQ(net.mailbox(net.alpha, net.alpha.service()).size(), buste);
    expect_only_quarantine_left(net);
    std::cout << inputs.size() << " damaged inputs at beta: " << buste << " buste, " << anomalies
              << " anomalies, " << quarantined << " quarantined\n";
}

// Damaged receipts from beta (avvenuta consegna to mario, presa in carico to alpha's service
// mailbox) arrive at alpha: each lands in its mailbox as the receipt or as an anomaly.
TEST(Mutation, DamagedReceiptsAtTheSendersProviderAreEachAccountedFor) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    net.submit("mario", {anna}, client_message(mario, anna, "", "Ordine", "Ordine n. 7."));
    // Relay everything but what beta sends back: its receipts are the models.
    net.run([](const spool::Envelope& env) { return !env.sender.ends_with("@pec.beta.test"); });
    std::vector<std::pair<spool::Envelope, std::string>> models;
    for (const fs::path& file : net.held_in_outbox(net.beta)) {
        auto header = spool::read_header(file);
        ASSERT_TRUE(header.has_value());
        models.emplace_back(header->env,
                            read_file(file).substr(header->body_offset(), header->body_size));
        fs::remove(file);
    }
    ASSERT_EQ(models.size(), 2u);  // the presa in carico and the avvenuta consegna
    // In one order whatever the directory's: a seed damages the same model every run.
    std::sort(models.begin(), models.end(),
              [](const auto& a, const auto& b) { return a.first.recipients < b.first.recipients; });
    size_t inputs = 0;
    uint32_t seed = 7000;
    for (const auto& [env, body] : models)
        for (uint32_t i = 0; i < mutations(40); ++i, ++seed, ++inputs)
            net.enqueue(net.alpha, env.sender, env.recipients, "", Mutator(seed)(body));
    net.run();

    size_t receipts = 0, anomalies = 0, accettazioni = 0;
    for (const auto& who : {mario, net.alpha.service()})
        for (const auto& r : net.mailbox(net.alpha, who)) {
            EXPECT_TRUE(r.report.ok())
                << pec::to_string(r.report.failure) << ": " << r.report.reason;
            if (r.info.type == MessageType::accettazione) {
                ++accettazioni;  // of the model message itself
            } else if (r.info.type == MessageType::busta_anomalia) {
                ++anomalies;
            } else {
                EXPECT_TRUE(r.info.type == MessageType::avvenuta_consegna ||
                            r.info.type == MessageType::presa_in_carico)
                    << pec::to_string(r.info.type);
                ++receipts;
            }
        }
    EXPECT_EQ(accettazioni, 1u);
    EXPECT_EQ(receipts + anomalies, inputs) << net.describe();
    EXPECT_EQ(quarantined_with_reasons(net, net.alpha), 0u) << net.describe();
    expect_only_quarantine_left(net);
    std::cout << inputs << " damaged receipts at alpha: " << receipts << " receipts, " << anomalies
              << " anomalies\n";
}

// Damaged submissions at alpha's access point: each gives mario exactly one accettazione or
// one avviso di non accettazione, or is quarantined with its reason.
TEST(Mutation, DamagedSubmissionsAtTheAccessPointAreEachAccountedFor) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    std::string model =
        "From: " + mario + "\r\nTo: " + anna +
        "\r\nSubject: Offerta\r\nMessage-ID: <offerta.1@client.test>\r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0100\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        "\r\n\r\nPrezzo: 1000 =E2=82=AC\r\n--XYZ\r\nContent-Type: application/pdf; name=\"o.pdf\""
        "\r\nContent-Transfer-Encoding: "
        "base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3Ro"
        "\r\nIDMgMCBSL0ZpbHRlci9GbGF0ZURlY29kZT4+CnN0cmVhbQp4nDPQM1Qo5ypUMFAw\r\n--XYZ--\r\n";
    const size_t count = mutations(60);
    for (uint32_t seed = 3000; seed < 3000 + count; ++seed)
        net.submit("mario", {anna}, Mutator(seed)(model));
    net.run();

    size_t accepted = 0, refused = 0;
    for (const auto& r : net.mailbox(net.alpha, mario)) {
        accepted += r.info.type == MessageType::accettazione;
        refused += r.info.type == MessageType::non_accettazione;
    }
    size_t quarantined = quarantined_with_reasons(net, net.alpha);
    EXPECT_EQ(accepted + refused + quarantined, count) << net.describe();
    // A submission pecd cannot read is refused with a notice, not kept from its sender.
    EXPECT_EQ(quarantined, 0u) << net.describe();
    // Each accepted message reached anna (as a busta) and came back as a delivery receipt.
    EXPECT_EQ(net.mailbox(net.beta, anna).size(), accepted);
    expect_only_quarantine_left(net);
    std::cout << count << " damaged submissions: " << accepted << " accepted, " << refused
              << " refused, " << quarantined << " quarantined\n";
}

}  // namespace
