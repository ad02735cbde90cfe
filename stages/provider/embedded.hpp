// Embedded services (no servers): a Maildir writer, an outbox directory, a built-in scanner and a
// virus store directory. They make one machine run the whole provider end to end; the real
// adapters (LMTP, SMTP, clamd; stages/transport) plug into the same ProviderServices.
#pragma once

#include <filesystem>
#include <string_view>

#include "stages/provider/provider_config.hpp"
#include "stages/provider/services.hpp"

namespace pecd::provider {

// Mailboxes are directories <root>/<domain>/<local part>/ (lower case) holding tmp/, new/, cur/.
// A mailbox that does not exist is a permanent 5.1.1; a domain we do not manage is 5.1.2.
// Each delivery is a new file (write in tmp/, fdatasync, rename into new/, fsync new/) named
// "<key>.pecd": a delivery run again after a crash finds its message in new/ and adds nothing,
// and replaces a temporary file its dead predecessor left in tmp/.
std::function<Result<RecipientStatus>(const std::string&, std::string_view, std::string_view)>
maildir_delivery(std::filesystem::path root, std::vector<std::string> managed_domains);
// Creates the mailbox directories of `address` under `root` (administration, tests).
Status create_maildir(const std::filesystem::path& root, std::string_view address);

// Each message becomes a queue file (envelope + body, spool-layout/queue_file.hpp) named by a
// fresh queue id in `dir`, written durably: the embedded stand-in for an MTA.
std::function<Result<std::vector<RecipientStatus>>(
    const std::string&, const std::vector<std::string>&, std::string_view)>
outbox_sender(std::filesystem::path dir);
// The same for a message that is a queue file already (the outbound stage's input): a hard link
// named by its queue id, no copy. Fails with EXDEV when `dir` is on another filesystem.
std::function<Result<std::vector<RecipientStatus>>(
    const std::string&, const std::vector<std::string>&, const std::filesystem::path&)>
outbox_file_sender(std::filesystem::path dir);

// "none": everything is clean. "eicar": flags the EICAR test string in the raw message or in any
// decoded MIME part (the standard way to test an antivirus path without a virus).
std::function<Result<ScanResult>(std::string_view)> builtin_scanner(std::string_view type);
// The same on a parsed message (ProviderServices::scan_parsed); empty for "none".
std::function<Result<ScanResult>(std::string_view, const pec::ParsedMessage&)>
builtin_parsed_scanner(std::string_view type);
bool contains_eicar(std::string_view message);
bool contains_eicar(std::string_view raw, const pec::ParsedMessage& parsed);

// <dir>/<key>.eml, replaced atomically when stored again under the same key.
std::function<Status(std::string_view, std::string_view)> virus_store(std::filesystem::path dir);

ProviderServices make_embedded_services(const ProviderSettings& settings);

}  // namespace pecd::provider
