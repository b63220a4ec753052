//! The verifier never panics on any header and body, and never accepts a delivery
//! whose signature it did not compute: the first line of input is the header, the rest
//! the body; a correctly signed copy of the same body must verify.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripe_edge_core::stripe::signature::{sign_header, verify_at};

const SECRET: &str = "whsec_fuzz";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (head, body) = data.split_at(split);
    let body = body.get(1..).unwrap_or_default();
    if let Ok(header) = std::str::from_utf8(head) {
        let _ = verify_at(Some(header), body, &[SECRET], 300, NOW);
    }
    let signed = sign_header(SECRET, NOW, body);
    assert_eq!(verify_at(Some(&signed), body, &[SECRET], 300, NOW), Ok(NOW));
    assert!(verify_at(Some(&signed), body, &["whsec_other"], 300, NOW).is_err());
});
