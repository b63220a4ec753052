//! Typed settings read from the Worker's environment (`[vars]`, `.dev.vars`, secrets).
//!
//! Reading never fails: every problem is collected as a [`Problem`] that names the
//! setting and never its value, so `/healthz` and the logs can report it safely. A
//! missing or unusable webhook secret leaves [`Config::webhook_secrets`] empty, and an
//! empty list refuses every delivery (fail closed).
//!
//! Every setting, with its default and bounds, is listed once in
//! [`registry::SETTINGS`]; the numbers here take theirs from it.

pub mod catalogue;
pub mod registry;

use std::fmt;

use self::catalogue::Catalogue;
use self::registry::Setting;
use crate::relay::RelaySigner;

pub use self::registry::REVOKE_ON_DISPUTE;
pub use self::registry::{
    ADMIN_TOKEN, ALLOWED_ORIGINS, APP_URL, CHECKOUT_CODE_ATTEMPTS, CHECKOUT_CODE_WINDOW_SECS,
    DEAD_LETTER_QUEUE, FORWARD_SIGNING_SECRET, FULFILLMENT_MAX_ATTEMPTS, LICENSE_SERVER_API_KEY,
    LICENSE_SERVER_URL, MAX_BODY_BYTES, PRODUCTS, QUEUE_RETRY_BASE_SECS, RETENTION_DAYS,
    SHIPPING_API_KEY, SHIPPING_URL, STRIPE_API_BASE, STRIPE_API_KEY, STRIPE_API_VERSION,
    STRIPE_LIVEMODE, STRIPE_WEBHOOK_SECRET, STRIPE_WEBHOOK_TOLERANCE_SECS, UPSTREAM_TIMEOUT_MS,
};
pub use self::registry::{
    EMAIL_API_BASE, EMAIL_CONFIRMATION_SUBJECT, EMAIL_CONFIRMATION_TEXT, EMAIL_FROM, EMAIL_SUBJECT,
    EMAIL_SUPPORT, EMAIL_TEXT, RESEND_API_KEY,
};

/// `STRIPE_API_BASE` when unset or unusable, from its registry entry.
const DEFAULT_STRIPE_API_BASE: &str = match registry::STRIPE_BASE.default {
    Some(base) => base,
    None => panic!("STRIPE_API_BASE needs a default"),
};

/// A registry default that must exist (checked when it compiles).
const fn default_of(setting: &Setting) -> &'static str {
    match setting.default {
        Some(value) => value,
        None => panic!("a setting without its default"),
    }
}

/// The license e-mail's body when `EMAIL_TEXT` is unset.
pub const DEFAULT_EMAIL_TEXT: &str = "Thank you for buying {product}.\n\nYour license key: {license_key}\n\nOrder: {order_id}\nQuestions? Write to {support}.";
/// The order confirmation's body when `EMAIL_CONFIRMATION_TEXT` is unset.
pub const DEFAULT_CONFIRMATION_TEXT: &str = "Thank you for your order of {product}.\n\nWe are preparing it for shipping.\n\nOrder: {order_id}\nQuestions? Write to {support}.";

/// A secret string whose `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([REDACTED])")
    }
}

impl AsRef<[u8]> for Secret {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// What is wrong with one setting. Carries the setting's name, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub kind: ProblemKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// Required and absent or empty.
    Missing,
    /// Present but unusable; the text says why without quoting the value.
    Invalid(&'static str),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ProblemKind::Missing => write!(f, "{} is not set", self.setting),
            ProblemKind::Invalid(why) => write!(f, "{} is invalid: {why}", self.setting),
        }
    }
}

