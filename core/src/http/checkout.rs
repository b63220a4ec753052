//! What the caller and ops are told about a checkout [`CheckoutDecision`]: the HTTP answer
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

use crate::checkout::cors::{self, Answered, Caller};
use crate::checkout::promo::{Dropped, Promotion};
use crate::checkout::{CheckoutDecision, CheckoutOutcome, CheckoutRefusal};
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

pub fn status(refusal: &CheckoutRefusal) -> u16 {
    match refusal {
        CheckoutRefusal::MethodNotAllowed => 405,
        CheckoutRefusal::ForbiddenOrigin => 403,
        CheckoutRefusal::TooLarge => 413,
        CheckoutRefusal::BadRequest(_)
        | CheckoutRefusal::UnknownProduct
        | CheckoutRefusal::BadQuantity { .. } => 400,
        CheckoutRefusal::RateLimited { .. } | CheckoutRefusal::TooManySessions { .. } => 429,
        CheckoutRefusal::NotConfigured(_) | CheckoutRefusal::Unavailable(_) => 503,
        CheckoutRefusal::Stripe(_) => 502,
    }
}

fn message(refusal: &CheckoutRefusal) -> String {
    match refusal {
        CheckoutRefusal::MethodNotAllowed => "method not allowed: POST a JSON body".into(),
        CheckoutRefusal::ForbiddenOrigin => "origin not allowed".into(),
        CheckoutRefusal::TooLarge => "body too large".into(),
        CheckoutRefusal::BadRequest(why) => (*why).into(),
        CheckoutRefusal::UnknownProduct => "unknown product".into(),
        CheckoutRefusal::BadQuantity { max } => {
            format!("quantity must be a whole number from 1 to {max}")
        }
        CheckoutRefusal::RateLimited { .. } => {
            "too many promotion code attempts; retry later".into()
        }
        CheckoutRefusal::TooManySessions { .. } => "too many checkout attempts; retry later".into(),
        // The caller learns nothing of our configuration; the log names the settings.
        CheckoutRefusal::NotConfigured(_) => "checkout is not configured".into(),
        CheckoutRefusal::Unavailable(_) => "temporarily unavailable, please retry".into(),
        // Never Stripe's message: it may quote our request or name our account.
        CheckoutRefusal::Stripe(_) => "could not start checkout, please try again".into(),
    }
}

pub fn for_decision(decision: &CheckoutDecision) -> CheckoutReply {
    let (status, body) = match &decision.outcome {
        CheckoutOutcome::Created(session) => (200, Some(json!({ "checkout_url": session.url }))),
        CheckoutOutcome::Preflight => (204, None),
        CheckoutOutcome::Refused(refusal) => {
            (status(refusal), Some(json!({ "error": message(refusal) })))
        }
    };
    let answered = match &decision.outcome {
        CheckoutOutcome::Preflight => Answered::Preflight,
        CheckoutOutcome::Refused(CheckoutRefusal::MethodNotAllowed) => Answered::MethodNotAllowed,
        CheckoutOutcome::Refused(
            CheckoutRefusal::RateLimited { retry_after_secs }
            | CheckoutRefusal::TooManySessions { retry_after_secs },
        ) => Answered::RetryAfter(*retry_after_secs),
        _ => Answered::Other,
    };
    let headers = cors::answer_headers(
        &decision.caller,
        answered,
        "POST, OPTIONS",
        cors::preflight_headers,
    );
    CheckoutReply {
        status,
        body,
        headers,
    }
}

/// The one log line of a decision. Never the promotion code, the client's address,
/// its origin or any Stripe text: ids, labels and numbers.
pub fn decision_line(decision: &CheckoutDecision, duration_ms: u64) -> Line {
    let line = match &decision.outcome {
        CheckoutOutcome::Created(session) => {
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
        CheckoutOutcome::Preflight => Line::info("checkout preflight").num("status", 204),
        CheckoutOutcome::Refused(refusal) => refusal_line(refusal)
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
    let line = if decision.session_count_failed {
        line.label("session_budget", "uncounted")
    } else {
        line
    };
    promotion_fields(line, decision).num("duration_ms", duration_ms)
}

fn refusal_line(refusal: &CheckoutRefusal) -> Line {
    match refusal {
        CheckoutRefusal::RateLimited { retry_after_secs }
        | CheckoutRefusal::TooManySessions { retry_after_secs } => {
            Line::warn("checkout refused").num("retry_after_secs", *retry_after_secs)
        }
        CheckoutRefusal::NotConfigured(settings) => {
            Line::error("checkout not configured").ids("settings", settings)
        }
        CheckoutRefusal::Unavailable(e) => {
            Line::error("checkout failed: throttle unavailable").text("detail", &e.to_string())
        }
        CheckoutRefusal::Stripe(failure) => {
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
fn promotion_fields(line: Line, decision: &CheckoutDecision) -> Line {
    let created = matches!(decision.outcome, CheckoutOutcome::Created(_));
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
