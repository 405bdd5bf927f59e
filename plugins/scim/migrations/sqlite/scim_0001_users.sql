-- What a SCIM client wrote of a user that the user itself does not hold: a userName
-- that is not the user's email (NULL: it is the email), and the type and primary
-- flag it gave the address. A user no client wrote has no row (userName: the email;
-- the address: work, primary). user_name_key is the name folded: userName is unique
-- in any letter case (RFC 7643 §4.1.1); email_type_key the type folded, for filters.
CREATE TABLE scim_users (
    user_id TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_name TEXT,
    user_name_key TEXT UNIQUE,
    email_type TEXT,
    email_type_key TEXT,
    email_primary TEXT CHECK (email_primary IN ('true', 'false'))
);

-- SQLite enforces foreign keys only when each connection asks: a purged user's
-- row goes with them, whatever the connection.
CREATE TRIGGER scim_users_follow_users AFTER DELETE ON users
BEGIN
    DELETE FROM scim_users WHERE user_id = OLD.id;
END;
