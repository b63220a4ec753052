// The official SDK is the oracle for the Stripe-Signature header (issue 15, item 9).
// Every header below is judged by `stripe.webhooks.constructEvent` (Node, the
// `stripe` package the Worker claims to agree with) at the instant it is sent, then
// the same bytes are delivered to the built Worker under `wrangler dev`: the Worker
// answers 200 exactly when the SDK accepts, 400 exactly when it refuses, except the
// two documented refusals (README "What Stripe sees"): a timestamp more than 60 s
// ahead, and a `t` that `parseInt` reads as NaN (the SDK signs "NaN." and skips the
// age check). The events are `customer.created`, which the Worker records as
// `ignored`: no fulfilment, and every event id is new.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import Stripe from 'stripe';

import { startWorker } from './support/worker.mjs';
import { WEBHOOK_PATH, event, now, readResponse, rid } from './support/stripe.mjs';

const SECRET = `whsec_${rid('oracle')}`;
const TOLERANCE = 300;
const MAX_FUTURE_SECS = 60;
const SEED = 0x15_0009; // issue 15, item 9
const GENERATED = 200;
const SUBTLE_BYTES = 1024; // src/subtle.rs MIN_BYTES: from here SubtleCrypto hashes

const crypto = Stripe.createNodeCryptoProvider();
const sdk = new Stripe('sk_test_oracle_not_used').webhooks;

/** The v1 value the SDK computes for `text.payload` under SECRET (any text, e.g. "+17…"). */
const sig = (text, payload) => crypto.computeHMACSignature(`${text}.${payload}`, SECRET);

/** A fresh ignored event, padded to at least `minBytes`. */
function payloadOf(minBytes = 0) {
  const evt = event('customer.created', { id: rid('cus'), object: 'customer', metadata: { pad: '' } });
  const base = JSON.stringify(evt).length;
  if (minBytes > base) evt.data.object.metadata.pad = 'x'.repeat(minBytes - base);
  return JSON.stringify(evt);
}

/**
 * Which documented exception, if any, applies to a header the SDK accepted. The
 * classifier restates the SDK's own reading (cjs/Webhooks.js parseHeader: split on
 * "," then "=", last `t` wins, `parseInt(kv[1], 10)`) only to name the exception.
 */
function exceptionFor(header, nowSecs) {
  let timestamp = -1;
  for (const item of header.split(',')) {
    const kv = item.split('=');
    if (kv[0] === 't') timestamp = parseInt(kv[1], 10);
  }
  if (Number.isNaN(timestamp)) return 'nan_timestamp';
  if (timestamp - nowSecs > MAX_FUTURE_SECS) return 'future_timestamp';
  return null;
}

let worker;
const tally = { accepted: 0, refused: 0, exceptions: 0 };

/**
 * Delivers `header` with `payload` and compares with the SDK. Returns null when they
 * agree, else a description of the disagreement. `header` must be a valid header
 * value; what is compared is the value as sent (fetch trims outer whitespace).
 */
async function judge(name, header, payload) {
  const sent = new Headers({ 'Stripe-Signature': header }).get('Stripe-Signature');
  const receivedAt = Date.now();
  let sdkVerdict;
  let sdkError = '';
  try {
    sdk.constructEvent(Buffer.from(payload), sent, SECRET, TOLERANCE, undefined, receivedAt);
    sdkVerdict = 'accept';
  } catch (e) {
    sdkVerdict = 'refuse';
    sdkError = String(e.message).split('\n')[0];
  }
  const exception = sdkVerdict === 'accept' ? exceptionFor(sent, Math.floor(receivedAt / 1000)) : null;
  const expected = sdkVerdict === 'accept' && exception === null ? 200 : 400;
  const res = await readResponse(await fetch(new URL(WEBHOOK_PATH, worker.url), {
    method: 'POST',
    headers: { 'Content-Type': 'application/json; charset=utf-8', 'Stripe-Signature': sent },
    body: payload,
    signal: AbortSignal.timeout(15_000),
  }));
  if (exception) tally.exceptions += 1;
  else if (expected === 200) tally.accepted += 1;
  else tally.refused += 1;
  if (res.status === expected) {
    if (expected === 200) assert.equal(res.json?.status, 'ignored', `${name}: ${res.text}`);
    return null;
  }
  return `${name}: header ${JSON.stringify(sent)}: SDK ${sdkVerdict}${sdkError ? ` (${sdkError})` : ''}` +
    `${exception ? `, documented exception ${exception}` : ''}; Worker ${res.status} ${res.text}`;
}

