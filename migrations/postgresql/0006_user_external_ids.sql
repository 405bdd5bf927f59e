-- depends: 0005_groups
-- In step with sqlite/0006_user_external_ids.sql. Adding nullable columns without a
-- default changes no row: no table rewrite, whatever the table's size.
ALTER TABLE users ADD COLUMN external_source text;
ALTER TABLE users ADD COLUMN external_id text;
-- A JSON object as compact text (as every store keeps it); NULL when there are none.
ALTER TABLE users ADD COLUMN attributes text;

-- Decides races on an external id, and finds a provisioned user by it.
CREATE UNIQUE INDEX users_external_id_key ON users (external_source, external_id)
    WHERE external_id IS NOT NULL;
