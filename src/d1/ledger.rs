//! The D1 adapter of the [`Ledger`] port: each method is one SQL statement (or one
//! batch), so every transition stays atomic.

use serde::Deserialize;
use std::cell::Cell;
use stripe_edge_core::ports::ledger::{
    Claim, ClaimAsk, EventRecord, Ledger, LedgerError, Opening, PurchaseState, ReversalRecord,
    RoundResult, Settle, StepRow, StepState, TakeBackRule,
};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsCast;
use worker::js_sys::JsString;
use worker::wasm_bindgen::JsValue;

use worker::{D1Database, D1PreparedStatement, D1Result};

use super::{failure, int, js_failure, opt_text, text};

// The D1 calls of `claim_event`, typed: the statement every delivery runs.
#[wasm_bindgen]
extern "C" {
    type ClaimDb;
    #[wasm_bindgen(method, catch)]
    fn prepare(this: &ClaimDb, sql: &JsString) -> Result<ClaimStatement, JsValue>;

    type ClaimStatement;
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(method, catch, js_name = bind)]
    fn bind_event(
        this: &ClaimStatement,
        id: &str,
        kind: &str,
        livemode: f64,
        api_version: &JsValue,
        created: &JsValue,
        object_id: &JsValue,
        disposition: &str,
        received_at: f64,
    ) -> Result<ClaimStatement, JsValue>;
    #[wasm_bindgen(method, catch)]
    fn first(this: &ClaimStatement) -> Result<worker::js_sys::Promise, JsValue>;

    /// The row `RETURNING type, object_id` gives.
    type ClaimRow;
    #[wasm_bindgen(method, getter, js_name = type)]
    fn kind(this: &ClaimRow) -> Option<String>;
    #[wasm_bindgen(method, getter)]
    fn object_id(this: &ClaimRow) -> Option<String>;
}

pub struct D1Ledger {
    pub(super) db: D1Database,
    /// Round trips made through this binding (a batch is one): `d1_calls` on the
    /// request's decision line.
    calls: Cell<u32>,
}

impl D1Ledger {
    pub fn new(db: D1Database) -> Self {
        Self {
            db,
            calls: Cell::new(0),
        }
    }

    /// Round trips made so far (statements and batches sent to D1).
    pub fn calls(&self) -> u32 {
        self.calls.get()
    }

    fn count(&self) {
        self.calls.set(self.calls.get() + 1);
    }

    /// Sends `statements` as one batch: one round trip, one transaction. Fails when any
    /// statement failed (D1 rolled the whole batch back).
    pub(super) async fn batch(
        &self,
        operation: &'static str,
        statements: Vec<D1PreparedStatement>,
    ) -> Result<Vec<D1Result>, LedgerError> {
        self.count();
        let results = self
            .db
            .batch(statements)
            .await
            .map_err(failure(operation))?;
        match results.iter().find_map(|r| r.error()) {
            Some(detail) => Err(LedgerError { operation, detail }),
            None => Ok(results),
        }
    }

    pub(super) fn statement(
        &self,
        operation: &'static str,
        sql: &str,
        args: &[JsValue],
    ) -> Result<D1PreparedStatement, LedgerError> {
        self.db.prepare(sql).bind(args).map_err(failure(operation))
    }

