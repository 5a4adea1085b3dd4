-- OAuth2 client credentials (the Verda face): a project's client id and
-- its secret, kept as a SHA-256 hash (the secret is 256 random bits, so a
-- slow hash buys nothing). `role` is what the client may do in the project.
CREATE TABLE oauth_clients (
    client_id   TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    project_id  TEXT NOT NULL REFERENCES projects (id),
    role        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE INDEX oauth_clients_by_project ON oauth_clients (project_id);

-- Refresh tokens of OAuth clients, hashed; each is used once and replaced.
CREATE TABLE oauth_refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    client_id  TEXT NOT NULL REFERENCES oauth_clients (client_id),
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    created_at TEXT NOT NULL
);

-- Money put into each project, in millionths of the catalog's currency.
CREATE TABLE balances (
    project_id     TEXT PRIMARY KEY REFERENCES projects (id),
    credit_micros  BIGINT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE TABLE balance_top_ups (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id),
    amount_micros BIGINT NOT NULL,
    created_by    TEXT,
    created_at    TEXT NOT NULL
);

-- What each billable resource has cost so far. A meter accrues at
-- `micros_per_hour` from `running_since` (milliseconds since the epoch)
-- while that is set; stopping it adds the accrued amount to
-- `charged_micros`. A balance is its credit less every meter's total, so
-- charges are exact to the millisecond with no background ticking.
CREATE TABLE meters (
    resource_id     TEXT PRIMARY KEY,
    project_id      TEXT NOT NULL REFERENCES projects (id),
    kind            TEXT NOT NULL,
    micros_per_hour BIGINT NOT NULL,
    running_since   BIGINT,
    charged_micros  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX meters_by_project ON meters (project_id);

-- Startup scripts a project's instances can run on first boot.
CREATE TABLE startup_scripts (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    script     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX startup_scripts_by_project ON startup_scripts (project_id, created_at, id);

-- Block volumes. `host_id` is where the storage lives once it has a home
-- (a volume created for an instance lives on its host); `instance_id` the
-- instance it is attached to, as `target` (vdb, ...). A deleted volume
-- stays in the trash (`trashed_at`) until purged (`purged_at`), after which
-- only its record remains.
CREATE TABLE volumes (
    id           TEXT PRIMARY KEY,
    project_id   TEXT NOT NULL REFERENCES projects (id),
    name         TEXT NOT NULL,
    type         TEXT NOT NULL,
    size_gb      BIGINT NOT NULL,
    location     TEXT NOT NULL,
    status       TEXT NOT NULL,
    is_os_volume BIGINT NOT NULL,
    instance_id  TEXT,
    target       TEXT,
    host_id      TEXT REFERENCES hosts (id),
    created_by   TEXT,
    created_at   TEXT NOT NULL,
    trashed_at   TEXT,
    purged_at    TEXT,
    generation   BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX volumes_by_project ON volumes (project_id, created_at, id);
CREATE INDEX volumes_by_instance ON volumes (instance_id);
