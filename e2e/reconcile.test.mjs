// Reconciliation (issues 5 and 15): the scheduled run lists recent events from the
// Stripe API (the stand-in) and ingests the ones this endpoint never received, so an
// outage of the endpoint loses no purchase, and works off a backlog over several
// budget-bound runs. Runs the built Worker under `wrangler dev`; the cron is fired
// through wrangler's local scheduled endpoint.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, waitForLine } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('reconcile')}`;
const STRIPE_KEY = `sk_test_${rid('reconcile')}`;
const LICENSE_KEY = `lk_${rid('reconcile')}`;
const SCHEDULED = '/cdn-cgi/local/scheduled?cron=*/5+*+*+*+*';
// A short reconciliation budget, so the backlog below needs several runs in a bounded time.
const BUDGET_MS = 5_000;

let standin;
let worker;

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: {
      LICENSE_SERVER_URL: `${standin.url}/license`,
      STRIPE_API_BASE: `${standin.url}/stripe`,
      RECONCILE_BUDGET_MS: String(BUDGET_MS),
    },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, LICENSE_SERVER_API_KEY: LICENSE_KEY, STRIPE_API_KEY: STRIPE_KEY },
  });
});

after(async () => {
  await worker?.stop();
  await standin?.stop();
});

/**
 * Fires the cron and resolves with its `scheduled run` line (bounded wait) and the log offset
 * before it. The run's warn lines go to stderr, its `scheduled run` line to stdout: await them
 * by what they say, never read them as "whatever followed" the summary.
 */
async function runScheduled() {
  const from = worker.logs().length;
  const res = await fetch(worker.url + SCHEDULED);
  assert.equal(res.status, 200, await res.text());
  const [line] = await linesUntil(worker, from, (l) => l.msg === 'scheduled run', 1, 'the scheduled run line', 30_000);
  return { line, from };
}

function paidSession() {
  return checkoutSession({ metadata: { slug: 'pro' }, customer_details: { email: 'lost@example.com', name: 'Lost Buyer' } });
}

