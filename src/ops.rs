//! The ops API's glue (`/admin/`): reads the method, path, query, `Authorization` and
//! `Idempotency-Key`, runs `stripe_edge_core::ops::handle` over D1, logs its lines and
//! answers.

use std::rc::Rc;

use stripe_edge_core::http;
use stripe_edge_core::ops::{self, OpsCall};
use stripe_edge_core::settings::Config;
use web_sys::Response;
use worker::{Env, Method, Result};

use crate::response;
use crate::runtime::{now_ms, Console, Runtime};

/// `url` is the request's serialised URL, split as strings: parsing it with the `url`
/// crate links its IDNA tables, 226 KB of wasm for a query string (measured; see
/// BENCHMARKS.md). `method` is workers-rs's reading of it (an unknown method is GET).
pub async fn handle(
    raw: web_sys::Request,
    method: Method,
    url: &str,
    env: Env,
    config: Rc<Config>,
) -> Result<Response> {
    let started = now_ms();
    let headers = raw.headers();
    let authorization = headers.get("authorization")?;
    let idempotency_key = headers.get("idempotency-key")?;
    let path = path_from_url(url);
    let call = OpsCall {
        method: method.as_ref(),
        path: &path,
        query: query_of(url),
        authorization: authorization.as_deref(),
        idempotency_key: idempotency_key.as_deref(),
    };
    let runtime = Runtime::bind(&env, config)?;
    // A replay answers with the state it leaves, so it runs inline even in queue mode.
    let (answer, line) = ops::handle(&runtime.deps(false), call, started).await;
    let (reply, lines) = http::ops::respond(answer, line, now_ms().saturating_sub(started));
    for line in lines {
        line.emit(&Console);
    }
    response::json(reply)
}

/// The path of a serialised URL, exactly as workers-rs's `Request::path` reads it (its
/// private `path_from_url`, copied): special-scheme serialisation never emits an empty
/// path, so the first `/` after the host begins it, and `?` and `#` inside it are
/// always percent-encoded.
fn path_from_url(url: &str) -> String {
    let host_start = match url.find("://") {
        Some(i) => i + 3,
        None => {
            return if url.starts_with('/') {
                url.to_string()
            } else {
                "/".to_string() + url
            }
        }
    };
    match url[host_start..].find('/') {
        Some(i) => {
            let path = &url[host_start + i..];
            path[..path.find(['?', '#']).unwrap_or(path.len())].to_string()
        }
        None => "/".to_string(),
    }
}

/// The query of a raw request URL, without the fragment.
fn query_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    Some(query.split_once('#').map_or(query, |(q, _)| q))
}

#[cfg(test)]
mod tests {
    use super::{path_from_url, query_of};

    #[test]
    fn the_path_is_read_as_workers_rs_reads_it() {
        assert_eq!(
            path_from_url("https://h/admin/purchases?state=failed#x"),
            "/admin/purchases"
        );
        assert_eq!(path_from_url("https://h"), "/");
        assert_eq!(
            path_from_url("https://h/admin/events/evt_1"),
            "/admin/events/evt_1"
        );
        assert_eq!(path_from_url("/admin/x"), "/admin/x");
        assert_eq!(path_from_url("admin/x"), "/admin/x");
    }

    #[test]
    fn the_query_is_what_lies_between_the_question_mark_and_the_fragment() {
        assert_eq!(
            query_of("https://h/admin/purchases?state=failed&limit=2"),
            Some("state=failed&limit=2")
        );
        assert_eq!(
            query_of("https://h/admin/purchases?limit=2#x"),
            Some("limit=2")
        );
        assert_eq!(query_of("https://h/admin/purchases"), None);
    }
}
