-- depends: 0003_idempotency_keys
-- Field-level encryption (docs/encryption.md): the keys that sealed data here, by
-- name and fingerprint only, and the user each stored response is about (purged with it).
CREATE TABLE encryption_keys (
    name TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL CHECK (purpose IN ('kek', 'index')),
    fingerprint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    retired_at TEXT,
    -- Blind-index keys: the column holding their index ('a': email_normalized, 'b':
    -- email_index_next) and when every user had it there (NULL while re-indexing).
    home TEXT CHECK (home IN ('a', 'b')),
    ready_at TEXT
);

ALTER TABLE idempotency_keys ADD COLUMN user_id TEXT;
CREATE INDEX idempotency_keys_user_id_idx ON idempotency_keys (user_id);

-- The second email index column: a re-index (a new blind-index key, or encrypting the
-- users of a database that held them in plaintext) fills it while the first still
-- decides uniqueness; the two then swap roles. Unique, like the first; partial, so
-- that the users it is empty for (most, most of the time) cost no index entry.
ALTER TABLE users ADD COLUMN email_index_next TEXT;
CREATE UNIQUE INDEX users_email_index_next_key ON users (email_index_next)
    WHERE email_index_next IS NOT NULL;
