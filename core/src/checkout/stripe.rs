//! The Stripe API calls of checkout: find a promotion code, read a coupon, create a
//! Checkout Session. Each returns what the handler needs, or a [`Failure`] that keeps
//! the status and Stripe's request id for the log and nothing of Stripe's answer.

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::form::{encode_component, Form};
use crate::ports::Pause;
use crate::ports::{Clock, HttpRequest, HttpResponse, Method, TransportError, Upstream};
use crate::upstream::Deadline;

/// Attempts at creating one session while Stripe answers 409 (the same Idempotency-Key
/// is still being processed: the other click of a double-click).
const CREATE_ATTEMPTS: u32 = 3;
/// Pause between those attempts; a session is usually created within half a second.
const CONFLICT_PAUSE_MS: u64 = 400;

/// Where and how to reach the Stripe API: the fulfilment's client, which checkout's
/// calls below extend.
pub use crate::stripe::api::StripeApi as Api;

/// A call that did not give us what we needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Stripe's HTTP status, when it answered.
    pub status: Option<u16>,
    /// Stripe's `Request-Id`, for a support ticket.
    pub request_id: Option<String>,
    /// Our own words (no Stripe text, which may quote the request).
    pub why: &'static str,
}

impl Failure {
    fn of(response: &HttpResponse, why: &'static str) -> Self {
        Self {
            status: Some(response.status),
            request_id: response.request_id.clone(),
            why,
        }
    }

    fn transport(why: &'static str) -> Self {
        Self {
            status: None,
            request_id: None,
            why,
        }
    }
}

/// A created Checkout Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub url: String,
    pub request_id: Option<String>,
}

