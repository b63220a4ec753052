// Load and fault soak (the evidence issue): thousands of signed deliveries at
// concurrency, 20 % of them duplicated (half of those sent at the same moment as the
// original), while the stand-in license server, shipping system and Stripe API fail
// 30 % of calls with 503, hang some, close some connections and lose some answers
// after doing the work. Every delivery not answered 2xx is redelivered, as Stripe
// does, until it is. At the end:
//   - every paid purchase has exactly one license and one shipment (counted by the
//     stand-in per Idempotency-Key), and D1 maps each to the key and id that were issued;
//   - no purchase is lost: every one is `fulfilled` (or `payment_failed` when its
//     delayed payment failed) with every step `done`;
//   - no delivery got a 5xx other than the injected kind (503 "fulfilment incomplete",
//     with a `step will be retried` reason naming an injected fault), and no 500 ever;
//   - the RSS of the workerd that runs the Worker stays flat (see "Flat" memory below).
// Prints the counts; exits 1 on any duplicate, loss, unexpected answer or memory that is
// not flat, 2 when the soak itself could not run.
//
// Run (after `bash scripts/build.sh`, with Node >= 22.12 first on PATH):
//   PATH=$PWD/node_modules/.bin:$PATH node bench/soak.mjs
// Knobs (environment): SOAK_PURCHASES (2400), SOAK_CONCURRENCY (16 purchases in flight),
// SOAK_SEED (1), SOAK_DUP_RATE (0.2), SOAK_FAIL_RATE (0.3), SOAK_HANG_RATE (0.02),
// SOAK_CLOSE_RATE (0.03), SOAK_SLOW_RATE (0.02), SOAK_MAX_ATTEMPTS (30),
// SOAK_DEADLINE_S (900), SOAK_RSS_BOUND_MIB (96), SOAK_RSS_CEILING_MIB (768), SOAK_JSON=1 (also print the result as JSON).
// e2e/soak.test.mjs runs the same soak, smaller, under `npm test`.
//
// Loopback only: the Worker (wrangler dev) and the stand-in listen on 127.0.0.1.
// Reproducing a failure: the session and event ids derive from the seed, and the
// stand-in's fault for the n-th attempt of a call is a hash of (seed, call, n), so
// SOAK_SEED=<seed> with the same SOAK_PURCHASES replays the same faults per purchase
// (the interleaving of concurrent requests still varies from run to run).

import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import { pathToFileURL } from 'node:url';

import { logLines, until } from '../e2e/support/logs.mjs';
import { startStandin } from '../e2e/support/standin.mjs';
import { deliver, event } from '../e2e/support/stripe.mjs';
import { startWorker } from '../e2e/support/worker.mjs';

export const DEFAULTS = Object.freeze({
  purchases: 2400,
  concurrency: 16,
  seed: 1,
  dupRate: 0.2, // share of deliveries sent twice
  concurrentDupShare: 0.5, // of those, the share sent at the same moment as the original
  failRate: 0.3, // the stand-in's injected faults, per call
  hangRate: 0.02,
  closeRate: 0.03,
  slowRate: 0.02,
  upstreamTimeoutMs: 800, // the Worker's UPSTREAM_TIMEOUT_MS
  hangMs: 1_300, // a hang or slow answer lasts this long, then the socket is destroyed
  maxAttempts: 30, // deliveries of one event before the soak counts it lost
  deadlineMs: 900_000, // the whole load phase
  rssBoundMiB: 96,
  rssCeilingMiB: 768,
  log: console.log,
});

// "Flat" memory, judged on the workerd process that runs the Worker and its local D1
// (wrangler dev's proxy, a second workerd that production does not have, is reported
// only). Measured here (BENCHMARKS.md): its RSS climbs from ~130 MiB to ~600 MiB over the
// first ~1,500 deliveries and then ever more slowly (~35 MiB per 1,000 deliveries up to
// 10,000, ~7 per 1,000 after): V8 and SQLite growing their heaps and caches lazily, not
// a slope that stays constant as a leak's would. So a run long enough to get past that
// (at least STEADY_MIN_DELIVERIES) is flat when, over its second half,
//   - the RSS grows by at most max(rssBoundMiB (96), 20 % of the mid-run RSS), and
//   - it grows at most half as fast as over the first half (a leak keeps its slope).
// The first bound catches a leak above ~30 KiB per delivery at 2,400 purchases (~9,000
// deliveries), above ~18 KiB at 5,000. A shorter run (e2e/soak.test.mjs) is still
// warming up and can only be held to a ceiling, rssCeilingMiB (768): a runaway guard
// (~0.8 MiB per delivery at 550 deliveries), not a leak detector.
const STEADY_MIN_DELIVERIES = 4_000;
const GROWTH_RATIO = 0.2;
const SLOPE_RATIO = 0.5;

