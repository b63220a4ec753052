//! The `cancel_shipment` step: `POST {SHIPPING_URL}/{order_id}/cancel` with the step's
//! Idempotency-Key and `{"order_id", "shipment_id", "reason"}`. The shipping system's
//! contract (README "Taking back"): 200/202 cancelled; 422 `{"error":
//! "already_shipped"}` too late (recorded as [`SHIPPED_BEFORE_CANCEL`], not a failure);
//! 404 permanent; 429, 5xx and timeouts retried.

use serde::Deserialize;
use serde_json::json;

use crate::fulfilment::reversal::TakeBack;
use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::{Config, ServiceSettings, SHIPPING_URL};
use crate::upstream::{classify, exchange, Callee, Deadline, StepError};

/// The step's result when the shipping system cancelled the shipment.
pub const CANCELLED: &str = "cancelled";
/// The step's result when the parcel had already left: a return is needed.
pub const SHIPPED_BEFORE_CANCEL: &str = "shipped_before_cancel";

/// Runs the step and returns [`CANCELLED`] or [`SHIPPED_BEFORE_CANCEL`].
pub async fn run(
    order_id: &str,
    shipment_id: Option<&str>,
    reason: &str,
    config: &Config,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
) -> Result<String, StepError> {
    let service = config
        .shipping
        .as_ref()
        .ok_or(StepError::NotConfigured(SHIPPING_URL))?;
    let mut request = request(order_id, shipment_id, reason, service);
    if let Some(signer) = &config.forward_signer {
        signer.attach(&mut request, (clock.now_ms() / 1000) as i64);
    }
    let response = exchange(upstream, clock, deadline, Callee::Shipping, request).await?;
    if response.status == 422 && already_shipped(&response.body) {
        return Ok(SHIPPED_BEFORE_CANCEL.into());
    }
    classify(Callee::Shipping, response).map(|_| CANCELLED.into())
}

pub fn request(
    order_id: &str,
    shipment_id: Option<&str>,
    reason: &str,
    service: &ServiceSettings,
) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: format!("{}/{order_id}/cancel", service.url),
        headers: vec![
            (
                "authorization",
                format!("Bearer {}", service.api_key.expose()),
            ),
            ("content-type", "application/json".into()),
            (
                "idempotency-key",
                TakeBack::CancelShipment.idempotency_key(order_id),
            ),
        ],
        body: Some(
            json!({"order_id": order_id, "shipment_id": shipment_id, "reason": reason}).to_string(),
        ),
        timeout_ms: 0,
    }
}

#[derive(Deserialize)]
struct Refusal {
    error: Option<String>,
}

fn already_shipped(body: &[u8]) -> bool {
    serde_json::from_slice::<Refusal>(body)
        .ok()
        .and_then(|r| r.error)
        .is_some_and(|e| e == "already_shipped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    #[test]
    fn the_request_names_the_order_the_shipment_and_the_reason() {
        let service = ServiceSettings {
            url: "https://ship.example/orders".into(),
            api_key: Secret::new("sk_1"),
        };
        let request = request("cs_1", Some("shp_1"), "refunded", &service);
        assert_eq!(request.url, "https://ship.example/orders/cs_1/cancel");
        assert_eq!(request.header("authorization"), Some("Bearer sk_1"));
        assert_eq!(
            request.header("idempotency-key"),
            Some("stripe-edge:cs_1:cancel_shipment")
        );
        let body: serde_json::Value =
            serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"order_id": "cs_1", "shipment_id": "shp_1", "reason": "refunded"})
        );
        assert!(already_shipped(br#"{"error":"already_shipped"}"#));
        assert!(!already_shipped(br#"{"error":"other"}"#));
    }
}
