// The real daemons: `pecd all` for alpha and for beta, each on its own spool, a submission
// through pec-enqueue (as Postfix's pipe would hand it over), and the outboxes relayed between
// them while they run. Also `pecd check-config` and a SIGHUP reload of a running daemon.
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <random>
#include <set>
#include <thread>

#include "stages/legallog/legal_log.hpp"
#include "tests/support/process.hpp"
#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using pec::MessageType;
using pecd::testing::ProcessGuard;
using pecd::testing::spawn;
using pecd::testing::SpawnOptions;

namespace {

const fs::path kBin = fs::path(PECD_BINARY_DIR) / "bin";

// Fast retries, and a legal log in <node>/legallog.
NodeOptions fast() {
    return NodeOptions{"eicar",
                       "[runner]\nrescan_interval = 200ms\ndeferred_scan_interval = 100ms\n"
                       "backoff_base = 100ms\nbackoff_max = 500ms\n"
                       "[legallog]\ndirectory = legallog\nnode = n1\n"};
}

std::vector<legallog::Record> legal_log(const Node& n) {
    std::vector<legallog::Record> out;
    auto found = legallog::search(n.dir / "legallog", {});
    EXPECT_TRUE(found.has_value()) << found.error().message;
    if (found)
        for (auto& f : *found) out.push_back(std::move(f.record));
    return out;
}

// The legal log of a node: every chain holds (pecq log verify, as cron would run it).
void expect_legal_log_verifies(const Node& n) {
    auto r = run(std::string(PECD_BINARY_DIR) + "/bin/pecq -c " + quote(n.conf) + " log verify");
    EXPECT_EQ(r.status, 0) << r.output;
}

std::string log_of(const fs::path& p) {
    return fs::exists(p) ? read_file(p) : std::string();
}

}  // namespace

