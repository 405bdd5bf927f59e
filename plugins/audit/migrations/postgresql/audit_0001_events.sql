-- The audit trail: one row per recorded change, chained by SHA-256 (docs/audit.md).
-- seq is assigned by the chain head (audit_chain), 1, 2, 3 … with no gaps; occurred_at is
-- the database's clock; fields is the changed fields' JSON text, as hashed.
CREATE TABLE audit_events (
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    id uuid NOT NULL UNIQUE,
    occurred_at timestamptz NOT NULL,
    actor text,
    actor_kind text,
    action text NOT NULL,
    target_type text NOT NULL,
    target_id text NOT NULL,
    user_id uuid,
    request_id text,
    trace_id text,
    client_address text,
    fields text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);

-- The filters of GET /api/v1/audit, each then by seq: keyset pages walk them.
CREATE INDEX audit_events_target_idx ON audit_events (target_type, target_id, seq);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, seq);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, seq);
CREATE INDEX audit_events_action_idx ON audit_events (action, seq);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at, seq);

-- The chain head: one row, the last event's seq and hash. Every writer locks it (an
-- UPDATE) to take the next seq: the chain is serialised on this row, never forked.
CREATE TABLE audit_chain (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL CHECK (seq >= 0),
    hash text NOT NULL
);
INSERT INTO audit_chain (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- What pruning left: the seq and hash of the last event it removed, where verification
-- of what remains starts.
CREATE TABLE audit_checkpoints (
    seq bigint PRIMARY KEY CHECK (seq >= 1),
    hash text NOT NULL,
    created_at timestamptz NOT NULL,
    pruned bigint NOT NULL CHECK (pruned >= 0)
);
