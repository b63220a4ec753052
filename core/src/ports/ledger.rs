//! The ledger port: what this Worker has seen and done (D1 at the edge,
//! `src/d1/ledger.rs`; `testing::MemoryLedger` in native tests).
//!
//! Every write is one conditional SQL statement (insert-or-ignore, or an update guarded
//! by the state it expects), so concurrent deliveries can never both win a claim. D1
//! has no interactive transactions, and a read followed by a write would race.

use std::fmt;

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
    /// The id was already recorded for another object or type: not this event. Stripe
    /// never reuses an id, so this is a forged or corrupted delivery signed with our
    /// secret, or a bug; it must never reach fulfilment.
    Conflict,
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

/// Where a purchase stands; stored in `purchases.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurchaseState {
    AwaitingPayment,
    PaymentFailed,
    Fulfilling,
    Fulfilled,
    Failed,
    NothingToFulfil,
    /// Fully refunded: what was fulfilled is taken back (see `fulfilment::reversal`).
    Refunded,
    /// Charged back (a dispute was opened): taken back unless `REVOKE_ON_DISPUTE=false`.
    Disputed,
    /// Its subscription ended: the license is revoked.
    Cancelled,
}

impl PurchaseState {
    pub const ALL: [PurchaseState; 9] = [
        Self::AwaitingPayment,
        Self::PaymentFailed,
        Self::Fulfilling,
        Self::Fulfilled,
        Self::Failed,
        Self::NothingToFulfil,
        Self::Refunded,
        Self::Disputed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AwaitingPayment => "awaiting_payment",
            Self::PaymentFailed => "payment_failed",
            Self::Fulfilling => "fulfilling",
            Self::Fulfilled => "fulfilled",
            Self::Failed => "failed",
            Self::NothingToFulfil => "nothing_to_fulfil",
            Self::Refunded => "refunded",
            Self::Disputed => "disputed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Refunded, disputed or cancelled: money went back, what was done is taken back.
    pub fn is_reversed(self) -> bool {
        matches!(self, Self::Refunded | Self::Disputed | Self::Cancelled)
    }
}

/// Where a step stands; stored in `steps.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    /// Not started when a reversal was recorded: never runs.
    Cancelled,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Done,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// One row of `steps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRow {
    pub step: String,
    /// The event that opened the step.
    pub event_id: String,
    pub state: StepState,
    pub lease_until: Option<u64>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub result: Option<String>,
    pub updated_at: u64,
}

/// A step this delivery now holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepClaim {
    /// The attempt number: the fencing token for [`Ledger::settle_step`].
    pub attempt: u32,
    /// The event that opened the step; requests are built from it on every attempt.
    pub event_id: String,
    /// `steps.body_digest`: the digests of the first body sent (`fulfilment::first_body`),
    /// `None` before the first call.
    pub body_digest: Option<String>,
}

/// How a claimed step ends this attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Done for good; the upstream's id (license key, shipment id) is kept.
    Done(String),
    /// Back to pending: a later delivery (or retry) runs it again.
    Release(String),
    /// Failed for good: retrying cannot help.
    Fail(String),
}

/// The ids a purchase is found by from later events (`charge.*`, `charge.dispute.*`,
/// `customer.subscription.*`): ids only, from its Checkout Session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentRefs {
    pub payment_intent: Option<String>,
    pub subscription: Option<String>,
}

/// A money-back event as the ledger keeps it (table `reversals`): recorded against the
/// PaymentIntent or Subscription, whether or not its purchase is known yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReversalRecord {
    pub event_id: String,
    /// `pi_…` or `sub_…`.
    pub reference: String,
    /// The event's disposition (`refunded`, `partial_refund`, `dispute_closed`, …).
    pub kind: String,
    /// The state the purchase takes when this reversal takes things back; `None` when
    /// it is only recorded (a partial refund, a dispute outcome, …).
    pub takes_back_as: Option<PurchaseState>,
    /// A short id-like detail (a dispute's status); never customer data.
    pub detail: Option<String>,
    pub created_at_ms: u64,
}

/// Which step takes back which: when a reversal whose state is in `on` is recorded
/// for a purchase whose `forward` step is running or done, the `reverse` step is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TakeBackRule {
    pub forward: &'static str,
    pub reverse: &'static str,
    pub on: &'static [PurchaseState],
}

