// The provider with real servers, all started by this test on 127.0.0.1: slapd holding the
// providers index (LDAP with a local cache), a SoftHSM2 token per provider (PKCS#11 keys), clamd
// with the EICAR test DB, Dovecot (LMTP mailboxes, SASL for Postfix) and one Postfix per provider
// built from conf/postfix/{main,master}.cf: submission with SASL on "587", mail for the PEC
// domains on "25", both handed to pec-enqueue through pipe(8), pecd's output reinjected on
// "10025". Two `pecd all` (alpha, beta) with [mailbox] type = lmtp, [outbound] type = smtp,
// [antivirus] type = clamd, [index] source = ldap, [keys] pkcs11_*. smtp-sink plays the internet.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>

// crypto_support.hpp and slapd_fixture.hpp both define pecd::test::TempDir and CommandResult;
// the first pair is renamed for this file.
#define TempDir CryptoTempDir
#define CommandResult CryptoCommandResult
#include "tests/support/provider_net.hpp"
#undef TempDir
#undef CommandResult
#include "stages/provider/provider_config.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/process.hpp"
#include "tests/support/slapd_fixture.hpp"

using namespace pecd;
using namespace pecd::test;
using pec::MessageType;
using pecd::testing::ProcessGuard;
using pecd::testing::SpawnOptions;

namespace {

const fs::path kBin = fs::path(PECD_BINARY_DIR) / "bin";

std::string slurp(const fs::path& p) {
    return fs::exists(p) ? read_file(p) : std::string();
}

struct Provider {
    std::string name, domain;
    fs::path dir, conf;
    std::unique_ptr<SoftHsmToken> token;
    std::unique_ptr<ServerFixture> postfix;
    PecPostfixPorts ports;
    ProcessGuard pecd;
    std::string address(const std::string& local) const { return local + "@" + domain; }
    std::string service() const { return address("posta-certificata"); }
    std::string hsm_env() const {
        return "SOFTHSM2_CONF=" + (token->dir() / "softhsm2.conf").string();
    }
};

const std::vector<std::string> kUsers = {"mario", "gino", "anna", "luca", "posta-certificata"};

class RealServers : public ::testing::Test {
  protected:
    void SetUp() override {
        ::chmod(tmp_.path().c_str(), 0755);  // pipe(8) runs pec-enqueue as nobody
        write_file(tmp_.path() / "index.ldif", test_ldif());

        auto slapd = SlapdFixture::start();
        ASSERT_TRUE(slapd) << slapd.error().message;
        slapd_ = std::move(*slapd);
        auto added = slapd_->add_ldif_text(test_ldif());
        ASSERT_TRUE(added) << added.error().message;

        auto clamd = start_clamd();
        ASSERT_TRUE(clamd) << clamd.error().message;
        clamd_ = std::move(*clamd);
        std::vector<std::string> users;
        for (const char* d : {"pec.alpha.test", "pec.beta.test"})
            for (const auto& u : kUsers) users.push_back(u + "@" + d);
        auto dovecot = start_dovecot(users);
        ASSERT_TRUE(dovecot) << dovecot.error().message;
        dovecot_ = std::move(*dovecot);
        auto sink = start_smtp_sink();
        ASSERT_TRUE(sink) << sink.error().message;
        internet_ = std::move(*sink);

        for (auto* p : {&alpha_, &beta_}) {
            p->dir = tmp_.path() / p->name;
            p->conf = p->dir / "pecd.conf";
            fs::create_directories(p->dir);
            ::chmod(p->dir.c_str(), 0755);
            p->token = std::make_unique<SoftHsmToken>(p->name);
            PecPostfixOptions o;
            o.hostname = "mx." + p->domain;
            o.pec_enqueue = kBin / "pec-enqueue";
            o.pecd_conf = p->conf;
            o.sasl_socket = dovecot_auth_socket(*dovecot_);
            o.domains = {p->domain};
            for (const auto& u : kUsers) o.senders.push_back(p->address(u));
            auto postfix = start_pec_postfix(o, p->ports);
            ASSERT_TRUE(postfix) << postfix.error().message;
            p->postfix = std::move(*postfix);
        }
        ::unsetenv("SOFTHSM2_CONF");  // each pecd gets its own token's
        // What DNS MX records would say: the other provider's port 25, the internet's sink.
        for (auto [self, peer] : {std::pair{&alpha_, &beta_}, std::pair{&beta_, &alpha_}}) {
            auto routed = set_pec_routes(
                *self->postfix, {self->domain},
                {peer->domain + " smtp:[127.0.0.1]:" + std::to_string(peer->ports.smtp),
                 "example.org smtp:[127.0.0.1]:" + std::to_string(internet_->port())});
            ASSERT_TRUE(routed) << routed.error().message;
        }
        for (auto* p : {&alpha_, &beta_}) start_pecd(*p);
    }

