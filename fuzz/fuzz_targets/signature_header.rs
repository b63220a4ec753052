//! The Stripe-Signature parser never panics, and what it accepts is well formed: a
//! timestamp the SDK would sign (not `NaN`, not its "none" `-1`), printed as JavaScript
//! prints it, and only `v1` values the SDK can compare.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripe_edge_core::stripe::signature::parse_header;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = parse_header(header) {
        assert!(!parsed.v1.is_empty());
        assert!(parsed.v1.iter().all(|v1| !v1.is_empty() && !v1.contains([',', '='])));
        assert!(!parsed.timestamp.is_nan() && parsed.timestamp != -1.0);
        assert!(!parsed.timestamp_text.is_empty() && parsed.timestamp_text != "NaN");
        if parsed.timestamp.is_finite() {
            assert_eq!(parsed.timestamp_text.parse::<f64>().ok(), Some(parsed.timestamp));
        }
    }
});
