//! `GET /orders/{checkout_session_id}`: the success page's lookup. Stripe sends the
//! buyer to `{APP_URL}/success?session_id={CHECKOUT_SESSION_ID}`; that page asks here
//! where the order stands, and gets the license key once it exists.
//!
//! In order: CORS (as `/checkout`) → method → the id's shape (no lookup for anything
//! else) → the ledger, one read: a purchase it knows is answered from D1 alone, never
//! throttled. Only an id the ledger does not know costs a Stripe call (the webhook is
//! late or lost), so those lookups are throttled per client; then Stripe is asked, and
//! a complete, paid session is opened and fulfilled through the same engine as the
//! webhook (the step claims make a page load and a delivery racing on one session
//! fulfil once). The page is never trusted: only Stripe's answer opens a purchase.
//! The status code and the log line of every outcome are decided in
//! [`crate::http::orders`].

use crate::checkout::cors::{self, Caller};
use crate::checkout::throttle::{self, Scope};
use crate::fulfilment::plan::{self, Purchase, Step};
use crate::fulfilment::{self, Deps, RunOutcome};
use crate::ports::ledger::{Ledger, LedgerError, PurchaseState, StepState};
use crate::ports::orders::{OrderRecord, OrderStore};
use crate::ports::{Clock, Sink, Throttle, Upstream};
use crate::queue_mode;
use crate::settings::STRIPE_API_KEY;
use crate::stripe::api::StripeApi;
use crate::stripe::error::{Cause, StripeError};
use crate::upstream::Deadline;

/// The route: `/orders/` followed by the Checkout Session id.
pub const PREFIX: &str = "/orders/";
/// The `event_id` of a purchase the success page opened before any Stripe event about
/// it arrived: its steps record it, and the license and shipping requests carry it as
/// `provider_event_id` / `stripe_event_id`. Not a Stripe event id (those start with
/// `evt_`), and the same for every such purchase, so every retry sends the same body.
pub const PAGE_EVENT_ID: &str = "success_page";
/// Longest id accepted (Stripe's ids are far shorter).
pub const MAX_ID_CHARS: usize = 255;
/// How soon a page should ask again while the steps run.
pub const FULFILLING_RETRY_MS: u64 = 1_000;
/// How soon a page should ask again while a delayed payment method settles (it takes
/// days; the buyer may leave, the webhook fulfils all the same).
pub const AWAITING_PAYMENT_RETRY_MS: u64 = 60_000;

/// What the handler works with: the fulfilment engine's ports (its ledger also reads
/// orders) and the lookup counter.
pub struct OrderDeps<'a, L, U, C, S, T> {
    pub engine: &'a Deps<'a, L, U, C, S>,
    pub throttle: &'a T,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderMethod {
    Get,
    Options,
    Other,
}

/// What the edge read from the request.
#[derive(Debug, Clone, Copy)]
pub struct OrderRequest<'a> {
    pub method: OrderMethod,
    pub origin: Option<&'a str>,
    /// `CF-Connecting-IP`: keys the lookup throttle; never logged.
    pub client_ip: Option<&'a str>,
    /// The path after [`PREFIX`], as sent.
    pub id: &'a str,
}

