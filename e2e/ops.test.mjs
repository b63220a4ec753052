// The ops surface in inline mode, end to end under `wrangler dev`: the admin API's
// refusals and lookups, pagination, replay exactly once, the cron run's re-drive and
// retention (cron fired over HTTP, time simulated by ageing D1 rows), the signed relay
// checked with node:crypto, and what never reaches the Worker's output.
//
// Three Workers share one stand-in: `worker` (everything set, RETENTION_DAYS 5),
// `bare` (no ADMIN_TOKEN) and `keyless` (ADMIN_TOKEN but no STRIPE_API_KEY).

import assert from 'node:assert/strict';
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { after, afterEach, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, logLines, until, waitForLine } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('ops')}`;
const ADMIN_TOKEN = `adm_${rid('ops')}_${rid('tok')}`;
const KEYLESS_TOKEN = `adm_${rid('keyless')}`;
const STRANGER_TOKEN = `adm_${rid('stranger')}`;
const LICENSE_KEY = `lk_${rid('ops')}`;
const SHIPPING_KEY = `shk_${rid('ops')}`;
const STRIPE_KEY = `sk_test_${rid('ops')}`;
// The Standard Webhooks specification's published test secret, and its vector.
const FORWARD_SECRET = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
const SPEC_VECTOR = {
  id: 'msg_p5jXN8AQM9LWM0D4loKWxJek',
  timestamp: '1614265330',
  body: '{"test": 2432232314}',
  signature: 'v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
};
const RETENTION_DAYS = 5;
const DAY_MS = 86_400_000;
const CUSTOMER = { email: 'oriane.opsbuyer@example.com', name: 'Oriane Opsbuyer', phone: '+33 6 12 34 56 78' };
const ADDRESS = { line1: '12 Rue des Essais', line2: 'Batiment Q', city: 'Rennes', state: 'Bretagne', postal_code: '35000', country: 'FR' };
const CUSTOMER_NEEDLES = [CUSTOMER.email, CUSTOMER.name, CUSTOMER.phone, ADDRESS.line1, ADDRESS.line2];

let standin;
let worker;
let bare;
let keyless;
/** Every license key the stand-in issued in this file (none may reach a log). */
const issuedKeys = [];
/** Every wrong token presented (none may reach a log either). */
const wrongTokens = [];

before(async () => {
  standin = await startStandin();
  const vars = {
    LICENSE_SERVER_URL: `${standin.url}/license`,
    SHIPPING_URL: `${standin.url}/shipping/orders`,
    STRIPE_API_BASE: `${standin.url}/stripe`,
    UPSTREAM_TIMEOUT_MS: '1500',
    RETENTION_DAYS: String(RETENTION_DAYS),
  };
  const secrets = {
    STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    LICENSE_SERVER_API_KEY: LICENSE_KEY,
    SHIPPING_API_KEY: SHIPPING_KEY,
    STRIPE_API_KEY: STRIPE_KEY,
    FORWARD_SIGNING_SECRET: FORWARD_SECRET,
  };
  const { STRIPE_API_KEY: _unused, ...withoutStripeKey } = secrets;
  [worker, bare, keyless] = await Promise.all([
    startWorker({ vars, secrets: { ...secrets, ADMIN_TOKEN } }),
    startWorker({ vars, secrets }),
    startWorker({ vars, secrets: { ...withoutStripeKey, ADMIN_TOKEN: KEYLESS_TOKEN } }),
  ]);
});

after(async () => {
  await Promise.all([worker?.stop(), bare?.stop(), keyless?.stop()]);
  await standin?.stop();
});

beforeEach(() => standin.reset());
afterEach(() => {
  issuedKeys.push(...standin.licensesIssued().map((l) => l.license_key));
});

// ------------------------------------------------------------------ helpers

const lines = logLines;

const bearer = (token) => ({ authorization: `Bearer ${token}` });

/** One ops API call; resolves with { status, headers, text, json }. */
async function admin(path, { method = 'GET', headers = bearer(ADMIN_TOKEN), target = worker } = {}) {
  const res = await fetch(target.url + path, { method, headers, signal: AbortSignal.timeout(20_000) });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

/** A paid purchase the stand-in's Stripe API also knows (replays and re-drives fetch the session). */
function purchase({ license = true, shipping = true, paymentStatus = 'paid' } = {}) {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: license ? { slug: 'pro' } : {},
    customer_details: { ...CUSTOMER, address: ADDRESS },
    collected_information: shipping ? { shipping_details: { name: CUSTOMER.name, address: ADDRESS } } : null,
    payment_intent: null,
    payment_status: paymentStatus,
  });
  standin.setSession(session);
  standin.setLineItems(session.id, [
    { id: rid('li'), object: 'item', description: 'Pro plan, boxed', quantity: 1, amount_total: 2000, currency: 'usd', price: { id: 'price_ops', product: 'prod_ops', unit_amount: 2000 } },
  ]);
  return { session, evt: event('checkout.session.completed', session) };
}

const send = (evt, target = worker) => deliver(target.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

/** Asserts a delivery's reply; a failure names the status and body the Worker answered. */
function assertReply(reply, expected) {
  assert.ok(expected(reply), `reply ${reply.status} ${reply.text}`);
}

const keyOf = (sessionId, step) => `stripe-edge:${sessionId}:${step}`;
/** Calls the stand-in received for one step of one purchase (by Idempotency-Key). */
const stepCalls = (sessionId, step) => standin.callsTo(step).filter((c) => c.headers['idempotency-key'] === keyOf(sessionId, step));

async function purchaseRow(sessionId) {
  return (await worker.d1(`SELECT state, updated_at FROM purchases WHERE session_id = '${sessionId}'`))[0];
}

/** Purchases and their steps for several sessions, in one D1 round trip: { [session]: { state, steps: { [step]: row } } }. */
async function ledger(sessionIds) {
  const list = sessionIds.map((id) => `'${id}'`).join(',');
  const rows = await worker.d1(
    `SELECT p.session_id, p.state AS purchase_state, s.step, s.state, s.attempts, s.last_error, s.lease_until \
     FROM purchases p LEFT JOIN steps s ON s.session_id = p.session_id WHERE p.session_id IN (${list})`,
  );
  const out = {};
  for (const r of rows) {
    out[r.session_id] ??= { state: r.purchase_state, steps: {} };
    if (r.step) out[r.session_id].steps[r.step] = { state: r.state, attempts: r.attempts, last_error: r.last_error, lease_until: r.lease_until };
  }
  return out;
}

async function stepRows(sessionId) {
  return worker.d1(`SELECT step, state, attempts, last_error, result, event_id, lease_until FROM steps WHERE session_id = '${sessionId}' ORDER BY step`);
}

function assertNoCustomerData(text, where) {
  for (const needle of CUSTOMER_NEEDLES) assert.ok(!text.includes(needle), `${where} contains customer data (${needle}): ${text}`);
}

/** Fires the cron and resolves with its `scheduled run` line (bounded wait). */
async function runCron(target = worker) {
  const from = target.logs().length;
  const res = await target.scheduled();
  assert.equal(res.status, 200, `scheduled trigger answered ${res.status}: ${res.text}`);
  return until(
    () => lines(target, from).find((l) => l.msg === 'scheduled run'),
    'the `scheduled run` line',
  );
}

/** The Standard Webhooks check a receiving service would make, with node:crypto. */
function verifyStandardWebhook(secret, id, timestamp, body, header) {
  const key = Buffer.from(secret.slice('whsec_'.length), 'base64');
  const expected = createHmac('sha256', key).update(`${id}.${timestamp}.${body}`).digest();
  return String(header).split(' ').some((part) => {
    const [version, sig] = part.split(',');
    if (version !== 'v1' || !sig) return false;
    const got = Buffer.from(sig, 'base64');
    return got.length === expected.length && timingSafeEqual(got, expected);
  });
}

// The Worker's fingerprint: HMAC-SHA256 keyed by its (first) webhook signing secret, so
// the logs alone cannot confirm a guess of the token.
const fingerprint = (token) =>
  `tok_${createHmac('sha256', WEBHOOK_SECRET).update('stripe-edge admin token:').update(token).digest('hex').slice(0, 12)}`;

// ------------------------------------------------------------------ 1. refusals

test('without ADMIN_TOKEN every /admin/ route is 404, whatever the method or token', async () => {
  const from = bare.logs().length;
  const calls = [
    ['GET', '/admin/events/evt_1'],
    ['GET', '/admin/purchases/cs_1'],
    ['GET', '/admin/purchases'],
    ['GET', '/admin/purchases?state=failed&limit=2'],
    ['POST', '/admin/purchases/cs_1/replay'],
    ['GET', '/admin/purchases/cs_1/replay'],
    ['DELETE', '/admin/events/evt_1'],
    ['GET', '/admin/nope'],
  ];
  for (const [method, path] of calls) {
    for (const headers of [{}, bearer(ADMIN_TOKEN), bearer(STRANGER_TOKEN)]) {
      const res = await admin(path, { method, headers, target: bare });
      assert.equal(res.status, 404, `${method} ${path} with ${JSON.stringify(Object.keys(headers))}: ${res.text}`);
      assert.equal(res.headers.get('allow'), null);
    }
  }
  wrongTokens.push(STRANGER_TOKEN);
  const refused = await linesUntil(bare, from, (l) => l.msg === 'admin refused', calls.length * 3, 'admin refused');
  assert.equal(refused.length, calls.length * 3, 'every refusal is logged');
  assert.ok(refused.every((l) => l.reason === 'admin_not_found' && l.status === 404 && l.who === undefined));
  assert.ok(!lines(bare, from).some((l) => l.msg === 'admin call'));
});

test('with ADMIN_TOKEN: 401 for a missing or wrong token, before any route or method check', async () => {
  const from = worker.logs().length;
  const wrong = [
    {},
    { authorization: ADMIN_TOKEN },
    { authorization: `Bearer ${ADMIN_TOKEN}x` },
    { authorization: `Bearer ${ADMIN_TOKEN.slice(0, -1)}` },
    { authorization: `Basic ${Buffer.from(`admin:${ADMIN_TOKEN}`).toString('base64')}` },
    { authorization: 'Bearer ' },
    bearer(KEYLESS_TOKEN), // another deployment's token
  ];
  wrongTokens.push(`${ADMIN_TOKEN}x`);
  const routes = [
    ['GET', '/admin/events/evt_1'],
    ['GET', '/admin/purchases/cs_1'],
    ['GET', '/admin/purchases?limit=0'], // a bad limit is still 401 first
    ['GET', '/admin/purchases/cs_1/replay'], // a wrong method is still 401 first
    ['POST', '/admin/purchases/cs_1/replay'],
  ];
  for (const [method, path] of routes) {
    for (const headers of wrong) {
      const res = await admin(path, { method, headers });
      assert.equal(res.status, 401, `${method} ${path} with ${JSON.stringify(headers)}: ${res.text}`);
      assert.equal(res.json?.error, 'missing or invalid bearer token');
    }
  }
  const refused = await linesUntil(worker, from, (l) => l.msg === 'admin refused', routes.length * wrong.length, 'admin refused');
  assert.equal(refused.length, routes.length * wrong.length);
  assert.ok(refused.every((l) => l.reason === 'admin_unauthorized' && l.status === 401));
  assert.ok(refused.every((l) => l.who === undefined), 'an unauthorised caller gets no fingerprint');
});

test('with the right token: 405 with Allow for a wrong method, 400 for bad ids, limits, states and cursors', async () => {
  const from = worker.logs().length;
  const methods = [
    ['GET', '/admin/purchases/cs_1/replay', 'POST'],
    ['PUT', '/admin/purchases/cs_1/replay', 'POST'],
    ['POST', '/admin/events/evt_1', 'GET'],
    ['DELETE', '/admin/events/evt_1', 'GET'],
    ['POST', '/admin/purchases/cs_1', 'GET'],
    ['POST', '/admin/purchases', 'GET'],
    ['PATCH', '/admin/purchases?state=failed', 'GET'],
  ];
  for (const [method, path, allow] of methods) {
    const res = await admin(path, { method });
    assert.equal(res.status, 405, `${method} ${path}: ${res.text}`);
    assert.equal(res.headers.get('allow'), allow, `${method} ${path}`);
  }
  const bad = [
    '/admin/purchases?limit=0',
    '/admin/purchases?limit=101',
    '/admin/purchases?limit=-1',
    '/admin/purchases?limit=abc',
    '/admin/purchases?limit=1.5',
    '/admin/purchases?limit=',
    '/admin/purchases?state=bogus',
    '/admin/purchases?state=FAILED',
    '/admin/purchases?before=garbage',
    '/admin/purchases?before=1700000000000',
    '/admin/purchases?before=abc:cs_1',
    '/admin/purchases?before=1700000000000:cs-1',
    '/admin/events/evt-1',
    '/admin/events/evt%2F..%2Fx',
    '/admin/purchases/cs%27%20OR%201=1',
  ];
  for (const path of bad) {
    const res = await admin(path);
    assert.equal(res.status, 400, `${path}: ${res.text}`);
    assert.equal(typeof res.json?.error, 'string', path);
  }
  for (const path of ['/admin/nope', '/admin/purchases/cs_1/nope', '/admin/events']) {
    assert.equal((await admin(path)).status, 404, path);
  }
  for (const path of ['/admin/purchases?limit=1', '/admin/purchases?limit=100', '/admin/purchases?state=fulfilled&limit=100']) {
    const res = await admin(path);
    assert.equal(res.status, 200, `${path}: ${res.text}`);
    assert.ok(Array.isArray(res.json.purchases), path);
  }
  const refused = await linesUntil(worker, from, (l) => l.msg === 'admin refused', methods.length + bad.length + 3, 'admin refused');
  assert.deepEqual(
    refused.map((l) => l.reason),
    [...methods.map(() => 'admin_method_not_allowed'), ...bad.map(() => 'admin_bad_request'), 'admin_not_found', 'admin_not_found', 'admin_not_found'],
  );
  assert.ok(refused.every((l) => l.who === fingerprint(ADMIN_TOKEN)), 'an authorised caller is named by fingerprint');
});

// ------------------------------------------------------------------ 2. lookups and listing

test('lookups: ids, states, license key and shipment id (purchase only), and no customer data', async () => {
  const { session, evt } = purchase();
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.purchase_state, 'fulfilled');
  const [license] = standin.licensesIssued();
  const [shipment] = standin.shipmentsCreated();
  assert.ok(license && shipment, 'the delivery issued a license and a shipment');

  const from = worker.logs().length;
  const byEvent = await admin(`/admin/events/${evt.id}`);
  assert.equal(byEvent.status, 200, byEvent.text);
  assert.deepEqual(Object.keys(byEvent.json).sort(), ['event', 'purchase', 'steps']);
  assert.equal(byEvent.json.event.id, evt.id);
  assert.equal(byEvent.json.event.type, 'checkout.session.completed');
  assert.equal(byEvent.json.event.object_id, session.id);
  assert.equal(byEvent.json.event.disposition, 'fulfil');
  assert.equal(byEvent.json.purchase.session_id, session.id);
  assert.equal(byEvent.json.purchase.state, 'fulfilled');
  assert.deepEqual(
    byEvent.json.steps.map((s) => [s.step, s.state, s.attempts, s.event_id]),
    [['license', 'done', 1, evt.id], ['shipping', 'done', 1, evt.id]],
  );
  for (const step of byEvent.json.steps) assert.ok(!('result' in step), `the event lookup shows no step result: ${JSON.stringify(step)}`);
  assert.ok(!byEvent.text.includes(license.license_key), 'no license key in the event lookup');
  assert.ok(!byEvent.text.includes(shipment.shipment_id), 'no shipment id in the event lookup');
  assertNoCustomerData(byEvent.text, 'GET /admin/events');

  const byPurchase = await admin(`/admin/purchases/${session.id}`);
  assert.equal(byPurchase.status, 200, byPurchase.text);
  assert.deepEqual(Object.keys(byPurchase.json).sort(), ['events', 'license_key', 'purchase', 'reversals', 'shipment_id', 'steps']);
  assert.deepEqual(byPurchase.json.reversals, [], 'no refund, dispute or ended subscription recorded');
  assert.equal(byPurchase.json.purchase.session_id, session.id);
  assert.equal(byPurchase.json.purchase.state, 'fulfilled');
  assert.equal(byPurchase.json.license_key, license.license_key);
  assert.equal(byPurchase.json.shipment_id, shipment.shipment_id);
  assert.deepEqual(
    byPurchase.json.steps.map((s) => [s.step, s.state, s.result]),
    [['license', 'done', license.license_key], ['shipping', 'done', shipment.shipment_id]],
  );
  assert.deepEqual(byPurchase.json.events.map((e) => [e.id, e.type, e.disposition]), [[evt.id, 'checkout.session.completed', 'fulfil']]);
  assertNoCustomerData(byPurchase.text, 'GET /admin/purchases/{id}');
  // The ledger agrees with the API.
  const [mapping] = await worker.d1(`SELECT license_key, shipment_id FROM purchase_mappings WHERE session_id = '${session.id}'`);
  assert.deepEqual(mapping, { license_key: license.license_key, shipment_id: shipment.shipment_id });

  // An event without a purchase (a type the Worker ignores) has none to show.
  const ignored = event('customer.created', { id: rid('cus'), object: 'customer', email: CUSTOMER.email });
  assert.equal((await send(ignored)).json?.status, 'ignored');
  const byIgnored = await admin(`/admin/events/${ignored.id}`);
  assert.equal(byIgnored.status, 200, byIgnored.text);
  assert.deepEqual([byIgnored.json.event.disposition, byIgnored.json.purchase, byIgnored.json.steps], ['ignored', null, []]);
  assertNoCustomerData(byIgnored.text, 'GET /admin/events (ignored)');

  const unknownPurchase = await admin(`/admin/purchases/${rid('cs')}`);
  assert.equal(unknownPurchase.status, 404, unknownPurchase.text);
  const unknownEvent = await admin(`/admin/events/${rid('evt')}`);
  assert.equal(unknownEvent.status, 404, unknownEvent.text);

  // The lookups' lines: the previous test's list calls (`admin call` too) may still be arriving.
  const lookupLine = (l) => l.msg === 'admin call' && (l.route === 'get_event' || l.route === 'get_purchase');
  const calls = await linesUntil(worker, from, lookupLine, 5, 'the lookups\' admin call lines');
  assert.deepEqual(calls.map((l) => [l.route, l.status]), [['get_event', 200], ['get_purchase', 200], ['get_event', 200], ['get_purchase', 404], ['get_event', 404]]);
  assert.ok(calls.every((l) => l.who === fingerprint(ADMIN_TOKEN)));
  assert.equal(calls[1].session_id, session.id);
});

test('the `admin call` line of an event lookup does not log the event id as session_id', async () => {
  const { session, evt } = purchase({ shipping: false });
  assert.equal((await send(evt)).status, 200);
  const from = worker.logs().length;
  assert.equal((await admin(`/admin/events/${evt.id}`)).status, 200);
  const [line] = await linesUntil(worker, from, (l) => l.msg === 'admin call' && l.route === 'get_event', 1, 'admin call');
  assert.ok(line, 'an admin call line');
  // `session_id` names a Checkout Session in every other line (and `wrangler tail
  // --search cs_…` relies on it); here it may be absent or the event's session, never the event.
  assert.ok(
    line.session_id === undefined || line.session_id === session.id,
    `session_id is ${line.session_id} (the event id is ${evt.id}, its session ${session.id}): ${JSON.stringify(line)}`,
  );
});

