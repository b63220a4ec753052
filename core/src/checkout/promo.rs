//! Whether a promotion code the shopper typed is applied to their session.
//!
//! A code is looked up server-side, in one Stripe call whatever becomes of it (the list
//! call expands the coupon and its `applies_to`), and applied only when Stripe lists it as active,
//! it has not expired or run out, its coupon is valid, and the coupon's product
//! restriction (when it has one and the catalogue entry names its product) includes
//! the product. Anything else drops the code silently: the shopper gets the same
//! answer as with no code at all, so the answer never tells a guesser whether a code
//! exists. The reason is kept for the log; the code itself never is.

use crate::ports::{Clock, Upstream};
use crate::settings::catalogue::Product;
use crate::stripe::api::StripeApi;
use crate::stripe::checkout_api::{Coupon, CouponRef, PromotionCode};
use crate::upstream::Deadline;

/// Longest code worth looking up; Stripe's customer-facing codes are short.
pub const MAX_CODE_CHARS: usize = 100;

/// What became of the request's promotion code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The request had no code.
    None,
    /// Applied: the promotion code's id (`promo_…`), never the code.
    Applied(String),
    Dropped(Dropped),
}

impl Promotion {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Applied(_) => "applied",
            Self::Dropped(_) => "dropped",
        }
    }
}

/// Why a code was not applied; logged as `promotion_dropped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Empty after trimming, too long, or holding control characters: not looked up.
    Malformed,
    /// No active promotion code has this code.
    Unknown,
    Inactive,
    Expired,
    /// `times_redeemed` reached `max_redemptions`.
    Exhausted,
    /// The coupon is not valid any more (or has no coupon).
    CouponInvalid,
    /// The coupon is restricted to other products.
    WrongProduct,
    /// The promotion code lookup failed (Stripe down, a refused key, an answer without
    /// the coupon object, …).
    LookupFailed,
    /// Stripe refused to create the session with the discount (e.g. a code restricted
    /// to a customer or a first order); the session was created without it.
    RefusedByStripe,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Inactive => "inactive",
            Self::Expired => "expired",
            Self::Exhausted => "exhausted",
            Self::CouponInvalid => "coupon_invalid",
            Self::WrongProduct => "wrong_product",
            Self::LookupFailed => "lookup_failed",
            Self::RefusedByStripe => "refused_by_stripe",
        }
    }
}

/// The outcome of a lookup, with the Stripe request id of a failed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub promotion: Promotion,
    pub request_id: Option<String>,
}

impl From<Dropped> for Resolved {
    fn from(dropped: Dropped) -> Self {
        Self {
            promotion: Promotion::Dropped(dropped),
            request_id: None,
        }
    }
}

/// Looks `code` up and decides whether it applies to `product`.
pub async fn resolve(
    api: &StripeApi<'_>,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    code: &str,
    product: &Product,
) -> Resolved {
    if !plausible(code) {
        return Dropped::Malformed.into();
    }
    let failed = |request_id| Resolved {
        promotion: Promotion::Dropped(Dropped::LookupFailed),
        request_id,
    };
    // One call judges every code: the list answer carries the coupon with its
    // `applies_to` expanded, so a valid code costs no more calls than an unknown one
    // (no timing oracle).
    let promo = match api
        .find_promotion_code(upstream, clock, deadline, code)
        .await
    {
        Ok(Some(promo)) => promo,
        Ok(None) => return Dropped::Unknown.into(),
        Err(e) => return failed(e.request_id),
    };
    if let Err(dropped) = judge_code(&promo, clock.now_ms() / 1_000) {
        return dropped.into();
    }
    let coupon = match promo.coupon() {
        None => return Dropped::CouponInvalid.into(),
        Some(CouponRef::Object(coupon)) => coupon,
        // Only an id: the answer is not the pinned version's shape. Reading the coupon
        // would be a second call for valid codes only; drop it instead.
        Some(CouponRef::Id(_)) => return failed(None),
    };
    if let Err(dropped) = judge_coupon(coupon, product) {
        return dropped.into();
    }
    if !is_promo_id(&promo.id) {
        return Dropped::Unknown.into();
    }
    Resolved {
        promotion: Promotion::Applied(promo.id),
        request_id: None,
    }
}

