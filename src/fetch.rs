//! The `Fetch` adapter of [`Upstream`], with a timeout per call.
//!
//! The timeout races the call against a `Delay` and aborts the request through an
//! `AbortController` when the delay wins (workers-rs `examples/abort-signal`).
//! `AbortSignal.timeout` is avoided: it keeps the request context alive (workerd#4936).

use std::time::Duration;

use futures_util::future::{select, Either};
use worker::wasm_bindgen::JsValue;
use worker::{AbortController, Delay, Fetch, Headers, Request, RequestInit};

use stripe_edge_core::ports::{Clock, HttpRequest, HttpResponse, Method, TransportError, Upstream};

pub struct FetchUpstream;

pub struct WorkerClock;

impl Clock for WorkerClock {
    fn now_ms(&self) -> u64 {
        worker::Date::now().as_millis()
    }
}

fn build(request: &HttpRequest) -> worker::Result<Request> {
    let headers = Headers::new();
    for (name, value) in &request.headers {
        headers.set(name, value)?;
    }
    let mut init = RequestInit::new();
    init.with_method(match request.method {
        Method::Get => worker::Method::Get,
        Method::Post => worker::Method::Post,
    })
    .with_headers(headers);
    if let Some(body) = &request.body {
        init.with_body(Some(JsValue::from_str(body)));
    }
    Request::new_with_init(&request.url, &init)
}

impl Upstream for FetchUpstream {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let built = build(&request).map_err(|e| TransportError::Network(e.to_string()))?;
        let controller = AbortController::default();
        let signal = controller.signal();
        let fetch = Fetch::Request(built);
        // The body is read inside the race too: a server that sends headers and then
        // stalls is as late as one that never answers.
        let exchange = async {
            let mut response = fetch.send_with_signal(&signal).await?;
            let status = response.status_code();
            let request_id = response.headers().get("request-id").ok().flatten();
            let body = response.bytes().await?;
            Ok::<_, worker::Error>(HttpResponse {
                status,
                body,
                request_id,
            })
        };
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
