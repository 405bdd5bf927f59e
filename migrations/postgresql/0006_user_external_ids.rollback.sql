DROP INDEX users_external_id_key;
ALTER TABLE users DROP COLUMN attributes;
ALTER TABLE users DROP COLUMN external_id;
ALTER TABLE users DROP COLUMN external_source;
