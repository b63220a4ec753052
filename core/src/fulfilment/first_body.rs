//! A retry sends the body of the first attempt, or nothing.
//!
//! Each step's request body is built again on every attempt (from the event that
//! opened the step, or from the session fetched from Stripe by a replay, the queue,
//! the cron run or the success page). Before the first call the engine keeps a digest
//! of the body in `steps.body_digest`: one HMAC-SHA256 of the whole body and a short
//! one per field (a JSON leaf, named by its path, `metadata.provider_customer_id`).
//! A later attempt whose body would differ is not sent, since an idempotent upstream
//! refuses a key reused with another body and the step would fail for good anyway:
//! it fails permanently, naming the fields, and ops decide (fix the cause and replay).
//!
//! The digests are keyed by `STRIPE_WEBHOOK_SECRET` (each configured secret is tried,
//! so a rotation keeps matching), so the ledger holds nothing a dictionary could turn
//! back into an e-mail address or a country: no customer data.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::fulfilment::plan::Step;
use crate::ports::ledger::Ledger;
use crate::ports::HttpRequest;
use crate::settings::Secret;
use crate::upstream::StepError;

/// How a permanent failure for a changed body starts (the engine alerts on it).
pub const BODY_CHANGED: &str = "body changed since the first attempt: ";

/// Hex digits kept per field: enough to tell a change, too few to carry a value.
const FIELD_HEX: usize = 16;

/// What `steps.body_digest` holds (compact JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub body: String,
    pub fields: BTreeMap<String, String>,
}

/// The digests of `body` under `key`. A body that is not JSON is one field, `body`.
pub fn digests(body: &str, key: &[u8]) -> Digests {
    let mut fields = BTreeMap::new();
    match serde_json::from_str::<Value>(body) {
        Ok(value) => leaves(&value, String::new(), &mut |path, leaf| {
            let hex = tag(key, &format!("{path}\n{leaf}"));
            fields.insert(path, hex[..FIELD_HEX].to_string());
        }),
        Err(_) => {
            let hex = tag(key, body);
            fields.insert("body".to_string(), hex[..FIELD_HEX].to_string());
        }
    }
    Digests {
        body: tag(key, body),
        fields,
    }
}

/// What `steps.body_digest` keeps for `body`: its digests under `key`, as JSON.
pub fn stored_form(body: &str, key: &[u8]) -> String {
    serde_json::to_string(&digests(body, key)).expect("digests serialise")
}

/// Every leaf of a JSON value with its dotted path; arrays are one leaf.
fn leaves(value: &Value, path: String, each: &mut impl FnMut(String, String)) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (name, inner) in map {
                let inner_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                leaves(inner, inner_path, each);
            }
        }
        leaf => each(
            if path.is_empty() { "body".into() } else { path },
            leaf.to_string(),
        ),
    }
}

fn tag(key: &[u8], text: &str) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(b"stripe-edge:step-body:v1\n");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `None` when `body` is the first body `stored` describes (under any of `keys`);
/// else the fields that differ (added, removed or changed), or `*` when none can be
/// named (the stored digests are unreadable, or every key changed).
pub fn changed(stored: &str, body: &str, keys: &[&[u8]]) -> Option<Vec<String>> {
    let Ok(first) = serde_json::from_str::<Digests>(stored) else {
        return Some(vec!["*".into()]);
    };
    let mut best: Option<Vec<String>> = None;
    for key in keys {
        let now = digests(body, key);
        if now.body == first.body {
            return None;
        }
        let names: Vec<String> = first
            .fields
            .keys()
            .chain(now.fields.keys())
            .filter(|name| first.fields.get(*name) != now.fields.get(*name))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let same_any = first
            .fields
            .iter()
            .any(|(k, v)| now.fields.get(k) == Some(v));
        if same_any && best.as_ref().is_none_or(|b| names.len() < b.len()) {
            best = Some(names);
        }
    }
    Some(best.unwrap_or_else(|| vec!["*".into()]))
}

/// The keys the digests are made under: the first is used to write.
pub fn keys(secrets: &[Secret]) -> Vec<&[u8]> {
    if secrets.is_empty() {
        return vec![b"".as_slice()];
    }
    secrets.iter().map(|s| s.expose().as_bytes()).collect()
}

/// One claimed attempt of one step: admits its request before the call.
pub struct FirstBody<'a, L> {
    pub ledger: &'a L,
    pub session_id: &'a str,
    pub step: Step,
    pub attempt: u32,
    /// `steps.body_digest` as the claim read it.
    pub pinned: Option<String>,
    pub keys: Vec<&'a [u8]>,
    pub now_ms: u64,
}

impl<L: Ledger> FirstBody<'_, L> {
    /// Records the digests of the first body; refuses a later body that differs.
    pub async fn admit(&self, request: &HttpRequest) -> Result<(), StepError> {
        let body = request.body.as_deref().unwrap_or("");
        match &self.pinned {
            Some(stored) => match changed(stored, body, &self.keys) {
                None => Ok(()),
                Some(fields) => Err(StepError::Permanent(format!(
                    "{BODY_CHANGED}{}",
                    fields.join(",")
                ))),
            },
            None => {
                let first = stored_form(body, self.keys[0]);
                self.ledger
                    .pin_body(
                        self.session_id,
                        self.step.name(),
                        self.attempt,
                        &first,
                        self.now_ms,
                    )
                    .await
                    .map_err(|e| StepError::Retryable(format!("ledger {} failed", e.operation)))?;
                Ok(())
            }
        }
    }
}

/// The fields a permanent failure for a changed body names, if it is one.
pub fn changed_fields(error: &StepError) -> Option<String> {
    match error {
        StepError::Permanent(message) => message.strip_prefix(BODY_CHANGED).map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"whsec_test";

    #[test]
    fn the_same_body_matches_and_a_changed_field_is_named() {
        let first =
            r#"{"slug":"pro","metadata":{"provider_customer_id":"cus_1","email":"a@x.example"}}"#;
        let stored = serde_json::to_string(&digests(first, KEY)).unwrap();
        assert_eq!(changed(&stored, first, &[KEY]), None);
        let later =
            r#"{"slug":"pro","metadata":{"provider_customer_id":null,"email":"a@x.example"}}"#;
        assert_eq!(
            changed(&stored, later, &[KEY]),
            Some(vec!["metadata.provider_customer_id".to_string()])
        );
        let added = r#"{"slug":"pro","metadata":{"provider_customer_id":"cus_1","email":"a@x.example","x":1}}"#;
        assert_eq!(
            changed(&stored, added, &[KEY]),
            Some(vec!["metadata.x".to_string()])
        );
    }

    #[test]
    fn the_digests_hold_no_value_and_depend_on_the_key() {
        let body = r#"{"shipping":{"address":{"country":"FR"}},"to":["ada@example.com"]}"#;
        let stored = serde_json::to_string(&digests(body, KEY)).unwrap();
        assert!(!stored.contains("FR") && !stored.contains("ada"));
        let plain = hex::encode(<Sha256 as sha2::Digest>::digest(body.as_bytes()));
        assert!(!stored.contains(&plain));
        assert_ne!(digests(body, KEY), digests(body, b"whsec_other"));
        // A rotated secret still matches under the old one, and names nothing under none.
        assert_eq!(changed(&stored, body, &[b"whsec_new", KEY]), None);
        assert_eq!(
            changed(&stored, body, &[b"whsec_new"]),
            Some(vec!["*".into()])
        );
        assert_eq!(changed("not json", body, &[KEY]), Some(vec!["*".into()]));
    }
}
