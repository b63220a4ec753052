//! Glue of the ops API: runs an [`AdminRoute`] against D1 and the engine, and logs
//! every call (who: a token fingerprint; what: the route; result: the status).

use std::rc::Rc;

use serde_json::{json, Value};
use worker::{Env, Request, Response, Result};

use super::{now_ms, respond_json, Console, Runtime};
use crate::admin::{self, AdminRefusal, AdminRoute, ListQuery, StateFilter, STUCK_AFTER_MS};
use crate::config::Config;
use crate::engine::{self, ResumeError, RunOutcome};
use crate::ledger::d1::{int, text, D1Ledger};
use crate::ledger::{Ledger, LedgerError};
use crate::log::Line;
use crate::upstream::StepError;

pub async fn handle(req: Request, env: Env, config: Rc<Config>) -> Result<Response> {
    let started = now_ms();
    let authorization = req.headers().get("authorization")?;
    let fingerprint = match admin::authorize(config.admin_token.as_ref(), authorization.as_deref())
    {
        Ok(who) => who,
        Err(refusal) => return refused(refusal, None),
    };
    // The raw URL, not `req.url()`: parsing it with the `url` crate links its IDNA
    // tables, 226 KB of wasm for a query string (measured; see BENCHMARKS.md).
    let raw = req.inner().url();
    let route = match admin::route(req.method().as_ref(), &req.path(), query_of(&raw)) {
        Ok(route) => route,
        Err(refusal) => return refused(refusal, Some(&fingerprint)),
    };
    let runtime = Runtime::bind(&env, config)?;
    let (status, body) = match run(&route, &runtime, started).await {
        Ok(answer) => answer,
        Err(e) => {
            Line::error("admin call failed")
                .text("detail", &e.to_string())
                .emit(&Console);
            (503, json!({"error": "ledger unavailable, retry"}))
        }
    };
    Line::info("admin call")
        .id("who", &fingerprint)
        .label("route", route.name())
        .opt_id("session_id", session_of(&route))
        .opt_id("event_id", event_of(&route))
        .num("status", u64::from(status))
        .num("duration_ms", now_ms().saturating_sub(started))
        .emit(&Console);
    respond_json(status, &body)
}

/// The query of a raw request URL, without the fragment.
fn query_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    Some(query.split_once('#').map_or(query, |(q, _)| q))
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

fn refused(refusal: AdminRefusal, who: Option<&str>) -> Result<Response> {
    Line::warn("admin refused")
        .opt_id("who", who)
        .label("reason", refusal.code())
        .num("status", u64::from(refusal.status()))
        .emit(&Console);
    let response = respond_json(refusal.status(), &json!({"error": refusal.message()}))?;
    if let AdminRefusal::MethodNotAllowed(allow) = refusal {
        response.headers().set("allow", allow)?;
    }
    Ok(response)
}

async fn run(
    route: &AdminRoute,
    runtime: &Runtime,
    started: u64,
) -> std::result::Result<(u16, Value), LedgerError> {
    let ledger = &runtime.ledger;
    match route {
        AdminRoute::Event(id) => event(ledger, id).await,
        AdminRoute::Purchase(id) => purchase(ledger, id).await,
        AdminRoute::ListPurchases(query) => list(ledger, query, started).await,
        AdminRoute::Replay(id) => replay(runtime, id, started).await,
    }
}

const PURCHASE_COLUMNS: &str = "session_id, state, livemode, created_at, updated_at";

/// The ledger row and the purchase's steps: ids, states and errors, no customer data
/// and no license key (that is the purchase lookup's, for support).
async fn event(ledger: &D1Ledger, id: &str) -> std::result::Result<(u16, Value), LedgerError> {
    const SQL: &str = "SELECT id, type, livemode, api_version, created, object_id, disposition, received_at FROM events WHERE id = ?1";
    let Some(event): Option<Value> = ledger.first("admin_event", SQL, &[text(id)]).await? else {
        return Ok((404, json!({"error": "no such event"})));
    };
    let session = event["object_id"].as_str().unwrap_or_default().to_string();
    let purchase = purchase_row(ledger, &session).await?;
    let steps = steps(ledger, &session, false).await?;
    Ok((
        200,
        json!({"event": event, "purchase": purchase, "steps": steps}),
    ))
}

/// Steps, license key and shipment id: the support and re-delivery lookup.
async fn purchase(ledger: &D1Ledger, id: &str) -> std::result::Result<(u16, Value), LedgerError> {
    let Some(purchase) = purchase_row(ledger, id).await? else {
        return Ok((404, json!({"error": "no such purchase"})));
    };
    const MAPPING: &str =
        "SELECT license_key, shipment_id FROM purchase_mappings WHERE session_id = ?1";
    const EVENTS: &str = "SELECT id, type, disposition, received_at FROM events WHERE object_id = ?1 ORDER BY received_at";
    let mapping: Option<Value> = ledger.first("admin_purchase", MAPPING, &[text(id)]).await?;
    let events: Vec<Value> = ledger.all("admin_purchase", EVENTS, &[text(id)]).await?;
    let mapping = mapping.unwrap_or(Value::Null);
    Ok((
        200,
        json!({
            "purchase": purchase,
            "license_key": mapping["license_key"],
            "shipment_id": mapping["shipment_id"],
            "steps": steps(ledger, id, true).await?,
            "events": events,
        }),
    ))
}

