-- Usernames are unique whatever their case: `Admin` beside `admin` is a
-- second account that reads as the first in every list and log. Each user
-- keeps its name folded to lower case, and the fold is unique. Users made
-- before this migration whose names differ only in case keep their exact
-- name as their key (their logins do not change), so the migration cannot
-- fail on them; a new user is refused any name that folds onto an existing
-- one's (the store looks by the fold), and the unique key holds that for
-- every other name when two are made at once.
ALTER TABLE users ADD COLUMN username_key TEXT;
UPDATE users SET username_key = CASE
    WHEN (SELECT COUNT(*) FROM users o WHERE lower(o.username) = lower(users.username)) > 1
    THEN username
    ELSE lower(username)
END;
CREATE UNIQUE INDEX users_by_username_key ON users (username_key);
