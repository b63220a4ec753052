// The e-mail step (issue 13, section 2), end to end under `wrangler dev`: the buyer's
// license through Resend's stand-in (which, like Resend, replays a key sent with the
// same body and refuses it with another), exactly once across duplicates, retries and
// replays; the ops API's resend-email; and what never reaches the Worker's output.
//
// Two Workers share one stand-in: `worker` (license server, Stripe API, Resend, ops API)
// and `half` (RESEND_API_KEY without EMAIL_FROM: the step must fail closed).

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, beforeEach, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, logLines, waitForLine } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('email')}`;
const LICENSE_KEY = `lk_${rid('email')}`;
const STRIPE_KEY = `sk_test_${rid('email')}`;
const RESEND_KEY = `re_${rid('email')}`;
const ADMIN_TOKEN = `adm_${rid('email')}`;
const SECRETS = [WEBHOOK_SECRET, LICENSE_KEY, STRIPE_KEY, RESEND_KEY, ADMIN_TOKEN];
const FROM = 'Shop <orders@shop.example>';
const BUYER = { email: 'grace.emailtest@example.com', name: 'Grace Emailtest' };
// A template with markup-looking text: the html part must escape it.
const TEXT = 'Hi! Your {product} <key>: {license_key}\\n\\nOrder {order_id} & help: {support}';

let standin;
let worker;
let half;
/** Every license key the stand-in issued: none may reach a log line. */
const issued = new Set();

before(async () => {
  standin = await startStandin();
  const vars = {
    LICENSE_SERVER_URL: `${standin.url}/license`,
    STRIPE_API_BASE: `${standin.url}/stripe`,
    EMAIL_API_BASE: `${standin.url}/email`,
    UPSTREAM_TIMEOUT_MS: '1500',
  };
  const secrets = {
    STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
    LICENSE_SERVER_API_KEY: LICENSE_KEY,
    STRIPE_API_KEY: STRIPE_KEY,
    RESEND_API_KEY: RESEND_KEY,
  };
  [worker, half] = await Promise.all([
    startWorker({
      vars: { ...vars, EMAIL_FROM: FROM, EMAIL_TEXT: TEXT, EMAIL_SUPPORT: 'help@shop.example' },
      secrets: { ...secrets, ADMIN_TOKEN },
    }),
    startWorker({ vars, secrets }),
  ]);
});

after(async () => {
  await Promise.all([worker?.stop(), half?.stop()]);
  await standin?.stop();
});

beforeEach(() => {
  for (const l of standin.licensesIssued()) issued.add(l.license_key);
  standin.reset();
});

// ------------------------------------------------------------------ helpers

/** A paid purchase with a license; the stand-in's Stripe API knows its session. */
function purchase({ email = true } = {}) {
  const session = checkoutSession({
    customer: rid('cus'),
    metadata: { slug: 'pro' },
    customer_details: email ? BUYER : { name: BUYER.name },
    payment_intent: null,
  });
  standin.setSession(session);
  return { session, evt: event('checkout.session.completed', session) };
}

const send = (evt, target = worker) => deliver(target.url, JSON.stringify(evt), { secret: WEBHOOK_SECRET });

async function admin(path, headers = {}) {
  const res = await fetch(worker.url + path, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...headers },
    signal: AbortSignal.timeout(20_000),
  });
  const text = await res.text();
  return { status: res.status, text, json: JSON.parse(text) };
}

const stepKey = (sessionId) => `stripe-edge:${sessionId}:email`;
/** Calls Resend's stand-in received under one key. */
const emailCalls = (key) => standin.callsTo('email').filter((c) => c.headers['idempotency-key'] === key);
const sentTo = (sessionId) => standin.emailsSent().filter((e) => e.idempotency_key.startsWith(stepKey(sessionId)));

async function steps(sessionId) {
  const rows = await worker.d1(`SELECT step, state, attempts, last_error, result FROM steps WHERE session_id = '${sessionId}' ORDER BY step`);
  return Object.fromEntries(rows.map((r) => [r.step, r]));
}

async function purchaseState(sessionId) {
  return (await worker.d1(`SELECT state FROM purchases WHERE session_id = '${sessionId}'`))[0]?.state;
}

// The Worker's fingerprint: HMAC-SHA256 keyed by its (first) webhook signing secret.
const fingerprint = (token) =>
  `tok_${createHmac('sha256', WEBHOOK_SECRET).update('stripe-edge admin token:').update(token).digest('hex').slice(0, 12)}`;

// ------------------------------------------------------------------ tests

test('a paid purchase gets one e-mail with its license, the documented request, across duplicate deliveries', async () => {
  const { session, evt } = purchase();
  const first = await send(evt);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.purchase_state, 'fulfilled');
  const [license] = standin.licensesIssued();
  const sent = standin.emailsSent();
  assert.equal(sent.length, 1);
  const [call] = emailCalls(stepKey(session.id));
  assert.equal(call.method, 'POST');
  assert.equal(call.path, '/email/emails');
  assert.equal(call.headers.authorization, `Bearer ${RESEND_KEY}`);
  assert.equal(call.headers['content-type'], 'application/json');
  assert.deepEqual(Object.keys(call.body).sort(), ['from', 'html', 'subject', 'text', 'to']);
  assert.equal(call.body.from, FROM);
  assert.deepEqual(call.body.to, [BUYER.email]);
  assert.equal(call.body.subject, 'Your license for pro');
  assert.equal(call.body.text, `Hi! Your pro <key>: ${license.license_key}\n\nOrder ${session.id} & help: help@shop.example`);
  assert.equal(
    call.body.html,
    `<!doctype html><html><body><p>Hi! Your pro &lt;key&gt;: ${license.license_key}</p><p>Order ${session.id} &amp; help: help@shop.example</p></body></html>`,
  );
  const rows = await steps(session.id);
  assert.deepEqual([rows.license.state, rows.email.state, rows.email.result], ['done', 'done', sent[0].id]);
  assert.ok(!JSON.stringify(rows).includes(BUYER.email), 'no address in the ledger');

  const again = await send(evt);
  assert.equal(again.status, 200);
  assert.equal(again.json.status, 'duplicate');
  const later = await send(event('checkout.session.async_payment_succeeded', session));
  assert.equal(later.status, 200);
  assert.equal(standin.emailsSent().length, 1, 'one e-mail');
  assert.equal(standin.callsTo('email').length, 1, 'no call at all after it was done');
});

test('the e-mail step failing 503 twice sends exactly one e-mail, byte-identical bodies under one key', async () => {
  const { session, evt } = purchase();
  standin.failNext('email', 2, 503);
  const from = worker.logs().length;
  assert.equal((await send(evt)).status, 503);
  assert.equal((await send(evt)).status, 503);
  const third = await send(evt);
  assert.equal(third.status, 200, third.text);
  assert.equal(third.json.purchase_state, 'fulfilled');
  const calls = emailCalls(stepKey(session.id));
  assert.equal(calls.length, 3);
  assert.ok(calls.every((c) => c.raw === calls[0].raw), 'every retry sent the same bytes');
  assert.equal(standin.emailsSent().length, 1);
  assert.equal(standin.licensesIssued().length, 1);
  const retried = await linesUntil(
    worker, from,
    (l) => l.msg === 'step will be retried' && l.session_id === session.id && l.step === 'email',
    2, 'the e-mail step\'s retry lines', 15_000,
  );
  assert.ok(retried.every((l) => l.reason === 'e-mail service answered 503'), JSON.stringify(retried));
  const rows = await steps(session.id);
  assert.deepEqual([rows.email.state, rows.email.attempts], ['done', 3]);
});

test('a permanent 422 fails the step and the purchase; a replay sends exactly once', async () => {
  const { session, evt } = purchase();
  standin.failNext('email', 1, 422);
  const first = await send(evt);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.json.status, 'failed');
  let rows = await steps(session.id);
  assert.deepEqual([rows.email.state, rows.email.last_error], ['failed', 'e-mail service answered 422']);
  assert.equal(rows.license.state, 'done');
  assert.equal(await purchaseState(session.id), 'failed');
  assert.equal((await send(evt)).json.status, 'duplicate');
  assert.equal(standin.callsTo('email').length, 1, 'not retried by redeliveries');

  const replay = await admin(`/admin/purchases/${session.id}/replay`);
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.outcome, 'complete');
  assert.equal(replay.json.reset, 1);
  assert.equal(standin.emailsSent().length, 1);
  const calls = emailCalls(stepKey(session.id));
  assert.equal(calls.length, 2);
  assert.equal(calls[1].raw, calls[0].raw);
  assert.equal(standin.licensesIssued().length, 1);
  rows = await steps(session.id);
  assert.equal(rows.email.state, 'done');
  assert.equal(await purchaseState(session.id), 'fulfilled');

  const again = await admin(`/admin/purchases/${session.id}/replay`);
  assert.equal(again.json.outcome, 'complete');
  assert.equal(standin.callsTo('email').length, 2, 'a second replay sends nothing');
});

test('no license (its step failed) means no e-mail; after the replay makes it, exactly one', async () => {
  const { session, evt } = purchase();
  standin.failNext('license', 1, 400);
  const first = await send(evt);
  assert.equal(first.json.status, 'failed');
  assert.equal(standin.callsTo('email').length, 0);
  const rows = await steps(session.id);
  assert.deepEqual([rows.email.state, rows.email.last_error], ['failed', 'no license to send: the license step failed']);

  const replay = await admin(`/admin/purchases/${session.id}/replay`);
  assert.equal(replay.status, 200, replay.text);
  assert.equal(replay.json.outcome, 'complete');
  assert.equal(replay.json.reset, 2);
  const [license] = standin.licensesIssued();
  const sent = standin.emailsSent();
  assert.equal(sent.length, 1);
  assert.ok(sent[0].request.text.includes(license.license_key));
});

test('resend-email sends exactly one more e-mail, under a new key, logged with the admin fingerprint', async () => {
  const { session, evt } = purchase();
  assert.equal((await send(evt)).json.purchase_state, 'fulfilled');
  assert.equal(sentTo(session.id).length, 1);
  const from = worker.logs().length;
  const res = await admin(`/admin/purchases/${session.id}/resend-email`);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.outcome, 'sent');
  assert.equal(res.json.kind, 'license');
  assert.ok(!res.text.includes(BUYER.email));
  const sent = sentTo(session.id);
  assert.equal(sent.length, 2, 'exactly one more');
  assert.equal(sent[1].idempotency_key, `${stepKey(session.id)}:resend:${res.json.resend}`);
  assert.equal(sent[1].id, res.json.email_id);
  assert.equal(sent[1].raw, sent[0].raw, 'the same e-mail');
  const [line] = await linesUntil(
    worker, from,
    (l) => l.msg === 'admin call' && l.route === 'resend_email' && l.session_id === session.id,
    1, 'the resend\'s admin call line', 15_000,
  );
  assert.deepEqual([line.who, line.status, line.resend], [fingerprint(ADMIN_TOKEN), 200, res.json.resend]);
  const rows = await steps(session.id);
  assert.equal(rows.email.result, sent[0].id, 'the step keeps its first e-mail');

  const unknown = await admin('/admin/purchases/cs_test_unknown/resend-email');
  assert.equal(unknown.status, 404);
  assert.equal(sentTo(session.id).length, 2);
});

test('resend-email retried with the same Idempotency-Key sends nothing more; another key sends one more', async () => {
  const { session, evt } = purchase();
  assert.equal((await send(evt)).json.purchase_state, 'fulfilled');
  const ticket = `ticket-${rid('t')}`;
  const from = worker.logs().length;
  const first = await admin(`/admin/purchases/${session.id}/resend-email`, { 'idempotency-key': ticket });
  assert.equal(first.status, 200, first.text);
  assert.match(first.json.resend, /^key-[0-9a-f]{16}$/);
  // The retry of a call whose answer was lost: Resend answers the first e-mail.
  const retry = await admin(`/admin/purchases/${session.id}/resend-email`, { 'idempotency-key': ticket });
  assert.equal(retry.status, 200, retry.text);
  assert.deepEqual([retry.json.resend, retry.json.email_id], [first.json.resend, first.json.email_id]);
  let sent = sentTo(session.id);
  assert.equal(sent.length, 2, 'the step\'s e-mail and one resend');
  assert.equal(sent[1].idempotency_key, `${stepKey(session.id)}:resend:${first.json.resend}`);
  const other = await admin(`/admin/purchases/${session.id}/resend-email`, { 'idempotency-key': `${ticket}-b` });
  assert.equal(other.status, 200, other.text);
  sent = sentTo(session.id);
  assert.equal(sent.length, 3, 'another key sends one more');
  const bad = await admin(`/admin/purchases/${session.id}/resend-email`, { 'idempotency-key': 'not a key' });
  assert.equal(bad.status, 400, bad.text);
  assert.equal(sentTo(session.id).length, 3);
  // The calls' own lines are in (the last resend's, an info line, and the refusal, a warn
  // line on the other stream): only now does "never logged" mean something.
  await waitForLine(
    worker,
    (l) => l.msg === 'admin call' && l.route === 'resend_email' && l.session_id === session.id && l.resend === other.json.resend,
    { from },
  );
  await waitForLine(worker, (l) => l.msg === 'admin refused' && l.reason === 'admin_bad_request', { from });
  assert.ok(!worker.logs().includes(ticket), 'the caller\'s key is never logged');
});

test('a purchase without an e-mail address records the step as none:no_email', async () => {
  const { session, evt } = purchase({ email: false });
  const res = await send(evt);
  assert.equal(res.json.purchase_state, 'fulfilled');
  const rows = await steps(session.id);
  assert.deepEqual([rows.email.state, rows.email.result], ['done', 'none:no_email']);
  assert.equal(standin.callsTo('email').length, 0);
});

test('RESEND_API_KEY without EMAIL_FROM fails closed: 503, a line naming EMAIL_FROM, nothing sent', async () => {
  const { session, evt } = purchase();
  const from = half.logs().length;
  const res = await send(evt, half);
  assert.equal(res.status, 503, res.text);
  await linesUntil(
    half, from,
    (l) => l.msg === 'step not configured' && l.session_id === session.id && l.step === 'email' && l.setting === 'EMAIL_FROM',
    1, 'step not configured naming EMAIL_FROM', 15_000,
  );
  assert.equal(standin.callsTo('email').length, 0);
  assert.equal(standin.licensesIssued().length, 1, 'the license step still ran');
  const health = await fetch(`${half.url}/healthz`, { signal: AbortSignal.timeout(10_000) }).then((r) => r.json());
  assert.ok(health.missing.includes('EMAIL_FROM'), JSON.stringify(health));
});

test('no e-mail address, license key or API key in any log line', () => {
  for (const l of standin.licensesIssued()) issued.add(l.license_key);
  assert.ok(issued.size >= 5, `licenses issued: ${issued.size}`);
  for (const [name, target] of [['worker', worker], ['half', half]]) {
    const output = target.logs();
    assert.ok(logLines(target).length > 0, `${name} logged nothing`);
    for (const needle of [BUYER.email, BUYER.name, ...SECRETS, ...issued]) {
      assert.ok(!output.includes(needle), `${name}'s output contains ${needle}`);
    }
  }
});
