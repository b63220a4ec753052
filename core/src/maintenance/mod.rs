//! What the scheduled (cron) run does, over the ledger and engine traits: finish
//! purchases whose steps were left waiting, then prune old events.
//!
//! Stripe's redeliveries normally finish a purchase; the re-drive covers what they
//! cannot: a Worker that died mid-call (a running step with an expired lease), a step
//! released after Stripe's last retry, or a purchase replayed by hand.

use crate::fulfilment::{self, plan, Deps, ResumeError, RunOutcome};
use crate::http::webhook;
use crate::ingress::{self, Refusal, Seen, Status, Verdict};
use crate::log::Line;
use crate::ports::ledger::{Ledger, LedgerError};
use crate::ports::FulfilMessage;
use crate::ports::{Clock, Upstream};
use crate::ports::{Sink, Throttle};
use crate::stripe::api::{EventWindow, StripeApi};
use crate::upstream::Deadline;

/// Purchases re-driven per run, so a run stays within the scheduled handler's limits
/// (each takes at most one delivery budget, 9 s).
pub const REDRIVE_PER_RUN: u32 = 10;
/// A pending step is left alone this long after its last change, so the re-drive does
/// not race a delivery that Stripe is about to retry.
pub const IDLE_BEFORE_REDRIVE_MS: u64 = 60_000;
/// In queue mode a pending step may just be sitting out its backoff (at most 15 min),
/// so the re-drive waits longer before it sends another message.
pub const QUEUE_IDLE_BEFORE_REDRIVE_MS: u64 = 20 * 60_000;
/// Events deleted per run; the next run continues.
pub const PRUNE_PER_RUN: u32 = 1_000;
const DAY_MS: u64 = 86_400_000;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub redriven: u32,
    pub completed: u32,
    pub still_waiting: u32,
    /// Queue mode: purchases handed back to the queue.
    pub enqueued: u32,
    /// Events listed from the Stripe API that the ledger had never seen, now ingested.
    pub reconciled: u32,
    /// How far reconciliation's cursor is behind the run's start when the run left
    /// the rest to the next one (seconds); 0 when it caught up.
    pub reconcile_behind_secs: u64,
    pub pruned: u32,
    /// The tasks of this run that failed (`reconcile`, `redrive`, `retention`,
    /// `code_windows`); each also logged a `scheduled task failed` line.
    pub failed: Vec<&'static str>,
}

/// The cursor of reconciliation: Stripe `created` (unix seconds) listed up to.
pub const RECONCILE_CURSOR: &str = "reconciled_until";
/// The first run looks back over Stripe's 3-day retry window.
pub const RECONCILE_FIRST_LOOKBACK_SECS: i64 = 3 * 86_400;
/// Each run lists again this far before the cursor: an event created just before the
/// last listing may only become listable a little later.
pub const RECONCILE_OVERLAP_SECS: i64 = 600;
/// Pages of 100 events one window may take: a window that needs more is shrunk
/// before anything of it is ingested (one run lists several windows).
pub const RECONCILE_WINDOW_PAGES: usize = 5;
/// The events a window is sized for, from the density of the last one (half of what
/// a window may hold, so a denser stretch rarely needs a shrink).
pub const RECONCILE_TARGET_EVENTS: usize = 250;
/// The length of a run's first window; later ones follow the density.
pub const RECONCILE_FIRST_WINDOW_SECS: i64 = 3_600;
/// What reconciliation lists: every event type this Worker acts on, the checkout
/// types and the money-back ones, so a lost refund webhook is taken back too.
pub const RECONCILED_TYPES: [&str; 7] = [
    plan::COMPLETED,
    plan::ASYNC_SUCCEEDED,
    plan::ASYNC_FAILED,
    plan::CHARGE_REFUNDED,
    plan::DISPUTE_CREATED,
    plan::DISPUTE_CLOSED,
    plan::SUBSCRIPTION_DELETED,
];

