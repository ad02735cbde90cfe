#include "stages/registry.hpp"

#include "spool-layout/spool.hpp"

namespace pecd {

Result<runner::StageFunction> make_stage_function(std::string_view stage, const Config&) {
    // Until the PEC logic lands each stage passes the message to the next one unchanged:
    // classify -> wrap -> verify -> deliver -> receipt -> outbound -> outbox.
    const auto& stages = spool::kStages;
    for (size_t i = 0; i < stages.size(); ++i) {
        if (stages[i] != stage) continue;
        std::string next = i + 1 < stages.size() ? std::string(stages[i + 1]) : std::string(spool::kOutbox);
        return runner::pass_through(next);
    }
    return fail(ErrorKind::config, "unknown stage '" + std::string(stage) + "'");
}

}  // namespace pecd
