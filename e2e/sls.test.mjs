// The license step and its take-back against the real Simple License Server (issue 14,
// section 5), not the stand-in: a paid purchase yields exactly one license, found by
// its metadata and accepted by /activate; 20 concurrent duplicate deliveries still make
// one; a full refund makes /validate answer revoked; a refund delivered twice revokes
// once; and every body the Worker sends passes the server's strict decoding (unknown
// fields are a 400 there, which would fail the step).
//
// Which server: SLS_URL + SLS_SERVER_KEY (+ SLS_MANAGEMENT_KEY for the metadata search
// and a slug of its own) from the environment when set, e.g. the server's own
// `docker compose up`; otherwise ../shared/sls/start.sh beside the project, started
// here and always stopped; otherwise every test is skipped, saying why. The real server
// bcrypt-checks the key on every /generate and /revoke (about 3 calls per second), so
// timeouts and waits are sized for it, not for the stand-in.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, until } from './support/logs.mjs';
import { ROOT, startWorker } from './support/worker.mjs';

const START = path.resolve(ROOT, '..', 'shared', 'sls', 'start.sh');
const STOP = path.resolve(ROOT, '..', 'shared', 'sls', 'stop.sh');
const WEBHOOK_SECRET = `whsec_${rid('sls')}`;

/** Where the server comes from, or why the suite is skipped. */
function locate() {
  if (process.env.SLS_URL && process.env.SLS_SERVER_KEY) {
    return { from: 'env', url: process.env.SLS_URL.replace(/\/$/, ''), serverKey: process.env.SLS_SERVER_KEY, managementKey: process.env.SLS_MANAGEMENT_KEY };
  }
  if (existsSync(START)) return { from: 'start.sh' };
  return { skip: `no Simple License Server: set SLS_URL and SLS_SERVER_KEY (and SLS_MANAGEMENT_KEY), or provide ${path.relative(ROOT, START)}` };
}

const located = locate();
const SKIP = located.skip ?? false;
if (SKIP) console.log(`# sls.test.mjs skipped: ${SKIP}`);

let sls = null; // { url, serverKey, managementKey, dir? }
let worker;
let slug = 'default';

before(async () => {
  if (SKIP) return;
  if (located.from === 'env') {
    sls = located;
  } else {
    const out = execFileSync('bash', [START], { encoding: 'utf8', timeout: 180_000, stdio: ['ignore', 'pipe', 'inherit'] });
    const env = Object.fromEntries(out.split('\n').filter((l) => l.includes('=')).map((l) => {
      const at = l.indexOf('=');
      return [l.slice(0, at).trim(), l.slice(at + 1).trim().replace(/^'(.*)'$/, '$1').replace(/^"(.*)"$/, '$1')];
    }));
    sls = { url: env.SLS_URL, serverKey: env.SLS_SERVER_KEY, managementKey: env.SLS_MANAGEMENT_KEY, dir: env.SLS_DIR };
    assert.ok(sls.url && sls.serverKey, `start.sh printed no SLS_URL/SLS_SERVER_KEY:\n${out}`);
  }
  if (sls.managementKey) {
    const name = `edge-${rid('s').slice(-10).toLowerCase().replace(/[^a-z0-9]/g, '')}`;
    const res = await slsCall('POST', '/management/slugs', { name, max_activations: 3, expiration_type: 'forever' }, sls.managementKey);
    assert.equal(res.status, 201, res.text);
    slug = name;
  }
  worker = await startWorker({
    vars: {
      LICENSE_SERVER_URL: sls.url,
      // The largest per-call timeout: 20 calls queued behind bcrypt take seconds.
      UPSTREAM_TIMEOUT_MS: '9000',
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, LICENSE_SERVER_API_KEY: sls.serverKey },
  });
}, { timeout: 240_000 });

after(async () => {
  const output = worker?.logs() ?? '';
  await worker?.stop();
  if (sls?.dir) {
    try { execFileSync('bash', [STOP, sls.dir], { timeout: 60_000, stdio: 'inherit' }); } catch (e) { console.error(`stop.sh: ${e.message}`); }
  }
  if (sls) for (const secret of [sls.serverKey, sls.managementKey, WEBHOOK_SECRET].filter(Boolean)) {
    assert.ok(!output.includes(secret), 'a key reached the Worker output');
  }
});

async function slsCall(method, pathname, body, key) {
  const res = await fetch(`${sls.url}${pathname}`, {
    method,
    headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(key ? { authorization: `Bearer ${key}` } : {}) },
    body: body ? JSON.stringify(body) : undefined,
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, json, text };
}

/** Licenses the server finds for `text` (its metadata search), as an array. */
async function search(text) {
  const res = await slsCall('GET', `/management/licenses?q=${encodeURIComponent(text)}`, null, sls.managementKey);
  assert.equal(res.status, 200, res.text);
  const list = Array.isArray(res.json) ? res.json : (res.json.licenses ?? res.json.data ?? res.json.items ?? []);
  return list.filter((l) => JSON.stringify(l).includes(text));
}