test('the list: failed purchases newest first, paginated with `next` and no repeats; stuck and state filters', async () => {
  const failed = [];
  for (let i = 0; i < 3; i += 1) {
    const { session, evt } = purchase({ shipping: false });
    standin.failNext('license', 1, 400);
    const res = await send(evt);
    assert.equal(res.json?.status, 'failed', res.text);
    failed.push(session.id);
  }
  const done = purchase({ shipping: false });
  assert.equal((await send(done.evt)).json?.purchase_state, 'fulfilled');
  // A purchase fulfilling without any change for 16 minutes is stuck.
  const stuck = purchase({ shipping: false });
  standin.failNext('license', 1, 503);
  assert.equal((await send(stuck.evt)).status, 503);
  await worker.d1(`UPDATE purchases SET updated_at = updated_at - ${16 * 60_000} WHERE session_id = '${stuck.session.id}'`);

  /** Follows `next` from the first page; resolves with every page. */
  async function allPages(query) {
    const pages = [];
    let next = null;
    for (let i = 0; i < 50; i += 1) {
      const res = await admin(`/admin/purchases?${query}${next ? `&before=${next}` : ''}`);
      assert.equal(res.status, 200, res.text);
      assertNoCustomerData(res.text, 'GET /admin/purchases');
      pages.push(res.json);
      next = res.json.next;
      if (next === null) return pages;
      assert.equal(typeof next, 'string');
    }
    throw new Error(`more than 50 pages for ${query}`);
  }

  const pages = await allPages('state=failed&limit=2');
  const listed = pages.flatMap((p) => p.purchases);
  for (const page of pages.slice(0, -1)) assert.equal(page.purchases.length, 2, 'every page but the last is full');
  assert.ok(pages.at(-1).purchases.length >= 1 && pages.at(-1).purchases.length <= 2);
  const ids = listed.map((p) => p.session_id);
  assert.equal(new Set(ids).size, ids.length, `no purchase twice: ${ids}`);
  assert.ok(listed.every((p) => p.state === 'failed'));
  // Exactly what the ledger holds, in its order: newest first (ties by session id).
  const expected = await worker.d1("SELECT session_id FROM purchases WHERE state = 'failed' ORDER BY updated_at DESC, session_id DESC");
  assert.deepEqual(ids, expected.map((r) => r.session_id));
  for (let i = 1; i < listed.length; i += 1) assert.ok(listed[i - 1].updated_at >= listed[i].updated_at, 'newest first');
  // Ours, created one after the other, come newest first.
  assert.deepEqual(ids.filter((id) => failed.includes(id)), [...failed].reverse());

  const defaults = (await allPages('limit=100')).flatMap((p) => p.purchases).map((p) => p.session_id);
  for (const id of [...failed, stuck.session.id]) assert.ok(defaults.includes(id), `the default list has ${id}`);
  assert.ok(!defaults.includes(done.session.id), 'a fulfilled purchase is neither failed nor stuck');

  const stuckList = (await allPages('state=stuck&limit=100')).flatMap((p) => p.purchases);
  assert.ok(stuckList.some((p) => p.session_id === stuck.session.id && p.state === 'fulfilling'));
  assert.ok(stuckList.every((p) => p.state === 'fulfilling'));

  const fulfilled = (await allPages('state=fulfilled&limit=100')).flatMap((p) => p.purchases);
  assert.ok(fulfilled.some((p) => p.session_id === done.session.id));
  assert.ok(fulfilled.every((p) => p.state === 'fulfilled'));
});

