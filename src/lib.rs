//! stripe-edge, the Worker: entry points, bindings and every SQL statement, over the
//! pure core in `core/` (`stripe_edge_core`), which makes every decision. This crate
//! only translates: JavaScript values, D1 rows and HTTP in, the core's replies and log
//! lines out. The map is CONTRIBUTING.md.

pub mod d1;
pub mod entry;
pub mod fast_webhook;
pub mod fetch;
pub mod ops;
pub mod queue;
pub mod response;
pub mod router;
pub mod runtime;
pub mod settle;
pub mod subtle;

use worker::{event, Context, Env, MessageBatch, Result, ScheduleContext, ScheduledEvent};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

// Every HTTP request comes in through `entry::serve` (src/entry.mjs is the Worker's
// entry), which hands it to [`router::route`]; an unexpected glue error becomes a generic
// 500 (never the error text in the body).

/// The cron trigger (`[triggers]` in wrangler.toml): re-drive, reconciliation, retention.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    router::scheduled(env).await;
}

/// The fulfilment queue's consumer (queue mode): the same engine as inline mode.
#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    queue::consume(batch, env).await;
    Ok(())
}

/// For bench/engine.mjs only: what ingress does to a delivery before any state, callable
/// from Node, so it can be timed against the official SDK on the same V8.
#[cfg(feature = "bench-export")]
#[worker::wasm_bindgen::prelude::wasm_bindgen]
pub fn bench_verify_and_decode(header: &str, body: &[u8], secret: &str, now_secs: f64) -> bool {
    use stripe_edge_core::stripe::{event, signature};
    signature::verify_at(Some(header), body, &[secret], 300, now_secs as i64).is_ok()
        && event::decode(body)
            .is_ok_and(|e| !e.is_checkout_session_event() || e.checkout_session().is_ok())
}
