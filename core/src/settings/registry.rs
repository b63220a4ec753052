//! The settings registry: one table, [`SETTINGS`], of every setting the Worker reads.
//!
//! A setting is named in four places besides the code that reads it: the README's
//! "Configuration" table, `.dev.vars.example`, and the `[vars]` blocks of
//! `wrangler.toml`. Each entry here is the one place its name, default and bounds are
//! written: [`super::Config::load`] takes a number's default and bounds from its
//! entry, and `core/tests/settings_registry.rs` holds the three documents to this table
//! both ways, so a setting cannot be added, renamed or dropped in one place only.
//!
//! The name constants live here too (and are re-exported by [`super`]): an entry refers
//! to its constant, so each name is spelled once.

/// What a setting belongs to, so a reader of the table can see what each one is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Taking and verifying Stripe's deliveries.
    Webhook,
    /// The steps that fulfil a purchase (license server, shipping system).
    Fulfilment,
    /// Calls to the Stripe API (shipping, replays, the cron run, queue mode, checkout).
    StripeApi,
    /// The ops API (`/admin/`).
    Ops,
    /// The scheduled run (re-drives and pruning).
    Maintenance,
    /// Queue mode: the consumer's retries.
    QueueMode,
    /// Server-side checkout (`POST /checkout`).
    Checkout,
}

/// One setting: its name and everything the documents must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    /// The value used when the setting is unset (or, for a number, unusable); `None`
    /// when unset means "off" or "not configured".
    pub default: Option<&'static str>,
    /// Inclusive range of a whole-number setting; `None` for every other kind.
    pub bounds: Option<(u64, u64)>,
    /// A secret goes in `.dev.vars` or `wrangler secret put`, never in `wrangler.toml`.
    pub secret: bool,
    pub feature: Feature,
    /// Without it the Worker takes no delivery at all (`/healthz` says `ok: false`).
    pub required: bool,
    /// One line for a reader of the table; the README has the full story.
    pub meaning: &'static str,
}

impl Setting {
    /// The default of a number setting as a number. Evaluated at compile time for every
    /// bounded entry (below), so it cannot fail at run time for one of them.
    pub const fn default_number(&self) -> u64 {
        let Some(text) = self.default else {
            panic!("a number setting needs a default");
        };
        let digits = text.as_bytes();
        assert!(!digits.is_empty(), "an empty number default");
        let mut value: u64 = 0;
        let mut at = 0;
        while at < digits.len() {
            assert!(
                digits[at].is_ascii_digit(),
                "a number default is not digits"
            );
            value = value * 10 + (digits[at] - b'0') as u64;
            at += 1;
        }
        value
    }
}

pub const STRIPE_WEBHOOK_SECRET: &str = "STRIPE_WEBHOOK_SECRET";
pub const STRIPE_WEBHOOK_TOLERANCE_SECS: &str = "STRIPE_WEBHOOK_TOLERANCE_SECS";
pub const MAX_BODY_BYTES: &str = "MAX_BODY_BYTES";
pub const STRIPE_LIVEMODE: &str = "STRIPE_LIVEMODE";
pub const LICENSE_SERVER_URL: &str = "LICENSE_SERVER_URL";
pub const LICENSE_SERVER_API_KEY: &str = "LICENSE_SERVER_API_KEY";
pub const SHIPPING_URL: &str = "SHIPPING_URL";
pub const SHIPPING_API_KEY: &str = "SHIPPING_API_KEY";
pub const STRIPE_API_KEY: &str = "STRIPE_API_KEY";
pub const STRIPE_API_BASE: &str = "STRIPE_API_BASE";
pub const STRIPE_API_VERSION: &str = "STRIPE_API_VERSION";
pub const UPSTREAM_TIMEOUT_MS: &str = "UPSTREAM_TIMEOUT_MS";
pub const FORWARD_SIGNING_SECRET: &str = "FORWARD_SIGNING_SECRET";
pub const ADMIN_TOKEN: &str = "ADMIN_TOKEN";
pub const RETENTION_DAYS: &str = "RETENTION_DAYS";
pub const RECONCILE_BUDGET_MS: &str = "RECONCILE_BUDGET_MS";
pub const FULFILLMENT_MAX_ATTEMPTS: &str = "FULFILLMENT_MAX_ATTEMPTS";
pub const QUEUE_RETRY_BASE_SECS: &str = "QUEUE_RETRY_BASE_SECS";
pub const PRODUCTS: &str = "PRODUCTS";
pub const APP_URL: &str = "APP_URL";
pub const ALLOWED_ORIGINS: &str = "ALLOWED_ORIGINS";
pub const CHECKOUT_CODE_ATTEMPTS: &str = "CHECKOUT_CODE_ATTEMPTS";
pub const CHECKOUT_CODE_WINDOW_SECS: &str = "CHECKOUT_CODE_WINDOW_SECS";
pub const DEAD_LETTER_QUEUE: &str = "DEAD_LETTER_QUEUE";
pub const EMAIL_API_BASE: &str = "EMAIL_API_BASE";
pub const RESEND_API_KEY: &str = "RESEND_API_KEY";
pub const EMAIL_FROM: &str = "EMAIL_FROM";
pub const EMAIL_SUBJECT: &str = "EMAIL_SUBJECT";
pub const EMAIL_TEXT: &str = "EMAIL_TEXT";
pub const EMAIL_CONFIRMATION_SUBJECT: &str = "EMAIL_CONFIRMATION_SUBJECT";
pub const EMAIL_CONFIRMATION_TEXT: &str = "EMAIL_CONFIRMATION_TEXT";
pub const EMAIL_SUPPORT: &str = "EMAIL_SUPPORT";
pub const ORDER_LOOKUP_ATTEMPTS: &str = "ORDER_LOOKUP_ATTEMPTS";
pub const ORDER_LOOKUP_WINDOW_SECS: &str = "ORDER_LOOKUP_WINDOW_SECS";
pub const CHECKOUT_SESSION_ATTEMPTS: &str = "CHECKOUT_SESSION_ATTEMPTS";
pub const CHECKOUT_SESSION_WINDOW_SECS: &str = "CHECKOUT_SESSION_WINDOW_SECS";

