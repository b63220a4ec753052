//! `Stripe-Signature` verification, exactly as Stripe's official SDKs do it.
//!
//! The signed payload is the header's `t` value, a `.`, then the raw body bytes as
//! received (never re-serialised). The signature is HMAC-SHA256 keyed with the whole
//! secret string (`whsec_` prefix included), in lowercase hex. A delivery is valid when
//! any `v1` in the header matches the HMAC under any configured secret, and its
//! timestamp is within the tolerance. The clock is a parameter so tests can pin it.
//!
//! Pure: no JavaScript, no allocation proportional to the body.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far in the future a timestamp may be (clock skew between Stripe and the edge).
pub const MAX_FUTURE_SECS: i64 = 60;

/// Why a delivery's signature was refused. Messages say what was wrong and never contain
/// a secret, a received signature or the signature we expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    MissingHeader,
    NoTimestamp,
    InvalidTimestamp,
    RepeatedTimestamp,
    NoV1Signature,
    NoMatch,
    TooOld { age_secs: i64, tolerance_secs: u64 },
    InFuture { ahead_secs: i64 },
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("no Stripe-Signature header"),
            Self::NoTimestamp => f.write_str("Stripe-Signature header has no timestamp (t=)"),
            Self::InvalidTimestamp => {
                f.write_str("Stripe-Signature header has an empty or non-numeric timestamp")
            }
            Self::RepeatedTimestamp => {
                f.write_str("Stripe-Signature header has more than one timestamp")
            }
            Self::NoV1Signature => f.write_str("Stripe-Signature header has no v1 signature"),
            Self::NoMatch => f.write_str("no v1 signature matched any configured secret"),
            Self::TooOld {
                age_secs,
                tolerance_secs,
            } => write!(
                f,
                "timestamp outside the tolerance: {age_secs} s old, limit {tolerance_secs} s"
            ),
            Self::InFuture { ahead_secs } => write!(
                f,
                "timestamp outside the tolerance: {ahead_secs} s in the future, limit {MAX_FUTURE_SECS} s"
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

impl SignatureError {
    /// A stable snake_case code for logs and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_header",
            Self::NoTimestamp => "no_timestamp",
            Self::InvalidTimestamp => "invalid_timestamp",
            Self::RepeatedTimestamp => "repeated_timestamp",
            Self::NoV1Signature => "no_v1_signature",
            Self::NoMatch => "no_match",
            Self::TooOld { .. } => "timestamp_too_old",
            Self::InFuture { .. } => "timestamp_in_future",
        }
    }
}

/// A parsed `Stripe-Signature` header: the timestamp and every `v1` value, borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader<'h> {
    pub timestamp: i64,
    /// The `t` value exactly as sent: it is what was signed, so it is used verbatim.
    pub timestamp_text: &'h str,
    pub v1: Vec<&'h str>,
}

/// Parses the header as the SDKs do: items split on `,`, each split on its first `=`,
/// whitespace around items tolerated, `v0` and unknown schemes ignored.
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    let mut timestamp: Option<&str> = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            continue;
        };
        match key {
            "t" if timestamp.is_some() => return Err(SignatureError::RepeatedTimestamp),
            "t" => timestamp = Some(value),
            "v1" => v1.push(value),
            _ => {}
        }
    }
    let timestamp_text = timestamp.ok_or(SignatureError::NoTimestamp)?;
    let timestamp = parse_timestamp(timestamp_text)?;
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    Ok(SignatureHeader {
        timestamp,
        timestamp_text,
        v1,
    })
}

/// Digits only: `i64::from_str` would also take a leading `+`, which no SDK signs.
fn parse_timestamp(text: &str) -> Result<i64, SignatureError> {
    if text.is_empty() || text.len() > 18 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::InvalidTimestamp);
    }
    text.parse().map_err(|_| SignatureError::InvalidTimestamp)
}

/// An HMAC-SHA256 tag: the raw 32 bytes a `v1` signature is the lowercase hex of.
pub type Tag = [u8; 32];

/// Verifies a delivery against every configured secret at the instant `now_secs`.
///
/// Authenticity is checked before freshness, as the SDKs do, so a replayed but genuine
/// delivery is reported as stale rather than as forged.
pub fn verify_at<S: AsRef<[u8]>>(
    header: Option<&str>,
    body: &[u8],
    secrets: &[S],
    tolerance_secs: u64,
    now_secs: i64,
) -> Result<i64, SignatureError> {
    let header = parse_header(header.ok_or(SignatureError::MissingHeader)?)?;
    // Lazily: the first secret that matches ends the hashing.
    let tags = secrets
        .iter()
        .map(|secret| tag(secret.as_ref(), header.timestamp_text, body));
    verify_tags(&header, tags, tolerance_secs, now_secs)
}

