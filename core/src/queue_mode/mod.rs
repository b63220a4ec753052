//! Queue mode, the pure part: the message, how the consumer decides between ack and
//! retry, and the backoff.
//!
//! With a `FULFILLMENT_QUEUE` producer bound, ingress records the purchase's pending
//! steps and sends one message per purchase, then answers 200 at once; the consumer
//! (this same Worker) runs the same engine as inline mode through
//! [`crate::fulfilment::resume`]. Attempts are counted in the step rows (`steps.attempts`):
//! workers-rs exposes no per-message attempt count, and the rows are what the ops API
//! shows anyway.

use crate::fulfilment::{ResumeError, RunOutcome};
use crate::log::Line;
use crate::ports::{Enqueue, FulfilMessage, Sink};
use crate::settings::registry::RETRY_BASE;
use crate::settings::Config;

pub mod consumer;

/// Sends one purchase to the fulfilment queue; a failure is logged here (`fulfilment
/// queue send failed`) and answered `false`, so every sender (ingress, a reversal, the
/// success page) reports it the same way and the caller only chooses its answer.
pub async fn send<S: Sink>(queue: &dyn Enqueue, log: &S, session_id: &str, event_id: &str) -> bool {
    let message = FulfilMessage {
        session_id: session_id.to_string(),
        event_id: event_id.to_string(),
    };
    match queue.enqueue(&message).await {
        Ok(()) => true,
        Err(detail) => {
            Line::error("fulfilment queue send failed")
                .id("session_id", session_id)
                .text("detail", &detail)
                .emit(log);
            false
        }
    }
}

/// Whether a batch comes from the dead-letter queue: the queue `DEAD_LETTER_QUEUE`
/// names, never guessed from the name's shape (a main queue called `…-dlq` is run, a
/// dead-letter queue called anything else is recognised).
pub fn is_dead_letter_queue(config: &Config, name: &str) -> bool {
    config.dead_letter_queue.as_deref() == Some(name)
}

/// First retry delay when `QUEUE_RETRY_BASE_SECS` is unset (its registry default);
/// doubles per attempt.
pub const BACKOFF_BASE_SECS: u32 = RETRY_BASE.default_number() as u32;
/// Longest delay between two attempts.
pub const BACKOFF_MAX_SECS: u32 = 15 * 60;
/// Delay before looking again at a purchase another consumer or delivery holds.
pub const BUSY_DELAY_SECS: u32 = 15;

/// Exponential backoff with ±20 % jitter (`jitter` in 0..1 from the runtime's RNG), so
/// messages that failed together do not come back together.
pub fn backoff_secs(base: u32, attempts: u32, jitter: f64) -> u32 {
    let exponent = attempts.saturating_sub(1).min(16);
    let delay = (base.saturating_mul(1 << exponent)).min(BACKOFF_MAX_SECS);
    let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
    ((f64::from(delay) * factor).round() as u32).clamp(1, BACKOFF_MAX_SECS)
}

/// What the consumer does with a message after running its purchase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueVerdict {
    Ack,
    /// Run it again after this many seconds.
    Retry(u32),
    /// Attempts ran out: fail the waiting steps, raise the alert, and let the queue move
    /// the message to the dead-letter queue.
    Exhausted,
}

/// How the consumer retries: attempts before giving up, and the first backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_secs: u32,
}