/// Where a fulfilment service lives and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    pub url: String,
    pub api_key: Secret,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub webhook_secrets: Vec<Secret>,
    pub tolerance_secs: u64,
    pub max_body_bytes: u64,
    /// When set, events whose `livemode` differs are never fulfilled.
    pub livemode: Option<bool>,
    pub license: Option<ServiceSettings>,
    pub shipping: Option<ServiceSettings>,
    pub stripe_api_key: Option<Secret>,
    pub stripe_api_base: String,
    /// `STRIPE_API_VERSION`: the `Stripe-Version` of every Stripe API call.
    pub stripe_api_version: String,
    pub upstream_timeout_ms: u64,
    /// Signs calls to the license server and shipping system (Standard Webhooks).
    pub forward_signer: Option<RelaySigner>,
    /// Bearer token of the ops API; unset = no `/admin/` routes at all.
    pub admin_token: Option<Secret>,
    pub retention_days: u64,
    /// Wall time per cron run for reconciliation (`RECONCILE_BUDGET_MS`).
    pub reconcile_budget_ms: u64,
    /// Queue mode: attempts per step before it is failed and the message dead-lettered.
    /// Keep it at the consumer's `max_retries` + 1 in wrangler.toml.
    pub max_attempts: u32,
    /// Queue mode: the first retry delay, doubled per attempt up to 15 minutes.
    pub retry_base_secs: u32,
    /// Queue mode: the dead-letter queue's name (`DEAD_LETTER_QUEUE`); a batch from it
    /// is alerted and acked. Unset, no queue is treated as a dead-letter queue.
    pub dead_letter_queue: Option<String>,
    /// `POST /checkout`; optional: the webhook path never needs it.
    pub checkout: CheckoutSettings,
    /// The e-mail step (Resend); optional.
    pub email: EmailSettings,
    /// `REVOKE_ON_DISPUTE`: a new dispute takes back (default) or is only recorded.
    pub revoke_on_dispute: bool,
    pub problems: Vec<Problem>,
}

/// The e-mail step's settings (Resend). The step is planned only while `api_key` is
/// set; `from` missing then fails it closed (`StepError::NotConfigured`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailSettings {
    /// `EMAIL_API_BASE` without a trailing slash.
    pub api_base: String,
    pub api_key: Option<Secret>,
    pub from: Option<String>,
    /// The templates, `\n` already turned into line breaks.
    pub subject: String,
    pub text: String,
    pub confirmation_subject: String,
    pub confirmation_text: String,
    /// `EMAIL_SUPPORT`, else the address inside `EMAIL_FROM`.
    pub support: Option<String>,
}

/// The settings of server-side checkout (`POST /checkout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckoutSettings {
    /// `PRODUCTS`; `None` when unset or malformed (then `/checkout` answers 503).
    pub products: Option<Catalogue>,
    /// `APP_URL` without a trailing slash: the success and cancel pages live under it.
    pub app_url: Option<String>,
    /// `ALLOWED_ORIGINS`, lowercased; empty = no browser origin may call `/checkout`.
    pub allowed_origins: Vec<String>,
    /// Requests carrying a promotion code allowed per client per window.
    pub code_attempts: u32,
    pub code_window_secs: u64,
    /// `GET /orders/{id}` lookups of ids the ledger does not know, per client per window.
    pub lookup_attempts: u32,
    pub lookup_window_secs: u64,
    /// `POST /checkout` requests that reach Stripe, per client per window.
    pub session_attempts: u32,
    pub session_window_secs: u64,
}

