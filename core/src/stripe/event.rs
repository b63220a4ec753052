//! Minimal models of Stripe's event envelope and of the Checkout Session.
//!
//! Only the fields the Worker uses are decoded; everything else is skipped. `data.object`
//! is kept as raw JSON borrowed from the body and decoded as a Checkout Session only for
//! `checkout.session.*` events, so an unrelated object whose fields share names but not
//! types can never make a valid event undecodable. Every session field is optional:
//! Stripe adds, moves and renames fields across API versions.
//!
//! Typed JSON is decoded with `serde_json::from_slice` everywhere, also from a `&str`
//! (`.as_bytes()`, the same result): the API client decodes these models from response
//! bytes, and each reader (`from_str`, `from_slice`) compiles its own copy of every
//! model's decoder into the `.wasm` (BENCHMARKS.md, "Bundle size").

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer as _, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a verified body is not an event this Worker can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventError {
    NotJson,
    NotAnEvent,
    MissingField(&'static str),
    /// A `checkout.session.*` event whose object is not a Checkout Session we can read.
    BadSession,
    /// Signed, but a field could never be stored or used as sent (an id with control
    /// characters, a `created` beyond any date): refused with a 400 that says which,
    /// instead of a 503 that would look like an outage for three days.
    Unstorable(&'static str),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotJson => f.write_str("body is not a JSON object"),
            Self::NotAnEvent => f.write_str("body is not a Stripe event (object is not \"event\")"),
            Self::MissingField(name) => write!(f, "Stripe event has no {name}"),
            Self::BadSession => f.write_str("event data.object is not a readable Checkout Session"),
            Self::Unstorable(field) => write!(
                f,
                "Stripe event {field} is not a value this Worker can store"
            ),
        }
    }
}

impl std::error::Error for EventError {}

/// The envelope of a verified Stripe event.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub id: String,
    pub kind: String,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub created: Option<i64>,
    /// `data.object.id`: the Checkout Session id for checkout events.
    pub object_id: Option<String>,
    object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    id: Option<String>,
    object: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    livemode: Option<bool>,
    api_version: Option<String>,
    created: Option<i64>,
    #[serde(borrow)]
    data: Option<RawData<'a>>,
}

#[derive(Deserialize)]
struct RawData<'a> {
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

/// `data.object.id`, read up to the `id` key and no further: the envelope's decode has
/// already checked the whole object, and Stripe writes `id` first, so a 100 KB object is
/// not scanned a second time (a derived struct would skip every other field to the end:
/// 8 % of a 100 KB delivery's CPU, `bench/profile.mjs`). `None` when the object is not
/// a JSON object, or its first `id` is not a string.
fn object_id(object: &RawValue) -> Option<String> {
    struct FirstId<'o>(&'o mut Option<String>);
    impl<'de> Visitor<'de> for FirstId<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == "id" {
                    *self.0 = map.next_value::<Option<String>>()?;
                    // Found: stop here. The error only ends the read early; the rest
                    // of the object is never looked at.
                    return Err(de::Error::custom("found"));
                }
                map.next_value::<de::IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut id = None;
    let mut reader = serde_json::Deserializer::from_slice(object.get().as_bytes());
    let _ = reader.deserialize_map(FirstId(&mut id));
    id
}

/// Decodes the envelope of a verified body.
pub fn decode(body: &[u8]) -> Result<Event<'_>, EventError> {
    let raw: RawEvent<'_> = serde_json::from_slice(body).map_err(|_| EventError::NotJson)?;
    if raw.object.as_deref() != Some("event") {
        return Err(EventError::NotAnEvent);
    }
    let id = raw
        .id
        .filter(|s| !s.is_empty())
        .ok_or(EventError::MissingField("id"))?;
    let kind = raw
        .kind
        .filter(|s| !s.is_empty())
        .ok_or(EventError::MissingField("type"))?;
    let object = raw.data.and_then(|d| d.object);
    let object_id = object.and_then(object_id);
    storable(
        &id,
        &kind,
        raw.created,
        raw.api_version.as_deref(),
        object_id.as_deref(),
    )?;
    Ok(Event {
        id,
        kind,
        livemode: raw.livemode.unwrap_or(false),
        api_version: raw.api_version,
        created: raw.created,
        object_id,
        object,
    })
}

