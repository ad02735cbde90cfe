// The embedded outbox (provider::outbox_sender, outbox_file_sender): what the demo's MTA relays.
// A message becomes a queue file named by a fresh queue id, or a queue file gets a second name.
#include <gtest/gtest.h>

#include <filesystem>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/provider/embedded.hpp"
#include "tests/support/mail_servers_fixture.hpp"
#include "tests/support/slapd_fixture.hpp"

namespace pecd::provider {
namespace {

namespace fs = std::filesystem;
using test::files_under;

const std::string kMessage = "From: mittente@pec.example.it\r\nTo: a@pec.test\r\n\r\ncorpo\r\n";

TEST(EmbeddedOutbox, RoundTripsEnvelopeAndBody) {
    auto dir = test::TempDir::create("pecd-outbox");
    ASSERT_TRUE(dir);
    auto send = outbox_sender(dir->path() / "outbox");
    auto sent = send("mittente@pec.example.it", {"a@pec.test", "b@pec.test"}, kMessage);
    ASSERT_TRUE(sent) << sent.error().message;
    ASSERT_EQ(sent->size(), 2u);
    EXPECT_EQ((*sent)[0].outcome, Outcome::ok);
    EXPECT_EQ((*sent)[1].recipient, "b@pec.test");

    auto files = files_under(dir->path() / "outbox");
    ASSERT_EQ(files.size(), 1u) << "no temporary file is left";
    auto info = spool::read_header(files[0]);
    ASSERT_TRUE(info) << info.error().message;
    EXPECT_EQ(files[0].filename().string(), info->env.id);
    EXPECT_EQ(info->env.sender, "mittente@pec.example.it");
    EXPECT_EQ(info->env.recipients, (std::vector<std::string>{"a@pec.test", "b@pec.test"}));
    auto bytes = durable::read_file(files[0]);
    ASSERT_TRUE(bytes);
    EXPECT_EQ(bytes->substr(info->body_offset(), info->body_size), kMessage);
}

TEST(EmbeddedOutbox, AFailedFlushLeavesNothingBehind) {
    auto dir = test::TempDir::create("pecd-outbox");
    ASSERT_TRUE(dir);
    auto send = outbox_sender(dir->path());
    ASSERT_TRUE(durable::set_faults("fsync=EIO"));
    auto sent = send("a@pec.example.it", {"b@pec.test"}, kMessage);
    durable::clear_faults();
    ASSERT_FALSE(sent);
    EXPECT_TRUE(files_under(dir->path()).empty());
}

TEST(EmbeddedOutbox, AQueueFileIsLinkedUnderItsIdAndARerunFindsItsLink) {
    auto dir = test::TempDir::create("pecd-outbox");
    ASSERT_TRUE(dir);
    spool::Envelope env;
    env.arrival_us = spool::now_us();
    env.id = spool::new_queue_id(env.arrival_us);
    env.sender = "mittente@pec.example.it";
    env.recipients = {"a@pec.test"};
    const fs::path queue_file = dir->path() / env.id;
    ASSERT_TRUE(durable::write_file_atomic(queue_file,
                                           spool::encode_header(env, kMessage.size()) + kMessage));
    auto link = outbox_file_sender(dir->path() / "outbox");
    for (int run = 0; run < 2; ++run) {
        auto sent = link(env.sender, env.recipients, queue_file);
        ASSERT_TRUE(sent) << sent.error().message;
        EXPECT_EQ((*sent)[0].outcome, Outcome::ok);
    }
    auto files = files_under(dir->path() / "outbox");
    ASSERT_EQ(files.size(), 1u);
    EXPECT_EQ(files[0].filename().string(), env.id);
    EXPECT_TRUE(fs::equivalent(files[0], queue_file)) << "a second name, not a copy";
}

}  // namespace
}  // namespace pecd::provider
