// The provider's services chosen by pecd.conf: [mailbox] type = maildir | lmtp, [outbound]
// type = outbox | smtp, [antivirus] type = none | eicar | clamd. maildir, outbox, none and eicar
// are the embedded services (embedded.hpp); lmtp, smtp and clamd are the transport adapters
// (stages/transport, built by their factories from the same sections) behind the same seam.
#pragma once

#include <vector>

#include "stages/common/config.hpp"
#include "stages/provider/provider_config.hpp"
#include "stages/provider/services.hpp"

namespace pecd::provider {

// Builds the services of `settings` (read from `config`). A bad key of a real adapter is an
// ErrorKind::config error naming file:line.
Result<ProviderServices> make_services(const Config& config, const ProviderSettings& settings);

// The problems make_services would meet, each with its line (for `pecd check-config`).
std::vector<ConfigProblem> check_services(const Config& config, const ProviderSettings& settings);

}  // namespace pecd::provider
