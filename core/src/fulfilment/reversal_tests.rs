//! Taking back, natively: refunds, disputes and ended subscriptions over the in-memory
//! ledger and the fake upstream, in every order the events can come in.

use futures_executor::block_on;
use futures_util::future::{join, join_all};

use crate::ingress::{handle, Decision, Delivery, Refusal, Status, Verdict};
use crate::ports::ledger::{Ledger, PurchaseState, StepState};
use crate::ports::FulfilMessage;
use crate::queue_mode::consumer::consume;
use crate::queue_mode::QueueVerdict;
use crate::stripe::signature::sign_header;
use crate::testing::{
    full_config, full_config_with, status, Svc, World, LICENSE_KEY, NOW_MS, SHIPPING_KEY,
    WEBHOOK_SECRET,
};

const ADDRESS: &str = r#""collected_information":{"shipping_details":{"name":"Ada Lovelace","address":{"line1":"12 Analytical Row","city":"London","postal_code":"N1 9GU","country":"GB"}}}"#;

fn event(id: &str, kind: &str, object: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":{object}}}}}"#
    )
}

fn session_json(id: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","object":"checkout.session","payment_status":"paid","customer":"cus_1","payment_intent":"pi_1",
            "amount_total":3000,"currency":"usd","metadata":{{"slug":"pro"}},
            "customer_details":{{"email":"ada@example.com","name":"Ada Lovelace"}},{ADDRESS}{extra}}}"#
    )
}

fn paid() -> String {
    event(
        "evt_paid",
        "checkout.session.completed",
        &session_json("cs_1", ""),
    )
}

fn refund(id: &str, full: bool) -> String {
    let amount = if full { 3000 } else { 1000 };
    event(
        id,
        "charge.refunded",
        &format!(
            r#"{{"id":"ch_1","object":"charge","payment_intent":"pi_1","amount":3000,"amount_refunded":{amount},"refunded":{full},
                "billing_details":{{"email":"ada@example.com"}}}}"#
        ),
    )
}

fn dispute(id: &str, kind: &str, status: &str) -> String {
    event(
        id,
        kind,
        &format!(
            r#"{{"id":"dp_1","object":"dispute","charge":"ch_1","payment_intent":"pi_1","status":"{status}"}}"#
        ),
    )
}

fn subscription_session() -> String {
    event(
        "evt_sub_paid",
        "checkout.session.completed",
        r#"{"id":"cs_sub","object":"checkout.session","mode":"subscription","payment_status":"paid","customer":"cus_1",
            "payment_intent":null,"subscription":"sub_1","metadata":{"slug":"pro"},"customer_details":{"email":"ada@example.com"}}"#,
    )
}

fn subscription_deleted(id: &str) -> String {
    event(
        id,
        "customer.subscription.deleted",
        r#"{"id":"sub_1","object":"subscription","status":"canceled","customer":"cus_1"}"#,
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

fn calls(world: &World, svc: Svc) -> usize {
    world.upstream.calls_to(svc).len()
}

fn step_state(world: &World, step: &'static str) -> Option<StepState> {
    world.ledger.step_row("cs_1", step).map(|r| r.state)
}

fn fulfilled() -> World {
    let world = World::new(full_config());
    assert_eq!(
        deliver(&world, &paid()).verdict,
        Verdict::Recorded(Status::Accepted)
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
    world
}

#[test]
fn a_full_refund_after_fulfilment_revokes_once_and_cancels_once() {
    let world = fulfilled();
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(decision.purchase_state, Some(PurchaseState::Refunded));
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));

    let revoke = world.upstream.calls_to(Svc::Revoke);
    assert_eq!(revoke.len(), 1);
    assert_eq!(revoke[0].url, "https://license.test/revoke");
    assert_eq!(
        revoke[0].header("authorization"),
        Some(format!("Bearer {LICENSE_KEY}").as_str())
    );
    assert_eq!(
        revoke[0].body.as_deref(),
        Some(r#"{"license_key":"lic_1"}"#)
    );

    let cancel = world.upstream.calls_to(Svc::CancelShipment);
    assert_eq!(cancel.len(), 1);
    assert_eq!(cancel[0].url, "https://shipping.test/orders/cs_1/cancel");
    assert_eq!(
        cancel[0].header("authorization"),
        Some(format!("Bearer {SHIPPING_KEY}").as_str())
    );
    assert_eq!(
        cancel[0].header("idempotency-key"),
        Some("stripe-edge:cs_1:cancel_shipment")
    );
    let body: serde_json::Value = serde_json::from_str(cancel[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"order_id": "cs_1", "shipment_id": "shp_1", "reason": "refunded"})
    );
    let revoked = world.ledger.step_row("cs_1", "revoke_license").unwrap();
    assert_eq!(revoked.state, StepState::Done);
    assert_eq!(revoked.event_id, "evt_refund");
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "cancel_shipment")
            .unwrap()
            .result
            .as_deref(),
        Some("cancelled")
    );

    // Delivered again, and again by the checkout event: nothing more is called.
    let again = deliver(&world, &refund("evt_refund", true));
    assert_eq!(again.verdict, Verdict::Recorded(Status::Duplicate));
    deliver(&world, &paid());
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 1)
    );
    assert_eq!(
        (calls(&world, Svc::License), calls(&world, Svc::Shipping)),
        (1, 1)
    );
    let logs = world.log.joined();
    assert!(!logs.contains("ada@example.com") && !logs.contains(LICENSE_KEY));
    assert!(!logs.contains("lic_1"), "license keys stay out of logs");
}

