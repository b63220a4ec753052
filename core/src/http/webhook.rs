//! What Stripe and ops are told about a [`Decision`]: the HTTP answer and the one log
//! line. The status code of every outcome is decided here and nowhere else.
//!
//! 2xx tells Stripe "never send this again", so it is given only once the event is
//! recorded. Retryable trouble (storage) is 503 so Stripe redelivers; a request that can
//! never succeed as sent is 4xx; a Worker that is not configured is 500, which Stripe
//! also retries for three days, so no event is lost while the secret is being set.

use serde_json::Value;

use crate::ingress::{Decision, Refusal, Status, Verdict};
use crate::log::{push_json_string, Line};
use crate::settings::{STRIPE_LIVEMODE, STRIPE_WEBHOOK_SECRET};

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    /// The body, as JSON text: written once here, copied as it is into the `Response`.
    pub body: String,
    /// The `Allow` header of a 405.
    pub allow: Option<&'static str>,
}

impl Reply {
    pub(crate) fn error(status: u16, message: impl AsRef<str>) -> Self {
        let mut body = String::from(r#"{"error":"#);
        push_json_string(&mut body, message.as_ref());
        body.push('}');
        Self::text(status, body)
    }

    pub(crate) fn json(status: u16, body: Value) -> Self {
        Self::text(status, body.to_string())
    }

    fn text(status: u16, body: String) -> Self {
        Self {
            status,
            body,
            allow: None,
        }
    }

    /// The answer to a request the glue could not handle (a bug): a generic 500, the
    /// detail only in the log.
    pub fn internal_error() -> Self {
        Self::error(500, "internal error")
    }

    /// The body read back as a JSON value (tests and tools).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.body).expect("a reply's body is JSON")
    }
}

