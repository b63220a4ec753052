//! The D1 statements of reversals (migrations/0005_reversals.sql): recording one, and
//! applying every recorded reversal to a purchase, inside the batch (one transaction)
//! of `claim_reversal` (or `record_reversal`) or `open_round`, so whichever of the two
//! comes second sees the other: a purchase is never opened for fulfilment past its refund.

use serde::Deserialize;
use stripe_edge_core::ports::ledger::{
    Claim, EventRecord, LedgerError, PurchaseState, ReversalRecord, TakeBackRule,
};
use worker::D1PreparedStatement;

use super::ledger::{claim_of, StoredEvent};
use super::{int, opt_text, text, D1Ledger};

/// The purchases a statement applies to: `?1` names one session, or `?2` a PaymentIntent
/// or Subscription (the other is NULL).
const TARGET: &str = "(session_id = ?1 OR session_id IN (SELECT session_id FROM purchases \
    WHERE ?2 IS NOT NULL AND (payment_intent = ?2 OR subscription = ?2)))";

/// Forward steps that have not started (pending, or failed for good) never will.
const CANCEL: &str = "UPDATE steps SET state = 'cancelled', lease_until = NULL, updated_at = ?3 \
    WHERE direction = 'forward' AND state IN ('pending', 'failed') AND {TARGET} \
    AND EXISTS (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = steps.session_id)";

/// A take-back step for each rule whose forward step is running or done (a running one
/// finishes first: the engine waits for it), pinned to the first reversal asking for it.
const TAKE_BACK: &str = "INSERT INTO steps \
    (session_id, step, event_id, state, direction, attempts, created_at, updated_at) \
    SELECT f.session_id, json_extract(rule.value, '$.reverse'), \
      (SELECT pr.event_id FROM purchase_reversals pr WHERE pr.session_id = f.session_id \
         AND pr.purchase_state IN (SELECT value FROM json_each(rule.value, '$.on')) \
         ORDER BY pr.created_at, pr.event_id LIMIT 1), \
      'pending', 'reverse', 0, ?3, ?3 \
    FROM steps f, json_each(?4) rule \
    WHERE f.step = json_extract(rule.value, '$.forward') AND f.direction = 'forward' \
      AND f.state IN ('running', 'done') AND (f.session_id = ?1 OR f.session_id IN \
        (SELECT session_id FROM purchases WHERE ?2 IS NOT NULL AND (payment_intent = ?2 OR subscription = ?2))) \
      AND EXISTS (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = f.session_id \
        AND pr.purchase_state IN (SELECT value FROM json_each(rule.value, '$.on'))) \
    ON CONFLICT (session_id, step) DO NOTHING";

/// The purchase takes the state of its first reversal that takes back, once.
const STATE: &str = "UPDATE purchases SET updated_at = ?3, state = \
      (SELECT pr.purchase_state FROM purchase_reversals pr WHERE pr.session_id = purchases.session_id \
       ORDER BY pr.created_at, pr.event_id LIMIT 1) \
    WHERE {TARGET} AND state NOT IN ('refunded', 'disputed', 'cancelled') \
    AND EXISTS (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = purchases.session_id)";

/// `rules` as the JSON `json_each` reads.
fn rules_json(rules: &[TakeBackRule]) -> String {
    let rules: Vec<serde_json::Value> = rules
        .iter()
        .map(|r| {
            let on: Vec<&str> = r.on.iter().map(|s| s.as_str()).collect();
            serde_json::json!({"forward": r.forward, "reverse": r.reverse, "on": on})
        })
        .collect();
    serde_json::Value::from(rules).to_string()
}

#[derive(Deserialize)]
struct RawReversal {
    event_id: String,
    #[serde(rename = "ref")]
    reference: String,
    kind: String,
    purchase_state: Option<String>,
    detail: Option<String>,
    created_at: f64,
}

