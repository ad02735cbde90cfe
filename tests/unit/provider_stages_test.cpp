// The provider stage functions called directly, with fake services: deterministic outputs on a
// re-run, recipients split by transient failures (deliver, outbound), subsets quarantined on
// their own, and configuration reload without touching a snapshot in use.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "tests/support/provider_net.hpp"

using namespace pecd;
using namespace pecd::test;
using provider::Outcome;
using provider::RecipientStatus;

namespace {

// A StageInput over a real file, as the runner hands it to a stage.
struct Input {
    spool::Envelope env;
    fs::path path;
    durable::Fd fd;
    uint64_t size = 0;

    Input(const fs::path& dir, spool::Envelope e, const std::string& body) : env(std::move(e)) {
        fs::create_directories(dir);
        path = dir / env.id;
        write_file(path, body);
        fd = durable::Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
        size = body.size();
    }
    runner::StageInput get() const { return runner::StageInput{env, fd.get(), 0, size, path}; }
};

spool::Envelope envelope(std::string sender, std::vector<std::string> rcpts,
                         std::string user = "") {
    spool::Envelope env;
    env.arrival_us = spool::now_us();
    env.id = spool::new_queue_id(env.arrival_us);
    env.sender = std::move(sender);
    env.recipients = std::move(rcpts);
    env.user = std::move(user);
    return env;
}

std::shared_ptr<provider::ProviderHandle> with_services(const Node& node,
                                                        provider::ProviderServices services) {
    auto config = Config::load(node.conf);
    EXPECT_TRUE(config.has_value());
    auto p = provider::Provider::create(*config, std::move(services));
    EXPECT_TRUE(p.has_value()) << (p ? "" : p.error().message);
    return std::make_shared<provider::ProviderHandle>(*p);
}

provider::ProviderServices fake_services() {
    provider::ProviderServices s;
    s.scan = [](std::string_view) -> Result<provider::ScanResult> {
        return provider::ScanResult{};
    };
    s.keep_infected = [](std::string_view, std::string_view) -> Status { return {}; };
    return s;
}

}  // namespace

TEST(ProviderStages, WrapRerunGivesTheSameNamesAndIdentificativo) {
    TwoProviders net;
    auto& p = net.alpha;
    const std::string mario = p.address("mario"), anna = net.beta.address("anna"),
                      ext = "rossi@example.org";
    auto classify = provider::make_stage("classify", p.handle);
    auto wrap = provider::make_stage("wrap", p.handle);
    ASSERT_TRUE(classify && wrap);
    Input in(net.root(), envelope(mario, {anna, ext}, "mario"),
             client_message(mario, anna + ", " + ext, "", "Prova", "x"));
    auto routed = (*classify)(in.get());
    ASSERT_TRUE(routed.has_value());
    ASSERT_EQ(routed->outputs.size(), 1u);
    EXPECT_EQ(routed->outputs[0].destination, "wrap");
    EXPECT_TRUE(routed->outputs[0].in_place);
    auto id = routed->outputs[0].env.attr(provider::attr::id);
    ASSERT_TRUE(id.has_value());

    Input again(net.root() / "c", routed->outputs[0].env,
                client_message(mario, anna + ", " + ext, "", "Prova", "x"));
    auto first = (*wrap)(again.get());
    auto second = (*wrap)(again.get());
    ASSERT_TRUE(first && second);
    ASSERT_EQ(first->outputs.size(), 2u);
    ASSERT_EQ(second->outputs.size(), 2u);
    for (size_t i = 0; i < 2; ++i) {
        EXPECT_EQ(first->outputs[i].env.id, second->outputs[i].env.id);
        EXPECT_EQ(first->outputs[i].destination, second->outputs[i].destination);
        EXPECT_EQ(first->outputs[i].env.recipients, second->outputs[i].env.recipients);
        EXPECT_EQ(first->outputs[i].env.attr(provider::attr::id), *id);
        EXPECT_TRUE(first->outputs[i].env.id.starts_with(again.env.id + "-"));
    }
    // the busta: to outbound, RCPT TO = the original recipients, timers' data recorded
    const auto& busta = first->outputs[1];
    EXPECT_EQ(busta.destination, "outbound");
    EXPECT_EQ(busta.env.recipients, (std::vector<std::string>{anna, ext}));
    EXPECT_EQ(busta.env.sender, mario);
    EXPECT_EQ(busta.env.attr(provider::attr::certified), anna);  // no timers for esterno
    auto info = pec::read_pec_message(busta.body.bytes);
    ASSERT_TRUE(info.has_value());
    EXPECT_EQ(info->daticert->identificativo, *id);
    EXPECT_EQ(first->outputs[0].destination, "deliver");
    EXPECT_EQ(first->outputs[0].env.recipients, std::vector<std::string>{mario});
}

