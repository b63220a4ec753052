// A stand-in for the services the Worker calls while fulfilling an order: the
// internal license server, the shipping service, the Stripe API and Resend. One HTTP
// server on 127.0.0.1, every call recorded, faults injectable per service.
//
// Routes. Point the Worker at it with LICENSE_SERVER_URL = `${url}/license`,
// SHIPPING_URL = `${url}/shipping/orders`, STRIPE_API_BASE = `${url}/stripe`,
// EMAIL_API_BASE = `${url}/email`:
//   POST /license/generate                              service "license"  -> {license_key}
//   POST /shipping/orders                               service "shipping" -> {shipment_id}
//   POST /email/emails                                  service "email"    -> {id} (Resend)
//   POST /license/revoke                                service "license"  -> {valid, status, license_key, revoked_at}
//        body exactly {"license_key"} (another field: 400), unknown key: 404, twice: same revoked_at
//   POST /shipping/orders/:order_id/cancel              service "shipping" -> 200 {status: "cancelled"}
//        unknown order: 404; markShipped(order_id): 422 {"error": "already_shipped"}; idempotent by key
//   GET  /stripe/v1/checkout/sessions/:id/line_items    service "stripe"   -> Stripe list object
//   GET  /stripe/v1/payment_intents/:id                 service "stripe"   -> the stored object
//   POST /stripe/v1/checkout/sessions                   service "stripe"   -> a new Checkout Session
//   GET  /stripe/v1/promotion_codes?code=&active=       service "stripe"   -> list of setPromotionCode()s; like Stripe,
//                                                                           the coupon's applies_to only with
//                                                                           expand[]=data.coupon.applies_to (a coupon
//                                                                           given by id is expanded from setCoupon())
//   GET  /stripe/v1/coupons/:id                         service "stripe"   -> the stored coupon
// Every Stripe answer carries a `Request-Id: req_…` header, as Stripe's do.
//
// Idempotency (license, shipping), like a real server: the first request with an
// `Idempotency-Key` does the work and its answer is stored; a repeat with the same
// key and the same body gets the stored answer and does nothing; the same key with
// a different body gets 422 (as Stripe does). Requests without a key always do the work.
//
// Resend (email): needs `Authorization: Bearer …` (else 401) and a JSON body with `from`,
// `to` (a non-empty array) and `subject` (else 422 `validation_error`). Like Resend, an
// `Idempotency-Key` seen with the same body, byte for byte, replays the first answer and
// sends nothing; with another body it is refused with 409 `invalid_idempotent_request`.
//
// Faults, queued per service and consumed one per call, in order:
//   failNext(service, n, status = 500)  answer `status` with an error body; no work done
//   hangNext(service, n)                never answer (until reset()/stop()); no work done
//   delayNext(service, n, ms)           do the work at once, answer after `ms`
//   closeNext(service, n)               destroy the socket without answering; no work done
//
// Chaos (the load and fault soak, bench/soak.mjs): chaos({ failRate, hangRate, closeRate,
// slowRate, seed, ... }) turns on seeded random faults for every call that no queued
// fault above claims. See the "Chaos" block below.

import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

const SERVICES = ['license', 'shipping', 'stripe', 'email'];
const STOP_TIMEOUT_MS = 3_000;

const rand = (prefix) => `${prefix}_${randomBytes(12).toString('hex')}`;

function stripeError(status, message, extra = {}) {
  const type = status >= 500 ? 'api_error' : 'invalid_request_error';
  return { error: { type, message, ...extra } };
}

