//! The life of one delivery to `POST /webhooks/stripe`, over traits: verify, decode,
//! decide, record. Knows nothing of JavaScript; the edge glue reads the request and
//! turns the [`Decision`] into a response ([`crate::http::webhook`]) and a log line.

use std::future::Future;
use std::pin::Pin;

use crate::fulfilment::plan::{self, Disposition, Purchase};
use crate::fulfilment::reversal::{self, Reversal};
use crate::fulfilment::{self, Deps, Report, RunOutcome};
use crate::log::Line;
use crate::ports::ledger::{
    Claim, EventRecord, Ledger, LedgerError, PurchaseState, ReversalRecord, StepState,
};
use crate::ports::Enqueue;
use crate::ports::Sink;
use crate::ports::{Clock, Upstream};
use crate::queue_mode;
use crate::settings::Config;
use crate::stripe::event::{self, CheckoutSession, Event, EventError};
use crate::stripe::signature::{self, SignatureError, Tag};

/// A delivery as received: the signature header and the raw body bytes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
    /// The HMAC tags of this header's timestamp and the body under each configured
    /// secret, in order, when the edge computed them natively (SubtleCrypto, for large
    /// bodies); `None`: computed here in Rust.
    pub tags: Option<&'a [Tag]>,
}

/// The `status` Stripe reads in a 2xx answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// First time seen, and handled.
    Accepted,
    /// Seen before; nothing left to do.
    Duplicate,
    /// Recorded, but not something this Worker acts on (or a livemode mismatch).
    Ignored,
    /// A step failed for good; retrying cannot help (see the log and the ledger).
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }
}

/// Why a request was refused. Each maps to exactly one HTTP status in [`crate::http::webhook`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    MethodNotAllowed,
    TooLarge {
        limit: u64,
    },
    /// No usable webhook secret: refuse everything (fail closed).
    NotConfigured,
    BadSignature(SignatureError),
    NotAnEvent(EventError),
    /// The ledger could not record the event; Stripe must retry.
    Unavailable(LedgerError),
    /// Another delivery holds a step of this purchase; Stripe must come back later.
    Busy,
    /// A step is not done yet and a retry can help (upstream down, slow, not configured).
    Retry,
    /// Queue mode: the message could not be sent; Stripe must redeliver.
    QueueUnavailable,
    /// The event id is already recorded for another object or type (see
    /// [`Claim::Conflict`]): refused, alerted, never fulfilled.
    ConflictingEvent,
    /// `STRIPE_LIVEMODE` is set to something other than `true` or `false`: no event
    /// this Worker acts on is recorded or fulfilled until it is fixed.
    LivemodeInvalid,
}

impl Refusal {
    /// A stable code for the log's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge { .. } => "body_too_large",
            Self::NotConfigured => "not_configured",
            Self::BadSignature(e) => e.code(),
            Self::NotAnEvent(EventError::BadSession) => "bad_session",
            Self::NotAnEvent(EventError::Unstorable(_)) => "unstorable_event",
            Self::NotAnEvent(_) => "not_an_event",
            Self::Unavailable(_) => "ledger_unavailable",
            Self::Busy => "purchase_busy",
            Self::Retry => "fulfilment_incomplete",
            Self::QueueUnavailable => "queue_unavailable",
            Self::ConflictingEvent => "event_id_conflict",
            Self::LivemodeInvalid => "livemode_invalid",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Recorded(Status),
    Refused(Refusal),
}

/// What happened to one request, with the ids known by the time it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    pub disposition: Option<Disposition>,
    pub purchase_state: Option<PurchaseState>,
    pub verdict: Verdict,
}

impl Decision {
    pub fn refused(refusal: Refusal) -> Self {
        Self {
            event_id: None,
            event_type: None,
            object_id: None,
            disposition: None,
            purchase_state: None,
            verdict: Verdict::Refused(refusal),
        }
    }
}

/// Handles a delivery whose size and method the glue already checked.
pub async fn handle<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    delivery: Delivery<'_>,
    started_ms: u64,
) -> Decision {
    if let Err(decision) = verify(deps.config, &delivery, started_ms) {
        return decision;
    }
    ingest(deps, delivery.body, started_ms, Seen::Continue).await
}

