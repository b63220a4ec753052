//! The e-mail step: `POST {EMAIL_API_BASE}/emails` (Resend) with the buyer's license
//! key, or an order confirmation for shipped goods without a license.
//!
//! The body is built only from what cannot change between attempts: the session's
//! e-mail address and id, its product slug, the license step's stored result and the
//! settings, so every retry sends the same bytes under the same Idempotency-Key (Resend
//! refuses a key reused with another body). The license key comes from the license
//! step's row: the engine claims this step only once the license step is neither
//! pending nor running (`Step::after`) and hands it the row as that round trip read it.
//! A license that failed fails the e-mail too, so a replay (which resets failed steps)
//! runs both again, in order.

use serde::Deserialize;
use serde_json::json;

use crate::fulfilment::first_body::FirstBody;
use crate::fulfilment::plan::{Purchase, Step};
use crate::ports::ledger::{Ledger, StepRow, StepState};
use crate::ports::{Clock, HttpRequest, Method, Upstream};
use crate::settings::{Config, EmailSettings, Secret, EMAIL_FROM, RESEND_API_KEY};
use crate::stripe::event::CheckoutSession;
use crate::upstream::{call, Callee, Deadline, StepError};

/// The step's result when the session has no e-mail address: done, nothing sent.
pub const NO_EMAIL: &str = "none:no_email";

/// What `{product}` says when the session names no product (shipped goods).
pub const ANY_PRODUCT: &str = "your order";

/// Which e-mail a purchase gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Letter {
    /// The license e-mail, with the key the license step stored.
    License(String),
    /// No license step: an order confirmation.
    Confirmation,
}

/// Runs the step and returns Resend's e-mail id (or [`NO_EMAIL`]).
/// `license` is the license step's row as the engine last read it (in the round trip
/// that claimed this step, after the license settled).
pub async fn run(
    purchase: &Purchase,
    config: &Config,
    license: Option<&StepRow>,
    upstream: &impl Upstream,
    clock: &impl Clock,
    deadline: Deadline,
    first: &FirstBody<'_, impl Ledger>,
) -> Result<String, StepError> {
    let Some(request) = step_request(purchase, config, license)? else {
        return Ok(NO_EMAIL.to_string());
    };
    first.admit(&request).await?;
    let body = call(upstream, clock, deadline, Callee::Email, request).await?;
    email_id(&body)
}

/// The step's request (`None`: the session has no address, nothing to send).
pub fn step_request(
    purchase: &Purchase,
    config: &Config,
    license: Option<&StepRow>,
) -> Result<Option<HttpRequest>, StepError> {
    let (api_key, from) = configured(&config.email)?;
    let session = &purchase.session;
    let Some(to) = session.email() else {
        return Ok(None);
    };
    let letter = letter(license)?;
    let key = Step::Email.idempotency_key(&session.id);
    Ok(Some(request(
        &config.email,
        api_key,
        from,
        session,
        to,
        &letter,
        key,
    )))
}

/// The e-mail a purchase gets, from its license step's row (`None`: it has none).
pub fn letter(license: Option<&StepRow>) -> Result<Letter, StepError> {
    let Some(row) = license else {
        return Ok(Letter::Confirmation);
    };
    match (row.state, row.result.as_deref()) {
        (StepState::Done, Some(key)) if !key.is_empty() => Ok(Letter::License(key.to_string())),
        (StepState::Done, _) => Err(StepError::Permanent(
            "the license step is done without a key".into(),
        )),
        (StepState::Failed, _) => Err(StepError::Permanent(
            "no license to send: the license step failed".into(),
        )),
        (StepState::Pending | StepState::Running, _) => {
            Err(StepError::Retryable("waiting for the license step".into()))
        }
        // The money went back before the license was made: nothing to send.
        (StepState::Cancelled, _) => Err(StepError::Permanent(
            "no license to send: the license step was cancelled".into(),
        )),
    }
}

