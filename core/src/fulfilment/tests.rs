//! Fulfilment scenarios, natively: the webhook handler and the engine over the
//! in-memory ledger and the fake upstream.

use futures_executor::block_on;
use futures_util::future::join;

use crate::ingress::{handle, Decision, Delivery, Refusal, Status, Verdict};
use crate::ports::ledger::{Ledger, PurchaseState, Settlement, StepState};
use crate::ports::TransportError;
use crate::stripe::signature::sign_header;
use crate::testing::{
    full_config, ok, status, Svc, World, LICENSE_KEY, NOW_MS, SHIPPING_KEY, STRIPE_KEY,
    WEBHOOK_SECRET,
};

const ADDRESS: &str = r#""collected_information":{"shipping_details":{"name":"Ada Lovelace","address":{"line1":"12 Analytical Row","line2":null,"city":"London","state":null,"postal_code":"N1 9GU","country":"GB"}}}"#;

fn event(id: &str, kind: &str, session: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":{session}}}}}"#
    )
}

fn session(id: &str, payment_status: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"checkout.session","payment_status":"{payment_status}","customer":"cus_1","payment_intent":"pi_1",
            "amount_total":3000,"currency":"usd","metadata":{{"slug":"pro"}},
            "customer_details":{{"email":"ada@example.com","name":"Ada Lovelace"}}{extra}}}"#
    )
}

fn paid(id: &str) -> String {
    event(
        "evt_paid",
        "checkout.session.completed",
        &session(id, "paid", &format!(",{ADDRESS}")),
    )
}

async fn deliver_async(world: &World, body: &str) -> Decision {
    let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
    let delivery = Delivery {
        signature: Some(&header),
        body: body.as_bytes(),
        tags: None,
    };
    handle(&world.deps(), delivery, world.clock.0.get()).await
}

fn deliver(world: &World, body: &str) -> Decision {
    block_on(deliver_async(world, body))
}

fn recorded(status: Status) -> Verdict {
    Verdict::Recorded(status)
}

#[test]
fn a_paid_session_gets_one_license_and_one_shipment_with_the_documented_calls() {
    let world = World::new(full_config());
    let decision = deliver(&world, &paid("cs_1"));
    assert_eq!(decision.verdict, recorded(Status::Accepted));
    assert_eq!(decision.purchase_state, Some(PurchaseState::Fulfilled));

    let license = world.upstream.calls_to(Svc::License);
    assert_eq!(license.len(), 1);
    assert_eq!(license[0].url, "https://license.test/generate");
    assert_eq!(
        license[0].header("authorization"),
        Some(format!("Bearer {LICENSE_KEY}").as_str())
    );
    assert_eq!(
        license[0].header("idempotency-key"),
        Some("stripe-edge:cs_1:license")
    );

    let items = world.upstream.calls_to(Svc::LineItems);
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].url,
        "https://stripe.test/v1/checkout/sessions/cs_1/line_items?limit=100"
    );
    assert_eq!(
        items[0].header("authorization"),
        Some(format!("Bearer {STRIPE_KEY}").as_str())
    );
    assert!(
        world.upstream.calls_to(Svc::PaymentIntent).is_empty(),
        "the session had the address"
    );

    let shipping = world.upstream.calls_to(Svc::Shipping);
    assert_eq!(shipping.len(), 1);
    assert_eq!(
        shipping[0].header("authorization"),
        Some(format!("Bearer {SHIPPING_KEY}").as_str())
    );
    assert_eq!(
        shipping[0].header("idempotency-key"),
        Some("stripe-edge:cs_1:shipping")
    );
    let order: serde_json::Value =
        serde_json::from_str(shipping[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(order["order_id"], "cs_1");
    assert_eq!(order["shipping"]["address"]["city"], "London");
    assert_eq!(order["line_items"][0]["quantity"], 2);

    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "license")
            .unwrap()
            .result
            .as_deref(),
        Some("lic_1")
    );
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "shipping")
            .unwrap()
            .result
            .as_deref(),
        Some("shp_1")
    );
}

#[test]
fn a_second_delivery_of_a_fulfilled_purchase_calls_nothing() {
    let world = World::new(full_config());
    deliver(&world, &paid("cs_1"));
    let calls = world.upstream.calls.borrow().len();
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Duplicate)
    );
    assert_eq!(world.upstream.calls.borrow().len(), calls);
}

