-- Rate-limit state, as on PostgreSQL and SQLite. The plugin has no MySQL statements yet:
-- with limits on, it refuses to start on this dialect and says so. The table exists so
-- that `userplane migrate` treats every dialect alike.
CREATE TABLE IF NOT EXISTS rate_limits (
    bucket CHAR(64) CHARACTER SET ascii NOT NULL PRIMARY KEY,
    tat DOUBLE NOT NULL,
    seen DOUBLE NOT NULL,
    allowed BOOLEAN NOT NULL
);
