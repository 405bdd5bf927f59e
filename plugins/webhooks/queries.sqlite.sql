-- The webhooks plugin's statements for SQLite, as queries.postgresql.sql explains. The
-- database's clock is strftime('%f', 'now') (fixed for a whole statement), spelled as
-- the stored times are: fixed-width UTC text with microseconds. Ids are made here
-- (random version-4 UUIDs, each piece drawn per row). Claims need no SKIP LOCKED:
-- SQLite's one write lock serialises them.

-- name: insert_subscription
INSERT INTO webhook_subscriptions (id, url, events, secret, description, created_at)
VALUES (:id, :url, :events, :secret, :description,
        strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
RETURNING id, url, events, secret, description, created_at, disabled_at

-- name: get_subscription
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions WHERE id = :id AND disabled_at IS NULL

-- name: list_subscriptions
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions WHERE disabled_at IS NULL ORDER BY created_at, id

-- name: subscriptions_by_id
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions
WHERE id IN (SELECT value FROM json_each(:ids)) AND disabled_at IS NULL

-- name: disable_subscription
UPDATE webhook_subscriptions
SET disabled_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', secret = ''
WHERE id = :id AND disabled_at IS NULL
RETURNING id, url, events, secret, description, created_at, disabled_at

-- name: bury_pending
UPDATE webhook_deliveries
SET status = 'dead', last_error = 'the subscription was deleted',
    claimed_until = NULL, claimed_by = NULL
WHERE subscription_id = :id AND status = 'pending'

-- name: bury_stray
-- Pending deliveries of a deleted subscription (see the PostgreSQL statement): dead.
UPDATE webhook_deliveries
SET status = 'dead', last_error = 'the subscription was deleted',
    claimed_until = NULL, claimed_by = NULL
WHERE status = 'pending' AND subscription_id IN (
    SELECT id FROM webhook_subscriptions WHERE disabled_at IS NOT NULL
)

-- name: record_change
INSERT INTO webhook_deliveries
    (id, subscription_id, event_type, ordering_key, payload, status, attempts,
     next_attempt_at, created_at)
SELECT lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4'
           || substr(lower(hex(randomblob(2))), 2) || '-'
           || substr('89ab', 1 + (abs(random()) % 4), 1)
           || substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6))),
       s.id, :event_type, :ordering_key, :payload, 'pending', 0,
       strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
       strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
FROM webhook_subscriptions AS s
WHERE s.disabled_at IS NULL
  AND EXISTS (SELECT 1 FROM json_each(s.events) AS e WHERE e.value IN (:event_type, '*'))

-- name: any_live_subscription
-- A batch of changes skips the outbox statements when nothing subscribes to anything.
SELECT 1 FROM webhook_subscriptions WHERE disabled_at IS NULL LIMIT 1

-- name: claim
UPDATE webhook_deliveries
SET claimed_until = strftime('%Y-%m-%dT%H:%M:%f', 'now', '+' || :lease || ' seconds')
                    || '000Z',
    claimed_by = :worker
WHERE seq IN (
    SELECT c.seq
    FROM webhook_deliveries AS c
    JOIN webhook_subscriptions AS s ON s.id = c.subscription_id
    WHERE c.status = 'pending'
      AND c.next_attempt_at <= strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
      AND (c.claimed_until IS NULL
           OR c.claimed_until <= strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
      AND s.disabled_at IS NULL
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries AS e
          WHERE e.subscription_id = c.subscription_id
            AND e.ordering_key = c.ordering_key
            AND e.status = 'pending'
            AND e.seq < c.seq
      )
    ORDER BY c.next_attempt_at, c.seq
    LIMIT :limit
)
RETURNING seq, id, subscription_id, event_type, payload, attempts

-- name: mark_delivered
UPDATE webhook_deliveries
SET status = 'delivered', delivered_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z',
    attempts = attempts + 1, last_status = :last_status, last_error = NULL,
    claimed_until = NULL, claimed_by = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending'

-- name: release
UPDATE webhook_deliveries
SET claimed_until = NULL, claimed_by = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending'
  AND claimed_by = :worker

-- name: mark_failed
UPDATE webhook_deliveries
SET status = :status, attempts = attempts + 1,
    next_attempt_at = strftime('%Y-%m-%dT%H:%M:%f', 'now', '+' || :delay || ' seconds')
                      || '000Z',
    last_status = :last_status, last_error = :last_error,
    claimed_until = NULL, claimed_by = NULL
WHERE id = :id AND status = 'pending' AND claimed_by = :worker

-- name: redeliver
UPDATE webhook_deliveries
SET status = 'pending', attempts = 0,
    next_attempt_at = strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', delivered_at = NULL,
    last_status = NULL, last_error = NULL, claimed_until = NULL, claimed_by = NULL
WHERE id = :id AND status IN ('dead', 'delivered')

-- name: get_delivery
SELECT seq, id, subscription_id, event_type, payload, status, attempts, next_attempt_at,
       last_status, last_error, created_at, delivered_at
FROM webhook_deliveries WHERE id = :id

-- name: list_deliveries
SELECT seq, id, subscription_id, event_type, payload, status, attempts, next_attempt_at,
       last_status, last_error, created_at, delivered_at
FROM webhook_deliveries
WHERE (:subscription_id IS NULL OR subscription_id = :subscription_id)
  AND (:status IS NULL OR status = :status)
  AND (:before IS NULL OR seq < :before)
ORDER BY seq DESC
LIMIT :limit

-- name: queue
SELECT count(*),
       coalesce(max(0, (julianday('now') - julianday(substr(min(
           CASE WHEN next_attempt_at <= strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
                THEN next_attempt_at END), 1, 26))) * 86400.0), 0.0)
FROM webhook_deliveries WHERE status = 'pending' AND subscription_id NOT IN (
      SELECT id FROM webhook_subscriptions WHERE disabled_at IS NOT NULL
  )

-- name: ping
SELECT 1 FROM webhook_deliveries WHERE 1 = 0

-- name: subscription_known
-- Deleted ones too: their deliveries stay listable.
SELECT 1 FROM webhook_subscriptions WHERE id = :id
