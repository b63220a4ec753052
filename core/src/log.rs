//! One JSON object per line per decision, for `wrangler tail`.
//!
//! [`Line`] is the only way values reach a log. Its API admits:
//! - `msg` and keys as `&'static str`, so every message is written in the code (and the
//!   runbook can list them all);
//! - Stripe-style identifiers through [`Line::id`], which keeps only `[A-Za-z0-9_-]`
//!   strings and replaces anything else with `[redacted]`;
//! - numbers and booleans;
//! - free text through [`Line::text`], which runs [`redact`] over it.
//!
//! So a secret, a signature, an API key, an e-mail or a postal address cannot get into a
//! log line unless it is passed as an id that looks like one of Stripe's, and
//! [`looks_like_id`] refuses secret prefixes.

use serde_json::{Map, Value};

use crate::ports::{Level, Sink};

#[derive(Debug, Clone)]
pub struct Line {
    level: Level,
    msg: &'static str,
    fields: Map<String, Value>,
}

impl Line {
    pub fn new(level: Level, msg: &'static str) -> Self {
        Self {
            level,
            msg,
            fields: Map::new(),
        }
    }

    pub fn info(msg: &'static str) -> Self {
        Self::new(Level::Info, msg)
    }

    pub fn warn(msg: &'static str) -> Self {
        Self::new(Level::Warn, msg)
    }

    pub fn error(msg: &'static str) -> Self {
        Self::new(Level::Error, msg)
    }

    pub fn alert(msg: &'static str) -> Self {
        Self::new(Level::Alert, msg)
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// An identifier (event id, session id, step name, event type, setting name).
    pub fn id(mut self, key: &'static str, value: &str) -> Self {
        let safe = if looks_like_id(value) {
            value
        } else {
            "[redacted]"
        };
        self.fields.insert(key.into(), safe.into());
        self
    }

    /// An optional identifier; absent values are left out.
    pub fn opt_id(self, key: &'static str, value: Option<&str>) -> Self {
        match value {
            Some(v) => self.id(key, v),
            None => self,
        }
    }

    /// A fixed label written in the code.
    pub fn label(mut self, key: &'static str, value: &'static str) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// Free text (an error description): redacted before it is kept.
    pub fn text(mut self, key: &'static str, value: &str) -> Self {
        self.fields.insert(key.into(), redact(value).into());
        self
    }

    pub fn num(mut self, key: &'static str, value: u64) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    pub fn flag(mut self, key: &'static str, value: bool) -> Self {
        self.fields.insert(key.into(), value.into());
        self
    }

    /// A list of identifiers, e.g. the names of settings that are missing.
    pub fn ids(mut self, key: &'static str, values: &[&str]) -> Self {
        let safe: Vec<Value> = values
            .iter()
            .map(|v| if looks_like_id(v) { *v } else { "[redacted]" }.into())
            .collect();
        self.fields.insert(key.into(), Value::Array(safe));
        self
    }

    /// `level` and `msg` first, so a line reads well in a terminal; the other fields
    /// follow in key order.
    pub fn to_json(&self) -> String {
        let head = format!(
            r#"{{"level":"{}","msg":{}"#,
            self.level.as_str(),
            Value::from(self.msg)
        );
        if self.fields.is_empty() {
            return head + "}";
        }
        let rest = Value::Object(self.fields.clone()).to_string();
        format!("{head},{}", &rest[1..])
    }

    pub fn emit(&self, sink: &impl Sink) {
        sink.emit(self.level, &self.to_json());
    }
}

/// Prefixes of credentials that must never pass as an identifier.
const SECRET_PREFIXES: [&str; 6] = ["whsec_", "sk_", "rk_", "pk_", "ek_", "lic_"];

/// True for Stripe-style ids, event types and setting names: 1 to 255 of `[A-Za-z0-9_.-]`,
/// not starting with a credential prefix and not a long hex run (a signature).
pub fn looks_like_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !SECRET_PREFIXES.iter().any(|p| value.starts_with(p))
        && !has_long_hex_run(value)
}

fn has_long_hex_run(value: &str) -> bool {
    let mut run = 0;
    for b in value.bytes() {
        run = if b.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 32 {
            return true;
        }
    }
    false
}

/// Masks anything in free text that could be a secret or personal data: words with an
/// `@` (e-mail addresses), credential prefixes, `v1=`/`t=` signature items, long hex runs.
/// Free text is short error descriptions written by this Worker, so masking whole words
/// is cheap and errs on the safe side.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, word) in text.split(' ').enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if is_sensitive_word(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
    }
    out.chars().take(300).collect()
}

fn is_sensitive_word(word: &str) -> bool {
    let bare = word.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '_');
    word.contains('@')
        || word.contains("v1=")
        || word.contains("t=")
        || SECRET_PREFIXES.iter().any(|p| bare.starts_with(p))
        || bare.starts_with("Bearer")
        || has_long_hex_run(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_level_and_msg() {
        let line = Line::info("event accepted")
            .id("event_id", "evt_1")
            .label("status", "accepted")
            .num("duration_ms", 3)
            .to_json();
        let value: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "info");
        assert_eq!(value["msg"], "event accepted");
        assert_eq!(value["event_id"], "evt_1");
        assert_eq!(value["duration_ms"], 3);
        assert!(!line.contains('\n'));
    }

    #[test]
    fn level_and_msg_come_first() {
        let line = Line::warn("step busy").id("a_first_key", "x").to_json();
        assert!(
            line.starts_with(r#"{"level":"warn","msg":"step busy","a_first_key""#),
            "{line}"
        );
        assert_eq!(
            Line::info("bare").to_json(),
            r#"{"level":"info","msg":"bare"}"#
        );
    }

    #[test]
    fn ids_that_are_not_ids_are_redacted() {
        for value in [
            "a@example.com",
            "whsec_abc",
            "sk_test_123",
            "1 Main Street",
            "5257b1f86cb2b8ef2ee34f4a9f1a8a7a8bd0a1a1b2c3d4e5f60718293a4b5c6d",
            "lic_ABC123",
        ] {
            let line = Line::info("x").id("k", value).to_json();
            assert!(line.contains("[redacted]"), "{value} passed as an id");
        }
        let line = Line::info("x")
            .id("k", "checkout.session.completed")
            .to_json();
        assert!(line.contains("checkout.session.completed"));
    }

    #[test]
    fn free_text_is_scrubbed_of_secrets_and_personal_data() {
        let text = "failed for ada@example.com with whsec_abc key sk_live_x header t=1,v1=abcdef Bearer xyz";
        let clean = redact(text);
        for needle in ["ada@", "whsec_abc", "sk_live_x", "v1=abcdef", "Bearer"] {
            assert!(!clean.contains(needle), "{needle} survived: {clean}");
        }
        assert!(clean.starts_with("failed for [redacted]"));
    }

    #[test]
    fn free_text_is_bounded() {
        assert_eq!(redact(&"a ".repeat(1000)).chars().count(), 300);
    }
}
