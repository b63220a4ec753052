//! Replies of the core, copied into `Response`s. Nothing here decides a status: every
//! reply comes from `stripe_edge_core::http`.

use stripe_edge_core::http::checkout::CheckoutReply;
use stripe_edge_core::http::webhook::Reply;
use worker::{Headers, Response, Result};

/// A JSON reply (webhook, health, ops), never cached.
pub fn json(reply: Reply) -> Result<Response> {
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

/// A browser-facing reply (`/checkout`, `/orders/{id}`): JSON (never cached) or an
/// empty 204, with its headers.
pub fn checkout(reply: &CheckoutReply) -> Result<Response> {
    let headers = Headers::new();
    headers.set("cache-control", "no-store")?;
    let response = match &reply.body {
        Some(body) => {
            headers.set("content-type", "application/json")?;
            Response::from_bytes(body.to_string().into_bytes())?
        }
        None => Response::empty()?,
    };
    for (name, value) in &reply.headers {
        headers.set(name, value)?;
    }
    Ok(response.with_status(reply.status).with_headers(headers))
}
