-- The named queries of userplane.sql.NAMED_QUERIES, for MariaDB (PyMySQL's %(name)s).
-- No RETURNING (MariaDB has none on UPDATE): the kit runs each write, then reads the row
-- back inside the store's transaction(). The list query is composed by the kit.

-- name: insert_user
INSERT INTO users (id, email, email_normalized, email_index_next, full_name,
                   full_name_folded, is_active, created_at, updated_at, version,
                   external_source, external_id, attributes)
VALUES (%(id)s, %(email)s, %(email_key)s, %(email_next)s, %(full_name)s,
        %(full_name_folded)s, %(is_active)s, %(created_at)s, %(updated_at)s, %(version)s,
        %(external_source)s, %(external_id)s, %(attributes)s)

-- name: get_user
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = %(id)s AND (%(include_deleted)s OR deleted_at IS NULL)

-- name: lock_user
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE id = %(id)s FOR UPDATE

-- name: get_user_by_email
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users WHERE email_normalized = %(email_key)s AND (%(include_deleted)s OR deleted_at IS NULL)

-- name: get_user_by_email_keys
-- One statement: a re-index moving the user between two statements must not hide it.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes
FROM users
WHERE (email_normalized = %(email_key)s OR email_index_next = %(email_next)s)
  AND (%(include_deleted)s OR deleted_at IS NULL)
LIMIT 1

-- name: update_user
-- One conditional statement: the version check and the write cannot be separated.
-- FORCE INDEX (PRIMARY), here and in every UPDATE of one user: found through
-- users_deleted_at_idx instead (the optimizer's pick on a small table), a writer would
-- lock that index's entry before the row, while lock_user holds the row and then writes:
-- a deadlock. By the primary key, every writer takes the row first.
UPDATE users FORCE INDEX (PRIMARY) SET
    email = CASE WHEN %(set_email)s THEN %(email)s ELSE email END,
    email_normalized = CASE WHEN %(set_email)s THEN %(email_key)s ELSE email_normalized END,
    email_index_next = CASE WHEN %(set_email)s THEN %(email_next)s ELSE email_index_next END,
    full_name = CASE WHEN %(set_full_name)s THEN %(full_name)s ELSE full_name END,
    full_name_folded = CASE WHEN %(set_full_name)s THEN %(full_name_folded)s
                            ELSE full_name_folded END,
    is_active = CASE WHEN %(set_is_active)s THEN %(is_active)s ELSE is_active END,
    external_source = CASE WHEN %(set_external)s THEN %(external_source)s
                           ELSE external_source END,
    external_id = CASE WHEN %(set_external)s THEN %(external_id)s ELSE external_id END,
    attributes = CASE WHEN %(set_attributes)s THEN %(attributes)s ELSE attributes END,
    version = version + 1,
    updated_at = %(now)s
WHERE id = %(id)s AND deleted_at IS NULL
  AND (%(expected_version)s IS NULL OR version = %(expected_version)s)

-- name: delete_user
-- Soft: the row stays, so the email stays reserved until a purge.
UPDATE users FORCE INDEX (PRIMARY) SET deleted_at = %(now)s, updated_at = %(now)s, version = version + 1
WHERE id = %(id)s AND deleted_at IS NULL
  AND (%(expected_version)s IS NULL OR version = %(expected_version)s)

-- name: restore_user
UPDATE users FORCE INDEX (PRIMARY) SET deleted_at = NULL, updated_at = %(now)s, version = version + 1
WHERE id = %(id)s AND deleted_at IS NOT NULL

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
-- Runs before purge_users, in one transaction with it: a stored response must not outlive
-- the user it shows. A join, not the core's `user_id IN (SELECT …)`: MariaDB (before 11.1)
-- runs that as a dependent subquery over every key, where the join walks
-- users_deleted_at_idx, then idempotency_keys_user_id_idx. The users rows it reads stay
-- locked (shared) to the end of the transaction: none is restored before purge_users.
DELETE k FROM idempotency_keys AS k JOIN users AS u ON u.id = k.user_id
WHERE u.deleted_at IS NOT NULL AND u.deleted_at < %(before)s

-- name: reseal_user
-- Key rotation and re-indexing: the stored form changes, what a client sees (version, updated_at) does not.
-- The row count is of rows changed (no CLIENT_FOUND_ROWS): a row at version that already
-- holds these values counts 0, so the store's reseal_user then asks user_at_version.
UPDATE users FORCE INDEX (PRIMARY) SET
    email = CASE WHEN %(set_email)s THEN %(email)s ELSE email END,
    email_normalized = COALESCE(%(email_key)s, email_normalized),
    email_index_next = COALESCE(%(email_next)s, email_index_next),
    full_name = CASE WHEN %(set_full_name)s THEN %(full_name)s ELSE full_name END,
    full_name_folded = CASE WHEN %(set_full_name)s THEN %(full_name_folded)s
                            ELSE full_name_folded END
WHERE id = %(id)s AND version = %(version)s

-- name: user_at_version
-- This store's own (not the kit's): is the user, deleted or not, at version? A locking
-- read, in the transaction of the reseal_user before it: that UPDATE locked the row it
-- matched, changed or not, so this sees that row; and a version, once passed, never
-- comes back.
SELECT 1 FROM users WHERE id = %(id)s AND version = %(version)s LOCK IN SHARE MODE

-- name: user_version
SELECT version FROM users WHERE id = %(id)s AND deleted_at IS NULL

-- name: claim_idempotency_key
-- One statement decides the owner: a new key, or one expired or abandoned, is claimed.
-- The store's sessions run with sql_mode SIMULTANEOUS_ASSIGNMENT: without it MariaDB
-- assigns left to right, and each IF() after the first would test the columns that the
-- assignments before it had already changed. The row count (0: nothing changed, since
-- PyMySQL does not set CLIENT_FOUND_ROWS) says whether this caller claimed the key.
INSERT INTO idempotency_keys (`key`, fingerprint, claimed_at, expires_at)
VALUES (%(key)s, %(fingerprint)s, %(now)s, %(expires_at)s)
ON DUPLICATE KEY UPDATE
    fingerprint = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                     VALUE(fingerprint), fingerprint),
    claimed_at = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                    VALUE(claimed_at), claimed_at),
    expires_at = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                    VALUE(expires_at), expires_at),
    headers = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                 NULL, headers),
    body = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
              NULL, body),
    user_id = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                 NULL, user_id),
    status = IF(expires_at <= %(now)s OR (status IS NULL AND claimed_at < %(stale_before)s),
                NULL, status)