test('the list accepts a `before` cursor that the client percent-encoded (as URLSearchParams does)', async () => {
  for (let i = 0; i < 3; i += 1) {
    const { evt } = purchase({ shipping: false });
    standin.failNext('license', 1, 400);
    assert.equal((await send(evt)).json?.status, 'failed');
  }
  const first = await admin('/admin/purchases?state=failed&limit=1');
  assert.equal(first.status, 200, first.text);
  assert.equal(typeof first.json.next, 'string');
  const literal = await admin(`/admin/purchases?state=failed&limit=1&before=${first.json.next}`);
  assert.equal(literal.status, 200, literal.text);
  // What any HTTP client builds from the documented parameters.
  const query = new URLSearchParams({ state: 'failed', limit: '1', before: first.json.next });
  const encoded = await admin(`/admin/purchases?${query}`);
  assert.equal(encoded.status, 200, `GET /admin/purchases?${query} answered ${encoded.status}: ${encoded.text}`);
  assert.deepEqual(encoded.json, literal.json);
});

// ------------------------------------------------------------------ 3. replay

test('replay runs a permanently failed step once, with the same body and Idempotency-Key; a second replay calls nothing', async () => {
  const { session, evt } = purchase();
  standin.failNext('license', 1, 400);
  const res = await send(evt);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.status, 'failed');
  assert.deepEqual((await stepRows(session.id)).map((s) => [s.step, s.state]), [['license', 'failed'], ['shipping', 'done']]);
  assert.equal(stepCalls(session.id, 'license').length, 1);
  assert.equal(stepCalls(session.id, 'shipping').length, 1);
  const [failedCall] = stepCalls(session.id, 'license');

  const from = worker.logs().length;
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.session_id, session.id);
  assert.equal(replay.json.reset, 1);
  assert.equal(replay.json.outcome, 'complete');
  assert.equal(replay.json.purchase.state, 'fulfilled');
  assert.deepEqual(replay.json.steps.map((s) => [s.step, s.state]), [['license', 'done'], ['shipping', 'done']]);
  assertNoCustomerData(replay.text, 'POST replay');

  const licenseCalls = stepCalls(session.id, 'license');
  assert.equal(licenseCalls.length, 2, 'exactly one new license call');
  assert.equal(licenseCalls[1].headers['idempotency-key'], failedCall.headers['idempotency-key']);
  assert.deepEqual(licenseCalls[1].body, failedCall.body, 'the body of the original attempt');
  assert.equal(licenseCalls[1].body.metadata.provider_event_id, evt.id);
  assert.equal(stepCalls(session.id, 'shipping').length, 1, 'the done shipping step is not repeated');
  assert.equal(standin.licensesIssued().length, 1);
  const sessionFetches = standin.callsTo('stripe').filter((c) => c.path === `/stripe/v1/checkout/sessions/${session.id}`);
  assert.equal(sessionFetches.length, 1, 'the replay fetched the session');
  assert.equal(sessionFetches[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.deepEqual((await purchaseRow(session.id)).state, 'fulfilled');
  const license = (await stepRows(session.id)).find((s) => s.step === 'license');
  assert.deepEqual([license.state, license.attempts, license.result], ['done', 2, standin.licensesIssued()[0].license_key]);
  const call = await waitForLine(worker, (l) => l.msg === 'admin call' && l.route === 'replay' && l.session_id === session.id, { from });
  assert.deepEqual([call.status, call.who], [200, fingerprint(ADMIN_TOKEN)]);

  const again = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(again.status, 200, again.text);
  assert.equal(again.json.reset, 0);
  assert.equal(again.json.outcome, 'complete');
  assert.equal(again.json.purchase.state, 'fulfilled');
  assert.equal(stepCalls(session.id, 'license').length, 2, 'done steps stay done');
  assert.equal(stepCalls(session.id, 'shipping').length, 1);
  assert.equal(standin.licensesIssued().length, 1);
});

