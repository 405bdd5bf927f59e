-- GCRA (the generic cell rate algorithm) in one atomic statement, on the database's clock.
-- A subject's state is its theoretical arrival time (tat): the moment its quota is whole
-- again. A request costs :interval seconds of it (window / limit) and is admitted while
-- tat stays within :window of now. :pending requests were already served by a process's
-- fast path: they are counted whatever happens; :cost (0 or 1) is the request at hand,
-- counted only if it fits. Every number is a double precision: one prepared statement.

-- name: hit
INSERT INTO rate_limits AS r (bucket, tat, seen, allowed)
SELECT :bucket,
       n.now + CASE WHEN (:pending + :cost) * :interval <= :window
                    THEN (:pending + :cost) * :interval ELSE :pending * :interval END,
       n.now,
       (:pending + :cost) * :interval <= :window
FROM (SELECT extract(epoch FROM clock_timestamp())::double precision AS now) AS n
ON CONFLICT (bucket) DO UPDATE SET
    tat = greatest(r.tat, EXCLUDED.seen) + CASE
        WHEN greatest(r.tat, EXCLUDED.seen) + (:pending + :cost) * :interval - :window
             <= EXCLUDED.seen
        THEN (:pending + :cost) * :interval ELSE :pending * :interval END,
    seen = EXCLUDED.seen,
    allowed = greatest(r.tat, EXCLUDED.seen) + (:pending + :cost) * :interval - :window
              <= EXCLUDED.seen
RETURNING tat, seen, allowed

-- name: report
-- What a process's fast path served, for many subjects in one statement (limiter.Reporter):
-- each bucket's :pendings requests of its :steps seconds are counted whatever happens, and
-- nothing is decided. In bucket order, so that processes reporting at once lock rows in one
-- order and never deadlock.
INSERT INTO rate_limits AS r (bucket, tat, seen, allowed)
SELECT b.bucket, n.now + b.pending * b.step, n.now, true
FROM unnest(:buckets::text[], :pendings::double precision[], :steps::double precision[])
     WITH ORDINALITY AS b(bucket, pending, step, i)
CROSS JOIN (SELECT extract(epoch FROM clock_timestamp())::double precision AS now) AS n
ORDER BY b.i
ON CONFLICT (bucket) DO UPDATE SET
    tat = greatest(r.tat, EXCLUDED.seen) + (EXCLUDED.tat - EXCLUDED.seen),
    seen = EXCLUDED.seen
RETURNING bucket, tat, seen

-- name: peek
-- One row whether or not the subject has state: its tat (or NULL) and the clock.
SELECT r.tat, n.now
FROM (SELECT extract(epoch FROM clock_timestamp())::double precision AS now) AS n
LEFT JOIN rate_limits AS r ON r.bucket = :bucket

-- name: prune
-- A row whose tat has passed is a whole quota: the same as no row.
DELETE FROM rate_limits WHERE tat < extract(epoch FROM clock_timestamp()) - 1

-- name: ping
SELECT 1 FROM rate_limits WHERE 1 = 0
