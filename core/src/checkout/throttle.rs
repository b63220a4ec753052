//! Throttling promotion-code guesses: a bounded number of requests carrying a code per
//! client per fixed window (`CHECKOUT_CODE_ATTEMPTS` per `CHECKOUT_CODE_WINDOW_SECS`).
//! The success page's lookups of unknown order ids (`crate::orders`) are throttled the
//! same way, in a budget of their own ([`Scope`]).
//!
//! The counter lives behind the `Throttle` port: D1 at the edge (one atomic upsert, see
//! `migrations/0003_checkout_code_attempts.sql` and `src/d1/throttle.rs`), memory in
//! native tests. It is keyed by an HMAC-SHA256 of the client's address under
//! `STRIPE_API_KEY` ([`client_key`]), never the address itself, so the table cannot be
//! reversed by hashing every IPv4 address.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::settings::Secret;

/// The fixed window `now` falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Unix seconds, a multiple of the window's length.
    pub start: u64,
    /// Seconds until the window ends (at least 1): the `Retry-After` of a 429.
    pub retry_after_secs: u64,
}

pub fn window(now_ms: u64, length_secs: u64) -> Window {
    let now = now_ms / 1_000;
    let length = length_secs.max(1);
    let start = now - now % length;
    Window {
        start,
        retry_after_secs: (start + length - now).max(1),
    }
}

/// How many times `CHECKOUT_CODE_ATTEMPTS` an IPv6 /48 may spend in one window: one
/// /48 holds 65,536 /64s, so counting only /64s would let one tunnel-broker allocation
/// multiply the limit 65,536 times; several subscribers of one ISP may share a /48,
/// hence a multiple rather than the limit itself.
pub const SLASH_48_FACTOR: u32 = 4;

/// The counters a request with a code is charged to: (key, limit factor). An IPv6
/// client is charged to its /64 (what one subscriber gets: otherwise one host could
/// rotate through 2^64 addresses) and to its /48 at [`SLASH_48_FACTOR`] times the
/// limit. Without an address (not behind Cloudflare, which always sets
/// `CF-Connecting-IP`) every such caller shares one key.
pub fn client_keys(secret: &Secret, ip: Option<&str>) -> Vec<(String, u32)> {
    scoped_client_keys(Scope::CheckoutCode, secret, ip)
}

/// Which budget a count is charged to. Each keys its counters under its own prefix,
/// so two budgets sharing the table (`checkout_code_attempts`) never mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/checkout` requests carrying a promotion code.
    CheckoutCode,
    /// `GET /orders/{id}` lookups of ids the ledger does not know (each costs a Stripe call).
    OrderLookup,
    /// `/checkout` requests that ask Stripe for a session, with or without a code.
    CheckoutSession,
}

impl Scope {
    fn prefix(self) -> &'static str {
        match self {
            Self::CheckoutCode => "stripe-edge:checkout-code:",
            Self::OrderLookup => "stripe-edge:order-lookup:",
            Self::CheckoutSession => "stripe-edge:checkout-session:",
        }
    }
}

/// [`client_keys`] of another budget: the same addresses, prefixes and factors, keyed
/// apart.
pub fn scoped_client_keys(scope: Scope, secret: &Secret, ip: Option<&str>) -> Vec<(String, u32)> {
    let key = |subject: &str| keyed(scope, secret, subject);
    match ip.map(str::trim).map(|ip| (ip, ip.parse::<IpAddr>())) {
        Some((_, Ok(IpAddr::V6(v6)))) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            vec![
                (
                    key(&format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])),
                    1,
                ),
                (
                    key(&format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])),
                    SLASH_48_FACTOR,
                ),
            ]
        }
        Some((_, Ok(IpAddr::V6(v6)))) => {
            vec![(key(&v6.to_ipv4_mapped().unwrap().to_string()), 1)]
        }
        Some((_, Ok(IpAddr::V4(v4)))) => vec![(key(&v4.to_string()), 1)],
        Some((raw, Err(_))) => vec![(key(raw), 1)],
        None => vec![(key("unknown"), 1)],
    }
}

/// The first (finest) counter key of an address; see [`client_keys`].
pub fn client_key(secret: &Secret, ip: Option<&str>) -> String {
    client_keys(secret, ip).swap_remove(0).0
}

