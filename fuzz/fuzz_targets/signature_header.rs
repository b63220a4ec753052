//! The Stripe-Signature parser never panics, and what it accepts is well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripe_edge_core::stripe::signature::parse_header;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = parse_header(header) {
        assert!(!parsed.v1.is_empty());
        assert!(parsed.timestamp >= 0);
        assert_eq!(parsed.timestamp_text.parse::<i64>().ok(), Some(parsed.timestamp));
    }
});