#[test]
fn twenty_concurrent_deliveries_of_a_refund_take_back_once() {
    let world = fulfilled();
    world.upstream.yield_in_calls.set(true);
    let body = refund("evt_refund", true);
    let decisions = block_on(join_all((0..20).map(|_| deliver_async(&world, &body))));
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 1)
    );
    assert!(decisions
        .iter()
        .all(|d| !matches!(d.verdict, Verdict::Refused(Refusal::Unavailable(_)))));
    // Twenty deliveries of a dispute for the same payment after it: still one each.
    let dispute = dispute("evt_dispute", "charge.dispute.created", "needs_response");
    block_on(join_all((0..20).map(|_| deliver_async(&world, &dispute))));
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 1)
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
}

#[test]
fn a_refund_before_the_checkout_event_means_nothing_is_fulfilled() {
    let world = World::new(full_config());
    let first = deliver(&world, &refund("evt_refund", true));
    assert_eq!(first.verdict, Verdict::Recorded(Status::Accepted));
    assert!(world
        .log
        .joined()
        .contains("reversal recorded for a purchase not known yet"));
    let decision = deliver(&world, &paid());
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
    assert_eq!(step_state(&world, "license"), Some(StepState::Cancelled));
    assert_eq!(step_state(&world, "shipping"), Some(StepState::Cancelled));
    assert_eq!(step_state(&world, "revoke_license"), None);
    for svc in [
        Svc::License,
        Svc::Shipping,
        Svc::Revoke,
        Svc::CancelShipment,
    ] {
        assert_eq!(calls(&world, svc), 0, "{svc:?}");
    }
    // A replay cannot bring the cancelled steps back.
    block_on(world.ledger.reset_failed("cs_1", NOW_MS)).unwrap();
    deliver(&world, &paid());
    assert_eq!(calls(&world, Svc::License), 0);
}

#[test]
fn a_refund_racing_the_first_delivery_takes_back_what_was_made_once() {
    let world = World::new(full_config());
    world.upstream.yield_in_calls.set(true);
    let (checkout, refunded) = block_on(join(
        deliver_async(&world, &paid()),
        deliver_async(&world, &refund("evt_refund", true)),
    ));
    assert_eq!(checkout.verdict, Verdict::Recorded(Status::Accepted));
    // The refund found the license and the shipment being made (they run side by
    // side): their holder finishes them, then takes each back.
    assert!(matches!(
        refunded.verdict,
        Verdict::Recorded(_) | Verdict::Refused(Refusal::Busy)
    ));
    assert_eq!(calls(&world, Svc::License), 1);
    assert_eq!(calls(&world, Svc::Revoke), 1);
    assert_eq!(calls(&world, Svc::Shipping), 1);
    assert_eq!(calls(&world, Svc::CancelShipment), 1);
    assert_eq!(step_state(&world, "cancel_shipment"), Some(StepState::Done));
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
    // Stripe's redelivery of the refund finds everything done.
    let again = deliver(&world, &refund("evt_refund", true));
    assert_eq!(again.verdict, Verdict::Recorded(Status::Duplicate));
    assert_eq!(calls(&world, Svc::Revoke), 1);
    assert_eq!(calls(&world, Svc::CancelShipment), 1);
}

