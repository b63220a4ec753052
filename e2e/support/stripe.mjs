// Stripe-side helpers for the end-to-end tests: events shaped like Stripe's,
// signed with the official library, delivered the way Stripe delivers them.

import { randomBytes } from 'node:crypto';
import Stripe from 'stripe';

export const API_VERSION = '2025-03-31.basil';
export const WEBHOOK_PATH = '/webhooks/stripe';

/** Current time in unix seconds. */
export const now = () => Math.floor(Date.now() / 1000);

/** A random id with Stripe's prefix convention: rid('evt') -> 'evt_1a2b...'. */
export function rid(prefix) {
  return `${prefix}_test${randomBytes(12).toString('hex')}`;
}

/**
 * The `Stripe-Signature` header for `payload` (a string or Buffer, signed
 * byte for byte), computed by the official stripe package.
 */
export function sign(payload, secret, timestamp = now()) {
  return Stripe.webhooks.generateTestHeaderString({
    payload: Buffer.isBuffer(payload) ? payload.toString('utf8') : payload,
    secret,
    timestamp,
  });
}

/** A Stripe event envelope around `object`; `overrides` replace top-level fields. */
export function event(type, object = {}, overrides = {}) {
  return {
    id: rid('evt'),
    object: 'event',
    api_version: API_VERSION,
    created: now(),
    data: { object },
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
    ...overrides,
  };
}

/** A minimal completed Checkout Session, for events that need a data.object. */
export function checkoutSession(overrides = {}) {
  return {
    id: rid('cs'),
    object: 'checkout.session',
    amount_total: 2000,
    currency: 'usd',
    livemode: false,
    mode: 'payment',
    payment_intent: rid('pi'),
    payment_status: 'paid',
    status: 'complete',
    ...overrides,
  };
}

/**
 * POSTs `payload` (a string, exactly as signed) to the webhook endpoint.
 * With `secret`, signs it (at `timestamp`); `headers` are added last, so
 * `{ 'Stripe-Signature': ... }` there overrides the computed one.
 * Resolves with { status, headers, text, json, signature }.
 */
export async function deliver(url, payload, { secret, timestamp, headers = {}, method = 'POST' } = {}) {
  const signature = secret === undefined ? undefined : sign(payload, secret, timestamp ?? now());
  const res = await fetch(new URL(WEBHOOK_PATH, url), {
    method,
    headers: {
      'Content-Type': 'application/json; charset=utf-8',
      'User-Agent': 'Stripe/1.0 (+https://stripe.com/docs/webhooks)',
      ...(signature === undefined ? {} : { 'Stripe-Signature': signature }),
      ...headers,
    },
    body: payload,
    signal: AbortSignal.timeout(15_000),
  });
  return { ...(await readResponse(res)), signature };
}

/** Reads a fetch Response into { status, headers, text, json } (json null when not JSON). */
export async function readResponse(res) {
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}