/// An entry with the fields most settings share (optional, not secret, no default).
const fn plain(name: &'static str, feature: Feature, meaning: &'static str) -> Setting {
    Setting {
        name,
        default: None,
        bounds: None,
        secret: false,
        feature,
        required: false,
        meaning,
    }
}

/// An optional whole-number setting with its default and inclusive bounds.
const fn whole(
    name: &'static str,
    feature: Feature,
    default: &'static str,
    bounds: (u64, u64),
    meaning: &'static str,
) -> Setting {
    Setting {
        default: Some(default),
        bounds: Some(bounds),
        ..plain(name, feature, meaning)
    }
}

/// An optional secret.
const fn secret(name: &'static str, feature: Feature, meaning: &'static str) -> Setting {
    Setting {
        secret: true,
        ..plain(name, feature, meaning)
    }
}

pub const WEBHOOK_SECRET: Setting = Setting {
    required: true,
    ..secret(
        STRIPE_WEBHOOK_SECRET,
        Feature::Webhook,
        "Signing secrets (whsec_…) of the webhook endpoint, comma- or space-separated while rotating.",
    )
};
pub const WEBHOOK_TOLERANCE: Setting = whole(
    STRIPE_WEBHOOK_TOLERANCE_SECS,
    Feature::Webhook,
    "300",
    (1, 86_400),
    "Oldest accepted signature timestamp, in seconds.",
);
pub const BODY_LIMIT: Setting = whole(
    MAX_BODY_BYTES,
    Feature::Webhook,
    "1048576",
    (1_024, 100 * 1_048_576),
    "Largest accepted delivery body, in bytes.",
);
pub const LIVEMODE: Setting = plain(
    STRIPE_LIVEMODE,
    Feature::Webhook,
    "true or false: an event whose livemode differs is acknowledged, never fulfilled.",
);
pub const LICENSE_URL: Setting = plain(
    LICENSE_SERVER_URL,
    Feature::Fulfilment,
    "License server base URL (POST {url}/generate); needs its key.",
);
pub const LICENSE_KEY: Setting = secret(
    LICENSE_SERVER_API_KEY,
    Feature::Fulfilment,
    "Bearer key sent to the license server.",
);
pub const SHIPPING_ENDPOINT: Setting = plain(
    SHIPPING_URL,
    Feature::Fulfilment,
    "Shipping system endpoint (POST {url}); needs its key.",
);
pub const SHIPPING_KEY: Setting = secret(
    SHIPPING_API_KEY,
    Feature::Fulfilment,
    "Bearer key sent to the shipping system.",
);
/// The whole delivery must finish within 10 s, hence at most 9 s for one call.
pub const UPSTREAM_TIMEOUT: Setting = whole(
    UPSTREAM_TIMEOUT_MS,
    Feature::Fulfilment,
    "5000",
    (100, 9_000),
    "Timeout of each upstream call, in milliseconds.",
);
pub const FORWARD_SIGNING: Setting = secret(
    FORWARD_SIGNING_SECRET,
    Feature::Fulfilment,
    "Standard Webhooks secret (whsec_ + base64) signing calls to the fulfilment services.",
);
pub const STRIPE_KEY: Setting = secret(
    STRIPE_API_KEY,
    Feature::StripeApi,
    "Stripe secret or restricted key: sessions, events and /checkout.",
);
pub const STRIPE_BASE: Setting = Setting {
    default: Some("https://api.stripe.com"),
    ..plain(
        STRIPE_API_BASE,
        Feature::StripeApi,
        "Base URL of the Stripe API (the tests point it at a stand-in).",
    )
};
/// The version every Stripe API call is sent with (`Stripe-Version`), so the shapes
/// this Worker parses (`collected_information`, a promotion code's `coupon`) never
/// follow the account's default version. Change it only with the code that reads them.
pub const STRIPE_VERSION: Setting = Setting {
    default: Some("2025-03-31.basil"),
    ..plain(
        STRIPE_API_VERSION,
        Feature::StripeApi,
        "Stripe-Version sent on every Stripe API call; the shapes the code reads are this version's.",
    )
};
pub const ADMIN: Setting = secret(
    ADMIN_TOKEN,
    Feature::Ops,
    "Bearer token of the ops API (/admin/), at least 32 characters; unset or shorter, those routes do not exist.",
);
/// 30 days outlasts Stripe's 3-day retry window and its 30-day event history.
pub const RETENTION: Setting = whole(
    RETENTION_DAYS,
    Feature::Maintenance,
    "30",
    (4, 3_650),
    "Days the cron run keeps events (those of unfinished purchases stay).",
);
/// Wall time one scheduled run gives reconciliation; a backlog longer than that is
/// finished by later runs (each moves the cursor over the windows it completed).
pub const RECONCILE_BUDGET: Setting = whole(
    RECONCILE_BUDGET_MS,
    Feature::Maintenance,
    "20000",
    (1_000, 240_000),
    "Milliseconds one cron run spends on reconciliation before it leaves the rest to the next.",
);
/// Keep it at the queue consumer's `max_retries` + 1 in wrangler.toml.
pub const MAX_ATTEMPTS: Setting = whole(
    FULFILLMENT_MAX_ATTEMPTS,
    Feature::QueueMode,
    "6",
    (1, 100),
    "Queue mode: attempts per step before it fails and the message is dead-lettered.",
);
pub const RETRY_BASE: Setting = whole(
    QUEUE_RETRY_BASE_SECS,
    Feature::QueueMode,
    "10",
    (1, 900),
    "Queue mode: the first retry delay in seconds, doubled per attempt up to 15 minutes.",
);
pub const CATALOGUE: Setting = plain(
    PRODUCTS,
    Feature::Checkout,
    "The checkout catalogue, JSON: slug to Stripe Price, mode and max quantity.",
);
pub const SHOP_URL: Setting = plain(
    APP_URL,
    Feature::Checkout,
    "The shop's base URL: Stripe sends shoppers back to its /success and /cancel pages.",
);
pub const ORIGINS: Setting = plain(
    ALLOWED_ORIGINS,
    Feature::Checkout,
    "Comma-separated browser origins whose pages may call /checkout and /orders/.",
);
pub const CODE_ATTEMPTS: Setting = whole(
    CHECKOUT_CODE_ATTEMPTS,
    Feature::Checkout,
    "10",
    (1, 1_000),
    "Requests carrying a promotion code allowed per client per window.",
);
pub const CODE_WINDOW: Setting = whole(
    CHECKOUT_CODE_WINDOW_SECS,
    Feature::Checkout,
    "600",
    (10, 86_400),
    "Length of that window, in seconds.",
);
/// Only lookups of ids the ledger does not know count: each costs a Stripe API call.
pub const LOOKUP_ATTEMPTS: Setting = whole(
    ORDER_LOOKUP_ATTEMPTS,
    Feature::Checkout,
    "20",
    (1, 1_000),
    "GET /orders/{id} lookups of ids the ledger does not know, per client per window.",
);
/// At most a day: the cron run deletes counts of windows older than that.
pub const LOOKUP_WINDOW: Setting = whole(
    ORDER_LOOKUP_WINDOW_SECS,
    Feature::Checkout,
    "600",
    (10, 86_400),
    "Length of the order lookup window, in seconds.",
);

