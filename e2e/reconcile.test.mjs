// Reconciliation (issue 5): the scheduled run lists recent Checkout events from the
// Stripe API (the stand-in) and ingests the ones this endpoint never received, so an
// outage of the endpoint loses no purchase. Runs the built Worker under `wrangler dev`;
// the cron is fired through wrangler's local scheduled endpoint.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { startStandin } from './support/standin.mjs';
import { checkoutSession, deliver, event, rid } from './support/stripe.mjs';
import { linesUntil, logLines } from './support/logs.mjs';
import { startWorker } from './support/worker.mjs';

const WEBHOOK_SECRET = `whsec_${rid('reconcile')}`;
const STRIPE_KEY = `sk_test_${rid('reconcile')}`;
const LICENSE_KEY = `lk_${rid('reconcile')}`;
const SCHEDULED = '/cdn-cgi/local/scheduled?cron=*/5+*+*+*+*';

let standin;
let worker;

before(async () => {
  standin = await startStandin();
  worker = await startWorker({
    vars: { LICENSE_SERVER_URL: `${standin.url}/license`, STRIPE_API_BASE: `${standin.url}/stripe` },
    secrets: { STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET, LICENSE_SERVER_API_KEY: LICENSE_KEY, STRIPE_API_KEY: STRIPE_KEY },
  });
});

after(async () => {
  await worker?.stop();
  await standin?.stop();
});

/** Fires the cron and resolves with its `scheduled run` line and all lines since (bounded wait). */
async function runScheduled() {
  const from = worker.logs().length;
  const res = await fetch(worker.url + SCHEDULED);
  assert.equal(res.status, 200, await res.text());
  const [line] = await linesUntil(worker, from, (l) => l.msg === 'scheduled run', 1, 'the scheduled run line', 20_000);
  return { line, log: logLines(worker, from) };
}

function paidSession() {
  return checkoutSession({ metadata: { slug: 'pro' }, customer_details: { email: 'lost@example.com', name: 'Lost Buyer' } });
}

test('an event Stripe has but never delivered is ingested and fulfilled once', async () => {
  standin.reset();
  const session = paidSession();
  const lost = event('checkout.session.completed', session);
  standin.setEvents([lost]);

  const { line, log } = await runScheduled();
  assert.equal(line.reconciled, 1, JSON.stringify(line));

  const listing = standin.callsTo('stripe').filter((c) => c.path === '/stripe/v1/events');
  assert.equal(listing.length, 1);
  assert.equal(listing[0].headers.authorization, `Bearer ${STRIPE_KEY}`);
  assert.deepEqual(new URLSearchParams(listing[0].search).getAll('types[]'), [
    'checkout.session.completed',
    'checkout.session.async_payment_succeeded',
    'checkout.session.async_payment_failed',
  ]);

  assert.equal(standin.licensesIssued().length, 1);
  const rows = await worker.d1(`SELECT e.id, p.state FROM events e JOIN purchases p ON p.session_id = e.object_id WHERE e.id = '${lost.id}'`);
  assert.deepEqual(rows, [{ id: lost.id, state: 'fulfilled' }]);
  assert.ok(log.some((l) => l.msg === 'reconciled an event never delivered' && l.event_id === lost.id));

  // The next run lists it again (overlap) but ingests nothing twice.
  const second = await runScheduled();
  assert.equal(second.line.reconciled, 0);
  assert.equal(standin.licensesIssued().length, 1);
});

test('an event that was delivered is left to its delivery', async () => {
  standin.reset();
  const delivered = event('checkout.session.completed', paidSession());
  const payload = JSON.stringify(delivered);
  const res = await deliver(worker.url, payload, { secret: WEBHOOK_SECRET });
  assert.equal(res.status, 200, res.text);
  assert.equal(standin.licensesIssued().length, 1);

  standin.setEvents([delivered]);
  const { line } = await runScheduled();
  assert.equal(line.reconciled, 0);
  assert.equal(standin.callsTo('license').length, 1, 'no second license call');
});

test('the Worker output carries none of the keys or customer data used here', () => {
  const out = worker.logs();
  for (const needle of [WEBHOOK_SECRET, STRIPE_KEY, LICENSE_KEY, 'lost@example.com', 'Lost Buyer']) {
    assert.ok(!out.includes(needle), `${needle} reached the log`);
  }
});