    void TearDown() override {
        if (HasFailure()) {
            for (auto* p : {&alpha_, &beta_}) {
                std::cerr << "---- " << p->name << " pecd log\n" << slurp(p->dir / "pecd.log");
                if (p->postfix)
                    std::cerr << "---- " << p->name << " maillog\n" << p->postfix->log();
            }
            if (dovecot_) std::cerr << "---- dovecot\n" << dovecot_->log();
        }
        for (auto* p : {&alpha_, &beta_})
            if (p->pecd.pid() > 0) pecd::testing::stop_pid(p->pecd.release());
    }

    void start_pecd(Provider& p) {
        const auto& pki = test_pki();
        write_file(
            p.conf,
            "[spool]\ndirectory = " + (p.dir / "spool").string() +
                "\n[runner]\nrescan_interval = 200ms\ndeferred_scan_interval = 100ms\n"
                "backoff_base = 200ms\nbackoff_max = 2s\n"
                "[provider]\nname = Gestore " +
                p.name + " S.p.A.\nmail_domain = " + p.domain + "\ndomains = " + p.domain +
                "\ntemplates = " PECD_SOURCE_DIR "/conf/templates\nvirus_store = " +
                (p.dir / "virus").string() + "\nnode = " + p.name +
                "\n[keys]\ncert = " + (pki / (p.name + ".crt")).string() +
                "\npkcs11_uri = " + p.token->uri() + "\npkcs11_module = " + SoftHsmToken::module +
                "\npin_file = " + p.token->pin_file().string() + "\n[trust]\nca_files = " +
                (pki / "ca.crt").string() + "\ncrl_files = " + (pki / "crl-empty.pem").string() +
                "\n[index]\nsource = ldap\nuri = " + slapd_->uri() +
                "\nbase = o=postacert\ncache_file = " + (p.dir / "igpec-cache.ldif").string() +
                "\ntimeout = 5s\n"
                "[mailbox]\ntype = lmtp\nlmtp = " +
                dovecot_->address() + "\nhelo_name = pecd." + p.domain +
                "\n[outbound]\ntype = smtp\nrelay = 127.0.0.1:" +
                std::to_string(p.ports.reinjection) + "\nhelo_name = pecd." + p.domain +
                "\n[antivirus]\ntype = clamd\nclamd = " + clamd_->address() + "\n");
        ASSERT_EQ(pecd::testing::run({(kBin / "pecd").string(), "-c", p.conf.string(), "init"}), 0);
        // pec-enqueue runs as the pipe user: it writes into the spool.
        auto own = run("chown -R nobody:nogroup " + quote(p.dir / "spool"));
        ASSERT_EQ(own.status, 0) << own.output;
        fs::path check = p.dir / "check.out";
        int rc =
            pecd::testing::run({(kBin / "pecd").string(), "-c", p.conf.string(), "check-config"},
                               SpawnOptions{{p.hsm_env()}, "", check.string(), check.string()});
        ASSERT_EQ(rc, 0) << slurp(check);
        fs::path log = p.dir / "pecd.log";
        p.pecd = ProcessGuard(
            pecd::testing::spawn({(kBin / "pecd").string(), "-c", p.conf.string(), "all"},
                                 SpawnOptions{{p.hsm_env()}, "", "", log.string()}));
        ASSERT_GT(p.pecd.pid(), 0);
    }

