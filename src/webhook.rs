//! The life of one delivery to `POST /webhooks/stripe`, over traits: verify, decode,
//! decide, record. Knows nothing of JavaScript; the edge glue reads the request and
//! turns the [`Decision`] into a response ([`crate::reply`]) and a log line.

use crate::config::Config;
use crate::event::{self, EventError};
use crate::ledger::{Claim, EventRecord, Ledger, LedgerError};
use crate::plan::{self, Disposition};
use crate::signature::{self, SignatureError};

/// A delivery as received: the signature header and the raw body bytes.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// The `status` Stripe reads in a 2xx answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// First time seen, and handled.
    Accepted,
    /// Seen before; nothing left to do.
    Duplicate,
    /// Recorded, but not something this Worker acts on.
    Ignored,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Ignored => "ignored",
        }
    }
}

/// Why a request was refused. Each maps to exactly one HTTP status in [`crate::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotFound,
    MethodNotAllowed,
    TooLarge {
        limit: u64,
    },
    /// No usable webhook secret: refuse everything (fail closed).
    NotConfigured,
    BadSignature(SignatureError),
    NotAnEvent(EventError),
    /// The ledger could not record the event; Stripe must retry.
    Unavailable(LedgerError),
}

impl Refusal {
    /// A stable code for the log's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::TooLarge { .. } => "body_too_large",
            Self::NotConfigured => "not_configured",
            Self::BadSignature(e) => e.code(),
            Self::NotAnEvent(EventError::BadSession) => "bad_session",
            Self::NotAnEvent(_) => "not_an_event",
            Self::Unavailable(_) => "ledger_unavailable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Recorded(Status),
    Refused(Refusal),
}

/// What happened to one request, with the ids known by the time it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    pub disposition: Option<Disposition>,
    pub verdict: Verdict,
}

impl Decision {
    pub fn refused(refusal: Refusal) -> Self {
        Self {
            event_id: None,
            event_type: None,
            object_id: None,
            disposition: None,
            verdict: Verdict::Refused(refusal),
        }
    }
}