#[test]
fn two_deliveries_racing_on_one_purchase_call_each_step_once_and_one_is_told_to_come_back() {
    let world = World::new(full_config());
    world.upstream.yield_in_calls.set(true);
    let body = paid("cs_1");
    let (a, b) = block_on(join(
        deliver_async(&world, &body),
        deliver_async(&world, &body),
    ));
    let verdicts = [a.verdict, b.verdict];
    assert!(
        verdicts.contains(&recorded(Status::Accepted)),
        "{verdicts:?}"
    );
    assert!(
        verdicts.contains(&Verdict::Refused(Refusal::Busy)),
        "{verdicts:?}"
    );
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    assert_eq!(world.upstream.calls_to(Svc::Shipping).len(), 1);
}

#[test]
fn completed_and_async_succeeded_for_one_paid_session_fulfil_once() {
    let world = World::new(full_config());
    deliver(&world, &paid("cs_1"));
    let succeeded = event(
        "evt_async",
        "checkout.session.async_payment_succeeded",
        &session("cs_1", "paid", &format!(",{ADDRESS}")),
    );
    assert_eq!(
        deliver(&world, &succeeded).verdict,
        recorded(Status::Accepted)
    );
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    assert_eq!(world.upstream.calls_to(Svc::Shipping).len(), 1);
}

#[test]
fn an_unpaid_session_waits_and_fulfils_once_when_payment_succeeds() {
    let world = World::new(full_config());
    let completed = event(
        "evt_c",
        "checkout.session.completed",
        &session("cs_1", "unpaid", &format!(",{ADDRESS}")),
    );
    assert_eq!(
        deliver(&world, &completed).verdict,
        recorded(Status::Accepted)
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::AwaitingPayment)
    );
    assert!(world.upstream.calls.borrow().is_empty());

    let succeeded = event(
        "evt_s",
        "checkout.session.async_payment_succeeded",
        &session("cs_1", "paid", &format!(",{ADDRESS}")),
    );
    assert_eq!(
        deliver(&world, &succeeded).verdict,
        recorded(Status::Accepted)
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
    // A late redelivery of the unpaid event must not send the purchase back to waiting.
    assert_eq!(
        deliver(&world, &completed).verdict,
        recorded(Status::Duplicate)
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
}

#[test]
fn a_failed_async_payment_is_recorded_and_fulfils_nothing() {
    let world = World::new(full_config());
    let completed = event(
        "evt_c",
        "checkout.session.completed",
        &session("cs_1", "unpaid", ""),
    );
    deliver(&world, &completed);
    let failed = event(
        "evt_f",
        "checkout.session.async_payment_failed",
        &session("cs_1", "unpaid", ""),
    );
    assert_eq!(deliver(&world, &failed).verdict, recorded(Status::Accepted));
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::PaymentFailed)
    );
    assert!(world.upstream.calls.borrow().is_empty());
    assert!(world
        .log
        .joined()
        .contains("payment failed: nothing fulfilled"));
}

#[test]
fn an_upstream_503_leaves_the_step_retryable_and_a_redelivery_finishes_it() {
    let world = World::new(full_config());
    world
        .upstream
        .script(Svc::License, [status(503), status(503)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    let row = world.ledger.step_row("cs_1", "license").unwrap();
    assert_eq!((row.state, row.attempts), (StepState::Pending, 1));
    assert_eq!(
        row.last_error.as_deref(),
        Some("license server answered 503")
    );
    // Shipping did not wait for the license: it is independent and done.
    assert_eq!(
        world.ledger.step_row("cs_1", "shipping").unwrap().state,
        StepState::Done
    );

    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Accepted)
    );
    let keys: Vec<_> = world
        .upstream
        .calls_to(Svc::License)
        .iter()
        .map(|r| r.header("idempotency-key").unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        vec!["stripe-edge:cs_1:license"; 3],
        "every retry sends the same key"
    );
    assert_eq!(world.upstream.calls_to(Svc::Shipping).len(), 1);
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn timeouts_network_errors_and_429_are_retryable() {
    for answer in [
        Err(TransportError::Timeout),
        Err(TransportError::Network("reset".into())),
        status(429),
        status(500),
    ] {
        let world = World::new(full_config());
        world.upstream.script(Svc::License, [answer]);
        assert_eq!(
            deliver(&world, &paid("cs_1")).verdict,
            Verdict::Refused(Refusal::Retry)
        );
        assert_eq!(
            world.ledger.step_row("cs_1", "license").unwrap().state,
            StepState::Pending
        );
    }
    // The shipping system's 409 (its key still being processed) is retried too.
    let world = World::new(full_config());
    world.upstream.script(Svc::Shipping, [status(409)]);
    deliver(&world, &paid("cs_1"));
    assert_eq!(
        world.ledger.step_row("cs_1", "shipping").unwrap().state,
        StepState::Pending
    );
}

#[test]
fn the_license_servers_409_is_a_payload_mismatch_and_fails_the_step_for_good() {
    let world = World::new(full_config());
    world.upstream.script(Svc::License, [status(409)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Failed)
    );
    let row = world.ledger.step_row("cs_1", "license").unwrap();
    assert_eq!(row.state, StepState::Failed);
    assert!(row.last_error.unwrap().contains("409"));
}

#[test]
fn a_permanent_4xx_fails_the_step_once_and_is_not_retried() {
    let world = World::new(full_config());
    world.upstream.script(Svc::License, [status(400)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Failed)
    );
    assert_eq!(
        world.ledger.step_row("cs_1", "license").unwrap().state,
        StepState::Failed
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Failed));
    assert!(world.log.joined().contains("step failed permanently"));

    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Duplicate)
    );
    assert_eq!(
        world.upstream.calls_to(Svc::License).len(),
        1,
        "no retry storm"
    );
}

