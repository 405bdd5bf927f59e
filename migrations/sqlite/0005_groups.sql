-- depends: 0004_encryption
-- Groups (docs/schema.md): named sets of users, and the roles a group grants its members.
-- "user_groups", not "groups": GROUPS is a reserved word in some SQL dialects.
CREATE TABLE user_groups (
    id TEXT PRIMARY KEY NOT NULL,
    display_name TEXT NOT NULL,
    -- fold(display_name): two names differing only in letter case are one name.
    display_name_folded TEXT NOT NULL,
    external_id TEXT,
    -- A JSON array of role names, sorted.
    roles TEXT NOT NULL DEFAULT '[]',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Decide races on a name or an external id: of two writers, one wins.
CREATE UNIQUE INDEX user_groups_display_name_folded_key ON user_groups (display_name_folded);
CREATE UNIQUE INDEX user_groups_external_id_key ON user_groups (external_id);
-- Keyset pagination walks this index.
CREATE INDEX user_groups_created_at_id_idx ON user_groups (created_at, id);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at TEXT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

-- A user's groups (its roles, on every authenticated request) without a scan.
CREATE INDEX group_members_user_id_idx ON group_members (user_id, group_id);

-- SQLite enforces foreign keys only when each connection asks; these triggers do
-- what ON DELETE CASCADE does elsewhere, whatever the connection.
CREATE TRIGGER users_leave_groups AFTER DELETE ON users
BEGIN
    DELETE FROM group_members WHERE user_id = OLD.id;
END;

CREATE TRIGGER user_groups_drop_members AFTER DELETE ON user_groups
BEGIN
    DELETE FROM group_members WHERE group_id = OLD.id;
END;
