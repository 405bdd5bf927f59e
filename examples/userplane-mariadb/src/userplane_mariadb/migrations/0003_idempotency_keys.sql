-- depends: 0002_soft_delete_and_sorting
-- Idempotency-Key claims and the responses they replay. Text and times as in users.
-- The key's 768 utf8mb4 characters are 3072 bytes: InnoDB's longest index key.
-- MEDIUMTEXT and MEDIUMBLOB: TEXT and BLOB stop at 65535 bytes, short of the schema's
-- 65536 characters of headers and 1 MiB of body.
CREATE TABLE idempotency_keys (
    `key` VARCHAR(768) NOT NULL PRIMARY KEY,
    fingerprint VARCHAR(64) NOT NULL,
    claimed_at DATETIME(6) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    -- NULL while the claiming request runs.
    status INT NULL,
    headers MEDIUMTEXT NULL,
    body MEDIUMBLOB NULL,
    KEY idempotency_keys_expires_at_idx (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_nopad_bin;
