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
    Ledger, LedgerError, PaymentRefs, PurchaseState, Settlement, StepRow, StepState,
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

/// Opens the purchase (idempotently) and runs its steps that are not done.
pub async fn fulfil<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    started_ms: u64,
) -> Result<Report, LedgerError> {
    let session_id = purchase.session_id();
    let steps = open(deps, purchase).await?;
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let mut outcomes = Vec::new();
    let mut ran = false;
    for step in &steps {
        let (outcome, claimed) = run_step(deps, purchase, *step, deadline).await?;
        ran |= claimed;
        outcomes.push(outcome);
        if outcome == StepOutcome::Busy {
            break;
        }
    }
    let state = if steps.is_empty() {
        Some(PurchaseState::NothingToFulfil)
    } else {
        deps.ledger
            .finish_purchase(session_id, deps.clock.now_ms())
            .await?
    };
    // A reversal was recorded for this purchase (before it was opened, or while a step
    // ran): take back what was done. Read after the forward steps settled, so a
    // reversal that found one of them running (and answered 409) is carried on here;
    // one recorded later sees them done and takes back itself. No extra read for the
    // purchase that has none.
    if state.is_some_and(PurchaseState::is_reversed) {
        let (back, took) = take_back_steps(deps, session_id, deadline).await?;
        ran |= took;
        outcomes.extend(back);
    }
    Ok(Report {
        outcome: aggregate(&outcomes),
        ran,
        state,
    })
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
pub async fn resume<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    started_ms: u64,
) -> Result<Report, ResumeError> {
    let rows = deps.ledger.steps_of(session_id).await?;
    let Some(first) = rows.first() else {
        return Err(ResumeError::Unknown);
    };
    let key = deps
        .config
        .stripe_api_key
        .as_ref()
        .ok_or(ResumeError::Session(StepError::NotConfigured(
            STRIPE_API_KEY,
        )))?;
    let stripe = StripeApi {
        base: &deps.config.stripe_api_base,
        key,
        version: &deps.config.stripe_api_version,
    };
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let session = stripe
        .checkout_session(deps.upstream, deps.clock, deadline, session_id)
        .await
        .map_err(|e| ResumeError::Session(e.into()))?;
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

/// Records the purchase and its steps (idempotently: every event and redelivery may),
/// and returns the steps to run, with its payment ids; a reversal already recorded
/// against them is applied in the same transaction, so a purchase whose refund came
/// first never runs a step. The e-mail step joins only a purchase opened while
/// `RESEND_API_KEY` was set: a purchase the ledger already holds without it (opened
/// before the key was set) never gets an e-mail from a later event or redelivery.
pub async fn open<L: Ledger, U, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
) -> Result<Vec<Step>, LedgerError> {
    let session_id = purchase.session_id();
    let mut steps = purchase.steps.clone();
    if steps.contains(&Step::Email) {
        let known = deps.ledger.steps_of(session_id).await?;
        let opened_without =
            !known.is_empty() && !known.iter().any(|r| r.step == Step::Email.name());
        if opened_without {
            steps.retain(|s| *s != Step::Email);
        }
    }
    let names: Vec<&'static str> = steps.iter().map(|s| s.name()).collect();
    let session = &purchase.session;
    let refs = PaymentRefs {
        payment_intent: session.payment_intent.as_ref().map(|p| p.id().to_string()),
        subscription: session.subscription.as_ref().map(|s| s.id().to_string()),
    };
    deps.ledger
        .open_purchase(
            session_id,
            purchase.livemode,
            &purchase.event_id,
            &names,
            &refs,
            &reversal::rules(),
            deps.clock.now_ms(),
        )
        .await?;
    if steps.is_empty() {
        Line::info("nothing to fulfil")
            .id("session_id", session_id)
            .emit(deps.log);
    }
    Ok(steps)
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

/// Returns the step's outcome and whether this run claimed it.
async fn run_step<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    step: Step,
    deadline: Deadline,
) -> Result<(StepOutcome, bool), LedgerError> {
    let session_id = purchase.session_id();
    let now = deps.clock.now_ms();
    let claimed = deps
        .ledger
        .claim_step(session_id, step.name(), now, now + LEASE_MS)
        .await?;
    let Some(claim) = claimed else {
        return Ok((observe(deps, session_id, step).await?, false));
    };
    let attempt = claim.attempt;
    // Built from the event that opened the step, so every attempt sends the same body
    // under the same Idempotency-Key, whichever event drives the retry.
    let pinned = Purchase {
        event_id: claim.event_id,
        ..purchase.clone()
    };
    let first = FirstBody {
        ledger: deps.ledger,
        session_id,
        step,
        attempt,
        pinned: claim.body_digest,
        keys: first_body::keys(&deps.config.webhook_secrets),
        now_ms: now,
    };
    let result = execute(deps, &pinned, step, deadline, &first).await;
    let settlement = match &result {
        Ok(id) => Settlement::Done(id.clone()),
        Err(e) if e.is_permanent() => Settlement::Fail(e.message()),
        Err(e) => Settlement::Release(e.message()),
    };
    let end = deps.clock.now_ms();
    let settled = deps
        .ledger
        .settle_step(session_id, step.name(), attempt, &settlement, end)
        .await?;
    let (head, outcome) = match (&result, settled) {
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
    let line = head
        .id("session_id", session_id)
        .id("event_id", &purchase.event_id)
        .id("step", step.name())
        .num("attempt", u64::from(attempt))
        .num("duration_ms", end.saturating_sub(now));
    line.emit(deps.log);
    Ok((outcome, true))
}

/// What a step we could not claim is doing.
async fn observe<L: Ledger, U, C, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    step: Step,
) -> Result<StepOutcome, LedgerError> {
    let row = deps.ledger.step(session_id, step.name()).await?;
    let outcome = match row.map(|r| r.state) {
        Some(StepState::Done) => StepOutcome::Done,
        Some(StepState::Failed) => StepOutcome::Failed,
        // Never started, and never will: a reversal was recorded first.
        Some(StepState::Cancelled) => StepOutcome::Done,
        Some(StepState::Running | StepState::Pending) => StepOutcome::Busy,
        None => StepOutcome::Retry,
    };
    if outcome == StepOutcome::Busy {
        Line::info("step busy")
            .id("session_id", session_id)
            .id("step", step.name())
            .emit(deps.log);
    }
    Ok(outcome)
}

