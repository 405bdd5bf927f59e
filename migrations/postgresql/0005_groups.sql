-- depends: 0004_encryption
-- Groups (docs/schema.md); in step with sqlite/0005_groups.sql.
-- "user_groups", not "groups": GROUPS is a reserved word in some SQL dialects.
CREATE TABLE user_groups (
    id uuid PRIMARY KEY,
    display_name text NOT NULL,
    -- fold(display_name): two names differing only in letter case are one name.
    display_name_folded text NOT NULL,
    external_id text,
    -- A JSON array of role names, sorted (text, as every store keeps it).
    roles text NOT NULL DEFAULT '[]',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL DEFAULT 1 CHECK (version >= 1)
);

-- Decide races on a name or an external id: of two writers, one wins.
CREATE UNIQUE INDEX user_groups_display_name_folded_key ON user_groups (display_name_folded);
CREATE UNIQUE INDEX user_groups_external_id_key ON user_groups (external_id);
-- Keyset pagination walks this index.
CREATE INDEX user_groups_created_at_id_idx ON user_groups (created_at, id);

CREATE TABLE group_members (
    group_id uuid NOT NULL REFERENCES user_groups (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    added_at timestamptz NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

-- A user's groups (its roles, on every authenticated request) without a scan.
CREATE INDEX group_members_user_id_idx ON group_members (user_id, group_id);
