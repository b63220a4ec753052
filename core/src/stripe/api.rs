//! The one client of the Stripe API: how a call is built and sent (the key as bearer,
//! ids checked or encoded into the URL, what is left of the deadline), and the reads
//! fulfilment needs: a Checkout Session, its line items, a PaymentIntent's shipping
//! address, a page of events. Checkout's calls are in [`super::checkout_api`]; every
//! call fails with the one [`StripeError`].

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ports::{Clock, HttpRequest, HttpResponse, Method, TransportError, Upstream};
use crate::settings::Secret;
use crate::stripe::error::{Cause, StripeError};
use crate::stripe::event::{CheckoutSession, Expandable, ShippingDetails};
use crate::upstream::Deadline;

/// Stripe's largest page; a purchase with more line items than this follows `has_more`.
const PAGE_SIZE: u32 = 100;
/// A bound on pages, so a misbehaving list can never loop forever (10,000 items).
const MAX_PAGES: usize = 100;
/// The failure past [`MAX_PAGES`] (a test checks that the two agree).
const TOO_MANY_PAGES: &str = "more than 100 pages of line items";

/// Where and how to reach the Stripe API.
pub struct StripeApi<'a> {
    pub base: &'a str,
    pub key: &'a Secret,
    /// `Stripe-Version` of every call (`STRIPE_API_VERSION`): the answers' shapes are
    /// this version's, never the account default's.
    pub version: &'a str,
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

/// Which events one listing of `GET /v1/events` asks for: `types[]`, and `created` from
/// `from` (included) until `until` (excluded), in unix seconds.
#[derive(Debug, Clone, Copy)]
pub struct EventWindow<'a> {
    pub from: i64,
    pub until: i64,
    pub types: &'a [&'a str],
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
    /// A call to `{base}{path}` with the key as bearer and the pinned `Stripe-Version`;
    /// a POST adds its body.
    pub(super) fn request(&self, method: Method, path: String) -> HttpRequest {
        HttpRequest {
            method,
            url: format!("{}{path}", self.base),
            headers: vec![
                ("authorization", format!("Bearer {}", self.key.expose())),
                ("stripe-version", self.version.to_string()),
            ],
            body: None,
            timeout_ms: 0,
        }
    }

    /// One call within what is left of the deadline; any HTTP answer is returned as is.
    pub(super) async fn send(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        mut request: HttpRequest,
    ) -> Result<HttpResponse, StripeError> {
        let timeout_ms = deadline
            .timeout(clock.now_ms())
            .ok_or(StripeError::transport(Cause::NoTimeLeft))?;
        request.timeout_ms = timeout_ms;
        upstream.send(request).await.map_err(|e| {
            StripeError::transport(match e {
                TransportError::Timeout => Cause::TimedOut(timeout_ms),
                TransportError::Network(_) => Cause::Unreachable,
            })
        })
    }

    /// `GET {path}`: its 2xx answer, or a failure that says `refused` for any other status.
    pub(super) async fn get(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        path: String,
        refused: &'static str,
    ) -> Result<HttpResponse, StripeError> {
        let request = self.request(Method::Get, path);
        accepted(
            self.send(upstream, clock, deadline, request).await?,
            refused,
        )
    }

    /// The shipping address on a PaymentIntent, if it has one.
    pub async fn payment_intent_shipping(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        payment_intent: &str,
    ) -> Result<Option<ShippingDetails>, StripeError> {
        let path = format!("/v1/payment_intents/{}", path_segment(payment_intent)?);
        let response = self
            .get(
                upstream,
                clock,
                deadline,
                path,
                "PaymentIntent lookup refused",
            )
            .await?;
        let intent: RawPaymentIntent =
            read(&response, "Stripe API sent an unreadable PaymentIntent")?;
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
    ) -> Result<CheckoutSession, StripeError> {
        let path = format!("/v1/checkout/sessions/{}", path_segment(session_id)?);
        let response = self
            .get(
                upstream,
                clock,
                deadline,
                path,
                "Checkout Session lookup refused",
            )
            .await?;
        read(&response, "Stripe API sent an unreadable Checkout Session")
    }

    /// One page of the events of `types` created in `window` (unix seconds, `from`
    /// included, `until` excluded), newest first as Stripe lists them; the page after
    /// `starting_after` within the same window. Each event is kept as raw JSON.
    pub async fn events_page(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        window: EventWindow<'_>,
        starting_after: Option<&str>,
    ) -> Result<EventsPage, StripeError> {
        let mut path = format!(
            "/v1/events?limit={PAGE_SIZE}&created%5Bgte%5D={}&created%5Blt%5D={}",
            window.from, window.until
        );
        for kind in window.types {
            path.push_str(&format!("&types%5B%5D={}", encode_component(kind)));
        }
        if let Some(id) = starting_after {
            path.push_str(&format!("&starting_after={}", path_segment(id)?));
        }
        let response = self
            .get(upstream, clock, deadline, path, "event list refused")
            .await?;
        read(&response, "Stripe API sent an unreadable event list")
    }

    /// Every line item of a session, following `has_more` page by page.
    pub async fn line_items(
        &self,
        upstream: &impl Upstream,
        clock: &impl Clock,
        deadline: Deadline,
        session_id: &str,
    ) -> Result<Vec<OrderLine>, StripeError> {
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
            let response = self
                .get(upstream, clock, deadline, path, "line item list refused")
                .await?;
            let page: Page = read(&response, "Stripe API sent an unreadable line item list")?;
            after = page.data.last().map(|item| item.id.clone());
            lines.extend(page.data.into_iter().map(order_line));
            if !page.has_more {
                return Ok(lines);
            }
            if after.is_none() {
                return Err(StripeError::answered(
                    &response,
                    Cause::Unusable,
                    "Stripe API sent an empty page with has_more",
                ));
            }
        }
        Err(StripeError::unusable(TOO_MANY_PAGES))
    }
}

/// `response` when Stripe answered 2xx; any other status is refused, in `why`'s words.
pub(super) fn accepted(
    response: HttpResponse,
    why: &'static str,
) -> Result<HttpResponse, StripeError> {
    if (200..300).contains(&response.status) {
        Ok(response)
    } else {
        Err(StripeError::answered(&response, Cause::Refused, why))
    }
}

/// The JSON of a 2xx answer; unusable, in `why`'s words, when it does not read as a `T`.
pub(super) fn read<T: DeserializeOwned>(
    response: &HttpResponse,
    why: &'static str,
) -> Result<T, StripeError> {
    serde_json::from_slice(&response.body)
        .map_err(|_| StripeError::answered(response, Cause::Unusable, why))
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
fn path_segment(id: &str) -> Result<&str, StripeError> {
    if !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        Ok(id)
    } else {
        Err(StripeError::unusable("an id is not a Stripe id"))
    }
}

/// Percent-encodes the UTF-8 bytes of `text` except `A-Z a-z 0-9 - . _ ~`; a space
/// becomes `%20`. For a value we do not control in a URL (a path segment, a query
/// parameter's value), and for the keys and values of a form body (`checkout::form`).
pub fn encode_component(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
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
    fn the_page_bound_is_named_in_its_failure() {
        assert_eq!(
            TOO_MANY_PAGES,
            format!("more than {MAX_PAGES} pages of line items")
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