#[test]
fn a_license_call_released_after_the_refund_never_runs_again() {
    let world = World::new(full_config());
    world.upstream.yield_in_calls.set(true);
    world.upstream.script(Svc::License, [status(503)]);
    block_on(join(
        deliver_async(&world, &paid()),
        deliver_async(&world, &refund("evt_refund", true)),
    ));
    assert_eq!(step_state(&world, "license"), Some(StepState::Cancelled));
    assert_eq!(
        world
            .ledger
            .step_row("cs_1", "revoke_license")
            .unwrap()
            .result
            .as_deref(),
        Some("none:not_fulfilled")
    );
    assert!(world
        .log
        .joined()
        .contains("take-back: forward step outcome unknown"));
    deliver(&world, &paid());
    assert_eq!(
        (calls(&world, Svc::License), calls(&world, Svc::Revoke)),
        (1, 0)
    );
}

#[test]
fn a_partial_refund_is_recorded_and_takes_nothing_back() {
    let world = fulfilled();
    let decision = deliver(&world, &refund("evt_partial", false));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(
        decision.disposition.map(|d| d.as_str()),
        Some("partial_refund")
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (0, 0)
    );
    let reversals = block_on(world.ledger.reversals_of("cs_1")).unwrap();
    assert_eq!(reversals.len(), 1);
    assert_eq!(reversals[0].kind, "partial_refund");
    assert!(world
        .log
        .joined()
        .contains("partial refund recorded: nothing taken back"));
}

#[test]
fn a_dispute_takes_back_unless_revoke_on_dispute_is_false() {
    let world = fulfilled();
    deliver(
        &world,
        &dispute("evt_dp", "charge.dispute.created", "needs_response"),
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Disputed));
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 1)
    );
    let cancel = &world.upstream.calls_to(Svc::CancelShipment)[0];
    assert!(cancel
        .body
        .as_deref()
        .unwrap()
        .contains(r#""reason":"disputed""#));
    // Closed (won or lost): the outcome is recorded; nothing is reinstated or called.
    let closed = deliver(
        &world,
        &dispute("evt_dp_closed", "charge.dispute.closed", "won"),
    );
    assert_eq!(closed.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Disputed));
    assert_eq!(calls(&world, Svc::Revoke), 1);
    let reversals = block_on(world.ledger.reversals_of("cs_1")).unwrap();
    assert_eq!(reversals[1].detail.as_deref(), Some("won"));

    let world = World::new(full_config_with(&[("REVOKE_ON_DISPUTE", "false")]));
    deliver(&world, &paid());
    let decision = deliver(
        &world,
        &dispute("evt_dp", "charge.dispute.created", "needs_response"),
    );
    assert_eq!(
        decision.disposition.map(|d| d.as_str()),
        Some("dispute_recorded")
    );
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (0, 0)
    );
}

#[test]
fn an_ended_subscription_revokes_its_license_and_cancels_nothing() {
    let world = World::new(full_config());
    deliver(&world, &subscription_session());
    assert_eq!(
        world.ledger.purchase("cs_sub"),
        Some(PurchaseState::Fulfilled)
    );
    let decision = deliver(&world, &subscription_deleted("evt_sub_end"));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(
        world.ledger.purchase("cs_sub"),
        Some(PurchaseState::Cancelled)
    );
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 0)
    );
    deliver(&world, &subscription_deleted("evt_sub_end"));
    assert_eq!(calls(&world, Svc::Revoke), 1);
}

#[test]
fn an_already_shipped_parcel_is_recorded_with_a_warning_and_not_retried() {
    let world = fulfilled();
    world.upstream.script(
        Svc::CancelShipment,
        [Ok(crate::ports::HttpResponse {
            status: 422,
            body: br#"{"error":"already_shipped"}"#.to_vec(),
            request_id: None,
        })],
    );
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    let row = world.ledger.step_row("cs_1", "cancel_shipment").unwrap();
    assert_eq!(
        (row.state, row.result.as_deref()),
        (StepState::Done, Some("shipped_before_cancel"))
    );
    assert!(world
        .log
        .joined()
        .contains("shipment already shipped: a return is needed"));
    deliver(&world, &refund("evt_refund", true));
    deliver(&world, &refund("evt_refund_2", true));
    assert_eq!(calls(&world, Svc::CancelShipment), 1, "no retry storm");
}

