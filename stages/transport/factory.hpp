// Builds the adapters to real servers from pecd.conf (keys in docs/transports.md). The embedded
// defaults (maildir, outbox, eicar) are the provider's own services (stages/provider/embedded.hpp):
// asked for one of those, or for an unknown selector, or with a malformed value, a factory gives
// a config error naming file:line.
#pragma once

#include <memory>
#include <string_view>

#include "stages/common/config.hpp"
#include "stages/common/result.hpp"
#include "stages/transport/antivirus.hpp"
#include "stages/transport/delivery.hpp"
#include "stages/transport/outbound.hpp"

namespace pecd::transport {

// type = lmtp (the [mailbox] section)
Result<std::unique_ptr<MailboxDelivery>> make_delivery(const Config& cfg, std::string_view section);
// type = smtp (the [outbound] section)
Result<std::unique_ptr<OutboundTransport>> make_outbound(const Config& cfg,
                                                         std::string_view section);
// type = none | clamd (the [antivirus] section; "eicar" is the provider's built-in scanner)
Result<std::unique_ptr<Antivirus>> make_antivirus(const Config& cfg, std::string_view section);

}  // namespace pecd::transport
