//! Signed relay: calls to the license server and the shipping system carry Standard
//! Webhooks headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`), so those
//! services can check that a call comes from this Worker with any Standard Webhooks
//! library. <https://www.standardwebhooks.com/>
//!
//! `webhook-id` is the step's Idempotency-Key: unique per message and the same across
//! retries, as the specification asks. The signature is
//! `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")), where the key is the
//! base64-decoded part of a `whsec_…` secret.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ports::HttpRequest;

/// A Standard Webhooks signing key. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelaySigner {
    key: Vec<u8>,
}

impl fmt::Debug for RelaySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelaySigner([REDACTED])")
    }
}

impl RelaySigner {
    /// Parses `whsec_` + base64, as the specification defines the secret.
    pub fn from_secret(secret: &str) -> Option<Self> {
        let encoded = secret.strip_prefix("whsec_")?;
        let key = STANDARD.decode(encoded).ok()?;
        (!key.is_empty()).then_some(Self { key })
    }

    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Adds the three headers to a request that has an Idempotency-Key and a body.
    pub fn attach(&self, request: &mut HttpRequest, timestamp: i64) {
        let Some(id) = request.header("idempotency-key").map(str::to_string) else {
            return;
        };
        let signature = self.sign(
            &id,
            timestamp,
            request.body.as_deref().unwrap_or("").as_bytes(),
        );
        request.headers.push(("webhook-id", id));
        request
            .headers
            .push(("webhook-timestamp", timestamp.to_string()));
        request.headers.push(("webhook-signature", signature));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Method;

    /// The test vector published with the Standard Webhooks specification (and used by
    /// its reference libraries): reproducing it exactly is what says a receiver's
    /// off-the-shelf library will accept our signatures.
    #[test]
    fn reproduces_the_published_standard_webhooks_test_vector() {
        let signer = RelaySigner::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            signer.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_and_base64() {
        assert!(RelaySigner::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_none());
        assert!(RelaySigner::from_secret("whsec_not base64!").is_none());
        assert!(RelaySigner::from_secret("whsec_").is_none());
    }

    #[test]
    fn attaching_uses_the_idempotency_key_as_the_message_id() {
        let signer = RelaySigner::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut request = HttpRequest {
            method: Method::Post,
            url: "https://x".into(),
            headers: vec![("idempotency-key", "stripe-edge:cs_1:license".into())],
            body: Some("{}".into()),
            timeout_ms: 0,
        };
        signer.attach(&mut request, 1_700_000_000);
        assert_eq!(
            request.header("webhook-id"),
            Some("stripe-edge:cs_1:license")
        );
        assert_eq!(request.header("webhook-timestamp"), Some("1700000000"));
        assert_eq!(
            request.header("webhook-signature").map(str::to_string),
            Some(signer.sign("stripe-edge:cs_1:license", 1_700_000_000, b"{}"))
        );
        assert!(!format!("{signer:?}").contains("MfKQ"));
    }
}
