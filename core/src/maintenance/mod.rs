//! What the scheduled (cron) run does, over the ledger and engine traits: finish
//! purchases whose steps were left waiting, then prune old events.
//!
//! Stripe's redeliveries normally finish a purchase; the re-drive covers what they
//! cannot: a Worker that died mid-call (a running step with an expired lease), a step
//! released after Stripe's last retry, or a purchase replayed by hand.

use crate::fulfilment::{self, Deps, ResumeError, RunOutcome};
use crate::http::webhook;
use crate::ingress::{self, Refusal, Seen, Status, Verdict};
use crate::log::Line;
use crate::ports::ledger::{Ledger, LedgerError};
use crate::ports::FulfilMessage;
use crate::ports::{Clock, Upstream};
use crate::ports::{Sink, Throttle};
use crate::stripe::api::StripeApi;
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
/// Pages of 100 events listed per run; a longer window is finished by later runs.
pub const RECONCILE_MAX_PAGES: usize = 50;

/// Runs every task of a scheduled run: reconciliation, re-drive, retention. Each runs
/// whatever became of the others (a failed reconciliation must not stop the prune, nor
/// the reverse); a task that fails logs why and is named in [`Summary::failed`].
pub async fn run<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
) -> Summary {
    let mut summary = Summary::default();
    match reconcile(deps).await {
        Ok(reconciled) => summary.reconciled = reconciled,
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

/// Lists the Checkout events Stripe created since the last run (all pages, bounded)
/// and ingests those the ledger has never seen, oldest first, so an outage of this
/// endpoint loses no purchase. Needs `STRIPE_API_KEY`; without it, does nothing.
/// The cursor moves only after a complete listing, so a failed or truncated run is
/// listed again by the next one.
async fn reconcile<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
) -> Result<u32, LedgerError> {
    let Some(key) = deps.config.stripe_api_key.as_ref() else {
        return Ok(0);
    };
    let stripe = StripeApi {
        base: &deps.config.stripe_api_base,
        key,
        version: &deps.config.stripe_api_version,
    };
    let listed_at = (deps.clock.now_ms() / 1000) as i64;
    let since = match deps.ledger.cursor(RECONCILE_CURSOR).await? {
        Some(until) => until - RECONCILE_OVERLAP_SECS,
        None => listed_at - RECONCILE_FIRST_LOOKBACK_SECS,
    };
    let deadline = Deadline::new(deps.clock.now_ms(), deps.config.upstream_timeout_ms);
    let mut events = Vec::new();
    let mut after: Option<String> = None;
    let mut complete = false;
    for _ in 0..RECONCILE_MAX_PAGES {
        let page = match stripe
            .checkout_events_page(deps.upstream, deps.clock, deadline, since, after.as_deref())
            .await
        {
            Ok(page) => page,
            Err(e) => {
                Line::warn("reconciliation could not list events")
                    .text("reason", &e.message())
                    .emit(deps.log);
                return Ok(0);
            }
        };
        after = page.data.last().and_then(|raw| event_id(raw.get()));
        events.extend(page.data);
        if !page.has_more || after.is_none() {
            complete = true;
            break;
        }
    }
    let mut ingested = 0;
    for raw in events.iter().rev() {
        let decision =
            ingress::ingest(deps, raw.get().as_bytes(), deps.clock.now_ms(), Seen::Skip).await;
        match &decision.verdict {
            Verdict::Recorded(Status::Duplicate) => continue,
            Verdict::Refused(Refusal::Unavailable(e)) => return Err(e.clone()),
            _ => {}
        }
        ingested += 1;
        webhook::decision_line(&decision, 0).emit(deps.log);
        Line::warn("reconciled an event never delivered")
            .opt_id("event_id", decision.event_id.as_deref())
            .opt_id("session_id", decision.object_id.as_deref())
            .emit(deps.log);
    }
    if complete {
        deps.ledger
            .advance_cursor(RECONCILE_CURSOR, listed_at, deps.clock.now_ms())
            .await?;
    } else {
        Line::warn("reconciliation window truncated")
            .num("listed", events.len() as u64)
            .emit(deps.log);
    }
    Ok(ingested)
}

fn event_id(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_str::<Id>(raw).ok().map(|e| e.id)
}

/// The whole scheduled run: re-drive, reconciliation and retention ([`run`]), then the
/// prune of checkout's code-attempt windows, and always its one summary line (a failed
/// task adds its own error line and is named in the summary's `failed`).
pub async fn scheduled<L: Ledger, U: Upstream, C: Clock, S: Sink, T: Throttle>(
    deps: &Deps<'_, L, U, C, S>,
    throttle: &T,
) {
    let started = deps.clock.now_ms();
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
        .num("pruned", u64::from(summary.pruned))
        .ids("failed", &summary.failed)
        .num("duration_ms", duration_ms)
}

#[cfg(test)]
mod tests;
