// The 12 h / 24 h delivery timers of pec-rules.md §5.4 (DECISIONS #5): when a busta leaves, two
// scheduler tasks per certificato recipient; valid receipts cancel them; when one runs, it builds
// the avviso di mancata consegna per superamento tempi massimi (#9) for the original sender and
// queues it into the provider's own `deliver` stage.
//
//   timeout12.<h(id)>.<h(rcpt)>  due dispatch + 12 h: neither presa in carico nor consegna came
//   timeout24.<h(id)>.<h(rcpt)>  due dispatch + 24 h: no consegna; never fires before 22 h
//
// Keys come from scheduler::timer_key over the identificativo and the lower-cased recipient, so
// the receipt point can cancel them knowing only what a receipt's daticert says. Scheduling is
// idempotent: a key that is already pending (a re-run of the stage after a crash) is success.
//
// The task directory is the [scheduler] directory of pecd.conf, shared with `pecd scheduler`.
// Without a [scheduler] section there are no timers: bustas leave and receipts are delivered as
// before, and nobody is warned when a consegna never comes.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "spool-layout/queue_file.hpp"
#include "spool-layout/spool.hpp"
#include "stages/common/config.hpp"
#include "stages/common/result.hpp"
#include "stages/pec/reader.hpp"
#include "stages/provider/provider_config.hpp"
#include "stages/scheduler/scheduler.hpp"
#include "stages/scheduler/task_store.hpp"

namespace pecd::provider {

inline constexpr std::string_view kTimeout12Op = "timeout12";
inline constexpr std::string_view kTimeout24Op = "timeout24";
inline constexpr int64_t kHourUs = 3'600'000'000LL;
inline constexpr int64_t kTimeout12Us = 12 * kHourUs;
inline constexpr int64_t kTimeout24Us = 24 * kHourUs;
inline constexpr int64_t kTimeout24FloorUs = 22 * kHourUs;  // the final notice never sooner

// The two keys of one (message, recipient); the recipient is lower-cased first.
std::string timeout12_key(std::string_view identificativo, std::string_view recipient);
std::string timeout24_key(std::string_view identificativo, std::string_view recipient);

// The stage side: schedules and cancels timers in the [scheduler] task directory.
class Timeouts {
  public:
    // Null (no error) when pecd.conf has no [scheduler] section: no timers.
    static Result<std::shared_ptr<Timeouts>> from_config(const Config& config);
    Timeouts(scheduler::TaskStore store, std::string node)
        : store_(std::move(store)), node_(std::move(node)) {}

    // A busta di trasporto leaving (the outbound stage, before it is sent): the two tasks per
    // certificato recipient. `env` carries pec.id, pec.time (dispatch µs), pec.sender and
    // pec.certified; the rest of what the notice needs comes from the busta's daticert.xml.
    // Anything else than one of our bustas (no pec.certified attr) is ignored, and so is an
    // outbound retry subset ("<id>-p": its timers were scheduled by the run that wrote it).
    Status busta_leaving(const spool::Envelope& env, std::string_view busta) const;
    // A valid receipt for our users (the receipt point): a presa in carico cancels timeout12 of
    // its <ricezione> recipients; an avvenuta consegna or errore consegna both timers of its
    // <consegna>. Tasks that are gone already are fine.
    Status receipt_arrived(const pec::PecMessageInfo& info) const;

    scheduler::TaskStore& store() const { return store_; }

  private:
    mutable scheduler::TaskStore store_;
    std::string node_;
};

// The tasks busta_leaving would schedule (exposed for tests and `pecq`).
Result<std::vector<scheduler::Task>> timeout_tasks(const spool::Envelope& env,
                                                   std::string_view busta);

// The scheduler side: the handlers of timeout12 / timeout24. The notice is signed by the
// provider's key and queued into spool queue/deliver under a queue id derived from the task key,
// written with rename_noreplace: a re-run after a crash finds it there (or anywhere else in the
// spool) and does not queue a second one. `clock` gives the notice time and the 22 h check.
scheduler::Handler timeout_handler(pec::TimeoutStage stage,
                                   std::shared_ptr<ProviderHandle> provider, spool::Spool spool,
                                   scheduler::Clock clock);
// The queue id of the notice of a task (deterministic).
std::string timeout_notice_id(const scheduler::Task& task);

// For `pecd scheduler`: with a [provider] section, registers timeout12 and timeout24 on
// `sched` (provider and [spool] from `config`). Without one it does nothing.
Status register_timeout_ops(scheduler::Scheduler& sched, const Config& config);

}  // namespace pecd::provider
