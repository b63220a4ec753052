//! Edge glue: the only module that touches the request, the environment and bindings.
//! It reads what the pure core needs, calls it, and writes the answer and the log.

use std::rc::Rc;

use futures_util::StreamExt;
use worker::{
    console_error, console_log, console_warn, Env, Headers, Method, Request, Response, Result,
};

pub mod admin;
pub mod fetch;
pub mod queue;
pub mod subtle;

use crate::config::Config;
use crate::engine::Deps;
use crate::ledger::d1::D1Ledger;
use crate::ledger::LedgerError;
use crate::log::{Level, Line, Sink};
use crate::reply::{self, Reply};
use crate::webhook::{self, Decision, Delivery, Refusal};

pub const WEBHOOK_PATH: &str = "/webhooks/stripe";
pub const HEALTH_PATH: &str = "/healthz";
pub const DB_BINDING: &str = "DB";

thread_local! {
    /// The settings of this isolate; their problems are logged once, when first read.
    /// Shared, not cloned: a request takes a reference count, not a copy of the catalogue.
    static CONFIG: std::cell::OnceCell<Rc<Config>> = const { std::cell::OnceCell::new() };
}

/// Writes log lines to the console, at the console level `wrangler tail` filters on.
pub struct Console;

impl Sink for Console {
    fn emit(&self, level: Level, line: &str) {
        match level {
            Level::Info => console_log!("{line}"),
            Level::Warn => console_warn!("{line}"),
            Level::Error | Level::Alert => console_error!("{line}"),
        }
    }
}

pub fn now_ms() -> u64 {
    worker::Date::now().as_millis()
}

/// The core's dependencies at the edge.
pub type EdgeDeps<'a> = Deps<'a, D1Ledger, fetch::FetchUpstream, fetch::WorkerClock, Console>;

/// What every entry point works with: the settings, the D1 ledger and, when bound, the
/// fulfilment queue's producer.
pub struct Runtime {
    pub config: Rc<Config>,
    pub ledger: D1Ledger,
    producer: Option<queue::QueueProducer>,
}

impl Runtime {
    /// Binds D1 (an error when it is not bound) and the queue (when bound).
    pub fn bind(env: &Env, config: Rc<Config>) -> Result<Self> {
        Ok(Self {
            ledger: D1Ledger::new(env.d1(DB_BINDING)?),
            producer: queue::producer(env),
            config,
        })
    }

    /// The core's dependencies. `queue: false` runs inline even in queue mode: for the
    /// consumer itself, and for replays, which answer with the new state.
    pub fn deps(&self, queue: bool) -> EdgeDeps<'_> {
        Deps {
            config: &self.config,
            ledger: &self.ledger,
            upstream: &fetch::FetchUpstream,
            clock: &fetch::WorkerClock,
            log: &Console,
            queue: match (&self.producer, queue) {
                (Some(producer), true) => Some(producer as &dyn crate::queue::Enqueue),
                _ => None,
            },
        }
    }
}

/// Reads settings from `[vars]`, `.dev.vars` and secrets alike: all are strings on `env`.
///
/// Read once per isolate: settings and secrets only change with a new deployment (or,
/// under `wrangler dev`, a reload), which starts a new isolate. Reading ~25 names across
/// the JavaScript boundary and re-parsing `PRODUCTS` on every request was measurable
/// CPU in `bench/workers.sh`.
pub fn load_config(env: &Env) -> Rc<Config> {
    CONFIG.with(|cached| {
        cached
            .get_or_init(|| {
                let config = Config::load(|name| env.var(name).ok().map(|v| v.to_string()));
                if let Some(line) = reply::config_line(&config) {
                    line.emit(&Console);
                }
                Rc::new(config)
            })
            .clone()
    })
}

/// Routes a request. It arrives as the runtime's own `Request`: workers-rs's wrapper
/// reads `request.cf` eagerly, a large object workerd builds on access, which
/// `bench/workers.sh` profiled at ~3 % of a delivery's CPU. Webhook deliveries never
/// need it; the other routes get the wrapper.
pub async fn route(raw: web_sys::Request, env: Env) -> Result<Response> {
    let started = now_ms();
    let method = Method::from(raw.method());
    let url = raw.url();
    match (path_of(&url), method) {
        (WEBHOOK_PATH, Method::Post) => webhook(raw, env, started).await,
        (WEBHOOK_PATH, _) => answer(Decision::refused(Refusal::MethodNotAllowed), started),
        (HEALTH_PATH, Method::Get | Method::Head) => healthz(env).await,
        (crate::checkout::CHECKOUT_PATH, _) => checkout(Request::from(raw), env, started).await,
        (path, _) if path.starts_with(crate::admin::PREFIX) => {
            let config = load_config(&env);
            admin::handle(Request::from(raw), env, config).await
        }
        _ => answer(Decision::refused(Refusal::NotFound), started),
    }
}

/// The path of a serialised URL (`https://host/path?query`), split as a string: the
/// `url` crate's parser would add its IDNA tables to the upload (see BENCHMARKS.md).
fn path_of(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let path = rest.find('/').map_or("/", |i| &rest[i..]);
    path.split(['?', '#']).next().unwrap_or("/")
}

fn header(raw: &web_sys::Request, name: &str) -> Result<Option<String>> {
    Ok(raw.headers().get(name)?)
}