#[test]
fn a_running_step_whose_lease_expired_is_taken_over_and_the_old_holder_is_fenced_off() {
    let world = World::new(full_config());
    let ledger = &world.ledger;
    block_on(async {
        ledger
            .open_fulfilment("cs_1", false, "evt_1", &["license"], NOW_MS)
            .await
            .unwrap();
        let first = ledger
            .claim_step("cs_1", "license", NOW_MS, NOW_MS + 1_000)
            .await
            .unwrap();
        assert_eq!(
            first.map(|c| (c.attempt, c.event_id)),
            Some((1, "evt_1".to_string()))
        );
        assert_eq!(
            ledger
                .claim_step("cs_1", "license", NOW_MS + 999, NOW_MS + 2_000)
                .await
                .unwrap(),
            None
        );
        let second = ledger
            .claim_step("cs_1", "license", NOW_MS + 1_000, NOW_MS + 21_000)
            .await
            .unwrap();
        assert_eq!(second.map(|c| c.attempt), Some(2));
        let stale = Settlement::Done("lic_stale".into());
        assert!(!ledger
            .settle_step("cs_1", "license", 1, &stale, NOW_MS + 1_001)
            .await
            .unwrap());
        assert!(ledger
            .settle_step(
                "cs_1",
                "license",
                2,
                &Settlement::Done("lic_1".into()),
                NOW_MS + 1_002
            )
            .await
            .unwrap());
    });
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "license")
            .unwrap()
            .result
            .as_deref(),
        Some("lic_1")
    );
}

