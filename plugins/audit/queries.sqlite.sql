-- The audit plugin's statements on SQLite (store.py). A write runs in BEGIN IMMEDIATE:
-- the transaction holds the database's write lock, so the head cannot move under it.
-- Times are the database's clock, in milliseconds, padded to the users table's six digits.

-- name: advance
UPDATE audit_chain SET seq = seq + 1 WHERE id = 1
RETURNING seq, hash, strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'

-- name: genesis
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING

-- name: append
INSERT INTO audit_events (seq, id, occurred_at, actor, actor_kind, action, target_type,
                          target_id, user_id, request_id, trace_id, client_address,
                          fields, prev_hash, hash)
VALUES (:seq, :id, :occurred_at, :actor, :actor_kind, :action, :target_type, :target_id,
        :user_id, :request_id, :trace_id, :client_address, :fields, :prev_hash, :hash)

-- name: set_head
UPDATE audit_chain SET hash = :hash WHERE id = 1

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
FROM audit_events WHERE id = :id

-- name: prune_bound
SELECT seq, hash FROM audit_events
WHERE seq < COALESCE((SELECT min(seq) FROM audit_events WHERE occurred_at >= :cutoff),
                     9223372036854775807)
ORDER BY seq DESC LIMIT 1

-- name: prune
DELETE FROM audit_events WHERE seq <= :seq

-- name: add_checkpoint
INSERT INTO audit_checkpoints (seq, hash, created_at, pruned)
VALUES (:seq, :hash, :created_at, :pruned) ON CONFLICT (seq) DO NOTHING

-- name: ping
SELECT 1 FROM audit_chain WHERE 1 = 0
