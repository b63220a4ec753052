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
    /// The attempt number: the fencing token for settling it ([`Settle`]).
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

/// One step this run asks to take in a round: a step that is pending, or running with a
/// lease that has run out, and never a forward step from pending once a reversal that
/// takes back is recorded (a step already running is: it finishes, and is then taken
/// back).
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

/// One attempt this run ends, only if it is still the current one (`attempts =
/// attempt`): a holder whose lease was taken over cannot overwrite the new holder.
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
    /// unless the claim is a [`Claim::Conflict`], opens the purchase (inserts it, or moves
    /// a purchase awaiting its payment on; keeps its payment ids only where none is stored
    /// yet, the lazy backfill; inserts each step unless present, so every event about the
    /// session and every redelivery may open it; applies any reversal recorded against
    /// its payment ids, so a purchase that arrives after its refund never runs a step),
    /// and takes the steps in `claims` as [`Ledger::round`] does; then derives the
    /// purchase's state and reads it with every step. A duplicate of a settled purchase,
    /// and a delivery that finds every step held, need nothing else.
    ///
    /// The D1 adapter sends it as one batch (`src/d1/round.rs`); the in-memory ledger
    /// composes its single statements in the same order.
    async fn open_round(
        &self,
        session_id: &str,
        event: Option<&EventRecord>,
        opening: &Opening<'_>,
        claims: &[ClaimAsk],
        now_ms: u64,
        lease_until: u64,
    ) -> Result<(Claim, RoundResult), LedgerError>;

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
    ) -> Result<RoundResult, LedgerError>;

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
