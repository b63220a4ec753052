//! One ops call, from the request's parts to its outcome and log line, over the ledger
//! and ops-store ports: authorisation, the route, the reads and the replay. The status
//! code of every outcome is `crate::http::ops`'s.

use serde_json::{json, Value};

use super::{authorize, route, AdminRefusal, AdminRoute, STUCK_AFTER_MS};
use crate::fulfilment::{self, Deps, ResumeError, RunOutcome};
use crate::log::Line;
use crate::ports::ledger::{Ledger, LedgerError};
use crate::ports::ops_store::{ListQuery, OpsStore};
use crate::ports::{Clock, Sink, Upstream};
use crate::upstream::StepError;

/// What the Worker read from an `/admin/` request.
#[derive(Debug, Clone, Copy)]
pub struct OpsCall<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?` and fragment.
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum OpsAnswer {
    Refused(AdminRefusal),
    /// The route's answer (a lookup, a list, or a replay that ran).
    Found(Value),
    NoSuchEvent,
    NoSuchPurchase,
    /// The replay could not fetch the session from Stripe; the body says what stands.
    SessionUnavailable(Value),
    /// A setting the route needs is unset (replays need `STRIPE_API_KEY`).
    NotConfigured(&'static str),
    /// The ledger failed; the detail is for the log only.
    Unavailable(LedgerError),
}

/// Runs one call. `deps` must run inline (no queue): a replay answers with the state it
/// leaves. Returns the outcome and its log line (who, which route, what became of it).
pub async fn handle<L, U, C, S>(
    deps: &Deps<'_, L, U, C, S>,
    call: OpsCall<'_>,
    started: u64,
) -> (OpsAnswer, Line)
where
    L: Ledger + OpsStore,
    U: Upstream,
    C: Clock,
    S: Sink,
{
    let who = match authorize(deps.config.admin_token.as_ref(), call.authorization) {
        Ok(who) => who,
        Err(refusal) => return refused(refusal, None),
    };
    let route = match route(call.method, call.path, call.query) {
        Ok(route) => route,
        Err(refusal) => return refused(refusal, Some(&who)),
    };
    let answer = match run(deps, &route, started).await {
        Ok(answer) => answer,
        Err(e) => OpsAnswer::Unavailable(e),
    };
    let line = Line::info("admin call")
        .id("who", &who)
        .label("route", route.name())
        .opt_id("session_id", session_of(&route))
        .opt_id("event_id", event_of(&route));
    (answer, line)
}

fn refused(refusal: AdminRefusal, who: Option<&str>) -> (OpsAnswer, Line) {
    let line = Line::warn("admin refused")
        .opt_id("who", who)
        .label("reason", refusal.code());
    (OpsAnswer::Refused(refusal), line)
}

fn session_of(route: &AdminRoute) -> Option<&str> {
    match route {
        AdminRoute::Purchase(id) | AdminRoute::Replay(id) => Some(id),
        AdminRoute::Event(_) | AdminRoute::ListPurchases(_) => None,
    }
}

fn event_of(route: &AdminRoute) -> Option<&str> {
    match route {
        AdminRoute::Event(id) => Some(id),
        _ => None,
    }
}

async fn run<L, U, C, S>(
    deps: &Deps<'_, L, U, C, S>,
    route: &AdminRoute,
    started: u64,
) -> Result<OpsAnswer, LedgerError>
where
    L: Ledger + OpsStore,
    U: Upstream,
    C: Clock,
    S: Sink,
{
    let ledger = deps.ledger;
    match route {
        AdminRoute::Event(id) => event(ledger, id).await,
        AdminRoute::Purchase(id) => purchase(ledger, id).await,
        AdminRoute::ListPurchases(query) => list(ledger, query, started).await,
        AdminRoute::Replay(id) => replay(deps, id, started).await,
    }
}

/// The ledger row and the purchase's steps: ids, states and errors, no customer data
/// and no license key (that is the purchase lookup's, for support).
async fn event<L: Ledger + OpsStore>(ledger: &L, id: &str) -> Result<OpsAnswer, LedgerError> {
    let Some(event) = ledger.event_row(id).await? else {
        return Ok(OpsAnswer::NoSuchEvent);
    };
    let session = event["object_id"].as_str().unwrap_or_default().to_string();
    let purchase = ledger.purchase_row(&session).await?;
    let steps = steps(ledger, &session, false).await?;
    Ok(OpsAnswer::Found(
        json!({"event": event, "purchase": purchase, "steps": steps}),
    ))
}

/// Steps, license key and shipment id: the support and re-delivery lookup.
async fn purchase<L: Ledger + OpsStore>(ledger: &L, id: &str) -> Result<OpsAnswer, LedgerError> {
    let Some(purchase) = ledger.purchase_row(id).await? else {
        return Ok(OpsAnswer::NoSuchPurchase);
    };
    let mapping = ledger.mapping(id).await?.unwrap_or(Value::Null);
    let events = ledger.events_of(id).await?;
    Ok(OpsAnswer::Found(json!({
        "purchase": purchase,
        "license_key": mapping["license_key"],
        "shipment_id": mapping["shipment_id"],
        "steps": steps(ledger, id, true).await?,
        "events": events,
    })))
}

async fn steps<L: Ledger>(
    ledger: &L,
    session: &str,
    with_result: bool,
) -> Result<Vec<Value>, LedgerError> {
    let rows = ledger.steps_of(session).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut step = json!({
                "step": r.step,
                "state": r.state.as_str(),
                "attempts": r.attempts,
                "last_error": r.last_error,
                "lease_until": r.lease_until,
                "event_id": r.event_id,
                "updated_at": r.updated_at,
            });
            if with_result {
                step["result"] = r.result.into();
            }
            step
        })
        .collect())
}

/// Newest first, keyset-paginated on (updated_at, session_id): one more row than asked
/// tells whether there is a next page.
async fn list<L: OpsStore>(
    ledger: &L,
    query: &ListQuery,
    now: u64,
) -> Result<OpsAnswer, LedgerError> {
    let stuck_before = now.saturating_sub(STUCK_AFTER_MS);
    let mut rows = ledger
        .list_purchases(query, stuck_before, query.limit + 1)
        .await?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next = more.then(|| rows.last()).flatten().map(|r| {
        super::next_cursor(
            r["updated_at"].as_f64().unwrap_or(0.0) as u64,
            r["session_id"].as_str().unwrap_or(""),
        )
    });
    Ok(OpsAnswer::Found(json!({"purchases": rows, "next": next})))
}

/// Re-runs the steps that are not done (failed ones are set back to pending first);
/// done steps stay done. Answers with the purchase's new state.
async fn replay<L, U, C, S>(
    deps: &Deps<'_, L, U, C, S>,
    id: &str,
    started: u64,
) -> Result<OpsAnswer, LedgerError>
where
    L: Ledger + OpsStore,
    U: Upstream,
    C: Clock,
    S: Sink,
{
    let ledger = deps.ledger;
    // Checked before anything is reset: without the key nothing could run the steps,
    // and a reset failed step would drop out of the failed list for nothing.
    if deps.config.stripe_api_key.is_none() {
        return Ok(OpsAnswer::NotConfigured(crate::settings::STRIPE_API_KEY));
    }
    let reset = ledger.reset_failed(id, started).await?;
    let outcome = match fulfilment::resume(deps, id, started).await {
        Ok(report) => match report.outcome {
            RunOutcome::Complete => "complete",
            RunOutcome::Failed => "failed",
            RunOutcome::Busy => "busy",
            RunOutcome::Retry => "retry",
        },
        Err(ResumeError::Unknown) => {
            return Ok(match ledger.purchase_row(id).await? {
                // Known, but nothing to run (e.g. awaiting payment): say so, not 404.
                Some(purchase) => OpsAnswer::Found(
                    json!({"session_id": id, "reset": reset, "outcome": "nothing_to_run", "purchase": purchase, "steps": []}),
                ),
                None => OpsAnswer::NoSuchPurchase,
            });
        }
        Err(ResumeError::Session(StepError::NotConfigured(setting))) => {
            return Ok(OpsAnswer::NotConfigured(setting))
        }
        Err(ResumeError::Session(_)) => "session_unavailable",
        Err(ResumeError::Ledger(e)) => return Err(e),
    };
    let purchase = ledger.purchase_row(id).await?;
    let body = json!({"session_id": id, "reset": reset, "outcome": outcome, "purchase": purchase, "steps": steps(ledger, id, false).await?});
    Ok(if outcome == "session_unavailable" {
        OpsAnswer::SessionUnavailable(body)
    } else {
        OpsAnswer::Found(body)
    })
}
