//! `POST /checkout` end to end over fakes: a scripted Stripe API that, like Stripe,
//! replays an Idempotency-Key's first answer, an in-memory code counter, a fake clock.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};

use futures_executor::block_on;

use super::form::decode;
use super::*;
use crate::http::checkout::CheckoutReply;
use crate::ports::{HttpRequest, HttpResponse, Method};
use crate::stripe::api::encode_component;
use crate::stripe::error::{Cause, StripeError};
use crate::testing::MemorySink;
use crate::testing::MemoryThrottle;
use crate::testing::{ok, status, Answer, FakeClock, NOW_MS, STRIPE_KEY};

const IP: &str = "203.0.113.7";
/// The `Idempotency-Key` a page sends for one checkout attempt.
const CLICK: &str = "attempt-7f3c";
const SHOP: &str = "https://shop.example";
const PRODUCTS_JSON: &str = r#"{
    "pro": {"price": "price_Pro", "mode": "payment", "max_quantity": 5,
            "shipping_countries": ["US", "GB"], "product": "prod_Pro"},
    "team": {"price": "price_Team", "mode": "subscription", "max_quantity": 50}
}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Promo,
    Coupon,
    Create,
}

fn route_of(request: &HttpRequest) -> Route {
    if request.url.contains("/v1/promotion_codes") {
        Route::Promo
    } else if request.url.contains("/v1/coupons/") {
        Route::Coupon
    } else {
        assert!(
            request.url.ends_with("/v1/checkout/sessions"),
            "{}",
            request.url
        );
        Route::Create
    }
}

/// The Stripe API as checkout uses it.
#[derive(Default)]
struct FakeStripe {
    calls: RefCell<Vec<HttpRequest>>,
    /// Customer-facing code → promotion code object.
    codes: RefCell<Vec<(String, String)>>,
    scripted: RefCell<Vec<(Route, VecDeque<Answer>)>>,
    /// Idempotency-Key → (form, answer), as Stripe keeps them.
    sessions: RefCell<BTreeMap<String, (String, HttpResponse)>>,
    /// Promotion code ids Stripe refuses in a session (restricted to a customer, …).
    refused_promos: RefCell<Vec<String>>,
}

impl FakeStripe {
    fn code(&self, code: &str, object: &str) {
        self.codes
            .borrow_mut()
            .push((code.to_string(), object.to_string()));
    }

    fn script(&self, route: Route, answers: impl IntoIterator<Item = Answer>) {
        self.scripted
            .borrow_mut()
            .push((route, answers.into_iter().collect()));
    }

    fn calls_to(&self, route: Route) -> Vec<HttpRequest> {
        let calls = self.calls.borrow();
        calls
            .iter()
            .filter(|r| route_of(r) == route)
            .cloned()
            .collect()
    }

    fn answer(&self, request: &HttpRequest) -> Answer {
        let route = route_of(request);
        for (r, answers) in self.scripted.borrow_mut().iter_mut() {
            if *r == route {
                if let Some(answer) = answers.pop_front() {
                    return answer;
                }
            }
        }
        match route {
            Route::Promo => {
                let codes = self.codes.borrow();
                let found = codes
                    .iter()
                    .find(|(code, _)| {
                        request
                            .url
                            .contains(&format!("?code={}&", encode_component(code)))
                    })
                    .map(|(_, object)| expanded(object, &request.url));
                ok(&format!(
                    r#"{{"object":"list","data":[{}],"has_more":false}}"#,
                    found.unwrap_or_default()
                ))
            }
            // Checkout never reads a coupon on its own: that call would be made for
            // valid codes only (a timing oracle).
            Route::Coupon => status(404),
            Route::Create => self.create(request),
        }
    }

    fn create(&self, request: &HttpRequest) -> Answer {
        let key = request
            .header("idempotency-key")
            .expect("an Idempotency-Key");
        let form = request.body.clone().unwrap();
        if let Some((first, answer)) = self.sessions.borrow().get(key) {
            assert_eq!(
                first, &form,
                "Stripe refuses a key reused with other parameters"
            );
            return Ok(answer.clone());
        }
        let refused = self
            .refused_promos
            .borrow()
            .iter()
            .any(|id| form.contains(id));
        let n = self.sessions.borrow().len() + 1;
        let answer = if refused {
            HttpResponse {
                status: 400,
                body: br#"{"error":{"message":"This promotion code cannot be redeemed"}}"#.to_vec(),
                request_id: Some(format!("req_refused_{n}")),
            }
        } else {
            HttpResponse {
                status: 200,
                body: format!(
                    r#"{{"id":"cs_test_{n}","object":"checkout.session","url":"https://checkout.stripe.test/c/pay/cs_test_{n}"}}"#
                )
                .into_bytes(),
                request_id: Some(format!("req_create_{n}")),
            }
        };
        self.sessions
            .borrow_mut()
            .insert(key.to_string(), (form, answer.clone()));
        Ok(answer)
    }
}

