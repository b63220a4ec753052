//! One ops call, from the request's parts to its outcome and log line, over the ledger
//! and ops-store ports: authorisation, the route, the reads and the replay. The status
//! code of every outcome is `crate::http::ops`'s.

use serde_json::{json, Value};

use sha2::{Digest, Sha256};

use super::{authorize, route, AdminRefusal, AdminRoute, STUCK_AFTER_MS};
use crate::checkout::{is_client_key, BAD_CLIENT_KEY};
use crate::fulfilment::email::{self, Letter};
use crate::fulfilment::plan::Step;
use crate::fulfilment::{self, Deps, ResumeError, RunOutcome};
use crate::log::Line;
use crate::ports::ledger::{Ledger, LedgerError};
use crate::ports::ops_store::{ListQuery, OpsStore};
use crate::ports::{Clock, Sink, Upstream};
use crate::settings::STRIPE_API_KEY;
use crate::stripe::api::StripeApi;
use crate::upstream::{call, Callee, Deadline, StepError};

/// What the Worker read from an `/admin/` request.
#[derive(Debug, Clone, Copy)]
pub struct OpsCall<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string, without `?` and fragment.
    pub query: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// The caller's `Idempotency-Key` header (resend-email: a retried call with the same
    /// key sends nothing more).
    pub idempotency_key: Option<&'a str>,
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
    /// A setting the route needs is unset (replays need `STRIPE_API_KEY`; a resend
    /// `RESEND_API_KEY` and `EMAIL_FROM` too).
    NotConfigured(&'static str),
    /// The purchase cannot take this call now; the text says why (no license yet, no
    /// e-mail address on the session).
    Conflict(&'static str),
    /// The e-mail service did not send the resend; the body says whether a retry may help.
    EmailFailed(Value),
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
    let key = deps
        .config
        .webhook_secrets
        .first()
        .map_or(&[][..], |secret| secret.expose().as_bytes());
    let who = match authorize(deps.config.admin_token.as_ref(), call.authorization, key) {
        Ok(who) => who,
        Err(refusal) => return refused(refusal, None),
    };
    let route = match route(call.method, call.path, call.query) {
        Ok(route) => route,
        Err(refusal) => return refused(refusal, Some(&who)),
    };
    // A resend names itself by the caller's key when it sent one, else by its time.
    let resend = match (&route, call.idempotency_key) {
        (AdminRoute::ResendEmail(_), Some(key)) if !is_client_key(key) => {
            return refused(AdminRefusal::BadRequest(BAD_CLIENT_KEY), Some(&who));
        }
        (AdminRoute::ResendEmail(_), Some(key)) => resend_of_key(key),
        _ => started.to_string(),
    };
    let trips = deps.ledger.round_trips();
    let answer = match run(deps, &route, &resend, started).await {
        Ok(answer) => answer,
        Err(e) => OpsAnswer::Unavailable(e),
    };
    let line = Line::info("admin call")
        .id("who", &who)
        .label("route", route.name())
        .opt_id("session_id", session_of(&route))
        .opt_id("event_id", event_of(&route))
        .num("d1_calls", u64::from(deps.ledger.round_trips() - trips));
    // A resend's key is `Step::resend_key(session, resend)`: the line names it.
    let line = match route {
        AdminRoute::ResendEmail(_) => line.id("resend", &resend),
        _ => line,
    };
    (answer, line)
}

/// A resend named by the caller's `Idempotency-Key`: `key-` and the first 16 hex digits
/// of its SHA-256 (the caller's value itself reaches neither Resend nor the log).
fn resend_of_key(key: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"stripe-edge resend-email:")
        .chain_update(key.as_bytes())
        .finalize();
    format!("key-{}", &hex::encode(digest)[..16])
}

fn refused(refusal: AdminRefusal, who: Option<&str>) -> (OpsAnswer, Line) {
    let line = Line::warn("admin refused")
        .opt_id("who", who)
        .label("reason", refusal.code())
        .num("d1_calls", 0);
    (OpsAnswer::Refused(refusal), line)
}

