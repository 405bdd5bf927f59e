-- GCRA in one atomic statement, as queries.postgresql.sql explains, on SQLite's clock
-- (julianday('now') is fixed for the whole statement). WHERE true: SQLite needs it to
-- tell an INSERT … SELECT from its ON CONFLICT clause.

-- name: hit
INSERT INTO rate_limits (bucket, tat, seen, allowed)
SELECT :bucket,
       n.now + CASE WHEN (:pending + :cost) * :interval <= :window
                    THEN (:pending + :cost) * :interval ELSE :pending * :interval END,
       n.now,
       (:pending + :cost) * :interval <= :window
FROM (SELECT (julianday('now') - 2440587.5) * 86400.0 AS now) AS n
WHERE true
ON CONFLICT (bucket) DO UPDATE SET
    tat = max(rate_limits.tat, excluded.seen) + CASE
        WHEN max(rate_limits.tat, excluded.seen) + (:pending + :cost) * :interval - :window
             <= excluded.seen
        THEN (:pending + :cost) * :interval ELSE :pending * :interval END,
    seen = excluded.seen,
    allowed = max(rate_limits.tat, excluded.seen) + (:pending + :cost) * :interval - :window
              <= excluded.seen
RETURNING tat, seen, allowed

-- name: report
-- As queries.postgresql.sql's report, the subjects as a JSON array of [bucket, pending, step].
INSERT INTO rate_limits (bucket, tat, seen, allowed)
SELECT json_extract(j.value, '$[0]'),
       n.now + json_extract(j.value, '$[1]') * json_extract(j.value, '$[2]'),
       n.now,
       1
FROM json_each(:subjects) AS j, (SELECT (julianday('now') - 2440587.5) * 86400.0 AS now) AS n
WHERE true
ORDER BY j.key
ON CONFLICT (bucket) DO UPDATE SET
    tat = max(rate_limits.tat, excluded.seen) + (excluded.tat - excluded.seen),
    seen = excluded.seen
RETURNING bucket, tat, seen

-- name: peek
SELECT r.tat, n.now
FROM (SELECT (julianday('now') - 2440587.5) * 86400.0 AS now) AS n
LEFT JOIN rate_limits AS r ON r.bucket = :bucket

-- name: prune
DELETE FROM rate_limits WHERE tat < (julianday('now') - 2440587.5) * 86400.0 - 1

-- name: ping
SELECT 1 FROM rate_limits WHERE 1 = 0
