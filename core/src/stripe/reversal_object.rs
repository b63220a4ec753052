//! The objects of the money-back events this Worker acts on: a Charge
//! (`charge.refunded`), a Dispute (`charge.dispute.*`) and a Subscription
//! (`customer.subscription.deleted`). Ids and states only; every field is optional, as
//! Stripe adds and moves fields across API versions.

use serde::Deserialize;

use super::event::Expandable;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    pub object: Option<String>,
    pub payment_intent: Option<Expandable>,
    /// True once the whole amount is refunded.
    pub refunded: Option<bool>,
    pub amount: Option<i64>,
    pub amount_refunded: Option<i64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Dispute {
    pub id: String,
    pub object: Option<String>,
    pub charge: Option<Expandable>,
    pub payment_intent: Option<Expandable>,
    /// `warning_needs_response`, `needs_response`, …, and once closed `won` or `lost`.
    pub status: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub object: Option<String>,
    pub status: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::decode;

    #[test]
    fn reads_the_ids_and_states_of_each_object() {
        let body = br#"{"id":"evt_1","object":"event","type":"charge.refunded","data":{"object":
            {"id":"ch_1","object":"charge","payment_intent":"pi_1","refunded":true,"amount":3000,
             "amount_refunded":3000,"billing_details":{"email":"a@example.com"}}}}"#;
        let charge: Charge = decode(body).unwrap().object_as().unwrap();
        assert_eq!(
            charge.payment_intent.as_ref().map(Expandable::id),
            Some("pi_1")
        );
        assert_eq!(charge.refunded, Some(true));
        let body = br#"{"id":"evt_2","object":"event","type":"charge.dispute.closed","data":{"object":
            {"id":"dp_1","object":"dispute","charge":"ch_1","payment_intent":{"id":"pi_1"},"status":"lost"}}}"#;
        let dispute: Dispute = decode(body).unwrap().object_as().unwrap();
        assert_eq!(
            dispute.payment_intent.as_ref().map(Expandable::id),
            Some("pi_1")
        );
        assert_eq!(dispute.status.as_deref(), Some("lost"));
        let body = br#"{"id":"evt_3","object":"event","type":"customer.subscription.deleted","data":{"object":
            {"id":"sub_1","object":"subscription","status":"canceled"}}}"#;
        let sub: Subscription = decode(body).unwrap().object_as().unwrap();
        assert_eq!(sub.id, "sub_1");
    }
}
