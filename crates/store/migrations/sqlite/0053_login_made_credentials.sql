-- API tokens and OAuth credentials made with a login (not with another
-- token) name the login they were made with: its refresh-token family.
-- When that login is revoked (its refresh token was used twice: stolen),
-- or its user's password changes or the user is disabled, what was made
-- with it is revoked too, with everything made with those. Before, a
-- stolen session could mint a token that outlived the theft's detection.
-- Credentials made before this migration name no login and are kept.
ALTER TABLE api_tokens ADD COLUMN login_family TEXT;
ALTER TABLE oauth_clients ADD COLUMN login_family TEXT;
CREATE INDEX api_tokens_by_login ON api_tokens (login_family) WHERE login_family IS NOT NULL;
CREATE INDEX oauth_clients_by_login ON oauth_clients (login_family)
    WHERE login_family IS NOT NULL;