#[test]
fn a_step_without_its_settings_fails_closed_and_names_the_setting() {
    let config = crate::settings::Config::load(|name| {
        (name == "STRIPE_WEBHOOK_SECRET").then(|| WEBHOOK_SECRET.to_string())
    });
    let world = World::new(config);
    let body = event(
        "evt_1",
        "checkout.session.completed",
        &session("cs_1", "paid", ""),
    );
    assert_eq!(
        deliver(&world, &body).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    assert_eq!(
        world.ledger.step_row("cs_1", "license").unwrap().state,
        StepState::Pending
    );
    let log = world.log.joined();
    assert!(
        log.contains("step not configured") && log.contains("LICENSE_SERVER_URL"),
        "{log}"
    );
    assert!(world.upstream.calls.borrow().is_empty());
}

#[test]
fn line_items_are_fetched_across_pages() {
    let world = World::new(full_config());
    world.upstream.line_item_pages.replace(vec![
        r#"{"object":"list","has_more":true,"data":[{"id":"li_1","quantity":1,"price":{"id":"price_1","product":"prod_1","unit_amount":100}}]}"#.into(),
        r#"{"object":"list","has_more":false,"data":[{"id":"li_2","quantity":3,"price":{"id":"price_2","product":"prod_2","unit_amount":200}}]}"#.into(),
    ]);
    deliver(&world, &paid("cs_1"));
    let pages = world.upstream.calls_to(Svc::LineItems);
    assert_eq!(pages.len(), 2);
    assert!(pages[1].url.ends_with("&starting_after=li_1"));
    let order: serde_json::Value = serde_json::from_str(
        world.upstream.calls_to(Svc::Shipping)[0]
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    let prices: Vec<_> = order["line_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["price_id"].clone())
        .collect();
    assert_eq!(prices, ["price_1", "price_2"]);
}

#[test]
fn without_an_address_on_the_session_the_payment_intent_is_asked() {
    let world = World::new(full_config());
    world.upstream.payment_intent.replace(Some(
        r#"{"id":"pi_1","shipping":{"name":"Trigger","address":{"line1":"510 Townsend St","city":"San Francisco","state":"CA","postal_code":"94103","country":"US"}}}"#.into(),
    ));
    let body = event(
        "evt_1",
        "checkout.session.completed",
        &session("cs_1", "paid", r#","collected_information":null"#),
    );
    assert_eq!(deliver(&world, &body).verdict, recorded(Status::Accepted));
    assert_eq!(
        world.upstream.calls_to(Svc::PaymentIntent)[0].url,
        "https://stripe.test/v1/payment_intents/pi_1"
    );
    let order: serde_json::Value = serde_json::from_str(
        world.upstream.calls_to(Svc::Shipping)[0]
            .body
            .as_deref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(order["shipping"]["address"]["line1"], "510 Townsend St");
}

#[test]
fn no_address_anywhere_means_nothing_shipped_but_the_license_still_issued() {
    let world = World::new(full_config());
    let body = event(
        "evt_1",
        "checkout.session.completed",
        &session("cs_1", "paid", ""),
    );
    assert_eq!(deliver(&world, &body).verdict, recorded(Status::Accepted));
    assert!(world.upstream.calls_to(Svc::Shipping).is_empty());
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "shipping")
            .unwrap()
            .result
            .as_deref(),
        Some(crate::fulfilment::shipping::NOTHING_TO_SHIP)
    );
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
}

#[test]
fn a_livemode_mismatch_is_acknowledged_but_never_fulfilled() {
    let config = crate::settings::Config {
        livemode: Some(true),
        ..full_config()
    };
    let world = World::new(config);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Ignored)
    );
    assert!(world.upstream.calls.borrow().is_empty());
    assert!(world.ledger.purchase("cs_1").is_none());
    assert!(world.log.joined().contains("livemode mismatch"));
}

#[test]
fn a_delivery_out_of_time_starts_no_call() {
    let world = World::new(full_config());
    world.upstream.call_cost_ms.set(8_900);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    // The license call used the budget; shipping found no time left and never called out.
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    assert!(world.upstream.calls_to(Svc::Shipping).is_empty());
    assert_eq!(
        world.ledger.step_row("cs_1", "shipping").unwrap().state,
        StepState::Pending
    );
}

#[test]
fn a_session_with_nothing_to_fulfil_is_recorded_as_such() {
    let world = World::new(full_config());
    let body = event(
        "evt_1",
        "checkout.session.completed",
        r#"{"id":"cs_1","object":"checkout.session","payment_status":"paid"}"#,
    );
    assert_eq!(deliver(&world, &body).verdict, recorded(Status::Accepted));
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::NothingToFulfil)
    );
    let again = deliver(&world, &body);
    assert_eq!(again.purchase_state, Some(PurchaseState::NothingToFulfil));
    assert!(world.log.joined().contains("nothing to fulfil"));
}

