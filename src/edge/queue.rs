//! Glue of queue mode: the `FULFILLMENT_QUEUE` producer, and the consumer that runs
//! each message's purchase through the engine and acks or retries it on its own.

use worker::{js_sys, Env, MessageBatch, MessageExt, QueueRetryOptionsBuilder, RawMessage};

use super::{load_config, now_ms, Console, EdgeDeps, Runtime};
use crate::engine::{self, ResumeError};
use crate::ledger::d1::D1Ledger;
use crate::ledger::{Ledger, StepState};
use crate::log::Line;
use crate::queue::{decide, Enqueue, FulfilMessage, RetryPolicy, Verdict};

pub const QUEUE_BINDING: &str = "FULFILLMENT_QUEUE";

pub struct QueueProducer(pub worker::Queue);

impl Enqueue for QueueProducer {
    fn enqueue<'a>(
        &'a self,
        message: &'a FulfilMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move { self.0.send(message).await.map_err(|e| e.to_string()) })
    }
}

/// The producer, when this deployment binds one (queue mode).
pub fn producer(env: &Env) -> Option<QueueProducer> {
    env.queue(QUEUE_BINDING).ok().map(QueueProducer)
}

/// Runs every message of a batch; each is acked or retried by itself, so one bad or
/// failing message never holds back the others.
pub async fn consume(batch: MessageBatch<serde_json::Value>, env: Env) {
    if batch.queue().ends_with(DEAD_LETTER_SUFFIX) {
        return dead_letters(&batch);
    }
    let runtime = match Runtime::bind(&env, load_config(&env)) {
        Ok(runtime) => runtime,
        Err(e) => {
            Line::error("queue batch failed")
                .text("detail", &e.to_string())
                .emit(&Console);
            batch.retry_all();
            return;
        }
    };
    let deps = runtime.deps(false);
    for message in batch.raw_iter() {
        consume_one(&deps, &message).await;
    }
}

/// Queues whose name ends with this are dead-letter queues.
pub const DEAD_LETTER_SUFFIX: &str = "-dlq";

/// Optional: when this Worker also consumes the dead-letter queue, every dead letter
/// raises an alert and is acked. The ledger already holds the failed state, and
/// `POST /admin/purchases/{id}/replay` mends it, so the message itself is not needed.
fn dead_letters(batch: &MessageBatch<serde_json::Value>) {
    for message in batch.raw_iter() {
        let body = decode(&message);
        Line::alert("fulfilment dead-lettered")
            .opt_id("session_id", body.as_ref().map(|b| b.session_id.as_str()))
            .emit(&Console);
        message.ack();
    }
}

fn decode(message: &RawMessage) -> Option<FulfilMessage> {
    let text = js_sys::JSON::stringify(&message.body()).ok()?.as_string()?;
    serde_json::from_str(&text).ok()
}

async fn consume_one(deps: &EdgeDeps<'_>, message: &RawMessage) {
    let Some(body) = decode(message) else {
        // Retrying cannot make it readable; the log says so and the message goes.
        Line::error("queue message unreadable").emit(&Console);
        message.ack();
        return;
    };
    let started = now_ms();
    let result = engine::resume(deps, &body.session_id, started).await;
    let reason = match &result {
        // No step could be claimed without the session: count the try on the waiting
        // steps, so a Stripe outage or a refused key ends in an alert, not in silence.
        Err(ResumeError::Session(e)) => {
            let message = e.message();
            let _ = deps
                .ledger
                .note_failure(&body.session_id, &message, now_ms())
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
    let verdict = decide(&outcome, attempts, policy, js_sys::Math::random());
    let line = Line::info("queue message handled")
        .id("session_id", &body.session_id)
        .id("event_id", &body.event_id)
        .num("attempts", u64::from(most))
        .num("duration_ms", now_ms().saturating_sub(started));
    let line = match &reason {
        Some(reason) => line.text("reason", reason),
        None => line,
    };
    match verdict {
        Verdict::Ack => {
            message.ack();
            line.label("verdict", "ack").emit(&Console);
        }
        Verdict::Retry(delay) => {
            message.retry_with_options(
                &QueueRetryOptionsBuilder::new()
                    .with_delay_seconds(delay)
                    .build(),
            );
            line.label("verdict", "retry")
                .num("delay_secs", u64::from(delay))
                .emit(&Console);
        }
        Verdict::Exhausted => exhausted(deps, &body, attempts, message).await,
    }
}

/// The most attempts any step still waiting has had (what decides retry or give up),
/// and the most any step has had (what the log reports).
async fn step_attempts(ledger: &D1Ledger, session_id: &str) -> (u32, u32) {
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

/// Attempts ran out: the waiting steps fail (with their last error), ops get an alert,
/// and the message is retried once more so the queue moves it to the dead-letter queue.
async fn exhausted(deps: &EdgeDeps<'_>, body: &FulfilMessage, attempts: u32, message: &RawMessage) {
    let session_id = &body.session_id;
    let rows = deps.ledger.steps_of(session_id).await.unwrap_or_default();
    let last_error = rows
        .iter()
        .find(|r| r.state == StepState::Pending)
        .and_then(|r| r.last_error.clone())
        .unwrap_or_else(|| "unknown".into());
    let now = now_ms();
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
                    .emit(&Console);
            }
        }
        Err(e) => Line::error("queue batch failed")
            .text("detail", &e.detail)
            .emit(&Console),
    }
    message.retry();
}
