//! What every entry point works with: the settings of this isolate, the D1 ledger, the
//! queue producer when bound, the console, the clock and the timer, lent to the core
//! as its ports.

use std::rc::Rc;
use std::time::Duration;

use stripe_edge_core::fulfilment::Deps;
use stripe_edge_core::http::health;
use stripe_edge_core::ports::Level;
use stripe_edge_core::ports::{Enqueue, FulfilMessage, Pause, Sink};
use stripe_edge_core::settings::Config;
use wasm_bindgen::{JsCast, JsValue};
use worker::{Delay, Env, Result};

use crate::d1::{D1Ledger, D1Throttle};
use crate::fetch::{FetchUpstream, WorkerClock};

pub const QUEUE_BINDING: &str = "FULFILLMENT_QUEUE";

pub struct QueueProducer(pub worker::Queue);

impl Enqueue for QueueProducer {
    fn enqueue<'a>(
        &'a self,
        message: &'a FulfilMessage,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + 'a>> {
        Box::pin(async move { self.0.send(message).await.map_err(|e| e.to_string()) })
    }
}

/// The producer, when this deployment binds one (queue mode).
pub fn producer(env: &Env) -> Option<QueueProducer> {
    env.queue(QUEUE_BINDING).ok().map(QueueProducer)
}

/// The D1 binding of the ledger (`[[d1_databases]]` in wrangler.toml).
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
        // As `console_log!` & co., without their `format!` copy of the line.
        let line = JsValue::from_str(line);
        match level {
            Level::Info => web_sys::console::log_1(&line),
            Level::Warn => web_sys::console::warn_1(&line),
            Level::Error | Level::Alert => web_sys::console::error_1(&line),
        }
    }
}

/// `Date.now()`: one call, no `Date` object.
pub fn now_ms() -> u64 {
    worker::js_sys::Date::now() as u64
}

/// A timer that does not hold the request context alive (a `Delay`, not a
/// `setTimeout` promise of our own).
pub struct WorkerPause;

impl Pause for WorkerPause {
    async fn pause(&self, ms: u64) {
        Delay::from(Duration::from_millis(ms)).await;
    }
}

/// A random value per request (two `Math.random()` draws, 104 bits): unique, not
/// secret, which is all an Idempotency-Key of our own needs.
pub fn nonce() -> String {
    let draw = || (worker::js_sys::Math::random() * 9_007_199_254_740_992.0) as u64;
    format!("{:014x}{:014x}", draw(), draw())
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
                if let Some(line) = health::config_line(&config) {
                    line.emit(&Console);
                }
                Rc::new(config)
            })
            .clone()
    })
}

/// The bindings of the last `env` seen, as JavaScript values.
struct Bound {
    env: JsValue,
    db: JsValue,
    producer: Option<JsValue>,
}

thread_local! {
    /// workerd hands every request of an isolate the same `env` object, and finding its
    /// bindings by name, each checked by its constructor's name, was ~2 % of a
    /// delivery's V8 samples (`bench/profile.mjs`). Another `env` is looked up afresh.
    static BOUND: std::cell::RefCell<Option<Bound>> = const { std::cell::RefCell::new(None) };
}

/// The D1 binding (an error when it is not bound) and the queue producer (when bound).
fn bindings(env: &Env) -> Result<(JsValue, Option<JsValue>)> {
    let env: &JsValue = env.as_ref();
    let known = BOUND.with(|bound| {
        bound
            .borrow()
            .as_ref()
            .filter(|b| &b.env == env)
            .map(|b| (b.db.clone(), b.producer.clone()))
    });
    if let Some(known) = known {
        return Ok(known);
    }
    let typed: &Env = env.unchecked_ref();
    let db = JsValue::from(typed.d1(DB_BINDING)?);
    let producer = producer(typed).map(|p| JsValue::from(p.0));
    BOUND.with(|bound| {
        *bound.borrow_mut() = Some(Bound {
            env: env.clone(),
            db: db.clone(),
            producer: producer.clone(),
        })
    });
    Ok((db, producer))
}

/// Whether the D1 binding is there (looked up once per isolate, as [`Runtime::bind`] does).
pub fn has_db(env: &Env) -> bool {
    bindings(env).is_ok()
}

/// The core's dependencies at the edge.
pub type EdgeDeps<'a> = Deps<'a, D1Ledger, FetchUpstream, WorkerClock, Console>;

pub struct Runtime {
    pub config: Rc<Config>,
    pub ledger: D1Ledger,
    producer: Option<QueueProducer>,
}

impl Runtime {
    /// Binds D1 (an error when it is not bound) and the queue (when bound).
    pub fn bind(env: &Env, config: Rc<Config>) -> Result<Self> {
        let (db, producer) = bindings(env)?;
        Ok(Self {
            ledger: D1Ledger::new(db.unchecked_into()),
            producer: producer.map(|q| QueueProducer(q.unchecked_into())),
            config,
        })
    }

    /// The core's dependencies. `queue: false` runs inline even in queue mode: for the
    /// consumer itself, and for replays, which answer with the new state.
    pub fn deps(&self, queue: bool) -> EdgeDeps<'_> {
        Deps {
            config: &self.config,
            ledger: &self.ledger,
            upstream: &FetchUpstream,
            clock: &WorkerClock,
            log: &Console,
            queue: match (&self.producer, queue) {
                (Some(producer), true) => Some(producer as &dyn Enqueue),
                _ => None,
            },
        }
    }
}

/// The code-attempt counter; without a `DB` binding every count fails (only requests
/// carrying a promotion code need one).
pub fn throttle(env: &Env) -> D1Throttle {
    D1Throttle::new(env.d1(DB_BINDING).ok())
}
