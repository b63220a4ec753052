//! The ledger: what this Worker has seen and done, in D1.
//!
//! Every write is one conditional SQL statement (insert-or-ignore, or an update guarded
//! by the state it expects), so concurrent deliveries can never both win a claim. D1
//! has no interactive transactions, and a read followed by a write would race.

use std::fmt;

pub mod d1;
#[cfg(test)]
pub mod memory;

/// The ledger row of one verified event. Ids and types only: no customer data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    pub id: String,
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub created: Option<i64>,
    pub object_id: Option<String>,
    pub disposition: &'static str,
    pub received_at_ms: u64,
}

/// The result of claiming an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This delivery recorded the event: first time seen.
    New,
    /// The event was already recorded by an earlier or concurrent delivery.
    Seen,
}

/// The ledger could not be read or written. Always retryable from Stripe's side: the
/// delivery is answered 503 and nothing was recorded by this statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerError {
    /// What was being done, for the log (`claim_event`, ...).
    pub operation: &'static str,
    /// The database's error text; may be logged after redaction, never sent to clients.
    pub detail: String,
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ledger {} failed: {}", self.operation, self.detail)
    }
}

impl std::error::Error for LedgerError {}

#[allow(async_fn_in_trait)] // single-threaded Workers runtime: no Send bound wanted
pub trait Ledger {
    /// Records the event unless its id is already there (`INSERT … ON CONFLICT DO NOTHING`).
    async fn claim_event(&self, record: &EventRecord) -> Result<Claim, LedgerError>;
}