/// The delivery's signature, checked as Stripe's SDKs do: `Err` is the refusal to
/// answer. The first half of [`handle`]; the JavaScript entry's own path for
/// deliveries calls it too.
pub fn verify(config: &Config, delivery: &Delivery<'_>, started_ms: u64) -> Result<(), Decision> {
    if config.webhook_secrets.is_empty() {
        return Err(Decision::refused(Refusal::NotConfigured));
    }
    let now_secs = (started_ms / 1000) as i64;
    let verified = match delivery.tags {
        None => signature::verify_at(
            delivery.signature,
            delivery.body,
            &config.webhook_secrets,
            config.tolerance_secs,
            now_secs,
        ),
        Some(tags) => delivery
            .signature
            .ok_or(SignatureError::MissingHeader)
            .and_then(signature::parse_header)
            .and_then(|header| {
                let tags = tags.iter().copied();
                signature::verify_tags(&header, tags, config.tolerance_secs, now_secs)
            }),
    };
    verified
        .map(drop)
        .map_err(|e| Decision::refused(Refusal::BadSignature(e)))
}

/// What to do with an event the ledger already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Carry on with its purchase (a redelivery finishes what an earlier one left).
    Continue,
    /// Stop there (reconciliation ingests only events never seen).
    Skip,
}

/// What an event asks for, read from its bytes and the settings alone (no I/O).
pub struct Classified<'a> {
    pub event: Event<'a>,
    pub session: Option<CheckoutSession>,
    pub money_back: Option<Reversal>,
    pub disposition: Disposition,
    /// The event as the ledger records it.
    pub record: EventRecord,
    /// The decision so far: the event's ids and disposition (its verdict is set by
    /// what follows).
    pub decision: Decision,
}

impl Classified<'_> {
    /// Whether recording the event is all there is to do ([`recorded`] decides from
    /// its claim): the JavaScript entry's own path runs that claim itself.
    pub fn records_only(&self) -> bool {
        self.disposition == Disposition::Ignored
    }
}

/// Decodes and classifies an event whose authenticity is established: the first half
/// of [`ingest`]. `Err` is the refusal to answer (nothing recorded).
pub fn classify<'a>(
    body: &'a [u8],
    config: &Config,
    started_ms: u64,
) -> Result<Classified<'a>, Decision> {
    let event = match event::decode(body) {
        Ok(event) => event,
        Err(e) => return Err(Decision::refused(Refusal::NotAnEvent(e))),
    };
    let mut decision = Decision {
        event_id: Some(event.id.clone()),
        event_type: Some(event.kind.clone()),
        object_id: event.object_id.clone(),
        ..Decision::refused(Refusal::NotAnEvent(EventError::BadSession))
    };
    let session = if plan::needs_session(&event.kind) {
        match event.checkout_session() {
            Ok(session) => Some(session),
            Err(_) => return Err(decision), // refused as BadSession: nothing recorded
        }
    } else {
        None
    };
    // An unreadable STRIPE_LIVEMODE says nothing about which money is ours: fulfil
    // nothing and record nothing, and answer 503 so Stripe keeps the event until the
    // setting is fixed (a 2xx would lose it).
    let money_back = if reversal::is_reversal_type(&event.kind) {
        reversal::read(&event, config)
    } else {
        None
    };
    if (session.is_some() || money_back.is_some()) && config.livemode_is_invalid() {
        decision.verdict = Verdict::Refused(Refusal::LivemodeInvalid);
        return Err(decision);
    }
    let disposition = match &money_back {
        Some(_) if config.livemode.is_some_and(|l| l != event.livemode) => {
            Disposition::LivemodeMismatch
        }
        Some(r) => r.disposition,
        None => plan::disposition(&event, session.as_ref(), config.livemode),
    };
    decision.disposition = Some(disposition);
    let record = record(&event, disposition, started_ms);
    Ok(Classified {
        event,
        session,
        money_back,
        disposition,
        record,
        decision,
    })
}

