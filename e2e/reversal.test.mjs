// Taking back when the money goes back (issue 14), end to end: the built Worker under
// `wrangler dev` with a local D1, signed deliveries from the official stripe package,
// and the stand-in license server (`/revoke`) and shipping system (`/{order}/cancel`).
// Full and partial refunds, disputes with and without REVOKE_ON_DISPUTE, ended
// subscriptions, a refund before or racing its purchase, a parcel already shipped, a
// license the server does not know, duplicates (twice and 20 at once), and queue mode.

import assert from 'node:assert/strict';
import { after, afterEach, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, logLines, until } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('rev')}`;
const LICENSE_KEY = `lk_${rid('rev')}`;
const SHIPPING_KEY = `shk_${rid('rev')}`;
const STRIPE_KEY = `sk_test_${rid('rev')}`;
const ADMIN_TOKEN = `adm_${rid('rev')}`;
const SECRETS = [WEBHOOK_SECRET, LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY, ADMIN_TOKEN];
const QUEUE = 'stripe-edge-e2e-reversal';

const CUSTOMER = { email: 'rita.refund@example.com', name: 'Rita Refund' };
const SHIPPING = { name: 'Rita R.', address: { line1: '9 Chargeback Lane', city: 'Leeds', postal_code: 'LS1 4AP', country: 'GB' } };
const PERSONAL = [CUSTOMER.email, CUSTOMER.name, SHIPPING.name, SHIPPING.address.line1];

// The queue worker runs with REVOKE_ON_DISPUTE=false: one worker fewer on a busy machine.
const QUEUES = `
[[queues.producers]]
binding = "FULFILLMENT_QUEUE"
queue = "${QUEUE}"

[[queues.consumers]]
queue = "${QUEUE}"
max_batch_size = 5
max_batch_timeout = 1
max_retries = 5
`;

let standin;
let worker;
let queued;
const ISSUED = new Set();

before(async () => {
  standin = await startStandin();
  const vars = {
    LICENSE_SERVER_URL: `${standin.url}/license`,
    SHIPPING_URL: `${standin.url}/shipping/orders`,
    STRIPE_API_BASE: `${standin.url}/stripe`,
    UPSTREAM_TIMEOUT_MS: '3000',
  };
  const secrets = {
    STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    LICENSE_SERVER_API_KEY: LICENSE_KEY,
    SHIPPING_API_KEY: SHIPPING_KEY,
    STRIPE_API_KEY: STRIPE_KEY,
  };
  worker = await startWorker({ vars, secrets: { ...secrets, ADMIN_TOKEN } });
  queued = await startWorker({
    vars: { ...vars, REVOKE_ON_DISPUTE: 'false', QUEUE_RETRY_BASE_SECS: '1', FULFILLMENT_MAX_ATTEMPTS: '6' },
    secrets,
    toml: QUEUES,
  });
});

after(async () => {
  const outputs = [worker?.logs() ?? '', queued?.logs() ?? ''];
  await worker?.stop();
  await queued?.stop();
  await standin?.stop();
  // No secret, customer data or license key in anything either Worker printed.
  for (const output of outputs) {
    for (const s of [...SECRETS, ...PERSONAL, ...ISSUED]) {
      assert.ok(!output.includes(s), `the Worker's output contains ${s.slice(0, 12)}…`);
    }
  }
});

beforeEach(() => standin.reset());
afterEach(() => {
  for (const l of standin.licensesIssued()) ISSUED.add(l.license_key);
});

function paidSession(overrides = {}) {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: { slug: 'pro' },
    customer_details: CUSTOMER,
    collected_information: { shipping_details: SHIPPING },
    amount_total: 3000,
    ...overrides,
  });
  standin.setLineItems(session.id, [{
    id: rid('li'), object: 'item', description: 'Mug', quantity: 1, amount_total: 3000, currency: 'usd',
    price: { id: 'price_1', product: 'prod_1', unit_amount: 3000 },
  }]);
  standin.setSession(session);
  return session;
}

const refund = (pi, full = true) => event('charge.refunded', {
  id: rid('ch'), object: 'charge', payment_intent: pi, amount: 3000,
  amount_refunded: full ? 3000 : 1000, refunded: full, billing_details: { email: CUSTOMER.email },
});
const dispute = (pi, type = 'charge.dispute.created', status = 'needs_response') => event(type, {
  id: rid('dp'), object: 'dispute', charge: rid('ch'), payment_intent: pi, amount: 3000, status, reason: 'fraudulent',
});
const subscriptionDeleted = (sub) => event('customer.subscription.deleted', {
  id: sub, object: 'subscription', status: 'canceled', customer: rid('cus'),
});

