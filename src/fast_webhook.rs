//! The webhook deliveries `src/entry.mjs` drives itself: every one that declares its
//! length (Stripe always does). JavaScript reads the body and, for an event that is only
//! recorded, runs the event's claim; wasm is entered once before the claim and once after
//! it, with no binding objects in between and no future unless SubtleCrypto signs the
//! body (from `subtle::MIN_BYTES`: one promise, awaited by [`webhook_signed`]). Every
//! decision is the core's (`ingress::verify`, `ingress::classify`, `ingress::recorded`,
//! the same functions `ingress::handle` runs); this file only moves values across.
//! Anything else (a purchase, a reversal) goes on through `router::decide` with the body
//! already verified.
//!
//! Why (`bench/ab.mjs`, BENCHMARKS.md "Session 7" and "Session 8"): over a new isolate's
//! first 300 deliveries the async path cost 1.27x the JavaScript reference's CPU, this one
//! 1.12x; at 10 KB, SubtleCrypto instead of the wasm HMAC took it from 1.10x to 1.07x.

use stripe_edge_core::fulfilment::plan::Disposition;
use stripe_edge_core::ingress::{self, Decision, Delivery, Refusal};
use stripe_edge_core::ports::ledger::EventRecord;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;
use worker::js_sys::{Function, Uint8Array};
use worker::Env;

use crate::d1::js_failure;
use crate::d1::ledger::{claim_of_row, CLAIM_EVENT};
use crate::router::{self, WEBHOOK_PATH};
use crate::runtime::{has_db, load_config};
use crate::subtle;

/// Whether the entry takes this request on its own path: a POST to the webhook with a
/// declared length within `MAX_BODY_BYTES`, a secret configured and D1 bound (without
/// it, `router::decide` answers as it always did). A chunked body (no `Content-Length`)
/// takes the old path, which reads a stream up to the cap.
#[wasm_bindgen]
pub fn webhook_fast(method: &str, url: &str, content_length: Option<String>, env: &Env) -> bool {
    if method != "POST" || router::path_of(url) != WEBHOOK_PATH {
        return false;
    }
    let config = load_config(env);
    let cap = config.max_body_bytes;
    !config.webhook_secrets.is_empty()
        && content_length
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n <= cap)
        && has_db(env)
}

/// The statement the entry runs for the event's claim (the ledger's own).
#[wasm_bindgen]
pub fn claim_sql() -> String {
    CLAIM_EVENT.to_string()
}

/// The first half: verifies and classifies. Answers `C` and the claim's arguments as a
/// JSON array (an event only recorded: the entry runs the claim), `F` (anything else:
/// the entry hands the body to `serve_verified`), `A` and an answer ([`answer`]), or `S`:
/// the body is for SubtleCrypto to sign (`subtle::MIN_BYTES` and up), and the entry asks
/// [`webhook_signed`] for one of the other three.
#[wasm_bindgen]
pub fn webhook_begin(
    body: &Uint8Array,
    signature: Option<String>,
    env: &Env,
    started: f64,
) -> String {
    let config = load_config(env);
    let len = body.length() as usize;
    // As `router::deliver` does: the body read, not only the one declared, within the cap.
    if len as u64 > config.max_body_bytes {
        return answer(router::too_large(&config), started as u64, 0);
    }
    if subtle::Body::signs(signature.as_deref(), len) {
        return "S".to_string();
    }
    begin(
        &config,
        &body.to_vec(),
        signature.as_deref(),
        None,
        started as u64,
    )
}

/// [`webhook_begin`] for a body SubtleCrypto signs: its tags computed (the HMAC only;
/// the comparison and the rest are `ingress::verify`'s), the same answer goes to `resolve`.
#[wasm_bindgen]
pub fn webhook_signed(
    body: &Uint8Array,
    signature: Option<String>,
    env: &Env,
    started: f64,
    resolve: Function,
) {
    let config = load_config(env);
    let body = subtle::Body::read(signature.as_deref(), body);
    crate::entry::spawn(
        async move {
            let tags = subtle::tags(&config.webhook_secrets, &body).await;
            let begun = begin(
                &config,
                body.bytes(),
                signature.as_deref(),
                tags.as_deref(),
                started as u64,
            );
            JsValue::from(begun)
        },
        resolve,
    );
}

/// Verifies (with the tags, when computed) and classifies.
fn begin(
    config: &stripe_edge_core::settings::Config,
    body: &[u8],
    signature: Option<&str>,
    tags: Option<&[stripe_edge_core::stripe::signature::Tag]>,
    started: u64,
) -> String {
    let delivery = Delivery {
        signature,
        body,
        tags,
    };
    if let Err(decision) = ingress::verify(config, &delivery, started) {
        return answer(decision, started, 0);
    }
    match ingress::classify(body, config, started) {
        Err(decision) => answer(decision, started, 0),
        Ok(classified) if classified.records_only() => claim_args(&classified.record),
        Ok(_) => "F".to_string(),
    }
}

/// The second half, from the claim's outcome: the returned row's two columns
/// (`returned`: a row came back), or the error D1 threw (`threw`), described as the
/// D1 adapter describes it. Answers `A` and an answer.
#[wasm_bindgen]
#[allow(clippy::too_many_arguments)]
pub fn webhook_claimed(
    id: String,
    kind: String,
    object_id: Option<String>,
    returned: bool,
    stored_kind: Option<String>,
    stored_object: Option<String>,
    threw: bool,
    error: JsValue,
    started: f64,
) -> String {
    let claim = match threw {
        true => Err(js_failure("claim_event")(error)),
        false => claim_of_row(
            &kind,
            object_id.as_deref(),
            returned.then_some((stored_kind, stored_object)),
        ),
    };
    let decision = Decision {
        event_id: Some(id),
        event_type: Some(kind),
        object_id,
        disposition: Some(Disposition::Ignored),
        ..Decision::refused(Refusal::NotFound)
    };
    answer(ingress::recorded(decision, claim), started as u64, 1)
}

/// `C` and the claim's arguments, in the statement's order.
fn claim_args(r: &EventRecord) -> String {
    let args = (
        &r.id,
        &r.kind,
        u8::from(r.livemode),
        &r.api_version,
        r.created,
        &r.object_id,
        r.disposition,
        r.received_at_ms,
    );
    let mut out = String::from("C");
    out.push_str(&serde_json::to_string(&args).unwrap_or_default());
    out
}

/// The decision logged (as every webhook decision is) and its reply for the entry:
/// `A`, the status in three digits, the JSON body.
fn answer(decision: Decision, started: u64, d1_calls: u32) -> String {
    let reply = router::logged(decision, started, d1_calls);
    debug_assert!(reply.allow.is_none(), "no 405 on this path");
    format!("A{}{}", reply.status, reply.body)
}