/// The verdict on an event that is only recorded, from its claim: a conflicting id is
/// refused, a seen one is a duplicate, a ledger failure is a 503 (Stripe retries).
pub fn recorded(mut decision: Decision, claim: Result<Claim, LedgerError>) -> Decision {
    decision.verdict = match claim {
        Err(e) => Verdict::Refused(Refusal::Unavailable(e)),
        Ok(Claim::Conflict) => Verdict::Refused(Refusal::ConflictingEvent),
        Ok(Claim::Seen) => Verdict::Recorded(Status::Duplicate),
        Ok(Claim::New) => Verdict::Recorded(Status::Ignored),
    };
    decision
}

/// Records and acts on an event whose authenticity is established: a verified
/// delivery, or an event read from the Stripe API with our key (reconciliation).
pub async fn ingest<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    body: &[u8],
    started_ms: u64,
    seen: Seen,
) -> Decision {
    let config = deps.config;
    let Classified {
        event,
        session,
        money_back,
        disposition,
        record,
        mut decision,
    } = match classify(body, config, started_ms) {
        Ok(classified) => classified,
        Err(decision) => return decision,
    };
    // An event only recorded: its claim is all there is to do.
    if disposition == Disposition::Ignored {
        let claim = deps.ledger.claim_event(&record).await;
        return recorded(decision, claim);
    }
    // A paid purchase delivered by Stripe: the event's claim rides the purchase's first
    // round trip (one transaction: a conflicting id opens nothing).
    if let (Disposition::Fulfil, Seen::Continue, Some(session)) = (disposition, seen, &session) {
        let purchase = plan::purchase(&event, session.clone(), config);
        let delivered = deliver(deps, &purchase, &record, started_ms, &mut decision).await;
        decision.verdict = verdict_of(delivered);
        return decision;
    }
    // Money back: the event's claim and the reversal's record share one round trip (one
    // transaction: a conflicting id records nothing).
    let money_back = money_back.filter(|_| disposition != Disposition::LivemodeMismatch);
    let reversal = money_back
        .as_ref()
        .map(|m| reversal_record(&event, m, deps.clock.now_ms()));
    let claimed = match &reversal {
        Some(r) => {
            let rules = reversal::rules();
            let now = r.created_at_ms;
            deps.ledger.claim_reversal(&record, r, &rules, now).await
        }
        None => deps
            .ledger
            .claim_event(&record)
            .await
            .map(|c| (c, Vec::new())),
    };
    let (claim, sessions) = match claimed {
        Ok(claimed) => claimed,
        Err(e) => {
            decision.verdict = Verdict::Refused(Refusal::Unavailable(e));
            return decision;
        }
    };
    if claim == Claim::Conflict {
        decision.verdict = Verdict::Refused(Refusal::ConflictingEvent);
        return decision;
    }
    if claim == Claim::Seen && seen == Seen::Skip {
        decision.verdict = Verdict::Recorded(Status::Duplicate);
        return decision;
    }
    if let (Some(money_back), Some(reversal)) = (&money_back, &reversal) {
        let reversed = apart(reverse(
            deps,
            money_back,
            reversal,
            sessions,
            claim,
            started_ms,
            &mut decision,
        ))
        .await;
        decision.verdict = verdict_of(reversed);
        return decision;
    }
    let acted = act(
        deps,
        &event,
        session,
        disposition,
        claim,
        started_ms,
        &mut decision,
    )
    .await;
    decision.verdict = verdict_of(acted);
    decision
}

/// A ledger that failed mid-way refuses the delivery as unavailable (Stripe retries).
fn verdict_of(outcome: Result<Verdict, LedgerError>) -> Verdict {
    outcome.unwrap_or_else(|e| Verdict::Refused(Refusal::Unavailable(e)))
}

fn record(event: &Event<'_>, disposition: Disposition, now_ms: u64) -> EventRecord {
    EventRecord {
        id: event.id.clone(),
        kind: event.kind.clone(),
        livemode: event.livemode,
        api_version: event.api_version.clone(),
        created: event.created,
        object_id: event.object_id.clone(),
        disposition: disposition.as_str(),
        received_at_ms: now_ms,
    }
}