const WEBHOOK_SECRET = 'whsec_soak_webhook_secret_for_local_runs_only';
const LICENSE_KEY = 'lk_soak_license_api_key';
const SHIPPING_KEY = 'shk_soak_shipping_api_key';
const STRIPE_KEY = 'sk_test_soak_stripe_api_key';

const RETRY_503 = 'fulfilment is not complete yet; retry later';
const BUSY_409 = 'this purchase is being fulfilled by another delivery; retry later';
const INJECTED_REASON = /^(license server|shipping system|Stripe API) (answered 503|timed out after \d+ ms|unreachable)$/;
const FORBIDDEN_MSGS = [
  'internal error',
  'step failed permanently',
  'step not configured',
  'webhook refused',
  'webhook refused: ledger unavailable',
  'webhook refused: not configured',
  'configuration problems',
  'scheduled run failed',
];

/** mulberry32: a small seeded PRNG, enough to pick the purchase mix reproducibly. */
function prng(seed) {
  let a = 0;
  for (const ch of String(seed)) a = (Math.imul(a ^ ch.charCodeAt(0), 2654435761) + 0x9e3779b9) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function optionsFromEnv(env = process.env) {
  const num = (name, fallback) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return fallback;
    const v = Number(raw);
    if (!Number.isFinite(v)) throw new Error(`${name} must be a number, got ${raw}`);
    return v;
  };
  return {
    purchases: num('SOAK_PURCHASES', DEFAULTS.purchases),
    concurrency: num('SOAK_CONCURRENCY', DEFAULTS.concurrency),
    seed: env.SOAK_SEED || DEFAULTS.seed,
    dupRate: num('SOAK_DUP_RATE', DEFAULTS.dupRate),
    failRate: num('SOAK_FAIL_RATE', DEFAULTS.failRate),
    hangRate: num('SOAK_HANG_RATE', DEFAULTS.hangRate),
    closeRate: num('SOAK_CLOSE_RATE', DEFAULTS.closeRate),
    slowRate: num('SOAK_SLOW_RATE', DEFAULTS.slowRate),
    maxAttempts: num('SOAK_MAX_ATTEMPTS', DEFAULTS.maxAttempts),
    deadlineMs: num('SOAK_DEADLINE_S', DEFAULTS.deadlineMs / 1000) * 1000,
    rssBoundMiB: num('SOAK_RSS_BOUND_MIB', DEFAULTS.rssBoundMiB),
    rssCeilingMiB: num('SOAK_RSS_CEILING_MIB', DEFAULTS.rssCeilingMiB),
  };
}

// ---- workerd's memory -------------------------------------------------------------------

/**
 * The workerd processes in the process group of `wrangler dev` (`leader`), by role:
 * `runtime` runs the Worker and its local D1 (started with an inspector, as production's
 * isolate has no equivalent of the other); `proxy` is wrangler's dev-only proxy in front.
 */
function workerdProcesses(leader) {
  const found = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    let cmdline;
    try {
      stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      cmdline = readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch { continue; }
    const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // state ppid pgrp ...
    if (comm !== 'workerd' || Number(fields[2]) !== leader) continue;
    found.push({ pid: Number(name), role: cmdline.includes('--inspector-addr') ? 'runtime' : 'proxy' });
  }
  return found;
}

