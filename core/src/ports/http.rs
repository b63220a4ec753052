//! The HTTP port: one call to a service (license server, shipping system,
//! the Stripe API), and the clock. The Worker implements them with `Fetch` and
//! `Date.now()`; native tests with `testing::FakeUpstream` and `testing::FakeClock`.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
}

#[derive(Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: Method,
    pub url: String,
    /// Header values may hold credentials: this type's `Debug` prints names only.
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
    pub timeout_ms: u64,
}

impl fmt::Debug for HttpRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.headers.iter().map(|(k, _)| *k).collect();
        f.debug_struct("HttpRequest")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &names)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

impl HttpRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// The upstream's request id (Stripe's `Request-Id`), for logs and support tickets.
    pub request_id: Option<String>,
}

/// The call did not produce an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    Timeout,
    Network(String),
}

#[allow(async_fn_in_trait)]
pub trait Upstream {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// Milliseconds since the epoch; injected so tests control time.
pub trait Clock {
    fn now_ms(&self) -> u64;
}
