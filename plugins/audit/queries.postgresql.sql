-- The audit plugin's statements on PostgreSQL (store.py). Every one is prepared.

-- name: advance
-- Locks the chain head till commit and takes the next seq, the previous hash and the
-- database's clock, read after the lock: one round trip. A writer that waited reads the
-- head its predecessor committed (READ COMMITTED re-reads the row it waited for).
UPDATE audit_chain SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash, clock_timestamp()

-- name: genesis
-- The head row, when it is missing (a table emptied by hand): the chain starts again at 0.
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING

-- name: append
-- The event and the head's new hash, in one round trip.
WITH event AS (
    INSERT INTO audit_events (seq, id, occurred_at, actor, actor_kind, action, target_type,
                              target_id, user_id, request_id, trace_id, client_address,
                              fields, prev_hash, hash)
    VALUES (:seq, :id, :occurred_at, :actor, :actor_kind, :action, :target_type, :target_id,
            :user_id, :request_id, :trace_id, :client_address, :fields, :prev_hash, :hash)
)
UPDATE audit_chain SET hash = :hash WHERE id = 1

-- name: head
SELECT seq, hash FROM audit_chain WHERE id = 1

-- name: now
SELECT clock_timestamp()

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
-- The last event of the run, from the oldest, of events older than :cutoff.
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
