// Which function each stage runs. Adding real stage logic is replacing one entry here.
#pragma once

#include <string_view>

#include "stages/common/config.hpp"
#include "stages/runner/runner.hpp"

namespace pecd {

Result<runner::StageFunction> make_stage_function(std::string_view stage, const Config& config);

}  // namespace pecd