async fn webhook(raw: web_sys::Request, env: Env, started: u64) -> Result<Response> {
    let config = load_config(&env);
    if config.webhook_secrets.is_empty() {
        return answer(Decision::refused(Refusal::NotConfigured), started);
    }
    let too_large = Decision::refused(Refusal::TooLarge {
        limit: config.max_body_bytes,
    });
    let declared = header(&raw, "content-length")?.and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > config.max_body_bytes) {
        return answer(too_large, started);
    }
    let signature = header(&raw, "stripe-signature")?;
    let body = match declared {
        // One copy into wasm when the length is known (Stripe always sends it), instead
        // of a crossing per stream chunk; the runtime holds the body to that length.
        Some(_) => {
            let buffer = wasm_bindgen_futures::JsFuture::from(raw.array_buffer()?).await?;
            let body = worker::js_sys::Uint8Array::new(&buffer).to_vec();
            Some(body).filter(|b| b.len() as u64 <= config.max_body_bytes)
        }
        None => read_capped(&mut Request::from(raw), config.max_body_bytes).await?,
    };
    let Some(body) = body else {
        return answer(too_large, started);
    };
    let tags = subtle::tags(&config.webhook_secrets, signature.as_deref(), &body).await;
    let delivery = Delivery {
        signature: signature.as_deref(),
        body: &body,
        tags: tags.as_deref(),
    };
    let decision = match Runtime::bind(&env, config) {
        Ok(runtime) => webhook::handle(&runtime.deps(true), delivery, started).await,
        Err(e) => Decision::refused(Refusal::Unavailable(LedgerError {
            operation: "bind",
            detail: e.to_string(),
        })),
    };
    answer(decision, started)
}

/// Reads the body, giving up as soon as it exceeds `limit` (a chunked body has no
/// Content-Length to check up front). `None` means too large.
async fn read_capped(req: &mut Request, limit: u64) -> Result<Option<Vec<u8>>> {
    let Ok(mut stream) = req.stream() else {
        return Ok(Some(Vec::new())); // no body at all
    };
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
/// runs the pure handler with D1 counting code attempts, then logs and answers.
async fn checkout(mut req: Request, env: Env, started: u64) -> Result<Response> {
    use crate::checkout::{self, edge as glue, reply, Verb};
    let config = load_config(&env);
    let verb = match req.method() {
        Method::Post => Verb::Post,
        Method::Options => Verb::Options,
        _ => Verb::Other,
    };
    let origin = req.headers().get("origin")?;
    let client_ip = req.headers().get("cf-connecting-ip")?;
    let idempotency_key = req.headers().get("idempotency-key")?;
    let nonce = glue::nonce();
    let body = match verb {
        Verb::Post => read_capped(&mut req, checkout::MAX_BODY_BYTES).await?,
        _ => Some(Vec::new()),
    };
    let request = checkout::Request {
        verb,
        origin: origin.as_deref(),
        client_ip: client_ip.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
        nonce: &nonce,
        body: body.as_deref(),
    };
    let deps = checkout::Deps {
        config: &config,
        upstream: &fetch::FetchUpstream,
        clock: &fetch::WorkerClock,
        throttle: &glue::D1Throttle(env.d1(DB_BINDING).ok()),
        pause: &glue::WorkerPause,
    };
    let decision = checkout::handle(&deps, &request, started).await;
    reply::decision_line(&decision, now_ms().saturating_sub(started)).emit(&Console);
    glue::respond(&reply::for_decision(&decision))
}

async fn healthz(env: Env) -> Result<Response> {
    let config = load_config(&env);
    let database_ok = match env.d1(DB_BINDING) {
        Ok(db) => D1Ledger::new(db).ping().await.is_ok(),
        Err(_) => false,
    };
    respond(reply::healthz(&config, database_ok))
}

fn answer(decision: Decision, started: u64) -> Result<Response> {
    reply::decision_line(&decision, now_ms().saturating_sub(started)).emit(&Console);
    respond(reply::for_decision(&decision))
}

/// The scheduled run: one summary line, or an error line when D1 is unavailable.
pub async fn scheduled(env: Env) {
    let started = now_ms();
    let runtime = match Runtime::bind(&env, load_config(&env)) {
        Ok(runtime) => runtime,
        Err(e) => {
            Line::error("scheduled run failed")
                .text("detail", &e.to_string())
                .emit(&Console);
            return;
        }
    };
    let result = match crate::maintenance::run(&runtime.deps(true)).await {
        // Checkout's code-attempt counts are read only in their own window: a day is
        // longer than any window CHECKOUT_CODE_WINDOW_SECS allows.
        Ok(summary) => crate::checkout::edge::D1Throttle(env.d1(DB_BINDING).ok())
            .prune(now_ms() / 1_000 - 86_400)
            .await
            .map(|pruned| (summary, pruned)),
        Err(e) => Err(e),
    };
    match result {
        Ok((summary, pruned)) => {
            crate::maintenance::summary_line(&summary, now_ms().saturating_sub(started))
                .num("code_windows_pruned", u64::from(pruned))
                .emit(&Console)
        }
        Err(e) => Line::error("scheduled run failed")
            .text("detail", &e.detail)
            .emit(&Console),
    }
}

/// A JSON answer that is never cached.
pub fn respond_json(status: u16, body: &serde_json::Value) -> Result<Response> {
    respond(Reply {
        status,
        body: body.clone(),
        allow: None,
    })
}

fn respond(reply: Reply) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    if let Some(allow) = reply.allow {
        headers.set("allow", allow)?;
    }
    Ok(Response::from_bytes(reply.body.to_string().into_bytes())?
        .with_status(reply.status)
        .with_headers(headers))
}

/// Logs a panic-free but failed request (a bug in the glue) without its detail leaking
/// to the client.
pub fn internal_error(e: &worker::Error) -> Result<Response> {
    Line::error("internal error")
        .text("detail", &e.to_string())
        .emit(&Console);
    respond(Reply {
        status: 500,
        body: serde_json::json!({"error": "internal error"}),
        allow: None,
    })
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