function resendError(statusCode, name, message) {
  return { statusCode, name, message };
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

export async function startStandin() {
  /** @type {Array<{service:string, method:string, path:string, query:object, headers:object, body:any, at:number, outcome?:string, status?:number}>} */
  const calls = [];
  const faults = new Map(SERVICES.map((s) => [s, []]));
  const pending = new Set(); // { res, timer?, release() } for hung and delayed requests
  const sockets = new Set();
  let licenses = [];
  let shipments = [];
  let emails = []; // e-mails Resend's stand-in actually sent: { id, idempotency_key, request, raw, at }
  let emailKeys = new Map(); // Idempotency-Key -> { raw, answer }
  let revocations = []; // { license_key, revoked_at, at }: first revocations only
  let cancellations = []; // { order_id, shipment_id, reason, idempotency_key, at }
  let shipped = new Set(); // order ids whose parcel has left
  let idempotency = { license: new Map(), shipping: new Map(), cancel: new Map() };
  let lineItems = new Map(); // sessionId -> { items, pageSize }
  let paymentIntents = new Map();
  let events = []; // Stripe event objects, newest first as GET /v1/events lists them
  let eventsListing = { pageSize: 100, delayMs: 0 }; // how GET /v1/events pages and how slowly
  let sessions = new Map(); // Checkout Sessions GET /v1/checkout/sessions/:id returns
  let created = []; // Checkout Sessions POST /v1/checkout/sessions created: { id, form, idempotency_key }
  let stripeKeys = new Map(); // Idempotency-Key -> { raw, answer } of session creations
  let promotionCodes = []; // promotion code objects, each with its customer-facing `code`
  let coupons = new Map(); // coupon id -> coupon object (as `expand[]=applies_to` gives it)

  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      try {
        handle(req, res, Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        if (!res.headersSent) send(res, 500, { error: `stand-in error: ${err.message}` });
      }
    });
  });
  // Idle keep-alive connections stay open for the whole suite (stop() closes them): a
  // short timeout races the Worker reusing a pooled connection just as the stand-in
  // closes it, and that reset reads as a failed upstream call (a 502 no test asked for).
  server.keepAliveTimeout = 120_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });

  function send(res, status, body, extraHeaders = {}) {
    if (res.writableEnded || res.destroyed) return;
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...extraHeaders });
    res.end(text);
  }

  function serviceOf(pathname) {
    const first = pathname.split('/')[1];
    return SERVICES.includes(first) ? first : 'unknown';
  }

  function handle(req, res, raw) {
    const u = new URL(req.url, 'http://standin');
    const service = serviceOf(u.pathname);
    let body = raw;
    if (raw.length > 0) {
      try { body = JSON.parse(raw); } catch { /* keep the raw string */ }
    }
    const call = {
      service,
      method: req.method,
      path: u.pathname,
      query: Object.fromEntries(u.searchParams),
      search: u.search, // the raw query, for repeated keys such as types[]
      headers: Object.fromEntries(Object.entries(req.headers).map(([k, v]) => [k.toLowerCase(), v])),
      body,
      raw, // the body exactly as received, for signature checks
      at: Date.now(),
    };
    calls.push(call);
    // Stripe names every answer, errors included, with a Request-Id.
    if (service === 'stripe') call.requestId = rand('req');
    const headers = call.requestId ? { 'request-id': call.requestId } : {};

    const fault = faults.get(service)?.shift() ?? chaosFault(service, call, req);
    if (fault?.kind === 'fail') {
      call.outcome = 'failed';
      call.status = fault.status;
      const errBody = service === 'stripe'
        ? stripeError(fault.status, `injected failure (${fault.status})`)
        : service === 'email'
          ? resendError(fault.status, 'injected_failure', `injected failure (${fault.status})`)
          : { error: `injected failure (${fault.status})` };
      return send(res, fault.status, errBody, headers);
    }
    if (fault?.kind === 'hang') {
      call.outcome = 'hung';
      const entry = { release: () => { res.destroy(); } };
      pending.add(entry);
      res.on('close', () => pending.delete(entry));
      return undefined;
    }
    if (fault?.kind === 'close') {
      call.outcome = 'closed';
      req.socket.destroy();
      return undefined;
    }

    const [status, answer] = route(service, req.method, u, call);
    call.status = status;
    // A slow event listing (setEventsListing) answers every page after its delay.
    const listingDelay = !fault && u.pathname === '/stripe/v1/events' ? eventsListing.delayMs : 0;
    if (fault?.kind === 'delay' || listingDelay > 0) {
      call.outcome = 'delayed';
      const entry = {
        release: () => { clearTimeout(entry.timer); res.destroy(); },
      };
      entry.timer = setTimeout(() => {
        pending.delete(entry);
        send(res, status, answer, headers);
      }, fault?.ms ?? listingDelay);
      pending.add(entry);
      res.on('close', () => { clearTimeout(entry.timer); pending.delete(entry); });
      return undefined;
    }
    call.outcome = 'ok';
    return send(res, status, answer, headers);
  }

  /** Does the work of one call; returns [status, body]. */
  function route(service, method, u, call) {
    const p = u.pathname;
    if (service === 'license' && p === '/license/generate') {
      if (method !== 'POST') return [405, { error: 'method not allowed' }];
      return idempotent('license', call, () => {
        const license = { license_key: rand('lic') };
        licenses.push({ ...license, idempotency_key: call.headers['idempotency-key'] ?? null, request: call.body, at: call.at });
        return [200, license];
      });
    }
    if (service === 'shipping' && p === '/shipping/orders') {
      if (method !== 'POST') return [405, { error: 'method not allowed' }];
      return idempotent('shipping', call, () => {
        const shipment = { shipment_id: rand('shp') };
        shipments.push({ ...shipment, idempotency_key: call.headers['idempotency-key'] ?? null, request: call.body, at: call.at });
        return [200, shipment];
      });
    }
    if (service === 'license' && p === '/license/revoke') {
      if (method !== 'POST') return [405, { error: 'method not allowed' }];
      return revoke(call);
    }
    const cancel = p.match(/^\/shipping\/orders\/([^/]+)\/cancel$/);
    if (service === 'shipping' && cancel) {
      if (method !== 'POST') return [405, { error: 'method not allowed' }];
      return idempotent('cancel', call, () => cancelOrder(decodeURIComponent(cancel[1]), call));
    }
    if (service === 'stripe') return stripe(method, u, call);
    if (service === 'email' && p === '/email/emails') {
      if (method !== 'POST') return [405, resendError(405, 'method_not_allowed', 'Method not allowed')];
      return sendEmail(call);
    }
    return [404, { error: `no route for ${method} ${p}` }];
  }

  /** Resend's POST /emails: validation, then its idempotency (same key and body replays, another body 409). */
  function sendEmail(call) {
    if (!/^Bearer \S+/.test(call.headers.authorization ?? '')) {
      return [401, resendError(401, 'missing_api_key', 'Missing API key in the authorization header')];
    }
    const b = call.body;
    const valid = b && typeof b === 'object' && typeof b.from === 'string' && Array.isArray(b.to) && b.to.length > 0
      && typeof b.subject === 'string' && (typeof b.text === 'string' || typeof b.html === 'string');
    const key = call.headers['idempotency-key'];
    const seen = key ? emailKeys.get(key) : undefined;
    if (seen) {
      if (seen.raw !== call.raw) {
        return [409, resendError(409, 'invalid_idempotent_request', 'Same idempotency key used with a different request payload. Change your idempotency key or payload.')];
      }
      call.replayed = true;
      return seen.answer;
    }
    if (!valid) return [422, resendError(422, 'validation_error', 'Missing `from`, `to`, `subject` or a body')];
    const id = randomUUID();
    emails.push({ id, idempotency_key: key ?? null, request: b, raw: call.raw, at: call.at });
    const answer = [200, { id }];
    if (key) emailKeys.set(key, { raw: call.raw, answer });
    return answer;
  }

  /** Like the Simple License Server's /revoke: strict body, naturally idempotent. */
  function revoke(call) {
    const body = call.body;
    if (!body || typeof body !== 'object' || Array.isArray(body)) return [400, { error: 'invalid request body' }];
    const extra = Object.keys(body).find((k) => k !== 'license_key');
    if (extra) return [400, { error: `invalid request body: json: unknown field "${extra}"` }];
    if (typeof body.license_key !== 'string') return [400, { error: 'license_key is required' }];
    if (!licenses.some((l) => l.license_key === body.license_key)) return [404, { error: 'license not found' }];
    let done = revocations.find((r) => r.license_key === body.license_key);
    if (!done) {
      done = { license_key: body.license_key, revoked_at: new Date(call.at).toISOString(), at: call.at };
      revocations.push(done);
    }
    return [200, { valid: false, status: 'revoked', license_key: done.license_key, revoked_at: done.revoked_at }];
  }

  /** The cancel contract of README "Taking back". */
  function cancelOrder(orderId, call) {
    const order = shipments.find((s) => s.request?.order_id === orderId);
    if (!order) return [404, { error: 'order not found' }];
    if (shipped.has(orderId)) return [422, { error: 'already_shipped' }];
    cancellations.push({ ...call.body, idempotency_key: call.headers['idempotency-key'] ?? null, at: call.at });
    return [200, { status: 'cancelled', order_id: orderId }];
  }

  function idempotent(service, call, work) {
    const key = call.headers['idempotency-key'];
    if (!key) return work();
    const store = idempotency[service];
    const seen = store.get(key);
    const fingerprint = canonical(call.body);
    if (seen) {
      if (seen.fingerprint !== fingerprint) {
        return [422, { error: `Idempotency-Key ${key} was already used with different parameters` }];
      }
      call.replayed = true;
      return seen.answer;
    }
    const answer = work();
    if (answer[0] < 500) store.set(key, { fingerprint, answer });
    return answer;
  }

  // A promotion code as Stripe lists it: `applies_to` is not included unless expanded
  // (`expand[]=data.coupon.applies_to`, which also expands a coupon given by id).
  function expandCoupon(pc, expand) {
    const withRestriction = expand.includes('data.coupon.applies_to');
    let coupon = pc.coupon;
    if (typeof coupon === 'string' && (withRestriction || expand.includes('data.coupon'))) {
      coupon = coupons.get(coupon) ?? coupon;
    }
    if (coupon && typeof coupon === 'object' && !withRestriction) {
      const { applies_to: _hidden, ...rest } = coupon;
      coupon = rest;
    }
    return coupon === undefined ? pc : { ...pc, coupon };
  }

  function stripe(method, u, call) {
    if (!/^Bearer \S+/.test(call.headers.authorization ?? '')) {
      return [401, stripeError(401, 'You did not provide an API key.')];
    }
    if (method === 'POST' && u.pathname === '/stripe/v1/checkout/sessions') return createSession(call);
    if (method !== 'GET') return [405, stripeError(405, `Unrecognized request URL (${method}: ${u.pathname.replace(/^\/stripe/, '')}).`)];
    let m = u.pathname.match(/^\/stripe\/v1\/checkout\/sessions\/([^/]+)\/line_items$/);
    if (m) {
      const sessionId = decodeURIComponent(m[1]);
      const entry = lineItems.get(sessionId);
      if (!entry) {
        return [404, stripeError(404, `No such checkout.session: '${sessionId}'`, { code: 'resource_missing', param: 'session' })];
      }
      return list(entry, u, `/v1/checkout/sessions/${sessionId}/line_items`);
    }
    m = u.pathname.match(/^\/stripe\/v1\/payment_intents\/([^/]+)$/);
    if (m) {
      const id = decodeURIComponent(m[1]);
      const pi = paymentIntents.get(id);
      if (!pi) return [404, stripeError(404, `No such payment_intent: '${id}'`, { code: 'resource_missing', param: 'intent' })];
      return [200, pi];
    }
    m = u.pathname.match(/^\/stripe\/v1\/checkout\/sessions\/([^/]+)$/);
    if (m) {
      const id = decodeURIComponent(m[1]);
      const session = sessions.get(id);
      if (!session) return [404, stripeError(404, `No such checkout.session: '${id}'`, { code: 'resource_missing', param: 'session' })];
      return [200, session];
    }
    if (u.pathname === '/stripe/v1/promotion_codes') {
      // Filtered by code (case-insensitive, as Stripe matches codes) and active.
      const code = u.searchParams.get('code');
      const active = u.searchParams.get('active');
      const items = promotionCodes.filter((pc) => (code === null || pc.code.toLowerCase() === code.toLowerCase())
        && (active === null || String(pc.active) === active));
      return list({ items: items.map((pc) => expandCoupon(pc, u.searchParams.getAll('expand[]'))) , pageSize: 100 }, u, '/v1/promotion_codes');
    }
    m = u.pathname.match(/^\/stripe\/v1\/coupons\/([^/]+)$/);
    if (m) {
      const id = decodeURIComponent(m[1]);
      const coupon = coupons.get(id);
      if (!coupon) return [404, stripeError(404, `No such coupon: '${id}'`, { code: 'resource_missing', param: 'id' })];
      return [200, coupon];
    }
    if (u.pathname === '/stripe/v1/events') {
      // Filtered by created[gte], created[lt] and types[] as Stripe does, then paginated
      // (limit, starting_after), at most eventsListing.pageSize a page.
      const since = Number(u.searchParams.get('created[gte]') ?? -Infinity);
      const until = Number(u.searchParams.get('created[lt]') ?? Infinity);
      const types = u.searchParams.getAll('types[]');
      const items = events.filter((e) => e.created >= since && e.created < until
        && (types.length === 0 || types.includes(e.type)));
      return list({ items, pageSize: eventsListing.pageSize }, u, '/v1/events');
    }
    return [404, stripeError(404, `Unrecognized request URL (GET: ${u.pathname.replace(/^\/stripe/, '')}).`)];
  }

  /**
   * POST /v1/checkout/sessions, form-encoded. Like Stripe: the same Idempotency-Key
   * with the same parameters replays the first answer; with other parameters, 400
   * `idempotency_error`. A discount must name a known promotion code.
   */
  function createSession(call) {
    if (call.headers['content-type'] !== 'application/x-www-form-urlencoded') {
      return [400, stripeError(400, 'Invalid request: expected a form-encoded body')];
    }
    const form = [...new URLSearchParams(call.raw)];
    call.form = form;
    const key = call.headers['idempotency-key'];
    const seen = key ? stripeKeys.get(key) : undefined;
    if (seen) {
      if (seen.raw !== call.raw) {
        return [400, stripeError(400, `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`, { type: 'idempotency_error' })];
      }
      call.replayed = true;
      return seen.answer;
    }
    const get = (name) => form.find(([k]) => k === name)?.[1];
    const answer = (() => {
      if (!get('line_items[0][price]') || !get('mode') || !get('success_url')) {
        return [400, stripeError(400, 'Missing required param: line_items, mode or success_url.')];
      }
      const promo = get('discounts[0][promotion_code]');
      if (promo && !promotionCodes.some((pc) => pc.id === promo)) {
        return [400, stripeError(400, `No such promotion code: '${promo}'`, { param: 'discounts[0][promotion_code]' })];
      }
      const id = rand('cs_test');
      const metadata = Object.fromEntries(form.filter(([k]) => k.startsWith('metadata[')).map(([k, v]) => [k.slice(9, -1), v]));
      const session = {
        id,
        object: 'checkout.session',
        mode: get('mode'),
        url: `https://checkout.stripe.com/c/pay/${id}`,
        metadata,
        success_url: get('success_url'),
        cancel_url: get('cancel_url') ?? null,
        payment_status: 'unpaid',
        status: 'open',
      };
      sessions.set(id, session);
      created.push({ id, form, idempotency_key: key ?? null });
      return [200, session];
    })();
    if (key && answer[0] < 500) stripeKeys.set(key, { raw: call.raw, answer });
    return answer;
  }

  /** A Stripe list page: `limit` (1..100, default 10, capped at the pageSize given), `starting_after` / `ending_before`. */
  function list({ items, pageSize }, u, url) {
    const q = u.searchParams;
    let limit = 10;
    if (q.has('limit')) {
      limit = Number(q.get('limit'));
      if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
        return [400, stripeError(400, 'Invalid integer: limit must be between 1 and 100', { param: 'limit' })];
      }
    }
    limit = Math.min(limit, pageSize);
    let start = 0;
    let end = items.length;
    if (q.has('starting_after')) {
      const i = items.findIndex((it) => it.id === q.get('starting_after'));
      if (i < 0) return [400, stripeError(400, `Invalid starting_after: ${q.get('starting_after')}`, { param: 'starting_after' })];
      start = i + 1;
    } else if (q.has('ending_before')) {
      const i = items.findIndex((it) => it.id === q.get('ending_before'));
      if (i < 0) return [400, stripeError(400, `Invalid ending_before: ${q.get('ending_before')}`, { param: 'ending_before' })];
      end = i;
      start = Math.max(0, end - limit);
    }
    const data = items.slice(start, Math.min(end, start + limit));
    const hasMore = q.has('ending_before') ? start > 0 : start + data.length < items.length;
    return [200, { object: 'list', data, has_more: hasMore, url }];
  }

  // ---- Chaos: seeded random faults for the soak (bench/soak.mjs) ----------------------
  // Kept in one block, apart from the routes, so that both can change independently.
  //
  // Each call that no queued fault claims draws one number in [0, 1) and, by the rates,
  // gets one of:
  //   fail   answer `failStatus` (503) with an error body; no work done
  //   hang   answer nothing; after `hangMs` (set it above the Worker's UPSTREAM_TIMEOUT_MS)
  //          the socket is destroyed, so nothing stays open; no work done
  //   close  destroy the socket at once without answering; no work done
  //   slow   do the work at once, answer after `hangMs`: the Worker has given up by then,
  //          so the work is done but the answer is lost (only the Idempotency-Key saves
  //          the retry from doing it twice)
  //   none   a normal answer
  // The draw is a hash of (seed, service, the call's key, how many calls with that key came
  // before), where the key is the Idempotency-Key, else method + path + query. So with the
  // same seed and the same ids, the n-th attempt of a given call always meets the same fate,
  // whatever the interleaving of concurrent requests: a failing soak can be replayed.
  let chaos = null;

  function chaosFault(service, call, req) {
    if (!chaos || !chaos.services.includes(service)) return undefined;
    const key = call.headers['idempotency-key'] ?? `${call.method} ${call.path}${call.search}`;
    const counterKey = `${service}\u0000${key}`;
    const n = chaos.seen.get(counterKey) ?? 0;
    chaos.seen.set(counterKey, n + 1);
    const digest = createHash('sha256').update(`${chaos.seed}\u0000${counterKey}\u0000${n}`).digest();
    const x = digest.readUInt32BE(0) / 2 ** 32;
    let kind = 'none';
    let edge = 0;
    for (const k of ['fail', 'hang', 'close', 'slow']) {
      edge += chaos.rates[k];
      if (x < edge) { kind = k; break; }
    }
    chaos.stats[service][kind] += 1;
    if (kind === 'none') return undefined;
    call.chaos = kind;
    if (kind === 'fail') return { kind: 'fail', status: chaos.failStatus };
    if (kind === 'close') return { kind: 'close' };
    if (kind === 'slow') return { kind: 'delay', ms: chaos.hangMs };
    // hang: the queued-fault code parks the response; this timer ends it.
    const socket = req.socket;
    const timer = setTimeout(() => socket.destroy(), chaos.hangMs);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
    return { kind: 'hang' };
  }

  function startChaos({
    failRate = 0.3, hangRate = 0, closeRate = 0, slowRate = 0,
    failStatus = 503, hangMs = 3_000, seed = 1, services = SERVICES,
  } = {}) {
    const rates = { fail: failRate, hang: hangRate, close: closeRate, slow: slowRate };
    for (const [k, r] of Object.entries(rates)) {
      if (typeof r !== 'number' || !(r >= 0 && r <= 1)) throw new Error(`chaos ${k}Rate must be in [0, 1], got ${r}`);
    }
    const total = failRate + hangRate + closeRate + slowRate;
    if (total > 1 + 1e-9) throw new Error(`chaos rates add up to ${total} > 1`);
    if (!Number.isInteger(failStatus) || failStatus < 100 || failStatus > 599) throw new Error(`bad failStatus ${failStatus}`);
    if (!Number.isFinite(hangMs) || hangMs < 0) throw new Error(`bad hangMs ${hangMs}`);
    for (const s of services) if (!SERVICES.includes(s)) throw new Error(`unknown service ${s} (one of ${SERVICES.join(', ')})`);
    const stats = Object.fromEntries(SERVICES.map((s) => [s, { none: 0, fail: 0, hang: 0, close: 0, slow: 0 }]));
    chaos = { rates, failStatus, hangMs, seed: String(seed), services: [...services], seen: new Map(), stats };
  }
  // ---- end of Chaos ---------------------------------------------------------------------

  function queueFault(service, n, fault) {
    if (!faults.has(service)) throw new Error(`unknown service ${service} (one of ${SERVICES.join(', ')})`);
    if (!Number.isInteger(n) || n < 1) throw new Error(`n must be a positive integer, got ${n}`);
    for (let i = 0; i < n; i++) faults.get(service).push({ ...fault });
  }

  function releasePending() {
    for (const entry of pending) entry.release();
    pending.clear();
  }

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  let stopped = false;

  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    /** Forgets calls, faults, issued licenses/shipments, stored objects; releases hung requests. */
    reset() {
      releasePending();
      calls.length = 0;
      for (const q of faults.values()) q.length = 0;
      licenses = [];
      shipments = [];
      emails = [];
      emailKeys = new Map();
      idempotency = { license: new Map(), shipping: new Map(), cancel: new Map() };
      revocations = [];
      cancellations = [];
      shipped = new Set();
      lineItems = new Map();
      paymentIntents = new Map();
      events = [];
      eventsListing = { pageSize: 100, delayMs: 0 };
      sessions = new Map();
      created = [];
      stripeKeys = new Map();
      promotionCodes = [];
      coupons = new Map();
      chaos = null;
    },
    failNext(service, n = 1, status = 500) { queueFault(service, n, { kind: 'fail', status }); },
    hangNext(service, n = 1) { queueFault(service, n, { kind: 'hang' }); },
    delayNext(service, n = 1, ms = 1_000) { queueFault(service, n, { kind: 'delay', ms }); },
    closeNext(service, n = 1) { queueFault(service, n, { kind: 'close' }); },
    /** Line items of a Checkout Session (Stripe `item` objects, each with an `id`). */
    setLineItems(sessionId, items, pageSize = 10) {
      lineItems.set(sessionId, { items: items.map((it) => ({ ...it })), pageSize });
    },
    setPaymentIntent(id, object) { paymentIntents.set(id, { id, object: 'payment_intent', ...object }); },
    /** Events GET /v1/events lists (give them newest first, as Stripe lists them). */
    setEvents(list) { events = list.map((e) => ({ ...e })); },
    /** How GET /v1/events answers: at most `pageSize` events a page (Stripe: 100), each page after `delayMs`. */
    setEventsListing({ pageSize = 100, delayMs = 0 } = {}) { eventsListing = { pageSize, delayMs }; },
    /** The Checkout Session GET /v1/checkout/sessions/:id returns (replays, re-drives, queue mode). */
    setSession(object) { sessions.set(object.id, { object: 'checkout.session', ...object }); },
    /** A promotion code GET /v1/promotion_codes lists (give `id`, `code`, `active`, `coupon`, ...). */
    setPromotionCode(object) { promotionCodes.push({ object: 'promotion_code', ...object }); },
    /** The coupon GET /v1/coupons/:id returns. */
    setCoupon(object) { coupons.set(object.id, { object: 'coupon', ...object }); },
    /** Checkout Sessions actually created: [{id, form: [[key, value], ...], idempotency_key}]. */
    sessionsCreated: () => created.slice(),
    /** Licenses actually issued: [{license_key, idempotency_key, request, at}]. */
    licensesIssued: () => licenses.slice(),
    /** Shipments actually created: [{shipment_id, idempotency_key, request, at}]. */
    shipmentsCreated: () => shipments.slice(),
    /** E-mails Resend's stand-in actually sent: [{id, idempotency_key, request, raw, at}]. */
    emailsSent: () => emails.slice(),
    /** Licenses revoked (first revocations only): [{license_key, revoked_at, at}]. */
    revocations: () => revocations.slice(),
    /** Shipments cancelled (each cancelling call that did the work): [{order_id, shipment_id, reason, idempotency_key, at}]. */
    cancellations: () => cancellations.slice(),
    /** The parcel of this order has left: its cancel answers 422 already_shipped. */
    markShipped(orderId) { shipped.add(orderId); },
    /** Calls recorded for one service. */
    callsTo: (service) => calls.filter((c) => c.service === service),
    // ---- Chaos (see the block above) ----
    /** Turns on seeded random faults: { failRate, hangRate, closeRate, slowRate, failStatus, hangMs, seed, services }. */
    chaos(options) { startChaos(options); },
    /** Turns random faults off (queued faults still apply). */
    chaosOff() { chaos = null; },
    /** Draws so far, by service and kind: { license: { none, fail, hang, close, slow }, … }; null when off. */
    chaosStats: () => (chaos ? structuredClone(chaos.stats) : null),
    // ---- end of Chaos ----
    async stop() {
      if (stopped) return;
      stopped = true;
      releasePending();
      const closed = new Promise((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const timeout = new Promise((resolve) => setTimeout(resolve, STOP_TIMEOUT_MS).unref());
      await Promise.race([closed, timeout]);
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await Promise.race([closed, new Promise((r) => setTimeout(r, 500).unref())]);
    },
  };
}
