-- The audit trail: one row per recorded change, chained by SHA-256 (docs/audit.md).
-- A write's transaction only inserts its event (entry, txid, the event's columns): seq,
-- prev_hash and hash stay NULL until the chainer links the event into the chain, after the
-- transaction has finished, in the order of the writing transactions' ids (txid) and, within
-- one, of insertion (entry). Writers take no lock on any shared row. seq is 1, 2, 3 … with no
-- gaps once chained; occurred_at is the database's clock; fields is the changed fields' JSON
-- text, as hashed. entry and txid are internal: they are not hashed, not exported.
CREATE TABLE audit_events (
    entry bigserial PRIMARY KEY,
    txid xid8 NOT NULL,
    seq bigint CHECK (seq >= 1),
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
    prev_hash text,
    hash text,
    CHECK ((seq IS NULL) = (hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL))
);

-- The chain: one event per seq. Partial, like the indexes below: an event enters them when
-- it is chained, so that a write's insert touches as few indexes as possible.
CREATE UNIQUE INDEX audit_events_seq_idx ON audit_events (seq) WHERE seq IS NOT NULL;
-- What the chainer takes next: the unchained events, in chain order.
CREATE INDEX audit_events_unchained_idx ON audit_events (txid, entry) WHERE seq IS NULL;
-- The filters of GET /api/v1/audit, each then by seq: keyset pages walk them.
CREATE INDEX audit_events_target_idx ON audit_events (target_type, target_id, seq)
    WHERE seq IS NOT NULL;
CREATE INDEX audit_events_user_idx ON audit_events (user_id, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_actor_idx ON audit_events (actor, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_action_idx ON audit_events (action, seq) WHERE seq IS NOT NULL;
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at, seq)
    WHERE seq IS NOT NULL;

-- The chain head: one row, the last chained event's seq and hash. Only the chainer locks it
-- (FOR UPDATE SKIP LOCKED), for one batch: the chain is linked by one chainer at a time,
-- never forked, and writers never wait for it.
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
