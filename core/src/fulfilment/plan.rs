//! What a verified event asks of this Worker: the pure decision, before any state.

use crate::settings::Config;
use crate::stripe::event::{CheckoutSession, Event};

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
    /// `charge.refunded`, fully refunded: take back (see `fulfilment::reversal`).
    Refunded,
    /// `charge.refunded`, partly refunded: recorded, nothing taken back.
    PartialRefund,
    /// `charge.dispute.created`: take back.
    Disputed,
    /// `charge.dispute.created` with `REVOKE_ON_DISPUTE=false`: recorded only.
    DisputeRecorded,
    /// `charge.dispute.closed`: its outcome recorded (a revoked key stays revoked).
    DisputeClosed,
    /// `customer.subscription.deleted`: revoke the license of its purchase.
    SubscriptionEnded,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fulfil => "fulfil",
            Self::AwaitingPayment => "awaiting_payment",
            Self::PaymentFailed => "payment_failed",
            Self::Ignored => "ignored",
            Self::LivemodeMismatch => "livemode_mismatch",
            Self::Refunded => "refunded",
            Self::PartialRefund => "partial_refund",
            Self::Disputed => "disputed",
            Self::DisputeRecorded => "dispute_recorded",
            Self::DisputeClosed => "dispute_closed",
            Self::SubscriptionEnded => "subscription_ended",
        }
    }
}

pub const COMPLETED: &str = "checkout.session.completed";
pub const ASYNC_SUCCEEDED: &str = "checkout.session.async_payment_succeeded";
pub const ASYNC_FAILED: &str = "checkout.session.async_payment_failed";
pub const CHARGE_REFUNDED: &str = "charge.refunded";
pub const DISPUTE_CREATED: &str = "charge.dispute.created";
pub const DISPUTE_CLOSED: &str = "charge.dispute.closed";
pub const SUBSCRIPTION_DELETED: &str = "customer.subscription.deleted";

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

/// One unit of fulfilment, run at most once per purchase. Declared in the order steps
/// run (`Ord`): the e-mail needs the license key, so it comes after the license.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    License,
    Shipping,
    Email,
}

impl Step {
    pub fn parse(name: &str) -> Option<Self> {
        [Self::License, Self::Shipping, Self::Email]
            .into_iter()
            .find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::License => "license",
            Self::Shipping => "shipping",
            Self::Email => "email",
        }
    }

    /// The key of an explicit resend of the e-mail (`POST
    /// /admin/purchases/{id}/resend-email`), never the step's own, so the upstream sends
    /// again instead of replaying the step's first answer. `resend` names the call: its
    /// time in ms, or `key-…` derived from the caller's `Idempotency-Key` (a retried call
    /// then sends nothing more).
    pub fn resend_key(session_id: &str, resend: &str) -> String {
        format!(
            "{}:resend:{resend}",
            Self::Email.idempotency_key(session_id)
        )
    }

    /// Derived from the purchase, not the event: every event and every retry about one
    /// Checkout Session sends the same key, so the upstream can drop repeats even when a
    /// lease ran out mid-call.
    /// The step this one waits for: the e-mail carries the license key. Every other
    /// step is independent and runs beside the others.
    pub fn after(self) -> Option<Step> {
        match self {
            Self::Email => Some(Self::License),
            Self::License | Self::Shipping => None,
        }
    }

    /// Joins only a purchase the ledger does not hold yet: the e-mail is never added to
    /// a purchase opened while `RESEND_API_KEY` was unset.
    pub fn only_new(self) -> bool {
        self == Self::Email
    }

    pub fn idempotency_key(self, session_id: &str) -> String {
        format!("stripe-edge:{session_id}:{}", self.name())
    }
}

/// A paid Checkout Session and what it needs. `event_id` is the event that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    pub event_id: String,
    pub livemode: bool,
    pub session: CheckoutSession,
    pub steps: Vec<Step>,
}

impl Purchase {
    pub fn session_id(&self) -> &str {
        &self.session.id
    }

    pub fn step_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name()).collect()
    }
}