/// Does what the disposition asks, for the first delivery and every redelivery alike:
/// each ledger write is idempotent and the engine skips done steps, so a redelivery
/// after a 503 picks up where the last one stopped.
async fn act<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    event: &Event<'_>,
    session: Option<CheckoutSession>,
    disposition: Disposition,
    claim: Claim,
    started_ms: u64,
    decision: &mut Decision,
) -> Result<Verdict, LedgerError> {
    let seen = claim == Claim::Seen;
    let status = |first: Status| Verdict::Recorded(if seen { Status::Duplicate } else { first });
    let Some(session) = session.filter(|_| disposition != Disposition::Ignored) else {
        return Ok(status(Status::Ignored));
    };
    let now = deps.clock.now_ms();
    match disposition {
        Disposition::Ignored => Ok(status(Status::Ignored)),
        // Read and acted on by `reverse` before this point; a session never has these.
        Disposition::Refunded
        | Disposition::PartialRefund
        | Disposition::Disputed
        | Disposition::DisputeRecorded
        | Disposition::DisputeClosed
        | Disposition::SubscriptionEnded => Ok(status(Status::Ignored)),
        Disposition::LivemodeMismatch => {
            Line::error("livemode mismatch: not fulfilled")
                .id("event_id", &event.id)
                .id("session_id", &session.id)
                .flag("event_livemode", event.livemode)
                .emit(deps.log);
            Ok(status(Status::Ignored))
        }
        Disposition::AwaitingPayment => {
            deps.ledger
                .await_payment(&session.id, event.livemode, now)
                .await?;
            Ok(status(Status::Accepted))
        }
        Disposition::PaymentFailed => {
            deps.ledger
                .payment_failed(&session.id, event.livemode, now)
                .await?;
            Line::warn("payment failed: nothing fulfilled")
                .id("event_id", &event.id)
                .id("session_id", &session.id)
                .emit(deps.log);
            Ok(status(Status::Accepted))
        }
        // An event reconciliation found (claimed above, new): fulfilled as a delivery.
        Disposition::Fulfil => {
            let purchase = plan::purchase(event, session, deps.config);
            apart(fulfil(deps, &purchase, None, seen, started_ms, decision)).await
        }
    }
}

/// A paid purchase's delivery, its event claimed in the first round trip.
async fn deliver<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    record: &EventRecord,
    started_ms: u64,
    decision: &mut Decision,
) -> Result<Verdict, LedgerError> {
    apart(fulfil(
        deps,
        purchase,
        Some(record),
        false,
        started_ms,
        decision,
    ))
    .await
}

/// A path most deliveries do not take (fulfilment, taking back), behind a pointer: its
/// code stays out of [`ingest`]'s own future. In wasm each future is one function, which
/// V8 compiles and tiers up whole for every delivery's sake (BENCHMARKS.md, "Whole
/// Workers under the same workerd").
fn apart<'a, T>(future: impl Future<Output = T> + 'a) -> Pin<Box<dyn Future<Output = T> + 'a>> {
    Box::pin(future)
}

/// Runs (inline) or queues (queue mode) a paid purchase; `event`, when given, is
/// claimed in the same first round trip; `seen` says it was claimed before as seen.
async fn fulfil<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    event: Option<&EventRecord>,
    seen: bool,
    started_ms: u64,
    decision: &mut Decision,
) -> Result<Verdict, LedgerError> {
    if let Some(queue) = deps.queue {
        return enqueue(deps, queue, purchase, event, seen, decision).await;
    }
    let (claim, report) = fulfilment::fulfil_event(deps, purchase, event, started_ms).await?;
    if claim == Claim::Conflict {
        return Ok(Verdict::Refused(Refusal::ConflictingEvent));
    }
    decision.purchase_state = report.state;
    let idle_duplicate = (seen || claim == Claim::Seen) && !report.ran;
    Ok(match report.outcome {
        RunOutcome::Busy => Verdict::Refused(Refusal::Busy),
        RunOutcome::Retry => Verdict::Refused(Refusal::Retry),
        _ if idle_duplicate => Verdict::Recorded(Status::Duplicate),
        RunOutcome::Failed => Verdict::Recorded(Status::Failed),
        RunOutcome::Complete => Verdict::Recorded(Status::Accepted),
    })
}

