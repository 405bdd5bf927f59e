-- The webhooks plugin's statements for PostgreSQL. Every time is the database's clock
-- (now(): the transaction's start, which for the dispatcher's autocommit statements is
-- the statement's). Numbers of seconds are cast: one prepared statement's types.

-- name: insert_subscription
INSERT INTO webhook_subscriptions (id, url, events, secret, description, created_at)
VALUES (:id, :url, :events, :secret, :description, now())
RETURNING id, url, events, secret, description, created_at, disabled_at

-- name: get_subscription
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions WHERE id = :id AND disabled_at IS NULL

-- name: list_subscriptions
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions WHERE disabled_at IS NULL ORDER BY created_at, id

-- name: subscriptions_by_id
-- What the dispatcher sends with: live subscriptions among those its claim named.
SELECT id, url, events, secret, description, created_at, disabled_at
FROM webhook_subscriptions WHERE id = ANY(:ids) AND disabled_at IS NULL

-- name: disable_subscription
-- Deleted: kept for its deliveries' history, without its secret.
UPDATE webhook_subscriptions SET disabled_at = now(), secret = ''
WHERE id = :id AND disabled_at IS NULL
RETURNING id, url, events, secret, description, created_at, disabled_at

-- name: bury_pending
-- The pending deliveries of a deleted subscription: dead, never sent.
UPDATE webhook_deliveries
SET status = 'dead', last_error = 'the subscription was deleted',
    claimed_until = NULL, claimed_by = NULL
WHERE subscription_id = :id AND status = 'pending'

-- name: bury_stray
-- Pending deliveries of a deleted subscription that a write inserted while the deletion
-- ran (on PostgreSQL the two can commit in either order): dead, as bury_pending makes
-- the others. The dispatcher runs it now and then.
UPDATE webhook_deliveries AS d
SET status = 'dead', last_error = 'the subscription was deleted',
    claimed_until = NULL, claimed_by = NULL
FROM webhook_subscriptions AS s
WHERE s.id = d.subscription_id AND s.disabled_at IS NOT NULL AND d.status = 'pending'

-- name: record_change
-- One statement in the change's transaction: a row for every live subscription to the
-- change's action (or to every action), none for the others.
INSERT INTO webhook_deliveries
    (id, subscription_id, event_type, ordering_key, payload, status, attempts,
     next_attempt_at, created_at)
SELECT gen_random_uuid(), s.id, :event_type, :ordering_key, :payload, 'pending', 0,
       now(), now()
FROM webhook_subscriptions AS s
WHERE s.disabled_at IS NULL AND (:event_type = ANY(s.events) OR '*' = ANY(s.events))

-- name: any_live_subscription
-- A batch of changes skips the outbox statements when nothing subscribes to anything.
SELECT 1 FROM webhook_subscriptions WHERE disabled_at IS NULL LIMIT 1

-- name: claim
-- Due deliveries, each the head of its (subscription, ordering key): no earlier one of
-- them is still pending, so a receiver gets a user's events in order. SKIP LOCKED: two
-- dispatchers never take the same row; the lease outlives a send, so a slow send is
-- never claimed twice, and a crashed dispatcher's claims come free when it ends.
-- The tests are correlated subqueries, not joins, on purpose: the plan walks the due
-- index in its order and stops at LIMIT, so a claim costs the same with a backlog of
-- fifty thousand (a join would read, test and sort every pending row first), and its
-- estimate stays small (no JIT compilation, which would cost more than the claim).
WITH due AS MATERIALIZED (
    -- Materialized: the locking subquery runs once, so LIMIT bounds what is claimed.
    SELECT c.seq
    FROM webhook_deliveries AS c
    WHERE c.status = 'pending'
      AND c.next_attempt_at <= now()
      AND (c.claimed_until IS NULL OR c.claimed_until <= now())
      AND (SELECT s.disabled_at IS NULL FROM webhook_subscriptions AS s
           WHERE s.id = c.subscription_id)
      AND NOT EXISTS (
          SELECT 1 FROM webhook_deliveries AS e
          WHERE e.subscription_id = c.subscription_id
            AND e.ordering_key = c.ordering_key
            AND e.status = 'pending'
            AND e.seq < c.seq
          OFFSET 0  -- keeps it a test per row: never made into a join
      )
    ORDER BY c.next_attempt_at, c.seq
    LIMIT :limit
    FOR UPDATE OF c SKIP LOCKED
)
UPDATE webhook_deliveries AS d
SET claimed_until = now() + make_interval(secs => :lease::double precision),
    claimed_by = :worker
FROM due
WHERE d.seq = due.seq
RETURNING d.seq, d.id, d.subscription_id, d.event_type, d.payload, d.attempts

-- name: mark_delivered
-- Whoever's claim they are now: the receiver has them (one statement for a batch).
UPDATE webhook_deliveries
SET status = 'delivered', delivered_at = now(), attempts = attempts + 1,
    last_status = :last_status, last_error = NULL, claimed_until = NULL, claimed_by = NULL
WHERE id = ANY(:ids) AND status = 'pending'

-- name: release
-- Claimed but not sent (the lease would not cover the send, or the process stops):
-- free for any dispatcher now, no attempt counted.
UPDATE webhook_deliveries
SET claimed_until = NULL, claimed_by = NULL
WHERE id = ANY(:ids) AND status = 'pending' AND claimed_by = :worker

-- name: mark_failed
-- Only under this dispatcher's claim: another that took the row over decides it.
UPDATE webhook_deliveries
SET status = :status, attempts = attempts + 1,
    next_attempt_at = now() + make_interval(secs => :delay::double precision),
    last_status = :last_status, last_error = :last_error,
    claimed_until = NULL, claimed_by = NULL
WHERE id = :id AND status = 'pending' AND claimed_by = :worker

-- name: redeliver
UPDATE webhook_deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), delivered_at = NULL,
    last_status = NULL, last_error = NULL, claimed_until = NULL, claimed_by = NULL
WHERE id = :id AND status IN ('dead', 'delivered')

-- name: get_delivery
SELECT seq, id, subscription_id, event_type, payload, status, attempts, next_attempt_at,
       last_status, last_error, created_at, delivered_at
FROM webhook_deliveries WHERE id = :id

-- name: list_deliveries
-- Newest first, keyset by seq; each filter applies when its parameter is given.
SELECT seq, id, subscription_id, event_type, payload, status, attempts, next_attempt_at,
       last_status, last_error, created_at, delivered_at
FROM webhook_deliveries
WHERE (:subscription_id::uuid IS NULL OR subscription_id = :subscription_id::uuid)
  AND (:status::text IS NULL OR status = :status::text)
  AND (:before::bigint IS NULL OR seq < :before::bigint)
ORDER BY seq DESC
LIMIT :limit

-- name: queue
-- Pending deliveries, and how long the one due longest has waited (seconds).
SELECT count(*),
       coalesce(extract(epoch FROM now() - min(next_attempt_at)
                        FILTER (WHERE next_attempt_at <= now())), 0)::double precision
FROM webhook_deliveries WHERE status = 'pending' AND NOT EXISTS (
      SELECT 1 FROM webhook_subscriptions AS s
      WHERE s.id = webhook_deliveries.subscription_id AND s.disabled_at IS NOT NULL
  )

-- name: ping
SELECT 1 FROM webhook_deliveries WHERE 1 = 0

-- name: subscription_known
-- Deleted ones too: their deliveries stay listable.
SELECT 1 FROM webhook_subscriptions WHERE id = :id
