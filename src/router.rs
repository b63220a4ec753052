//! Routing, and the glue of each route: reads what the core needs from the request
//! (method, path, headers, the capped body), calls the core, logs its line and copies
//! its reply into the `Response`.

use futures_util::StreamExt;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use stripe_edge_core::checkout::{self, CheckoutDeps, CheckoutRequest, Verb};
use stripe_edge_core::http::webhook::Reply;
use stripe_edge_core::http::{self, health};
use stripe_edge_core::ingress::{self, Decision, Delivery, Refusal};
use stripe_edge_core::orders::{self, OrderDecision, OrderDeps, OrderMethod, OrderRequest};
use stripe_edge_core::ports::ledger::LedgerError;
use stripe_edge_core::settings::Config;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::Response;
use worker::js_sys::JsString;
use worker::{ByteStream, Env, Method, Result};

use crate::fetch::{FetchUpstream, WorkerClock};
use crate::runtime::{load_config, nonce, now_ms, throttle, Console, Runtime, WorkerPause};
use crate::{ops, response, subtle};

pub const WEBHOOK_PATH: &str = "/webhooks/stripe";
pub const HEALTH_PATH: &str = "/healthz";

/// Routes a request. It arrives as the runtime's own `Request`, and no route wraps it
/// in workers-rs's `Request`: the wrapper reads `request.cf` eagerly, a large object
/// workerd builds on access, which `bench/workers.sh` profiled at ~3 % of a delivery's
/// CPU, and its conversion costs upload size. Each route reads what it needs from the
/// runtime's request: the method (as workers-rs's `Method`), headers, the body.
///
/// Every route but the webhook's runs as a boxed future of its own: inlined, all of
/// them made one 58 KB wasm function of the request's future, which V8 compiles (and
/// tiers up) whole for every delivery's sake.
pub async fn route(raw: web_sys::Request, env: Env) -> Result<Response> {
    let started = now_ms();
    let method = Method::from(raw.method());
    let url = raw.url();
    match (path_of(&url), method) {
        (WEBHOOK_PATH, Method::Post) => webhook(raw, env, started).await,
        (WEBHOOK_PATH, _) => answer(Decision::refused(Refusal::MethodNotAllowed), started, 0),
        (HEALTH_PATH, Method::Get | Method::Head) => apart(healthz(env)).await,
        (checkout::CHECKOUT_PATH, method) => apart(checkout(raw, method, env, started)).await,
        (path, method) if path.starts_with(orders::PREFIX) => {
            let id = path[orders::PREFIX.len()..].to_string();
            apart(order(raw, method, env, started, &id)).await
        }
        (path, method) if path.starts_with(stripe_edge_core::ops::PREFIX) => {
            let config = load_config(&env);
            apart(ops::handle(raw, method, &url, env, config)).await
        }
        _ => answer(Decision::refused(Refusal::NotFound), started, 0),
    }
}

/// A route's future behind a pointer, so its code stays out of the request's future.
fn apart<'a>(
    future: impl Future<Output = Result<Response>> + 'a,
) -> Pin<Box<dyn Future<Output = Result<Response>> + 'a>> {
    Box::pin(future)
}

