//! Event and Checkout Session decoding never panics, whatever the signed body holds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stripe_edge_core::stripe::event::decode;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = decode(data) {
        assert!(!event.id.is_empty() && !event.kind.is_empty());
        if let Ok(session) = event.checkout_session() {
            let _ = (session.shipping_details(), session.slug(), session.email());
        }
    }
});
