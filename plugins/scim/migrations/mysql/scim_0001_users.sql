-- The table, as on PostgreSQL and SQLite. The plugin has no MySQL statements yet: on
-- this dialect it serves no /scim/v2 and says so. The table exists so that
-- `userplane migrate` treats every dialect alike. user_name_key holds at most
-- 768 characters: a userName of 256, folded (folding may lengthen text); text in the
-- users table's collation (utf8mb4_nopad_bin), which its foreign key needs.
CREATE TABLE IF NOT EXISTS scim_users (
    user_id CHAR(36) NOT NULL PRIMARY KEY,
    user_name VARCHAR(256) NULL,
    user_name_key VARCHAR(768) NULL,
    email_type VARCHAR(256) NULL,
    email_type_key VARCHAR(768) NULL,
    email_primary VARCHAR(5) NULL,
    UNIQUE KEY scim_users_user_name_key (user_name_key),
    CONSTRAINT scim_users_user_fk FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT scim_users_email_primary CHECK (email_primary IN ('true', 'false'))
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
