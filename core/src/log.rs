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

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::ports::{Level, Sink};

#[derive(Debug, Clone)]
pub struct Line {
    level: Level,
    msg: &'static str,
    /// Each key once (a later value replaces an earlier one), in the order first set;
    /// written in key order. A list rather than a map of JSON values: every delivery
    /// writes one line, and the map and its copy cost allocations per field.
    fields: Vec<(&'static str, Field)>,
}

#[derive(Debug, Clone)]
enum Field {
    Text(Cow<'static, str>),
    Num(u64),
    Flag(bool),
    List(Vec<String>),
}

impl Line {
    pub fn new(level: Level, msg: &'static str) -> Self {
        Self {
            level,
            msg,
            fields: Vec::new(),
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
    pub fn id(self, key: &'static str, value: &str) -> Self {
        let safe = if looks_like_id(value) {
            Cow::Owned(value.to_owned())
        } else {
            Cow::Borrowed("[redacted]")
        };
        self.set(key, Field::Text(safe))
    }

    fn set(mut self, key: &'static str, value: Field) -> Self {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.fields.push((key, value)),
        }
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
    pub fn label(self, key: &'static str, value: &'static str) -> Self {
        self.set(key, Field::Text(Cow::Borrowed(value)))
    }

    /// Free text (an error description): redacted before it is kept.
    pub fn text(self, key: &'static str, value: &str) -> Self {
        self.set(key, Field::Text(Cow::Owned(redact(value))))
    }

    pub fn num(self, key: &'static str, value: u64) -> Self {
        self.set(key, Field::Num(value))
    }

    pub fn flag(self, key: &'static str, value: bool) -> Self {
        self.set(key, Field::Flag(value))
    }

    /// A list of identifiers, e.g. the names of settings that are missing.
    pub fn ids(self, key: &'static str, values: &[&str]) -> Self {
        let safe: Vec<String> = values
            .iter()
            .map(|v| if looks_like_id(v) { *v } else { "[redacted]" }.to_owned())
            .collect();
        self.set(key, Field::List(safe))
    }

    /// `level` and `msg` first, so a line reads well in a terminal; the other fields
    /// follow in key order.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + 48 * self.fields.len());
        out.push_str(r#"{"level":"#);
        push_json_string(&mut out, self.level.as_str());
        out.push_str(r#","msg":"#);
        push_json_string(&mut out, self.msg);
        let mut order: Vec<&(&'static str, Field)> = self.fields.iter().collect();
        order.sort_unstable_by_key(|(key, _)| *key);
        for (key, value) in order {
            out.push(',');
            push_json_string(&mut out, key);
            out.push(':');
            match value {
                Field::Text(text) => push_json_string(&mut out, text),
                Field::Num(n) => {
                    let _ = write!(out, "{n}");
                }
                Field::Flag(b) => out.push_str(if *b { "true" } else { "false" }),
                Field::List(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        push_json_string(&mut out, item);
                    }
                    out.push(']');
                }
            }
        }
        out.push('}');
        out
    }

    pub fn emit(&self, sink: &impl Sink) {
        sink.emit(self.level, &self.to_json());
    }
}

/// `text` as a JSON string, escaped as serde_json escapes it.
pub(crate) fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
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
    use proptest::prelude::*;
    use serde_json::Value;

    proptest! {
        /// Strings are escaped as serde_json escapes them, so every line reads back.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(text in any::<String>()) {
            let mut out = String::new();
            push_json_string(&mut out, &text);
            prop_assert_eq!(out, serde_json::to_string(&text).unwrap());
        }
    }

    #[test]
    fn a_key_set_twice_keeps_the_last_value_and_keys_come_in_order() {
        let line = Line::warn("m")
            .label("status", "a")
            .num("b", 1)
            .flag("a", true)
            .ids("c", &["x", "sk_live_1"])
            .label("status", "refused")
            .to_json();
        assert_eq!(
            line,
            r#"{"level":"warn","msg":"m","a":true,"b":1,"c":["x","[redacted]"],"status":"refused"}"#
        );
    }

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