/// The steps a paid session needs: a license when it names a product `slug`; shipping
/// when it carries an address, or may carry one on its PaymentIntent (sessions made by
/// `stripe trigger`) and this deployment ships at all; and, after them, the e-mail to
/// the buyer when `RESEND_API_KEY` is set and there is anything to tell them about.
pub fn purchase(event: &Event<'_>, session: CheckoutSession, config: &Config) -> Purchase {
    opened_by(&event.id, event.livemode, session, config)
}

/// [`purchase`] opened by `event_id`, which need not be a Stripe event: the success
/// page's lookup opens a purchase Stripe confirmed paid before any event arrived
/// (`crate::orders::PAGE_EVENT_ID`). The steps are decided the same way.
pub fn opened_by(
    event_id: &str,
    livemode: bool,
    session: CheckoutSession,
    config: &Config,
) -> Purchase {
    let mut steps = Vec::new();
    if session.slug().is_some() {
        steps.push(Step::License);
    }
    let address_on_payment_intent = session.payment_intent.is_some() && config.shipping.is_some();
    if session.shipping_details().is_some() || address_on_payment_intent {
        steps.push(Step::Shipping);
    }
    if !steps.is_empty() && config.email.api_key.is_some() {
        steps.push(Step::Email);
    }
    Purchase {
        event_id: event_id.to_string(),
        livemode,
        session,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::decode;

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

    fn session(extra: &str) -> (String, Config) {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"{COMPLETED}","livemode":false,"data":{{"object":{{"id":"cs_1","payment_status":"paid"{extra}}}}}}}"#
        );
        (body, Config::load(|_| None))
    }

    fn steps_of(extra: &str, config: Option<Config>) -> Vec<Step> {
        let (body, default) = session(extra);
        let event = decode(body.as_bytes()).unwrap();
        let session = event.checkout_session().unwrap();
        purchase(&event, session, &config.unwrap_or(default)).steps
    }

    #[test]
    fn a_slug_asks_for_a_license_and_an_address_for_shipping() {
        assert_eq!(
            steps_of(r#","metadata":{"slug":"pro"}"#, None),
            vec![Step::License]
        );
        let address =
            r#","collected_information":{"shipping_details":{"name":"A","address":{"line1":"x"}}}"#;
        assert_eq!(steps_of(address, None), vec![Step::Shipping]);
        assert_eq!(
            steps_of(&format!(r#","metadata":{{"slug":"pro"}}{address}"#), None),
            vec![Step::License, Step::Shipping]
        );
        assert_eq!(steps_of("", None), vec![]);
    }

    #[test]
    fn the_payment_intent_is_searched_for_an_address_only_where_shipping_is_set_up() {
        let with_shipping = Config::load(|name| match name {
            "SHIPPING_URL" => Some("https://ship.example".into()),
            "SHIPPING_API_KEY" => Some("k".into()),
            _ => None,
        });
        assert_eq!(steps_of(r#","payment_intent":"pi_1""#, None), vec![]);
        assert_eq!(
            steps_of(r#","payment_intent":"pi_1""#, Some(with_shipping)),
            vec![Step::Shipping]
        );
    }

    #[test]
    fn the_email_step_comes_last_and_only_with_a_resend_key() {
        let with_email = Config::load(|name| match name {
            "RESEND_API_KEY" => Some("re_1".into()),
            "EMAIL_FROM" => Some("shop@example.com".into()),
            _ => None,
        });
        let slug = r#","metadata":{"slug":"pro"}"#;
        assert_eq!(steps_of(slug, None), vec![Step::License]);
        assert_eq!(
            steps_of(slug, Some(with_email.clone())),
            vec![Step::License, Step::Email]
        );
        assert_eq!(steps_of("", Some(with_email)), vec![]);
        assert!(Step::License < Step::Shipping && Step::Shipping < Step::Email);
        assert_eq!(Step::parse("email"), Some(Step::Email));
        assert_eq!(
            Step::resend_key("cs_1", "7"),
            "stripe-edge:cs_1:email:resend:7"
        );
    }

    #[test]
    fn idempotency_keys_depend_on_the_session_and_step_only() {
        assert_eq!(
            Step::License.idempotency_key("cs_1"),
            "stripe-edge:cs_1:license"
        );
        assert_ne!(
            Step::License.idempotency_key("cs_1"),
            Step::Shipping.idempotency_key("cs_1")
        );
    }
}
