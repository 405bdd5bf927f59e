-- depends: 0001_users
-- Soft delete: a deleted user keeps its row (and its email) until purged.
ALTER TABLE users ADD COLUMN deleted_at DATETIME(6) NULL;

-- Sorting by name: users without a name sort first, as the empty folded name.
UPDATE users SET full_name_folded = '' WHERE full_name_folded IS NULL;
ALTER TABLE users MODIFY full_name_folded VARCHAR(400) NOT NULL DEFAULT '';
CREATE INDEX users_full_name_folded_id_idx ON users (full_name_folded, id);

-- Purge finds the deleted (MariaDB has no partial index: NULLs are cheap in this one).
CREATE INDEX users_deleted_at_idx ON users (deleted_at);
