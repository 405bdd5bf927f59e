-- depends: 0005_groups
-- A user's external id, with the source that issued it (an identity provider), and its
-- custom attributes (docs/schema.md). The pair is unique: two sources may issue one id.
ALTER TABLE users ADD COLUMN external_source TEXT;
ALTER TABLE users ADD COLUMN external_id TEXT;
-- A JSON object as compact text; NULL when there are none.
ALTER TABLE users ADD COLUMN attributes TEXT;

-- Decides races on an external id, and finds a provisioned user by it.
CREATE UNIQUE INDEX users_external_id_key ON users (external_source, external_id)
    WHERE external_id IS NOT NULL;