/// Decides from the run's result and the most attempts any waiting step has had.
pub fn decide(
    result: &Result<RunOutcome, ResumeError>,
    attempts: u32,
    policy: RetryPolicy,
    jitter: f64,
) -> QueueVerdict {
    let RetryPolicy {
        max_attempts,
        base_secs,
    } = policy;
    match result {
        Ok(RunOutcome::Complete | RunOutcome::Failed) => QueueVerdict::Ack,
        Ok(RunOutcome::Busy) => QueueVerdict::Retry(BUSY_DELAY_SECS),
        Ok(RunOutcome::Retry) if attempts >= max_attempts => QueueVerdict::Exhausted,
        Ok(RunOutcome::Retry) => QueueVerdict::Retry(backoff_secs(base_secs, attempts, jitter)),
        // Nothing to run: no steps recorded for this purchase.
        Err(ResumeError::Unknown) => QueueVerdict::Ack,
        // The session could not be had from Stripe (down, refused, or no key): the
        // consumer counts it as an attempt of the waiting steps, so it ends as a failed
        // step, an alert and a dead letter, never as a silent ack.
        Err(ResumeError::Session(_)) if attempts >= max_attempts => QueueVerdict::Exhausted,
        Err(_) => QueueVerdict::Retry(backoff_secs(base_secs, attempts.max(1), jitter)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::ledger::LedgerError;
    use crate::ports::FulfilMessage;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_fifteen_minutes_with_bounded_jitter() {
        let mid: Vec<u32> = (1..=9)
            .map(|a| backoff_secs(BACKOFF_BASE_SECS, a, 0.5))
            .collect();
        assert_eq!(mid, [10, 20, 40, 80, 160, 320, 640, 900, 900]);
        assert_eq!(backoff_secs(BACKOFF_BASE_SECS, 1, 0.0), 8);
        assert_eq!(backoff_secs(BACKOFF_BASE_SECS, 1, 1.0), 12);
        assert_eq!(backoff_secs(BACKOFF_BASE_SECS, 40, 1.0), BACKOFF_MAX_SECS);
    }

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 6,
        base_secs: BACKOFF_BASE_SECS,
    };

    #[test]
    fn the_consumer_acks_finished_purchases_and_retries_the_rest() {
        assert_eq!(
            decide(&Ok(RunOutcome::Complete), 1, POLICY, 0.5),
            QueueVerdict::Ack
        );
        assert_eq!(
            decide(&Ok(RunOutcome::Failed), 1, POLICY, 0.5),
            QueueVerdict::Ack
        );
        assert_eq!(
            decide(&Ok(RunOutcome::Busy), 1, POLICY, 0.5),
            QueueVerdict::Retry(BUSY_DELAY_SECS)
        );
        assert_eq!(
            decide(&Ok(RunOutcome::Retry), 2, POLICY, 0.5),
            QueueVerdict::Retry(20)
        );
        assert_eq!(
            decide(&Ok(RunOutcome::Retry), 6, POLICY, 0.5),
            QueueVerdict::Exhausted
        );
        assert_eq!(
            decide(&Err(ResumeError::Unknown), 0, POLICY, 0.5),
            QueueVerdict::Ack
        );
        let down = ResumeError::Ledger(LedgerError {
            operation: "x",
            detail: "y".into(),
        });
        assert_eq!(decide(&Err(down), 0, POLICY, 0.5), QueueVerdict::Retry(10));
    }

    #[test]
    fn a_session_stripe_refuses_is_retried_until_attempts_run_out_never_acked() {
        use crate::upstream::StepError;
        let refused = Err(ResumeError::Session(StepError::Permanent(
            "Stripe API answered 404".into(),
        )));
        assert_eq!(decide(&refused, 1, POLICY, 0.5), QueueVerdict::Retry(10));
        assert_eq!(decide(&refused, 6, POLICY, 0.5), QueueVerdict::Exhausted);
        let down = Err(ResumeError::Session(StepError::Retryable(
            "Stripe API answered 503".into(),
        )));
        assert_eq!(decide(&down, 2, POLICY, 0.5), QueueVerdict::Retry(20));
        assert_eq!(decide(&down, 6, POLICY, 0.5), QueueVerdict::Exhausted);
    }

    #[test]
    fn messages_are_ids_only() {
        let message = FulfilMessage {
            session_id: "cs_1".into(),
            event_id: "evt_1".into(),
        };
        assert_eq!(
            serde_json::to_string(&message).unwrap(),
            r#"{"session_id":"cs_1","event_id":"evt_1"}"#
        );
    }
}