/// The rest of [`verify_at`] once the tags of `timestamp_text.body` under each secret
/// are known: the edge computes them with SubtleCrypto for large bodies (see
/// `src/subtle.rs` in the Worker crate), where the platform's native HMAC beats one compiled to wasm.
pub fn verify_tags(
    header: &SignatureHeader<'_>,
    tags: impl IntoIterator<Item = Tag>,
    tolerance_secs: u64,
    now_secs: i64,
) -> Result<i64, SignatureError> {
    let mut matched = false;
    for tag in tags {
        let expected = hex::encode(tag);
        if header
            .v1
            .iter()
            .any(|candidate| bool::from(candidate.as_bytes().ct_eq(expected.as_bytes())))
        {
            matched = true;
            break;
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    check_tolerance(header.timestamp, tolerance_secs, now_secs)?;
    Ok(header.timestamp)
}

fn check_tolerance(
    timestamp: i64,
    tolerance_secs: u64,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let age_secs = now_secs.saturating_sub(timestamp);
    if age_secs > i64::try_from(tolerance_secs).unwrap_or(i64::MAX) {
        return Err(SignatureError::TooOld {
            age_secs,
            tolerance_secs,
        });
    }
    if -age_secs > MAX_FUTURE_SECS {
        return Err(SignatureError::InFuture {
            ahead_secs: -age_secs,
        });
    }
    Ok(())
}

/// HMAC-SHA256 of `timestamp.body` keyed with the whole secret (`whsec_` included).
pub fn tag(secret: &[u8], timestamp_text: &str, body: &[u8]) -> Tag {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(timestamp_text.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The `v1` value Stripe sends: the lowercase hex of [`tag`]. `subtle`'s `ct_eq` on
/// slices of different length returns false without comparing, which leaks only the
/// length, and the length of a valid signature is public.
pub fn expected_signature(secret: &[u8], timestamp_text: &str, body: &[u8]) -> String {
    hex::encode(tag(secret, timestamp_text, body))
}

/// Builds a header value the way Stripe does, for tests and tools.
pub fn sign_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let signature = expected_signature(secret.as_bytes(), &timestamp.to_string(), body);
    format!("t={timestamp},v1={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &str = "whsec_test_secret";
    const T: i64 = 1_700_000_000;

    fn verify(
        header: &str,
        body: &[u8],
        secrets: &[&str],
        now: i64,
    ) -> Result<i64, SignatureError> {
        verify_at(Some(header), body, secrets, 300, now)
    }

    #[test]
    fn tags_computed_elsewhere_verify_exactly_like_our_own() {
        let body = br#"{"id":"evt_1"}"#;
        let header_text = sign_header(SECRET, T, body);
        let header = parse_header(&header_text).unwrap();
        let ours = tag(SECRET.as_bytes(), "1700000000", body);
        let other = tag(b"whsec_other", "1700000000", body);
        // Any tag of the list may match (rotation), in any position.
        assert_eq!(verify_tags(&header, [other, ours], 300, T), Ok(T));
        assert_eq!(
            verify_tags(&header, [other], 300, T),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify_tags(&header, [], 300, T),
            Err(SignatureError::NoMatch)
        );
        // Freshness is still checked after authenticity.
        assert!(matches!(
            verify_tags(&header, [ours], 300, T + 301),
            Err(SignatureError::TooOld { .. })
        ));
    }

    /// Computed independently with
    /// `printf '1700000000.{"id": "evt_test_webhook", "object": "event"}' | openssl dgst -sha256 -hmac whsec_test_secret`
    /// (the payload and secret of the SDKs' webhook tests).
    #[test]
    fn matches_an_independently_computed_vector() {
        let body = br#"{"id": "evt_test_webhook", "object": "event"}"#;
        let expected = "aafb6f8becb4b5db5da0da34d6fb419de5f0866d738651a835f821a8a96cf1f3";
        assert_eq!(
            expected_signature(SECRET.as_bytes(), "1700000000", body),
            expected
        );
        let header = format!("t=1700000000,v1={expected}");
        assert_eq!(verify(&header, body, &[SECRET], T + 5), Ok(T));
    }

    #[test]
    fn accepts_a_delivery_signed_with_the_configured_secret() {
        let body = br#"{"id":"evt_1","object":"event"}"#;
        let header = sign_header(SECRET, T, body);
        assert_eq!(verify(&header, body, &[SECRET], T), Ok(T));
    }

    #[test]
    fn accepts_any_of_several_rotated_secrets() {
        let body = b"{}";
        let header = sign_header("whsec_new", T, body);
        assert_eq!(verify(&header, body, &["whsec_old", "whsec_new"], T), Ok(T));
        assert_eq!(
            verify(&header, body, &["whsec_old"], T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn accepts_when_any_of_several_v1_matches() {
        let body = b"{}";
        let good = expected_signature(SECRET.as_bytes(), "1700000000", body);
        let header = format!("t={T},v1={},v1={good},v0=abc", "0".repeat(64));
        assert_eq!(verify(&header, body, &[SECRET], T), Ok(T));
    }

    #[test]
    fn rejects_a_header_with_only_v0() {
        let header = format!("t={T},v0={}", "a".repeat(64));
        assert_eq!(
            verify(&header, b"{}", &[SECRET], T),
            Err(SignatureError::NoV1Signature)
        );
    }

    #[test]
    fn tolerates_spaces_around_items_and_ignores_unknown_schemes() {
        let body = b"{}";
        let good = expected_signature(SECRET.as_bytes(), "1700000000", body);
        let header = format!(" t={T} , v1={good} ,scheme=x, junk ");
        assert_eq!(verify(&header, body, &[SECRET], T), Ok(T));
    }

    #[test]
    fn splits_each_item_on_its_first_equals_sign() {
        let parsed = parse_header("t=1,v1=ab=cd").unwrap();
        assert_eq!(parsed.v1, vec!["ab=cd"]);
    }

    #[test]
    fn rejects_missing_empty_non_numeric_and_repeated_timestamps() {
        assert_eq!(parse_header("v1=ab"), Err(SignatureError::NoTimestamp));
        assert_eq!(
            parse_header("t=,v1=ab"),
            Err(SignatureError::InvalidTimestamp)
        );
        assert_eq!(
            parse_header("t=12a,v1=ab"),
            Err(SignatureError::InvalidTimestamp)
        );
        assert_eq!(
            parse_header("t=+12,v1=ab"),
            Err(SignatureError::InvalidTimestamp)
        );
        assert_eq!(
            parse_header("t=1,t=1,v1=ab"),
            Err(SignatureError::RepeatedTimestamp)
        );
        assert_eq!(parse_header(""), Err(SignatureError::NoTimestamp));
    }

    #[test]
    fn rejects_a_missing_header() {
        assert_eq!(
            verify_at::<&str>(None, b"{}", &[SECRET], 300, T),
            Err(SignatureError::MissingHeader)
        );
    }

    #[test]
    fn signs_the_raw_bytes_so_line_endings_matter() {
        let lf = b"{\n  \"id\": \"evt_1\"\n}";
        let crlf = b"{\r\n  \"id\": \"evt_1\"\r\n}";
        let header = sign_header(SECRET, T, lf);
        assert_eq!(verify(&header, lf, &[SECRET], T), Ok(T));
        assert_eq!(
            verify(&header, crlf, &[SECRET], T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn rejects_a_re_serialised_body() {
        let original = b"{\"id\": \"evt_1\", \"object\": \"event\"}";
        let header = sign_header(SECRET, T, original);
        let value: serde_json::Value = serde_json::from_slice(original).unwrap();
        let reserialised = serde_json::to_vec(&value).unwrap();
        assert_ne!(reserialised.as_slice(), original.as_slice());
        assert_eq!(
            verify(&header, &reserialised, &[SECRET], T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn verifies_bodies_that_are_not_utf8() {
        let body = [0x00, 0xff, 0xfe, b'{', 0x80];
        let header = sign_header(SECRET, T, &body);
        assert_eq!(verify(&header, &body, &[SECRET], T), Ok(T));
    }

    #[test]
    fn rejects_uppercase_hex_as_the_sdks_do() {
        let body = b"{}";
        let upper = expected_signature(SECRET.as_bytes(), "1700000000", body).to_uppercase();
        let header = format!("t={T},v1={upper}");
        assert_eq!(
            verify(&header, body, &[SECRET], T),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn tolerance_boundaries_are_inclusive_to_the_second() {
        let body = b"{}";
        let header = sign_header(SECRET, T, body);
        assert_eq!(verify(&header, body, &[SECRET], T + 300), Ok(T));
        assert_eq!(
            verify(&header, body, &[SECRET], T + 301),
            Err(SignatureError::TooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        assert_eq!(verify(&header, body, &[SECRET], T - 60), Ok(T));
        assert_eq!(
            verify(&header, body, &[SECRET], T - 61),
            Err(SignatureError::InFuture { ahead_secs: 61 })
        );
    }

    #[test]
    fn a_forged_stale_delivery_is_reported_as_forged() {
        let header = format!("t={T},v1={}", "0".repeat(64));
        assert_eq!(
            verify(&header, b"{}", &[SECRET], T + 10_000),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn error_messages_never_contain_secrets_or_signatures() {
        let body = b"{}";
        let expected = expected_signature(SECRET.as_bytes(), "1700000000", body);
        let sent = "f".repeat(64);
        let header = format!("t={T},v1={sent}");
        let err = verify(&header, body, &[SECRET], T).unwrap_err();
        let message = err.to_string();
        assert!(
            !message.contains(SECRET) && !message.contains(&expected) && !message.contains(&sent)
        );
    }

    proptest! {
        #[test]
        fn parser_and_verifier_never_panic(header in any::<String>(), body in any::<Vec<u8>>(), now in any::<i64>(), tolerance in any::<u64>()) {
            let _ = parse_header(&header);
            let _ = verify_at(Some(&header), &body, &[SECRET], tolerance, now);
        }

        #[test]
        fn structured_headers_never_panic(t in any::<i64>(), sigs in proptest::collection::vec("[0-9a-f=, ]{0,70}", 0..4), now in any::<i64>()) {
            let header = format!("t={t},{}", sigs.iter().map(|s| format!("v1={s}")).collect::<Vec<_>>().join(","));
            let _ = verify_at(Some(&header), b"{}", &[SECRET], 300, now);
        }
    }
}
