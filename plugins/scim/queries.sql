-- Written once for SQLite and PostgreSQL: parameters as :name (userplane.sql.Dialect.compile).

-- name: ping
SELECT user_id FROM scim_users LIMIT 1

-- name: get
SELECT user_name, email_type, email_primary FROM scim_users WHERE user_id = :user_id

-- name: by_key
SELECT user_id FROM scim_users WHERE user_name_key = :user_name_key

-- name: insert
INSERT INTO scim_users (
    user_id, user_name, user_name_key, email_type, email_type_key, email_primary
)
VALUES (:user_id, :user_name, :user_name_key, :email_type, :email_type_key, :email_primary)

-- name: delete
DELETE FROM scim_users WHERE user_id = :user_id
