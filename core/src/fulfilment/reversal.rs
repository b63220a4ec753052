//! Taking back when the money goes back: which events reverse a purchase, what each one
//! takes back, and the steps that do it. Pure decisions; the ledger applies them
//! atomically (`Ledger::claim_reversal`, `Ledger::open_round`) and the engine runs
//! the reverse steps with the same claim → call → settle machinery as forward ones.
//!
//! | event | disposition | takes back |
//! |---|---|---|
//! | `charge.refunded`, `refunded: true` | `refunded` | license and shipment |
//! | `charge.refunded`, partial | `partial_refund` | nothing |
//! | `charge.dispute.created` | `disputed` (`dispute_recorded` when `REVOKE_ON_DISPUTE=false`) | license and shipment |
//! | `charge.dispute.closed` | `dispute_closed` | nothing (no un-revoke) |
//! | `customer.subscription.deleted` | `subscription_ended` | license |

use crate::fulfilment::plan::{self, Disposition, Step};
use crate::ports::ledger::{PurchaseState, TakeBackRule};
use crate::settings::Config;
use crate::stripe::event::{Event, Expandable};
use crate::stripe::reversal_object::{Charge, Dispute, Subscription};

/// A money-back event, read: what it is against and what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// The PaymentIntent (`pi_…`) or Subscription (`sub_…`) the purchase is found by.
    pub reference: String,
    pub disposition: Disposition,
    /// A dispute's status; never customer data.
    pub detail: Option<String>,
}

/// True for the money-back event types this Worker acts on.
pub fn is_reversal_type(kind: &str) -> bool {
    matches!(
        kind,
        plan::CHARGE_REFUNDED
            | plan::DISPUTE_CREATED
            | plan::DISPUTE_CLOSED
            | plan::SUBSCRIPTION_DELETED
    )
}

/// Reads a money-back event. `None` when its object names no PaymentIntent or
/// Subscription (no Checkout purchase can be found by it): the event is ignored.
pub fn read(event: &Event<'_>, config: &Config) -> Option<Reversal> {
    let id = |e: &Option<Expandable>| e.as_ref().map(|e| e.id().to_string());
    let (reference, disposition, detail) = match event.kind.as_str() {
        plan::CHARGE_REFUNDED => {
            let charge: Charge = event.object_as()?;
            let full = charge.refunded == Some(true);
            let disposition = if full {
                Disposition::Refunded
            } else {
                Disposition::PartialRefund
            };
            (id(&charge.payment_intent)?, disposition, None)
        }
        plan::DISPUTE_CREATED | plan::DISPUTE_CLOSED => {
            let dispute: Dispute = event.object_as()?;
            let disposition = match event.kind.as_str() {
                plan::DISPUTE_CLOSED => Disposition::DisputeClosed,
                _ if config.revoke_on_dispute => Disposition::Disputed,
                _ => Disposition::DisputeRecorded,
            };
            let status = dispute.status.filter(|s| is_word(s));
            (id(&dispute.payment_intent)?, disposition, status)
        }
        plan::SUBSCRIPTION_DELETED => {
            let subscription: Subscription = event.object_as()?;
            let reference = Some(subscription.id).filter(|s| !s.is_empty())?;
            (reference, Disposition::SubscriptionEnded, None)
        }
        _ => return None,
    };
    crate::stripe::event::is_stripe_id(&reference).then_some(Reversal {
        reference,
        disposition,
        detail,
    })
}

/// A short lower-case word (a Stripe status), safe to store and log.
fn is_word(text: &str) -> bool {
    (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// The state a purchase takes when this disposition takes things back; `None` when it
/// is only recorded.
pub fn takes_back_as(disposition: Disposition) -> Option<PurchaseState> {
    match disposition {
        Disposition::Refunded => Some(PurchaseState::Refunded),
        Disposition::Disputed => Some(PurchaseState::Disputed),
        Disposition::SubscriptionEnded => Some(PurchaseState::Cancelled),
        _ => None,
    }
}

/// A step that takes a forward step back, run at most once per purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeBack {
    /// `POST {LICENSE_SERVER_URL}/revoke` with the license step's key.
    RevokeLicense,
    /// `POST {SHIPPING_URL}/{order_id}/cancel` for the shipping step's shipment.
    CancelShipment,
}

impl TakeBack {
    pub const ALL: [TakeBack; 2] = [Self::RevokeLicense, Self::CancelShipment];

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RevokeLicense => "revoke_license",
            Self::CancelShipment => "cancel_shipment",
        }
    }

    /// The forward step it takes back.
    pub fn forward(self) -> Step {
        match self {
            Self::RevokeLicense => Step::License,
            Self::CancelShipment => Step::Shipping,
        }
    }

    /// The reversals that ask for it: a license is revoked on every one; a shipment is
    /// cancelled on a refund or dispute (a subscription has nothing shipped to stop).
    pub fn on(self) -> &'static [PurchaseState] {
        match self {
            Self::RevokeLicense => &[
                PurchaseState::Refunded,
                PurchaseState::Disputed,
                PurchaseState::Cancelled,
            ],
            Self::CancelShipment => &[PurchaseState::Refunded, PurchaseState::Disputed],
        }
    }

    /// Derived from the purchase and the step, like [`Step::idempotency_key`].
    pub fn idempotency_key(self, session_id: &str) -> String {
        format!("stripe-edge:{session_id}:{}", self.name())
    }
}

