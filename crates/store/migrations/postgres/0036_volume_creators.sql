-- A volume says who made it by user id, as an instance does (Verda's
-- `created_by_user_id`): volumes made before kept the username, or
-- `oauth:<client>` for one made with an OAuth credential, which stands for
-- the user the credential acts as (or the credential itself, acting for
-- no one).
UPDATE volumes SET created_by =
    (SELECT users.id FROM users WHERE users.username = volumes.created_by)
    WHERE created_by IN (SELECT username FROM users);
UPDATE volumes SET created_by =
    (SELECT COALESCE(oauth_clients.acts_as, oauth_clients.client_id) FROM oauth_clients
     WHERE 'oauth:' || oauth_clients.client_id = volumes.created_by)
    WHERE created_by IN (SELECT 'oauth:' || client_id FROM oauth_clients);