/// `cs_test_` or `cs_live_` followed by ASCII letters and digits only, at most
/// [`MAX_ID_CHARS`] in all.
pub fn is_session_id(id: &str) -> bool {
    let rest = id
        .strip_prefix("cs_test_")
        .or_else(|| id.strip_prefix("cs_live_"));
    id.len() <= MAX_ID_CHARS
        && rest.is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// What the page is shown of a purchase the ledger has: states and what the steps
/// produced for the buyer, nothing else (no e-mail, no address, no amounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    pub state: PurchaseState,
    /// Once the license step is done.
    pub license_key: Option<String>,
    /// When the purchase has a shipping step.
    pub shipment: Option<ShipmentView>,
    /// While the state can still change by itself (fulfilling, awaiting payment).
    pub retry_after_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShipmentView {
    /// `pending` (also while running), `done` or `failed`.
    pub state: &'static str,
    /// The shipping system's id once done; `None` when nothing was shipped (no address).
    pub id: Option<String>,
}

/// A step's result as the buyer may see it: a real id, not our `none:…` marker.
fn produced(record: &OrderRecord, step: Step) -> Option<(StepState, Option<String>)> {
    record
        .steps
        .iter()
        .find(|s| s.step == step.name())
        .map(|s| {
            let result = s
                .result
                .clone()
                .filter(|r| s.state == StepState::Done && !r.starts_with("none:"));
            (s.state, result)
        })
}

/// The projection of a ledger record onto the answer: which keys exist is decided here.
pub fn view(record: &OrderRecord) -> OrderView {
    // A license taken back (refund, dispute, ended subscription) is not handed out.
    let reversed = matches!(
        record.state,
        PurchaseState::Refunded | PurchaseState::Disputed | PurchaseState::Cancelled
    );
    let license_key = produced(record, Step::License)
        .and_then(|(_, key)| key)
        .filter(|_| !reversed);
    let shipment = produced(record, Step::Shipping).map(|(state, id)| ShipmentView {
        state: match state {
            StepState::Pending | StepState::Running => "pending",
            StepState::Done => "done",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
        },
        id,
    });
    let retry_after_ms = match record.state {
        PurchaseState::Fulfilling => Some(FULFILLING_RETRY_MS),
        PurchaseState::AwaitingPayment => Some(AWAITING_PAYMENT_RETRY_MS),
        _ => None,
    };
    OrderView {
        state: record.state,
        license_key,
        shipment,
        retry_after_ms,
    }
}

/// A session Stripe has that is not complete: nothing is recorded for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unfinished {
    Open,
    Expired,
}

impl Unfinished {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderOutcome {
    /// The ledger's answer: a purchase it knew, or one this lookup just recorded.
    Order(OrderView),
    /// Stripe has the session, but it is not complete.
    NotComplete(Unfinished),
    /// An allowed (or origin-less) preflight.
    Preflight,
    Refused(OrderRefusal),
}

/// Why there is no order to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderRefusal {
    MethodNotAllowed,
    ForbiddenOrigin,
    /// Not the shape of a Checkout Session id: nothing was looked up.
    BadId,
    /// Neither the ledger nor Stripe knows the session.
    NotFound,
    /// Too many lookups of unknown ids from this client in this window.
    RateLimited {
        retry_after_secs: u64,
    },
    /// The id is unknown to the ledger and Stripe cannot be asked (the setting's name).
    NotConfigured(&'static str),
    /// Stripe's session is of the other mode than `STRIPE_LIVEMODE`: the key and the
    /// setting disagree. Never fulfilled.
    LivemodeMismatch {
        session_livemode: bool,
    },
    /// D1 failed (the ledger or the lookup counter).
    Unavailable(LedgerError),
    /// Stripe could not be asked: unreachable, 5xx, refusing our key, an unusable answer.
    Stripe(StripeError),
}

impl OrderRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "order_method_not_allowed",
            Self::ForbiddenOrigin => "order_forbidden_origin",
            Self::BadId => "order_bad_id",
            Self::NotFound => "order_not_found",
            Self::RateLimited { .. } => "order_rate_limited",
            Self::NotConfigured(_) => "order_not_configured",
            Self::LivemodeMismatch { .. } => "order_livemode_mismatch",
            Self::Unavailable(_) => "order_unavailable",
            Self::Stripe(_) => "order_stripe_failed",
        }
    }
}

/// What this lookup did to the ledger, when the id was new to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// Paid: the purchase was opened and its steps run inline, ending so.
    Ran(RunOutcome),
    /// Paid, queue mode: the purchase and its steps recorded, a message sent.
    Queued,
    /// Paid, queue mode, but the message could not be sent: the steps wait in the
    /// ledger for the webhook's delivery or the cron run's re-drive.
    QueueFailed,
    /// Complete but unpaid (a delayed payment method): recorded as awaiting payment.
    AwaitingPayment,
}