pub fn for_decision(decision: &Decision) -> Reply {
    match &decision.verdict {
        Verdict::Recorded(status) => {
            // Written straight into its text (keys in the order serde_json's map wrote
            // them): every delivery answers this, and a map of JSON values costs it
            // allocations and a formatter pass.
            let mut body = String::with_capacity(96);
            body.push_str(r#"{"event_id":"#);
            match &decision.event_id {
                Some(id) => push_json_string(&mut body, id),
                None => body.push_str("null"),
            }
            if let Some(state) = decision.purchase_state {
                body.push_str(r#","purchase_state":"#);
                push_json_string(&mut body, state.as_str());
            }
            body.push_str(r#","received":true,"status":"#);
            push_json_string(&mut body, status.as_str());
            body.push('}');
            Reply::text(200, body)
        }
        Verdict::Refused(refusal) => for_refusal(refusal),
    }
}

fn for_refusal(refusal: &Refusal) -> Reply {
    match refusal {
        Refusal::NotFound => Reply::error(404, "not found"),
        Refusal::MethodNotAllowed => Reply {
            allow: Some("POST"),
            ..Reply::error(405, "method not allowed: Stripe webhooks are POSTed")
        },
        Refusal::TooLarge { limit } => Reply::error(
            413,
            format!("body larger than MAX_BODY_BYTES ({limit} bytes)"),
        ),
        // The client learns nothing of our configuration; the log names the setting.
        Refusal::NotConfigured => Reply::error(500, "webhook endpoint is not configured"),
        Refusal::BadSignature(e) => Reply::error(400, e.to_string()),
        Refusal::NotAnEvent(e) => Reply::error(400, e.to_string()),
        Refusal::Unavailable(_) => Reply::error(503, "temporarily unavailable, please retry"),
        // 409, not 2xx: the purchase is not done until its holder finishes.
        Refusal::Busy => Reply::error(
            409,
            "this purchase is being fulfilled by another delivery; retry later",
        ),
        Refusal::Retry => Reply::error(503, "fulfilment is not complete yet; retry later"),
        Refusal::QueueUnavailable => Reply::error(503, "temporarily unavailable, please retry"),
        // 503: Stripe keeps the event and redelivers it once the setting is fixed.
        Refusal::LivemodeInvalid => Reply::error(503, "temporarily unavailable, please retry"),
        // 400: the same bytes can never be accepted; nothing was stored or fulfilled.
        Refusal::ConflictingEvent => {
            Reply::error(400, "this event id is already recorded for another object")
        }
    }
}

/// The one log line of a decision.
pub fn decision_line(decision: &Decision, duration_ms: u64) -> Line {
    let line = match &decision.verdict {
        // A permanent failure is an error even though Stripe gets a 200.
        Verdict::Recorded(Status::Failed) => {
            Line::error("webhook recorded").label("status", "failed")
        }
        Verdict::Recorded(status) => {
            Line::info("webhook recorded").label("status", status.as_str())
        }
        Verdict::Refused(refusal) => refusal_line(refusal),
    };
    line.opt_id("event_id", decision.event_id.as_deref())
        .opt_id("event_type", decision.event_type.as_deref())
        .opt_id("object_id", decision.object_id.as_deref())
        .opt_id("disposition", decision.disposition.map(|d| d.as_str()))
        .opt_id(
            "purchase_state",
            decision.purchase_state.map(|s| s.as_str()),
        )
        .num("duration_ms", duration_ms)
}

fn refusal_line(refusal: &Refusal) -> Line {
    let line = match refusal {
        Refusal::NotFound | Refusal::MethodNotAllowed => Line::info("request refused"),
        Refusal::TooLarge { .. } | Refusal::BadSignature(_) | Refusal::NotAnEvent(_) => {
            Line::warn("webhook refused")
        }
        Refusal::NotConfigured => {
            Line::error("webhook refused: not configured").id("setting", STRIPE_WEBHOOK_SECRET)
        }
        Refusal::Unavailable(e) => {
            Line::error("webhook refused: ledger unavailable").text("detail", &e.detail)
        }
        Refusal::Busy => Line::info("webhook deferred: purchase busy"),
        Refusal::Retry => Line::warn("webhook deferred: fulfilment incomplete"),
        Refusal::QueueUnavailable => Line::error("webhook refused: queue unavailable"),
        Refusal::ConflictingEvent => Line::alert("webhook refused: event id conflict"),
        Refusal::LivemodeInvalid => {
            Line::error("webhook refused: STRIPE_LIVEMODE invalid").id("setting", STRIPE_LIVEMODE)
        }
    };
    let line = line
        .label("status", "refused")
        .label("reason", refusal.code());
    match refusal {
        Refusal::BadSignature(e) => line.text("detail", &e.to_string()),
        Refusal::NotAnEvent(e) => line.text("detail", &e.to_string()),
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::signature::SignatureError;
    use serde_json::json;

    fn decided(verdict: Verdict) -> Decision {
        Decision {
            event_id: Some("evt_1".into()),
            verdict,
            ..Decision::refused(Refusal::NotFound)
        }
    }

    #[test]
    fn every_outcome_has_its_status_code() {
        let cases = [
            (Verdict::Recorded(Status::Accepted), 200),
            (Verdict::Recorded(Status::Duplicate), 200),
            (Verdict::Refused(Refusal::NotFound), 404),
            (Verdict::Refused(Refusal::MethodNotAllowed), 405),
            (Verdict::Refused(Refusal::TooLarge { limit: 10 }), 413),
            (Verdict::Refused(Refusal::NotConfigured), 500),
            (Verdict::Refused(Refusal::Busy), 409),
            (Verdict::Refused(Refusal::Retry), 503),
            (Verdict::Refused(Refusal::ConflictingEvent), 400),
            (Verdict::Refused(Refusal::LivemodeInvalid), 503),
            (Verdict::Recorded(Status::Failed), 200),
            (
                Verdict::Refused(Refusal::BadSignature(SignatureError::NoMatch)),
                400,
            ),
            (
                Verdict::Refused(Refusal::Unavailable(crate::ports::ledger::LedgerError {
                    operation: "claim_event",
                    detail: "x".into(),
                })),
                503,
            ),
        ];
        for (verdict, status) in cases {
            assert_eq!(
                for_decision(&decided(verdict.clone())).status,
                status,
                "{verdict:?}"
            );
        }
    }

    #[test]
    fn a_recorded_event_answers_the_documented_body() {
        let reply = for_decision(&decided(Verdict::Recorded(Status::Accepted)));
        let expected = json!({"received": true, "event_id": "evt_1", "status": "accepted"});
        assert_eq!(reply.value(), expected);
        // The very text serde_json writes for it.
        assert_eq!(reply.body, expected.to_string());
        let with_state = Decision {
            purchase_state: Some(crate::ports::ledger::PurchaseState::Fulfilled),
            ..decided(Verdict::Recorded(Status::Duplicate))
        };
        let expected = json!({"received": true, "event_id": "evt_1", "status": "duplicate",
            "purchase_state": "fulfilled"});
        assert_eq!(for_decision(&with_state).body, expected.to_string());
        let odd = Decision {
            event_id: Some("evt_\"quoted\"\n".into()),
            ..decided(Verdict::Recorded(Status::Ignored))
        };
        let expected =
            json!({"received": true, "event_id": "evt_\"quoted\"\n", "status": "ignored"});
        assert_eq!(for_decision(&odd).body, expected.to_string());
        let unnamed = Decision {
            event_id: None,
            ..decided(Verdict::Recorded(Status::Ignored))
        };
        let expected = json!({"received": true, "event_id": null, "status": "ignored"});
        assert_eq!(for_decision(&unnamed).body, expected.to_string());
        let refused = for_decision(&decided(Verdict::Refused(Refusal::Busy)));
        assert_eq!(
            refused.value()["error"],
            "this purchase is being fulfilled by another delivery; retry later"
        );
    }

    #[test]
    fn a_405_says_which_method_is_allowed() {
        assert_eq!(
            for_decision(&decided(Verdict::Refused(Refusal::MethodNotAllowed))).allow,
            Some("POST")
        );
    }

    #[test]
    fn not_configured_names_the_setting_in_the_log_only() {
        let decision = decided(Verdict::Refused(Refusal::NotConfigured));
        assert!(!for_decision(&decision)
            .body
            .to_string()
            .contains(STRIPE_WEBHOOK_SECRET));
        assert!(decision_line(&decision, 0)
            .to_json()
            .contains(STRIPE_WEBHOOK_SECRET));
    }
}
