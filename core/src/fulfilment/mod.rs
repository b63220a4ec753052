//! The fulfilment engine: runs each step of a purchase at most once, over the ledger
//! and upstream traits, so the same code serves every entry point and native tests.
//!
//! For each step, in order: claim it (one conditional UPDATE: pending, or running with
//! an expired lease), call the service, then settle the attempt (done, released back to
//! pending, or failed), guarded by the attempt number so a holder whose lease was taken
//! over cannot overwrite the new holder. A step someone else holds stops the run: the
//! holder carries the purchase on, and this delivery is told to come back (409).

pub mod cancel_shipment;
pub mod email;
pub mod first_body;
mod join;
pub mod license;
pub mod plan;
pub mod reversal;
pub mod revoke;
pub mod shipping;

use crate::fulfilment::first_body::FirstBody;
use crate::fulfilment::plan::{Purchase, Step};
use crate::fulfilment::reversal::TakeBack;
use crate::log::Line;
use crate::ports::ledger::{
    Claim, ClaimAsk, EventRecord, Ledger, LedgerError, Opening, PaymentRefs, PurchaseState,
    RoundResult, Settle, Settlement, StepClaim, StepRow, StepState,
};
use crate::ports::Enqueue;
use crate::ports::Sink;
use crate::ports::{Clock, Upstream};
use crate::settings::{Config, STRIPE_API_KEY};
use crate::stripe::api::StripeApi;
use crate::upstream::{Deadline, StepError};

/// How long a claim holds a step. Longer than a delivery can take (10 s), so a lease
/// only runs out when its holder died mid-call.
pub const LEASE_MS: u64 = 20_000;

/// What the engine works with; borrowed, so each entry point builds it from its own
/// bindings (D1, `Fetch`, the console) and native tests from fakes.
pub struct Deps<'a, L, U, C, S> {
    pub config: &'a Config,
    pub ledger: &'a L,
    pub upstream: &'a U,
    pub clock: &'a C,
    pub log: &'a S,
    /// The fulfilment queue when `FULFILLMENT_QUEUE` is bound (queue mode).
    pub queue: Option<&'a dyn Enqueue>,
}

/// How one step ended for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Done,
    Failed,
    /// Held by another delivery (or released an instant ago): come back later.
    Busy,
    /// Not done yet; a retry can help.
    Retry,
}

/// How the whole purchase stands after this run, worst step first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    Complete,
    Failed,
    Busy,
    Retry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub outcome: RunOutcome,
    /// Whether this run claimed any step (tells a redelivery that did work from a mere duplicate).
    pub ran: bool,
    pub state: Option<PurchaseState>,
}

impl Report {
    /// Nothing opened, nothing run (a conflicting event id).
    const NOTHING: Report = Report {
        outcome: RunOutcome::Complete,
        ran: false,
        state: None,
    };
}

/// Opens the purchase (idempotently) and runs its steps that are not done.
pub async fn fulfil<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    started_ms: u64,
) -> Result<Report, LedgerError> {
    Ok(fulfil_event(deps, purchase, None, started_ms).await?.1)
}