test('a replay whose session changed since the first attempt sends nothing and alerts naming step and field; once it reads as before, the first body goes', async () => {
  const { session, evt } = purchase();
  standin.failNext('license', 1, 400);
  assert.equal((await send(evt)).json.status, 'failed');
  const [first] = stepCalls(session.id, 'license');
  const [{ body_digest: digest }] = await worker.d1(`SELECT body_digest FROM steps WHERE session_id = '${session.id}' AND step = 'license'`);
  assert.ok(digest, 'the first body is digested before the call');
  for (const value of [session.customer, CUSTOMER.email, CUSTOMER.name]) {
    assert.ok(!digest.includes(value), `the digest holds no ${value}`);
  }

  // Stripe now returns the session without its customer (issue 15, item 5).
  standin.setSession({ ...session, customer: null });
  const from = worker.logs().length;
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.outcome, 'failed');
  assert.equal(stepCalls(session.id, 'license').length, 1, 'the changed body is not sent');
  const license = (await stepRows(session.id)).find((s) => s.step === 'license');
  assert.deepEqual([license.state, license.last_error], ['failed', 'body changed since the first attempt: metadata.provider_customer_id']);
  const alert = await waitForLine(worker, (l) => l.msg === 'step body changed since the first attempt' && l.session_id === session.id, { from });
  assert.deepEqual([alert.level, alert.step, alert.field, alert.session_id], ['alert', 'license', 'metadata.provider_customer_id', session.id]);

  standin.setSession(session);
  const again = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(again.json.outcome, 'complete', again.text);
  const calls = stepCalls(session.id, 'license');
  assert.equal(calls.length, 2);
  assert.deepEqual(calls[1].body, first.body, 'the body of the first attempt');
  assert.ok(standin.callsTo('stripe').every((c) => c.headers['stripe-version'] === '2025-03-31.basil'), 'every Stripe call pins its version');
});

