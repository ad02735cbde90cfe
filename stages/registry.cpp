#include "stages/registry.hpp"

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

std::vector<ConfigProblem> check_stage_config(const Config& config) {
    if (!provider::provider_configured(config)) return {};
    return provider::check(config);
}

}  // namespace pecd
