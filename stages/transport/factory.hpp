// Builds the adapters from pecd.conf (keys in docs/transports.md). Each factory returns the
// embedded default when its selector key is absent, and a config error naming file:line for an
// unknown selector or a malformed value.
#pragma once

#include <memory>
#include <string_view>

#include "stages/common/config.hpp"
#include "stages/common/result.hpp"
#include "stages/transport/antivirus.hpp"
#include "stages/transport/delivery.hpp"
#include "stages/transport/outbound.hpp"

namespace pecd::transport {

// type = maildir | lmtp (the [mailbox] section)
Result<std::unique_ptr<MailboxDelivery>> make_delivery(const Config& cfg, std::string_view section);
// type = outbox | smtp (the [outbound] section)
Result<std::unique_ptr<OutboundTransport>> make_outbound(const Config& cfg,
                                                         std::string_view section);
// type = none | clamd (the [antivirus] section; "eicar" is the provider's built-in scanner)
Result<std::unique_ptr<Antivirus>> make_antivirus(const Config& cfg, std::string_view section);

}  // namespace pecd::transport