/// The promotion code as Stripe lists it: the coupon's `applies_to` only when the call
/// asked for it (`expand[]=data.coupon.applies_to`, the pinned version's shape).
fn expanded(object: &str, url: &str) -> String {
    let mut value: serde_json::Value = serde_json::from_str(object).unwrap();
    if !url.contains("&expand%5B%5D=data.coupon.applies_to") {
        if let Some(coupon) = value.get_mut("coupon").and_then(|c| c.as_object_mut()) {
            coupon.remove("applies_to");
        }
    }
    value.to_string()
}

impl Upstream for FakeStripe {
    async fn send(&self, request: HttpRequest) -> Answer {
        crate::testing::assert_stripe_version(&request);
        self.calls.borrow_mut().push(request.clone());
        self.answer(&request)
    }
}

#[derive(Default)]
struct FakePause(RefCell<Vec<u64>>);

impl Pause for FakePause {
    async fn pause(&self, ms: u64) {
        self.0.borrow_mut().push(ms);
    }
}

struct Shop {
    config: Config,
    stripe: FakeStripe,
    clock: FakeClock,
    throttle: MemoryThrottle,
    pause: FakePause,
    log: MemorySink,
}

fn settings(overrides: &[(&str, Option<&str>)]) -> Config {
    let mut map: BTreeMap<&str, Option<&str>> = [
        ("STRIPE_WEBHOOK_SECRET", Some("whsec_unit")),
        ("STRIPE_API_KEY", Some(STRIPE_KEY)),
        ("STRIPE_API_BASE", Some("https://stripe.test")),
        ("PRODUCTS", Some(PRODUCTS_JSON)),
        ("APP_URL", Some(SHOP)),
        ("ALLOWED_ORIGINS", Some(SHOP)),
        ("CHECKOUT_CODE_ATTEMPTS", Some("3")),
    ]
    .into_iter()
    .collect();
    map.extend(overrides.iter().copied());
    Config::load(|name| map.get(name).copied().flatten().map(str::to_string))
}

impl Shop {
    fn new() -> Self {
        Self::with(settings(&[]))
    }

    fn with(config: Config) -> Self {
        Self {
            config,
            stripe: FakeStripe::default(),
            clock: FakeClock::default(),
            throttle: MemoryThrottle::default(),
            pause: FakePause::default(),
            log: MemorySink::default(),
        }
    }

    fn send(&self, request: CheckoutRequest<'_>) -> (CheckoutDecision, CheckoutReply) {
        let deps = CheckoutDeps {
            config: &self.config,
            upstream: &self.stripe,
            clock: &self.clock,
            throttle: &self.throttle,
            pause: &self.pause,
        };
        let decision = block_on(handle(&deps, &request, self.clock.now_ms()));
        crate::http::checkout::decision_line(&decision, 0).emit(&self.log);
        let reply = crate::http::checkout::for_decision(&decision);
        (decision, reply)
    }

    /// A POST from `IP` without an Origin (curl, a server).
    fn post(&self, body: &str) -> (CheckoutDecision, CheckoutReply) {
        self.post_from(IP, None, body)
    }

    /// The page sends the same `Idempotency-Key` for one checkout attempt.
    fn post_from(
        &self,
        ip: &str,
        origin: Option<&str>,
        body: &str,
    ) -> (CheckoutDecision, CheckoutReply) {
        self.post_with(ip, origin, Some(CLICK), body)
    }

    fn post_with(
        &self,
        ip: &str,
        origin: Option<&str>,
        idempotency_key: Option<&str>,
        body: &str,
    ) -> (CheckoutDecision, CheckoutReply) {
        let nonce = format!("nonce-{}", self.stripe.calls.borrow().len());
        self.send(CheckoutRequest {
            verb: Verb::Post,
            origin,
            client_ip: Some(ip),
            idempotency_key,
            nonce: &nonce,
            body: Some(body.as_bytes()),
        })
    }

    /// The form of the last session creation, decoded.
    fn last_form(&self) -> Vec<(String, String)> {
        let calls = self.stripe.calls_to(Route::Create);
        decode(
            calls
                .last()
                .expect("a session creation")
                .body
                .as_deref()
                .unwrap(),
        )
    }

    fn last_log(&self) -> serde_json::Value {
        serde_json::from_str(self.log.lines().last().unwrap()).unwrap()
    }
}

fn field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Status, headers and the exact body bytes: what a caller can tell apart.
fn wire(reply: &CheckoutReply) -> (u16, Vec<(&'static str, String)>, Option<String>) {
    (
        reply.status,
        reply.headers.clone(),
        reply.body.as_ref().map(|b| b.to_string()),
    )
}

/// [`wire`] with the session id in the checkout URL blanked: what a caller could compare
/// across two sessions.
fn shape(reply: &CheckoutReply) -> (u16, Vec<(&'static str, String)>, Option<String>) {
    let (status, headers, body) = wire(reply);
    let body = body.map(|b| match b.find("cs_test_") {
        Some(at) => {
            let end = b[at..].find('"').map_or(b.len(), |e| at + e);
            format!("{}cs_test_…{}", &b[..at], &b[end..])
        }
        None => b,
    });
    (status, headers, body)
}

const SPRING: &str = "SPRING25";

fn active_code(id: &str, coupon: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"promotion_code","active":true,"code":"x","coupon":{coupon},"times_redeemed":0}}"#
    )
}

