//! stripe-edge: Stripe webhooks at the edge, fulfilled exactly once.
//!
//! A pure core (`signature`, `event`, `config`, `plan`, `webhook`, `reply`, `log`) that
//! compiles and is tested natively, and thin edge glue (`edge`, `ledger::d1`) that is the
//! only code touching JavaScript. See README.md, "Architecture".

pub mod admin;
pub mod checkout;
pub mod config;
pub mod edge;
pub mod engine;
pub mod event;
pub mod ledger;
pub mod license;
pub mod log;
pub mod maintenance;
pub mod plan;
pub mod queue;
pub mod relay;
pub mod reply;
pub mod shipping;
pub mod signature;
pub mod stripe_api;
pub mod upstream;
pub mod webhook;

#[cfg(test)]
mod testing;

use worker::{
    event, Context, Env, MessageBatch, Response, Result, ScheduleContext, ScheduledEvent,
};

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

/// Every request goes through [`edge::route`]; an unexpected glue error becomes a
/// generic 500 (never `respond_with_errors`, which would put the error text in the body).
#[event(fetch)]
async fn fetch(req: web_sys::Request, env: Env, _ctx: Context) -> Result<Response> {
    match edge::route(req, env).await {
        Ok(response) => Ok(response),
        Err(e) => edge::internal_error(&e),
    }
}

/// The cron trigger (`[triggers]` in wrangler.toml): re-drive and retention.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    edge::scheduled(env).await;
}

/// The fulfilment queue's consumer (queue mode): the same engine as inline mode.
#[event(queue)]
async fn queue(batch: MessageBatch<serde_json::Value>, env: Env, _ctx: Context) -> Result<()> {
    edge::queue::consume(batch, env).await;
    Ok(())
}

/// For bench/engine.mjs only: what ingress does to a delivery before any state, callable
/// from Node, so it can be timed against the official SDK on the same V8.
#[cfg(feature = "bench-export")]
#[worker::wasm_bindgen::prelude::wasm_bindgen]
pub fn bench_verify_and_decode(header: &str, body: &[u8], secret: &str, now_secs: f64) -> bool {
    signature::verify_at(Some(header), body, &[secret], 300, now_secs as i64).is_ok()
        && event::decode(body)
            .is_ok_and(|e| !e.is_checkout_session_event() || e.checkout_session().is_ok())
}