/// A promotion code as `GET /v1/promotion_codes` lists it, in either API shape: the
/// coupon object under `coupon` (older API versions) or under `promotion.coupon`
/// (newer ones, where it is a coupon id unless expanded). The account's default API
/// version decides which one a call gets, so both are read.
#[derive(Debug, Clone, Deserialize)]
pub struct PromotionCode {
    pub id: String,
    /// Absent reads as inactive: a code is applied only when Stripe says it is active.
    #[serde(default)]
    pub active: bool,
    pub coupon: Option<CouponRef>,
    pub promotion: Option<PromotionCoupon>,
    pub expires_at: Option<i64>,
    pub max_redemptions: Option<i64>,
    #[serde(default)]
    pub times_redeemed: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PromotionCoupon {
    pub coupon: Option<CouponRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CouponRef {
    Id(String),
    Object(Coupon),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Coupon {
    pub id: String,
    pub valid: Option<bool>,
    /// Only present when expanded; `None` then means "not restricted".
    pub applies_to: Option<AppliesTo>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AppliesTo {
    #[serde(default)]
    pub products: Vec<String>,
}

impl PromotionCode {
    pub fn coupon(&self) -> Option<&CouponRef> {
        self.coupon
            .as_ref()
            .or_else(|| self.promotion.as_ref()?.coupon.as_ref())
    }
}

#[derive(Deserialize)]
struct List<T> {
    data: Vec<T>,
}

#[derive(Deserialize)]
struct RawSession {
    id: String,
    url: Option<String>,
}

/// Where the Idempotency-Key of a session creation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The page sent an `Idempotency-Key` (one per checkout attempt): a double-click
    /// or a retried request gets the same session back from Stripe, not a second one.
    /// Scoped by the client's address, so a page that sends a constant key makes
    /// shoppers share sessions at worst behind one address, never across the world.
    Client { ip: Option<&'a str>, key: &'a str },
    /// No key from the page: a random value of this request, so two shoppers behind
    /// one address (a NAT, a carrier) never share a session.
    Nonce(&'a str),
}

/// The Idempotency-Key sent to Stripe: a SHA-256 of its source and of the exact form,
/// so any change of product, quantity or discount is a new key and Stripe never sees
/// a key reused with other parameters (which it refuses with a 400).
///
/// `code_tag` ([`super::throttle::code_tag`]) is set when the request carried a
/// promotion code, valid or not, so each code gets its own session.
pub fn idempotency_key(source: KeySource<'_>, code_tag: Option<&str>, form_body: &str) -> String {
    let mut hash = Sha256::new().chain_update(b"stripe-edge:checkout-session:v2\n");
    match source {
        KeySource::Client { ip, key } => {
            hash.update(b"client\n");
            hash.update(ip.unwrap_or("unknown").trim().as_bytes());
            hash.update(b"\n");
            hash.update(key.as_bytes());
        }
        KeySource::Nonce(nonce) => {
            hash.update(b"nonce\n");
            hash.update(nonce.as_bytes());
        }
    }
    if let Some(tag) = code_tag {
        hash.update(b"\ncode\n");
        hash.update(tag.as_bytes());
    }
    hash.update(b"\n");
    hash.update(form_body.as_bytes());
    format!("checkout-{}", hex::encode(hash.finalize()))
}

impl Api<'_> {
    /// The active promotion code whose customer-facing code is `code`, if any.
    pub async fn find_promotion_code(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        code: &str,
    ) -> Result<Option<PromotionCode>, Failure> {
        let path = format!(
            "/v1/promotion_codes?code={}&active=true&limit=1",
            encode_component(code)
        );
        let response = exchange(upstream, clock, deadline, self.request(Method::Get, path)).await?;
        if !(200..300).contains(&response.status) {
            return Err(Failure::of(&response, "promotion code lookup refused"));
        }
        let list: List<PromotionCode> = serde_json::from_slice(&response.body)
            .map_err(|_| Failure::of(&response, "unreadable promotion code list"))?;
        Ok(list.data.into_iter().next())
    }

    /// A coupon with its product restriction (`applies_to` is only sent when expanded).
    pub async fn coupon(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        id: &str,
    ) -> Result<Coupon, Failure> {
        // Coupon ids may be chosen by hand (`SUMMER-25`): encoded, never trusted as a path.
        let path = format!(
            "/v1/coupons/{}?expand%5B%5D=applies_to",
            encode_component(id)
        );
        let response = exchange(upstream, clock, deadline, self.request(Method::Get, path)).await?;
        if !(200..300).contains(&response.status) {
            return Err(Failure::of(&response, "coupon lookup refused"));
        }
        serde_json::from_slice(&response.body)
            .map_err(|_| Failure::of(&response, "unreadable coupon"))
    }

    /// `POST /v1/checkout/sessions`. A 409 means Stripe is still creating the session
    /// for the same Idempotency-Key (the other click): wait and ask again, and Stripe
    /// answers with that session.
    pub async fn create_session(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        pause: &impl Pause,
        deadline: Deadline,
        form: &Form,
        idempotency_key: &str,
    ) -> Result<Session, Failure> {
        let mut request = self.request(Method::Post, "/v1/checkout/sessions".into());
        request.headers.extend([
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("idempotency-key", idempotency_key.to_string()),
        ]);
        request.body = Some(form.encode());
        let mut attempt = 1;
        let response = loop {
            let response = exchange(upstream, clock, deadline, request.clone()).await?;
            if response.status != 409 || attempt >= CREATE_ATTEMPTS {
                break response;
            }
            attempt += 1;
            pause.pause(CONFLICT_PAUSE_MS).await;
        };
        if !(200..300).contains(&response.status) {
            return Err(Failure::of(&response, "session creation refused"));
        }
        let session: RawSession = serde_json::from_slice(&response.body)
            .map_err(|_| Failure::of(&response, "unreadable Checkout Session"))?;
        match session.url {
            Some(url) if url.starts_with("https://") => Ok(Session {
                id: session.id,
                url,
                request_id: response.request_id,
            }),
            _ => Err(Failure::of(
                &response,
                "Checkout Session without an https url",
            )),
        }
    }
}

/// One call within what is left of the deadline; any HTTP answer is returned as is.
async fn exchange(
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    mut request: HttpRequest,
) -> Result<HttpResponse, Failure> {
    request.timeout_ms = deadline
        .timeout(clock.now_ms())
        .ok_or(Failure::transport("no time left to call the Stripe API"))?;
    upstream.send(request).await.map_err(|e| match e {
        TransportError::Timeout => Failure::transport("Stripe API timed out"),
        TransportError::Network(_) => Failure::transport("Stripe API unreachable"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_promotion_code_shapes_give_their_coupon() {
        let older: PromotionCode = serde_json::from_str(
            r#"{"id":"promo_1","object":"promotion_code","active":true,"code":"SPRING",
                "coupon":{"id":"co_1","object":"coupon","valid":true}}"#,
        )
        .unwrap();
        assert!(matches!(older.coupon(), Some(CouponRef::Object(c)) if c.id == "co_1"));
        let newer: PromotionCode = serde_json::from_str(
            r#"{"id":"promo_2","object":"promotion_code","active":true,"code":"SPRING",
                "promotion":{"type":"coupon","coupon":"co_2"}}"#,
        )
        .unwrap();
        assert!(matches!(newer.coupon(), Some(CouponRef::Id(id)) if id == "co_2"));
        let expanded: PromotionCode = serde_json::from_str(
            r#"{"id":"promo_3","active":true,"promotion":{"type":"coupon",
                "coupon":{"id":"co_3","valid":false,"applies_to":{"products":["prod_1"]}}}}"#,
        )
        .unwrap();
        match expanded.coupon() {
            Some(CouponRef::Object(c)) => {
                assert_eq!(c.valid, Some(false));
                assert_eq!(c.applies_to.as_ref().unwrap().products, ["prod_1"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_idempotency_key_follows_the_client_key_the_address_and_the_form() {
        let client = |ip, key| KeySource::Client { ip: Some(ip), key };
        let key = idempotency_key(client("203.0.113.7", "click-1"), None, "mode=payment");
        assert_eq!(
            key,
            idempotency_key(client("203.0.113.7", "click-1"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.7", "click-2"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.8", "click-1"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.7", "click-1"), None, "mode=subscription")
        );
        // A promotion code, applied or dropped, is a key of its own.
        let with_code = idempotency_key(
            client("203.0.113.7", "click-1"),
            Some("tag1"),
            "mode=payment",
        );
        assert_ne!(key, with_code);
        assert_ne!(
            with_code,
            idempotency_key(
                client("203.0.113.7", "click-1"),
                Some("tag2"),
                "mode=payment"
            )
        );
        // Without a client key, each request has its own.
        let a = idempotency_key(KeySource::Nonce("n1"), None, "mode=payment");
        assert_ne!(
            a,
            idempotency_key(KeySource::Nonce("n2"), None, "mode=payment")
        );
        assert!(key.len() <= 255 && !key.contains("203.0.113.7") && !key.contains("click"));
    }
}
