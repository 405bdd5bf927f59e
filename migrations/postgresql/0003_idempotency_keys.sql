-- depends: 0002_soft_delete_and_sorting
-- Idempotency-Key claims and the responses they replay.
CREATE TABLE idempotency_keys (
    key text PRIMARY KEY,
    fingerprint text NOT NULL,
    claimed_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    -- NULL while the claiming request runs.
    status integer,
    headers text,
    body bytea
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