/// The path of a serialised URL (`https://host/path?query`), split as a string: the
/// `url` crate's parser would add its IDNA tables to the upload (see BENCHMARKS.md).
pub fn path_of(url: &str) -> &str {
    // A byte scan, not `find("://")`: a substring search sets up a two-way searcher
    // for every request (`bench/profile.mjs`).
    let after_scheme = url
        .as_bytes()
        .windows(3)
        .position(|w| w == b"://")
        .map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

/// A header, as workers-rs's `Headers::get` reads it.
fn header(raw: &web_sys::Request, name: &str) -> Result<Option<String>> {
    Ok(raw.headers().get(name)?)
}

#[wasm_bindgen]
extern "C" {
    type HeaderMap;
    /// `Headers.get` with a name already in JavaScript.
    #[wasm_bindgen(method, catch, js_name = get)]
    fn get_named(this: &HeaderMap, name: &JsString) -> Result<Option<String>, JsValue>;
}

thread_local! {
    /// The two header names every delivery reads, made once per isolate rather than
    /// decoded from wasm memory on every request.
    static CONTENT_LENGTH: JsString = JsString::from("content-length");
    static STRIPE_SIGNATURE: JsString = JsString::from("stripe-signature");
}

/// A header by one of the names above.
fn header_named(
    headers: &web_sys::Headers,
    name: &'static std::thread::LocalKey<JsString>,
) -> Result<Option<String>> {
    let headers: &HeaderMap = headers.unchecked_ref();
    Ok(name.with(|name| headers.get_named(name))?)
}

/// What a delivery's `Content-Length` allows, before any byte of the body is read.
enum Admission {
    /// Refused before reading: no usable secret, or a declared length over the cap.
    Refused(Decision),
    /// A length within the cap: read at once.
    Known,
    /// No usable `Content-Length`: read the stream, capped.
    Streamed,
}

fn admit(config: &Config, content_length: Option<&str>) -> Admission {
    if config.webhook_secrets.is_empty() {
        return Admission::Refused(Decision::refused(Refusal::NotConfigured));
    }
    match content_length.and_then(|v| v.parse::<u64>().ok()) {
        Some(n) if n > config.max_body_bytes => Admission::Refused(too_large(config)),
        Some(_) => Admission::Known,
        None => Admission::Streamed,
    }
}

pub fn too_large(config: &Config) -> Decision {
    Decision::refused(Refusal::TooLarge {
        limit: config.max_body_bytes,
    })
}

async fn webhook(raw: web_sys::Request, env: Env, started: u64) -> Result<Response> {
    let config = load_config(&env);
    let headers = raw.headers();
    let content_length = header_named(&headers, &CONTENT_LENGTH)?;
    let known = match admit(&config, content_length.as_deref()) {
        Admission::Refused(decision) => return answer(decision, started, 0),
        Admission::Known => true,
        Admission::Streamed => false,
    };
    let signature = header_named(&headers, &STRIPE_SIGNATURE)?;
    let body = if known {
        // One copy into wasm when the length is known (Stripe always sends it), instead
        // of a crossing per stream chunk; the runtime holds the body to that length.
        let buffer = crate::settle::settled(&raw.array_buffer()?).await?;
        let bytes = worker::js_sys::Uint8Array::new(&buffer);
        Some(subtle::Body::read(signature.as_deref(), &bytes))
    } else {
        read_capped(&raw, config.max_body_bytes)
            .await?
            .map(|bytes| subtle::Body::plain(signature.as_deref(), bytes))
    };
    response::json(deliver(&env, config, signature.as_deref(), body, started).await)
}

/// A delivery whose body is read (`None`: over the cap): verifies, records and decides
/// (the core's `ingress::handle`), logs the decision line and returns the reply.
async fn deliver(
    env: &Env,
    config: Rc<Config>,
    signature: Option<&str>,
    body: Option<subtle::Body>,
    started: u64,
) -> Reply {
    let Some(body) = body.filter(|b| b.bytes().len() as u64 <= config.max_body_bytes) else {
        return logged(too_large(&config), started, 0);
    };
    let tags = subtle::tags(&config.webhook_secrets, &body).await;
    let delivery = Delivery {
        signature,
        body: body.bytes(),
        tags: tags.as_deref(),
    };
    decide(env, config, Input::Delivery(delivery), started).await
}

/// What [`decide`] takes: a delivery to verify, or the body of one the core verified
/// already (`ingress::verify`, on the entry's own path: `src/fast_webhook.rs`).
pub enum Input<'a> {
    Delivery(Delivery<'a>),
    Verified(&'a [u8]),
}

/// Verifies (unless done), records and decides (the core's `ingress::handle` or
/// `ingress::ingest`), logs the decision line with its D1 round trips, returns the reply.
pub async fn decide(env: &Env, config: Rc<Config>, input: Input<'_>, started: u64) -> Reply {
    let (decision, d1_calls) = match Runtime::bind(env, config) {
        Ok(runtime) => {
            let deps = runtime.deps(true);
            let decision = match input {
                Input::Delivery(delivery) => ingress::handle(&deps, delivery, started).await,
                Input::Verified(body) => {
                    ingress::ingest(&deps, body, started, ingress::Seen::Continue).await
                }
            };
            (decision, runtime.ledger.calls())
        }
        Err(e) => {
            let refusal = Refusal::Unavailable(LedgerError {
                operation: "bind",
                detail: e.to_string(),
            });
            (Decision::refused(refusal), 0)
        }
    };
    logged(decision, started, d1_calls)
}

/// Reads the body, giving up as soon as it exceeds `limit` (a chunked body has no
/// Content-Length to check up front). `None` means too large. The chunks come through
/// workers-rs's `ByteStream`, as its `Request::stream` reads them.
async fn read_capped(raw: &web_sys::Request, limit: u64) -> Result<Option<Vec<u8>>> {
    let Some(body) = raw.body() else {
        return Ok(Some(Vec::new())); // no body at all
    };
    let mut stream = ByteStream::from(body);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if (body.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// `/checkout`: reads the method, `Origin`, `CF-Connecting-IP` and the (capped) body,
/// runs the core's handler with D1 counting code attempts, then logs and answers.
async fn checkout(
    raw: web_sys::Request,
    method: Method,
    env: Env,
    started: u64,
) -> Result<Response> {
    let config = load_config(&env);
    let verb = match method {
        Method::Post => Verb::Post,
        Method::Options => Verb::Options,
        _ => Verb::Other,
    };
    let origin = header(&raw, "origin")?;
    let client_ip = header(&raw, "cf-connecting-ip")?;
    let idempotency_key = header(&raw, "idempotency-key")?;
    let nonce = nonce();
    let body = match verb {
        Verb::Post => read_capped(&raw, checkout::CHECKOUT_MAX_BODY_BYTES).await?,
        _ => Some(Vec::new()),
    };
    let request = CheckoutRequest {
        verb,
        origin: origin.as_deref(),
        client_ip: client_ip.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
        nonce: &nonce,
        body: body.as_deref(),
    };
    let counter = throttle(&env);
    let deps = CheckoutDeps {
        config: &config,
        upstream: &FetchUpstream,
        clock: &WorkerClock,
        throttle: &counter,
        pause: &WorkerPause,
    };
    let decision = checkout::handle(&deps, &request, started).await;
    http::checkout::decision_line(&decision, now_ms().saturating_sub(started))
        .num("d1_calls", u64::from(counter.calls()))
        .emit(&Console);
    response::checkout(&http::checkout::for_decision(&decision))
}

/// `/orders/{id}`: reads the method, `Origin` and `CF-Connecting-IP`, runs the core's
/// lookup over D1 (the ledger and the lookup counter) and the engine, then logs and
/// answers.
async fn order(
    raw: web_sys::Request,
    method: Method,
    env: Env,
    started: u64,
    id: &str,
) -> Result<Response> {
    let config = load_config(&env);
    let method = match method {
        Method::Get => OrderMethod::Get,
        Method::Options => OrderMethod::Options,
        _ => OrderMethod::Other,
    };
    let origin = header(&raw, "origin")?;
    let client_ip = header(&raw, "cf-connecting-ip")?;
    let request = OrderRequest {
        method,
        origin: origin.as_deref(),
        client_ip: client_ip.as_deref(),
        id,
    };
    let (decision, d1_calls) = match Runtime::bind(&env, config.clone()) {
        Ok(runtime) => {
            let engine = runtime.deps(true);
            let counter = throttle(&env);
            let deps = OrderDeps {
                engine: &engine,
                throttle: &counter,
            };
            let decision = orders::handle(&deps, &request, started).await;
            (decision, runtime.ledger.calls() + counter.calls())
        }
        Err(e) => {
            let error = LedgerError {
                operation: "bind",
                detail: e.to_string(),
            };
            let origins = &config.checkout.allowed_origins;
            (
                OrderDecision::unavailable(request.origin, origins, error),
                0,
            )
        }
    };
    http::orders::decision_line(&decision, now_ms().saturating_sub(started))
        .num("d1_calls", u64::from(d1_calls))
        .emit(&Console);
    response::checkout(&http::orders::for_decision(&decision))
}

async fn healthz(env: Env) -> Result<Response> {
    let config = load_config(&env);
    let database_ok = match Runtime::bind(&env, config.clone()) {
        Ok(runtime) => runtime.ledger.ping().await.is_ok(),
        Err(_) => false,
    };
    response::json(health::healthz(&config, database_ok))
}

/// Logs the decision with the D1 round trips it took, and answers.
fn answer(decision: Decision, started: u64, d1_calls: u32) -> Result<Response> {
    response::json(logged(decision, started, d1_calls))
}

/// Logs the decision with the D1 round trips it took; its reply.
pub fn logged(decision: Decision, started: u64, d1_calls: u32) -> Reply {
    http::webhook::decision_line(&decision, now_ms().saturating_sub(started))
        .num("d1_calls", u64::from(d1_calls))
        .emit(&Console);
    http::webhook::for_decision(&decision)
}

/// The scheduled run (`stripe_edge_core::maintenance::scheduled`), or an error line
/// when D1 is not bound.
pub async fn scheduled(env: Env) {
    match Runtime::bind(&env, load_config(&env)) {
        Ok(runtime) => {
            stripe_edge_core::maintenance::scheduled(&runtime.deps(true), &throttle(&env)).await
        }
        Err(e) => stripe_edge_core::log::Line::error("scheduled run failed")
            .text("detail", &e.to_string())
            .emit(&Console),
    }
}

/// Logs a panic-free but failed request (a bug in the glue) without its detail leaking
/// to the client.
pub fn internal_error(e: &worker::Error) -> Result<Response> {
    stripe_edge_core::log::Line::error("internal error")
        .text("detail", &e.to_string())
        .emit(&Console);
    response::json(http::webhook::Reply::internal_error())
}

#[cfg(test)]
mod tests {
    use super::path_of;

    #[test]
    fn the_path_is_cut_from_a_serialised_url() {
        assert_eq!(
            path_of("https://h.example/webhooks/stripe"),
            "/webhooks/stripe"
        );
        assert_eq!(
            path_of("http://127.0.0.1:8787/webhooks/stripe?x=1#f"),
            "/webhooks/stripe"
        );
        assert_eq!(path_of("https://h.example"), "/");
        assert_eq!(path_of("https://h.example/?q"), "/");
        assert_eq!(
            path_of("https://h.example/admin/purchases/cs_1"),
            "/admin/purchases/cs_1"
        );
    }
}