/** VmRSS and RssAnon of `pid` in MiB, or null once it is gone. */
function memoryOf(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (field) => Number(status.match(new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm'))?.[1] ?? NaN);
    return { rss: kib('VmRSS') / 1024, anon: kib('RssAnon') / 1024 };
  } catch {
    return null;
  }
}

/** Samples workerd's memory every second, per role; `progress()` tags each sample. */
function startSampler(leader, progress) {
  const samples = [];
  const take = () => {
    const s = { at: Date.now(), ...progress() };
    for (const { pid, role } of workerdProcesses(leader)) {
      const m = memoryOf(pid);
      if (m) s[role] = m;
    }
    if (s.runtime) samples.push(s);
  };
  take();
  const timer = setInterval(take, 1_000);
  return { samples, take, stop: () => clearInterval(timer) };
}

/** Least-squares slope of y over x. */
function slope(points) {
  if (points.length < 2) return 0;
  const n = points.length;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  const sxx = points.reduce((s, p) => s + (p.x - mx) ** 2, 0);
  if (sxx === 0) return 0;
  return points.reduce((s, p) => s + (p.x - mx) * (p.y - my), 0) / sxx;
}

// ---- the purchases ------------------------------------------------------------------------

/**
 * The purchase mix, from the seed:
 *   paid (75 %): checkout.session.completed (paid); 30 % of them also get a
 *     payment_intent.succeeded, which the Worker records as ignored;
 *   delayed (20 %): completed (unpaid), then checkout.session.async_payment_succeeded,
 *     half of them in order, half at the same moment (either may arrive first);
 *   delayed_failed (5 %): completed (unpaid), then async_payment_failed: nothing to fulfil.
 * Every delivery is duplicated with probability dupRate: at the same moment as the
 * original (concurrentDupShare of those) or after the original was acknowledged.
 */
function makePurchases(o, rng) {
  const purchases = [];
  // Stripe ids are [A-Za-z0-9_]; the Worker refuses others in API paths (core/src/stripe/api.rs).
  const seedTag = String(o.seed).replace(/[^A-Za-z0-9]/g, '') || 'x';
  for (let i = 0; i < o.purchases; i += 1) {
    const tag = `soak${seedTag}n${i}`;
    const id = `cs_test_${tag}`;
    const r = rng();
    const kind = r < 0.75 ? 'paid' : r < 0.95 ? 'delayed' : 'delayed_failed';
    const session = (paymentStatus) => ({
      id,
      object: 'checkout.session',
      amount_total: 3000,
      currency: 'usd',
      livemode: false,
      mode: 'payment',
      customer: `cus_test_${tag}`,
      payment_intent: `pi_test_${tag}`,
      payment_status: paymentStatus,
      status: 'complete',
      metadata: { slug: 'pro' },
      customer_details: { email: `buyer${i}@example.com`, name: `Buyer ${i}` },
      collected_information: {
        shipping_details: {
          name: `Buyer ${i}`,
          address: { line1: `${i} Soak Street`, line2: null, city: 'Testville', state: null, postal_code: `T${i}`, country: 'GB' },
        },
      },
    });
    const ev = (type, object, suffix, fulfils) => {
      const e = event(type, object, { id: `evt_test_${tag}${suffix}` });
      const d = rng();
      const dup = d < o.dupRate * o.concurrentDupShare ? 'concurrent' : d < o.dupRate ? 'late' : 'none';
      return { id: e.id, type, payload: JSON.stringify(e), fulfils, dup, session: id };
    };
    let stages;
    if (kind === 'paid') {
      const completed = ev('checkout.session.completed', session('paid'), 'c', true);
      const extra = rng() < 0.3
        ? [ev('payment_intent.succeeded', { id: `pi_test_${tag}`, object: 'payment_intent', status: 'succeeded', amount: 3000 }, 'p', false)]
        : [];
      stages = [[completed, ...extra]];
    } else {
      const completed = ev('checkout.session.completed', session('unpaid'), 'c', false);
      const outcome = kind === 'delayed'
        ? ev('checkout.session.async_payment_succeeded', session('paid'), 'a', true)
        : ev('checkout.session.async_payment_failed', session('unpaid'), 'f', false);
      stages = kind === 'delayed' && rng() < 0.5 ? [[completed, outcome]] : [[completed], [outcome]];
    }
    purchases.push({ id, kind, fulfil: kind !== 'delayed_failed', session: session('paid'), stages });
  }
  return purchases;
}

// ---- the memory verdict ----------------------------------------------------------------

/** Summarises the samples per role and judges the runtime's RSS (see "Flat" memory above). */
function memoryVerdict(samples, warmAt, o) {
  const out = { samples: samples.length };
  if (!samples.length) return { ...out, problem: 'no RSS sample of workerd' };
  const total = samples.at(-1).deliveries;
  const median3 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const role of ['runtime', 'proxy']) {
    const series = samples.filter((s) => s[role]);
    if (!series.length) continue;
    const at = (n) => series.find((s) => s.deliveries >= n) ?? series.at(-1);
    const warm = at(warmAt ?? 0);
    const mid = at(total / 2);
    const end = median3(series.slice(-3).map((s) => s[role].rss));
    const first = series.filter((s) => s.deliveries <= mid.deliveries);
    const second = series.filter((s) => s.deliveries >= mid.deliveries && s.deliveries < total);
    out[role] = {
      startMiB: series[0][role].rss,
      warmMiB: warm[role].rss,
      midMiB: mid[role].rss,
      peakMiB: Math.max(...series.map((s) => s[role].rss)),
      endMiB: end,
      endAnonMiB: median3(series.slice(-3).map((s) => s[role].anon)),
      firstSlopeMiBPer1000: slope(first.map((s) => ({ x: s.deliveries, y: s[role].rss }))) * 1000,
      slopeMiBPer1000: slope(second.map((s) => ({ x: s.deliveries, y: s[role].rss }))) * 1000,
      trace: series.filter((_, i) => i % Math.max(1, Math.ceil(series.length / 12)) === 0 || i === series.length - 1)
        .map((s) => [s.deliveries, Math.round(s[role].rss)]),
    };
  }
  const r = out.runtime;
  if (!r) return { ...out, problem: 'no RSS sample of the workerd runtime' };
  out.deliveries = total;
  if (total >= STEADY_MIN_DELIVERIES) {
    out.mode = 'steady';
    out.bound = r.midMiB + Math.max(o.rssBoundMiB, GROWTH_RATIO * r.midMiB);
    const slowing = r.slopeMiBPer1000 <= SLOPE_RATIO * Math.max(0, r.firstSlopeMiBPer1000);
    out.flat = r.endMiB <= out.bound && slowing;
    if (!out.flat) {
      out.problem = `workerd RSS not flat over the second half: ${r.midMiB.toFixed(1)} -> ${r.endMiB.toFixed(1)} MiB (bound ${out.bound.toFixed(1)}), ` +
        `slope ${r.slopeMiBPer1000.toFixed(1)} vs ${r.firstSlopeMiBPer1000.toFixed(1)} MiB per 1,000 deliveries in the first half`;
    }
  } else {
    out.mode = 'ceiling';
    out.bound = o.rssCeilingMiB;
    out.flat = r.endMiB <= out.bound;
    if (!out.flat) out.problem = `workerd RSS ${r.endMiB.toFixed(1)} MiB at the end of a short run > ceiling ${out.bound} MiB`;
  }
  return out;
}