test('an event Stripe has but never delivered is ingested and fulfilled once', async () => {
  standin.reset();
  const session = paidSession();
  // Created a few seconds ago: a run lists up to the second it started, not after it.
  const lost = event('checkout.session.completed', session, { created: Math.floor(Date.now() / 1000) - 5 });
  standin.setEvents([lost]);

  const { line, from } = await runScheduled();
  assert.equal(line.reconciled, 1, JSON.stringify(line));

  // The first run walks windows over the 3 days before it (a few calls over empty time).
  const listing = standin.callsTo('stripe').filter((c) => c.path === '/stripe/v1/events');
  assert.ok(listing.length >= 1 && listing.length <= 5, `${listing.length} listings`);
  assert.equal(listing[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.deepEqual(new URLSearchParams(listing[0].search).getAll('types[]'), [
    'checkout.session.completed',
    'checkout.session.async_payment_succeeded',
    'checkout.session.async_payment_failed',
    'charge.refunded',
    'charge.dispute.created',
    'charge.dispute.closed',
    'customer.subscription.deleted',
  ]);

  assert.equal(standin.licensesIssued().length, 1);
  const rows = await worker.d1(`SELECT e.id, p.state FROM events e JOIN purchases p ON p.session_id = e.object_id WHERE e.id = '${lost.id}'`);
  assert.deepEqual(rows, [{ id: lost.id, state: 'fulfilled' }]);
  // A warn line (stderr): the `scheduled run` line (stdout) does not prove it arrived.
  await waitForLine(worker, (l) => l.msg === 'reconciled an event never delivered' && l.event_id === lost.id, { from });

  // The next run lists it again (overlap) but ingests nothing twice.
  const second = await runScheduled();
  assert.equal(second.line.reconciled, 0);
  assert.equal(standin.licensesIssued().length, 1);
});

test('an event that was delivered is left to its delivery', async () => {
  standin.reset();
  const delivered = event('checkout.session.completed', paidSession(), { created: Math.floor(Date.now() / 1000) - 5 });
  const payload = JSON.stringify(delivered);
  const res = await deliver(worker.url, payload, { secret: WEBHOOK_SECRET });
  assert.equal(res.status, 200, res.text);
  assert.equal(standin.licensesIssued().length, 1);

  standin.setEvents([delivered]);
  const { line } = await runScheduled();
  assert.equal(line.reconciled, 0);
  assert.equal(standin.callsTo('license').length, 1, 'no second license call');
});

// The scenario scaled to a bounded run time on a loaded 2-core machine: an
// endpoint outage of 3 days leaves 200 never-delivered Checkout events (not 2,500),
// listed 20 a page (not 100: 10 pages), each page answered after 400 ms (not 1 s), and
// a 5 s reconciliation budget (not 20 s). The full-size scenario runs natively over the
// fake clock (core/src/maintenance/tests.rs).
test('a backlog over many slow pages is worked off over several runs, each event once', async () => {
  standin.reset();
  const n = 200;
  const nowSecs = Math.floor(Date.now() / 1000);
  const outage = 3 * 86_400;
  const tag = rid('bl').replace(/^bl_/, '');
  const backlog = [];
  for (let k = 0; k < n; k += 1) {
    const session = checkoutSession({ metadata: { slug: 'pro' }, customer_details: { email: 'lost@example.com', name: 'Lost Buyer' } });
    // Newest first, as Stripe lists them, spread over the outage.
    backlog.push(event('checkout.session.completed', session, {
      id: `evt_${tag}x${String(k).padStart(4, '0')}`,
      created: nowSecs - 30 - Math.floor((k * (outage - 600)) / n),
    }));
  }
  standin.setEvents(backlog);
  standin.setEventsListing({ pageSize: 20, delayMs: 400 });
  // The outage began 3 days ago: the cursor was left there by the last run before it.
  await worker.d1(`UPDATE cursors SET value = ${nowSecs - outage} WHERE name = 'reconciled_until'`);

  const runs = [];
  const deadline = Date.now() + 240_000;
  for (;;) {
    const { line, from } = await runScheduled();
    runs.push({ line, from });
    // Each purchase is fulfilled by the run that ingested it, never left to the re-drive.
    assert.equal(line.redriven, 0, JSON.stringify(line));
    if (line.reconciled === 0 && line.reconcile_behind_secs === 0) break;
    assert.ok(Date.now() < deadline, `not converged after ${runs.length} runs`);
  }
  const lines = runs.map((r) => r.line);
  assert.ok(runs.length >= 3, `the budget spread the backlog over several runs: ${JSON.stringify(lines)}`);
  // A run that stopped behind says so in a warn line of its own, naming how far behind.
  const behind = runs.find((r) => r.line.reconcile_behind_secs > 0);
  assert.ok(behind, `some run stopped behind: ${JSON.stringify(lines)}`);
  await waitForLine(
    worker,
    (l) => l.msg === 'reconciliation continues next run' && l.behind_secs === behind.line.reconcile_behind_secs,
    { from: behind.from },
  );
  assert.equal(lines.reduce((sum, l) => sum + l.reconciled, 0), n, 'each event ingested exactly once');

  const issued = standin.licensesIssued();
  assert.equal(issued.length, n, 'one license per purchase');
  assert.equal(new Set(issued.map((l) => l.idempotency_key)).size, n);
  const [{ fulfilled }] = await worker.d1(`SELECT COUNT(*) AS fulfilled FROM events e JOIN purchases p ON p.session_id = e.object_id
    WHERE e.id LIKE 'evt_${tag}x%' AND p.state = 'fulfilled'`);
  assert.equal(fulfilled, n);

  // Every listing is a created window, paged within it.
  const listings = standin.callsTo('stripe').filter((c) => c.path === '/stripe/v1/events');
  for (const c of listings) {
    const q = new URLSearchParams(c.search);
    assert.ok(q.has('created[gte]') && q.has('created[lt]'), c.search);
    assert.ok(Number(q.get('created[gte]')) < Number(q.get('created[lt]')), c.search);
  }
  assert.ok(listings.some((c) => new URLSearchParams(c.search).has('starting_after')));

  // The last run found nothing new and left the cursor at the present.
  const [{ value }] = await worker.d1("SELECT value FROM cursors WHERE name = 'reconciled_until'");
  assert.ok(Math.abs(value - Math.floor(Date.now() / 1000)) < 60, `cursor ${value}`);
});

test('the Worker output carries none of the keys or customer data used here', () => {
  const out = worker.logs();
  for (const needle of [WEBHOOK_SECRET, STRIPE_KEY, LICENSE_KEY, 'lost@example.com', 'Lost Buyer']) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
});