/// What the ledger keeps of a money-back event.
fn reversal_record(event: &Event<'_>, money_back: &Reversal, now_ms: u64) -> ReversalRecord {
    ReversalRecord {
        event_id: event.id.clone(),
        reference: money_back.reference.clone(),
        kind: money_back.disposition.as_str().to_string(),
        takes_back_as: reversal::takes_back_as(money_back.disposition),
        detail: money_back.detail.clone(),
        created_at_ms: now_ms,
    }
}

/// A money-back event, recorded against its PaymentIntent or Subscription with its claim
/// (the ledger applied it to the purchases in `sessions` in the same transaction, or
/// keeps it for when the purchase arrives): take back: inline, the take-back steps run now; in queue
/// mode, a message per purchase. A redelivery does the same and finds the steps done.
async fn reverse<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    money_back: &Reversal,
    record: &ReversalRecord,
    sessions: Vec<String>,
    claim: Claim,
    started_ms: u64,
    decision: &mut Decision,
) -> Result<Verdict, LedgerError> {
    let seen = claim == Claim::Seen;
    let takes_back_as = record.takes_back_as;
    let head = match (takes_back_as, sessions.is_empty()) {
        (Some(_), false) => Line::info("reversal recorded: taking back"),
        (Some(_), true) => Line::info("reversal recorded for a purchase not known yet"),
        (None, _) => match money_back.disposition {
            Disposition::PartialRefund => Line::info("partial refund recorded: nothing taken back"),
            Disposition::DisputeClosed => {
                Line::info("dispute closed: outcome recorded (a revoked license stays revoked)")
            }
            _ => Line::info("dispute recorded: nothing taken back (REVOKE_ON_DISPUTE=false)"),
        },
    };
    head.id("event_id", &record.event_id)
        .id("reference", &money_back.reference)
        .label("disposition", money_back.disposition.as_str())
        .opt_id("detail", money_back.detail.as_deref())
        .num("purchases", sessions.len() as u64)
        .emit(deps.log);
    let first = |status: Status| Verdict::Recorded(if seen { Status::Duplicate } else { status });
    if takes_back_as.is_none() || sessions.is_empty() {
        return Ok(first(Status::Accepted));
    }
    if let Some(queue) = deps.queue {
        for session_id in &sessions {
            if !queue_mode::send(queue, deps.log, session_id, &record.event_id).await {
                return Ok(Verdict::Refused(Refusal::QueueUnavailable));
            }
        }
        decision.purchase_state = takes_back_as;
        return Ok(first(Status::Accepted));
    }
    let mut reports: Vec<Report> = Vec::new();
    for session_id in &sessions {
        reports.push(fulfilment::take_back(deps, session_id, started_ms).await?);
    }
    decision.purchase_state = reports.first().and_then(|r| r.state);
    let ran = reports.iter().any(|r| r.ran);
    let has = |o| reports.iter().any(|r| r.outcome == o);
    Ok(if has(RunOutcome::Busy) {
        Verdict::Refused(Refusal::Busy)
    } else if has(RunOutcome::Retry) {
        Verdict::Refused(Refusal::Retry)
    } else if seen && !ran {
        Verdict::Recorded(Status::Duplicate)
    } else if has(RunOutcome::Failed) {
        // A take-back that failed for good is the ledger's and the alert's to show;
        // Stripe's redelivery could not change it.
        Verdict::Recorded(Status::Failed)
    } else {
        Verdict::Recorded(Status::Accepted)
    })
}

