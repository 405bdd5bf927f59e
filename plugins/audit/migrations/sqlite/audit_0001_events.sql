-- The audit trail: one row per recorded change, chained by SHA-256 (docs/audit.md).
-- seq is assigned by the chain head (audit_chain), 1, 2, 3 … with no gaps; occurred_at is
-- the database's clock as the users table keeps times ('2026-01-02T03:04:05.123000Z':
-- fixed width, text order is time order); ids are text; fields is JSON text, as hashed.
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 1),
    id TEXT NOT NULL UNIQUE,
    occurred_at TEXT NOT NULL,
    actor TEXT,
    actor_kind TEXT,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    user_id TEXT,
    request_id TEXT,
    trace_id TEXT,
    client_address TEXT,
    fields TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);

-- The filters of GET /api/v1/audit, each then by seq: keyset pages walk them.
CREATE INDEX audit_events_target_idx ON audit_events (target_type, target_id, seq);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, seq);
CREATE INDEX audit_events_actor_idx ON audit_events (actor, seq);
CREATE INDEX audit_events_action_idx ON audit_events (action, seq);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at, seq);

-- The chain head: one row, the last event's seq and hash. A write transaction holds the
-- database's write lock (BEGIN IMMEDIATE): the chain cannot fork.
CREATE TABLE audit_chain (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0),
    hash TEXT NOT NULL
);
INSERT INTO audit_chain (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- What pruning left: the seq and hash of the last event it removed, where verification
-- of what remains starts.
CREATE TABLE audit_checkpoints (
    seq INTEGER PRIMARY KEY NOT NULL CHECK (seq >= 1),
    hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    pruned INTEGER NOT NULL CHECK (pruned >= 0)
);