    // An SMTP submission to `p`'s submission port, authenticated as `from`.
    void submit(const Provider& p, const std::string& from, const std::vector<std::string>& rcpts,
                const std::string& message) {
        fs::path file = tmp_.path() / ("submission-" + std::to_string(++submissions_) + ".eml");
        write_file(file, message);
        std::string to;
        for (const auto& r : rcpts) to += (to.empty() ? "" : ",") + r;
        auto sent = run("swaks --server 127.0.0.1 --port " + std::to_string(p.ports.submission) +
                        " --auth PLAIN --auth-user " + from + " --auth-password secret --from " +
                        from + " --to " + to + " --data @" + file.string());
        ASSERT_EQ(sent.status, 0) << sent.output;
    }

    std::vector<Received> mailbox(const std::string& address) const {
        std::vector<Received> out;
        fs::path box = dovecot_maildir(*dovecot_, address);
        for (const char* sub : {"new", "cur"}) {
            if (!fs::exists(box / sub)) continue;
            std::vector<fs::path> files;
            for (const auto& e : fs::directory_iterator(box / sub)) files.push_back(e.path());
            std::sort(files.begin(), files.end());
            for (const auto& f : files) out.push_back(read(read_file(f)));
        }
        return out;
    }

    std::vector<Received> internet_mail() const {
        std::vector<Received> out;
        for (const auto& f : files_under(internet_->dir() / "dump"))
            out.push_back(read(read_file(f)));
        return out;
    }

    Received read(std::string raw) const {
        Received r;
        r.raw = std::move(raw);
        auto info = pec::read_pec_message(r.raw);
        EXPECT_TRUE(info.has_value()) << (info ? "" : info.error().message);
        if (info) r.info = std::move(*info);
        const auto& pki = test_pki();
        pec::TrustConfig trust;
        trust.ca_files = {pki / "ca.crt"};
        trust.crl_files = {pki / "crl-empty.pem"};
        auto verifier = pec::SmimeVerifier::create(trust);
        EXPECT_TRUE(verifier.has_value());
        auto index = pec::load_ldif(tmp_.path() / "index.ldif");
        EXPECT_TRUE(index.has_value());
        if (verifier && index) {
            auto report = (*verifier)->verify(r.raw, &*index);
            EXPECT_TRUE(report.has_value());
            if (report) r.report = *report;
        }
        return r;
    }

    static std::map<MessageType, int> kinds(const std::vector<Received>& box) {
        std::map<MessageType, int> out;
        for (const auto& r : box) ++out[r.info.type];
        return out;
    }

    // Polls until `done` holds (the servers and daemons work on their own time).
    bool wait_for(const std::function<bool()>& done) {
        auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
        while (std::chrono::steady_clock::now() < deadline) {
            if (done()) return true;
            std::this_thread::sleep_for(std::chrono::milliseconds(250));
        }
        return done();
    }