test('replay of a failed shipping step leaves the done license alone', async () => {
  const { session, evt } = purchase();
  standin.failNext('shipping', 1, 422);
  assert.equal((await send(evt)).json?.status, 'failed');
  const [failedShipping] = stepCalls(session.id, 'shipping');
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(replay.status, 200, replay.text);
  assert.deepEqual([replay.json.reset, replay.json.outcome, replay.json.purchase.state], [1, 'complete', 'fulfilled']);
  assert.equal(stepCalls(session.id, 'license').length, 1);
  const shipping = stepCalls(session.id, 'shipping');
  assert.equal(shipping.length, 2);
  assert.equal(shipping[1].headers['idempotency-key'], failedShipping.headers['idempotency-key']);
  assert.deepEqual(shipping[1].body, failedShipping.body);
  assert.equal(standin.shipmentsCreated().length, 1);
});

test('replay answers 404 for an unknown purchase, 502 when Stripe cannot give the session, 503 without STRIPE_API_KEY', async () => {
  const unknown = await admin(`/admin/purchases/${rid('cs')}/replay`, { method: 'POST' });
  assert.equal(unknown.status, 404, unknown.text);

  // 502: the purchase failed, and the Stripe API no longer knows its session.
  const { session, evt } = purchase({ shipping: false });
  standin.failNext('license', 1, 400);
  assert.equal((await send(evt)).json?.status, 'failed');
  standin.reset();
  const gone = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(gone.status, 502, gone.text);
  assert.equal(standin.callsTo('license').length, 0, 'nothing runs without the session');
  assertNoCustomerData(gone.text, 'POST replay (502)');

  // 503: this deployment has no STRIPE_API_KEY to fetch the session with.
  const other = purchase({ shipping: false });
  standin.failNext('license', 1, 400);
  assert.equal((await send(other.evt, keyless)).json?.status, 'failed');
  const from = keyless.logs().length;
  const noKey = await admin(`/admin/purchases/${other.session.id}/replay`, { method: 'POST', target: keyless, headers: bearer(KEYLESS_TOKEN) });
  assert.equal(noKey.status, 503, noKey.text);
  assert.match(noKey.json.error, /STRIPE_API_KEY/);
  assert.equal(standin.callsTo('license').length, 1, 'only the original, failed call');
  const still = await keyless.d1(`SELECT state FROM steps WHERE session_id = '${other.session.id}' AND step = 'license'`);
  assert.deepEqual(still, [{ state: 'failed' }], 'nothing is reset when nothing could run it');
  const [call] = await linesUntil(keyless, from, (l) => l.msg === 'admin call', 1, 'admin call');
  assert.deepEqual([call.route, call.status, call.who], ['replay', 503, fingerprint(KEYLESS_TOKEN)]);
});

