-- The role model, credentials that never outlive or outgrow what made
-- them, quotas, and hosts that only an admin hands to a new agent.

-- A user's role over the whole install ('admin' or 'operator'), apart from
-- its roles in workspaces. The bootstrap admin is the install's admin; no
-- one else was, whatever their workspace roles said.
ALTER TABLE users ADD COLUMN install_role TEXT;
UPDATE users SET install_role = 'admin' WHERE username = 'admin';

-- The API token a token or an OAuth credential was made with: revoking a
-- token revokes everything made with it.
ALTER TABLE api_tokens ADD COLUMN parent_id TEXT;
CREATE INDEX api_tokens_by_parent ON api_tokens (parent_id);
ALTER TABLE oauth_clients ADD COLUMN parent_token_id TEXT;
CREATE INDEX oauth_clients_by_parent ON oauth_clients (parent_token_id);
-- The scopes of the token that made the credential (a JSON list), if it
-- had any: the credential can do no more.
ALTER TABLE oauth_clients ADD COLUMN scopes TEXT;
-- The user whose current membership and role the credential acts with (a
-- deleted or demoted user takes it down); NULL for a credential an install
-- admin gave a fixed role.
ALTER TABLE oauth_clients ADD COLUMN acts_as TEXT;
UPDATE oauth_clients SET acts_as = created_by;

-- vCPUs of each instance, for quotas (until now only in its spec).
ALTER TABLE instances ADD COLUMN vcpus BIGINT NOT NULL DEFAULT 0;
UPDATE instances SET vcpus = CAST(json_extract(spec, '$.vcpus') AS INTEGER)
    WHERE json_extract(spec, '$.vcpus') IS NOT NULL;
CREATE INDEX instances_by_project_state ON instances (project_id, state);
CREATE INDEX compute_units_by_project ON compute_units (project_id);

-- A project's quota: NULL limits take the configured defaults; -1 is
-- unlimited.
CREATE TABLE project_quotas (
    project_id TEXT PRIMARY KEY REFERENCES projects (id),
    instances  BIGINT,
    vcpus      BIGINT,
    memory_mb  BIGINT,
    volumes    BIGINT,
    volume_gb  BIGINT,
    updated_at TEXT NOT NULL
);

-- A join token made to replace the agent of one host (its hostname); any
-- other join token only admits hosts that never had an agent.
ALTER TABLE join_tokens ADD COLUMN replaces TEXT;
