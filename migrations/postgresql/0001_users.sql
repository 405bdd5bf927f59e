-- The users table; in step with sqlite/0001_users.sql.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    email_normalized text NOT NULL,
    full_name text,
    -- fold(full_name), computed by the storage, for case-insensitive search.
    full_name_folded text,
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Decides races on the email: two writers of one address, one wins.
CREATE UNIQUE INDEX users_email_normalized_key ON users (email_normalized);

-- Keyset pagination walks this index.
CREATE INDEX users_created_at_id_idx ON users (created_at, id);
