//! What the success page and ops are told about an [`OrderDecision`]: the HTTP answer
//! (status, JSON body, headers) and the one log line. The status code of every
//! order lookup outcome is decided here and nowhere else.
//!
//! - 200 `{"order", "state", "license_key"?, "shipment"?, "retry_after_ms"?}`: the
//!   ledger's answer, exactly these keys; or `{"order", "state": "open" | "expired"}`
//!   for a session Stripe has that is not complete (nothing recorded).
//! - 204: an allowed preflight.
//! - 400: not a Checkout Session id (nothing looked up).
//! - 403: an `Origin` not in `ALLOWED_ORIGINS` (no CORS headers).
//! - 404: neither the ledger nor Stripe knows the session.
//! - 405: not GET or OPTIONS.
//! - 429 + `Retry-After`: too many lookups of unknown ids from this client.
//! - 502: Stripe could not be asked; nothing of its answer is passed on.
//! - 503: `STRIPE_API_KEY` unset (an unknown id cannot be looked up), the key's mode
//!   disagrees with `STRIPE_LIVEMODE`, or D1 failed.
//!
//! Every answer carries `Cache-Control: no-store`: it is one buyer's order, and it
//! changes. The answer is a [`CheckoutReply`] (a browser's JSON with headers), written
//! by the same glue as `/checkout`'s.

use serde_json::{json, Map, Value};

use crate::checkout::cors::{self, Answered, Caller};
use crate::http::checkout::CheckoutReply;
use crate::log::Line;
use crate::orders::{OrderDecision, OrderOutcome, OrderRefusal, OrderView};

pub fn status(refusal: &OrderRefusal) -> u16 {
    match refusal {
        OrderRefusal::MethodNotAllowed => 405,
        OrderRefusal::ForbiddenOrigin => 403,
        OrderRefusal::BadId => 400,
        OrderRefusal::NotFound => 404,
        OrderRefusal::RateLimited { .. } => 429,
        OrderRefusal::NotConfigured(_)
        | OrderRefusal::LivemodeMismatch { .. }
        | OrderRefusal::Unavailable(_) => 503,
        OrderRefusal::Stripe(_) => 502,
    }
}

fn message(refusal: &OrderRefusal) -> &'static str {
    match refusal {
        OrderRefusal::MethodNotAllowed => "method not allowed: GET the order",
        OrderRefusal::ForbiddenOrigin => "origin not allowed",
        OrderRefusal::BadId => "not a Checkout Session id",
        OrderRefusal::NotFound => "no such order",
        OrderRefusal::RateLimited { .. } => "too many order lookups; retry later",
        // The caller learns nothing of our configuration; the log names the setting.
        OrderRefusal::NotConfigured(_) | OrderRefusal::LivemodeMismatch { .. } => {
            "order lookup is not configured"
        }
        OrderRefusal::Unavailable(_) => "temporarily unavailable, please retry",
        // Never Stripe's message: it may quote our request or name our account.
        OrderRefusal::Stripe(_) => "could not look up the order, please retry",
    }
}

/// The body of a known order: exactly these keys, each only when it applies.
pub fn order_body(session_id: &str, view: &OrderView) -> Value {
    let mut body = Map::new();
    body.insert("order".into(), session_id.into());
    body.insert("state".into(), view.state.as_str().into());
    if let Some(key) = &view.license_key {
        body.insert("license_key".into(), key.as_str().into());
    }
    if let Some(shipment) = &view.shipment {
        body.insert(
            "shipment".into(),
            json!({ "state": shipment.state, "id": shipment.id }),
        );
    }
    if let Some(ms) = view.retry_after_ms {
        body.insert("retry_after_ms".into(), ms.into());
    }
    Value::Object(body)
}

pub fn for_decision(decision: &OrderDecision) -> CheckoutReply {
    let id = decision.session_id.as_deref().unwrap_or_default();
    let (status, body) = match &decision.outcome {
        OrderOutcome::Order(view) => (200, Some(order_body(id, view))),
        OrderOutcome::NotComplete(unfinished) => (
            200,
            Some(json!({ "order": id, "state": unfinished.as_str() })),
        ),
        OrderOutcome::Preflight => (204, None),
        OrderOutcome::Refused(refusal) => {
            (status(refusal), Some(json!({ "error": message(refusal) })))
        }
    };
    let answered = match &decision.outcome {
        OrderOutcome::Preflight => Answered::Preflight,
        OrderOutcome::Refused(OrderRefusal::MethodNotAllowed) => Answered::MethodNotAllowed,
        OrderOutcome::Refused(OrderRefusal::RateLimited { retry_after_secs }) => {
            Answered::RetryAfter(*retry_after_secs)
        }
        _ => Answered::Other,
    };
    // One buyer's order, changing as it is fulfilled: never stored by any cache.
    let mut headers = vec![("cache-control", "no-store".to_string())];
    headers.extend(cors::answer_headers(
        &decision.caller,
        answered,
        "GET, OPTIONS",
        |origin| cors::preflight_headers_for(origin, "GET", None),
    ));
    CheckoutReply {
        status,
        body,
        headers,
    }
}

