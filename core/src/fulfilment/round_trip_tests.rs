//! Round trips to the ledger per delivery (issue: D1 calls are the network cost of a
//! delivery at the edge), counted by the in-memory ledger as the D1 adapter makes
//! them: one per port call, a round counting once. And the independent steps running
//! side by side.

use futures_executor::block_on;

use crate::ingress::{handle, Decision, Delivery, Refusal, Status, Verdict};
use crate::stripe::signature::sign_header;
use crate::testing::{email_config_with, full_config, Svc, World, NOW_MS, WEBHOOK_SECRET};

const ADDRESS: &str = r#""collected_information":{"shipping_details":{"name":"Ada","address":{"line1":"1 Row","city":"London","postal_code":"N1","country":"GB"}}}"#;

fn paid(event_id: &str, kind: &str) -> String {
    format!(
        r#"{{"id":"{event_id}","object":"event","type":"{kind}","livemode":false,"created":1700000000,"data":{{"object":
        {{"id":"cs_1","object":"checkout.session","payment_status":"paid","customer":"cus_1","payment_intent":"pi_1",
          "metadata":{{"slug":"pro"}},"customer_details":{{"email":"ada@example.com"}},{ADDRESS}}}}}}}"#
    )
}

/// Delivers `body` and returns the decision with the round trips it made.
fn deliver(world: &World, body: &str) -> (Decision, u32) {
    let before = world.ledger.calls.get();
    let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
    let delivery = Delivery {
        signature: Some(&header),
        body: body.as_bytes(),
        tags: None,
    };
    let decision = block_on(handle(&world.deps(), delivery, world.clock.0.get()));
    (decision, world.ledger.calls.get() - before)
}

#[test]
fn a_first_paid_delivery_makes_three_round_trips_and_a_duplicate_one() {
    let world = World::new(full_config());
    let (first, calls) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(first.verdict, Verdict::Recorded(Status::Accepted));
    // Open + claim both steps; the shipping order's first-body digest (it needs Stripe's
    // line items first); settle both + derive the state.
    assert_eq!(calls, 3, "first paid delivery");
    let (again, calls) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(again.verdict, Verdict::Recorded(Status::Duplicate));
    assert_eq!(calls, 1, "duplicate of a settled purchase");
    // Another event about the same, settled purchase (async_payment_succeeded).
    let (other, calls) = deliver(
        &world,
        &paid("evt_2", "checkout.session.async_payment_succeeded"),
    );
    assert_eq!(other.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(calls, 1, "a second event of a settled purchase");
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    assert_eq!(world.upstream.calls_to(Svc::Shipping).len(), 1);
}

#[test]
fn with_the_email_one_more_round_trip_carries_the_license_key() {
    let world = World::new(email_config_with(&[]));
    let (first, calls) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(first.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(calls, 4, "license ∥ shipping, then the e-mail");
    assert_eq!(world.upstream.calls_to(Svc::Email).len(), 1);
    let (_, calls) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(calls, 1);
}

#[test]
fn an_ignored_event_and_a_delivery_finding_every_step_held_make_one() {
    let world = World::new(full_config());
    let ignored = r#"{"id":"evt_x","object":"event","type":"payment_intent.succeeded","livemode":false,"created":1700000000,"data":{"object":{"id":"pi_1","object":"payment_intent"}}}"#;
    let (decision, calls) = deliver(&world, ignored);
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Ignored));
    assert_eq!(calls, 1, "ignored event");

    // Another delivery holds both steps (claimed, lease running).
    block_on(async {
        let l = &world.ledger;
        l.open_fulfilment("cs_1", false, "evt_1", &["license", "shipping"], NOW_MS)
            .await
            .unwrap();
        for step in ["license", "shipping"] {
            l.claim_step("cs_1", step, NOW_MS, NOW_MS + 20_000)
                .await
                .unwrap()
                .unwrap();
        }
    });
    let (busy, calls) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(busy.verdict, Verdict::Refused(Refusal::Busy));
    assert_eq!(calls, 1, "refused as busy");
    assert!(world.upstream.calls_to(Svc::License).is_empty());
}

