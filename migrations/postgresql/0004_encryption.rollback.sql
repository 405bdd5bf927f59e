DROP INDEX users_email_index_next_key;
ALTER TABLE users DROP COLUMN email_index_next;
DROP INDEX idempotency_keys_user_id_idx;
ALTER TABLE idempotency_keys DROP COLUMN user_id;
DROP TABLE encryption_keys;