#[test]
fn logs_never_carry_customer_data_license_keys_or_secrets() {
    let world = World::new(full_config());
    world.upstream.script(
        Svc::License,
        [status(503), ok(r#"{"license_key":"lic_SECRETKEY"}"#)],
    );
    deliver(&world, &paid("cs_1"));
    deliver(&world, &paid("cs_1"));
    let log = world.log.joined();
    for needle in [
        "ada@example.com",
        "Ada Lovelace",
        "Analytical",
        "N1 9GU",
        "lic_SECRETKEY",
        LICENSE_KEY,
        SHIPPING_KEY,
        STRIPE_KEY,
        WEBHOOK_SECRET,
    ] {
        assert!(!log.contains(needle), "{needle} reached the log:\n{log}");
    }
    assert!(log.contains("step done") && log.contains("step will be retried"));
}

#[test]
fn a_retry_driven_by_another_event_sends_the_same_body_under_the_same_key() {
    let world = World::new(full_config());
    world.upstream.script(Svc::License, [status(503)]);
    let completed = event(
        "evt_first",
        "checkout.session.completed",
        &session("cs_1", "paid", ""),
    );
    assert_eq!(
        deliver(&world, &completed).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    let succeeded = event(
        "evt_second",
        "checkout.session.async_payment_succeeded",
        &session("cs_1", "paid", ""),
    );
    assert_eq!(
        deliver(&world, &succeeded).verdict,
        recorded(Status::Accepted)
    );
    let calls = world.upstream.calls_to(Svc::License);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].body, calls[1].body,
        "a reused Idempotency-Key must carry the same body"
    );
    assert!(calls[1].body.as_deref().unwrap().contains("evt_first"));
}

#[test]
fn with_a_forward_secret_service_calls_carry_standard_webhooks_headers() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let config = crate::settings::Config {
        forward_signer: crate::relay::RelaySigner::from_secret(secret),
        ..full_config()
    };
    let world = World::new(config);
    deliver(&world, &paid("cs_1"));
    let signer = crate::relay::RelaySigner::from_secret(secret).unwrap();
    for call in [
        &world.upstream.calls_to(Svc::License)[0],
        &world.upstream.calls_to(Svc::Shipping)[0],
    ] {
        let id = call.header("webhook-id").unwrap();
        assert_eq!(Some(id), call.header("idempotency-key"));
        let timestamp: i64 = call.header("webhook-timestamp").unwrap().parse().unwrap();
        assert_eq!(timestamp, (NOW_MS / 1000) as i64);
        let expected = signer.sign(id, timestamp, call.body.as_deref().unwrap().as_bytes());
        assert_eq!(call.header("webhook-signature"), Some(expected.as_str()));
    }
    assert!(world.upstream.calls_to(Svc::LineItems)[0]
        .header("webhook-signature")
        .is_none());
}

#[test]
fn a_known_event_id_with_another_session_is_refused_alerted_and_never_fulfilled() {
    let world = World::new(full_config());
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Accepted)
    );
    // The same evt_paid, signed, about another session.
    let forged = deliver(&world, &paid("cs_2"));
    assert_eq!(forged.verdict, Verdict::Refused(Refusal::ConflictingEvent));
    assert_eq!(world.ledger.purchase("cs_2"), None);
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    let line = crate::http::webhook::decision_line(&forged, 0).to_json();
    assert!(line.contains(r#""level":"alert","msg":"webhook refused: event id conflict""#));
    assert_eq!(crate::http::webhook::for_decision(&forged).status, 400);
    // The genuine redelivery is still a quiet duplicate.
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Duplicate)
    );
}

