//! Every port of the core, in one place: what the core needs from the outside world,
//! as traits. The Worker crate (the repository root) implements each with a binding
//! (D1, `Fetch`, Queues, the console, `Math.random`, `Delay`); `crate::testing` has an
//! in-memory fake of each for native tests. Nothing here knows about JavaScript.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

pub mod http;
pub mod ledger;
pub mod ops_store;
pub mod orders;

pub use http::{Clock, HttpRequest, HttpResponse, Method, TransportError, Upstream};
pub use ledger::{Ledger, LedgerError};
pub use ops_store::OpsStore;
pub use orders::OrderStore;

/// How urgent a log line is: the console level `wrangler tail` filters on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
    /// Needs a person now (e.g. a purchase whose retries ran out); printed as an error.
    Alert,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Alert => "alert",
        }
    }
}

/// Where finished lines go: `console.log` / `console.error` at the edge, a vector in tests.
pub trait Sink {
    fn emit(&self, level: Level, line: &str);
}

/// Counts attempts per key and fixed window (D1 `checkout_code_attempts` at the edge).
#[allow(async_fn_in_trait)]
pub trait Throttle {
    /// Counts one attempt for `key` in the window starting at `window_start` (unix
    /// seconds) and returns the window's count, this attempt included. One atomic
    /// statement: concurrent attempts can never both read the same count.
    async fn hit(&self, key: &str, window_start: u64) -> Result<u32, LedgerError>;

    /// Deletes the counts of windows that started before `before_secs` (the scheduled
    /// run: only the current window is ever read). Returns how many went.
    async fn prune(&self, before_secs: u64) -> Result<u32, LedgerError>;
}

/// Waits; injected so native tests do not sleep.
#[allow(async_fn_in_trait)]
pub trait Pause {
    async fn pause(&self, ms: u64);
}

/// One purchase to fulfil. Ids only: the consumer fetches the session from Stripe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FulfilMessage {
    pub session_id: String,
    pub event_id: String,
}

/// Sends messages to the fulfilment queue. Object-safe, so `Deps` carries it as an
/// option without another type parameter.
pub trait Enqueue {
    fn enqueue<'a>(
        &'a self,
        message: &'a FulfilMessage,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;
}
