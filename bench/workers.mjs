// Whole Workers side by side on the same runtime: this Rust Worker (build/) against the
// reference JavaScript Worker (bench/reference/, the official `stripe` package, bundled
// by `wrangler deploy --dry-run`), both under Miniflare, which runs the workerd binary
// wrangler ships, without wrangler dev's proxy and its logging (they cost several ms of
// CPU per request and drown the difference). Each Worker gets its own workerd process,
// so /proc/<pid>/stat gives each one's CPU. Same signed deliveries (unique ids) for
// both, rounds alternating. Two floors run beside them: `floor` only reads the body and
// answers 200 (what workerd and Miniflare cost per request before any Worker code), and
// `d1floor` is the reference without verification (JSON.parse, the same D1 insert, log
// line and answer): what each Worker spends above it is verification and its glue.
//
// CPU is each workerd's own, summed over its threads from /proc/<pid>/task/*/schedstat
// (nanoseconds). For each size, INSTANCES fresh sets of the four processes run one after
// the other (a process keeps its layout and JIT state for life, which moves its CPU by a
// few percent from one process to the next); each set is warmed with WARMUP deliveries
// per Worker (the Rust Worker's wasm tiers up over its first ~1,000), then runs ROUNDS
// alternating rounds. Before its warm-up, each set's Rust and JS Workers take their first
// COLD deliveries, measured alone: a new isolate's cost, the regime of a production isolate
// that sees a few webhooks (V8 runs wasm in its baseline tier until a function has run a
// while). The ratio the goal reads, "CPU per delivery Rust ÷ JS", is the
// median of the per-round ratios over every set: each round runs the reference right
// beside the Rust Worker, so the machine's load, which moves from round to round here,
// divides out.
//
// Run: bash bench/workers.sh   (builds both, then this file). Knobs: INSTANCES (3),
// ROUNDS per instance (6), DELIVERIES per round and size (300), WARMUP (800), COLD (300),
// CONCURRENCY (8), SIZES_KB (1,10,100), STARTUP_RUNS (3), WRANGLER_STARTUP (1; 0 skips
// the wrangler dev startup),
// DEADLINE_S (900: the whole run gives up, and stops everything it started, after it).

import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Miniflare, convertV4MiniflareOptions } from 'miniflare';

import { startWorker } from '../e2e/support/worker.mjs';
import Stripe from 'stripe';

import {
  COMPAT_DATE, D1_FLOOR, FLOOR, REFERENCE, ROOT, SECRET, deliveries as signed, migrate, rustWorker, threadCpu, workerdChildren,
} from './support.mjs';
const INSTANCES = Number(process.env.INSTANCES ?? 3);
const ROUNDS = Number(process.env.ROUNDS ?? 6);
const DELIVERIES = Number(process.env.DELIVERIES ?? 300);
const WARMUP = Number(process.env.WARMUP ?? 800);
const COLD = Number(process.env.COLD ?? 300);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const SIZES_KB = (process.env.SIZES_KB ?? '1,10,100').split(',').map(Number);
const STARTUP_RUNS = Number(process.env.STARTUP_RUNS ?? 3);
const WRANGLER_STARTUP = process.env.WRANGLER_STARTUP !== '0';
const DEADLINE_S = Number(process.env.DEADLINE_S ?? 900);
const REQUEST_TIMEOUT_MS = 10_000;

const WORKERS = {
  rust: rustWorker(path.join(ROOT, 'build')),
  js: REFERENCE,
  floor: FLOOR,
  d1floor: D1_FLOOR,
};
const LABEL = { rust: 'Rust', js: 'JS', floor: 'floor: read body, answer 200', d1floor: 'D1 floor: JS reference without verification' };
const FLOORS = new Set(['floor', 'd1floor']);

