-- The audit plugin's statements on SQLite (store.py). A write runs in BEGIN IMMEDIATE and
-- holds the database's write lock: one writer at a time, so every committed event is final
-- and the chainer (BEGIN IMMEDIATE too) links them in insertion order.
-- Times are the database's clock, in milliseconds, padded to the users table's six digits.

-- name: append
INSERT INTO audit_events (id, occurred_at, actor, actor_kind, action, target_type,
                          target_id, user_id, request_id, trace_id, client_address, fields)
VALUES (:id, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z', :actor, :actor_kind, :action,
        :target_type, :target_id, :user_id, :request_id, :trace_id, :client_address, :fields)

-- name: batch_stamp
-- A batch's events (an import's) share their transaction's id and one reading of the clock.
SELECT NULL, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'

-- name: lock_head
SELECT seq, hash FROM audit_chain WHERE id = 1

-- name: head_exists
SELECT 1 FROM audit_chain WHERE id = 1

-- name: chain_started
SELECT 1 WHERE EXISTS (SELECT 1 FROM audit_events WHERE seq IS NOT NULL)
            OR EXISTS (SELECT 1 FROM audit_checkpoints)

-- name: genesis
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING

-- name: unchained
SELECT entry, id, occurred_at, actor, actor_kind, action, target_type, target_id, user_id,
       request_id, trace_id, client_address, fields
FROM audit_events WHERE seq IS NULL ORDER BY entry LIMIT :limit

-- name: link
-- A batch chained, in one statement: :batch is a JSON array of [entry, seq, prev_hash, hash].
UPDATE audit_events
SET seq = json_extract(v.value, '$[1]'),
    prev_hash = json_extract(v.value, '$[2]'),
    hash = json_extract(v.value, '$[3]')
FROM json_each(:batch) AS v
WHERE audit_events.entry = json_extract(v.value, '$[0]') AND audit_events.seq IS NULL

-- name: set_head
UPDATE audit_chain SET seq = :seq, hash = :hash WHERE id = 1

-- name: unchained_count
SELECT count(*) FROM audit_events WHERE seq IS NULL

-- name: head
SELECT seq, hash FROM audit_chain WHERE id = 1

-- name: now
SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'

-- name: latest_checkpoint
SELECT seq, hash, created_at, pruned FROM audit_checkpoints ORDER BY seq DESC LIMIT 1

-- name: events_after
SELECT seq, id, occurred_at, actor, actor_kind, action, target_type, target_id, user_id,
       request_id, trace_id, client_address, fields, prev_hash, hash
FROM audit_events WHERE seq > :after AND seq <= :until ORDER BY seq LIMIT :limit

-- name: get_event
SELECT seq, id, occurred_at, actor, actor_kind, action, target_type, target_id, user_id,
       request_id, trace_id, client_address, fields, prev_hash, hash
FROM audit_events WHERE id = :id AND seq IS NOT NULL

-- name: prune_bound
SELECT seq, hash FROM audit_events
WHERE seq IS NOT NULL
  AND seq < COALESCE((SELECT min(seq) FROM audit_events
                      WHERE occurred_at >= :cutoff AND seq IS NOT NULL),
                     9223372036854775807)
ORDER BY seq DESC LIMIT 1

-- name: prune
DELETE FROM audit_events WHERE seq <= :seq

-- name: add_checkpoint
INSERT INTO audit_checkpoints (seq, hash, created_at, pruned)
VALUES (:seq, :hash, :created_at, :pruned) ON CONFLICT (seq) DO NOTHING

-- name: ping
SELECT 1 FROM audit_chain WHERE 1 = 0
