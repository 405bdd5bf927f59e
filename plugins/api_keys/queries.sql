-- Written once for every dialect: parameters as :name (userplane.sql.Dialect.compile),
-- no RETURNING, nothing beyond what SQLite, PostgreSQL and MariaDB share.

-- name: insert_api_key
INSERT INTO api_keys (id, name, role, lookup, secret_hash, created_at, expires_at)
VALUES (:id, :name, :role, :lookup, :secret_hash, :created_at, :expires_at)

-- name: get_api_key
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys WHERE lookup = :lookup

-- name: get_api_key_by_id
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys WHERE id = :id

-- name: list_api_keys
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys ORDER BY created_at, id

-- name: list_api_keys_first
-- A page from the start, in list order.
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys ORDER BY created_at, id LIMIT :limit

-- name: list_api_keys_after
-- A page from just after a key's place (its created_at and id) in list order.
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys WHERE (created_at, id) > (:after_created_at, :after_id)
ORDER BY created_at, id LIMIT :limit

-- name: revoke_api_key
-- Idempotent: a second revoke keeps the first time, so reading back after it is race-free.
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id

-- name: touch_api_key
-- Only forward: workers touching a key at once never move it back in time.
UPDATE api_keys SET last_used_at = :now
WHERE id = :id AND (last_used_at IS NULL OR last_used_at < :now)

-- name: ping
-- The table answers: the plugin's migration was applied.
SELECT 1 FROM api_keys WHERE 1 = 0
