// What `pecq inspect` reports about any message: its PEC type and certification data (reader),
// and the signature verdict (SmimeVerifier), as one value that prints as text or JSON.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "stages/common/result.hpp"
#include "stages/pec/index.hpp"
#include "stages/pec/reader.hpp"
#include "stages/pec/smime.hpp"

namespace pecd::pec {

struct InspectOptions {
    TrustConfig trust;                   // no ca_files/ca_dirs: cryptographic check only
    std::optional<IndexSnapshot> index;  // providers index to identify the signer
    bool at_signing_time = false;        // validity/CRL at the CMS signingTime (archives)
};

struct InspectReport {
    PecMessageInfo message;
    std::optional<VerifyReport> signature;  // absent when the message is not signed
    std::string signature_error;            // the verifier could not run at all
    bool chain_checked = false;
    // A valid PEC message: a PEC type, a readable daticert where the type carries one, a
    // signature that verifies (with the chain when trust anchors were given).
    bool valid = false;
    std::vector<std::string> verdict;  // why not valid, one line each
};

Result<InspectReport> inspect_message(std::string_view raw, const InspectOptions& options);
std::string format_text(const InspectReport& report);
std::string format_json(const InspectReport& report);

}  // namespace pecd::pec