/// The rules the ledger applies when a reversal meets a purchase.
pub fn rules() -> Vec<TakeBackRule> {
    TakeBack::ALL
        .into_iter()
        .map(|t| TakeBackRule {
            forward: t.forward().name(),
            reverse: t.name(),
            on: t.on(),
        })
        .collect()
}

/// The `reason` a shipment is cancelled for.
pub fn cancel_reason(state: PurchaseState) -> &'static str {
    match state {
        PurchaseState::Disputed => "disputed",
        _ => "refunded",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::decode;
    use crate::testing::full_config_with;

    fn read_body(kind: &str, object: &str, revoke_on_dispute: &str) -> Option<Reversal> {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"data":{{"object":{object}}}}}"#
        );
        let event = decode(body.as_bytes()).unwrap();
        read(
            &event,
            &full_config_with(&[("REVOKE_ON_DISPUTE", revoke_on_dispute)]),
        )
    }

    #[test]
    fn the_policy_table() {
        let full = r#"{"id":"ch_1","object":"charge","payment_intent":"pi_1","refunded":true}"#;
        let partial = r#"{"id":"ch_1","object":"charge","payment_intent":"pi_1","refunded":false,"amount_refunded":5}"#;
        let dispute =
            r#"{"id":"dp_1","object":"dispute","payment_intent":"pi_1","status":"needs_response"}"#;
        let closed = r#"{"id":"dp_1","object":"dispute","payment_intent":"pi_1","status":"lost"}"#;
        let sub = r#"{"id":"sub_1","object":"subscription","status":"canceled"}"#;
        let d = |kind, object, flag| read_body(kind, object, flag).map(|r| r.disposition);
        assert_eq!(
            d(plan::CHARGE_REFUNDED, full, "true"),
            Some(Disposition::Refunded)
        );
        assert_eq!(
            d(plan::CHARGE_REFUNDED, partial, "true"),
            Some(Disposition::PartialRefund)
        );
        assert_eq!(
            d(plan::DISPUTE_CREATED, dispute, "true"),
            Some(Disposition::Disputed)
        );
        assert_eq!(
            d(plan::DISPUTE_CREATED, dispute, "false"),
            Some(Disposition::DisputeRecorded)
        );
        assert_eq!(
            d(plan::DISPUTE_CLOSED, closed, "true"),
            Some(Disposition::DisputeClosed)
        );
        assert_eq!(
            read_body(plan::DISPUTE_CLOSED, closed, "true")
                .unwrap()
                .detail
                .as_deref(),
            Some("lost")
        );
        let ended = read_body(plan::SUBSCRIPTION_DELETED, sub, "true").unwrap();
        assert_eq!(
            (ended.reference.as_str(), ended.disposition),
            ("sub_1", Disposition::SubscriptionEnded)
        );
        assert_eq!(
            takes_back_as(Disposition::Refunded),
            Some(PurchaseState::Refunded)
        );
        assert_eq!(
            takes_back_as(Disposition::Disputed),
            Some(PurchaseState::Disputed)
        );
        assert_eq!(
            takes_back_as(Disposition::SubscriptionEnded),
            Some(PurchaseState::Cancelled)
        );
        for only_recorded in [
            Disposition::PartialRefund,
            Disposition::DisputeRecorded,
            Disposition::DisputeClosed,
        ] {
            assert_eq!(takes_back_as(only_recorded), None);
        }
    }

    #[test]
    fn a_charge_without_a_payment_intent_finds_no_purchase() {
        let legacy = r#"{"id":"ch_1","object":"charge","payment_intent":null,"refunded":true}"#;
        assert_eq!(read_body(plan::CHARGE_REFUNDED, legacy, "true"), None);
        assert_eq!(read_body(plan::CHARGE_REFUNDED, "[1]", "true"), None);
    }

    #[test]
    fn a_subscription_only_loses_its_license() {
        assert!(TakeBack::RevokeLicense
            .on()
            .contains(&PurchaseState::Cancelled));
        assert!(!TakeBack::CancelShipment
            .on()
            .contains(&PurchaseState::Cancelled));
        assert_eq!(rules()[0].forward, "license");
        assert_eq!(rules()[1].forward, "shipping");
        assert_eq!(
            TakeBack::parse("cancel_shipment"),
            Some(TakeBack::CancelShipment)
        );
        assert_eq!(TakeBack::parse("license"), None);
    }
}
