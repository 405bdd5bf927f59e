-- Webhook subscriptions and their transactional outbox, as on PostgreSQL. Times are
-- fixed-width UTC text ('%Y-%m-%dT%H:%M:%S.%fZ': text order is time order), ids text.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id TEXT PRIMARY KEY NOT NULL,
    url TEXT NOT NULL,
    events TEXT NOT NULL,            -- a JSON array of actions ("user.created") or "*"
    secret TEXT NOT NULL,            -- "whsec_" + base64 of 32 random bytes; '' once deleted
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    disabled_at TEXT
);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused, even after the newest is gone
    id TEXT NOT NULL UNIQUE,
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions (id),
    event_type TEXT NOT NULL,
    ordering_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    claimed_until TEXT,
    claimed_by TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    delivered_at TEXT
);

CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_heads
    ON webhook_deliveries (subscription_id, ordering_key, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_subscription
    ON webhook_deliveries (subscription_id, seq);
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_status
    ON webhook_deliveries (status, seq);
