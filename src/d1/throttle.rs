//! The D1 adapter of the [`Throttle`] port (`checkout_code_attempts`).

use serde::Deserialize;
use std::cell::Cell;
use stripe_edge_core::ports::ledger::LedgerError;
use stripe_edge_core::ports::Throttle;

use worker::D1Database;

use super::{int, text};

/// The code-attempt counter in D1 (`checkout_code_attempts`); `None` when `DB` is not
/// bound, which fails every count (only requests with a code need one).
pub struct D1Throttle(pub Option<D1Database>, pub Cell<u32>);

impl D1Throttle {
    pub fn new(db: Option<D1Database>) -> Self {
        Self(db, Cell::new(0))
    }

    /// Round trips made so far: `d1_calls` on the request's decision line.
    pub fn calls(&self) -> u32 {
        self.1.get()
    }
}

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
        self.1.set(self.1.get() + 1);
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

    async fn prune(&self, before_secs: u64) -> Result<u32, LedgerError> {
        const SQL: &str = "DELETE FROM checkout_code_attempts WHERE window_start < ?1";
        let failure = |detail: String| LedgerError {
            operation: "prune_code_attempts",
            detail,
        };
        let db = self
            .0
            .as_ref()
            .ok_or_else(|| failure("the DB binding is missing".into()))?;
        self.1.set(self.1.get() + 1);
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
