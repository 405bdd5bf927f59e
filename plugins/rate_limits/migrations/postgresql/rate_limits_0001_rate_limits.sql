-- Rate-limit state, one row per (class, subject): GCRA's theoretical arrival time.
-- UNLOGGED: no write-ahead log for counters that are worthless after a crash
-- (a crash empties the table, which only forgives what was counted).
CREATE UNLOGGED TABLE IF NOT EXISTS rate_limits (
    bucket text PRIMARY KEY,        -- a SHA-256 of class and subject: bounded, never a credential
    tat double precision NOT NULL,  -- seconds since the epoch, on the database's clock
    seen double precision NOT NULL, -- the database's clock at the last check
    allowed boolean NOT NULL        -- whether the last check admitted its request
);
