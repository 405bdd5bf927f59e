-- depends: 0002_soft_delete_and_sorting
-- Idempotency-Key claims and the responses they replay. Times as in users.
CREATE TABLE idempotency_keys (
    key TEXT PRIMARY KEY NOT NULL,
    fingerprint TEXT NOT NULL,
    claimed_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    -- NULL while the claiming request runs.
    status INTEGER,
    headers TEXT,
    body BLOB
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
