//! An in-memory ledger with the same conditional transitions as the D1 statements,
//! for native tests of the webhook handler and the fulfilment engine.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use crate::ports::ledger::{
    Claim, ClaimAsk, EventRecord, Ledger, LedgerError, Opening, PaymentRefs, PurchaseState,
    ReversalRecord, RoundResult, Settle, Settlement, StepClaim, StepRow, StepState, TakeBackRule,
};
use crate::ports::ops_store::{ListQuery, OpsStore, StateFilter};
use crate::ports::orders::{OrderRecord, OrderStep, OrderStore};

#[derive(Debug, Default)]
pub struct MemoryLedger {
    pub events: RefCell<BTreeMap<String, EventRecord>>,
    pub purchases: RefCell<BTreeMap<String, PurchaseState>>,
    pub steps: RefCell<BTreeMap<(String, &'static str), StepRow>>,
    /// `steps.body_digest`, by step.
    pub body_digests: RefCell<BTreeMap<(String, &'static str), String>>,
    pub cursors: RefCell<BTreeMap<&'static str, i64>>,
    /// Per purchase: livemode, created_at, updated_at (what the ops API lists).
    pub purchase_times: RefCell<BTreeMap<String, (bool, u64, u64)>>,
    /// When set, every call fails as an unavailable database would.
    pub unavailable: Cell<bool>,
    /// How many times [`OrderStore::order`] was read (the success page's lookups).
    pub order_reads: Cell<u32>,
    /// Per purchase: its PaymentIntent and Subscription (`purchases.payment_intent`, …).
    pub refs: RefCell<BTreeMap<String, PaymentRefs>>,
    /// The `reversals` table, in insertion order.
    pub reversals: RefCell<Vec<ReversalRecord>>,
    /// Steps inserted as take-back steps (`steps.direction = 'reverse'`).
    pub reverse_steps: RefCell<BTreeSet<(String, String)>>,
    /// Round trips made: one per port call, a round ([`Ledger::open_round`],
    /// [`Ledger::round`]) counting once, as the D1 adapter's batch does.
    pub calls: Cell<u32>,
    /// Inside a round: its statements are not counted again.
    batching: Cell<bool>,
}

impl MemoryLedger {
    /// Runs `statements` as one batch would: one round trip counted (after the same
    /// availability check), the single statements inside it not.
    async fn batched<T>(
        &self,
        operation: &'static str,
        statements: impl std::future::Future<Output = Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
        self.check(operation)?;
        let outer = self.batching.replace(true);
        let result = statements.await;
        self.batching.set(outer);
        result
    }

    fn check(&self, operation: &'static str) -> Result<(), LedgerError> {
        if !self.batching.get() {
            self.calls.set(self.calls.get() + 1);
        }
        if self.unavailable.get() {
            return Err(LedgerError {
                operation,
                detail: "D1_ERROR: unavailable".into(),
            });
        }
        Ok(())
    }

    fn upsert_purchase(&self, session_id: &str, state: PurchaseState, from: &[PurchaseState]) {
        let mut purchases = self.purchases.borrow_mut();
        match purchases.get_mut(session_id) {
            Some(current) if from.contains(current) => *current = state,
            Some(_) => {}
            None => {
                purchases.insert(session_id.to_string(), state);
            }
        }
    }

    /// A purchase as the ops API shows it.
    fn purchase_json(&self, session_id: &str) -> Option<Value> {
        let (livemode, created, updated) = self
            .purchase_times
            .borrow()
            .get(session_id)
            .copied()
            .unwrap_or_default();
        self.purchase(session_id).map(|state| {
            json!({
                "session_id": session_id, "state": state.as_str(),
                "livemode": u8::from(livemode), "created_at": created, "updated_at": updated,
            })
        })
    }

    /// Records when a purchase was written (and its livemode when known).
    fn touch(&self, session_id: &str, livemode: Option<bool>, now_ms: u64) {
        let mut times = self.purchase_times.borrow_mut();
        let entry = times
            .entry(session_id.to_string())
            .or_insert((false, now_ms, now_ms));
        if let Some(livemode) = livemode {
            entry.0 = livemode;
        }
        entry.2 = now_ms;
    }

    /// The reversals that take back, recorded against the purchase's ids, oldest first
    /// (the `purchase_reversals` view).
    fn taking_back(&self, session_id: &str) -> Vec<ReversalRecord> {
        let refs = self
            .refs
            .borrow()
            .get(session_id)
            .cloned()
            .unwrap_or_default();
        let mut rows: Vec<ReversalRecord> = self
            .reversals
            .borrow()
            .iter()
            .filter(|r| r.takes_back_as.is_some())
            .filter(|r| {
                Some(&r.reference) == refs.payment_intent.as_ref()
                    || Some(&r.reference) == refs.subscription.as_ref()
            })
            .cloned()
            .collect();
        rows.sort_by(|a, b| (a.created_at_ms, &a.event_id).cmp(&(b.created_at_ms, &b.event_id)));
        rows
    }

    fn is_reverse(&self, session_id: &str, step: &str) -> bool {
        self.reverse_steps
            .borrow()
            .contains(&(session_id.to_string(), step.to_string()))
    }

    /// What `record_reversal` and `open_purchase` apply, as their D1 statements do.
    fn apply_reversals(&self, session_id: &str, rules: &[TakeBackRule], now_ms: u64) {
        let reversals = self.taking_back(session_id);
        let Some(first) = reversals.first() else {
            return;
        };
        let mut steps = self.steps.borrow_mut();
        for ((id, name), row) in steps.iter_mut() {
            let forward = !self.is_reverse(id, name);
            if id == session_id
                && forward
                && matches!(row.state, StepState::Pending | StepState::Failed)
            {
                row.state = StepState::Cancelled;
                row.lease_until = None;
                row.updated_at = now_ms;
            }
        }
        for rule in rules {
            let started = steps
                .get(&(session_id.to_string(), rule.forward))
                .is_some_and(|r| matches!(r.state, StepState::Running | StepState::Done));
            let asked = reversals
                .iter()
                .find(|r| r.takes_back_as.is_some_and(|s| rule.on.contains(&s)));
            let (true, Some(asked)) = (started, asked) else {
                continue;
            };
            let key = (session_id.to_string(), rule.reverse);
            if let std::collections::btree_map::Entry::Vacant(slot) = steps.entry(key) {
                slot.insert(pending_row(rule.reverse, &asked.event_id, now_ms));
                self.reverse_steps
                    .borrow_mut()
                    .insert((session_id.to_string(), rule.reverse.to_string()));
            }
        }
        drop(steps);
        let state = first.takes_back_as.unwrap_or(PurchaseState::Refunded);
        let mut purchases = self.purchases.borrow_mut();
        if let Some(current) = purchases.get_mut(session_id) {
            if !current.is_reversed() {
                *current = state;
                drop(purchases);
                self.touch(session_id, None, now_ms);
            }
        }
    }

    pub fn purchase(&self, session_id: &str) -> Option<PurchaseState> {
        self.purchases.borrow().get(session_id).copied()
    }

    pub fn step_row(&self, session_id: &str, step: &'static str) -> Option<StepRow> {
        self.steps
            .borrow()
            .get(&(session_id.to_string(), step))
            .cloned()
    }
}

/// The single statements the D1 adapter batches, one call each: the in-memory ledger's
/// own primitives, which its [`Ledger::open_round`] and [`Ledger::round`] compose in the
/// batches' order, and which tests call directly.
impl MemoryLedger {
    /// Opens a paid purchase with its steps, each inserted unless present, so every
    /// event about the session and every redelivery may call it. With no steps the
    /// purchase is recorded as nothing to fulfil. Without payment ids or take-back
    /// rules: see [`MemoryLedger::open_purchase`].
    pub async fn open_fulfilment(
        &self,
        session_id: &str,
        livemode: bool,
        event_id: &str,
        steps: &[&'static str],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        let refs = PaymentRefs::default();
        self.open_purchase(session_id, livemode, event_id, steps, &refs, &[], now_ms)
            .await
    }
    /// The purchase's state, `None` when the ledger does not hold it.
    pub async fn purchase_state(
        &self,
        session_id: &str,
    ) -> Result<Option<PurchaseState>, LedgerError> {
        self.check("purchase_state")?;
        Ok(self.purchase(session_id))
    }

    /// [`MemoryLedger::open_fulfilment`], and in the same transaction: keeps the purchase's
    /// payment ids (only where none is stored yet: the lazy backfill), and applies any
    /// reversal recorded against them (see [`Ledger::record_reversal`]), so a purchase
    /// that arrives after its refund never runs a step.
    #[allow(clippy::too_many_arguments)]
    pub async fn open_purchase(
        &self,
        session_id: &str,
        livemode: bool,
        event_id: &str,
        steps: &[&'static str],
        refs: &PaymentRefs,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.check("open_fulfilment")?;
        {
            let mut all = self.refs.borrow_mut();
            let stored = all.entry(session_id.to_string()).or_default();
            if stored.payment_intent.is_none() {
                stored.payment_intent = refs.payment_intent.clone();
            }
            if stored.subscription.is_none() {
                stored.subscription = refs.subscription.clone();
            }
        }
        self.touch(session_id, Some(livemode), now_ms);
        let state = if steps.is_empty() {
            PurchaseState::NothingToFulfil
        } else {
            PurchaseState::Fulfilling
        };
        self.upsert_purchase(
            session_id,
            state,
            &[PurchaseState::AwaitingPayment, PurchaseState::PaymentFailed],
        );
        let mut rows = self.steps.borrow_mut();
        for step in steps {
            rows.entry((session_id.to_string(), step))
                .or_insert_with(|| pending_row(step, event_id, now_ms));
        }
        drop(rows);
        self.apply_reversals(session_id, rules, now_ms);
        Ok(())
    }

    /// Takes a step that is pending, or running with a lease that has run out; `None`
    /// when the step is not claimable. A forward step of a purchase with a reversal
    /// that takes back is never taken from pending (a step already running is: it
    /// finishes, and is then taken back).
    pub async fn claim_step(
        &self,
        session_id: &str,
        step: &'static str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<Option<StepClaim>, LedgerError> {
        self.check("claim_step")?;
        let mut rows = self.steps.borrow_mut();
        let Some(row) = rows.get_mut(&(session_id.to_string(), step)) else {
            return Ok(None);
        };
        let expired =
            row.state == StepState::Running && row.lease_until.is_some_and(|l| l <= now_ms);
        if row.state != StepState::Pending && !expired {
            return Ok(None);
        }
        let reversed =
            !self.is_reverse(session_id, step) && !self.taking_back(session_id).is_empty();
        if row.state == StepState::Pending && reversed {
            return Ok(None);
        }
        row.state = StepState::Running;
        row.attempts += 1;
        row.lease_until = Some(lease_until);
        row.updated_at = now_ms;
        Ok(Some(StepClaim {
            attempt: row.attempts,
            event_id: row.event_id.clone(),
            body_digest: self
                .body_digests
                .borrow()
                .get(&(session_id.to_string(), step))
                .cloned(),
        }))
    }

    /// One step's row, `None` when the ledger does not hold it.
    pub async fn step(
        &self,
        session_id: &str,
        step: &'static str,
    ) -> Result<Option<StepRow>, LedgerError> {
        self.check("step")?;
        Ok(self.step_row(session_id, step))
    }

    /// Ends an attempt, only if it is still the current one (`attempts = attempt`):
    /// a holder whose lease was taken over cannot overwrite the new holder. Returns
    /// whether the row changed.
    pub async fn settle_step(
        &self,
        session_id: &str,
        step: &'static str,
        attempt: u32,
        settlement: &Settlement,
        now_ms: u64,
    ) -> Result<bool, LedgerError> {
        self.check("settle_step")?;
        let mut rows = self.steps.borrow_mut();
        let Some(row) = rows.get_mut(&(session_id.to_string(), step)) else {
            return Ok(false);
        };
        if row.state != StepState::Running || row.attempts != attempt {
            return Ok(false);
        }
        row.lease_until = None;
        row.updated_at = now_ms;
        match settlement {
            Settlement::Done(result) => {
                row.state = StepState::Done;
                row.result = Some(result.clone());
                row.last_error = None;
            }
            Settlement::Release(error) => {
                let reversed =
                    !self.is_reverse(session_id, step) && !self.taking_back(session_id).is_empty();
                row.state = if reversed {
                    StepState::Cancelled
                } else {
                    StepState::Pending
                };
                row.last_error = Some(error.clone());
            }
            Settlement::Fail(error) => {
                row.state = StepState::Failed;
                row.last_error = Some(error.clone());
            }
        }
        Ok(true)
    }
}

impl Ledger for MemoryLedger {
    async fn open_round(
        &self,
        session_id: &str,
        event: Option<&EventRecord>,
        opening: &Opening<'_>,
        claims: &[ClaimAsk],
        now_ms: u64,
        lease_until: u64,
    ) -> Result<(Claim, RoundResult), LedgerError> {
        // The single statements in the D1 batch's order.
        self.batched("open_round", async {
            let claim = match event {
                Some(record) => self.claim_event(record).await?,
                None => Claim::New,
            };
            if claim == Claim::Conflict {
                return Ok((claim, RoundResult::default()));
            }
            let known = self.steps_of(session_id).await?;
            let steps: Vec<&'static str> = opening
                .steps
                .iter()
                .filter(|(_, only_new)| !only_new || known.is_empty())
                .map(|(name, _)| *name)
                .collect();
            self.open_purchase(
                session_id,
                opening.livemode,
                opening.event_id,
                &steps,
                opening.refs,
                opening.rules,
                now_ms,
            )
            .await?;
            let round = self
                .round(
                    session_id,
                    &[],
                    claims,
                    opening.event_id,
                    now_ms,
                    lease_until,
                )
                .await?;
            Ok((claim, round))
        })
        .await
    }

    async fn claim_reversal(
        &self,
        event: &EventRecord,
        reversal: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(Claim, Vec<String>), LedgerError> {
        self.batched("claim_reversal", async {
            match self.claim_event(event).await? {
                Claim::Conflict => Ok((Claim::Conflict, Vec::new())),
                claim => Ok((claim, self.record_reversal(reversal, rules, now_ms).await?)),
            }
        })
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
        // The single statements in the D1 batch's order.
        self.batched("round", async {
            let mut result = RoundResult::default();
            for s in settles {
                let ok = self
                    .settle_step(session_id, s.step, s.attempt, &s.settlement, now_ms)
                    .await?;
                result.settled.push(ok);
            }
            for ask in claims {
                let waiting = match ask.after {
                    Some(after) => self.step(session_id, after).await?.is_some_and(|r| {
                        matches!(r.state, StepState::Pending | StepState::Running)
                    }),
                    None => false,
                };
                let mut claim = if waiting {
                    None
                } else {
                    self.claim_step(session_id, ask.step, now_ms, lease_until)
                        .await?
                };
                if let (Some(c), Some(digest)) = (claim.as_mut(), ask.first_body.as_ref()) {
                    if c.body_digest.is_none() && c.event_id == event_id {
                        self.pin_body(session_id, ask.step, c.attempt, digest, now_ms)
                            .await?;
                        c.body_digest = Some(digest.clone());
                    }
                }
                result.claimed.push(claim);
            }
            self.finish_purchase(session_id, now_ms).await?;
            result.steps = self.steps_of(session_id).await?;
            result.state = self.purchase_state(session_id).await?;
            Ok(result)
        })
        .await
    }

    fn round_trips(&self) -> u32 {
        self.calls.get()
    }

    async fn claim_event(&self, record: &EventRecord) -> Result<Claim, LedgerError> {
        self.check("claim_event")?;
        let mut events = self.events.borrow_mut();
        if let Some(stored) = events.get(&record.id) {
            let same = stored.kind == record.kind && stored.object_id == record.object_id;
            return Ok(if same { Claim::Seen } else { Claim::Conflict });
        }
        events.insert(record.id.clone(), record.clone());
        Ok(Claim::New)
    }

    async fn await_payment(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.check("await_payment")?;
        self.upsert_purchase(session_id, PurchaseState::AwaitingPayment, &[]);
        self.touch(session_id, Some(livemode), now_ms);
        Ok(())
    }

    async fn payment_failed(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.check("payment_failed")?;
        self.touch(session_id, Some(livemode), now_ms);
        self.upsert_purchase(
            session_id,
            PurchaseState::PaymentFailed,
            &[PurchaseState::AwaitingPayment],
        );
        Ok(())
    }

    async fn record_reversal(
        &self,
        record: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError> {
        self.check("record_reversal")?;
        {
            let mut reversals = self.reversals.borrow_mut();
            if !reversals.iter().any(|r| r.event_id == record.event_id) {
                reversals.push(record.clone());
            }
        }
        let sessions: Vec<String> = self
            .refs
            .borrow()
            .iter()
            .filter(|(id, r)| {
                self.purchases.borrow().contains_key(*id)
                    && (r.payment_intent.as_ref() == Some(&record.reference)
                        || r.subscription.as_ref() == Some(&record.reference))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for session in &sessions {
            self.apply_reversals(session, rules, now_ms);
        }
        Ok(sessions)
    }

    async fn reversals_of(&self, session_id: &str) -> Result<Vec<ReversalRecord>, LedgerError> {
        self.check("reversals_of")?;
        let refs = self
            .refs
            .borrow()
            .get(session_id)
            .cloned()
            .unwrap_or_default();
        let mut rows: Vec<ReversalRecord> = self
            .reversals
            .borrow()
            .iter()
            .filter(|r| {
                Some(&r.reference) == refs.payment_intent.as_ref()
                    || Some(&r.reference) == refs.subscription.as_ref()
            })
            .cloned()
            .collect();
        rows.sort_by(|a, b| (a.created_at_ms, &a.event_id).cmp(&(b.created_at_ms, &b.event_id)));
        Ok(rows)
    }

    async fn pin_body(
        &self,
        session_id: &str,
        step: &'static str,
        attempt: u32,
        digests: &str,
        _now_ms: u64,
    ) -> Result<bool, LedgerError> {
        self.check("pin_body")?;
        let key = (session_id.to_string(), step);
        let holds = self
            .steps
            .borrow()
            .get(&key)
            .is_some_and(|r| r.state == StepState::Running && r.attempts == attempt);
        let mut pinned = self.body_digests.borrow_mut();
        if !holds || pinned.contains_key(&key) {
            return Ok(false);
        }
        pinned.insert(key, digests.to_string());
        Ok(true)
    }

    async fn steps_of(&self, session_id: &str) -> Result<Vec<StepRow>, LedgerError> {
        self.check("steps_of")?;
        Ok(self
            .steps
            .borrow()
            .iter()
            .filter(|((id, _), _)| id == session_id)
            .map(|(_, row)| row.clone())
            .collect())
    }

    async fn reset_failed(&self, session_id: &str, now_ms: u64) -> Result<u32, LedgerError> {
        self.check("reset_failed")?;
        let mut reset = 0;
        let reversed = !self.taking_back(session_id).is_empty();
        for ((id, name), row) in self.steps.borrow_mut().iter_mut() {
            let forward = !self.is_reverse(id, name);
            if id == session_id && row.state == StepState::Failed && !(forward && reversed) {
                row.state = StepState::Pending;
                row.updated_at = now_ms;
                reset += 1;
            }
        }
        // An UPDATE, as in D1: an unknown purchase is not created.
        if let Some(state) = self.purchases.borrow_mut().get_mut(session_id) {
            if *state == PurchaseState::Failed {
                *state = PurchaseState::Fulfilling;
            }
        }
        if self.purchase(session_id).is_some() {
            self.touch(session_id, None, now_ms);
        }
        Ok(reset)
    }

    async fn note_failure(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.check("note_failure")?;
        for ((id, _), row) in self.steps.borrow_mut().iter_mut() {
            let dead_holder =
                row.state == StepState::Running && row.lease_until.is_some_and(|l| l <= now_ms);
            if id == session_id && (row.state == StepState::Pending || dead_holder) {
                row.attempts += 1;
                row.last_error = Some(error.to_string());
                row.updated_at = now_ms;
            }
        }
        Ok(())
    }

    async fn fail_waiting(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError> {
        self.check("fail_waiting")?;
        let mut failed = Vec::new();
        for ((id, step), row) in self.steps.borrow_mut().iter_mut() {
            let dead_holder =
                row.state == StepState::Running && row.lease_until.is_some_and(|l| l <= now_ms);
            if id == session_id && (row.state == StepState::Pending || dead_holder) {
                row.state = StepState::Failed;
                row.last_error = Some(error.to_string());
                row.updated_at = now_ms;
                failed.push(step.to_string());
            }
        }
        Ok(failed)
    }

    async fn cursor(&self, name: &'static str) -> Result<Option<i64>, LedgerError> {
        self.check("cursor")?;
        Ok(self.cursors.borrow().get(name).copied())
    }

    async fn advance_cursor(
        &self,
        name: &'static str,
        value: i64,
        _now_ms: u64,
    ) -> Result<(), LedgerError> {
        self.check("advance_cursor")?;
        let mut cursors = self.cursors.borrow_mut();
        let current = cursors.entry(name).or_insert(value);
        *current = (*current).max(value);
        Ok(())
    }

    async fn prune_events(&self, before_ms: u64, limit: u32) -> Result<u32, LedgerError> {
        self.check("prune_events")?;
        let unfinished = |id: &Option<String>| {
            id.as_deref()
                .and_then(|id| self.purchase(id))
                .is_some_and(|state| {
                    matches!(
                        state,
                        PurchaseState::AwaitingPayment
                            | PurchaseState::Fulfilling
                            | PurchaseState::Failed
                    )
                })
        };
        let doomed: Vec<String> = self
            .events
            .borrow()
            .values()
            .filter(|e| e.received_at_ms < before_ms && !unfinished(&e.object_id))
            .map(|e| e.id.clone())
            .take(limit as usize)
            .collect();
        let mut events = self.events.borrow_mut();
        for id in &doomed {
            events.remove(id);
        }
        Ok(doomed.len() as u32)
    }

    async fn stalled_sessions(
        &self,
        now_ms: u64,
        idle_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<String>, LedgerError> {
        self.check("stalled_sessions")?;
        let mut stalled: Vec<(u64, String)> = self
            .steps
            .borrow()
            .iter()
            .filter(|(_, row)| match row.state {
                StepState::Pending => row.updated_at < idle_before_ms,
                StepState::Running => row.lease_until.is_some_and(|l| l <= now_ms),
                _ => false,
            })
            .map(|((id, _), row)| (row.updated_at, id.clone()))
            .collect();
        stalled.sort();
        let mut sessions: Vec<String> = Vec::new();
        for (_, id) in stalled {
            if !sessions.contains(&id) {
                sessions.push(id);
            }
        }
        sessions.truncate(limit as usize);
        Ok(sessions)
    }

    async fn finish_purchase(
        &self,
        session_id: &str,
        now_ms: u64,
    ) -> Result<Option<PurchaseState>, LedgerError> {
        self.check("finish_purchase")?;
        if self.purchase(session_id).is_some() {
            self.touch(session_id, None, now_ms);
        }
        let states: Vec<StepState> = self
            .steps
            .borrow()
            .iter()
            .filter(|((id, _), _)| id == session_id)
            .map(|(_, row)| row.state)
            .collect();
        let mut purchases = self.purchases.borrow_mut();
        let Some(current) = purchases.get_mut(session_id) else {
            return Ok(None);
        };
        if current.is_reversed() {
            return Ok(Some(*current));
        }
        if !matches!(
            current,
            PurchaseState::Fulfilling | PurchaseState::Failed | PurchaseState::Fulfilled
        ) {
            return Ok(None);
        }
        *current = if states.contains(&StepState::Failed) {
            PurchaseState::Failed
        } else if states.iter().all(|s| *s == StepState::Done) {
            PurchaseState::Fulfilled
        } else {
            PurchaseState::Fulfilling
        };
        Ok(Some(*current))
    }
}

/// The ops API's reads over the same maps, with the D1 adapter's row shapes (SQLite
/// booleans are 0 or 1).
impl OpsStore for MemoryLedger {
    async fn event_row(&self, event_id: &str) -> Result<Option<Value>, LedgerError> {
        self.check("admin_event")?;
        Ok(self.events.borrow().get(event_id).map(|e| {
            json!({
                "id": e.id, "type": e.kind, "livemode": u8::from(e.livemode),
                "api_version": e.api_version, "created": e.created, "object_id": e.object_id,
                "disposition": e.disposition, "received_at": e.received_at_ms,
            })
        }))
    }

    async fn purchase_row(&self, session_id: &str) -> Result<Option<Value>, LedgerError> {
        self.check("admin_purchase")?;
        Ok(self.purchase_json(session_id))
    }

    async fn mapping(&self, session_id: &str) -> Result<Option<Value>, LedgerError> {
        self.check("admin_purchase")?;
        if self.purchase(session_id).is_none() {
            return Ok(None);
        }
        let done = |step| {
            self.step_row(session_id, step)
                .filter(|r| r.state == StepState::Done)
                .and_then(|r| r.result)
        };
        Ok(Some(
            json!({"license_key": done("license"), "shipment_id": done("shipping")}),
        ))
    }

    async fn events_of(&self, session_id: &str) -> Result<Vec<Value>, LedgerError> {
        self.check("admin_purchase")?;
        let mut events: Vec<&EventRecord> = Vec::new();
        let all = self.events.borrow();
        events.extend(
            all.values()
                .filter(|e| e.object_id.as_deref() == Some(session_id)),
        );
        events.sort_by_key(|e| e.received_at_ms);
        Ok(events
            .iter()
            .map(|e| json!({"id": e.id, "type": e.kind, "disposition": e.disposition, "received_at": e.received_at_ms}))
            .collect())
    }

    async fn list_purchases(
        &self,
        query: &ListQuery,
        stuck_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<Value>, LedgerError> {
        self.check("admin_list")?;
        let times = self.purchase_times.borrow();
        let mut rows: Vec<(u64, String)> = Vec::new();
        for (id, state) in self.purchases.borrow().iter() {
            let updated = times.get(id).map_or(0, |t| t.2);
            let stuck = *state == PurchaseState::Fulfilling && updated < stuck_before_ms;
            let failed = *state == PurchaseState::Failed;
            let keep = match query.filter {
                StateFilter::FailedOrStuck => failed || stuck,
                StateFilter::Failed => failed,
                StateFilter::Stuck => stuck,
                StateFilter::State(wanted) => *state == wanted,
            };
            let before = match &query.before {
                Some((at, before_id)) => updated < *at || (updated == *at && id < before_id),
                None => true,
            };
            if keep && before {
                rows.push((updated, id.clone()));
            }
        }
        rows.sort_by(|a, b| b.cmp(a));
        rows.truncate(limit as usize);
        let mut out = Vec::new();
        for (_, id) in rows {
            out.extend(self.purchase_json(&id));
        }
        Ok(out)
    }
}

/// The success page's read over the same maps: the purchase and its steps, by name.
impl OrderStore for MemoryLedger {
    async fn order(&self, session_id: &str) -> Result<Option<OrderRecord>, LedgerError> {
        self.check("order")?;
        self.order_reads.set(self.order_reads.get() + 1);
        let Some(state) = self.purchase(session_id) else {
            return Ok(None);
        };
        let mut steps: Vec<OrderStep> = self
            .steps
            .borrow()
            .iter()
            .filter(|((id, _), _)| id == session_id)
            .map(|((_, name), row)| OrderStep {
                step: name.to_string(),
                state: row.state,
                result: row.result.clone(),
            })
            .collect();
        steps.sort_by(|a, b| a.step.cmp(&b.step));
        Ok(Some(OrderRecord { state, steps }))
    }
}

/// A step's row as opened: pending, never attempted.
fn pending_row(step: &str, event_id: &str, now_ms: u64) -> StepRow {
    StepRow {
        step: step.to_string(),
        event_id: event_id.to_string(),
        state: StepState::Pending,
        lease_until: None,
        attempts: 0,
        last_error: None,
        result: None,
        updated_at: now_ms,
    }
}