// ---------------------------------------------------------------- the session

#[test]
fn the_price_comes_from_the_catalogue_whatever_the_client_sends() {
    let shop = Shop::new();
    let (decision, reply) = shop.post(
        r#"{"product":"pro","quantity":2,"amount":1,"price":"price_evil","currency":"xxx","unit_amount":1}"#,
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body.unwrap(),
        serde_json::json!({"checkout_url": "https://checkout.stripe.test/c/pay/cs_test_1"})
    );
    assert!(matches!(decision.outcome, CheckoutOutcome::Created(ref s) if s.id == "cs_test_1"));
    let form = shop.last_form();
    assert_eq!(
        form,
        [
            ("mode", "payment"),
            ("line_items[0][price]", "price_Pro"),
            ("line_items[0][quantity]", "2"),
            ("metadata[slug]", "pro"),
            (
                "success_url",
                "https://shop.example/success?session_id={CHECKOUT_SESSION_ID}"
            ),
            ("cancel_url", "https://shop.example/cancel"),
            ("shipping_address_collection[allowed_countries][0]", "US"),
            ("shipping_address_collection[allowed_countries][1]", "GB"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    let call = &shop.stripe.calls_to(Route::Create)[0];
    assert_eq!(call.method, Method::Post);
    assert_eq!(call.url, "https://stripe.test/v1/checkout/sessions");
    assert_eq!(
        call.header("authorization"),
        Some(&*format!("Bearer {STRIPE_KEY}"))
    );
    assert_eq!(
        call.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert!(call
        .header("idempotency-key")
        .unwrap()
        .starts_with("checkout-"));
    assert!(!call.body.as_ref().unwrap().contains("evil"));
    let line = shop.last_log();
    assert_eq!(line["msg"], "checkout session created");
    assert_eq!(line["session_id"], "cs_test_1");
    assert_eq!(line["request_id"], "req_create_1");
    assert_eq!(line["product"], "pro");
    assert_eq!(line["promotion"], "none");
}

#[test]
fn a_subscription_without_countries_collects_no_address_and_quantity_defaults_to_one() {
    let shop = Shop::new();
    let (_, reply) = shop.post(r#"{"product":"team"}"#);
    assert_eq!(reply.status, 200);
    let form = shop.last_form();
    assert_eq!(field(&form, "mode"), Some("subscription"));
    assert_eq!(field(&form, "line_items[0][quantity]"), Some("1"));
    assert!(!form
        .iter()
        .any(|(k, _)| k.starts_with("shipping_address_collection")));
    assert!(!form.iter().any(|(k, _)| k.starts_with("discounts")));
}

#[test]
fn a_double_click_with_the_pages_key_gets_the_same_session() {
    let shop = Shop::new();
    let first = shop.post(r#"{"product":"pro"}"#).1;
    shop.clock.0.set(NOW_MS + 800);
    let second = shop.post(r#"{"product":"pro"}"#).1;
    assert_eq!(wire(&first), wire(&second));
    let keys: Vec<_> = shop
        .stripe
        .calls_to(Route::Create)
        .iter()
        .map(|c| c.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(keys[0], keys[1]);
    assert!(
        !keys[0].contains(CLICK),
        "the page's key is hashed, not forwarded"
    );
    // Another address with the same page key, or another quantity: another session.
    let other = shop
        .post_from("198.51.100.1", None, r#"{"product":"pro"}"#)
        .1;
    assert_ne!(wire(&first).2, wire(&other).2);
    let other_quantity = shop.post(r#"{"product":"pro","quantity":2}"#).1;
    assert_ne!(wire(&first).2, wire(&other_quantity).2);
}

#[test]
fn without_the_pages_key_two_shoppers_behind_one_address_get_two_sessions() {
    let shop = Shop::new();
    let body = r#"{"product":"pro"}"#;
    let first = shop.post_with(IP, None, None, body).1;
    let second = shop.post_with(IP, None, None, body).1;
    assert_eq!((first.status, second.status), (200, 200));
    assert_ne!(wire(&first).2, wire(&second).2);
}

#[test]
fn a_malformed_page_key_is_400_and_never_reaches_stripe() {
    let shop = Shop::new();
    let long = "k".repeat(MAX_CLIENT_KEY_CHARS + 1);
    for key in ["", "two words", "caf\u{e9}", long.as_str()] {
        let (_, reply) = shop.post_with(IP, None, Some(key), r#"{"product":"pro"}"#);
        assert_eq!(reply.status, 400, "{key:?}");
        assert_eq!(
            reply.body.unwrap()["error"],
            "Idempotency-Key must be 1 to 200 printable ASCII characters"
        );
    }
    assert!(shop.stripe.calls.borrow().is_empty());
}

#[test]
fn a_conflict_on_the_same_key_is_asked_again_after_a_pause() {
    let shop = Shop::new();
    shop.stripe.script(Route::Create, [status(409)]);
    let (_, reply) = shop.post(r#"{"product":"pro"}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(shop.pause.0.borrow().len(), 1);
    let calls = shop.stripe.calls_to(Route::Create);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].header("idempotency-key"),
        calls[1].header("idempotency-key")
    );
}

// ---------------------------------------------------------------- refusals

#[test]
fn bad_requests_are_400_and_never_reach_stripe() {
    let shop = Shop::new();
    let cases = [
        (r#"{"product":"enterprise"}"#, "unknown product"),
        (
            r#"{"product":"pro","quantity":0}"#,
            "quantity must be a whole number from 1 to 5",
        ),
        (
            r#"{"product":"pro","quantity":6}"#,
            "quantity must be a whole number from 1 to 5",
        ),
        (
            r#"{"product":"pro","quantity":1.5}"#,
            "quantity must be a whole number from 1 to 5",
        ),
        (
            r#"{"product":"pro","quantity":"2"}"#,
            "quantity must be a whole number from 1 to 5",
        ),
        (
            r#"{"product":"pro","quantity":-1}"#,
            "quantity must be a whole number from 1 to 5",
        ),
        (
            r#"{"quantity":1}"#,
            "product must be a string naming a product",
        ),
        (
            r#"{"product":7}"#,
            "product must be a string naming a product",
        ),
        (
            r#"{"product":"pro","promotion_code":12}"#,
            "promotion_code must be a string",
        ),
        ("not json", "the body must be a JSON object"),
        ("[]", "the body must be a JSON object"),
        ("", "the body must be a JSON object"),
    ];
    for (body, message) in cases {
        let (_, reply) = shop.post(body);
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.body.unwrap()["error"], message, "{body}");
        assert_eq!(shop.last_log()["msg"], "checkout refused");
    }
    assert!(shop.stripe.calls.borrow().is_empty());
    // A slug the client made up is never logged.
    shop.post(r#"{"product":"ada@example.com"}"#);
    assert!(!shop.log.joined().contains("ada@"));
    assert!(shop.throttle.counts.borrow().is_empty());
}

#[test]
fn an_oversized_body_is_413_and_other_methods_405() {
    let shop = Shop::new();
    let (_, reply) = shop.send(CheckoutRequest {
        verb: Verb::Post,
        origin: None,
        client_ip: Some(IP),
        idempotency_key: None,
        nonce: "n",
        body: None,
    });
    assert_eq!(reply.status, 413);
    let (_, reply) = shop.send(CheckoutRequest {
        verb: Verb::Other,
        origin: None,
        client_ip: Some(IP),
        idempotency_key: None,
        nonce: "n",
        body: Some(b""),
    });
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("POST, OPTIONS"));
}

#[test]
fn a_stripe_failure_is_502_without_stripe_detail_and_logged_with_its_request_id() {
    let shop = Shop::new();
    shop.stripe.script(
        Route::Create,
        [Ok(HttpResponse {
            status: 500,
            body: br#"{"error":{"message":"Invalid API Key provided: sk_test_unit"}}"#.to_vec(),
            request_id: Some("req_failed_1".into()),
        })],
    );
    let (_, reply) = shop.post(r#"{"product":"pro"}"#);
    assert_eq!(reply.status, 502);
    let body = reply.body.unwrap().to_string();
    assert_eq!(
        body,
        r#"{"error":"could not start checkout, please try again"}"#
    );
    let line = shop.last_log();
    assert_eq!(line["msg"], "checkout failed: Stripe API");
    assert_eq!(line["level"], "error");
    assert_eq!(line["request_id"], "req_failed_1");
    assert_eq!(line["stripe_status"], 500);
    assert_eq!(line["reason"], "checkout_stripe_failed");
    assert!(!shop.log.joined().contains(STRIPE_KEY));
}

#[test]
fn a_stripe_timeout_or_unreadable_answer_is_502_too() {
    let shop = Shop::new();
    shop.stripe.script(
        Route::Create,
        [
            Err(crate::ports::TransportError::Timeout),
            ok(r#"{"id":"cs_1","url":null}"#),
            ok("not json"),
        ],
    );
    for _ in 0..3 {
        assert_eq!(shop.post(r#"{"product":"team"}"#).1.status, 502);
    }
}

#[test]
fn missing_settings_are_503_and_named_in_the_log_only() {
    for (name, value) in [
        ("STRIPE_API_KEY", None),
        ("APP_URL", None),
        ("PRODUCTS", None),
        (
            "PRODUCTS",
            Some(r#"{"pro":{"price":"price_1","mode":"rent","max_quantity":1}}"#),
        ),
        ("PRODUCTS", Some("{not json")),
    ] {
        let shop = Shop::with(settings(&[(name, value)]));
        let (_, reply) = shop.post(r#"{"product":"pro"}"#);
        assert_eq!(reply.status, 503, "{name}");
        let body = reply.body.unwrap().to_string();
        assert_eq!(body, r#"{"error":"checkout is not configured"}"#);
        let line = shop.last_log();
        assert_eq!(line["msg"], "checkout not configured");
        assert_eq!(line["level"], "error");
        assert_eq!(line["settings"], serde_json::json!([name]));
        assert!(shop.stripe.calls.borrow().is_empty());
    }
    let shop = Shop::with(settings(&[("APP_URL", None), ("PRODUCTS", None)]));
    shop.post(r#"{"product":"pro"}"#);
    assert_eq!(
        shop.last_log()["settings"],
        serde_json::json!(["APP_URL", "PRODUCTS"])
    );
}

// ---------------------------------------------------------------- promotion codes

#[test]
fn a_valid_code_is_looked_up_server_side_and_applied() {
    let shop = Shop::new();
    shop.stripe.code(
        SPRING,
        &active_code(
            "promo_Spring",
            r#"{"id":"co_Spring","valid":true,"applies_to":{"products":["prod_Pro"]}}"#,
        ),
    );
    let (decision, reply) = shop.post(r#"{"product":"pro","promotion_code":" SPRING25 "}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(
        decision.promotion,
        Promotion::Applied("promo_Spring".into())
    );
    let lookup = &shop.stripe.calls_to(Route::Promo)[0];
    assert_eq!(
        lookup.url,
        "https://stripe.test/v1/promotion_codes?code=SPRING25&active=true&limit=1&expand%5B%5D=data.coupon.applies_to"
    );
    assert_eq!(lookup.header("stripe-version"), Some("2025-03-31.basil"));
    assert_eq!(lookup.method, Method::Get);
    assert_eq!(
        field(&shop.last_form(), "discounts[0][promotion_code]"),
        Some("promo_Spring")
    );
    let line = shop.last_log();
    assert_eq!(line["promotion"], "applied");
    assert_eq!(line["promotion_code_id"], "promo_Spring");
    assert_eq!(line["code_attempts"], 1);
    assert!(!shop.log.joined().contains(SPRING));
}

#[test]
fn a_code_is_url_encoded_in_the_lookup() {
    let shop = Shop::new();
    shop.post(r#"{"product":"pro","promotion_code":"a&b=c d/é"}"#);
    let lookup = &shop.stripe.calls_to(Route::Promo)[0];
    assert!(
        lookup
            .url
            .contains("?code=a%26b%3Dc%20d%2F%C3%A9&active=true"),
        "{}",
        lookup.url
    );
}

#[test]
fn the_restriction_comes_expanded_in_the_one_lookup() {
    let shop = Shop::new();
    shop.stripe.code(
        SPRING,
        &active_code(
            "promo_Old",
            r#"{"id":"co_Old","valid":true,"applies_to":{"products":["prod_Other"]}}"#,
        ),
    );
    let (decision, _) = shop.post(r#"{"product":"pro","promotion_code":"SPRING25"}"#);
    assert_eq!(
        decision.promotion,
        Promotion::Dropped(Dropped::WrongProduct)
    );
    // A product without `product` in the catalogue needs no restriction.
    let (decision, _) = shop.post(r#"{"product":"team","promotion_code":"SPRING25"}"#);
    assert_eq!(decision.promotion, Promotion::Applied("promo_Old".into()));
    assert!(shop.stripe.calls_to(Route::Coupon).is_empty());
}

/// Behaviour changed on purpose: a promotion code whose coupon comes as an id only
/// (not the pinned version's shape) used to be read with a second call, made for
/// valid codes only; it is dropped now, so no code costs a call more than another.
#[test]
fn a_coupon_given_only_by_id_is_dropped_without_a_second_call() {
    let shop = Shop::new();
    shop.stripe.code(
        SPRING,
        r#"{"id":"promo_New","active":true,"code":"SPRING25","promotion":{"type":"coupon","coupon":"co_New"}}"#,
    );
    let (decision, reply) = shop.post(r#"{"product":"pro","promotion_code":"SPRING25"}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(
        decision.promotion,
        Promotion::Dropped(Dropped::LookupFailed)
    );
    assert!(shop.stripe.calls_to(Route::Coupon).is_empty());
}

/// No timing oracle: whatever becomes of a code, Stripe hears the same calls (one
/// promotion code lookup, then the session), in the same order.
#[test]
fn every_code_state_makes_the_same_stripe_calls() {
    let restricted = r#"{"id":"co","valid":true,"applies_to":{"products":["prod_Pro"]}}"#;
    let states: [(&str, Option<String>); 7] = [
        ("unknown", None),
        ("valid", Some(active_code("promo_1", restricted))),
        (
            "inactive",
            Some(format!(
                r#"{{"id":"promo_1","active":false,"coupon":{restricted}}}"#
            )),
        ),
        (
            "expired",
            Some(format!(
                r#"{{"id":"promo_1","active":true,"expires_at":1600000000,"coupon":{restricted}}}"#
            )),
        ),
        (
            "exhausted",
            Some(format!(
                r#"{{"id":"promo_1","active":true,"max_redemptions":1,"times_redeemed":1,"coupon":{restricted}}}"#
            )),
        ),
        (
            "coupon invalid",
            Some(active_code("promo_1", r#"{"id":"co","valid":false}"#)),
        ),
        (
            "another product",
            Some(active_code(
                "promo_1",
                r#"{"id":"co","valid":true,"applies_to":{"products":["prod_Other"]}}"#,
            )),
        ),
    ];
    for (what, object) in states {
        let shop = Shop::new();
        if let Some(object) = object {
            shop.stripe.code(SPRING, &object);
        }
        shop.post(r#"{"product":"pro","promotion_code":"SPRING25"}"#);
        let sequence: Vec<Route> = shop.stripe.calls.borrow().iter().map(route_of).collect();
        assert_eq!(sequence, [Route::Promo, Route::Create], "{what}");
    }
}

/// Every way a code can fail answers exactly like no code: same status, same headers,
/// the same body but for the session id. Not the same session: a code, dropped or not,
/// gets its own Idempotency-Key, so a caller reusing one key cannot tell a dropped
/// code (the no-code session again) from an applied one (a new session).
#[test]
fn an_invalid_code_answers_like_no_code_with_a_session_of_its_own() {
    type Setup = Box<dyn Fn(&FakeStripe)>;
    let cases: [(&str, Setup, Dropped); 9] = [
        ("unknown", Box::new(|_| {}), Dropped::Unknown),
        (
            "inactive",
            Box::new(|s| {
                s.code(
                    SPRING,
                    r#"{"id":"promo_1","active":false,"coupon":{"id":"co","valid":true}}"#,
                )
            }),
            Dropped::Inactive,
        ),
        (
            "expired",
            Box::new(|s| {
                s.code(SPRING, r#"{"id":"promo_1","active":true,"coupon":{"id":"co","valid":true},"expires_at":1600000000}"#)
            }),
            Dropped::Expired,
        ),
        (
            "exhausted",
            Box::new(|s| {
                s.code(SPRING, r#"{"id":"promo_1","active":true,"coupon":{"id":"co","valid":true},"max_redemptions":1,"times_redeemed":1}"#)
            }),
            Dropped::Exhausted,
        ),
        (
            "coupon no longer valid",
            Box::new(|s| {
                s.code(
                    SPRING,
                    &active_code(
                        "promo_1",
                        r#"{"id":"co","valid":false,"applies_to":{"products":[]}}"#,
                    ),
                )
            }),
            Dropped::CouponInvalid,
        ),
        (
            "another product",
            Box::new(|s| {
                s.code(
                    SPRING,
                    &active_code(
                        "promo_1",
                        r#"{"id":"co","valid":true,"applies_to":{"products":["prod_Other"]}}"#,
                    ),
                )
            }),
            Dropped::WrongProduct,
        ),
        (
            "newer shape, another product",
            Box::new(|s| {
                s.code(SPRING, r#"{"id":"promo_1","active":true,"promotion":{"type":"coupon","coupon":{"id":"co_9","valid":true,"applies_to":{"products":["prod_Other"]}}}}"#);
            }),
            Dropped::WrongProduct,
        ),
        (
            "lookup fails",
            Box::new(|s| s.script(Route::Promo, [status(500)])),
            Dropped::LookupFailed,
        ),
        (
            "Stripe refuses the discount",
            Box::new(|s| {
                s.code(
                    SPRING,
                    &active_code(
                        "promo_Mine",
                        r#"{"id":"co","valid":true,"applies_to":{"products":[]}}"#,
                    ),
                );
                s.refused_promos.borrow_mut().push("promo_Mine".into());
            }),
            Dropped::RefusedByStripe,
        ),
    ];
    for (what, setup, dropped) in cases {
        let shop = Shop::new();
        let (_, plain) = shop.post(r#"{"product":"pro","quantity":2}"#);
        let plain_form = shop.last_form();
        setup(&shop.stripe);
        let (decision, coded) =
            shop.post(r#"{"product":"pro","quantity":2,"promotion_code":"SPRING25"}"#);
        assert_eq!(decision.promotion, Promotion::Dropped(dropped), "{what}");
        assert_eq!(shape(&coded), shape(&plain), "{what}");
        assert_ne!(
            wire(&coded).2,
            wire(&plain).2,
            "{what}: a session of its own"
        );
        assert_eq!(shop.last_form(), plain_form, "{what}");
        let line = shop.last_log();
        assert_eq!(line["promotion"], "dropped", "{what}");
        assert_eq!(line["promotion_dropped"], dropped.as_str(), "{what}");
        assert!(!shop.log.joined().contains(SPRING), "{what}");
    }
}

#[test]
fn a_double_click_with_the_same_code_gets_the_same_session_and_another_code_another() {
    let shop = Shop::new();
    let coded = |code: &str| format!(r#"{{"product":"pro","promotion_code":"{code}"}}"#);
    let first = shop.post(&coded("GUESS1")).1;
    let again = shop.post(&coded("GUESS1")).1;
    let other = shop.post(&coded("GUESS2")).1;
    assert_eq!(wire(&first), wire(&again));
    assert_ne!(wire(&first).2, wire(&other).2);
    assert_eq!(shape(&first), shape(&other));
}

#[test]
fn an_ipv6_block_is_throttled_at_a_multiple_of_the_limit_across_its_slash_64s() {
    let shop = Shop::new(); // CHECKOUT_CODE_ATTEMPTS = 3: a /48 gets 3 × 4 = 12
    let body = r#"{"product":"pro","promotion_code":"GUESS"}"#;
    let limit = 3 * throttle::SLASH_48_FACTOR;
    for n in 0..limit {
        // A fresh /64 of the same /48 each time: the /64 counter never trips.
        let ip = format!("2001:db8:7:{n:x}::1");
        assert_eq!(shop.post_from(&ip, None, body).1.status, 200, "attempt {n}");
    }
    assert_eq!(shop.post_from("2001:db8:7:ff::1", None, body).1.status, 429);
    assert_eq!(
        shop.post_from("2001:db8:8:0::1", None, body).1.status,
        200,
        "another /48"
    );
}

#[test]
fn a_malformed_code_counts_but_is_never_looked_up() {
    let shop = Shop::new();
    let long = "A".repeat(promo::MAX_CODE_CHARS + 1);
    let (decision, reply) = shop.post(&format!(r#"{{"product":"pro","promotion_code":"{long}"}}"#));
    assert_eq!(reply.status, 200);
    assert_eq!(decision.promotion, Promotion::Dropped(Dropped::Malformed));
    assert_eq!(decision.code_attempts, Some(1));
    assert!(shop.stripe.calls_to(Route::Promo).is_empty());
}

#[test]
fn an_empty_code_is_no_code_and_is_not_counted() {
    let shop = Shop::new();
    let (decision, _) = shop.post(r#"{"product":"pro","promotion_code":"  "}"#);
    assert_eq!(decision.promotion, Promotion::None);
    assert_eq!(decision.code_attempts, None);
    let (decision, _) = shop.post(r#"{"product":"pro","promotion_code":null}"#);
    assert_eq!(decision.code_attempts, None);
}

// ---------------------------------------------------------------- throttling

#[test]
fn the_attempt_after_the_limit_is_429_until_the_window_ends() {
    let shop = Shop::new(); // CHECKOUT_CODE_ATTEMPTS = 3, window 600 s
    let window = throttle::window(NOW_MS, 600);
    let coded = |code: &str| format!(r#"{{"product":"pro","promotion_code":"{code}"}}"#);
    for n in 1..=3 {
        let (decision, reply) = shop.post(&coded(&format!("GUESS{n}")));
        assert_eq!(reply.status, 200, "attempt {n}");
        assert_eq!(decision.code_attempts, Some(n));
    }
    let (_, reply) = shop.post(&coded("GUESS4"));
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("retry-after"),
        Some(&*window.retry_after_secs.to_string())
    );
    assert_eq!(
        reply.body.unwrap()["error"],
        "too many promotion code attempts; retry later"
    );
    assert_eq!(
        shop.stripe.calls_to(Route::Promo).len(),
        3,
        "no lookup once throttled"
    );
    let line = shop.last_log();
    assert_eq!(
        (line["msg"].as_str(), line["level"].as_str()),
        (Some("checkout refused"), Some("warn"))
    );
    assert_eq!(line["reason"], "checkout_rate_limited");
    assert_eq!(line["code_attempts"], 4);
    assert!(!shop.log.joined().contains("GUESS"));

    // Requests without a code are not throttled; another client has its own count.
    assert_eq!(shop.post(r#"{"product":"pro"}"#).1.status, 200);
    assert_eq!(
        shop.post_from("198.51.100.1", None, &coded("X")).1.status,
        200
    );
    // The next window starts afresh.
    shop.clock.0.set((window.start + 600) * 1_000);
    assert_eq!(shop.post(&coded("GUESS5")).1.status, 200);
}

#[test]
fn retry_after_counts_down_to_the_end_of_the_window() {
    let shop = Shop::with(settings(&[("CHECKOUT_CODE_ATTEMPTS", Some("1"))]));
    let start = throttle::window(NOW_MS, 600).start;
    shop.clock.0.set((start + 590) * 1_000);
    shop.post(r#"{"product":"pro","promotion_code":"A"}"#);
    let (_, reply) = shop.post(r#"{"product":"pro","promotion_code":"B"}"#);
    assert_eq!(reply.header("retry-after"), Some("10"));
}

#[test]
fn an_unavailable_counter_is_503_and_no_code_is_looked_up() {
    let shop = Shop::new();
    shop.throttle.unavailable.set(true);
    let (_, reply) = shop.post(r#"{"product":"pro","promotion_code":"SPRING25"}"#);
    assert_eq!(reply.status, 503);
    assert!(shop.stripe.calls.borrow().is_empty());
    assert_eq!(
        shop.last_log()["msg"],
        "checkout failed: throttle unavailable"
    );
    // Without a code the counter is not needed: the session budget goes uncounted
    // (it guards the Stripe rate limit, not a secret) and the log says so.
    assert_eq!(shop.post(r#"{"product":"pro"}"#).1.status, 200);
    assert_eq!(shop.last_log()["session_budget"], "uncounted");
}

#[test]
fn session_requests_are_throttled_per_client_with_or_without_a_code() {
    let shop = Shop::new();
    let limit = shop.config.checkout.session_attempts;
    assert_eq!(limit, 30, "the documented default");
    for n in 0..limit {
        let (_, reply) = shop.post(r#"{"product":"pro"}"#);
        assert_eq!(reply.status, 200, "request {n}");
    }
    let calls = shop.stripe.calls.borrow().len();
    let (decision, reply) = shop.post(r#"{"product":"pro"}"#);
    assert_eq!(reply.status, 429);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(
        reply.body,
        Some(serde_json::json!({"error": "too many checkout attempts; retry later"}))
    );
    assert_eq!(
        shop.stripe.calls.borrow().len(),
        calls,
        "Stripe is not asked"
    );
    assert!(matches!(
        decision.outcome,
        CheckoutOutcome::Refused(CheckoutRefusal::TooManySessions { .. })
    ));
    // The next window starts afresh.
    let now = shop.clock.0.get();
    shop.clock.0.set(now + 61_000);
    assert_eq!(shop.post(r#"{"product":"pro"}"#).1.status, 200);
}

// ---------------------------------------------------------------- CORS

#[test]
fn a_preflight_from_an_allowed_origin_is_204_with_the_cors_headers() {
    let shop = Shop::new();
    let (_, reply) = shop.send(CheckoutRequest {
        verb: Verb::Options,
        origin: Some(SHOP),
        client_ip: Some(IP),
        idempotency_key: None,
        nonce: "n",
        body: Some(b""),
    });
    assert_eq!(reply.status, 204);
    assert_eq!(reply.body, None);
    assert_eq!(reply.header("access-control-allow-origin"), Some(SHOP));
    assert_eq!(reply.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type, idempotency-key")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert_eq!(reply.header("vary"), Some("Origin"));
    assert_eq!(shop.last_log()["msg"], "checkout preflight");
}

#[test]
fn a_foreign_origin_is_403_without_cors_headers_and_never_reaches_stripe() {
    let shop = Shop::new();
    for verb in [Verb::Options, Verb::Post] {
        let (_, reply) = shop.send(CheckoutRequest {
            verb,
            origin: Some("https://evil.example"),
            client_ip: Some(IP),
            idempotency_key: None,
            nonce: "n",
            body: Some(br#"{"product":"pro"}"#),
        });
        assert_eq!(reply.status, 403, "{verb:?}");
        assert!(!reply
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("access-control")));
        assert_eq!(shop.last_log()["reason"], "checkout_forbidden_origin");
    }
    assert!(shop.stripe.calls.borrow().is_empty());
}

#[test]
fn an_allowed_origin_gets_its_answers_readable() {
    let shop = Shop::with(settings(&[("CHECKOUT_CODE_ATTEMPTS", Some("1"))]));
    let (_, reply) = shop.post_from(IP, Some(SHOP), r#"{"product":"pro"}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), Some(SHOP));
    assert_eq!(reply.header("vary"), Some("Origin"));
    let (_, reply) = shop.post_from(IP, Some(SHOP), r#"{"product":"nope"}"#);
    assert_eq!(
        (reply.status, reply.header("access-control-allow-origin")),
        (400, Some(SHOP))
    );
    shop.post_from(IP, Some(SHOP), r#"{"product":"pro","promotion_code":"A"}"#);
    let (_, reply) = shop.post_from(IP, Some(SHOP), r#"{"product":"pro","promotion_code":"B"}"#);
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("access-control-expose-headers"),
        Some("Retry-After")
    );
}

#[test]
fn without_allowed_origins_only_callers_without_an_origin_may_check_out() {
    let shop = Shop::with(settings(&[("ALLOWED_ORIGINS", None)]));
    assert_eq!(
        shop.post_from(IP, Some(SHOP), r#"{"product":"pro"}"#)
            .1
            .status,
        403
    );
    let (_, reply) = shop.post(r#"{"product":"pro"}"#);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn every_refusal_has_its_status_code() {
    let failure = StripeError {
        cause: Cause::Refused,
        status: Some(500),
        request_id: None,
        why: "x",
    };
    let cases = [
        (CheckoutRefusal::MethodNotAllowed, 405),
        (CheckoutRefusal::ForbiddenOrigin, 403),
        (CheckoutRefusal::TooLarge, 413),
        (CheckoutRefusal::BadRequest("x"), 400),
        (CheckoutRefusal::UnknownProduct, 400),
        (CheckoutRefusal::BadQuantity { max: 1 }, 400),
        (
            CheckoutRefusal::RateLimited {
                retry_after_secs: 1,
            },
            429,
        ),
        (CheckoutRefusal::NotConfigured(vec!["PRODUCTS"]), 503),
        (
            CheckoutRefusal::Unavailable(crate::ports::ledger::LedgerError {
                operation: "x",
                detail: "x".into(),
            }),
            503,
        ),
        (CheckoutRefusal::Stripe(failure), 502),
    ];
    for (refusal, code) in cases {
        assert_eq!(crate::http::checkout::status(&refusal), code, "{refusal:?}");
    }
}