/// A Stripe id as every API path and ledger column takes it: 1 to 255 of
/// `A-Z a-z 0-9 _`.
pub fn is_stripe_id(id: &str) -> bool {
    (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The latest `created` accepted: 9999-12-31T23:59:59Z, far inside the 2^53 a D1
/// (JavaScript) number holds exactly.
pub const MAX_CREATED: i64 = 253_402_300_799;

/// Whether the fields the ledger stores and the steps send can be kept as they are.
fn storable(
    id: &str,
    kind: &str,
    created: Option<i64>,
    api_version: Option<&str>,
    object_id: Option<&str>,
) -> Result<(), EventError> {
    if !is_stripe_id(id) {
        return Err(EventError::Unstorable("id"));
    }
    let kind_ok = kind.len() <= 255
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_');
    if !kind_ok {
        return Err(EventError::Unstorable("type"));
    }
    if created.is_some_and(|c| !(0..=MAX_CREATED).contains(&c)) {
        return Err(EventError::Unstorable("created"));
    }
    if api_version.is_some_and(|v| v.len() > 64 || v.chars().any(char::is_control)) {
        return Err(EventError::Unstorable("api_version"));
    }
    if object_id.is_some_and(|o| !is_stripe_id(o)) {
        return Err(EventError::Unstorable("data.object.id"));
    }
    Ok(())
}

impl Event<'_> {
    pub fn is_checkout_session_event(&self) -> bool {
        self.kind.starts_with("checkout.session.")
    }

    /// Decodes `data.object` as `T` (the money-back objects of
    /// [`crate::stripe::reversal_object`]); `None` when it does not fit.
    pub fn object_as<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(self.object?.get().as_bytes()).ok()
    }

    /// Decodes `data.object` as a Checkout Session.
    pub fn checkout_session(&self) -> Result<CheckoutSession, EventError> {
        let raw = self.object.ok_or(EventError::BadSession)?;
        let session: CheckoutSession =
            serde_json::from_slice(raw.get().as_bytes()).map_err(|_| EventError::BadSession)?;
        if session.id.is_empty()
            || session
                .object
                .as_deref()
                .is_some_and(|o| o != "checkout.session")
        {
            return Err(EventError::BadSession);
        }
        Ok(session)
    }
}

