//! The shipping step: find the address, fetch every line item from Stripe, and hand the
//! order to the shipping system with the step's Idempotency-Key.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::fulfilment::first_body::FirstBody;
use crate::fulfilment::plan::{Purchase, Step};
use crate::ports::ledger::Ledger;
use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::{Config, ServiceSettings, SHIPPING_URL, STRIPE_API_KEY};
use crate::stripe::api::{OrderLine, StripeApi};
use crate::stripe::event::ShippingDetails;
use crate::upstream::{call, Callee, Deadline, StepError};

/// The step's result when neither the session nor its PaymentIntent has an address:
/// done, nothing shipped (kept in `steps.result` instead of a shipment id).
pub const NOTHING_TO_SHIP: &str = "none:no_shipping_address";

/// Runs the step and returns the shipment id (or [`NOTHING_TO_SHIP`]).
pub async fn run(
    purchase: &Purchase,
    config: &Config,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    first: &FirstBody<'_, impl Ledger>,
) -> Result<String, StepError> {
    let service = config
        .shipping
        .as_ref()
        .ok_or(StepError::NotConfigured(SHIPPING_URL))?;
    let key = config
        .stripe_api_key
        .as_ref()
        .ok_or(StepError::NotConfigured(STRIPE_API_KEY))?;
    let stripe = StripeApi {
        base: &config.stripe_api_base,
        key,
        version: &config.stripe_api_version,
    };
    let session = &purchase.session;
    let details = match (session.shipping_details(), &session.payment_intent) {
        (Some(details), _) => Some(details.clone()),
        (None, Some(intent)) => {
            stripe
                .payment_intent_shipping(upstream, clock, deadline, intent.id())
                .await?
        }
        (None, None) => None,
    };
    let Some(details) = details else {
        return Ok(NOTHING_TO_SHIP.to_string());
    };
    let lines = stripe
        .line_items(upstream, clock, deadline, &session.id)
        .await?;
    let mut request = request(purchase, service, &details, &lines);
    if let Some(signer) = &config.forward_signer {
        signer.attach(&mut request, (clock.now_ms() / 1000) as i64);
    }
    first.admit(&request).await?;
    let body = call(upstream, clock, deadline, Callee::Shipping, request).await?;
    shipment_id(&body)
}

/// The order as the shipping system expects it.
pub fn order(purchase: &Purchase, details: &ShippingDetails, lines: &[OrderLine]) -> Value {
    let session = &purchase.session;
    let address = details.address.clone().unwrap_or_default();
    json!({
        "order_id": session.id,
        "stripe_event_id": purchase.event_id,
        "payment_intent": session.payment_intent.as_ref().map(|p| p.id()),
        "customer": { "email": session.email(), "name": session.customer_name() },
        "shipping": {
            "name": details.name,
            "address": {
                "line1": address.line1,
                "line2": address.line2,
                "city": address.city,
                "state": address.state,
                "postal_code": address.postal_code,
                "country": address.country,
            }
        },
        "line_items": lines,
        "amount_total": session.amount_total,
        "currency": session.currency,
        "livemode": purchase.livemode,
    })
}

fn request(
    purchase: &Purchase,
    service: &ServiceSettings,
    details: &ShippingDetails,
    lines: &[OrderLine],
) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: service.url.clone(),
        headers: vec![
            (
                "authorization",
                format!("Bearer {}", service.api_key.expose()),
            ),
            ("content-type", "application/json".into()),
            (
                "idempotency-key",
                Step::Shipping.idempotency_key(&purchase.session.id),
            ),
        ],
        body: Some(order(purchase, details, lines).to_string()),
        timeout_ms: 0,
    }
}

#[derive(Deserialize)]
struct Created {
    shipment_id: Option<String>,
    id: Option<String>,
}

/// The shipment id (`shipment_id`, else `id`) of a 2xx answer.
pub fn shipment_id(body: &[u8]) -> Result<String, StepError> {
    serde_json::from_slice::<Created>(body)
        .ok()
        .and_then(|c| c.shipment_id.or(c.id))
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            StepError::Permanent("shipping system answered without a shipment id".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::event::decode;

    #[test]
    fn the_order_has_every_documented_field() {
        let body = br#"{"id":"evt_1","object":"event","type":"checkout.session.completed","livemode":false,"data":{"object":{
            "id":"cs_1","payment_status":"paid","payment_intent":"pi_1","amount_total":3000,"currency":"usd",
            "customer_details":{"email":"ada@example.com","name":"Ada"},
            "collected_information":{"shipping_details":{"name":"Ada L","address":{"line1":"1 Main","line2":null,"city":"Paris","state":null,"postal_code":"75001","country":"FR"}}}}}}"#;
        let event = decode(body).unwrap();
        let session = event.checkout_session().unwrap();
        let details = session.shipping_details().unwrap().clone();
        let purchase = Purchase {
            event_id: "evt_1".into(),
            livemode: false,
            session,
            steps: vec![Step::Shipping],
        };
        let line = OrderLine {
            price_id: Some("price_1".into()),
            product_id: Some("prod_1".into()),
            description: Some("Mug".into()),
            quantity: Some(2),
            unit_amount: Some(1500),
            amount_total: Some(3000),
            currency: Some("usd".into()),
        };
        let order = order(&purchase, &details, &[line]);
        assert_eq!(
            order,
            json!({
                "order_id": "cs_1", "stripe_event_id": "evt_1", "payment_intent": "pi_1",
                "customer": {"email": "ada@example.com", "name": "Ada"},
                "shipping": {"name": "Ada L", "address": {"line1": "1 Main", "line2": null, "city": "Paris",
                    "state": null, "postal_code": "75001", "country": "FR"}},
                "line_items": [{"price_id": "price_1", "product_id": "prod_1", "description": "Mug",
                    "quantity": 2, "unit_amount": 1500, "amount_total": 3000, "currency": "usd"}],
                "amount_total": 3000, "currency": "usd", "livemode": false
            })
        );
    }

    #[test]
    fn the_shipment_id_is_shipment_id_or_id() {
        assert_eq!(
            shipment_id(br#"{"shipment_id":"shp_1"}"#),
            Ok("shp_1".into())
        );
        assert_eq!(shipment_id(br#"{"id":"ord_1"}"#), Ok("ord_1".into()));
        assert!(shipment_id(br#"{}"#).unwrap_err().is_permanent());
    }
}