    CryptoTempDir tmp_{"pecd-realservers"};
    std::unique_ptr<SlapdFixture> slapd_;
    std::unique_ptr<ServerFixture> clamd_, dovecot_, internet_;
    Provider alpha_{"alpha", "pec.alpha.test", {}, {}, {}, {}, {}, {}};
    Provider beta_{"beta", "pec.beta.test", {}, {}, {}, {}, {}, {}};
    int submissions_ = 0;
};

TEST_F(RealServers, CertifiedMailAcrossTwoProvidersAndTheInternet) {
    const std::string mario = alpha_.address("mario"), gino = alpha_.address("gino"),
                      anna = beta_.address("anna"), luca = beta_.address("luca"),
                      ufficio = "ufficio@example.org";
    submit(alpha_, mario, {anna, gino, luca, ufficio},
           client_message(mario, anna + ", " + gino, luca + ", " + ufficio, "Verbale",
                          "Il verbale della riunione."));
    // One acceptance and a delivery receipt per certified recipient (anna, gino, luca); the
    // esterno address gets the busta and no receipt comes back for it.
    ASSERT_TRUE(wait_for([&] {
        return mailbox(mario).size() >= 4 && mailbox(alpha_.service()).size() >= 2 &&
               internet_mail().size() >= 1;
    })) << "mario "
        << mailbox(mario).size() << ", alpha service " << mailbox(alpha_.service()).size()
        << ", internet " << internet_mail().size();

    auto box = mailbox(mario);
    ASSERT_EQ(box.size(), 4u);
    for (const auto& r : box) EXPECT_TRUE(r.report.ok()) << r.report.reason;
    EXPECT_EQ(kinds(box), (std::map<MessageType, int>{{MessageType::accettazione, 1},
                                                      {MessageType::avvenuta_consegna, 3}}));
    for (const auto& who : {anna, gino, luca}) {
        auto got = mailbox(who);
        ASSERT_EQ(got.size(), 1u) << who;
        EXPECT_EQ(got[0].info.type, MessageType::busta_trasporto) << who;
        EXPECT_TRUE(got[0].report.ok()) << who << ": " << got[0].report.reason;
        EXPECT_NE(got[0].raw.find("Il verbale della riunione."), std::string::npos);
    }
    // The presa in carico of beta (for anna and luca) and of alpha itself (for gino), each in
    // alpha's service mailbox; beta's service mailbox gets nothing.
    auto service = mailbox(alpha_.service());
    ASSERT_EQ(service.size(), 2u);
    for (const auto& r : service) {
        EXPECT_EQ(r.info.type, MessageType::presa_in_carico);
        EXPECT_TRUE(r.report.ok()) << r.report.reason;
    }
    EXPECT_TRUE(mailbox(beta_.service()).empty());
    auto internet = internet_mail();
    ASSERT_EQ(internet.size(), 1u);
    EXPECT_EQ(internet[0].info.type, MessageType::busta_trasporto);
    EXPECT_NE(internet[0].raw.find("X-Rcpt-Args: <" + ufficio + ">"), std::string::npos);
    EXPECT_EQ(internet[0].raw.find("X-Rcpt-Args: <" + anna + ">"), std::string::npos);
    // The path it took: SASL on alpha's submission port, pipe(8) into pecd on both sides, and
    // pecd's SMTP output reinjected and relayed by Postfix.
    std::string alpha_log = alpha_.postfix->log(), beta_log = beta_.postfix->log();
    EXPECT_NE(alpha_log.find("sasl_username=" + mario), std::string::npos) << alpha_log;
    EXPECT_NE(alpha_log.find("relay=pecd, "), std::string::npos) << alpha_log;
    EXPECT_NE(alpha_log.find("relay=127.0.0.1[127.0.0.1]:" + std::to_string(beta_.ports.smtp)),
              std::string::npos)
        << alpha_log;
    EXPECT_NE(beta_log.find("relay=pecd, "), std::string::npos) << beta_log;
}

TEST_F(RealServers, EicarAttachmentIsNotAccepted) {
    const std::string mario = alpha_.address("mario"), anna = beta_.address("anna");
    std::string message =
        "From: " + mario + "\r\nTo: " + anna +
        "\r\nSubject: Allegato\r\nMessage-ID: <eicar-1@client.alpha.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: "
        "text/plain\r\n\r\n"
        "In allegato.\r\n--b1\r\nContent-Type: application/octet-stream; name=\"eicar.com\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n" +
        base64(eicar()) + "\r\n--b1--\r\n";
    submit(alpha_, mario, {anna}, message);
    ASSERT_TRUE(wait_for([&] { return mailbox(mario).size() >= 1; }));
    auto box = mailbox(mario);
    ASSERT_EQ(box.size(), 1u);
    EXPECT_EQ(box[0].info.type, MessageType::non_accettazione_virus);
    EXPECT_TRUE(box[0].report.ok()) << box[0].report.reason;
    // Nothing left alpha: kept in the virus store, no busta for anna.
    EXPECT_EQ(files_under(alpha_.dir / "virus").size(), 1u);
    EXPECT_TRUE(mailbox(anna).empty());
}

// The LDAP index is cached: with slapd gone the configuration still loads (from the cache).
TEST_F(RealServers, IndexCacheServesWhenLdapIsDown) {
    ASSERT_TRUE(fs::exists(alpha_.dir / "igpec-cache.ldif"));
    ASSERT_TRUE(slapd_->stop());
    fs::path out = alpha_.dir / "check-cached.out";
    int rc =
        pecd::testing::run({(kBin / "pecd").string(), "-c", alpha_.conf.string(), "check-config"},
                           SpawnOptions{{alpha_.hsm_env()}, "", out.string(), out.string()});
    EXPECT_EQ(rc, 0) << slurp(out);
}

}  // namespace

