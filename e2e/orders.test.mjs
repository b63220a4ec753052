// The success page's lookup, `GET /orders/{checkout_session_id}` (issue 13), end to
// end: the built Worker under `wrangler dev` with a local D1, the stand-in playing
// the Stripe API and the license server, deliveries signed by the official stripe
// package. Asserts on what the page gets back, on exactly what Stripe and the license
// server received, on D1 rows and on the Worker's log lines.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, afterEach, before, beforeEach, test } from 'node:test';

import { linesUntil, logLines, until, waitForLine } from './support/logs.mjs';
import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, readResponse, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('orders')}`;
const STRIPE_KEY = `sk_test_${rid('orders')}`;
const LICENSE_KEY = `lk_${rid('orders')}`;
const SECRETS = [WEBHOOK_SECRET, STRIPE_KEY, LICENSE_KEY];
const SHOP = 'https://shop.example';
const EMAIL = 'grace.hopper@example.com';
const LIMIT = 20; // ORDER_LOOKUP_ATTEMPTS's default: the Worker is started without it

let standin;
let worker;
let queued; // a second Worker in queue mode, started by its test
let from = 0; // the length of the Worker's output before the current test

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      STRIPE_API_BASE: `${standin.url}/stripe`,
      LICENSE_SERVER_URL: `${standin.url}/license`,
      UPSTREAM_TIMEOUT_MS: '3000',
      ALLOWED_ORIGINS: SHOP,
      STRIPE_LIVEMODE: 'false',
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, STRIPE_API_KEY: STRIPE_KEY, LICENSE_SERVER_API_KEY: LICENSE_KEY },
  });
});

after(async () => {
  await worker?.stop();
  await queued?.stop();
  await standin?.stop();
});

beforeEach(() => {
  standin.reset();
  from = worker.logs().length;
});

/** Every license key the stand-in issued in any test: none may reach a log line. */
const ISSUED = new Set();
afterEach(() => {
  for (const l of standin.licensesIssued()) ISSUED.add(l.license_key);
});

/** Each test's client gets its own address, so the lookup throttle starts at 0. */
let clients = 0;
const clientIp = () => `192.0.2.${(clients += 1)}`;

/**
 * A Checkout Session id of Stripe's shape: `cs_test_` and base62 (rid() has no `_`
 * after `test`, and a long hex run would be redacted from log lines as a signature).
 */
const sessionId = () => `cs_test_a1${randomBytes(30).toString('base64').replace(/[^A-Za-z0-9]/g, '')}`;

/** A Checkout Session as Stripe's API returns it; registered with the stand-in. */
function stripeHas(overrides = {}) {
  const session = checkoutSession({
    id: sessionId(),
    customer: rid('cus'),
    customer_details: { email: EMAIL, name: 'Grace Hopper' },
    metadata: { slug: 'pro' },
    payment_intent: null,
    ...overrides,
  });
  standin.setSession(session);
  return session;
}

async function order(id, { ip = clientIp(), origin = SHOP, method = 'GET', headers = {}, target = worker } = {}) {
  const res = await fetch(new URL(`/orders/${id}`, target.url), {
    method,
    headers: { 'cf-connecting-ip': ip, ...(origin ? { origin } : {}), ...headers },
    signal: AbortSignal.timeout(15_000),
  });
  return readResponse(res);
}

const send = (evt, target = worker) => deliver(target.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });
/** Delivers until Stripe would stop: a 2xx (409 and 503 are redelivered), bounded. */
async function sendUntilAccepted(evt) {
  for (let i = 0; i < 20; i++) {
    const res = await send(evt);
    if (res.status < 300) return res;
    assert.ok([409, 503].includes(res.status), `${res.status} ${res.text}`);
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error('the delivery was never accepted');
}

const sessionLookups = (id) => standin.callsTo('stripe').filter((c) => c.method === 'GET' && c.path === `/stripe/v1/checkout/sessions/${id}`);
const anyStripeCall = () => standin.callsTo('stripe').length;
const licenses = () => standin.licensesIssued();
/** The Worker's `order …` lines about one session after this test began, awaited (the output streams). */
const orderLines = (id, n = 1) => linesUntil(worker, from, (l) => l.msg?.startsWith('order') && l.session_id === id, n, `order lines of ${id}`, 10_000);

function assertNoStore(res) {
  assert.equal(res.headers.get('cache-control'), 'no-store');
}

test('the page loads before any webhook: fulfilled once, and the late webhook adds no license', async () => {
  const session = stripeHas();
  const res = await order(session.id);
  assert.equal(res.status, 200, res.text);
  assertNoStore(res);
  assert.equal(res.headers.get('access-control-allow-origin'), SHOP);
  assert.equal(res.headers.get('vary'), 'Origin');
  assert.equal(licenses().length, 1);
  const key = licenses()[0].license_key;
  assert.deepEqual(res.json, { order: session.id, state: 'fulfilled', license_key: key }, 'exactly these keys');
  assert.equal(sessionLookups(session.id).length, 1);
  assert.equal(sessionLookups(session.id)[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  // The purchase records who opened it; the license server hears the same.
  const issued = licenses()[0];
  assert.equal(issued.idempotency_key, `stripe-edge:${session.id}:license`);
  assert.equal(issued.request.metadata.provider_event_id, 'success_page');
  assert.equal(issued.request.metadata.provider_checkout_session_id, session.id);
  assert.deepEqual(
    await worker.d1(`SELECT step, state, event_id FROM steps WHERE session_id = '${session.id}'`),
    [{ step: 'license', state: 'done', event_id: 'success_page' }],
  );
  const [line] = await orderLines(session.id);
  assert.equal(line.msg, 'order opened by the success page');
  assert.equal(line.opened, 'complete');
  assert.equal(line.purchase_state, 'fulfilled');

  // The webhook arrives later: accepted, no second license.
  const delivered = await send(event('checkout.session.completed', session));
  assert.equal(delivered.status, 200, delivered.text);
  assert.equal(licenses().length, 1);
  assert.equal(standin.callsTo('license').length, 1);

  // The next polls come from D1 alone: no Stripe call, the same key.
  const calls = anyStripeCall();
  for (let i = 0; i < 3; i++) {
    const again = await order(session.id);
    assert.deepEqual(again.json, { order: session.id, state: 'fulfilled', license_key: key });
  }
  assert.equal(anyStripeCall(), calls);
  const lines = await orderLines(session.id, 4);
  assert.deepEqual(lines.slice(1).map((l) => l.msg), ['order lookup', 'order lookup', 'order lookup']);
});

test('20 concurrent polls and a concurrent webhook: one license', async () => {
  const session = stripeHas();
  standin.delayNext('license', 1, 500); // the first license call is slow: the racers meet
  const ip = clientIp();
  const [webhook, ...polls] = await Promise.all([
    send(event('checkout.session.completed', session)),
    ...Array.from({ length: 20 }, () => order(session.id, { ip })),
  ]);
  for (const p of polls) {
    assert.equal(p.status, 200, p.text);
    assert.ok(['fulfilled', 'fulfilling'].includes(p.json.state), p.text);
    assertNoStore(p);
  }
  // 409: a poll held the step; 503: the webhook held it and the slow call outran its
  // timeout on a loaded machine. Either way Stripe redelivers, as sendUntilAccepted does.
  assert.ok([200, 409, 503].includes(webhook.status), `${webhook.status} ${webhook.text}`);
  await sendUntilAccepted(event('checkout.session.completed', session));
  assert.equal(licenses().length, 1, 'one license for 21 racers');
  const last = await order(session.id, { ip });
  assert.deepEqual(last.json, { order: session.id, state: 'fulfilled', license_key: licenses()[0].license_key });
});

test('an unpaid session waits; async_payment_succeeded fulfils it and the next poll shows the key', async () => {
  const session = stripeHas({ payment_status: 'unpaid' });
  const res = await order(session.id);
  assert.equal(res.status, 200, res.text);
  assert.deepEqual(res.json, { order: session.id, state: 'awaiting_payment', retry_after_ms: 60000 });
  assert.equal(standin.callsTo('license').length, 0, 'nothing fulfilled');
  assert.deepEqual(await worker.d1(`SELECT state FROM purchases WHERE session_id = '${session.id}'`), [{ state: 'awaiting_payment' }]);
  const again = await order(session.id);
  assert.equal(again.json.state, 'awaiting_payment');
  assert.equal(sessionLookups(session.id).length, 1, 'known now: no second Stripe call');

  const paid = { ...session, payment_status: 'paid' };
  const delivered = await send(event('checkout.session.async_payment_succeeded', paid));
  assert.equal(delivered.status, 200, delivered.text);
  assert.equal(licenses().length, 1);
  const next = await order(session.id);
  assert.deepEqual(next.json, { order: session.id, state: 'fulfilled', license_key: licenses()[0].license_key });
});

test('open and expired sessions are answered as such; nothing is recorded or fulfilled', async () => {
  for (const status of ['open', 'expired']) {
    const session = stripeHas({ status, payment_status: 'unpaid' });
    const res = await order(session.id);
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json, { order: session.id, state: status });
    assertNoStore(res);
    assert.deepEqual(await worker.d1(`SELECT state FROM purchases WHERE session_id = '${session.id}'`), []);
    const [line] = await orderLines(session.id);
    assert.equal(line.msg, 'order not complete');
    assert.equal(line.session_status, status);
  }
  assert.equal(standin.callsTo('license').length, 0);
});

const counted = async () => (await worker.d1('SELECT COALESCE(SUM(attempts), 0) AS n FROM checkout_code_attempts'))[0].n;

test('a malformed id is a 400 and nobody is asked', async () => {
  const ip = clientIp();
  const before = await counted();
  for (const bad of ['cs_test_', 'cs_test_a-b', 'cs_test_a_b', 'pi_3Abc', 'cs_live', `cs_test_${'a'.repeat(300)}`, 'cs_test_abc%2Fline_items', 'cs_test_abc/line_items']) {
    const res = await order(bad, { ip });
    assert.equal(res.status, 400, bad);
    assert.deepEqual(res.json, { error: 'not a Checkout Session id' });
    assertNoStore(res);
  }
  assert.equal(standin.calls.length, 0, 'no Stripe call');
  const refused = await linesUntil(worker, from, (l) => l.reason === 'order_bad_id', 8, 'order_bad_id lines', 10_000);
  assert.ok(refused.every((l) => l.msg === 'order refused' && l.status === 400 && l.session_id === undefined));
  assert.equal(await counted(), before, 'not even counted');
});

test('an unknown id is a 404 after exactly one Stripe call', async () => {
  const id = sessionId();
  const res = await order(id);
  assert.equal(res.status, 404, res.text);
  assert.deepEqual(res.json, { error: 'no such order' });
  assertNoStore(res);
  assert.equal(anyStripeCall(), 1);
  assert.equal(sessionLookups(id).length, 1);
  const [line] = await orderLines(id);
  assert.equal(line.reason, 'order_not_found');
  assert.equal(line.request_id, sessionLookups(id)[0].requestId, 'Stripe\'s request id, for support');
});

test('past the limit: 429 with Retry-After and no Stripe call; known ids still answer', async () => {
  const ip = clientIp();
  const known = stripeHas();
  const delivered = await send(event('checkout.session.completed', known));
  assert.equal(delivered.status, 200, delivered.text);
  for (const l of licenses()) ISSUED.add(l.license_key);
  standin.reset();
  const before = await counted();
  for (let i = 0; i < LIMIT; i++) {
    assert.equal((await order(sessionId(), { ip })).status, 404);
  }
  assert.equal(anyStripeCall(), LIMIT);
  const limited = await order(sessionId(), { ip });
  assert.equal(limited.status, 429, limited.text);
  assertNoStore(limited);
  const retryAfter = Number(limited.headers.get('retry-after'));
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 600, limited.headers.get('retry-after'));
  assert.equal(limited.headers.get('access-control-allow-origin'), SHOP);
  assert.equal(limited.headers.get('access-control-expose-headers'), 'Retry-After');
  assert.equal(anyStripeCall(), LIMIT, 'no Stripe call past the limit');
  assert.equal(await counted(), before + LIMIT + 1, 'each unknown lookup counted in D1, keyed apart from promotion codes');
  // A purchase the ledger knows is never throttled.
  for (let i = 0; i < 3; i++) {
    const res = await order(known.id, { ip });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.state, 'fulfilled');
  }
  assert.equal(anyStripeCall(), LIMIT);
  // Another client has its own budget.
  assert.equal((await order(sessionId())).status, 404);
  const warned = await linesUntil(worker, from, (l) => l.reason === 'order_rate_limited', 1, 'the 429 line', 10_000);
  assert.equal(warned[0].level, 'warn');
  assert.equal(warned[0].lookups, LIMIT + 1);
});

test('Stripe failing or refusing our key is a 502 without its words; nothing recorded', async () => {
  for (const status of [500, 401]) {
    const session = stripeHas();
    standin.failNext('stripe', 1, status);
    const res = await order(session.id);
    assert.equal(res.status, 502, res.text);
    assert.deepEqual(res.json, { error: 'could not look up the order, please retry' });
    assertNoStore(res);
    assert.deepEqual(await worker.d1(`SELECT state FROM purchases WHERE session_id = '${session.id}'`), []);
    const [line] = await orderLines(session.id);
    assert.equal(line.msg, 'order lookup failed: Stripe API');
    assert.equal(line.stripe_status, status);
    // Stripe recovers: the next poll fulfils.
    assert.equal((await order(session.id)).json.state, 'fulfilled');
  }
  assert.equal(licenses().length, 2);
});

test('CORS: an allowed origin gets its preflight; a foreign one gets 403 without CORS headers', async () => {
  const id = sessionId();
  const preflight = await order(id, { method: 'OPTIONS', headers: { 'access-control-request-method': 'GET' } });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.text, '');
  assert.equal(preflight.headers.get('access-control-allow-origin'), SHOP);
  assert.equal(preflight.headers.get('access-control-allow-methods'), 'GET');
  assert.equal(preflight.headers.get('vary'), 'Origin');
  assertNoStore(preflight);
  for (const method of ['OPTIONS', 'GET']) {
    const foreign = await order(id, { method, origin: 'https://evil.example' });
    assert.equal(foreign.status, 403, method);
    assert.equal(foreign.headers.get('access-control-allow-origin'), null, method);
    assertNoStore(foreign);
  }
  const post = await order(id, { method: 'POST' });
  assert.equal(post.status, 405);
  assert.equal(post.headers.get('allow'), 'GET, OPTIONS');
  assert.equal(standin.calls.length, 0, 'no lookup for any of them');
  // These lines name no session: each is found by what it says (only this test sends them),
  // never as "the next lines" (the previous test's last `order` line may still be arriving).
  const preflightLine = await waitForLine(worker, (l) => l.msg === 'order preflight', { from });
  assert.equal(preflightLine.status, 204);
  await waitForLine(worker, (l) => l.reason === 'order_forbidden_origin' && l.origin === 'foreign', { from });
});

test('queue mode: the page records the steps and queues them; the consumer fulfils once', async () => {
  queued = await startWorker({
    vars: {
      STRIPE_API_BASE: `${standin.url}/stripe`,
      LICENSE_SERVER_URL: `${standin.url}/license`,
      UPSTREAM_TIMEOUT_MS: '3000',
      ALLOWED_ORIGINS: SHOP,
      QUEUE_RETRY_BASE_SECS: '1',
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, STRIPE_API_KEY: STRIPE_KEY, LICENSE_SERVER_API_KEY: LICENSE_KEY },
    toml: `
