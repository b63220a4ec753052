// Self-test of the stand-in services (e2e/support/standin.mjs); no Worker needed.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startStandin } from './support/standin.mjs';

let s;

async function call(path, { method = 'GET', body, headers = {}, timeoutMs = 5_000 } = {}) {
  const res = await fetch(`${s.url}${path}`, {
    method,
    headers: { ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

const auth = { authorization: 'Bearer sk_test_standin' };
const items = (n) => Array.from({ length: n }, (_, i) => ({
  id: `li_${String(i).padStart(3, '0')}`,
  object: 'item',
  quantity: 1,
  price: { id: `price_${i}`, object: 'price', product: `prod_${i}` },
}));

describe('stand-in services', { timeout: 60_000 }, () => {
  before(async () => { s = await startStandin(); });
  after(async () => { await s.stop(); });
  beforeEach(() => s.reset());

  test('license revoke: strict body, unknown key 404, twice the same revoked_at', async () => {
    const { json: { license_key } } = await call('/license/generate', { method: 'POST', body: { slug: 'pro' } });
    assert.equal((await call('/license/revoke', { method: 'POST', body: { license_key, reason: 'x' } })).status, 400);
    assert.equal((await call('/license/revoke', { method: 'POST', body: { license_key: 'nope' } })).json.error, 'license not found');
    const first = await call('/license/revoke', { method: 'POST', body: { license_key } });
    const second = await call('/license/revoke', { method: 'POST', body: { license_key } });
    assert.equal(first.status, 200);
    assert.equal(first.json.status, 'revoked');
    assert.equal(second.json.revoked_at, first.json.revoked_at);
    assert.equal(s.revocations().length, 1);
  });

  test('shipping cancel: 200 once per key, unknown order 404, shipped 422 already_shipped', async () => {
    await call('/shipping/orders', { method: 'POST', body: { order_id: 'cs_a' } });
    await call('/shipping/orders', { method: 'POST', body: { order_id: 'cs_b' } });
    const body = { order_id: 'cs_a', shipment_id: 'shp_1', reason: 'refunded' };
    const headers = { 'idempotency-key': 'k-a' };
    assert.equal((await call('/shipping/orders/cs_a/cancel', { method: 'POST', body, headers })).status, 200);
    assert.equal((await call('/shipping/orders/cs_a/cancel', { method: 'POST', body, headers })).status, 200);
    assert.equal(s.cancellations().length, 1);
    assert.equal((await call('/shipping/orders/cs_x/cancel', { method: 'POST', body })).status, 404);
    s.markShipped('cs_b');
    const late = await call('/shipping/orders/cs_b/cancel', { method: 'POST', body: { ...body, order_id: 'cs_b' } });
    assert.deepEqual([late.status, late.json], [422, { error: 'already_shipped' }]);
  });

  test('license: issues a key, records the call', async () => {
    const res = await call('/license/generate', { method: 'POST', body: { order: 'cs_1' }, headers: { 'X-Api-Key': 'k' } });
    assert.equal(res.status, 200);
    assert.match(res.json.license_key, /^lic_[0-9a-f]+$/);
    assert.equal(s.licensesIssued().length, 1);
    assert.equal(s.calls.length, 1);
    const [c] = s.calls;
    assert.equal(c.service, 'license');
    assert.equal(c.method, 'POST');
    assert.equal(c.path, '/license/generate');
    assert.equal(c.headers['x-api-key'], 'k');
    assert.deepEqual(c.body, { order: 'cs_1' });
    assert.equal(typeof c.at, 'number');
  });

  test('license: Idempotency-Key replays the first answer without issuing again', async () => {
    const h = { 'Idempotency-Key': 'order-cs_1' };
    const a = await call('/license/generate', { method: 'POST', body: { order: 'cs_1' }, headers: h });
    const b = await call('/license/generate', { method: 'POST', body: { order: 'cs_1' }, headers: h });
    assert.equal(a.status, 200);
    assert.deepEqual(b.json, a.json);
    assert.equal(s.licensesIssued().length, 1);
    assert.equal(s.licensesIssued()[0].idempotency_key, 'order-cs_1');
    const c = await call('/license/generate', { method: 'POST', body: { order: 'cs_2' }, headers: { 'Idempotency-Key': 'order-cs_2' } });
    assert.notEqual(c.json.license_key, a.json.license_key);
    assert.equal(s.licensesIssued().length, 2);
    // Same key, different parameters: refused like Stripe does.
    const d = await call('/license/generate', { method: 'POST', body: { order: 'cs_3' }, headers: h });
    assert.equal(d.status, 422);
    assert.equal(s.licensesIssued().length, 2);
    assert.equal(s.calls.length, 4);
  });

  test('license: without a key every call issues', async () => {
    await call('/license/generate', { method: 'POST', body: {} });
    await call('/license/generate', { method: 'POST', body: {} });
    assert.equal(s.licensesIssued().length, 2);
  });

  test('shipping: idempotent shipment creation', async () => {
    const h = { 'Idempotency-Key': 'ship-cs_1' };
    const a = await call('/shipping/orders', { method: 'POST', body: { order: 'cs_1' }, headers: h });
    const b = await call('/shipping/orders', { method: 'POST', body: { order: 'cs_1' }, headers: h });
    assert.match(a.json.shipment_id, /^shp_/);
    assert.deepEqual(b.json, a.json);
    assert.equal(s.shipmentsCreated().length, 1);
    assert.deepEqual(s.calls.map((c) => c.service), ['shipping', 'shipping']);
  });

  test('failNext: answers the status, does no work, then recovers', async () => {
    s.failNext('license', 2, 503);
    const h = { 'Idempotency-Key': 'k1' };
    assert.equal((await call('/license/generate', { method: 'POST', body: {}, headers: h })).status, 503);
    assert.equal((await call('/license/generate', { method: 'POST', body: {}, headers: h })).status, 503);
    assert.equal(s.licensesIssued().length, 0);
    const ok = await call('/license/generate', { method: 'POST', body: {}, headers: h });
    assert.equal(ok.status, 200);
    assert.equal(s.licensesIssued().length, 1);
    assert.deepEqual(s.calls.map((c) => c.outcome), ['failed', 'failed', 'ok']);
    // Faults are per service.
    s.failNext('stripe', 1, 500);
    assert.equal((await call('/shipping/orders', { method: 'POST', body: {} })).status, 200);
    const st = await call('/stripe/v1/payment_intents/pi_x', { headers: auth });
    assert.equal(st.status, 500);
    assert.equal(st.json.error.type, 'api_error');
  });

  test('hangNext: no answer until released; the call is recorded', async () => {
    s.hangNext('shipping', 1);
    await assert.rejects(
      call('/shipping/orders', { method: 'POST', body: {}, headers: { 'Idempotency-Key': 'h' }, timeoutMs: 300 }),
      (err) => err.name === 'TimeoutError' || err.name === 'AbortError',
    );
    assert.equal(s.calls.length, 1);
    assert.equal(s.calls[0].outcome, 'hung');
    assert.equal(s.shipmentsCreated().length, 0);
    const ok = await call('/shipping/orders', { method: 'POST', body: {}, headers: { 'Idempotency-Key': 'h' } });
    assert.equal(ok.status, 200);
  });

  test('delayNext: does the work at once, answers after the delay', async () => {
    s.delayNext('license', 1, 400);
    const t0 = Date.now();
    const res = await call('/license/generate', { method: 'POST', body: {}, headers: { 'Idempotency-Key': 'd' } });
    assert.ok(Date.now() - t0 >= 380, `answered after ${Date.now() - t0} ms`);
    assert.equal(res.status, 200);
    // A client that gave up early and retries gets the same license.
    s.delayNext('license', 1, 2_000);
    const p = call('/license/generate', { method: 'POST', body: {}, headers: { 'Idempotency-Key': 'd2' }, timeoutMs: 200 });
    await assert.rejects(p);
    assert.equal(s.licensesIssued().length, 2);
    const retry = await call('/license/generate', { method: 'POST', body: {}, headers: { 'Idempotency-Key': 'd2' } });
    assert.equal(retry.json.license_key, s.licensesIssued()[1].license_key);
    assert.equal(s.licensesIssued().length, 2);
  });

  test('closeNext: the connection drops, no work done', async () => {
    s.closeNext('license', 1);
    await assert.rejects(call('/license/generate', { method: 'POST', body: {} }));
    assert.equal(s.calls[0].outcome, 'closed');
    assert.equal(s.licensesIssued().length, 0);
    assert.equal((await call('/license/generate', { method: 'POST', body: {} })).status, 200);
  });

  test('stripe: line items paginate with limit and starting_after', async () => {
    s.setLineItems('cs_1', items(25));
    const first = await call('/stripe/v1/checkout/sessions/cs_1/line_items', { headers: auth });
    assert.equal(first.status, 200);
    assert.equal(first.json.object, 'list');
    assert.equal(first.json.url, '/v1/checkout/sessions/cs_1/line_items');
    assert.equal(first.json.data.length, 10);
    assert.equal(first.json.has_more, true);

    const seen = [];
    let after;
    for (let page = 0; page < 10; page++) {
      const q = new URLSearchParams({ limit: '7', ...(after ? { starting_after: after } : {}) });
      const res = await call(`/stripe/v1/checkout/sessions/cs_1/line_items?${q}`, { headers: auth });
      seen.push(...res.json.data.map((d) => d.id));
      if (!res.json.has_more) break;
      after = res.json.data.at(-1).id;
    }
    assert.deepEqual(seen, items(25).map((i) => i.id));

    const last = await call('/stripe/v1/checkout/sessions/cs_1/line_items?limit=5&starting_after=li_019', { headers: auth });
    assert.deepEqual(last.json.data.map((d) => d.id), ['li_020', 'li_021', 'li_022', 'li_023', 'li_024']);
    assert.equal(last.json.has_more, false);

    const back = await call('/stripe/v1/checkout/sessions/cs_1/line_items?limit=3&ending_before=li_005', { headers: auth });
    assert.deepEqual(back.json.data.map((d) => d.id), ['li_002', 'li_003', 'li_004']);
    assert.equal(back.json.has_more, true);

    assert.equal((await call('/stripe/v1/checkout/sessions/cs_1/line_items?limit=0', { headers: auth })).status, 400);
    assert.equal((await call('/stripe/v1/checkout/sessions/cs_1/line_items?starting_after=li_nope', { headers: auth })).status, 400);
  });

  test('stripe: the pageSize caps the page whatever limit is asked', async () => {
    s.setLineItems('cs_2', items(5), 2);
    const res = await call('/stripe/v1/checkout/sessions/cs_2/line_items?limit=100', { headers: auth });
    assert.equal(res.json.data.length, 2);
    assert.equal(res.json.has_more, true);
  });

  test('stripe: unknown session and payment intent are Stripe-shaped 404s; no key is 401', async () => {
    const ls = await call('/stripe/v1/checkout/sessions/cs_missing/line_items', { headers: auth });
    assert.equal(ls.status, 404);
    assert.equal(ls.json.error.type, 'invalid_request_error');
    assert.equal(ls.json.error.code, 'resource_missing');
    const pi = await call('/stripe/v1/payment_intents/pi_missing', { headers: auth });
    assert.equal(pi.status, 404);
    assert.equal(pi.json.error.code, 'resource_missing');
    assert.equal((await call('/stripe/v1/payment_intents/pi_missing')).status, 401);
    assert.equal(s.calls.filter((c) => c.service === 'stripe').length, 3);
  });

  test('stripe: a stored payment intent is returned', async () => {
    s.setPaymentIntent('pi_1', { status: 'succeeded', amount: 2000, currency: 'usd' });
    const res = await call('/stripe/v1/payment_intents/pi_1', { headers: auth });
    assert.equal(res.status, 200);
    assert.deepEqual(res.json, { id: 'pi_1', object: 'payment_intent', status: 'succeeded', amount: 2000, currency: 'usd' });
    assert.equal(s.calls[0].headers.authorization, auth.authorization);
  });

  test('stripe: session creation is form-encoded and idempotent like Stripe; answers carry a Request-Id', async () => {
    const form = (price) => `mode=payment&line_items%5B0%5D%5Bprice%5D=${price}&success_url=https%3A%2F%2Fx&metadata%5Bslug%5D=pro`;
    const post = (body, key) => fetch(`${s.url}/stripe/v1/checkout/sessions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/x-www-form-urlencoded', ...(key ? { 'idempotency-key': key } : {}) },
      body,
    }).then(async (r) => ({ status: r.status, requestId: r.headers.get('request-id'), json: await r.json() }));
    const first = await post(form('price_1'), 'k1');
    assert.equal(first.status, 200);
    assert.match(first.requestId, /^req_[0-9a-f]+$/);
    assert.match(first.json.url, /^https:\/\/checkout\.stripe\.com\/c\/pay\/cs_test_/);
    assert.deepEqual(first.json.metadata, { slug: 'pro' });
    assert.deepEqual((await post(form('price_1'), 'k1')).json, first.json, 'same key, same form: replayed');
    const reused = await post(form('price_2'), 'k1');
    assert.equal(reused.status, 400);
    assert.equal(reused.json.error.type, 'idempotency_error');
    assert.notEqual((await post(form('price_1'))).json.id, first.json.id, 'no key: a new session');
    assert.equal(s.sessionsCreated().length, 2);
    assert.deepEqual(s.sessionsCreated()[0].form[1], ['line_items[0][price]', 'price_1']);
    const discounted = await post(`${form('price_1')}&discounts%5B0%5D%5Bpromotion_code%5D=promo_nope`);
    assert.equal(discounted.status, 400, 'an unknown promotion code is refused');
  });

  test('stripe: promotion codes are listed by code and active; coupons by id', async () => {
    s.setPromotionCode({ id: 'promo_1', code: 'SPRING', active: true });
    s.setPromotionCode({ id: 'promo_2', code: 'OLD', active: false });
    s.setCoupon({ id: 'co_1', valid: true });
    const ids = async (q) => (await call(`/stripe/v1/promotion_codes?${q}`, { headers: auth })).json.data.map((p) => p.id);
    assert.deepEqual(await ids('code=spring&active=true'), ['promo_1']);
    assert.deepEqual(await ids('code=OLD&active=true'), []);
    assert.deepEqual(await ids('code=OLD'), ['promo_2']);
    assert.deepEqual((await call('/stripe/v1/coupons/co_1', { headers: auth })).json, { id: 'co_1', object: 'coupon', valid: true });
    assert.equal((await call('/stripe/v1/coupons/co_2', { headers: auth })).status, 404);
  });

  test('stripe: a listed promotion code carries its coupon\'s applies_to only when expanded, as Stripe does', async () => {
    s.setPromotionCode({ id: 'promo_3', code: 'FULL', active: true, coupon: { id: 'co_3', valid: true, applies_to: { products: ['prod_1'] } } });
    s.setPromotionCode({ id: 'promo_4', code: 'BYID', active: true, coupon: 'co_4' });
    s.setCoupon({ id: 'co_4', valid: false, applies_to: { products: [] } });
    const first = async (q) => (await call(`/stripe/v1/promotion_codes?${q}`, { headers: auth })).json.data[0];
    const expand = '&expand%5B%5D=data.coupon.applies_to';
    assert.deepEqual((await first('code=FULL')).coupon, { id: 'co_3', valid: true });
    assert.deepEqual((await first(`code=FULL${expand}`)).coupon, { id: 'co_3', valid: true, applies_to: { products: ['prod_1'] } });
    assert.equal((await first('code=BYID')).coupon, 'co_4');
    assert.deepEqual((await first(`code=BYID${expand}`)).coupon, { id: 'co_4', object: 'coupon', valid: false, applies_to: { products: [] } });
  });

  test('email: Resend-like sending, idempotency by exact body (replay, then 409), validation and auth', async () => {
    const re = { authorization: 'Bearer re_standin', 'Idempotency-Key': 'stripe-edge:cs_1:email' };
    const mail = { from: 'Shop <orders@shop.example>', to: ['ada@example.com'], subject: 'Your license', text: 'k', html: '<p>k</p>' };
    const a = await call('/email/emails', { method: 'POST', body: mail, headers: re });
    assert.equal(a.status, 200, a.text);
    assert.match(a.json.id, /^[0-9a-f-]{36}$/);
    const b = await call('/email/emails', { method: 'POST', body: mail, headers: re });
    assert.deepEqual(b.json, a.json, 'the same key and body replay the first answer');
    assert.equal(s.emailsSent().length, 1);
    assert.equal(s.emailsSent()[0].idempotency_key, 'stripe-edge:cs_1:email');
    assert.deepEqual(s.emailsSent()[0].request, mail);
    // The same key with another body (even the same JSON reordered) is refused, as Resend does.
    const reordered = { to: mail.to, from: mail.from, subject: mail.subject, text: mail.text, html: mail.html };
    const c = await call('/email/emails', { method: 'POST', body: reordered, headers: re });
    assert.equal(c.status, 409);
    assert.equal(c.json.name, 'invalid_idempotent_request');
    assert.equal(s.emailsSent().length, 1);
    // Another key sends again; no key always sends.
    await call('/email/emails', { method: 'POST', body: mail, headers: { ...re, 'Idempotency-Key': 'other' } });
    await call('/email/emails', { method: 'POST', body: mail, headers: { authorization: re.authorization } });
    assert.equal(s.emailsSent().length, 3);
    // Validation and auth.
    const bad = await call('/email/emails', { method: 'POST', body: { from: 'x@y.z', to: [] }, headers: { authorization: re.authorization } });
    assert.equal(bad.status, 422);
    assert.equal(bad.json.name, 'validation_error');
    assert.equal((await call('/email/emails', { method: 'POST', body: mail })).status, 401);
    // Injected faults send nothing.
    s.failNext('email', 1, 503);
    const failed = await call('/email/emails', { method: 'POST', body: mail, headers: { ...re, 'Idempotency-Key': 'k2' } });
    assert.equal(failed.status, 503);
    assert.equal(s.emailsSent().length, 3);
    assert.equal(s.callsTo('email').length, 8);
  });

  test('unknown routes are 404 and recorded', async () => {
    assert.equal((await call('/nope')).status, 404);
    assert.equal(s.calls[0].service, 'unknown');
  });

  test('stop() is bounded and releases hung requests', async () => {
    const other = await startStandin();
    other.hangNext('license', 2);
    const hung = [1, 2].map(() => fetch(`${other.url}/license/generate`, { method: 'POST', body: '{}' }).then(
      () => 'answered',
      () => 'released',
    ));
    // Wait until both are recorded, then stop.
    for (let i = 0; i < 50 && other.calls.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(other.calls.length, 2);
    const t0 = Date.now();
    await other.stop();
    assert.ok(Date.now() - t0 < 4_000, `stop took ${Date.now() - t0} ms`);
    assert.deepEqual(await Promise.all(hung), ['released', 'released']);
  });
});
