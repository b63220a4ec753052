//! What the caller and ops are told about a checkout [`Decision`]: the HTTP answer
//! (status, JSON body, headers) and the one log line. The status code of every
//! checkout outcome is decided here and nowhere else.
//!
//! - 200 `{"checkout_url"}`: the session exists; an invalid, expired or unknown
//!   promotion code answers exactly this too (the code is dropped), so the answer never
//!   tells a guesser whether a code exists.
//! - 400 / 413: the request can never succeed as sent; the message says why.
//! - 403: an `Origin` not in `ALLOWED_ORIGINS`.
//! - 429 + `Retry-After`: too many requests with a code from this client in this window.
//! - 502: Stripe did not create the session; nothing of Stripe's answer is passed on.
//! - 503: checkout is not configured (the log names the settings), or D1 failed.

use serde_json::{json, Value};

use super::cors::{self, Caller};
use super::promo::{Dropped, Promotion};
use super::{Decision, Outcome, Refusal};
use crate::log::Line;

/// An answer to `/checkout`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckoutReply {
    pub status: u16,
    /// The JSON body; `None` for a 204.
    pub body: Option<Value>,
    pub headers: Vec<(&'static str, String)>,
}

impl CheckoutReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn status(refusal: &Refusal) -> u16 {
    match refusal {
        Refusal::MethodNotAllowed => 405,
        Refusal::ForbiddenOrigin => 403,
        Refusal::TooLarge => 413,
        Refusal::BadRequest(_) | Refusal::UnknownProduct | Refusal::BadQuantity { .. } => 400,
        Refusal::RateLimited { .. } => 429,
        Refusal::NotConfigured(_) | Refusal::Unavailable(_) => 503,
        Refusal::Stripe(_) => 502,
    }
}

fn message(refusal: &Refusal) -> String {
    match refusal {
        Refusal::MethodNotAllowed => "method not allowed: POST a JSON body".into(),
        Refusal::ForbiddenOrigin => "origin not allowed".into(),
        Refusal::TooLarge => "body too large".into(),
        Refusal::BadRequest(why) => (*why).into(),
        Refusal::UnknownProduct => "unknown product".into(),
        Refusal::BadQuantity { max } => {
            format!("quantity must be a whole number from 1 to {max}")
        }
        Refusal::RateLimited { .. } => "too many promotion code attempts; retry later".into(),
        // The caller learns nothing of our configuration; the log names the settings.
        Refusal::NotConfigured(_) => "checkout is not configured".into(),
        Refusal::Unavailable(_) => "temporarily unavailable, please retry".into(),
        // Never Stripe's message: it may quote our request or name our account.
        Refusal::Stripe(_) => "could not start checkout, please try again".into(),
    }
}

pub fn for_decision(decision: &Decision) -> CheckoutReply {
    let (status, body) = match &decision.outcome {
        Outcome::Created(session) => (200, Some(json!({ "checkout_url": session.url }))),
        Outcome::Preflight => (204, None),
        Outcome::Refused(refusal) => (status(refusal), Some(json!({ "error": message(refusal) }))),
    };
    // The answer depends on Origin: caches must key on it.
    let mut headers = vec![("vary", "Origin".to_string())];
    match (&decision.caller, &decision.outcome) {
        (Caller::Allowed(origin), Outcome::Preflight) => {
            headers.extend(cors::preflight_headers(origin));
        }
        (Caller::Allowed(origin), outcome) => {
            headers.push(("access-control-allow-origin", origin.clone()));
            if matches!(outcome, Outcome::Refused(Refusal::RateLimited { .. })) {
                headers.push(("access-control-expose-headers", "Retry-After".into()));
            }
        }
        _ => {}
    }
    match &decision.outcome {
        Outcome::Refused(Refusal::MethodNotAllowed) => {
            headers.push(("allow", "POST, OPTIONS".into()))
        }
        Outcome::Preflight if decision.caller == Caller::NoOrigin => {
            headers.push(("allow", "POST, OPTIONS".into()));
        }
        Outcome::Refused(Refusal::RateLimited { retry_after_secs }) => {
            headers.push(("retry-after", retry_after_secs.to_string()));
        }
        _ => {}
    }
    CheckoutReply {
        status,
        body,
        headers,
    }
}

/// The one log line of a decision. Never the promotion code, the client's address,
/// its origin or any Stripe text: ids, labels and numbers.
pub fn decision_line(decision: &Decision, duration_ms: u64) -> Line {
    let line = match &decision.outcome {
        Outcome::Created(session) => {
            // A code the lookup could not judge, or that Stripe refused, is worth a look.
            let line = match decision.promotion {
                Promotion::Dropped(Dropped::LookupFailed | Dropped::RefusedByStripe) => {
                    Line::warn("checkout session created")
                }
                _ => Line::info("checkout session created"),
            };
            line.id("session_id", &session.id)
                .opt_id("request_id", session.request_id.as_deref())
                .num("status", 200)
        }
        Outcome::Preflight => Line::info("checkout preflight").num("status", 204),
        Outcome::Refused(refusal) => refusal_line(refusal)
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
        .opt_id("product", decision.slug.as_deref());
    let line = match decision.quantity {
        Some(quantity) => line.num("quantity", u64::from(quantity)),
        None => line,
    };
    promotion_fields(line, decision).num("duration_ms", duration_ms)
}

fn refusal_line(refusal: &Refusal) -> Line {
    match refusal {
        Refusal::RateLimited { retry_after_secs } => {
            Line::warn("checkout refused").num("retry_after_secs", *retry_after_secs)
        }
        Refusal::NotConfigured(settings) => {
            Line::error("checkout not configured").ids("settings", settings)
        }
        Refusal::Unavailable(e) => {
            Line::error("checkout failed: throttle unavailable").text("detail", &e.to_string())
        }
        Refusal::Stripe(failure) => {
            let line = Line::error("checkout failed: Stripe API")
                .label("detail", failure.why)
                .opt_id("request_id", failure.request_id.as_deref());
            match failure.status {
                Some(status) => line.num("stripe_status", u64::from(status)),
                None => line,
            }
        }
        _ => Line::info("checkout refused"),
    }
}

/// Whether a code came, and what became of it: never the code itself.
fn promotion_fields(line: Line, decision: &Decision) -> Line {
    let created = matches!(decision.outcome, Outcome::Created(_));
    if decision.code_attempts.is_none() && !created {
        return line;
    }
    let line = line.label("promotion", decision.promotion.as_str());
    let line = match &decision.promotion {
        Promotion::Applied(id) => line.id("promotion_code_id", id),
        Promotion::Dropped(why) => line.label("promotion_dropped", why.as_str()),
        Promotion::None => line,
    };
    let line = line.opt_id(
        "promotion_request_id",
        decision.promotion_request_id.as_deref(),
    );
    match decision.code_attempts {
        Some(n) => line.num("code_attempts", u64::from(n)),
        None => line,
    }
}
