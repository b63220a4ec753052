// A/B of whole Workers on this shared machine: several builds of this Worker, the
// reference JavaScript Worker and, if asked, the floors of bench/workers.mjs, each in its
// own workerd under Miniflare, in many short alternating rounds; prints each one's workerd
// CPU per delivery and, per round, its ratio to the reference measured right beside it.
// Short rounds and paired ratios take the machine's load out; SETS of fresh processes
// take out each process's own offset (a few percent, BENCHMARKS.md). Even so, a step
// of 2 to 3 % needs several runs here to be told from noise.
//
// Run (after `bash bench/workers.sh` once, which bundles the reference):
//   cp -r build /tmp/before && <change> && bash scripts/build.sh
//   BUILDS=/tmp/before,build node bench/ab.mjs
// Knobs: BUILDS (comma-separated build directories; `floor` and `d1floor` add those
// Workers; a path ending in `.js` runs that bundled JavaScript Worker, e.g. a copy of
// bench/.build/reference/index.js that does one step several times), SIZE_KB (1), SETS (3), ROUNDS per set (12), DELIVERIES per round (200),
// WARMUP (200), CONCURRENCY (8).

import os from 'node:os';
import path from 'node:path';

import { Miniflare, convertV4MiniflareOptions } from 'miniflare';

import {
  COMPAT_DATE, D1_FLOOR, FLOOR, REFERENCE, ROOT, SECRET, deliveries as signed, migrate, newWorkerd, rustWorker, threadCpu, workerdChildren,
} from './support.mjs';
const BUILDS = (process.env.BUILDS ?? 'build').split(',');
const SIZE_KB = Number(process.env.SIZE_KB ?? 1);
const ROUNDS = Number(process.env.ROUNDS ?? 12);
const DELIVERIES = Number(process.env.DELIVERIES ?? 200);
const WARMUP = Number(process.env.WARMUP ?? 200);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const SETS = Number(process.env.SETS ?? 3);

/** The Miniflare options of one entry of BUILDS (or of the reference). */
function workerOf(name) {
  if (name === 'js') return REFERENCE;
  if (name === 'floor') return FLOOR;
  if (name === 'd1floor') return D1_FLOOR;
  // A bundled JavaScript Worker of its own (a variant of the reference, say).
  if (name.endsWith('.js')) return { modules: true, scriptPath: path.resolve(ROOT, name) };
  return rustWorker(path.resolve(ROOT, name));
}

const deliveries = (n) => signed(n, SIZE_KB, 'ab');

/** Sends `batch` at CONCURRENCY; the worker's CPU per delivery, in ms. */
async function load(w, batch) {
  let next = 0;
  const cpu0 = threadCpu(w.pid).all;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < batch.length) {
      const { payload, header } = batch[next];
      next += 1;
      const res = await fetch(new URL('/webhooks/stripe', w.url), {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'stripe-signature': header },
        body: payload,
      });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${w.name} answered ${res.status}: ${text}`);
    }
  }));
  return ((threadCpu(w.pid).all - cpu0) / batch.length) * 1000;
}

const median = (xs) => xs.slice().sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ratios = Object.fromEntries([...BUILDS, 'js'].map((name) => [name, []]));
const cpus = Object.fromEntries([...BUILDS, 'js'].map((name) => [name, []]));
const live = [];
try {
  console.log(`load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}; ${SETS} sets of fresh processes, each ${WARMUP} warm-up then ${ROUNDS} rounds of ${DELIVERIES} signed ${SIZE_KB} KB deliveries per Worker, concurrency ${CONCURRENCY}`);
  for (let set = 0; set < SETS; set += 1) {
    // Fresh processes for every set: a workerd process keeps its layout and JIT state
    // for life, and the same build in three processes side by side measured 0.99x,
    // 1.04x and 1.05x of one reference (BENCHMARKS.md).
    const workers = [];
    for (const name of [...BUILDS, 'js']) {
      const before = workerdChildren();
      const mf = new Miniflare(convertV4MiniflareOptions({
        handleStructuredLogs: () => {},
        workers: [{ name: 'w', ...workerOf(name), compatibilityDate: COMPAT_DATE, d1Databases: { DB: 'ab' }, bindings: { STRIPE_WEBHOOK_SECRET: SECRET } }],
      }));
      live.push(mf);
      const url = await mf.ready;
      const db = await mf.getD1Database('DB');
      await migrate(db);
      workers.push({ name, mf, url, pid: newWorkerd(before), cpu: [] });
    }
    for (const w of workers) await load(w, deliveries(WARMUP));
    for (let r = 0; r < ROUNDS; r += 1) {
      // Every Worker goes first in turn; every other round backwards.
      const order = workers.slice(r % workers.length).concat(workers.slice(0, r % workers.length));
      if (r % 2) order.reverse();
      for (const w of order) w.cpu.push(await load(w, deliveries(DELIVERIES)));
    }
    const js = workers.at(-1);
    for (const w of workers) {
      cpus[w.name].push(...w.cpu);
      ratios[w.name].push(...w.cpu.map((c, i) => c / js.cpu[i]));
      console.log(`set ${set + 1}: ${w.name} ${median(w.cpu.map((c, i) => c / js.cpu[i])).toFixed(3)}`);
    }
    await Promise.all(workers.map((w) => w.mf.dispose()));
    live.length = 0;
  }
  console.log('\n| Worker | CPU ms per delivery (median of rounds) | ÷ JS (median of per-round ratios, every set) |\n|---|---|---|');
  for (const name of [...BUILDS, 'js']) {
    console.log(`| ${name} | ${median(cpus[name]).toFixed(3)} | ${median(ratios[name]).toFixed(3)} |`);
  }
  console.log(`\nload average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
} finally {
  await Promise.all(live.map((mf) => mf.dispose()));
}
