//! The D1 statements of a delivery's rounds ([`Ledger::open_round`], [`Ledger::round`]):
//! each round is one batch, so one round trip and one transaction, whatever it holds.
//!
//! A delivery's first round claims its event and opens its purchase in the same
//! transaction. Every statement that writes for the event is guarded by the event row
//! as stored (`?1` the session, `?2` the event id, `?3` its type): an id already
//! recorded for another object (a conflict) opens and takes nothing, as if the batch
//! stopped after the claim. Later rounds pass no event, and the guard holds.

use stripe_edge_core::ports::ledger::{
    Claim, ClaimAsk, EventRecord, LedgerError, Opening, PurchaseState, RoundResult, Settle,
    Settlement, StepClaim,
};
use worker::wasm_bindgen::JsValue;
use worker::{D1PreparedStatement, D1Result};

use super::ledger::{claim_of, Claimed, RawStep, StateOnly, StoredEvent, STEP_COLUMNS};
use super::{failure, int, opt_text, text, D1Ledger};

/// True when no event is given, or the event as stored is this one.
const GUARD: &str =
    "(?2 IS NULL OR EXISTS (SELECT 1 FROM events WHERE id = ?2 AND type = ?3 AND object_id = ?1))";

/// A paid purchase, or one waiting for (or refused) its payment, becomes `?4`.
const PURCHASE: &str = "INSERT INTO purchases (session_id, state, livemode, created_at, updated_at) \
    SELECT ?1, ?4, ?5, ?6, ?6 WHERE {GUARD} \
    ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at \
    WHERE purchases.state IN ('awaiting_payment', 'payment_failed')";

/// The lazy backfill of payment ids: written where none is stored, never overwritten.
const REFS: &str = "UPDATE purchases SET payment_intent = COALESCE(payment_intent, ?4), \
    subscription = COALESCE(subscription, ?5) WHERE session_id = ?1 AND {GUARD} \
    AND ((payment_intent IS NULL AND ?4 IS NOT NULL) OR (subscription IS NULL AND ?5 IS NOT NULL))";

/// A step, unless present; with `?7 = 1`, only while the purchase has no step yet.
const STEP: &str =
    "INSERT INTO steps (session_id, step, event_id, state, attempts, created_at, updated_at) \
    SELECT ?1, ?4, ?5, 'pending', 0, ?6, ?6 WHERE {GUARD} \
    AND (?7 = 0 OR NOT EXISTS (SELECT 1 FROM steps WHERE session_id = ?1)) \
    ON CONFLICT (session_id, step) DO NOTHING";

/// Takes a step: pending, or running with a lease that ran out; a
/// forward step of a purchase with a reversal is never taken from pending; with `?9`,
/// only once that step is neither pending nor running. Keeps the first body's digests
/// `?8` when the step holds none and was opened by `?7`.
const CLAIM: &str = "UPDATE steps SET state = 'running', attempts = attempts + 1, \
    lease_until = ?5, updated_at = ?6, \
    body_digest = CASE WHEN body_digest IS NULL AND event_id = ?7 THEN ?8 ELSE body_digest END \
    WHERE session_id = ?1 AND step = ?4 AND {GUARD} \
    AND ((state = 'pending' AND (direction = 'reverse' OR NOT EXISTS \
           (SELECT 1 FROM purchase_reversals pr WHERE pr.session_id = ?1))) \
         OR (state = 'running' AND lease_until <= ?6)) \
    AND (?9 IS NULL OR NOT EXISTS (SELECT 1 FROM steps a WHERE a.session_id = ?1 AND a.step = ?9 \
         AND a.state IN ('pending', 'running'))) \
    RETURNING attempts, event_id, body_digest";

/// The purchase's state from its steps (as `finish_purchase`), written only when it
/// changes: a round that finds everything settled writes nothing here.
const DERIVE: &str = "UPDATE purchases SET updated_at = ?2, state = {STATE} \
    WHERE session_id = ?1 AND state IN ('fulfilling', 'failed', 'fulfilled') AND state <> {STATE}";
const DERIVED_STATE: &str = "(CASE \
    WHEN EXISTS (SELECT 1 FROM steps WHERE session_id = ?1 AND state = 'failed') THEN 'failed' \
    WHEN NOT EXISTS (SELECT 1 FROM steps WHERE session_id = ?1 AND state <> 'done') THEN 'fulfilled' \
    ELSE 'fulfilling' END)";

const STATE: &str = "SELECT state FROM purchases WHERE session_id = ?1";

/// The guard's three arguments: the session, and the event's id and type (or NULLs).
fn guard_args(session_id: &str, event: Option<&EventRecord>) -> [JsValue; 3] {
    [
        text(session_id),
        opt_text(event.map(|e| e.id.as_str())),
        opt_text(event.map(|e| e.kind.as_str())),
    ]
}