/// An HMAC-SHA256 keyed with `secret` (the Stripe API key checkout needs anyway), so
/// D1 never holds an address, and the rows cannot be turned back into addresses by
/// hashing all 2^32 IPv4 ones. Rotating the key only restarts the counts.
fn keyed(scope: Scope, secret: &Secret, subject: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(scope.prefix().as_bytes());
    mac.update(subject.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// What the Idempotency-Key of a request with a promotion code includes: a keyed hash
/// of the code, so each code gets its own session. Otherwise a caller reusing one
/// Idempotency-Key could tell a dropped code (Stripe replays the no-code session) from
/// an applied one (a new session) by the URL alone.
pub fn code_tag(secret: &Secret, code: &str) -> String {
    keyed(Scope::CheckoutCode, secret, &format!("code:{code}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Throttle;
    use crate::testing::MemoryThrottle;

    #[test]
    fn windows_are_fixed_and_retry_after_runs_to_their_end() {
        assert_eq!(
            window(1_200_000, 600),
            Window {
                start: 1_200,
                retry_after_secs: 600
            }
        );
        assert_eq!(
            window(1_799_999, 600),
            Window {
                start: 1_200,
                retry_after_secs: 1
            }
        );
        assert_eq!(window(1_800_000, 600).start, 1_800);
    }

    fn client_key(ip: Option<&str>) -> String {
        super::client_key(&Secret::new("sk_test_unit"), ip)
    }

    #[test]
    fn the_key_is_keyed_by_the_secret() {
        let other = super::client_key(&Secret::new("sk_test_other"), Some("203.0.113.7"));
        assert_ne!(client_key(Some("203.0.113.7")), other);
    }

    #[test]
    fn the_key_is_a_hash_never_the_address() {
        let key = client_key(Some("203.0.113.7"));
        assert_eq!(key.len(), 64);
        assert!(!key.contains("203.0.113.7"));
        assert_ne!(key, client_key(Some("203.0.113.8")));
        assert_eq!(key, client_key(Some(" 203.0.113.7 ")));
        assert_eq!(key, client_key(Some("::ffff:203.0.113.7")));
    }

    #[test]
    fn ipv6_clients_are_also_charged_to_their_slash_48_at_a_multiple() {
        let secret = Secret::new("sk_test_unit");
        let a = client_keys(&secret, Some("2001:db8:1:2::1"));
        let b = client_keys(&secret, Some("2001:db8:1:3::1"));
        assert_eq!(a.len(), 2);
        assert_ne!(a[0].0, b[0].0, "other /64");
        assert_eq!(
            (a[1].0.as_str(), a[1].1),
            (b[1].0.as_str(), SLASH_48_FACTOR),
            "same /48"
        );
        assert_ne!(a[1].0, client_keys(&secret, Some("2001:db8:2:3::1"))[1].0);
        assert_eq!(client_keys(&secret, Some("203.0.113.7")).len(), 1);
    }

    #[test]
    fn each_budget_keys_the_same_address_apart() {
        let secret = Secret::new("sk_test_unit");
        for ip in [Some("203.0.113.7"), Some("2001:db8:1:2::1"), None] {
            let code = client_keys(&secret, ip);
            let lookup = scoped_client_keys(Scope::OrderLookup, &secret, ip);
            assert_eq!(code, scoped_client_keys(Scope::CheckoutCode, &secret, ip));
            assert_eq!(code.len(), lookup.len());
            for ((a, fa), (b, fb)) in code.iter().zip(&lookup) {
                assert_ne!(a, b, "{ip:?}");
                assert_eq!(fa, fb);
            }
        }
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a = client_key(Some("2001:db8:1:2:aaaa::1"));
        assert_eq!(a, client_key(Some("2001:db8:1:2:ffff:ffff:ffff:ffff")));
        assert_ne!(a, client_key(Some("2001:db8:1:3::1")));
        assert_eq!(client_key(None), client_key(None));
    }

    #[test]
    fn the_memory_counter_counts_per_key_and_window() {
        let throttle = MemoryThrottle::default();
        let hit = |key, start| futures_executor::block_on(throttle.hit(key, start)).unwrap();
        assert_eq!(hit("a", 0), 1);
        assert_eq!(hit("a", 0), 2);
        assert_eq!(hit("b", 0), 1);
        assert_eq!(hit("a", 600), 1);
    }
}