async fn purchase_row(
    ledger: &D1Ledger,
    id: &str,
) -> std::result::Result<Option<Value>, LedgerError> {
    let sql = format!("SELECT {PURCHASE_COLUMNS} FROM purchases WHERE session_id = ?1");
    ledger.first("admin_purchase", &sql, &[text(id)]).await
}

async fn steps(
    ledger: &D1Ledger,
    session: &str,
    with_result: bool,
) -> std::result::Result<Vec<Value>, LedgerError> {
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

/// Newest first, keyset-paginated on (updated_at, session_id).
async fn list(
    ledger: &D1Ledger,
    query: &ListQuery,
    now: u64,
) -> std::result::Result<(u16, Value), LedgerError> {
    let sql = format!(
        "SELECT {PURCHASE_COLUMNS} FROM purchases WHERE \
         (CASE ?1 WHEN 'failed_or_stuck' THEN state = 'failed' OR (state = 'fulfilling' AND updated_at < ?2) \
                  WHEN 'failed' THEN state = 'failed' \
                  WHEN 'stuck' THEN state = 'fulfilling' AND updated_at < ?2 \
                  ELSE state = ?1 END) \
         AND (updated_at < ?3 OR (updated_at = ?3 AND session_id < ?4)) \
         ORDER BY updated_at DESC, session_id DESC LIMIT ?5"
    );
    let filter = match query.filter {
        StateFilter::FailedOrStuck => "failed_or_stuck",
        StateFilter::Failed => "failed",
        StateFilter::Stuck => "stuck",
        StateFilter::State(state) => state.as_str(),
    };
    let (before_at, before_id) = query
        .before
        .clone()
        .unwrap_or((u64::MAX >> 12, String::new()));
    let args = [
        text(filter),
        int(now.saturating_sub(STUCK_AFTER_MS) as i64),
        int(before_at as i64),
        text(if query.before.is_some() {
            &before_id
        } else {
            "~"
        }),
        int(i64::from(query.limit) + 1),
    ];
    let mut rows: Vec<Value> = ledger.all("admin_list", &sql, &args).await?;
    let more = rows.len() > query.limit as usize;
    rows.truncate(query.limit as usize);
    let next = more.then(|| rows.last()).flatten().map(|r| {
        admin::next_cursor(
            r["updated_at"].as_f64().unwrap_or(0.0) as u64,
            r["session_id"].as_str().unwrap_or(""),
        )
    });
    Ok((200, json!({"purchases": rows, "next": next})))
}

/// Re-runs the steps that are not done (failed ones are set back to pending first);
/// done steps stay done. Answers with the purchase's new state.
async fn replay(
    runtime: &Runtime,
    id: &str,
    started: u64,
) -> std::result::Result<(u16, Value), LedgerError> {
    let ledger = &runtime.ledger;
    // Checked before anything is reset: without the key nothing could run the steps,
    // and a reset failed step would drop out of the failed list for nothing.
    if runtime.config.stripe_api_key.is_none() {
        return Ok((
            503,
            json!({"error": "STRIPE_API_KEY is not set: replays fetch the session from Stripe"}),
        ));
    }
    let reset = ledger.reset_failed(id, started).await?;
    // A replay answers with the new state, so it runs inline even in queue mode.
    let deps = runtime.deps(false);
    let (status, outcome) = match engine::resume(&deps, id, started).await {
        Ok(report) => (
            200,
            match report.outcome {
                RunOutcome::Complete => "complete",
                RunOutcome::Failed => "failed",
                RunOutcome::Busy => "busy",
                RunOutcome::Retry => "retry",
            },
        ),
        Err(ResumeError::Unknown) => {
            return Ok(match purchase_row(ledger, id).await? {
                // Known, but nothing to run (e.g. awaiting payment): say so, not 404.
                Some(purchase) => (
                    200,
                    json!({"session_id": id, "reset": reset, "outcome": "nothing_to_run", "purchase": purchase, "steps": []}),
                ),
                None => (404, json!({"error": "no such purchase"})),
            });
        }
        Err(ResumeError::Session(StepError::NotConfigured(setting))) => {
            return Ok((
                503,
                json!({"error": format!("{setting} is not set: replays fetch the session from Stripe")}),
            ))
        }
        Err(ResumeError::Session(_)) => (502, "session_unavailable"),
        Err(ResumeError::Ledger(e)) => return Err(e),
    };
    let purchase = purchase_row(ledger, id).await?;
    Ok((
        status,
        json!({"session_id": id, "reset": reset, "outcome": outcome, "purchase": purchase, "steps": steps(ledger, id, false).await?}),
    ))
}

#[cfg(test)]
mod tests {
    use super::query_of;

    #[test]
    fn the_query_is_what_lies_between_the_question_mark_and_the_fragment() {
        assert_eq!(
            query_of("https://h/admin/purchases?state=failed&limit=2"),
            Some("state=failed&limit=2")
        );
        assert_eq!(
            query_of("https://h/admin/purchases?limit=2#x"),
            Some("limit=2")
        );
        assert_eq!(query_of("https://h/admin/purchases"), None);
    }
}
