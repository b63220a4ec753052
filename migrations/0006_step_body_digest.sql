-- A retry sends the body of the first attempt, or nothing (issue 15, item 5).
-- Before a step's first call the engine keeps the digests of its request body: an
-- HMAC-SHA256 of the whole body and a short one per JSON field, keyed by the webhook
-- secret (core/src/fulfilment/first_body.rs). A later attempt whose body differs is
-- not sent: the step fails, naming the fields. Digests only: no customer data.
ALTER TABLE steps ADD COLUMN body_digest TEXT;