async function send(evt, target = worker) {
  return deliver(target.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });
}

/** Delivers like Stripe: again while the answer is not 2xx (409/503), bounded. */
async function sendUntilOk(evt, target = worker, ms = 30_000) {
  const payload = JSON.stringify(evt);
  let last;
  await until(async () => {
    last = await deliver(target.url, payload, { secret: WEBHOOK_SECRET });
    return last.status === 200;
  }, `a 200 for ${evt.type}`, ms, () => `${last?.status} ${last?.text}`);
  return last;
}

async function purchaseState(sessionId, target = worker) {
  return (await target.d1(`SELECT state FROM purchases WHERE session_id = '${sessionId}'`))[0]?.state;
}

async function steps(sessionId, target = worker) {
  const rows = await target.d1(`SELECT step, state, result, direction FROM steps WHERE session_id = '${sessionId}' ORDER BY step`);
  return Object.fromEntries(rows.map((r) => [r.step, r]));
}

const revokeCalls = () => standin.callsTo('license').filter((c) => c.path === '/license/revoke');
const cancelCalls = (sessionId) => standin.callsTo('shipping').filter((c) => c.path === `/shipping/orders/${sessionId}/cancel`);

async function fulfilled(target = worker) {
  const session = paidSession();
  const res = await sendUntilOk(event('checkout.session.completed', session), target);
  assert.equal(res.status, 200, res.text);
  if (target === queued) {
    await until(async () => (await purchaseState(session.id, target)) === 'fulfilled', 'the consumer to fulfil', 30_000);
  }
  assert.equal(standin.licensesIssued().length, 1);
  assert.equal(standin.shipmentsCreated().length, 1);
  return session;
}

test('a full refund after fulfilment: one revoke, one cancel, the documented calls', async () => {
  const session = await fulfilled();
  const [license] = standin.licensesIssued();
  const [shipment] = standin.shipmentsCreated();
  const evt = refund(session.payment_intent);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.status, 'accepted');
  assert.equal(res.json.purchase_state, 'refunded');

  const [revoke] = revokeCalls();
  assert.equal(revokeCalls().length, 1);
  assert.equal(revoke.headers.authorization, `Bearer ${LICENSE_KEY}`);
  assert.deepEqual(revoke.body, { license_key: license.license_key });
  assert.equal(revoke.raw, JSON.stringify({ license_key: license.license_key }), "exactly {license_key}");

  const [cancel] = cancelCalls(session.id);
  assert.equal(cancelCalls(session.id).length, 1);
  assert.equal(cancel.method, 'POST');
  assert.equal(cancel.headers.authorization, `Bearer ${SHIPPING_KEY}`);
  assert.equal(cancel.headers['idempotency-key'], `stripe-edge:${session.id}:cancel_shipment`);
  assert.deepEqual(cancel.body, { order_id: session.id, shipment_id: shipment.shipment_id, reason: 'refunded' });

  assert.equal(await purchaseState(session.id), 'refunded');
  const rows = await steps(session.id);
  assert.equal(rows.revoke_license.state, 'done');
  assert.equal(rows.revoke_license.direction, 'reverse');
  assert.equal(rows.cancel_shipment.result, 'cancelled');
  const stored = await worker.d1(`SELECT payment_intent FROM purchases WHERE session_id = '${session.id}'`);
  assert.equal(stored[0].payment_intent, session.payment_intent);

  // The ops lookup shows the state, the take-backs and the reversal; no customer data.
  const admin = await fetch(`${worker.url}/admin/purchases/${session.id}`, {
    headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(15_000),
  });
  assert.equal(admin.status, 200);
  const view = await admin.json();
  assert.equal(view.purchase.state, 'refunded');
  assert.deepEqual(view.steps.map((s) => [s.step, s.state]).sort(), [
    ['cancel_shipment', 'done'], ['license', 'done'], ['revoke_license', 'done'], ['shipping', 'done'],
  ]);
  assert.deepEqual(view.reversals.map((r) => [r.event_id, r.kind, r.takes_back_as, r.reference]), [
    [evt.id, 'refunded', 'refunded', session.payment_intent],
  ]);
  for (const p of PERSONAL) assert.ok(!JSON.stringify(view).includes(p));

  // Delivered again: nothing more.
  const again = await send(evt);
  assert.equal(again.json.status, 'duplicate');
  assert.equal(revokeCalls().length, 1);
  assert.equal(cancelCalls(session.id).length, 1);
});