impl Opened {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ran(RunOutcome::Complete) => "complete",
            Self::Ran(RunOutcome::Failed) => "failed",
            Self::Ran(RunOutcome::Busy) => "busy",
            Self::Ran(RunOutcome::Retry) => "retry",
            Self::Queued => "queued",
            Self::QueueFailed => "queue_failed",
            Self::AwaitingPayment => "awaiting_payment",
        }
    }
}

/// Everything the answer and the log line are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderDecision {
    pub outcome: OrderOutcome,
    pub caller: Caller,
    /// The id, once its shape is checked (a malformed one is never logged).
    pub session_id: Option<String>,
    /// This client's lookups of unknown ids in the window, this one included.
    pub lookups: Option<u32>,
    /// Whether Stripe was asked.
    pub asked_stripe: bool,
    /// Stripe's request id, when it answered with a refusal (404 included).
    pub stripe_request_id: Option<String>,
    /// What a lookup of an id new to the ledger recorded.
    pub opened: Option<Opened>,
}

impl OrderDecision {
    /// D1 could not even be bound: the glue's only refusal.
    pub fn unavailable(origin: Option<&str>, allowed: &[String], error: LedgerError) -> Self {
        Self {
            outcome: OrderOutcome::Refused(OrderRefusal::Unavailable(error)),
            caller: cors::check(allowed, origin),
            session_id: None,
            lookups: None,
            asked_stripe: false,
            stripe_request_id: None,
            opened: None,
        }
    }
}

/// Runs one request to `/orders/{id}`.
pub async fn handle<L, U, C, S, T>(
    deps: &OrderDeps<'_, L, U, C, S, T>,
    request: &OrderRequest<'_>,
    started_ms: u64,
) -> OrderDecision
where
    L: Ledger + OrderStore,
    U: Upstream,
    C: Clock,
    S: Sink,
    T: Throttle,
{
    let config = deps.engine.config;
    let caller = cors::check(&config.checkout.allowed_origins, request.origin);
    let mut decision = OrderDecision {
        outcome: OrderOutcome::Preflight,
        caller: caller.clone(),
        session_id: None,
        lookups: None,
        asked_stripe: false,
        stripe_request_id: None,
        opened: None,
    };
    decision.outcome = match (&caller, request.method) {
        (Caller::Foreign, _) => OrderOutcome::Refused(OrderRefusal::ForbiddenOrigin),
        (_, OrderMethod::Options) => OrderOutcome::Preflight,
        (_, OrderMethod::Other) => OrderOutcome::Refused(OrderRefusal::MethodNotAllowed),
        (_, OrderMethod::Get) => lookup(deps, request, started_ms, &mut decision)
            .await
            .unwrap_or_else(OrderOutcome::Refused),
    };
    decision
}

