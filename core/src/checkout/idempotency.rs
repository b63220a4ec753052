//! The Idempotency-Key of a session creation: a hash of where the key comes from (the
//! page's key and the client's address, or a nonce) and of the exact form, so Stripe
//! gives a double-click the same session and never sees a key reused with other
//! parameters. The call itself is [`crate::stripe::api::StripeApi::create_session`].

use sha2::{Digest, Sha256};

/// Where the Idempotency-Key of a session creation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The page sent an `Idempotency-Key` (one per checkout attempt): a double-click
    /// or a retried request gets the same session back from Stripe, not a second one.
    /// Scoped by the client's address, so a page that sends a constant key makes
    /// shoppers share sessions at worst behind one address, never across the world.
    Client { ip: Option<&'a str>, key: &'a str },
    /// No key from the page: a random value of this request, so two shoppers behind
    /// one address (a NAT, a carrier) never share a session.
    Nonce(&'a str),
}

/// The Idempotency-Key sent to Stripe: a SHA-256 of its source and of the exact form,
/// so any change of product, quantity or discount is a new key and Stripe never sees
/// a key reused with other parameters (which it refuses with a 400).
///
/// `code_tag` ([`super::throttle::code_tag`]) is set when the request carried a
/// promotion code, valid or not, so each code gets its own session.
pub fn idempotency_key(source: KeySource<'_>, code_tag: Option<&str>, form_body: &str) -> String {
    let mut hash = Sha256::new().chain_update(b"stripe-edge:checkout-session:v2\n");
    match source {
        KeySource::Client { ip, key } => {
            hash.update(b"client\n");
            hash.update(ip.unwrap_or("unknown").trim().as_bytes());
            hash.update(b"\n");
            hash.update(key.as_bytes());
        }
        KeySource::Nonce(nonce) => {
            hash.update(b"nonce\n");
            hash.update(nonce.as_bytes());
        }
    }
    if let Some(tag) = code_tag {
        hash.update(b"\ncode\n");
        hash.update(tag.as_bytes());
    }
    hash.update(b"\n");
    hash.update(form_body.as_bytes());
    format!("checkout-{}", hex::encode(hash.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idempotency_key_follows_the_client_key_the_address_and_the_form() {
        let client = |ip, key| KeySource::Client { ip: Some(ip), key };
        let key = idempotency_key(client("203.0.113.7", "click-1"), None, "mode=payment");
        assert_eq!(
            key,
            idempotency_key(client("203.0.113.7", "click-1"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.7", "click-2"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.8", "click-1"), None, "mode=payment")
        );
        assert_ne!(
            key,
            idempotency_key(client("203.0.113.7", "click-1"), None, "mode=subscription")
        );
        // A promotion code, applied or dropped, is a key of its own.
        let with_code = idempotency_key(
            client("203.0.113.7", "click-1"),
            Some("tag1"),
            "mode=payment",
        );
        assert_ne!(key, with_code);
        assert_ne!(
            with_code,
            idempotency_key(
                client("203.0.113.7", "click-1"),
                Some("tag2"),
                "mode=payment"
            )
        );
        // Without a client key, each request has its own.
        let a = idempotency_key(KeySource::Nonce("n1"), None, "mode=payment");
        assert_ne!(
            a,
            idempotency_key(KeySource::Nonce("n2"), None, "mode=payment")
        );
        assert!(key.len() <= 255 && !key.contains("203.0.113.7") && !key.contains("click"));
    }
}