// The fixed corpus: (T, payload) -> header, T the current time in seconds.
const good = (T, p) => sig(T, p);
const FIXED = {
  'canonical': (T, p) => `t=${T},v1=${good(T, p)}`,
  'generateTestHeaderString': (T, p) => Stripe.webhooks.generateTestHeaderString({ payload: p, secret: SECRET, timestamp: T }),
  'leading zeros, signed over the number': (T, p) => `t=000${T},v1=${good(T, p)}`,
  'leading zeros, signed over the raw text': (T, p) => `t=000${T},v1=${sig(`000${T}`, p)}`,
  'plus sign, signed over the number': (T, p) => `t=+${T},v1=${good(T, p)}`,
  'plus sign, signed over the raw text': (T, p) => `t=+${T},v1=${sig(`+${T}`, p)}`,
  'space before the timestamp': (T, p) => `t= ${T},v1=${good(T, p)}`,
  'tab before the timestamp': (T, p) => `t=\t${T},v1=${good(T, p)}`,
  'letters after the timestamp': (T, p) => `t=${T}abc,v1=${good(T, p)}`,
  'fraction after the timestamp': (T, p) => `t=${T}.5,v1=${good(T, p)}`,
  'space after the timestamp': (T, p) => `t=${T} ,v1=${good(T, p)}`,
  'exponent read up to the e': (T, p) => `t=1.7e9,v1=${sig('1', p)}`,
  'space after a comma': (T, p) => `t=${T}, v1=${good(T, p)}`,
  'tab after a comma': (T, p) => `t=${T},\tv1=${good(T, p)}`,
  'space after a comma before t': (T, p) => `v1=${good(T, p)}, t=${T}`,
  'space before the equals sign of t': (T, p) => `t =${T},v1=${good(T, p)}`,
  'space before the equals sign of v1': (T, p) => `t=${T},v1 =${good(T, p)}`,
  'space after the equals sign of v1': (T, p) => `t=${T},v1= ${good(T, p)}`,
  'space after the signature': (T, p) => `t=${T},v1=${good(T, p)} ,v0=x`,
  'repeated t, the last one signed': (T, p) => `t=${T - 1000},t=${T},v1=${good(T, p)}`,
  'repeated t, the first one signed': (T, p) => `t=${T},t=${T - 1000},v1=${good(T, p)}`,
  'repeated v1, the second matches': (T, p) => `t=${T},v1=${'0'.repeat(64)},v1=${good(T, p)}`,
  'repeated v1, the same twice': (T, p) => `t=${T},v1=${good(T, p)},v1=${good(T, p)}`,
  'v0 only': (T, p) => `t=${T},v0=${good(T, p)}`,
  'v0 and v1': (T, p) => `t=${T},v0=${'0'.repeat(64)},v1=${good(T, p)}`,
  'unknown schemes': (T, p) => `t=${T},v2=x,scheme=y,v1=${good(T, p)},junk`,
  'v1=<sig>=x': (T, p) => `t=${T},v1=${good(T, p)}=x`,
  't=T=5': (T, p) => `t=${T}=5,v1=${good(T, p)}`,
  'empty items, leading and trailing commas': (T, p) => `,t=${T},,v1=${good(T, p)},`,
  'upper-case T': (T, p) => `T=${T},v1=${good(T, p)}`,
  'upper-case V1': (T, p) => `t=${T},V1=${good(T, p)}`,
  'upper-case hex signature': (T, p) => `t=${T},v1=${good(T, p).toUpperCase()}`,
  'signature one character short': (T, p) => `t=${T},v1=${good(T, p).slice(1)}`,
  '19-digit t, signed as the SDK prints it': (T, p) => `t=1234567890123456789,v1=${sig(`${parseInt('1234567890123456789', 10)}`, p)}`,
  '19-digit t, signed over the raw text': (T, p) => `t=1234567890123456789,v1=${sig('1234567890123456789', p)}`,
  '400-digit t (Infinity)': (T, p) => `t=${'9'.repeat(400)},v1=${sig('Infinity', p)}`,
  '30 s ahead': (T, p) => `t=${T + 30},v1=${sig(T + 30, p)}`,
  'an hour ahead': (T, p) => `t=${T + 3600},v1=${sig(T + 3600, p)}`,
  'a minute older than the tolerance': (T, p) => `t=${T - TOLERANCE - 60},v1=${sig(T - TOLERANCE - 60, p)}`,
  'just inside the tolerance': (T, p) => `t=${T - TOLERANCE + 30},v1=${sig(T - TOLERANCE + 30, p)}`,
  'non-numeric t (NaN)': (T, p) => `t=abc,v1=${sig('NaN', p)}`,
  'empty t (NaN)': (T, p) => `t=,v1=${sig('NaN', p)}`,
  't without = (NaN)': (T, p) => `t,v1=${sig('NaN', p)}`,
  'a good t then a NaN t': (T, p) => `t=${T},t=x,v1=${sig('NaN', p)}`,
  'negative t': (T, p) => `t=-${T},v1=${sig(-T, p)}`,
  't=-0': (T, p) => `t=-0,v1=${sig('0', p)}`,
  't=-1 (the SDK\'s "no timestamp")': (T, p) => `t=-1,v1=${sig('-1', p)}`,
  'no t': (T, p) => `v1=${good(T, p)}`,
  'empty v1 beside a good one': (T, p) => `t=${T},v1=${good(T, p)},v1=`,
  'bare v1 beside a good one': (T, p) => `t=${T},v1,v1=${good(T, p)}`,
  'wrong secret': (T, p) => `t=${T},v1=${crypto.computeHMACSignature(`${T}.${p}`, `${SECRET}x`)}`,
  'tampered body': (T, p) => `t=${T},v1=${sig(T, `${p} `)}`,
  'garbage': () => 'garbage',
};

