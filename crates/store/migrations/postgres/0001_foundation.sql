-- Hosts, Kloigos compute units, the per-CPU ledger and API tokens.
-- Timestamps are RFC 3339 text in UTC; JSON is text.

CREATE TABLE hosts (
    id            TEXT PRIMARY KEY,
    hostname      TEXT NOT NULL UNIQUE,
    ip            TEXT NOT NULL,
    region        TEXT NOT NULL,
    zone          TEXT NOT NULL,
    status        TEXT NOT NULL,
    status_detail TEXT,
    cpu_ranges    TEXT NOT NULL,
    numa_nodes    TEXT NOT NULL,
    memory_mb     BIGINT NOT NULL,
    -- Bumped by every change to what the host has free, so that a placement
    -- view can tell which hosts it must reload.
    generation    BIGINT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE compute_units (
    compute_id     TEXT PRIMARY KEY,
    host_id        TEXT NOT NULL REFERENCES hosts (id),
    position       BIGINT NOT NULL,
    cpu_range      TEXT NOT NULL,
    cpu_list       TEXT NOT NULL,
    cpu_count      BIGINT NOT NULL,
    ports_range    TEXT NOT NULL,
    status         TEXT NOT NULL,
    status_detail  TEXT,
    ssh_public_key TEXT,
    tags           TEXT,
    deployment_id  TEXT,
    started_at     TEXT,
    -- When the host-side step now under way is given up on.
    deadline       TEXT,
    generation     BIGINT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX compute_units_by_status ON compute_units (status, cpu_count);
CREATE INDEX compute_units_by_host ON compute_units (host_id, position);

-- The ledger: one row per held CPU. Its primary key is the conflict check
-- that keeps any CPU from being handed to two holders, whatever the number
-- of control-plane processes.
CREATE TABLE cpu_claims (
    host_id TEXT NOT NULL REFERENCES hosts (id),
    cpu     BIGINT NOT NULL,
    holder  TEXT NOT NULL,
    PRIMARY KEY (host_id, cpu)
);
CREATE INDEX cpu_claims_by_holder ON cpu_claims (holder);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
