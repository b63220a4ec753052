// Self-test of the stand-in's seeded random faults (standin.chaos), which the load and
// fault soak relies on; no Worker needed.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';

import { startStandin } from './support/standin.mjs';

let s;

/** POSTs a license request with `key`; resolves with the status, or the error code when no answer came. */
async function license(key, timeoutMs = 5_000) {
  try {
    const res = await fetch(`${s.url}/license/generate`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': key },
      body: JSON.stringify({ slug: 'pro' }),
      signal: AbortSignal.timeout(timeoutMs),
    });
    await res.arrayBuffer();
    return res.status;
  } catch (err) {
    return err.name === 'TimeoutError' ? 'timeout' : 'no-answer';
  }
}

/** The fates of attempts 0..n-1 of 40 keys under `seed`, read from the recorded calls. */
async function fates(seed, n = 3) {
  s.reset();
  s.chaos({ failRate: 0.3, hangRate: 0.1, closeRate: 0.1, slowRate: 0.1, hangMs: 200, seed });
  const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
  // Interleave the keys differently from run to run: fates must not depend on it.
  for (let a = 0; a < n; a += 1) {
    const order = Math.random() < 0.5 ? keys : [...keys].reverse();
    await Promise.all(order.map((k) => license(k)));
  }
  const byKey = {};
  for (const c of s.calls) (byKey[c.headers['idempotency-key']] ??= []).push(c.chaos ?? 'none');
  return { byKey, stats: s.chaosStats() };
}

describe('stand-in chaos', { timeout: 60_000 }, () => {
  before(async () => { s = await startStandin(); });
  after(async () => { await s.stop(); });
  beforeEach(() => s.reset());

  test('the same seed gives every attempt of every call the same fate, whatever the interleaving', async () => {
    const a = await fates('alpha');
    const b = await fates('alpha');
    const c = await fates('beta');
    assert.deepEqual(a.byKey, b.byKey);
    assert.notDeepEqual(a.byKey, c.byKey);
    const kinds = new Set(Object.values(a.byKey).flat());
    for (const k of ['none', 'fail', 'hang', 'close', 'slow']) assert.ok(kinds.has(k), `${k} drawn in 120 calls`);
    const drawn = Object.values(a.stats.license).reduce((x, y) => x + y, 0);
    assert.equal(drawn, 120);
  });

  test('fail answers 503 and does no work; hang ends on its own; slow does the work and answers late', async () => {
    s.chaos({ failRate: 1, seed: 1 });
    assert.equal(await license('f1'), 503);
    assert.equal(s.licensesIssued().length, 0);

    s.chaos({ failRate: 0, hangRate: 1, hangMs: 300, seed: 1 });
    const started = Date.now();
    assert.equal(await license('h1'), 'no-answer', 'the socket is destroyed after hangMs');
    assert.ok(Date.now() - started < 3_000);
    assert.equal(s.licensesIssued().length, 0);

    s.chaos({ failRate: 0, closeRate: 1, seed: 1 });
    assert.equal(await license('c1'), 'no-answer');
    assert.equal(s.licensesIssued().length, 0);

    s.chaos({ failRate: 0, slowRate: 1, hangMs: 1_000, seed: 1 });
    assert.equal(await license('s1', 300), 'timeout', 'the caller gives up first');
    assert.equal(s.licensesIssued().length, 1, 'but the work was done');
    s.chaosOff();
    assert.equal(await license('s1'), 200);
    assert.equal(s.licensesIssued().length, 1, 'the retry under the same key is replayed');
    assert.equal(s.calls.at(-1).replayed, true);
  });

  test('queued faults come first; reset() and chaosOff() turn chaos off; bad rates are refused', async () => {
    s.chaos({ failRate: 1, seed: 1 });
    s.failNext('license', 1, 429);
    assert.equal(await license('q1'), 429);
    assert.equal(await license('q2'), 503);
    s.reset();
    assert.equal(s.chaosStats(), null);
    assert.equal(await license('q3'), 200);
    assert.throws(() => s.chaos({ failRate: 0.6, hangRate: 0.6 }), /add up/);
    assert.throws(() => s.chaos({ failRate: -1 }), /failRate/);
    assert.throws(() => s.chaos({ services: ['nope'] }), /unknown service/);
  });
});
