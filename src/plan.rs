//! What a verified event asks of this Worker: the pure decision, before any state.

use crate::event::{CheckoutSession, Event};

/// What the Worker decided about one event; stored in `events.disposition`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// A paid purchase: run its steps.
    Fulfil,
    /// `checkout.session.completed` with a delayed payment method: wait for the outcome.
    AwaitingPayment,
    /// `checkout.session.async_payment_failed`: nothing will be fulfilled.
    PaymentFailed,
    /// A type this Worker does not act on.
    Ignored,
    /// `livemode` differs from `STRIPE_LIVEMODE`: never fulfilled.
    LivemodeMismatch,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fulfil => "fulfil",
            Self::AwaitingPayment => "awaiting_payment",
            Self::PaymentFailed => "payment_failed",
            Self::Ignored => "ignored",
            Self::LivemodeMismatch => "livemode_mismatch",
        }
    }
}

pub const COMPLETED: &str = "checkout.session.completed";
pub const ASYNC_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";
pub const ASYNC_FAILED: &str = "checkout.session.async_payment_failed";

/// Decides what to do with an event. `session` is the decoded Checkout Session for
/// the three checkout types this Worker acts on.
pub fn disposition(
    event: &Event<'_>,
    session: Option<&CheckoutSession>,
    livemode: Option<bool>,
) -> Disposition {
    let acts_on = matches!(
        event.kind.as_str(),
        COMPLETED | ASYNC_SUCCEEDED | ASYNC_FAILED
    );
    let Some(session) = session.filter(|_| acts_on) else {
        return Disposition::Ignored;
    };
    if livemode.is_some_and(|expected| expected != event.livemode) {
        return Disposition::LivemodeMismatch;
    }
    match event.kind.as_str() {
        ASYNC_FAILED => Disposition::PaymentFailed,
        ASYNC_SUCCEEDED => Disposition::Fulfil,
        _ => match session.payment_status.as_deref() {
            Some("paid") | Some("no_payment_required") => Disposition::Fulfil,
            _ => Disposition::AwaitingPayment,
        },
    }
}

/// True for the event types whose object must decode as a Checkout Session.
pub fn needs_session(kind: &str) -> bool {
    matches!(kind, COMPLETED | ASYNC_SUCCEEDED | ASYNC_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn decide(
        kind: &str,
        payment_status: &str,
        livemode: bool,
        expected: Option<bool>,
    ) -> Disposition {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":{livemode},"data":{{"object":{{"id":"cs_1","object":"checkout.session","payment_status":"{payment_status}"}}}}}}"#
        );
        let event = decode(body.as_bytes()).unwrap();
        let session = needs_session(&event.kind).then(|| event.checkout_session().unwrap());
        disposition(&event, session.as_ref(), expected)
    }

    #[test]
    fn paid_and_free_sessions_are_fulfilled() {
        assert_eq!(decide(COMPLETED, "paid", false, None), Disposition::Fulfil);
        assert_eq!(
            decide(COMPLETED, "no_payment_required", false, None),
            Disposition::Fulfil
        );
        assert_eq!(
            decide(ASYNC_SUCCEEDED, "paid", false, None),
            Disposition::Fulfil
        );
    }

    #[test]
    fn unpaid_sessions_wait_and_failed_payments_are_recorded() {
        assert_eq!(
            decide(COMPLETED, "unpaid", false, None),
            Disposition::AwaitingPayment
        );
        assert_eq!(
            decide(ASYNC_FAILED, "unpaid", false, None),
            Disposition::PaymentFailed
        );
    }

    #[test]
    fn other_types_are_ignored() {
        assert_eq!(
            decide("checkout.session.expired", "unpaid", false, None),
            Disposition::Ignored
        );
        assert_eq!(
            decide("payment_intent.succeeded", "paid", false, None),
            Disposition::Ignored
        );
    }

    #[test]
    fn a_livemode_mismatch_is_never_fulfilled_either_way() {
        assert_eq!(
            decide(COMPLETED, "paid", false, Some(true)),
            Disposition::LivemodeMismatch
        );
        assert_eq!(
            decide(COMPLETED, "paid", true, Some(false)),
            Disposition::LivemodeMismatch
        );
        assert_eq!(
            decide(COMPLETED, "paid", true, Some(true)),
            Disposition::Fulfil
        );
    }
}
