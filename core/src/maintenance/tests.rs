//! Replays, re-drives and retention, natively.

use futures_executor::block_on;

use crate::fulfilment::{resume, ResumeError, RunOutcome};
use crate::ingress::{handle, Delivery, Refusal, Status, Verdict};
use crate::maintenance::{run, IDLE_BEFORE_REDRIVE_MS};
use crate::ports::ledger::{EventRecord, Ledger, PurchaseState, StepState};
use crate::stripe::signature::sign_header;
use crate::testing::{full_config, status, Svc, World, NOW_MS, WEBHOOK_SECRET};

const SESSION: &str = r#"{"id":"cs_1","object":"checkout.session","payment_status":"paid","livemode":false,
    "customer":"cus_1","payment_intent":"pi_1","metadata":{"slug":"pro"},
    "customer_details":{"email":"ada@example.com","name":"Ada"}}"#;

fn paid_event() -> String {
    format!(
        r#"{{"id":"evt_1","object":"event","type":"checkout.session.completed","livemode":false,"data":{{"object":{SESSION}}}}}"#
    )
}

fn deliver(world: &World) -> Verdict {
    let body = paid_event();
    let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
    let delivery = Delivery {
        signature: Some(&header),
        body: body.as_bytes(),
        tags: None,
    };
    block_on(handle(&world.deps(), delivery, world.clock.0.get())).verdict
}

fn world() -> World {
    let world = World::new(full_config());
    world.upstream.session.replace(Some(SESSION.into()));
    world
}

#[test]
fn a_replay_after_a_permanent_failure_runs_only_the_failed_step_once() {
    let world = world();
    world.upstream.script(Svc::License, [status(400)]);
    assert_eq!(deliver(&world), Verdict::Recorded(Status::Failed));
    let ledger = &world.ledger;
    assert_eq!(block_on(ledger.reset_failed("cs_1", NOW_MS)).unwrap(), 1);
    assert_eq!(ledger.purchase("cs_1"), Some(PurchaseState::Fulfilling));
    let report = block_on(resume(&world.deps(), "cs_1", NOW_MS)).unwrap();
    assert_eq!(report.outcome, RunOutcome::Complete);
    assert_eq!(ledger.purchase("cs_1"), Some(PurchaseState::Fulfilled));
    let calls = world.upstream.calls_to(Svc::License);
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].body, calls[1].body,
        "the replay resends the original request"
    );
    // A second replay finds nothing to do: done steps stay done.
    assert_eq!(block_on(ledger.reset_failed("cs_1", NOW_MS)).unwrap(), 0);
    block_on(resume(&world.deps(), "cs_1", NOW_MS)).unwrap();
    assert_eq!(world.upstream.calls_to(Svc::License).len(), 2);
}

#[test]
fn resuming_an_unknown_purchase_or_without_a_stripe_key_says_why() {
    let world = world();
    assert_eq!(
        block_on(resume(&world.deps(), "cs_none", NOW_MS)).unwrap_err(),
        ResumeError::Unknown
    );
    world.upstream.script(Svc::License, [status(503)]);
    deliver(&world);
    let no_key = World::new(crate::settings::Config {
        stripe_api_key: None,
        ..full_config()
    });
    assert_eq!(
        block_on(resume(&no_key.deps(), "cs_1", NOW_MS)).unwrap_err(),
        ResumeError::Unknown,
        "no steps: unknown, key or no key"
    );
    block_on(
        no_key
            .ledger
            .open_fulfilment("cs_1", false, "evt_1", &["license"], NOW_MS),
    )
    .unwrap();
    assert!(matches!(
        block_on(resume(&no_key.deps(), "cs_1", NOW_MS)),
        Err(ResumeError::Session(
            crate::upstream::StepError::NotConfigured("STRIPE_API_KEY")
        ))
    ));
}

#[test]
fn the_ledger_decides_an_unknown_purchase_whatever_stripe_answers_about_its_session() {
    // The steps and the session are read side by side: Stripe is asked, and its answer
    // (a session, or a failure) does not turn an unknown purchase into a known one.
    let world = world();
    assert_eq!(
        block_on(resume(&world.deps(), "cs_none", NOW_MS)).unwrap_err(),
        ResumeError::Unknown
    );
    world.upstream.script(Svc::Session, [status(503)]);
    assert_eq!(
        block_on(resume(&world.deps(), "cs_none", NOW_MS)).unwrap_err(),
        ResumeError::Unknown
    );
    assert!(world.upstream.calls_to(Svc::License).is_empty());
    // A known purchase: one session read per resume, then its steps.
    world.upstream.script(Svc::License, [status(503)]);
    deliver(&world);
    let before = world.upstream.calls_to(Svc::Session).len();
    let report = block_on(resume(&world.deps(), "cs_1", NOW_MS)).unwrap();
    assert_eq!(report.outcome, RunOutcome::Complete);
    assert_eq!(world.upstream.calls_to(Svc::Session).len(), before + 1);
}

