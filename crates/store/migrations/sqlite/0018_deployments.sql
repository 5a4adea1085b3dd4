-- Serverless deployments (Verda's container and job deployments). A
-- deployment's replicas are instances of its project, recorded with the
-- generation of the deployment they run (a change of its containers makes
-- a new generation, and replicas of older ones are replaced). The scaler
-- keeps `replicas` (its target) and the change it is waiting out
-- (`pending`, JSON). Front doors report each deployment's queue here, one
-- row per control-plane replica, so that every replica's scaler sees the
-- whole load.
CREATE TABLE deployments (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    scaling    TEXT NOT NULL,
    paused     INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    replicas   INTEGER NOT NULL,
    pending    TEXT NOT NULL,
    deleting   INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE deployment_replicas (
    instance_id   TEXT PRIMARY KEY REFERENCES instances (id),
    deployment_id TEXT NOT NULL REFERENCES deployments (id),
    generation    INTEGER NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX deployment_replicas_deployment ON deployment_replicas (deployment_id);

CREATE TABLE deployment_load (
    deployment_id TEXT NOT NULL,
    replica       TEXT NOT NULL,
    waiting       INTEGER NOT NULL,
    in_flight     INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (deployment_id, replica)
);

-- Keys that call a project's deployments through the front door, kept as
-- their SHA-256 (they are random, 32 bytes).
CREATE TABLE inference_keys (
    id         TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL UNIQUE,
    prefix     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (project_id, name)
);

-- Requests made with `Prefer: respond-async`: what became of each, and the
-- replica's answer (base64) once there is one, kept for an hour.
CREATE TABLE inference_requests (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id),
    deployment_id TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    content_type  TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);
CREATE INDEX inference_requests_created ON inference_requests (created_ms);
