-- The users table; in step with the core's sqlite/ and postgresql/ 0001_users.sql.
-- Text is utf8mb4 (4-byte characters) in utf8mb4_nopad_bin: compared and sorted by code
-- point with trailing spaces significant. utf8mb4_bin would not do: it is a PAD SPACE
-- collation, in which 'a' = 'a ', so two keys the service keeps apart would collide.
-- Times are DATETIME(6), always UTC (the store converts); ids CHAR(36), as text.
CREATE TABLE users (
    id CHAR(36) NOT NULL PRIMARY KEY,
    email VARCHAR(320) NOT NULL,
    email_normalized VARCHAR(320) NOT NULL,
    full_name VARCHAR(200) NULL,
    -- fold(full_name), computed by the storage, for case-insensitive search.
    full_name_folded VARCHAR(400) NULL,
    is_active BOOLEAN NOT NULL DEFAULT TRUE,
    created_at DATETIME(6) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    version INT NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- Decides races on the email: two writers of one address, one wins.
    UNIQUE KEY users_email_normalized_key (email_normalized),
    -- Keyset pagination walks this index.
    KEY users_created_at_id_idx (created_at, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