/// [`fulfil`] for a delivery whose event is claimed in the same first round trip
/// (`event`): a conflicting event id opens nothing and runs nothing.
///
/// Round trips: the first claims the event, opens the purchase and takes every step it
/// may run now (a duplicate of a settled purchase, or one whose steps are all held,
/// stops there); the steps taken run side by side; the next settles them, takes a step
/// that was waiting for one of them (the e-mail, after the license) and derives the
/// purchase's state; and so on until nothing is left to take.
pub async fn fulfil_event<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    event: Option<&EventRecord>,
    started_ms: u64,
) -> Result<(Claim, Report), LedgerError> {
    let session_id = purchase.session_id();
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let asks: Vec<ClaimAsk> = purchase
        .steps
        .iter()
        .map(|step| ask(deps, purchase, *step, None))
        .collect();
    let (claim, mut round) = open(deps, purchase, event, &asks).await?;
    if claim == Claim::Conflict {
        return Ok((claim, Report::NOTHING));
    }
    let mut held: Vec<(Step, StepClaim)> = held(&asks, &mut round);
    let mut tried: Vec<Step> = Vec::new();
    let mut outcomes: Vec<(Step, StepOutcome)> = Vec::new();
    // Each round takes at least one step that was never taken in this run: bounded by
    // the number of steps.
    while !held.is_empty() {
        let attempts = held
            .iter()
            .map(|(step, claim)| attempt(deps, purchase, *step, claim, &round.steps, deadline));
        let results = join::all(attempts.collect()).await;
        tried.extend(held.iter().map(|(step, _)| *step));
        let settles: Vec<Settle> = held
            .iter()
            .zip(&results)
            .map(|((step, claim), (result, _))| Settle {
                step: step.name(),
                attempt: claim.attempt,
                settlement: settlement(result),
            })
            .collect();
        // Steps that waited for one settled now (the e-mail, once the license is done).
        let waiting: Vec<ClaimAsk> = purchase
            .steps
            .iter()
            .filter(|s| !tried.contains(s) && s.after().is_some_and(|a| tried.contains(&a)))
            .map(|step| {
                let license = made_in_this_run(&held, &results, Step::License);
                ask(deps, purchase, *step, license.as_ref())
            })
            .collect();
        let now = deps.clock.now_ms();
        round = deps
            .ledger
            .round(
                session_id,
                &settles,
                &waiting,
                &purchase.event_id,
                now,
                now + LEASE_MS,
            )
            .await?;
        for (((step, claim), (result, began)), settled) in
            held.iter().zip(&results).zip(&round.settled)
        {
            let outcome = report_step(deps, purchase, *step, claim, result, *settled, *began, now);
            outcomes.push((*step, outcome));
        }
        held = self::held(&waiting, &mut round);
    }
    // The steps this run did not take: where they stand, from the last read.
    for step in &purchase.steps {
        if outcomes.iter().any(|(s, _)| s == step) {
            continue;
        }
        if let Some(row) = round.steps.iter().find(|r| r.step == step.name()) {
            outcomes.push((*step, observe(deps, session_id, *step, row)));
        }
    }
    let mut ran = !tried.is_empty();
    let mut outcomes: Vec<StepOutcome> = outcomes.into_iter().map(|(_, o)| o).collect();
    let state = round.state;
    // A reversal was recorded for this purchase (before it was opened, or while a step
    // ran): take back what was done. Read after the forward steps settled, so a
    // reversal that found one of them running (and answered 409) is carried on here;
    // one recorded later sees them done and takes back itself. No extra read for the
    // purchase that has none.
    if state.is_some_and(PurchaseState::is_reversed) {
        let back = take_back_steps(deps, session_id, deadline).await?;
        ran |= back.ran;
        outcomes.extend(back.outcomes);
    }
    Ok((
        claim,
        Report {
            outcome: aggregate(&outcomes),
            ran,
            state,
        },
    ))
}

/// What this run asks of a step: taken after the step it waits for, with the digests
/// of its first body when they can be known before the call (the license's, and the
/// e-mail's once the license key is known); the shipping order needs Stripe's line
/// items first, so it keeps its digests in a round trip of its own before its call.
fn ask<L, U, C, S>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    step: Step,
    license: Option<&StepRow>,
) -> ClaimAsk {
    let request = match step {
        Step::License => license::step_request(purchase, deps.config).ok(),
        Step::Email if license.is_some() => email::step_request(purchase, deps.config, license)
            .ok()
            .flatten(),
        Step::Email | Step::Shipping => None,
    };
    let key = first_body::keys(&deps.config.webhook_secrets)[0];
    ClaimAsk {
        step: step.name(),
        after: step.after().map(Step::name),
        first_body: request
            .and_then(|r| r.body)
            .map(|body| first_body::stored_form(&body, key)),
    }
}

/// The steps a round took, with their claims, in the order asked.
fn held(asks: &[ClaimAsk], round: &mut RoundResult) -> Vec<(Step, StepClaim)> {
    asks.iter()
        .zip(round.claimed.drain(..))
        .filter_map(|(ask, claim)| Some((Step::parse(ask.step)?, claim?)))
        .collect()
}

/// The row a step made in this run, as the next round will store it (the e-mail's
/// request is built from the license this run just made).
fn made_in_this_run(
    held: &[(Step, StepClaim)],
    results: &[(Result<String, StepError>, u64)],
    step: Step,
) -> Option<StepRow> {
    let i = held.iter().position(|(s, _)| *s == step)?;
    let (Ok(result), _) = &results[i] else {
        return None;
    };
    Some(StepRow {
        step: step.name().to_string(),
        event_id: held[i].1.event_id.clone(),
        state: StepState::Done,
        lease_until: None,
        attempts: held[i].1.attempt,
        last_error: None,
        result: Some(result.clone()),
        updated_at: 0,
    })
}