#[test]
fn an_unknown_license_fails_the_revoke_for_good_with_an_alert_and_stripe_gets_a_2xx() {
    let world = fulfilled();
    world.upstream.script(Svc::Revoke, [status(404)]);
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Failed));
    assert_eq!(
        step_state(&world, "revoke_license"),
        Some(StepState::Failed)
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
    assert!(world
        .log
        .lines()
        .iter()
        .any(|l| l.contains("take-back failed permanently") && l.contains("\"level\":\"alert\"")));
    deliver(&world, &refund("evt_refund", true));
    assert_eq!(calls(&world, Svc::Revoke), 1);
}

#[test]
fn a_shipping_outage_is_retried_with_the_same_key() {
    let world = fulfilled();
    world.upstream.script(Svc::CancelShipment, [status(503)]);
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(decision.verdict, Verdict::Refused(Refusal::Retry));
    assert_eq!(
        step_state(&world, "cancel_shipment"),
        Some(StepState::Pending)
    );
    let again = deliver(&world, &refund("evt_refund", true));
    assert_eq!(again.verdict, Verdict::Recorded(Status::Accepted));
    let cancels = world.upstream.calls_to(Svc::CancelShipment);
    assert_eq!(cancels.len(), 2);
    assert_eq!(
        cancels[0].header("idempotency-key"),
        cancels[1].header("idempotency-key")
    );
    assert_eq!(calls(&world, Svc::Revoke), 1);
}

#[test]
fn queue_mode_sends_the_take_back_to_the_consumer() {
    let world = fulfilled();
    world.queue_mode.set(true);
    *world.upstream.session.borrow_mut() = Some(session_json("cs_1", ""));
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(calls(&world, Svc::Revoke), 0, "the consumer does it");
    let sent = world.queue.sent.borrow().clone();
    assert_eq!(
        sent,
        vec![FulfilMessage {
            session_id: "cs_1".into(),
            event_id: "evt_refund".into()
        }]
    );
    world.queue_mode.set(false);
    for message in [sent[0].clone(), sent[0].clone()] {
        let verdict = block_on(consume(&world.deps(), Some(message), 0.5));
        assert_eq!(verdict, QueueVerdict::Ack);
    }
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 1)
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
}

#[test]
fn a_purchase_opened_before_its_ids_were_kept_is_found_once_touched_again() {
    let world = World::new(full_config());
    // Opened without ids, as before migration 0005.
    block_on(
        world
            .ledger
            .open_fulfilment("cs_1", false, "evt_old", &["license"], NOW_MS),
    )
    .unwrap();
    let recorded = deliver(&world, &refund("evt_refund", true));
    assert_eq!(recorded.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilling)
    );
    // Touched again (a redelivery, replay or re-drive): the ids are kept and the
    // refund applies before the license is made.
    deliver(&world, &paid());
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
    assert_eq!(calls(&world, Svc::License), 0);
}

#[test]
fn a_livemode_mismatch_takes_nothing_back() {
    let world = World::new(full_config_with(&[("STRIPE_LIVEMODE", "true")]));
    let decision = deliver(&world, &refund("evt_refund", true));
    assert_eq!(
        decision.disposition.map(|d| d.as_str()),
        Some("livemode_mismatch")
    );
    assert!(block_on(world.ledger.reversals_of("cs_1"))
        .unwrap()
        .is_empty());
    assert!(world.ledger.reversals.borrow().is_empty());
}

