-- Written once for every dialect: parameters as :name (userplane.sql.Dialect.compile),
-- nothing beyond what SQLite, PostgreSQL and MariaDB share.

-- name: insert_session
INSERT INTO console_sessions (id, credential, created_at, expires_at)
VALUES (:id, :credential, :created_at, :expires_at)

-- name: get_session
SELECT credential, expires_at FROM console_sessions WHERE id = :id AND expires_at > :now

-- name: delete_session
DELETE FROM console_sessions WHERE id = :id

-- name: prune_sessions
DELETE FROM console_sessions WHERE expires_at <= :now

-- name: ping
SELECT 1 FROM console_sessions WHERE 1 = 0
