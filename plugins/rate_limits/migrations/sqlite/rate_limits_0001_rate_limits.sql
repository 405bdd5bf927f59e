-- Rate-limit state, one row per (class, subject): GCRA's theoretical arrival time.
CREATE TABLE IF NOT EXISTS rate_limits (
    bucket TEXT PRIMARY KEY, -- a SHA-256 of class and subject: bounded, never a credential
    tat REAL NOT NULL,      -- seconds since the epoch, on the database's clock
    seen REAL NOT NULL,     -- the database's clock at the last check
    allowed INTEGER NOT NULL
) WITHOUT ROWID;
