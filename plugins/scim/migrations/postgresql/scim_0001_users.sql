-- What a SCIM client wrote of a user that the user itself does not hold: a userName
-- that is not the user's email (NULL: it is the email), and the type and primary
-- flag it gave the address. A user no client wrote has no row (userName: the email;
-- the address: work, primary). user_name_key is the name folded: userName is unique
-- in any letter case (RFC 7643 §4.1.1); email_type_key the type folded, for filters.
CREATE TABLE scim_users (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    user_name text,
    user_name_key text,
    email_type text,
    email_type_key text,
    email_primary text CHECK (email_primary IN ('true', 'false')),
    CONSTRAINT scim_users_user_name_key UNIQUE (user_name_key)
);
