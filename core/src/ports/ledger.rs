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

#[allow(async_fn_in_trait)] // single-threaded Workers runtime: no Send bound wanted
pub trait Ledger {
    /// Records the event unless its id is already there (`INSERT … ON CONFLICT DO NOTHING`);
    /// a known id is [`Claim::Seen`] when its stored type and object are this event's,
    /// [`Claim::Conflict`] otherwise.
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
