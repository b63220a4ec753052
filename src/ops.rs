//! The ops API's glue (`/admin/`): reads the method, path, query and `Authorization`,
//! runs `stripe_edge_core::ops::handle` over D1, logs its lines and answers.

use std::rc::Rc;

use stripe_edge_core::http;
use stripe_edge_core::ops::{self, OpsCall};
use stripe_edge_core::settings::Config;
use worker::{Env, Request, Response, Result};

use crate::response;
use crate::runtime::{now_ms, Console, Runtime};

pub async fn handle(req: Request, env: Env, config: Rc<Config>) -> Result<Response> {
    let started = now_ms();
    let authorization = req.headers().get("authorization")?;
    // The raw URL, not `req.url()`: parsing it with the `url` crate links its IDNA
    // tables, 226 KB of wasm for a query string (measured; see BENCHMARKS.md).
    let raw = req.inner().url();
    let path = req.path();
    let method = req.method();
    let call = OpsCall {
        method: method.as_ref(),
        path: &path,
        query: query_of(&raw),
        authorization: authorization.as_deref(),
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

/// The query of a raw request URL, without the fragment.
fn query_of(url: &str) -> Option<&str> {
    let query = url.split_once('?')?.1;
    Some(query.split_once('#').map_or(query, |(q, _)| q))
}

#[cfg(test)]
mod tests {
    use super::query_of;

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
