// The load and fault soak (bench/soak.mjs), small enough for `npm test`: 150 purchases
// (about 550 signed deliveries), 20 % duplicated, half of those concurrently, while the
// stand-in upstream fails 30 % of calls with 503, hangs, closes and loses answers.
// Fails on any duplicate license or shipment, any lost purchase, any answer other than
// 200, 409 or the injected kind of 503, or a workerd RSS that does not stay flat.
// The full-size run is `node bench/soak.mjs` (BENCHMARKS.md, "Load and fault soak").

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { runSoak } from '../bench/soak.mjs';

test('soak: 150 purchases under duplicates and injected faults, each fulfilled exactly once', { timeout: 240_000 }, async (t) => {
  const seed = process.env.SOAK_SEED || 'npmtest';
  const result = await runSoak({
    purchases: 150,
    concurrency: 8,
    seed,
    deadlineMs: 150_000,
    log: () => {},
  });
  for (const line of result.report.split('\n')) t.diagnostic(line);
  const c = result.counts;
  assert.deepEqual(result.problems, [], `reproduce with SOAK_SEED=${seed} SOAK_PURCHASES=150 SOAK_CONCURRENCY=8 node bench/soak.mjs`);
  assert.equal(c.licenses, c.expectedFulfilments);
  assert.equal(c.shipments, c.expectedFulfilments);
  assert.deepEqual(c.duplicateFulfilments, { licenses: 0, shipments: 0 });
  assert.deepEqual(c.lost, { licenses: 0, shipments: 0, purchases: 0 });
  assert.equal(c.unexpected, 0);
  // The soak really soaked: duplicates, faults and redeliveries all happened.
  assert.ok(c.concurrentDuplicates > 0 && c.lateDuplicates > 0, 'both kinds of duplicates were sent');
  assert.ok(c.retry503 > 0 && c.redeliveries > 0, 'injected failures were answered 503 and redelivered');
  const injected = Object.values(c.injected).reduce((a, s) => ({ fail: a.fail + s.fail, hang: a.hang + s.hang, close: a.close + s.close }), { fail: 0, hang: 0, close: 0 });
  assert.ok(injected.fail > 0 && injected.hang > 0 && injected.close > 0, JSON.stringify(injected));
  assert.equal(result.rss.flat, true);
});
