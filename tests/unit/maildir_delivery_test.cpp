// The embedded Maildir delivery (provider::maildir_delivery): mailbox policy, exact bytes, one
// copy per delivery key, and that new/ never holds a partial message (injected I/O faults and
// SIGKILL in the middle of deliveries).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/provider/embedded.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::provider {
namespace {

namespace fs = std::filesystem;
using test::files_under;

const std::string kMessage =
    "From: a@pec.example.it\r\nTo: utente@pec.test\r\nSubject: prova\r\n\r\nCorpo\r\n.punto\r\n";

std::string slurp(const fs::path& p) {
    auto r = durable::read_file(p);
    return r ? *r : "<unreadable " + p.string() + ">";
}

std::string fresh_key() {
    return spool::new_queue_id(spool::now_us());
}

class MaildirDeliveryTest : public ::testing::Test {
  protected:
    void SetUp() override {
        auto d = test::TempDir::create("pecd-maildir");
        ASSERT_TRUE(d) << d.error().message;
        dir_.emplace(std::move(*d));
        root_ = dir_->path() / "mail";
        fs::create_directories(root_);
        deliver_ = maildir_delivery(root_, {"pec.test"});
    }
    void TearDown() override { durable::clear_faults(); }
    std::optional<test::TempDir> dir_;
    fs::path root_;
    std::function<Result<RecipientStatus>(const std::string&, std::string_view, std::string_view)>
        deliver_;
};

TEST_F(MaildirDeliveryTest, DeliversExactBytesIntoNewOfAnExistingMailbox) {
    ASSERT_TRUE(create_maildir(root_, "utente@pec.test"));
    const std::string key = fresh_key();
    auto o = deliver_("Utente@PEC.test", kMessage, key);
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->outcome, Outcome::ok) << o->text;
    EXPECT_EQ(o->code, "2.0.0");
    auto files = files_under(root_ / "pec.test" / "utente");
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0], root_ / "pec.test" / "utente" / "new" / (key + ".pecd"));
    EXPECT_EQ(slurp(files[0]), kMessage);
}

TEST_F(MaildirDeliveryTest, TheSameKeyTwiceIsOneCopy) {
    // A delivery run again after a crash before its batch committed.
    ASSERT_TRUE(create_maildir(root_, "utente@pec.test"));
    const std::string key = fresh_key();
    for (int run = 0; run < 2; ++run) {
        auto o = deliver_("utente@pec.test", kMessage, key);
        ASSERT_TRUE(o) << o.error().message;
        EXPECT_EQ(o->outcome, Outcome::ok) << o->text;
    }
    EXPECT_EQ(files_under(root_ / "pec.test" / "utente").size(), 1u);
    ASSERT_TRUE(deliver_("utente@pec.test", kMessage, fresh_key()));
    EXPECT_EQ(files_under(root_ / "pec.test" / "utente").size(), 2u) << "another key, another copy";
}

TEST_F(MaildirDeliveryTest, UnknownMailboxIsPermanent511AndCreatesNothing) {
    auto o = deliver_("nessuno@pec.test", kMessage, fresh_key());
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->outcome, Outcome::permanent);
    EXPECT_EQ(o->code, "5.1.1");
    EXPECT_FALSE(fs::exists(root_ / "pec.test"));
}

// A mailbox is its new/: with tmp/ alone the delivery is refused before anything is written
// (inside a runner batch a write that could not be published would hold the whole batch back).
TEST_F(MaildirDeliveryTest, AMailboxWithoutNewIsPermanent511AndGetsNoFile) {
    ASSERT_TRUE(create_maildir(root_, "utente@pec.test"));
    fs::remove_all(root_ / "pec.test" / "utente" / "new");
    auto o = deliver_("utente@pec.test", kMessage, fresh_key());
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->outcome, Outcome::permanent);
    EXPECT_EQ(o->code, "5.1.1");
    EXPECT_TRUE(files_under(root_ / "pec.test" / "utente").empty());
}

