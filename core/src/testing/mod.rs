//! In-memory fakes of the edge for native tests: a clock, and an upstream that plays the
//! license server, the shipping system and the Stripe API, records every call, and can
//! be told to fail.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

mod memory_ledger;

pub use memory_ledger::MemoryLedger;

use crate::fulfilment::Deps;
use crate::ports::ledger::LedgerError;
use crate::ports::Level;
use crate::ports::{Clock, Enqueue, FulfilMessage, Sink, Throttle, Upstream};
use crate::ports::{HttpRequest, HttpResponse, TransportError};
use crate::settings::Config;

pub const NOW_MS: u64 = 1_700_000_000_000;
pub const WEBHOOK_SECRET: &str = "whsec_unit";
pub const LICENSE_KEY: &str = "lk_unit_secret";
pub const SHIPPING_KEY: &str = "sk_ship_unit";
pub const STRIPE_KEY: &str = "sk_test_unit";
pub const RESEND_KEY: &str = "re_unit_secret";

pub struct FakeClock(pub Cell<u64>);

impl Default for FakeClock {
    fn default() -> Self {
        Self(Cell::new(NOW_MS))
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Svc {
    License,
    Shipping,
    PaymentIntent,
    LineItems,
    /// `GET /v1/checkout/sessions/{id}` (replays and re-drives).
    Session,
    /// `GET /v1/events` (reconciliation).
    Events,
    /// Resend's `POST /emails`.
    Email,
    /// `POST {LICENSE_SERVER_URL}/revoke`.
    Revoke,
    /// `POST {SHIPPING_URL}/{order_id}/cancel`.
    CancelShipment,
}

pub type Answer = Result<HttpResponse, TransportError>;

/// Answers by URL, for the services [`service_of`] declares only (anything else
/// panics); scripted answers per service are used first, in order.
#[derive(Default)]
pub struct FakeUpstream {
    pub calls: RefCell<Vec<HttpRequest>>,
    scripted: RefCell<Vec<(Svc, VecDeque<Answer>)>>,
    pub line_item_pages: RefCell<Vec<String>>,
    pub payment_intent: RefCell<Option<String>>,
    /// The Checkout Session the Stripe API returns (replays and re-drives).
    pub session: RefCell<Option<String>>,
    /// Sessions by id, asked before [`FakeUpstream::session`].
    pub sessions: RefCell<std::collections::BTreeMap<String, String>>,
    /// Stripe's events, newest first: `GET /v1/events` is answered from them as
    /// Stripe does (`created[gte]`, `created[lt]`, `types[]`, `starting_after`, `limit`).
    pub events: RefCell<Vec<String>>,
    /// Advances the clock by this much on every `GET /v1/events` (a slow listing).
    pub events_cost_ms: Cell<u64>,
    /// When set, every call yields once to the executor, so joined deliveries interleave.
    pub yield_in_calls: Cell<bool>,
    /// Every call's service when sent (`false`) and when answered (`true`), in order:
    /// shows which calls were in flight together.
    pub timeline: RefCell<Vec<(Svc, bool)>>,
    /// Advances the clock by this much on every call (a slow upstream).
    pub call_cost_ms: Cell<u64>,
    pub clock: Option<std::rc::Rc<FakeClock>>,
}

pub fn ok(body: &str) -> Answer {
    Ok(HttpResponse {
        status: 200,
        body: body.as_bytes().to_vec(),
        request_id: None,
    })
}

pub fn status(code: u16) -> Answer {
    Ok(HttpResponse {
        status: code,
        body: br#"{"error":"scripted"}"#.to_vec(),
        request_id: None,
    })
}

impl FakeUpstream {
    pub fn script(&self, svc: Svc, answers: impl IntoIterator<Item = Answer>) {
        self.scripted
            .borrow_mut()
            .push((svc, answers.into_iter().collect()));
    }

    pub fn calls_to(&self, svc: Svc) -> Vec<HttpRequest> {
        self.calls
            .borrow()
            .iter()
            .filter(|r| service_of(&r.url) == svc)
            .cloned()
            .collect()
    }

    fn answer(&self, request: &HttpRequest) -> Answer {
        let svc = service_of(&request.url);
        for (s, answers) in self.scripted.borrow_mut().iter_mut() {
            if *s == svc {
                if let Some(answer) = answers.pop_front() {
                    return answer;
                }
            }
        }
        let n = self.calls_to(svc).len();
        match svc {
            Svc::License => ok(&format!(r#"{{"license_key":"lic_{n}"}}"#)),
            Svc::Shipping => ok(&format!(r#"{{"shipment_id":"shp_{n}"}}"#)),
            Svc::Email => ok(&format!(r#"{{"id":"em_{n}"}}"#)),
            Svc::Revoke => ok(
                r#"{"valid":false,"status":"revoked","license_key":"x","revoked_at":"2026-01-01T00:00:00Z"}"#,
            ),
            Svc::CancelShipment => ok(r#"{"status":"cancelled"}"#),
            Svc::PaymentIntent => ok(self
                .payment_intent
                .borrow()
                .as_deref()
                .unwrap_or(r#"{"id":"pi_1","shipping":null}"#)),
            Svc::Events => ok(&list_events(&self.events.borrow(), &request.url)),
            Svc::Session => {
                let id = request.url.rsplit('/').next().unwrap_or_default();
                if let Some(session) = self.sessions.borrow().get(id) {
                    return ok(session);
                }
                match self.session.borrow().as_deref() {
                    Some(session) => ok(session),
                    None => status(404),
                }
            }
            Svc::LineItems => {
                let pages = self.line_item_pages.borrow();
                let page = if request.url.contains("starting_after") {
                    1
                } else {
                    0
                };
                ok(pages.get(page).map(String::as_str).unwrap_or(ONE_LINE_ITEM))
            }
        }
    }
}

/// One page of `GET /v1/events` over `events` (newest first), as Stripe answers `url`.
fn list_events(events: &[String], url: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let param = |name: &str| params.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    let number = |name: &str| param(name).map(|v| v.parse::<i64>().expect("a number"));
    let types: Vec<String> = params
        .iter()
        .filter(|(k, _)| *k == "types%5B%5D")
        .map(|(_, v)| v.to_string())
        .collect();
    let (gte, lt) = (number("created%5Bgte%5D"), number("created%5Blt%5D"));
    let limit = number("limit").unwrap_or(10) as usize;
    let matching: Vec<(String, &String)> = events
        .iter()
        .filter_map(|raw| {
            #[derive(serde::Deserialize)]
            struct Head<'a> {
                id: &'a str,
                created: i64,
                #[serde(rename = "type")]
                kind: &'a str,
            }
            let event: Head = serde_json::from_str(raw).expect("an event with id, created, type");
            let (created, kind) = (event.created, event.kind);
            let inside = gte.is_none_or(|g| created >= g) && lt.is_none_or(|l| created < l);
            let typed = types.is_empty() || types.iter().any(|t| t == kind);
            (inside && typed).then(|| (event.id.to_string(), raw))
        })
        .collect();
    let start = match param("starting_after") {
        Some(after) => {
            matching
                .iter()
                .position(|(id, _)| id == after)
                .expect("starting_after names a listed event")
                + 1
        }
        None => 0,
    };
    let end = (start + limit).min(matching.len());
    let data: Vec<&str> = matching[start..end]
        .iter()
        .map(|(_, raw)| raw.as_str())
        .collect();
    format!(
        r#"{{"object":"list","has_more":{},"data":[{}]}}"#,
        end < matching.len(),
        data.join(",")
    )
}

pub const ONE_LINE_ITEM: &str = r#"{"object":"list","has_more":false,"data":[{"id":"li_1","description":"Mug","quantity":2,
    "amount_total":3000,"currency":"usd","price":{"id":"price_1","product":"prod_1","unit_amount":1500}}]}"#;

/// The service a URL belongs to, among those [`full_config`] declares. Any other URL
/// panics: a new upstream call must be declared here (with its answer in
/// `FakeUpstream::answer`) before a native test can pass through it.
fn service_of(url: &str) -> Svc {
    let path = url.split('?').next().unwrap_or(url);
    let stripe = |prefix: &str| path.starts_with(&format!("https://stripe.test{prefix}"));
    let cancel = path
        .strip_prefix("https://shipping.test/orders/")
        .and_then(|rest| rest.strip_suffix("/cancel"))
        .is_some_and(|order| !order.is_empty() && !order.contains('/'));
    if path == "https://license.test/generate" {
        Svc::License
    } else if path == "https://license.test/revoke" {
        Svc::Revoke
    } else if path == "https://shipping.test/orders" {
        Svc::Shipping
    } else if path == "https://email.test/emails" {
        Svc::Email
    } else if cancel {
        Svc::CancelShipment
    } else if stripe("/v1/checkout/sessions/") && path.ends_with("/line_items") {
        Svc::LineItems
    } else if stripe("/v1/checkout/sessions/") {
        Svc::Session
    } else if stripe("/v1/payment_intents/") {
        Svc::PaymentIntent
    } else if path == "https://stripe.test/v1/events" {
        Svc::Events
    } else {
        panic!("FakeUpstream: no service declared for {url}: declare it in core/src/testing/mod.rs (Svc, service_of)")
    }
}

/// Returns `Pending` once, so an executor polling several futures switches to the next.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Every Stripe API call carries the pinned `Stripe-Version` (`STRIPE_API_VERSION`):
/// a fake Stripe refuses, loudly, a call without it, so no native test passes over one.
pub fn assert_stripe_version(request: &HttpRequest) {
    if request.url.starts_with("https://stripe.test/") {
        let pinned = crate::settings::registry::STRIPE_VERSION.default;
        assert_eq!(
            request.header("stripe-version"),
            pinned,
            "a Stripe API call without the pinned Stripe-Version: {}",
            request.url
        );
    }
}

impl Upstream for FakeUpstream {
    async fn send(&self, request: HttpRequest) -> Answer {
        assert_stripe_version(&request);
        self.calls.borrow_mut().push(request.clone());
        let svc = service_of(&request.url);
        self.timeline.borrow_mut().push((svc, false));
        if self.yield_in_calls.get() {
            YieldOnce(false).await;
        }
        self.timeline.borrow_mut().push((svc, true));
        if let Some(clock) = &self.clock {
            let mut cost = self.call_cost_ms.get();
            if service_of(&request.url) == Svc::Events {
                cost += self.events_cost_ms.get();
            }
            clock.0.set(clock.0.get() + cost);
        }
        self.answer(&request)
    }
}

/// A configuration with every service set.
pub fn full_config() -> Config {
    full_config_with(&[])
}

/// [`full_config`] with more settings (`(name, value)`), or some replaced.
pub fn full_config_with(extra: &[(&str, &str)]) -> Config {
    Config::load(|name| {
        if let Some((_, value)) = extra.iter().find(|(n, _)| *n == name) {
            return Some(value.to_string());
        }
        Some(
            match name {
                "STRIPE_WEBHOOK_SECRET" => WEBHOOK_SECRET,
                "LICENSE_SERVER_URL" => "https://license.test",
                "LICENSE_SERVER_API_KEY" => LICENSE_KEY,
                "SHIPPING_URL" => "https://shipping.test/orders",
                "SHIPPING_API_KEY" => SHIPPING_KEY,
                "STRIPE_API_KEY" => STRIPE_KEY,
                "STRIPE_API_BASE" => "https://stripe.test",
                _ => return None,
            }
            .to_string(),
        )
    })
}

/// [`full_config`] with the e-mail step on (Resend at `https://email.test`), plus `extra`.
pub fn email_config_with(extra: &[(&str, &str)]) -> Config {
    let mut pairs = vec![
        ("RESEND_API_KEY", RESEND_KEY),
        ("EMAIL_FROM", "Shop <orders@shop.test>"),
        ("EMAIL_API_BASE", "https://email.test"),
    ];
    pairs.retain(|(name, _)| !extra.iter().any(|(n, _)| n == name));
    pairs.extend_from_slice(extra);
    full_config_with(&pairs)
}

/// Records what ingress and the scheduled run send to the queue; can be told to fail.
#[derive(Default)]
pub struct FakeQueue {
    pub sent: RefCell<Vec<FulfilMessage>>,
    pub failing: Cell<bool>,
}

impl Enqueue for FakeQueue {
    fn enqueue<'a>(
        &'a self,
        message: &'a FulfilMessage,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move {
            if self.failing.get() {
                return Err("queue unavailable".to_string());
            }
            self.sent.borrow_mut().push(message.clone());
            Ok(())
        })
    }
}

/// Everything a test needs, owned; `deps()` lends it to the code under test.
pub struct World {
    pub config: Config,
    pub ledger: MemoryLedger,
    pub upstream: FakeUpstream,
    pub clock: std::rc::Rc<FakeClock>,
    pub log: MemorySink,
    pub queue: FakeQueue,
    /// Whether `deps()` hands out the queue (queue mode) or not (inline mode).
    pub queue_mode: Cell<bool>,
}

impl World {
    pub fn new(config: Config) -> Self {
        let clock = std::rc::Rc::new(FakeClock::default());
        let upstream = FakeUpstream {
            clock: Some(clock.clone()),
            ..FakeUpstream::default()
        };
        Self {
            config,
            ledger: MemoryLedger::default(),
            upstream,
            clock,
            log: MemorySink::default(),
            queue: FakeQueue::default(),
            queue_mode: Cell::new(false),
        }
    }

    pub fn deps(&self) -> Deps<'_, MemoryLedger, FakeUpstream, FakeClock, MemorySink> {
        Deps {
            config: &self.config,
            ledger: &self.ledger,
            upstream: &self.upstream,
            clock: &self.clock,
            log: &self.log,
            queue: self.queue_mode.get().then_some(&self.queue as &dyn Enqueue),
        }
    }
}

/// Collects log lines in memory.
#[derive(Debug, Default)]
pub struct MemorySink(pub std::cell::RefCell<Vec<String>>);

impl Sink for MemorySink {
    fn emit(&self, _level: Level, line: &str) {
        self.0.borrow_mut().push(line.to_string());
    }
}

impl MemorySink {
    pub fn lines(&self) -> Vec<String> {
        self.0.borrow().clone()
    }

    pub fn joined(&self) -> String {
        self.lines().join("\n")
    }
}

/// An in-memory counter for native tests; can be told to fail like an unreachable D1.
#[derive(Debug, Default)]
pub struct MemoryThrottle {
    pub counts: std::cell::RefCell<std::collections::BTreeMap<(String, u64), u32>>,
    pub unavailable: std::cell::Cell<bool>,
}

impl Throttle for MemoryThrottle {
    async fn hit(&self, key: &str, window_start: u64) -> Result<u32, LedgerError> {
        if self.unavailable.get() {
            return Err(LedgerError {
                operation: "count_code_attempt",
                detail: "D1_ERROR: unavailable".into(),
            });
        }
        let mut counts = self.counts.borrow_mut();
        let count = counts.entry((key.to_string(), window_start)).or_insert(0);
        *count += 1;
        Ok(*count)
    }

    async fn prune(&self, before_secs: u64) -> Result<u32, LedgerError> {
        if self.unavailable.get() {
            return Err(LedgerError {
                operation: "prune_code_attempts",
                detail: "D1_ERROR: unavailable".into(),
            });
        }
        let mut counts = self.counts.borrow_mut();
        let before = counts.len();
        counts.retain(|(_, start), _| *start >= before_secs);
        Ok((before - counts.len()) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Method;

    fn get(url: &str) -> HttpRequest {
        HttpRequest {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            timeout_ms: 1_000,
        }
    }

    #[test]
    #[should_panic(expected = "no service declared for https://elsewhere.test/orders")]
    fn a_call_to_an_undeclared_url_fails_loudly() {
        let _ = futures_executor::block_on(
            FakeUpstream::default().send(get("https://elsewhere.test/orders")),
        );
    }

    #[test]
    fn declared_services_are_told_apart_by_their_exact_urls() {
        assert_eq!(service_of("https://license.test/generate"), Svc::License);
        assert_eq!(service_of("https://shipping.test/orders"), Svc::Shipping);
        assert_eq!(service_of("https://email.test/emails"), Svc::Email);
        assert_eq!(service_of("https://license.test/revoke"), Svc::Revoke);
        assert_eq!(
            service_of("https://shipping.test/orders/cs_1/cancel"),
            Svc::CancelShipment
        );
        assert_eq!(
            service_of("https://stripe.test/v1/checkout/sessions/cs_1/line_items?limit=100"),
            Svc::LineItems
        );
        assert_eq!(
            service_of("https://stripe.test/v1/checkout/sessions/cs_1"),
            Svc::Session
        );
        assert_eq!(
            service_of("https://stripe.test/v1/events?type=x"),
            Svc::Events
        );
    }
}