test('replay of a purchase that exists but has no steps (awaiting payment) does not answer "no such purchase"', async () => {
  const { session, evt } = purchase({ paymentStatus: 'unpaid' });
  assert.equal((await send(evt)).status, 200);
  const lookup = await admin(`/admin/purchases/${session.id}`);
  assert.equal(lookup.status, 200, lookup.text);
  assert.equal(lookup.json.purchase.state, 'awaiting_payment');
  const replay = await admin(`/admin/purchases/${session.id}/replay`, { method: 'POST' });
  assert.equal(standin.callsTo('license').length + standin.callsTo('shipping').length, 0, 'nothing to run');
  // The README: 404 is for an unknown purchase; this one is known (the lookup just showed it).
  assert.notEqual(replay.status, 404, `replay answered ${replay.status} ${replay.text} for a purchase GET /admin/purchases/{id} shows`);
});

// ------------------------------------------------------------------ 4. the cron run

test('cron: finishes a step whose holder died and a pending step idle > 60 s; leaves a live lease and a fresh step alone', async () => {
  const make = async () => {
    const p = purchase({ shipping: false });
    standin.failNext('license', 1, 503);
    const res = await send(p.evt);
    assert.equal(res.status, 503, res.text);
    return p;
  };
  const dead = await make();
  const aged = await make();
  const fresh = await make();
  const live = await make();
  const now = Date.now();
  const ours = [dead, aged, fresh, live].map((p) => `'${p.session.id}'`).join(',');
  const stalled = (await worker.d1([
    // A delivery claimed the step and died: running, its lease long gone.
    `UPDATE steps SET state = 'running', lease_until = ${now - 5_000} WHERE session_id = '${dead.session.id}'`,
    // Released after a retryable failure two minutes ago.
    `UPDATE steps SET updated_at = updated_at - 120000 WHERE session_id = '${aged.session.id}'`,
    // A holder that is still within its lease, although it started long ago.
    `UPDATE steps SET state = 'running', lease_until = ${now + 120_000}, updated_at = updated_at - 600000 WHERE session_id = '${live.session.id}'`,
    // Purchases left waiting by earlier tests are pushed far past the idle threshold, so
    // the set the run must re-drive has nothing near a boundary.
    `UPDATE steps SET updated_at = updated_at - 3600000 WHERE state = 'pending' AND session_id NOT IN (${ours})`,
    `SELECT DISTINCT session_id FROM steps WHERE (state = 'pending' AND updated_at < ${now - 60_000}) OR (state = 'running' AND lease_until <= ${now})`,
  ].join('; '))).map((r) => r.session_id);
  const originals = Object.fromEntries([dead, aged, fresh, live].map((p) => [p.session.id, stepCalls(p.session.id, 'license')[0]]));
  assert.ok(stalled.includes(dead.session.id) && stalled.includes(aged.session.id));
  assert.ok(!stalled.includes(fresh.session.id) && !stalled.includes(live.session.id));

  const summary = await runCron();
  assert.equal(summary.level, 'info');
  for (const key of ['redriven', 'completed', 'still_waiting', 'enqueued', 'pruned']) assert.equal(typeof summary[key], 'number', `${key} in ${JSON.stringify(summary)}`);
  assert.equal(summary.redriven, Math.min(stalled.length, 10), JSON.stringify(summary));
  assert.equal(summary.completed + summary.still_waiting, summary.redriven);
  assert.ok(summary.completed >= 2, JSON.stringify(summary));
  assert.equal(summary.enqueued, 0, 'inline mode queues nothing');

  const rows = await ledger([dead, aged, fresh, live].map((p) => p.session.id));
  for (const p of [dead, aged]) {
    assert.equal(rows[p.session.id].state, 'fulfilled', p.session.id);
    const calls = stepCalls(p.session.id, 'license');
    assert.equal(calls.length, 2, 'the failed attempt, then exactly one by the cron run');
    assert.equal(calls[1].headers['idempotency-key'], originals[p.session.id].headers['idempotency-key']);
    assert.deepEqual(calls[1].body, originals[p.session.id].body);
    const step = rows[p.session.id].steps.license;
    assert.deepEqual([step.state, step.attempts, step.lease_until], ['done', 2, null]);
  }
  for (const p of [fresh, live]) {
    assert.equal(stepCalls(p.session.id, 'license').length, 1, `${p.session.id} was not re-driven`);
    assert.equal(rows[p.session.id].state, 'fulfilling');
  }
  assert.equal(rows[fresh.session.id].steps.license.state, 'pending');
  assert.equal(rows[live.session.id].steps.license.state, 'running');
  assert.equal(standin.licensesIssued().filter((l) => [dead, aged].some((p) => l.idempotency_key === keyOf(p.session.id, 'license'))).length, 2);
});