TEST(ProviderPecd, TwoDaemonsDeliverAndCertify) {
    TwoProviders net(fast(), fast());
    const fs::path alpha_log = net.root() / "alpha.log", beta_log = net.root() / "beta.log";
    ProcessGuard alpha(spawn({(kBin / "pecd").string(), "-c", net.alpha.conf.string(), "all"},
                             SpawnOptions{{}, "", "", alpha_log.string()}));
    ProcessGuard beta(spawn({(kBin / "pecd").string(), "-c", net.beta.conf.string(), "all"},
                            SpawnOptions{{}, "", "", beta_log.string()}));
    ASSERT_GT(alpha.pid(), 0);
    ASSERT_GT(beta.pid(), 0);

    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna"),
                      luca = net.beta.address("luca");
    fs::path message = net.root() / "message.eml";
    write_file(message, client_message(mario, anna, luca, "Verbale", "Il verbale della riunione."));
    int rc = pecd::testing::run({(kBin / "pec-enqueue").string(), "-c", net.alpha.conf.string(),
                                 "-f", mario, "-u", "mario", "-a", "127.0.0.1", "--", anna, luca},
                                SpawnOptions{{}, message.string(), "", ""});
    ASSERT_EQ(rc, 0);

    // Relay while the daemons run, until mario holds the acceptance and both receipts.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool reloaded = false;
    while (std::chrono::steady_clock::now() < deadline) {
        net.relay(net.alpha, {});
        net.relay(net.beta, {});
        if (!reloaded && net.mailbox(net.beta, anna).size() == 1) {
            ::kill(beta.pid(), SIGHUP);  // mid-flow: beta's receipts still to come
            reloaded = true;
        }
        if (net.mailbox(net.alpha, mario).size() >= 3 &&
            net.mailbox(net.alpha, net.alpha.service()).size() >= 1)
            break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    auto box = net.mailbox(net.alpha, mario);
    ASSERT_EQ(box.size(), 3u) << log_of(alpha_log) << log_of(beta_log);
    std::vector<MessageType> kinds;
    for (const auto& r : box) {
        EXPECT_TRUE(r.report.ok()) << r.report.reason;
        kinds.push_back(r.info.type);
    }
    std::sort(kinds.begin(), kinds.end());
    EXPECT_EQ(kinds, (std::vector{MessageType::accettazione, MessageType::avvenuta_consegna,
                                  MessageType::avvenuta_consegna}));
    for (const auto& who : {anna, luca}) {
        auto got = net.mailbox(net.beta, who);
        ASSERT_EQ(got.size(), 1u) << who;
        EXPECT_EQ(got[0].info.type, MessageType::busta_trasporto);
        EXPECT_TRUE(got[0].report.ok()) << got[0].report.reason;
    }
    auto service = net.mailbox(net.alpha, net.alpha.service());
    ASSERT_EQ(service.size(), 1u);
    EXPECT_EQ(service[0].info.type, MessageType::presa_in_carico);

    pecd::testing::stop_pid(alpha.release());
    pecd::testing::stop_pid(beta.release());
    EXPECT_NE(log_of(beta_log).find("SIGHUP: configuration reloaded"), std::string::npos)
        << log_of(beta_log);
    net.expect_clean();

    // The legal logs: the exchange's events, and SIGTERM closed every stage's file.
    const std::string id = box[0].info.daticert->identificativo;
    std::multiset<std::string> alpha_events, beta_events;
    for (const auto& r : legal_log(net.alpha))
        if (r.identificativo == id) alpha_events.insert(std::string(legallog::to_string(r.event)));
    for (const auto& r : legal_log(net.beta))
        if (r.identificativo == id) beta_events.insert(std::string(legallog::to_string(r.event)));
    EXPECT_EQ(alpha_events.count("accettazione"), 1u);
    EXPECT_EQ(alpha_events.count("busta-inviata"), 1u);
    EXPECT_EQ(beta_events.count("presa-in-carico"), 1u);
    EXPECT_EQ(beta_events.count("consegna"), 2u);  // anna, luca
    EXPECT_EQ(beta_events.count("ricevuta-consegna"), 2u);
    for (const Node* n : {&net.alpha, &net.beta}) {
        auto files = legallog::list_files(n->dir / "legallog");
        ASSERT_TRUE(files.has_value());
        EXPECT_FALSE(files->empty());
        for (const auto& f : *files) {
            auto state = legallog::file_state(f);
            ASSERT_TRUE(state.has_value());
            EXPECT_TRUE(state->closed) << f;
            EXPECT_NE(read_file(f).find("\tC\t"), std::string::npos);
            EXPECT_TRUE(read_file(f).ends_with("\tshutdown\n")) << f;
        }
        expect_legal_log_verifies(*n);
    }
}

TEST(ProviderPecd, CheckConfigListsEveryProblem) {
    TwoProviders net;
    fs::path out = net.root() / "check.out";
    int good = pecd::testing::run(
        {(kBin / "pecd").string(), "-c", net.alpha.conf.string(), "check-config"},
        SpawnOptions{{}, "", out.string(), out.string()});
    EXPECT_EQ(good, 0) << log_of(out);

    std::string text = read_file(net.alpha.conf);
    write_file(net.alpha.conf,
               text +
                   "[limits]\nmax_size_times_recipients = big\n[policy]\nordinary_mail = drop\n"
                   "[legallog]\ntsa_url = http://[::1:318/tsa\n");
    fs::path bad_out = net.root() / "check-bad.out";
    int bad = pecd::testing::run(
        {(kBin / "pecd").string(), "-c", net.alpha.conf.string(), "check-config"},
        SpawnOptions{{}, "", bad_out.string(), bad_out.string()});
    EXPECT_EQ(bad, 1);
    std::string report = log_of(bad_out);
    // both problems, each with its line
    size_t lines = static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
    EXPECT_NE(report.find("pecd.conf:" + std::to_string(lines + 2) + ":"), std::string::npos)
        << report;
    EXPECT_NE(report.find("pecd.conf:" + std::to_string(lines + 4) + ":"), std::string::npos)
        << report;
    EXPECT_NE(report.find("pecd.conf:" + std::to_string(lines + 6) +
                          ": [legallog] tsa_url: bad TSA URL http://[::1:318/tsa: unclosed ["),
              std::string::npos)
        << report;
}

// `pecd index-record`: this provider's IGPEC record, signed with its key, which `openssl cms`
// and pecd both read; then that signed record as the provider's index, read by check-config and
// refresh-index, and refused by both once a byte of it changes.
TEST(ProviderPecd, IndexRecordIsSignedAndServesAsTheIndex) {
    TwoProviders net;
    const auto& pki = test_pki();
    const std::string pecd = (kBin / "pecd").string();
    const std::string conf = net.alpha.conf.string();
    const std::string url = "https://pec.alpha.test/igpec/alpha.p7m";
    fs::path record = net.alpha.dir / "alpha.p7m";
    fs::path out = net.root() / "record.out";
    // Alpha's renewed certificate, from the test CA: same service address, later expiry.
    fs::path next = net.root() / "alpha-next.crt";
    write_file(net.root() / "next.ext",
               "[v3]\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = emailProtection\n"
               "subjectAltName = email:posta-certificata@pec.alpha.test\n"
               "subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n");
    auto issued = run("openssl req -new -key " + quote(pki / "alpha.key") +
                      " -subj '/C=IT/O=Gestore Alpha S.p.A./CN=Posta Certificata Gestore Alpha "
                      "S.p.A.' | openssl x509 -req -CA " +
                      quote(pki / "ca.crt") + " -CAkey " + quote(pki / "ca.key") +
                      " -set_serial 424242 -days 1500 -extfile " + quote(net.root() / "next.ext") +
                      " -extensions v3 -out " + quote(next));
    ASSERT_EQ(issued.status, 0) << issued.output;
    // Beta's certificate is no renewal of alpha's: refused, nothing written.
    int rc = pecd::testing::run({pecd, "-c", conf, "index-record", "--out", record.string(),
                                 "--next-cert", (pki / "beta.crt").string()},
                                SpawnOptions{{}, "", out.string(), out.string()});
    EXPECT_EQ(rc, 78);
    EXPECT_NE(log_of(out).find("posta-certificata@pec.alpha.test"), std::string::npos)
        << log_of(out);
    EXPECT_FALSE(fs::exists(record));
    rc = pecd::testing::run({pecd, "-c", conf, "index-record", "--out", record.string(), "--url",
                             url, "--next-cert", next.string()},
                            SpawnOptions{{}, "", out.string(), out.string()});
    ASSERT_EQ(rc, 0) << log_of(out);
    // Public data, for the web server that serves it.
    EXPECT_EQ(fs::status(record).permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                  fs::perms::others_read);
    fs::path content = net.root() / "record.content";
    auto cli = run("openssl cms -verify -inform DER -in " + quote(record) + " -CAfile " +
                   quote(pki / "ca.crt") + " -purpose smimesign -out " + quote(content));
    ASSERT_EQ(cli.status, 0) << cli.output;
    const std::string ldif = read_file(content);
    EXPECT_NE(ldif.find("LDIFLocationURL: " + url), std::string::npos) << ldif;
    auto snap = pec::parse_ldif(ldif);
    ASSERT_TRUE(snap.has_value()) << snap.error().message;
    ASSERT_EQ(snap->providers.size(), 1u);
    const pec::ProviderRecord& p = snap->providers[0];
    EXPECT_EQ(p.name, "Gestore Alpha S.p.A.");
    EXPECT_EQ(p.dn, "providerName=Gestore Alpha S.p.A.,o=postacert");
    EXPECT_EQ(p.mail_receipt, "posta-certificata@pec.alpha.test");
    EXPECT_EQ(p.managed_domains, std::vector<std::string>{"pec.alpha.test"});
    // The current certificate and the renewed one beside it, each with its SHA-1.
    ASSERT_EQ(p.certificates.size(), 2u);
    EXPECT_EQ(p.certificates[0], read_file(pki / "alpha.der"));
    auto next_der = run("openssl x509 -in " + quote(next) + " -outform DER -out " +
                        quote(net.root() / "alpha-next.der"));
    ASSERT_EQ(next_der.status, 0) << next_der.output;
    EXPECT_EQ(p.certificates[1], read_file(net.root() / "alpha-next.der"));
    EXPECT_EQ(p.cert_hashes.size(), 2u);

    // --plain: the same LDIF, unsigned, on stdout ("--out -" says so too).
    fs::path plain = net.root() / "record.ldif";
    rc = pecd::testing::run({pecd, "-c", conf, "index-record", "--plain", "--out", "-", "--url",
                             url, "--next-cert", next.string()},
                            SpawnOptions{{}, "", plain.string(), out.string()});
    ASSERT_EQ(rc, 0) << log_of(out);
    EXPECT_EQ(read_file(plain), ldif);

    // Its options belong to it: given to another command they are refused, not ignored.
    rc = pecd::testing::run({pecd, "-c", conf, "check-config", "--out", record.string()},
                            SpawnOptions{{}, "", out.string(), out.string()});
    EXPECT_EQ(rc, 64);
    EXPECT_NE(log_of(out).find("--out is an option of index-record only"), std::string::npos)
        << log_of(out);

    // The signed record as this provider's index.
    std::string text = read_file(net.alpha.conf);
    size_t at = text.find("ldif = ../index.ldif");
    ASSERT_NE(at, std::string::npos);
    write_file(net.alpha.conf, text.replace(at, 20, "ldif = alpha.p7m"));
    auto upkeep = [&](const std::string& what) {
        int status = pecd::testing::run({pecd, "-c", conf, what},
                                        SpawnOptions{{}, "", out.string(), out.string()});
        return std::make_pair(status, log_of(out));
    };
    auto [checked, check_report] = upkeep("check-config");
    EXPECT_EQ(checked, 0) << check_report;
    auto [refreshed, refresh_report] = upkeep("refresh-index");
    EXPECT_EQ(refreshed, 0) << refresh_report;
    EXPECT_NE(refresh_report.find("1 providers from ldif:"), std::string::npos) << refresh_report;
    EXPECT_NE(refresh_report.find("signed by C=IT, O=Gestore Alpha S.p.A."), std::string::npos)
        << refresh_report;

    // [index] ldif_signer names who may sign: beta may not sign alpha's record, alpha may.
    const std::string with_record = read_file(net.alpha.conf);
    write_file(net.alpha.conf,
               with_record + "\n[index]\nldif_signer = " + (pki / "beta.crt").string() + "\n");
    auto [wrong_signer, wrong_signer_report] = upkeep("check-config");
    EXPECT_EQ(wrong_signer, 1);
    EXPECT_NE(wrong_signer_report.find("not by a certificate of [index] ldif_signer"),
              std::string::npos)
        << wrong_signer_report;
    write_file(net.alpha.conf,
               with_record + "\n[index]\nldif_signer = " + (pki / "alpha.crt").string() + "\n");
    auto [right_signer, right_signer_report] = upkeep("check-config");
    EXPECT_EQ(right_signer, 0) << right_signer_report;

    std::string der = read_file(record);
    size_t domain = der.find("managedDomains: pec.alpha.test");
    ASSERT_NE(domain, std::string::npos);
    der[domain + 16] = 'q';
    write_file(record, der);
    auto [bad_check, bad_check_report] = upkeep("check-config");
    EXPECT_EQ(bad_check, 1);
    EXPECT_NE(bad_check_report.find("bad_signature"), std::string::npos) << bad_check_report;
    auto [bad_refresh, bad_refresh_report] = upkeep("refresh-index");
    EXPECT_NE(bad_refresh, 0);
    EXPECT_NE(bad_refresh_report.find("bad_signature"), std::string::npos) << bad_refresh_report;
}

// SIGKILL both daemons again and again while messages flow. Mailbox delivery is at least once,
// so a message may land twice; what must hold: every submission is accepted, delivered and
// certified, every copy of everything about one submission names the same identificativo, and
// nothing is lost, stuck or quarantined.
TEST(ProviderPecd, KilledDaemonsLoseNothingAndKeepOneIdentificativo) {
    TwoProviders net(fast(), fast());
    auto start = [&](Node& n) {
        return ProcessGuard(
            spawn({(kBin / "pecd").string(), "-c", n.conf.string(), "all"},
                  SpawnOptions{{}, "", "", (net.root() / (n.name + ".log")).string()}));
    };
    ProcessGuard alpha = start(net.alpha), beta = start(net.beta);
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna");
    constexpr int kMessages = 20;
    for (int i = 0; i < kMessages; ++i)
        net.submit("mario", {anna},
                   client_message(mario, anna, "", "Pratica " + std::to_string(i), "Testo."));

    std::mt19937 rng(42);
    int kills = 0;
    auto kill_and_restart = [&](ProcessGuard& guard, Node& n) {
        pid_t pid = guard.release();
        ::kill(pid, SIGKILL);
        pecd::testing::wait_exit(pid);
        guard = start(n);
        ++kills;
    };
    auto complete = [&] {
        std::map<std::string, std::set<MessageType>> seen;
        for (const auto& r : net.mailbox(net.alpha, mario))
            if (r.info.daticert && r.info.daticert->oggetto)
                seen[*r.info.daticert->oggetto].insert(r.info.type);
        size_t done = 0;
        for (const auto& [subject, kinds] : seen)
            if (kinds.contains(MessageType::accettazione) &&
                kinds.contains(MessageType::avvenuta_consegna))
                ++done;
        return done == kMessages && net.mailbox(net.alpha, net.alpha.service()).size() >= kMessages;
    };
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
    while (std::chrono::steady_clock::now() < deadline) {
        net.relay(net.alpha, {});
        net.relay(net.beta, {});
        if (kills < 12 && rng() % 3 == 0) {
            if (rng() % 2)
                kill_and_restart(alpha, net.alpha);
            else
                kill_and_restart(beta, net.beta);
        } else if (kills >= 12 && complete()) {
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(40 + rng() % 80));
    }
    ASSERT_TRUE(complete()) << "after " << kills << " kills\n" << net.describe();

    // One identificativo per submission, whatever was duplicated.
    std::map<std::string, std::set<std::string>> ids;  // subject suffix -> identificativi
    auto note = [&ids](const Received& r) {
        ASSERT_TRUE(r.report.ok()) << r.report.reason;
        ASSERT_TRUE(r.info.daticert.has_value());
        ids[*r.info.daticert->oggetto].insert(r.info.daticert->identificativo);
    };
    for (const auto& r : net.mailbox(net.alpha, mario)) note(r);
    for (const auto& r : net.mailbox(net.alpha, net.alpha.service())) note(r);
    for (const auto& r : net.mailbox(net.beta, anna)) note(r);
    ASSERT_EQ(ids.size(), static_cast<size_t>(kMessages));
    for (const auto& [subject, set] : ids) EXPECT_EQ(set.size(), 1u) << subject;

    pecd::testing::stop_pid(alpha.release());
    pecd::testing::stop_pid(beta.release());
    net.expect_clean();

    // The legal logs survived every kill: the chains hold, and every submission's acceptance,
    // taking in charge, delivery and receipt is logged (at least once) under its identificativo.
    std::map<std::string, std::set<std::string>> events;  // identificativo -> events
    for (const Node* n : {&net.alpha, &net.beta}) {
        expect_legal_log_verifies(*n);
        for (const auto& r : legal_log(*n))
            events[r.identificativo].insert(std::string(legallog::to_string(r.event)));
    }
    for (const auto& [subject, set] : ids) {
        const auto& logged = events[*set.begin()];
        for (const char* e : {"ricezione", "accettazione", "busta-inviata", "presa-in-carico",
                              "consegna", "ricevuta-consegna", "ricevuta-ricevuta", "invio"})
            EXPECT_TRUE(logged.contains(e)) << subject << ": no " << e;
    }
}
