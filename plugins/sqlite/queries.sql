-- name: insert_user
INSERT INTO users (id, email, email_normalized, full_name, full_name_folded, is_active,
                   created_at, updated_at, version)
VALUES (:id, :email, :email_key, :full_name, :full_name_folded, :is_active,
        :created_at, :updated_at, :version)
RETURNING id, email, full_name, is_active, created_at, updated_at, version

-- name: get_user
SELECT id, email, full_name, is_active, created_at, updated_at, version
FROM users WHERE id = :id

-- name: get_user_by_email
SELECT id, email, full_name, is_active, created_at, updated_at, version
FROM users WHERE email_normalized = :email_key

-- name: list_users
-- Keyset pagination: the row-value comparison walks users_created_at_id_idx.
SELECT id, email, full_name, is_active, created_at, updated_at, version
FROM users
WHERE (:after_created_at IS NULL OR (created_at, id) > (:after_created_at, :after_id))
  AND (:is_active IS NULL OR is_active = :is_active)
  AND (:email_key IS NULL OR email_normalized = :email_key)
  AND (:q IS NULL OR instr(email_normalized, :q) > 0 OR instr(full_name_folded, :q) > 0)
ORDER BY created_at, id
LIMIT :limit

-- name: update_user
-- One conditional statement: the version check and the write cannot be separated.
UPDATE users SET
    email = CASE WHEN :set_email THEN :email ELSE email END,
    email_normalized = CASE WHEN :set_email THEN :email_key ELSE email_normalized END,
    full_name = CASE WHEN :set_full_name THEN :full_name ELSE full_name END,
    full_name_folded = CASE WHEN :set_full_name THEN :full_name_folded ELSE full_name_folded END,
    is_active = CASE WHEN :set_is_active THEN :is_active ELSE is_active END,
    version = version + 1,
    updated_at = :now
WHERE id = :id AND (:expected_version IS NULL OR version = :expected_version)
RETURNING id, email, full_name, is_active, created_at, updated_at, version

-- name: delete_user
DELETE FROM users
WHERE id = :id AND (:expected_version IS NULL OR version = :expected_version)
RETURNING id, email, full_name, is_active, created_at, updated_at, version

-- name: user_version
SELECT version FROM users WHERE id = :id
