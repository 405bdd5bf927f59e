-- The tables, as on PostgreSQL and SQLite. The plugin has no MySQL statements yet: on
-- this dialect it creates no subscription and says so. The tables exist so that
-- `userplane migrate` treats every dialect alike.
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
    id CHAR(36) NOT NULL PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret VARCHAR(100) NOT NULL,
    description VARCHAR(200) NOT NULL DEFAULT '',
    created_at DATETIME(6) NOT NULL,
    disabled_at DATETIME(6) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id CHAR(36) NOT NULL UNIQUE,
    subscription_id CHAR(36) NOT NULL,
    event_type VARCHAR(100) NOT NULL,
    ordering_key VARCHAR(200) NOT NULL,
    payload TEXT NOT NULL,
    status VARCHAR(10) NOT NULL DEFAULT 'pending',
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6) NOT NULL,
    claimed_until DATETIME(6) NULL,
    claimed_by VARCHAR(100) NULL,
    last_status INT NULL,
    last_error VARCHAR(300) NULL,
    created_at DATETIME(6) NOT NULL,
    delivered_at DATETIME(6) NULL,
    KEY webhook_deliveries_due (status, next_attempt_at, seq),
    KEY webhook_deliveries_heads (subscription_id, ordering_key, status, seq),
    KEY webhook_deliveries_by_status (status, seq),
    CONSTRAINT webhook_deliveries_subscription
        FOREIGN KEY (subscription_id) REFERENCES webhook_subscriptions (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