TEST(ProviderStages, ADeliveryRunAgainAfterACrashLeavesOneCopyInTheMaildir) {
    // The deliver stage died after its Maildir file was in new/ and before its batch committed:
    // recovery runs the same queue file again. The embedded Maildir names the file by the queue
    // id, finds it and adds nothing; a temporary file a dead run left under that name does not
    // stand in the way.
    TwoProviders net;
    auto deliver = provider::make_stage("deliver", net.beta.handle);
    ASSERT_TRUE(deliver);
    const std::string anna = net.beta.address("anna");
    spool::Envelope busta = envelope("mario@pec.alpha.test", {anna});
    busta.set_attr(std::string(provider::attr::kind),
                   std::string(pec::to_string(pec::MessageType::busta_trasporto)));
    const fs::path box = net.beta.maildir() / net.beta.domain / "anna";
    write_file(box / "tmp" / (busta.id + ".pecd"), "half a mess");
    Input in(net.root(), busta, "Subject: busta\r\n\r\ncorpo\r\n");
    for (int run = 0; run < 2; ++run) {
        auto out = (*deliver)(in.get());
        ASSERT_TRUE(out.has_value()) << out.error().message;
        EXPECT_EQ(out->records.size(), 1u) << "each run logs its delivery (at-least-once log)";
    }
    auto delivered = net.mailbox(net.beta, anna);
    ASSERT_EQ(delivered.size(), 1u);
    EXPECT_EQ(delivered[0].raw, "Subject: busta\r\n\r\ncorpo\r\n");
    EXPECT_TRUE(fs::is_empty(box / "tmp"));
}