-- name: get_idempotency_record
SELECT fingerprint, status, headers, body, user_id FROM idempotency_keys
WHERE `key` = %(key)s AND expires_at > %(now)s

-- name: complete_idempotency_key
UPDATE idempotency_keys
SET status = %(status)s, headers = %(headers)s, body = %(body)s, user_id = %(user_id)s
WHERE `key` = %(key)s

-- name: release_idempotency_key
DELETE FROM idempotency_keys WHERE `key` = %(key)s AND status IS NULL

-- name: purge_idempotency_keys
DELETE FROM idempotency_keys WHERE expires_at <= %(now)s

-- name: count_users
SELECT COUNT(*) FROM users

-- name: key_records
SELECT name, purpose, fingerprint, created_at, retired_at, home, ready_at
FROM encryption_keys ORDER BY name

-- name: add_key_record
-- A taken name sets the row to its own values: 0 rows changed (no CLIENT_FOUND_ROWS), 1 for
-- an insert. Not INSERT IGNORE: it would also make a value too long a warning, and cut it.
INSERT INTO encryption_keys (name, purpose, fingerprint, created_at, home, ready_at)
VALUES (%(name)s, %(purpose)s, %(fingerprint)s, %(created_at)s, %(home)s, %(ready_at)s)
ON DUPLICATE KEY UPDATE name = name

-- name: retire_key_record
UPDATE encryption_keys SET retired_at = %(at)s WHERE name = %(name)s AND retired_at IS NULL

-- name: mark_key_ready
UPDATE encryption_keys SET ready_at = %(at)s WHERE name = %(name)s AND ready_at IS NULL

-- name: index_entries
-- A re-index walks every user, deleted ones too, by id (the primary key: CHAR(36) in
-- utf8mb4_nopad_bin, whose code point order is the ids' order), with both index values.
SELECT id, email, full_name, is_active, created_at, updated_at, version, deleted_at,
       external_source, external_id, attributes, email_normalized, email_index_next
FROM users WHERE (%(after)s IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s