fn session_of(route: &AdminRoute) -> Option<&str> {
    match route {
        AdminRoute::Purchase(id) | AdminRoute::Replay(id) | AdminRoute::ResendEmail(id) => Some(id),
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
    resend: &str,
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
        AdminRoute::ResendEmail(id) => resend_email(deps, id, resend, started).await,
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
    // Refunds, disputes and ended subscriptions recorded against its payment ids,
    // including those that take nothing back (a partial refund, a dispute's outcome).
    let reversals: Vec<Value> = ledger
        .reversals_of(id)
        .await?
        .into_iter()
        .map(|r| {
            json!({
                "event_id": r.event_id, "reference": r.reference, "kind": r.kind,
                "takes_back_as": r.takes_back_as.map(|s| s.as_str()),
                "detail": r.detail, "created_at": r.created_at_ms,
            })
        })
        .collect();
    Ok(OpsAnswer::Found(json!({
        "reversals": reversals,
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

/// Sends the buyer's e-mail once more, on purpose, under the resend's own
/// Idempotency-Key (`Step::resend_key(id, resend)`: new for each call, or the same for
/// calls carrying the same `Idempotency-Key`): the license e-mail when the license step
/// is done, the order confirmation when the purchase has no license step. The ledger
/// is not written: the e-mail step's own row stays as it was.
async fn resend_email<L, U, C, S>(
    deps: &Deps<'_, L, U, C, S>,
    id: &str,
    resend: &str,
    started: u64,
) -> Result<OpsAnswer, LedgerError>
where
    L: Ledger + OpsStore,
    U: Upstream,
    C: Clock,
    S: Sink,
{
    let config = deps.config;
    let (api_key, from) = match email::configured(&config.email) {
        Ok(settings) => settings,
        Err(StepError::NotConfigured(setting)) => return Ok(OpsAnswer::NotConfigured(setting)),
        Err(_) => unreachable!("configured() only reports settings"),
    };
    let Some(stripe_key) = config.stripe_api_key.as_ref() else {
        return Ok(OpsAnswer::NotConfigured(STRIPE_API_KEY));
    };
    let rows = deps.ledger.steps_of(id).await?;
    if rows.is_empty() {
        return Ok(match deps.ledger.purchase_row(id).await? {
            Some(_) => {
                OpsAnswer::Conflict("nothing was fulfilled for this purchase: no e-mail to send")
            }
            None => OpsAnswer::NoSuchPurchase,
        });
    }
    let license = rows.iter().find(|r| r.step == Step::License.name());
    let Ok(letter) = email::letter(license) else {
        return Ok(OpsAnswer::Conflict(
            "the license is not issued yet: replay the purchase first",
        ));
    };
    let deadline = Deadline::new(started, config.upstream_timeout_ms);
    let stripe = StripeApi {
        base: &config.stripe_api_base,
        key: stripe_key,
        version: &config.stripe_api_version,
    };
    let session = match stripe
        .checkout_session(deps.upstream, deps.clock, deadline, id)
        .await
    {
        Ok(session) => session,
        Err(e) => {
            let error = StepError::from(e).message();
            return Ok(OpsAnswer::SessionUnavailable(
                json!({"session_id": id, "outcome": "session_unavailable", "error": error}),
            ));
        }
    };
    let Some(to) = session.email() else {
        return Ok(OpsAnswer::Conflict(
            "the Checkout Session has no e-mail address",
        ));
    };
    let key = Step::resend_key(id, resend);
    let request = email::request(&config.email, api_key, from, &session, to, &letter, key);
    let kind = match letter {
        Letter::License(_) => "license",
        Letter::Confirmation => "confirmation",
    };
    let sent = call(deps.upstream, deps.clock, deadline, Callee::Email, request).await;
    Ok(match sent.and_then(|body| email::email_id(&body)) {
        Ok(email_id) => OpsAnswer::Found(json!({
            "session_id": id, "outcome": "sent", "kind": kind, "email_id": email_id, "resend": resend,
        })),
        Err(e) => OpsAnswer::EmailFailed(json!({
            "session_id": id, "outcome": "email_failed", "kind": kind, "retryable": !e.is_permanent(),
            "error": e.message(), "resend": resend,
        })),
    })
}

#[cfg(test)]
mod tests {
    use futures_executor::block_on;
    use serde_json::Value;

    use super::*;
    use crate::http::ops::respond;
    use crate::ingress::{self, Delivery};
    use crate::ports::ledger::StepState;
    use crate::stripe::signature::sign_header;
    use crate::testing::{full_config_with, status, Svc, World, NOW_MS, WEBHOOK_SECRET};

    const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";
    const SESSION: &str = r#"{"id":"cs_1","object":"checkout.session","payment_status":"paid","livemode":false,
        "customer":"cus_1","payment_intent":"pi_1","metadata":{"slug":"pro"},
        "customer_details":{"email":"ada@example.com","name":"Ada"}}"#;

    fn world() -> World {
        let world = World::new(full_config_with(&[("ADMIN_TOKEN", TOKEN)]));
        world.upstream.session.replace(Some(SESSION.into()));
        world
    }

    fn deliver(world: &World) {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"checkout.session.completed","livemode":false,"data":{{"object":{SESSION}}}}}"#
        );
        let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
        let delivery = Delivery {
            signature: Some(&header),
            body: body.as_bytes(),
            tags: None,
        };
        block_on(ingress::handle(&world.deps(), delivery, NOW_MS));
    }

    /// One call through the real handler and the real status mapping.
    fn call(world: &World, method: &str, path: &str, query: Option<&str>) -> (u16, Value) {
        let authorization = format!("Bearer {TOKEN}");
        let call = OpsCall {
            method,
            path,
            query,
            authorization: Some(&authorization),
            idempotency_key: None,
        };
        let (answer, line) = block_on(handle(&world.deps(), call, NOW_MS));
        let (reply, lines) = respond(answer, line, 0);
        assert!(lines.last().unwrap().to_json().contains("tok_"));
        (reply.status, reply.value())
    }

    #[test]
    fn without_a_token_setting_every_route_is_404_and_a_wrong_token_401() {
        let closed = World::new(crate::testing::full_config());
        let call = OpsCall {
            method: "GET",
            path: "/admin/purchases",
            query: None,
            authorization: Some("Bearer x"),
            idempotency_key: None,
        };
        let (answer, _) = block_on(handle(&closed.deps(), call, NOW_MS));
        assert_eq!(answer, OpsAnswer::Refused(AdminRefusal::NotFound));
        let (answer, line) = block_on(handle(&world().deps(), call, NOW_MS));
        assert_eq!(answer, OpsAnswer::Refused(AdminRefusal::Unauthorized));
        assert!(line.to_json().contains("admin refused"));
    }

    #[test]
    fn a_token_shorter_than_32_characters_is_invalid_and_keeps_the_api_closed() {
        let short = "adm_0123456789abcdef0123456789a"; // 31 characters
        let world = World::new(full_config_with(&[("ADMIN_TOKEN", short)]));
        assert!(world.config.invalid().contains(&"ADMIN_TOKEN"));
        let authorization = format!("Bearer {short}");
        let call = OpsCall {
            method: "GET",
            path: "/admin/purchases",
            query: None,
            authorization: Some(&authorization),
            idempotency_key: None,
        };
        let (answer, _) = block_on(handle(&world.deps(), call, NOW_MS));
        assert_eq!(answer, OpsAnswer::Refused(AdminRefusal::NotFound));
        let fine = World::new(full_config_with(&[("ADMIN_TOKEN", TOKEN)]));
        assert!(!fine.config.invalid().contains(&"ADMIN_TOKEN"));
    }

    #[test]
    fn the_purchase_lookup_shows_steps_keys_and_events_and_no_customer_data() {
        let world = world();
        deliver(&world);
        let (status, body) = call(&world, "GET", "/admin/purchases/cs_1", None);
        assert_eq!(status, 200);
        assert_eq!(body["purchase"]["state"], "fulfilled");
        assert_eq!(body["license_key"], "lic_1");
        assert_eq!(body["events"][0]["id"], "evt_1");
        assert_eq!(body["steps"][0]["step"], "license");
        assert!(!body.to_string().contains("ada@example.com"));
        let (status, body) = call(&world, "GET", "/admin/events/evt_1", None);
        assert_eq!(
            (status, &body["purchase"]["session_id"]),
            (200, &"cs_1".into())
        );
        assert!(
            body["steps"][0].get("result").is_none(),
            "no license key here"
        );
        assert_eq!(call(&world, "GET", "/admin/events/evt_9", None).0, 404);
        assert_eq!(call(&world, "GET", "/admin/purchases/cs_9", None).0, 404);
    }

    #[test]
    fn a_replay_runs_the_failed_step_once_and_lists_move() {
        let world = world();
        world.upstream.script(Svc::License, [status(400)]);
        deliver(&world);
        let (status, body) = call(&world, "GET", "/admin/purchases", Some("state=failed"));
        assert_eq!(
            (status, body["purchases"][0]["session_id"].as_str()),
            (200, Some("cs_1"))
        );
        let (status, body) = call(&world, "POST", "/admin/purchases/cs_1/replay", None);
        assert_eq!((status, body["outcome"].as_str()), (200, Some("complete")));
        assert_eq!(body["reset"], 1);
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 2);
        let (_, body) = call(&world, "GET", "/admin/purchases", Some("state=failed"));
        assert_eq!(body["purchases"], serde_json::json!([]));
    }

    #[test]
    fn a_replay_without_a_stripe_key_resets_nothing_and_answers_503() {
        let world = World::new(full_config_with(&[
            ("ADMIN_TOKEN", TOKEN),
            ("STRIPE_API_KEY", ""),
        ]));
        world.upstream.script(Svc::License, [status(400)]);
        deliver(&world);
        let (status, body) = call(&world, "POST", "/admin/purchases/cs_1/replay", None);
        assert_eq!(status, 503);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("STRIPE_API_KEY"));
        assert_eq!(
            world.ledger.step_row("cs_1", "license").unwrap().state,
            StepState::Failed
        );
        assert_eq!(
            call(&world, "POST", "/admin/purchases/cs_9/replay", None).0,
            503
        );
    }

    #[test]
    fn a_replay_of_an_unknown_purchase_is_404_and_a_stripe_outage_502() {
        let world = world();
        assert_eq!(
            call(&world, "POST", "/admin/purchases/cs_9/replay", None).0,
            404
        );
        world.upstream.script(Svc::License, [status(400)]);
        deliver(&world);
        world.upstream.script(Svc::Session, [status(503)]);
        let (status, body) = call(&world, "POST", "/admin/purchases/cs_1/replay", None);
        assert_eq!(
            (status, body["outcome"].as_str()),
            (502, Some("session_unavailable"))
        );
    }

    #[test]
    fn a_ledger_outage_is_503_with_a_generic_body() {
        let world = world();
        world.ledger.unavailable.set(true);
        let (status, body) = call(&world, "GET", "/admin/purchases/cs_1", None);
        assert_eq!(status, 503);
        assert_eq!(body["error"], "ledger unavailable, retry");
    }

    fn email_world() -> World {
        let world = World::new(crate::testing::email_config_with(&[("ADMIN_TOKEN", TOKEN)]));
        world.upstream.session.replace(Some(SESSION.into()));
        world
    }

    #[test]
    fn resend_email_sends_exactly_one_more_under_a_new_key() {
        let world = email_world();
        deliver(&world);
        assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1);
        let authorization = format!("Bearer {TOKEN}");
        let request = OpsCall {
            method: "POST",
            path: "/admin/purchases/cs_1/resend-email",
            query: None,
            authorization: Some(&authorization),
            idempotency_key: None,
        };
        let (answer, line) = block_on(handle(&world.deps(), request, NOW_MS));
        let (reply, lines) = respond(answer, line, 0);
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.value()["outcome"], "sent");
        assert_eq!(reply.value()["kind"], "license");
        let sent = world.upstream.calls_to(Svc::Email);
        assert_eq!(sent.len(), 2, "exactly one more");
        assert_eq!(
            sent[1].header("idempotency-key"),
            Some(format!("stripe-edge:cs_1:email:resend:{NOW_MS}").as_str())
        );
        assert_eq!(sent[1].body, sent[0].body, "the same e-mail");
        let line = lines.last().unwrap().to_json();
        assert!(line.contains("tok_") && line.contains(r#""route":"resend_email""#));
        assert!(line.contains(&format!(r#""resend":"{NOW_MS}""#)), "{line}");
        assert_eq!(reply.value()["resend"], NOW_MS.to_string());
        assert!(!line.contains("ada@example.com"));
        // The next resend gets its own key.
        world.clock.0.set(NOW_MS + 1);
        let (answer, _) = block_on(handle(&world.deps(), request, NOW_MS + 1));
        assert!(matches!(answer, OpsAnswer::Found(_)));
        let keys: Vec<_> = world
            .upstream
            .calls_to(Svc::Email)
            .iter()
            .map(|c| c.header("idempotency-key").unwrap().to_string())
            .collect();
        assert_eq!(keys.len(), 3);
        assert_ne!(keys[1], keys[2]);
        let step = world.ledger.step_row("cs_1", "email").unwrap();
        assert_eq!(step.result.as_deref(), Some("em_1"), "the step's row stays");
    }

    #[test]
    fn a_resend_retried_with_the_same_idempotency_key_sends_under_the_same_key() {
        let world = email_world();
        deliver(&world);
        let authorization = format!("Bearer {TOKEN}");
        let resend = |key: Option<&str>, now: u64| {
            let request = OpsCall {
                method: "POST",
                path: "/admin/purchases/cs_1/resend-email",
                query: None,
                authorization: Some(&authorization),
                idempotency_key: key,
            };
            let (answer, line) = block_on(handle(&world.deps(), request, now));
            respond(answer, line, 0)
        };
        let (first, lines) = resend(Some("lost-email-ticket-42"), NOW_MS);
        assert_eq!(first.status, 200, "{:?}", first.body);
        let name = first.value()["resend"].as_str().unwrap().to_string();
        assert!(name.starts_with("key-") && name.len() == 20, "{name}");
        let line = lines.last().unwrap().to_json();
        assert!(line.contains(&format!(r#""resend":"{name}""#)), "{line}");
        assert!(
            !line.contains("lost-email-ticket-42"),
            "the caller's key is never logged"
        );
        // The same key later (a retry after a timeout): the same Idempotency-Key, so
        // Resend answers the first e-mail instead of sending another.
        let (again, _) = resend(Some("lost-email-ticket-42"), NOW_MS + 5_000);
        assert_eq!(again.value()["resend"], name.as_str());
        // Another key, or none: a resend of its own.
        let (other, _) = resend(Some("lost-email-ticket-43"), NOW_MS + 6_000);
        assert_ne!(other.value()["resend"], name.as_str());
        let keys: Vec<String> = world
            .upstream
            .calls_to(Svc::Email)
            .iter()
            .map(|c| c.header("idempotency-key").unwrap().to_string())
            .collect();
        let expected = format!("stripe-edge:cs_1:email:resend:{name}");
        assert_eq!(keys[1], expected);
        assert_eq!(keys[2], expected);
        assert_ne!(keys[3], expected);
        assert!(keys.iter().all(|k| !k.contains("ticket")));
        // A key we would not take: 400, nothing sent.
        let (bad, _) = resend(Some("has spaces"), NOW_MS + 7_000);
        assert_eq!(bad.status, 400, "{:?}", bad.body);
        assert_eq!(world.upstream.calls_to(Svc::Email).len(), 4);
    }

    #[test]
    fn resend_email_statuses() {
        // Without RESEND_API_KEY: 503 naming it.
        let world = world();
        deliver(&world);
        let (code, body) = call(&world, "POST", "/admin/purchases/cs_1/resend-email", None);
        assert_eq!(code, 503);
        assert!(body["error"]
            .as_str()
            .unwrap()
            .starts_with("RESEND_API_KEY"));
        // Unknown purchase: 404; no license yet: 409; Resend refusing: 502.
        let world = email_world();
        assert_eq!(
            call(&world, "POST", "/admin/purchases/cs_9/resend-email", None).0,
            404
        );
        world.upstream.script(Svc::License, [status(400)]);
        deliver(&world);
        let (code, body) = call(&world, "POST", "/admin/purchases/cs_1/resend-email", None);
        assert_eq!(code, 409, "{body}");
        assert!(world.upstream.calls_to(Svc::Email).is_empty());
        let (code, _) = call(&world, "POST", "/admin/purchases/cs_1/replay", None);
        assert_eq!(code, 200);
        assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1);
        world.upstream.script(Svc::Email, [status(422)]);
        let (code, body) = call(&world, "POST", "/admin/purchases/cs_1/resend-email", None);
        assert_eq!((code, body["retryable"].as_bool()), (502, Some(false)));
        world.upstream.script(Svc::Session, [status(503)]);
        let (code, body) = call(&world, "POST", "/admin/purchases/cs_1/resend-email", None);
        assert_eq!(
            (code, body["outcome"].as_str()),
            (502, Some("session_unavailable"))
        );
        // A session without an e-mail address: 409.
        world.upstream.session.replace(Some(
            r#"{"id":"cs_1","object":"checkout.session","payment_status":"paid"}"#.into(),
        ));
        assert_eq!(
            call(&world, "POST", "/admin/purchases/cs_1/resend-email", None).0,
            409
        );
    }
}
