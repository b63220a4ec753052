//! The D1 adapter of the [`OrderStore`] port: the success page's read, one statement.

use serde::Deserialize;
use stripe_edge_core::ports::ledger::{LedgerError, PurchaseState, StepState};
use stripe_edge_core::ports::orders::{OrderRecord, OrderStep, OrderStore};

use super::{text, D1Ledger};

/// The purchase and each of its steps, one row per step (one row with no step when it
/// has none), in one query: a page polling every second costs one read.
const ORDER: &str =
    "SELECT p.state AS state, s.step AS step, s.state AS step_state, s.result AS result \
    FROM purchases p LEFT JOIN steps s ON s.session_id = p.session_id \
    WHERE p.session_id = ?1 ORDER BY s.step";

#[derive(Deserialize)]
struct Row {
    state: String,
    step: Option<String>,
    step_state: Option<String>,
    result: Option<String>,
}

fn unreadable(what: &str) -> LedgerError {
    LedgerError {
        operation: "order",
        detail: format!("unknown {what} in the ledger"),
    }
}

impl OrderStore for D1Ledger {
    async fn order(&self, session_id: &str) -> Result<Option<OrderRecord>, LedgerError> {
        let rows: Vec<Row> = self.all("order", ORDER, &[text(session_id)]).await?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let state =
            PurchaseState::parse(&first.state).ok_or_else(|| unreadable("purchase state"))?;
        let mut steps = Vec::new();
        for row in rows {
            let (Some(step), Some(step_state)) = (row.step, row.step_state) else {
                continue; // the LEFT JOIN's row of a purchase without steps
            };
            steps.push(OrderStep {
                step,
                state: StepState::parse(&step_state).ok_or_else(|| unreadable("step state"))?,
                result: row.result,
            });
        }
        Ok(Some(OrderRecord { state, steps }))
    }
}
