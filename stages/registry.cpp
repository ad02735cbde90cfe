#include "stages/registry.hpp"

#include <algorithm>

#include "spool-layout/spool.hpp"
#include "stages/provider/stages.hpp"

namespace pecd {

Result<StageContext> make_stage_context(const Config& config) {
    StageContext context;
    if (!provider::provider_configured(config)) return context;
    auto p = provider::Provider::create(config);
    if (!p) return std::unexpected(p.error());
    context.provider = std::make_shared<provider::ProviderHandle>(std::move(*p));
    return context;
}

Result<runner::StageFunction> make_stage_function(std::string_view stage,
                                                  const StageContext& context) {
    if (context.provider) return provider::make_stage(stage, context.provider);
    // No provider configured: classify -> wrap -> verify -> deliver -> receipt -> outbound ->
    // outbox.
    const auto& stages = spool::kStages;
    for (size_t i = 0; i < stages.size(); ++i) {
        if (stages[i] != stage) continue;
        std::string next =
            i + 1 < stages.size() ? std::string(stages[i + 1]) : std::string(spool::kOutbox);
        return runner::pass_through(next);
    }
    return fail(ErrorKind::config, "unknown stage '" + std::string(stage) + "'");
}

Status reload_stage_context(const StageContext& context, const Config& config) {
    if (!context.provider) {
        if (provider::provider_configured(config))
            return fail(ErrorKind::config,
                        "a [provider] section appeared: restart pecd to start the PEC stages");
        return {};
    }
    if (!provider::provider_configured(config))
        return fail(ErrorKind::config,
                    "the [provider] section is gone: keeping the running provider");
    return context.provider->reload(config);
}

bool legal_log_configured(const Config& config) {
    auto sections = config.sections();
    return std::find(sections.begin(), sections.end(), "legallog") != sections.end();
}

Result<std::unique_ptr<legallog::Writer>> open_legal_log(const Config& config,
                                                         std::string_view stage) {
    if (!legal_log_configured(config)) return std::unique_ptr<legallog::Writer>();
    auto settings = legallog::settings(config);
    if (!settings) return std::unexpected(settings.error());
    return legallog::Writer::open({.directory = settings->directory,
                                   .node = settings->node,
                                   .stage = std::string(stage),
                                   .max_file_size = settings->max_file_size,
                                   .clock = {}});
}

std::vector<ConfigProblem> check_stage_config(const Config& config) {
    if (!provider::provider_configured(config)) return {};
    return provider::check(config);
}

}  // namespace pecd