TEST(ProviderStages, DeliverSplitsTransientRecipients) {
    TwoProviders net;
    auto services = fake_services();
    std::vector<std::string> attempts;
    services.deliver_to_mailbox = [&](const std::string& r, std::string_view,
                                      std::string_view) -> Result<RecipientStatus> {
        attempts.push_back(r);
        if (r.starts_with("anna")) return RecipientStatus{r, Outcome::ok, "2.0.0", ""};
        if (r.starts_with("luca"))
            return RecipientStatus{r, Outcome::transient, "4.2.2", "casella piena"};
        return RecipientStatus{r, Outcome::permanent, "5.1.1", "indirizzo non valido"};
    };
    auto deliver = provider::make_stage("deliver", with_services(net.beta, services));
    const std::string anna = net.beta.address("anna"), luca = net.beta.address("luca"),
                      nobody = net.beta.address("nessuno");
    spool::Envelope busta = envelope("mario@pec.alpha.test", {anna, luca, nobody});
    busta.set_attr(std::string(provider::attr::kind),
                   std::string(pec::to_string(pec::MessageType::busta_trasporto)));
    Input in(net.root(), busta, "Subject: x\r\n\r\nx\r\n");
    auto out = (*deliver)(in.get());
    ASSERT_TRUE(out.has_value()) << out.error().message;
    ASSERT_EQ(out->outputs.size(), 2u);
    const auto& done = out->outputs[0];
    const auto& later = out->outputs[1];
    EXPECT_EQ(done.destination, "receipt");
    EXPECT_EQ(done.env.recipients, (std::vector<std::string>{anna, nobody}));
    EXPECT_TRUE(
        done.env.attr(std::string(provider::attr::delivery_prefix) + anna)->starts_with("ok "));
    auto failed = done.env.attr(std::string(provider::attr::delivery_prefix) + nobody);
    ASSERT_TRUE(failed.has_value());
    EXPECT_TRUE(failed->starts_with("fail ") && failed->ends_with(" 5.1.1 indirizzo non valido"))
        << *failed;
    EXPECT_EQ(later.destination, "deliver");
    EXPECT_EQ(later.env.recipients, std::vector<std::string>{luca});
    EXPECT_GT(later.defer_until_us, spool::now_us());
    EXPECT_EQ(later.env.attempts, 1);
    EXPECT_NE(done.env.id, later.env.id);

    // A receipt or a notice earns no receipts: once delivered it ends at the deliver stage, and
    // only its transient recipients are retried.
    spool::Envelope notice = envelope("mario@pec.alpha.test", {anna, luca});
    notice.set_attr(std::string(provider::attr::kind),
                    std::string(pec::to_string(pec::MessageType::avvenuta_consegna)));
    Input notice_in(net.root(), notice, "Subject: x\r\n\r\nx\r\n");
    auto notice_out = (*deliver)(notice_in.get());
    ASSERT_TRUE(notice_out.has_value()) << notice_out.error().message;
    ASSERT_EQ(notice_out->outputs.size(), 1u);
    EXPECT_EQ(notice_out->outputs[0].destination, "deliver");
    EXPECT_EQ(notice_out->outputs[0].env.recipients, std::vector<std::string>{luca});
    EXPECT_EQ(notice_out->records.size(), 1u) << "anna's delivery is logged all the same";
    Input delivered_in(net.root(), envelope("mario@pec.alpha.test", {anna}),
                       "Subject: x\r\n\r\nx\r\n");
    auto delivered = (*deliver)(delivered_in.get());
    ASSERT_TRUE(delivered.has_value());
    EXPECT_TRUE(delivered->outputs.empty());
    EXPECT_EQ(delivered->records.size(), 1u);

    // Nobody delivered: the whole input is retried by the runner (transient error).
    Input stuck(net.root(), envelope("mario@pec.alpha.test", {luca}), "Subject: x\r\n\r\nx\r\n");
    auto none = (*deliver)(stuck.get());
    ASSERT_FALSE(none.has_value());
    EXPECT_EQ(none.error().kind, ErrorKind::transient);
}

TEST(ProviderStages, OutboundDefersAndQuarantinesSubsets) {
    TwoProviders net;
    auto services = fake_services();
    services.send = [](const std::string&, const std::vector<std::string>& rcpts,
                       std::string_view) -> Result<std::vector<RecipientStatus>> {
        std::vector<RecipientStatus> out;
        for (const auto& r : rcpts) {
            if (r.starts_with("ok"))
                out.push_back({r, Outcome::ok, "2.0.0", ""});
            else if (r.starts_with("later"))
                out.push_back({r, Outcome::transient, "4.4.1", "timeout"});
            else
                out.push_back({r, Outcome::permanent, "5.7.1", "rifiutato"});
        }
        return out;
    };
    auto outbound = provider::make_stage("outbound", with_services(net.alpha, services));
    Input in(net.root(),
             envelope("posta-certificata@pec.alpha.test",
                      {"ok@pec.beta.test", "later@pec.beta.test", "no@pec.beta.test"}),
             "Subject: x\r\n\r\nx\r\n");
    auto out = (*outbound)(in.get());
    ASSERT_TRUE(out.has_value());
    ASSERT_EQ(out->outputs.size(), 2u);
    EXPECT_EQ(out->outputs[0].env.recipients, std::vector<std::string>{"later@pec.beta.test"});
    EXPECT_GT(out->outputs[0].defer_until_us, 0);
    EXPECT_EQ(out->outputs[1].env.recipients, std::vector<std::string>{"no@pec.beta.test"});
    EXPECT_EQ(out->outputs[1].destination, "outbound");
    // The refused subset is quarantined on its next pass, without being sent again.
    Input refused(net.root() / "q", out->outputs[1].env, "Subject: x\r\n\r\nx\r\n");
    auto q = (*outbound)(refused.get());
    ASSERT_FALSE(q.has_value());
    EXPECT_EQ(q.error().kind, ErrorKind::permanent);
    EXPECT_NE(q.error().message.find("5.7.1"), std::string::npos);

    // A busta refused by an esterno recipient: ordinary mail rules, nothing to do.
    auto busta_env = envelope("mario@pec.alpha.test", {"ok@pec.beta.test", "no@example.org"});
    busta_env.set_attr(provider::attr::kind, "busta-trasporto");
    Input busta(net.root() / "b", busta_env, "Subject: x\r\n\r\nx\r\n");
    auto b = (*outbound)(busta.get());
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->outputs.empty());
}

