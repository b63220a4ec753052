//! The D1 adapter of the [`OpsStore`] port: the ops API's reads (`/admin/`).

use serde_json::Value;
use stripe_edge_core::ports::ledger::LedgerError;
use stripe_edge_core::ports::ops_store::{ListQuery, OpsStore, StateFilter};

use super::{int, text, D1Ledger};

const PURCHASE_COLUMNS: &str = "session_id, state, livemode, created_at, updated_at";

impl OpsStore for D1Ledger {
    async fn event_row(&self, event_id: &str) -> Result<Option<Value>, LedgerError> {
        const SQL: &str = "SELECT id, type, livemode, api_version, created, object_id, disposition, received_at FROM events WHERE id = ?1";
        self.first("admin_event", SQL, &[text(event_id)]).await
    }

    async fn purchase_row(&self, session_id: &str) -> Result<Option<Value>, LedgerError> {
        let sql = format!("SELECT {PURCHASE_COLUMNS} FROM purchases WHERE session_id = ?1");
        self.first("admin_purchase", &sql, &[text(session_id)])
            .await
    }

    async fn mapping(&self, session_id: &str) -> Result<Option<Value>, LedgerError> {
        const SQL: &str =
            "SELECT license_key, shipment_id FROM purchase_mappings WHERE session_id = ?1";
        self.first("admin_purchase", SQL, &[text(session_id)]).await
    }

    async fn events_of(&self, session_id: &str) -> Result<Vec<Value>, LedgerError> {
        const SQL: &str = "SELECT id, type, disposition, received_at FROM events WHERE object_id = ?1 ORDER BY received_at";
        self.all("admin_purchase", SQL, &[text(session_id)]).await
    }

    async fn list_purchases(
        &self,
        query: &ListQuery,
        stuck_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<Value>, LedgerError> {
        let sql = format!(
            "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE \
             (CASE ?1 WHEN 'failed_or_stuck' THEN state = 'failed' OR (state = 'fulfilling' AND updated_at < ?2) \
                      WHEN 'failed' THEN state = 'failed' \
                      WHEN 'stuck' THEN state = 'fulfilling' AND updated_at < ?2 \
                      ELSE state = ?1 END) \
             AND (updated_at < ?3 OR (updated_at = ?3 AND session_id < ?4)) \
             ORDER BY updated_at DESC, session_id DESC LIMIT ?5"
        );
        let filter = match query.filter {
            StateFilter::FailedOrStuck => "failed_or_stuck",
            StateFilter::Failed => "failed",
            StateFilter::Stuck => "stuck",
            StateFilter::State(state) => state.as_str(),
        };
        let (before_at, before_id) = query
            .before
            .clone()
            .unwrap_or((u64::MAX >> 12, String::new()));
        let args = [
            text(filter),
            int(stuck_before_ms as i64),
            int(before_at as i64),
            text(if query.before.is_some() {
                &before_id
            } else {
                "~"
            }),
            int(i64::from(limit)),
        ];
        self.all("admin_list", &sql, &args).await
    }
}
