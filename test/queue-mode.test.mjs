// Queue mode (issue 5), end to end under `wrangler dev` with local Cloudflare Queues:
// ingress answers 200 once the purchase is recorded and queued, and the same Worker's
// consumer fulfils it with retries, backoff and a dead-letter queue, exactly once.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('queue')}`;
const LICENSE_KEY = `lk_${rid('queue')}`;
const SHIPPING_KEY = `shk_${rid('queue')}`;
const STRIPE_KEY = `sk_test_${rid('queue')}`;
const QUEUE = 'stripe-edge-test-fulfilment';

// max_retries 2 = three deliveries of a message, matching FULFILLMENT_MAX_ATTEMPTS 3.
const QUEUES = `
[[queues.producers]]
binding = "FULFILLMENT_QUEUE"
queue = "${QUEUE}"

[[queues.consumers]]
queue = "${QUEUE}"
max_batch_size = 5
max_batch_timeout = 1
max_retries = 2
dead_letter_queue = "${QUEUE}-dlq"

[[queues.consumers]]
queue = "${QUEUE}-dlq"
max_batch_size = 5
max_batch_timeout = 1
`;

let standin;
let worker;

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      LICENSE_SERVER_URL: `${standin.url}/license`,
      SHIPPING_URL: `${standin.url}/shipping/orders`,
      STRIPE_API_BASE: `${standin.url}/stripe`,
      UPSTREAM_TIMEOUT_MS: '1500',
      QUEUE_RETRY_BASE_SECS: '1',
      FULFILLMENT_MAX_ATTEMPTS: '3',
    },
    secrets: {
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      LICENSE_SERVER_API_KEY: LICENSE_KEY,
      SHIPPING_API_KEY: SHIPPING_KEY,
      STRIPE_API_KEY: STRIPE_KEY,
    },
    toml: QUEUES,
  });
});

after(async () => {
  await worker?.stop();
  await standin?.stop();
});

beforeEach(() => standin.reset());

/** The Worker's JSON lines (locally, warn/error lines carry a prefix and colour codes). */
function lines(from = 0) {
  // eslint-disable-next-line no-control-regex
  return worker.logs().slice(from).replace(/\u001b\[[0-9;]*m/g, '').split('\n').flatMap((line) => {
    const at = line.indexOf('{"level"');
    if (at < 0) return [];
    try { return [JSON.parse(line.slice(at))]; } catch { return []; }
  });
}

/** Polls `probe` every 100 ms until it returns a truthy value; fails after `ms`. */
async function until(probe, what, ms = 30_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}\n${worker.logs().slice(-3000)}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** A paid purchase the stand-in's Stripe API knows (the consumer fetches the session). */
function purchase({ shipping = true } = {}) {
  const session = checkoutSession({
    metadata: { slug: 'pro' },
    customer_details: { email: 'queue.buyer@example.com', name: 'Queue Buyer' },
    collected_information: shipping
      ? { shipping_details: { name: 'Queue Buyer', address: { line1: '1 Queue St', city: 'Lyon', postal_code: '69001', country: 'FR' } } }
      : null,
    payment_intent: null,
  });
  standin.setSession(session);
  standin.setLineItems(session.id, [{ id: 'li_q1', quantity: 1, amount_total: 500, currency: 'eur', price: { id: 'price_q', product: 'prod_q', unit_amount: 500 } }]);
  return { session, evt: event('checkout.session.completed', session) };
}

const send = (evt) => deliver(worker.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

async function purchaseState(id) {
  return (await worker.d1(`SELECT state FROM purchases WHERE session_id = '${id}'`))[0]?.state;
}

async function licenseStep(id) {
  return (await worker.d1(`SELECT state, attempts, last_error FROM steps WHERE session_id = '${id}' AND step = 'license'`))[0];
}

test('200 before any upstream call; the consumer then fulfils the purchase once', async () => {
  const { session, evt } = purchase();
  const res = await send(evt);
  const answeredAt = Date.now();
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { received: true, event_id: evt.id, status: 'accepted', purchase_state: 'fulfilling' });
  // purchase_state 'fulfilling' in the answer: recorded with its steps pending, not yet run.

  await until(async () => (await purchaseState(session.id)) === 'fulfilled', 'the consumer to fulfil the purchase');
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);
  assert.ok(standin.callsTo('license')[0].at >= answeredAt, 'the license server was called after Stripe had its 200');
  const sessionFetch = standin.callsTo('stripe').filter((c) => c.path === `/stripe/v1/checkout/sessions/${session.id}`);
  assert.equal(sessionFetch[0]?.headers.authorization, `Bearer ${STRIPE_KEY}`);
});

