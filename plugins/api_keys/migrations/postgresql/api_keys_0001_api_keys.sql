-- API keys: a lookup id and a SHA-256 of the key, never the key.
-- IF NOT EXISTS: databases migrated before the table moved into this plugin have it.
CREATE TABLE IF NOT EXISTS api_keys (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL,
    lookup text NOT NULL UNIQUE,
    secret_hash text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    revoked_at timestamptz,
    last_used_at timestamptz
);
