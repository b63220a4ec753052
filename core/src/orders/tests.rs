//! The success page's lookup, natively: the handler over the in-memory ledger, the
//! strict fake upstream (playing Stripe and the license server) and the memory counter.

use futures_executor::block_on;
use futures_util::future::join;

use super::*;
use crate::http::orders::{decision_line, for_decision};
use crate::ingress::{self, Delivery, Status, Verdict};
use crate::ports::ledger::Settlement;
use crate::stripe::signature::sign_header;
use crate::testing::{
    full_config_with, ok, status, MemoryThrottle, Svc, World, LICENSE_KEY, NOW_MS, STRIPE_KEY,
    WEBHOOK_SECRET,
};

const ID: &str = "cs_test_a1B2c3";
const SHOP: &str = "https://shop.example";

fn world_with(extra: &[(&str, &str)]) -> World {
    let mut settings = vec![("ALLOWED_ORIGINS", SHOP), ("ORDER_LOOKUP_ATTEMPTS", "3")];
    settings.extend_from_slice(extra);
    World::new(full_config_with(&settings))
}

fn world() -> World {
    world_with(&[])
}

/// A Checkout Session as `GET /v1/checkout/sessions/{id}` returns it.
fn session(id: &str, status: &str, payment_status: &str) -> String {
    session_with(id, status, payment_status, "")
}

fn session_with(id: &str, status: &str, payment_status: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"checkout.session","status":"{status}","payment_status":"{payment_status}",
            "livemode":false,"customer":"cus_1","amount_total":3000,"currency":"usd",
            "metadata":{{"slug":"pro"}},"customer_details":{{"email":"ada@example.com","name":"Ada Lovelace"}}{extra}}}"#
    )
}

fn stripe_has(world: &World, body: String) {
    *world.upstream.session.borrow_mut() = Some(body);
}

struct Call<'a> {
    method: OrderMethod,
    origin: Option<&'a str>,
    ip: &'a str,
}

const GET: Call<'static> = Call {
    method: OrderMethod::Get,
    origin: Some(SHOP),
    ip: "203.0.113.7",
};

async fn lookup_async(
    world: &World,
    throttle: &MemoryThrottle,
    id: &str,
    call: &Call<'_>,
) -> OrderDecision {
    let engine = world.deps();
    let deps = OrderDeps {
        engine: &engine,
        throttle,
    };
    let request = OrderRequest {
        method: call.method,
        origin: call.origin,
        client_ip: Some(call.ip),
        id,
    };
    handle(&deps, &request, world.clock.0.get()).await
}

fn lookup(world: &World, throttle: &MemoryThrottle, id: &str) -> OrderDecision {
    block_on(lookup_async(world, throttle, id, &GET))
}

fn stripe_calls(world: &World) -> usize {
    world.upstream.calls_to(Svc::Session).len()
}

fn license_calls(world: &World) -> usize {
    world.upstream.calls_to(Svc::License).len()
}

fn body(decision: &OrderDecision) -> serde_json::Value {
    for_decision(decision).body.expect("a JSON body")
}

async fn deliver_async(world: &World, body: &str) -> ingress::Decision {
    let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
    let delivery = Delivery {
        signature: Some(&header),
        body: body.as_bytes(),
        tags: None,
    };
    ingress::handle(&world.deps(), delivery, world.clock.0.get()).await
}

fn event(kind: &str, session: &str) -> String {
    format!(
        r#"{{"id":"evt_1","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":{session}}}}}"#
    )
}

