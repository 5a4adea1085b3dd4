-- Join tokens: an admin's permission for a new host's agent to register.
-- Kept as hashes only.
CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    revoked_at  TEXT
);

-- The agent of each host: its credential (hashed), what it reported of the
-- host, when it was last heard from, and the generation of the desired
-- state the control plane wants it to reach.
CREATE TABLE agents (
    hostname        TEXT PRIMARY KEY,
    credential_hash TEXT NOT NULL UNIQUE,
    driver          TEXT NOT NULL,
    inventory       TEXT NOT NULL,
    generation      BIGINT NOT NULL DEFAULT 0,
    reachable       BIGINT NOT NULL DEFAULT 1,
    last_seen       TEXT NOT NULL,
    registered_at   TEXT NOT NULL
);

-- Desired state, one row per object on a host (the host itself, a unit, an
-- instance, a script to run), and what the agent last observed of it. A
-- report counts only for the generation it answers, so a late one never
-- overwrites a newer state.
CREATE TABLE agent_work (
    hostname            TEXT NOT NULL,
    key                 TEXT NOT NULL,
    generation          BIGINT NOT NULL,
    desired             TEXT NOT NULL,
    observed_generation BIGINT NOT NULL DEFAULT 0,
    observed            TEXT,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (hostname, key)
);
CREATE INDEX agent_work_by_generation ON agent_work (hostname, generation);

-- Where an instance's SSH server is reached from outside its host: the
-- host's address and the port its agent forwards (`HOST:PORT`).
ALTER TABLE instances ADD COLUMN ssh_endpoint TEXT;