#[test]
fn an_unreadable_livemode_setting_fulfils_nothing_and_keeps_the_events_with_stripe() {
    let world = World::new(crate::testing::full_config_with(&[(
        "STRIPE_LIVEMODE",
        "yes",
    )]));
    let test = paid("cs_test");
    let live = test
        .replace("evt_paid", "evt_live")
        .replace("cs_test", "cs_live")
        .replace(r#""livemode":false"#, r#""livemode":true"#);
    for body in [&test, &live] {
        let decision = deliver(&world, body);
        assert_eq!(decision.verdict, Verdict::Refused(Refusal::LivemodeInvalid));
        assert_eq!(crate::http::webhook::for_decision(&decision).status, 503);
        assert!(crate::http::webhook::decision_line(&decision, 0)
            .to_json()
            .contains(r#""setting":"STRIPE_LIVEMODE""#));
    }
    assert!(world.upstream.calls.borrow().is_empty());
    assert!(world.ledger.events.borrow().is_empty(), "nothing recorded");
    // Types the Worker does not act on are still recorded as ignored.
    let other = r#"{"id":"evt_x","object":"event","type":"customer.created","livemode":false,"data":{"object":{"id":"cus_1"}}}"#;
    assert_eq!(deliver(&world, other).verdict, recorded(Status::Ignored));
}

#[test]
fn signed_events_that_could_never_be_stored_get_a_clear_400_and_touch_nothing() {
    let world = World::new(full_config());
    let cases = [
        (
            paid("cs_1").replace("1700000000", "9223372036854775807"),
            "created",
        ),
        (
            paid("cs_1").replace(r#""id":"cs_1""#, r#""id":"cs_1\nX""#),
            "data.object.id",
        ),
        (paid("cs_1").replace("evt_paid", "evt_paid\\u0000"), "id"),
        (paid("cs_1").replace("1700000000", "-5"), "created"),
    ];
    for (body, field) in cases {
        let decision = deliver(&world, &body);
        let line = crate::http::webhook::decision_line(&decision, 0).to_json();
        assert_eq!(
            crate::http::webhook::for_decision(&decision).status,
            400,
            "{field}"
        );
        assert!(line.contains(r#""reason":"unstorable_event""#), "{line}");
        assert!(line.contains(field), "{line}");
    }
    assert!(world.ledger.events.borrow().is_empty());
    assert!(world.upstream.calls.borrow().is_empty());
}

// ---- the e-mail step (Resend) ----

use crate::fulfilment::email::NO_EMAIL;
use crate::testing::{email_config_with, RESEND_KEY};

fn email_world() -> World {
    World::new(email_config_with(&[]))
}

fn body_of(request: &crate::ports::HttpRequest) -> serde_json::Value {
    serde_json::from_str(request.body.as_deref().unwrap()).unwrap()
}

/// What `POST /admin/purchases/{id}/replay` does: failed steps back to pending, then a
/// resume with the session fetched from the (fake) Stripe API.
fn replay(world: &World, session_json: &str) -> crate::fulfilment::RunOutcome {
    world
        .upstream
        .session
        .replace(Some(session_json.to_string()));
    block_on(async {
        world.ledger.reset_failed("cs_1", NOW_MS).await.unwrap();
        crate::fulfilment::resume(&world.deps(), "cs_1", world.clock.0.get())
            .await
            .unwrap()
            .outcome
    })
}

#[test]
fn the_email_step_sends_the_license_once_with_the_documented_request() {
    let world = email_world();
    let decision = deliver(&world, &paid("cs_1"));
    assert_eq!(decision.verdict, recorded(Status::Accepted));
    assert_eq!(decision.purchase_state, Some(PurchaseState::Fulfilled));
    let sent = world.upstream.calls_to(Svc::Email);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].url, "https://email.test/emails");
    assert_eq!(
        sent[0].header("authorization"),
        Some(format!("Bearer {RESEND_KEY}").as_str())
    );
    assert_eq!(sent[0].header("content-type"), Some("application/json"));
    assert_eq!(
        sent[0].header("idempotency-key"),
        Some("stripe-edge:cs_1:email")
    );
    assert_eq!(sent[0].header("webhook-signature"), None);
    let body = body_of(&sent[0]);
    assert_eq!(body["from"], "Shop <orders@shop.test>");
    assert_eq!(body["to"], serde_json::json!(["ada@example.com"]));
    assert_eq!(body["subject"], "Your license for pro");
    assert!(body["text"]
        .as_str()
        .unwrap()
        .contains("Your license key: lic_1"));
    assert!(body["html"]
        .as_str()
        .unwrap()
        .contains("Your license key: lic_1"));
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!(
        (row.state, row.result.as_deref()),
        (StepState::Done, Some("em_1"))
    );

    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Duplicate)
    );
    let succeeded = event(
        "evt_async",
        "checkout.session.async_payment_succeeded",
        &session("cs_1", "paid", &format!(",{ADDRESS}")),
    );
    deliver(&world, &succeeded);
    assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1, "one e-mail");
}

#[test]
fn an_email_503_twice_then_one_email_with_identical_bodies_under_one_key() {
    let world = email_world();
    world
        .upstream
        .script(Svc::Email, [status(503), status(503)]);
    for expected in [
        Verdict::Refused(Refusal::Retry),
        Verdict::Refused(Refusal::Retry),
        recorded(Status::Accepted),
    ] {
        assert_eq!(deliver(&world, &paid("cs_1")).verdict, expected);
    }
    let sent = world.upstream.calls_to(Svc::Email);
    assert_eq!(sent.len(), 3);
    for call in &sent[1..] {
        assert_eq!(call.body, sent[0].body, "byte-identical bodies");
        assert_eq!(
            call.header("idempotency-key"),
            Some("stripe-edge:cs_1:email")
        );
    }
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!((row.state, row.attempts), (StepState::Done, 3));
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn a_permanent_422_fails_the_email_step_and_the_purchase_and_a_replay_sends_once() {
    let world = email_world();
    world.upstream.script(Svc::Email, [status(422)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Failed)
    );
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!(row.state, StepState::Failed);
    assert_eq!(
        row.last_error.as_deref(),
        Some("e-mail service answered 422")
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Failed));
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Duplicate)
    );
    assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1, "not retried");

    let outcome = replay(&world, &session("cs_1", "paid", &format!(",{ADDRESS}")));
    assert_eq!(outcome, crate::fulfilment::RunOutcome::Complete);
    let sent = world.upstream.calls_to(Svc::Email);
    assert_eq!(sent.len(), 2, "the replay sent exactly once");
    assert_eq!(sent[1].body, sent[0].body);
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn no_license_means_no_email_and_after_a_replay_exactly_one_with_the_new_key() {
    let world = email_world();
    world.upstream.script(Svc::License, [status(400)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Failed)
    );
    assert!(world.upstream.calls_to(Svc::Email).is_empty());
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!(row.state, StepState::Failed);
    assert_eq!(
        row.last_error.as_deref(),
        Some("no license to send: the license step failed")
    );

    let outcome = replay(&world, &session("cs_1", "paid", &format!(",{ADDRESS}")));
    assert_eq!(outcome, crate::fulfilment::RunOutcome::Complete);
    let sent = world.upstream.calls_to(Svc::Email);
    assert_eq!(sent.len(), 1);
    assert!(body_of(&sent[0])["text"]
        .as_str()
        .unwrap()
        .contains("Your license key: lic_2"));
    assert_eq!(world.upstream.calls_to(Svc::Shipping).len(), 1);
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn while_the_license_may_still_come_the_email_waits_then_goes_out_once() {
    let world = email_world();
    world.upstream.script(Svc::License, [status(503)]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    assert!(world.upstream.calls_to(Svc::Email).is_empty());
    // Not even taken while the license is pending: no attempt spent on waiting.
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!((row.state, row.attempts), (StepState::Pending, 0));
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Accepted)
    );
    assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1);
}