/// The Resend key and sender, or the setting to set (fail closed).
pub fn configured(email: &EmailSettings) -> Result<(&Secret, &str), StepError> {
    let key = email
        .api_key
        .as_ref()
        .ok_or(StepError::NotConfigured(RESEND_API_KEY))?;
    let from = email
        .from
        .as_deref()
        .ok_or(StepError::NotConfigured(EMAIL_FROM))?;
    Ok((key, from))
}

/// The call to Resend. `idempotency_key` is the step's, or a resend's own.
pub fn request(
    email: &EmailSettings,
    api_key: &Secret,
    from: &str,
    session: &CheckoutSession,
    to: &str,
    letter: &Letter,
    idempotency_key: String,
) -> HttpRequest {
    let (subject, text) = compose(email, session, letter);
    let body = json!({
        "from": from,
        "to": [to],
        "subject": subject,
        "text": text,
        "html": html(&text),
    });
    HttpRequest {
        method: Method::Post,
        url: format!("{}/emails", email.api_base),
        headers: vec![
            ("authorization", format!("Bearer {}", api_key.expose())),
            ("content-type", "application/json".into()),
            ("idempotency-key", idempotency_key),
        ],
        body: Some(body.to_string()),
        timeout_ms: 0,
    }
}

/// The subject and plain-text body: the templates with their placeholders filled.
pub fn compose(
    email: &EmailSettings,
    session: &CheckoutSession,
    letter: &Letter,
) -> (String, String) {
    let (subject, text, license_key) = match letter {
        Letter::License(key) => (&email.subject, &email.text, key.as_str()),
        Letter::Confirmation => (&email.confirmation_subject, &email.confirmation_text, ""),
    };
    let values = [
        ("product", session.slug().unwrap_or(ANY_PRODUCT)),
        ("license_key", license_key),
        ("order_id", session.id.as_str()),
        ("support", email.support.as_deref().unwrap_or("")),
    ];
    let subject = fill(subject, &values).replace(['\r', '\n'], " ");
    (subject, fill(text, &values))
}

/// Replaces each `{name}` of `values` in one pass (a value is never scanned again, so a
/// value containing `{license_key}` stays as it is); unknown `{…}` are kept.
pub fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let known = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        });
        match known {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The HTML part: the filled text, escaped, a paragraph per blank-line block.
pub fn html(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            format!(
                "<p>{}</p>",
                escape(p.trim_matches('\n')).replace('\n', "<br>")
            )
        })
        .collect();
    format!(
        "<!doctype html><html><body>{}</body></html>",
        paragraphs.concat()
    )
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[derive(Deserialize)]
struct Sent {
    id: Option<String>,
}

