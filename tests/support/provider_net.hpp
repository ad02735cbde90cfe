// Two PEC providers (alpha and beta from scripts/make-test-pki) in one process, each with its
// own spool, Maildir tree, virus store and StageRunners over the real stage functions, plus an
// LDIF index naming both. run() drains every stage of both spools and relays their outboxes the
// way the MTAs would (a recipient of a managed domain -> that provider's classify queue, anyone
// else -> the "internet" sink) until nothing moves.
#pragma once

#include <gtest/gtest.h>
#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "spool-layout/spool.hpp"
#include "stages/pec/reader.hpp"
#include "stages/pec/smime.hpp"
#include "stages/provider/embedded.hpp"
#include "stages/provider/stages.hpp"
#include "stages/runner/runner.hpp"
#include "tests/support/crypto_support.hpp"

namespace pecd::test {

namespace fs = std::filesystem;

inline std::string sha1_hex(std::string_view bytes) {
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(bytes.data(), bytes.size(), d, &n, EVP_sha1(), nullptr);
    static const char* digits = "0123456789abcdef";
    std::string hex;
    for (unsigned int i = 0; i < n; ++i) {
        hex += digits[d[i] >> 4];
        hex += digits[d[i] & 15];
    }
    return hex;
}

inline std::string base64(std::string_view bytes) {
    std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
    int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                            reinterpret_cast<const unsigned char*>(bytes.data()),
                            static_cast<int>(bytes.size()));
    out.resize(static_cast<size_t>(n));
    return out;
}

// One IGPEC record per provider; hashes from the DER certificates of the test PKI.
inline std::string test_ldif() {
    const auto& pki = test_pki();
    std::string ldif = "dn: o=postacert\nobjectClass: organization\no: postacert\n";
    for (auto [cert, name, domain] : {std::tuple{"alpha", "Gestore Alpha", "pec.alpha.test"},
                                      std::tuple{"beta", "Gestore Beta", "pec.beta.test"}}) {
        std::string der = read_file(pki / (std::string(cert) + ".der"));
        ldif += std::string("\ndn: providerName=") + name +
                ",o=postacert\nobjectClass: provider\n" + "providerName: " + name +
                "\nproviderCertificateHash: " + sha1_hex(der) +
                "\nproviderCertificate;binary:: " + base64(der) +
                "\nmailReceipt: posta-certificata@" + domain + "\nmanagedDomains: " + domain + "\n";
    }
    return ldif;
}

// A message found in a mailbox or in the internet sink, read and verified.
struct Received {
    std::string raw;
    pec::PecMessageInfo info;
    pec::VerifyReport report;
    spool::Envelope env;  // internet sink only: the SMTP envelope
};

struct Node {
    std::string name;    // "alpha"
    std::string domain;  // "pec.alpha.test"
    fs::path dir;
    fs::path conf;
    std::shared_ptr<provider::ProviderHandle> handle;
    spool::Spool spool;
    std::vector<std::unique_ptr<runner::StageRunner>> runners;

    std::string service() const { return "posta-certificata@" + domain; }
    std::string address(const std::string& local) const { return local + "@" + domain; }
    fs::path maildir() const { return dir / "mail"; }
    fs::path virus_store() const { return dir / "virus"; }
    fs::path legal_log_dir() const { return dir / "legallog"; }

    // One legal-log stream per stage runner, as `pecd all` opens them.
    void attach_legal_logs() {
        for (auto& r : runners) {
            legallog::WriterOptions o;
            o.directory = legal_log_dir();
            o.node = name;
            o.stage = r->stage();
            auto w = legallog::Writer::open(std::move(o));
            EXPECT_TRUE(w.has_value()) << w.error().message;
            if (w) r->set_legal_log(std::move(*w));
        }
    }
    void detach_legal_logs() {
        for (auto& r : runners) r->set_legal_log(nullptr);
    }
};

struct NodeOptions {
    std::string antivirus = "eicar";
    std::string extra;  // more configuration lines, appended
};

class TwoProviders {
  public:
    explicit TwoProviders(NodeOptions alpha_options = {}, NodeOptions beta_options = {})
        : tmp_("pecd-provider") {
        write_file(tmp_.path() / "index.ldif", test_ldif());
        fs::create_directories(internet());
        make_node(alpha, "alpha", "pec.alpha.test", "Gestore Alpha S.p.A.", alpha_options);
        make_node(beta, "beta", "pec.beta.test", "Gestore Beta S.p.A.", beta_options);
    }

    Node alpha, beta;
    fs::path internet() const { return tmp_.path() / "internet"; }
    const fs::path& root() const { return tmp_.path(); }

    Node* node_for(const std::string& address) {
        std::string d = provider::domain_of(address);
        if (d == alpha.domain) return &alpha;
        if (d == beta.domain) return &beta;
        return nullptr;
    }