#[test]
fn the_ops_lookup_shows_the_reversed_state_its_take_backs_and_the_reversals() {
    use crate::ops::OpsCall;
    const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";
    let world = World::new(full_config_with(&[("ADMIN_TOKEN", TOKEN)]));
    deliver(&world, &paid());
    deliver(&world, &refund("evt_partial", false));
    deliver(&world, &refund("evt_refund", true));
    let authorization = format!("Bearer {TOKEN}");
    let lookup = |path: &'static str, query: Option<&'static str>| {
        let call = OpsCall {
            method: "GET",
            path,
            query,
            authorization: Some(&authorization),
            idempotency_key: None,
        };
        let (answer, line) = block_on(crate::ops::handle(&world.deps(), call, NOW_MS));
        let (reply, _) = crate::http::ops::respond(answer, line, 0);
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.value()
    };
    let body = lookup("/admin/purchases/cs_1", None);
    assert_eq!(body["purchase"]["state"], "refunded");
    let steps = body["steps"].as_array().unwrap();
    let step = |name: &str| steps.iter().find(|s| s["step"] == name).unwrap().clone();
    assert_eq!(step("revoke_license")["state"], "done");
    assert_eq!(step("cancel_shipment")["result"], "cancelled");
    assert_eq!(step("license")["result"], "lic_1");
    let kinds: Vec<&str> = body["reversals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["partial_refund", "refunded"]);
    assert_eq!(body["reversals"][1]["takes_back_as"], "refunded");
    assert_eq!(body["reversals"][1]["reference"], "pi_1");
    let listed = lookup("/admin/purchases", Some("state=refunded"));
    assert_eq!(listed["purchases"][0]["session_id"], "cs_1");
    assert!(!body.to_string().contains("ada@example.com"));
}

#[test]
fn a_replay_runs_a_failed_take_back_again_but_never_a_cancelled_forward_step() {
    use crate::ops::OpsCall;
    const TOKEN: &str = "adm_0123456789abcdef0123456789abcdef";
    let world = World::new(full_config_with(&[("ADMIN_TOKEN", TOKEN)]));
    *world.upstream.session.borrow_mut() = Some(session_json("cs_1", ""));
    // The license call fails for good (a bad slug, say): the purchase fails, and then
    // is refunded. The cancelled license must never be generated by a replay.
    world.upstream.script(Svc::License, [status(400)]);
    deliver(&world, &paid());
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Failed));
    world.upstream.script(Svc::CancelShipment, [status(404)]);
    let refunded = deliver(&world, &refund("evt_refund", true));
    assert_eq!(refunded.verdict, Verdict::Recorded(Status::Failed));
    assert_eq!(step_state(&world, "license"), Some(StepState::Cancelled));
    assert_eq!(
        step_state(&world, "cancel_shipment"),
        Some(StepState::Failed)
    );
    assert_eq!(
        step_state(&world, "revoke_license"),
        None,
        "no license was made"
    );

    let authorization = format!("Bearer {TOKEN}");
    let replay = || {
        let call = OpsCall {
            method: "POST",
            path: "/admin/purchases/cs_1/replay",
            query: None,
            authorization: Some(&authorization),
            idempotency_key: None,
        };
        let (answer, line) = block_on(crate::ops::handle(&world.deps(), call, NOW_MS));
        crate::http::ops::respond(answer, line, 0).0
    };
    assert_eq!(replay().status, 200);
    assert_eq!(step_state(&world, "cancel_shipment"), Some(StepState::Done));
    assert_eq!(step_state(&world, "license"), Some(StepState::Cancelled));
    replay();
    assert_eq!(
        calls(&world, Svc::CancelShipment),
        2,
        "the failed try, then the replay"
    );
    assert_eq!(
        calls(&world, Svc::License),
        1,
        "only the first, refused, try"
    );
    assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
}

#[test]
fn a_dispute_after_an_ended_subscription_cancels_the_boxed_shipment_as_disputed() {
    // A subscription sold with a parcel: its end revokes only; a dispute later cancels
    // the parcel. The purchase keeps the state of its first reversal (cancelled), so
    // the cancel's reason comes from the recorded reversals, not from that state.
    let world = World::new(full_config());
    let boxed = event(
        "evt_boxed",
        "checkout.session.completed",
        &session_json("cs_1", r#","mode":"subscription","subscription":"sub_1""#),
    );
    assert_eq!(
        deliver(&world, &boxed).verdict,
        Verdict::Recorded(Status::Accepted)
    );
    deliver(&world, &subscription_deleted("evt_sub_end"));
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Cancelled)
    );
    assert_eq!(
        (
            calls(&world, Svc::Revoke),
            calls(&world, Svc::CancelShipment)
        ),
        (1, 0)
    );
    let decision = deliver(
        &world,
        &dispute("evt_dp", "charge.dispute.created", "needs_response"),
    );
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    let cancel = world.upstream.calls_to(Svc::CancelShipment);
    assert_eq!(cancel.len(), 1);
    assert!(
        cancel[0]
            .body
            .as_deref()
            .unwrap()
            .contains(r#""reason":"disputed""#),
        "{:?}",
        cancel[0].body
    );
    assert_eq!(
        calls(&world, Svc::Revoke),
        1,
        "revoked once, by the first reversal"
    );
}
