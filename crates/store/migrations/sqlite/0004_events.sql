-- Every state change, kept for a while for audit and streamed to clients.
-- `seq` orders them; `origin` is the control-plane process that wrote them.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    origin      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    project_id  TEXT,
    state       TEXT NOT NULL,
    at          TEXT NOT NULL
);
CREATE INDEX events_by_time ON events (at);
CREATE INDEX events_by_project ON events (project_id, seq);
