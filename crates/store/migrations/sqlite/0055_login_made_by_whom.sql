-- Migration 0053 named the login an API token was made with; a user's
-- password change (or disabling) ends what that user's logins made, which
-- the token's owner does not say: an install admin's login makes tokens
-- for other users. So a token made with a login names that login's user
-- too.
ALTER TABLE api_tokens ADD COLUMN login_user TEXT;
CREATE INDEX api_tokens_by_login_user ON api_tokens (login_user) WHERE login_user IS NOT NULL;