async fn lookup<L, U, C, S, T>(
    deps: &OrderDeps<'_, L, U, C, S, T>,
    request: &OrderRequest<'_>,
    started_ms: u64,
    decision: &mut OrderDecision,
) -> Result<OrderOutcome, OrderRefusal>
where
    L: Ledger + OrderStore,
    U: Upstream,
    C: Clock,
    S: Sink,
    T: Throttle,
{
    let id = request.id;
    if !is_session_id(id) {
        return Err(OrderRefusal::BadId);
    }
    decision.session_id = Some(id.to_string());
    let engine = deps.engine;
    let config = engine.config;
    // Known to the ledger: D1 alone answers, however often the page asks.
    if let Some(record) = read(engine.ledger, id).await? {
        return Ok(OrderOutcome::Order(view(&record)));
    }
    let key = config
        .stripe_api_key
        .as_ref()
        .ok_or(OrderRefusal::NotConfigured(STRIPE_API_KEY))?;
    // Unknown: each lookup costs a Stripe call, so it is counted first.
    let settings = &config.checkout;
    let window = throttle::window(engine.clock.now_ms(), settings.lookup_window_secs);
    for (i, (counter, factor)) in
        throttle::scoped_client_keys(Scope::OrderLookup, key, request.client_ip)
            .into_iter()
            .enumerate()
    {
        let count = deps
            .throttle
            .hit(&counter, window.start)
            .await
            .map_err(OrderRefusal::Unavailable)?;
        if i == 0 {
            decision.lookups = Some(count);
        }
        if count > settings.lookup_attempts.saturating_mul(factor) {
            return Err(OrderRefusal::RateLimited {
                retry_after_secs: window.retry_after_secs,
            });
        }
    }
    let api = StripeApi {
        base: &config.stripe_api_base,
        key,
        version: &config.stripe_api_version,
    };
    let deadline = Deadline::new(started_ms, config.upstream_timeout_ms);
    decision.asked_stripe = true;
    let session = match api
        .checkout_session(engine.upstream, engine.clock, deadline, id)
        .await
    {
        Ok(session) if session.id == id => session,
        Ok(_) => {
            return Err(OrderRefusal::Stripe(StripeError {
                cause: Cause::Unusable,
                status: None,
                request_id: None,
                why: "Stripe API sent another Checkout Session",
            }))
        }
        Err(e) => {
            decision.stripe_request_id = e.request_id.clone();
            return Err(match e.status {
                Some(404) => OrderRefusal::NotFound,
                _ => OrderRefusal::Stripe(e),
            });
        }
    };
    let livemode = session.livemode.unwrap_or(false);
    // An unreadable STRIPE_LIVEMODE fulfils nothing, as at ingress (fail closed).
    if config.livemode_is_invalid() || config.livemode.is_some_and(|expected| expected != livemode)
    {
        return Err(OrderRefusal::LivemodeMismatch {
            session_livemode: livemode,
        });
    }
    match session.status.as_deref() {
        Some("complete") => {}
        Some("expired") => return Ok(OrderOutcome::NotComplete(Unfinished::Expired)),
        _ => return Ok(OrderOutcome::NotComplete(Unfinished::Open)),
    }
    // As the webhook decides for checkout.session.completed (`plan::disposition`).
    let opened = match session.payment_status.as_deref() {
        Some("paid") | Some("no_payment_required") => {
            let purchase = plan::opened_by(PAGE_EVENT_ID, livemode, session, config);
            open_paid(engine, &purchase, started_ms).await
        }
        _ => engine
            .ledger
            .await_payment(id, livemode, engine.clock.now_ms())
            .await
            .map(|()| Opened::AwaitingPayment),
    }
    .map_err(OrderRefusal::Unavailable)?;
    decision.opened = Some(opened);
    // The answer is what the ledger now says (a concurrent delivery may be ahead).
    match read(engine.ledger, id).await? {
        Some(record) => Ok(OrderOutcome::Order(view(&record))),
        None => Err(OrderRefusal::Unavailable(LedgerError {
            operation: "order",
            detail: "the purchase just recorded is not in the ledger".into(),
        })),
    }
}

async fn read<L: OrderStore>(
    ledger: &L,
    session_id: &str,
) -> Result<Option<OrderRecord>, OrderRefusal> {
    ledger
        .order(session_id)
        .await
        .map_err(OrderRefusal::Unavailable)
}

/// A paid session new to the ledger, opened as ingress opens one: inline, the steps
/// run now; in queue mode, they are recorded and a message is sent.
async fn open_paid<L: Ledger, U: Upstream, C: Clock, S: Sink>(
    engine: &Deps<'_, L, U, C, S>,
    purchase: &Purchase,
    started_ms: u64,
) -> Result<Opened, LedgerError> {
    let Some(queue) = engine.queue else {
        let report = fulfilment::fulfil(engine, purchase, started_ms).await?;
        return Ok(Opened::Ran(report.outcome));
    };
    let session_id = purchase.session_id();
    let (_, round) = fulfilment::open(engine, purchase, None, &[]).await?;
    let unfinished = round
        .steps
        .iter()
        .any(|s| matches!(s.state, StepState::Pending | StepState::Running));
    if !unfinished {
        let failed = round.steps.iter().any(|s| s.state == StepState::Failed);
        return Ok(Opened::Ran(if failed {
            RunOutcome::Failed
        } else {
            RunOutcome::Complete
        }));
    }
    Ok(
        if queue_mode::send(queue, engine.log, session_id, &purchase.event_id).await {
            Opened::Queued
        } else {
            Opened::QueueFailed
        },
    )
}

#[cfg(test)]
mod tests;