impl Config {
    /// Reads every setting through `get` (which returns `None` for an absent name).
    pub fn load(get: impl Fn(&str) -> Option<String>) -> Self {
        let mut problems = Vec::new();
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        let webhook_secrets = webhook_secrets(get(STRIPE_WEBHOOK_SECRET), &mut problems);
        let tolerance_secs = number(whole!(WEBHOOK_TOLERANCE), &get, &mut problems);
        let max_body_bytes = number(whole!(BODY_LIMIT), &get, &mut problems);
        let upstream_timeout_ms = number(whole!(UPSTREAM_TIMEOUT), &get, &mut problems);
        let livemode = boolean(STRIPE_LIVEMODE, get(STRIPE_LIVEMODE), &mut problems);
        let license = service(
            (LICENSE_SERVER_URL, get(LICENSE_SERVER_URL)),
            (LICENSE_SERVER_API_KEY, get(LICENSE_SERVER_API_KEY)),
            &mut problems,
        );
        let shipping = service(
            (SHIPPING_URL, get(SHIPPING_URL)),
            (SHIPPING_API_KEY, get(SHIPPING_API_KEY)),
            &mut problems,
        );
        let stripe_api_base = match get(STRIPE_API_BASE) {
            Some(base) if is_http_url(&base) => base.trim_end_matches('/').to_string(),
            Some(_) => {
                invalid(&mut problems, STRIPE_API_BASE, "not an http(s) URL");
                DEFAULT_STRIPE_API_BASE.to_string()
            }
            None => DEFAULT_STRIPE_API_BASE.to_string(),
        };
        let stripe_api_version = match get(STRIPE_API_VERSION) {
            Some(version) if is_api_version(version.trim()) => version.trim().to_string(),
            Some(_) => {
                invalid(
                    &mut problems,
                    STRIPE_API_VERSION,
                    "not a Stripe API version (YYYY-MM-DD or YYYY-MM-DD.name)",
                );
                const { default_of(&registry::STRIPE_VERSION) }.to_string()
            }
            None => const { default_of(&registry::STRIPE_VERSION) }.to_string(),
        };
        let forward_signer = get(FORWARD_SIGNING_SECRET).and_then(|secret| {
            let signer = RelaySigner::from_secret(secret.trim());
            if signer.is_none() {
                invalid(
                    &mut problems,
                    FORWARD_SIGNING_SECRET,
                    "not whsec_ followed by base64",
                );
            }
            signer
        });
        let retention_days = number(whole!(RETENTION), &get, &mut problems);
        let reconcile_budget_ms = number(whole!(RECONCILE_BUDGET), &get, &mut problems);
        let max_attempts = number(whole!(MAX_ATTEMPTS), &get, &mut problems) as u32;
        let retry_base_secs = number(whole!(RETRY_BASE), &get, &mut problems) as u32;
        let checkout = checkout_settings(&get, &mut problems);
        let email = email_settings(&get, &mut problems);
        let revoke_on_dispute = match get(REVOKE_ON_DISPUTE).as_deref().map(str::trim) {
            None | Some("true") => true,
            Some("false") => false,
            Some(_) => {
                invalid(
                    &mut problems,
                    REVOKE_ON_DISPUTE,
                    "must be true or false (true used)",
                );
                true
            }
        };
        Config {
            revoke_on_dispute,
            checkout,
            email,
            retry_base_secs,
            max_attempts,
            admin_token: admin_token(get(ADMIN_TOKEN), &mut problems),
            dead_letter_queue: get(DEAD_LETTER_QUEUE).map(|q| q.trim().to_string()),
            retention_days,
            reconcile_budget_ms,
            forward_signer,
            webhook_secrets,
            tolerance_secs,
            max_body_bytes,
            livemode,
            license,
            shipping,
            stripe_api_key: get(STRIPE_API_KEY).map(Secret::new),
            stripe_api_base,
            stripe_api_version,
            upstream_timeout_ms,
            problems,
        }
    }

    /// Whether `STRIPE_LIVEMODE` is set to something other than `true` or `false`: then
    /// [`Config::livemode`] is `None` but nothing may be fulfilled (fail closed).
    pub fn livemode_is_invalid(&self) -> bool {
        self.problems.iter().any(|p| p.setting == STRIPE_LIVEMODE)
    }