#[test]
fn the_scheduled_run_finishes_a_step_whose_holder_died() {
    let world = world();
    let ledger = &world.ledger;
    block_on(async {
        ledger
            .open_fulfilment("cs_1", false, "evt_1", &["license"], NOW_MS)
            .await
            .unwrap();
        // A delivery claimed the step and died: running, lease expiring in 20 s.
        ledger
            .claim_step("cs_1", "license", NOW_MS, NOW_MS + 20_000)
            .await
            .unwrap();
    });
    world.clock.0.set(NOW_MS + 10_000);
    assert_eq!(
        block_on(run(&world.deps())).redriven,
        0,
        "the lease still holds"
    );
    world.clock.0.set(NOW_MS + 20_000);
    let summary = block_on(run(&world.deps()));
    assert_eq!((summary.redriven, summary.completed), (1, 1));
    assert_eq!(
        ledger.step_row("cs_1", "license").unwrap().state,
        StepState::Done
    );
    assert_eq!(ledger.step_row("cs_1", "license").unwrap().attempts, 2);
}

#[test]
fn the_scheduled_run_leaves_recently_released_steps_to_stripe_for_a_minute() {
    let world = world();
    world.upstream.script(Svc::License, [status(503)]);
    assert_eq!(deliver(&world), Verdict::Refused(Refusal::Retry));
    assert_eq!(block_on(run(&world.deps())).redriven, 0);
    world.clock.0.set(NOW_MS + IDLE_BEFORE_REDRIVE_MS + 1);
    assert_eq!(block_on(run(&world.deps())).completed, 1);
    assert_eq!(
        world.ledger.purchase("cs_1"),
        Some(PurchaseState::Fulfilled)
    );
}

#[test]
fn retention_prunes_old_events_but_keeps_unfinished_purchases_and_all_mappings() {
    let world = world();
    let day = 86_400_000;
    let record = |id: &str, object: &str, at: u64| EventRecord {
        id: id.into(),
        kind: "checkout.session.completed".into(),
        livemode: false,
        api_version: None,
        created: None,
        object_id: Some(object.into()),
        disposition: "fulfil",
        received_at_ms: at,
    };
    let ledger = &world.ledger;
    block_on(async {
        ledger
            .claim_event(&record("evt_old_done", "cs_done", NOW_MS - 40 * day))
            .await
            .unwrap();
        ledger
            .claim_event(&record("evt_old_open", "cs_open", NOW_MS - 40 * day))
            .await
            .unwrap();
        ledger
            .claim_event(&record("evt_recent", "cs_done", NOW_MS - day))
            .await
            .unwrap();
        ledger
            .open_fulfilment("cs_done", false, "evt_old_done", &[], NOW_MS)
            .await
            .unwrap();
        ledger
            .open_fulfilment("cs_open", false, "evt_old_open", &["license"], NOW_MS)
            .await
            .unwrap();
    });
    world.upstream.script(Svc::License, [status(503)]);
    world.upstream.session.replace(None); // the re-drive cannot finish cs_open
    let summary = block_on(run(&world.deps()));
    assert_eq!(summary.pruned, 1);
    let events = ledger.events.borrow();
    assert!(!events.contains_key("evt_old_done"));
    assert!(events.contains_key("evt_old_open") && events.contains_key("evt_recent"));
    assert!(ledger.purchase("cs_done").is_some() && ledger.purchase("cs_open").is_some());
}