/** mulberry32: a small deterministic PRNG, so a failing generated case can be re-run. */
function prng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The generated corpus: `GENERATED` headers, each a function of (T, payload) drawn from
 * the seeded PRNG (the draws do not depend on T, so the same seed gives the same cases).
 * Built from pieces rather than byte noise so that a good share is accepted: 1-2 `t`
 * items in one of many spellings, 1-3 `v1` items (signed over the SDK's number, over the
 * raw text, bogus, empty, bare, upper-case, with a tail), noise items, shuffled, then a
 * few item-level mutations (whitespace before keys or around `=`, upper-case keys).
 */
function generated(seed, count) {
  const rand = prng(seed);
  const pick = (xs) => xs[Math.floor(rand() * xs.length)];
  const int = (n) => Math.floor(rand() * n);
  const T_FORMS = [
    (T) => `${T}`, (T) => `+${T}`, (T) => `00${T}`, (T) => ` ${T}`, (T) => `\t${T}`, (T) => `${T}.5`,
    (T) => `${T}abc`, (T) => `${T}=9`, (T) => `${T - 100}`, (T) => `${T - 1000}`, (T) => `${T + 30}`,
    (T) => `${T + 3600}`, (T) => `-${T}`, () => 'abc', () => '', () => '-1', () => '1234567890123456789',
    (T) => ` +0${T}x`,
  ];
  const cases = [];
  for (let i = 0; i < count; i++) {
    const tForms = Array.from({ length: 1 + int(2) }, () => pick(T_FORMS));
    const bareT = rand() < 0.04;
    const v1Kinds = Array.from({ length: 1 + int(3) }, () => pick(
      ['number', 'number', 'number', 'number', 'first', 'raw', 'bogus', 'upper', 'tail', 'empty', 'bare'],
    ));
    const noise = Array.from({ length: int(3) }, () => pick(['v0=abc', 'scheme=x', '', 'junk', 'v2=y', 'T=1', 'V1=00']));
    const order = Array.from({ length: 64 }, () => rand());
    const mutations = Array.from({ length: int(3) }, () => ({ kind: pick(['space-key', 'tab-key', 'space-eq', 'eq-space', 'upper']), at: rand() }));
    const edges = { lead: rand() < 0.1, trail: rand() < 0.1 };
    cases.push([`generated #${i}`, (T, p) => {
      const tTexts = tForms.map((f) => f(T));
      const lastT = tTexts.at(-1);
      // The SDK signs `${parseInt(last t)}`: the generator signs that most of the
      // time, so that many cases are accepted; the oracle still decides.
      const signed = {
        number: `${parseInt(lastT, 10)}`,
        first: `${parseInt(tTexts[0], 10)}`,
        raw: lastT,
      };
      const v1 = v1Kinds.map((kind) => {
        switch (kind) {
          case 'bogus': return `v1=${'ab'.repeat(32)}`;
          case 'upper': return `v1=${sig(signed.number, p).toUpperCase()}`;
          case 'tail': return `v1=${sig(signed.number, p)}=x`;
          case 'empty': return 'v1=';
          case 'bare': return 'v1';
          default: return `v1=${sig(signed[kind], p)}`;
        }
      });
      const tItems = tTexts.map((text) => `t=${text}`);
      if (bareT) tItems.push('t');
      let items = [...tItems, ...v1, ...noise];
      // Shuffle, then put the t items back in their drawn order in the t slots (which
      // one is last decides what the SDK signs).
      const isT = (item) => item === 't' || item.startsWith('t=');
      items = items.map((item, j) => ({ item, k: order[j] })).sort((a, b) => a.k - b.k).map((x) => x.item);
      let next = 0;
      items = items.map((item) => (isT(item) ? tItems[next++] : item));
      for (const m of mutations) {
        const j = Math.floor(m.at * items.length);
        const item = items[j];
        const eq = item.indexOf('=');
        switch (m.kind) {
          case 'space-key': items[j] = ` ${item}`; break;
          case 'tab-key': items[j] = `\t${item}`; break;
          case 'space-eq': items[j] = eq < 0 ? item : `${item.slice(0, eq)} ${item.slice(eq)}`; break;
          case 'eq-space': items[j] = eq < 0 ? item : `${item.slice(0, eq + 1)} ${item.slice(eq + 1)}`; break;
          case 'upper': items[j] = item.toUpperCase(); break;
        }
      }
      return `${edges.lead ? ',' : ''}${items.join(',')}${edges.trail ? ',' : ''}`;
    }]);
  }
  return cases;
}