function paid() {
  return checkoutSession({ customer: rid('cus'), metadata: { slug }, customer_details: { email: 'sam.sls@example.com' } });
}

/** Delivers like Stripe: again while not 2xx, bounded (the real server is slow). */
async function sendUntilOk(evt, ms = 90_000) {
  const payload = JSON.stringify(evt);
  let last;
  await until(async () => {
    last = await deliver(worker.url, payload, { secret: WEBHOOK_SECRET });
    return last.status === 200;
  }, `a 200 for ${evt.type}`, ms, () => `${last?.status} ${last?.text}`);
  return last;
}

async function stepRow(sessionId, step) {
  return (await worker.d1(`SELECT state, attempts, result, last_error FROM steps WHERE session_id = '${sessionId}' AND step = '${step}'`))[0];
}

const refund = (pi) => event('charge.refunded', { id: rid('ch'), object: 'charge', payment_intent: pi, amount: 2000, amount_refunded: 2000, refunded: true });

test('a paid purchase yields exactly one license, found by its metadata, that /activate accepts', { skip: SKIP, timeout: 120_000 }, async () => {
  const session = paid();
  const res = await sendUntilOk(event('checkout.session.completed', session));
  assert.equal(res.json.purchase_state, 'fulfilled', res.text);
  const row = await stepRow(session.id, 'license');
  assert.equal(row.state, 'done', row.last_error);
  if (sls.managementKey) {
    const found = await search(session.id);
    assert.equal(found.length, 1, JSON.stringify(found));
    assert.equal(found[0].license_key, row.result);
    assert.equal(found[0].metadata?.provider_checkout_session_id, session.id);
  } else {
    console.log('# no SLS_MANAGEMENT_KEY: the metadata search is not checked');
  }
  const activated = await slsCall('POST', '/activate', { license_key: row.result, fingerprint: 'e2e-machine-1' });
  assert.equal(activated.status, 200, activated.text);
  assert.equal(activated.json.valid, true, activated.text);
});

test('20 concurrent duplicate deliveries still make one license', { skip: SKIP, timeout: 180_000 }, async () => {
  const session = paid();
  const evt = event('checkout.session.completed', session);
  const payload = JSON.stringify(evt);
  const answers = await Promise.all(Array.from({ length: 20 }, () => deliver(worker.url, payload, { secret: WEBHOOK_SECRET })));
  for (const a of answers) assert.ok([200, 409, 503].includes(a.status), `${a.status} ${a.text}`);
  await sendUntilOk(evt);
  const row = await stepRow(session.id, 'license');
  assert.equal(row.state, 'done', row.last_error);
  if (sls.managementKey) {
    const found = await search(session.id);
    assert.equal(found.length, 1, `licenses for ${session.id}: ${JSON.stringify(found.map((l) => l.license_key))}`);
    assert.equal(found[0].license_key, row.result);
  }
});

test('a full refund revokes the license: /validate answers revoked; delivered twice, revoked once', { skip: SKIP, timeout: 180_000 }, async () => {
  const session = paid();
  await sendUntilOk(event('checkout.session.completed', session));
  const { result: key } = await stepRow(session.id, 'license');
  await slsCall('POST', '/activate', { license_key: key, fingerprint: 'e2e-machine-2' });

  const evt = refund(session.payment_intent);
  const first = await sendUntilOk(evt);
  assert.equal(first.json.purchase_state, 'refunded', first.text);
  const again = await sendUntilOk(evt);
  assert.equal(again.json.status, 'duplicate');
  // A second refund event for the same payment, twice at once: nothing more.
  const other = refund(session.payment_intent);
  await Promise.all([sendUntilOk(other), sendUntilOk(other)]);

  const revoke = await stepRow(session.id, 'revoke_license');
  assert.equal(revoke.state, 'done', revoke.last_error);
  assert.equal(revoke.attempts, 1, 'one claim, one call');
  assert.match(revoke.result, /^revoked:/);
  const done = await linesUntil(worker, 0, (l) => l.session_id === session.id && l.step === 'revoke_license' && l.msg === 'step done', 1, 'the revoke', 10_000);
  assert.equal(done.length, 1);

  const validated = await slsCall('POST', '/validate', { license_key: key, fingerprint: 'e2e-machine-2' });
  assert.equal(validated.status, 200, validated.text);
  assert.equal(validated.json.valid, false);
  assert.equal(validated.json.status, 'revoked', validated.text);
  // The server itself confirms it is idempotent: the same revoked_at again.
  const direct = await slsCall('POST', '/revoke', { license_key: key }, sls.serverKey);
  assert.equal(direct.status, 200, direct.text);
  assert.equal(`revoked:${direct.json.revoked_at}`, revoke.result);
});
