//! Checkout's edge glue, its only JavaScript: the D1 adapter of [`Throttle`], the
//! `Delay` behind [`Pause`], and the `Response` of a [`CheckoutReply`]. The route
//! itself is in `edge::checkout`.

use std::time::Duration;

use serde::Deserialize;
use worker::{D1Database, Delay, Headers, Response};

use super::reply::CheckoutReply;
use super::throttle::Throttle;
use super::Pause;
use crate::ledger::d1::{int, text};
use crate::ledger::LedgerError;

/// The code-attempt counter in D1 (`checkout_code_attempts`); `None` when `DB` is not
/// bound, which fails every count (only requests with a code need one).
pub struct D1Throttle(pub Option<D1Database>);

/// One statement, so concurrent attempts from one client each get their own count.
const HIT: &str = "INSERT INTO checkout_code_attempts (key, window_start, attempts) \
    VALUES (?1, ?2, 1) \
    ON CONFLICT (key, window_start) DO UPDATE SET attempts = attempts + 1 \
    RETURNING attempts";

#[derive(Deserialize)]
struct Count {
    attempts: f64,
}

impl Throttle for D1Throttle {
    async fn hit(&self, key: &str, window_start: u64) -> Result<u32, LedgerError> {
        let failure = |detail: String| LedgerError {
            operation: "count_code_attempt",
            detail,
        };
        let db = self
            .0
            .as_ref()
            .ok_or_else(|| failure("the DB binding is missing".into()))?;
        let row: Option<Count> = db
            .prepare(HIT)
            .bind(&[text(key), int(window_start as i64)])
            .map_err(|e| failure(e.to_string()))?
            .first(None)
            .await
            .map_err(|e| failure(e.to_string()))?;
        row.map(|r| r.attempts as u32)
            .ok_or_else(|| failure("the upsert returned no row".into()))
    }
}

impl D1Throttle {
    /// Deletes the counts of windows that started before `before_secs` (the cron run
    /// calls it: only the current window is ever read). Returns how many went.
    pub async fn prune(&self, before_secs: u64) -> Result<u32, LedgerError> {
        const SQL: &str = "DELETE FROM checkout_code_attempts WHERE window_start < ?1";
        let failure = |detail: String| LedgerError {
            operation: "prune_code_attempts",
            detail,
        };
        let db = self
            .0
            .as_ref()
            .ok_or_else(|| failure("the DB binding is missing".into()))?;
        let result = db
            .prepare(SQL)
            .bind(&[int(before_secs as i64)])
            .map_err(|e| failure(e.to_string()))?
            .run()
            .await
            .map_err(|e| failure(e.to_string()))?;
        let changes = result
            .meta()
            .map_err(|e| failure(e.to_string()))?
            .and_then(|m| m.changes)
            .unwrap_or(0);
        Ok(changes as u32)
    }
}

/// A random value per request (two `Math.random()` draws, 104 bits): unique, not
/// secret, which is all an Idempotency-Key of our own needs.
pub fn nonce() -> String {
    let draw = || (worker::js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
    format!("{:014x}{:014x}", draw(), draw())
}

/// A timer that does not hold the request context alive (a `Delay`, not a
/// `setTimeout` promise of our own).
pub struct WorkerPause;

impl Pause for WorkerPause {
    async fn pause(&self, ms: u64) {
        Delay::from(Duration::from_millis(ms)).await;
    }
}

/// The `Response` of a reply: JSON (never cached) or an empty 204, with its headers.
pub fn respond(reply: &CheckoutReply) -> worker::Result<Response> {
    let headers = Headers::new();
    headers.set("cache-control", "no-store")?;
    let response = match &reply.body {
        Some(body) => {
            headers.set("content-type", "application/json")?;
            Response::from_bytes(body.to_string().into_bytes())?
        }
        None => Response::empty()?,
    };
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    Ok(response.with_status(reply.status).with_headers(headers))
}
