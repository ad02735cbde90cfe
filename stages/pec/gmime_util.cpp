#include "stages/pec/gmime_util.hpp"

#include <gmime/gmime.h>

#include <mutex>

namespace pecd::pec {

void ensure_gmime() {
    static std::once_flag once;
    // Never paired with g_mime_shutdown(): the library stays usable until the process exits.
    std::call_once(once, [] { g_mime_init(); });
}

}  // namespace pecd::pec
