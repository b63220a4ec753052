//! The ops API's reads (`/admin/`): rows as the API shows them, ids and states only,
//! never customer data. The D1 adapter (`src/d1/ops_store.rs`) holds the SQL; the
//! in-memory ledger implements it for native tests of `crate::ops`.

use serde_json::Value;

use super::ledger::{LedgerError, PurchaseState};

/// `GET /admin/purchases?state=…&limit=…&before=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub filter: StateFilter,
    pub limit: u32,
    /// Keyset cursor from the previous page's `next`: `{updated_at}:{session_id}`.
    pub before: Option<(u64, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFilter {
    /// Failed, or fulfilling without progress for a while (see [`STUCK_AFTER_MS`]).
    FailedOrStuck,
    Failed,
    Stuck,
    State(PurchaseState),
}

/// A row is a JSON object whose keys are the API's: `session_id, state, livemode,
/// created_at, updated_at` for a purchase; `id, type, livemode, api_version, created,
/// object_id, disposition, received_at` for an event.
#[allow(async_fn_in_trait)]
pub trait OpsStore {
    async fn event_row(&self, event_id: &str) -> Result<Option<Value>, LedgerError>;
    async fn purchase_row(&self, session_id: &str) -> Result<Option<Value>, LedgerError>;
    /// `{"license_key", "shipment_id"}` of a purchase (the `purchase_mappings` view).
    async fn mapping(&self, session_id: &str) -> Result<Option<Value>, LedgerError>;
    /// The purchase's events, oldest first: `id, type, disposition, received_at`.
    async fn events_of(&self, session_id: &str) -> Result<Vec<Value>, LedgerError>;
    /// Purchases matching the query, newest first (keyset on `updated_at, session_id`),
    /// at most `limit`; a purchase is stuck when fulfilling with no change since
    /// `stuck_before_ms`.
    async fn list_purchases(
        &self,
        query: &ListQuery,
        stuck_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<Value>, LedgerError>;
}
