-- depends: 0004_encryption
-- Groups (the core's docs/schema.md); in step with the core's 0005_groups.sql.
-- Text, times and ids as in users; InnoDB enforces the foreign keys and their cascades.
CREATE TABLE user_groups (
    id CHAR(36) NOT NULL PRIMARY KEY,
    display_name VARCHAR(200) NOT NULL,
    -- fold(display_name): two names differing only in letter case are one name.
    display_name_folded VARCHAR(400) NOT NULL,
    external_id VARCHAR(255) NULL,
    -- A JSON array of role names, sorted.
    roles TEXT NOT NULL DEFAULT ('[]'),
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    version INT NOT NULL DEFAULT 1 CHECK (version >= 1),
    UNIQUE KEY user_groups_display_name_folded_key (display_name_folded),
    UNIQUE KEY user_groups_external_id_key (external_id),
    KEY user_groups_created_at_id_idx (created_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;

CREATE TABLE group_members (
    group_id CHAR(36) NOT NULL,
    user_id CHAR(36) NOT NULL,
    added_at DATETIME(6) NOT NULL,
    PRIMARY KEY (group_id, user_id),
    -- A user's groups (its roles) without a scan.
    KEY group_members_user_id_idx (user_id, group_id),
    CONSTRAINT group_members_group_fk FOREIGN KEY (group_id)
        REFERENCES user_groups (id) ON DELETE CASCADE,
    CONSTRAINT group_members_user_fk FOREIGN KEY (user_id)
        REFERENCES users (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
