// Server-side checkout (issue 6), end to end: the built Worker under `wrangler dev`
// with a local D1, against the stand-in Stripe API. Asserts on what the browser (or
// curl) gets back, on exactly what Stripe received, on D1 rows and on the log lines.

import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';

import { linesUntil, logLines } from './support/logs.mjs';
import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('checkout')}`;
const STRIPE_KEY = `sk_test_${rid('checkout')}`;
const LICENSE_KEY = `lk_${rid('checkout')}`;
const SHOP = 'https://shop.example';
const APP_URL = 'https://shop.example/store';
const ATTEMPTS = 3;
const PRODUCTS = {
  pro: { price: 'price_1ProMonthly', mode: 'payment', max_quantity: 3, product: 'prod_Pro', shipping_countries: ['US', 'GB'] },
  team: { price: 'price_1Team', mode: 'subscription', max_quantity: 50 },
};
const SPRING = 'SPRING-25';

let standin;
let worker;
let broken;
let from = 0; // the length of `worker`'s output before the current test

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      STRIPE_API_BASE: `${standin.url}/stripe`,
      LICENSE_SERVER_URL: `${standin.url}/license`,
      UPSTREAM_TIMEOUT_MS: '1500',
      PRODUCTS: JSON.stringify(PRODUCTS),
      APP_URL: `${APP_URL}/`,
      ALLOWED_ORIGINS: `${SHOP}, http://localhost:3000`,
      CHECKOUT_CODE_ATTEMPTS: String(ATTEMPTS),
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, STRIPE_API_KEY: STRIPE_KEY, LICENSE_SERVER_API_KEY: LICENSE_KEY },
  });
  // A catalogue with a typo (`shiping_countries`) must never sell: refused as a whole.
  broken = await startWorker({
    vars: {
      STRIPE_API_BASE: `${standin.url}/stripe`,
      PRODUCTS: JSON.stringify({ pro: { price: 'price_1', mode: 'payment', max_quantity: 1, shiping_countries: ['US'] } }),
      APP_URL,
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, STRIPE_API_KEY: STRIPE_KEY },
  });
});

after(async () => {
  await worker?.stop();
  await broken?.stop();
  await standin?.stop();
});

beforeEach(() => {
  standin.reset();
  from = worker.logs().length;
});

/** Each test's client gets its own address, so the code throttle starts at 0. */
let clients = 0;
const clientIp = () => `198.51.100.${(clients += 1)}`;

