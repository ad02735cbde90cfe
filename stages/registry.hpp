// Which function each stage runs. With a [provider] section the stages run the PEC provider
// (stages/provider); without one they pass messages along unchanged, which is the spool
// machinery alone (the crash harness and the spool demo run it that way).
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "stages/common/config.hpp"
#include "stages/legallog/legal_log.hpp"
#include "stages/provider/provider_config.hpp"
#include "stages/runner/runner.hpp"

namespace pecd {

// What the stage functions of one process share: the provider, swapped on SIGHUP.
struct StageContext {
    std::shared_ptr<provider::ProviderHandle> provider;  // null: pass-through stages
};

Result<StageContext> make_stage_context(const Config& config);
Result<runner::StageFunction> make_stage_function(std::string_view stage,
                                                  const StageContext& context);
// Rebuilds the provider from `config` and swaps it in; the running one stays on failure.
Status reload_stage_context(const StageContext& context, const Config& config);
// The legal-log writer of one stage process, from [legallog]; null when pecd.conf has no
// [legallog] section (no legal log is written).
bool legal_log_configured(const Config& config);
Result<std::unique_ptr<legallog::Writer>> open_legal_log(const Config& config,
                                                         std::string_view stage);
// Every problem of the stage configuration, with its line (pecd check-config).
std::vector<ConfigProblem> check_stage_config(const Config& config);

}  // namespace pecd