    /// Names of required settings that are absent.
    pub fn missing(&self) -> Vec<&'static str> {
        self.names(|kind| matches!(kind, ProblemKind::Missing))
    }

    /// Names of settings that are present but unusable.
    pub fn invalid(&self) -> Vec<&'static str> {
        self.names(|kind| matches!(kind, ProblemKind::Invalid(_)))
    }

    fn names(&self, keep: impl Fn(&ProblemKind) -> bool) -> Vec<&'static str> {
        let mut names: Vec<_> = self
            .problems
            .iter()
            .filter(|p| keep(&p.kind))
            .map(|p| p.setting)
            .collect();
        names.dedup();
        names
    }

    /// Optional settings that are not set: the steps that need them fail closed.
    pub fn unset_optional(&self) -> Vec<&'static str> {
        let mut unset = Vec::new();
        if self.license.is_none() {
            unset.extend([LICENSE_SERVER_URL, LICENSE_SERVER_API_KEY]);
        }
        if self.shipping.is_none() {
            unset.extend([SHIPPING_URL, SHIPPING_API_KEY]);
        }
        if self.stripe_api_key.is_none() {
            unset.push(STRIPE_API_KEY);
        }
        if self.email.api_key.is_none() {
            unset.push(RESEND_API_KEY);
        }
        // Checkout's settings: a malformed one is `invalid`, not unset.
        let invalid = self.invalid();
        let checkout = &self.checkout;
        for (name, is_set) in [
            (PRODUCTS, checkout.products.is_some()),
            (APP_URL, checkout.app_url.is_some()),
            (ALLOWED_ORIGINS, !checkout.allowed_origins.is_empty()),
        ] {
            if !is_set && !invalid.contains(&name) {
                unset.push(name);
            }
        }
        unset
    }
}

/// Secrets are separated by commas or whitespace so a rotation can list old and new.
/// A quoted secret or one without the `whsec_` prefix is reported and left out: it
/// would never match, and guessing what was meant is not ours to do with a secret.
fn webhook_secrets(raw: Option<String>, problems: &mut Vec<Problem>) -> Vec<Secret> {
    let Some(raw) = raw else {
        problems.push(Problem {
            setting: STRIPE_WEBHOOK_SECRET,
            kind: ProblemKind::Missing,
        });
        return Vec::new();
    };
    if raw.trim() != raw {
        // Still usable (whitespace separates secrets), but a sign of a copy-paste slip.
        invalid(
            problems,
            STRIPE_WEBHOOK_SECRET,
            "has surrounding whitespace (ignored)",
        );
    }
    let mut secrets = Vec::new();
    for item in raw.split(|c: char| c == ',' || c.is_whitespace()) {
        if item.is_empty() {
            continue;
        }
        if item.starts_with(['"', '\'']) || item.ends_with(['"', '\'']) {
            invalid(
                problems,
                STRIPE_WEBHOOK_SECRET,
                "a secret is wrapped in quotes",
            );
        } else if !item.starts_with("whsec_") || item.len() <= "whsec_".len() {
            invalid(
                problems,
                STRIPE_WEBHOOK_SECRET,
                "a secret does not start with whsec_",
            );
        } else {
            secrets.push(Secret::new(item));
        }
    }
    if secrets.is_empty() && !problems.iter().any(|p| p.setting == STRIPE_WEBHOOK_SECRET) {
        invalid(problems, STRIPE_WEBHOOK_SECRET, "no secret in the value");
    }
    secrets
}

/// What [`number`] reads of a registry entry, taken from it when the code compiles:
/// passing the entry itself would link its `meaning` (documentation only) into the
/// Worker.
#[derive(Clone, Copy)]
struct Whole {
    name: &'static str,
    default: u64,
    low: u64,
    high: u64,
}

impl Whole {
    const fn of(setting: &Setting) -> Self {
        let (low, high) = match setting.bounds {
            Some(bounds) => bounds,
            None => (u64::MIN, u64::MAX),
        };
        Self {
            name: setting.name,
            default: setting.default_number(),
            low,
            high,
        }
    }
}

/// The [`Whole`] of the registry entry `$entry`, computed when the code compiles.
macro_rules! whole {
    ($entry:ident) => {
        const { Whole::of(&registry::$entry) }
    };
}
use whole;