#[test]
fn a_session_without_an_email_address_records_none_no_email() {
    let world = email_world();
    let body = event(
        "evt_1",
        "checkout.session.completed",
        r#"{"id":"cs_1","object":"checkout.session","payment_status":"paid","metadata":{"slug":"pro"}}"#,
    );
    assert_eq!(deliver(&world, &body).verdict, recorded(Status::Accepted));
    assert!(world.upstream.calls_to(Svc::Email).is_empty());
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert_eq!(
        (row.state, row.result.as_deref()),
        (StepState::Done, Some(NO_EMAIL))
    );
}

#[test]
fn shipped_goods_without_a_license_get_an_order_confirmation() {
    let world = email_world();
    let body = event(
        "evt_1",
        "checkout.session.completed",
        &format!(
            r#"{{"id":"cs_1","object":"checkout.session","payment_status":"paid","customer_details":{{"email":"ada@example.com"}},{ADDRESS}}}"#
        ),
    );
    assert_eq!(deliver(&world, &body).verdict, recorded(Status::Accepted));
    assert!(world.upstream.calls_to(Svc::License).is_empty());
    let sent = world.upstream.calls_to(Svc::Email);
    assert_eq!(sent.len(), 1);
    let body = body_of(&sent[0]);
    assert_eq!(body["subject"], "Your order cs_1");
    assert!(!body["text"].as_str().unwrap().contains("license"));
}

#[test]
fn a_purchase_opened_before_the_resend_key_was_set_never_gets_an_email() {
    let mut world = World::new(full_config());
    world.upstream.script(Svc::License, [status(503)]);
    deliver(&world, &paid("cs_1"));
    world.config = email_config_with(&[]);
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        recorded(Status::Accepted)
    );
    assert!(world.ledger.step_row("cs_1", "email").is_none());
    assert!(world.upstream.calls_to(Svc::Email).is_empty());
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn a_half_configured_email_step_fails_closed_naming_email_from() {
    let world = World::new(full_config_with_email_key_only());
    assert_eq!(
        deliver(&world, &paid("cs_1")).verdict,
        Verdict::Refused(Refusal::Retry)
    );
    let log = world.log.joined();
    assert!(
        log.contains("step not configured") && log.contains("EMAIL_FROM"),
        "{log}"
    );
    assert_eq!(
        world.ledger.step_row("cs_1", "email").unwrap().state,
        StepState::Pending
    );
    assert!(world.upstream.calls_to(Svc::Email).is_empty());
}

fn full_config_with_email_key_only() -> crate::settings::Config {
    crate::testing::full_config_with(&[("RESEND_API_KEY", RESEND_KEY)])
}