/// Resend's e-mail id from a 2xx answer; an answer without one is permanent.
pub fn email_id(body: &[u8]) -> Result<String, StepError> {
    serde_json::from_slice::<Sent>(body)
        .ok()
        .and_then(|s| s.id)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| StepError::Permanent("e-mail service answered without an id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Config;
    use crate::stripe::event::decode;

    fn config(extra: &[(&str, &str)]) -> Config {
        let mut pairs = vec![
            ("STRIPE_WEBHOOK_SECRET", "whsec_unit"),
            ("RESEND_API_KEY", "re_unit"),
            ("EMAIL_FROM", "Shop <orders@shop.example>"),
        ];
        pairs.extend_from_slice(extra);
        Config::load(|name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    fn session(slug: &str) -> CheckoutSession {
        let body = format!(
            r#"{{"id":"evt_1","object":"event","type":"checkout.session.completed","data":{{"object":{{
            "id":"cs_1","payment_status":"paid","metadata":{{"slug":"{slug}"}},
            "customer_details":{{"email":"ada@example.com"}}}}}}}}"#
        );
        decode(body.as_bytes()).unwrap().checkout_session().unwrap()
    }

    #[test]
    fn the_request_is_resends_with_the_documented_body() {
        let config = config(&[]);
        let (key, from) = configured(&config.email).unwrap();
        let letter = Letter::License("LIC-1".into());
        let request = request(
            &config.email,
            key,
            from,
            &session("pro"),
            "ada@example.com",
            &letter,
            Step::Email.idempotency_key("cs_1"),
        );
        assert_eq!(request.url, "https://api.resend.com/emails");
        assert_eq!(request.header("authorization"), Some("Bearer re_unit"));
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("idempotency-key"),
            Some("stripe-edge:cs_1:email")
        );
        let body: serde_json::Value =
            serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
        assert_eq!(body["from"], "Shop <orders@shop.example>");
        assert_eq!(body["to"], json!(["ada@example.com"]));
        assert_eq!(body["subject"], "Your license for pro");
        assert_eq!(
            body["text"],
            "Thank you for buying pro.\n\nYour license key: LIC-1\n\nOrder: cs_1\nQuestions? Write to orders@shop.example."
        );
        assert_eq!(
            body["html"],
            "<!doctype html><html><body><p>Thank you for buying pro.</p><p>Your license key: LIC-1</p><p>Order: cs_1<br>Questions? Write to orders@shop.example.</p></body></html>"
        );
    }

    #[test]
    fn templates_fill_placeholders_once_and_html_is_escaped() {
        let config = config(&[
            ("EMAIL_SUBJECT", "Key\nfor {product} <{order_id}>"),
            (
                "EMAIL_TEXT",
                r"<b>{product}</b> & {license_key} {unknown} {support}\n{",
            ),
            ("EMAIL_SUPPORT", "help@shop.example"),
        ]);
        assert!(config.problems.is_empty(), "{:?}", config.problems);
        let letter = Letter::License("<k&{order_id}>".into());
        let (subject, text) = compose(&config.email, &session("pro"), &letter);
        assert_eq!(subject, "Key for pro <cs_1>");
        assert_eq!(
            text,
            "<b>pro</b> & <k&{order_id}> {unknown} help@shop.example\n{"
        );
        assert_eq!(
            html(&text),
            "<!doctype html><html><body><p>&lt;b&gt;pro&lt;/b&gt; &amp; &lt;k&amp;{order_id}&gt; {unknown} help@shop.example<br>{</p></body></html>"
        );
    }

    #[test]
    fn shipped_goods_without_a_license_get_a_confirmation() {
        let config = config(&[]);
        let mut shipped = session("pro");
        shipped.metadata = None;
        let (subject, text) = compose(&config.email, &shipped, &Letter::Confirmation);
        assert_eq!(subject, "Your order cs_1");
        assert!(text.starts_with("Thank you for your order of your order."));
        assert!(!text.contains("license"));
    }

    #[test]
    fn a_license_template_without_its_key_is_refused_and_from_is_needed() {
        let config = config(&[("EMAIL_TEXT", "no key here")]);
        assert_eq!(config.invalid(), vec!["EMAIL_TEXT"]);
        assert!(config.email.text.contains("{license_key}"));
        let keyless = Config::load(|name| (name == "RESEND_API_KEY").then(|| "re_1".to_string()));
        assert!(keyless.missing().contains(&EMAIL_FROM));
        assert_eq!(
            configured(&keyless.email).unwrap_err(),
            StepError::NotConfigured(EMAIL_FROM)
        );
    }

    #[test]
    fn the_letter_follows_the_license_step() {
        let row = |state, result: Option<&str>| StepRow {
            step: "license".into(),
            event_id: "evt_1".into(),
            state,
            lease_until: None,
            attempts: 1,
            last_error: None,
            result: result.map(str::to_string),
            updated_at: 0,
        };
        assert_eq!(letter(None), Ok(Letter::Confirmation));
        assert_eq!(
            letter(Some(&row(StepState::Done, Some("k")))),
            Ok(Letter::License("k".into()))
        );
        assert!(letter(Some(&row(StepState::Failed, None)))
            .unwrap_err()
            .is_permanent());
        assert!(matches!(
            letter(Some(&row(StepState::Pending, None))),
            Err(StepError::Retryable(_))
        ));
    }

    #[test]
    fn resends_answer_carries_the_id() {
        assert_eq!(email_id(br#"{"id":"em_1"}"#), Ok("em_1".into()));
        assert!(email_id(br#"{}"#).unwrap_err().is_permanent());
    }
}