/// Queue mode: record the purchase and its pending steps, send one message while any
/// step is unfinished (every redelivery re-sends: duplicates are harmless, a lost send
/// is not), and answer 200 at once. A failed send answers 503 so Stripe redelivers.
async fn enqueue<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    queue: &dyn Enqueue,
    purchase: &Purchase,
    event: Option<&EventRecord>,
    seen: bool,
    decision: &mut Decision,
) -> Result<Verdict, LedgerError> {
    let session_id = purchase.session_id();
    let (claim, round) = fulfilment::open(deps, purchase, event, &[]).await?;
    if claim == Claim::Conflict {
        return Ok(Verdict::Refused(Refusal::ConflictingEvent));
    }
    let seen = seen || claim == Claim::Seen;
    let unfinished = round
        .steps
        .iter()
        .any(|s| matches!(s.state, StepState::Pending | StepState::Running));
    if !unfinished {
        decision.purchase_state = round.state;
        let failed = round.steps.iter().any(|s| s.state == StepState::Failed);
        return Ok(Verdict::Recorded(match (seen, failed) {
            (true, _) => Status::Duplicate,
            (false, true) => Status::Failed,
            (false, false) => Status::Accepted,
        }));
    }
    if !queue_mode::send(queue, deps.log, session_id, &purchase.event_id).await {
        return Ok(Verdict::Refused(Refusal::QueueUnavailable));
    }
    Line::info("fulfilment queued")
        .id("session_id", session_id)
        .id("event_id", &purchase.event_id)
        .emit(deps.log);
    decision.purchase_state = Some(PurchaseState::Fulfilling);
    Ok(Verdict::Recorded(Status::Accepted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Config;
    use crate::stripe::signature::sign_header;
    use crate::testing::{World, NOW_MS, WEBHOOK_SECRET};
    use futures_executor::block_on;

    fn world() -> World {
        World::new(Config::load(|name| {
            (name == crate::settings::STRIPE_WEBHOOK_SECRET).then(|| WEBHOOK_SECRET.to_string())
        }))
    }

    fn body(kind: &str) -> String {
        format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":{{"id":"cs_1","object":"checkout.session","payment_status":"paid"}}}}}}"#
        )
    }

    fn deliver_signed(world: &World, body: &str, secret: &str) -> Decision {
        let header = sign_header(secret, 1_700_000_000, body.as_bytes());
        let delivery = Delivery {
            signature: Some(&header),
            body: body.as_bytes(),
            tags: None,
        };
        block_on(handle(&world.deps(), delivery, NOW_MS))
    }

    fn deliver(world: &World, body: &str) -> Decision {
        deliver_signed(world, body, WEBHOOK_SECRET)
    }

    #[test]
    fn the_first_delivery_is_accepted_and_recorded_once() {
        let world = world();
        let decision = deliver(&world, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
        let events = world.ledger.events.borrow();
        let row = &events["evt_1"];
        assert_eq!(row.object_id.as_deref(), Some("cs_1"));
        assert_eq!(row.disposition, "fulfil");
        assert_eq!(row.received_at_ms, NOW_MS);
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_changes_nothing() {
        let world = world();
        deliver(&world, &body("checkout.session.completed"));
        let before = world.ledger.events.borrow().clone();
        let decision = deliver(&world, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Duplicate));
        assert_eq!(*world.ledger.events.borrow(), before);
    }

    #[test]
    fn types_we_do_not_act_on_are_recorded_as_ignored() {
        let world = world();
        let decision = deliver(&world, &body("customer.created"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Ignored));
        assert_eq!(world.ledger.events.borrow()["evt_1"].disposition, "ignored");
    }

    #[test]
    fn without_a_secret_everything_is_refused_and_nothing_recorded() {
        let world = World::new(Config::load(|_| None));
        let decision = deliver(&world, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Refused(Refusal::NotConfigured));
        assert!(world.ledger.events.borrow().is_empty());
    }

    #[test]
    fn a_bad_signature_touches_no_state() {
        let world = world();
        let decision = deliver_signed(&world, &body("checkout.session.completed"), "whsec_other");
        assert_eq!(
            decision.verdict,
            Verdict::Refused(Refusal::BadSignature(SignatureError::NoMatch))
        );
        assert!(world.ledger.events.borrow().is_empty());
    }

    #[test]
    fn a_signed_non_event_is_refused_without_state() {
        let world = world();
        let decision = deliver(&world, r#"{"id":"ch_1","object":"charge"}"#);
        assert_eq!(
            decision.verdict,
            Verdict::Refused(Refusal::NotAnEvent(EventError::NotAnEvent))
        );
        assert!(world.ledger.events.borrow().is_empty());
    }

    #[test]
    fn a_checkout_event_whose_session_is_unreadable_is_refused_without_state() {
        let world = world();
        let body = r#"{"id":"evt_1","object":"event","type":"checkout.session.completed","data":{"object":{"id":"pi_1","object":"payment_intent"}}}"#;
        let decision = deliver(&world, body);
        assert_eq!(
            decision.verdict,
            Verdict::Refused(Refusal::NotAnEvent(EventError::BadSession))
        );
        assert!(world.ledger.events.borrow().is_empty());
    }

    #[test]
    fn an_unavailable_ledger_is_a_retryable_refusal() {
        let world = world();
        world.ledger.unavailable.set(true);
        let decision = deliver(&world, &body("checkout.session.completed"));
        assert!(matches!(
            decision.verdict,
            Verdict::Refused(Refusal::Unavailable(_))
        ));
    }

    // The entry's own path (src/fast_webhook.rs) runs verify, classify and recorded
    // itself, around a claim it makes: they must decide as `handle` does.
    fn signed(body: &str) -> String {
        sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes())
    }

    #[test]
    fn only_an_ignored_event_is_recorded_only() {
        let world = world();
        let config = &world.config;
        let classified = |kind: &str| {
            let text = body(kind);
            classify(text.as_bytes(), config, NOW_MS).map(|c| c.records_only())
        };
        assert_eq!(classified("customer.created"), Ok(true));
        assert_eq!(classified("payment_intent.succeeded"), Ok(true));
        assert_eq!(classified("checkout.session.completed"), Ok(false));
        assert_eq!(
            classified("checkout.session.async_payment_failed"),
            Ok(false)
        );
        // Not an event at all: refused before any claim.
        assert!(matches!(
            classify(b"{}", config, NOW_MS).map(|c| c.records_only()),
            Err(Decision {
                verdict: Verdict::Refused(Refusal::NotAnEvent(_)),
                ..
            })
        ));
    }

    #[test]
    fn the_recorded_only_path_decides_as_handle_does() {
        for claim in [Claim::New, Claim::Seen, Claim::Conflict] {
            let world = world();
            let text = body("customer.created");
            let header = signed(&text);
            let delivery = Delivery {
                signature: Some(&header),
                body: text.as_bytes(),
                tags: None,
            };
            assert_eq!(verify(&world.config, &delivery, NOW_MS), Ok(()));
            let classified = classify(text.as_bytes(), &world.config, NOW_MS).unwrap();
            assert!(classified.records_only());
            let fast = recorded(classified.decision.clone(), Ok(claim));
            // The same delivery through `handle`, its claim made to come out the same.
            match claim {
                Claim::New => {}
                Claim::Seen => {
                    block_on(world.ledger.claim_event(&classified.record)).unwrap();
                }
                Claim::Conflict => {
                    let other = EventRecord {
                        kind: "invoice.paid".into(),
                        ..classified.record.clone()
                    };
                    block_on(world.ledger.claim_event(&other)).unwrap();
                }
            }
            let slow = block_on(handle(&world.deps(), delivery, NOW_MS));
            assert_eq!(fast, slow, "{claim:?}");
        }
        // A ledger failure: 503, as `handle` answers.
        let world = world();
        let classified = classify(body("customer.created").as_bytes(), &world.config, NOW_MS)
            .map(|c| c.decision)
            .unwrap();
        let failed = LedgerError {
            operation: "claim_event",
            detail: "D1_ERROR".into(),
        };
        assert!(matches!(
            recorded(classified, Err(failed)).verdict,
            Verdict::Refused(Refusal::Unavailable(_))
        ));
        // A bad signature is refused by `verify` as by `handle`.
        let text = body("customer.created");
        let delivery = Delivery {
            signature: Some("t=1,v1=00"),
            body: text.as_bytes(),
            tags: None,
        };
        let refused = verify(&world.config, &delivery, NOW_MS).unwrap_err();
        assert_eq!(refused, block_on(handle(&world.deps(), delivery, NOW_MS)));
    }
}