#[test]
fn the_shape_is_checked_first_and_a_malformed_id_is_never_looked_up() {
    let world = world();
    let throttle = MemoryThrottle::default();
    let long = format!("cs_test_{}", "a".repeat(MAX_ID_CHARS - 7));
    for bad in [
        "",
        "cs_test_",
        "cs_a1",
        "cs_other_a1",
        "pi_test_a1",
        "cs_test_a1/line_items",
        "cs_test_a1?x=1",
        "cs_test_a-1",
        "cs_test_a_1",
        "cs_test_a%2F1",
        "cs_test_ä1",
        "CS_TEST_a1",
        &long,
    ] {
        let decision = lookup(&world, &throttle, bad);
        assert_eq!(
            decision.outcome,
            OrderOutcome::Refused(OrderRefusal::BadId),
            "{bad}"
        );
        assert_eq!(for_decision(&decision).status, 400);
        assert_eq!(decision.session_id, None, "a malformed id is never logged");
    }
    assert!(world.upstream.calls.borrow().is_empty());
    assert_eq!(world.ledger.order_reads.get(), 0, "not even the ledger");
    assert!(throttle.counts.borrow().is_empty());
    assert!(is_session_id(&format!("cs_live_{}", "Z9".repeat(100))));
    assert!(is_session_id(&long[..MAX_ID_CHARS - 1]));
}

#[test]
fn a_known_order_is_answered_from_the_ledger_alone_with_exactly_its_keys() {
    let world = world();
    let throttle = MemoryThrottle::default();
    // A webhook fulfilled it: license and shipping done.
    stripe_has(&world, session(ID, "complete", "paid"));
    let address = r#","collected_information":{"shipping_details":{"name":"Ada Lovelace","address":{"line1":"12 Analytical Row","city":"London","postal_code":"N1 9GU","country":"GB"}}}"#;
    let paid = session_with(ID, "complete", "paid", address);
    let delivered = block_on(deliver_async(
        &world,
        &event("checkout.session.completed", &paid),
    ));
    assert_eq!(delivered.verdict, Verdict::Recorded(Status::Accepted));
    world.upstream.calls.borrow_mut().clear();
    let reads = world.ledger.order_reads.get();

    for _ in 0..5 {
        let decision = lookup(&world, &throttle, ID);
        assert_eq!(for_decision(&decision).status, 200);
        assert_eq!(
            body(&decision),
            serde_json::json!({
                "order": ID, "state": "fulfilled", "license_key": "lic_1",
                "shipment": {"state": "done", "id": "shp_1"},
            })
        );
        assert!(!decision.asked_stripe);
    }
    assert!(
        world.upstream.calls.borrow().is_empty(),
        "no upstream call at all"
    );
    assert_eq!(world.ledger.order_reads.get() - reads, 5, "one read each");
    assert!(
        throttle.counts.borrow().is_empty(),
        "known ids are not counted"
    );
}

#[test]
fn a_fulfilling_order_shows_no_key_yet_and_asks_to_come_back() {
    let world = world();
    let throttle = MemoryThrottle::default();
    block_on(
        world
            .ledger
            .open_fulfilment(ID, false, "evt_1", &["license", "shipping"], NOW_MS),
    )
    .unwrap();
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(
        body(&decision),
        serde_json::json!({
            "order": ID, "state": "fulfilling",
            "shipment": {"state": "pending", "id": null}, "retry_after_ms": FULFILLING_RETRY_MS,
        })
    );
    // Shipping done without an address: done, nothing shipped.
    let claim = block_on(world.ledger.claim_step(ID, "shipping", NOW_MS, NOW_MS + 1))
        .unwrap()
        .unwrap();
    let settled = Settlement::Done("none:no_shipping_address".into());
    block_on(
        world
            .ledger
            .settle_step(ID, "shipping", claim.attempt, &settled, NOW_MS),
    )
    .unwrap();
    let shown = body(&lookup(&world, &throttle, ID));
    assert_eq!(
        shown["shipment"],
        serde_json::json!({"state": "done", "id": null})
    );
    assert!(world.upstream.calls.borrow().is_empty());
}