/// What a delivery asks of the purchase's first round (see [`Ledger::open_round`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opening<'a> {
    pub livemode: bool,
    /// The event that opens the steps (kept in `steps.event_id`).
    pub event_id: &'a str,
    /// The steps, in the plan's order; those marked `only_new` join only a purchase the
    /// ledger does not hold yet (the e-mail: never added to a purchase opened without it).
    pub steps: &'a [(&'static str, bool)],
    pub refs: &'a PaymentRefs,
    pub rules: &'a [TakeBackRule],
}

/// One step this run asks to take (see [`Ledger::claim_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimAsk {
    pub step: &'static str,
    /// Taken only once this step is neither pending nor running (the e-mail waits for
    /// the license it carries).
    pub after: Option<&'static str>,
    /// The digests of the first body, as this run would send it, kept with the claim
    /// when the step holds none yet and was opened by `event_id` (whose body it is).
    pub first_body: Option<String>,
}

/// One attempt this run ends (see [`Ledger::settle_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub step: &'static str,
    pub attempt: u32,
    pub settlement: Settlement,
}

/// What one round did and found, read in the same transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundResult {
    /// Per [`Settle`], in order: whether the attempt was still current.
    pub settled: Vec<bool>,
    /// Per [`ClaimAsk`], in order: the claim, when this run now holds the step.
    pub claimed: Vec<Option<StepClaim>>,
    /// Every step of the purchase after the round, ordered by name.
    pub steps: Vec<StepRow>,
    /// The purchase's state after the round, derived from its steps.
    pub state: Option<PurchaseState>,
}

#[allow(async_fn_in_trait)] // single-threaded Workers runtime: no Send bound wanted
pub trait Ledger {
    /// A delivery's first round trip, one transaction: claims the event (when given);
    /// unless the claim is a [`Claim::Conflict`], opens the purchase as
    /// [`Ledger::open_purchase`] does and takes the steps in `claims`; then derives the
    /// purchase's state and reads it with every step. A duplicate of a settled
    /// purchase, and a delivery that finds every step held, need nothing else.
    ///
    /// The D1 adapter sends it as one batch; this default composes the single
    /// statements (native fakes, where nothing runs concurrently).
    async fn open_round(
        &self,
        session_id: &str,
        event: Option<&EventRecord>,
        opening: &Opening<'_>,
        claims: &[ClaimAsk],
        now_ms: u64,
        lease_until: u64,
    ) -> Result<(Claim, RoundResult), LedgerError> {
        composed_open_round(
            self,
            session_id,
            event,
            opening,
            claims,
            now_ms,
            lease_until,
        )
        .await
    }