    // As pec-enqueue would queue it: `user` non-empty = authenticated submission.
    std::string enqueue(Node& node, const std::string& sender,
                        const std::vector<std::string>& rcpts, const std::string& user,
                        std::string_view message) {
        spool::Envelope env;
        env.arrival_us = spool::now_us();
        env.id = spool::new_queue_id(env.arrival_us);
        env.sender = sender;
        env.recipients = rcpts;
        env.user = user;
        env.client = "127.0.0.1";
        // Written outside the spool's tmp/ (a starting pecd cleans stale files there) and
        // renamed in, so a running daemon only ever sees complete files.
        fs::create_directories(node.dir / "relay-tmp");
        fs::path tmp = node.dir / "relay-tmp" / env.id;
        auto fd =
            spool::write_queue_file(tmp, env, spool::BodySource::from_bytes(std::string(message)));
        EXPECT_TRUE(fd.has_value()) << (fd ? "" : fd.error().message);
        auto moved = durable::rename_file(tmp, node.spool.queue_dir("classify") / env.id);
        EXPECT_TRUE(moved.has_value());
        return env.id;
    }

    std::string submit(const std::string& from_local, const std::vector<std::string>& rcpts,
                       std::string_view message) {
        return enqueue(alpha, alpha.address(from_local), rcpts, from_local, message);
    }

    // Drains both spools and relays outboxes until a whole round moves nothing. With
    // `relay_filter`, an outbox file the filter refuses stays where it is (to be tampered with).
    void run(const std::function<bool(const spool::Envelope&)>& relay_filter = {}) {
        std::atomic<bool> stop{false};
        for (int round = 0; round < 50; ++round) {
            size_t moved = 0;
            for (Node* n : {&alpha, &beta})
                for (auto& r : n->runners) {
                    auto count = r->drain(stop);
                    ASSERT_TRUE(count.has_value()) << count.error().message;
                    moved += *count;
                }
            for (Node* n : {&alpha, &beta}) moved += relay(*n, relay_filter);
            if (moved == 0) return;
        }
        FAIL() << "the two providers never went quiet";
    }

    size_t relay(Node& from, const std::function<bool(const spool::Envelope&)>& filter) {
        size_t moved = 0;
        auto names = durable::list_dir(from.spool.outbox_dir());
        if (!names) return 0;
        for (const auto& name : *names) {
            if (!spool::is_valid_queue_id(name)) continue;
            fs::path path = from.spool.outbox_dir() / name;
            auto info = spool::read_header(path);
            auto file = durable::read_file(path);
            EXPECT_TRUE(info && file);
            if (!info || !file) continue;
            if (filter && !filter(info->env)) continue;
            std::string body = file->substr(info->body_offset(), info->body_size);
            std::map<Node*, std::vector<std::string>> by_node;
            std::vector<std::string> outside;
            for (const auto& r : info->env.recipients) {
                if (Node* n = node_for(r))
                    by_node[n].push_back(r);
                else
                    outside.push_back(r);
            }
            for (auto& [n, rcpts] : by_node) enqueue(*n, info->env.sender, rcpts, "", body);
            if (!outside.empty()) {
                spool::Envelope env = info->env;
                env.recipients = outside;
                std::string out = spool::encode_header(env, body.size()) + body;
                write_file(internet() / name, out);
            }
            fs::remove(path);
            ++moved;
        }
        return moved;
    }

    // The queue files a relay filter kept in `node`'s outbox, by name.
    std::vector<fs::path> held_in_outbox(const Node& node) const {
        std::vector<fs::path> out;
        auto names = durable::list_dir(node.spool.outbox_dir());
        EXPECT_TRUE(names.has_value());
        if (!names) return out;
        for (const auto& n : *names)
            if (spool::is_valid_queue_id(n)) out.push_back(node.spool.outbox_dir() / n);
        std::sort(out.begin(), out.end());
        return out;
    }

    Received read(const Node& reader, std::string raw) const {
        Received r;
        r.raw = std::move(raw);
        auto info = pec::read_pec_message(r.raw);
        EXPECT_TRUE(info.has_value()) << (info ? "" : info.error().message);
        if (info) r.info = std::move(*info);
        auto p = reader.handle->current();
        auto index = p->index();
        auto report = p->verifier().verify(r.raw, index.get());
        EXPECT_TRUE(report.has_value());
        if (report) r.report = *report;
        return r;
    }

    std::vector<Received> mailbox(const Node& node, const std::string& address) const {
        std::vector<Received> out;
        fs::path box = node.maildir() / node.domain / address.substr(0, address.find('@')) / "new";
        std::vector<fs::path> files;
        if (fs::exists(box))
            for (const auto& e : fs::directory_iterator(box)) files.push_back(e.path());
        std::sort(files.begin(), files.end());
        for (const auto& f : files) out.push_back(read(node, read_file(f)));
        return out;
    }

