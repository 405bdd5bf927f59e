-- Parameters are typed with casts: a NULL parameter has no type of its own.
-- The list query is composed per sort and filter: see userplane.sql.list_users_sql.

-- name: insert_user
INSERT INTO users (id, email, email_normalized, email_index_next, full_name,
                   full_name_folded, is_active, created_at, updated_at, version,
                   external_source, external_id, attributes)
VALUES (%(id)s, %(email)s, %(email_key)s, %(email_next)s::text, %(full_name)s,
        %(full_name_folded)s, %(is_active)s, %(created_at)s, %(updated_at)s, %(version)s,
        %(external_source)s::text, %(external_id)s::text, %(attributes)s::text)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: get_user
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = %(id)s AND (%(include_deleted)s::boolean OR deleted_at IS NULL)

-- name: lock_user
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = %(id)s FOR UPDATE

-- name: get_user_by_email
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users
WHERE email_normalized = %(email_key)s AND (%(include_deleted)s::boolean OR deleted_at IS NULL)

-- name: get_user_by_email_keys
-- One statement: a re-index moving the user between two statements must not hide it.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users
WHERE (email_normalized = %(email_key)s OR email_index_next = %(email_next)s)
  AND (%(include_deleted)s::boolean OR deleted_at IS NULL)
LIMIT 1

-- name: update_user
-- One conditional statement: the version check and the write cannot be separated.
UPDATE users SET
    email = CASE WHEN %(set_email)s THEN %(email)s::text ELSE email END,
    email_normalized = CASE WHEN %(set_email)s THEN %(email_key)s::text ELSE email_normalized END,
    email_index_next = CASE WHEN %(set_email)s THEN %(email_next)s::text ELSE email_index_next END,
    full_name = CASE WHEN %(set_full_name)s THEN %(full_name)s::text ELSE full_name END,
    full_name_folded = CASE WHEN %(set_full_name)s THEN %(full_name_folded)s::text
                            ELSE full_name_folded END,
    is_active = CASE WHEN %(set_is_active)s THEN %(is_active)s::boolean ELSE is_active END,
    external_source = CASE WHEN %(set_external)s THEN %(external_source)s::text
                           ELSE external_source END,
    external_id = CASE WHEN %(set_external)s THEN %(external_id)s::text ELSE external_id END,
    attributes = CASE WHEN %(set_attributes)s THEN %(attributes)s::text ELSE attributes END,
    version = version + 1,
    updated_at = %(now)s
WHERE id = %(id)s AND deleted_at IS NULL
  AND (%(expected_version)s::integer IS NULL OR version = %(expected_version)s::integer)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: delete_user
-- Soft: the row stays, so the email stays reserved until a purge.
UPDATE users SET deleted_at = %(now)s, updated_at = %(now)s, version = version + 1
WHERE id = %(id)s AND deleted_at IS NULL
  AND (%(expected_version)s::integer IS NULL OR version = %(expected_version)s::integer)
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: restore_user
UPDATE users SET deleted_at = NULL, updated_at = %(now)s, version = version + 1
WHERE id = %(id)s AND deleted_at IS NOT NULL
RETURNING id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
          external_source, external_id, attributes

-- name: purge_users
DELETE FROM users WHERE deleted_at IS NOT NULL AND deleted_at < %(before)s

-- name: deleted_user_ids
SELECT id FROM users WHERE deleted_at IS NOT NULL AND deleted_at < %(before)s
ORDER BY id LIMIT %(limit)s

-- name: purge_user
-- One user, now (userplane users shred): only a deleted one.
DELETE FROM users WHERE id = %(id)s AND deleted_at IS NOT NULL

-- name: purge_orphan_responses
-- Runs after purge_users: a response stored while the purge ran, about a user it removed.
DELETE FROM idempotency_keys
WHERE user_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM users WHERE users.id = idempotency_keys.user_id)

-- name: purge_user_responses
-- Runs before purge_users: a stored response must not outlive the user it shows.
DELETE FROM idempotency_keys WHERE user_id IN (
    SELECT id FROM users WHERE deleted_at IS NOT NULL AND deleted_at < %(before)s)