test('cron: a re-drive whose upstream still fails leaves the step pending and counts it as still waiting', async () => {
  const p = purchase({ shipping: false });
  standin.failNext('license', 1, 503);
  assert.equal((await send(p.evt)).status, 503);
  await worker.d1(`UPDATE steps SET updated_at = updated_at - 120000 WHERE session_id = '${p.session.id}'`);
  standin.failNext('license', 1, 503);
  const summary = await runCron();
  assert.ok(summary.redriven >= 1 && summary.still_waiting >= 1, JSON.stringify(summary));
  const [step] = await stepRows(p.session.id);
  assert.deepEqual([step.state, step.attempts, step.last_error], ['pending', 2, 'license server answered 503']);
  assert.equal(stepCalls(p.session.id, 'license').length, 2);
  assert.equal(standin.licensesIssued().length, 0);
});

test(`cron: retention (RETENTION_DAYS ${RETENTION_DAYS}) prunes old events of finished purchases only, never purchases or steps`, async () => {
  const old = (RETENTION_DAYS + 1) * DAY_MS;
  const recent = (RETENTION_DAYS - 1) * DAY_MS;
  // Finished: fulfilled.
  const doneOld = purchase({ shipping: false });
  assertReply(await send(doneOld.evt), (r) => r.json?.purchase_state === 'fulfilled');
  const doneRecent = purchase({ shipping: false });
  assertReply(await send(doneRecent.evt), (r) => r.json?.purchase_state === 'fulfilled');
  // Unfinished: failed, fulfilling, awaiting payment.
  const failed = purchase({ shipping: false });
  standin.failNext('license', 1, 400);
  assertReply(await send(failed.evt), (r) => r.json?.status === 'failed');
  const fulfilling = purchase({ shipping: false });
  standin.failNext('license', 1, 503);
  assertReply(await send(fulfilling.evt), (r) => r.status === 503);
  const awaiting = purchase({ shipping: false, paymentStatus: 'unpaid' });
  assertReply(await send(awaiting.evt), (r) => r.status === 200);
  // Finished without fulfilment: payment failed (two events).
  const lost = purchase({ shipping: false, paymentStatus: 'unpaid' });
  assertReply(await send(lost.evt), (r) => r.status === 200);
  const lostFailed = event('checkout.session.async_payment_failed', lost.session);
  assertReply(await send(lostFailed), (r) => r.status === 200);
  // No purchase at all.
  const ignored = event('customer.created', { id: rid('cus'), object: 'customer' });
  assertReply(await send(ignored), (r) => r.json?.status === 'ignored');

  const all = [doneOld, doneRecent, failed, fulfilling, awaiting, lost];
  const states = await ledger(all.map((p) => p.session.id));
  assert.deepEqual(
    all.map((p) => states[p.session.id].state),
    ['fulfilled', 'fulfilled', 'failed', 'fulfilling', 'awaiting_payment', 'payment_failed'],
  );

  const agedOld = [doneOld.evt, failed.evt, fulfilling.evt, awaiting.evt, lost.evt, lostFailed, ignored].map((e) => `'${e.id}'`).join(',');
  const counts = 'SELECT (SELECT COUNT(*) FROM purchases) AS purchases, (SELECT COUNT(*) FROM steps) AS steps';
  const [before, aged] = await worker.d1([
    `UPDATE events SET received_at = received_at - ${old} WHERE id IN (${agedOld})`,
    `UPDATE events SET received_at = received_at - ${recent} WHERE id = '${doneRecent.evt.id}'`,
    counts,
    `SELECT COUNT(*) AS n FROM events WHERE received_at < ${Date.now() - RETENTION_DAYS * DAY_MS}`,
  ].join('; '));
  assert.equal(aged.n, 7, 'only this test ages events');

  const summary = await runCron();
  assert.equal(summary.pruned, 4, `pruned the fulfilled, payment-failed (2) and ignored events: ${JSON.stringify(summary)}`);
  const [afterCounts, ...kept] = await worker.d1(`${counts}; SELECT id FROM events WHERE id IN (${agedOld}, '${doneRecent.evt.id}')`);
  assert.deepEqual(kept.map((r) => r.id).sort(), [failed.evt.id, fulfilling.evt.id, awaiting.evt.id, doneRecent.evt.id].sort());
  assert.equal(afterCounts.purchases, before.purchases, 'no purchase deleted');
  assert.equal(afterCounts.steps, before.steps, 'no step deleted');
  // The support lookup still answers for the pruned purchase: mapping kept, event gone.
  const lookup = await admin(`/admin/purchases/${doneOld.session.id}`);
  assert.equal(lookup.status, 200, lookup.text);
  assert.equal(lookup.json.purchase.state, 'fulfilled');
  assert.equal(lookup.json.license_key, standin.licensesIssued().find((l) => l.idempotency_key === keyOf(doneOld.session.id, 'license')).license_key);
  assert.deepEqual(lookup.json.events, []);
  assert.equal((await admin(`/admin/events/${doneOld.evt.id}`)).status, 404);
  // The next run finds nothing more to prune.
  assert.equal((await runCron()).pruned, 0);
});

