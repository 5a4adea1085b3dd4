-- Taskservs: named services installed on chosen servers by their agents.
CREATE TABLE taskservs (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    version    TEXT NOT NULL,
    -- JSON object: what the install script is given.
    config     TEXT NOT NULL,
    -- JSON list of hostnames.
    servers    TEXT NOT NULL,
    -- pending, installing, running, failed, removing, removed.
    status     TEXT NOT NULL,
    -- JSON object: hostname -> {status, exit_code, output}.
    results    TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX taskservs_by_project ON taskservs (project_id, created_at, id);
