// D1 round trips per delivery and steps side by side (the performance issue), end to
// end: the built Worker under `wrangler dev` with a local D1 and the stand-ins. Every
// webhook decision line carries `d1_calls`; this suite holds the counts to the
// documented ones (README "Round trips per delivery") and shows license and shipping
// in flight together.
//
// Each wait finds its line by the event id of the request in question.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import { linesUntil, until } from './support/logs.mjs';
import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('trips')}`;
const ADDRESS = { line1: '1 Row', line2: null, city: 'London', state: null, postal_code: 'N1', country: 'GB' };

let standin;
let worker;

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      LICENSE_SERVER_URL: `${standin.url}/license`,
      SHIPPING_URL: `${standin.url}/shipping/orders`,
      STRIPE_API_BASE: `${standin.url}/stripe`,
      UPSTREAM_TIMEOUT_MS: '3000',
    },
    secrets: {
      STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
      LICENSE_SERVER_API_KEY: `lk_${rid('trips')}`,
      SHIPPING_API_KEY: `shk_${rid('trips')}`,
      STRIPE_API_KEY: `sk_test_${rid('trips')}`,
    },
  });
});

after(async () => {
  await worker?.stop();
  await standin?.stop();
});

beforeEach(() => standin.reset());

function paidSession() {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: { slug: 'pro' },
    customer_details: { email: 'ada@example.com', name: 'Ada' },
    collected_information: { shipping_details: { name: 'Ada', address: ADDRESS } },
  });
  standin.setLineItems(session.id, [{
    id: rid('li'), object: 'item', description: 'Mug', quantity: 1, amount_total: 1500, currency: 'usd',
    price: { id: 'price_1', product: 'prod_1', unit_amount: 1500 },
  }]);
  return session;
}

const send = (evt) => deliver(worker.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

/** The `n`th decision line (1-based) of the event `id`: it carries `status` or `reason`. */
async function decisionLine(id, n = 1) {
  const lines = await linesUntil(
    worker,
    0,
    (l) => l.event_id === id && l.d1_calls !== undefined,
    n,
    `decision line ${n} of ${id}`,
  );
  return lines[n - 1];
}

test('a first paid delivery makes 3 D1 round trips; its duplicate 1', async () => {
  const evt = event('checkout.session.completed', paidSession());
  const first = await send(evt);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.purchase_state, 'fulfilled');
  const line = await decisionLine(evt.id);
  assert.equal(line.status, 'accepted');
  assert.equal(line.d1_calls, 3, JSON.stringify(line));

  const again = await send(evt);
  assert.equal(again.json.status, 'duplicate');
  const dup = await decisionLine(evt.id, 2);
  assert.equal(dup.d1_calls, 1, JSON.stringify(dup));
  assert.equal(standin.callsTo('license').length, 1);
  assert.equal(standin.callsTo('shipping').length, 1);
});

test('an ignored event type makes 1 D1 round trip', async () => {
  const evt = event('payment_intent.succeeded', { id: rid('pi'), object: 'payment_intent' });
  const res = await send(evt);
  assert.equal(res.json.status, 'ignored');
  assert.equal((await decisionLine(evt.id)).d1_calls, 1);
});

test('a delivery finding every step held is refused as busy after 1 D1 round trip', async () => {
  const evt = event('checkout.session.completed', paidSession());
  // The first delivery holds both steps while its license call waits 2 s.
  standin.delayNext('license', 1, 2_000);
  const first = send(evt);
  await until(
    () => standin.callsTo('license').length === 1 && standin.callsTo('shipping').length === 1,
    'both steps called',
  );
  const second = await send(evt);
  assert.equal(second.status, 409, second.text);
  const busy = (await linesUntil(worker, 0, (l) => l.event_id === evt.id && l.reason === 'purchase_busy', 1, 'busy line'))[0];
  assert.equal(busy.d1_calls, 1, JSON.stringify(busy));
  assert.equal((await first).status, 200);
  assert.equal(standin.callsTo('license').length, 1);
});

test('license and shipping run side by side: two 400 ms services answer in under 600 ms', async () => {
  // A sequential engine needs at least 800 ms; load can only add time, so one of
  // three tries under 600 ms proves the overlap, and every try must overlap.
  const times = [];
  for (let i = 0; i < 3; i += 1) {
    standin.reset();
    standin.delayNext('license', 1, 400);
    standin.delayNext('shipping', 1, 400);
    const evt = event('checkout.session.completed', paidSession());
    const started = Date.now();
    const res = await send(evt);
    times.push(Date.now() - started);
    assert.equal(res.status, 200, res.text);
    const [license] = standin.callsTo('license');
    const [shipping] = standin.callsTo('shipping');
    assert.ok(Math.abs(license.at - shipping.at) < 400, `in flight together: license at ${license.at}, shipping at ${shipping.at}`);
    if (times.at(-1) < 600) break;
  }
  assert.ok(Math.min(...times) < 600, `delivery times ${times.join(', ')} ms`);
});

test('a full refund takes back in 3 D1 round trips, revoke and cancel side by side; its duplicate 2, a partial refund 1', async () => {
  const session = paidSession();
  assert.equal((await send(event('checkout.session.completed', session))).json?.purchase_state, 'fulfilled');
  const refund = event('charge.refunded', {
    id: rid('ch'), object: 'charge', payment_intent: session.payment_intent, amount: 1500,
    amount_refunded: 1500, refunded: true,
  });
  // Each take-back call is answered after 1.5 s: long beside the Worker's scheduling on a
  // loaded machine, so "in flight together" below cannot be met by chance.
  const TAKE_BACK_MS = 1_500;
  standin.delayNext('license', 1, TAKE_BACK_MS);
  standin.delayNext('shipping', 1, TAKE_BACK_MS);
  const first = await send(refund);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.purchase_state, 'refunded');
  const line = await decisionLine(refund.id);
  // Claim the event and record the reversal (one batch); take both take-back steps and
  // read every step; settle both and derive the state.
  assert.equal(line.d1_calls, 3, JSON.stringify(line));
  assert.equal(standin.revocations().length, 1);
  assert.equal(standin.cancellations().length, 1);
  const [revoke] = standin.callsTo('license').filter((c) => c.path.endsWith('/revoke'));
  const [cancel] = standin.callsTo('shipping').filter((c) => c.path.endsWith('/cancel'));
  // One after the other, the second would arrive at least TAKE_BACK_MS after the first.
  assert.ok(Math.abs(revoke.at - cancel.at) < TAKE_BACK_MS, `revoke at ${revoke.at}, cancel at ${cancel.at}: in flight together`);

  const again = await send(refund);
  assert.equal(again.json.status, 'duplicate', again.text);
  const dup = await decisionLine(refund.id, 2);
  assert.equal(dup.d1_calls, 2, JSON.stringify(dup));
  assert.equal(standin.revocations().length, 1);
  assert.equal(standin.cancellations().length, 1);

  const partial = event('charge.refunded', {
    id: rid('ch'), object: 'charge', payment_intent: session.payment_intent, amount: 1500,
    amount_refunded: 500, refunded: false,
  });
  assert.equal((await send(partial)).json?.status, 'accepted');
  assert.equal((await decisionLine(partial.id)).d1_calls, 1);
});

test('a refund under an id already recorded for another event records no reversal (one D1 round trip)', async () => {
  const session = paidSession();
  const paid = event('checkout.session.completed', session);
  assert.equal((await send(paid)).json?.purchase_state, 'fulfilled');
  const forged = event('charge.refunded', {
    id: rid('ch'), object: 'charge', payment_intent: session.payment_intent, amount: 1500,
    amount_refunded: 1500, refunded: true,
  });
  forged.id = paid.id; // the checkout event's id, on another object
  const res = await send(forged);
  assert.equal(res.status, 400, res.text);
  const line = (await linesUntil(worker, 0, (l) => l.event_id === paid.id && l.reason !== undefined && l.d1_calls !== undefined, 1, 'conflict line'))[0];
  assert.equal(line.d1_calls, 1, JSON.stringify(line));
  const [row] = await worker.d1(`SELECT COUNT(*) AS n FROM reversals WHERE event_id = '${paid.id}'`);
  assert.equal(row.n, 0, 'no reversal recorded under the conflicting id');
  const [purchase] = await worker.d1(`SELECT state FROM purchases WHERE session_id = '${session.id}'`);
  assert.equal(purchase.state, 'fulfilled');
  assert.equal(standin.revocations().length, 0);
});

test('an ignored event under an id already recorded for another object is refused after 1 D1 round trip (the entry\'s own path)', async () => {
  const first = event('customer.created', { id: rid('cus'), object: 'customer' });
  assert.equal((await send(first)).json?.status, 'ignored');
  const forged = event('customer.created', { id: rid('cus'), object: 'customer' });
  forged.id = first.id;
  const res = await send(forged);
  assert.equal(res.status, 400, res.text);
  const line = (await linesUntil(worker, 0, (l) => l.event_id === first.id && l.reason === 'event_id_conflict', 1, 'conflict line'))[0];
  assert.equal(line.d1_calls, 1, JSON.stringify(line));
  const [row] = await worker.d1(`SELECT object_id FROM events WHERE id = '${first.id}'`);
  assert.equal(row.object_id, first.data.object.id, 'the first event stays as recorded');
  // Seen again as itself: a duplicate, one round trip.
  assert.equal((await send(first)).json?.status, 'duplicate');
});
