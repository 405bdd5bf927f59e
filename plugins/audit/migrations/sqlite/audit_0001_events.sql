-- The audit trail: one row per recorded change, chained by SHA-256 (docs/audit.md).
-- A write's transaction only inserts its event (entry, the event's columns): seq, prev_hash
-- and hash stay NULL until the chainer links the event into the chain after it committed, in
-- the order of insertion (entry: SQLite has one writer at a time, so that is commit order).
-- seq is 1, 2, 3 … with no gaps once chained; occurred_at is the database's clock as the
-- users table keeps times ('2026-01-02T03:04:05.123000Z': fixed width, text order is time
-- order); ids are text; fields is JSON text, as hashed. entry is internal: not hashed, not
-- exported (AUTOINCREMENT: never reused, even after the newest events were pruned).
CREATE TABLE audit_events (
    entry INTEGER PRIMARY KEY AUTOINCREMENT,
    seq INTEGER CHECK (seq >= 1),
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
    prev_hash TEXT,
    hash TEXT,
    CHECK ((seq IS NULL) = (hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL))
);

-- The chain: one event per seq. Partial, like the indexes below: an event enters them when
-- it is chained, so that a write's insert touches as few indexes as possible.
CREATE UNIQUE INDEX audit_events_seq_idx ON audit_events (seq) WHERE seq IS NOT NULL;
-- What the chainer takes next: the unchained events, in chain order.
CREATE INDEX audit_events_unchained_idx ON audit_events (entry) WHERE seq IS NULL;
-- The filters of GET /api/v1/audit, each then by seq: keyset pages walk them.
CREATE INDEX audit_events_target_idx ON audit_events (target_type, target_id, seq)
    WHERE seq IS NOT NULL;
CREATE INDEX audit_events_user_idx ON audit_events (user_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_actor_idx ON audit_events (actor, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_action_idx ON audit_events (action, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at, seq)
    WHERE seq IS NOT NULL;

-- The chain head: one row, the last chained event's seq and hash. The chainer moves it in
-- a write transaction (BEGIN IMMEDIATE), which holds the database's write lock: one chainer
-- at a time, the chain cannot fork.
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
