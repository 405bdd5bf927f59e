-- Statements over a set of keys, for the authenticator's refresher: each set is one
-- array parameter, so a statement's text is the same whatever the set's size.

-- name: get_api_keys
SELECT id, name, role, lookup, secret_hash, created_at, expires_at, revoked_at, last_used_at
FROM api_keys WHERE lookup = ANY(:lookups::text[])

-- name: touch_api_keys
-- Each key to its own time (ids and ats pair up by position); only forward, as touch_api_key.
-- Rows another transaction holds (a revocation, another process's touch) are skipped, not
-- waited for: workers touching overlapping sets at once never deadlock, and a skipped
-- touch is bookkeeping that the next one makes good.
UPDATE api_keys AS k SET last_used_at = u.at
FROM unnest(:ids::uuid[], :ats::timestamptz[]) AS u(id, at)
WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)
  AND k.id IN (SELECT id FROM api_keys WHERE id = ANY(:ids::uuid[]) FOR UPDATE SKIP LOCKED)
