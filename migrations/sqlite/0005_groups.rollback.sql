DROP TRIGGER user_groups_drop_members;
DROP TRIGGER users_leave_groups;
DROP TABLE group_members;
DROP TABLE user_groups;
