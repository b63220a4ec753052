//! The `Fetch` adapter of [`Upstream`], with a timeout per call.
//!
//! The timeout races the call against a `Delay` and aborts the request through an
//! `AbortController` when the delay wins (workers-rs `examples/abort-signal`).
//! `AbortSignal.timeout` is avoided: it keeps the request context alive (workerd#4936).
//!
//! The call is made with `web_sys` directly, as workers-rs's `Fetch` makes it (the same
//! `RequestInit`, the same `fetch`, the body read by the same `ByteStream`), but
//! without its `Request`/`RequestInit`/`Response` wrappers: their conversions (the `cf`
//! properties' serialisation among them) cost KiBs of the upload and nothing here.

use std::time::Duration;

use futures_util::future::{select, Either};
use futures_util::TryStreamExt;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use worker::{ByteStream, Delay};

use stripe_edge_core::ports::{Clock, HttpRequest, HttpResponse, Method, TransportError, Upstream};

pub struct FetchUpstream;

pub struct WorkerClock;

impl Clock for WorkerClock {
    fn now_ms(&self) -> u64 {
        worker::js_sys::Date::now() as u64
    }
}

/// What `new Request(url, init)` then `fetch(request, { signal })` (workers-rs) sent,
/// as one `RequestInit`: method, headers, body, `redirect: "follow"` and the signal.
fn init(
    request: &HttpRequest,
    signal: &web_sys::AbortSignal,
) -> Result<web_sys::RequestInit, JsValue> {
    let headers = web_sys::Headers::new()?;
    for (name, value) in &request.headers {
        headers.set(name, value)?;
    }
    let init = web_sys::RequestInit::new();
    init.set_method(match request.method {
        Method::Get => "GET",
        Method::Post => "POST",
    });
    init.set_headers(&headers);
    init.set_redirect(web_sys::RequestRedirect::Follow);
    if let Some(body) = &request.body {
        init.set_body(&JsValue::from_str(body));
    }
    init.set_signal(Some(signal));
    Ok(init)
}

/// One exchange: the answer's status, `Request-Id` and whole body.
async fn exchange(url: &str, init: &web_sys::RequestInit) -> Result<HttpResponse, worker::Error> {
    let global: web_sys::WorkerGlobalScope = worker::js_sys::global().unchecked_into();
    let response: web_sys::Response = JsFuture::from(global.fetch_with_str_and_init(url, init))
        .await?
        .dyn_into()?;
    let status = response.status();
    let request_id = response.headers().get("request-id").ok().flatten();
    // As workers-rs's `Response::bytes`: no body is an empty one, a body is read to its end.
    let body = match response.body() {
        None => Vec::new(),
        Some(stream) => {
            ByteStream::from(stream)
                .try_fold(Vec::new(), |mut bytes, mut chunk| async move {
                    bytes.append(&mut chunk);
                    Ok(bytes)
                })
                .await?
        }
    };
    Ok(HttpResponse {
        status,
        body,
        request_id,
    })
}

impl Upstream for FetchUpstream {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let controller = web_sys::AbortController::new()
            .map_err(|e| TransportError::Network(worker::Error::from(e).to_string()))?;
        let init = init(&request, &controller.signal())
            .map_err(|e| TransportError::Network(worker::Error::from(e).to_string()))?;
        // The body is read inside the race too: a server that sends headers and then
        // stalls is as late as one that never answers.
        let exchange = exchange(&request.url, &init);
        let timeout = Delay::from(Duration::from_millis(request.timeout_ms));
        futures_util::pin_mut!(exchange);
        match select(exchange, timeout).await {
            Either::Left((Ok(response), _)) => Ok(response),
            Either::Left((Err(e), _)) => Err(TransportError::Network(e.to_string())),
            Either::Right(_) => {
                controller.abort();
                Err(TransportError::Timeout)
            }
        }
    }
}
