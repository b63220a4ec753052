//! `GET /healthz`, and the configuration-problems line: what the Worker says about its
//! own settings and database, by setting name, never by value.

use serde_json::json;

use super::webhook::Reply;
use crate::log::Line;
use crate::settings::Config;

/// `GET /healthz`: always 200 (the Worker answered); `ok` says whether it can take
/// deliveries, and the lists name settings, never values.
pub fn healthz(config: &Config, database_ok: bool) -> Reply {
    let missing = config.missing();
    let invalid = config.invalid();
    let ok = !config.webhook_secrets.is_empty()
        && missing.is_empty()
        && invalid.is_empty()
        && database_ok;
    Reply::json(
        200,
        json!({
            "ok": ok,
            "service": "stripe-edge",
            "database": if database_ok { "ok" } else { "unavailable" },
            "missing": missing,
            "invalid": invalid,
            "unset_optional": config.unset_optional(),
            // POST /checkout sells only what PRODUCTS lists: 0 = checkout is off.
            "checkout_products": config.checkout.products.as_ref().map_or(0, |c| c.len()),
        }),
    )
}

/// The log line of configuration problems, once per isolate.
pub fn config_line(config: &Config) -> Option<Line> {
    if config.problems.is_empty() {
        return None;
    }
    Some(
        Line::error("configuration problems")
            .ids("missing", &config.missing())
            .ids("invalid", &config.invalid()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_names_bad_settings_without_values() {
        let config = Config::load(|name| match name {
            "STRIPE_WEBHOOK_SECRET" => Some("sk_test_wrong".into()),
            "STRIPE_WEBHOOK_TOLERANCE_SECS" => Some("abc".into()),
            _ => None,
        });
        let reply = healthz(&config, true);
        let text = reply.body.clone();
        assert_eq!(reply.value()["ok"], false);
        assert!(
            text.contains("STRIPE_WEBHOOK_SECRET")
                && text.contains("STRIPE_WEBHOOK_TOLERANCE_SECS")
        );
        assert!(!text.contains("sk_test_wrong") && !text.contains("abc\""));
    }
}
