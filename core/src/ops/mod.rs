//! The ops API under `/admin/`: who may call it and which route a request names.
//! [`handle`] runs a whole call over the ports; `crate::http::ops` maps its outcome to
//! the answer, and the Worker only reads the request and writes the response.
//!
//! Every route answers 404 while `ADMIN_TOKEN` is unset, so a deployment without ops
//! access shows no admin surface at all; with it set, a missing or wrong
//! `Authorization: Bearer` answers 401. Tokens are compared as SHA-256 digests with a
//! constant-time comparison, so neither their content nor their length leaks.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

mod handler;

pub use handler::{handle, OpsAnswer, OpsCall};

use crate::ports::ledger::PurchaseState;
use crate::ports::ops_store::{ListQuery, StateFilter};
use crate::settings::Secret;

pub const PREFIX: &str = "/admin/";
pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    Event(String),
    Purchase(String),
    ListPurchases(ListQuery),
    Replay(String),
    /// `POST /admin/purchases/{id}/resend-email`: the buyer's e-mail once more.
    ResendEmail(String),
}

impl AdminRoute {
    /// A label for the log line of the call.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Event(_) => "get_event",
            Self::Purchase(_) => "get_purchase",
            Self::ListPurchases(_) => "list_purchases",
            Self::Replay(_) => "replay",
            Self::ResendEmail(_) => "resend_email",
        }
    }
}

/// A purchase still `fulfilling` after this long without any change is listed as stuck.
pub const STUCK_AFTER_MS: u64 = 15 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRefusal {
    /// `ADMIN_TOKEN` is unset, or no such route: 404.
    NotFound,
    /// Missing or wrong bearer token: 401.
    Unauthorized,
    MethodNotAllowed(&'static str),
    BadRequest(&'static str),
}

impl AdminRefusal {
    /// The log's `reason`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "admin_not_found",
            Self::Unauthorized => "admin_unauthorized",
            Self::MethodNotAllowed(_) => "admin_method_not_allowed",
            Self::BadRequest(_) => "admin_bad_request",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Self::NotFound => "not found",
            Self::Unauthorized => "missing or invalid bearer token",
            Self::MethodNotAllowed(_) => "method not allowed",
            Self::BadRequest(why) => why,
        }
    }
}

/// Checks the bearer token; returns the caller's fingerprint for the log, keyed by
/// `fingerprint_key` (see [`fingerprint`]).
pub fn authorize(
    configured: Option<&Secret>,
    authorization: Option<&str>,
    fingerprint_key: &[u8],
) -> Result<String, AdminRefusal> {
    let expected = configured.ok_or(AdminRefusal::NotFound)?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let presented = authorization
        .and_then(|h| h.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token)
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AdminRefusal::Unauthorized)?;
    let matches: bool = Sha256::digest(presented.as_bytes())
        .ct_eq(&Sha256::digest(expected.expose().as_bytes()))
        .into();
    if matches {
        Ok(fingerprint(presented, fingerprint_key))
    } else {
        Err(AdminRefusal::Unauthorized)
    }
}

/// Names a token in logs without revealing it: the first 12 hex digits of its
/// HMAC-SHA256 under `key` (the Worker's first webhook signing secret). A plain hash
/// would let anyone holding the logs test guesses of a weak token offline; keyed, a
/// guess cannot be checked without the secret.
pub fn fingerprint(token: &str, key: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(b"stripe-edge admin token:");
    mac.update(token.as_bytes());
    format!("tok_{}", &hex::encode(mac.finalize().into_bytes())[..12])
}

/// Which route `method path?query` names.
pub fn route(method: &str, path: &str, query: Option<&str>) -> Result<AdminRoute, AdminRefusal> {
    let rest = path.strip_prefix(PREFIX).ok_or(AdminRefusal::NotFound)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let route = match parts.as_slice() {
        ["events", id] => AdminRoute::Event(id_segment(id)?),
        ["purchases", id] => AdminRoute::Purchase(id_segment(id)?),
        ["purchases"] => AdminRoute::ListPurchases(list_query(query.unwrap_or(""))?),
        ["purchases", id, "replay"] => AdminRoute::Replay(id_segment(id)?),
        ["purchases", id, "resend-email"] => AdminRoute::ResendEmail(id_segment(id)?),
        _ => return Err(AdminRefusal::NotFound),
    };
    let wanted = if matches!(route, AdminRoute::Replay(_) | AdminRoute::ResendEmail(_)) {
        "POST"
    } else {
        "GET"
    };
    if method != wanted {
        return Err(AdminRefusal::MethodNotAllowed(wanted));
    }
    Ok(route)
}

fn id_segment(id: &str) -> Result<String, AdminRefusal> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    ok.then(|| id.to_string()).ok_or(AdminRefusal::BadRequest(
        "ids are Stripe ids: letters, digits and _",
    ))
}

fn list_query(query: &str) -> Result<ListQuery, AdminRefusal> {
    let mut list = ListQuery {
        filter: StateFilter::FailedOrStuck,
        limit: DEFAULT_LIMIT,
        before: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
        // Clients percent-encode values (`before=1700%3Acs_1`, `state=failed%2Cstuck`).
        let decoded = percent_decode(raw);
        let value = decoded.as_str();
        match key {
            "state" => list.filter = state_filter(value)?,
            "limit" => {
                list.limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or(AdminRefusal::BadRequest("limit must be 1 to 100"))?
            }
            "before" => list.before = Some(cursor(value)?),
            _ => {}
        }
    }
    Ok(list)
}

