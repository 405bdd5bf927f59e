DROP INDEX users_external_id_key ON users;
ALTER TABLE users DROP COLUMN attributes, DROP COLUMN external_id, DROP COLUMN external_source;
