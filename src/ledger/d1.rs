//! The D1 adapter of [`Ledger`]: each method is one SQL statement.

use serde::Deserialize;
use worker::wasm_bindgen::JsValue;
use worker::{D1Database, D1PreparedStatement};

use super::{Claim, EventRecord, Ledger, LedgerError};

pub struct D1Ledger {
    db: D1Database,
}

impl D1Ledger {
    pub fn new(db: D1Database) -> Self {
        Self { db }
    }

    fn statement(
        &self,
        operation: &'static str,
        sql: &str,
        args: &[JsValue],
    ) -> Result<D1PreparedStatement, LedgerError> {
        self.db.prepare(sql).bind(args).map_err(failure(operation))
    }

    /// A cheap query that fails when D1 is unreachable or the migrations are missing.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.statement("ping", "SELECT 1 FROM events LIMIT 1", &[])?
            .all()
            .await
            .map_err(failure("ping"))
            .and_then(|r| match r.error() {
                Some(e) => Err(LedgerError {
                    operation: "ping",
                    detail: e,
                }),
                None => Ok(()),
            })
    }
}

fn failure(operation: &'static str) -> impl Fn(worker::Error) -> LedgerError {
    move |e| LedgerError {
        operation,
        detail: e.to_string(),
    }
}

pub(crate) fn text(value: &str) -> JsValue {
    JsValue::from_str(value)
}

pub(crate) fn opt_text(value: Option<&str>) -> JsValue {
    value.map_or(JsValue::NULL, JsValue::from_str)
}

/// D1 takes JavaScript numbers; every integer we store is far below 2^53.
pub(crate) fn int(value: i64) -> JsValue {
    JsValue::from_f64(value as f64)
}

#[derive(Deserialize)]
struct Returned {
    #[allow(dead_code)]
    id: String,
}

impl Ledger for D1Ledger {
    async fn claim_event(&self, r: &EventRecord) -> Result<Claim, LedgerError> {
        const SQL: &str = "INSERT INTO events \
            (id, type, livemode, api_version, created, object_id, disposition, received_at) \
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
            ON CONFLICT (id) DO NOTHING RETURNING id";
        let args = [
            text(&r.id),
            text(&r.kind),
            int(i64::from(r.livemode)),
            opt_text(r.api_version.as_deref()),
            r.created.map_or(JsValue::NULL, int),
            opt_text(r.object_id.as_deref()),
            text(r.disposition),
            int(r.received_at_ms as i64),
        ];
        let row: Option<Returned> = self
            .statement("claim_event", SQL, &args)?
            .first(None)
            .await
            .map_err(failure("claim_event"))?;
        Ok(if row.is_some() {
            Claim::New
        } else {
            Claim::Seen
        })
    }
}