/// Runs every task of a scheduled run: reconciliation, re-drive, retention. Each runs
/// whatever became of the others (a failed reconciliation must not stop the prune, nor
/// the reverse); a task that fails logs why and is named in [`Summary::failed`].
pub async fn run<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
) -> Summary {
    let mut summary = Summary::default();
    match reconcile(deps).await {
        Ok(done) => {
            summary.reconciled = done.ingested;
            summary.reconcile_behind_secs = done.behind_secs;
        }
        Err(e) => task_failed(deps.log, &mut summary, "reconcile", &e),
    }
    if let Err(e) = redrive(deps, &mut summary).await {
        task_failed(deps.log, &mut summary, "redrive", &e);
    }
    let cutoff = deps
        .clock
        .now_ms()
        .saturating_sub(deps.config.retention_days * DAY_MS);
    match deps.ledger.prune_events(cutoff, PRUNE_PER_RUN).await {
        Ok(pruned) => summary.pruned = pruned,
        Err(e) => task_failed(deps.log, &mut summary, "retention", &e),
    }
    summary
}

fn task_failed<S: Sink>(log: &S, summary: &mut Summary, task: &'static str, e: &LedgerError) {
    Line::error("scheduled task failed")
        .label("task", task)
        .text("detail", &e.detail)
        .emit(log);
    summary.failed.push(task);
}

/// Finishes purchases whose steps were left waiting, at most [`REDRIVE_PER_RUN`].
async fn redrive<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    summary: &mut Summary,
) -> Result<(), LedgerError> {
    let now = deps.clock.now_ms();
    let idle = if deps.queue.is_some() {
        QUEUE_IDLE_BEFORE_REDRIVE_MS
    } else {
        IDLE_BEFORE_REDRIVE_MS
    };
    let stalled = deps
        .ledger
        .stalled_sessions(now, now.saturating_sub(idle), REDRIVE_PER_RUN)
        .await?;
    for session_id in stalled {
        summary.redriven += 1;
        if let Some(queue) = deps.queue {
            let event_id = deps
                .ledger
                .steps_of(&session_id)
                .await?
                .first()
                .map(|s| s.event_id.clone());
            let message = FulfilMessage {
                session_id: session_id.clone(),
                event_id: event_id.unwrap_or_default(),
            };
            match queue.enqueue(&message).await {
                Ok(()) => summary.enqueued += 1,
                Err(detail) => Line::warn("re-drive could not resume a purchase")
                    .id("session_id", &session_id)
                    .text("reason", &detail)
                    .emit(deps.log),
            }
            continue;
        }
        match fulfilment::resume(deps, &session_id, deps.clock.now_ms()).await {
            Ok(report) if matches!(report.outcome, RunOutcome::Complete | RunOutcome::Failed) => {
                summary.completed += 1
            }
            Ok(_) => summary.still_waiting += 1,
            Err(ResumeError::Ledger(e)) => return Err(e),
            Err(ResumeError::Session(e)) => {
                summary.still_waiting += 1;
                unresumable(deps, &session_id, &e.message()).await?;
            }
            Err(_) => {
                summary.still_waiting += 1;
                Line::warn("re-drive could not resume a purchase")
                    .id("session_id", &session_id)
                    .text("reason", "no steps")
                    .emit(deps.log);
            }
        }
    }
    Ok(())
}

/// Marks the `last_error` of a try the re-drive made and could not even start.
const REDRIVE_FAILURE: &str = "re-drive could not fetch the session: ";