/// The one log line of a decision: ids, states, labels and numbers. Never the license
/// key (the view's key is not passed to it), the client's address or its origin.
pub fn decision_line(decision: &OrderDecision, duration_ms: u64) -> Line {
    let line = match &decision.outcome {
        OrderOutcome::Order(view) => {
            let line = match decision.opened {
                None => Line::info("order lookup"),
                Some(opened) => {
                    Line::info("order opened by the success page").label("opened", opened.as_str())
                }
            };
            line.label("purchase_state", view.state.as_str())
                .num("status", 200)
        }
        OrderOutcome::NotComplete(unfinished) => Line::info("order not complete")
            .label("session_status", unfinished.as_str())
            .num("status", 200),
        OrderOutcome::Preflight => Line::info("order preflight").num("status", 204),
        OrderOutcome::Refused(refusal) => refusal_line(refusal)
            .label("reason", refusal.code())
            .num("status", u64::from(status(refusal))),
    };
    let line = line
        .label(
            "origin",
            match decision.caller {
                Caller::NoOrigin => "none",
                Caller::Allowed(_) => "allowed",
                Caller::Foreign => "foreign",
            },
        )
        .opt_id("session_id", decision.session_id.as_deref())
        .flag("asked_stripe", decision.asked_stripe)
        .opt_id("request_id", decision.stripe_request_id.as_deref());
    let line = match decision.lookups {
        Some(n) => line.num("lookups", u64::from(n)),
        None => line,
    };
    line.num("duration_ms", duration_ms)
}

