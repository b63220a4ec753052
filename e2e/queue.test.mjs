// Queue mode end to end under `wrangler dev`, with the local Cloudflare Queues of
// workerd: ingress answers 200 once the purchase is recorded and queued, before any
// upstream call; the same Worker's consumer fulfils it with exponential backoff
// (honoured by the local queue as per-message retry delays), fails and alerts when the
// attempts run out, dead-letters the message (and, consuming the DLQ, alerts again),
// and never runs a done step twice, across duplicates, batches, replays and the cron.

import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil as linesUntilOf, logLines, until as waitUntil, waitForLine } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('qe2e')}`;
const ADMIN_TOKEN = `adm_${rid('qe2e')}`;
const LICENSE_KEY = `lk_${rid('qe2e')}`;
const SHIPPING_KEY = `shk_${rid('qe2e')}`;
const STRIPE_KEY = `sk_test_${rid('qe2e')}`;
const QUEUE = 'stripe-edge-e2e-fulfilment';
const BASE_SECS = 1;
const MAX_ATTEMPTS = 3;
const UPSTREAM_TIMEOUT_MS = 4_000;
const CUSTOMER = { email: 'quentin.queuebuyer@example.com', name: 'Quentin Queuebuyer' };
const ADDRESS = { line1: '3 Quai des Files', line2: 'Porte 7', city: 'Lyon', postal_code: '69002', country: 'FR' };

// max_retries 2 = three deliveries of a message, matching FULFILLMENT_MAX_ATTEMPTS 3.
// The second consumer reads the dead-letter queue: the Worker alerts per dead letter.
const QUEUES = `
[[queues.producers]]
binding = "FULFILLMENT_QUEUE"
queue = "${QUEUE}"

[[queues.consumers]]
queue = "${QUEUE}"
max_batch_size = 5
max_batch_timeout = 1
max_retries = ${MAX_ATTEMPTS - 1}
dead_letter_queue = "${QUEUE}-dlq"

