// MaildirDelivery: mailbox policy, exact bytes, and that new/ never holds a partial message
// (injected I/O faults and SIGKILL in the middle of deliveries).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "spool-layout/durable.hpp"
#include "stages/transport/delivery.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::transport {
namespace {

namespace fs = std::filesystem;
using test::files_under;

const std::string kMessage =
    "From: a@pec.example.it\r\nTo: utente@pec.test\r\nSubject: prova\r\n\r\nCorpo\r\n.punto\r\n";

std::string slurp(const fs::path& p) {
    auto r = durable::read_file(p);
    return r ? *r : "<unreadable " + p.string() + ">";
}

class MaildirDeliveryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto d = test::TempDir::create("pecd-maildir");
        ASSERT_TRUE(d) << d.error().message;
        dir_.emplace(std::move(*d));
        root_ = dir_->path() / "mail";
        fs::create_directories(root_);
    }
    void TearDown() override { durable::clear_faults(); }
    std::optional<test::TempDir> dir_;
    fs::path root_;
};

TEST_F(MaildirDeliveryTest, DeliversExactBytesIntoNewOfAnExistingMailbox) {
    fs::create_directories(root_ / "pec.test" / "utente");
    MaildirDelivery d({root_, false});
    auto o = d.deliver("Utente@PEC.test", kMessage);
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_TRUE(o->accepted()) << o->describe();
    EXPECT_EQ(o->status, "2.0.0");
    auto files = files_under(root_ / "pec.test" / "utente");
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0].parent_path().filename(), "new");
    EXPECT_EQ(files[0].string(), o->where);
    EXPECT_EQ(slurp(files[0]), kMessage);
    EXPECT_TRUE(fs::is_directory(root_ / "pec.test" / "utente" / "cur"));
}

TEST_F(MaildirDeliveryTest, UnknownMailboxIsPermanent511AndCreatesNothing) {
    MaildirDelivery d({root_, false});
    auto o = d.deliver("nessuno@pec.test", kMessage);
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->disposition, Disposition::permanent_failure);
    EXPECT_EQ(o->status, "5.1.1");
    EXPECT_FALSE(fs::exists(root_ / "pec.test"));
}

TEST_F(MaildirDeliveryTest, AutoCreateMakesTheMailboxOnFirstDelivery) {
    MaildirDelivery d({root_, true});
    auto o = d.deliver("nuovo@altro.test", kMessage);
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_TRUE(o->accepted()) << o->describe();
    for (const char* sub : {"tmp", "new", "cur"})
        EXPECT_TRUE(fs::is_directory(root_ / "altro.test" / "nuovo" / sub)) << sub;
    EXPECT_EQ(slurp(o->where), kMessage);
}

TEST_F(MaildirDeliveryTest, AddressesThatCouldEscapeTheRootAreRefused) {
    MaildirDelivery d({root_, true});
    for (std::string bad : {"../x@pec.test", "x@../../etc", "a/b@pec.test", "noatsign", "@pec.test",
                            "x@", "x y@pec.test", ".hidden@pec.test", "x@pec.test\r\nRSET"}) {
        auto o = d.deliver(bad, kMessage);
        ASSERT_TRUE(o) << bad;
        EXPECT_EQ(o->disposition, Disposition::permanent_failure) << bad;
        EXPECT_EQ(o->status, "5.1.3") << bad;
    }
    EXPECT_TRUE(files_under(dir_->path()).empty());
}

TEST_F(MaildirDeliveryTest, MissingRootIsATransientErrorNotAnUnknownUser) {
    MaildirDelivery d({dir_->path() / "not-mounted", false});
    auto o = d.deliver("utente@pec.test", kMessage);
    ASSERT_FALSE(o);
    EXPECT_EQ(o.error().kind, ErrorKind::transient);
}

TEST_F(MaildirDeliveryTest, DeliverAllGivesOneOutcomePerRecipientInOrder) {
    fs::create_directories(root_ / "pec.test" / "a");
    fs::create_directories(root_ / "pec.test" / "c");
    MaildirDelivery d({root_, false});
    auto all = d.deliver_all({"a@pec.test", "b@pec.test", "c@pec.test"}, kMessage);
    ASSERT_TRUE(all) << all.error().message;
    ASSERT_EQ(all->size(), 3u);
    EXPECT_TRUE((*all)[0].accepted());
    EXPECT_EQ((*all)[1].status, "5.1.1");
    EXPECT_TRUE((*all)[2].accepted());
    EXPECT_EQ((*all)[1].recipient, "b@pec.test");
}

// Every failing step (write, fsync, rename) leaves new/ empty and tmp/ clean, and is reported
// as a transient failure with the RFC 3463 code of the cause.
TEST_F(MaildirDeliveryTest, IoFaultsNeverLeaveAPartialMessageInNew) {
    fs::path box = root_ / "pec.test" / "utente";
    fs::create_directories(box);
    MaildirDelivery d({root_, false});
    struct Case {
        const char* spec;
        const char* status;
    };
    for (Case c : {Case{"write=ENOSPC", "4.3.1"}, Case{"fsync=EIO", "4.3.0"},
                   Case{"rename=EDQUOT", "4.2.2"}}) {
        ASSERT_TRUE(durable::set_faults(c.spec));
        auto o = d.deliver("utente@pec.test", kMessage);
        durable::clear_faults();
        ASSERT_TRUE(o) << c.spec;
        EXPECT_EQ(o->disposition, Disposition::transient_failure) << c.spec;
        EXPECT_EQ(o->status, c.status) << c.spec << ": " << o->text;
        EXPECT_TRUE(files_under(box).empty()) << c.spec;
    }
    auto ok = d.deliver("utente@pec.test", kMessage);
    ASSERT_TRUE(ok);
    EXPECT_TRUE(ok->accepted());
}

// A child delivers an 8 MiB message in a loop and is SIGKILLed at random moments, until one
// kill has landed inside a write (a short file exists) and one after a delivery. Whatever reached
// new/ must be the whole message; a torn one may only sit in tmp/. The test insists on having
// seen a torn file, so it cannot pass without exercising the crash window.
TEST_F(MaildirDeliveryTest, SigkillDuringDeliveryNeverExposesATornMessage) {
    fs::path box = root_ / "pec.test" / "utente";
    fs::create_directories(box);
    std::string big = "Subject: big\r\n\r\n";
    while (big.size() < (8u << 20)) big += std::string(76, 'x') + "\r\n";
    std::mt19937 rng(std::random_device{}());
    size_t delivered = 0, torn = 0;
    int round = 0;
    for (; round < 60 && (torn == 0 || delivered == 0); ++round) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            MaildirDelivery d({root_, false});
            for (;;) (void)d.deliver("utente@pec.test", big);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 200));
        ::kill(pid, SIGKILL);
        int status = 0;
        ::waitpid(pid, &status, 0);
        for (const auto& f : files_under(box / "new")) {
            ASSERT_EQ(fs::file_size(f), big.size()) << "torn message visible in new/: " << f;
            ++delivered;
            fs::remove(f);  // keep the disk use of the test bounded
        }
        for (const auto& f : files_under(box / "tmp")) {
            if (fs::file_size(f) != big.size()) ++torn;
            fs::remove(f);
        }
    }
    std::printf("%d kills, %zu complete deliveries, %zu torn files (all in tmp/)\n", round,
                delivered, torn);
    EXPECT_GT(torn, 0u) << "no kill landed inside a write: the crash window was not exercised";
    EXPECT_GT(delivered, 0u);
}

}  // namespace
}  // namespace pecd::transport
