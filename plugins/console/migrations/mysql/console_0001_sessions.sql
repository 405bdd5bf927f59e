-- Console sessions: the SHA-256 of each session cookie's token, and the credential it
-- signed in with, sealed under a key derived from that token: neither this table nor
-- the cookie alone gives the credential back. Times in epoch seconds.
CREATE TABLE console_sessions (
    id CHAR(64) NOT NULL PRIMARY KEY,
    credential TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    INDEX console_sessions_expires_at (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
