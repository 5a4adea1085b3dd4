-- Identity (projects, users, memberships, refresh tokens), SSH keys,
-- instances and operations: the native API's resources.

-- Settings shared by every control-plane replica (the JWT signing key).
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- A project: the provisioning API calls it a workspace.
CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    path       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    username          TEXT NOT NULL UNIQUE,
    password_hash     TEXT,
    active_project_id TEXT REFERENCES projects (id),
    disabled          BIGINT NOT NULL DEFAULT 0,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);

-- A user's role in a project.
CREATE TABLE memberships (
    user_id    TEXT NOT NULL REFERENCES users (id),
    project_id TEXT NOT NULL REFERENCES projects (id),
    role       TEXT NOT NULL,
    last_used  TEXT,
    created_at TEXT NOT NULL,
    PRIMARY KEY (user_id, project_id)
);

-- Refresh tokens rotate: each is used once. A token presented twice means
-- it was stolen, and its whole family is revoked.
CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id),
    family     TEXT NOT NULL,
    status     TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);

-- API tokens now belong to a user and a project, with optional scopes.
ALTER TABLE api_tokens ADD COLUMN user_id TEXT;
ALTER TABLE api_tokens ADD COLUMN project_id TEXT;
ALTER TABLE api_tokens ADD COLUMN scopes TEXT;
ALTER TABLE api_tokens ADD COLUMN expires_at TEXT;
ALTER TABLE api_tokens ADD COLUMN revoked_at TEXT;

-- Hosts registered through /v1/servers have a CPU pool instead of units.
ALTER TABLE hosts ADD COLUMN cpus TEXT;
ALTER TABLE hosts ADD COLUMN provider TEXT;
ALTER TABLE hosts ADD COLUMN plan TEXT;
ALTER TABLE hosts ADD COLUMN tags TEXT;

CREATE TABLE ssh_keys (
    id          TEXT PRIMARY KEY,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE instances (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id),
    name         TEXT NOT NULL,
    labels       TEXT NOT NULL,
    spec         TEXT NOT NULL,
    state        TEXT NOT NULL,
    state_detail TEXT,
    host_id      TEXT REFERENCES hosts (id),
    cpu_list     TEXT,
    memory_mb    BIGINT NOT NULL,
    private_ip   TEXT NOT NULL,
    public_ip    TEXT NOT NULL,
    -- The unfinished operation acting on the instance, if any.
    operation_id TEXT,
    generation   BIGINT NOT NULL,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL
);
CREATE INDEX instances_by_project ON instances (project_id, created_at, id);
CREATE INDEX instances_by_host ON instances (host_id);

-- Every long action. `steps` is the saga's log of done steps (a JSON list),
-- so another process can finish or unwind it; `lease_until` says until when
-- its current driver is presumed alive.
CREATE TABLE operations (
    id               TEXT PRIMARY KEY,
    project_id       TEXT NOT NULL REFERENCES projects (id),
    kind             TEXT NOT NULL,
    status           TEXT NOT NULL,
    resource_id      TEXT,
    params           TEXT NOT NULL,
    steps            TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    lease_until      TEXT,
    created_by       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX operations_by_project ON operations (project_id, created_at, id);
CREATE INDEX operations_by_status ON operations (status, lease_until);
