// The ops API, the cron run and the signed relay (issue 5), end to end under
// `wrangler dev`: admin authorisation, lookups without customer data, pagination,
// replay exactly once, re-driving a step whose holder died, retention, and Standard
// Webhooks signatures checked with node:crypto.

import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { after, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('admin')}`;
const ADMIN_TOKEN = `adm_${rid('admin')}`;
const LICENSE_KEY = `lk_${rid('admin')}`;
const SHIPPING_KEY = `shk_${rid('admin')}`;
const STRIPE_KEY = `sk_test_${rid('admin')}`;
// The Standard Webhooks specification's published test secret.
const FORWARD_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SCHEDULED = '/cdn-cgi/local/scheduled?cron=*/5+*+*+*+*';
const CUSTOMER = { email: 'ops.buyer@example.com', name: 'Ops Buyer' };
const STREET = '7 Admin Lane';

let standin;
let worker;
let bare; // no ADMIN_TOKEN

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
    FORWARD_SIGNING_SECRET: FORWARD_SECRET,
  };
  worker = await startWorker({ vars, secrets: { ...secrets, ADMIN_TOKEN } });
  bare = await startWorker({ vars, secrets });
});

after(async () => {
  await worker?.stop();
  await bare?.stop();
  await standin?.stop();
});

beforeEach(() => standin.reset());

const auth = { authorization: `Bearer ${ADMIN_TOKEN}` };

async function admin(path, { method = 'GET', headers = auth, target = worker } = {}) {
  const res = await fetch(target.url + path, { method, headers });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

function purchase() {
  const session = checkoutSession({
    metadata: { slug: 'pro' },
    customer_details: CUSTOMER,
    collected_information: { shipping_details: { name: CUSTOMER.name, address: { line1: STREET, city: 'Nantes', postal_code: '44000', country: 'FR' } } },
  });
  standin.setSession(session);
  standin.setLineItems(session.id, [{ id: 'li_a1', quantity: 1, amount_total: 900, currency: 'eur', price: { id: 'price_a', product: 'prod_a', unit_amount: 900 } }]);
  return { session, evt: event('checkout.session.completed', session) };
}

const send = (evt) => deliver(worker.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

function assertNoCustomerData(text) {
  for (const needle of [CUSTOMER.email, CUSTOMER.name, STREET]) assert.ok(!text.includes(needle), `${needle} in ${text}`);
}

test('admin refusals: 404 without ADMIN_TOKEN, 401 without or with a wrong token, 405, 400', async () => {
  for (const path of ['/admin/events/evt_1', '/admin/purchases/cs_1', '/admin/purchases']) {
    assert.equal((await admin(path, { target: bare })).status, 404, path);
  }
  assert.equal((await admin('/admin/purchases/cs_1/replay', { method: 'POST', target: bare })).status, 404);
  assert.equal((await admin('/admin/purchases', { headers: {} })).status, 401);
  assert.equal((await admin('/admin/purchases', { headers: { authorization: `Bearer ${ADMIN_TOKEN}x` } })).status, 401);
  assert.equal((await admin('/admin/purchases', { headers: { authorization: ADMIN_TOKEN } })).status, 401);
  const wrongMethod = await admin('/admin/purchases/cs_1/replay');
  assert.equal(wrongMethod.status, 405);
  assert.equal(wrongMethod.headers.get('allow'), 'POST');
  assert.equal((await admin('/admin/purchases?limit=0')).status, 400);
  assert.equal((await admin('/admin/purchases?state=bogus')).status, 400);
});

test('lookups carry ids, states, the license key and shipment id, and no customer data', async () => {
  const { session, evt } = purchase();
  assert.equal((await send(evt)).status, 200);
  const [license] = standin.licensesIssued();
  const [shipment] = standin.shipmentsCreated();

  const byEvent = await admin(`/admin/events/${evt.id}`);
  assert.equal(byEvent.status, 200, byEvent.text);
  assert.equal(byEvent.json.event.id, evt.id);
  assert.equal(byEvent.json.event.object_id, session.id);
  assert.equal(byEvent.json.purchase.state, 'fulfilled');
  assert.deepEqual(byEvent.json.steps.map((s) => [s.step, s.state]), [['license', 'done'], ['shipping', 'done']]);
  assert.ok(!byEvent.text.includes(license.license_key), 'the event lookup does not hand out license keys');
  assertNoCustomerData(byEvent.text);

  const byPurchase = await admin(`/admin/purchases/${session.id}`);
  assert.equal(byPurchase.status, 200, byPurchase.text);
  assert.equal(byPurchase.json.license_key, license.license_key);
  assert.equal(byPurchase.json.shipment_id, shipment.shipment_id);
  assert.deepEqual(byPurchase.json.events.map((e) => e.id), [evt.id]);
  assertNoCustomerData(byPurchase.text);

  assert.equal((await admin('/admin/purchases/cs_nope')).status, 404);
  assert.equal((await admin('/admin/events/evt_nope')).status, 404);
});

test('the failed list is newest first and paginates without repeats', async () => {
  const failed = [];
  for (let i = 0; i < 3; i += 1) {
    const { session, evt } = purchase();
    standin.failNext('license', 1, 400);
    assert.equal((await send(evt)).json.status, 'failed');
    failed.push(session.id);
  }
  const seen = [];
  let next = null;
  for (let page = 0; page < 10; page += 1) {
    const res = await admin(`/admin/purchases?state=failed&limit=2${next ? `&before=${next}` : ''}`);
    assert.equal(res.status, 200, res.text);
    assert.ok(res.json.purchases.length <= 2);
    seen.push(...res.json.purchases);
    next = res.json.next;
    if (!next) break;
  }
  const ids = seen.map((p) => p.session_id);
  assert.equal(new Set(ids).size, ids.length, 'no purchase twice');
  for (const id of failed) assert.ok(ids.includes(id), `${id} listed`);
  const times = seen.map((p) => p.updated_at);
  assert.deepEqual(times, [...times].sort((a, b) => b - a), 'newest first');
  assert.ok(seen.every((p) => p.state === 'failed'));
});

test('replay runs a permanently failed step once, with its original request; done stays done', async () => {
  const { session, evt } = purchase();
  standin.failNext('license', 1, 400);
  assert.equal((await send(evt)).json.status, 'failed');

  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.outcome, 'complete');
  assert.equal(replay.json.reset, 1);
  assert.equal(replay.json.purchase.state, 'fulfilled');
  const calls = standin.callsTo('license');
  assert.equal(calls.length, 2);
  assert.equal(calls[1].headers['idempotency-key'], calls[0].headers['idempotency-key']);
  assert.deepEqual(calls[1].body, calls[0].body, 'the original body, so the key is honoured');
  assert.equal(standin.licensesIssued().length, 1);

  const again = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(again.json.reset, 0);
  assert.equal(standin.callsTo('license').length, 2, 'done steps stay done');
  assert.equal(standin.callsTo('shipping').length, 1);
});

/** Fires the cron and resolves with its `scheduled run` line (bounded wait). */
async function runScheduled() {
  const from = worker.logs().length;
  const res = await fetch(worker.url + SCHEDULED);
  assert.equal(res.status, 200);
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const at = worker.logs().indexOf('"msg":"scheduled run"', from);
    if (at >= 0) {
      const line = worker.logs().slice(worker.logs().lastIndexOf('{', at), worker.logs().indexOf('}', at) + 1);
      return JSON.parse(line);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error('no scheduled run line within 20 s');
}

test('the cron run finishes a step whose holder died, and a pending step left for over a minute', async () => {
  const dead = purchase();
  standin.failNext('license', 1, 503);
  assert.equal((await send(dead.evt)).status, 503);
  // A delivery that claimed the step and died: running, lease long gone.
  await worker.d1(`UPDATE steps SET state = 'running', lease_until = 1 WHERE session_id = '${dead.session.id}' AND step = 'license'`);
  const aged = purchase();
  standin.failNext('license', 1, 503);
  assert.equal((await send(aged.evt)).status, 503);
  await worker.d1(`UPDATE steps SET updated_at = updated_at - 120000 WHERE session_id = '${aged.session.id}'`);

  const summary = await runScheduled();
  assert.ok(summary.redriven >= 2 && summary.completed >= 2, JSON.stringify(summary));
  for (const { session } of [dead, aged]) {
    const rows = await worker.d1(`SELECT state FROM purchases WHERE session_id = '${session.id}'`);
    assert.deepEqual(rows, [{ state: 'fulfilled' }]);
  }
  assert.equal(standin.licensesIssued().length, 2, 'one license each');
});

test('retention prunes old events of finished purchases only, and never purchases or steps', async () => {
  const done = purchase();
  assert.equal((await send(done.evt)).status, 200);
  const open = purchase();
  standin.failNext('license', 1, 400);
  assert.equal((await send(open.evt)).json.status, 'failed');
  const old = 40 * 86_400_000;
  await worker.d1(`UPDATE events SET received_at = received_at - ${old} WHERE id IN ('${done.evt.id}', '${open.evt.id}')`);
  await runScheduled();
  const events = await worker.d1(`SELECT id FROM events WHERE id IN ('${done.evt.id}', '${open.evt.id}')`);
  assert.deepEqual(events, [{ id: open.evt.id }], 'the failed purchase keeps its event');
  const purchases = await worker.d1(`SELECT session_id FROM purchases WHERE session_id IN ('${done.session.id}', '${open.session.id}')`);
  assert.equal(purchases.length, 2);
  const mapping = await worker.d1(`SELECT license_key FROM purchase_mappings WHERE session_id = '${done.session.id}'`);
  assert.ok(mapping[0].license_key, 'the license mapping outlives the event');
});

test('license and shipping calls carry Standard Webhooks signatures that verify', async () => {
  const { evt } = purchase();
  assert.equal((await send(evt)).status, 200);
  const key = Buffer.from(FORWARD_SECRET.slice('whsec_'.length), 'base64');
  for (const call of [...standin.callsTo('license'), ...standin.callsTo('shipping')]) {
    const id = call.headers['webhook-id'];
    const timestamp = call.headers['webhook-timestamp'];
    assert.equal(id, call.headers['idempotency-key']);
    assert.ok(Math.abs(Number(timestamp) - Date.now() / 1000) < 60, `timestamp ${timestamp}`);
    const expected = `v1,${createHmac('sha256', key).update(`${id}.${timestamp}.${call.raw}`).digest('base64')}`;
    assert.equal(call.headers['webhook-signature'], expected);
  }
  for (const call of standin.callsTo('stripe')) assert.equal(call.headers['webhook-signature'], undefined);
});

test('every admin call is logged with a token fingerprint, never the token', () => {
  const out = worker.logs();
  const fingerprint = `tok_${createHash('sha256').update(ADMIN_TOKEN).digest('hex').slice(0, 12)}`;
  assert.ok(out.includes(`"who":"${fingerprint}"`), 'calls name their caller by fingerprint');
  for (const needle of [ADMIN_TOKEN, WEBHOOK_SECRET, LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY, FORWARD_SECRET, CUSTOMER.email, STREET]) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
});