test('an upstream failing twice then succeeding: one license, with backoff between attempts', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('license', 2, 503);
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  await until(async () => (await purchaseState(session.id)) === 'fulfilled', 'the purchase to be fulfilled after retries');
  assert.equal(standin.licensesIssued().length, 1);
  const step = await licenseStep(session.id);
  assert.deepEqual([step.state, step.attempts], ['done', 3]);
  const retries = lines(from).filter((l) => l.msg === 'queue message handled' && l.session_id === session.id && l.verdict === 'retry');
  assert.deepEqual(retries.map((l) => l.attempts), [1, 2]);
  assert.ok(retries[1].delay_secs > retries[0].delay_secs, `backoff grows: ${retries.map((l) => l.delay_secs)}`);
});

test('exhausted attempts: the step fails, an alert names it, and the message is dead-lettered', async () => {
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('license', 10, 503);
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 200);
  await until(async () => (await licenseStep(session.id))?.state === 'failed', 'the step to fail after its attempts');
  const step = await licenseStep(session.id);
  assert.equal(step.attempts, 3);
  assert.equal(step.last_error, 'attempts exhausted: license server answered 503');
  assert.equal(await purchaseState(session.id), 'failed');
  const alert = lines(from).find((l) => l.msg === 'fulfilment attempts exhausted' && l.session_id === session.id);
  assert.ok(alert, 'an alert line');
  assert.equal(alert.level, 'alert');
  assert.equal(alert.step, 'license');
  assert.equal(alert.last_error, 'license server answered 503');
  await until(
    () => lines(from).find((l) => l.msg === 'fulfilment dead-lettered' && l.session_id === session.id),
    'the dead-letter queue consumer to see the message',
  );
  assert.equal(standin.licensesIssued().length, 0);
});

test('a redelivered event and its duplicate message never repeat a done step', async () => {
  const { session, evt } = purchase();
  const from = worker.logs().length;
  const [a, b] = await Promise.all([send(evt), send(evt)]);
  assert.deepEqual([a.status, b.status], [200, 200]);
  await until(async () => (await purchaseState(session.id)) === 'fulfilled', 'fulfilment');
  await until(
    () => lines(from).filter((l) => l.msg === 'queue message handled' && l.session_id === session.id && l.verdict === 'ack').length >= 2,
    'both messages to be handled',
  );
  assert.equal(standin.callsTo('license').length, 1);
  assert.equal(standin.callsTo('shipping').length, 1);
  const late = await send(evt);
  assert.equal(late.json.status, 'duplicate', 'nothing left to queue');
});

test('one failing purchase in a batch does not make the others run again', async () => {
  const first = purchase({ shipping: false });
  const second = purchase({ shipping: false });
  // Whichever license call comes first fails; the other purchase's succeeds at once.
  standin.failNext('license', 1, 503);
  const answers = await Promise.all([send(first.evt), send(second.evt)]);
  assert.deepEqual(answers.map((r) => r.status), [200, 200]);
  await until(
    async () => (await purchaseState(first.session.id)) === 'fulfilled' && (await purchaseState(second.session.id)) === 'fulfilled',
    'both purchases to be fulfilled',
  );
  const keys = standin.callsTo('license').map((c) => c.headers['idempotency-key']);
  const perPurchase = [first, second]
    .map((p) => keys.filter((k) => k === `stripe-edge:${p.session.id}:license`).length)
    .sort();
  assert.deepEqual(perPurchase, [1, 2], `the acked purchase was never called again: ${keys}`);
  assert.equal(new Set(standin.licensesIssued().map((l) => l.idempotency_key)).size, 2, 'one license per purchase');
});

test('the Worker output carries none of the secrets or customer data used here', () => {
  const out = worker.logs();
  for (const needle of [WEBHOOK_SECRET, LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY, 'queue.buyer@example.com', 'Queue Buyer', '1 Queue St']) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
});
