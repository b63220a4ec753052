//! `Stripe-Signature` verification, exactly as Stripe's official Node SDK does it
//! (`stripe` 23.1.0, `cjs/Webhooks.js`: `parseHeader`, `parseEventDetails`,
//! `validateComputedSignature`; `cjs/platform/NodePlatformFunctions.js`: `secureCompare`).
//!
//! The header is split on `,` and each item on every `=`: the key is the text before the
//! first `=`, compared exactly (no trimming, case-sensitive), and the value the text
//! between the first and the second `=` (the rest is dropped). The last `t` wins and is
//! read with JavaScript's `parseInt(value, 10)`; every `v1` is a candidate. The signed
//! payload is that *number* printed as JavaScript prints it (`${timestamp}`), a `.`, then
//! the raw body bytes as received (never re-serialised): `t=+0017…` is signed as `17….`.
//! The signature is HMAC-SHA256 keyed with the whole secret string (`whsec_` prefix
//! included), in lowercase hex. A delivery is valid when any `v1` matches the HMAC under
//! any configured secret, and it is not older than the tolerance.
//!
//! Two deliberate differences, both refusals: a timestamp more than [`MAX_FUTURE_SECS`]
//! ahead (the SDK accepts any future timestamp), and a `t` that `parseInt` reads as `NaN`
//! (the SDK signs `NaN.…` and then skips the age check, since `NaN > tolerance` is false).
//! The clock is a parameter so tests can pin it.
//!
//! Pure: no JavaScript, no allocation proportional to the body.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far in the future a timestamp may be (clock skew between Stripe and the edge).
pub const MAX_FUTURE_SECS: i64 = 60;

/// The length of a `v1` signature: the lowercase hex of an HMAC-SHA256.
const SIGNATURE_HEX_LEN: usize = 64;

/// Why a delivery's signature was refused. Messages say what was wrong and never contain
/// a secret, a received signature or the signature we expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    MissingHeader,
    /// No `t` item, or the last one reads as `-1` (the SDK's "no timestamp" value).
    NoTimestamp,
    /// The last `t` reads as `NaN` (no digits after optional whitespace and sign).
    InvalidTimestamp,
    NoV1Signature,
    /// A `v1` item the SDK cannot compare (it throws): no `=`, an empty value, or 64
    /// UTF-16 units that are not 64 bytes (a non-ASCII character).
    MalformedV1Signature,
    NoMatch,
    TooOld {
        age_secs: i64,
        tolerance_secs: u64,
    },
    InFuture {
        ahead_secs: i64,
    },
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader => f.write_str("no Stripe-Signature header"),
            Self::NoTimestamp => f.write_str("Stripe-Signature header has no timestamp (t=)"),
            Self::InvalidTimestamp => {
                f.write_str("Stripe-Signature header has a timestamp that is not a number")
            }
            Self::NoV1Signature => f.write_str("Stripe-Signature header has no v1 signature"),
            Self::MalformedV1Signature => {
                f.write_str("Stripe-Signature header has an empty or malformed v1 signature")
            }
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
            Self::NoV1Signature => "no_v1_signature",
            Self::MalformedV1Signature => "malformed_v1_signature",
            Self::NoMatch => "no_match",
            Self::TooOld { .. } => "timestamp_too_old",
            Self::InFuture { .. } => "timestamp_in_future",
        }
    }
}

/// A parsed `Stripe-Signature` header: the timestamp and every `v1` value, borrowed.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureHeader<'h> {
    /// The SDK's timestamp: `parseInt(t, 10)`, a JavaScript number (an integer or an
    /// infinity; never `NaN` or `-1`, which are refused).
    pub timestamp: f64,
    /// What was signed before the `.`: [`timestamp`](Self::timestamp) as JavaScript
    /// prints it (`${timestamp}`), not the text sent (`t=+017…` signs `17…`). Every
    /// tag, in Rust or SubtleCrypto, is computed over this.
    pub timestamp_text: String,
    pub v1: Vec<&'h str>,
}