    /// A later round trip of a delivery, one transaction: settles `settles`, takes the
    /// steps in `claims` (in order, after the settles, so a step waiting for one just
    /// settled can be taken), then derives the purchase's state and reads it with every
    /// step. `event_id` is the event whose first bodies `claims` carry.
    async fn round(
        &self,
        session_id: &str,
        settles: &[Settle],
        claims: &[ClaimAsk],
        event_id: &str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<RoundResult, LedgerError> {
        composed_round(
            self,
            session_id,
            settles,
            claims,
            event_id,
            now_ms,
            lease_until,
        )
        .await
    }

    /// A money-back delivery's first round trip, one transaction: claims the event and,
    /// unless the claim is a [`Claim::Conflict`], records the reversal as
    /// [`Ledger::record_reversal`] does. Returns the claim and the sessions found.
    ///
    /// The D1 adapter sends it as one batch; this default composes the two calls.
    async fn claim_reversal(
        &self,
        event: &EventRecord,
        reversal: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(Claim, Vec<String>), LedgerError> {
        let claim = self.claim_event(event).await?;
        if claim == Claim::Conflict {
            return Ok((claim, Vec::new()));
        }
        let sessions = self.record_reversal(reversal, rules, now_ms).await?;
        Ok((claim, sessions))
    }

    /// Round trips this ledger has made so far (a batch is one): decision lines carry
    /// the difference over their request as `d1_calls`.
    fn round_trips(&self) -> u32 {
        0
    }

    /// The purchase's state, `None` when the ledger does not hold it.
    async fn purchase_state(&self, session_id: &str) -> Result<Option<PurchaseState>, LedgerError>;

    /// Records the event unless its id is already there, in one statement (D1: an upsert
    /// that does nothing for a seen id and rewrites a conflicting one's row unchanged only
    /// to return it); a known id is [`Claim::Seen`] when its stored type and object are
    /// this event's, [`Claim::Conflict`] otherwise.
    async fn claim_event(&self, record: &EventRecord) -> Result<Claim, LedgerError>;

    /// Records a purchase whose payment is still processing, unless it is already known
    /// (a later state must never go back to waiting).
    async fn await_payment(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Records that the payment failed; only a purchase still waiting for it changes.
    async fn payment_failed(
        &self,
        session_id: &str,
        livemode: bool,
        now_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Opens a paid purchase with its steps, each inserted unless present, so every
    /// event about the session and every redelivery may call it. With no steps the
    /// purchase is recorded as nothing to fulfil. Without payment ids or take-back
    /// rules: the engine calls [`Ledger::open_purchase`].
    async fn open_fulfilment(
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

    /// [`Ledger::open_fulfilment`], and in the same transaction: keeps the purchase's
    /// payment ids (only where none is stored yet: the lazy backfill), and applies any
    /// reversal recorded against them (see [`Ledger::record_reversal`]), so a purchase
    /// that arrives after its refund never runs a step.
    #[allow(clippy::too_many_arguments)]
    async fn open_purchase(
        &self,
        session_id: &str,
        livemode: bool,
        event_id: &str,
        steps: &[&'static str],
        refs: &PaymentRefs,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Records a reversal (once per event id) and, in the same transaction, applies
    /// every reversal that takes back to each purchase found by its reference: forward
    /// steps not started (pending, or failed) become cancelled; a `reverse` step is added
    /// for each rule whose `forward` step is running or done; the purchase takes the
    /// state of its first such reversal. Returns the sessions found (none: recorded
    /// against the reference until the purchase arrives).
    async fn record_reversal(
        &self,
        record: &ReversalRecord,
        rules: &[TakeBackRule],
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError>;

    /// The reversals recorded against a purchase's payment ids, oldest first.
    async fn reversals_of(&self, session_id: &str) -> Result<Vec<ReversalRecord>, LedgerError>;

    /// Takes a step that is pending, or running with a lease that has run out; `None`
    /// when the step is not claimable. A forward step of a purchase with a reversal
    /// that takes back is never taken from pending (a step already running is: it
    /// finishes, and is then taken back).
    async fn claim_step(
        &self,
        session_id: &str,
        step: &'static str,
        now_ms: u64,
        lease_until: u64,
    ) -> Result<Option<StepClaim>, LedgerError>;

    /// Keeps the digests of a step's first body, unless some are kept already; only
    /// while `attempt` holds the step. Returns whether it wrote.
    async fn pin_body(
        &self,
        session_id: &str,
        step: &'static str,
        attempt: u32,
        digests: &str,
        now_ms: u64,
    ) -> Result<bool, LedgerError>;

    async fn step(
        &self,
        session_id: &str,
        step: &'static str,
    ) -> Result<Option<StepRow>, LedgerError>;

    /// Ends an attempt, only if it is still the current one (`attempts = attempt`):
    /// a holder whose lease was taken over cannot overwrite the new holder. Returns
    /// whether the row changed.
    async fn settle_step(
        &self,
        session_id: &str,
        step: &'static str,
        attempt: u32,
        settlement: &Settlement,
        now_ms: u64,
    ) -> Result<bool, LedgerError>;

    /// Every step of a purchase, ordered by name.
    async fn steps_of(&self, session_id: &str) -> Result<Vec<StepRow>, LedgerError>;

    /// Sets the purchase's failed steps back to pending, and a failed purchase back to
    /// fulfilling, so a replay runs them again; done steps are never touched. Returns
    /// how many steps were reset.
    async fn reset_failed(&self, session_id: &str, now_ms: u64) -> Result<u32, LedgerError>;

    /// Sessions with a step left waiting: pending and untouched since `idle_before_ms`,
    /// or running with a lease that ran out. Oldest first, at most `limit`.
    async fn stalled_sessions(
        &self,
        now_ms: u64,
        idle_before_ms: u64,
        limit: u32,
    ) -> Result<Vec<String>, LedgerError>;

    /// Counts a try that could not even claim the steps (the session could not be
    /// fetched) as an attempt of every waiting step (pending, or running with a lease
    /// that ran out), with its error and the time, so the queue's retries end in a
    /// failed step and an alert rather than going unnoticed, and the re-drive moves the
    /// purchase behind the others instead of retrying it first on every run.
    async fn note_failure(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Fails every step of the purchase still waiting once its attempts ran out (queue
    /// mode): pending, or running with a lease that ran out (its holder died). A step
    /// whose holder is still within its lease finishes on its own. Returns their names.
    async fn fail_waiting(
        &self,
        session_id: &str,
        error: &str,
        now_ms: u64,
    ) -> Result<Vec<String>, LedgerError>;

    /// A position kept between scheduled runs (see migrations/0004_cursors.sql).
    async fn cursor(&self, name: &'static str) -> Result<Option<i64>, LedgerError>;

    /// Moves a cursor forward; never back, so overlapping runs cannot regress it.
    async fn advance_cursor(
        &self,
        name: &'static str,
        value: i64,
        now_ms: u64,
    ) -> Result<(), LedgerError>;

    /// Deletes up to `limit` events received before `before_ms`, except those of a
    /// purchase that is not finished (awaiting payment, fulfilling or failed). Purchases
    /// and steps (the license and shipment mappings) are never deleted. Returns the count.
    async fn prune_events(&self, before_ms: u64, limit: u32) -> Result<u32, LedgerError>;

    /// Derives the purchase's state from its steps (failed if any failed, fulfilled when
    /// all are done) and returns it.
    async fn finish_purchase(
        &self,
        session_id: &str,
        now_ms: u64,
    ) -> Result<Option<PurchaseState>, LedgerError>;
}

/// [`Ledger::open_round`] from the single statements, in the same order.
pub async fn composed_open_round<L: Ledger + ?Sized>(
    ledger: &L,
    session_id: &str,
    event: Option<&EventRecord>,
    opening: &Opening<'_>,
    claims: &[ClaimAsk],
    now_ms: u64,
    lease_until: u64,
) -> Result<(Claim, RoundResult), LedgerError> {
    let claim = match event {
        Some(record) => ledger.claim_event(record).await?,
        None => Claim::New,
    };
    if claim == Claim::Conflict {
        return Ok((claim, RoundResult::default()));
    }
    let known = ledger.steps_of(session_id).await?;
    let steps: Vec<&'static str> = opening
        .steps
        .iter()
        .filter(|(_, only_new)| !only_new || known.is_empty())
        .map(|(name, _)| *name)
        .collect();
    ledger
        .open_purchase(
            session_id,
            opening.livemode,
            opening.event_id,
            &steps,
            opening.refs,
            opening.rules,
            now_ms,
        )
        .await?;
    let round = ledger
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
}

/// [`Ledger::round`] from the single statements, in the same order.
pub async fn composed_round<L: Ledger + ?Sized>(
    ledger: &L,
    session_id: &str,
    settles: &[Settle],
    claims: &[ClaimAsk],
    event_id: &str,
    now_ms: u64,
    lease_until: u64,
) -> Result<RoundResult, LedgerError> {
    let mut result = RoundResult::default();
    for s in settles {
        let ok = ledger
            .settle_step(session_id, s.step, s.attempt, &s.settlement, now_ms)
            .await?;
        result.settled.push(ok);
    }
    for ask in claims {
        let waiting = match ask.after {
            Some(after) => ledger
                .step(session_id, after)
                .await?
                .is_some_and(|r| matches!(r.state, StepState::Pending | StepState::Running)),
            None => false,
        };
        let mut claim = if waiting {
            None
        } else {
            ledger
                .claim_step(session_id, ask.step, now_ms, lease_until)
                .await?
        };
        if let (Some(c), Some(digest)) = (claim.as_mut(), ask.first_body.as_ref()) {
            if c.body_digest.is_none() && c.event_id == event_id {
                ledger
                    .pin_body(session_id, ask.step, c.attempt, digest, now_ms)
                    .await?;
                c.body_digest = Some(digest.clone());
            }
        }
        result.claimed.push(claim);
    }
    ledger.finish_purchase(session_id, now_ms).await?;
    result.steps = ledger.steps_of(session_id).await?;
    result.state = ledger.purchase_state(session_id).await?;
    Ok(result)
}
