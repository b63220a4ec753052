//! Server-side checkout (`POST /checkout`): a Stripe Checkout Session for a product of
//! the catalogue, at the catalogue's price.
//!
//! The handler runs over traits (the Stripe API, the clock, the code-attempt counter,
//! a pause), so it is tested natively; `edge` is its only JavaScript. In order:
//! CORS → method → settings → body → product and quantity → (with a promotion code)
//! throttle, then the code's lookup → the session. The status code and the log line of
//! every outcome are decided in [`reply`].

pub mod cors;
pub mod form;
pub mod idempotency;
pub mod promo;
pub mod throttle;

#[cfg(test)]
mod handler_tests;

use serde_json::Value;

use self::cors::Caller;
use self::form::Form;
use self::idempotency::{idempotency_key, KeySource};
use self::promo::{Dropped, Promotion};
use self::throttle::Scope;
use crate::ports::ledger::LedgerError;
use crate::ports::{Clock, Upstream};
use crate::ports::{Pause, Throttle};
use crate::settings::catalogue::{Catalogue, Product};
use crate::settings::{Config, Secret, APP_URL, PRODUCTS, STRIPE_API_KEY};
use crate::stripe::api::StripeApi;
use crate::stripe::checkout_api::CreatedSession;
use crate::stripe::error::StripeError;
use crate::upstream::Deadline;

pub const CHECKOUT_PATH: &str = "/checkout";
/// The request is three short fields; anything much larger is not a checkout.
pub const CHECKOUT_MAX_BODY_BYTES: u64 = 8 * 1024;

/// What the handler works with.
pub struct CheckoutDeps<'a, U, C, T, P> {
    pub config: &'a Config,
    pub upstream: &'a U,
    pub clock: &'a C,
    pub throttle: &'a T,
    pub pause: &'a P,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Post,
    Options,
    Other,
}

/// What the edge read from the request.
#[derive(Debug, Clone, Copy)]
pub struct CheckoutRequest<'a> {
    pub verb: Verb,
    pub origin: Option<&'a str>,
    /// `CF-Connecting-IP`: keys the code throttle and the Idempotency-Key; never logged.
    pub client_ip: Option<&'a str>,
    /// The page's `Idempotency-Key` header, if it sent one (see [`KeySource`]).
    pub idempotency_key: Option<&'a str>,
    /// A random value of this request: the Idempotency-Key when the page sent none.
    pub nonce: &'a str,
    /// The body; `None` when it was larger than [`CHECKOUT_MAX_BODY_BYTES`].
    pub body: Option<&'a [u8]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutOutcome {
    Created(CreatedSession),
    /// An allowed (or origin-less) preflight.
    Preflight,
    Refused(CheckoutRefusal),
}

/// Why no session was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutRefusal {
    MethodNotAllowed,
    /// An `Origin` not in `ALLOWED_ORIGINS`.
    ForbiddenOrigin,
    TooLarge,
    /// Not a JSON object, or a field of the wrong type; the text says which.
    BadRequest(&'static str),
    UnknownProduct,
    BadQuantity {
        max: u32,
    },
    /// Too many requests with a promotion code from this client in this window.
    RateLimited {
        retry_after_secs: u64,
    },
    /// Too many session requests from this client in this window (with or without a
    /// code): `CHECKOUT_SESSION_ATTEMPTS` per `CHECKOUT_SESSION_WINDOW_SECS`.
    TooManySessions {
        retry_after_secs: u64,
    },
    /// The settings checkout needs that are unset or malformed, by name.
    NotConfigured(Vec<&'static str>),
    /// The code-attempt counter (D1) failed.
    Unavailable(LedgerError),
    /// Stripe did not create the session.
    Stripe(StripeError),
}

impl CheckoutRefusal {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "checkout_method_not_allowed",
            Self::ForbiddenOrigin => "checkout_forbidden_origin",
            Self::TooLarge => "checkout_body_too_large",
            Self::BadRequest(_) => "checkout_bad_request",
            Self::UnknownProduct => "checkout_unknown_product",
            Self::BadQuantity { .. } => "checkout_bad_quantity",
            Self::RateLimited { .. } => "checkout_rate_limited",
            Self::TooManySessions { .. } => "checkout_sessions_rate_limited",
            Self::NotConfigured(_) => "checkout_not_configured",
            Self::Unavailable(_) => "checkout_unavailable",
            Self::Stripe(_) => "checkout_stripe_failed",
        }
    }
}