describe('Stripe-Signature: the Worker agrees with the official SDK', { timeout: 300_000 }, () => {
  before(async () => {
    worker = await startWorker({
      vars: { STRIPE_WEBHOOK_TOLERANCE_SECS: String(TOLERANCE), MAX_BODY_BYTES: '65536' },
      secrets: { STRIPE_WEBHOOK_SECRET: SECRET },
    });
  });

  after(async () => {
    await worker?.stop();
    // eslint-disable-next-line no-console
    console.log(`oracle tally: ${JSON.stringify(tally)}`);
  });

  for (const [side, minBytes] of [['below 1 KiB (Rust HMAC)', 0], ['from 1 KiB (SubtleCrypto)', SUBTLE_BYTES + 512]]) {
    test(`the fixed corpus, ${side}: ${Object.keys(FIXED).length} variants`, { timeout: 120_000 }, async () => {
      const disagreements = [];
      for (const [name, make] of Object.entries(FIXED)) {
        const payload = payloadOf(minBytes);
        assert.equal(Buffer.byteLength(payload) >= SUBTLE_BYTES, minBytes > 0, `${Buffer.byteLength(payload)} B is on the wrong side`);
        const problem = await judge(name, make(now(), payload), payload);
        if (problem) disagreements.push(problem);
      }
      assert.deepEqual(disagreements, []);
    });
  }

  test(`${GENERATED} generated headers (seed ${SEED})`, { timeout: 150_000 }, async () => {
    const before = { ...tally };
    const disagreements = [];
    for (const [name, make] of generated(SEED, GENERATED)) {
      const payload = payloadOf();
      const problem = await judge(name, make(now(), payload), payload);
      if (problem) disagreements.push(problem);
    }
    assert.deepEqual(disagreements, []);
    // The corpus means something only if both verdicts are common.
    const accepted = tally.accepted - before.accepted;
    const refused = tally.refused - before.refused;
    assert.ok(accepted >= 30 && refused >= 30, `too one-sided: ${accepted} accepted, ${refused} refused`);
  });
});