test('every reversal delivered 20 times at once, then again: one call each', async () => {
  const session = await fulfilled();
  const evt = refund(session.payment_intent);
  const answers = await Promise.all(Array.from({ length: 20 }, () => send(evt)));
  for (const a of answers) assert.ok([200, 409].includes(a.status), `${a.status} ${a.text}`);
  await sendUntilOk(evt);
  // A dispute for the same payment, 20 at once and twice more: the state stays, no call.
  const disputed = dispute(session.payment_intent);
  await Promise.all(Array.from({ length: 20 }, () => send(disputed)));
  await sendUntilOk(disputed);
  await sendUntilOk(disputed);
  assert.equal(revokeCalls().length, 1);
  assert.equal(cancelCalls(session.id).length, 1);
  assert.equal(standin.revocations().length, 1);
  assert.equal(await purchaseState(session.id), 'refunded');
});

test('a refund racing the first delivery: whatever was made (license, shipment) is taken back exactly once', async () => {
  const session = paidSession();
  standin.delayNext('license', 1, 1_500); // the license is being made when the refund lands
  const checkout = event('checkout.session.completed', session);
  const refunded = refund(session.payment_intent);
  const first = send(checkout);
  await until(() => standin.callsTo('license').length >= 1, 'the license call to start', 15_000);
  const [a, b] = await Promise.all([first, send(refunded)]);
  assert.ok([200, 409].includes(a.status), a.text);
  assert.ok([200, 409].includes(b.status), b.text);
  await sendUntilOk(checkout);
  await sendUntilOk(refunded);

  const issued = standin.licensesIssued();
  assert.ok(issued.length <= 1);
  assert.equal(standin.revocations().length, issued.length, 'every license made is revoked');
  assert.equal(revokeCalls().length, issued.length, 'revoked exactly once');
  // Shipping runs beside the license, so it was under way too: made, then cancelled.
  const shipped = standin.shipmentsCreated();
  assert.ok(shipped.length <= 1);
  assert.equal(cancelCalls(session.id).length, shipped.length, 'every shipment made is cancelled exactly once');
  const rows = await steps(session.id);
  assert.equal(rows.shipping.state, shipped.length ? 'done' : 'cancelled');
  assert.equal(await purchaseState(session.id), 'refunded');
});

test('a refund before the checkout event: nothing is fulfilled when it arrives', async () => {
  const session = paidSession();
  const early = await send(refund(session.payment_intent));
  assert.equal(early.status, 200, early.text);
  assert.equal(early.json.status, 'accepted');
  const late = await send(event('checkout.session.completed', session));
  assert.equal(late.status, 200, late.text);
  assert.equal(late.json.purchase_state, 'refunded');
  assert.equal(standin.callsTo('license').length, 0);
  assert.equal(standin.callsTo('shipping').length, 0);
  const rows = await steps(session.id);
  assert.deepEqual([rows.license.state, rows.shipping.state], ['cancelled', 'cancelled']);
  assert.equal(rows.revoke_license, undefined);
  // Redelivered later, as Stripe might: still nothing.
  await send(event('checkout.session.async_payment_succeeded', session));
  assert.equal(standin.callsTo('license').length, 0);
});

test('a partial refund is recorded and takes nothing back', async () => {
  const session = await fulfilled();
  const evt = refund(session.payment_intent, false);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(revokeCalls().length + cancelCalls(session.id).length, 0);
  assert.equal(await purchaseState(session.id), 'fulfilled');
  const rows = await worker.d1(`SELECT kind, purchase_state FROM reversals WHERE event_id = '${evt.id}'`);
  assert.deepEqual(rows, [{ kind: 'partial_refund', purchase_state: null }]);
  const [line] = await linesUntil(worker, 0, (l) => l.event_id === evt.id && l.msg === 'partial refund recorded: nothing taken back', 1, 'the partial refund line', 10_000);
  assert.equal(line.level, 'info');
});

