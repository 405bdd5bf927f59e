-- depends: 0003_idempotency_keys
-- Field-level encryption (docs/encryption.md): the keys that sealed data here, by
-- name and fingerprint only, and the user each stored response is about (purged with it).
CREATE TABLE encryption_keys (
    name TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL CHECK (purpose IN ('kek', 'index')),
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    retired_at TEXT
);

ALTER TABLE idempotency_keys ADD COLUMN user_id TEXT;
CREATE INDEX idempotency_keys_user_id_idx ON idempotency_keys (user_id);