    std::vector<Received> internet_mail() const {
        std::vector<Received> out;
        for (const auto& e : fs::directory_iterator(internet())) {
            std::string file = read_file(e.path());
            auto info = spool::read_header(e.path());
            EXPECT_TRUE(info.has_value());
            if (!info) continue;
            Received r = read(alpha, file.substr(info->body_offset(), info->body_size));
            r.env = info->env;
            out.push_back(std::move(r));
        }
        return out;
    }

    // Files left anywhere in a spool but the empty queues: quarantine, deferred, active, outbox.
    std::vector<std::string> leftovers(const Node& node, spool::Area area) const {
        std::vector<std::string> out;
        for (auto stage : spool::kStages) {
            fs::path dir = node.spool.area_dir(area, stage);
            if (!fs::exists(dir)) continue;
            for (const auto& e : fs::directory_iterator(dir))
                out.push_back(std::string(stage) + "/" + e.path().filename().string());
        }
        std::sort(out.begin(), out.end());
        return out;
    }

    // Where everything is, for failure messages.
    std::string describe() const {
        std::string out;
        for (const Node* n : {&alpha, &beta}) {
            for (auto area : spool::kAreas)
                for (const auto& f : leftovers(*n, area))
                    out += n->name + " " + std::string(spool::to_string(area)) + "/" + f + "\n";
            for (const auto& box : {"mario", "anna", "posta-certificata"}) {
                auto got = mailbox(*n, std::string(box) + "@" + n->domain);
                out += n->name + " mailbox " + box + ": " + std::to_string(got.size()) + "\n";
            }
            fs::path log = root() / (n->name + ".log");
            if (fs::exists(log)) out += n->name + " log:\n" + read_file(log);
        }
        return out;
    }

    void expect_clean() const {
        for (const Node* n : {&alpha, &beta})
            for (auto area : spool::kAreas)
                EXPECT_TRUE(leftovers(*n, area).empty()) << n->name << " " << spool::to_string(area)
                                                         << ": " << leftovers(*n, area).front();
    }

  private:
    void make_node(Node& n, const std::string& name, const std::string& domain,
                   const std::string& gestore, const NodeOptions& options) {
        const auto& pki = test_pki();
        n.name = name;
        n.domain = domain;
        n.dir = tmp_.path() / name;
        fs::create_directories(n.maildir());
        n.conf = n.dir / "pecd.conf";
        write_file(n.conf,
                   "[spool]\ndirectory = spool\n"
                   "[provider]\nname = " +
                       gestore + "\nmail_domain = " + domain + "\ndomains = " + domain +
                       "\ntemplates = " PECD_SOURCE_DIR "/conf/templates" +
                       "\nvirus_store = virus\nnode = " + name +
                       "\n[keys]\ncert = " + (pki / (name + ".crt")).string() +
                       "\nkey = " + (pki / (name + ".key")).string() +
                       "\n[trust]\nca_files = " + (pki / "ca.crt").string() +
                       "\ncrl_files = " + (pki / "crl-empty.pem").string() +
                       "\n[index]\nsource = ldif\nldif = ../index.ldif"
                       "\n[mailbox]\nmaildir = mail\n[antivirus]\ntype = " +
                       options.antivirus + "\n" + options.extra);
        auto config = Config::load(n.conf);
        ASSERT_TRUE(config.has_value()) << config.error().message;
        auto problems = provider::check(*config);
        for (const auto& p : problems)
            ADD_FAILURE() << n.conf << ":" << p.line << ": " << p.message;
        auto provider = provider::Provider::create(*config);
        ASSERT_TRUE(provider.has_value()) << provider.error().message;
        n.handle = std::make_shared<provider::ProviderHandle>(*provider);
        auto spool = spool::Spool::open(n.dir / "spool", true);
        ASSERT_TRUE(spool.has_value());
        n.spool = *spool;
        for (auto stage : spool::kStages) {
            auto fn = provider::make_stage(stage, n.handle);
            ASSERT_TRUE(fn.has_value());
            n.runners.push_back(std::make_unique<runner::StageRunner>(
                n.spool, std::string(stage), std::move(*fn), runner::RunnerOptions{}));
        }
        for (const auto& mailbox : {"mario", "gino", "anna", "luca", "posta-certificata"})
            ASSERT_TRUE(provider::create_maildir(n.maildir(), std::string(mailbox) + "@" + domain)
                            .has_value());
    }

    TempDir tmp_;
};

// A submission as a mail client writes it, CRLF.
inline std::string client_message(const std::string& from, const std::string& to,
                                  const std::string& cc, const std::string& subject,
                                  const std::string& body, const std::string& extra_headers = "") {
    std::string m = "From: " + from + "\r\nTo: " + to + "\r\n";
    if (!cc.empty()) m += "Cc: " + cc + "\r\n";
    m += "Subject: " + subject + "\r\nMessage-ID: <" + subject.substr(0, 4) + "." +
         spool::new_queue_id(spool::now_us()) +
         "@client.test>\r\nDate: Sun, 22 Nov 2026 12:00:00 +0100\r\n" + extra_headers +
         "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n";
    return m;
}

}  // namespace pecd::test
