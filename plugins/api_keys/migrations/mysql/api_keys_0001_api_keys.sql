-- API keys: a lookup id and a SHA-256 of the key, never the key. Times are UTC,
-- DATETIME(6); text compares by code point (utf8mb4_nopad_bin: trailing spaces count too): a lookup id's case matters.
CREATE TABLE IF NOT EXISTS api_keys (
    id CHAR(36) NOT NULL PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    role VARCHAR(255) NOT NULL,
    lookup VARCHAR(12) NOT NULL UNIQUE,
    secret_hash CHAR(64) NOT NULL,
    created_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NULL,
    revoked_at DATETIME(6) NULL,
    last_used_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