function rssMiB(pid) {
  const m = readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmRSS:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

async function start(name, live) {
  const before = new Set(workerdChildren());
  const t0 = performance.now();
  // Miniflare 5 takes a new options shape; the v4 one converts (and stays readable).
  const mf = new Miniflare(convertV4MiniflareOptions({
    // Each Worker writes its log line, as in production (workerd emits it as a
    // structured log on stdout); Miniflare parses it and hands it here, to be dropped
    // (Miniflare 5 ignores v4's handleRuntimeStdio and would print every line).
    handleStructuredLogs: () => {},
    workers: [{
      name,
      ...WORKERS[name],
      compatibilityDate: COMPAT_DATE,
      d1Databases: { DB: `bench-${name}` },
      bindings: { STRIPE_WEBHOOK_SECRET: SECRET },
    }],
  }));
  live.add(mf);
  const url = await mf.ready;
  const ready = performance.now() - t0;
  const db = await mf.getD1Database('DB');
  await migrate(db);
  const [pid] = workerdChildren().filter((p) => !before.has(p));
  if (!pid) throw new Error(`no workerd process found for ${name}`);
  // Startup: process start to the first 200 on a signed delivery (includes the migration).
  const [first] = deliveries(1, 1);
  const res = await post(url, first);
  if (res.status !== 200) throw new Error(`${name}: first delivery answered ${res.status}: ${res.text}`);
  const firstOk = performance.now() - t0;
  if (!FLOORS.has(name)) await checkIngress(name, url, first);
  return { name, mf, url, pid, db, ready, firstOk };
}

/** Both Workers answer alike: 200 "duplicate" for a redelivery, 400 for a bad signature. */
async function checkIngress(name, url, delivered) {
  const again = await post(url, delivered);
  if (again.status !== 200 || JSON.parse(again.text).status !== 'duplicate') {
    throw new Error(`${name}: a redelivery answered ${again.status}: ${again.text}`);
  }
  const [fresh] = deliveries(1, 1);
  const forged = { payload: fresh.payload.replace('"amount":2000', '"amount":2001'), header: fresh.header };
  const bad = await post(url, forged);
  if (bad.status !== 400) throw new Error(`${name}: a forged delivery answered ${bad.status}: ${bad.text}`);
}

const deliveries = (n, kb) => signed(n, kb, 'bench');

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
  const cpu0 = threadCpu(worker.pid).all;
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
  const cpu = threadCpu(worker.pid).all - cpu0;
  if (failures) throw new Error(`${worker.name}: ${failures} deliveries were not answered 200`);
  return { latencies, wall, cpu };
}

/**
 * Startup under `wrangler dev`, the way a merchant runs it (e2e/support/worker.mjs):
 * from the start (a `wrangler d1 migrations apply` run, then spawning `wrangler dev`;
 * no build) to its first answer ("ready"), then to the first 200 on a signed delivery.
 */
