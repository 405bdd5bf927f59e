DROP INDEX users_deleted_at_idx ON users;
DROP INDEX users_full_name_folded_id_idx ON users;
ALTER TABLE users MODIFY full_name_folded VARCHAR(400) NULL;
ALTER TABLE users DROP COLUMN deleted_at;
