// Index and CRL refresh, and the reload signal, through the real pecd binary; the CRL refresh
// also as the periodic task `pecd scheduler` runs. A CRL distribution point is played by
// Python's http.server on 127.0.0.1, stopped by PID.
#include <gtest/gtest.h>

#include <fstream>
#include <thread>

#include "tests/support/crypto_support.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/process.hpp"

namespace {

namespace fs = std::filesystem;
using pecd::test::quote;
using pecd::test::read_file;
using pecd::test::run;
using pecd::test::write_file;

const std::string kPecd = std::string(PECD_BINARY_DIR) + "/bin/pecd";

class Refresh : public ::testing::Test {
  protected:
    void SetUp() override {
        const fs::path& pki = pecd::test::test_pki();
        fs::path d = dir_.path();
        fs::create_directories(d / "www");
        fs::create_directories(d / "trust");
        fs::copy_file(pki / "crl-empty.pem", d / "trust/crl.pem");  // the older CRL in place
        fs::copy_file(pki / "crl-revoked.pem", d / "www/ca.crl");   // the CA published a newer one
        auto der = run("openssl crl -in " + quote(pki / "crl-revoked.pem") + " -outform DER -out " +
                       quote(d / "www/ca-der.crl"));
        ASSERT_EQ(der.status, 0) << der.output;
        write_file(d / "www/garbage.crl", "this is not a CRL\n");
        fs::copy_file(pki / "crl-empty.pem", d / "www/old.crl");
        auto hash = run("openssl x509 -inform DER -in " + quote(pki / "alpha.der") +
                        " -noout -fingerprint -sha1 | sed 's/.*=//; s/://g'");
        auto b64 = run("base64 -w0 " + quote(pki / "alpha.der"));
        write_file(d / "index.ldif",
                   "dn: providerName=Gestore Alpha,o=postacert\nobjectClass: provider\n"
                   "providerName: Gestore Alpha\nproviderCertificateHash: " +
                       hash.output.substr(0, 40) + "\nproviderCertificate;binary:: " + b64.output +
                       "\nmailReceipt: posta-certificata@pec.alpha.test\nmanagedDomains: "
                       "pec.alpha.test\n");
        auto port = pecd::test::free_loopback_port();
        ASSERT_TRUE(port) << port.error().message;
        port_ = *port;
        server_ = pecd::testing::ProcessGuard(pecd::testing::spawn(
            {"/usr/bin/python3", "-m", "http.server", std::to_string(port_), "--bind", "127.0.0.1",
             "--directory", (d / "www").string()},
            {.env = {}, .stdin_path = "", .stdout_path = "/dev/null", .stderr_path = "/dev/null"}));
        ASSERT_TRUE(pecd::test::wait_for_loopback_port(port_)) << "http.server did not start";
    }

    // A provider configuration whose CRL comes from `crl_path` on the test server.
    fs::path config(const std::string& crl_path, const std::string& extra = "") {
        const fs::path& pki = pecd::test::test_pki();
        fs::path d = dir_.path();
        fs::create_directories(d / "mail/pec.alpha.test");
        std::ofstream(d / "pecd.conf")
            << "[spool]\ndirectory = spool\n[provider]\nname = Gestore Alpha S.p.A.\nmail_domain = "
               "pec.alpha.test\n"
               "domains = pec.alpha.test\ntemplates = "
            << PECD_SOURCE_DIR << "/conf/templates\nvirus_store = virus\n[keys]\ncert = "
            << (pki / "alpha.crt").string() << "\nkey = " << (pki / "alpha.key").string()
            << "\n[trust]\nca_files = " << (pki / "ca.crt").string()
            << "\ncrl_files = trust/crl.pem\ncrl_urls = http://127.0.0.1:" << port_ << crl_path
            << "\n[index]\nsource = ldif\nldif = index.ldif\n[mailbox]\nmaildir = mail\n"
            << extra;
        return d / "pecd.conf";
    }

    std::string crl_in_place() { return read_file(dir_.path() / "trust/crl.pem"); }

