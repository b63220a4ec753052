-- Taking back when the money goes back (refunds, disputes, ended subscriptions).
-- Ids and states only: no customer data.

-- The ids later events name a purchase by: `charge.*` and `charge.dispute.*` carry the
-- PaymentIntent, `customer.subscription.*` the Subscription. Written from the Checkout
-- Session when the purchase is opened; purchases opened before this migration get
-- them the next time they are opened (any event about the session, a replay, a
-- re-drive, a queue message): `COALESCE`, never overwritten.
ALTER TABLE purchases ADD COLUMN payment_intent TEXT;   -- pi_...
ALTER TABLE purchases ADD COLUMN subscription   TEXT;   -- sub_... (subscription mode)

CREATE INDEX purchases_by_payment_intent ON purchases (payment_intent) WHERE payment_intent IS NOT NULL;
CREATE INDEX purchases_by_subscription   ON purchases (subscription)   WHERE subscription IS NOT NULL;

-- forward: fulfils (license, shipping, ...); reverse: takes back (revoke_license,
-- cancel_shipment). A forward step of a reversed purchase is never claimed from
-- pending, and one released after the reversal becomes cancelled.
ALTER TABLE steps ADD COLUMN direction TEXT NOT NULL DEFAULT 'forward';

-- One row per money-back event, recorded against the PaymentIntent or Subscription
-- whether or not the purchase is known yet (its checkout events late or lost): when
-- the purchase is opened later, the same statements apply it and nothing is fulfilled.
CREATE TABLE reversals (
  event_id       TEXT    PRIMARY KEY,      -- the Stripe event, evt_...
  ref            TEXT    NOT NULL,         -- pi_... or sub_...
  -- refunded | partial_refund | disputed | dispute_recorded | dispute_closed | subscription_ended
  kind           TEXT    NOT NULL,
  -- The purchase state it takes back as (refunded | disputed | cancelled); NULL when
  -- it is only recorded (a partial refund, a dispute with REVOKE_ON_DISPUTE=false, a
  -- dispute's outcome).
  purchase_state TEXT,
  detail         TEXT,                     -- a dispute's status (won, lost, ...), or NULL
  created_at     INTEGER NOT NULL          -- unix milliseconds
) STRICT;

CREATE INDEX reversals_by_ref ON reversals (ref, created_at);

-- Each purchase with a reversal that takes back, and that reversal (oldest first by
-- created_at, event_id where it matters).
CREATE VIEW purchase_reversals AS
SELECT p.session_id, r.event_id, r.purchase_state, r.created_at
FROM purchases p
JOIN reversals r ON r.ref = p.payment_intent OR r.ref = p.subscription
WHERE r.purchase_state IS NOT NULL;