TEST_F(MaildirDeliveryTest, ADomainWeDoNotManageIsPermanent512) {
    ASSERT_TRUE(create_maildir(root_, "utente@altro.test"));
    auto o = deliver_("utente@altro.test", kMessage, fresh_key());
    ASSERT_TRUE(o) << o.error().message;
    EXPECT_EQ(o->outcome, Outcome::permanent);
    EXPECT_EQ(o->code, "5.1.2");
    EXPECT_TRUE(files_under(root_ / "altro.test").empty());
}

TEST_F(MaildirDeliveryTest, AddressesThatCouldEscapeTheRootAreRefused) {
    for (std::string bad : {"../x@pec.test", "x@../../etc", "a/b@pec.test", "noatsign", "@pec.test",
                            "x@", "x y@pec.test", ".hidden@pec.test", "x@pec.test\r\nRSET"}) {
        auto o = deliver_(bad, kMessage, fresh_key());
        ASSERT_TRUE(o) << bad;
        EXPECT_EQ(o->outcome, Outcome::permanent) << bad;
        EXPECT_EQ(o->code, "5.1.3") << bad;
    }
    EXPECT_TRUE(files_under(dir_->path()).empty());
}

TEST_F(MaildirDeliveryTest, MissingRootIsATransientErrorNotAnUnknownUser) {
    // An unmounted volume must not bounce mail with non-delivery notices.
    auto unmounted = maildir_delivery(dir_->path() / "not-mounted", {"pec.test"});
    auto o = unmounted("utente@pec.test", kMessage, fresh_key());
    ASSERT_FALSE(o);
    EXPECT_EQ(o.error().kind, ErrorKind::transient);
}

// Every failing step (write, fsync, rename) leaves new/ empty and tmp/ clean, and is reported
// as a transient failure with the RFC 3463 code of the cause.
TEST_F(MaildirDeliveryTest, IoFaultsNeverLeaveAPartialMessageInNew) {
    ASSERT_TRUE(create_maildir(root_, "utente@pec.test"));
    fs::path box = root_ / "pec.test" / "utente";
    struct Case {
        const char* spec;
        const char* code;
    };
    for (Case c : {Case{"write=ENOSPC", "4.3.1"}, Case{"fsync=EIO", "4.3.0"},
                   Case{"rename=EDQUOT", "4.2.2"}}) {
        ASSERT_TRUE(durable::set_faults(c.spec));
        auto o = deliver_("utente@pec.test", kMessage, fresh_key());
        durable::clear_faults();
        ASSERT_TRUE(o) << c.spec;
        EXPECT_EQ(o->outcome, Outcome::transient) << c.spec;
        EXPECT_EQ(o->code, c.code) << c.spec << ": " << o->text;
        EXPECT_TRUE(files_under(box).empty()) << c.spec;
    }
    auto ok = deliver_("utente@pec.test", kMessage, fresh_key());
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->outcome, Outcome::ok);
}

// A child delivers an 8 MiB message in a loop and is SIGKILLed at random moments, until one
// kill has landed inside a write (a short file exists) and one after a delivery. Whatever reached
// new/ must be the whole message; a torn one may only sit in tmp/. The test insists on having
// seen a torn file, so it cannot pass without exercising the crash window.
TEST_F(MaildirDeliveryTest, SigkillDuringDeliveryNeverExposesATornMessage) {
    ASSERT_TRUE(create_maildir(root_, "utente@pec.test"));
    fs::path box = root_ / "pec.test" / "utente";
    std::string big = "Subject: big\r\n\r\n";
    while (big.size() < (8u << 20)) big += std::string(76, 'x') + "\r\n";
    std::mt19937 rng(std::random_device{}());
    size_t delivered = 0, torn = 0;
    int round = 0;
    for (; round < 60 && (torn == 0 || delivered == 0); ++round) {
        pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            for (;;) (void)deliver_("utente@pec.test", big, fresh_key());
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
}  // namespace pecd::provider