/// A purchase the re-drive cannot resume (Stripe no longer returns its session, or
/// refuses the key): the try is counted on its waiting steps, which moves it behind
/// every other stalled purchase (they are taken oldest change first), so ten of them
/// can never hold all the re-drive's slots; ops get one alert, on the first such try,
/// and a warning on every later one.
async fn unresumable<L: Ledger, U, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    reason: &str,
) -> Result<(), LedgerError> {
    let seen_before = deps.ledger.steps_of(session_id).await?.iter().any(|s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with(REDRIVE_FAILURE))
    });
    deps.ledger
        .note_failure(
            session_id,
            &format!("{REDRIVE_FAILURE}{reason}"),
            deps.clock.now_ms(),
        )
        .await?;
    let line = if seen_before {
        Line::warn("re-drive could not resume a purchase")
    } else {
        Line::alert("re-drive cannot resume a purchase")
    };
    line.id("session_id", session_id)
        .text("reason", reason)
        .emit(deps.log);
    Ok(())
}

/// What one run's reconciliation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Reconciled {
    ingested: u32,
    /// How far the cursor is behind the moment the run started, in seconds, when the
    /// budget or a failed listing stopped it before the present; 0 when it caught up.
    behind_secs: u64,
}

/// How the listing of one window ended.
enum Listing {
    /// Every page, down to the one with `has_more: false`, newest first.
    Complete(Vec<Box<serde_json::value::RawValue>>),
    /// More than [`RECONCILE_WINDOW_PAGES`] pages: the window must shrink. Those pages
    /// held the events created from `oldest` (the last listed) to `newest` (the first).
    TooMany { newest: i64, oldest: i64 },
    /// The run's budget was spent before the next page could be asked for.
    OutOfTime,
    /// Stripe could not list (the reason, for the log).
    Failed(String),
}

/// Ingests the events Stripe created since the cursor that the ledger has never seen,
/// so an outage of this endpoint loses no purchase and no refund. Needs
/// `STRIPE_API_KEY`; without it, does nothing.
///
/// It walks `created` windows oldest first, from the cursor (less an overlap) to the
/// moment the run started: each window is listed completely (newest first, page after
/// page, as Stripe lists), then its events are ingested oldest first, and only then
/// does the cursor move to the window's end. So a run stopped anywhere (its budget
/// spent, Stripe failing, the isolate killed) keeps every window it finished and the
/// next run starts from the first one it did not; events it ingested from an
/// unfinished window are skipped when that window is listed again. A window whose
/// listing needs more than [`RECONCILE_WINDOW_PAGES`] pages is shrunk (from what those
/// pages told of the density) before anything of it is ingested, and the next window's
/// length follows the density of the last one, so every run moves the cursor however
/// large the backlog. No new listing or ingestion starts once
/// `RECONCILE_BUDGET_MS` is spent.
///
/// Ingestion is the webhook's: in queue mode a purchase is recorded and sent to the
/// queue; inline, it is fulfilled by this run.
async fn reconcile<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
) -> Result<Reconciled, LedgerError> {
    let mut done = Reconciled::default();
    let Some(key) = deps.config.stripe_api_key.as_ref() else {
        return Ok(done);
    };
    let stripe = StripeApi {
        base: &deps.config.stripe_api_base,
        key,
        version: &deps.config.stripe_api_version,
    };
    let started = deps.clock.now_ms();
    let budget_end = started.saturating_add(deps.config.reconcile_budget_ms);
    let present = (started / 1000) as i64;
    let mut from = match deps.ledger.cursor(RECONCILE_CURSOR).await? {
        Some(until) => until - RECONCILE_OVERLAP_SECS,
        None => present - RECONCILE_FIRST_LOOKBACK_SECS,
    };
    let mut span = RECONCILE_FIRST_WINDOW_SECS;
    // Where a window had too many pages: the `created` its listing stopped at, and a
    // length that fits there. The stretch before it is walked first (windows grow over
    // it as usual but end there), then a window of that length starts there, so the
    // dense stretch is not listed in vain again.
    let mut dense: Option<(i64, i64)> = None;
    'windows: while from < present {
        let mut until = from.saturating_add(span).min(present);
        match dense {
            Some((at, _)) if from < at => until = until.min(at),
            Some((at, fit)) if from == at => until = until.min(at.saturating_add(fit)),
            _ => {}
        }
        let window = EventWindow {
            from,
            until,
            types: &RECONCILED_TYPES,
        };
        let events = match list_window(deps, &stripe, window, budget_end).await {
            Listing::Complete(events) => events,
            Listing::TooMany { newest, oldest } => {
                span = shrunk(window, newest, oldest);
                dense = Some((oldest, span));
                continue;
            }
            Listing::OutOfTime => break,
            Listing::Failed(reason) => {
                Line::warn("reconciliation could not list events")
                    .text("reason", &reason)
                    .emit(deps.log);
                break;
            }
        };
        for raw in events.iter().rev() {
            if deps.clock.now_ms() >= budget_end {
                break 'windows;
            }
            let now = deps.clock.now_ms();
            let decision = ingress::ingest(deps, raw.get().as_bytes(), now, Seen::Skip).await;
            match &decision.verdict {
                Verdict::Recorded(Status::Duplicate) => continue,
                Verdict::Refused(Refusal::Unavailable(e)) => return Err(e.clone()),
                // Nothing was recorded: the cursor stays before this window, and a run
                // after the setting is fixed lists it again.
                Verdict::Refused(Refusal::LivemodeInvalid) => {
                    webhook::decision_line(&decision, 0).emit(deps.log);
                    break 'windows;
                }
                _ => {}
            }
            done.ingested += 1;
            webhook::decision_line(&decision, 0).emit(deps.log);
            Line::warn("reconciled an event never delivered")
                .opt_id("event_id", decision.event_id.as_deref())
                .opt_id("session_id", decision.object_id.as_deref())
                .emit(deps.log);
        }
        deps.ledger
            .advance_cursor(RECONCILE_CURSOR, until, deps.clock.now_ms())
            .await?;
        span = grown(window, events.len());
        from = until;
    }
    if from < present {
        done.behind_secs = (present - from) as u64;
        Line::warn("reconciliation continues next run")
            .num("behind_secs", done.behind_secs)
            .num("ingested", u64::from(done.ingested))
            .emit(deps.log);
    }
    Ok(done)
}

