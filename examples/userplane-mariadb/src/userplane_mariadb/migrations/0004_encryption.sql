-- depends: 0003_idempotency_keys
-- Field-level encryption (docs/encryption.md); in step with the core's 0004_encryption.sql.
-- Sealed email and name: their text forms (ASCII) run to 2048 and 1280 characters. Only
-- the index columns are unique (email_normalized and, below, email_index_next: an email as
-- given, or its blind index), so the longer email needs no longer key. Both columns already have 2-byte lengths (320 and 200 utf8mb4 characters are
-- over 255 bytes), so widening them changes metadata only: no table copy. At the widest
-- the row's VARCHARs add up to about 16 KiB, well inside MariaDB's 65535-byte row limit;
-- InnoDB (DYNAMIC rows) keeps long values off the page.
ALTER TABLE users
    MODIFY email VARCHAR(2048) NOT NULL,
    MODIFY full_name VARCHAR(1280) NULL;

-- The user each stored response is about, as users.id holds it (CHAR(36) text, in the
-- table's utf8mb4_nopad_bin, like users.id): purge_user_responses matches the two, and
-- deletes a purged user's responses through this index.
ALTER TABLE idempotency_keys ADD COLUMN user_id CHAR(36) NULL;
CREATE INDEX idempotency_keys_user_id_idx ON idempotency_keys (user_id);

-- The keys that sealed data here, by name and fingerprint only. Text and times as in users.
CREATE TABLE encryption_keys (
    name VARCHAR(32) NOT NULL PRIMARY KEY,
    purpose VARCHAR(5) NOT NULL CHECK (purpose IN ('kek', 'index')),
    fingerprint VARCHAR(64) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    retired_at DATETIME(6) NULL,
    -- Blind-index keys: the column holding their index ('a': email_normalized, 'b':
    -- email_index_next) and when every user had it there (NULL while re-indexing).
    home CHAR(1) NULL CHECK (home IN ('a', 'b')),
    ready_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

-- The second email index column, filled by a re-index while the first still decides
-- uniqueness (docs/encryption.md); unique, and compared like email_normalized.
ALTER TABLE users ADD COLUMN email_index_next VARCHAR(320) NULL;
CREATE UNIQUE INDEX users_email_index_next_key ON users (email_index_next);
