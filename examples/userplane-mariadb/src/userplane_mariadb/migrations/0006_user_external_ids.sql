-- depends: 0005_groups
-- In step with the core's 0006_user_external_ids.sql. A unique index admits any number of
-- rows whose external_id is NULL, as the core's partial index does.
ALTER TABLE users
    ADD COLUMN external_source VARCHAR(64) NULL,
    ADD COLUMN external_id VARCHAR(255) NULL,
    -- A JSON object as compact text (16 KiB of JSON at most); NULL when there are none.
    ADD COLUMN attributes MEDIUMTEXT NULL;
CREATE UNIQUE INDEX users_external_id_key ON users (external_source, external_id);