TEST(ProviderStages, ClassifySplitsLocalAndForeignRecipients) {
    TwoProviders net;
    auto classify = provider::make_stage("classify", net.beta.handle);
    // unauthenticated, from outside: beta's recipient to verify, the other passes on
    Input in(net.root(), envelope("x@example.org", {"anna@pec.beta.test", "y@example.net"}),
             "Subject: x\r\n\r\nx\r\n");
    auto out = (*classify)(in.get());
    ASSERT_TRUE(out.has_value());
    ASSERT_EQ(out->outputs.size(), 2u);
    EXPECT_EQ(out->outputs[0].destination, "verify");
    EXPECT_EQ(out->outputs[0].env.recipients, std::vector<std::string>{"anna@pec.beta.test"});
    EXPECT_EQ(out->outputs[1].destination, "outbound");
    EXPECT_EQ(out->outputs[1].env.recipients, std::vector<std::string>{"y@example.net"});
    EXPECT_EQ(out->outputs[0].env.id, spool::derived_queue_id(in.env.id, "in"));
    EXPECT_EQ(out->outputs[1].env.id, spool::derived_queue_id(in.env.id, "out"));
    // authenticated but not one of our senders: not a submission
    Input user(net.root() / "u", envelope("x@example.org", {"y@example.net"}, "x"),
               "Subject: x\r\n\r\nx\r\n");
    auto relay = (*classify)(user.get());
    ASSERT_TRUE(relay.has_value());
    ASSERT_EQ(relay->outputs.size(), 1u);
    EXPECT_EQ(relay->outputs[0].destination, "outbound");
    EXPECT_EQ(relay->outputs[0].env.attr(provider::attr::route), "relay");
}

TEST(ProviderConfig, ReloadSwapsWithoutTouchingSnapshots) {
    TwoProviders net;
    auto before = net.alpha.handle->current();
    std::string text = read_file(net.alpha.conf);
    size_t at = text.find("Gestore Alpha S.p.A.");
    write_file(net.alpha.conf, text.substr(0, at) + "Gestore Alpha Nuovo S.p.A." +
                                   text.substr(at + std::string("Gestore Alpha S.p.A.").size()));
    auto config = Config::load(net.alpha.conf);
    ASSERT_TRUE(config.has_value());
    ASSERT_TRUE(net.alpha.handle->reload(*config).has_value());
    EXPECT_EQ(before->identity().name, "Gestore Alpha S.p.A.");  // the snapshot in use is intact
    EXPECT_EQ(net.alpha.handle->current()->identity().name, "Gestore Alpha Nuovo S.p.A.");

    // A broken edit: the reload fails and the running provider stays.
    std::string broken_text = text;
    broken_text.replace(broken_text.find("source = ldif"), 13, "source = nowhere");
    write_file(net.alpha.conf, broken_text);
    auto broken = Config::load(net.alpha.conf);
    ASSERT_TRUE(broken.has_value());
    EXPECT_FALSE(net.alpha.handle->reload(*broken).has_value());
    EXPECT_EQ(net.alpha.handle->current()->identity().name, "Gestore Alpha Nuovo S.p.A.");
    // A half-written file (a line without '=') is refused too, even if its values would do.
    write_file(net.alpha.conf, text + "[provider\n");
    auto torn = Config::load(net.alpha.conf);
    ASSERT_TRUE(torn.has_value());
    EXPECT_FALSE(net.alpha.handle->reload(*torn).has_value());
    EXPECT_EQ(net.alpha.handle->current()->identity().name, "Gestore Alpha Nuovo S.p.A.");
}