/// A whole number with the default and bounds of its registry entry. An unusable value
/// is reported and the default used: a typo must not switch a limit off.
fn number(
    setting: Whole,
    get: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> u64 {
    let default = setting.default;
    let Some(raw) = get(setting.name) else {
        return default;
    };
    match raw.trim().parse::<u64>() {
        Ok(n) if (setting.low..=setting.high).contains(&n) => n,
        Ok(_) => {
            invalid(problems, setting.name, "out of range (default used)");
            default
        }
        Err(_) => {
            invalid(problems, setting.name, "not a whole number (default used)");
            default
        }
    }
}

fn boolean(name: &'static str, raw: Option<String>, problems: &mut Vec<Problem>) -> Option<bool> {
    match raw?.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => {
            // Unknown intent about live money: fulfil nothing rather than guess.
            invalid(
                problems,
                name,
                "must be true or false (nothing is fulfilled)",
            );
            None
        }
    }
}

/// The shortest `ADMIN_TOKEN` accepted: 32 characters (e.g. `openssl rand -hex 16`)
/// cannot be guessed online, and the ops API can replay purchases.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 32;

/// A shorter token is reported by name and the ops API stays closed (every `/admin/`
/// route answers 404), rather than guarded by something guessable.
fn admin_token(raw: Option<String>, problems: &mut Vec<Problem>) -> Option<Secret> {
    let token = raw?.trim().to_string();
    if token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
        invalid(
            problems,
            ADMIN_TOKEN,
            "shorter than 32 characters (the ops API stays closed)",
        );
        return None;
    }
    Some(Secret::new(token))
}