#[test]
fn email_logs_never_carry_the_address_the_license_key_or_the_api_key() {
    let world = email_world();
    world
        .upstream
        .script(Svc::License, [ok(r#"{"license_key":"LICSECRET-123"}"#)]);
    world.upstream.script(Svc::Email, [status(503)]);
    deliver(&world, &paid("cs_1"));
    deliver(&world, &paid("cs_1"));
    assert!(body_of(&world.upstream.calls_to(Svc::Email)[1])["text"]
        .as_str()
        .unwrap()
        .contains("LICSECRET-123"));
    let log = world.log.joined();
    for needle in [
        "ada@example.com",
        "LICSECRET-123",
        RESEND_KEY,
        "orders@shop.test",
    ] {
        assert!(!log.contains(needle), "{needle} reached the log:\n{log}");
    }
    let row = world.ledger.step_row("cs_1", "email").unwrap();
    assert!(!format!("{row:?}").contains("ada@example.com"));
}

// ------------------------------------------------------ a retry sends the first body

/// Issue 15, item 5: a replay rebuilt the license body from the session as Stripe
/// returns it now (`customer` gone) and sent it under the first attempt's key.
#[test]
fn a_retry_whose_body_changed_is_not_sent_and_alerts_naming_the_step_and_field() {
    let world = World::new(full_config());
    world.upstream.script(Svc::License, [status(503)]);
    deliver(&world, &paid("cs_1"));
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    let pinned = world.ledger.body_digests.borrow().clone();
    let stored = &pinned[&("cs_1".to_string(), "license")];
    assert!(
        !stored.contains("cus_1") && !stored.contains("ada@"),
        "{stored}"
    );

    // The session as Stripe returns it now: same purchase, the customer gone.
    let now = session("cs_1", "paid", &format!(",{ADDRESS}")).replace(r#""customer":"cus_1","#, "");
    let outcome = replay(&world, &now);
    assert_eq!(outcome, crate::fulfilment::RunOutcome::Failed);
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1, "not sent");
    let row = world.ledger.step_row("cs_1", "license").unwrap();
    assert_eq!(row.state, StepState::Failed);
    assert_eq!(
        row.last_error.as_deref(),
        Some("body changed since the first attempt: metadata.provider_customer_id")
    );
    let alert = world
        .log
        .lines()
        .into_iter()
        .find(|l| l.contains("step body changed since the first attempt"))
        .expect("an alert");
    let alert: serde_json::Value = serde_json::from_str(&alert).unwrap();
    assert_eq!(alert["level"], "alert");
    assert_eq!(alert["step"], "license");
    assert_eq!(alert["field"], "metadata.provider_customer_id");
    assert!(!world.log.joined().contains("cus_1"));

    // Once the session reads as it did, a replay sends the first body, once.
    let outcome = replay(&world, &session("cs_1", "paid", &format!(",{ADDRESS}")));
    assert_eq!(outcome, crate::fulfilment::RunOutcome::Complete);
    let calls = world.upstream.calls_to(Svc::License);
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].body, calls[1].body);
}

#[test]
fn every_stripe_call_of_a_resume_carries_the_pinned_version() {
    let world = World::new(full_config());
    world.upstream.script(Svc::Shipping, [status(503)]);
    deliver(&world, &paid("cs_1"));
    replay(&world, &session("cs_1", "paid", &format!(",{ADDRESS}")));
    let stripe: Vec<_> = world
        .upstream
        .calls
        .borrow()
        .iter()
        .filter(|r| r.url.starts_with("https://stripe.test/"))
        .cloned()
        .collect();
    assert!(
        stripe.len() >= 3,
        "session, line items twice: {}",
        stripe.len()
    );
    for call in stripe {
        assert_eq!(
            call.header("stripe-version"),
            Some("2025-03-31.basil"),
            "{}",
            call.url
        );
    }
}

/// The same guard on the event path: a later event about the session whose object
/// would change the body (here the buyer's e-mail) drives no call with it.
#[test]
fn a_later_event_whose_session_would_change_the_body_sends_nothing() {
    let world = World::new(full_config());
    world.upstream.script(Svc::License, [status(503)]);
    deliver(&world, &paid("cs_1"));
    let edited = session("cs_1", "paid", &format!(",{ADDRESS}"))
        .replace("ada@example.com", "eve@example.com");
    let later = event(
        "evt_later",
        "checkout.session.async_payment_succeeded",
        &edited,
    );
    let decision = deliver(&world, &later);
    assert_eq!(decision.verdict, recorded(Status::Failed));
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1, "not sent");
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "license")
            .unwrap()
            .last_error
            .as_deref(),
        Some("body changed since the first attempt: metadata.email")
    );
    assert!(!world.log.joined().contains("eve@"));
}
