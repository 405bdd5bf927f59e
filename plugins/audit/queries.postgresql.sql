-- The audit plugin's statements on PostgreSQL (store.py). Every one is prepared.

-- name: append
-- A write's only statement: its event, unchained, with the id of the writing transaction
-- (assigned by its user write already) and the database's clock. No shared row is locked.
INSERT INTO audit_events (txid, id, occurred_at, actor, actor_kind, action, target_type,
                          target_id, user_id, request_id, trace_id, client_address, fields)
VALUES (pg_current_xact_id(), :id, clock_timestamp(), :actor, :actor_kind, :action,
        :target_type, :target_id, :user_id, :request_id, :trace_id, :client_address, :fields)

-- name: batch_stamp
-- A batch's events (an import's) share their transaction's id and one reading of the clock.
SELECT CAST(pg_current_xact_id() AS text), clock_timestamp()

-- name: horizon
-- The chainer's first statement: every transaction with an id below this one has finished,
-- and every transaction still running or yet to come has an id at or above it.
SELECT CAST(pg_snapshot_xmin(pg_current_snapshot()) AS text)

-- name: mark
-- Every transaction that has an id now has one below this: what a reader waits for.
SELECT CAST(pg_snapshot_xmax(pg_current_snapshot()) AS text)

-- name: lock_head
-- The head, locked for this batch; no row: another chainer holds it (or it is missing).
SELECT seq, hash FROM audit_chain WHERE id = 1 FOR UPDATE SKIP LOCKED

-- name: head_exists
SELECT 1 FROM audit_chain WHERE id = 1

-- name: chain_started
-- Whether a chain was ever linked here (a chained event, or a prune's checkpoint).
SELECT 1 WHERE EXISTS (SELECT 1 FROM audit_events WHERE seq IS NOT NULL)
            OR EXISTS (SELECT 1 FROM audit_checkpoints)

-- name: genesis
-- The head row, when it is missing and no chain was ever linked (tables emptied by hand).
INSERT INTO audit_chain (id, seq, hash) VALUES (1, 0, :genesis) ON CONFLICT (id) DO NOTHING

-- name: unchained
-- The next events of the chain: those of finished transactions (ids below the horizon), in
-- the order of their transactions' ids, then of insertion. Nothing can come before them later.
SELECT entry, id, occurred_at, actor, actor_kind, action, target_type, target_id, user_id,
       request_id, trace_id, client_address, fields
FROM audit_events
WHERE seq IS NULL AND txid < CAST(:horizon AS xid8)
ORDER BY txid, entry LIMIT :limit

-- name: link
-- A batch chained and the head moved, in one statement; how many events it linked.
WITH linked AS (
    UPDATE audit_events AS e
    SET seq = v.seq, prev_hash = v.prev_hash, hash = v.hash
    FROM unnest(CAST(:entries AS bigint[]), CAST(:seqs AS bigint[]),
                CAST(:prev_hashes AS text[]), CAST(:hashes AS text[]))
         AS v (entry, seq, prev_hash, hash)
    WHERE e.entry = v.entry AND e.seq IS NULL
    RETURNING 1
)
UPDATE audit_chain SET seq = :seq, hash = :hash WHERE id = 1
RETURNING (SELECT count(*) FROM linked)

-- name: pending
-- Finished events not chained yet: committed by a transaction that had its id before :mark.
SELECT count(*) FROM audit_events WHERE seq IS NULL AND txid < CAST(:mark AS xid8)

-- name: unchained_count
SELECT count(*) FROM audit_events WHERE seq IS NULL

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
FROM audit_events WHERE id = :id AND seq IS NOT NULL

-- name: prune_bound
-- The last event of the run, from the oldest, of chained events older than :cutoff.
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