/// Handles a delivery whose size and method the glue already checked.
pub async fn handle(
    config: &Config,
    ledger: &impl Ledger,
    delivery: Delivery<'_>,
    now_ms: u64,
) -> Decision {
    if config.webhook_secrets.is_empty() {
        return Decision::refused(Refusal::NotConfigured);
    }
    let now_secs = (now_ms / 1000) as i64;
    if let Err(e) = signature::verify_at(
        delivery.signature,
        delivery.body,
        &config.webhook_secrets,
        config.tolerance_secs,
        now_secs,
    ) {
        return Decision::refused(Refusal::BadSignature(e));
    }
    let event = match event::decode(delivery.body) {
        Ok(event) => event,
        Err(e) => return Decision::refused(Refusal::NotAnEvent(e)),
    };
    let mut decision = Decision {
        event_id: Some(event.id.clone()),
        event_type: Some(event.kind.clone()),
        object_id: event.object_id.clone(),
        disposition: None,
        verdict: Verdict::Refused(Refusal::NotAnEvent(EventError::BadSession)),
    };
    let session = if plan::needs_session(&event.kind) {
        match event.checkout_session() {
            Ok(session) => Some(session),
            Err(e) => {
                decision.verdict = Verdict::Refused(Refusal::NotAnEvent(e));
                return decision;
            }
        }
    } else {
        None
    };
    let disposition = plan::disposition(&event, session.as_ref(), config.livemode);
    decision.disposition = Some(disposition);
    let record = EventRecord {
        id: event.id.clone(),
        kind: event.kind.clone(),
        livemode: event.livemode,
        api_version: event.api_version.clone(),
        created: event.created,
        object_id: event.object_id.clone(),
        disposition: disposition.as_str(),
        received_at_ms: now_ms,
    };
    decision.verdict = match ledger.claim_event(&record).await {
        Err(e) => Verdict::Refused(Refusal::Unavailable(e)),
        Ok(Claim::Seen) => Verdict::Recorded(Status::Duplicate),
        Ok(Claim::New) => Verdict::Recorded(match disposition {
            Disposition::Ignored | Disposition::LivemodeMismatch => Status::Ignored,
            _ => Status::Accepted,
        }),
    };
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::memory::MemoryLedger;
    use crate::signature::sign_header;
    use futures_executor::block_on;

    const SECRET: &str = "whsec_unit";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn config() -> Config {
        Config::load(|name| {
            (name == crate::config::STRIPE_WEBHOOK_SECRET).then(|| SECRET.to_string())
        })
    }

    fn body(kind: &str) -> String {
        format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":{{"id":"cs_1","object":"checkout.session","payment_status":"paid"}}}}}}"#
        )
    }

    fn deliver(config: &Config, ledger: &MemoryLedger, body: &str) -> Decision {
        let header = sign_header(SECRET, 1_700_000_000, body.as_bytes());
        block_on(handle(
            config,
            ledger,
            Delivery {
                signature: Some(&header),
                body: body.as_bytes(),
            },
            NOW_MS,
        ))
    }

    #[test]
    fn the_first_delivery_is_accepted_and_recorded_once() {
        let ledger = MemoryLedger::default();
        let decision = deliver(&config(), &ledger, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
        let events = ledger.events.borrow();
        let row = &events["evt_1"];
        assert_eq!(row.object_id.as_deref(), Some("cs_1"));
        assert_eq!(row.disposition, "fulfil");
        assert_eq!(row.received_at_ms, NOW_MS);
    }

    #[test]
    fn a_second_delivery_is_a_duplicate_and_changes_nothing() {
        let ledger = MemoryLedger::default();
        deliver(&config(), &ledger, &body("checkout.session.completed"));
        let before = ledger.events.borrow().clone();
        let decision = deliver(&config(), &ledger, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Duplicate));
        assert_eq!(*ledger.events.borrow(), before);
    }

    #[test]
    fn types_we_do_not_act_on_are_recorded_as_ignored() {
        let ledger = MemoryLedger::default();
        let decision = deliver(&config(), &ledger, &body("customer.created"));
        assert_eq!(decision.verdict, Verdict::Recorded(Status::Ignored));
        assert_eq!(ledger.events.borrow()["evt_1"].disposition, "ignored");
    }

    #[test]
    fn without_a_secret_everything_is_refused_and_nothing_recorded() {
        let ledger = MemoryLedger::default();
        let config = Config::load(|_| None);
        let decision = deliver(&config, &ledger, &body("checkout.session.completed"));
        assert_eq!(decision.verdict, Verdict::Refused(Refusal::NotConfigured));
        assert!(ledger.events.borrow().is_empty());
    }

    #[test]
    fn a_bad_signature_touches_no_state() {
        let ledger = MemoryLedger::default();
        let body = body("checkout.session.completed");
        let header = sign_header("whsec_other", 1_700_000_000, body.as_bytes());
        let decision = block_on(handle(
            &config(),
            &ledger,
            Delivery {
                signature: Some(&header),
                body: body.as_bytes(),
            },
            NOW_MS,
        ));
        assert_eq!(
            decision.verdict,
            Verdict::Refused(Refusal::BadSignature(SignatureError::NoMatch))
        );
        assert!(ledger.events.borrow().is_empty());
    }

    #[test]
    fn a_signed_non_event_is_refused_without_state() {
        let ledger = MemoryLedger::default();
        let decision = deliver(&config(), &ledger, r#"{"id":"ch_1","object":"charge"}"#);
        assert_eq!(
            decision.verdict,
            Verdict::Refused(Refusal::NotAnEvent(EventError::NotAnEvent))
        );
        assert!(ledger.events.borrow().is_empty());
    }

    #[test]
    fn an_unavailable_ledger_is_a_retryable_refusal() {
        let ledger = MemoryLedger::default();
        ledger.unavailable.set(true);
        let decision = deliver(&config(), &ledger, &body("checkout.session.completed"));
        assert!(matches!(
            decision.verdict,
            Verdict::Refused(Refusal::Unavailable(_))
        ));
    }
}