-- name: reseal_user
-- Key rotation: the stored form changes, what a client sees (version, updated_at) does not.
UPDATE users SET
    email = CASE WHEN %(set_email)s::boolean THEN %(email)s::text ELSE email END,
    email_normalized = COALESCE(%(email_key)s::text, email_normalized),
    email_index_next = COALESCE(%(email_next)s::text, email_index_next),
    full_name = CASE WHEN %(set_full_name)s::boolean THEN %(full_name)s::text ELSE full_name END,
    full_name_folded = CASE WHEN %(set_full_name)s::boolean THEN %(full_name_folded)s::text
                            ELSE full_name_folded END
WHERE id = %(id)s AND version = %(version)s::integer

-- name: user_version
SELECT version FROM users WHERE id = %(id)s AND deleted_at IS NULL

-- name: claim_idempotency_key
-- One statement decides the owner: a new key, or one expired or abandoned, is claimed.
INSERT INTO idempotency_keys (key, fingerprint, claimed_at, expires_at)
VALUES (%(key)s, %(fingerprint)s, %(now)s, %(expires_at)s)
ON CONFLICT (key) DO UPDATE SET
    fingerprint = excluded.fingerprint, claimed_at = excluded.claimed_at,
    expires_at = excluded.expires_at, status = NULL, headers = NULL, body = NULL,
    user_id = NULL
WHERE idempotency_keys.expires_at <= %(now)s
   OR (idempotency_keys.status IS NULL AND idempotency_keys.claimed_at < %(stale_before)s)
RETURNING key

-- name: get_idempotency_record
SELECT fingerprint, status, headers, body, user_id FROM idempotency_keys
WHERE key = %(key)s AND expires_at > %(now)s

-- name: complete_idempotency_key
UPDATE idempotency_keys
SET status = %(status)s, headers = %(headers)s, body = %(body)s, user_id = %(user_id)s
WHERE key = %(key)s

-- name: release_idempotency_key
DELETE FROM idempotency_keys WHERE key = %(key)s AND status IS NULL

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE expires_at <= %(now)s

-- name: copy_users
COPY users (id, email, email_normalized, email_index_next, full_name, full_name_folded,
            is_active, created_at, updated_at, version, external_source, external_id,
            attributes)
FROM STDIN

-- name: users_by_email_keys
-- BulkStorage: either index, so a user is found while the index moves. One index probe
-- per key (LIMIT 1 keeps the lateral subquery from being flattened: both columns are
-- unique): a plan made for a thousand keys would otherwise hash-join a scan of the table.
SELECT u.*
FROM unnest(%(keys)s::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT u.email_normalized, u.email_index_next, u.id, u.email, u.full_name, u.is_active,
           u.created_at, u.updated_at, u.version, u.deleted_at, u.external_source,
           u.external_id, u.attributes
    FROM users AS u WHERE u.email_normalized = k.key LIMIT 1
) AS u
UNION ALL
SELECT u.*
FROM unnest(%(keys)s::text[]) AS k(key)
CROSS JOIN LATERAL (
    SELECT u.email_normalized, u.email_index_next, u.id, u.email, u.full_name, u.is_active,
           u.created_at, u.updated_at, u.version, u.deleted_at, u.external_source,
           u.external_id, u.attributes
    FROM users AS u WHERE u.email_index_next = k.key LIMIT 1
) AS u

-- name: count_users
SELECT count(*) FROM users

-- name: key_records
SELECT name, purpose, fingerprint, created_at, retired_at, home, ready_at
FROM encryption_keys
ORDER BY name COLLATE "C"

-- name: add_key_record
INSERT INTO encryption_keys (name, purpose, fingerprint, created_at, home, ready_at)
VALUES (%(name)s, %(purpose)s, %(fingerprint)s, %(created_at)s, %(home)s::text,
        %(ready_at)s::timestamptz)
ON CONFLICT (name) DO NOTHING

-- name: retire_key_record
UPDATE encryption_keys SET retired_at = %(at)s WHERE name = %(name)s AND retired_at IS NULL

-- name: mark_key_ready
UPDATE encryption_keys SET ready_at = %(at)s WHERE name = %(name)s AND ready_at IS NULL

-- name: index_entries
-- A re-index walks every user, deleted ones too, by id, with both index values.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes, email_normalized, email_index_next
FROM users WHERE (%(after)s::uuid IS NULL OR id > %(after)s::uuid) ORDER BY id LIMIT %(limit)s
