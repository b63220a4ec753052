//! Queue mode's consumer entry: hands each message to `queue_mode::consumer` and
//! carries out its verdict (the producer is bound with the rest, in `runtime`).

use stripe_edge_core::log::Line;
use stripe_edge_core::ports::FulfilMessage;
use stripe_edge_core::queue_mode::consumer;
use stripe_edge_core::queue_mode::{is_dead_letter_queue, QueueVerdict};
use worker::{js_sys, Env, MessageBatch, MessageExt, QueueRetryOptionsBuilder, RawMessage};

use crate::runtime::{load_config, Console, Runtime};

/// Runs every message of a batch; each is acked or retried by itself, so one bad or
/// failing message never holds back the others.
pub async fn consume(batch: MessageBatch<serde_json::Value>, env: Env) {
    if is_dead_letter_queue(&load_config(&env), &batch.queue()) {
        for message in batch.raw_iter() {
            let verdict = consumer::dead_letter(&Console, decode(&message));
            carry_out(&message, verdict);
        }
        return;
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
        let verdict = consumer::consume(&deps, decode(&message), js_sys::Math::random()).await;
        carry_out(&message, verdict);
    }
}

fn decode(message: &RawMessage) -> Option<FulfilMessage> {
    let text = js_sys::JSON::stringify(&message.body()).ok()?.as_string()?;
    consumer::decode(&text)
}

fn carry_out(message: &RawMessage, verdict: QueueVerdict) {
    match verdict {
        QueueVerdict::Ack => message.ack(),
        QueueVerdict::Retry(delay) => message.retry_with_options(
            &QueueRetryOptionsBuilder::new()
                .with_delay_seconds(delay)
                .build(),
        ),
        QueueVerdict::Exhausted => message.retry(),
    }
}
