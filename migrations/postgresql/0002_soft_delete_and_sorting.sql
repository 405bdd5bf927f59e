-- depends: 0001_users
-- Soft delete: a deleted user keeps its row (and its email) until purged.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;

-- Sort keys compare by code point, as in SQLite and Python, whatever the database's
-- locale: an en_US collation would order (and page) differently.
ALTER TABLE users ALTER COLUMN email_normalized TYPE text COLLATE "C";
ALTER TABLE users ALTER COLUMN full_name_folded TYPE text COLLATE "C";

-- Sorting by name: users without a name sort first, as the empty folded name.
UPDATE users SET full_name_folded = '' WHERE full_name_folded IS NULL;
CREATE INDEX users_full_name_folded_id_idx ON users (full_name_folded, id);

-- Purge finds the deleted without scanning the live.
CREATE INDEX users_deleted_at_idx ON users (deleted_at) WHERE deleted_at IS NOT NULL;