    /// A cheap query that fails when D1 is unreachable or the migrations are missing.
    pub async fn ping(&self) -> Result<(), LedgerError> {
        self.count();
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

/// The event's claim in one statement, one round trip whichever way it goes (a batch of
/// the insert and a read of the stored row cost D1 a second query: +0.1 ms of workerd
/// CPU per delivery under Miniflare, BENCHMARKS.md):
/// - a new id is inserted and RETURNs this event's own type and object;
/// - a known id with the same type and object takes DO NOTHING (the `WHERE` is false)
///   and RETURNs no row: seen;
/// - a known id with another type or object takes the no-op `DO UPDATE` (the stored row
///   is rewritten unchanged) only so that RETURNING gives the stored type and object,
///   which differ from this event's: a conflict.
pub const CLAIM_EVENT: &str = "INSERT INTO events \
    (id, type, livemode, api_version, created, object_id, disposition, received_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
    ON CONFLICT (id) DO UPDATE SET disposition = events.disposition \
    WHERE events.type IS NOT excluded.type OR events.object_id IS NOT excluded.object_id \
    RETURNING type, object_id";

thread_local! {
    /// [`CLAIM_EVENT`] as a JavaScript string, made once per isolate rather than decoded
    /// from wasm memory on every delivery.
    static CLAIM_SQL: JsString = JsString::from(CLAIM_EVENT);
}

/// What [`CLAIM_EVENT`] returns.
#[derive(Deserialize)]
pub(super) struct StoredEvent {
    #[serde(rename = "type")]
    kind: String,
    object_id: Option<String>,
}

/// The claim [`CLAIM_EVENT`]'s returned row (if any) means for `r`.
pub(super) fn claim_of(r: &EventRecord, returned: Option<StoredEvent>) -> Claim {
    claim_of_stored(
        &r.kind,
        r.object_id.as_deref(),
        returned.map(|s| (s.kind, s.object_id)),
    )
}

/// What [`CLAIM_EVENT`]'s result means for an event of `kind` about `object_id`: `None`
/// when no row came back, else the returned row's two columns. A returned row without a
/// type is a ledger failure. One reading for both ways the statement runs: here, and in
/// `src/entry.mjs` on the entry's own path (`src/fast_webhook.rs`).
pub fn claim_of_row(
    kind: &str,
    object_id: Option<&str>,
    returned: Option<(Option<String>, Option<String>)>,
) -> Result<Claim, LedgerError> {
    match returned {
        None => Ok(claim_of_stored(kind, object_id, None)),
        Some((None, _)) => Err(LedgerError {
            operation: "claim_event",
            detail: "the claimed row has no type".into(),
        }),
        Some((Some(stored_kind), stored_object)) => Ok(claim_of_stored(
            kind,
            object_id,
            Some((stored_kind, stored_object)),
        )),
    }
}

fn claim_of_stored(
    kind: &str,
    object_id: Option<&str>,
    returned: Option<(String, Option<String>)>,
) -> Claim {
    match returned {
        None => Claim::Seen,
        Some((stored_kind, stored_object))
            if stored_kind == kind && stored_object.as_deref() == object_id =>
        {
            Claim::New
        }
        Some(_) => Claim::Conflict,
    }
}

impl D1Ledger {
    /// [`CLAIM_EVENT`] bound to `r`: alone (`claim_event`) or first in a batch. Every
    /// delivery makes it: its arguments go to `bind` in one crossing (typed, above) rather
    /// than through an array built element by element (`bench/profile.mjs`).
    fn claim_statement(
        &self,
        operation: &'static str,
        r: &EventRecord,
    ) -> Result<ClaimStatement, LedgerError> {
        let db: &ClaimDb = self.db.as_ref().unchecked_ref();
        CLAIM_SQL
            .with(|sql| db.prepare(sql))
            .and_then(|s| {
                s.bind_event(
                    &r.id,
                    &r.kind,
                    f64::from(u8::from(r.livemode)),
                    &opt_text(r.api_version.as_deref()),
                    &r.created.map_or(JsValue::NULL, int),
                    &opt_text(r.object_id.as_deref()),
                    r.disposition,
                    r.received_at_ms as f64,
                )
            })
            .map_err(js_failure(operation))
    }

    /// [`claim_statement`](Self::claim_statement) as workers-rs's statement, for a batch.
    pub(super) fn claim_event_statement(
        &self,
        operation: &'static str,
        r: &EventRecord,
    ) -> Result<D1PreparedStatement, LedgerError> {
        let statement = self.claim_statement(operation, r)?;
        Ok(D1PreparedStatement::from(
            statement.unchecked_into::<worker::worker_sys::D1PreparedStatement>(),
        ))
    }
}

#[derive(Deserialize)]
pub(super) struct Claimed {
    pub(super) attempts: f64,
    pub(super) event_id: String,
    pub(super) body_digest: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct StateOnly {
    pub(super) state: String,
}

#[derive(Deserialize)]
pub(super) struct RawStep {
    step: String,
    event_id: String,
    state: String,
    lease_until: Option<f64>,
    attempts: f64,
    last_error: Option<String>,
    result: Option<String>,
    updated_at: f64,
}

impl RawStep {
    pub(super) fn into_row(self) -> Option<StepRow> {
        Some(StepRow {
            state: StepState::parse(&self.state)?,
            step: self.step,
            event_id: self.event_id,
            lease_until: self.lease_until.map(|v| v as u64),
            attempts: self.attempts as u32,
            last_error: self.last_error,
            result: self.result,
            updated_at: self.updated_at as u64,
        })
    }
}

#[derive(Deserialize)]
struct SessionOnly {
    session_id: String,
}

pub(super) const STEP_COLUMNS: &str =
    "step, event_id, state, lease_until, attempts, last_error, result, updated_at";

impl D1Ledger {
    async fn run(
        &self,
        operation: &'static str,
        sql: &str,
        args: &[JsValue],
    ) -> Result<usize, LedgerError> {
        self.count();
        let result = self
            .statement(operation, sql, args)?
            .run()
            .await
            .map_err(failure(operation))?;
        let meta = result.meta().map_err(failure(operation))?;
        Ok(meta.and_then(|m| m.changes).unwrap_or(0))
    }

    pub(crate) async fn all<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        sql: &str,
        args: &[JsValue],
    ) -> Result<Vec<T>, LedgerError> {
        self.count();
        let result = self
            .statement(operation, sql, args)?
            .all()
            .await
            .map_err(failure(operation))?;
        if let Some(detail) = result.error() {
            return Err(LedgerError { operation, detail });
        }
        result.results().map_err(failure(operation))
    }

    pub(crate) async fn first<T: for<'de> Deserialize<'de>>(
        &self,
        operation: &'static str,
        sql: &str,
        args: &[JsValue],
    ) -> Result<Option<T>, LedgerError> {
        self.count();
        self.statement(operation, sql, args)?
            .first(None)
            .await
            .map_err(failure(operation))
    }
}

/// Ends an attempt only if it is still the current one (`attempts = ?3`).
pub(super) const SETTLE_DONE: &str = "UPDATE steps SET state = 'done', result = ?5, last_error = NULL, lease_until = NULL, updated_at = ?4 \
    WHERE session_id = ?1 AND step = ?2 AND state = 'running' AND attempts = ?3";
// Released after a reversal was recorded: a forward step never runs again.
pub(super) const SETTLE_RELEASE: &str = "UPDATE steps SET state = CASE WHEN direction = 'forward' AND EXISTS \
      (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = ?1) THEN 'cancelled' ELSE 'pending' END, \
    last_error = ?5, lease_until = NULL, updated_at = ?4 \
    WHERE session_id = ?1 AND step = ?2 AND state = 'running' AND attempts = ?3";
pub(super) const SETTLE_FAIL: &str =
    "UPDATE steps SET state = 'failed', last_error = ?5, lease_until = NULL, updated_at = ?4 \
    WHERE session_id = ?1 AND step = ?2 AND state = 'running' AND attempts = ?3";

/// Inserts a purchase in `state`; on conflict, moves it to `state` only from `from`.
const UPSERT_PURCHASE: &str = "INSERT INTO purchases (session_id, state, livemode, created_at, updated_at) \
    VALUES (?1, ?2, ?3, ?4, ?4) \
    ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at \
    WHERE purchases.state IN (SELECT value FROM json_each(?5))";

impl Ledger for D1Ledger {
    async fn open_round(
        &self,
        session_id: &str,
        event: Option<&EventRecord>,
        opening: &Opening<'_>,
        claims: &[ClaimAsk],
        now_ms: u64,
        lease_until: u64,
    ) -> Result<(Claim, RoundResult), LedgerError> {
        self.open_round_batch(session_id, event, opening, claims, now_ms, lease_until)
            .await
    }

    async fn round(
        &self,
        session_id: &str,
        settles: &[Settle],
        claims: &[ClaimAsk],
        event_id: &str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<RoundResult, LedgerError> {
        self.round_batch(session_id, settles, claims, event_id, now_ms, lease_until)
            .await
    }

    fn round_trips(&self) -> u32 {
        self.calls()
    }

    async fn claim_event(&self, r: &EventRecord) -> Result<Claim, LedgerError> {
        const OP: &str = "claim_event";
        let statement = self.claim_statement(OP, r)?;
        self.count();
        let row = crate::settle::settled(&statement.first().map_err(js_failure(OP))?)
            .await
            .map_err(js_failure(OP))?;
        // The row's two fields read directly, not through serde.
        let returned = (!row.is_null() && !row.is_undefined()).then(|| {
            let row: &ClaimRow = row.unchecked_ref();
            (row.kind(), row.object_id())
        });
        claim_of_row(&r.kind, r.object_id.as_deref(), returned)
    }

    async fn await_payment(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        let args = [
            text(session_id),
            text("awaiting_payment"),
            int(i64::from(livemode)),
            int(now_ms as i64),
            text("[]"),
        ];
        self.run("await_payment", UPSERT_PURCHASE, &args)
            .await
            .map(drop)
    }

    async fn payment_failed(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        let args = [
            text(session_id),
            text("payment_failed"),
            int(i64::from(livemode)),
            int(now_ms as i64),
            text(r#"["awaiting_payment"]"#),
        ];
        self.run("payment_failed", UPSERT_PURCHASE, &args)
            .await
            .map(drop)
    }

    async fn record_reversal(
        &self,
        record: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError> {
        Ok(self.record(None, record, rules, now_ms).await?.1)
    }

    async fn claim_reversal(
        &self,
        event: &EventRecord,
        reversal: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(Claim, Vec<String>), LedgerError> {
        self.record(Some(event), reversal, rules, now_ms).await
    }

    async fn reversals_of(&self, session_id: &str) -> Result<Vec<ReversalRecord>, LedgerError> {
        self.reversals(session_id).await
    }

    async fn pin_body(
        &self,
        session_id: &str,
        step: &'static str,
        attempt: u32,
        digests: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError> {
        const SQL: &str = "UPDATE steps SET body_digest = ?4, updated_at = ?5 \
            WHERE session_id = ?1 AND step = ?2 AND state = 'running' AND attempts = ?3 \
            AND body_digest IS NULL";
        let args = [
            text(session_id),
            text(step),
            int(i64::from(attempt)),
            text(digests),
            int(now_ms as i64),
        ];
        Ok(self.run("pin_body", SQL, &args).await? == 1)
    }

    async fn steps_of(&self, session_id: &str) -> Result<Vec<StepRow>, LedgerError> {
        let sql = format!("SELECT {STEP_COLUMNS} FROM steps WHERE session_id = ?1 ORDER BY step");
        let rows: Vec<RawStep> = self.all("steps_of", &sql, &[text(session_id)]).await?;
        Ok(rows.into_iter().filter_map(RawStep::into_row).collect())
    }

    async fn reset_failed(&self, session_id: &str, now_ms: u64) -> Result<u32, LedgerError> {
        const STEPS: &str = "UPDATE steps SET state = 'pending', updated_at = ?2 \
            WHERE session_id = ?1 AND state = 'failed' AND NOT (direction = 'forward' AND EXISTS \
              (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = ?1))";
        const PURCHASE: &str = "UPDATE purchases SET state = 'fulfilling', updated_at = ?2 \
            WHERE session_id = ?1 AND state = 'failed'";
        let args = [text(session_id), int(now_ms as i64)];
        let batch = vec![
            self.statement("reset_failed", STEPS, &args)?,
            self.statement("reset_failed", PURCHASE, &args)?,
        ];
        let results = self.batch("reset_failed", batch).await?;
        let changed = results
            .first()
            .and_then(|r| r.meta().ok().flatten())
            .and_then(|m| m.changes)
            .unwrap_or(0);
        Ok(changed as u32)
    }

    async fn note_failure(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        const SQL: &str =
            "UPDATE steps SET attempts = attempts + 1, last_error = ?2, updated_at = ?3 \
            WHERE session_id = ?1 AND (state = 'pending' OR (state = 'running' AND lease_until <= ?3))";
        self.run(
            "note_failure",
            SQL,
            &[text(session_id), text(error), int(now_ms as i64)],
        )
        .await
        .map(drop)
    }

    async fn fail_waiting(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError> {
        const SQL: &str = "UPDATE steps SET state = 'failed', last_error = ?2, updated_at = ?3 \
            WHERE session_id = ?1 AND (state = 'pending' OR (state = 'running' AND lease_until <= ?3)) \
            RETURNING step";
        #[derive(Deserialize)]
        struct Failed {
            step: String,
        }
        let rows: Vec<Failed> = self
            .all(
                "fail_waiting",
                SQL,
                &[text(session_id), text(error), int(now_ms as i64)],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.step).collect())
    }

    async fn cursor(&self, name: &'static str) -> Result<Option<i64>, LedgerError> {
        #[derive(Deserialize)]
        struct Row {
            value: f64,
        }
        let row: Option<Row> = self
            .first(
                "cursor",
                "SELECT value FROM cursors WHERE name = ?1",
                &[text(name)],
            )
            .await?;
        Ok(row.map(|r| r.value as i64))
    }

    async fn advance_cursor(
        &self,
        name: &'static str,
        value: i64,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        const SQL: &str = "INSERT INTO cursors (name, value, updated_at) VALUES (?1, ?2, ?3) \
            ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at \
            WHERE excluded.value > cursors.value";
        let args = [text(name), int(value), int(now_ms as i64)];
        self.run("advance_cursor", SQL, &args).await.map(drop)
    }

    async fn prune_events(&self, before_ms: u64, limit: u32) -> Result<u32, LedgerError> {
        const SQL: &str = "DELETE FROM events WHERE id IN (SELECT e.id FROM events e \
            WHERE e.received_at < ?1 AND NOT EXISTS (SELECT 1 FROM purchases p \
              WHERE p.session_id = e.object_id AND p.state IN ('awaiting_payment', 'fulfilling', 'failed')) \
            LIMIT ?2)";
        let args = [int(before_ms as i64), int(i64::from(limit))];
        Ok(self.run("prune_events", SQL, &args).await? as u32)
    }

    async fn stalled_sessions(
        &self,
        now_ms: u64,
        idle_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<String>, LedgerError> {
        const SQL: &str = "SELECT session_id FROM steps \
            WHERE (state = 'pending' AND updated_at < ?2) OR (state = 'running' AND lease_until <= ?1) \
            GROUP BY session_id ORDER BY MIN(updated_at) LIMIT ?3";
        let args = [
            int(now_ms as i64),
            int(idle_before_ms as i64),
            int(i64::from(limit)),
        ];
        let rows: Vec<SessionOnly> = self.all("stalled_sessions", SQL, &args).await?;
        Ok(rows.into_iter().map(|r| r.session_id).collect())
    }

    async fn finish_purchase(
        &self,
        session_id: &str,
        now_ms: u64,
    ) -> Result<Option<PurchaseState>, LedgerError> {
        const SQL: &str = "UPDATE purchases SET updated_at = ?2, state = CASE \
              WHEN state IN ('refunded', 'disputed', 'cancelled') THEN state \
              WHEN EXISTS (SELECT 1 FROM steps WHERE session_id = ?1 AND state = 'failed') THEN 'failed' \
              WHEN NOT EXISTS (SELECT 1 FROM steps WHERE session_id = ?1 AND state <> 'done') THEN 'fulfilled' \
              ELSE 'fulfilling' END \
            WHERE session_id = ?1 AND state IN ('fulfilling', 'failed', 'fulfilled', 'refunded', 'disputed', 'cancelled') \
            RETURNING state";
        let row: Option<StateOnly> = self
            .first(
                "finish_purchase",
                SQL,
                &[text(session_id), int(now_ms as i64)],
            )
            .await?;
        Ok(row.and_then(|r| PurchaseState::parse(&r.state)))
    }
}
