-- depends: 0001_users
-- Soft delete: a deleted user keeps its row (and its email) until purged.
ALTER TABLE users ADD COLUMN deleted_at TEXT;

-- Sorting by name: users without a name sort first, as the empty folded name.
UPDATE users SET full_name_folded = '' WHERE full_name_folded IS NULL;
CREATE INDEX users_full_name_folded_id_idx ON users (full_name_folded, id);

-- Purge finds the deleted without scanning the live.
CREATE INDEX users_deleted_at_idx ON users (deleted_at) WHERE deleted_at IS NOT NULL;
