-- Statements over a set of keys, for the authenticator's refresher: each set is one
-- parameter, a JSON array as text, so a statement's text is the same whatever its size.

-- name: get_api_keys
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys WHERE lookup IN (SELECT value FROM json_each(:lookups))

-- name: touch_api_keys
-- Each key to its own time (ids and ats pair up by position); only forward, as touch_api_key.
UPDATE api_keys SET last_used_at = u.at
FROM (
    SELECT i.value AS id, a.value AS at
    FROM json_each(:ids) AS i JOIN json_each(:ats) AS a ON a.key = i.key
) AS u
WHERE api_keys.id = u.id AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < u.at)
