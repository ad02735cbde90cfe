#include "stages/common/result.hpp"

namespace pecd {

const char* to_string(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::transient:
            return "transient";
        case ErrorKind::permanent:
            return "permanent";
        case ErrorKind::corrupt:
            return "corrupt";
        case ErrorKind::config:
            return "config";
        case ErrorKind::not_found:
            return "not-found";
        case ErrorKind::conflict:
            return "conflict";
    }
    return "unknown";
}

std::string Error::describe() const {
    return std::string(to_string(kind)) + ": " + message;
}

}  // namespace pecd
