//! `application/x-www-form-urlencoded`, as the Stripe API takes its POST parameters.
//!
//! Every byte outside RFC 3986's unreserved set is percent-encoded, in keys too, so a
//! nested key `line_items[0][price]` travels as `line_items%5B0%5D%5Bprice%5D` and a
//! value is decoded by Stripe to exactly what we pushed: `{CHECKOUT_SESSION_ID}` in a
//! success URL arrives as those literal braces, encoded once (never `%257B`). The
//! percent-encoding is the Stripe API client's, which encodes URL values the same way.

use crate::stripe::api::encode_component;

/// Ordered key/value pairs; keys may repeat, as Stripe's list parameters need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pairs: Vec<(String, String)>,
}

impl Form {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.pairs.push((key.into(), value.into()));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The request body: `key=value` pairs joined by `&`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            out.push_str(&encode_component(key));
            out.push('=');
            out.push_str(&encode_component(value));
        }
        out
    }
}

#[cfg(test)]
/// Decodes a form body the way a server does, for round-trip checks.
pub(crate) fn decode(body: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        let mut bytes = Vec::new();
        let raw = s.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'%' {
                bytes.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                bytes.push(if raw[i] == b'+' { b' ' } else { raw[i] });
                i += 1;
            }
        }
        String::from_utf8(bytes).unwrap()
    };
    body.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap();
            (unescape(k), unescape(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_keys_have_their_brackets_encoded() {
        let mut form = Form::new();
        form.push("line_items[0][price]", "price_1")
            .push("mode", "payment");
        assert_eq!(
            form.encode(),
            "line_items%5B0%5D%5Bprice%5D=price_1&mode=payment"
        );
    }

    #[test]
    fn the_session_id_placeholder_is_encoded_once_and_decodes_literally() {
        let url = "https://shop.example/success?session_id={CHECKOUT_SESSION_ID}";
        let mut form = Form::new();
        form.push("success_url", url);
        let body = form.encode();
        assert_eq!(
            body,
            "success_url=https%3A%2F%2Fshop.example%2Fsuccess%3Fsession_id%3D%7BCHECKOUT_SESSION_ID%7D"
        );
        assert!(!body.contains("%25"), "double encoding: {body}");
        assert_eq!(decode(&body), vec![("success_url".into(), url.into())]);
    }

    #[test]
    fn unicode_spaces_and_separators_round_trip() {
        let mut form = Form::new();
        form.push("metadata[note]", "Grüße & 100% = ✓ a+b")
            .push("k", "");
        let body = form.encode();
        assert!(body.is_ascii());
        assert_eq!(
            body,
            "metadata%5Bnote%5D=Gr%C3%BC%C3%9Fe%20%26%20100%25%20%3D%20%E2%9C%93%20a%2Bb&k="
        );
        assert_eq!(
            decode(&body),
            vec![
                ("metadata[note]".into(), "Grüße & 100% = ✓ a+b".into()),
                ("k".into(), String::new())
            ]
        );
    }

    #[test]
    fn unreserved_characters_pass_through() {
        assert_eq!(encode_component("AZaz09-._~"), "AZaz09-._~");
    }
}