// ---- the run ------------------------------------------------------------------------------

/** Runs the soak; resolves with { ok, problems, counts, rss, report }. Stops every server it starts. */
export async function runSoak(options = {}) {
  const o = { ...DEFAULTS, ...options };
  const log = o.log;
  const rng = prng(o.seed);
  const problems = [];
  const problem = (msg) => { if (problems.length < 200) problems.push(msg); };
  const counts = {
    purchases: o.purchases,
    purchasesByKind: { paid: 0, delayed: 0, delayed_failed: 0 },
    events: 0,
    deliveries: 0,
    firstDeliveries: 0,
    duplicates: 0,
    concurrentDuplicates: 0,
    lateDuplicates: 0,
    redeliveries: 0,
    answers: {},
    answers200: { accepted: 0, duplicate: 0, ignored: 0 },
    retry503: 0,
    busy409: 0,
    unexpected: 0,
    networkErrors: 0,
    maxAttemptsOfOneEvent: 0,
    injected: null,
    workerRetryReasons: {},
    leaseLost: 0,
    idempotentReplays: { license: 0, shipping: 0 },
    licenses: 0,
    shipments: 0,
    expectedFulfilments: 0,
    stepAttempts: { total: 0, max: 0 },
    cron: null,
    loadSeconds: 0,
    deliveriesPerSecond: 0,
  };

  const started = Date.now();
  const purchases = makePurchases(o, rng);
  for (const p of purchases) counts.purchasesByKind[p.kind] += 1;
  counts.expectedFulfilments = purchases.filter((p) => p.fulfil).length;

  let standin;
  let worker;
  let sampler;
  try {
    standin = await startStandin();
    for (const p of purchases) {
      standin.setLineItems(p.id, [{
        id: `li_${p.id.slice(8)}`,
        object: 'item',
        description: 'Soak mug',
        quantity: 1,
        amount_total: 3000,
        currency: 'usd',
        price: { id: 'price_soak', product: 'prod_soak', unit_amount: 3000 },
      }]);
      standin.setSession(p.session); // for the cron's re-drive, which fetches the session
    }
    worker = await startWorker({
      vars: {
        LICENSE_SERVER_URL: `${standin.url}/license`,
        SHIPPING_URL: `${standin.url}/shipping/orders`,
        STRIPE_API_BASE: `${standin.url}/stripe`,
        UPSTREAM_TIMEOUT_MS: String(o.upstreamTimeoutMs),
      },
      secrets: {
        STRIPE_WEBHOOK_SECRET: WEBHOOK_SECRET,
        LICENSE_SERVER_API_KEY: LICENSE_KEY,
        SHIPPING_API_KEY: SHIPPING_KEY,
        STRIPE_API_KEY: STRIPE_KEY,
      },
    });
    if (!workerdProcesses(worker.pid).some((p) => p.role === 'runtime')) {
      problem(`no workerd runtime process found in the process group of wrangler dev (pid ${worker.pid})`);
    }

    let purchasesDone = 0;
    sampler = startSampler(worker.pid, () => ({ deliveries: counts.deliveries, purchasesDone }));

    standin.chaos({
      failRate: o.failRate,
      hangRate: o.hangRate,
      closeRate: o.closeRate,
      slowRate: o.slowRate,
      failStatus: 503,
      hangMs: o.hangMs,
      seed: o.seed,
    });

    const deadline = Date.now() + o.deadlineMs;
    let warmAt = null; // deliveries when the first 10 % of purchases were done
    const warmAfter = Math.max(1, Math.min(o.purchases, Math.max(20, Math.ceil(o.purchases / 10))));
    let expired = false;

    const classify = (ev, res) => {
      const key = res.status ?? 'network';
      counts.answers[key] = (counts.answers[key] ?? 0) + 1;
      if (res.status === 200) {
        const status = res.json?.status;
        if (status in counts.answers200) counts.answers200[status] += 1;
        else { counts.unexpected += 1; problem(`${ev.id}: 200 with status ${JSON.stringify(status)}: ${res.text}`); }
        if (ev.fulfils && res.json?.purchase_state !== 'fulfilled') {
          counts.unexpected += 1;
          problem(`${ev.id}: 200 before the purchase was fulfilled: ${res.text}`);
        }
        if (ev.type === 'payment_intent.succeeded' && status !== 'ignored' && status !== 'duplicate') {
          counts.unexpected += 1;
          problem(`${ev.id}: an ignored type answered ${res.text}`);
        }
      } else if (res.status === 409) {
        counts.busy409 += 1;
        if (res.json?.error !== BUSY_409) { counts.unexpected += 1; problem(`${ev.id}: 409 with ${res.text}`); }
      } else if (res.status === 503 && res.json?.error === RETRY_503) {
        counts.retry503 += 1;
      } else if (res.status === undefined) {
        counts.networkErrors += 1;
        counts.unexpected += 1;
        problem(`${ev.id}: no answer from the Worker: ${res.error}`);
      } else {
        counts.unexpected += 1;
        problem(`${ev.id}: unexpected ${res.status}: ${res.text.slice(0, 300)}`);
      }
    };

    /** Delivers `ev` until it is answered 2xx, as Stripe does (bounded); true when acknowledged. */
    const chain = async (ev) => {
      for (let attempt = 1; attempt <= o.maxAttempts; attempt += 1) {
        if (Date.now() > deadline) { expired = true; return false; }
        if (attempt > 1) {
          counts.redeliveries += 1;
          // Stripe's backoff, compressed from hours to milliseconds, with jitter.
          await sleep(Math.min(1_000, 25 * 1.6 ** (attempt - 2)) * (0.5 + Math.random()));
        }
        counts.deliveries += 1;
        let res;
        try {
          res = await deliver(worker.url, ev.payload, { secret: WEBHOOK_SECRET });
        } catch (err) {
          res = { error: err.cause?.code ?? err.message };
        }
        classify(ev, res);
        if (res.status >= 200 && res.status < 300) {
          counts.maxAttemptsOfOneEvent = Math.max(counts.maxAttemptsOfOneEvent, attempt);
          return true;
        }
      }
      problem(`${ev.id}: not acknowledged after ${o.maxAttempts} deliveries`);
      return false;
    };

    const sendEvent = async (ev) => {
      counts.events += 1;
      counts.firstDeliveries += 1;
      if (ev.dup === 'concurrent') {
        counts.duplicates += 1;
        counts.concurrentDuplicates += 1;
        await Promise.all([chain(ev), chain(ev)]);
      } else {
        await chain(ev);
        if (ev.dup === 'late') {
          counts.duplicates += 1;
          counts.lateDuplicates += 1;
          await chain(ev);
        }
      }
    };

    // A pool of `concurrency` purchases in flight; each purchase sends its stages in order.
    const loadStart = Date.now();
    let next = 0;
    const lane = async () => {
      while (next < purchases.length && !expired) {
        const p = purchases[next];
        next += 1;
        for (const stage of p.stages) await Promise.all(stage.map(sendEvent));
        purchasesDone += 1;
        if (warmAt === null && purchasesDone >= warmAfter) {
          warmAt = counts.deliveries;
          sampler.take();
        }
        if (purchasesDone % Math.max(1, Math.floor(purchases.length / 10)) === 0) {
          log(`[soak] ${purchasesDone}/${purchases.length} purchases, ${counts.deliveries} deliveries, ${((Date.now() - loadStart) / 1000).toFixed(1)} s`);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, o.concurrency) }, lane));
    counts.loadSeconds = (Date.now() - loadStart) / 1000;
    counts.deliveriesPerSecond = counts.deliveries / counts.loadSeconds;
    if (expired) problem(`the load phase passed its deadline (${o.deadlineMs / 1000} s) with ${purchases.length - purchasesDone} purchases not sent`);

    // The Worker's own account, read from its log lines (they may trail the answers).
    let lines = [];
    const wantRecorded = Object.values(counts.answers200).reduce((a, b) => a + b, 0);
    try {
      await until(() => {
        lines = logLines(worker);
        const recorded = lines.filter((l) => l.msg === 'webhook recorded').length;
        const deferred = lines.filter((l) => l.msg === 'webhook deferred: fulfilment incomplete').length;
        return recorded >= wantRecorded && deferred >= counts.retry503;
      }, 'the log line of every answer', 30_000);
    } catch (err) {
      problem(err.message.split('\n')[0]);
    }

    // The cron run: with everything acknowledged there must be nothing left to re-drive.
    // If a purchase is unfinished (an event given up on), fire it until the purchase is
    // finished or 150 s pass: the re-drive only takes purchases idle for a minute.
    const unfinished = async () => (await worker.d1(
      "SELECT COUNT(*) AS n FROM steps WHERE state IN ('pending', 'running')",
    ))[0].n;
    const cronDeadline = Date.now() + 150_000;
    const cronRuns = [];
    for (let run = 0; run < 20; run += 1) {
      const from = worker.logs().length;
      const fired = await worker.scheduled();
      if (fired.status !== 200) problem(`the scheduled run answered ${fired.status}: ${fired.text}`);
      const [line] = await until(() => {
        const found = logLines(worker, from).filter((l) => l.msg === 'scheduled run' || l.msg === 'scheduled run failed');
        return found.length ? found : null;
      }, 'the scheduled run line', 60_000);
      cronRuns.push({ redriven: line.redriven, completed: line.completed, still_waiting: line.still_waiting });
      const left = await unfinished();
      if (left === 0 || Date.now() > cronDeadline) break;
      log(`[soak] ${left} steps unfinished; firing the cron again in 10 s (it re-drives purchases idle for a minute)`);
      await sleep(10_000);
    }
    counts.cron = { runs: cronRuns.length, redriven: cronRuns.reduce((a, r) => a + (r.redriven ?? 0), 0), first: cronRuns[0] };

    lines = logLines(worker);
    for (const l of lines) {
      if (l.msg === 'step will be retried') {
        const reason = String(l.reason).replace(/\d+ ms/, 'N ms');
        counts.workerRetryReasons[reason] = (counts.workerRetryReasons[reason] ?? 0) + 1;
        if (!INJECTED_REASON.test(l.reason)) problem(`a step was retried for a reason no fault explains: ${l.reason}`);
      }
      if (l.msg === 'step lease lost') counts.leaseLost += 1;
      if (FORBIDDEN_MSGS.includes(l.msg)) problem(`the Worker logged ${JSON.stringify(l)}`);
    }
    const rawLog = worker.logs();
    if (/Uncaught|panicked|RuntimeError|\bunreachable executed\b/.test(rawLog)) {
      problem('the Worker output has an uncaught error or a panic');
    }

    // Exactly one license and one shipment per paid purchase, none for the others.
    counts.injected = standin.chaosStats();
    standin.chaosOff();
    const expectLicense = new Map(purchases.filter((p) => p.fulfil).map((p) => [`stripe-edge:${p.id}:license`, p.id]));
    const expectShipment = new Map(purchases.filter((p) => p.fulfil).map((p) => [`stripe-edge:${p.id}:shipping`, p.id]));
    const licenses = standin.licensesIssued();
    const shipments = standin.shipmentsCreated();
    counts.licenses = licenses.length;
    counts.shipments = shipments.length;
    const byKey = (list) => {
      const m = new Map();
      for (const x of list) m.set(x.idempotency_key, [...(m.get(x.idempotency_key) ?? []), x]);
      return m;
    };
    const licenseByKey = byKey(licenses);
    const shipmentByKey = byKey(shipments);
    const duplicates = { licenses: 0, shipments: 0 };
    const lost = { licenses: 0, shipments: 0, purchases: 0 };
    for (const [kind, expected, got] of [['licenses', expectLicense, licenseByKey], ['shipments', expectShipment, shipmentByKey]]) {
      for (const [key, list] of got) {
        if (!expected.has(key)) { duplicates[kind] += list.length; problem(`${kind}: issued under an unexpected key ${key}`); }
        else if (list.length > 1) { duplicates[kind] += list.length - 1; problem(`${kind}: ${list.length} for ${key}`); }
      }
      for (const key of expected.keys()) {
        if (!got.has(key)) { lost[kind] += 1; problem(`${kind}: none for ${key}`); }
      }
    }
    for (const l of licenses) {
      const sid = expectLicense.get(l.idempotency_key);
      if (sid && l.request?.metadata?.provider_checkout_session_id !== sid) problem(`license ${l.idempotency_key} names another session`);
    }
    for (const s of shipments) {
      const sid = expectShipment.get(s.idempotency_key);
      if (sid && s.request?.order_id !== sid) problem(`shipment ${s.idempotency_key} has order_id ${s.request?.order_id}`);
    }
    for (const c of standin.calls) {
      if (c.replayed && (c.service === 'license' || c.service === 'shipping')) counts.idempotentReplays[c.service] += 1;
      if (c.status === 422) problem(`${c.service} refused a reused Idempotency-Key with a different body: ${c.headers['idempotency-key']}`);
    }

    // The ledger: every purchase finished, every step done, mapped to what was issued.
    const dbPurchases = new Map((await worker.d1('SELECT session_id, state FROM purchases')).map((r) => [r.session_id, r.state]));
    const dbSteps = await worker.d1('SELECT session_id, step, state, attempts, result FROM steps');
    const dbEvents = (await worker.d1('SELECT COUNT(*) AS n FROM events'))[0].n;
    if (dbEvents !== counts.events) problem(`D1 has ${dbEvents} events, ${counts.events} were sent`);
    const stepsOf = new Map();
    for (const s of dbSteps) {
      stepsOf.set(s.session_id, [...(stepsOf.get(s.session_id) ?? []), s]);
      counts.stepAttempts.total += s.attempts;
      counts.stepAttempts.max = Math.max(counts.stepAttempts.max, s.attempts);
    }
    for (const p of purchases) {
      const state = dbPurchases.get(p.id);
      const want = p.fulfil ? 'fulfilled' : 'payment_failed';
      if (state !== want) { lost.purchases += 1; problem(`${p.id} (${p.kind}): purchase ${state ?? 'missing'}, expected ${want}`); }
      const steps = stepsOf.get(p.id) ?? [];
      if (!p.fulfil) {
        if (steps.length) problem(`${p.id}: a failed payment has steps`);
        continue;
      }
      for (const [name, issued] of [['license', licenseByKey.get(`stripe-edge:${p.id}:license`)], ['shipping', shipmentByKey.get(`stripe-edge:${p.id}:shipping`)]]) {
        const step = steps.find((s) => s.step === name);
        if (!step || step.state !== 'done') { problem(`${p.id}: step ${name} ${step?.state ?? 'missing'}`); continue; }
        const id = name === 'license' ? issued?.[0]?.license_key : issued?.[0]?.shipment_id;
        if (step.result !== id) problem(`${p.id}: D1 maps ${name} to another id than the one issued`);
      }
      if (steps.length !== 2) problem(`${p.id}: ${steps.length} steps`);
    }
    counts.duplicateFulfilments = duplicates;
    counts.lost = lost;

    // Memory: let the sampler take three more samples after the load, then judge.
    const endMark = sampler.samples.length;
    await until(() => sampler.samples.length >= endMark + 3, 'three RSS samples after the run', 10_000);
    sampler.stop();
    const rss = memoryVerdict(sampler.samples, warmAt, o);
    if (rss.problem) problem(rss.problem);

    counts.seconds = (Date.now() - started) / 1000;
    const result = { ok: problems.length === 0, problems, counts, rss, options: { ...o, log: undefined } };
    result.report = report(result);
    return result;
  } finally {
    sampler?.stop();
    await worker?.stop();
    await standin?.stop();
  }
}