/// Parses the header as the Node SDK does (see the module's comment), then refuses what
/// the SDK would refuse or throw on, and a `NaN` timestamp.
pub fn parse_header(header: &str) -> Result<SignatureHeader<'_>, SignatureError> {
    // `timestamp: -1, signatures: []`, then `header.split(',').reduce(…)`.
    let mut timestamp = -1.0_f64;
    let mut v1: Vec<Option<&str>> = Vec::new();
    for item in header.split(',') {
        // `const kv = item.split('=')`: kv[0] the key, kv[1] (maybe undefined) the value.
        let mut kv = item.split('=');
        let key = kv.next().unwrap_or_default();
        let value = kv.next();
        if key == "t" {
            timestamp = parse_int(value);
        }
        if key == "v1" {
            v1.push(value);
        }
    }
    // `details.timestamp === -1`: "Unable to extract timestamp and signatures".
    if timestamp == -1.0 {
        return Err(SignatureError::NoTimestamp);
    }
    // `!details.signatures.length`: "No signatures found with expected scheme".
    if v1.is_empty() {
        return Err(SignatureError::NoV1Signature);
    }
    // Ours: the SDK would sign `NaN.…` and skip the age check.
    if timestamp.is_nan() {
        return Err(SignatureError::InvalidTimestamp);
    }
    // `secureCompare(expected, b)` throws on a falsy `b` (no `=`, or an empty value),
    // and `timingSafeEqual` on equal UTF-16 lengths but unequal UTF-8 lengths; the
    // SDK compares every candidate, so one such `v1` refuses the whole header.
    let v1 = v1
        .into_iter()
        .map(|value| match value {
            Some(text) if !sdk_throws_comparing(text) => Ok(text),
            _ => Err(SignatureError::MalformedV1Signature),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SignatureHeader {
        timestamp,
        timestamp_text: js_number_text(timestamp),
        v1,
    })
}

/// Whether Node's `secureCompare` throws comparing the expected signature (64 ASCII
/// characters) with `candidate`.
fn sdk_throws_comparing(candidate: &str) -> bool {
    candidate.is_empty()
        || (candidate.encode_utf16().count() == SIGNATURE_HEX_LEN
            && candidate.len() != SIGNATURE_HEX_LEN)
}

