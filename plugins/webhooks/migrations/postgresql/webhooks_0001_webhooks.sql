-- Webhook subscriptions and their transactional outbox.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id uuid PRIMARY KEY,
    url text NOT NULL,
    events text[] NOT NULL,          -- actions of userplane changes ("user.created"), or "*"
    secret text NOT NULL,            -- "whsec_" + base64 of 32 random bytes; '' once deleted
    description text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    disabled_at timestamptz          -- set when deleted: no new deliveries, none sent
);

-- The outbox: one row per (change, matching subscription), written in the change's
-- transaction. Payloads are thin: ids, field names and non-personal values only.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq bigserial PRIMARY KEY,       -- outbox order; orders a receiver's events per user
    id uuid NOT NULL UNIQUE,         -- the webhook-id header: the same on every retry
    subscription_id uuid NOT NULL REFERENCES webhook_subscriptions (id),
    event_type text NOT NULL,
    ordering_key text NOT NULL,      -- the user id (or the target): one head at a time
    payload text NOT NULL,           -- the JSON body, sent and signed byte for byte
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    claimed_until timestamptz,       -- a dispatcher's lease: past it, any dispatcher may claim
    claimed_by text,
    last_status integer,             -- the receiver's last HTTP status, if it answered
    last_error text,                 -- why the last attempt failed: short, never a secret
    created_at timestamptz NOT NULL,
    delivered_at timestamptz
);

-- The claim: due pending rows, oldest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at, seq) WHERE status = 'pending';
-- The head of each (subscription, user): is an earlier one still pending?
CREATE INDEX IF NOT EXISTS webhook_deliveries_heads
    ON webhook_deliveries (subscription_id, ordering_key, seq) WHERE status = 'pending';
-- Listings: a subscription's deliveries, and every delivery in a status, newest first.
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_subscription
    ON webhook_deliveries (subscription_id, seq);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_status
    ON webhook_deliveries (status, seq);