// `pecd check-config` reports the services' bad values with their lines (no servers needed).
TEST(RealServicesConfig, BadValuesAreReportedWithTheirLines) {
    const auto& pki = test_pki();
    std::string head =
        "[provider]\nname = G\nmail_domain = pec.alpha.test\ndomains = pec.alpha.test\n"
        "templates = " PECD_SOURCE_DIR
        "/conf/templates\nvirus_store = /tmp/v\n"
        "[keys]\ncert = " +
        (pki / "alpha.crt").string() + "\nkey = " + (pki / "alpha.key").string() +
        "\n[trust]\nca_files = " + (pki / "ca.crt").string() +
        "\ncrl_files = " + (pki / "crl-empty.pem").string() +
        "\n[index]\nldif = /nonexistent.ldif\n";
    int base = static_cast<int>(std::count(head.begin(), head.end(), '\n'));
    auto problems_of = [&](const std::string& tail) {
        auto config = Config::parse(head + tail, "/etc/pecd/pecd.conf");
        EXPECT_TRUE(config.has_value());
        std::map<int, std::string> out;
        if (config)
            for (const auto& p : provider::check(*config)) out[p.line] += p.message + ";";
        return out;
    };
    auto bad = problems_of(
        "[mailbox]\ntype = lmtp\nlmtp = 127.0.0.1:99999\n"                  // base+2, +3
        "[outbound]\ntype = smtp\nrelay = mx:25\ncommand_timeout = soon\n"  // +5 +6 +7
        "[antivirus]\ntype = clamd\n");                                     // +9 (no clamd)
    EXPECT_NE(bad[base + 3].find("[mailbox] lmtp"), std::string::npos) << bad[base + 3];
    EXPECT_NE(bad[base + 7].find("[outbound] command_timeout"), std::string::npos) << bad[base + 7];
    // A missing key is reported on the line that asked for it (type = clamd).
    EXPECT_NE(bad[base + 9].find("[antivirus] clamd"), std::string::npos) << bad[base + 9];
    auto kinds = problems_of(
        "[mailbox]\ntype = mbox\n[outbound]\ntype = uucp\n"
        "[antivirus]\ntype = norton\n");
    EXPECT_NE(kinds[base + 2].find("[mailbox] type"), std::string::npos);
    EXPECT_NE(kinds[base + 4].find("[outbound] type"), std::string::npos);
    EXPECT_NE(kinds[base + 6].find("[antivirus] type"), std::string::npos);
    // A bad type in one section does not hide a bad value in another.
    auto mixed =
        problems_of("[mailbox]\ntype = lmtp\nlmtp = 127.0.0.1:0\n[antivirus]\ntype = clamav\n");
    EXPECT_NE(mixed[base + 3].find("[mailbox] lmtp"), std::string::npos) << mixed[base + 3];
    EXPECT_NE(mixed[base + 5].find("[antivirus] type"), std::string::npos) << mixed[base + 5];
    auto good = problems_of(
        "[mailbox]\ntype = lmtp\nlmtp = unix:/run/dovecot/lmtp\n"
        "[outbound]\ntype = smtp\nrelay = 127.0.0.1:10025\n"
        "[antivirus]\ntype = clamd\nclamd = 127.0.0.1:3310\n");
    for (const auto& [line, message] : good)
        EXPECT_EQ(message.find("[mailbox]"), std::string::npos) << line << ": " << message;
}
