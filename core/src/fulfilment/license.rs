//! The license step: `POST {LICENSE_SERVER_URL}/generate`.

use serde::Deserialize;
use serde_json::json;

use crate::fulfilment::first_body::FirstBody;
use crate::fulfilment::plan::{Purchase, Step};
use crate::ports::ledger::Ledger;
use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::{Config, ServiceSettings, LICENSE_SERVER_URL};
use crate::upstream::{call, Callee, Deadline, StepError};

/// Runs the step and returns the license key.
pub async fn run(
    purchase: &Purchase,
    config: &Config,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    first: &FirstBody<'_, impl Ledger>,
) -> Result<String, StepError> {
    let mut request = step_request(purchase, config)?;
    if let Some(signer) = &config.forward_signer {
        signer.attach(&mut request, (clock.now_ms() / 1000) as i64);
    }
    first.admit(&request).await?;
    let body = call(upstream, clock, deadline, Callee::License, request).await?;
    license_key(&body)
}

/// The step's request, or why there is none (not configured, no product).
pub fn step_request(purchase: &Purchase, config: &Config) -> Result<HttpRequest, StepError> {
    let service = configured(config.license.as_ref())?;
    request(purchase, service)
        .ok_or_else(|| StepError::Permanent("session has no metadata.slug".into()))
}

/// The request for a purchase; `None` when the session names no product.
pub fn request(purchase: &Purchase, service: &ServiceSettings) -> Option<HttpRequest> {
    let session = &purchase.session;
    let slug = session.slug()?;
    let body = json!({
        "slug": slug,
        "metadata": {
            "provider": "stripe",
            "provider_event_id": purchase.event_id,
            "provider_customer_id": session.customer.as_ref().map(|c| c.id()),
            "provider_checkout_session_id": session.id,
            "email": session.email(),
        }
    });
    Some(HttpRequest {
        method: Method::Post,
        url: format!("{}/generate", service.url),
        headers: vec![
            (
                "authorization",
                format!("Bearer {}", service.api_key.expose()),
            ),
            ("content-type", "application/json".into()),
            (
                "idempotency-key",
                Step::License.idempotency_key(&session.id),
            ),
        ],
        body: Some(body.to_string()),
        timeout_ms: 0,
    })
}

#[derive(Deserialize)]
struct Generated {
    license_key: Option<String>,
}

/// The license key from a 2xx answer. An answer without one is permanent: the same
/// Idempotency-Key would bring the same answer back.
pub fn license_key(body: &[u8]) -> Result<String, StepError> {
    serde_json::from_slice::<Generated>(body)
        .ok()
        .and_then(|g| g.license_key)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| StepError::Permanent("license server answered without a license_key".into()))
}

/// The license server's settings, or the one to set (fail closed).
pub fn configured(service: Option<&ServiceSettings>) -> Result<&ServiceSettings, StepError> {
    service.ok_or(StepError::NotConfigured(LICENSE_SERVER_URL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;
    use crate::stripe::event::decode;

    fn purchase() -> Purchase {
        let body = br#"{"id":"evt_9","object":"event","type":"checkout.session.completed","data":{"object":{
            "id":"cs_9","payment_status":"paid","customer":"cus_9","metadata":{"slug":"pro"},
            "customer_details":{"email":"ada@example.com"}}}}"#;
        let event = decode(body).unwrap();
        let session = event.checkout_session().unwrap();
        Purchase {
            event_id: event.id.clone(),
            livemode: false,
            session,
            steps: vec![Step::License],
        }
    }

    #[test]
    fn the_request_carries_bearer_key_idempotency_key_and_the_documented_body() {
        let service = ServiceSettings {
            url: "https://lic.example".into(),
            api_key: Secret::new("lk_1"),
        };
        let request = request(&purchase(), &service).unwrap();
        assert_eq!(request.url, "https://lic.example/generate");
        assert_eq!(request.header("authorization"), Some("Bearer lk_1"));
        assert_eq!(
            request.header("idempotency-key"),
            Some("stripe-edge:cs_9:license")
        );
        let body: serde_json::Value =
            serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({"slug": "pro", "metadata": {"provider": "stripe", "provider_event_id": "evt_9",
                "provider_customer_id": "cus_9", "provider_checkout_session_id": "cs_9", "email": "ada@example.com"}})
        );
    }

    #[test]
    fn an_answer_without_a_key_is_permanent() {
        assert_eq!(
            license_key(br#"{"license_key":"lic_1"}"#),
            Ok("lic_1".into())
        );
        assert!(license_key(br#"{"id":"x"}"#).unwrap_err().is_permanent());
        assert!(license_key(b"<html>").unwrap_err().is_permanent());
    }
}