fn settlement(result: &Result<String, StepError>) -> Settlement {
    match result {
        Ok(id) => Settlement::Done(id.clone()),
        Err(e) if e.is_permanent() => Settlement::Fail(e.message()),
        Err(e) => Settlement::Release(e.message()),
    }
}

/// Records the purchase and its steps (idempotently: every event and redelivery may)
/// with its payment ids, in one round trip that also claims the event when given and
/// takes the steps in `asks` ([`Ledger::open_round`]); a reversal already recorded
/// against them is applied in the same transaction, so a purchase whose refund came
/// first never runs a step. The e-mail step joins only a purchase opened while
/// `RESEND_API_KEY` was set: a purchase the ledger already holds without it (opened
/// before the key was set) never gets an e-mail from a later event or redelivery.
/// Queue mode and the success page open with no asks (the consumer runs the steps).
pub async fn open<L: Ledger, U, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    event: Option<&EventRecord>,
    asks: &[ClaimAsk],
) -> Result<(Claim, RoundResult), LedgerError> {
    let session_id = purchase.session_id();
    let steps: Vec<(&'static str, bool)> = purchase
        .steps
        .iter()
        .map(|s| (s.name(), s.only_new()))
        .collect();
    let session = &purchase.session;
    let refs = PaymentRefs {
        payment_intent: session.payment_intent.as_ref().map(|p| p.id().to_string()),
        subscription: session.subscription.as_ref().map(|s| s.id().to_string()),
    };
    let rules = reversal::rules();
    let opening = Opening {
        livemode: purchase.livemode,
        event_id: &purchase.event_id,
        steps: &steps,
        refs: &refs,
        rules: &rules,
    };
    let now = deps.clock.now_ms();
    let opened = deps
        .ledger
        .open_round(session_id, event, &opening, asks, now, now + LEASE_MS)
        .await?;
    if steps.is_empty() && opened.0 != Claim::Conflict {
        Line::info("nothing to fulfil")
            .id("session_id", session_id)
            .emit(deps.log);
    }
    Ok(opened)
}

/// Why a purchase could not be resumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeError {
    /// The ledger has no steps for this session.
    Unknown,
    /// The Checkout Session could not be fetched from Stripe (or no key is set).
    Session(StepError),
    Ledger(LedgerError),
}

impl From<LedgerError> for ResumeError {
    fn from(e: LedgerError) -> Self {
        Self::Ledger(e)
    }
}

/// Runs the steps of a purchase that are not done, without its event: for replays, the
/// scheduled re-drive and the queue consumer. The ledger keeps no customer data, so the
/// session is fetched from Stripe; each step still builds its request from the event
/// that opened it, so the bodies match earlier attempts.
///
/// The ledger's steps and Stripe's session are read side by side: neither needs the
/// other, and one after the other they put a D1 round trip in front of every queue
/// message, re-drive and replay. The steps decide first: none means an unknown purchase
/// whatever Stripe answered.
pub async fn resume<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    started_ms: u64,
) -> Result<Report, ResumeError> {
    let Some(key) = deps.config.stripe_api_key.as_ref() else {
        // Nothing could run the steps; say whether there were any.
        return Err(if deps.ledger.steps_of(session_id).await?.is_empty() {
            ResumeError::Unknown
        } else {
            ResumeError::Session(StepError::NotConfigured(STRIPE_API_KEY))
        });
    };
    let stripe = StripeApi {
        base: &deps.config.stripe_api_base,
        key,
        version: &deps.config.stripe_api_version,
    };
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let (rows, session) = join::both(
        deps.ledger.steps_of(session_id),
        stripe.checkout_session(deps.upstream, deps.clock, deadline, session_id),
    )
    .await;
    let rows = rows?;
    let Some(first) = rows.first() else {
        return Err(ResumeError::Unknown);
    };
    let session = session.map_err(|e| ResumeError::Session(e.into()))?;
    // The ledger lists steps by name; they run in the plan's order (email after license).
    let mut steps: Vec<Step> = rows.iter().filter_map(|r| Step::parse(&r.step)).collect();
    steps.sort();
    let purchase = Purchase {
        event_id: first.event_id.clone(),
        livemode: session.livemode.unwrap_or(false),
        steps,
        session,
    };
    Ok(fulfil(deps, &purchase, started_ms).await?)
}