/// A reference Stripe may send as an id or, when expanded, as an object with an id.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    pub fn id(&self) -> &str {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CheckoutSession {
    pub id: String,
    pub object: Option<String>,
    /// `open`, `complete` or `expired` (the success page's lookup asks Stripe for it).
    pub status: Option<String>,
    pub payment_status: Option<String>,
    pub livemode: Option<bool>,
    pub metadata: Option<Metadata>,
    pub customer: Option<Expandable>,
    pub customer_email: Option<String>,
    pub customer_details: Option<CustomerDetails>,
    /// API 2025-03-31 and later.
    pub collected_information: Option<CollectedInformation>,
    /// API versions before 2025-03-31.
    pub shipping_details: Option<ShippingDetails>,
    pub payment_intent: Option<Expandable>,
    /// Subscription mode: the Subscription the session created.
    pub subscription: Option<Expandable>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    pub slug: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CustomerDetails {
    pub email: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct CollectedInformation {
    pub shipping_details: Option<ShippingDetails>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
pub struct ShippingDetails {
    pub name: Option<String>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

impl CheckoutSession {
    /// The shipping details the session carries, newest field first. `None` means the
    /// address, if any, is on the PaymentIntent (sessions made by `stripe trigger`).
    pub fn shipping_details(&self) -> Option<&ShippingDetails> {
        self.collected_information
            .as_ref()
            .and_then(|c| c.shipping_details.as_ref())
            .or(self.shipping_details.as_ref())
            .filter(|d| d.address.is_some())
    }

    pub fn slug(&self) -> Option<&str> {
        self.metadata
            .as_ref()?
            .slug
            .as_deref()
            .filter(|s| !s.is_empty())
    }

    pub fn email(&self) -> Option<&str> {
        self.customer_details
            .as_ref()
            .and_then(|d| d.email.as_deref())
            .or(self.customer_email.as_deref())
    }

    pub fn customer_name(&self) -> Option<&str> {
        self.customer_details.as_ref()?.name.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn envelope(kind: &str, object: &str) -> String {
        format!(
            r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"api_version":"2025-03-31.basil","created":1700000000,"data":{{"object":{object}}}}}"#
        )
    }

    #[test]
    fn decodes_the_envelope_fields_the_ledger_keeps() {
        let body = envelope(
            "checkout.session.completed",
            r#"{"id":"cs_test_1","object":"checkout.session"}"#,
        );
        let event = decode(body.as_bytes()).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.kind, "checkout.session.completed");
        assert!(!event.livemode);
        assert_eq!(event.api_version.as_deref(), Some("2025-03-31.basil"));
        assert_eq!(event.created, Some(1_700_000_000));
        assert_eq!(event.object_id.as_deref(), Some("cs_test_1"));
    }

    #[test]
    fn reads_the_objects_first_id_wherever_it_is_and_nothing_else() {
        let id_of = |object: &str| {
            decode(envelope("payment_intent.created", object).as_bytes())
                .unwrap()
                .object_id
        };
        assert_eq!(
            id_of(r#"{"id":"pi_1","object":"payment_intent"}"#).as_deref(),
            Some("pi_1")
        );
        // After other fields, nested objects and an "id" inside one of them.
        assert_eq!(
            id_of(r#"{"object":"charge","meta":{"id":"inner"},"list":[1,{"id":2}],"id":"ch_1"}"#)
                .as_deref(),
            Some("ch_1")
        );
        // An escaped key still counts; the first "id" wins.
        assert_eq!(
            id_of(r#"{"id":"pi_2","id":"pi_3"}"#).as_deref(),
            Some("pi_2")
        );
        // No id, an id that is not a string, an object that is not an object.
        assert_eq!(id_of(r#"{"object":"balance"}"#), None);
        assert_eq!(id_of(r#"{"id":42}"#), None);
        assert_eq!(id_of(r#"{"id":null}"#), None);
        assert_eq!(id_of(r#"["pi_4"]"#), None);
        assert_eq!(id_of(r#""pi_5""#), None);
        // The rest of a large object is not read, but the envelope still refuses an
        // object that is not JSON.
        assert_eq!(
            decode(envelope("payment_intent.created", r#"{"id":"pi_6","x":[}"#).as_bytes())
                .unwrap_err(),
            EventError::NotJson
        );
    }

    #[test]
    fn refuses_what_is_not_an_event() {
        assert_eq!(decode(b"not json").unwrap_err(), EventError::NotJson);
        assert_eq!(decode(b"[]").unwrap_err(), EventError::NotJson);
        assert_eq!(
            decode(br#"{"id":"x","object":"charge","type":"t"}"#).unwrap_err(),
            EventError::NotAnEvent
        );
        assert_eq!(
            decode(br#"{"object":"event","type":"t"}"#).unwrap_err(),
            EventError::MissingField("id")
        );
        assert_eq!(
            decode(br#"{"id":"evt_1","object":"event"}"#).unwrap_err(),
            EventError::MissingField("type")
        );
        assert_eq!(
            decode(br#"{"id":"","object":"event","type":"t"}"#).unwrap_err(),
            EventError::MissingField("id")
        );
    }

    #[test]
    fn an_unrelated_object_with_odd_field_types_still_decodes() {
        let body = envelope(
            "customer.created",
            r#"{"id":"cus_1","shipping_details":42,"metadata":[1]}"#,
        );
        let event = decode(body.as_bytes()).unwrap();
        assert_eq!(event.object_id.as_deref(), Some("cus_1"));
        assert!(!event.is_checkout_session_event());
    }

    #[test]
    fn reads_the_new_shipping_field_before_the_old_one() {
        let object = r#"{"id":"cs_1","object":"checkout.session",
            "collected_information":{"shipping_details":{"name":"New","address":{"line1":"1 New St","country":"FR"}}},
            "shipping_details":{"name":"Old","address":{"line1":"1 Old St","country":"FR"}}}"#;
        let body = envelope("checkout.session.completed", object);
        let session = decode(body.as_bytes()).unwrap().checkout_session().unwrap();
        assert_eq!(
            session.shipping_details().unwrap().name.as_deref(),
            Some("New")
        );
    }

    #[test]
    fn falls_back_to_the_old_shipping_field() {
        let object = r#"{"id":"cs_1","collected_information":{"shipping_details":null},
            "shipping_details":{"name":"Old","address":{"line1":"1 Old St","country":"FR"}}}"#;
        let body = envelope("checkout.session.completed", object);
        let session = decode(body.as_bytes()).unwrap().checkout_session().unwrap();
        assert_eq!(
            session.shipping_details().unwrap().name.as_deref(),
            Some("Old")
        );
    }

    #[test]
    fn no_shipping_field_means_look_on_the_payment_intent() {
        let object = r#"{"id":"cs_1","collected_information":null,"payment_intent":"pi_1"}"#;
        let body = envelope("checkout.session.completed", object);
        let session = decode(body.as_bytes()).unwrap().checkout_session().unwrap();
        assert!(session.shipping_details().is_none());
        assert_eq!(
            session.payment_intent.as_ref().map(Expandable::id),
            Some("pi_1")
        );
    }

    #[test]
    fn reads_expanded_references_and_customer_details() {
        let object = r#"{"id":"cs_1","customer":{"id":"cus_9","object":"customer"},
            "customer_details":{"email":"a@example.com","name":"Ada"},"metadata":{"slug":"pro","other":"x"}}"#;
        let body = envelope("checkout.session.completed", object);
        let session = decode(body.as_bytes()).unwrap().checkout_session().unwrap();
        assert_eq!(session.customer.as_ref().map(Expandable::id), Some("cus_9"));
        assert_eq!(session.email(), Some("a@example.com"));
        assert_eq!(session.customer_name(), Some("Ada"));
        assert_eq!(session.slug(), Some("pro"));
    }

    #[test]
    fn a_checkout_event_about_something_else_is_not_a_session() {
        let body = envelope(
            "checkout.session.completed",
            r#"{"id":"pi_1","object":"payment_intent"}"#,
        );
        assert_eq!(
            decode(body.as_bytes())
                .unwrap()
                .checkout_session()
                .unwrap_err(),
            EventError::BadSession
        );
    }

    proptest! {
        #[test]
        fn decoding_never_panics(body in any::<Vec<u8>>()) {
            if let Ok(event) = decode(&body) {
                let _ = event.checkout_session();
            }
        }

        #[test]
        fn decoding_json_shaped_input_never_panics(object in "[{}\\[\\]\":,a-z0-9 ]{0,80}") {
            let body = envelope("checkout.session.completed", &object);
            if let Ok(event) = decode(body.as_bytes()) {
                let _ = event.checkout_session();
            }
        }
    }
}