/// Everything the answer and the log line are made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutDecision {
    pub outcome: CheckoutOutcome,
    pub caller: Caller,
    /// The catalogue slug, once the request named one that exists (a slug the client
    /// made up is never logged).
    pub slug: Option<String>,
    pub quantity: Option<u32>,
    pub promotion: Promotion,
    /// Stripe's request id of a failed promotion code lookup.
    pub promotion_request_id: Option<String>,
    /// This client's requests with a code in the current window, this one included.
    pub code_attempts: Option<u32>,
    /// The session budget could not be counted (D1 down): the request went on, since
    /// that budget guards the Stripe rate limit, not a secret; the log says so.
    pub session_count_failed: bool,
}

/// Runs one request to `/checkout`.
pub async fn handle<U: Upstream, C: Clock, T: Throttle, P: Pause>(
    deps: &CheckoutDeps<'_, U, C, T, P>,
    request: &CheckoutRequest<'_>,
    started_ms: u64,
) -> CheckoutDecision {
    let caller = cors::check(&deps.config.checkout.allowed_origins, request.origin);
    let mut decision = CheckoutDecision {
        outcome: CheckoutOutcome::Preflight,
        caller: caller.clone(),
        slug: None,
        quantity: None,
        promotion: Promotion::None,
        promotion_request_id: None,
        code_attempts: None,
        session_count_failed: false,
    };
    decision.outcome = match (&caller, request.verb) {
        (Caller::Foreign, _) => CheckoutOutcome::Refused(CheckoutRefusal::ForbiddenOrigin),
        (_, Verb::Options) => CheckoutOutcome::Preflight,
        (_, Verb::Other) => CheckoutOutcome::Refused(CheckoutRefusal::MethodNotAllowed),
        (_, Verb::Post) => match post(deps, request, started_ms, &mut decision).await {
            Ok(session) => CheckoutOutcome::Created(session),
            Err(refusal) => CheckoutOutcome::Refused(refusal),
        },
    };
    decision
}

/// Counts a session request against the client's budget (its /64 and /48 for IPv6),
/// before any Stripe call: past it, 429 and Stripe is never asked.
async fn sessions_allowed<U, C: Clock, T: Throttle, P>(
    deps: &CheckoutDeps<'_, U, C, T, P>,
    key: &Secret,
    client_ip: Option<&str>,
) -> Result<(), CheckoutRefusal> {
    let settings = &deps.config.checkout;
    let window = throttle::window(deps.clock.now_ms(), settings.session_window_secs);
    for (counter, factor) in throttle::scoped_client_keys(Scope::CheckoutSession, key, client_ip) {
        let count = deps
            .throttle
            .hit(&counter, window.start)
            .await
            .map_err(CheckoutRefusal::Unavailable)?;
        if count > settings.session_attempts.saturating_mul(factor) {
            return Err(CheckoutRefusal::TooManySessions {
                retry_after_secs: window.retry_after_secs,
            });
        }
    }
    Ok(())
}

/// What checkout needs, all present.
struct Ready<'a> {
    key: &'a Secret,
    app_url: &'a str,
    catalogue: &'a Catalogue,
}