/// JavaScript's `parseInt(value, 10)`; `None` is `undefined` (read as `"undefined"`).
/// Leading JavaScript whitespace is skipped, then one optional sign, then the longest
/// run of ASCII digits (anything after it is ignored); no digits is `NaN`. The digits
/// are rounded to the nearest double, as V8 does (a 19-digit `t` loses its last ones).
fn parse_int(value: Option<&str>) -> f64 {
    let Some(text) = value else {
        return f64::NAN;
    };
    let text = text.trim_start_matches(is_js_whitespace);
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return f64::NAN;
    }
    let magnitude = integer_to_f64(&text.as_bytes()[..digits]);
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// The nearest double to the integer written in `digits` (ASCII digits, at least one),
/// ties to even, infinity past the largest double: what `parseInt` and Rust's
/// `str::parse::<f64>` give (a test holds it to the latter). Not `parse` itself: its
/// general algorithm and tables, for any decimal, cost 14 KiB of the gzipped upload,
/// and an integer needs only its top 64 bits and whether any bit below them is set.
fn integer_to_f64(digits: &[u8]) -> f64 {
    let start = digits
        .iter()
        .position(|&d| d != b'0')
        .unwrap_or(digits.len());
    let digits = &digits[start..];
    if digits.len() <= 19 {
        // Below 10^19 < 2^64: exact in a u64, and `as` rounds to nearest, ties to even.
        return digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')) as f64;
    }
    if digits.len() > 309 {
        // At least 10^309, beyond f64::MAX (1.8 * 10^308) and the halfway point above it.
        return f64::INFINITY;
    }
    // The integer in base 2^32, least significant limb first, nine digits at a time.
    let mut limbs: Vec<u32> = Vec::with_capacity(digits.len() / 9 + 2);
    for chunk in digits.chunks(9) {
        let scale = 10u64.pow(chunk.len() as u32);
        let mut carry = chunk
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        for limb in &mut limbs {
            let wide = u64::from(*limb) * scale + carry;
            *limb = wide as u32;
            carry = wide >> 32;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    // More than 19 digits: at least 10^19 > 2^63, so at least 64 bits, two limbs or more.
    let top = limbs.len() - 1;
    let bits = 32 * top + (32 - limbs[top].leading_zeros() as usize);
    let shift = bits - 64;
    let bit = |i: usize| (limbs[i / 32] >> (i % 32)) & 1;
    let mut high = 0u64;
    for i in (shift..bits).rev() {
        high = high << 1 | u64::from(bit(i));
    }
    // The bits below the top 64 only decide a tie: one sticky bit stands for all of them
    // (64 bits carry 11 below the 53 a double keeps, so the sticky bit is never the
    // rounding bit), then the power of two scales exactly.
    let sticky = (0..shift).any(|i| bit(i) == 1);
    let rounded = (high | u64::from(sticky)) as f64;
    // shift <= 1027 - 64 (10^309 < 2^1027): 2^shift is a normal double.
    rounded * f64::from_bits(((1023 + shift) as u64) << 52)
}

/// ECMAScript's StrWhiteSpaceChar: WhiteSpace (TAB, VT, FF, ZWNBSP, any `Zs`) and
/// LineTerminator (LF, CR, LS, PS). Unlike `char::is_whitespace`: U+FEFF yes, U+0085 no.
fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\u{9}' | '\u{a}' | '\u{b}' | '\u{c}' | '\u{d}' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A JavaScript number (from [`parse_int`]: an integer or an infinity, never `NaN`)
/// printed as `${n}` prints it: integers below 10^21 in full, larger ones in
/// exponent form with a `+` (`1.2345e+21`), `-0` as `0`. Rust's shortest round-trip
/// digits are the ones ECMAScript's Number::toString picks.
fn js_number_text(n: f64) -> String {
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.to_string();
    }
    if n == 0.0 {
        return "0".to_string();
    }
    // Every timestamp Stripe sends: below 2^53 an integral double is its own shortest
    // digits, printed without the float formatter (which `bench/profile.mjs` found on
    // every delivery's path).
    if n.abs() < 9_007_199_254_740_992.0 {
        return (n as i64).to_string();
    }
    // An integral double in full: its shortest round-trip digits, then zeros.
    let full = format!("{n}");
    if n.abs() < 1e21 {
        return full;
    }
    // The same digits in exponent form, as `{n:e}` would write them (a test holds it to
    // that; not `{:e}` itself: its formatter costs 1 KiB of the gzipped upload). The
    // shortest digits never end in 0, so the zeros are all padding.
    let (sign, all) = match full.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", full.as_str()),
    };
    let exponent = all.len() - 1;
    let (first, rest) = all.trim_end_matches('0').split_at(1);
    if rest.is_empty() {
        format!("{sign}{first}e+{exponent}")
    } else {
        format!("{sign}{first}.{rest}e+{exponent}")
    }
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
        .map(|secret| tag(secret.as_ref(), &header.timestamp_text, body));
    verify_tags(&header, tags, tolerance_secs, now_secs)
}

