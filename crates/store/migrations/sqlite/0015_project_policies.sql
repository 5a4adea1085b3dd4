-- What an install admin decided about a project's instances: whether they
-- may reach beyond their host and their project (egress, through the
-- host's NAT), and whether they run as the host's root instead of in user
-- namespaces of their own (privileged). No row: egress on, unprivileged.
CREATE TABLE project_policies (
    project_id TEXT PRIMARY KEY REFERENCES projects (id),
    egress     INTEGER NOT NULL,
    privileged INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
