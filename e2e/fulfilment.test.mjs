// Exactly-once fulfilment (issue 4), end to end: the built Worker under `wrangler dev`
// with a local D1, signed deliveries from the official stripe package, and a stand-in
// license server, shipping system and Stripe API that record every call. Asserts on
// status codes, on what the stand-ins received, on D1 rows and on the Worker's output.

import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, test } from 'node:test';

import { waitForLine } from './support/logs.mjs';
import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('fulfil')}`;
const LICENSE_KEY = `lk_${rid('fulfil')}`;
const SHIPPING_KEY = `shk_${rid('fulfil')}`;
const STRIPE_KEY = `sk_test_${rid('fulfil')}`;
const SECRETS = [WEBHOOK_SECRET, LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY];

const CUSTOMER = { email: 'ada.lovelace@example.com', name: 'Ada Lovelace' };
const ADDRESS = { line1: '12 Analytical Row', line2: 'Flat 3', city: 'London', state: null, postal_code: 'N1 9GU', country: 'GB' };
const SHIPPING = { name: 'Ada L. Shipping', address: ADDRESS };
const PERSONAL = [CUSTOMER.email, CUSTOMER.name, SHIPPING.name, ADDRESS.line1, ADDRESS.postal_code];

let standin;
let worker;
let liveWorker;
const outputs = [];

before(async () => {
  standin = await startStandin();
  const vars = {
    LICENSE_SERVER_URL: `${standin.url}/license`,
    SHIPPING_URL: `${standin.url}/shipping/orders`,
    STRIPE_API_BASE: `${standin.url}/stripe`,
    UPSTREAM_TIMEOUT_MS: '1500',
  };
  const secrets = {
    STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    LICENSE_SERVER_API_KEY: LICENSE_KEY,
    SHIPPING_API_KEY: SHIPPING_KEY,
    STRIPE_API_KEY: STRIPE_KEY,
  };
  worker = await startWorker({ vars, secrets });
  liveWorker = await startWorker({ vars: { ...vars, STRIPE_LIVEMODE: 'true' }, secrets });
});

after(async () => {
  for (const w of [worker, liveWorker]) {
    if (w) outputs.push(w.logs());
    await w?.stop();
  }
  await standin?.stop();
});

beforeEach(() => standin.reset());

/** Every license key and shipment id the stand-in issued in any test: none may be logged. */
const ISSUED = new Set();
afterEach(() => {
  for (const l of standin.licensesIssued()) ISSUED.add(l.license_key);
  for (const s of standin.shipmentsCreated()) ISSUED.add(s.shipment_id);
});

const LINE_ITEM = (n = 1) => ({
  id: `li_${rid('x').slice(-8)}_${n}`,
  object: 'item',
  description: `Mug ${n}`,
  quantity: 2,
  amount_total: 3000,
  currency: 'usd',
  price: { id: `price_${n}`, product: `prod_${n}`, unit_amount: 1500 },
});

/** A paid session with a slug and a (new-style) shipping address; line items registered. */
function paidSession(overrides = {}) {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: { slug: 'pro' },
    customer_details: CUSTOMER,
    collected_information: { shipping_details: SHIPPING },
    amount_total: 3000,
    ...overrides,
  });
  standin.setLineItems(session.id, [LINE_ITEM()]);
  return session;
}

async function send(evt, target = worker) {
  const payload = typeof evt === 'string' ? evt : JSON.stringify(evt);
  return deliver(target.url, payload, { secret: WEBHOOK_SECRET });
}

async function stepRows(sessionId, target = worker) {
  return target.d1(`SELECT step, state, attempts, last_error, result, event_id FROM steps WHERE session_id = '${sessionId}' ORDER BY step`);
}

async function purchaseState(sessionId, target = worker) {
  const rows = await target.d1(`SELECT state FROM purchases WHERE session_id = '${sessionId}'`);
  return rows[0]?.state;
}

test('a paid session gets one license and one shipment, with the documented calls', async () => {
  const session = paidSession();
  const evt = event('checkout.session.completed', session);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { received: true, event_id: evt.id, status: 'accepted', purchase_state: 'fulfilled' });

  const [license] = standin.callsTo('license');
  assert.equal(standin.callsTo('license').length, 1);
  assert.equal(license.method, 'POST');
  assert.equal(license.path, '/license/generate');
  assert.equal(license.headers.authorization, `Bearer ${LICENSE_KEY}`);
  assert.equal(license.headers['idempotency-key'], `stripe-edge:${session.id}:license`);
  assert.deepEqual(license.body, {
    slug: 'pro',
    metadata: {
      provider: 'stripe',
      provider_event_id: evt.id,
      provider_customer_id: session.customer,
      provider_checkout_session_id: session.id,
      email: CUSTOMER.email,
    },
  });

  const items = standin.callsTo('stripe').filter((c) => c.path.endsWith('/line_items'));
  assert.equal(items.length, 1);
  assert.equal(items[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.equal(standin.callsTo('stripe').filter((c) => c.path.includes('/payment_intents/')).length, 0);

  const [order] = standin.callsTo('shipping');
  assert.equal(standin.callsTo('shipping').length, 1);
  assert.equal(order.path, '/shipping/orders');
  assert.equal(order.headers.authorization, `Bearer ${SHIPPING_KEY}`);
  assert.equal(order.headers['idempotency-key'], `stripe-edge:${session.id}:shipping`);
  assert.deepEqual(order.body, {
    order_id: session.id,
    stripe_event_id: evt.id,
    payment_intent: session.payment_intent,
    customer: CUSTOMER,
    shipping: SHIPPING,
    line_items: [{ price_id: 'price_1', product_id: 'prod_1', description: 'Mug 1', quantity: 2, unit_amount: 1500, amount_total: 3000, currency: 'usd' }],
    amount_total: 3000,
    currency: 'usd',
    livemode: false,
  });

  const [issued] = standin.licensesIssued();
  const [shipped] = standin.shipmentsCreated();
  const mapping = await worker.d1(`SELECT state, license_key, shipment_id FROM purchase_mappings WHERE session_id = '${session.id}'`);
  assert.deepEqual(mapping, [{ state: 'fulfilled', license_key: issued.license_key, shipment_id: shipped.shipment_id }]);
});

test('the same delivery twice: the second is a duplicate and calls nothing', async () => {
  const evt = event('checkout.session.completed', paidSession());
  assert.equal((await send(evt)).status, 200);
  const calls = standin.calls.length;
  const again = await send(evt);
  assert.equal(again.status, 200);
  assert.equal(again.json.status, 'duplicate');
  assert.equal(standin.calls.length, calls);
});

test('the same delivery 50 times at once: one call per step, and nobody hears 2xx early', async () => {
  const session = paidSession();
  const payload = JSON.stringify(event('checkout.session.completed', session));
  const answers = await Promise.all(Array.from({ length: 50 }, () => send(payload)));
  const statuses = answers.map((a) => a.status);
  // 409: another delivery holds a step. 503: the holder's call outran UPSTREAM_TIMEOUT_MS
  // (1.5 s) while 49 other deliveries loaded the same workerd; Stripe redelivers.
  assert.ok(statuses.every((s) => [200, 409, 503].includes(s)), JSON.stringify(statuses));
  for (const a of answers.filter((x) => x.status === 200)) {
    assert.equal(a.json.purchase_state, 'fulfilled', 'a 2xx only once the steps are done');
  }
  const timedOut = statuses.includes(503);
  // Redeliver as Stripe would until the purchase is done (bounded).
  let last;
  for (let i = 0; i < 20 && last?.status !== 200; i += 1) {
    last = await send(payload);
    if (last.status !== 200) await new Promise((r) => setTimeout(r, 250));
  }
  assert.equal(last.status, 200, last.text);
  assert.equal(standin.licensesIssued().length, 1, 'one license');
  assert.equal(standin.shipmentsCreated().length, 1, 'one shipment');
  if (!timedOut) {
    // Without a timed-out call, one call per step exactly.
    assert.equal(standin.callsTo('license').length, 1);
    assert.equal(standin.callsTo('shipping').length, 1);
  }
  const later = await send(payload);
  assert.equal(later.json.status, 'duplicate');
  assert.equal(standin.licensesIssued().length, 1);
});

test('completed (unpaid) then async_payment_succeeded: waits, then fulfils once', async () => {
  const session = paidSession({ payment_status: 'unpaid' });
  const completed = await send(event('checkout.session.completed', session));
  assert.equal(completed.status, 200);
  assert.equal(await purchaseState(session.id), 'awaiting_payment');
  assert.equal(standin.calls.length, 0);

  const succeeded = await send(event('checkout.session.async_payment_succeeded', { ...session, payment_status: 'paid' }));
  assert.equal(succeeded.status, 200, succeeded.text);
  assert.equal(await purchaseState(session.id), 'fulfilled');
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);
});

test('completed and async_payment_succeeded for one paid session: one fulfilment, also when concurrent', async () => {
  for (const concurrent of [false, true]) {
    standin.reset();
    const session = paidSession();
    const a = event('checkout.session.completed', session);
    const b = event('checkout.session.async_payment_succeeded', session);
    const answers = concurrent ? await Promise.all([send(a), send(b)]) : [await send(a), await send(b)];
    assert.ok(answers.every((x) => x.status === 200 || x.status === 409), JSON.stringify(answers.map((x) => x.status)));
    // A 409 is answered again by Stripe later; do what Stripe does.
    for (const [i, x] of answers.entries()) if (x.status === 409) assert.equal((await send([a, b][i])).status, 200);
    assert.equal(standin.licensesIssued().length, 1, `concurrent=${concurrent}`);
    assert.equal(standin.shipmentsCreated().length, 1, `concurrent=${concurrent}`);
  }
});

test('async_payment_failed: recorded, nothing fulfilled, a warning logged', async () => {
  const session = paidSession({ payment_status: 'unpaid' });
  await send(event('checkout.session.completed', session));
  const from = worker.logs().length;
  const failed = event('checkout.session.async_payment_failed', session);
  const res = await send(failed);
  assert.equal(res.status, 200);
  assert.equal(await purchaseState(session.id), 'payment_failed');
  assert.equal(standin.calls.length, 0);
  const line = await waitForLine(worker, (l) => l.msg === 'payment failed: nothing fulfilled' && l.event_id === failed.id, { from });
  assert.deepEqual([line.level, line.session_id], ['warn', session.id]);
});

test('a license server failing 503 twice: 503, 503, then 200 with exactly one license', async () => {
  const session = paidSession();
  const evt = event('checkout.session.completed', session);
  standin.failNext('license', 2, 503);
  const first = await send(evt);
  assert.equal(first.status, 503, first.text);
  let [license] = (await stepRows(session.id)).filter((r) => r.step === 'license');
  assert.equal(license.state, 'pending');
  assert.equal(license.attempts, 1);
  assert.equal(license.last_error, 'license server answered 503');

  assert.equal((await send(evt)).status, 503);
  const third = await send(evt);
  assert.equal(third.status, 200, third.text);
  [license] = (await stepRows(session.id)).filter((r) => r.step === 'license');
  assert.deepEqual([license.state, license.attempts], ['done', 3]);

  assert.equal(standin.licensesIssued().length, 1);
  const calls = standin.callsTo('license');
  assert.equal(calls.length, 3);
  assert.equal(new Set(calls.map((c) => c.headers['idempotency-key'])).size, 1, 'one key for every attempt');
  assert.equal(new Set(calls.map((c) => JSON.stringify(c.body))).size, 1, 'one body for every attempt');
  assert.equal(standin.shipmentsCreated().length, 1, 'shipping went ahead meanwhile, once');
});

test('a hanging license server: 503 within the bound, then success on redelivery', async () => {
  const session = paidSession();
  const evt = event('checkout.session.completed', session);
  standin.hangNext('license', 1);
  const started = Date.now();
  const first = await send(evt);
  const elapsed = Date.now() - started;
  assert.equal(first.status, 503, first.text);
  assert.ok(elapsed < 5_000, `answered after ${elapsed} ms (UPSTREAM_TIMEOUT_MS 1500)`);
  const second = await send(evt);
  assert.equal(second.status, 200, second.text);
  assert.equal(standin.licensesIssued().length, 1);
});

test('line items over two pages are all fetched and all shipped, in order', async () => {
  const session = paidSession();
  const items = [LINE_ITEM(1), LINE_ITEM(2), LINE_ITEM(3)];
  standin.setLineItems(session.id, items, 2);
  assert.equal((await send(event('checkout.session.completed', session))).status, 200);
  const pages = standin.callsTo('stripe').filter((c) => c.path.endsWith('/line_items'));
  assert.equal(pages.length, 2);
  assert.equal(pages[0].query.starting_after, undefined);
  assert.equal(pages[1].query.starting_after, items[1].id, 'the second page starts after the first page\'s last item');
  const [order] = standin.callsTo('shipping');
  assert.deepEqual(order.body.line_items.map((l) => l.price_id), ['price_1', 'price_2', 'price_3']);
});

test('the older shipping_details field is read when collected_information is absent', async () => {
  const session = paidSession({ collected_information: undefined, shipping_details: { ...SHIPPING, name: 'Old Field' } });
  assert.equal((await send(event('checkout.session.completed', session, { api_version: '2024-06-20' }))).status, 200);
  const [order] = standin.callsTo('shipping');
  assert.equal(order.body.shipping.name, 'Old Field');
  assert.equal(standin.callsTo('stripe').filter((c) => c.path.includes('/payment_intents/')).length, 0);
});

test('without an address on the session, the PaymentIntent is asked (stripe trigger sessions)', async () => {
  const session = paidSession({ collected_information: null });
  standin.setPaymentIntent(session.payment_intent, { shipping: { ...SHIPPING, name: 'From PaymentIntent' } });
  assert.equal((await send(event('checkout.session.completed', session))).status, 200);
  const intents = standin.callsTo('stripe').filter((c) => c.path === `/stripe/v1/payment_intents/${session.payment_intent}`);
  assert.equal(intents.length, 1);
  assert.equal(intents[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.equal(standin.callsTo('shipping')[0].body.shipping.name, 'From PaymentIntent');
});

test('a livemode mismatch is acknowledged, never fulfilled, and logged as an error', async () => {
  const session = paidSession();
  const from = liveWorker.logs().length;
  const evt = event('checkout.session.completed', session);
  const res = await send(evt, liveWorker);
  assert.equal(res.status, 200);
  assert.equal(res.json.status, 'ignored');
  assert.equal(standin.calls.length, 0);
  assert.equal(await purchaseState(session.id, liveWorker), undefined);
  const line = await waitForLine(liveWorker, (l) => l.msg === 'livemode mismatch: not fulfilled' && l.event_id === evt.id, { from });
  assert.deepEqual([line.level, line.session_id], ['error', session.id]);
});

test('a permanent 400 fails the step once: 200 failed, then no retry storm', async () => {
  const session = paidSession();
  const evt = event('checkout.session.completed', session);
  standin.failNext('license', 1, 400);
  const from = worker.logs().length;
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.status, 'failed');
  const [license] = (await stepRows(session.id)).filter((r) => r.step === 'license');
  assert.deepEqual([license.state, license.last_error], ['failed', 'license server answered 400']);
  assert.equal(await purchaseState(session.id), 'failed');
  const line = await waitForLine(
    worker,
    (l) => l.msg === 'step failed permanently' && l.session_id === session.id && l.event_id === evt.id,
    { from },
  );
  assert.deepEqual([line.step, line.reason], ['license', 'license server answered 400']);

  for (let i = 0; i < 3; i += 1) assert.equal((await send(evt)).json.status, 'duplicate');
  assert.equal(standin.callsTo('license').length, 1, 'no retry storm');
});

test('a known event id about another session: 400, alerted, nothing stored or fulfilled', async () => {
  const evt = event('checkout.session.completed', paidSession());
  assert.equal((await send(evt)).status, 200);
  const licenses = standin.callsTo('license').length;
  const other = paidSession();
  const forged = { ...evt, data: { object: other } };
  const res = await send(forged);
  assert.equal(res.status, 400, res.text);
  assert.match(res.json.error, /already recorded for another object/);
  assert.equal(standin.callsTo('license').length, licenses);
  assert.equal(await purchaseState(other.id), undefined);
  const rows = await worker.d1(`SELECT object_id FROM events WHERE id = '${evt.id}'`);
  assert.deepEqual(rows, [{ object_id: evt.data.object.id }]);
  const again = await send(evt);
  assert.equal(again.json.status, 'duplicate', 'the genuine redelivery is still a duplicate');
});

test('the Worker output never carries customer data, license keys, shipment ids or secrets', () => {
  const out = [worker.logs(), liveWorker.logs(), ...outputs].join('\n');
  assert.ok(ISSUED.size >= 10, `collected ${ISSUED.size} issued ids`);
  for (const needle of [...PERSONAL, ...SECRETS, ...ISSUED]) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
  assert.ok(out.includes('"msg":"step done"'), 'the scan read real output');
});
