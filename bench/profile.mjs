// Where a Worker's CPU goes, per function: a V8 CPU profile of one isolate of the
// workerd process (the Worker by default; Miniflare's local D1 object with TARGET=d1:db),
// taken through Miniflare's inspector port while signed deliveries run, the same ones
// bench/workers.mjs sends. Prints, per function, its self samples (the stack's top
// frame), and per area (the Worker's wasm, its JavaScript glue, workerd's D1 binding,
// native functions).
//
// Reading it. V8 samples by wall clock: on a busy machine a sample also lands when the
// thread is preempted, so absolute samples per delivery move with the load. Compare
// shares within one profile, or compare Workers through what both run identically: the
// D1 binding's `first()` and its callbacks, the same JavaScript in both isolates. "per
// D1 sample" divides by those, which is how two profiles taken minutes apart compare.
//
// Run (after `bash bench/workers.sh` once, which bundles the reference):
//   KEEP_WASM_NAMES=1 FORCE_BUILD=1 bash scripts/build.sh    # wasm functions get their names
//   node bench/profile.mjs                                   # the Rust Worker (build/)
//   WORKER=js node bench/profile.mjs                         # the reference
// Knobs: WORKER (rust | js | d1floor), TARGET (below), BUILD_DIR (build), SIZE_KB (1),
// DELIVERIES (2000), WARMUP (400), CONCURRENCY (8), INTERVAL_US (50), TOP (25), OUT (a
// directory: the .cpuprofile, for Chrome DevTools).

import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { Miniflare, convertV4MiniflareOptions } from 'miniflare';
import WebSocket from 'ws';

import {
  COMPAT_DATE, D1_FLOOR, REFERENCE, ROOT, SECRET, deliveries as signed, migrate, newWorkerd, rustWorker, threadCpu, workerdChildren,
} from './support.mjs';

const WORKER = process.env.WORKER ?? 'rust';
const BUILD_DIR = path.resolve(ROOT, process.env.BUILD_DIR ?? 'build');
const SIZE_KB = Number(process.env.SIZE_KB ?? 1);
const DELIVERIES = Number(process.env.DELIVERIES ?? 2000);
const WARMUP = Number(process.env.WARMUP ?? 400);
const CONCURRENCY = Number(process.env.CONCURRENCY ?? 8);
const INTERVAL_US = Number(process.env.INTERVAL_US ?? 50);
const TOP = Number(process.env.TOP ?? 25);
const OUT = process.env.OUT;
// Which isolate to profile, by a part of its inspector title: the Worker itself by
// default; `d1:db` is Miniflare's local D1 object, `d1:db:entry` its router. One at a
// time: every isolate runs on workerd's one thread, and two profilers sampling it at
// once attribute each other's time.
const TARGET = process.env.TARGET ?? `user:${WORKER}`;

// The same Workers as bench/workers.mjs.
const WORKERS = {
  rust: rustWorker(BUILD_DIR),
  js: REFERENCE,
  d1floor: D1_FLOOR,
};

const deliveries = (n, kb) => signed(n, kb, 'profile');

async function post(url, { payload, header }) {
  const res = await fetch(new URL('/webhooks/stripe', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': header },
    body: payload,
  });
  return { status: res.status, text: await res.text() };
}

async function load(url, batch) {
  let next = 0;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < batch.length) {
      const delivery = batch[next];
      next += 1;
      const res = await post(url, delivery);
      if (res.status !== 200) throw new Error(`answered ${res.status}: ${res.text}`);
    }
  }));
}

/** A minimal CDP client over one WebSocket. */
function cdp(wsUrl) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl);
    let id = 0;
    const pending = new Map();
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id && pending.has(msg.id)) {
        const { ok, fail } = pending.get(msg.id);
        pending.delete(msg.id);
        if (msg.error) fail(new Error(`${msg.error.message} (${wsUrl})`)); else ok(msg.result);
      }
    });
    ws.on('error', reject);
    ws.on('open', () => resolve({
      send: (method, params = {}) => new Promise((ok, fail) => {
        id += 1;
        pending.set(id, { ok, fail });
        ws.send(JSON.stringify({ id, method, params }));
      }),
      close: () => ws.close(),
    }));
  });
}

/**
 * Self samples per function of one profile (the top frame of each sample; idle and
 * "(program)" apart), and how many samples ran the D1 binding: under `first`/`batch` of
 * `cloudflare-internal:d1-api`, or its callbacks there and in `tracing-helpers`.
 */
function selfSamples(profile) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const self = new Map();
  let idle = 0;
  let d1 = 0;
  for (const sample of profile.samples) {
    const { callFrame: top } = byId.get(sample);
    if (top.functionName === '(idle)' || top.functionName === '(program)') {
      idle += 1;
      continue;
    }
    let inD1 = false;
    for (let id = sample; id !== undefined; id = parent.get(id)) {
      const { url } = byId.get(id).callFrame;
      if (url.includes('d1-api') || url.includes('tracing-helpers')) inD1 = true;
    }
    if (inD1) d1 += 1;
    const file = top.url ? top.url.split('/').pop() : '';
    const name = `${top.functionName || '(anonymous)'}${file ? ` ${file}:${top.lineNumber + 1}` : ''}`;
    const entry = self.get(name) ?? { n: 0, file };
    entry.n += 1;
    self.set(name, entry);
  }
  return { self, idle, d1 };
}