#[test]
fn an_unknown_paid_session_is_fulfilled_once_and_a_later_webhook_adds_nothing() {
    let world = world();
    let throttle = MemoryThrottle::default();
    stripe_has(&world, session(ID, "complete", "paid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(decision.opened, Some(Opened::Ran(RunOutcome::Complete)));
    assert_eq!(
        body(&decision),
        serde_json::json!({"order": ID, "state": "fulfilled", "license_key": "lic_1"})
    );
    assert_eq!(stripe_calls(&world), 1);
    assert_eq!(license_calls(&world), 1);
    let license = &world.upstream.calls_to(Svc::License)[0];
    assert_eq!(
        license.header("authorization"),
        Some(format!("Bearer {LICENSE_KEY}").as_str())
    );
    let sent: serde_json::Value = serde_json::from_str(license.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent["metadata"]["provider_event_id"], PAGE_EVENT_ID);
    assert_eq!(sent["slug"], "pro");
    assert_eq!(
        world.ledger.step_row(ID, "license").unwrap().event_id,
        PAGE_EVENT_ID
    );

    // The webhook arrives later: a duplicate of nothing, no second license.
    let paid = session(ID, "complete", "paid");
    let delivered = block_on(deliver_async(
        &world,
        &event("checkout.session.completed", &paid),
    ));
    assert!(matches!(delivered.verdict, Verdict::Recorded(_)));
    assert_eq!(license_calls(&world), 1);
    // And the next poll is the ledger's, without Stripe.
    assert_eq!(body(&lookup(&world, &throttle, ID))["license_key"], "lic_1");
    assert_eq!(stripe_calls(&world), 1);
    let log = world.log.joined();
    assert!(!log.contains("lic_1"), "{log}");
    assert!(!log.contains("ada@example.com"), "{log}");
    assert!(!log.contains(STRIPE_KEY), "{log}");
    let line = decision_line(&decision, 1).to_json();
    assert!(!line.contains("lic_1"), "{line}");
    assert!(line.contains("order opened by the success page"), "{line}");
}

#[test]
fn a_page_load_racing_a_webhook_delivery_fulfils_once() {
    let world = world();
    let throttle = MemoryThrottle::default();
    stripe_has(&world, session(ID, "complete", "paid"));
    world.upstream.yield_in_calls.set(true);
    let paid = session(ID, "complete", "paid");
    let body_of_event = event("checkout.session.completed", &paid);
    let (page, delivery) = block_on(join(
        lookup_async(&world, &throttle, ID, &GET),
        deliver_async(&world, &body_of_event),
    ));
    assert_eq!(license_calls(&world), 1, "one license for two racers");
    assert_eq!(for_decision(&page).status, 200);
    let state = body(&page)["state"].clone();
    assert!(
        state == "fulfilled" || state == "fulfilling",
        "{state} / {delivery:?}"
    );
    // Whoever lost comes back and finds it done, without a second call.
    assert_eq!(body(&lookup(&world, &throttle, ID))["state"], "fulfilled");
    let _ = block_on(deliver_async(&world, &body_of_event));
    assert_eq!(license_calls(&world), 1);
}

#[test]
fn a_complete_unpaid_session_waits_for_its_payment_like_the_webhook() {
    let world = world();
    let throttle = MemoryThrottle::default();
    stripe_has(&world, session(ID, "complete", "unpaid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(decision.opened, Some(Opened::AwaitingPayment));
    assert_eq!(
        body(&decision),
        serde_json::json!({"order": ID, "state": "awaiting_payment", "retry_after_ms": AWAITING_PAYMENT_RETRY_MS})
    );
    assert_eq!(license_calls(&world), 0);
    assert_eq!(
        world.ledger.purchase(ID),
        Some(PurchaseState::AwaitingPayment)
    );
    // Known now: the next poll is the ledger's.
    lookup(&world, &throttle, ID);
    assert_eq!(stripe_calls(&world), 1);
    // The payment succeeds: fulfilled, and the next poll shows the key.
    let paid = session(ID, "complete", "paid");
    block_on(deliver_async(
        &world,
        &event("checkout.session.async_payment_succeeded", &paid),
    ));
    assert_eq!(body(&lookup(&world, &throttle, ID))["license_key"], "lic_1");
    assert_eq!(license_calls(&world), 1);
}

#[test]
fn open_or_expired_sessions_are_answered_and_nothing_is_recorded() {
    for (status, shown) in [
        ("open", "open"),
        ("expired", "expired"),
        ("something_new", "open"),
    ] {
        let world = world();
        let throttle = MemoryThrottle::default();
        stripe_has(&world, session(ID, status, "unpaid"));
        let decision = lookup(&world, &throttle, ID);
        assert_eq!(for_decision(&decision).status, 200, "{status}");
        assert_eq!(
            body(&decision),
            serde_json::json!({"order": ID, "state": shown})
        );
        assert_eq!(world.ledger.purchase(ID), None, "{status}");
        assert!(world.ledger.steps.borrow().is_empty());
        assert_eq!(license_calls(&world), 0);
        // Still unknown: asked again next time (counted again).
        lookup(&world, &throttle, ID);
        assert_eq!(stripe_calls(&world), 2);
    }
}

#[test]
fn a_session_stripe_does_not_have_is_a_404_after_one_call() {
    let world = world();
    let throttle = MemoryThrottle::default();
    world.upstream.script(
        Svc::Session,
        [Ok(crate::ports::HttpResponse {
            status: 404,
            body: br#"{"error":{"message":"No such checkout.session"}}"#.to_vec(),
            request_id: Some("req_404".into()),
        })],
    );
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::NotFound)
    );
    assert_eq!(for_decision(&decision).status, 404);
    assert_eq!(stripe_calls(&world), 1);
    assert_eq!(world.ledger.purchase(ID), None);
    let line = decision_line(&decision, 1).to_json();
    assert!(line.contains(r#""reason":"order_not_found""#), "{line}");
    assert!(line.contains(r#""request_id":"req_404""#), "{line}");
}

#[test]
fn stripe_failing_or_refusing_our_key_is_a_502_with_nothing_recorded() {
    for answer in [
        status(500),
        status(503),
        status(401),
        status(403),
        Err(crate::ports::TransportError::Timeout),
        Err(crate::ports::TransportError::Network("reset".into())),
        ok("not json"),
        ok(&session("cs_test_other", "complete", "paid")),
    ] {
        let world = world();
        let throttle = MemoryThrottle::default();
        world.upstream.script(Svc::Session, [answer.clone()]);
        let decision = lookup(&world, &throttle, ID);
        assert!(
            matches!(
                decision.outcome,
                OrderOutcome::Refused(OrderRefusal::Stripe(_))
            ),
            "{answer:?}: {decision:?}"
        );
        let reply = for_decision(&decision);
        assert_eq!(reply.status, 502);
        assert_eq!(
            reply.body,
            Some(serde_json::json!({"error": "could not look up the order, please retry"}))
        );
        assert_eq!(world.ledger.purchase(ID), None);
        assert_eq!(license_calls(&world), 0);
    }
}

#[test]
fn lookups_of_unknown_ids_are_throttled_per_client_before_stripe_is_asked() {
    let world = world(); // ORDER_LOOKUP_ATTEMPTS = 3
    let throttle = MemoryThrottle::default();
    for n in 1..=3 {
        let decision = lookup(&world, &throttle, &format!("cs_test_unknown{n}"));
        assert_eq!(
            decision.outcome,
            OrderOutcome::Refused(OrderRefusal::NotFound)
        );
        assert_eq!(decision.lookups, Some(n));
    }
    assert_eq!(stripe_calls(&world), 3);
    let decision = lookup(&world, &throttle, "cs_test_unknown4");
    let OrderOutcome::Refused(OrderRefusal::RateLimited { retry_after_secs }) = decision.outcome
    else {
        panic!("{decision:?}");
    };
    assert!((1..=600).contains(&retry_after_secs));
    let reply = for_decision(&decision);
    assert_eq!(reply.status, 429);
    assert_eq!(
        reply.header("retry-after"),
        Some(retry_after_secs.to_string().as_str())
    );
    assert_eq!(stripe_calls(&world), 3, "no Stripe call past the limit");
    assert!(!decision.asked_stripe);

    // Another client has its own budget.
    let other = Call {
        ip: "198.51.100.1",
        ..GET
    };
    let decision = block_on(lookup_async(&world, &throttle, "cs_test_unknown5", &other));
    assert_eq!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::NotFound)
    );

    // The window ends: counted afresh.
    world.clock.0.set(NOW_MS + 600_000);
    let decision = lookup(&world, &throttle, "cs_test_unknown6");
    assert_eq!(decision.lookups, Some(1));
}

#[test]
fn known_ids_are_never_throttled() {
    let world = world();
    let throttle = MemoryThrottle::default();
    block_on(
        world
            .ledger
            .open_fulfilment(ID, false, "evt_1", &["license"], NOW_MS),
    )
    .unwrap();
    for _ in 0..4 {
        lookup(&world, &throttle, "cs_test_unknown");
    }
    assert!(matches!(
        lookup(&world, &throttle, "cs_test_unknown").outcome,
        OrderOutcome::Refused(OrderRefusal::RateLimited { .. })
    ));
    for _ in 0..50 {
        let decision = lookup(&world, &throttle, ID);
        assert_eq!(for_decision(&decision).status, 200);
    }
}

#[test]
fn the_lookup_budget_is_apart_from_the_promotion_code_budget() {
    let world = world();
    let throttle = MemoryThrottle::default();
    let secret = world.config.stripe_api_key.clone().unwrap();
    let window = throttle::window(NOW_MS, 600);
    // A client that spent its code attempts still has its lookups.
    let code_key = throttle::client_key(&secret, Some(GET.ip));
    throttle
        .counts
        .borrow_mut()
        .insert((code_key, window.start), 1_000);
    let decision = lookup(&world, &throttle, "cs_test_unknown");
    assert_eq!(decision.lookups, Some(1));
    assert_eq!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::NotFound)
    );
}

#[test]
fn a_session_of_the_other_mode_is_never_fulfilled() {
    let world = world_with(&[("STRIPE_LIVEMODE", "true")]);
    let throttle = MemoryThrottle::default();
    stripe_has(&world, session(ID, "complete", "paid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::LivemodeMismatch {
            session_livemode: false
        })
    );
    assert_eq!(for_decision(&decision).status, 503);
    assert_eq!(world.ledger.purchase(ID), None);
    assert_eq!(license_calls(&world), 0);
    assert!(decision_line(&decision, 1)
        .to_json()
        .contains("order lookup: livemode mismatch"));

    // An unreadable setting fulfils nothing either.
    let world = world_with(&[("STRIPE_LIVEMODE", "yes")]);
    stripe_has(&world, session(ID, "complete", "paid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(for_decision(&decision).status, 503);
    assert_eq!(
        (world.ledger.purchase(ID), license_calls(&world)),
        (None, 0)
    );

    // The matching mode fulfils.
    let world = world_with(&[("STRIPE_LIVEMODE", "false")]);
    stripe_has(&world, session(ID, "complete", "paid"));
    assert_eq!(body(&lookup(&world, &throttle, ID))["state"], "fulfilled");
}

#[test]
fn without_a_stripe_key_known_ids_still_answer_and_unknown_ones_are_503() {
    let world = world_with(&[("STRIPE_API_KEY", "")]);
    let throttle = MemoryThrottle::default();
    block_on(
        world
            .ledger
            .open_fulfilment(ID, false, "evt_1", &["license"], NOW_MS),
    )
    .unwrap();
    assert_eq!(for_decision(&lookup(&world, &throttle, ID)).status, 200);
    let decision = lookup(&world, &throttle, "cs_test_unknown");
    assert_eq!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::NotConfigured("STRIPE_API_KEY"))
    );
    assert_eq!(for_decision(&decision).status, 503);
    assert!(world.upstream.calls.borrow().is_empty());
    let line = decision_line(&decision, 1).to_json();
    assert!(line.contains(r#""setting":"STRIPE_API_KEY""#), "{line}");
}

#[test]
fn queue_mode_records_the_steps_and_enqueues_like_ingress() {
    let world = world();
    world.queue_mode.set(true);
    let throttle = MemoryThrottle::default();
    stripe_has(&world, session(ID, "complete", "paid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(decision.opened, Some(Opened::Queued));
    assert_eq!(
        body(&decision),
        serde_json::json!({"order": ID, "state": "fulfilling", "retry_after_ms": FULFILLING_RETRY_MS})
    );
    assert_eq!(license_calls(&world), 0, "the consumer runs the steps");
    let sent = world.queue.sent.borrow().clone();
    assert_eq!(
        sent,
        vec![crate::ports::FulfilMessage {
            session_id: ID.into(),
            event_id: PAGE_EVENT_ID.into()
        }]
    );

    // A failed send still answers: the steps wait in the ledger for the webhook or cron.
    let world = world_with(&[]);
    world.queue_mode.set(true);
    world.queue.failing.set(true);
    stripe_has(&world, session(ID, "complete", "paid"));
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(decision.opened, Some(Opened::QueueFailed));
    assert_eq!(body(&decision)["state"], "fulfilling");
    assert!(world.log.joined().contains("fulfilment queue send failed"));
}

#[test]
fn cors_and_methods_as_for_checkout() {
    let world = world();
    let throttle = MemoryThrottle::default();
    let preflight = block_on(lookup_async(
        &world,
        &throttle,
        ID,
        &Call {
            method: OrderMethod::Options,
            ..GET
        },
    ));
    let reply = for_decision(&preflight);
    assert_eq!(reply.status, 204);
    assert_eq!(reply.header("access-control-allow-origin"), Some(SHOP));
    assert_eq!(reply.header("access-control-allow-methods"), Some("GET"));
    for method in [OrderMethod::Get, OrderMethod::Options] {
        let foreign = block_on(lookup_async(
            &world,
            &throttle,
            ID,
            &Call {
                method,
                origin: Some("https://evil.example"),
                ..GET
            },
        ));
        let reply = for_decision(&foreign);
        assert_eq!(reply.status, 403);
        assert_eq!(reply.header("access-control-allow-origin"), None);
    }
    let post = block_on(lookup_async(
        &world,
        &throttle,
        ID,
        &Call {
            method: OrderMethod::Other,
            ..GET
        },
    ));
    let reply = for_decision(&post);
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("allow"), Some("GET, OPTIONS"));
    assert!(world.upstream.calls.borrow().is_empty());
    assert_eq!(world.ledger.order_reads.get(), 0);
}

#[test]
fn an_unavailable_ledger_is_a_503_and_stripe_is_not_asked() {
    let world = world();
    let throttle = MemoryThrottle::default();
    world.ledger.unavailable.set(true);
    let decision = lookup(&world, &throttle, ID);
    assert!(matches!(
        decision.outcome,
        OrderOutcome::Refused(OrderRefusal::Unavailable(_))
    ));
    assert_eq!(for_decision(&decision).status, 503);
    assert!(world.upstream.calls.borrow().is_empty());

    let world = world_with(&[]);
    throttle.unavailable.set(true);
    let decision = lookup(&world, &throttle, ID);
    assert_eq!(for_decision(&decision).status, 503);
    assert!(world.upstream.calls.borrow().is_empty());
}

#[test]
fn a_license_taken_back_is_no_longer_handed_out_by_the_page() {
    use crate::orders::view;
    use crate::ports::ledger::{PurchaseState, StepState};
    use crate::ports::orders::{OrderRecord, OrderStep};
    let record = |state| OrderRecord {
        state,
        steps: vec![OrderStep {
            step: "license".into(),
            state: StepState::Done,
            result: Some("LIC-1".into()),
        }],
    };
    assert_eq!(
        view(&record(PurchaseState::Fulfilled))
            .license_key
            .as_deref(),
        Some("LIC-1")
    );
    for state in [
        PurchaseState::Refunded,
        PurchaseState::Disputed,
        PurchaseState::Cancelled,
    ] {
        assert_eq!(view(&record(state)).license_key, None, "{state:?}");
    }
}