[[queues.consumers]]
queue = "${QUEUE}-dlq"
max_batch_size = 5
max_batch_timeout = 1
`;

let standin;
let worker;
const issuedKeys = [];

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      LICENSE_SERVER_URL: `${standin.url}/license`,
      SHIPPING_URL: `${standin.url}/shipping/orders`,
      STRIPE_API_BASE: `${standin.url}/stripe`,
      UPSTREAM_TIMEOUT_MS: String(UPSTREAM_TIMEOUT_MS),
      QUEUE_RETRY_BASE_SECS: String(BASE_SECS),
      FULFILLMENT_MAX_ATTEMPTS: String(MAX_ATTEMPTS),
      DEAD_LETTER_QUEUE: `${QUEUE}-dlq`,
    },
    secrets: {
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      LICENSE_SERVER_API_KEY: LICENSE_KEY,
      SHIPPING_API_KEY: SHIPPING_KEY,
      STRIPE_API_KEY: STRIPE_KEY,
      ADMIN_TOKEN,
    },
    toml: QUEUES,
  });
});

after(async () => {
  await worker?.stop();
  await standin?.stop();
});

beforeEach(() => standin.reset());
afterEach(() => {
  issuedKeys.push(...standin.licensesIssued().map((l) => l.license_key));
});

// ------------------------------------------------------------------ helpers

/** This file's worker: the shared helpers bound to it. */
const until = (probe, what, ms) => waitUntil(probe, what, ms, () => worker.logs().slice(-4000));
const lines = (from = 0) => logLines(worker, from);
const linesUntil = (from, pred, n, what, ms) => linesUntilOf(worker, from, pred, n, what, ms);

const handled = (sessionId) => (l) => l.msg === 'queue message handled' && l.session_id === sessionId;

/** A paid purchase; the stand-in's Stripe API knows its session unless `known: false`. */
function purchase({ license = true, shipping = true, known = true } = {}) {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: license ? { slug: 'pro' } : {},
    customer_details: { ...CUSTOMER, address: ADDRESS },
    collected_information: shipping ? { shipping_details: { name: CUSTOMER.name, address: ADDRESS } } : null,
    payment_intent: null,
  });
  if (known) {
    standin.setSession(session);
    standin.setLineItems(session.id, [
      { id: rid('li'), object: 'item', description: 'Queued box', quantity: 2, amount_total: 1000, currency: 'eur', price: { id: 'price_q', product: 'prod_q', unit_amount: 500 } },
    ]);
  }
  return { session, evt: event('checkout.session.completed', session) };
}

const send = (evt) => deliver(worker.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

const keyOf = (sessionId, step) => `stripe-edge:${sessionId}:${step}`;
const stepCalls = (sessionId, step) => standin.callsTo(step).filter((c) => c.headers['idempotency-key'] === keyOf(sessionId, step));
const sessionFetches = (sessionId) => standin.callsTo('stripe').filter((c) => c.path === `/stripe/v1/checkout/sessions/${sessionId}`);

/** Purchases and their steps for several sessions, in one D1 round trip. */
async function ledger(sessionIds) {
  const list = sessionIds.map((id) => `'${id}'`).join(',');
  const rows = await worker.d1(
    `SELECT p.session_id, p.state AS purchase_state, s.step, s.state, s.attempts, s.last_error, s.event_id \
     FROM purchases p LEFT JOIN steps s ON s.session_id = p.session_id WHERE p.session_id IN (${list})`,
  );
  const out = {};
  for (const r of rows) {
    out[r.session_id] ??= { state: r.purchase_state, steps: {} };
    if (r.step) out[r.session_id].steps[r.step] = { state: r.state, attempts: r.attempts, last_error: r.last_error, event_id: r.event_id };
  }
  return out;
}

async function untilState(sessionIds, state, what) {
  return until(async () => {
    const rows = await ledger(sessionIds);
    return sessionIds.every((id) => rows[id]?.state === state) && rows;
  }, what);
}

async function admin(path, { method = 'GET' } = {}) {
  const res = await fetch(worker.url + path, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(20_000) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, text, json };
}

/** The delay the README promises for a retry after `attempts`: base·2^(attempts−1) ±20 %, rounded, capped at 900 s. */
function delayBounds(attempts) {
  const nominal = Math.min(BASE_SECS * 2 ** (attempts - 1), 900);
  return [Math.max(1, Math.round(nominal * 0.8)), Math.min(900, Math.round(nominal * 1.2))];
}

// ------------------------------------------------------------------ 7. 200 first

test('ingress answers 200 before any upstream call; the consumer then fulfils the purchase through a hung call', async () => {
  const { session, evt } = purchase();
  standin.hangNext('license', 1); // the consumer's first license call never answers
  const from = worker.logs().length;
  const sentAt = Date.now();
  const res = await send(evt);
  const answeredAt = Date.now();
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { received: true, event_id: evt.id, status: 'accepted', purchase_state: 'fulfilling' });
  assert.deepEqual(standin.calls.filter((c) => c.at <= answeredAt).map((c) => c.path), [], 'no upstream (license, shipping or Stripe API) call before the answer');
  assert.ok(answeredAt - sentAt < UPSTREAM_TIMEOUT_MS, `answered in ${answeredAt - sentAt} ms, without waiting for any upstream`);
  await linesUntil(from, (l) => l.msg === 'fulfilment queued' && l.session_id === session.id && l.event_id === evt.id, 1, 'fulfilment queued');

  const rows = await untilState([session.id], 'fulfilled', 'the consumer to fulfil the purchase');
  assert.deepEqual(
    [rows[session.id].steps.license.state, rows[session.id].steps.license.attempts, rows[session.id].steps.shipping.attempts],
    ['done', 2, 1],
    'license: the hung attempt, then a retry; shipping once',
  );
  const license = stepCalls(session.id, 'license');
  assert.deepEqual(license.map((c) => c.outcome), ['hung', 'ok']);
  assert.ok(license[0].at > answeredAt);
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);
  assert.equal(stepCalls(session.id, 'shipping').length, 1);
  const fetches = sessionFetches(session.id);
  assert.ok(fetches.length >= 1 && fetches.every((c) => c.headers.authorization === `Bearer ${STRIPE_KEY}`));
  // The consumer builds the same request as inline mode would, from the event that opened the step.
  assert.deepEqual(license[1].body, license[0].body);
  assert.equal(license[1].body.metadata.provider_event_id, evt.id);
  assert.equal(license[1].body.metadata.provider_checkout_session_id, session.id);
  const verdicts = await linesUntil(from, handled(session.id), 2, 'queue message handled');
  assert.deepEqual(verdicts.map((l) => l.verdict), ['retry', 'ack']);
});

// ------------------------------------------------------------------ 8. backoff

test('an upstream failing twice then succeeding: one license, attempts 3, growing delays the queue honours', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('license', 2, 503);
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  const rows = await untilState([session.id], 'fulfilled', 'the purchase to be fulfilled after two retries');
  const step = rows[session.id].steps.license;
  assert.deepEqual([step.state, step.attempts, step.last_error], ['done', 3, null]);
  const calls = stepCalls(session.id, 'license');
  assert.deepEqual(calls.map((c) => c.status), [503, 503, 200], 'exactly three calls');
  assert.equal(standin.licensesIssued().length, 1);
  assert.ok(calls.every((c) => c.headers['idempotency-key'] === calls[0].headers['idempotency-key']));
  assert.ok(calls.every((c) => JSON.stringify(c.body) === JSON.stringify(calls[0].body)));

  const lines3 = await linesUntil(from, handled(session.id), 3, 'queue message handled');
  assert.deepEqual(lines3.map((l) => l.verdict), ['retry', 'retry', 'ack']);
  const retries = lines3.slice(0, 2);
  assert.deepEqual(retries.map((l) => l.attempts), [1, 2]);
  retries.forEach((l, i) => {
    const [lo, hi] = delayBounds(l.attempts);
    assert.ok(l.delay_secs >= lo && l.delay_secs <= hi, `retry ${i + 1}: delay ${l.delay_secs} s outside [${lo}, ${hi}]`);
  });
  assert.ok(retries[1].delay_secs > retries[0].delay_secs, `backoff grows: ${retries.map((l) => l.delay_secs)}`);
  // The local queue holds a retried message back for its delay.
  for (let i = 1; i < calls.length; i += 1) {
    const gap = calls[i].at - calls[i - 1].at;
    assert.ok(gap >= retries[i - 1].delay_secs * 1000 - 250, `call ${i + 1} came ${gap} ms after call ${i}, before its ${retries[i - 1].delay_secs} s delay`);
  }
});

// ------------------------------------------------------------------ 9. exhausted

test('attempts exhausted: step and purchase failed, an alert, the message dead-lettered; a replay then fulfils once', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('license', MAX_ATTEMPTS, 503);
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  const [alert] = await linesUntil(from, (l) => l.msg === 'fulfilment attempts exhausted' && l.session_id === session.id, 1, 'the exhausted alert');
  assert.equal(alert.level, 'alert');
  assert.equal(alert.step, 'license');
  assert.equal(alert.last_error, 'license server answered 503');
  assert.equal(alert.attempts, MAX_ATTEMPTS);
  const [dead] = await linesUntil(from, (l) => l.msg === 'fulfilment dead-lettered' && l.session_id === session.id, 1, 'the dead-letter alert');
  assert.equal(dead.level, 'alert');

  const rows = await ledger([session.id]);
  assert.equal(rows[session.id].state, 'failed');
  assert.deepEqual(
    rows[session.id].steps.license,
    { state: 'failed', attempts: MAX_ATTEMPTS, last_error: 'attempts exhausted: license server answered 503', event_id: evt.id },
  );
  assert.equal(stepCalls(session.id, 'license').length, MAX_ATTEMPTS, 'no call after the attempts ran out (nor from the DLQ)');
  assert.equal(standin.licensesIssued().length, 0);
  // The verdicts are info lines (stdout), the alerts above error lines (stderr): awaited on their own.
  await linesUntil(from, handled(session.id), 2, 'the two retry verdicts');
  const retries = lines(from).filter((l) => handled(session.id)(l));
  assert.deepEqual(retries.map((l) => [l.verdict, l.attempts]), [['retry', 1], ['retry', 2]]);
  const order = lines(from).map((l) => (l.session_id === session.id ? l.msg : null)).filter(Boolean);
  assert.ok(order.indexOf('fulfilment attempts exhausted') < order.indexOf('fulfilment dead-lettered'), `${order}`);

  // The cause is fixed: a replay (inline even in queue mode) fulfils it, once.
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.deepEqual([replay.json.reset, replay.json.outcome, replay.json.purchase.state], [1, 'complete', 'fulfilled']);
  const calls = stepCalls(session.id, 'license');
  assert.equal(calls.length, MAX_ATTEMPTS + 1);
  assert.deepEqual(calls.at(-1).body, calls[0].body, 'the replay sends the original body');
  assert.equal(standin.licensesIssued().length, 1);
});

// ------------------------------------------------------------------ 10. duplicates

test('duplicates: three deliveries queue three messages, yet one license and one shipment; a late redelivery queues nothing', async () => {
  const { session, evt } = purchase();
  const from = worker.logs().length;
  const answers = [];
  for (let i = 0; i < 3; i += 1) answers.push(await send(evt));
  assert.deepEqual(answers.map((r) => r.status), [200, 200, 200]);
  await linesUntil(from, (l) => l.msg === 'fulfilment queued' && l.session_id === session.id, 3, 'three messages queued');
  const acks = await linesUntil(from, handled(session.id), 3, 'three messages handled');
  assert.deepEqual(acks.map((l) => l.verdict), ['ack', 'ack', 'ack']);
  const rows = await untilState([session.id], 'fulfilled', 'fulfilment');
  assert.deepEqual(
    [rows[session.id].steps.license.attempts, rows[session.id].steps.shipping.attempts],
    [1, 1],
    'each step claimed once',
  );
  assert.equal(stepCalls(session.id, 'license').length, 1, 'one license call (not merely one license issued)');
  assert.equal(stepCalls(session.id, 'shipping').length, 1);
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);

  const lateFrom = worker.logs().length;
  const late = await send(evt);
  assert.equal(late.status, 200, late.text);
  assert.equal(late.json.status, 'duplicate');
  assert.equal(late.json.purchase_state, 'fulfilled');
  const decision = await linesUntil(lateFrom, (l) => l.msg === 'webhook recorded' && l.event_id === evt.id, 1, 'the decision line');
  assert.equal(decision[0].status, 'duplicate');
  assert.ok(!lines(lateFrom).some((l) => l.msg === 'fulfilment queued'), 'nothing queued for a finished purchase');
  // Another event about the same session (async payment succeeded) is no different.
  const succeeded = event('checkout.session.async_payment_succeeded', session);
  const other = await send(succeeded);
  assert.equal(other.status, 200, other.text);
  // Its decision line is in: a `fulfilment queued` line, written before it, would be too.
  await waitForLine(worker, (l) => l.msg === 'webhook recorded' && l.event_id === succeeded.id, { from: lateFrom });
  assert.ok(!lines(lateFrom).some((l) => l.msg === 'fulfilment queued'));
  assert.equal(stepCalls(session.id, 'license').length, 1);
});

// ------------------------------------------------------------------ 11. batches

test('one purchase failing in a batch: the acked one is never run again', async () => {
  // A: license only, succeeds. B: shipping only, whose first call fails (503).
  const a = purchase({ shipping: false });
  const b = purchase({ license: false });
  standin.failNext('shipping', 1, 503);
  const from = worker.logs().length;
  const answers = await Promise.all([send(a.evt), send(b.evt)]);
  assert.deepEqual(answers.map((r) => r.status), [200, 200]);
  await untilState([a.session.id, b.session.id], 'fulfilled', 'both purchases to be fulfilled');
  // Both messages were in the first batch: one acked, one retried.
  // wrangler's line for the batch of two (no test before sends two messages at once),
  // awaited: a batch line of the previous test may still arrive after the mark.
  const batch = await waitForLine(worker, new RegExp(`QUEUE ${QUEUE} \\d+/2 `), { from, what: 'the batch that held both' });
  assert.match(batch, new RegExp(`QUEUE ${QUEUE} 1/2 `), 'one acked, one retried');
  const [aHandled] = await linesUntil(from, handled(a.session.id), 1, 'A handled');
  assert.equal(aHandled.verdict, 'ack');
  const bHandled = await linesUntil(from, handled(b.session.id), 2, 'B handled twice');
  assert.deepEqual(bHandled.map((l) => l.verdict), ['retry', 'ack']);
  assert.equal(lines(from).filter(handled(a.session.id)).length, 1, 'A handled once');
  assert.equal(sessionFetches(a.session.id).length, 1, 'A never resumed again');
  assert.equal(stepCalls(a.session.id, 'license').length, 1);
  assert.equal(stepCalls(b.session.id, 'shipping').length, 2);
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);
  const [shipment] = standin.shipmentsCreated();
  assert.equal(shipment.request.order_id, b.session.id);
});

// ------------------------------------------------------------------ exactly once across entry points

test('a replay while the consumer holds the step answers busy and calls nothing', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.delayNext('license', 1, 2_500); // does the work at once, answers 2.5 s later
  assert.equal((await send(evt)).status, 200);
  await until(() => stepCalls(session.id, 'license').length === 1, 'the consumer to call the license server');
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.outcome, 'busy');
  assert.equal(replay.json.reset, 0);
  assert.equal(stepCalls(session.id, 'license').length, 1, 'the replay did not call while the consumer held the step');
  const rows = await untilState([session.id], 'fulfilled', 'the consumer to finish');
  assert.equal(rows[session.id].steps.license.attempts, 1);
  assert.equal(stepCalls(session.id, 'license').length, 1);
  assert.equal(standin.licensesIssued().length, 1);
});

test('a message whose session the Stripe API cannot give is not acked while its steps still wait', async () => {
  const { session, evt } = purchase({ known: false });
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  const [first] = await linesUntil(from, handled(session.id), 1, 'queue message handled');
  assert.equal(sessionFetches(session.id)[0]?.status, 404, 'the consumer asked Stripe for the session');
  const rows = await ledger([session.id]);
  const steps = Object.entries(rows[session.id].steps).map(([name, s]) => `${name}:${s.state}`);
  const louder = lines(from).filter((l) => l.session_id === session.id && l.level !== 'info');
  // docs/OPERATIONS.md: `queue message handled` verdict `ack` means "done or failed for good".
  if (first.verdict === 'ack') {
    assert.ok(
      Object.values(rows[session.id].steps).every((s) => s.state === 'done' || s.state === 'failed'),
      `acked (${JSON.stringify(first)}) while the purchase is ${rows[session.id].state} with steps ${steps}; ` +
        `lines above info for it: ${JSON.stringify(louder)}`,
    );
  }
  assert.equal(stepCalls(session.id, 'license').length, 0);
});

test('the Stripe API down for every attempt: backoff grows, the steps fail with an alert before the message is dead-lettered', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('stripe', 10, 503); // the consumer cannot fetch the session
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  const [dead] = await linesUntil(from, (l) => l.msg === 'fulfilment dead-lettered' && l.session_id === session.id, 1, 'the dead-letter alert');
  assert.equal(dead.level, 'alert');
  const fetches = sessionFetches(session.id);
  assert.equal(fetches.length, MAX_ATTEMPTS, 'one session fetch per delivery of the message');
  assert.equal(stepCalls(session.id, 'license').length, 0);
  // The retry verdicts are info lines (stdout), the dead-letter alert an error line (stderr).
  await linesUntil(from, (l) => handled(session.id)(l) && l.verdict === 'retry', MAX_ATTEMPTS - 1, 'the retry verdicts');
  const retries = lines(from).filter(handled(session.id)).filter((l) => l.verdict === 'retry');
  const rows = await ledger([session.id]);
  const exhausted = lines(from).some((l) => l.msg === 'fulfilment attempts exhausted' && l.session_id === session.id);
  // docs/OPERATIONS.md: a dead letter's step "is already `failed` in the ledger", after the
  // `fulfilment attempts exhausted` alert; `retry` delays are exponential backoff.
  assert.deepEqual(
    {
      step_state_when_dead_lettered: rows[session.id].steps.license.state,
      purchase_state: rows[session.id].state,
      attempts_exhausted_alert: exhausted,
      delays_grow: retries.length >= 2 && retries.at(-1).delay_secs > retries[0].delay_secs,
    },
    { step_state_when_dead_lettered: 'failed', purchase_state: 'failed', attempts_exhausted_alert: true, delays_grow: true },
    `retries: ${JSON.stringify(retries.map((l) => ({ attempts: l.attempts, delay_secs: l.delay_secs })))}; step: ${JSON.stringify(rows[session.id].steps.license)}`,
  );
});

// ------------------------------------------------------------------ cron in queue mode

test('cron in queue mode: re-enqueues a dead holder at once and a pending step only after 20 min idle; runs nothing inline', async () => {
  const now = Date.now();
  const make = () => {
    const p = purchase({ shipping: false });
    return { ...p, eventId: rid('evt') };
  };
  const idle = make(); // pending, untouched for 21 minutes: a lost message
  const waiting = make(); // pending for 2 minutes: maybe sitting out a backoff
  const dead = make(); // running, lease expired: its consumer died mid-call
  const insert = (p, state, attempts, updatedAt, leaseUntil) => [
    `INSERT INTO purchases (session_id, state, livemode, created_at, updated_at) VALUES ('${p.session.id}', 'fulfilling', 0, ${updatedAt}, ${updatedAt})`,
    `INSERT INTO steps (session_id, step, event_id, state, lease_until, attempts, created_at, updated_at) VALUES ('${p.session.id}', 'license', '${p.eventId}', '${state}', ${leaseUntil}, ${attempts}, ${updatedAt}, ${updatedAt})`,
  ];
  const stalled = (await worker.d1([
    ...insert(idle, 'pending', 1, now - 21 * 60_000, 'NULL'),
    ...insert(waiting, 'pending', 1, now - 2 * 60_000, 'NULL'),
    ...insert(dead, 'running', 1, now - 30_000, now - 1_000),
    `SELECT DISTINCT session_id FROM steps WHERE (state = 'pending' AND updated_at < ${now - 20 * 60_000}) OR (state = 'running' AND lease_until <= ${now})`,
  ].join('; '))).map((r) => r.session_id).sort();
  assert.deepEqual(stalled, [idle.session.id, dead.session.id].sort(), 'nothing else in the ledger is stalled');

  const from = worker.logs().length;
  const res = await worker.scheduled();
  assert.equal(res.status, 200, res.text);
  const [summary] = await linesUntil(from, (l) => l.msg === 'scheduled run', 1, 'the scheduled run line');
  assert.deepEqual(
    [summary.redriven, summary.enqueued, summary.completed, summary.still_waiting],
    [2, 2, 0, 0],
    JSON.stringify(summary),
  );
  await untilState([idle.session.id, dead.session.id], 'fulfilled', 'the consumer to fulfil the re-enqueued purchases');
  for (const p of [idle, dead]) {
    const calls = stepCalls(p.session.id, 'license');
    assert.equal(calls.length, 1, p.session.id);
    assert.equal(calls[0].body.metadata.provider_event_id, p.eventId, 'built from the event that opened the step');
  }
  const rows = await ledger([idle.session.id, dead.session.id, waiting.session.id]);
  assert.deepEqual([rows[idle.session.id].steps.license.attempts, rows[dead.session.id].steps.license.attempts], [2, 2]);
  assert.deepEqual(rows[waiting.session.id].steps.license, { state: 'pending', attempts: 1, last_error: null, event_id: waiting.eventId });
  assert.equal(stepCalls(waiting.session.id, 'license').length, 0);
  assert.equal(sessionFetches(waiting.session.id).length, 0, 'not enqueued, not run');
  // The re-enqueued messages' verdicts are in, so a message for `waiting` would be too.
  for (const p of [idle, dead]) await waitForLine(worker, (l) => handled(p.session.id)(l) && l.verdict === 'ack', { from });
  assert.ok(!lines(from).some(handled(waiting.session.id)));
  assert.equal(standin.licensesIssued().length, 2);
});

// ------------------------------------------------------------------ output

test('the Worker output carries no secret, license key or customer data', () => {
  const out = worker.logs();
  assert.ok(issuedKeys.length >= 5, 'licenses were issued along the way');
  for (const needle of [ADMIN_TOKEN, WEBHOOK_SECRET, LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY, ...issuedKeys, CUSTOMER.email, CUSTOMER.name, ADDRESS.line1, ADDRESS.line2]) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
});