async function main() {
  console.log(`profile: ${WORKER}${WORKER === 'rust' ? ` (${path.relative(ROOT, BUILD_DIR)})` : ''}, ${SIZE_KB} KB, ${DELIVERIES} deliveries after ${WARMUP} warm-up, concurrency ${CONCURRENCY}, sampling every ${INTERVAL_US} µs`);
  console.log(`load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const before = workerdChildren();
  const mf = new Miniflare(convertV4MiniflareOptions({
    handleStructuredLogs: () => {},
    inspectorPort: 0,
    workers: [{
      name: WORKER,
      ...WORKERS[WORKER],
      compatibilityDate: COMPAT_DATE,
      d1Databases: { DB: `profile-${WORKER}` },
      bindings: { STRIPE_WEBHOOK_SECRET: SECRET },
    }],
  }));
  try {
    const url = await mf.ready;
    const db = await mf.getD1Database('DB');
    await migrate(db);
    const pid = newWorkerd(before);
    await load(url, deliveries(WARMUP, SIZE_KB));

    const inspector = await mf.getInspectorURL();
    const http = `http://${inspector.host}`;
    const targets = await (await fetch(`${http}/json/list`)).json();
    const sessions = [];
    const chosen = targets.filter((t) => (t.title ?? t.id).endsWith(TARGET));
    if (chosen.length !== 1) throw new Error(`TARGET ${TARGET} matches ${chosen.length} of: ${targets.map((t) => t.title ?? t.id).join(', ')}`);
    for (const t of chosen) {
      const session = await cdp(t.webSocketDebuggerUrl ?? `ws://${inspector.host}/${t.id}`);
      await session.send('Profiler.enable');
      await session.send('Profiler.setSamplingInterval', { interval: INTERVAL_US });
      sessions.push({ name: t.title ?? t.id, session });
    }
    const batch = deliveries(DELIVERIES, SIZE_KB);
    for (const { session } of sessions) await session.send('Profiler.start');
    const cpu0 = threadCpu(pid).all;
    const t0 = performance.now();
    await load(url, batch);
    const wall = performance.now() - t0;
    const cpu = threadCpu(pid).all - cpu0;
    const profiles = [];
    for (const { name, session } of sessions) {
      const { profile } = await session.send('Profiler.stop');
      profiles.push({ name, profile });
      session.close();
    }
    console.log(`workerd CPU while profiling: ${((cpu / DELIVERIES) * 1000).toFixed(3)} ms per delivery (profiler overhead included), ${(DELIVERIES / (wall / 1000)).toFixed(0)} req/s\n`);

    if (OUT) mkdirSync(OUT, { recursive: true });
    for (const { name, profile } of profiles) {
      const { self, idle, d1 } = selfSamples(profile);
      const work = [...self];
      const busy = work.reduce((a, [, e]) => a + e.n, 0);
      const share = (n) => `${((100 * n) / busy).toFixed(1)} %`;
      const perD1 = (n) => (d1 ? (n / d1).toFixed(3) : 'n/a');
      console.log(`## ${name}: ${busy} busy samples (${(busy / DELIVERIES).toFixed(2)} per delivery; ${idle} idle), ${d1} of them in the D1 binding; busy per D1 sample ${perD1(busy)}`);
      console.log('| self samples | % of busy | per D1 sample | function |');
      console.log('|---|---|---|---|');
      for (const [fn, { n }] of work.sort((a, b) => b[1].n - a[1].n).slice(0, TOP)) {
        console.log(`| ${n} | ${share(n)} | ${perD1(n)} | ${fn.replace(/\|/g, '\\|')} |`);
      }
      // By where the code lives: the Worker's wasm, its JavaScript, workerd's built-in
      // modules (the D1 binding), or native functions (the runtime's APIs, V8; no URL).
      const groups = new Map();
      for (const [, { n, file }] of work) {
        const group = !file ? '(native or V8)' : /\.wasm/.test(file) ? '(wasm)' : file;
        groups.set(group, (groups.get(group) ?? 0) + n);
      }
      console.log('\n| self samples | % of busy | per D1 sample | where |');
      console.log('|---|---|---|---|');
      for (const [g, n] of [...groups].sort((a, b) => b[1] - a[1])) console.log(`| ${n} | ${share(n)} | ${perD1(n)} | ${g} |`);
      console.log('');
      if (OUT) writeFileSync(path.join(OUT, `${WORKER}-${name.replace(/[^\w.-]+/g, '_')}.cpuprofile`), JSON.stringify(profile));
    }
  } finally {
    await mf.dispose();
  }
}

await main();