#[test]
fn the_scheduled_run_prunes_old_code_windows_and_logs_one_summary() {
    use crate::maintenance::{scheduled, CODE_WINDOWS_KEPT_SECS};
    use crate::ports::Throttle;
    use crate::testing::MemoryThrottle;
    let world = world();
    let throttle = MemoryThrottle::default();
    let now_secs = NOW_MS / 1000;
    block_on(throttle.hit("old", now_secs - CODE_WINDOWS_KEPT_SECS - 600)).unwrap();
    block_on(throttle.hit("new", now_secs - 600)).unwrap();
    block_on(scheduled(&world.deps(), &throttle));
    assert_eq!(
        throttle.counts.borrow().len(),
        1,
        "only the old window goes"
    );
    let log = world.log.joined();
    assert!(log.contains(r#""msg":"scheduled run""#) && log.contains(r#""code_windows_pruned":1"#));
}

#[test]
fn a_failed_task_never_hides_the_summary_nor_stops_the_other_tasks() {
    use crate::maintenance::{scheduled, CODE_WINDOWS_KEPT_SECS};
    use crate::ports::Throttle;
    use crate::testing::MemoryThrottle;
    // The ledger is down: reconciliation, re-drive and retention fail, the code-window
    // prune still runs, and the summary names what failed.
    let world = world();
    let throttle = MemoryThrottle::default();
    block_on(throttle.hit("old", NOW_MS / 1000 - CODE_WINDOWS_KEPT_SECS - 600)).unwrap();
    world.ledger.unavailable.set(true);
    block_on(scheduled(&world.deps(), &throttle));
    assert!(throttle.counts.borrow().is_empty(), "the prune still ran");
    let log = world.log.joined();
    assert!(log.contains(r#""msg":"scheduled run""#), "{log}");
    assert!(
        log.contains(r#""failed":["reconcile","redrive","retention"]"#),
        "{log}"
    );
    assert_eq!(log.matches(r#""msg":"scheduled task failed""#).count(), 3);
    // D1 refuses the throttle prune: the summary is still written.
    let world = self::world();
    throttle.unavailable.set(true);
    block_on(scheduled(&world.deps(), &throttle));
    let log = world.log.joined();
    assert!(
        log.contains(r#""msg":"scheduled run""#) && log.contains(r#""failed":["code_windows"]"#),
        "{log}"
    );
}

#[test]
fn purchases_stripe_can_no_longer_return_never_starve_the_re_drive() {
    let world = world();
    world.upstream.session.replace(None); // every session 404s...
    let healthy = SESSION.replace("cs_1", "cs_healthy");
    world
        .upstream
        .sessions
        .borrow_mut()
        .insert("cs_healthy".into(), healthy.clone()); // ...but this one
    world
        .upstream
        .script(Svc::License, (0..11).map(|_| status(503)));
    let stuck: Vec<String> = (0..10).map(|n| format!("cs_stuck{n}")).collect();
    for (n, id) in stuck.iter().enumerate() {
        let body = format!(
            r#"{{"id":"evt_s{n}","object":"event","type":"checkout.session.completed","livemode":false,"data":{{"object":{}}}}}"#,
            SESSION.replace("cs_1", id)
        );
        deliver_body(&world, &body);
    }
    world.clock.0.set(NOW_MS + 1);
    let body = format!(
        r#"{{"id":"evt_h","object":"event","type":"checkout.session.completed","livemode":false,"data":{{"object":{healthy}}}}}"#
    );
    deliver_body(&world, &body);
    // Run 1: the ten oldest fill every slot and cannot be resumed.
    world.clock.0.set(NOW_MS + IDLE_BEFORE_REDRIVE_MS + 10);
    let first = block_on(run(&world.deps()));
    assert_eq!((first.redriven, first.completed), (10, 0));
    // Run 2: the healthy purchase is not behind them any more.
    world.clock.0.set(NOW_MS + 3 * IDLE_BEFORE_REDRIVE_MS);
    block_on(run(&world.deps()));
    assert_eq!(
        world.ledger.purchase("cs_healthy"),
        Some(PurchaseState::Fulfilled)
    );
    let log = world.log.joined();
    assert_eq!(
        log.matches(r#""msg":"re-drive cannot resume a purchase""#)
            .count(),
        10,
        "one alert each"
    );
    assert!(log.contains(r#""level":"alert""#));
}

fn deliver_body(world: &World, body: &str) {
    let header = sign_header(WEBHOOK_SECRET, (NOW_MS / 1000) as i64, body.as_bytes());
    let delivery = Delivery {
        signature: Some(&header),
        body: body.as_bytes(),
        tags: None,
    };
    block_on(handle(&world.deps(), delivery, world.clock.0.get()));
}

mod queue_mode {
    use super::*;
    use crate::maintenance::QUEUE_IDLE_BEFORE_REDRIVE_MS;
    use crate::ports::FulfilMessage;
    use crate::queue_mode::{consumer, QueueVerdict};

    fn queued_world() -> World {
        let world = world();
        world.queue_mode.set(true);
        world
    }

    #[test]
    fn ingress_records_pending_steps_sends_one_message_and_calls_nothing() {
        let world = queued_world();
        assert_eq!(deliver(&world), Verdict::Recorded(Status::Accepted));
        assert!(
            world.upstream.calls.borrow().is_empty(),
            "200 before any upstream call"
        );
        assert_eq!(
            *world.queue.sent.borrow(),
            vec![FulfilMessage {
                session_id: "cs_1".into(),
                event_id: "evt_1".into()
            }]
        );
        assert_eq!(
            world.ledger.step_row("cs_1", "license").unwrap().state,
            StepState::Pending
        );
    }

    #[test]
    fn a_failed_send_answers_503_and_the_redelivery_sends_again() {
        let world = queued_world();
        world.queue.failing.set(true);
        assert_eq!(deliver(&world), Verdict::Refused(Refusal::QueueUnavailable));
        world.queue.failing.set(false);
        assert_eq!(deliver(&world), Verdict::Recorded(Status::Accepted));
        assert_eq!(world.queue.sent.borrow().len(), 1);
    }

    #[test]
    fn once_the_consumer_finished_a_redelivery_is_a_quiet_duplicate() {
        let world = queued_world();
        deliver(&world);
        let report = block_on(resume(&world.deps(), "cs_1", NOW_MS)).unwrap();
        assert_eq!(report.outcome, RunOutcome::Complete);
        assert_eq!(deliver(&world), Verdict::Recorded(Status::Duplicate));
        assert_eq!(world.queue.sent.borrow().len(), 1, "nothing left to send");
        // A duplicate message runs nothing twice.
        block_on(resume(&world.deps(), "cs_1", NOW_MS)).unwrap();
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
    }

    /// Runs one message through the real consumer, as the Worker's queue entry does
    /// (inline deps: the consumer never enqueues).
    fn consume(world: &World) -> QueueVerdict {
        world.queue_mode.set(false);
        let message = Some(FulfilMessage {
            session_id: "cs_1".into(),
            event_id: "evt_1".into(),
        });
        let verdict = block_on(consumer::consume(&world.deps(), message, 0.5));
        world.queue_mode.set(true);
        verdict
    }

    #[test]
    fn the_consumer_acks_a_finished_purchase_and_backs_off_a_failing_one() {
        let world = queued_world();
        deliver(&world);
        world.upstream.script(Svc::License, [status(503)]);
        assert_eq!(consume(&world), QueueVerdict::Retry(10));
        assert!(world.log.joined().contains(r#""verdict":"retry""#));
        assert_eq!(consume(&world), QueueVerdict::Ack);
        assert_eq!(
            world.ledger.purchase("cs_1"),
            Some(PurchaseState::Fulfilled)
        );
        assert_eq!(consume(&world), QueueVerdict::Ack, "a duplicate message");
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 2);
    }

    #[test]
    fn the_consumer_runs_the_email_after_the_license_and_sends_it_once() {
        let world = World::new(crate::testing::email_config_with(&[]));
        world.upstream.session.replace(Some(SESSION.into()));
        world.queue_mode.set(true);
        assert_eq!(deliver(&world), Verdict::Recorded(Status::Accepted));
        assert!(world.upstream.calls.borrow().is_empty());
        // The ledger lists steps by name (email first); the consumer still runs the
        // license first, so the e-mail never waits on a license it could have had.
        world.upstream.script(Svc::Email, [status(503)]);
        assert_eq!(consume(&world), QueueVerdict::Retry(10));
        assert_eq!(consume(&world), QueueVerdict::Ack);
        let emails = world.upstream.calls_to(Svc::Email);
        assert_eq!(emails.len(), 2);
        assert_eq!(emails[0].body, emails[1].body);
        assert!(emails[1].body.as_deref().unwrap().contains("lic_1"));
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
        assert_eq!(consume(&world), QueueVerdict::Ack, "a duplicate message");
        assert_eq!(world.upstream.calls_to(Svc::Email).len(), 2);
    }

    #[test]
    fn attempts_that_run_out_fail_the_waiting_steps() {
        let world = queued_world();
        deliver(&world);
        world
            .upstream
            .script(Svc::License, (0..6).map(|_| status(503)));
        let max = world.config.max_attempts;
        let verdicts: Vec<QueueVerdict> = (0..max).map(|_| consume(&world)).collect();
        assert!(matches!(verdicts[0], QueueVerdict::Retry(10)));
        assert_eq!(verdicts.last(), Some(&QueueVerdict::Exhausted));
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == QueueVerdict::Exhausted)
                .count(),
            1
        );
        let license = world.ledger.step_row("cs_1", "license").unwrap();
        assert_eq!(license.state, StepState::Failed);
        assert!(license
            .last_error
            .unwrap()
            .starts_with("attempts exhausted"));
        assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Failed));
        assert!(world.log.joined().contains("fulfilment attempts exhausted"));
    }

    #[test]
    fn exhaustion_fails_a_step_its_dead_holder_left_running_and_ends_the_purchase() {
        let world = queued_world();
        deliver(&world);
        let max = world.config.max_attempts;
        {
            let mut steps = world.ledger.steps.borrow_mut();
            let row = steps.get_mut(&("cs_1".to_string(), "license")).unwrap();
            row.state = StepState::Running;
            row.attempts = max;
            row.lease_until = Some(NOW_MS - 1);
            row.last_error = Some("license server timed out".into());
        }
        // Stripe is down, so no run can take the step over.
        world.upstream.script(Svc::Session, [status(503)]);
        assert_eq!(consume(&world), QueueVerdict::Exhausted);
        let license = world.ledger.step_row("cs_1", "license").unwrap();
        assert_eq!(license.state, StepState::Failed);
        assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Failed));
        assert!(world.log.joined().contains("fulfilment attempts exhausted"));
    }

    #[test]
    fn a_session_stripe_refuses_counts_as_an_attempt_and_ends_in_an_alert() {
        let world = queued_world();
        deliver(&world);
        world.upstream.session.replace(None); // Stripe answers 404
        let max = world.config.max_attempts;
        let verdicts: Vec<QueueVerdict> = (0..max).map(|_| consume(&world)).collect();
        assert_eq!(verdicts[0], QueueVerdict::Retry(10));
        assert_eq!(verdicts.last(), Some(&QueueVerdict::Exhausted));
        assert_eq!(
            world.ledger.step_row("cs_1", "license").unwrap().state,
            StepState::Failed
        );
        assert!(world.upstream.calls_to(Svc::License).is_empty());
    }

    #[test]
    fn an_unreadable_message_is_acked_with_an_error_and_a_dead_letter_alerts() {
        let world = queued_world();
        assert_eq!(consumer::decode("{\"nope\": 1}"), None);
        world.queue_mode.set(false);
        assert_eq!(
            block_on(consumer::consume(&world.deps(), None, 0.5)),
            QueueVerdict::Ack
        );
        assert!(world.log.joined().contains("queue message unreadable"));
        let message = consumer::decode(r#"{"session_id":"cs_9","event_id":"evt_9"}"#);
        assert_eq!(
            consumer::dead_letter(&world.log, message),
            QueueVerdict::Ack
        );
        assert!(world
            .log
            .joined()
            .contains(r#""msg":"fulfilment dead-lettered""#));
    }

    #[test]
    fn the_dead_letter_queue_is_the_one_the_setting_names_whatever_its_name() {
        use crate::queue_mode::is_dead_letter_queue;
        use crate::testing::full_config_with;
        let unset = full_config_with(&[]);
        assert!(!is_dead_letter_queue(&unset, "stripe-edge-fulfilment-dlq"));
        let named = full_config_with(&[("DEAD_LETTER_QUEUE", "graveyard")]);
        assert!(is_dead_letter_queue(&named, "graveyard"));
        assert!(!is_dead_letter_queue(&named, "stripe-edge-fulfilment-dlq"));
        assert!(!is_dead_letter_queue(&named, "stripe-edge-fulfilment"));
    }

    #[test]
    fn the_scheduled_run_re_enqueues_only_after_the_longest_backoff() {
        let world = queued_world();
        deliver(&world);
        world.clock.0.set(NOW_MS + IDLE_BEFORE_REDRIVE_MS + 1);
        assert_eq!(block_on(run(&world.deps())).enqueued, 0);
        world.clock.0.set(NOW_MS + QUEUE_IDLE_BEFORE_REDRIVE_MS + 1);
        assert_eq!(block_on(run(&world.deps())).enqueued, 1);
        assert_eq!(world.queue.sent.borrow().len(), 2);
        assert!(
            world.upstream.calls_to(Svc::License).is_empty()
                && world.upstream.calls_to(Svc::Shipping).is_empty(),
            "queue mode re-drives through the queue"
        );
    }
}

mod reconciliation {
    use super::*;
    use crate::maintenance::{
        RECONCILED_TYPES, RECONCILE_CURSOR, RECONCILE_FIRST_LOOKBACK_SECS,
        RECONCILE_FIRST_WINDOW_SECS,
    };
    use std::collections::BTreeSet;

    const NOW_SECS: i64 = (NOW_MS / 1000) as i64;
    const SCHEDULE_MS: u64 = 5 * 60_000;

    fn listed_event(id: &str, session: &str, created: i64) -> String {
        format!(
            r#"{{"id":"{id}","object":"event","type":"checkout.session.completed","livemode":false,"created":{created},
               "data":{{"object":{{"id":"{session}","object":"checkout.session","payment_status":"paid","metadata":{{"slug":"pro"}}}}}}}}"#
        )
    }

    /// `n` never-delivered Checkout events spread evenly over the `secs` before the
    /// present, newest first as Stripe lists them.
    fn backlog(n: usize, secs: i64) -> Vec<String> {
        (0..n)
            .map(|k| {
                let created = NOW_SECS - 60 - (k as i64 * secs) / n as i64;
                listed_event(&format!("evt_{k:05}"), &format!("cs_{k:05}"), created)
            })
            .collect()
    }

    fn cursor(world: &World) -> Option<i64> {
        world.ledger.cursors.borrow().get(RECONCILE_CURSOR).copied()
    }

    fn license_keys(world: &World) -> Vec<String> {
        world
            .upstream
            .calls_to(Svc::License)
            .iter()
            .map(|c| {
                c.headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("idempotency-key"))
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            })
            .collect()
    }

    #[test]
    fn an_unreadable_stripe_livemode_keeps_the_cursor_so_nothing_listed_is_lost() {
        let mut world = world();
        world.config = crate::testing::full_config_with(&[("STRIPE_LIVEMODE", "yes")]);
        world
            .upstream
            .events
            .replace(vec![listed_event("evt_lost", "cs_lost", NOW_SECS - 1_000)]);
        block_on(run(&world.deps()));
        assert!(!world.ledger.events.borrow().contains_key("evt_lost"));
        let kept = cursor(&world);
        assert!(
            kept.is_none_or(|c| c < NOW_SECS - 1_000),
            "the cursor must stay before the refused event: {kept:?}"
        );
        // Fixed: the next run ingests and fulfils it.
        world.config = crate::testing::full_config();
        world.clock.0.set(NOW_MS + SCHEDULE_MS);
        assert_eq!(block_on(run(&world.deps())).reconciled, 1);
        assert_eq!(
            world.ledger.purchase("cs_lost"),
            Some(PurchaseState::Fulfilled)
        );
    }

    #[test]
    fn an_event_never_delivered_is_ingested_and_fulfilled_once() {
        let world = world();
        world
            .upstream
            .events
            .replace(vec![listed_event("evt_lost", "cs_lost", NOW_SECS - 1_000)]);
        let summary = block_on(run(&world.deps()));
        assert_eq!(summary.reconciled, 1);
        assert_eq!(summary.reconcile_behind_secs, 0);
        assert!(world.ledger.events.borrow().contains_key("evt_lost"));
        assert_eq!(
            world.ledger.purchase("cs_lost"),
            Some(PurchaseState::Fulfilled)
        );
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
        let listing = &world.upstream.calls_to(Svc::Events)[0].url;
        let since = NOW_SECS - RECONCILE_FIRST_LOOKBACK_SECS;
        let until = since + RECONCILE_FIRST_WINDOW_SECS;
        assert!(
            listing.contains(&format!("created%5Bgte%5D={since}&created%5Blt%5D={until}")),
            "{listing}"
        );
        assert_eq!(cursor(&world), Some(NOW_SECS), "caught up: the present");

        // Listed again by the next run (overlap): not ingested twice.
        world.clock.0.set(NOW_MS + SCHEDULE_MS);
        assert_eq!(block_on(run(&world.deps())).reconciled, 0);
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
        assert!(world
            .log
            .joined()
            .contains("reconciled an event never delivered"));
    }

    #[test]
    fn every_type_the_worker_acts_on_is_listed_so_a_lost_refund_is_taken_back() {
        use crate::fulfilment::{plan, reversal};
        for kind in RECONCILED_TYPES {
            assert!(
                plan::needs_session(kind) || reversal::is_reversal_type(kind),
                "{kind}"
            );
        }
        let world = world();
        world.upstream.session.replace(Some(SESSION.into()));
        let refund = format!(
            r#"{{"id":"evt_refund","object":"event","type":"charge.refunded","livemode":false,"created":{},
               "data":{{"object":{{"id":"ch_1","object":"charge","payment_intent":"pi_1","amount":3000,
               "amount_refunded":3000,"refunded":true,"currency":"usd"}}}}}}"#,
            NOW_SECS - 100
        );
        let paid = paid_event().replacen(
            r#""livemode":false"#,
            &format!(r#""livemode":false,"created":{}"#, NOW_SECS - 200),
            1,
        );
        world.upstream.events.replace(vec![refund, paid]);
        assert_eq!(block_on(run(&world.deps())).reconciled, 2);
        let listing = &world.upstream.calls_to(Svc::Events)[0].url;
        for kind in RECONCILED_TYPES {
            assert!(
                listing.contains(&format!("types%5B%5D={kind}&"))
                    || listing.ends_with(&format!("types%5B%5D={kind}")),
                "{kind}: {listing}"
            );
        }
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 1);
        assert_eq!(world.upstream.calls_to(Svc::Revoke).len(), 1, "taken back");
        assert_eq!(world.ledger.purchase("cs_1"), Some(PurchaseState::Refunded));
    }

    #[test]
    fn events_already_in_the_ledger_are_left_to_their_deliveries() {
        let world = world();
        world.upstream.script(Svc::License, [status(503)]);
        assert_eq!(deliver(&world), Verdict::Refused(Refusal::Retry));
        let listed = paid_event().replacen(
            r#""livemode":false"#,
            &format!(r#""livemode":false,"created":{}"#, NOW_SECS - 100),
            1,
        );
        world.upstream.events.replace(vec![listed]);
        assert_eq!(block_on(run(&world.deps())).reconciled, 0);
        assert_eq!(
            world.upstream.calls_to(Svc::License).len(),
            1,
            "a seen event is skipped"
        );
    }

    #[test]
    fn every_page_is_listed_and_a_failed_listing_keeps_the_cursor() {
        let world = world();
        world.upstream.events.replace(backlog(150, 60));
        assert_eq!(block_on(run(&world.deps())).reconciled, 150);
        let listings = world.upstream.calls_to(Svc::Events);
        let paged = listings
            .iter()
            .find(|c| c.url.contains("starting_after"))
            .expect("a second page");
        assert!(
            paged.url.ends_with("&starting_after=evt_00099"),
            "{}",
            paged.url
        );

        let failing = super::world();
        failing.upstream.events.replace(backlog(1, 60));
        failing.upstream.script(Svc::Events, [status(500)]);
        let summary = block_on(run(&failing.deps()));
        assert_eq!(summary.reconciled, 0);
        assert_eq!(
            summary.reconcile_behind_secs,
            RECONCILE_FIRST_LOOKBACK_SECS as u64
        );
        assert!(failing.ledger.cursors.borrow().is_empty());
        let log = failing.log.joined();
        assert!(log.contains("reconciliation could not list events"));
        assert!(log.contains(r#""msg":"reconciliation continues next run""#));
        // The next run lists the same window again and finds the event.
        assert_eq!(block_on(run(&failing.deps())).reconciled, 1);
    }

    #[test]
    fn without_a_stripe_key_nothing_is_listed() {
        let world = World::new(crate::settings::Config {
            stripe_api_key: None,
            ..full_config()
        });
        assert_eq!(block_on(run(&world.deps())).reconciled, 0);
        assert!(world.upstream.calls.borrow().is_empty());
    }

    #[test]
    fn nothing_new_leaves_the_cursor_at_the_present_in_a_few_calls() {
        let world = world();
        let summary = block_on(run(&world.deps()));
        assert_eq!((summary.reconciled, summary.reconcile_behind_secs), (0, 0));
        assert_eq!(cursor(&world), Some(NOW_SECS));
        assert!(
            world.upstream.calls_to(Svc::Events).len() <= 4,
            "windows grow over empty time"
        );
    }

    /// The issue's scenario: the endpoint was down for 3 days and Stripe holds 2,500
    /// Checkout events it never delivered (25 pages of 100); every page takes 1 s and
    /// each purchase's calls take time too, so no run can do it all within its budget.
    #[test]
    fn a_three_day_backlog_over_25_slow_pages_is_ingested_once_over_several_runs() {
        let world = world();
        let n = 2_500;
        world.upstream.events.replace(backlog(n, 3 * 86_400 - 600));
        world.upstream.events_cost_ms.set(1_000);
        world.upstream.call_cost_ms.set(5);
        let budget = world.config.reconcile_budget_ms;
        let mut runs = Vec::new();
        loop {
            let run_start = world.clock.0.get();
            let summary = block_on(run(&world.deps()));
            let took = world.clock.0.get() - run_start;
            assert!(
                took <= budget + 9_000,
                "a run keeps to its budget: {took} ms"
            );
            assert_eq!(summary.redriven, 0, "fulfilled by the run that ingested it");
            assert!(
                world
                    .ledger
                    .purchases
                    .borrow()
                    .values()
                    .all(|s| *s == PurchaseState::Fulfilled),
                "nothing is left for the re-drive"
            );
            runs.push(summary.clone());
            if summary.reconciled == 0 && summary.reconcile_behind_secs == 0 {
                break;
            }
            assert!(summary.reconciled > 0, "every run makes progress: {runs:?}");
            assert!(runs.len() < 40, "converges");
            world.clock.0.set(run_start + SCHEDULE_MS);
        }
        assert!(runs.len() > 2, "the budget spread it over several runs");
        // 25 pages of events, listed again only where a run stopped mid-window or a
        // window had to shrink.
        let listings = world.upstream.calls_to(Svc::Events).len();
        assert!(
            listings <= 100,
            "{listings} listings over {} runs",
            runs.len()
        );
        let total: u32 = runs.iter().map(|s| s.reconciled).sum();
        assert_eq!(total as usize, n, "each event ingested exactly once");
        let keys = license_keys(&world);
        assert_eq!(keys.len(), n, "one license call per purchase");
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), n);
        assert_eq!(world.ledger.purchases.borrow().len(), n);
        // The last run found nothing new and left the cursor at its own start.
        let last_start = NOW_MS + (runs.len() as u64 - 1) * SCHEDULE_MS;
        assert_eq!(cursor(&world), Some((last_start / 1000) as i64));
        assert!(world
            .log
            .joined()
            .contains(r#""msg":"reconciliation continues next run""#));
    }

    /// Polls `run` on one thread and drops it (the isolate killed) as soon as `kill`
    /// holds while it waits on a call. Returns whether it finished.
    fn run_killed_when(world: &World, kill: impl Fn() -> bool) -> bool {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        world.upstream.yield_in_calls.set(true);
        let deps = world.deps();
        let mut future = std::pin::pin!(run(&deps));
        let mut cx = Context::from_waker(Waker::noop());
        let finished = loop {
            match future.as_mut().poll(&mut cx) {
                Poll::Ready(_) => break true,
                Poll::Pending if kill() => break false,
                Poll::Pending => {}
            }
        };
        world.upstream.yield_in_calls.set(false);
        finished
    }

    #[test]
    fn a_run_killed_mid_window_loses_nothing_and_the_next_run_continues() {
        let world = world();
        let n = 600;
        world.upstream.events.replace(backlog(n, 86_400));
        world.upstream.events_cost_ms.set(1_000);
        world.upstream.call_cost_ms.set(20);
        // The re-drive fetches the session it resumes: the same one the events carry
        // (a different one would change the first attempt's body, which is refused).
        for k in 0..n {
            world.upstream.sessions.borrow_mut().insert(
                format!("cs_{k:05}"),
                format!(
                    r#"{{"id":"cs_{k:05}","object":"checkout.session","payment_status":"paid","livemode":false,"metadata":{{"slug":"pro"}}}}"#
                ),
            );
        }
        // Killed in the middle of ingesting a window: some purchases done, one in
        // flight (its license call sent, no answer read).
        let in_flight = || {
            let calls = world.upstream.calls.borrow();
            world.ledger.events.borrow().len() >= 40
                && calls.last().is_some_and(|c| c.url.ends_with("/generate"))
        };
        assert!(!run_killed_when(&world, in_flight));
        let first = world.ledger.events.borrow().len();
        assert!(0 < first && first < n, "{first}");
        // The cursor moved only over finished windows: past no event left unseen.
        let reached = cursor(&world).unwrap_or(i64::MIN);
        for raw in world.upstream.events.borrow().iter() {
            let event: serde_json::Value = serde_json::from_str(raw).unwrap();
            if !world
                .ledger
                .events
                .borrow()
                .contains_key(event["id"].as_str().unwrap())
            {
                assert!(event["created"].as_i64().unwrap() >= reached, "{raw}");
            }
        }
        let mut at = NOW_MS;
        for _ in 0..20 {
            at += SCHEDULE_MS;
            world.clock.0.set(at);
            let summary = block_on(run(&world.deps()));
            if summary.reconciled == 0
                && summary.reconcile_behind_secs == 0
                && summary.redriven == 0
            {
                break;
            }
        }
        assert_eq!(world.ledger.events.borrow().len(), n);
        assert!(
            world
                .ledger
                .purchases
                .borrow()
                .values()
                .all(|s| *s == PurchaseState::Fulfilled),
            "the purchase cut off mid-call is finished by the re-drive: {:?} {:?}",
            world
                .ledger
                .purchases
                .borrow()
                .iter()
                .filter(|(_, s)| **s != PurchaseState::Fulfilled)
                .collect::<Vec<_>>(),
            world
                .ledger
                .steps
                .borrow()
                .iter()
                .filter(|(_, r)| r.state != StepState::Done)
                .collect::<Vec<_>>()
        );
        let keys = license_keys(&world);
        let distinct: BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), n, "one Idempotency-Key per purchase");
        assert!(
            keys.len() <= n + 1,
            "at most the call in flight is repeated, with its key"
        );
        assert_eq!(cursor(&world), Some((at / 1000) as i64));
    }

    #[test]
    fn more_pages_in_one_second_than_a_window_may_take_are_still_listed_whole() {
        let world = world();
        world.upstream.events.replace(
            (0..700)
                .map(|k| {
                    listed_event(
                        &format!("evt_{k:05}"),
                        &format!("cs_{k:05}"),
                        NOW_SECS - 100,
                    )
                })
                .collect(),
        );
        let summary = block_on(run(&world.deps()));
        assert_eq!(
            (summary.reconciled, summary.reconcile_behind_secs),
            (700, 0)
        );
        assert_eq!(world.upstream.calls_to(Svc::License).len(), 700);
        let listings = world.upstream.calls_to(Svc::Events).len();
        assert!(listings <= 40, "{listings} listings");
        assert_eq!(cursor(&world), Some(NOW_SECS));
    }

    #[test]
    fn in_queue_mode_reconciled_purchases_go_to_the_queue() {
        let world = world();
        world.queue_mode.set(true);
        world.upstream.events.replace(backlog(300, 3_600));
        let summary = block_on(run(&world.deps()));
        assert_eq!(summary.reconciled, 300);
        assert_eq!(world.queue.sent.borrow().len(), 300);
        assert!(
            world.upstream.calls_to(Svc::License).is_empty(),
            "nothing fulfilled inline"
        );
        assert_eq!(
            world.ledger.step_row("cs_00000", "license").unwrap().state,
            StepState::Pending
        );
        assert_eq!(cursor(&world), Some(NOW_SECS));
    }
}
