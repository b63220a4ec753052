//! The success page's read (`GET /orders/{id}`): where a purchase stands and what its
//! steps produced, in one read, so a page polling every second costs one D1 query and
//! no upstream call. The D1 adapter (`src/d1/orders.rs`) holds the SQL (one statement);
//! the in-memory ledger implements it for native tests of `crate::orders`.

use super::ledger::{LedgerError, PurchaseState, StepState};

/// A purchase as the ledger has it: its state and each of its steps. Ids, states and
/// step results only (the license key, the shipment id): the ledger holds no customer
/// data, so none can be read from here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub state: PurchaseState,
    /// Ordered by name.
    pub steps: Vec<OrderStep>,
}

/// One step of an [`OrderRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderStep {
    pub step: String,
    pub state: StepState,
    /// The upstream's id once done (license key, shipment id, `none:…`).
    pub result: Option<String>,
}

#[allow(async_fn_in_trait)]
pub trait OrderStore {
    /// The purchase of a Checkout Session with its steps; `None` when the ledger has no
    /// purchase for it (no event opened one yet). One read.
    async fn order(&self, session_id: &str) -> Result<Option<OrderRecord>, LedgerError>;
}