// URLs are checked when the configuration is, not first when the scheduler's task runs.
TEST(ProviderConfig, MalformedUrlsAreReportedWithTheirLines) {
    TempDir dir("pecd-provider-config");
    const auto& pki = test_pki();
    write_file(dir.path() / "index.ldif", test_ldif());
    write_file(dir.path() / "a.crl", "");
    write_file(dir.path() / "b.crl", "");
    std::string conf =
        "[provider]\nname = Gestore Alpha S.p.A.\nmail_domain = pec.alpha.test\n"
        "[keys]\ncert = " +
        (pki / "alpha.crt").string() + "\nkey = " + (pki / "alpha.key").string() +
        "\n[trust]\nca_files = " + (pki / "ca.crt").string() +     // 7, 8
        "\ncrl_files = a.crl, b.crl\n"                             // 9
        "crl_urls = http://ca.example/a.crl, http://[::1/b.crl\n"  // 10
        "[index]\nldif = index.ldif\n"                             // 11, 12
        "url = https://igpec.example:0/index.p7m\n";               // 13
    write_file(dir.path() / "pecd.conf", conf);
    auto config = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(config.has_value());
    std::map<int, std::string> by_line;
    for (const auto& p : provider::check(*config)) by_line[p.line] += p.message + "|";
    EXPECT_NE(by_line[10].find("http://[::1/b.crl: unclosed ["), std::string::npos) << by_line[10];
    EXPECT_EQ(by_line[10].find("ca.example"), std::string::npos) << by_line[10];
    EXPECT_NE(by_line[13].find("port \"0\""), std::string::npos) << by_line[13];
}

TEST(ProviderConfig, CheckReportsEveryProblemWithItsLine) {
    TempDir dir("pecd-provider-config");
    const auto& pki = test_pki();
    write_file(dir.path() / "index.ldif", test_ldif());
    fs::create_directories(dir.path() / "mail");
    std::string conf =
        "[provider]\n"                              // 1
        "name = Gestore Alpha S.p.A.\n"             // 2
        "mail_domain = pec.alpha.test\n"            // 3
        "domains = pec.alpha.test, not a domain\n"  // 4
        "templates = " PECD_SOURCE_DIR
        "/conf/templates\n"      // 5
        "virus_store = virus\n"  // 6
        "colour = blue\n"        // 7
        "[keys]\n"               // 8
        "cert = " +
        (pki / "alpha.crt").string() + "\n" +             // 9
        "key = " + (pki / "alpha.key").string() + "\n" +  // 10
        "[trust]\n"                                       // 11
        "ca_files = " +
        (pki / "missing-ca.crt").string() + "\n" +  // 12
        "check_crl = no\n"                          // 13
        "[index]\n"                                 // 14
        "source = ldif\n"                           // 15
        "ldif = index.ldif\n"                       // 16
        "[limits]\n"                                // 17
        "max_size_times_recipients = lots\n"        // 18
        "[policy]\n"                                // 19
        "ordinary_mail = bounce\n"                  // 20
        "ordinary_mail.pec.other.test = reject\n"   // 21
        "[mailbox]\n"                               // 22
        "maildir = mail\n";                         // 23
    write_file(dir.path() / "pecd.conf", conf);
    auto config = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(config.has_value());
    auto problems = provider::check(*config);
    std::map<int, std::string> by_line;
    for (const auto& p : problems) by_line[p.line] += p.message + "|";
    std::set<int> lines;
    for (const auto& [line, text] : by_line) lines.insert(line);
    EXPECT_EQ(lines, (std::set<int>{4, 7, 12, 18, 20, 21})) << [&] {
        std::string all;
        for (const auto& p : problems) all += std::to_string(p.line) + ": " + p.message + "\n";
        return all;
    }();
    EXPECT_NE(by_line[7].find("unknown key"), std::string::npos);
    EXPECT_NE(by_line[21].find("pec.other.test"), std::string::npos);
    // [trust] has a missing file: no trust store is loaded; the key still is, and fits.
    EXPECT_EQ(by_line[12].find("ca_files:"), by_line[12].rfind("ca_files:")) << by_line[12];

    // Values right, but what they point at does not fit: beta's key with alpha's certificate.
    std::string good = conf;
    good.replace(good.find("domains = pec.alpha.test, not a domain"), 38,
                 "domains = pec.alpha.test");
    good.replace(good.find("colour = blue\n"), 14, "");
    good.replace(good.find("missing-ca.crt"), 14, "ca.crt");
    good.replace(good.find("lots"), 4, "30M");
    good.replace(good.find("ordinary_mail = bounce\nordinary_mail.pec.other.test = reject\n"), 61,
                 "ordinary_mail = anomaly\n");
    write_file(dir.path() / "pecd.conf", good);
    auto fine = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(fine.has_value());
    auto none = provider::check(*fine);
    for (const auto& p : none) ADD_FAILURE() << p.line << ": " << p.message;

    std::string mismatched = good;
    mismatched.replace(mismatched.find("alpha.key"), 9, "beta.key");
    write_file(dir.path() / "pecd.conf", mismatched);
    auto bad_key = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(bad_key.has_value());
    auto key_problems = provider::check(*bad_key);
    ASSERT_EQ(key_problems.size(), 1u);
    EXPECT_EQ(key_problems[0].line, 9);  // the key line moved up by one (colour removed)

    // Value problems elsewhere do not hide what the sound sections load: the key still fails.
    write_file(dir.path() / "pecd.conf",
               mismatched + "[policy]\nordinary_mail.pec.other.test = reject\n");
    auto both = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(both.has_value());
    std::set<int> both_lines;
    for (const auto& p : provider::check(*both)) both_lines.insert(p.line);
    int last = static_cast<int>(std::count(mismatched.begin(), mismatched.end(), '\n')) + 2;
    EXPECT_EQ(both_lines, (std::set<int>{9, last}));

    // beta's key and certificate for a provider claiming alpha's domain: wrong SAN, and not
    // the certificate the index lists for alpha.
    std::string foreign = good;
    foreign.replace(foreign.find("alpha.key"), 9, "beta.key");
    foreign.replace(foreign.find("alpha.crt"), 9, "beta.crt");
    write_file(dir.path() / "pecd.conf", foreign);
    auto wrong_cert = Config::load(dir.path() / "pecd.conf");
    ASSERT_TRUE(wrong_cert.has_value());
    std::string all;
    for (const auto& p : provider::check(*wrong_cert)) all += p.message + "\n";
    EXPECT_NE(all.find("no subjectAltName email posta-certificata@pec.alpha.test"),
              std::string::npos)
        << all;
    EXPECT_NE(all.find("pec.alpha.test' is not among our managedDomains"), std::string::npos)
        << all;
    EXPECT_FALSE(provider::Provider::create(*wrong_cert).has_value());
}