impl D1Ledger {
    pub(super) async fn open_round_batch(
        &self,
        session_id: &str,
        event: Option<&EventRecord>,
        opening: &Opening<'_>,
        claims: &[ClaimAsk],
        now_ms: u64,
        lease_until: u64,
    ) -> Result<(Claim, RoundResult), LedgerError> {
        const OP: &str = "open_round";
        let now = int(now_ms as i64);
        let [g1, g2, g3] = guard_args(session_id, event);
        let mut batch = Vec::new();
        if let Some(r) = event {
            batch.push(self.claim_event_statement(OP, r)?);
        }
        let state = if opening.steps.is_empty() {
            "nothing_to_fulfil"
        } else {
            "fulfilling"
        };
        let guarded = |sql: &str| sql.replace("{GUARD}", GUARD);
        let purchase = [
            g1.clone(),
            g2.clone(),
            g3.clone(),
            text(state),
            int(i64::from(opening.livemode)),
            now.clone(),
        ];
        batch.push(self.statement(OP, &guarded(PURCHASE), &purchase)?);
        let refs = [
            g1.clone(),
            g2.clone(),
            g3.clone(),
            opt_text(opening.refs.payment_intent.as_deref()),
            opt_text(opening.refs.subscription.as_deref()),
        ];
        batch.push(self.statement(OP, &guarded(REFS), &refs)?);
        // Steps that join only a new purchase go first, before the others make it known.
        let step_sql = guarded(STEP);
        let (only_new, others): (Vec<_>, Vec<_>) =
            opening.steps.iter().partition(|(_, only_new)| *only_new);
        for &(name, only_new) in only_new.into_iter().chain(others) {
            let args = [
                g1.clone(),
                g2.clone(),
                g3.clone(),
                text(name),
                text(opening.event_id),
                now.clone(),
                int(i64::from(only_new)),
            ];
            batch.push(self.statement(OP, &step_sql, &args)?);
        }
        // A reversal recorded before this purchase arrived: its steps are cancelled in
        // this transaction, before any claim below can take one.
        batch.extend(self.apply_reversals(OP, Some(session_id), None, opening.rules, now_ms)?);
        let tail = self.round_statements(
            OP,
            [g1, g2, g3],
            &[],
            claims,
            opening.event_id,
            now_ms,
            lease_until,
        )?;
        let tail_len = tail.len();
        batch.extend(tail);
        let results = self.batch(OP, batch).await?;
        let claim = match event {
            None => Claim::New,
            Some(r) => {
                let returned: Vec<StoredEvent> = results[0].results().map_err(failure(OP))?;
                claim_of(r, returned.into_iter().next())
            }
        };
        if claim == Claim::Conflict {
            return Ok((claim, RoundResult::default()));
        }
        let round = read_round(&results[results.len() - tail_len..], 0, claims.len())?;
        Ok((claim, round))
    }

    pub(super) async fn round_batch(
        &self,
        session_id: &str,
        settles: &[Settle],
        claims: &[ClaimAsk],
        event_id: &str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<RoundResult, LedgerError> {
        let guard = guard_args(session_id, None);
        let batch = self.round_statements(
            "round",
            guard,
            settles,
            claims,
            event_id,
            now_ms,
            lease_until,
        )?;
        let results = self.batch("round", batch).await?;
        read_round(&results, settles.len(), claims.len())
    }

    /// Settles, claims, the derived state, and the reads: the tail of every round.
    #[allow(clippy::too_many_arguments)]
    fn round_statements(
        &self,
        op: &'static str,
        [g1, g2, g3]: [JsValue; 3],
        settles: &[Settle],
        claims: &[ClaimAsk],
        event_id: &str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<Vec<D1PreparedStatement>, LedgerError> {
        let now = int(now_ms as i64);
        let mut batch = Vec::new();
        for s in settles {
            let (sql, value) = match &s.settlement {
                Settlement::Done(result) => (super::ledger::SETTLE_DONE, result),
                Settlement::Release(error) => (super::ledger::SETTLE_RELEASE, error),
                Settlement::Fail(error) => (super::ledger::SETTLE_FAIL, error),
            };
            let args = [
                g1.clone(),
                text(s.step),
                int(i64::from(s.attempt)),
                now.clone(),
                text(value),
            ];
            batch.push(self.statement(op, sql, &args)?);
        }
        let claim_sql = CLAIM.replace("{GUARD}", GUARD);
        for ask in claims {
            let args = [
                g1.clone(),
                g2.clone(),
                g3.clone(),
                text(ask.step),
                int(lease_until as i64),
                now.clone(),
                text(event_id),
                opt_text(ask.first_body.as_deref()),
                opt_text(ask.after),
            ];
            batch.push(self.statement(op, &claim_sql, &args)?);
        }
        let derive = DERIVE.replace("{STATE}", DERIVED_STATE);
        batch.push(self.statement(op, &derive, &[g1.clone(), now])?);
        let steps = format!("SELECT {STEP_COLUMNS} FROM steps WHERE session_id = ?1 ORDER BY step");
        batch.push(self.statement(op, &steps, std::slice::from_ref(&g1))?);
        batch.push(self.statement(op, STATE, &[g1])?);
        Ok(batch)
    }
}

/// A round's results: `settles` settle results, `claims` claim results, the derive,
/// the steps, the state.
fn read_round(
    results: &[D1Result],
    settles: usize,
    claims: usize,
) -> Result<RoundResult, LedgerError> {
    const OP: &str = "round";
    let mut round = RoundResult::default();
    for r in &results[..settles] {
        let changes = r
            .meta()
            .map_err(failure(OP))?
            .and_then(|m| m.changes)
            .unwrap_or(0);
        round.settled.push(changes == 1);
    }
    for r in &results[settles..settles + claims] {
        let rows: Vec<Claimed> = r.results().map_err(failure(OP))?;
        round
            .claimed
            .push(rows.into_iter().next().map(|c| StepClaim {
                attempt: c.attempts as u32,
                event_id: c.event_id,
                body_digest: c.body_digest,
            }));
    }
    let reads = &results[settles + claims + 1..];
    let steps: Vec<RawStep> = reads[0].results().map_err(failure(OP))?;
    round.steps = steps.into_iter().filter_map(RawStep::into_row).collect();
    let state: Vec<StateOnly> = reads[1].results().map_err(failure(OP))?;
    round.state = state.first().and_then(|s| PurchaseState::parse(&s.state));
    Ok(round)
}
