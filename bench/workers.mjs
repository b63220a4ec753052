// Whole Workers side by side on the same runtime: this Rust Worker (build/) against the
// reference JavaScript Worker (bench/reference/, the official `stripe` package), both
// under Miniflare, which runs the workerd binary wrangler ships, without wrangler
// dev's proxy and its logging (they cost several ms of CPU per request and drown the
// difference). Each Worker gets its own workerd process, so /proc/<pid>/stat gives
// each one's CPU. Same signed deliveries (unique ids) for both, rounds alternating.
//
// Run: bash bench/workers.sh   (builds both, then this file). Knobs: ROUNDS (3),
// DELIVERIES per round and size (600), CONCURRENCY (8).

import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { Miniflare, convertV4MiniflareOptions } from 'miniflare';

import { startWorker } from '../test/support/worker.mjs';
import Stripe from 'stripe';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ROUNDS = Number(process.env.ROUNDS ?? 3);
const DELIVERIES = Number(process.env.DELIVERIES ?? 600);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const SIZES_KB = (process.env.SIZES_KB ?? '1,10,100').split(',').map(Number);
const SECRET = 'whsec_bench_workers_secret';
const CLK_TCK = 100; // Linux USER_HZ
const REQUEST_TIMEOUT_MS = 10_000;
const COMPAT_DATE = '2026-11-01';

const MIGRATIONS = readdirSync(path.join(ROOT, 'migrations')).filter((f) => f.endsWith('.sql')).sort()
  .map((f) => readFileSync(path.join(ROOT, 'migrations', f), 'utf8'));

const WORKERS = {
  rust: {
    modulesRoot: path.join(ROOT, 'build'),
    modules: [
      { type: 'ESModule', path: path.join(ROOT, 'build/index.js') },
      { type: 'CompiledWasm', path: path.join(ROOT, 'build/index_bg.wasm') },
    ],
  },
  js: {
    modules: true,
    scriptPath: path.join(ROOT, 'bench/.build/reference.mjs'),
  },
};

/** The pids of workerd processes that are children of this process. */
function workerdPids() {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (stat.includes('(workerd)') && Number(fields[1]) === process.pid) pids.push(Number(entry));
    } catch { /* gone */ }
  }
  return pids;
}

/** utime + stime of `pid`, in seconds. */
function cpuSecs(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

function rssMiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Strips `--` comments and splits a migration into statements (none holds a `;` in a string). */
function statements(sql) {
  return sql.split('\n').map((l) => l.replace(/--.*$/, '')).join('\n').split(';').map((s) => s.trim()).filter(Boolean);
}

async function start(name) {
  const before = new Set(workerdPids());
  const t0 = performance.now();
  // Miniflare 5 takes a new options shape; the v4 one converts (and stays readable).
  const mf = new Miniflare(convertV4MiniflareOptions({
    // Each Worker writes its log line, as in production; the bench reads and drops them.
    handleRuntimeStdio: (stdout, stderr) => { stdout.resume(); stderr.resume(); },
    workers: [{
      name,
      ...WORKERS[name],
      compatibilityDate: COMPAT_DATE,
      d1Databases: { DB: `bench-${name}` },
      bindings: { STRIPE_WEBHOOK_SECRET: SECRET },
    }],
  }));
  const url = await mf.ready;
  const ready = performance.now() - t0;
  const db = await mf.getD1Database('DB');
  for (const sql of MIGRATIONS) for (const s of statements(sql)) await db.prepare(s).run();
  const [pid] = workerdPids().filter((p) => !before.has(p));
  if (!pid) throw new Error(`no workerd process found for ${name}`);
  // Startup: process start to the first 200 on a signed delivery (includes the migration).
  const [first] = deliveries(1, 1);
  const res = await post(url, first);
  if (res.status !== 200) throw new Error(`${name}: first delivery answered ${res.status}: ${res.text}`);
  const firstOk = performance.now() - t0;
  return { name, mf, url, pid, db, ready, firstOk };
}

let serial = 0;
/** `n` signed deliveries of about `kb` KB, each with a unique event id. */
function deliveries(n, kb) {
  const now = Math.floor(Date.now() / 1000);
  return Array.from({ length: n }, () => {
    serial += 1;
    const id = `evt_bench_${process.pid}_${serial}`;
    const head = `{"id":"${id}","object":"event","type":"payment_intent.created","livemode":false,"api_version":"2025-03-31.basil","created":${now},"data":{"object":{"id":"pi_bench_${serial}","object":"payment_intent","amount":2000,"currency":"usd","description":"`;
    const tail = '"}}}';
    const payload = head + 'x'.repeat(Math.max(0, kb * 1024 - head.length - tail.length)) + tail;
    const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: SECRET, timestamp: now });
    return { payload, header };
  });
}

async function post(url, { payload, header }) {
  const res = await fetch(new URL('/webhooks/stripe', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': header },
    body: payload,
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  return { status: res.status, text: await res.text() };
}

/** Sends `batch` at CONCURRENCY; returns latencies (ms), wall time (s) and the worker's CPU (s). */
async function load(worker, batch) {
  const latencies = [];
  let next = 0;
  let failures = 0;
  const cpu0 = cpuSecs(worker.pid);
  const t0 = performance.now();
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < batch.length) {
      const delivery = batch[next];
      next += 1;
      const s = performance.now();
      const res = await post(worker.url, delivery);
      latencies.push(performance.now() - s);
      if (res.status !== 200) failures += 1;
    }
  }));
  const wall = (performance.now() - t0) / 1000;
  const cpu = cpuSecs(worker.pid) - cpu0;
  if (failures) throw new Error(`${worker.name}: ${failures} deliveries were not answered 200`);
  return { latencies, wall, cpu };
}