/// The rest of [`verify_at`] once the tags of `timestamp_text.body` under each secret
/// are known (`timestamp_text` of this very header: the SDK's text, not the one sent):
/// the edge computes them with SubtleCrypto for large bodies (see `src/subtle.rs` in
/// the Worker crate), where the platform's native HMAC beats one compiled to wasm.
pub fn verify_tags(
    header: &SignatureHeader<'_>,
    tags: impl IntoIterator<Item = Tag>,
    tolerance_secs: u64,
    now_secs: i64,
) -> Result<i64, SignatureError> {
    let mut matched = false;
    let mut expected = [0u8; SIGNATURE_HEX_LEN];
    for tag in tags {
        // Into a buffer on the stack: no allocation per secret.
        hex::encode_to_slice(tag, &mut expected).expect("64 hex digits for 32 bytes");
        // Every candidate is compared, in constant time, whatever the earlier ones gave.
        let any = header
            .v1
            .iter()
            .fold(subtle::Choice::from(0), |any, candidate| {
                any | candidate.as_bytes().ct_eq(&expected)
            });
        if bool::from(any) {
            matched = true;
            break;
        }
    }
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    check_tolerance(header.timestamp, tolerance_secs, now_secs)?;
    // Inside the window, so an integer of ten or so digits.
    Ok(header.timestamp as i64)
}

