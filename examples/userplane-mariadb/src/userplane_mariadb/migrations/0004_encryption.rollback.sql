-- Narrowed first: MariaDB's DDL is not transactional, and this is the step that may refuse.
-- It refuses ("Data truncated") while a longer (sealed) value is stored, rather than cut
-- it: strict for this statement whatever the server's sql_mode, which may not be.
SET STATEMENT sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION' FOR
ALTER TABLE users
    MODIFY email VARCHAR(320) NOT NULL,
    MODIFY full_name VARCHAR(200) NULL;
DROP INDEX users_email_index_next_key ON users;
ALTER TABLE users DROP COLUMN email_index_next;
DROP INDEX idempotency_keys_user_id_idx ON idempotency_keys;
ALTER TABLE idempotency_keys DROP COLUMN user_id;
DROP TABLE encryption_keys;