async fn execute<L: Ledger, U: Upstream, C: Clock, S>(
    deps: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    step: Step,
    deadline: Deadline,
    first: &FirstBody<'_, L>,
) -> Result<String, StepError> {
    let (config, upstream, clock) = (deps.config, deps.upstream, deps.clock);
    match step {
        Step::License => license::run(purchase, config, upstream, clock, deadline, first).await,
        Step::Shipping => shipping::run(purchase, config, upstream, clock, deadline, first).await,
        Step::Email => {
            email::run(
                purchase,
                config,
                deps.ledger,
                upstream,
                clock,
                deadline,
                first,
            )
            .await
        }
    }
}

/// Runs the take-back steps of a purchase a reversal was just recorded for (the
/// webhook of the refund, dispute or ended subscription), then derives its state.
pub async fn take_back<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    started_ms: u64,
) -> Result<Report, LedgerError> {
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    let (outcomes, ran) = take_back_steps(deps, session_id, deadline).await?;
    let state = deps
        .ledger
        .finish_purchase(session_id, deps.clock.now_ms())
        .await?;
    Ok(Report {
        outcome: aggregate(&outcomes),
        ran,
        state,
    })
}

/// Runs every take-back step of the purchase that is not finished; returns their
/// outcomes and whether this run claimed any.
async fn take_back_steps<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    deadline: Deadline,
) -> Result<(Vec<StepOutcome>, bool), LedgerError> {
    let rows = deps.ledger.steps_of(session_id).await?;
    let mut outcomes = Vec::new();
    let mut ran = false;
    for take in TakeBack::ALL {
        let Some(row) = rows.iter().find(|r| r.step == take.name()) else {
            continue;
        };
        let (outcome, claimed) = match row.state {
            StepState::Done | StepState::Cancelled => (StepOutcome::Done, false),
            StepState::Failed => (StepOutcome::Failed, false),
            StepState::Pending | StepState::Running => {
                run_take_back(deps, session_id, take, &rows, deadline).await?
            }
        };
        ran |= claimed;
        outcomes.push(outcome);
    }
    Ok((outcomes, ran))
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

/// One take-back step, with the forward steps' claim → call → settle: never before
/// its forward step is done (a running one is waited for), never twice.
async fn run_take_back<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    take: TakeBack,
    rows: &[StepRow],
    deadline: Deadline,
) -> Result<(StepOutcome, bool), LedgerError> {
    let forward_name = take.forward().name();
    // Read again: the forward step may have finished since `rows` was read.
    let forward = deps.ledger.step(session_id, forward_name).await?;
    let forward = forward.or_else(|| rows.iter().find(|r| r.step == forward_name).cloned());
    let target = target(take, forward.as_ref());
    if matches!(target, Target::Wait) {
        Line::info("step busy")
            .id("session_id", session_id)
            .id("step", take.name())
            .emit(deps.log);
        return Ok((StepOutcome::Busy, false));
    }
    let now = deps.clock.now_ms();
    let Some(claim) = deps
        .ledger
        .claim_step(session_id, take.name(), now, now + LEASE_MS)
        .await?
    else {
        let row = deps.ledger.step(session_id, take.name()).await?;
        let outcome = match row.map(|r| r.state) {
            Some(StepState::Done | StepState::Cancelled) => StepOutcome::Done,
            Some(StepState::Failed) => StepOutcome::Failed,
            Some(_) => StepOutcome::Busy,
            None => StepOutcome::Retry,
        };
        return Ok((outcome, false));
    };
    let result = match target {
        Target::Undo(made) => execute_take_back(deps, session_id, take, &made, deadline).await,
        Target::Nothing(result) => {
            let unknown = forward
                .as_ref()
                .is_some_and(|r| r.state == StepState::Cancelled && r.attempts > 0);
            if unknown {
                // It was tried, then released after the reversal: what the service
                // made, if anything, is unknown. Ops check it by its metadata.
                Line::alert("take-back: forward step outcome unknown")
                    .id("session_id", session_id)
                    .id("step", forward_name)
                    .emit(deps.log);
            }
            Ok(result.to_string())
        }
        Target::Wait => unreachable!("handled above"),
    };
    let settlement = match &result {
        Ok(id) => Settlement::Done(id.clone()),
        Err(e) if e.is_permanent() => Settlement::Fail(e.message()),
        Err(e) => Settlement::Release(e.message()),
    };
    let end = deps.clock.now_ms();
    let settled = deps
        .ledger
        .settle_step(session_id, take.name(), claim.attempt, &settlement, end)
        .await?;
    let (head, outcome) = match (&result, settled) {
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
    head.id("session_id", session_id)
        .id("event_id", &claim.event_id)
        .id("step", take.name())
        .num("attempt", u64::from(claim.attempt))
        .num("duration_ms", end.saturating_sub(now))
        .emit(deps.log);
    Ok((outcome, true))
}

async fn execute_take_back<L: Ledger, U: Upstream, C: Clock, S>(
    deps: &Deps<'_, L, U, C, S>,
    session_id: &str,
    take: TakeBack,
    made: &str,
    deadline: Deadline,
) -> Result<String, StepError> {
    let (config, upstream, clock) = (deps.config, deps.upstream, deps.clock);
    match take {
        TakeBack::RevokeLicense => revoke::run(made, config, upstream, clock, deadline).await,
        TakeBack::CancelShipment => {
            let reversals = deps
                .ledger
                .reversals_of(session_id)
                .await
                .map_err(|e| StepError::Retryable(format!("ledger {} failed", e.operation)))?;
            let state = reversals
                .iter()
                .filter_map(|r| r.takes_back_as)
                .find(|s| take.on().contains(s))
                .unwrap_or(PurchaseState::Refunded);
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
mod tests;