/**
 * Startup under `wrangler dev`, the way a merchant runs it: from spawning wrangler to
 * its first answer ("ready"), then to the first 200 on a signed delivery.
 */
async function wranglerStartup(name) {
  const main = name === 'rust' ? path.join(ROOT, 'build/worker/shim.mjs') : path.join(ROOT, 'bench/reference/index.mjs');
  const t0 = performance.now();
  const worker = await startWorker({ main, secrets: { STRIPE_WEBHOOK_SECRET: SECRET } });
  try {
    const ready = performance.now() - t0;
    const res = await post(worker.url, deliveries(1, 1)[0]);
    if (res.status !== 200) throw new Error(`${name} under wrangler dev answered ${res.status}: ${res.text}`);
    return { ready, first: performance.now() - t0 - ready };
  } finally {
    await worker.stop();
  }
}

const pct = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function main() {
  const cpuModel = (readFileSync('/proc/cpuinfo', 'utf8').match(/model name\s*:\s*(.*)/) ?? [])[1];
  const workerdVersion = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/@cloudflare/workerd-linux-64/package.json'), 'utf8')).version;
  const miniflareVersion = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/miniflare/package.json'), 'utf8')).version;
  console.log(`machine: ${cpuModel}, ${os.cpus().length} CPUs, load average ${os.loadavg()[0].toFixed(2)}`);
  console.log(`node ${process.version}, workerd ${workerdVersion} via miniflare ${miniflareVersion}, stripe ${Stripe.PACKAGE_VERSION}`);
  console.log(`${ROUNDS} alternating rounds of ${DELIVERIES} deliveries per Worker and size, concurrency ${CONCURRENCY}\n`);

  const workers = [];
  try {
    for (const name of ['rust', 'js']) workers.push(await start(name));
    console.log('| startup (Miniflare: process start → first 200 on a signed delivery, D1 migrated) | Rust | JS |');
    console.log('|---|---|---|');
    console.log(`| runtime ready | ${workers[0].ready.toFixed(0)} ms | ${workers[1].ready.toFixed(0)} ms |`);
    console.log(`| first 200 | ${workers[0].firstOk.toFixed(0)} ms | ${workers[1].firstOk.toFixed(0)} ms |`);
    const dev = { rust: await wranglerStartup('rust'), js: await wranglerStartup('js') };
    console.log(`| wrangler dev: spawn → ready (migrations applied first, build skipped) | ${dev.rust.ready.toFixed(0)} ms | ${dev.js.ready.toFixed(0)} ms |`);
    console.log(`| wrangler dev: ready → first 200 | ${dev.rust.first.toFixed(0)} ms | ${dev.js.first.toFixed(0)} ms |\n`);

    console.log('| body | Worker | req/s | p50 | p99 | CPU s per 1,000 deliveries | workerd RSS after |');
    console.log('|---|---|---|---|---|---|---|');
    const summary = [];
    for (const kb of SIZES_KB) {
      const results = Object.fromEntries(workers.map((w) => [w.name, []]));
      // Warm-up: JIT and Liftoff→TurboFan tier-up, D1 statement cache.
      for (const w of workers) await load(w, deliveries(Math.min(100, DELIVERIES), kb));
      for (let r = 0; r < ROUNDS; r += 1) {
        const order = r % 2 === 0 ? workers : workers.slice().reverse();
        for (const w of order) results[w.name].push(await load(w, deliveries(DELIVERIES, kb)));
      }
      const row = {};
      for (const w of workers) {
        const runs = results[w.name];
        const lat = runs.flatMap((x) => x.latencies).sort((a, b) => a - b);
        row[w.name] = {
          rps: median(runs.map((x) => DELIVERIES / x.wall)),
          p50: pct(lat, 50),
          p99: pct(lat, 99),
          cpu: median(runs.map((x) => (x.cpu / DELIVERIES) * 1000)),
        };
        const m = row[w.name];
        console.log(`| ${kb} KB | ${w.name === 'rust' ? 'Rust' : 'JS'} | ${m.rps.toFixed(0)} | ${m.p50.toFixed(2)} ms | ${m.p99.toFixed(2)} ms | ${m.cpu.toFixed(3)} | ${rssMiB(w.pid).toFixed(0)} MiB |`);
      }
      summary.push({ kb, ...row });
    }
    console.log('\n| body | req/s Rust ÷ JS (>1: Rust faster) | p50 Rust ÷ JS (<1: Rust faster) | p99 Rust ÷ JS | CPU per delivery Rust ÷ JS (<1: Rust cheaper) |');
    console.log('|---|---|---|---|---|');
    for (const { kb, rust, js } of summary) {
      console.log(`| ${kb} KB | ${(rust.rps / js.rps).toFixed(2)}× | ${(rust.p50 / js.p50).toFixed(2)}× | ${(rust.p99 / js.p99).toFixed(2)}× | ${(rust.cpu / js.cpu).toFixed(2)}× |`);
    }
    // Both Workers recorded every delivery exactly once.
    for (const w of workers) {
      const { results: [{ n }] } = await w.db.prepare('SELECT COUNT(*) AS n FROM events').all();
      const expected = 1 + SIZES_KB.length * (Math.min(100, DELIVERIES) + ROUNDS * DELIVERIES);
      if (n !== expected) throw new Error(`${w.name}: ${n} events in D1, expected ${expected}`);
    }
    console.log('\nD1 holds exactly one row per delivery for both Workers.');
  } finally {
    await Promise.all(workers.map((w) => w.mf.dispose().catch(() => {})));
  }
}

const deadline = setTimeout(() => {
  console.error('bench/workers.mjs: gave up after 15 minutes');
  process.exit(2);
}, 15 * 60_000);
deadline.unref();
await main();