// ---- the printout -------------------------------------------------------------------------

function report({ ok, problems, counts: c, rss, options: o }) {
  const inj = c.injected ?? {};
  const kinds = ['fail', 'hang', 'close', 'slow'];
  const byKind = Object.fromEntries(kinds.map((k) => [k, Object.values(inj).reduce((a, s) => a + (s[k] ?? 0), 0)]));
  const draws = Object.values(inj).reduce((a, s) => a + Object.values(s).reduce((x, y) => x + y, 0), 0);
  const pct = (n, d) => (d ? `${((100 * n) / d).toFixed(1)} %` : '-');
  const f = (x) => (typeof x === 'number' ? x.toFixed(1) : String(x));
  const out = [
    `soak: seed ${o.seed}, ${o.purchases} purchases, ${o.concurrency} in flight, duplicates ${o.dupRate * 100} %, ` +
      `faults fail ${o.failRate * 100} % / hang ${o.hangRate * 100} % / close ${o.closeRate * 100} % / slow ${o.slowRate * 100} %, ` +
      `UPSTREAM_TIMEOUT_MS ${o.upstreamTimeoutMs}, hang ${o.hangMs} ms`,
    `machine: ${os.cpus().length} × ${os.cpus()[0]?.model ?? '?'}, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}, node ${process.version}`,
    `purchases: ${c.purchases} (paid ${c.purchasesByKind.paid}, delayed ${c.purchasesByKind.delayed}, delayed then failed ${c.purchasesByKind.delayed_failed}); events ${c.events}`,
    `deliveries: ${c.deliveries} in ${f(c.loadSeconds)} s (${f(c.deliveriesPerSecond)}/s): first ${c.firstDeliveries}, duplicates ${c.duplicates} (${pct(c.duplicates, c.firstDeliveries)}; concurrent ${c.concurrentDuplicates}, late ${c.lateDuplicates}), redeliveries ${c.redeliveries}; most deliveries of one event ${c.maxAttemptsOfOneEvent}`,
    `answers: ${Object.entries(c.answers).map(([k, v]) => `${k} ${v}`).join(', ')}; 200 = accepted ${c.answers200.accepted} + duplicate ${c.answers200.duplicate} + ignored ${c.answers200.ignored}; 409 busy ${c.busy409}; 503 injected kind ${c.retry503}; unexpected ${c.unexpected}`,
    `injected faults: ${draws} upstream calls drawn, ${kinds.map((k) => `${k} ${byKind[k]}`).join(', ')} ` +
      `(${Object.entries(inj).map(([s, v]) => `${s} ${kinds.map((k) => v[k]).join('/')}`).join(', ')})`,
    `Worker retry reasons: ${Object.entries(c.workerRetryReasons).sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join('; ') || 'none'}; lease lost ${c.leaseLost}`,
    `idempotent replays absorbed by the upstream: license ${c.idempotentReplays.license}, shipping ${c.idempotentReplays.shipping}; step attempts ${c.stepAttempts.total} (max ${c.stepAttempts.max} for one step)`,
    `cron: ${c.cron?.runs ?? 0} run(s), re-driven ${c.cron?.redriven ?? '-'}`,
    `fulfilment: expected ${c.expectedFulfilments}; licenses ${c.licenses}, shipments ${c.shipments}; duplicates ${JSON.stringify(c.duplicateFulfilments ?? null)}; lost ${JSON.stringify(c.lost ?? null)}`,
    ...['runtime', 'proxy'].filter((role) => rss[role]).map((role) => {
      const m = rss[role];
      return `workerd ${role} RSS: start ${f(m.startMiB)} MiB, warm ${f(m.warmMiB)}, mid-run ${f(m.midMiB)}, peak ${f(m.peakMiB)}, end ${f(m.endMiB)} (anon ${f(m.endAnonMiB)}); ` +
        `slope ${f(m.firstSlopeMiBPer1000)} then ${f(m.slopeMiBPer1000)} MiB per 1,000 deliveries (first, second half); trace [deliveries, MiB] ${JSON.stringify(m.trace)}`;
    }),
    rss.mode === 'steady'
      ? `memory verdict (runtime, second half of ${rss.deliveries} deliveries): ${f(rss.runtime?.midMiB)} -> ${f(rss.runtime?.endMiB)} MiB, bound ${f(rss.bound)} MiB, slope ${f(rss.runtime?.slopeMiBPer1000)} <= half of ${f(rss.runtime?.firstSlopeMiBPer1000)}: ${rss.flat ? 'flat' : 'NOT flat'} (${rss.samples} samples)`
      : `memory verdict (runtime, short run of ${rss.deliveries} deliveries, ceiling only): end ${f(rss.runtime?.endMiB)} MiB, ceiling ${f(rss.bound)} MiB: ${rss.flat ? 'within' : 'OVER'} (${rss.samples} samples)`,
    `total ${f(c.seconds)} s: ${ok ? 'OK' : `FAILED, ${problems.length} problem(s)`}`,
    ...problems.slice(0, 30).map((p) => `  problem: ${p}`),
  ];
  return out.join('\n');
}

// ---- standalone ---------------------------------------------------------------------------

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const options = optionsFromEnv();
  runSoak(options).then(
    (result) => {
      console.log(result.report);
      if (process.env.SOAK_JSON === '1') console.log(JSON.stringify({ ok: result.ok, counts: result.counts, rss: result.rss }));
      process.exit(result.ok ? 0 : 1);
    },
    (err) => {
      console.error(err);
      process.exit(2);
    },
  );
}
