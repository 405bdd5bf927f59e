DROP INDEX users_deleted_at_idx;
DROP INDEX users_full_name_folded_id_idx;
ALTER TABLE users DROP COLUMN deleted_at;