TEST(ProviderStages, MixedPolicyWrapsSomeAndQuarantinesTheOthers) {
    TwoProviders net;
    // beta also manages legal.beta.test, where ordinary mail is refused.
    std::string text = read_file(net.beta.conf);
    text.replace(text.find("domains = pec.beta.test"), 23,
                 "domains = pec.beta.test, legal.beta.test");
    write_file(net.beta.conf, text + "[policy]\nordinary_mail.legal.beta.test = reject\n");
    auto config = Config::load(net.beta.conf);
    ASSERT_TRUE(config.has_value());
    auto p = provider::Provider::create(*config);
    ASSERT_TRUE(p.has_value()) << p.error().message;
    auto verify = provider::make_stage("verify", std::make_shared<provider::ProviderHandle>(*p));

    const std::string anna = "anna@pec.beta.test", avv = "avvocato@legal.beta.test";
    Input in(net.root(), envelope("spam@example.org", {anna, avv}),
             client_message("spam@example.org", anna + ", " + avv, "", "Offerta", "x"));
    auto out = (*verify)(in.get());
    ASSERT_TRUE(out.has_value()) << out.error().message;
    ASSERT_EQ(out->outputs.size(), 2u);
    EXPECT_EQ(out->outputs[0].destination, "deliver");
    EXPECT_EQ(out->outputs[0].env.recipients, std::vector<std::string>{anna});
    auto anomaly = pec::read_pec_message(out->outputs[0].body.bytes);
    ASSERT_TRUE(anomaly.has_value());
    EXPECT_EQ(anomaly->type, pec::MessageType::busta_anomalia);
    EXPECT_EQ(out->outputs[1].destination, "verify");
    EXPECT_EQ(out->outputs[1].env.recipients, std::vector<std::string>{avv});
    EXPECT_EQ(out->outputs[1].env.id, spool::derived_queue_id(in.env.id, "rj"));

    // Its next pass: only refusing recipients left, so it goes to quarantine with the reason.
    Input refused(net.root() / "rj", out->outputs[1].env,
                  client_message("spam@example.org", anna + ", " + avv, "", "Offerta", "x"));
    auto q = (*verify)(refused.get());
    ASSERT_FALSE(q.has_value());
    EXPECT_EQ(q.error().kind, ErrorKind::permanent);
    EXPECT_NE(q.error().message.find("ordinary_mail"), std::string::npos);
}

