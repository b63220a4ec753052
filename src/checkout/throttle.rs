//! Throttling promotion-code guesses: a bounded number of requests carrying a code per
//! client per fixed window (`CHECKOUT_CODE_ATTEMPTS` per `CHECKOUT_CODE_WINDOW_SECS`).
//!
//! The counter lives behind [`Throttle`]: D1 at the edge (one atomic upsert, see
//! `migrations/0003_checkout_code_attempts.sql`), memory in native tests. It is keyed by
//! a SHA-256 of the client's address, never the address itself.

use std::net::IpAddr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::ledger::LedgerError;

/// Counts attempts per key and window.
#[allow(async_fn_in_trait)]
pub trait Throttle {
    /// Counts one attempt for `key` in the window starting at `window_start` (unix
    /// seconds) and returns the window's count, this attempt included. One atomic
    /// statement: concurrent attempts can never both read the same count.
    async fn hit(&self, key: &str, window_start: u64) -> Result<u32, LedgerError>;
}

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

/// The counter's key for a client address: an HMAC-SHA256 keyed with `secret` (the
/// Stripe API key checkout needs anyway), so D1 never holds an address, and the rows
/// cannot be turned back into addresses by hashing all 2^32 IPv4 ones. Rotating the
/// key only restarts the counts.
/// An IPv6 client is keyed by its /64, the block one subscriber gets: otherwise a
/// single host could rotate through 2^64 addresses and never be throttled. Without
/// an address (not behind Cloudflare) every such caller shares one key.
pub fn client_key(secret: &Secret, ip: Option<&str>) -> String {
    let subject = match ip.map(str::trim).map(|ip| (ip, ip.parse::<IpAddr>())) {
        Some((_, Ok(IpAddr::V6(v6)))) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some((_, Ok(IpAddr::V6(v6)))) => v6.to_ipv4_mapped().unwrap().to_string(),
        Some((_, Ok(IpAddr::V4(v4)))) => v4.to_string(),
        Some((raw, Err(_))) => raw.to_string(),
        None => "unknown".to_string(),
    };
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(b"stripe-edge:checkout-code:");
    mac.update(subject.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// An in-memory counter for native tests; can be told to fail like an unreachable D1.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryThrottle {
    pub counts: std::cell::RefCell<std::collections::BTreeMap<(String, u64), u32>>,
    pub unavailable: std::cell::Cell<bool>,
}

#[cfg(test)]
impl Throttle for MemoryThrottle {
    async fn hit(&self, key: &str, window_start: u64) -> Result<u32, LedgerError> {
        if self.unavailable.get() {
            return Err(LedgerError {
                operation: "count_code_attempt",
                detail: "D1_ERROR: unavailable".into(),
            });
        }
        let mut counts = self.counts.borrow_mut();
        let count = counts.entry((key.to_string(), window_start)).or_insert(0);
        *count += 1;
        Ok(*count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