pub const EMAIL_BASE: Setting = Setting {
    default: Some("https://api.resend.com"),
    ..plain(
        EMAIL_API_BASE,
        Feature::Fulfilment,
        "Base URL of Resend's API (POST {base}/emails; the tests point it at a stand-in).",
    )
};
pub const RESEND_KEY: Setting = secret(
    RESEND_API_KEY,
    Feature::Fulfilment,
    "Resend API key (re_…): when set, every new purchase gets the e-mail step; needs EMAIL_FROM.",
);
pub const FROM: Setting = plain(
    EMAIL_FROM,
    Feature::Fulfilment,
    "Sender of the e-mails, on a domain verified with Resend (`Shop <orders@shop.example>`).",
);
pub const SUBJECT: Setting = Setting {
    default: Some("Your license for {product}"),
    ..plain(
        EMAIL_SUBJECT,
        Feature::Fulfilment,
        "Subject template of the license e-mail.",
    )
};
pub const TEXT: Setting = plain(
    EMAIL_TEXT,
    Feature::Fulfilment,
    "Body template of the license e-mail (must contain {license_key}); unset: the built-in one.",
);
pub const CONFIRMATION_SUBJECT: Setting = Setting {
    default: Some("Your order {order_id}"),
    ..plain(
        EMAIL_CONFIRMATION_SUBJECT,
        Feature::Fulfilment,
        "Subject template of the order confirmation (shipped goods without a license).",
    )
};
pub const CONFIRMATION_TEXT: Setting = plain(
    EMAIL_CONFIRMATION_TEXT,
    Feature::Fulfilment,
    "Body template of the order confirmation; unset: the built-in one.",
);
pub const SUPPORT: Setting = plain(
    EMAIL_SUPPORT,
    Feature::Fulfilment,
    "The support address the templates' {support} names; unset: EMAIL_FROM's address.",
);

