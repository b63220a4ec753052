//! The Stripe API reads the shipping step needs: a PaymentIntent's shipping address and
//! every line item of a Checkout Session.

use serde::{Deserialize, Serialize};

use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::Secret;
use crate::stripe::event::{CheckoutSession, Expandable, ShippingDetails};
use crate::upstream::{call, Callee, Deadline, StepError};

/// Stripe's largest page; a purchase with more line items than this follows `has_more`.
const PAGE_SIZE: u32 = 100;
/// A bound on pages, so a misbehaving list can never loop forever (10,000 items).
const MAX_PAGES: usize = 100;

/// Where and how to reach the Stripe API.
pub struct StripeApi<'a> {
    pub base: &'a str,
    pub key: &'a Secret,
}

/// A line of the shipping order, in the order's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    pub price_id: Option<String>,
    pub product_id: Option<String>,
    pub description: Option<String>,
    pub quantity: Option<i64>,
    pub unit_amount: Option<i64>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
}

/// A page of `GET /v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsPage {
    pub data: Vec<Box<serde_json::value::RawValue>>,
    pub has_more: bool,
}

#[derive(Deserialize)]
struct Page {
    data: Vec<RawLineItem>,
    has_more: bool,
}

#[derive(Deserialize)]
struct RawLineItem {
    id: String,
    description: Option<String>,
    quantity: Option<i64>,
    amount_total: Option<i64>,
    currency: Option<String>,
    price: Option<RawPrice>,
}

#[derive(Deserialize)]
struct RawPrice {
    id: String,
    product: Option<Expandable>,
    unit_amount: Option<i64>,
}

#[derive(Deserialize)]
struct RawPaymentIntent {
    shipping: Option<ShippingDetails>,
}

impl StripeApi<'_> {
    fn get(&self, path: String) -> HttpRequest {
        self.request(Method::Get, path)
    }

    /// A call to `{base}{path}` with the key as bearer; checkout adds its POST body.
    pub(crate) fn request(&self, method: Method, path: String) -> HttpRequest {
        HttpRequest {
            method,
            url: format!("{}{path}", self.base),
            headers: vec![("authorization", format!("Bearer {}", self.key.expose()))],
            body: None,
            timeout_ms: 0,
        }
    }

    /// The shipping address on a PaymentIntent, if it has one.
    pub async fn payment_intent_shipping(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        payment_intent: &str,
    ) -> Result<Option<ShippingDetails>, StepError> {
        let path = format!("/v1/payment_intents/{}", path_segment(payment_intent)?);
        let body = call(upstream, clock, deadline, Callee::Stripe, self.get(path)).await?;
        let intent: RawPaymentIntent = serde_json::from_slice(&body).map_err(|_| {
            StepError::Permanent("Stripe API sent an unreadable PaymentIntent".into())
        })?;
        Ok(intent.shipping.filter(|s| s.address.is_some()))
    }

    /// The Checkout Session as Stripe has it now: replays and re-drives rebuild a
    /// purchase from it, since the ledger keeps no customer data.
    pub async fn checkout_session(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        session_id: &str,
    ) -> Result<CheckoutSession, StepError> {
        let path = format!("/v1/checkout/sessions/{}", path_segment(session_id)?);
        let body = call(upstream, clock, deadline, Callee::Stripe, self.get(path)).await?;
        serde_json::from_slice(&body).map_err(|_| {
            StepError::Permanent("Stripe API sent an unreadable Checkout Session".into())
        })
    }

    /// One page of Checkout events created at or after `since` (unix seconds), newest
    /// first as Stripe lists them. Each event is kept as raw JSON for ingestion.
    pub async fn checkout_events_page(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        since: i64,
        starting_after: Option<&str>,
    ) -> Result<EventsPage, StepError> {
        let mut path = format!(
            "/v1/events?limit={PAGE_SIZE}&created%5Bgte%5D={since}\
             &types%5B%5D=checkout.session.completed\
             &types%5B%5D=checkout.session.async_payment_succeeded\
             &types%5B%5D=checkout.session.async_payment_failed"
        );
        if let Some(id) = starting_after {
            path.push_str(&format!("&starting_after={}", path_segment(id)?));
        }
        let body = call(upstream, clock, deadline, Callee::Stripe, self.get(path)).await?;
        serde_json::from_slice(&body)
            .map_err(|_| StepError::Permanent("Stripe API sent an unreadable event list".into()))
    }

    /// Every line item of a session, following `has_more` page by page.
    pub async fn line_items(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        session_id: &str,
    ) -> Result<Vec<OrderLine>, StepError> {
        let base = format!(
            "/v1/checkout/sessions/{}/line_items?limit={PAGE_SIZE}",
            path_segment(session_id)?
        );
        let mut lines = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let path = match &after {
                Some(id) => format!("{base}&starting_after={}", path_segment(id)?),
                None => base.clone(),
            };
            let body = call(upstream, clock, deadline, Callee::Stripe, self.get(path)).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|_| {
                StepError::Permanent("Stripe API sent an unreadable line item list".into())
            })?;
            after = page.data.last().map(|item| item.id.clone());
            lines.extend(page.data.into_iter().map(order_line));
            if !page.has_more {
                return Ok(lines);
            }
            if after.is_none() {
                return Err(StepError::Permanent(
                    "Stripe API sent an empty page with has_more".into(),
                ));
            }
        }
        Err(StepError::Permanent(format!(
            "more than {MAX_PAGES} pages of line items"
        )))
    }
}

fn order_line(item: RawLineItem) -> OrderLine {
    let price = item.price;
    OrderLine {
        price_id: price.as_ref().map(|p| p.id.clone()),
        product_id: price
            .as_ref()
            .and_then(|p| p.product.as_ref())
            .map(|p| p.id().to_string()),
        unit_amount: price.as_ref().and_then(|p| p.unit_amount),
        description: item.description,
        quantity: item.quantity,
        amount_total: item.amount_total,
        currency: item.currency,
    }
}

/// Ids go into URL paths: accept only Stripe's id alphabet, so no id can change the path.
fn path_segment(id: &str) -> Result<&str, StepError> {
    if !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(id)
    } else {
        Err(StepError::Permanent("an id is not a Stripe id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_item_becomes_an_order_line() {
        let item: RawLineItem = serde_json::from_str(
            r#"{"id":"li_1","object":"item","description":"T-shirt","quantity":2,"amount_total":3000,
                "currency":"usd","price":{"id":"price_1","product":"prod_1","unit_amount":1500}}"#,
        )
        .unwrap();
        assert_eq!(
            order_line(item),
            OrderLine {
                price_id: Some("price_1".into()),
                product_id: Some("prod_1".into()),
                description: Some("T-shirt".into()),
                quantity: Some(2),
                unit_amount: Some(1500),
                amount_total: Some(3000),
                currency: Some("usd".into()),
            }
        );
    }

    #[test]
    fn ids_that_could_change_a_url_are_refused() {
        assert!(path_segment("cs_test_a1").is_ok());
        for bad in ["", "../x", "cs_1?x=1", "cs 1", "cs_1/line_items"] {
            assert!(path_segment(bad).is_err(), "{bad}");
        }
    }
}