/// Decodes `%XX` and `+` in a query value; an invalid escape is kept as it is.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // Digits read as bytes: slicing the str could split a multibyte character.
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2]))
            {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_digit(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|d| d as u8)
}

fn state_filter(value: &str) -> Result<StateFilter, AdminRefusal> {
    match value {
        "failed,stuck" | "stuck,failed" | "" => Ok(StateFilter::FailedOrStuck),
        "failed" => Ok(StateFilter::Failed),
        "stuck" => Ok(StateFilter::Stuck),
        other => PurchaseState::parse(other)
            .map(StateFilter::State)
            .ok_or(AdminRefusal::BadRequest("unknown state")),
    }
}

fn cursor(value: &str) -> Result<(u64, String), AdminRefusal> {
    let bad = AdminRefusal::BadRequest("before must be a cursor from a previous page");
    let (at, id) = value.split_once(':').ok_or(bad.clone())?;
    Ok((
        at.parse().map_err(|_| bad.clone())?,
        id_segment(id).map_err(|_| bad)?,
    ))
}

/// The cursor of the page after a row.
pub fn next_cursor(updated_at: u64, session_id: &str) -> String {
    format!("{updated_at}:{session_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whsec_unit";

    fn token() -> Secret {
        Secret::new("adm_token_123")
    }

    #[test]
    fn without_a_configured_token_every_route_is_404() {
        assert_eq!(
            authorize(None, Some("Bearer adm_token_123"), KEY),
            Err(AdminRefusal::NotFound)
        );
    }

    #[test]
    fn a_missing_or_wrong_token_is_401() {
        for header in [
            None,
            Some("adm_token_123"),
            Some("Bearer "),
            Some("Bearer adm_token_12"),
            Some("Bearer x"),
        ] {
            assert_eq!(
                authorize(Some(&token()), header, KEY),
                Err(AdminRefusal::Unauthorized),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_right_token_yields_a_fingerprint_that_does_not_reveal_it() {
        let who = authorize(Some(&token()), Some("Bearer adm_token_123"), KEY).unwrap();
        assert!(who.starts_with("tok_") && who.len() == 16);
        assert!(!who.contains("adm_token"));
        assert_eq!(who, fingerprint("adm_token_123", KEY));
        assert_ne!(who, fingerprint("adm_token_123", b"another key"));
        let plain = hex::encode(Sha256::digest(b"adm_token_123"));
        assert!(
            !plain.starts_with(&who[4..]),
            "not a prefix of the plain SHA-256"
        );
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(
            route("GET", "/admin/events/evt_1", None),
            Ok(AdminRoute::Event("evt_1".into()))
        );
        assert_eq!(
            route("GET", "/admin/purchases/cs_1", None),
            Ok(AdminRoute::Purchase("cs_1".into()))
        );
        assert_eq!(
            route("POST", "/admin/purchases/cs_1/replay", None),
            Ok(AdminRoute::Replay("cs_1".into()))
        );
        assert_eq!(
            route("GET", "/admin/purchases/cs_1/replay", None),
            Err(AdminRefusal::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route("POST", "/admin/purchases/cs_1/resend-email", None),
            Ok(AdminRoute::ResendEmail("cs_1".into()))
        );
        assert_eq!(
            route("GET", "/admin/purchases/cs_1/resend-email", None),
            Err(AdminRefusal::MethodNotAllowed("POST"))
        );
        assert_eq!(
            route("POST", "/admin/events/evt_1", None),
            Err(AdminRefusal::MethodNotAllowed("GET"))
        );
        assert_eq!(
            route("GET", "/admin/nope", None),
            Err(AdminRefusal::NotFound)
        );
        assert!(matches!(
            route("GET", "/admin/events/..%2F", None),
            Err(AdminRefusal::BadRequest(_))
        ));
    }

    #[test]
    fn query_values_are_percent_decoded_and_the_scheme_is_case_insensitive() {
        let AdminRoute::ListPurchases(q) = route(
            "GET",
            "/admin/purchases",
            Some("state=failed%2Cstuck&before=1700%3Acs_9"),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (q.filter, q.before),
            (StateFilter::FailedOrStuck, Some((1700, "cs_9".into())))
        );
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz+x"), "%zz x");
        assert_eq!(percent_decode("%\u{e9}\u{e9}"), "%\u{e9}\u{e9}");
        assert!(authorize(Some(&token()), Some("bearer adm_token_123"), KEY).is_ok());
    }

    #[test]
    fn list_queries_parse_filters_limits_and_cursors() {
        let AdminRoute::ListPurchases(q) = route(
            "GET",
            "/admin/purchases",
            Some("state=failed&limit=5&before=1700:cs_9"),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            q,
            ListQuery {
                filter: StateFilter::Failed,
                limit: 5,
                before: Some((1700, "cs_9".into()))
            }
        );
        let AdminRoute::ListPurchases(q) = route("GET", "/admin/purchases", None).unwrap() else {
            panic!()
        };
        assert_eq!(
            (q.filter, q.limit),
            (StateFilter::FailedOrStuck, DEFAULT_LIMIT)
        );
        assert!(route("GET", "/admin/purchases", Some("limit=0")).is_err());
        assert!(route("GET", "/admin/purchases", Some("state=bogus")).is_err());
        assert!(route("GET", "/admin/purchases", Some("before=x")).is_err());
        let AdminRoute::ListPurchases(q) =
            route("GET", "/admin/purchases", Some("state=fulfilled")).unwrap()
        else {
            panic!()
        };
        assert_eq!(q.filter, StateFilter::State(PurchaseState::Fulfilled));
    }
}
