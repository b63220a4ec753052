//! The queue consumer's whole decision for one message: run its purchase, count the
//! try, choose ack, retry (with backoff) or dead-letter, and fail the waiting steps
//! with an alert when attempts run out. The Worker only decodes the message body, calls
//! [`consume`] and carries out the verdict on the message.

use super::{decide, QueueVerdict, RetryPolicy};
use crate::fulfilment::{self, Deps, ResumeError};
use crate::log::Line;
use crate::ports::ledger::{Ledger, StepState};
use crate::ports::{Clock, FulfilMessage, Sink, Upstream};

/// A message body as the queue delivered it (JSON text); `None` when unreadable.
/// `from_slice`, like every typed decode (`stripe::event`'s note on the upload size).
pub fn decode(text: &str) -> Option<FulfilMessage> {
    serde_json::from_slice(text.as_bytes()).ok()
}

/// Runs one message. `deps` must run inline (no queue): this is the consumer.
/// `jitter` (0..1, from the runtime's RNG) spreads retries of messages that failed
/// together. [`QueueVerdict::Exhausted`] means: retry without delay, so the queue moves
/// the message to the dead-letter queue (the steps are already failed and alerted).
pub async fn consume<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    message: Option<FulfilMessage>,
    jitter: f64,
) -> QueueVerdict {
    let Some(body) = message else {
        // Retrying cannot make it readable; the log says so and the message goes.
        Line::error("queue message unreadable").emit(deps.log);
        return QueueVerdict::Ack;
    };
    let started = deps.clock.now_ms();
    let trips = deps.ledger.round_trips();
    let result = fulfilment::resume(deps, &body.session_id, started).await;
    let reason = match &result {
        // No step could be claimed without the session: count the try on the waiting
        // steps, so a Stripe outage or a refused key ends in an alert, not in silence.
        Err(ResumeError::Session(e)) => {
            let message = e.message();
            let _ = deps
                .ledger
                .note_failure(&body.session_id, &message, deps.clock.now_ms())
                .await;
            Some(message)
        }
        _ => None,
    };
    let (attempts, most) = step_attempts(deps.ledger, &body.session_id).await;
    let outcome = result.as_ref().map(|r| r.outcome).map_err(Clone::clone);
    let policy = RetryPolicy {
        max_attempts: deps.config.max_attempts,
        base_secs: deps.config.retry_base_secs,
    };
    let verdict = decide(&outcome, attempts, policy, jitter);
    let line = Line::info("queue message handled")
        .id("session_id", &body.session_id)
        .id("event_id", &body.event_id)
        .num("attempts", u64::from(most))
        .num("duration_ms", deps.clock.now_ms().saturating_sub(started))
        .num("d1_calls", u64::from(deps.ledger.round_trips() - trips));
    let line = match &reason {
        Some(reason) => line.text("reason", reason),
        None => line,
    };
    match verdict {
        QueueVerdict::Ack => line.label("verdict", "ack").emit(deps.log),
        QueueVerdict::Retry(delay) => line
            .label("verdict", "retry")
            .num("delay_secs", u64::from(delay))
            .emit(deps.log),
        QueueVerdict::Exhausted => exhausted(deps, &body.session_id, attempts).await,
    }
    verdict
}

/// A message of the dead-letter queue, when this Worker consumes it too: one alert, then
/// ack. The ledger already holds the failed state, and
/// `POST /admin/purchases/{id}/replay` mends it, so the message itself is not needed.
pub fn dead_letter<S: Sink>(log: &S, message: Option<FulfilMessage>) -> QueueVerdict {
    Line::alert("fulfilment dead-lettered")
        .opt_id(
            "session_id",
            message.as_ref().map(|m| m.session_id.as_str()),
        )
        .emit(log);
    QueueVerdict::Ack
}

/// The most attempts any step still waiting has had (what decides retry or give up),
/// and the most any step has had (what the log reports).
async fn step_attempts<L: Ledger>(ledger: &L, session_id: &str) -> (u32, u32) {
    let rows = ledger.steps_of(session_id).await.unwrap_or_default();
    let waiting = rows
        .iter()
        .filter(|r| matches!(r.state, StepState::Pending | StepState::Running))
        .map(|r| r.attempts)
        .max()
        .unwrap_or(0);
    let most = rows.iter().map(|r| r.attempts).max().unwrap_or(0);
    (waiting, most)
}

/// Attempts ran out: the waiting steps fail (with their last error) and ops get an
/// alert per step.
async fn exhausted<L: Ledger, U, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    attempts: u32,
) {
    let rows = deps.ledger.steps_of(session_id).await.unwrap_or_default();
    let last_error = rows
        .iter()
        .filter(|r| matches!(r.state, StepState::Pending | StepState::Running))
        .find_map(|r| r.last_error.clone())
        .unwrap_or_else(|| "unknown".into());
    let now = deps.clock.now_ms();
    let error = format!("attempts exhausted: {last_error}");
    match deps.ledger.fail_waiting(session_id, &error, now).await {
        Ok(steps) => {
            let _ = deps.ledger.finish_purchase(session_id, now).await;
            for step in steps {
                Line::alert("fulfilment attempts exhausted")
                    .id("session_id", session_id)
                    .id("step", &step)
                    .num("attempts", u64::from(attempts))
                    .text("last_error", &last_error)
                    .emit(deps.log);
            }
        }
        Err(e) => Line::error("queue batch failed")
            .text("detail", &e.detail)
            .emit(deps.log),
    }
}