/// Lists one window completely, page after page (each call within the per-call timeout,
/// none started once the budget is spent), or says why it could not.
async fn list_window<L, U: Upstream, C: Clock, S>(
    deps: &Deps<'_, L, U, C, S>,
    stripe: &StripeApi<'_>,
    window: EventWindow<'_>,
    budget_end: u64,
) -> Listing {
    // A window of one second cannot be split: it is listed whatever its length.
    let page_limit = if window.until - window.from <= 1 {
        usize::MAX
    } else {
        RECONCILE_WINDOW_PAGES
    };
    let mut events = Vec::new();
    let mut newest: Option<i64> = None;
    let mut after: Option<Listed> = None;
    for _ in 0..page_limit {
        let now = deps.clock.now_ms();
        if now >= budget_end {
            return Listing::OutOfTime;
        }
        let deadline = Deadline::new(now, deps.config.upstream_timeout_ms);
        let starting_after = after.as_ref().map(|last| last.id.as_str());
        let page = match stripe
            .events_page(deps.upstream, deps.clock, deadline, window, starting_after)
            .await
        {
            Ok(page) => page,
            Err(e) => return Listing::Failed(e.message()),
        };
        if newest.is_none() {
            newest = page
                .data
                .first()
                .and_then(|raw| listed(raw.get()))
                .map(|e| e.created);
        }
        let last = page.data.last().map(|raw| listed(raw.get()));
        events.extend(page.data);
        if !page.has_more {
            return Listing::Complete(events);
        }
        match last {
            Some(Some(last)) => after = Some(last),
            // Without the last event's id the next page cannot be asked for, and the
            // window must not be taken as complete.
            _ => {
                return Listing::Failed(
                    "Stripe API sent a page with has_more and no event id".into(),
                )
            }
        }
    }
    match after {
        Some(last) => Listing::TooMany {
            newest: newest.unwrap_or(window.until - 1).max(last.created),
            oldest: last.created,
        },
        None => Listing::OutOfTime,
    }
}