namespace {

// The avvenuta consegna for `anna` that beta's receipt stage builds from `delivered` (a busta
// out of the deliver stage, with its outcome recorded).
pec::PecMessageInfo consegna_from(const runner::StageFunction& receipt, const fs::path& dir,
                                  const spool::Envelope& delivered, const std::string& busta) {
    Input in(dir, delivered, busta);
    auto out = receipt(in.get());
    EXPECT_TRUE(out.has_value()) << (out ? "" : out.error().message);
    if (!out || out->outputs.size() != 1) return {};
    auto info = pec::read_pec_message(out->outputs[0].body.bytes);
    EXPECT_TRUE(info.has_value());
    EXPECT_EQ(info->type, pec::MessageType::avvenuta_consegna);
    return info ? *info : pec::PecMessageInfo{};
}

}  // namespace

// Verify hands the receipt stage what it read of a busta (attr pec.busta): the transaction and
// where postacert.eml is in the body, CRLF or LF (Postfix's pipe(8)), so that the receipt stage
// does not parse the busta again. The avvenuta consegna is the same either way, and a missing or
// malformed attr falls back to the parse.
TEST(ProviderStages, TheReceiptStageUsesWhatVerifyReadOfTheBustaAndBuildsTheSameReceipt) {
    TwoProviders net;
    const std::string mario = net.alpha.address("mario"), anna = net.beta.address("anna"),
                      ext = "rossi@example.org";
    auto wrap = provider::make_stage("wrap", net.alpha.handle);
    auto classify_alpha = provider::make_stage("classify", net.alpha.handle);
    auto classify = provider::make_stage("classify", net.beta.handle);
    auto verify = provider::make_stage("verify", net.beta.handle);
    auto deliver = provider::make_stage("deliver", net.beta.handle);
    auto receipt = provider::make_stage("receipt", net.beta.handle);
    ASSERT_TRUE(wrap && classify_alpha && classify && verify && deliver && receipt);
    const std::string original = client_message(mario, anna, ext, "Fattura 7 100%", "corpo\r\n");
    Input submitted(net.root() / "a", envelope(mario, {anna, ext}, "mario"), original);
    auto routed = (*classify_alpha)(submitted.get());
    ASSERT_TRUE(routed && routed->outputs.size() == 1);
    Input to_wrap(net.root() / "b", routed->outputs[0].env, original);
    auto wrapped = (*wrap)(to_wrap.get());
    ASSERT_TRUE(wrapped && wrapped->outputs.size() == 2);
    const std::string busta_crlf = wrapped->outputs[1].body.bytes;
    const auto parsed_busta = pec::read_pec_message(busta_crlf);
    ASSERT_TRUE(parsed_busta && parsed_busta->daticert);
    const auto postacert = provider::extract_postacert(busta_crlf);
    ASSERT_TRUE(postacert.has_value());

    std::string busta_lf;
    for (size_t i = 0; i < busta_crlf.size(); ++i)
        if (!(busta_crlf[i] == '\r' && i + 1 < busta_crlf.size() && busta_crlf[i + 1] == '\n'))
            busta_lf += busta_crlf[i];

    int n = 0;
    for (const std::string& busta : {busta_crlf, busta_lf}) {
        SCOPED_TRACE(&busta == &busta_crlf ? "CRLF busta" : "LF busta");
        const fs::path dir = net.root() / ("beta" + std::to_string(n++));
        Input arriving(dir / "c", envelope(mario, {anna}), busta);
        auto in = (*classify)(arriving.get());
        ASSERT_TRUE(in && in->outputs.size() == 1);
        Input to_verify(dir / "v", in->outputs[0].env, busta);
        auto verified = (*verify)(to_verify.get());
        ASSERT_TRUE(verified.has_value()) << verified.error().message;
        auto copy = std::find_if(verified->outputs.begin(), verified->outputs.end(),
                                 [](const auto& o) { return o.destination == "deliver"; });
        ASSERT_NE(copy, verified->outputs.end());
        ASSERT_TRUE(copy->env.attr(provider::attr::busta).has_value());
        auto carried = provider::carried_busta(copy->env, busta);
        ASSERT_TRUE(carried.has_value());
        const pec::OriginalMessage& o = carried->transaction.original;
        EXPECT_EQ(carried->transaction.identificativo, parsed_busta->daticert->identificativo);
        EXPECT_EQ(o.sender, mario);
        EXPECT_EQ(o.subject, "Fattura 7 100%");
        EXPECT_EQ(o.message_id, parsed_busta->daticert->msgid);
        ASSERT_EQ(o.recipients.size(), 2u);
        EXPECT_EQ(o.recipients[0].address, anna);
        EXPECT_EQ(o.recipients[0].kind, pec::RecipientKind::certificato);
        EXPECT_EQ(o.recipients[0].field, pec::AddressField::to);
        EXPECT_EQ(o.recipients[1].address, ext);
        EXPECT_EQ(o.recipients[1].kind, pec::RecipientKind::esterno);
        EXPECT_EQ(o.recipients[1].field, pec::AddressField::cc);
        EXPECT_EQ(carried->postacert, *postacert) << "the body's bytes give the same postacert";

        Input to_deliver(dir / "d", copy->env, busta);
        auto delivered = (*deliver)(to_deliver.get());
        ASSERT_TRUE(delivered.has_value()) << delivered.error().message;
        auto done = std::find_if(delivered->outputs.begin(), delivered->outputs.end(),
                                 [](const auto& o) { return o.destination == "receipt"; });
        ASSERT_NE(done, delivered->outputs.end());

        spool::Envelope without = done->env;
        std::erase_if(without.attrs,
                      [](const auto& a) { return a.first == provider::attr::busta; });
        // The attr as verify wrote it but for a postacert range beyond the body.
        spool::Envelope malformed = done->env;
        std::string value = *done->env.attr(provider::attr::busta);
        size_t at = value.find("postacert ");
        ASSERT_NE(at, std::string::npos);
        value.replace(at, value.find('\n', at) - at,
                      "postacert crlf 1 " + std::to_string(busta.size()));
        malformed.set_attr(provider::attr::busta, value);
        ASSERT_FALSE(provider::carried_busta(malformed, busta).has_value());

        auto fast = consegna_from(*receipt, dir / "r1", done->env, busta);
        for (const auto& other : {without, malformed}) {
            auto parsed = consegna_from(*receipt, dir / "r2", other, busta);
            ASSERT_TRUE(fast.daticert && parsed.daticert);
            EXPECT_EQ(fast.daticert->identificativo, parsed.daticert->identificativo);
            EXPECT_EQ(fast.daticert->mittente, parsed.daticert->mittente);
            EXPECT_EQ(fast.daticert->destinatari, parsed.daticert->destinatari);
            EXPECT_EQ(fast.daticert->oggetto, parsed.daticert->oggetto);
            EXPECT_EQ(fast.daticert->msgid, parsed.daticert->msgid);
            EXPECT_EQ(fast.daticert->ricevuta, parsed.daticert->ricevuta);
            EXPECT_EQ(fast.daticert->consegna, parsed.daticert->consegna);
            ASSERT_TRUE(fast.original && parsed.original);
            EXPECT_EQ(fast.original->message_id, parsed.original->message_id);
            EXPECT_EQ(fast.original->parts, parsed.original->parts);
            fs::remove_all(dir / "r2");
        }
    }
}