[[queues.producers]]
binding = "FULFILLMENT_QUEUE"
queue = "stripe-edge-e2e-orders"

[[queues.consumers]]
queue = "stripe-edge-e2e-orders"
max_batch_size = 5
max_batch_timeout = 1
max_retries = 2
`,
  });
  const mark = queued.logs().length;
  const session = stripeHas();
  const ip = clientIp();
  const res = await order(session.id, { target: queued, ip });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.state, 'fulfilling', res.text);
  assert.equal(res.json.retry_after_ms, 1000);
  assert.equal(res.json.license_key, undefined);
  const [line] = await linesUntil(queued, mark, (l) => l.msg === 'order opened by the success page', 1, 'the page\'s line', 10_000);
  assert.equal(line.opened, 'queued');
  // The consumer runs the steps; the page's polls (D1 only) see the key appear.
  const done = await until(async () => {
    const poll = await order(session.id, { target: queued, ip });
    return poll.json?.state === 'fulfilled' ? poll : null;
  }, 'the queued purchase to be fulfilled', 30_000, () => queued.logs().slice(-3000));
  assert.equal(licenses().length, 1);
  assert.deepEqual(done.json, { order: session.id, state: 'fulfilled', license_key: licenses()[0].license_key });
  assert.equal(licenses()[0].request.metadata.provider_event_id, 'success_page');
  assert.equal(sessionLookups(session.id).length, 2, 'the page\'s lookup, then the consumer\'s fetch');
  // The webhook arrives late: nothing more to do.
  const delivered = await send(event('checkout.session.completed', session), queued);
  assert.equal(delivered.status, 200, delivered.text);
  await linesUntil(queued, mark, (l) => l.msg === 'webhook recorded' && l.object_id === session.id, 1, 'the webhook line', 10_000);
  assert.equal(licenses().length, 1);
  for (const l of licenses()) ISSUED.add(l.license_key);
  const out = queued.logs();
  for (const needle of [EMAIL, ...SECRETS, ...ISSUED]) {
    assert.ok(!out.includes(needle), `${needle} reached the queue-mode Worker's log`);
  }
});

test('no license key, e-mail address or API key reaches the Worker\'s output', () => {
  const out = worker.logs();
  assert.ok(ISSUED.size >= 5, `collected ${ISSUED.size} issued license keys`);
  for (const needle of [EMAIL, ...SECRETS, ...ISSUED]) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
  const lines = logLines(worker);
  assert.ok(lines.some((l) => l.msg === 'order opened by the success page'), 'the scan read real output');
  assert.ok(lines.some((l) => l.msg === 'order lookup'));
});