fn plausible(code: &str) -> bool {
    !code.is_empty()
        && code.chars().count() <= MAX_CODE_CHARS
        && !code.chars().any(char::is_control)
}

fn judge_code(promo: &PromotionCode, now_secs: u64) -> Result<(), Dropped> {
    if !promo.active {
        return Err(Dropped::Inactive);
    }
    if promo.expires_at.is_some_and(|at| at <= now_secs as i64) {
        return Err(Dropped::Expired);
    }
    if promo
        .max_redemptions
        .is_some_and(|max| promo.times_redeemed >= max)
    {
        return Err(Dropped::Exhausted);
    }
    Ok(())
}

fn judge_coupon(coupon: &Coupon, product: &Product) -> Result<(), Dropped> {
    if coupon.valid != Some(true) {
        return Err(Dropped::CouponInvalid);
    }
    let restricted = coupon
        .applies_to
        .as_ref()
        .filter(|applies| !applies.products.is_empty());
    match (restricted, &product.product) {
        (Some(applies), Some(ours)) if !applies.products.contains(ours) => {
            Err(Dropped::WrongProduct)
        }
        _ => Ok(()),
    }
}

/// The id goes into the session's form: Stripe's id alphabet only.
fn is_promo_id(id: &str) -> bool {
    id.starts_with("promo_")
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::catalogue::Mode;

    fn product(prod: Option<&str>) -> Product {
        Product {
            price: "price_1".into(),
            mode: Mode::Payment,
            max_quantity: 1,
            shipping_countries: None,
            product: prod.map(str::to_string),
        }
    }

    fn promo(json: &str) -> PromotionCode {
        serde_json::from_str(json).unwrap()
    }

    fn coupon(json: &str) -> Coupon {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_code_must_be_active_unexpired_and_not_used_up() {
        let now = 1_700_000_000;
        assert_eq!(
            judge_code(&promo(r#"{"id":"promo_1","active":true}"#), now),
            Ok(())
        );
        assert_eq!(
            judge_code(&promo(r#"{"id":"promo_1","active":false}"#), now),
            Err(Dropped::Inactive)
        );
        assert_eq!(
            judge_code(&promo(r#"{"id":"promo_1"}"#), now),
            Err(Dropped::Inactive)
        );
        assert_eq!(
            judge_code(
                &promo(r#"{"id":"promo_1","active":true,"expires_at":1700000000}"#),
                now
            ),
            Err(Dropped::Expired)
        );
        assert_eq!(
            judge_code(
                &promo(r#"{"id":"promo_1","active":true,"max_redemptions":5,"times_redeemed":5}"#),
                now
            ),
            Err(Dropped::Exhausted)
        );
    }

    #[test]
    fn a_coupon_must_be_valid_and_cover_the_product_when_restricted() {
        let ours = product(Some("prod_ours"));
        let check = |json| judge_coupon(&coupon(json), &ours);
        assert_eq!(check(r#"{"id":"co","valid":true}"#), Ok(()));
        assert_eq!(
            check(r#"{"id":"co","valid":false}"#),
            Err(Dropped::CouponInvalid)
        );
        assert_eq!(check(r#"{"id":"co"}"#), Err(Dropped::CouponInvalid));
        assert_eq!(
            check(r#"{"id":"co","valid":true,"applies_to":{"products":["prod_ours","prod_x"]}}"#),
            Ok(())
        );
        assert_eq!(
            check(r#"{"id":"co","valid":true,"applies_to":{"products":["prod_other"]}}"#),
            Err(Dropped::WrongProduct)
        );
        assert_eq!(
            check(r#"{"id":"co","valid":true,"applies_to":{"products":[]}}"#),
            Ok(())
        );
        // Without a product in the catalogue entry there is nothing to compare with;
        // Stripe itself refuses a session whose items the coupon does not cover.
        assert_eq!(
            judge_coupon(
                &coupon(r#"{"id":"co","valid":true,"applies_to":{"products":["prod_other"]}}"#),
                &product(None)
            ),
            Ok(())
        );
    }

    #[test]
    fn implausible_codes_are_never_looked_up() {
        assert!(plausible("SPRING-25"));
        assert!(!plausible(""));
        assert!(!plausible(&"A".repeat(MAX_CODE_CHARS + 1)));
        assert!(!plausible("A\nB"));
    }
}
