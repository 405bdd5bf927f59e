-- Console sessions: the SHA-256 of each session cookie's token, and the credential it
-- signed in with, sealed under a key derived from that token: neither this table nor
-- the cookie alone gives the credential back. Times in epoch seconds.
CREATE TABLE console_sessions (
    id text PRIMARY KEY,
    credential text NOT NULL,
    created_at bigint NOT NULL,
    expires_at bigint NOT NULL
);
CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
