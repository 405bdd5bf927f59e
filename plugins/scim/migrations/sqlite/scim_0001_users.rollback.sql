DROP TRIGGER scim_users_follow_users;
DROP TABLE scim_users;
