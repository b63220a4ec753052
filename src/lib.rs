//! stripe-edge, the Worker: entry points, bindings and every SQL statement, over the
//! pure core in `core/` (`stripe_edge_core`), which makes every decision. This crate
//! only translates: JavaScript values, D1 rows and HTTP in, the core's replies and log
//! lines out. The map is CONTRIBUTING.md.

pub mod d1;
pub mod fetch;
pub mod ops;
pub mod queue;
pub mod response;
pub mod router;
pub mod runtime;
pub mod subtle;

use worker::{
    event, Context, Env, MessageBatch, Response, Result, ScheduleContext, ScheduledEvent,
};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Every request goes through [`router::route`]; an unexpected glue error becomes a
/// generic 500 (never `respond_with_errors`, which would put the error text in the body).
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<Response> {
    match router::route(req, env).await {
        Ok(response) => Ok(response),
        Err(e) => router::internal_error(&e),
    }
}

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