fn aggregate(outcomes: &[StepOutcome]) -> RunOutcome {
    let any = |o| outcomes.contains(&o);
    if any(StepOutcome::Busy) {
        RunOutcome::Busy
    } else if any(StepOutcome::Retry) {
        RunOutcome::Retry
    } else if any(StepOutcome::Failed) {
        RunOutcome::Failed
    } else {
        RunOutcome::Complete
    }
}

/// One attempt of a step this run holds: its call, and when it began.
async fn attempt<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    step: Step,
    claim: &StepClaim,
    rows: &[StepRow],
    deadline: Deadline,
) -> (Result<String, StepError>, u64) {
    let began = deps.clock.now_ms();
    // Built from the event that opened the step, so every attempt sends the same body
    // under the same Idempotency-Key, whichever event drives the retry.
    let pinned = Purchase {
        event_id: claim.event_id.clone(),
        ..purchase.clone()
    };
    let first = FirstBody {
        ledger: deps.ledger,
        session_id: purchase.session_id(),
        step,
        attempt: claim.attempt,
        pinned: claim.body_digest.clone(),
        keys: first_body::keys(&deps.config.webhook_secrets),
        now_ms: began,
    };
    let (config, upstream, clock) = (deps.config, deps.upstream, deps.clock);
    let result = match step {
        Step::License => license::run(&pinned, config, upstream, clock, deadline, &first).await,
        Step::Shipping => shipping::run(&pinned, config, upstream, clock, deadline, &first).await,
        Step::Email => {
            let license = rows.iter().find(|r| r.step == Step::License.name());
            email::run(&pinned, config, license, upstream, clock, deadline, &first).await
        }
    };
    (result, began)
}

/// The log line of one settled attempt, and what it means for the run.
#[allow(clippy::too_many_arguments)]
fn report_step<L, U, C, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    step: Step,
    claim: &StepClaim,
    result: &Result<String, StepError>,
    settled: bool,
    began: u64,
    end: u64,
) -> StepOutcome {
    let (head, outcome) = match (result, settled) {
        (_, false) => (Line::warn("step lease lost"), StepOutcome::Busy),
        (Ok(_), true) => (Line::info("step done"), StepOutcome::Done),
        (Err(StepError::NotConfigured(setting)), true) => (
            Line::error("step not configured").id("setting", setting),
            StepOutcome::Retry,
        ),
        (Err(e), true) => match first_body::changed_fields(e) {
            // Not sent: the upstream would refuse its key with another body. Ops
            // decide (fix what changed and replay, or settle it with the service).
            Some(fields) => (
                Line::alert("step body changed since the first attempt").text("field", &fields),
                StepOutcome::Failed,
            ),
            None if e.is_permanent() => (
                Line::error("step failed permanently").text("reason", &e.message()),
                StepOutcome::Failed,
            ),
            None => (
                Line::warn("step will be retried").text("reason", &e.message()),
                StepOutcome::Retry,
            ),
        },
    };
    head.id("session_id", purchase.session_id())
        .id("event_id", &purchase.event_id)
        .id("step", step.name())
        .num("attempt", u64::from(claim.attempt))
        .num("duration_ms", end.saturating_sub(began))
        .emit(deps.log);
    outcome
}

/// What a step this run did not take is doing, from the round's read.
fn observe<L, U, C, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    step: Step,
    row: &StepRow,
) -> StepOutcome {
    let outcome = match row.state {
        StepState::Done => StepOutcome::Done,
        StepState::Failed => StepOutcome::Failed,
        // Never started, and never will: a reversal was recorded first.
        StepState::Cancelled => StepOutcome::Done,
        StepState::Running => StepOutcome::Busy,
        // Waiting for a step that is not done (the e-mail for a license released for
        // a retry), or for a reversal's take-back: a later run takes it.
        StepState::Pending => StepOutcome::Retry,
    };
    if outcome == StepOutcome::Busy {
        Line::info("step busy")
            .id("session_id", session_id)
            .id("step", step.name())
            .emit(deps.log);
    }
    outcome
}

