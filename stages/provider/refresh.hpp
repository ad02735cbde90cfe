// Periodic upkeep the scheduler runs as command tasks (docs/scheduler.md):
//   pecd refresh-index   reload the providers index from its source ([index]); for LDAP this
//                        refreshes the local cache file
//   pecd refresh-crl     download every [trust] crl_urls[i] into crl_files[i]
// then `pecd reload` semantics: the running stage daemons of this spool get SIGHUP and rebuild
// their provider (index, trust anchors, CRLs) without dropping work.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string>
#include <vector>

#include "spool-layout/spool.hpp"
#include "stages/common/config.hpp"

namespace pecd::provider {

// A one-line summary on success ("2 providers from ldap://..."). LDAP down with no cache:
// transient.
Result<std::string> refresh_index(const Config& config);

// Each CRL is parsed (PEM or DER), its signature checked against the trust anchors, and written
// atomically (tmp, fsync, rename) only when it is not older than the file it replaces. A bad or
// unreachable CRL leaves the old file in place; the error names the URL. Returns a summary.
Result<std::string> refresh_crls(const Config& config);

// This provider's own IGPEC record (pec-rules.md §7), which it publishes at its LDIFLocationURL
// for the central directory to collect: providerName and managedDomains from [provider], the
// signing certificate of [keys] (DER and SHA-1), mailReceipt. Signed with the provider key (PEM
// or PKCS#11) as a DER `.p7m` unless `sign` is false (plain LDIF, to read it over first).
struct IndexRecordOptions {
    std::string ldif_url;                           // LDIFLocationURL; empty: left out
    std::string mail_receipt;                       // empty: posta-certificata@<mail_domain>
    std::vector<std::filesystem::path> next_certs;  // renewal: certificates listed beside (PEM)
    bool sign = true;
};
Result<std::string> index_record(const Config& config, const IndexRecordOptions& options);

// SIGHUP to every process holding a stage lock of this spool; returns how many were signalled.
Result<size_t> signal_reload(const spool::Spool& spool);

}  // namespace pecd::provider