async function checkout(body, { ip = clientIp(), origin, key, method = 'POST', headers = {}, target = worker } = {}) {
  const res = await fetch(new URL('/checkout', target.url), {
    method,
    headers: {
      ...(method === 'POST' ? { 'content-type': 'application/json' } : {}),
      'cf-connecting-ip': ip,
      ...(origin ? { origin } : {}),
      ...(key ? { 'idempotency-key': key } : {}),
      ...headers,
    },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

const creations = () => standin.callsTo('stripe').filter((c) => c.method === 'POST' && c.path === '/stripe/v1/checkout/sessions');
const lookups = () => standin.callsTo('stripe').filter((c) => c.path === '/stripe/v1/promotion_codes');
const formOf = (call) => Object.fromEntries(new URLSearchParams(call.raw));
const lines = () => logLines(worker, from);
const isCheckout = (l) => typeof l.msg === 'string' && l.msg.startsWith('checkout');

/**
 * The test's checkout lines that `pred` picks, waited for until there are `n` (bounded):
 * a line is found by what it says, never by its place after a mark, since the previous
 * test's last line may still be arriving when this test starts.
 */
const checkoutLinesWhere = (pred, n = 1) =>
  linesUntil(worker, from, (l) => isCheckout(l) && pred(l), n, `${n} matching checkout lines`, 20_000);

/**
 * The line of the request that created `res`'s session: found by its session id, never
 * as "the next line after a mark" (the previous request's line may still be arriving).
 */
async function lineOfSession(res) {
  const id = /\/(cs_[A-Za-z0-9_]+)/.exec(res.json?.checkout_url ?? '')?.[1];
  assert.ok(id, `no session in ${res.text}`);
  const [line] = await linesUntil(worker, 0, (l) => isCheckout(l) && l.session_id === id, 1, `the line of ${id}`, 20_000);
  return line;
}

/** What a caller can tell apart: status, the headers that matter, the body bytes. */
function wire(res) {
  const names = ['content-type', 'cache-control', 'vary', 'access-control-allow-origin', 'retry-after'];
  return { status: res.status, headers: Object.fromEntries(names.map((n) => [n, res.headers.get(n)])), text: res.text };
}

/** wire() with the session id blanked out of the body. */
function shape(res) {
  const w = wire(res);
  return { ...w, text: w.text.replace(/cs_test_[0-9a-z]+/g, 'cs_test_…') };
}

function activeCode(overrides = {}) {
  return { id: `promo_${rid('p').slice(-12)}`, code: SPRING, active: true, times_redeemed: 0, coupon: { id: 'co_spring', object: 'coupon', valid: true, applies_to: { products: [] } }, ...overrides };
}

test('the price, mode and countries come from the catalogue whatever the client sends', async () => {
  const res = await checkout({ product: 'pro', quantity: 2, price: 'price_attacker', amount: 1, unit_amount: 1, currency: 'jpy', mode: 'subscription', line_items: [{ price: 'price_attacker' }] });
  assert.equal(res.status, 200, res.text);
  const [call] = creations();
  assert.equal(creations().length, 1);
  assert.deepEqual(res.json, { checkout_url: `https://checkout.stripe.com/c/pay/${standin.sessionsCreated()[0].id}` });
  assert.equal(call.headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.equal(call.headers['content-type'], 'application/x-www-form-urlencoded');
  assert.match(call.headers['idempotency-key'], /^checkout-[0-9a-f]{64}$/);
  assert.deepEqual(formOf(call), {
    mode: 'payment',
    'line_items[0][price]': 'price_1ProMonthly',
    'line_items[0][quantity]': '2',
    'metadata[slug]': 'pro',
    success_url: `${APP_URL}/success?session_id={CHECKOUT_SESSION_ID}`,
    cancel_url: `${APP_URL}/cancel`,
    'shipping_address_collection[allowed_countries][0]': 'US',
    'shipping_address_collection[allowed_countries][1]': 'GB',
  });
  assert.ok(!call.raw.includes('attacker') && !call.raw.includes('jpy'));
  // The placeholder travels encoded once, so Stripe decodes it to the literal braces.
  assert.ok(call.raw.includes('%7BCHECKOUT_SESSION_ID%7D') && !call.raw.includes('%257B'), call.raw);
  assert.equal(res.headers.get('cache-control'), 'no-store');

  const line = await lineOfSession(res);
  assert.equal(line.msg, 'checkout session created');
  assert.equal(line.session_id, standin.sessionsCreated()[0].id);
  assert.equal(line.request_id, call.requestId);
  assert.equal(line.product, 'pro');
  assert.equal(line.quantity, 2);
});

test('a subscription product collects no address and quantity defaults to 1', async () => {
  const res = await checkout({ product: 'team' });
  assert.equal(res.status, 200, res.text);
  const form = formOf(creations()[0]);
  assert.equal(form.mode, 'subscription');
  assert.equal(form['line_items[0][quantity]'], '1');
  assert.ok(!Object.keys(form).some((k) => k.startsWith('shipping_address_collection')));
});

test('an unknown product or a bad quantity is a 400 that never reaches Stripe', async () => {
  const cases = [
    [{ product: 'enterprise' }, 'unknown product'],
    [{ product: 'pro', quantity: 0 }, 'quantity must be a whole number from 1 to 3'],
    [{ product: 'pro', quantity: 4 }, 'quantity must be a whole number from 1 to 3'],
    [{ product: 'pro', quantity: 1.5 }, 'quantity must be a whole number from 1 to 3'],
    [{ product: 'pro', quantity: '2' }, 'quantity must be a whole number from 1 to 3'],
    [{ quantity: 1 }, 'product must be a string naming a product'],
    ['not json', 'the body must be a JSON object'],
    [{ product: 'pro', promotion_code: 25 }, 'promotion_code must be a string'],
  ];
  for (const [body, error] of cases) {
    const res = await checkout(body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.deepEqual(res.json, { error }, JSON.stringify(body));
  }
  assert.equal(standin.callsTo('stripe').length, 0);
  const refused = await checkoutLinesWhere((l) => l.msg === 'checkout refused' && l.status === 400, cases.length);
  assert.ok(refused.every((l) => l.msg === 'checkout refused' && l.status === 400));
  // The made-up slug is never logged (checked once the refusals' lines are in).
  assert.ok(!JSON.stringify(lines()).includes('enterprise'));
});

test('other methods are 405 and an oversized body 413', async () => {
  const get = await checkout(undefined, { method: 'GET' });
  assert.equal(get.status, 405);
  assert.equal(get.headers.get('allow'), 'POST, OPTIONS');
  const big = await checkout({ product: 'pro', padding: 'x'.repeat(9 * 1024) });
  assert.equal(big.status, 413);
  assert.equal(standin.callsTo('stripe').length, 0);
});

test('a double-click with the page\'s Idempotency-Key gets the same session; no key, a new one', async () => {
  const ip = clientIp();
  const key = `attempt-${rid('k')}`;
  const [a, b] = await Promise.all([
    checkout({ product: 'pro' }, { ip, key }),
    checkout({ product: 'pro' }, { ip, key }),
  ]);
  assert.equal(a.status, 200, a.text);
  assert.equal(b.status, 200, b.text);
  assert.equal(a.text, b.text);
  assert.equal(standin.sessionsCreated().length, 1, 'one session for a double-click');
  assert.ok(!creations()[0].headers['idempotency-key'].includes(key), 'the page key is hashed, not forwarded');

  // Two shoppers behind one address, no key: two sessions.
  const c = await checkout({ product: 'pro' }, { ip });
  const d = await checkout({ product: 'pro' }, { ip });
  assert.notEqual(c.json.checkout_url, d.json.checkout_url);
  assert.equal(standin.sessionsCreated().length, 3);
});

test('a valid promotion code is looked up server-side and applied', async () => {
  const promo = activeCode();
  standin.setPromotionCode(promo);
  const res = await checkout({ product: 'pro', promotion_code: 'spring-25' });
  assert.equal(res.status, 200, res.text);
  const [lookup] = lookups();
  assert.equal(lookup.query.code, 'spring-25');
  assert.equal(lookup.query.active, 'true');
  assert.equal(formOf(creations()[0])['discounts[0][promotion_code]'], promo.id);
  const line = await lineOfSession(res);
  assert.equal(line.promotion, 'applied');
  assert.equal(line.promotion_code_id, promo.id);
  assert.equal(line.code_attempts, 1);
  assert.ok(!JSON.stringify(lines()).toLowerCase().includes('spring-25'), 'the code is never logged');
});

test('an unknown, inactive, expired, restricted or unusable code answers like no code, in a session of its own', async () => {
  const cases = [
    ['unknown', () => {}],
    ['inactive', () => standin.setPromotionCode(activeCode({ active: false }))],
    ['expired', () => standin.setPromotionCode(activeCode({ expires_at: 1_600_000_000 }))],
    ['used up', () => standin.setPromotionCode(activeCode({ max_redemptions: 1, times_redeemed: 1 }))],
    ['another product', () => standin.setPromotionCode(activeCode({ coupon: { id: 'co_x', valid: true, applies_to: { products: ['prod_Other'] } } }))],
    ['coupon no longer valid', () => {
      standin.setPromotionCode(activeCode({ coupon: 'co_dead' }));
      standin.setCoupon({ id: 'co_dead', valid: false, applies_to: { products: [] } });
    }],
  ];
  for (const [what, setup] of cases) {
    standin.reset();
    const ip = clientIp();
    const key = `attempt-${rid('k')}`;
    const plain = await checkout({ product: 'pro', quantity: 2 }, { ip, key, origin: SHOP });
    setup();
    const coded = await checkout({ product: 'pro', quantity: 2, promotion_code: SPRING }, { ip, key, origin: SHOP });
    assert.equal(plain.status, 200, `${what}: ${plain.text}`);
    // Same status, headers and body but for the session id: a code (dropped or not)
    // gets a session of its own, so reusing one Idempotency-Key cannot tell them apart.
    assert.deepEqual(shape(coded), shape(plain), what);
    assert.notEqual(coded.json.checkout_url, plain.json.checkout_url, what);
    assert.equal(standin.sessionsCreated().length, 2, what);
    assert.deepEqual(formOf(creations().at(-1)), formOf(creations()[0]), `${what}: no discount, same order`);
    const line = await lineOfSession(coded);
    assert.equal(line.msg, 'checkout session created', what);
    assert.equal(line?.promotion, 'dropped', what);
    assert.ok(!JSON.stringify(logLines(worker)).includes(SPRING), `${what}: the code is never logged`);
  }
});

test('every promotion code state makes the same Stripe calls, each with the pinned Stripe-Version (no timing oracle)', async () => {
  const states = [
    ['unknown', () => {}],
    ['valid', () => standin.setPromotionCode(activeCode())],
    ['valid, restricted to this product', () => standin.setPromotionCode(activeCode({ coupon: 'co_pro' }))],
    ['inactive', () => standin.setPromotionCode(activeCode({ active: false }))],
    ['expired', () => standin.setPromotionCode(activeCode({ expires_at: 1_600_000_000 }))],
    ['used up', () => standin.setPromotionCode(activeCode({ max_redemptions: 1, times_redeemed: 1 }))],
    ['another product', () => standin.setPromotionCode(activeCode({ coupon: 'co_other' }))],
    ['coupon no longer valid', () => standin.setPromotionCode(activeCode({ coupon: { id: 'co_dead', valid: false } }))],
  ];
  const sequences = {};
  for (const [what, setup] of states) {
    standin.reset();
    standin.setCoupon({ id: 'co_pro', valid: true, applies_to: { products: ['prod_Pro'] } });
    standin.setCoupon({ id: 'co_other', valid: true, applies_to: { products: ['prod_Other'] } });
    setup();
    const res = await checkout({ product: 'pro', promotion_code: SPRING }, { ip: clientIp() });
    assert.equal(res.status, 200, `${what}: ${res.text}`);
    const calls = standin.callsTo('stripe');
    sequences[what] = calls.map((c) => `${c.method} ${c.path}`);
    for (const c of calls) assert.equal(c.headers['stripe-version'], '2025-03-31.basil', `${what}: ${c.path}`);
    const line = await lineOfSession(res);
    assert.equal(line?.promotion, what.startsWith('valid') ? 'applied' : 'dropped', what);
  }
  for (const [what, sequence] of Object.entries(sequences)) {
    assert.deepEqual(sequence, ['GET /stripe/v1/promotion_codes', 'POST /stripe/v1/checkout/sessions'], what);
  }
});

test('code guesses are throttled per client: 429 with Retry-After, then the window ends', async () => {
  const ip = clientIp();
  for (let n = 1; n <= ATTEMPTS; n += 1) {
    const res = await checkout({ product: 'pro', promotion_code: `GUESS${n}` }, { ip });
    assert.equal(res.status, 200, `attempt ${n}: ${res.text}`);
  }
  const limited = await checkout({ product: 'pro', promotion_code: 'GUESS4' }, { ip, origin: SHOP });
  assert.equal(limited.status, 429);
  assert.deepEqual(limited.json, { error: 'too many promotion code attempts; retry later' });
  const retryAfter = Number(limited.headers.get('retry-after'));
  assert.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 600, `Retry-After ${retryAfter}`);
  assert.equal(limited.headers.get('access-control-allow-origin'), SHOP);
  assert.equal(lookups().length, ATTEMPTS, 'no lookup once throttled');

  // Without a code the same client still checks out; another client has its own count.
  assert.equal((await checkout({ product: 'pro' }, { ip })).status, 200);
  assert.equal((await checkout({ product: 'pro', promotion_code: 'X' }, { ip: clientIp() })).status, 200);

  const [refused] = await checkoutLinesWhere((l) => l.reason === 'checkout_rate_limited');
  assert.equal(refused.level, 'warn');
  assert.equal(refused.code_attempts, ATTEMPTS + 1);
  // D1 counts per keyed hash of the address, never the address itself.
  // (The table also holds the session budget's counters, under keys of their own.)
  const rows = await worker.d1('SELECT key, attempts FROM checkout_code_attempts ORDER BY attempts DESC');
  assert.ok(rows.some((r) => r.attempts === ATTEMPTS + 1), JSON.stringify(rows));
  for (const row of rows) assert.match(row.key, /^[0-9a-f]{64}$/);
  assert.ok(!JSON.stringify(rows).includes(ip) && !JSON.stringify(lines()).includes(ip));
});

test('a Stripe failure is a 502 without Stripe\'s words, logged with its request id', async () => {
  standin.failNext('stripe', 1, 500);
  const res = await checkout({ product: 'pro' });
  assert.equal(res.status, 502);
  assert.deepEqual(res.json, { error: 'could not start checkout, please try again' });
  const [call] = creations();
  for (const leak of ['injected', 'api_error', call.requestId, STRIPE_KEY, 'price_1ProMonthly']) {
    assert.ok(!res.text.includes(leak), `the answer leaks ${leak}`);
  }
  const [line] = await checkoutLinesWhere((l) => l.reason === 'checkout_stripe_failed');
  assert.equal(line.msg, 'checkout failed: Stripe API');
  assert.equal(line.level, 'error');
  assert.equal(line.reason, 'checkout_stripe_failed');
  assert.equal(line.stripe_status, 500);
  assert.equal(line.request_id, call.requestId);
  assert.ok(!JSON.stringify(lines()).includes(STRIPE_KEY));

  // A refused key (401) and a dropped connection are 502s too.
  standin.failNext('stripe', 1, 401);
  assert.equal((await checkout({ product: 'pro' })).status, 502);
  standin.closeNext('stripe', 1);
  assert.equal((await checkout({ product: 'pro' })).status, 502);
});

test('CORS: an allowed origin gets its preflight and readable answers; a foreign one gets 403', async () => {
  const preflight = await checkout(undefined, {
    method: 'OPTIONS',
    origin: SHOP,
    headers: { 'access-control-request-method': 'POST', 'access-control-request-headers': 'content-type,idempotency-key' },
  });
  assert.equal(preflight.status, 204);
  assert.equal(preflight.text, '');
  assert.equal(preflight.headers.get('access-control-allow-origin'), SHOP);
  assert.equal(preflight.headers.get('access-control-allow-methods'), 'POST');
  assert.equal(preflight.headers.get('access-control-allow-headers'), 'content-type, idempotency-key');
  assert.equal(preflight.headers.get('vary'), 'Origin');

  const post = await checkout({ product: 'pro' }, { origin: 'http://localhost:3000' });
  assert.equal(post.status, 200);
  assert.equal(post.headers.get('access-control-allow-origin'), 'http://localhost:3000');
  const bad = await checkout({ product: 'nope' }, { origin: SHOP });
  assert.equal(bad.status, 400);
  assert.equal(bad.headers.get('access-control-allow-origin'), SHOP, 'the page can read why');

  for (const method of ['OPTIONS', 'POST']) {
    const foreign = await checkout(method === 'POST' ? { product: 'pro' } : undefined, { method, origin: 'https://evil.example' });
    assert.equal(foreign.status, 403, method);
    assert.equal(foreign.headers.get('access-control-allow-origin'), null, method);
  }
  assert.equal(creations().length, 1, 'only the allowed POST reached Stripe');
  assert.ok((await checkoutLinesWhere((l) => l.reason === 'checkout_forbidden_origin')).some((l) => l.origin === 'foreign'));
});

test('a malformed catalogue is reported by name in /healthz and checkout answers 503', async () => {
  const health = await (await fetch(new URL('/healthz', broken.url))).json();
  assert.equal(health.ok, false);
  assert.ok(health.invalid.includes('PRODUCTS'), JSON.stringify(health));
  assert.equal(health.checkout_products, 0);
  assert.ok(!JSON.stringify(health).includes('price_1'));
  const res = await checkout({ product: 'pro' }, { target: broken });
  assert.equal(res.status, 503);
  assert.deepEqual(res.json, { error: 'checkout is not configured' });
  assert.equal(standin.callsTo('stripe').length, 0);

  const good = await (await fetch(new URL('/healthz', worker.url))).json();
  assert.equal(good.checkout_products, 2);
  assert.ok(!good.invalid.includes('PRODUCTS'));
});

test('checkout → webhook → fulfilment: the session\'s slug becomes the license', async () => {
  const res = await checkout({ product: 'pro' });
  assert.equal(res.status, 200, res.text);
  const created = standin.sessionsCreated()[0];
  // Stripe would now send checkout.session.completed for this session, metadata included.
  const session = checkoutSession({ id: created.id, metadata: { slug: formOf(creations()[0])['metadata[slug]'] } });
  const evt = event('checkout.session.completed', session);
  const delivered = await deliver(worker.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });
  assert.equal(delivered.status, 200, delivered.text);
  const licenses = standin.licensesIssued();
  assert.equal(licenses.length, 1);
  assert.equal(licenses[0].request.slug, 'pro');
  assert.equal(licenses[0].idempotency_key, `stripe-edge:${created.id}:license`);
});
