//! What the scheduled (cron) run does, over the ledger and engine traits: finish
//! purchases whose steps were left waiting, then prune old events.
//!
//! Stripe's redeliveries normally finish a purchase; the re-drive covers what they
//! cannot: a Worker that died mid-call (a running step with an expired lease), a step
//! released after Stripe's last retry, or a purchase replayed by hand.

use crate::engine::{self, Deps, ResumeError, RunOutcome};
use crate::ledger::{Ledger, LedgerError};
use crate::log::{Line, Sink};
use crate::queue::FulfilMessage;
use crate::upstream::{Clock, Upstream};

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub redriven: u32,
    pub completed: u32,
    pub still_waiting: u32,
    /// Queue mode: purchases handed back to the queue.
    pub enqueued: u32,
    pub pruned: u32,
}

pub async fn run<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
) -> Result<Summary, LedgerError> {
    let now = deps.clock.now_ms();
    let mut summary = Summary::default();
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
        match engine::resume(deps, &session_id, deps.clock.now_ms()).await {
            Ok(report) if matches!(report.outcome, RunOutcome::Complete | RunOutcome::Failed) => {
                summary.completed += 1
            }
            Ok(_) => summary.still_waiting += 1,
            Err(ResumeError::Ledger(e)) => return Err(e),
            Err(e) => {
                summary.still_waiting += 1;
                let detail = match e {
                    ResumeError::Session(step) => step.message(),
                    _ => "no steps".to_string(),
                };
                Line::warn("re-drive could not resume a purchase")
                    .id("session_id", &session_id)
                    .text("reason", &detail)
                    .emit(deps.log);
            }
        }
    }
    let cutoff = now.saturating_sub(deps.config.retention_days * DAY_MS);
    summary.pruned = deps.ledger.prune_events(cutoff, PRUNE_PER_RUN).await?;
    Ok(summary)
}

/// The one log line of a scheduled run.
pub fn summary_line(summary: &Summary, duration_ms: u64) -> Line {
    Line::info("scheduled run")
        .num("redriven", u64::from(summary.redriven))
        .num("completed", u64::from(summary.completed))
        .num("still_waiting", u64::from(summary.still_waiting))
        .num("enqueued", u64::from(summary.enqueued))
        .num("pruned", u64::from(summary.pruned))
        .num("duration_ms", duration_ms)
}

#[cfg(test)]
#[path = "maintenance_tests.rs"]
mod tests;