/// The next window's length after one of `window` that held `count` events: sized for
/// [`RECONCILE_TARGET_EVENTS`] at that density, at most 8 times longer.
fn grown(window: EventWindow<'_>, count: usize) -> i64 {
    let span = (window.until - window.from).max(1);
    let target = RECONCILE_TARGET_EVENTS as i64;
    match count as i64 {
        0 => span.saturating_mul(8),
        n => (span.saturating_mul(target) / n).clamp(1, span.saturating_mul(8)),
    }
}

/// A shorter window, after a listing of `window` stopped at its page limit: its pages
/// held the events created from `oldest` to `newest`, so about half that length is
/// expected to fit, and never more than half of `window`.
fn shrunk(window: EventWindow<'_>, newest: i64, oldest: i64) -> i64 {
    let listed = (newest - oldest + 1).max(1);
    let full = RECONCILE_WINDOW_PAGES as i64 * 100;
    let by_density = listed.saturating_mul(RECONCILE_TARGET_EVENTS as i64) / full;
    by_density.min((window.until - window.from) / 2).max(1)
}

/// The id and `created` of a listed event, enough to page on and to size windows.
#[derive(serde::Deserialize)]
struct Listed {
    id: String,
    created: i64,
}

/// `from_slice`, like every typed decode (`stripe::event`'s note on the upload size).
fn listed(raw: &str) -> Option<Listed> {
    serde_json::from_slice::<Listed>(raw.as_bytes()).ok()
}

/// The whole scheduled run: re-drive, reconciliation and retention ([`run`]), then the
/// prune of checkout's code-attempt windows, and always its one summary line (a failed
/// task adds its own error line and is named in the summary's `failed`).
pub async fn scheduled<L: Ledger, U: Upstream, C: Clock, S: Sink, T: Throttle>(
    deps: &Deps<'_, L, U, C, S>,
    throttle: &T,
) {
    let started = deps.clock.now_ms();
    let trips = deps.ledger.round_trips();
    let mut summary = run(deps).await;
    // Checkout's code-attempt counts are read only in their own window: a day is
    // longer than any window CHECKOUT_CODE_WINDOW_SECS allows.
    let before = deps.clock.now_ms() / 1_000 - CODE_WINDOWS_KEPT_SECS;
    let pruned = match throttle.prune(before).await {
        Ok(pruned) => pruned,
        Err(e) => {
            task_failed(deps.log, &mut summary, "code_windows", &e);
            0
        }
    };
    summary_line(&summary, deps.clock.now_ms().saturating_sub(started))
        .num("code_windows_pruned", u64::from(pruned))
        // The ledger's round trips, and the prune's one statement.
        .num("d1_calls", u64::from(deps.ledger.round_trips() - trips + 1))
        .emit(deps.log);
}

/// Code-attempt windows older than this are deleted by the scheduled run.
pub const CODE_WINDOWS_KEPT_SECS: u64 = 86_400;

/// The one log line of a scheduled run.
pub fn summary_line(summary: &Summary, duration_ms: u64) -> Line {
    Line::info("scheduled run")
        .num("redriven", u64::from(summary.redriven))
        .num("completed", u64::from(summary.completed))
        .num("still_waiting", u64::from(summary.still_waiting))
        .num("enqueued", u64::from(summary.enqueued))
        .num("reconciled", u64::from(summary.reconciled))
        .num("reconcile_behind_secs", summary.reconcile_behind_secs)
        .num("pruned", u64::from(summary.pruned))
        .ids("failed", &summary.failed)
        .num("duration_ms", duration_ms)
}

#[cfg(test)]
mod tests;