/// A service needs both its URL and its key; one without the other is a half-done setup.
fn service(
    url: (&'static str, Option<String>),
    key: (&'static str, Option<String>),
    problems: &mut Vec<Problem>,
) -> Option<ServiceSettings> {
    match (url.1, key.1) {
        (Some(u), Some(k)) if is_http_url(&u) => Some(ServiceSettings {
            url: u.trim_end_matches('/').to_string(),
            api_key: Secret::new(k),
        }),
        (Some(_), Some(_)) => {
            invalid(problems, url.0, "not an http(s) URL");
            None
        }
        (Some(_), None) => {
            problems.push(Problem {
                setting: key.0,
                kind: ProblemKind::Missing,
            });
            None
        }
        (None, Some(_)) => {
            problems.push(Problem {
                setting: url.0,
                kind: ProblemKind::Missing,
            });
            None
        }
        (None, None) => None,
    }
}

/// Checkout's settings. None is required by the webhook path: unset ones show in
/// `unset_optional`, malformed ones are `invalid` (and `/checkout` answers 503).
fn checkout_settings(
    get: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> CheckoutSettings {
    let products = get(PRODUCTS).and_then(|raw| match catalogue::parse(&raw) {
        Ok(catalogue) => Some(catalogue),
        Err(why) => {
            invalid(problems, PRODUCTS, why);
            None
        }
    });
    let app_url = get(APP_URL).and_then(|url| {
        let url = url.trim();
        if is_http_url(url) && !url.contains(['?', '#']) {
            Some(url.trim_end_matches('/').to_string())
        } else {
            invalid(
                problems,
                APP_URL,
                "not an http(s) URL without query or fragment",
            );
            None
        }
    });
    let allowed_origins = match get(ALLOWED_ORIGINS) {
        Some(raw) => {
            let (origins, problem) = crate::checkout::cors::parse_origins(&raw);
            if let Some(why) = problem {
                invalid(problems, ALLOWED_ORIGINS, why);
            }
            origins
        }
        None => Vec::new(),
    };
    CheckoutSettings {
        products,
        app_url,
        allowed_origins,
        code_attempts: number(whole!(CODE_ATTEMPTS), get, problems) as u32,
        code_window_secs: number(whole!(CODE_WINDOW), get, problems),
        lookup_attempts: number(whole!(LOOKUP_ATTEMPTS), get, problems) as u32,
        lookup_window_secs: number(whole!(LOOKUP_WINDOW), get, problems),
        session_attempts: number(whole!(SESSION_ATTEMPTS), get, problems) as u32,
        session_window_secs: number(whole!(SESSION_WINDOW), get, problems),
    }
}

/// The e-mail step's settings. With `RESEND_API_KEY` set, `EMAIL_FROM` is required (a
/// missing one is reported and the step fails closed); a body template without its
/// placeholder is reported and the built-in one used.
fn email_settings(
    get: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> EmailSettings {
    let default_base = const { default_of(&registry::EMAIL_BASE) };
    let api_base = match get(EMAIL_API_BASE) {
        Some(base) if is_http_url(base.trim()) => base.trim().trim_end_matches('/').to_string(),
        Some(_) => {
            invalid(problems, EMAIL_API_BASE, "not an http(s) URL");
            default_base.to_string()
        }
        None => default_base.to_string(),
    };
    let api_key = get(RESEND_API_KEY).map(|k| Secret::new(k.trim()));
    let from = get(EMAIL_FROM)
        .map(|f| f.trim().to_string())
        .and_then(|from| {
            let address = address_in(&from);
            let usable = address.contains('@') && !from.contains(['\r', '\n']);
            if !usable {
                invalid(problems, EMAIL_FROM, "not an e-mail address");
            }
            usable.then_some(from)
        });
    if api_key.is_some() && from.is_none() && !problems.iter().any(|p| p.setting == EMAIL_FROM) {
        problems.push(Problem {
            setting: EMAIL_FROM,
            kind: ProblemKind::Missing,
        });
    }
    let mut template = |name: &'static str, default: &str, needs: Option<&str>| {
        let value = get(name).map(|t| t.replace("\\n", "\n"));
        match (value, needs) {
            (Some(t), Some(placeholder)) if !t.contains(placeholder) => {
                invalid(
                    problems,
                    name,
                    "lacks its placeholder (the built-in one is used)",
                );
                default.replace("\\n", "\n")
            }
            (Some(t), _) => t,
            (None, _) => default.replace("\\n", "\n"),
        }
    };
    let subject = template(
        EMAIL_SUBJECT,
        const { default_of(&registry::SUBJECT) },
        None,
    );
    let text = template(EMAIL_TEXT, DEFAULT_EMAIL_TEXT, Some("{license_key}"));
    let confirmation_subject = template(
        EMAIL_CONFIRMATION_SUBJECT,
        const { default_of(&registry::CONFIRMATION_SUBJECT) },
        None,
    );
    let confirmation_text = template(EMAIL_CONFIRMATION_TEXT, DEFAULT_CONFIRMATION_TEXT, None);
    let support = get(EMAIL_SUPPORT)
        .map(|s| s.trim().to_string())
        .or_else(|| from.as_deref().map(|f| address_in(f).to_string()));
    EmailSettings {
        api_base,
        api_key,
        from,
        subject,
        text,
        confirmation_subject,
        confirmation_text,
        support,
    }
}

/// The address of `Name <address>`, or the whole value.
fn address_in(from: &str) -> &str {
    match (from.rfind('<'), from.rfind('>')) {
        (Some(open), Some(close)) if open < close => from[open + 1..close].trim(),
        _ => from.trim(),
    }
}

fn is_http_url(value: &str) -> bool {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    matches!(rest, Some(host) if !host.is_empty() && !host.contains(char::is_whitespace))
}

/// `2025-03-31` or `2025-03-31.basil`: it goes into a header, so nothing else is sent.
fn is_api_version(value: &str) -> bool {
    let (date, name) = value.split_once('.').unwrap_or((value, "x"));
    let b = date.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|c| c.is_ascii_lowercase())
}

fn invalid(problems: &mut Vec<Problem>, setting: &'static str, why: &'static str) {
    problems.push(Problem {
        setting,
        kind: ProblemKind::Invalid(why),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Config {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let config = load(&[(STRIPE_WEBHOOK_SECRET, "whsec_abc")]);
        assert_eq!(config.webhook_secrets, vec![Secret::new("whsec_abc")]);
        assert_eq!(config.tolerance_secs, 300);
        assert_eq!(config.max_body_bytes, 1_048_576);
        assert_eq!(config.stripe_api_base, "https://api.stripe.com");
        assert_eq!(config.stripe_api_version, "2025-03-31.basil");
        assert_eq!(config.upstream_timeout_ms, 5_000);
        assert!(config.problems.is_empty());
    }

    #[test]
    fn the_stripe_api_version_is_a_version_or_the_default() {
        let secret = (STRIPE_WEBHOOK_SECRET, "whsec_abc");
        for good in ["2024-06-20", "2025-09-30.clover"] {
            let config = load(&[secret, (STRIPE_API_VERSION, good)]);
            assert_eq!(config.stripe_api_version, good);
            assert!(config.problems.is_empty(), "{good}");
        }
        for bad in [
            "latest",
            "2025-03-31.",
            "2025-3-31",
            "2025-03-31.basil\r\nx: y",
        ] {
            let config = load(&[secret, (STRIPE_API_VERSION, bad)]);
            assert_eq!(config.stripe_api_version, "2025-03-31.basil", "{bad}");
            assert_eq!(config.invalid(), vec![STRIPE_API_VERSION], "{bad}");
        }
    }

    #[test]
    fn a_missing_secret_is_reported_and_leaves_no_secret() {
        let config = load(&[]);
        assert!(config.webhook_secrets.is_empty());
        assert_eq!(config.missing(), vec![STRIPE_WEBHOOK_SECRET]);
    }

    #[test]
    fn secrets_split_on_commas_and_whitespace_for_rotation() {
        let config = load(&[(STRIPE_WEBHOOK_SECRET, "whsec_old, whsec_new\twhsec_next")]);
        let secrets: Vec<_> = config.webhook_secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["whsec_old", "whsec_new", "whsec_next"]);
        assert!(config.problems.is_empty());
    }

    #[test]
    fn bad_secrets_are_reported_by_name_and_left_out() {
        for value in ["\"whsec_abc\"", "sk_test_abc", "whsec_", "'whsec_abc'"] {
            let config = load(&[(STRIPE_WEBHOOK_SECRET, value)]);
            assert!(
                config.webhook_secrets.is_empty(),
                "{value} must not be used"
            );
            assert_eq!(config.invalid(), vec![STRIPE_WEBHOOK_SECRET]);
            let reported: String = config.problems.iter().map(|p| p.to_string()).collect();
            assert!(!reported.contains(value.trim_matches(['"', '\''])) || value == "whsec_");
        }
    }

    #[test]
    fn surrounding_whitespace_is_reported_but_the_secret_still_works() {
        let config = load(&[(STRIPE_WEBHOOK_SECRET, " whsec_abc\n")]);
        assert_eq!(config.webhook_secrets, vec![Secret::new("whsec_abc")]);
        assert_eq!(config.invalid(), vec![STRIPE_WEBHOOK_SECRET]);
    }

    #[test]
    fn a_bad_number_falls_back_to_the_default_and_is_named() {
        let config = load(&[
            (STRIPE_WEBHOOK_SECRET, "whsec_abc"),
            (STRIPE_WEBHOOK_TOLERANCE_SECS, "abc"),
            (MAX_BODY_BYTES, "0"),
            (UPSTREAM_TIMEOUT_MS, "60000"),
        ]);
        assert_eq!(config.tolerance_secs, 300);
        assert_eq!(config.max_body_bytes, 1_048_576);
        assert_eq!(config.upstream_timeout_ms, 5_000);
        assert_eq!(
            config.invalid(),
            vec![
                STRIPE_WEBHOOK_TOLERANCE_SECS,
                MAX_BODY_BYTES,
                UPSTREAM_TIMEOUT_MS
            ]
        );
    }

    #[test]
    fn livemode_is_strictly_true_or_false() {
        assert_eq!(load(&[(STRIPE_LIVEMODE, "true")]).livemode, Some(true));
        assert_eq!(load(&[(STRIPE_LIVEMODE, "false")]).livemode, Some(false));
        let config = load(&[(STRIPE_LIVEMODE, "yes")]);
        assert_eq!(config.livemode, None);
        assert!(config.invalid().contains(&STRIPE_LIVEMODE));
    }

    #[test]
    fn a_service_needs_both_its_url_and_its_key() {
        let config = load(&[(LICENSE_SERVER_URL, "https://licenses.example/")]);
        assert!(config.license.is_none());
        assert!(config.missing().contains(&LICENSE_SERVER_API_KEY));
        let config = load(&[
            (LICENSE_SERVER_URL, "https://l.example/"),
            (LICENSE_SERVER_API_KEY, "k"),
        ]);
        assert_eq!(config.license.unwrap().url, "https://l.example");
    }

    #[test]
    fn a_forward_secret_must_be_whsec_base64() {
        let config = load(&[(
            FORWARD_SIGNING_SECRET,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )]);
        assert!(config.forward_signer.is_some() && config.invalid().is_empty());
        let config = load(&[(FORWARD_SIGNING_SECRET, "not-a-secret")]);
        assert!(config.forward_signer.is_none());
        assert_eq!(config.invalid(), vec![FORWARD_SIGNING_SECRET]);
    }

    #[test]
    fn checkout_settings_are_optional_for_the_webhook_path() {
        let config = load(&[(STRIPE_WEBHOOK_SECRET, "whsec_abc")]);
        assert!(config.problems.is_empty());
        assert_eq!(config.checkout.products, None);
        assert_eq!(config.checkout.code_attempts, 10);
        assert_eq!(config.checkout.code_window_secs, 600);
        assert_eq!(config.checkout.lookup_attempts, 20);
        assert_eq!(config.checkout.lookup_window_secs, 600);
        let unset = config.unset_optional();
        for name in [PRODUCTS, APP_URL, ALLOWED_ORIGINS] {
            assert!(unset.contains(&name), "{name}");
        }
    }

    #[test]
    fn checkout_settings_are_read_and_normalised() {
        let config = load(&[
            (
                PRODUCTS,
                r#"{"pro":{"price":"price_1","mode":"payment","max_quantity":2}}"#,
            ),
            (APP_URL, "https://shop.example/store/"),
            (
                ALLOWED_ORIGINS,
                "https://shop.example, https://www.shop.example",
            ),
            (CHECKOUT_CODE_ATTEMPTS, "3"),
            (CHECKOUT_CODE_WINDOW_SECS, "60"),
        ]);
        let checkout = &config.checkout;
        assert_eq!(checkout.products.as_ref().map(|c| c.len()), Some(1));
        assert_eq!(
            checkout.app_url.as_deref(),
            Some("https://shop.example/store")
        );
        assert_eq!(checkout.allowed_origins.len(), 2);
        assert_eq!((checkout.code_attempts, checkout.code_window_secs), (3, 60));
        assert!(config.invalid().is_empty());
        assert!(!config.unset_optional().contains(&PRODUCTS));
    }

    #[test]
    fn a_malformed_catalogue_is_invalid_by_name_never_by_value() {
        let raw = r#"{"pro":{"price":"price_SECRETISH","mode":"rent","max_quantity":1}}"#;
        let config = load(&[(PRODUCTS, raw), (APP_URL, "shop.example")]);
        assert_eq!(config.checkout.products, None);
        assert_eq!(config.invalid(), vec![PRODUCTS, APP_URL]);
        assert!(!config.unset_optional().contains(&PRODUCTS));
        let reported: String = config.problems.iter().map(|p| p.to_string()).collect();
        assert!(!reported.contains("price_SECRETISH") && !reported.contains("rent"));
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let config = load(&[
            (STRIPE_WEBHOOK_SECRET, "whsec_hidden"),
            (STRIPE_API_KEY, "sk_test_hidden"),
        ]);
        let printed = format!("{config:?}");
        assert!(!printed.contains("whsec_hidden") && !printed.contains("sk_test_hidden"));
    }
}
