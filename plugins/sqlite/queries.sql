-- The list query is composed per sort and filter: see userplane.sql.list_users_sql.

-- name: insert_user
INSERT INTO users (id, email, email_normalized, email_index_next, full_name,
                   full_name_folded, is_active, created_at, updated_at, version,
                   external_source, external_id, attributes)
VALUES (:id, :email, :email_key, :email_next, :full_name,
        :full_name_folded, :is_active, :created_at, :updated_at, :version,
        :external_source, :external_id, :attributes)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: get_user
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = :id AND (:include_deleted OR deleted_at IS NULL)

-- name: lock_user
-- A transaction here holds the database's write lock (BEGIN IMMEDIATE): no row lock needed.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = :id

-- name: get_user_by_email
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE email_normalized = :email_key AND (:include_deleted OR deleted_at IS NULL)

-- name: get_user_by_email_keys
-- One statement: a re-index moving the user between two statements must not hide it.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users
WHERE (email_normalized = :email_key OR email_index_next = :email_next)
  AND (:include_deleted OR deleted_at IS NULL)
LIMIT 1

-- name: update_user
-- One conditional statement: the version check and the write cannot be separated.
UPDATE users SET
    email = CASE WHEN :set_email THEN :email ELSE email END,
    email_normalized = CASE WHEN :set_email THEN :email_key ELSE email_normalized END,
    email_index_next = CASE WHEN :set_email THEN :email_next ELSE email_index_next END,
    full_name = CASE WHEN :set_full_name THEN :full_name ELSE full_name END,
    full_name_folded = CASE WHEN :set_full_name THEN :full_name_folded ELSE full_name_folded END,
    is_active = CASE WHEN :set_is_active THEN :is_active ELSE is_active END,
    external_source = CASE WHEN :set_external THEN :external_source
                           ELSE external_source END,
    external_id = CASE WHEN :set_external THEN :external_id ELSE external_id END,
    attributes = CASE WHEN :set_attributes THEN :attributes ELSE attributes END,
    version = version + 1,
    updated_at = :now
WHERE id = :id AND deleted_at IS NULL
  AND (:expected_version IS NULL OR version = :expected_version)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: delete_user
-- Soft: the row stays, so the email stays reserved until a purge.
UPDATE users SET deleted_at = :now, updated_at = :now, version = version + 1
WHERE id = :id AND deleted_at IS NULL
  AND (:expected_version IS NULL OR version = :expected_version)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: restore_user
UPDATE users SET deleted_at = NULL, updated_at = :now, version = version + 1
WHERE id = :id AND deleted_at IS NOT NULL
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: purge_users
DELETE FROM users WHERE deleted_at IS NOT NULL AND deleted_at < :before

-- name: deleted_user_ids
SELECT id FROM users WHERE deleted_at IS NOT NULL AND deleted_at < :before
ORDER BY id LIMIT :limit

-- name: purge_user
-- One user, now (userplane users shred): only a deleted one.
DELETE FROM users WHERE id = :id AND deleted_at IS NOT NULL

-- name: purge_orphan_responses
-- Runs after purge_users: a response stored while the purge ran, about a user it removed.
DELETE FROM idempotency_keys
WHERE user_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM users WHERE users.id = idempotency_keys.user_id)

-- name: purge_user_responses
-- Runs before purge_users: a stored response must not outlive the user it shows.
DELETE FROM idempotency_keys WHERE user_id IN (
    SELECT id FROM users WHERE deleted_at IS NOT NULL AND deleted_at < :before)

-- name: reseal_user
-- Key rotation: the stored form changes, what a client sees (version, updated_at) does not.
UPDATE users SET
    email = CASE WHEN :set_email THEN :email ELSE email END,
    email_normalized = COALESCE(:email_key, email_normalized),
    email_index_next = COALESCE(:email_next, email_index_next),
    full_name = CASE WHEN :set_full_name THEN :full_name ELSE full_name END,
    full_name_folded = CASE WHEN :set_full_name THEN :full_name_folded ELSE full_name_folded END
WHERE id = :id AND version = :version

-- name: user_version
SELECT version FROM users WHERE id = :id AND deleted_at IS NULL

-- name: claim_idempotency_key
-- One statement decides the owner: a new key, or one expired or abandoned, is claimed.
INSERT INTO idempotency_keys (key, fingerprint, claimed_at, expires_at)
VALUES (:key, :fingerprint, :now, :expires_at)
ON CONFLICT (key) DO UPDATE SET
    fingerprint = excluded.fingerprint, claimed_at = excluded.claimed_at,
    expires_at = excluded.expires_at, status = NULL, headers = NULL, body = NULL,
    user_id = NULL
WHERE idempotency_keys.expires_at <= :now
   OR (idempotency_keys.status IS NULL AND idempotency_keys.claimed_at < :stale_before)
RETURNING key

-- name: get_idempotency_record
SELECT fingerprint, status, headers, body, user_id FROM idempotency_keys
WHERE key = :key AND expires_at > :now

-- name: complete_idempotency_key
UPDATE idempotency_keys
SET status = :status, headers = :headers, body = :body, user_id = :user_id
WHERE key = :key

-- name: release_idempotency_key
DELETE FROM idempotency_keys WHERE key = :key AND status IS NULL

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE expires_at <= :now

-- name: count_users
SELECT count(*) FROM users

-- name: key_records
SELECT name, purpose, fingerprint, created_at, retired_at, home, ready_at
FROM encryption_keys ORDER BY name

-- name: add_key_record
INSERT INTO encryption_keys (name, purpose, fingerprint, created_at, home, ready_at)
VALUES (:name, :purpose, :fingerprint, :created_at, :home,
        :ready_at)
ON CONFLICT (name) DO NOTHING

-- name: retire_key_record
UPDATE encryption_keys SET retired_at = :at WHERE name = :name AND retired_at IS NULL

-- name: mark_key_ready
UPDATE encryption_keys SET ready_at = :at WHERE name = :name AND ready_at IS NULL

-- name: index_entries
-- A re-index walks every user, deleted ones too, by id, with both index values.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes, email_normalized, email_index_next
FROM users WHERE (:after IS NULL OR id > :after) ORDER BY id LIMIT :limit
