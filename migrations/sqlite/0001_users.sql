-- The users table. Times are ISO 8601 UTC text with microseconds
-- ('2026-01-02T03:04:05.000006Z', always 27 characters), so text order is time order.
CREATE TABLE users (
    id TEXT PRIMARY KEY NOT NULL,
    email TEXT NOT NULL,
    email_normalized TEXT NOT NULL,
    full_name TEXT,
    -- fold(full_name), computed by the storage, for case-insensitive search.
    full_name_folded TEXT,
    is_active INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Decides races on the email: two writers of one address, one wins.
CREATE UNIQUE INDEX users_email_normalized_key ON users (email_normalized);

-- Keyset pagination walks this index.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);
