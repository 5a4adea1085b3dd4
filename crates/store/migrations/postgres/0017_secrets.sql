-- A project's secrets (a value, or a set of files) and container registry
-- credentials. What they hold is sealed (XChaCha20-Poly1305, with the key
-- in the control plane's data directory, never in the database); only
-- names, kinds, file names and times are readable here. Secrets and file
-- secrets share one namespace per project, as Verda's list shows both.
CREATE TABLE secrets (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    file_names TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);

CREATE TABLE registry_credentials (
    project_id TEXT NOT NULL REFERENCES projects (id),
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sealed     TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (project_id, name)
);