/// Runs the take-back steps of a purchase a reversal was just recorded for (the
/// webhook of the refund, dispute or ended subscription), then derives its state.
pub async fn take_back<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    started_ms: u64,
) -> Result<Report, LedgerError> {
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let back = take_back_steps(deps, session_id, deadline).await?;
    Ok(Report {
        outcome: aggregate(&back.outcomes),
        ran: back.ran,
        state: back.state,
    })
}

/// What a take-back run did: each take-back step's outcome, whether this run claimed
/// any, and the purchase's state read in its last round trip.
struct TakenBack {
    outcomes: Vec<StepOutcome>,
    ran: bool,
    state: Option<PurchaseState>,
}

/// Runs every take-back step of the purchase that is not finished, in two round trips
/// like the forward steps' rounds: the first takes each take-back step whose forward
/// step is settled (never one still pending or running: its holder finishes it, then
/// takes it back) and reads every step in the same transaction; the calls run side by
/// side; the second settles them and derives the purchase's state.
async fn take_back_steps<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    deadline: Deadline,
) -> Result<TakenBack, LedgerError> {
    let asks: Vec<ClaimAsk> = TakeBack::ALL
        .into_iter()
        .map(|take| ClaimAsk {
            step: take.name(),
            after: Some(take.forward().name()),
            first_body: None,
        })
        .collect();
    let claimed_at = deps.clock.now_ms();
    let mut round = deps
        .ledger
        .round(
            session_id,
            &[],
            &asks,
            "",
            claimed_at,
            claimed_at + LEASE_MS,
        )
        .await?;
    let mut outcomes = Vec::new();
    let mut held = Vec::new();
    for (take, claim) in TakeBack::ALL.into_iter().zip(round.claimed.drain(..)) {
        let Some(row) = round.steps.iter().find(|r| r.step == take.name()) else {
            continue; // this reversal asks nothing of that step
        };
        let forward = round.steps.iter().find(|r| r.step == take.forward().name());
        match claim {
            Some(claim) => {
                let target = target(take, forward);
                let tried =
                    forward.is_some_and(|r| r.state == StepState::Cancelled && r.attempts > 0);
                if matches!(target, Target::Nothing(_)) && tried {
                    // It was tried, then released after the reversal: what the service
                    // made, if anything, is unknown. Ops check it by its metadata.
                    Line::alert("take-back: forward step outcome unknown")
                        .id("session_id", session_id)
                        .id("step", take.forward().name())
                        .emit(deps.log);
                }
                held.push((take, claim, target));
            }
            None => outcomes.push(match row.state {
                StepState::Done | StepState::Cancelled => StepOutcome::Done,
                StepState::Failed => StepOutcome::Failed,
                // Held by another run, or waiting for its forward step to settle.
                StepState::Pending | StepState::Running => {
                    if matches!(target(take, forward), Target::Wait) {
                        Line::info("step busy")
                            .id("session_id", session_id)
                            .id("step", take.name())
                            .emit(deps.log);
                    }
                    StepOutcome::Busy
                }
            }),
        }
    }
    if held.is_empty() {
        return Ok(TakenBack {
            outcomes,
            ran: false,
            state: round.state,
        });
    }
    let reversed_as = round.state;
    let runs = held.iter().map(|(take, _, target)| async move {
        let result = undo(deps, session_id, *take, target, reversed_as, deadline).await;
        (result, deps.clock.now_ms())
    });
    let results = join::all(runs.collect()).await;
    let settles: Vec<Settle> = held
        .iter()
        .zip(&results)
        .map(|((take, claim, _), (result, _))| Settle {
            step: take.name(),
            attempt: claim.attempt,
            settlement: settlement(result),
        })
        .collect();
    let now = deps.clock.now_ms();
    let settled = deps
        .ledger
        .round(session_id, &settles, &[], "", now, now + LEASE_MS)
        .await?;
    for (((take, claim, _), (result, ended)), settled) in
        held.iter().zip(&results).zip(&settled.settled)
    {
        let (outcome, head) = take_back_line(result, *settled);
        head.id("session_id", session_id)
            .id("event_id", &claim.event_id)
            .id("step", take.name())
            .num("attempt", u64::from(claim.attempt))
            .num("duration_ms", ended.saturating_sub(claimed_at))
            .emit(deps.log);
        outcomes.push(outcome);
    }
    Ok(TakenBack {
        outcomes,
        ran: true,
        state: settled.state,
    })
}

