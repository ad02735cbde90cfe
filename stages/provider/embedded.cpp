#include "stages/provider/embedded.hpp"

#include <fcntl.h>
#include <gmime/gmime.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "spool-layout/durable.hpp"
#include "spool-layout/queue_file.hpp"
#include "spool-layout/queue_id.hpp"
#include "stages/pec/gmime_util.hpp"
#include "stages/pec/reader.hpp"
#include "stages/runner/runner.hpp"
#include "stages/transport/delivery.hpp"

namespace pecd::provider {

namespace fs = std::filesystem;

Status create_maildir(const fs::path& root, std::string_view address) {
    auto parts = transport::parse_mailbox_address(address);
    if (!parts) return fail(ErrorKind::permanent, "not a mailbox address: " + std::string(address));
    fs::path box = root / parts->domain / parts->local;
    for (const char* sub : {"tmp", "new", "cur"}) {
        std::error_code ec;
        fs::create_directories(box / sub, ec);
        if (ec)
            return fail(ErrorKind::transient,
                        "create " + (box / sub).string() + ": " + ec.message());
    }
    return {};
}

namespace {

// A new file with `data`, closed, not yet synced (BatchPublisher::publish_durably does that).
Status write_complete(const fs::path& path, std::string_view data) {
    auto fd = durable::open_file(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (!fd) return std::unexpected(fd.error());
    if (auto st = durable::write_all(fd->get(), data); !st) {
        (void)durable::unlink_file(path);
        return st;
    }
    return {};
}

// What the outbox says of each recipient once the file named `id` is in it.
std::vector<RecipientStatus> queued_as(const std::vector<std::string>& rcpts,
                                       const std::string& id) {
    std::vector<RecipientStatus> out;
    for (const auto& r : rcpts) out.push_back({r, Outcome::ok, "2.0.0", "queued as " + id});
    return out;
}

// A filesystem error while delivering to one mailbox: transient, with the RFC 3463 code that
// says why (a full disk and a quota are what an administrator looks for).
RecipientStatus io_failure(const std::string& recipient, const Error& e) {
    const char* code = e.sys_errno == ENOSPC ? "4.3.1" : e.sys_errno == EDQUOT ? "4.2.2" : "4.3.0";
    return {recipient, Outcome::transient, code, e.message};
}

}  // namespace

std::function<Result<RecipientStatus>(const std::string&, std::string_view, std::string_view)>
maildir_delivery(fs::path root, std::vector<std::string> managed_domains) {
    return [root = std::move(root), domains = std::move(managed_domains)](
               const std::string& recipient, std::string_view message,
               std::string_view key) -> Result<RecipientStatus> {
        auto address = transport::parse_mailbox_address(recipient);
        if (!address)
            return RecipientStatus{recipient, Outcome::permanent, "5.1.3", "indirizzo non valido"};
        if (std::find(domains.begin(), domains.end(), address->domain) == domains.end())
            return RecipientStatus{recipient, Outcome::permanent, "5.1.2", "dominio non gestito"};
        fs::path box = root / address->domain / address->local;
        const RecipientStatus delivered{recipient, Outcome::ok, "2.0.0", "consegnato"};
        // Maildir unique name: the queue id (time and randomness), the same when this delivery
        // runs again. A key that is not a queue id gets a fresh one (no re-run to recognise).
        const std::string name =
            (spool::is_valid_queue_id(key) ? std::string(key)
                                           : spool::new_queue_id(spool::now_us())) +
            ".pecd";
        const fs::path tmp = box / "tmp" / name, dest = box / "new" / name;
        std::error_code ec;
        if (!fs::is_directory(box / "new", ec)) {
            // Looked at only now, so that a delivery stats one directory. A missing root is a
            // broken installation or an unmounted volume, not an unknown user: nobody gets a
            // non-delivery notice for it.
            if (!fs::is_directory(root, ec))
                return fail(ErrorKind::transient, "maildir root " + root.string() + " missing");
            return RecipientStatus{recipient, Outcome::permanent, "5.1.1", "indirizzo non valido"};
        }
        if (fs::exists(dest, ec)) {
            // Delivered by a run that died before its batch committed: durable now, once.
            Status synced = durable::sync_data_at(dest);
            if (synced) synced = durable::sync_dir(box / "new");
            if (!synced) return io_failure(recipient, synced.error());
            return delivered;
        }
        auto written = write_complete(tmp, message);
        if (!written && written.error().sys_errno == EEXIST) {
            (void)durable::unlink_file(tmp);  // what a dead run left half-written
            written = write_complete(tmp, message);
        }
        if (!written) return io_failure(recipient, written.error());
        if (auto published = runner::BatchPublisher::publish_durably(tmp, dest); !published)
            return io_failure(recipient, published.error());
        return delivered;
    };
}

std::function<Result<std::vector<RecipientStatus>>(
    const std::string&, const std::vector<std::string>&, std::string_view)>
outbox_sender(fs::path dir) {
    return
        [dir = std::move(dir)](const std::string& from, const std::vector<std::string>& rcpts,
                               std::string_view message) -> Result<std::vector<RecipientStatus>> {
            if (auto st = durable::make_dir(dir); !st) return context(st.error(), "outbox");
            spool::Envelope env;
            env.arrival_us = spool::now_us();
            env.id = spool::new_queue_id(env.arrival_us);
            env.sender = from;
            env.recipients = rcpts;
            std::string file = spool::encode_header(env, message.size());
            file += message;
            // Written as .<id>.tmp (hidden, not a queue id: the MTA's scan skips it), then
            // published as <id>.
            const fs::path tmp = dir / ("." + env.id + ".tmp");
            if (auto st = write_complete(tmp, file); !st) return context(st.error(), "outbox");
            if (auto st = runner::BatchPublisher::publish_durably(tmp, dir / env.id); !st)
                return context(st.error(), "outbox");
            return queued_as(rcpts, env.id);
        };
}

std::function<Result<std::vector<RecipientStatus>>(
    const std::string&, const std::vector<std::string>&, const fs::path&)>
outbox_file_sender(fs::path dir) {
    return
        [dir = std::move(dir)](const std::string&, const std::vector<std::string>& rcpts,
                               const fs::path& queue_file) -> Result<std::vector<RecipientStatus>> {
            // The file going out is a queue file already, complete and durable: the outbox gets a
            // second name for it under its own id, the MTA's unlink removes it.
            const std::string id = queue_file.filename().string();
            auto linked = runner::BatchPublisher::link_durably(queue_file, dir / id);
            if (!linked && linked.error().kind == ErrorKind::not_found) {
                if (auto st = durable::make_dir(dir); !st) return context(st.error(), "outbox");
                linked = runner::BatchPublisher::link_durably(queue_file, dir / id);
            }
            if (!linked) return context(linked.error(), "outbox");
            return queued_as(rcpts, id);
        };
}

namespace {
constexpr std::string_view kEicar = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!";
}  // namespace

namespace {
// Attachments travel encoded: the EICAR string in any decoded leaf.
bool eicar_in_decoded_parts(const pec::ParsedMessage& parsed) {
    bool found = false;
    g_mime_message_foreach(
        parsed.gmime(),
        [](GMimeObject*, GMimeObject* part, gpointer data) {
            bool& hit = *static_cast<bool*>(data);
            if (hit || !GMIME_IS_PART(part)) return;
            GMimeDataWrapper* content = g_mime_part_get_content(GMIME_PART(part));
            if (content == nullptr) return;
            pec::GPtr<GMimeStream> out(g_mime_stream_mem_new());
            if (g_mime_data_wrapper_write_to_stream(content, out.get()) < 0) return;
            GByteArray* bytes = g_mime_stream_mem_get_byte_array(GMIME_STREAM_MEM(out.get()));
            std::string_view decoded(reinterpret_cast<const char*>(bytes->data), bytes->len);
            hit = decoded.find(kEicar) != std::string_view::npos;
        },
        &found);
    return found;
}
}  // namespace

bool contains_eicar(std::string_view raw, const pec::ParsedMessage& parsed) {
    return raw.find(kEicar) != std::string_view::npos || eicar_in_decoded_parts(parsed);
}

bool contains_eicar(std::string_view message) {
    if (message.find(kEicar) != std::string_view::npos) return true;
    auto parsed = pec::ParsedMessage::parse(message);
    return parsed && eicar_in_decoded_parts(*parsed);
}

std::function<Result<ScanResult>(std::string_view)> builtin_scanner(std::string_view type) {
    if (type == "eicar")
        return [](std::string_view message) -> Result<ScanResult> {
            if (contains_eicar(message)) return ScanResult{true, "Eicar-Test-Signature"};
            return ScanResult{};
        };
    return [](std::string_view) -> Result<ScanResult> { return ScanResult{}; };
}

std::function<Result<ScanResult>(std::string_view, const pec::ParsedMessage&)>
builtin_parsed_scanner(std::string_view type) {
    if (type != "eicar") return nullptr;
    return [](std::string_view raw, const pec::ParsedMessage& parsed) -> Result<ScanResult> {
        if (contains_eicar(raw, parsed)) return ScanResult{true, "Eicar-Test-Signature"};
        return ScanResult{};
    };
}

std::function<Status(std::string_view, std::string_view)> virus_store(fs::path dir) {
    return [dir = std::move(dir)](std::string_view key, std::string_view message) -> Status {
        if (!spool::is_valid_queue_id(key))
            return fail(ErrorKind::permanent, "virus store: bad key " + std::string(key));
        std::error_code ec;
        fs::create_directories(dir, ec);
        if (ec)
            return fail(ErrorKind::transient, "virus store " + dir.string() + ": " + ec.message());
        return durable::write_file_atomic(dir / (std::string(key) + ".eml"), message);
    };
}

ProviderServices make_embedded_services(const ProviderSettings& settings) {
    ProviderServices s;
    s.scan = builtin_scanner(settings.antivirus);
    s.scan_parsed = builtin_parsed_scanner(settings.antivirus);
    s.deliver_to_mailbox = maildir_delivery(settings.maildir_root, settings.domains);
    s.send = outbox_sender(settings.outbox);
    s.send_queue_file = outbox_file_sender(settings.outbox);
    s.keep_infected = virus_store(settings.virus_store);
    return s;
}

}  // namespace pecd::provider