test('a dispute revokes and cancels (reason disputed); its close is recorded without un-revoking', async () => {
  const session = await fulfilled();
  const res = await send(dispute(session.payment_intent));
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.purchase_state, 'disputed');
  assert.equal(revokeCalls().length, 1);
  assert.equal(cancelCalls(session.id)[0].body.reason, 'disputed');
  const closed = dispute(session.payment_intent, 'charge.dispute.closed', 'won');
  assert.equal((await send(closed)).status, 200);
  assert.equal(await purchaseState(session.id), 'disputed');
  assert.equal(revokeCalls().length, 1);
  const rows = await worker.d1(`SELECT kind, detail FROM reversals WHERE event_id = '${closed.id}'`);
  assert.deepEqual(rows, [{ kind: 'dispute_closed', detail: 'won' }]);
});

test('an ended subscription revokes its license and cancels nothing', async () => {
  const sub = rid('sub');
  const session = paidSession({ mode: 'subscription', payment_intent: null, subscription: sub, collected_information: null });
  await sendUntilOk(event('checkout.session.completed', session));
  assert.equal(standin.licensesIssued().length, 1);
  const evt = subscriptionDeleted(sub);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.purchase_state, 'cancelled');
  assert.deepEqual(revokeCalls().map((c) => c.body), [{ license_key: standin.licensesIssued()[0].license_key }]);
  assert.equal(standin.callsTo('shipping').length, 0);
  await send(evt);
  assert.equal(revokeCalls().length, 1);
});

test('a parcel already shipped: shipped_before_cancel, a warn line, no retry storm', async () => {
  const session = await fulfilled();
  standin.markShipped(session.id);
  const evt = refund(session.payment_intent);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.status, 'accepted');
  const rows = await steps(session.id);
  assert.deepEqual([rows.cancel_shipment.state, rows.cancel_shipment.result], ['done', 'shipped_before_cancel']);
  const [line] = await linesUntil(worker, 0, (l) => l.session_id === session.id && l.msg === 'shipment already shipped: a return is needed', 1, 'the warn line', 10_000);
  assert.equal(line.level, 'warn');
  await send(evt);
  await send(refund(session.payment_intent));
  assert.equal(cancelCalls(session.id).length, 1);
  assert.equal(revokeCalls().length, 1);
});

test('a license the server does not know: the revoke fails for good, Stripe gets a 2xx, an alert names it', async () => {
  const session = await fulfilled();
  standin.failNext('license', 1, 404);
  const evt = refund(session.payment_intent);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.status, 'failed');
  const rows = await steps(session.id);
  assert.equal(rows.revoke_license.state, 'failed');
  assert.equal(rows.cancel_shipment.state, 'done');
  assert.equal(await purchaseState(session.id), 'refunded');
  const [line] = await linesUntil(worker, 0, (l) => l.session_id === session.id && l.msg === 'take-back failed permanently', 1, 'the alert', 10_000);
  assert.equal(line.level, 'alert');
  await send(evt);
  assert.equal(revokeCalls().length, 1);
});

test('queue mode: the consumer takes back, once, whatever the duplicates', async () => {
  const session = await fulfilled(queued);
  const evt = refund(session.payment_intent);
  const answers = await Promise.all(Array.from({ length: 5 }, () => send(evt, queued)));
  for (const a of answers) assert.equal(a.status, 200, a.text);
  await until(async () => (await steps(session.id, queued)).cancel_shipment?.state === 'done'
    && (await steps(session.id, queued)).revoke_license?.state === 'done', 'the consumer to take back', 30_000);
  assert.equal(revokeCalls().length, 1);
  assert.equal(cancelCalls(session.id).length, 1);
  assert.equal(await purchaseState(session.id, queued), 'refunded');
});

test('REVOKE_ON_DISPUTE=false: a dispute is only recorded', async () => {
  const session = await fulfilled(queued);
  const evt = dispute(session.payment_intent);
  const res = await send(evt, queued);
  assert.equal(res.status, 200, res.text);
  assert.equal(await purchaseState(session.id, queued), 'fulfilled');
  const rows = await queued.d1(`SELECT kind, purchase_state FROM reversals WHERE event_id = '${evt.id}'`);
  assert.deepEqual(rows, [{ kind: 'dispute_recorded', purchase_state: null }]);
  const from = 0;
  await linesUntil(queued, from, (l) => l.event_id === evt.id && l.msg.startsWith('dispute recorded'), 1, 'the record line', 10_000);
  assert.equal(revokeCalls().length + cancelCalls(session.id).length, 0);
  assert.ok(logLines(queued).length > 0);
});