/// Every setting [`super::Config::load`] reads, grouped by feature.
pub const DEAD_LETTERS: Setting = plain(
    DEAD_LETTER_QUEUE,
    Feature::QueueMode,
    "Queue mode: the name of the dead-letter queue, when this Worker consumes it too (its messages raise an alert and are acked, never run).",
);

/// Every `POST /checkout` that gets as far as asking Stripe for a session counts: the
/// merchant's Stripe rate limit is shared with fulfilment and replays.
pub const SESSION_ATTEMPTS: Setting = whole(
    CHECKOUT_SESSION_ATTEMPTS,
    Feature::Checkout,
    "30",
    (1, 10_000),
    "Checkout sessions a client may ask for per window (with or without a code).",
);
pub const SESSION_WINDOW: Setting = whole(
    CHECKOUT_SESSION_WINDOW_SECS,
    Feature::Checkout,
    "60",
    (10, 86_400),
    "Length of the session window, in seconds.",
);
pub const REVOKE_ON_DISPUTE: &str = "REVOKE_ON_DISPUTE";
pub const DISPUTE_POLICY: Setting = Setting {
    default: Some("true"),
    ..plain(
        REVOKE_ON_DISPUTE,
        Feature::Fulfilment,
        "true or false: whether a new dispute (chargeback) revokes the license and cancels the shipment (false: only recorded).",
    )
};

pub const SETTINGS: &[Setting] = &[
    WEBHOOK_SECRET,
    WEBHOOK_TOLERANCE,
    BODY_LIMIT,
    LIVEMODE,
    LICENSE_URL,
    LICENSE_KEY,
    SHIPPING_ENDPOINT,
    SHIPPING_KEY,
    UPSTREAM_TIMEOUT,
    FORWARD_SIGNING,
    STRIPE_KEY,
    STRIPE_BASE,
    STRIPE_VERSION,
    ADMIN,
    RETENTION,
    RECONCILE_BUDGET,
    MAX_ATTEMPTS,
    RETRY_BASE,
    CATALOGUE,
    SHOP_URL,
    ORIGINS,
    CODE_ATTEMPTS,
    CODE_WINDOW,
    DEAD_LETTERS,
    EMAIL_BASE,
    RESEND_KEY,
    FROM,
    SUBJECT,
    TEXT,
    CONFIRMATION_SUBJECT,
    CONFIRMATION_TEXT,
    SUPPORT,
    LOOKUP_ATTEMPTS,
    LOOKUP_WINDOW,
    SESSION_ATTEMPTS,
    SESSION_WINDOW,
    DISPUTE_POLICY,
];

// The compiler holds the table consistent: every number setting has a whole-number
// default inside its own bounds, so loading one never needs a fallback.
const _: () = {
    let mut at = 0;
    while at < SETTINGS.len() {
        if let Some((low, high)) = SETTINGS[at].bounds {
            let default = SETTINGS[at].default_number();
            assert!(
                low <= default && default <= high,
                "a default out of its bounds"
            );
        }
        at += 1;
    }
};