    pecd::test::TempDir dir_{"pecd-refresh"};
    int port_ = 0;
    pecd::testing::ProcessGuard server_;
};

TEST_F(Refresh, CrlIsDownloadedCheckedAndReplacedAtomically) {
    fs::path conf = config("/ca.crl");
    auto r = run(kPecd + " -c " + quote(conf) + " refresh-crl 2>&1");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(crl_in_place(), read_file(pecd::test::test_pki() / "crl-revoked.pem"));
    // DER is accepted too.
    conf = config("/ca-der.crl");
    EXPECT_EQ(run(kPecd + " -c " + quote(conf) + " refresh-crl 2>&1").status, 0);
    EXPECT_EQ(crl_in_place(), read_file(dir_.path() / "www/ca-der.crl"));
}

TEST_F(Refresh, BadOlderOrUnreachableCrlsLeaveTheOldFileInPlace) {
    std::string before = crl_in_place();
    auto garbage = run(kPecd + " -c " + quote(config("/garbage.crl")) + " refresh-crl 2>&1");
    EXPECT_EQ(garbage.status, 1) << garbage.output;
    EXPECT_NE(garbage.output.find("not a CRL"), std::string::npos) << garbage.output;
    EXPECT_EQ(crl_in_place(), before);
    auto missing = run(kPecd + " -c " + quote(config("/nowhere.crl")) + " refresh-crl 2>&1");
    EXPECT_EQ(missing.status, 75) << missing.output;  // a 404 may be temporary: retry later
    EXPECT_EQ(crl_in_place(), before);
    // Install the newer CRL, then offer the older one: refused, never back in time.
    ASSERT_EQ(run(kPecd + " -c " + quote(config("/ca.crl")) + " refresh-crl 2>&1").status, 0);
    std::string newer = crl_in_place();
    auto old = run(kPecd + " -c " + quote(config("/old.crl")) + " refresh-crl 2>&1");
    EXPECT_EQ(old.status, 1) << old.output;
    EXPECT_NE(old.output.find("older"), std::string::npos) << old.output;
    EXPECT_EQ(crl_in_place(), newer);
    // The CA server goes away: a transient failure.
    server_ = pecd::testing::ProcessGuard();
    auto down = run(kPecd + " -c " + quote(config("/ca.crl")) + " refresh-crl 2>&1");
    EXPECT_EQ(down.status, 75) << down.output;
    EXPECT_EQ(crl_in_place(), newer);
}

TEST_F(Refresh, CrlRefreshRunsAsAPeriodicSchedulerTask) {
    fs::path conf = config(
        "/ca.crl", "[scheduler]\ndirectory = tasks\nnode = test\ncommand.crl-refresh = " + kPecd +
                       " -c " + (dir_.path() / "pecd.conf").string() +
                       " refresh-crl\nevery.crl-refresh = 1h\n");
    auto r = run(kPecd + " -c " + quote(conf) + " --once scheduler 2>&1");
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(crl_in_place(), read_file(pecd::test::test_pki() / "crl-revoked.pem"));
    // The periodic task is scheduled again for the next hour.
    auto tasks =
        run(std::string(PECD_BINARY_DIR) + "/bin/pecq -c " + quote(conf) + " tasks list 2>&1");
    EXPECT_NE(tasks.output.find("periodic.crl-refresh"), std::string::npos) << tasks.output;
}

TEST_F(Refresh, IndexRefreshReloadsTheRunningDaemons) {
    fs::path conf = config("/ca.crl");
    ASSERT_EQ(run(kPecd + " -c " + quote(conf) + " init >/dev/null 2>&1").status, 0);
    // No daemon yet: nothing to tell.
    auto alone = run(kPecd + " -c " + quote(conf) + " refresh-index 2>&1");
    EXPECT_EQ(alone.status, 0) << alone.output;
    EXPECT_NE(alone.output.find("1 providers from ldif:"), std::string::npos) << alone.output;
    EXPECT_NE(alone.output.find("0 running pecd"), std::string::npos) << alone.output;
    fs::path log = dir_.path() / "daemon.log";
    pecd::testing::ProcessGuard daemon(pecd::testing::spawn(
        {kPecd, "-c", conf.string(), "all"},
        {.env = {}, .stdin_path = "", .stdout_path = "", .stderr_path = log.string()}));
    for (int i = 0; i < 200 && read_file(log).find("running 6 stage") == std::string::npos; ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
    auto told = run(kPecd + " -c " + quote(conf) + " refresh-index 2>&1");
    EXPECT_EQ(told.status, 0) << told.output;
    EXPECT_NE(told.output.find("1 running pecd"), std::string::npos) << told.output;
    bool reloaded = false;
    for (int i = 0; i < 200 && !reloaded; ++i) {
        reloaded = read_file(log).find("SIGHUP: configuration reloaded") != std::string::npos;
        if (!reloaded) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    EXPECT_TRUE(reloaded) << read_file(log);
}

// `[index] url`: refresh-index downloads the index over TLS from a server that wants a client
// certificate (openssl s_server on 127.0.0.1, stopped by PID), and installs it only if it loads
// as the index would: a changed byte, a refused handshake, an untrusted server or a missing file
// leave the file in place.
class IndexDownload : public ::testing::Test {
  protected:
    void SetUp() override {
        const fs::path& pki = pecd::test::test_pki();
        fs::path d = dir_.path();
        fs::create_directories(d / "www");
        fs::create_directories(d / "mail/pec.alpha.test");
        // The server's certificate, from the test CA: localhost, and not 127.0.0.1.
        write_file(d / "srv.ext",
                   "[v3]\nkeyUsage = critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage = serverAuth\nsubjectAltName = DNS:localhost\n");
        auto srv = run("openssl req -new -newkey rsa:2048 -nodes -keyout " + quote(d / "srv.key") +
                       " -subj /CN=localhost 2>/dev/null | openssl x509 -req -CA " +
                       quote(pki / "ca.crt") + " -CAkey " + quote(pki / "ca.key") +
                       " -set_serial 9090 -days 30 -extfile " + quote(d / "srv.ext") +
                       " -extensions v3 -out " + quote(d / "srv.crt"));
        ASSERT_EQ(srv.status, 0) << srv.output;
        // Alpha's record signed by alpha: an old one in place, a new one (one more domain) on
        // the server, and the new one with a byte changed.
        auto hash = run("openssl x509 -inform DER -in " + quote(pki / "alpha.der") +
                        " -noout -fingerprint -sha1 | sed 's/.*=//; s/://g'");
        auto b64 = run("base64 -w0 " + quote(pki / "alpha.der"));
        auto record = [&](const std::string& domains) {
            return "dn: providerName=Gestore Alpha,o=postacert\nobjectClass: provider\n"
                   "providerName: Gestore Alpha\nproviderCertificateHash: " +
                   hash.output.substr(0, 40) + "\nproviderCertificate;binary:: " + b64.output +
                   "\nmailReceipt: posta-certificata@pec.alpha.test\n" + domains;
        };
        // An older one on the server too: signingTime has whole seconds.
        sign(record("managedDomains: pec.alpha.test\n"), d / "www/old.p7m");
        std::this_thread::sleep_for(std::chrono::milliseconds(1100));
        sign(record("managedDomains: pec.alpha.test\n"), d / "index.p7m");
        sign(record("managedDomains: pec.alpha.test\nmanagedDomains: alpha.example\n"),
             d / "www/igpec.p7m");
        std::string der = read_file(d / "www/igpec.p7m");
        size_t at = der.find("alpha.example");
        ASSERT_NE(at, std::string::npos);
        der[at] = 'b';
        write_file(d / "www/tampered.p7m", der);

        auto port = pecd::test::free_loopback_port();
        ASSERT_TRUE(port) << port.error().message;
        port_ = *port;
        // -WWW serves files from the working directory; `exec` keeps the PID the server's.
        server_ = pecd::testing::ProcessGuard(pecd::testing::spawn(
            {"/bin/sh", "-c",
             "cd " + quote(d / "www") +
                 " && exec openssl s_server -accept 127.0.0.1:" + std::to_string(port_) +
                 " -WWW -cert " + quote(d / "srv.crt") + " -key " + quote(d / "srv.key") +
                 " -Verify 1 -verify_return_error -purpose any -CAfile " + quote(pki / "ca.crt")},
            {.env = {}, .stdin_path = "", .stdout_path = "/dev/null", .stderr_path = "/dev/null"}));
        ASSERT_TRUE(pecd::test::wait_for_loopback_port(port_)) << "s_server did not start";
    }

    void sign(const std::string& ldif, const fs::path& out) {
        const fs::path& pki = pecd::test::test_pki();
        write_file(dir_.path() / "record.ldif", ldif);
        auto r = run("openssl cms -sign -nodetach -binary -outform DER -in " +
                     quote(dir_.path() / "record.ldif") + " -signer " + quote(pki / "alpha.crt") +
                     " -inkey " + quote(pki / "alpha.key") + " -out " + quote(out) + " 2>&1");
        ASSERT_EQ(r.status, 0) << r.output;
    }

    // refresh-index with [index] url = https://<host>:<port><path>, plus `extra` index keys.
    pecd::test::CommandResult refresh(const std::string& path, const std::string& extra = "",
                                      const std::string& host = "localhost") {
        const fs::path& pki = pecd::test::test_pki();
        fs::path d = dir_.path();
        std::ofstream(d / "pecd.conf")
            << "[spool]\ndirectory = spool\n[provider]\nname = Gestore Alpha S.p.A.\nmail_domain = "
               "pec.alpha.test\ndomains = pec.alpha.test\ntemplates = "
            << PECD_SOURCE_DIR << "/conf/templates\nvirus_store = virus\n[keys]\ncert = "
            << (pki / "alpha.crt").string() << "\nkey = " << (pki / "alpha.key").string()
            << "\n[trust]\nca_files = " << (pki / "ca.crt").string()
            << "\ncrl_files = " << (pki / "crl-empty.pem").string()
            << "\n[index]\nsource = ldif\nldif = index.p7m\nldif_signer = "
            << (pki / "alpha.crt").string() << "\nurl = https://" << host << ":" << port_ << path
            << "\n"
            << extra << "[mailbox]\nmaildir = mail\n";
        return run(kPecd + " -c " + quote(d / "pecd.conf") + " refresh-index 2>&1");
    }

    std::string in_place() { return read_file(dir_.path() / "index.p7m"); }
    bool no_leftover() {
        for (const auto& e : fs::directory_iterator(dir_.path()))
            if (e.path().filename().string().find(".tmp.") != std::string::npos) return false;
        return true;
    }

    pecd::test::TempDir dir_{"pecd-index-download"};
    int port_ = 0;
    pecd::testing::ProcessGuard server_;
};

TEST_F(IndexDownload, TheSignedIndexIsDownloadedCheckedAndInstalled) {
    const std::string ca = "url_ca_file = " + (pecd::test::test_pki() / "ca.crt").string() + "\n";
    auto r = refresh("/igpec.p7m", ca);
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("1 providers from ldif:"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("signed by C=IT, O=Gestore Alpha"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("downloaded from https://localhost:"), std::string::npos) << r.output;
    EXPECT_EQ(in_place(), read_file(dir_.path() / "www/igpec.p7m"));
    EXPECT_TRUE(no_leftover());
}

// What comes from the network is taken only as a .p7m from a named signer.
TEST_F(IndexDownload, AUrlNeedsASignedFileAndItsSigner) {
    const std::string ca = "url_ca_file = " + (pecd::test::test_pki() / "ca.crt").string() + "\n";
    ASSERT_EQ(refresh("/igpec.p7m", ca).status, 0);
    fs::path conf = dir_.path() / "pecd.conf";
    std::string text = read_file(conf);
    size_t at = text.find("ldif_signer = ");
    ASSERT_NE(at, std::string::npos);
    write_file(conf, text.substr(0, at) + text.substr(text.find('\n', at) + 1));
    auto r = run(kPecd + " -c " + quote(conf) + " check-config 2>&1");
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("needs ldif to be a .p7m and ldif_signer"), std::string::npos)
        << r.output;
}

TEST_F(IndexDownload, WhatDoesNotHoldLeavesTheIndexInPlace) {
    const std::string before = in_place();
    const fs::path& pki = pecd::test::test_pki();
    const std::string ca = "url_ca_file = " + (pki / "ca.crt").string() + "\n";
    struct Case {
        std::string path, extra;
        int status;
        std::string says;
        std::string host = "localhost";
    };
    for (const Case& c : {
             Case{"/tampered.p7m", ca, 1, "bad_signature"},
             Case{"/igpec.p7m", ca + "url_client_auth = no\n", 75, "certificate required"},
             Case{"/igpec.p7m", "url_ca_file = " + (pki / "foreign-ca.crt").string() + "\n", 75,
                  "server certificate"},
             // s_server answers a missing file with 200 and a line of text: not an index.
             Case{"/missing.p7m", ca, 1, "not signed"},
             // A replay of an older index, signed all right.
             Case{"/old.p7m", ca, 1, "signed before the index in place"},
             // The server's certificate names localhost, not the address asked for.
             Case{"/igpec.p7m", ca, 75, "IP address mismatch", "127.0.0.1"},
         }) {
        auto r = refresh(c.path, c.extra, c.host);
        EXPECT_EQ(r.status, c.status) << c.path << " " << c.extra << r.output;
        EXPECT_NE(r.output.find(c.says), std::string::npos) << r.output;
        EXPECT_EQ(in_place(), before) << c.path << " " << c.extra;
        EXPECT_TRUE(no_leftover()) << c.path;
    }
}

// A directory server that wants a certificate fit for TLS client authentication refuses the PEC
// certificate (extended key usage: e-mail protection); [index] url_client_cert and
// url_client_key give pecd one of its own.
TEST_F(IndexDownload, AClientCertificateOfItsOwnForAServerThatChecksItsPurpose) {
    const fs::path& pki = pecd::test::test_pki();
    fs::path d = dir_.path();
    write_file(d / "client.ext",
               "[v3]\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = clientAuth\n");
    auto made = run("openssl req -new -newkey rsa:2048 -nodes -keyout " + quote(d / "client.key") +
                    " -subj '/O=Gestore Alpha/CN=igpec client' 2>/dev/null | openssl x509 -req "
                    "-CA " +
                    quote(pki / "ca.crt") + " -CAkey " + quote(pki / "ca.key") +
                    " -set_serial 9191 -days 30 -extfile " + quote(d / "client.ext") +
                    " -extensions v3 -out " + quote(d / "client.crt") + " 2>&1");
    ASSERT_EQ(made.status, 0) << made.output;
    auto port = pecd::test::free_loopback_port();
    ASSERT_TRUE(port) << port.error().message;
    pecd::testing::ProcessGuard strict(pecd::testing::spawn(
        {"/bin/sh", "-c",
         "cd " + quote(d / "www") +
             " && exec openssl s_server -accept 127.0.0.1:" + std::to_string(*port) +
             " -WWW -cert " + quote(d / "srv.crt") + " -key " + quote(d / "srv.key") +
             " -Verify 1 -verify_return_error -purpose sslclient -CAfile " + quote(pki / "ca.crt")},
        {.env = {}, .stdin_path = "", .stdout_path = "/dev/null", .stderr_path = "/dev/null"}));
    ASSERT_TRUE(pecd::test::wait_for_loopback_port(*port)) << "s_server did not start";
    port_ = *port;
    const std::string before = in_place();
    const std::string ca = "url_ca_file = " + (pki / "ca.crt").string() + "\n";

    auto pec_cert = refresh("/igpec.p7m", ca);
    EXPECT_EQ(pec_cert.status, 75) << pec_cert.output;
    EXPECT_EQ(in_place(), before);

    const std::string own = ca + "url_client_cert = " + (d / "client.crt").string() +
                            "\nurl_client_key = " + (d / "client.key").string() + "\n";
    auto r = refresh("/igpec.p7m", own);
    EXPECT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(in_place(), read_file(d / "www/igpec.p7m"));

    // check-config: the two go together, match each other, and need url_client_auth.
    struct Case {
        std::string extra, says;
    };
    for (const Case& c : {
             Case{ca + "url_client_cert = " + (d / "client.crt").string() + "\n",
                  "url_client_cert and url_client_key go together"},
             Case{ca + "url_client_cert = " + (d / "client.crt").string() +
                      "\nurl_client_key = " + (pki / "alpha.key").string() + "\n",
                  "does not match"},
             Case{own + "url_client_auth = no\n", "is set while url_client_auth = no"},
         }) {
        refresh("/igpec.p7m", c.extra);  // writes the configuration
        auto check = run(kPecd + " -c " + quote(d / "pecd.conf") + " check-config 2>&1");
        EXPECT_EQ(check.status, 1) << c.extra << check.output;
        EXPECT_NE(check.output.find(c.says), std::string::npos) << check.output;
    }
}

}  // namespace