async function wranglerStartup(name) {
  // wrangler dev bundles the reference itself, from source.
  const main = name === 'rust' ? path.join(ROOT, 'build/entry.mjs') : path.join(ROOT, 'bench/reference/index.mjs');
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
  console.log(`per size: ${INSTANCES} fresh sets of processes, each ${WARMUP} warm-up deliveries per Worker then ${ROUNDS} alternating rounds of ${DELIVERIES}; concurrency ${CONCURRENCY}\n`);

  const live = new Set(); // every Miniflare not yet disposed, for the finally below
  const t0 = performance.now();
  try {
    // Startup: STARTUP_RUNS cold starts of each Worker under Miniflare, alternating
    // which goes first; the last pair stays up for the load.
    const startups = { rust: [], js: [] };
    for (let r = 0; r < STARTUP_RUNS; r += 1) {
      const order = r % 2 === 0 ? ['rust', 'js'] : ['js', 'rust'];
      for (const name of order) {
        const w = await start(name, live);
        startups[name].push(w);
        if (r < STARTUP_RUNS - 1) {
          live.delete(w.mf);
          await w.mf.dispose();
        }
      }
    }
    // The CPU rounds below start processes of their own.
    for (const w of [startups.rust.at(-1), startups.js.at(-1)]) {
      live.delete(w.mf);
      await w.mf.dispose();
    }
    // The median, then every run in order (the first start of the run reads from a cold page cache).
    const med = (name, key) => {
      const xs = startups[name].map((w) => w[key]);
      return `${median(xs).toFixed(0)} ms (${xs.map((x) => x.toFixed(0)).join(', ')})`;
    };
    console.log(`| startup (median of ${STARTUP_RUNS} cold starts, alternating; each run in order) | Rust | JS |`);
    console.log('|---|---|---|');
    console.log(`| Miniflare: process start → runtime ready | ${med('rust', 'ready')} | ${med('js', 'ready')} |`);
    console.log(`| Miniflare: process start → first 200 on a signed delivery (D1 migrated first) | ${med('rust', 'firstOk')} | ${med('js', 'firstOk')} |`);
    if (WRANGLER_STARTUP) {
      const dev = { rust: await wranglerStartup('rust'), js: await wranglerStartup('js') };
      console.log(`| \`wrangler dev\` (one start each): start → first answer, including \`wrangler d1 migrations apply\`, no build | ${dev.rust.ready.toFixed(0)} ms | ${dev.js.ready.toFixed(0)} ms |`);
      console.log(`| \`wrangler dev\`: first answer → first 200 on a signed delivery | ${dev.rust.first.toFixed(0)} ms | ${dev.js.first.toFixed(0)} ms |`);
    }
    console.log('');

    console.log('| body | Worker | req/s | p50 | p99 | workerd CPU s per 1,000 deliveries | above the floor | above the D1 floor | workerd RSS after |');
    console.log('|---|---|---|---|---|---|---|---|---|');
    const summary = [];
    for (const kb of SIZES_KB) {
      const results = { rust: [], js: [], floor: [], d1floor: [] };
      const cold = { rust: [], js: [] };
      let last = [];
      for (let instance = 0; instance < INSTANCES; instance += 1) {
        // Fresh processes for every set: a workerd process keeps its own layout and JIT
        // state for its whole life, which moves its CPU per delivery by a few percent
        // from one process to the next (BENCHMARKS.md), so one pair of processes cannot
        // tell a few percent apart however many rounds it runs.
        const names = instance % 2 === 0 ? ['rust', 'js', 'floor', 'd1floor'] : ['js', 'rust', 'd1floor', 'floor'];
        const workers = [];
        for (const name of names) workers.push(await start(name, live));
        // Warm-up: JIT and Liftoff→TurboFan tier-up, D1 statement cache.
        // A new isolate: the first COLD deliveries after the startup check, one Worker at
        // a time, alternating which goes first.
        const first = instance % 2 === 0 ? ['rust', 'js'] : ['js', 'rust'];
        for (const name of first) {
          const w = workers.find((x) => x.name === name);
          cold[name].push(await load(w, deliveries(COLD, kb)));
        }
        for (const w of workers) await load(w, deliveries(WARMUP, kb));
        for (let r = 0; r < ROUNDS; r += 1) {
          const order = r % 2 === 0 ? workers : workers.slice().reverse();
          for (const w of order) results[w.name].push(await load(w, deliveries(DELIVERIES, kb)));
        }
        // Both Workers (and the D1 floor) recorded every delivery exactly once (the
        // redelivery and the forged delivery of checkIngress add no row).
        for (const w of workers.filter((x) => x.name !== 'floor')) {
          const { results: [{ n }] } = await w.db.prepare('SELECT COUNT(*) AS n FROM events').all();
          const expected = 1 + (FLOORS.has(w.name) ? 0 : COLD) + WARMUP + ROUNDS * DELIVERIES;
          if (n !== expected) throw new Error(`${w.name}: ${n} events in D1, expected ${expected}`);
        }
        last = workers.map((w) => ({ name: w.name, rss: rssMiB(w.pid) }));
        for (const w of workers) {
          live.delete(w.mf);
          await w.mf.dispose();
        }
      }
      const row = {};
      for (const name of Object.keys(results)) {
        const runs = results[name];
        const lat = runs.flatMap((x) => x.latencies).sort((a, b) => a - b);
        row[name] = {
          rps: median(runs.map((x) => DELIVERIES / x.wall)),
          p50: pct(lat, 50),
          p99: pct(lat, 99),
          cpu: median(runs.map((x) => (x.cpu / DELIVERIES) * 1000)),
          perRound: runs.map((x) => x.cpu),
        };
      }
      for (const name of ['rust', 'js', 'floor', 'd1floor']) {
        const m = row[name];
        const rss = last.find((w) => w.name === name).rss;
        const above = name === 'floor' ? '' : `${(m.cpu - row.floor.cpu).toFixed(3)}`;
        const aboveD1 = FLOORS.has(name) ? '' : `${(m.cpu - row.d1floor.cpu).toFixed(3)}`;
        console.log(`| ${kb} KB | ${LABEL[name]} | ${m.rps.toFixed(0)} | ${m.p50.toFixed(2)} ms | ${m.p99.toFixed(2)} ms | ${m.cpu.toFixed(3)} | ${above} | ${aboveD1} | ${rss.toFixed(0)} MiB |`);
      }
      summary.push({ kb, ...row, cold });
    }
    const ratio = (a, b) => (b > 0 ? `${(a / b).toFixed(2)}×` : 'n/a');
    console.log(`\n| body | req/s Rust ÷ JS (>1: Rust faster) | p50 Rust ÷ JS (<1: Rust faster) | p99 Rust ÷ JS | **CPU per delivery Rust ÷ JS** (<1: Rust cheaper; median of the ${INSTANCES * ROUNDS} per-round ratios) | each set's median | CPU above the floor Rust ÷ JS | CPU Rust − JS (ms per delivery) |`);
    console.log('|---|---|---|---|---|---|---|---|');
    // No ratio above the D1 floor: the reference's part there is within noise of zero.
    for (const { kb, rust, js, floor: f } of summary) {
      const paired = rust.perRound.map((c, i) => c / js.perRound[i]);
      const sets = Array.from({ length: INSTANCES }, (_, i) => `${median(paired.slice(i * ROUNDS, (i + 1) * ROUNDS)).toFixed(2)}×`);
      console.log(`| ${kb} KB | ${ratio(rust.rps, js.rps)} | ${ratio(rust.p50, js.p50)} | ${ratio(rust.p99, js.p99)} | **${median(paired).toFixed(2)}×** | ${sets.join(' / ')} | ${ratio(rust.cpu - f.cpu, js.cpu - f.cpu)} | ${(rust.cpu - js.cpu).toFixed(3)} |`);
    }
    console.log(`\n| body | a new isolate's first ${COLD} deliveries: CPU per delivery Rust ÷ JS (median of the sets) | each set | Rust, ms per delivery (median) | JS |`);
    console.log('|---|---|---|---|---|');
    for (const { kb, cold } of summary) {
      const perSet = cold.rust.map((r, i) => r.cpu / cold.js[i].cpu);
      const ms = (runs) => median(runs.map((x) => (x.cpu / COLD) * 1000)).toFixed(3);
      console.log(`| ${kb} KB | **${median(perSet).toFixed(2)}×** | ${perSet.map((x) => `${x.toFixed(2)}×`).join(' / ')} | ${ms(cold.rust)} | ${ms(cold.js)} |`);
    }
    console.log('\nD1 holds exactly one row per delivery for both Workers; both answered a redelivery 200 "duplicate" and a forged one 400.');
    console.log(`Total ${((performance.now() - t0) / 1000).toFixed(0)} s.`);
  } finally {
    await Promise.all([...live].map((mf) => mf.dispose().catch(() => {})));
  }
}

/**
 * SIGKILLs every process descended from this one (workerd under Miniflare, wrangler dev
 * and the `wrangler d1 migrations apply` that e2e/support/worker.mjs runs before it,
 * which no exit hook tracks). The whole tree is read before the first kill, so a child
 * reparented to init by its parent's death is still found.
 */
function killDescendants() {
  const children = new Map();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch { /* gone */ }
  }
  const tree = [];
  for (let i = 0, queue = [process.pid]; i < queue.length; i += 1) {
    for (const child of children.get(queue[i]) ?? []) { tree.push(child); queue.push(child); }
  }
  for (const pid of tree) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
}
// On any exit (the normal one finds nothing left), on a signal and past the deadline.
process.on('exit', killDescendants);
for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]]) process.on(signal, () => process.exit(code));

const deadline = setTimeout(() => {
  console.error(`bench/workers.mjs: gave up after ${DEADLINE_S} s`);
  process.exit(2);
}, DEADLINE_S * 1000);
deadline.unref();
await main();