// ------------------------------------------------------------------ 5. signed relay

test('the verifier used here reproduces the Standard Webhooks test vector', () => {
  assert.ok(verifyStandardWebhook(FORWARD_SECRET, SPEC_VECTOR.id, SPEC_VECTOR.timestamp, SPEC_VECTOR.body, SPEC_VECTOR.signature));
  assert.ok(!verifyStandardWebhook(FORWARD_SECRET, SPEC_VECTOR.id, SPEC_VECTOR.timestamp, `${SPEC_VECTOR.body} `, SPEC_VECTOR.signature));
});

test('license and shipping calls carry Standard Webhooks headers that verify over the raw body; Stripe API calls do not', async () => {
  const { session, evt } = purchase();
  standin.failNext('license', 1, 503);
  assert.equal((await send(evt)).status, 503);
  const redelivered = await send(evt);
  assert.equal(redelivered.status, 200, redelivered.text);
  const relayed = [...stepCalls(session.id, 'license'), ...stepCalls(session.id, 'shipping')];
  assert.equal(relayed.length, 3, 'license twice (503, then done), shipping once');
  for (const call of relayed) {
    const id = call.headers['webhook-id'];
    const timestamp = call.headers['webhook-timestamp'];
    const signature = call.headers['webhook-signature'];
    assert.equal(id, call.headers['idempotency-key'], 'webhook-id is the Idempotency-Key');
    assert.match(timestamp, /^\d+$/);
    assert.ok(Math.abs(Number(timestamp) - call.at / 1000) < 30, `timestamp ${timestamp} is current`);
    assert.match(signature, /^v1,[A-Za-z0-9+/]{43}=$/);
    assert.ok(verifyStandardWebhook(FORWARD_SECRET, id, timestamp, call.raw, signature), `${call.path}: the signature verifies`);
    assert.ok(!verifyStandardWebhook(FORWARD_SECRET, id, timestamp, `${call.raw} `, signature), 'and binds the body');
    assert.ok(!verifyStandardWebhook(FORWARD_SECRET, id, String(Number(timestamp) + 1), call.raw, signature), 'and the timestamp');
  }
  const [first, second] = stepCalls(session.id, 'license');
  assert.equal(first.headers['webhook-id'], second.headers['webhook-id'], 'the same message id on a retry');
  const stripeCalls = standin.callsTo('stripe');
  assert.ok(stripeCalls.length >= 1, 'the shipping step read line items from the Stripe API');
  for (const call of stripeCalls) {
    for (const header of ['webhook-id', 'webhook-timestamp', 'webhook-signature']) {
      assert.equal(call.headers[header], undefined, `${call.path} carries ${header}`);
    }
  }
  // A deployment without FORWARD_SIGNING_SECRET would send none; this one always does,
  // including on a replay (fresh timestamp, same id).
  standin.failNext('license', 1, 400);
  const other = purchase({ shipping: false });
  assert.equal((await send(other.evt)).json?.status, 'failed');
  assert.equal((await admin(`/admin/purchases/${other.session.id}/replay`, { method: 'POST' })).json?.outcome, 'complete');
  for (const call of stepCalls(other.session.id, 'license')) {
    assert.ok(verifyStandardWebhook(FORWARD_SECRET, call.headers['webhook-id'], call.headers['webhook-timestamp'], call.raw, call.headers['webhook-signature']));
  }
});

// ------------------------------------------------------------------ 6. what the output never shows

test('no token, secret, license key or customer data in any Worker output; callers appear by fingerprint', async () => {
  await linesUntil(worker, 0, (l) => l.msg === 'admin call', 10, 'admin call');
  const outputs = { worker: worker.logs(), bare: bare.logs(), keyless: keyless.logs() };
  const needles = [
    ADMIN_TOKEN, KEYLESS_TOKEN, ...wrongTokens, WEBHOOK_SECRET, WEBHOOK_SECRET.slice('whsec_'.length),
    LICENSE_KEY, SHIPPING_KEY, STRIPE_KEY, FORWARD_SECRET, FORWARD_SECRET.slice('whsec_'.length),
    ...issuedKeys, ...CUSTOMER_NEEDLES,
  ];
  assert.ok(issuedKeys.length > 5, 'license keys were issued along the way');
  for (const [name, out] of Object.entries(outputs)) {
    for (const needle of needles) assert.ok(!out.includes(needle), `${needle} reached the output of ${name}`);
  }
  const calls = lines(worker).filter((l) => l.msg === 'admin call');
  assert.ok(calls.length >= 10);
  assert.ok(calls.every((l) => l.who === fingerprint(ADMIN_TOKEN)), 'every admin call names its caller');
  assert.ok(outputs.worker.includes(`"who":"${fingerprint(ADMIN_TOKEN)}"`));
  assert.ok(outputs.keyless.includes(`"who":"${fingerprint(KEYLESS_TOKEN)}"`));
  for (const token of wrongTokens) assert.ok(!outputs.worker.includes(fingerprint(token)), 'a refused token gets no fingerprint');
});
