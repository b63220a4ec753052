//! Who may call `/checkout` from a browser: the origins in `ALLOWED_ORIGINS`, and no
//! other. A request without `Origin` is not a browser's cross-origin call (curl, a
//! server-side caller) and is allowed; CORS only ever restrains browsers.

/// How long a browser may cache an allowed preflight. Short, so removing an origin
/// from `ALLOWED_ORIGINS` takes effect within minutes.
pub const MAX_AGE_SECS: u32 = 600;

/// The caller, as far as CORS is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No `Origin` header.
    NoOrigin,
    /// An origin listed in `ALLOWED_ORIGINS`, as the browser sent it.
    Allowed(String),
    Foreign,
}

/// Compares origins as browsers serialise them (scheme and host are lowercase ASCII);
/// the configured list is lowercased when it is read.
pub fn check(allowed: &[String], origin: Option<&str>) -> Caller {
    match origin {
        None => Caller::NoOrigin,
        Some(origin) if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) => {
            Caller::Allowed(origin.to_string())
        }
        Some(_) => Caller::Foreign,
    }
}

/// The headers of a 204 answer to an allowed preflight of `/checkout`.
pub fn preflight_headers(origin: &str) -> Vec<(&'static str, String)> {
    preflight_headers_for(origin, "POST", Some("content-type, idempotency-key"))
}

/// The headers of a 204 answer to an allowed preflight of a route taking `methods`
/// and, when the route reads any, the request `headers` a page may send.
pub fn preflight_headers_for(
    origin: &str,
    methods: &'static str,
    headers: Option<&'static str>,
) -> Vec<(&'static str, String)> {
    let mut answer = vec![
        ("access-control-allow-origin", origin.to_string()),
        ("access-control-allow-methods", methods.into()),
    ];
    if let Some(headers) = headers {
        answer.push(("access-control-allow-headers", headers.into()));
    }
    answer.push(("access-control-max-age", MAX_AGE_SECS.to_string()));
    answer
}

/// What a browser-facing answer is, as far as its headers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    Preflight,
    MethodNotAllowed,
    /// Throttled: `Retry-After` in seconds.
    RetryAfter(u64),
    Other,
}

/// The headers every browser-facing route (`/checkout`, `/orders/`) answers with:
/// `Vary: Origin`; for an allowed origin its CORS headers (`preflight` builds a
/// preflight's) and `Retry-After` exposed when throttled; `Allow` (`allow`) on a 405
/// and on a preflight without `Origin`; `Retry-After`.
pub fn answer_headers(
    caller: &Caller,
    answered: Answered,
    allow: &'static str,
    preflight: impl FnOnce(&str) -> Vec<(&'static str, String)>,
) -> Vec<(&'static str, String)> {
    // The answer depends on Origin: caches must key on it.
    let mut headers = vec![("vary", "Origin".to_string())];
    match (caller, answered) {
        (Caller::Allowed(origin), Answered::Preflight) => headers.extend(preflight(origin)),
        (Caller::Allowed(origin), other) => {
            headers.push(("access-control-allow-origin", origin.clone()));
            if matches!(other, Answered::RetryAfter(_)) {
                headers.push(("access-control-expose-headers", "Retry-After".into()));
            }
        }
        _ => {}
    }
    match answered {
        Answered::MethodNotAllowed => headers.push(("allow", allow.into())),
        Answered::Preflight if *caller == Caller::NoOrigin => headers.push(("allow", allow.into())),
        Answered::RetryAfter(secs) => headers.push(("retry-after", secs.to_string())),
        _ => {}
    }
    headers
}

/// Reads `ALLOWED_ORIGINS`: comma-separated `scheme://host[:port]` origins. Returns the
/// usable ones and, when some entry is not an origin, why (without quoting it).
pub fn parse_origins(raw: &str) -> (Vec<String>, Option<&'static str>) {
    let mut origins = Vec::new();
    let mut problem = None;
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let entry = entry
            .strip_suffix('/')
            .unwrap_or(entry)
            .to_ascii_lowercase();
        match origin_problem(&entry) {
            None => origins.push(entry),
            Some(why) => problem = problem.or(Some(why)),
        }
    }
    (origins, problem)
}

fn origin_problem(entry: &str) -> Option<&'static str> {
    if entry.contains('*') {
        return Some("a wildcard is not allowed: list each origin");
    }
    let Some(host) = entry
        .strip_prefix("https://")
        .or_else(|| entry.strip_prefix("http://"))
    else {
        return Some("an entry is not an http(s) origin");
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    (!host_ok).then_some(
        "an entry has a path, query or odd character (an origin is scheme://host[:port])",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed() -> Vec<String> {
        parse_origins("https://shop.example, http://localhost:3000/").0
    }

    #[test]
    fn only_listed_origins_are_allowed_and_no_origin_is_not_a_browser() {
        assert_eq!(
            check(&allowed(), Some("https://shop.example")),
            Caller::Allowed("https://shop.example".into())
        );
        assert_eq!(
            check(&allowed(), Some("http://localhost:3000")),
            Caller::Allowed("http://localhost:3000".into())
        );
        for foreign in [
            "https://evil.example",
            "https://shop.example.evil.example",
            "http://shop.example",
            "https://shop.example:8443",
            "null",
        ] {
            assert_eq!(
                check(&allowed(), Some(foreign)),
                Caller::Foreign,
                "{foreign}"
            );
        }
        assert_eq!(check(&allowed(), None), Caller::NoOrigin);
        assert_eq!(check(&[], Some("https://shop.example")), Caller::Foreign);
    }

    #[test]
    fn configured_origins_are_normalised_and_bad_ones_reported_without_values() {
        let (origins, problem) = parse_origins(" HTTPS://Shop.Example , ,http://[::1]:8080");
        assert_eq!(origins, ["https://shop.example", "http://[::1]:8080"]);
        assert_eq!(problem, None);
        for bad in [
            "*",
            "https://*.example",
            "shop.example",
            "https://shop.example/app",
            "null",
        ] {
            let (origins, problem) = parse_origins(&format!("https://ok.example,{bad}"));
            assert_eq!(origins, ["https://ok.example"], "{bad}");
            let why = problem.expect(bad);
            assert!(!why.contains(bad), "{why}");
        }
    }

    #[test]
    fn a_preflight_allows_post_with_a_json_body() {
        let headers = preflight_headers("https://shop.example");
        let get = |name| {
            headers
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(get("access-control-allow-methods"), Some("POST"));
        assert_eq!(
            get("access-control-allow-headers"),
            Some("content-type, idempotency-key")
        );
        assert_eq!(get("access-control-max-age"), Some("600"));
    }
}
