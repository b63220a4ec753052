//! The Stripe API calls of checkout, as methods of the one [`StripeApi`]: find a
//! promotion code (its coupon expanded), create a Checkout Session; and their models. Each
//! returns what the handler needs, or a [`StripeError`] that keeps the status and
//! Stripe's request id for the log and nothing of Stripe's answer.

use serde::Deserialize;

use crate::ports::{Clock, Method, Pause, Upstream};
use crate::stripe::api::{accepted, encode_component, read, StripeApi};
use crate::stripe::error::{Cause, StripeError};
use crate::upstream::Deadline;

/// Attempts at creating one session while Stripe answers 409 (the same Idempotency-Key
/// is still being processed: the other click of a double-click).
const CREATE_ATTEMPTS: u32 = 3;
/// Pause between those attempts; a session is usually created within half a second.
const CONFLICT_PAUSE_MS: u64 = 400;

/// A created Checkout Session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSession {
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

impl StripeApi<'_> {
    /// The active promotion code whose customer-facing code is `code`, if any, with its
    /// coupon's `applies_to` expanded (the pinned version puts the coupon object under
    /// `coupon`): everything needed to judge any code, in one call.
    pub async fn find_promotion_code(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        code: &str,
    ) -> Result<Option<PromotionCode>, StripeError> {
        let path = format!(
            "/v1/promotion_codes?code={}&active=true&limit=1&expand%5B%5D=data.coupon.applies_to",
            encode_component(code)
        );
        let response = self
            .get(
                upstream,
                clock,
                deadline,
                path,
                "promotion code lookup refused",
            )
            .await?;
        let list: List<PromotionCode> = read(&response, "unreadable promotion code list")?;
        Ok(list.data.into_iter().next())
    }

    /// `POST /v1/checkout/sessions` with `form_body` (form-encoded parameters). A 409
    /// means Stripe is still creating the session for the same Idempotency-Key (the
    /// other click): wait and ask again, and Stripe answers with that session.
    pub async fn create_session(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        pause: &impl Pause,
        deadline: Deadline,
        form_body: &str,
        idempotency_key: &str,
    ) -> Result<CreatedSession, StripeError> {
        let mut request = self.request(Method::Post, "/v1/checkout/sessions".into());
        request.headers.extend([
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
            ("idempotency-key", idempotency_key.to_string()),
        ]);
        request.body = Some(form_body.to_string());
        let mut attempt = 1;
        let response = loop {
            let response = self
                .send(upstream, clock, deadline, request.clone())
                .await?;
            if response.status != 409 || attempt >= CREATE_ATTEMPTS {
                break response;
            }
            attempt += 1;
            pause.pause(CONFLICT_PAUSE_MS).await;
        };
        let response = accepted(response, "session creation refused")?;
        let session: RawSession = read(&response, "unreadable Checkout Session")?;
        match session.url {
            Some(url) if url.starts_with("https://") => Ok(CreatedSession {
                id: session.id,
                url,
                request_id: response.request_id,
            }),
            _ => Err(StripeError::answered(
                &response,
                Cause::Unusable,
                "Checkout Session without an https url",
            )),
        }
    }
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
}