fn ready(config: &Config) -> Result<Ready<'_>, Vec<&'static str>> {
    let checkout = &config.checkout;
    match (
        &config.stripe_api_key,
        &checkout.app_url,
        &checkout.products,
    ) {
        (Some(key), Some(app_url), Some(catalogue)) => Ok(Ready {
            key,
            app_url,
            catalogue,
        }),
        (key, app_url, catalogue) => Err([
            (STRIPE_API_KEY, key.is_none()),
            (APP_URL, app_url.is_none()),
            (PRODUCTS, catalogue.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect()),
    }
}

/// The request body, as far as we read it. Any other field (an amount, a price, a
/// currency) is ignored by design: the catalogue decides what is sold and at what price.
struct Order {
    slug: String,
    quantity: Option<Value>,
    code: Option<String>,
}

fn parse_order(body: &[u8]) -> Result<Order, CheckoutRefusal> {
    // A `Value` is read from a `&str`, like the catalogue's and the first bodies' (one
    // compiled reader); it reads every string, so a body that is not UTF-8 fails either
    // way, exactly as `from_slice` would.
    let parsed = std::str::from_utf8(body).map(serde_json::from_str::<Value>);
    let Ok(Ok(Value::Object(mut fields))) = parsed else {
        return Err(CheckoutRefusal::BadRequest(
            "the body must be a JSON object",
        ));
    };
    let Some(Value::String(slug)) = fields.remove("product") else {
        return Err(CheckoutRefusal::BadRequest(
            "product must be a string naming a product",
        ));
    };
    let code = match fields.remove("promotion_code") {
        None | Some(Value::Null) => None,
        Some(Value::String(code)) => Some(code.trim().to_string()).filter(|c| !c.is_empty()),
        Some(_) => {
            return Err(CheckoutRefusal::BadRequest(
                "promotion_code must be a string",
            ))
        }
    };
    Ok(Order {
        slug,
        quantity: fields.remove("quantity").filter(|q| !q.is_null()),
        code,
    })
}

/// Longest `Idempotency-Key` accepted from the page (Stripe takes up to 255; ours is
/// a hash of it, so any printable key up to this length is fine).
pub const MAX_CLIENT_KEY_CHARS: usize = 200;

/// Whether a caller's `Idempotency-Key` is one we take: 1 to [`MAX_CLIENT_KEY_CHARS`]
/// printable ASCII characters (`/checkout`, and the ops API's resend-email).
pub fn is_client_key(key: &str) -> bool {
    (1..=MAX_CLIENT_KEY_CHARS).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
}

/// The refusal of a caller's `Idempotency-Key` that [`is_client_key`] does not take.
pub const BAD_CLIENT_KEY: &str = "Idempotency-Key must be 1 to 200 printable ASCII characters";

fn key_source<'a>(request: &CheckoutRequest<'a>) -> Result<KeySource<'a>, CheckoutRefusal> {
    match request.idempotency_key {
        None => Ok(KeySource::Nonce(request.nonce)),
        Some(key) if is_client_key(key) => Ok(KeySource::Client {
            ip: request.client_ip,
            key,
        }),
        Some(_) => Err(CheckoutRefusal::BadRequest(BAD_CLIENT_KEY)),
    }
}

fn quantity(requested: Option<&Value>, product: &Product) -> Result<u32, CheckoutRefusal> {
    let Some(requested) = requested else {
        return Ok(1);
    };
    requested
        .as_u64()
        .filter(|n| (1..=u64::from(product.max_quantity)).contains(n))
        .map(|n| n as u32)
        .ok_or(CheckoutRefusal::BadQuantity {
            max: product.max_quantity,
        })
}

