-- The containers API (`/compute`) over the same core: hosts know their
-- architecture, CPUs can be shared by containers that hold a fraction of
-- one, a container is an instance with its SSH switch and storage, ingress
-- rules route a container's ports, SSH keys get the integer ids that API
-- shows, and projects may set limits on containers and keys.

ALTER TABLE hosts ADD COLUMN arch TEXT NOT NULL DEFAULT 'amd64';

-- Shares of shared CPUs: a shared CPU is held in cpu_claims by the holder
-- 'shared', and each instance on it has its thousandths here. The claim
-- checks, under the host row's lock, that a CPU's shares sum to 1000 at
-- most; the CPU is freed when its last share goes.
CREATE TABLE cpu_shares (
    host_id     TEXT NOT NULL REFERENCES hosts (id),
    cpu         INTEGER NOT NULL,
    instance_id TEXT NOT NULL,
    millis      INTEGER NOT NULL,
    PRIMARY KEY (host_id, cpu, instance_id)
);
CREATE INDEX cpu_shares_by_instance ON cpu_shares (instance_id);

-- A container: the instance of the same id, with what the containers API
-- adds to it.
CREATE TABLE containers (
    id          TEXT PRIMARY KEY REFERENCES instances (id),
    project_id  TEXT NOT NULL REFERENCES projects (id),
    ssh_enabled INTEGER NOT NULL,
    -- JSON list of absolute paths.
    mount_paths TEXT NOT NULL,
    storage_gb  INTEGER NOT NULL,
    generation  INTEGER NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX containers_by_project ON containers (project_id);

-- A container's ingress rules: one per external port. `number` is the
-- rule's id as the API shows it; `created_at` is in unix seconds, as the
-- API shows it.
CREATE TABLE ingress_rules (
    container_id TEXT NOT NULL REFERENCES containers (id),
    port         INTEGER NOT NULL,
    target_port  INTEGER NOT NULL,
    number       INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (container_id, port)
);

-- The integer id the containers API shows for a key, numbered within its
-- project in the order keys were added.
ALTER TABLE ssh_keys ADD COLUMN number INTEGER;
UPDATE ssh_keys SET number = (
    SELECT COUNT(*) FROM ssh_keys AS k
    WHERE k.project_id = ssh_keys.project_id
      AND (k.created_at < ssh_keys.created_at
           OR (k.created_at = ssh_keys.created_at AND k.id <= ssh_keys.id))
);
CREATE UNIQUE INDEX ssh_keys_by_number ON ssh_keys (project_id, number);

ALTER TABLE project_quotas ADD COLUMN containers INTEGER;
ALTER TABLE project_quotas ADD COLUMN ssh_keys INTEGER;

-- What an instance uses and whether it runs, as its host last observed
-- (the agent's heartbeat, or the control plane's look at a simulated host).
CREATE TABLE instance_usage (
    instance_id        TEXT PRIMARY KEY,
    running            INTEGER NOT NULL,
    detail             TEXT,
    memory_used_bytes  INTEGER,
    storage_used_bytes INTEGER,
    observed_at        TEXT NOT NULL
);

-- An API token's scopes in the containers API's form: a JSON object of
-- dotted paths (`compute.<uid>.containers.<id>`) to the actions granted
-- there (`read`, `create`, `update`, `delete`); a grant on a path covers
-- what is under it. NULL: the token is not limited that way.
ALTER TABLE api_tokens ADD COLUMN compute_scopes TEXT;
