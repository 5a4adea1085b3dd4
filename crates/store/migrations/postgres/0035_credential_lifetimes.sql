-- An OAuth credential made with an API token expires no later than that
-- token (as a token made with it does): its end is kept with it, from the
-- token's for those made before.
ALTER TABLE oauth_clients ADD COLUMN expires_at TEXT;
UPDATE oauth_clients SET expires_at =
    (SELECT expires_at FROM api_tokens WHERE api_tokens.id = oauth_clients.parent_token_id)
    WHERE parent_token_id IS NOT NULL;

-- A token made with a scoped token could be limited by compute_scopes
-- alone, which acts on the containers API with its user's whole role:
-- those made so are revoked (a scoped token may no longer make them).
UPDATE api_tokens SET revoked_at = to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    WHERE revoked_at IS NULL
      AND compute_scopes IS NOT NULL
      AND (scopes IS NULL OR scopes = '[]')
      AND parent_id IN (SELECT id FROM api_tokens AS parent
                        WHERE parent.scopes IS NOT NULL AND parent.scopes <> '[]');