/// The SDK's `Math.floor(now / 1000) - details.timestamp > tolerance`, in doubles as
/// JavaScript computes it; then ours: no more than [`MAX_FUTURE_SECS`] ahead. (The SDK
/// skips its check for a tolerance of 0; `STRIPE_WEBHOOK_TOLERANCE_SECS` is at least 1,
/// and here 0 means "not older than now".)
fn check_tolerance(
    timestamp: f64,
    tolerance_secs: u64,
    now_secs: i64,
) -> Result<(), SignatureError> {
    let age = now_secs as f64 - timestamp;
    if age > tolerance_secs as f64 {
        return Err(SignatureError::TooOld {
            // `as` saturates: an infinitely old timestamp reports i64::MAX.
            age_secs: age as i64,
            tolerance_secs,
        });
    }
    if -age > MAX_FUTURE_SECS as f64 {
        return Err(SignatureError::InFuture {
            ahead_secs: (-age) as i64,
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

    #[test]
    fn parse_int_is_javascripts() {
        // Each expected text printed by Node 22: `${parseInt(s, 10)}`.
        for (input, printed) in [
            ("1234567890123456789", "1234567890123456800"),
            ("99999999999999999999999", "1e+23"),
            ("123456789012345678901234567890", "1.2345678901234568e+29"),
            ("12345678901234567890123", "1.2345678901234568e+22"),
            ("9007199254740993", "9007199254740992"),
            ("-0", "0"),
            ("  \t+0017", "17"),
            ("1e3", "1"),
            ("\u{feff}\u{a0}\u{3000}42", "42"),
            ("-12.9", "-12"),
        ] {
            assert_eq!(js_number_text(parse_int(Some(input))), printed, "{input:?}");
        }
        assert_eq!(
            js_number_text(parse_int(Some(&"1".repeat(400)))),
            "Infinity"
        );
        assert_eq!(
            js_number_text(parse_int(Some(&format!("-{}", "9".repeat(400))))),
            "-Infinity"
        );
        for nan in [
            None,
            Some(""),
            Some("abc"),
            Some("+"),
            Some("- 1"),
            Some("\u{85}1"),
            Some("0x10"),
        ] {
            // `0x10`: radix 10 reads the `0` and stops at `x`.
            if nan == Some("0x10") {
                assert_eq!(parse_int(nan), 0.0);
            } else {
                assert!(parse_int(nan).is_nan(), "{nan:?}");
            }
        }
    }

    /// The SubtleCrypto path hashes `timestamp_text`: a tag over the SDK's text verifies,
    /// one over the text as sent does not.
    #[test]
    fn tags_computed_elsewhere_use_the_sdks_timestamp_text() {
        let body = br#"{"id":"evt_1"}"#;
        let good = expected_signature(SECRET.as_bytes(), "1700000000", body);
        let header = format!("t=+001700000000,v1={good}");
        let parsed = parse_header(&header).unwrap();
        assert_eq!(parsed.timestamp_text, "1700000000");
        let ours = tag(SECRET.as_bytes(), &parsed.timestamp_text, body);
        assert_eq!(verify_tags(&parsed, [ours], 300, T), Ok(T));
        let as_sent = tag(SECRET.as_bytes(), "+001700000000", body);
        assert_eq!(
            verify_tags(&parsed, [as_sent], 300, T),
            Err(SignatureError::NoMatch)
        );
    }

    /// The header corpus of issue 15 (and `e2e/signature-oracle.test.mjs`): one test per
    /// variant, with the verdict of `stripe.webhooks.constructEvent` (Node SDK 23.1.0)
    /// at the instant `T`, except where marked "ours".
    mod corpus {
        use super::*;

        const BODY: &[u8] = br#"{"id":"evt_corpus","object":"event","type":"customer.created"}"#;

        /// The `v1` the SDK expects when it signs `text.BODY`.
        fn sig(text: &str) -> String {
            expected_signature(SECRET.as_bytes(), text, BODY)
        }

        fn good() -> String {
            sig(&T.to_string())
        }

        fn check(header: impl AsRef<str>, expected: Result<i64, SignatureError>) {
            let header = header.as_ref();
            assert_eq!(verify(header, BODY, &[SECRET], T), expected, "{header:?}");
        }

        macro_rules! variant {
            ($name:ident, $header:expr, $expected:expr) => {
                #[test]
                fn $name() {
                    check($header, $expected);
                }
            };
        }

        use SignatureError::*;

        variant!(canonical, format!("t={T},v1={}", good()), Ok(T));
        variant!(
            leading_zeros_sign_the_number,
            format!("t=000{T},v1={}", good()),
            Ok(T)
        );
        variant!(
            leading_zeros_over_the_raw_text,
            format!("t=000{T},v1={}", sig(&format!("000{T}"))),
            Err(NoMatch)
        );
        variant!(
            plus_sign_signs_the_number,
            format!("t=+{T},v1={}", good()),
            Ok(T)
        );
        variant!(
            plus_sign_over_the_raw_text,
            format!("t=+{T},v1={}", sig(&format!("+{T}"))),
            Err(NoMatch)
        );
        variant!(
            space_before_the_timestamp,
            format!("t= {T},v1={}", good()),
            Ok(T)
        );
        variant!(
            tab_before_the_timestamp,
            format!("t=\t{T},v1={}", good()),
            Ok(T)
        );
        variant!(
            no_break_space_before_the_timestamp,
            format!("t=\u{a0}{T},v1={}", good()),
            Ok(T)
        );
        variant!(
            letters_after_the_timestamp,
            format!("t={T}abc,v1={}", good()),
            Ok(T)
        );
        variant!(
            fraction_after_the_timestamp,
            format!("t={T}.5,v1={}", good()),
            Ok(T)
        );
        variant!(
            space_after_the_timestamp,
            format!("t={T} ,v1={}", good()),
            Ok(T)
        );
        variant!(
            exponent_is_read_up_to_the_e,
            format!("t=1.7e9,v1={}", sig("1")),
            Err(TooOld {
                age_secs: T - 1,
                tolerance_secs: 300
            })
        );
        variant!(
            space_after_a_comma_hides_v1,
            format!("t={T}, v1={}", good()),
            Err(NoV1Signature)
        );
        variant!(
            tab_after_a_comma_hides_v1,
            format!("t={T},\tv1={}", good()),
            Err(NoV1Signature)
        );
        variant!(
            space_after_a_comma_hides_t,
            format!("v1={}, t={T}", good()),
            Err(NoTimestamp)
        );
        variant!(
            space_before_equals_hides_t,
            format!("t ={T},v1={}", good()),
            Err(NoTimestamp)
        );
        variant!(
            space_after_v1_equals_is_part_of_it,
            format!("t={T},v1= {}", good()),
            Err(NoMatch)
        );
        variant!(
            repeated_t_the_last_wins,
            format!("t={},t={T},v1={}", T - 1000, good()),
            Ok(T)
        );
        variant!(
            repeated_t_the_first_is_not_signed,
            format!("t={T},t={},v1={}", T - 1000, good()),
            Err(NoMatch)
        );
        variant!(
            repeated_v1_any_matches,
            format!("t={T},v1={},v1={}", "0".repeat(64), good()),
            Ok(T)
        );
        variant!(v0_only, format!("t={T},v0={}", good()), Err(NoV1Signature));
        variant!(
            v0_and_v1,
            format!("t={T},v0={},v1={}", "0".repeat(64), good()),
            Ok(T)
        );
        variant!(
            unknown_schemes_ignored,
            format!("t={T},v2=x,scheme=y,v1={},junk", good()),
            Ok(T)
        );
        variant!(
            v1_value_ends_at_the_second_equals,
            format!("t={T},v1={}=x", good()),
            Ok(T)
        );
        variant!(
            t_value_ends_at_the_second_equals,
            format!("t={T}=5,v1={}", good()),
            Ok(T)
        );
        variant!(
            empty_items_and_trailing_comma,
            format!(",t={T},,v1={},", good()),
            Ok(T)
        );
        variant!(
            upper_case_t,
            format!("T={T},v1={}", good()),
            Err(NoTimestamp)
        );
        variant!(
            upper_case_v1,
            format!("t={T},V1={}", good()),
            Err(NoV1Signature)
        );
        variant!(
            upper_case_hex,
            format!("t={T},v1={}", good().to_uppercase()),
            Err(NoMatch)
        );
        // Ours: the SDK accepts any future timestamp.
        variant!(
            nineteen_digits_signed_as_printed,
            format!("t=1234567890123456789,v1={}", sig("1234567890123456800")),
            Err(InFuture {
                ahead_secs: 1_234_567_888_423_456_768
            })
        );
        variant!(
            nineteen_digits_over_the_raw_text,
            format!("t=1234567890123456789,v1={}", sig("1234567890123456789")),
            Err(NoMatch)
        );
        variant!(
            infinite_timestamp,
            format!("t={},v1={}", "9".repeat(400), sig("Infinity")),
            Err(InFuture {
                ahead_secs: i64::MAX
            })
        );
        variant!(
            a_minute_ahead,
            format!("t={},v1={}", T + 60, sig(&(T + 60).to_string())),
            Ok(T + 60)
        );
        variant!(
            an_hour_ahead,
            format!("t={},v1={}", T + 3600, sig(&(T + 3600).to_string())),
            Err(InFuture { ahead_secs: 3600 })
        );
        variant!(
            stale,
            format!("t={},v1={}", T - 301, sig(&(T - 301).to_string())),
            Err(TooOld {
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        // Ours: the SDK signs `NaN.…` and never checks the age.
        variant!(
            non_numeric_timestamp,
            format!("t=abc,v1={}", sig("NaN")),
            Err(InvalidTimestamp)
        );
        variant!(
            empty_timestamp,
            format!("t=,v1={}", sig("NaN")),
            Err(InvalidTimestamp)
        );
        variant!(
            t_without_equals,
            format!("t,v1={}", sig("NaN")),
            Err(InvalidTimestamp)
        );
        variant!(
            negative_timestamp,
            format!("t=-{T},v1={}", sig(&format!("-{T}"))),
            Err(TooOld {
                age_secs: 2 * T,
                tolerance_secs: 300
            })
        );
        variant!(
            minus_zero_signs_zero,
            format!("t=-0,v1={}", sig("0")),
            Err(TooOld {
                age_secs: T,
                tolerance_secs: 300
            })
        );
        variant!(
            minus_one_is_no_timestamp,
            format!("t=-1,v1={}", sig("-1")),
            Err(NoTimestamp)
        );
        variant!(no_timestamp, format!("v1={}", good()), Err(NoTimestamp));
        variant!(
            empty_v1_beside_a_good_one,
            format!("t={T},v1={},v1=", good()),
            Err(MalformedV1Signature)
        );
        variant!(
            bare_v1_beside_a_good_one,
            format!("t={T},v1,v1={}", good()),
            Err(MalformedV1Signature)
        );
        variant!(
            non_ascii_v1_of_64_units,
            format!("t={T},v1={},v1=é{}", good(), "0".repeat(63)),
            Err(MalformedV1Signature)
        );
        variant!(
            non_ascii_v1_of_other_length,
            format!("t={T},v1={},v1=é", good()),
            Ok(T)
        );
        variant!(empty_header, "", Err(NoTimestamp));
    }

    /// `js_number_text` as it was written with `{:e}`, for the tests.
    fn with_lower_exp(n: f64) -> String {
        if n.abs() < 1e21 || n.is_infinite() || n == 0.0 {
            js_number_text(n)
        } else {
            format!("{n:e}").replacen('e', "e+", 1)
        }
    }

    #[test]
    fn integers_round_as_rusts_float_parser_rounds_them() {
        let max = "179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168738177180919299881250404026184124858368";
        let halfway_above_max = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792";
        let just_below = "179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497791";
        for text in [
            "0",
            "0000",
            "1",
            "9007199254740992",
            "9007199254740993",
            "9007199254740995",
            "18446744073709551615",
            "18446744073709551616",
            "18446744073709552639",
            "18446744073709552640",
            "18446744073709552641",
            "99999999999999999999999",
            "000000000000000000000000000012345678901234567890123",
            max,
            halfway_above_max,
            just_below,
            &"9".repeat(309),
            &"9".repeat(310),
            &format!("1{}", "0".repeat(308)),
            &format!("1{}", "0".repeat(309)),
        ] {
            let ours = integer_to_f64(text.as_bytes());
            let rusts: f64 = text.parse().unwrap();
            assert_eq!(ours.to_bits(), rusts.to_bits(), "{text}");
        }
        assert_eq!(integer_to_f64(halfway_above_max.as_bytes()), f64::INFINITY);
        assert_eq!(integer_to_f64(just_below.as_bytes()), f64::MAX);
    }

    proptest! {
        #[test]
        fn any_integer_rounds_as_rusts_float_parser_rounds_it(text in "[0-9]{1,330}") {
            let rusts: f64 = text.parse().unwrap();
            prop_assert_eq!(integer_to_f64(text.as_bytes()).to_bits(), rusts.to_bits(), "{}", text);
        }

        #[test]
        fn ties_and_near_ties_round_as_rusts_float_parser_rounds_them(
            mantissa in (1u64 << 52)..(1u64 << 53),
            shift in 1u32..=70,
            offset in -2i128..=2,
        ) {
            // Halfway between two neighbouring doubles, and the integers next to it.
            let halfway = (i128::from(mantissa) << shift) + (1i128 << (shift - 1)) + offset;
            let text = halfway.to_string();
            let rusts: f64 = text.parse().unwrap();
            prop_assert_eq!(integer_to_f64(text.as_bytes()).to_bits(), rusts.to_bits(), "{}", text);
        }

        #[test]
        fn integers_below_2_53_print_as_the_float_formatter_prints_them(n in -(1i64 << 53) + 1..(1i64 << 53)) {
            // The fast path (an integer's digits) against `{n}` of the double, which
            // prints the shortest round-trip digits, as `${n}` does.
            let n = n as f64;
            let printed = if n == 0.0 { "0".to_string() } else { format!("{n}") };
            prop_assert_eq!(js_number_text(n), printed);
        }

        #[test]
        fn large_numbers_print_as_lower_exp_printed_them(bits in 0x4440_0000_0000_0000u64..0x7ff0_0000_0000_0000u64, negative in any::<bool>()) {
            // From just below 10^21 (0x4440... is 2^69) to the largest double.
            let n = f64::from_bits(bits) * if negative { -1.0 } else { 1.0 };
            prop_assert_eq!(js_number_text(n), with_lower_exp(n));
        }

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