fn refusal_line(refusal: &OrderRefusal) -> Line {
    match refusal {
        OrderRefusal::RateLimited { retry_after_secs } => {
            Line::warn("order refused").num("retry_after_secs", *retry_after_secs)
        }
        OrderRefusal::NotConfigured(setting) => {
            Line::error("order lookup not configured").id("setting", setting)
        }
        OrderRefusal::LivemodeMismatch { session_livemode } => {
            Line::error("order lookup: livemode mismatch")
                .flag("session_livemode", *session_livemode)
        }
        OrderRefusal::Unavailable(e) => {
            Line::error("order lookup failed: ledger unavailable").text("detail", &e.to_string())
        }
        OrderRefusal::Stripe(failure) => {
            let line = Line::error("order lookup failed: Stripe API").label("detail", failure.why);
            match failure.status {
                Some(status) => line.num("stripe_status", u64::from(status)),
                None => line,
            }
        }
        _ => Line::info("order refused"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orders::{Opened, ShipmentView, Unfinished};
    use crate::ports::ledger::{LedgerError, PurchaseState};
    use crate::stripe::error::{Cause, StripeError};

    fn decision(outcome: OrderOutcome, caller: Caller) -> OrderDecision {
        OrderDecision {
            outcome,
            caller,
            session_id: Some("cs_test_a1".into()),
            lookups: None,
            asked_stripe: false,
            stripe_request_id: None,
            opened: None,
        }
    }

    fn refusals() -> Vec<(OrderRefusal, u16)> {
        let stripe = StripeError {
            cause: Cause::Refused,
            status: Some(401),
            request_id: Some("req_1".into()),
            why: "Checkout Session lookup refused",
        };
        vec![
            (OrderRefusal::MethodNotAllowed, 405),
            (OrderRefusal::ForbiddenOrigin, 403),
            (OrderRefusal::BadId, 400),
            (OrderRefusal::NotFound, 404),
            (
                OrderRefusal::RateLimited {
                    retry_after_secs: 42,
                },
                429,
            ),
            (OrderRefusal::NotConfigured("STRIPE_API_KEY"), 503),
            (
                OrderRefusal::LivemodeMismatch {
                    session_livemode: true,
                },
                503,
            ),
            (
                OrderRefusal::Unavailable(LedgerError {
                    operation: "order",
                    detail: "D1_ERROR".into(),
                }),
                503,
            ),
            (OrderRefusal::Stripe(stripe), 502),
        ]
    }

    #[test]
    fn every_outcome_has_its_status_and_every_answer_is_not_stored() {
        let view = OrderView {
            state: PurchaseState::Fulfilled,
            license_key: Some("lic_secret".into()),
            shipment: None,
            retry_after_ms: None,
        };
        let mut cases = vec![
            (OrderOutcome::Order(view), 200),
            (OrderOutcome::NotComplete(Unfinished::Open), 200),
            (OrderOutcome::Preflight, 204),
        ];
        cases.extend(
            refusals()
                .into_iter()
                .map(|(r, s)| (OrderOutcome::Refused(r), s)),
        );
        for (outcome, expected) in cases {
            let reply = for_decision(&decision(outcome.clone(), Caller::NoOrigin));
            assert_eq!(reply.status, expected, "{outcome:?}");
            assert_eq!(reply.header("cache-control"), Some("no-store"));
            assert_eq!(reply.header("access-control-allow-origin"), None);
            let line = decision_line(&decision(outcome, Caller::NoOrigin), 3).to_json();
            assert!(line.contains(&format!("\"status\":{expected}")), "{line}");
            assert!(!line.contains("lic_secret"), "{line}");
        }
    }

    #[test]
    fn refusals_never_pass_on_stripe_or_d1_words() {
        for (refusal, _) in refusals() {
            let reply = for_decision(&decision(
                OrderOutcome::Refused(refusal.clone()),
                Caller::NoOrigin,
            ));
            let body = reply.body.unwrap().to_string();
            for leak in ["D1_ERROR", "req_1", "STRIPE_API_KEY", "refused"] {
                assert!(!body.contains(leak), "{refusal:?}: {body}");
            }
        }
    }

    #[test]
    fn the_body_has_exactly_the_keys_that_apply() {
        let body = |view: OrderView| order_body("cs_test_a1", &view);
        assert_eq!(
            body(OrderView {
                state: PurchaseState::Fulfilling,
                license_key: None,
                shipment: Some(ShipmentView {
                    state: "pending",
                    id: None
                }),
                retry_after_ms: Some(1_000),
            }),
            json!({"order": "cs_test_a1", "state": "fulfilling",
                   "shipment": {"state": "pending", "id": null}, "retry_after_ms": 1000})
        );
        assert_eq!(
            body(OrderView {
                state: PurchaseState::Fulfilled,
                license_key: Some("lic_1".into()),
                shipment: None,
                retry_after_ms: None,
            }),
            json!({"order": "cs_test_a1", "state": "fulfilled", "license_key": "lic_1"})
        );
    }

    #[test]
    fn cors_headers_go_to_allowed_origins_only() {
        let allowed = Caller::Allowed("https://shop.example".into());
        let preflight = for_decision(&decision(OrderOutcome::Preflight, allowed.clone()));
        assert_eq!(preflight.status, 204);
        assert_eq!(preflight.body, None);
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(
            preflight.header("access-control-allow-methods"),
            Some("GET")
        );
        let limited = for_decision(&decision(
            OrderOutcome::Refused(OrderRefusal::RateLimited {
                retry_after_secs: 42,
            }),
            allowed,
        ));
        assert_eq!(limited.header("retry-after"), Some("42"));
        assert_eq!(
            limited.header("access-control-expose-headers"),
            Some("Retry-After")
        );
        let foreign = for_decision(&decision(
            OrderOutcome::Refused(OrderRefusal::ForbiddenOrigin),
            Caller::Foreign,
        ));
        assert_eq!(foreign.status, 403);
        assert!(foreign
            .headers
            .iter()
            .all(|(k, _)| !k.starts_with("access-control")));
    }

    #[test]
    fn an_order_opened_by_the_page_says_so_in_its_line() {
        let mut d = decision(
            OrderOutcome::Order(OrderView {
                state: PurchaseState::AwaitingPayment,
                license_key: None,
                shipment: None,
                retry_after_ms: Some(60_000),
            }),
            Caller::NoOrigin,
        );
        d.opened = Some(Opened::AwaitingPayment);
        d.asked_stripe = true;
        let line = decision_line(&d, 1).to_json();
        assert!(
            line.contains(r#""msg":"order opened by the success page""#),
            "{line}"
        );
        assert!(line.contains(r#""opened":"awaiting_payment""#), "{line}");
        assert!(line.contains(r#""session_id":"cs_test_a1""#), "{line}");
    }
}