/// What a take-back step has to undo, from its forward step's row.
enum Target {
    /// The forward step's result (license key, shipment id).
    Undo(String),
    /// Nothing was made: done without a call, with this result.
    Nothing(&'static str),
    /// The forward step is still running: its holder finishes it, then takes it back.
    Wait,
}

fn target(take: TakeBack, forward: Option<&StepRow>) -> Target {
    let Some(row) = forward else {
        return Target::Nothing("none:not_fulfilled");
    };
    match (row.state, row.result.as_deref()) {
        (StepState::Pending | StepState::Running, _) => Target::Wait,
        (StepState::Done, Some(shipping::NOTHING_TO_SHIP)) if take == TakeBack::CancelShipment => {
            Target::Nothing("none:nothing_shipped")
        }
        (StepState::Done, Some(result)) => Target::Undo(result.to_string()),
        _ => Target::Nothing("none:not_fulfilled"),
    }
}

/// One claimed take-back step's work: the call that undoes what its forward step made,
/// or nothing to undo (with an alert when what was made is unknown).
async fn undo<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    take: TakeBack,
    target: &Target,
    reversed_as: Option<PurchaseState>,
    deadline: Deadline,
) -> Result<String, StepError> {
    match target {
        Target::Undo(made) => {
            execute_take_back(deps, session_id, take, made, reversed_as, deadline).await
        }
        Target::Nothing(result) => Ok(result.to_string()),
        // Not claimable while its forward step is unsettled (the claim's own condition,
        // read in the same transaction): released untouched should it ever happen.
        Target::Wait => Err(StepError::Retryable(format!(
            "{} is not settled yet",
            take.forward().name()
        ))),
    }
}

/// The outcome of a take-back attempt once its settle came back, and the head of its
/// line.
fn take_back_line(result: &Result<String, StepError>, settled: bool) -> (StepOutcome, Line) {
    let (head, outcome) = match (result, settled) {
        (_, false) => (Line::warn("step lease lost"), StepOutcome::Busy),
        (Ok(r), true) if r == cancel_shipment::SHIPPED_BEFORE_CANCEL => (
            Line::warn("shipment already shipped: a return is needed"),
            StepOutcome::Done,
        ),
        (Ok(_), true) => (Line::info("step done"), StepOutcome::Done),
        (Err(StepError::NotConfigured(setting)), true) => (
            Line::error("step not configured").id("setting", setting),
            StepOutcome::Retry,
        ),
        (Err(e), true) if e.is_permanent() => (
            Line::alert("take-back failed permanently").text("reason", &e.message()),
            StepOutcome::Failed,
        ),
        (Err(e), true) => (
            Line::warn("step will be retried").text("reason", &e.message()),
            StepOutcome::Retry,
        ),
    };
    (outcome, head)
}

async fn execute_take_back<L: Ledger, U: Upstream, C: Clock, S>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    take: TakeBack,
    made: &str,
    reversed_as: Option<PurchaseState>,
    deadline: Deadline,
) -> Result<String, StepError> {
    let (config, upstream, clock) = (deps.config, deps.upstream, deps.clock);
    match take {
        TakeBack::RevokeLicense => revoke::run(made, config, upstream, clock, deadline).await,
        TakeBack::CancelShipment => {
            // The reason is the first reversal that asks for the cancel. The purchase
            // took the state of its first reversal that takes back: when that one asks
            // for it, no read is needed; otherwise (an ended subscription first, a
            // refund later) the recorded reversals say.
            let state = match reversed_as.filter(|s| take.on().contains(s)) {
                Some(state) => state,
                None => deps
                    .ledger
                    .reversals_of(session_id)
                    .await
                    .map_err(|e| StepError::Retryable(format!("ledger {} failed", e.operation)))?
                    .iter()
                    .filter_map(|r| r.takes_back_as)
                    .find(|s| take.on().contains(s))
                    .unwrap_or(PurchaseState::Refunded),
            };
            let reason = reversal::cancel_reason(state);
            cancel_shipment::run(
                session_id,
                Some(made),
                reason,
                config,
                upstream,
                clock,
                deadline,
            )
            .await
        }
    }
}

#[cfg(test)]
mod reversal_tests;
#[cfg(test)]
mod round_trip_tests;
#[cfg(test)]
mod tests;