#[test]
fn license_and_shipping_are_in_flight_together_and_the_email_follows_the_license() {
    let world = World::new(email_config_with(&[]));
    world.upstream.yield_in_calls.set(true);
    let (decision, _) = deliver(&world, &paid("evt_1", "checkout.session.completed"));
    assert_eq!(decision.verdict, Verdict::Recorded(Status::Accepted));
    let timeline = world.upstream.timeline.borrow().clone();
    let at = |svc, answered| timeline.iter().position(|e| *e == (svc, answered)).unwrap();
    // Shipping (its Stripe read first) started before the license was answered.
    assert!(
        at(Svc::LineItems, false) < at(Svc::License, true),
        "{timeline:?}"
    );
    assert!(
        at(Svc::Email, false) > at(Svc::License, true),
        "{timeline:?}"
    );
}

#[test]
fn a_conflicting_event_id_opens_nothing_in_its_one_round_trip() {
    let world = World::new(full_config());
    deliver(&world, &paid("evt_1", "checkout.session.completed"));
    let other = paid("evt_1", "checkout.session.completed").replace("cs_1", "cs_2");
    let (decision, calls) = deliver(&world, &other);
    assert_eq!(
        decision.verdict,
        Verdict::Refused(Refusal::ConflictingEvent)
    );
    assert_eq!(calls, 1);
    assert_eq!(world.ledger.purchase("cs_2"), None);
    assert!(world.ledger.step_row("cs_2", "license").is_none());
}

fn refund(event_id: &str, refunded: u32) -> String {
    format!(
        r#"{{"id":"{event_id}","object":"event","type":"charge.refunded","livemode":false,"created":1700000000,"data":{{"object":
        {{"id":"ch_1","object":"charge","payment_intent":"pi_1","amount":3000,"amount_refunded":{refunded},"refunded":{full}}}}}}}"#,
        full = refunded == 3000
    )
}

#[test]
fn a_full_refund_takes_back_in_three_round_trips_its_duplicate_in_two_a_partial_in_one() {
    let world = World::new(full_config());
    deliver(&world, &paid("evt_1", "checkout.session.completed"));
    world.upstream.yield_in_calls.set(true);
    world.upstream.timeline.borrow_mut().clear();
    let (first, calls) = deliver(&world, &refund("evt_refund", 3000));
    assert_eq!(first.verdict, Verdict::Recorded(Status::Accepted));
    // Claim the event and record the reversal (applied to the purchase in the same
    // transaction); take both take-back steps and read every step; settle both and
    // derive the state.
    assert_eq!(calls, 3, "full refund");
    // The revoke and the cancel are in flight together.
    let timeline = world.upstream.timeline.borrow().clone();
    let at = |svc, answered| timeline.iter().position(|e| *e == (svc, answered)).unwrap();
    assert!(
        at(Svc::CancelShipment, false) < at(Svc::Revoke, true)
            && at(Svc::Revoke, false) < at(Svc::CancelShipment, true),
        "{timeline:?}"
    );
    assert_eq!(world.upstream.calls_to(Svc::Revoke).len(), 1);
    assert_eq!(world.upstream.calls_to(Svc::CancelShipment).len(), 1);
    // The redelivery: claim (seen) and record (already there), one round finding both
    // done.
    let (again, calls) = deliver(&world, &refund("evt_refund", 3000));
    assert_eq!(again.verdict, Verdict::Recorded(Status::Duplicate));
    assert_eq!(calls, 2, "duplicate refund");
    // A partial refund only records: claim and record.
    let (partial, calls) = deliver(&world, &refund("evt_partial", 1000));
    assert_eq!(partial.verdict, Verdict::Recorded(Status::Accepted));
    assert_eq!(calls, 1, "partial refund");
    assert_eq!(world.upstream.calls_to(Svc::Revoke).len(), 1);
}

#[test]
fn a_refund_under_a_conflicting_event_id_records_nothing_in_its_one_round_trip() {
    let world = World::new(full_config());
    deliver(&world, &paid("evt_1", "checkout.session.completed"));
    // The checkout event's id, reused for a refund: not that event.
    let (decision, calls) = deliver(&world, &refund("evt_1", 3000));
    assert_eq!(
        decision.verdict,
        Verdict::Refused(Refusal::ConflictingEvent)
    );
    assert_eq!(calls, 1);
    assert!(
        world.ledger.reversals.borrow().is_empty(),
        "no reversal recorded"
    );
    assert_eq!(world.upstream.calls_to(Svc::Revoke).len(), 0);
}
