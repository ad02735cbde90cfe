// The provider's seam to the outside world: antivirus, mailbox delivery, outbound sending and
// the virus store. Stage functions call nothing else with side effects, so tests and the
// embedded defaults (embedded.hpp) plug in here, and so do the real adapters (stages/transport).
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "stages/common/result.hpp"

namespace pecd::pec {
class ParsedMessage;
}

namespace pecd::provider {

struct ScanResult {
    bool infected = false;
    std::string virus;  // what the scanner found, e.g. "Eicar-Test-Signature"
};

enum class Outcome { ok, transient, permanent };

// One recipient's fate at a mailbox or at the next hop. `code` is the RFC 3463 enhanced status
// code when known ("5.1.1" unknown mailbox, "5.1.2" unknown domain): it picks the daticert
// errore of a non-delivery notice (DECISIONS #9).
struct RecipientStatus {
    std::string recipient;
    Outcome outcome = Outcome::ok;
    std::string code;
    std::string text;
};

struct ProviderServices {
    // An Error (any kind) means the scanner could not say: the input is retried later.
    std::function<Result<ScanResult>(std::string_view message)> scan;
    // Optional, beside `scan`: the same verdict on a message the stage has parsed already
    // (`raw` is its bytes), so that a scanner that reads the MIME parts does not parse it again.
    // The built-in EICAR scanner has one; clamd takes the bytes and has none.
    std::function<Result<ScanResult>(std::string_view raw, const pec::ParsedMessage& parsed)>
        scan_parsed;
    // Stores `message` in the mailbox of `recipient`. `key` names this delivery and is the same
    // when it is run again (the queue id): an adapter that can, stores one copy per key (a re-run
    // after a crash between the delivery and its batch's commit adds nothing). An Error is an
    // operational fault and is treated as transient for that recipient.
    std::function<Result<RecipientStatus>(const std::string& recipient, std::string_view message,
                                          std::string_view key)>
        deliver_to_mailbox;
    // Hands `message` to the next hop with MAIL FROM `from` ("" = null sender): one status per
    // recipient, in order. An Error means nothing was sent (transient unless its kind says
    // otherwise).
    std::function<Result<std::vector<RecipientStatus>>(const std::string& from,
                                                       const std::vector<std::string>& recipients,
                                                       std::string_view message)>
        send;
    // Optional, beside `send`: hands over the queue file at `path` itself, whose envelope says
    // sender and recipients (the embedded outbox links it into place: no copy). An error with
    // EXDEV means "not here": `send` is used instead.
    std::function<Result<std::vector<RecipientStatus>>(const std::string& from,
                                                       const std::vector<std::string>& recipients,
                                                       const std::filesystem::path& queue_file)>
        send_queue_file;
    // Keeps an infected message (pec-rules.md §1: 30 months) under `key`, a queue id: storing
    // the same key twice (a re-run after a crash) replaces the first copy.
    std::function<Status(std::string_view key, std::string_view message)> keep_infected;
};

}  // namespace pecd::provider
