//! The `revoke_license` step: `POST {LICENSE_SERVER_URL}/revoke` with the key the
//! license step got, body exactly `{"license_key": "…"}` (the license server rejects
//! any other field). Revoking twice is harmless (the server answers 200 with the same
//! `revoked_at`); an unknown key (404 `license not found`) fails the step for good.

use serde::Deserialize;
use serde_json::json;

use crate::fulfilment::license::configured;
use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::{Config, ServiceSettings};
use crate::upstream::{call, Callee, Deadline, StepError};

/// Runs the step for `license_key` and returns `revoked:{revoked_at}`.
pub async fn run(
    license_key: &str,
    config: &Config,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
) -> Result<String, StepError> {
    let service = configured(config.license.as_ref())?;
    let mut request = request(license_key, service);
    if let Some(signer) = &config.forward_signer {
        signer.attach(&mut request, (clock.now_ms() / 1000) as i64);
    }
    let body = call(upstream, clock, deadline, Callee::License, request).await?;
    Ok(revoked(&body))
}

pub fn request(license_key: &str, service: &ServiceSettings) -> HttpRequest {
    HttpRequest {
        method: Method::Post,
        url: format!("{}/revoke", service.url),
        headers: vec![
            (
                "authorization",
                format!("Bearer {}", service.api_key.expose()),
            ),
            ("content-type", "application/json".into()),
        ],
        body: Some(json!({ "license_key": license_key }).to_string()),
        timeout_ms: 0,
    }
}

#[derive(Deserialize)]
struct Revoked {
    revoked_at: Option<String>,
}

/// The step's result: `revoked:{revoked_at}` (`revoked` when the answer has none).
fn revoked(body: &[u8]) -> String {
    let at = serde_json::from_slice::<Revoked>(body)
        .ok()
        .and_then(|r| r.revoked_at)
        .filter(|at| at.len() <= 64 && !at.chars().any(char::is_control));
    match at {
        Some(at) => format!("revoked:{at}"),
        None => "revoked".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Secret;

    #[test]
    fn the_body_is_exactly_the_license_key() {
        let service = ServiceSettings {
            url: "https://lic.example".into(),
            api_key: Secret::new("lk_1"),
        };
        let request = request("KEY-1", &service);
        assert_eq!(request.url, "https://lic.example/revoke");
        assert_eq!(request.header("authorization"), Some("Bearer lk_1"));
        assert_eq!(request.body.as_deref(), Some(r#"{"license_key":"KEY-1"}"#));
        assert_eq!(
            revoked(br#"{"valid":false,"status":"revoked","revoked_at":"2026-01-01T00:00:00Z"}"#),
            "revoked:2026-01-01T00:00:00Z"
        );
        assert_eq!(revoked(b"{}"), "revoked");
    }
}