async fn post<U: Upstream, C: Clock, T: Throttle, P: Pause>(
    deps: &CheckoutDeps<'_, U, C, T, P>,
    request: &CheckoutRequest<'_>,
    started_ms: u64,
    decision: &mut CheckoutDecision,
) -> Result<CreatedSession, CheckoutRefusal> {
    let ready = ready(deps.config).map_err(CheckoutRefusal::NotConfigured)?;
    let key_source = key_source(request)?;
    let order = parse_order(request.body.ok_or(CheckoutRefusal::TooLarge)?)?;
    let product = ready
        .catalogue
        .get(&order.slug)
        .ok_or(CheckoutRefusal::UnknownProduct)?;
    decision.slug = Some(order.slug.clone());
    let quantity = quantity(order.quantity.as_ref(), product)?;
    decision.quantity = Some(quantity);
    let api = StripeApi {
        base: &deps.config.stripe_api_base,
        key: ready.key,
        version: &deps.config.stripe_api_version,
    };
    let deadline = Deadline::new(started_ms, deps.config.upstream_timeout_ms);
    match sessions_allowed(deps, ready.key, request.client_ip).await {
        Err(CheckoutRefusal::Unavailable(_)) => decision.session_count_failed = true,
        other => other?,
    }
    if let Some(code) = &order.code {
        let settings = &deps.config.checkout;
        let window = throttle::window(deps.clock.now_ms(), settings.code_window_secs);
        for (i, (key, factor)) in throttle::client_keys(ready.key, request.client_ip)
            .into_iter()
            .enumerate()
        {
            let count = deps
                .throttle
                .hit(&key, window.start)
                .await
                .map_err(CheckoutRefusal::Unavailable)?;
            if i == 0 {
                decision.code_attempts = Some(count);
            }
            if count > settings.code_attempts.saturating_mul(factor) {
                return Err(CheckoutRefusal::RateLimited {
                    retry_after_secs: window.retry_after_secs,
                });
            }
        }
        let resolved =
            promo::resolve(&api, deps.upstream, deps.clock, deadline, code, product).await;
        decision.promotion = resolved.promotion;
        decision.promotion_request_id = resolved.request_id;
    }
    let code_tag = order
        .code
        .as_deref()
        .map(|c| throttle::code_tag(ready.key, c));
    // The form's encoding is both the body and what the Idempotency-Key hashes.
    let prepare = |discount: Option<&str>| {
        let body = session_form(ready.app_url, &order.slug, product, quantity, discount).encode();
        let key = idempotency_key(key_source, code_tag.as_deref(), &body);
        (body, key)
    };
    let discount = match &decision.promotion {
        Promotion::Applied(id) => Some(id.clone()),
        _ => None,
    };
    let (body, key) = prepare(discount.as_deref());
    let (upstream, clock, pause) = (deps.upstream, deps.clock, deps.pause);
    match api
        .create_session(upstream, clock, pause, deadline, &body, &key)
        .await
    {
        // Stripe checks what we cannot (a code restricted to one customer or to first
        // orders, a minimum amount): it refuses the session with a 400. Create it
        // without the code, so the shopper's answer is the one a request without the
        // code gets (the same form, so the same Idempotency-Key and the same session).
        Err(failure) if discount.is_some() && failure.status == Some(400) => {
            decision.promotion = Promotion::Dropped(Dropped::RefusedByStripe);
            decision.promotion_request_id = failure.request_id;
            let (body, key) = prepare(None);
            api.create_session(upstream, clock, pause, deadline, &body, &key)
                .await
        }
        result => result,
    }
    .map_err(CheckoutRefusal::Stripe)
}

/// The `POST /v1/checkout/sessions` parameters: everything from the catalogue and the
/// settings, nothing from the client but the product's slug and the quantity.
pub fn session_form(
    app_url: &str,
    slug: &str,
    product: &Product,
    quantity: u32,
    promotion_code: Option<&str>,
) -> Form {
    let mut form = Form::new();
    form.push("mode", product.mode.as_str())
        .push("line_items[0][price]", product.price.as_str())
        .push("line_items[0][quantity]", quantity.to_string())
        // What the fulfilment engine issues the license for.
        .push("metadata[slug]", slug)
        // Stripe replaces the placeholder with the session id on redirect.
        .push(
            "success_url",
            format!("{app_url}/success?session_id={{CHECKOUT_SESSION_ID}}"),
        )
        .push("cancel_url", format!("{app_url}/cancel"));
    for (i, country) in product.shipping_countries.iter().flatten().enumerate() {
        form.push(
            format!("shipping_address_collection[allowed_countries][{i}]"),
            country.as_str(),
        );
    }
    if let Some(id) = promotion_code {
        form.push("discounts[0][promotion_code]", id);
    }
    form
}