impl D1Ledger {
    /// The statements applying recorded reversals to one session (`session`) or to the
    /// purchases of one PaymentIntent or Subscription (`reference`).
    pub(super) fn apply_reversals(
        &self,
        operation: &'static str,
        session: Option<&str>,
        reference: Option<&str>,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<Vec<D1PreparedStatement>, LedgerError> {
        let three = [opt_text(session), opt_text(reference), int(now_ms as i64)];
        let four = [
            opt_text(session),
            opt_text(reference),
            int(now_ms as i64),
            text(&rules_json(rules)),
        ];
        Ok(vec![
            self.statement(operation, &CANCEL.replace("{TARGET}", TARGET), &three)?,
            self.statement(operation, TAKE_BACK, &four)?,
            self.statement(operation, &STATE.replace("{TARGET}", TARGET), &three)?,
        ])
    }

    /// Records `r` and applies it, in one batch; with `claim`, that event's claim comes
    /// first in the same transaction and a conflicting id records nothing (the insert
    /// requires the stored event to be this one). Returns the claim (`New` without one)
    /// and the sessions found.
    pub(super) async fn record(
        &self,
        claim: Option<&EventRecord>,
        r: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(Claim, Vec<String>), LedgerError> {
        const INSERT: &str = "INSERT INTO reversals \
            (event_id, ref, kind, purchase_state, detail, created_at) \
            SELECT ?1, ?2, ?3, ?4, ?5, ?6 \
            WHERE ?7 IS NULL OR EXISTS (SELECT 1 FROM events WHERE id = ?1 AND type = ?7 AND object_id IS ?8) \
            ON CONFLICT (event_id) DO NOTHING";
        const FOUND: &str = "SELECT session_id FROM purchases \
            WHERE payment_intent = ?1 OR subscription = ?1 ORDER BY session_id";
        #[derive(Deserialize)]
        struct Found {
            session_id: String,
        }
        let op = if claim.is_some() {
            "claim_reversal"
        } else {
            "record_reversal"
        };
        let args = [
            text(&r.event_id),
            text(&r.reference),
            text(&r.kind),
            opt_text(r.takes_back_as.map(PurchaseState::as_str)),
            opt_text(r.detail.as_deref()),
            int(r.created_at_ms as i64),
            opt_text(claim.map(|c| c.kind.as_str())),
            opt_text(claim.and_then(|c| c.object_id.as_deref())),
        ];
        let mut batch = Vec::new();
        if let Some(event) = claim {
            batch.push(self.claim_event_statement(op, event)?);
        }
        batch.push(self.statement(op, INSERT, &args)?);
        batch.extend(self.apply_reversals(op, None, Some(&r.reference), rules, now_ms)?);
        batch.push(self.statement(op, FOUND, &[text(&r.reference)])?);
        let results = self.batch(op, batch).await?;
        let claimed = match claim {
            None => Claim::New,
            Some(event) => {
                let returned: Vec<StoredEvent> =
                    results[0].results().map_err(super::failure(op))?;
                claim_of(event, returned.into_iter().next())
            }
        };
        if claimed == Claim::Conflict {
            return Ok((claimed, Vec::new()));
        }
        let found: Vec<Found> = results
            .last()
            .map(|r| r.results())
            .transpose()
            .map_err(super::failure(op))?
            .unwrap_or_default();
        Ok((claimed, found.into_iter().map(|f| f.session_id).collect()))
    }

    pub(super) async fn reversals(
        &self,
        session_id: &str,
    ) -> Result<Vec<ReversalRecord>, LedgerError> {
        const SQL: &str = "SELECT r.event_id, r.ref, r.kind, r.purchase_state, r.detail, r.created_at \
            FROM reversals r JOIN purchases p ON r.ref = p.payment_intent OR r.ref = p.subscription \
            WHERE p.session_id = ?1 ORDER BY r.created_at, r.event_id";
        let rows: Vec<RawReversal> = self.all("reversals_of", SQL, &[text(session_id)]).await?;
        Ok(rows
            .into_iter()
            .map(|r| ReversalRecord {
                event_id: r.event_id,
                reference: r.reference,
                kind: r.kind,
                takes_back_as: r.purchase_state.as_deref().and_then(PurchaseState::parse),
                detail: r.detail,
                created_at_ms: r.created_at as u64,
            })
            .collect())
    }
}
