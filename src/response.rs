//! Replies of the core, copied into the runtime's `Response`s. Nothing here decides a
//! status: every reply comes from `stripe_edge_core::http`.

use stripe_edge_core::http::checkout::CheckoutReply;
use stripe_edge_core::http::webhook::Reply;
use web_sys::{Headers, Response, ResponseInit};
use worker::Result;

thread_local! {
    /// The headers of a JSON reply without `Allow` (every webhook answer but a 405), and
    /// the init of such a reply with status 200, made once per isolate: a `Response`
    /// copies the status and headers it is given, so one object serves every reply.
    static JSON_HEADERS: Option<Headers> = json_headers().ok();
    static JSON_200: Option<ResponseInit> = JSON_HEADERS.with(|headers| {
        let init = ResponseInit::new();
        init.set_status(200);
        init.set_headers(headers.as_ref()?);
        Some(init)
    });
}

fn json_headers() -> Result<Headers> {
    let headers = Headers::new()?;
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(headers)
}

/// A JSON reply (webhook, health, ops), never cached.
pub fn json(reply: Reply) -> Result<Response> {
    let body = reply.body;
    let Some(allow) = reply.allow else {
        if reply.status == 200 {
            if let Some(init) = JSON_200.with(Clone::clone) {
                return Ok(Response::new_with_opt_str_and_init(Some(&body), &init)?);
            }
        }
        let headers = JSON_HEADERS
            .with(Clone::clone)
            .map_or_else(json_headers, Ok)?;
        return respond(reply.status, Some(&body), &headers);
    };
    let headers = json_headers()?;
    headers.set("allow", allow)?;
    respond(reply.status, Some(&body), &headers)
}

/// A browser-facing reply (`/checkout`, `/orders/{id}`): JSON (never cached) or an
/// empty 204, with its headers.
pub fn checkout(reply: &CheckoutReply) -> Result<Response> {
    let headers = Headers::new()?;
    headers.set("cache-control", "no-store")?;
    let body = reply.body.as_ref().map(|body| body.to_string());
    if body.is_some() {
        headers.set("content-type", "application/json")?;
    }
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    respond(reply.status, body.as_deref(), &headers)
}

/// `new Response(body, { status, headers })`: the body as a string (the runtime encodes
/// it as UTF-8, as the bytes of `serde_json`'s text), built straight from web-sys rather
/// than through workers-rs's `Response` and its conversion.
fn respond(status: u16, body: Option<&str>, headers: &Headers) -> Result<Response> {
    let init = ResponseInit::new();
    init.set_status(status);
    init.set_headers(headers);
    Ok(Response::new_with_opt_str_and_init(body, &init)?)
}
